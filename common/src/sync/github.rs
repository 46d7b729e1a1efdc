//! GitHub App authentication: sign a short-lived RS256 JWT with the App's
//! private key, exchange it at `<base>/app/installations/<id>/access_tokens`
//! for an installation token, and store that token (user `-`) for the repo.
//! The token is refreshed when it expires within 30 s. Any base URL works, so
//! tests use a local stub.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::credentials::{CredentialError, Secret, store};
use super::git::Git;

/// Who the App is.
#[derive(Clone, Debug)]
pub enum AppId {
    /// `--github-app-application-id`.
    Application(u64),
    /// `--github-app-client-id`.
    Client(String),
}

/// Where the App's private key comes from.
#[derive(Clone, Debug)]
pub enum PrivateKey {
    /// `$GITSYNC_GITHUB_APP_PRIVATE_KEY`.
    Inline(Secret),
    /// `--github-app-private-key-file`, read at each refresh.
    File(PathBuf),
}

/// The GitHub App settings.
#[derive(Clone, Debug)]
pub struct GithubApp {
    /// API base URL, `https://api.github.com/` by default.
    pub base_url: String,
    /// The App.
    pub app: AppId,
    /// Its installation.
    pub installation_id: u64,
    /// Its private key (PEM).
    pub private_key: PrivateKey,
}

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// The key file could not be read.
    #[error("can't read private key file {path:?}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key is not an RSA PEM key, or signing failed.
    #[error("can't sign the GitHub app JWT")]
    Jwt(#[source] jsonwebtoken::errors::Error),
    /// The request failed.
    #[error("GitHub app installation request failed: {0}")]
    Http(String),
    /// The endpoint answered other than 201.
    #[error("GitHub app installation endpoint returned status {status}, body: {body:?}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Body.
        body: String,
    },
    /// The answer was not `{token, expires_at}`.
    #[error("can't decode the GitHub app token response: {0}")]
    Decode(String),
    /// Storing the token failed.
    #[error(transparent)]
    Store(#[from] CredentialError),
}

#[derive(Serialize)]
struct Claims {
    iss: String,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: String,
    expires_at: String,
}

impl GithubApp {
    /// Gets a fresh installation token, stores it for `repo`, and returns
    /// when it expires.
    pub async fn refresh(
        &self,
        git: &Git,
        client: &reqwest::Client,
        repo: &str,
        deadline: Instant,
    ) -> Result<SystemTime, GithubError> {
        git.log.info(3, "refreshing GitHub app token", &[]);
        let pem = match &self.private_key {
            PrivateKey::Inline(s) => s.expose().as_bytes().to_vec(),
            PrivateKey::File(path) => tokio::fs::read(path).await.map_err(|source| GithubError::KeyFile {
                path: path.clone(),
                source,
            })?,
        };
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(GithubError::Jwt)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: match &self.app {
                AppId::Application(id) => id.to_string(),
                AppId::Client(id) => id.clone(),
            },
            iat: now,
            exp: now + 600,
        };
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .map_err(GithubError::Jwt)?;
        let url = format!(
            "{}/app/installations/{}/access_tokens",
            self.base_url.trim_end_matches('/'),
            self.installation_id
        );
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let resp = client
            .post(&url)
            .bearer_auth(jwt)
            .header("Accept", "application/vnd.github+json")
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| GithubError::Http(super::log::error_chain(&e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| GithubError::Http(super::log::error_chain(&e)))?;
        if status != 201 {
            return Err(GithubError::Status { status, body });
        }
        let parsed: TokenResponse = serde_json::from_str(&body).map_err(|e| GithubError::Decode(e.to_string()))?;
        let expiry = parse_rfc3339(&parsed.expires_at)
            .ok_or_else(|| GithubError::Decode(format!("bad expires_at {:?}", parsed.expires_at)))?;
        // The user name must be non-empty; GitHub ignores it.
        store(git, repo, "-", &parsed.token, deadline).await?;
        Ok(expiry)
    }
}

/// Parses `2016-07-11T22:14:10Z` (fractions and `±hh:mm` offsets too).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = digits.parse().ok()?;
    }
    let offset: i64 = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let oh: i64 = tz[1..3].parse().ok()?;
            let om: i64 = tz[4..6].parse().ok()?;
            let o = oh * 3600 + om * 60;
            if tz.starts_with('-') { -o } else { o }
        }
        _ => return None,
    };
    let days = super::log::days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec) - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(-1.0));
        assert_eq!(t("2016-07-11T22:14:10Z"), Some(1_468_275_250.0));
        assert_eq!(t("2016-07-11T23:14:10+01:00"), Some(1_468_275_250.0));
        assert_eq!(t("2016-07-11T22:14:10.5Z"), Some(1_468_275_250.5));
        assert_eq!(t("2016-07-11 22:14:10"), None);
        assert_eq!(t("2016-13-11T22:14:10Z"), None);
    }
}
