//! Credentials for git: handed to git's credential helper with
//! `git credential approve` before every sync, so that every later git call
//! (fetch, submodules, a `--git` wrapper running `git credential fill`) finds
//! them. Passwords live in [`Secret`], whose `Debug` and `Display` never show
//! the value, and reach git only on standard input.
//!
//! These are the credential flags git-pre, git-post and gitcd share:
//! `--username`, `$..._PASSWORD`, `--password-file` (re-read before every
//! use), `--credential` (JSON object or list), `--askpass-url`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::git::{CmdError, Git};

/// A password or token. Never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value, to hand to git on stdin.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("REDACTED")
    }
}

/// One credential: a URL (git matches it by prefix) with a user and a
/// password, given inline or read from a file before every sync.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The URL it applies to.
    #[serde(default)]
    pub url: String,
    /// The user name.
    #[serde(default)]
    pub username: String,
    /// The password, inline.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password, re-read before every sync.
    #[serde(default, rename = "password-file")]
    pub password_file: Option<PathBuf>,
}

impl Credential {
    /// git-sync's checks: url, username and exactly one of password and
    /// password-file.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.url.is_empty() {
            return Err("invalid flag: --credential URL must be specified");
        }
        if self.username.is_empty() {
            return Err("invalid flag: --credential username must be specified");
        }
        let has_password = self.password.as_ref().is_some_and(|p| !p.is_empty());
        let has_file = self.password_file.as_ref().is_some_and(|p| !p.as_os_str().is_empty());
        match (has_password, has_file) {
            (false, false) => Err("invalid flag: --credential password or password-file must be specified"),
            (true, true) => Err("invalid flag: only one of --credential password and password-file may be specified"),
            _ => Ok(()),
        }
    }

    /// The credential as JSON with the password redacted, for logs.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "url": redact_url(&self.url), "username": self.username });
        if self.password.is_some() {
            v["password"] = "REDACTED".into();
        }
        if let Some(f) = &self.password_file {
            v["password-file"] = f.display().to_string().into();
        }
        v
    }
}

/// A malformed `--credential` value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialParseError {
    /// Neither `{...}` nor `[...]`.
    #[error("not a JSON object or list")]
    NotJson,
    /// JSON that is not a credential (unknown fields are refused).
    #[error("{0}")]
    Json(#[source] serde_json::Error),
}

/// Parses one `--credential` value: a JSON object or a list of them; blank
/// is none.
pub fn parse_credentials(s: &str) -> Result<Vec<Credential>, CredentialParseError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(vec![]);
    }
    if s.starts_with('{') {
        return serde_json::from_str::<Credential>(s)
            .map(|c| vec![c])
            .map_err(CredentialParseError::Json);
    }
    if s.starts_with('[') {
        return serde_json::from_str(s).map_err(CredentialParseError::Json);
    }
    Err(CredentialParseError::NotJson)
}

/// A credential that could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The password file could not be read.
    #[error("can't read password file {path:?}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `git credential approve` failed.
    #[error("can't configure git credentials")]
    Approve(#[source] CmdError),
    /// The askpass URL could not be reached or answered badly.
    #[error("{0}")]
    Askpass(String),
}

/// Hands `url`/`username`/`password` to git's credential helper.
pub async fn store(
    git: &Git,
    url: &str,
    username: &str,
    password: &str,
    deadline: Instant,
) -> Result<(), CredentialError> {
    git.log
        .info(1, "storing git credential", &[("url", redact_url(url).into())]);
    let input = format!("url={url}\nusername={username}\npassword={password}\n");
    git.run_stdin(None, &["credential", "approve"], Some(&input), deadline)
        .await
        .map_err(CredentialError::Approve)?;
    Ok(())
}

/// Stores `cred`, reading its password file first.
pub async fn store_credential(git: &Git, cred: &Credential, deadline: Instant) -> Result<(), CredentialError> {
    let password = match &cred.password_file {
        Some(path) if !path.as_os_str().is_empty() => {
            let p = tokio::fs::read_to_string(path)
                .await
                .map_err(|source| CredentialError::PasswordFile {
                    path: path.clone(),
                    source,
                })?;
            git.log.info(
                3,
                "read password from file",
                &[("file", path.display().to_string().into())],
            );
            Secret::new(p)
        }
        _ => cred.password.clone().unwrap_or_default(),
    };
    store(git, &cred.url, &cred.username, password.expose(), deadline).await
}

/// Asks `askpass_url` for `username=`/`password=` lines (1 s timeout, no
/// redirects, 200 only) and stores them for `repo`.
pub async fn call_askpass_url(
    git: &Git,
    client: &reqwest::Client,
    askpass_url: &str,
    repo: &str,
    deadline: Instant,
) -> Result<(), CredentialError> {
    git.log.info(3, "calling auth URL to get credentials", &[]);
    let timeout = Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()));
    let resp = client
        .get(askpass_url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| CredentialError::Askpass(format!("can't access auth URL: {}", without_url(e))))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| CredentialError::Askpass(format!("can't read auth response: {}", without_url(e))))?;
    if status != reqwest::StatusCode::OK {
        return Err(CredentialError::Askpass(format!(
            "auth URL returned status {}, body: {body:?}",
            status.as_u16()
        )));
    }
    let (mut username, mut password) = (String::new(), Secret::default());
    for line in body.split('\n') {
        match line.split_once('=') {
            Some(("username", v)) => username = v.to_string(),
            Some(("password", v)) => password = Secret::new(v),
            _ => {}
        }
    }
    store(git, repo, &username, password.expose(), deadline).await
}

fn without_url(e: reqwest::Error) -> String {
    crate::sync::log::error_chain(&e.without_url())
}

/// `scheme://user:REDACTED@host/...` for URLs with a password; other
/// strings (scp-like `user@host:path`) unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:REDACTED@{host}{tail}"),
        None => url.to_string(),
    }
}

/// Splits user and password out of an `http(s)://user:pass@host/...` URL:
/// (URL without them, user, password). Other URLs give `None`.
pub fn split_userinfo(url: &str) -> Option<(String, String, Option<String>)> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, pass) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(percent_decode(p))),
        None => (userinfo, None),
    };
    Some((format!("{scheme}://{host}{tail}"), percent_decode(user), pass))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_json_forms() -> Result<(), CredentialParseError> {
        assert!(parse_credentials("  ")?.is_empty());
        let one = parse_credentials(r#"{"url":"http://h/r","username":"u","password":"p"}"#)?;
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].password, Some(Secret::new("p")));
        assert!(one[0].validate().is_ok());
        let list = parse_credentials(
            r#"[{"url":"a","username":"u","password-file":"/f"},{"url":"b","username":"v","password":"x"}]"#,
        )?;
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].password_file, Some(PathBuf::from("/f")));
        assert!(
            parse_credentials(r#"{"url":"a","user":"u"}"#).is_err(),
            "unknown fields are refused"
        );
        assert!(matches!(parse_credentials("url=a"), Err(CredentialParseError::NotJson)));
        let both = parse_credentials(r#"{"url":"a","username":"u","password":"p","password-file":"/f"}"#)?;
        assert!(both[0].validate().is_err());
        let neither = parse_credentials(r#"{"url":"a","username":"u"}"#)?;
        assert!(neither[0].validate().is_err());
        Ok(())
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credential {
            url: "http://h".into(),
            username: "u".into(),
            password: Some(Secret::new("hunter2")),
            password_file: None,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.redacted().to_string().contains("hunter2"));
    }

    #[test]
    fn urls() {
        assert_eq!(redact_url("https://u:pw@h:1/p"), "https://u:REDACTED@h:1/p");
        assert_eq!(redact_url("https://u@h/p"), "https://u@h/p");
        assert_eq!(redact_url("git@h:p"), "git@h:p");
        assert_eq!(
            split_userinfo("http://my%40user:p%3Aw@127.0.0.1:8080/repo"),
            Some((
                "http://127.0.0.1:8080/repo".into(),
                "my@user".into(),
                Some("p:w".into())
            ))
        );
        assert_eq!(split_userinfo("ssh://git@h/r"), None);
        assert_eq!(split_userinfo("http://h/r"), None);
    }
}
