//! Talking to other repositories: fetching with gix (file://, git://, smart
//! HTTP(S), ssh) and pushing with the `git` CLI (gix cannot push yet), with
//! credentials that never reach a log, an error, a child's argv or a
//! world-readable file, and a deadline on every operation.
//!
//! Credentials are named and defaulted as git-sync's, so one Secret mounted
//! the same way serves every binary: `--username` + `--password-file`
//! (HTTPS basic auth or a token), `--ssh-key-file` (default
//! `/etc/git-secret/ssh`), `--ssh-known-hosts` (strict host key checking,
//! default on) and `--ssh-known-hosts-file` (default
//! `/etc/git-secret/known_hosts`). The password file is read at each use, so
//! a rotated Secret needs no restart.

mod credentials;
mod fetch;
mod push;
mod url;

use std::path::PathBuf;
use std::time::Duration;

pub use credentials::Credentials;
pub use fetch::{FetchSpec, Fetched, fetch};
pub use push::{PushOutcome, PushSpec, push};
pub use url::{has_password, redact, redact_text};

/// A remote: its name in the repository's config and its URL.
#[derive(Clone, Debug)]
pub struct Remote {
    pub name: String,
    pub url: String,
}

/// How long one network operation may take before it is abandoned.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What goes wrong talking to a remote. URLs are shown redacted.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{url}: authentication failed; check --username and --password-file (or the key in --ssh-key-file)")]
    Auth {
        url: String,
        #[source]
        source: Option<gix::Error>,
    },
    #[error("{url}: the host key is not the one in the known hosts file (--ssh-known-hosts-file)")]
    HostKey { url: String },
    #[error("{url}: cannot fetch{}", ssh_says.as_ref().map(|s| format!(" (ssh: {s})")).unwrap_or_default())]
    Fetch {
        url: String,
        /// What ssh printed, for ssh remotes.
        ssh_says: Option<String>,
        #[source]
        source: gix::Error,
    },
    #[error("{url}: the remote did not answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("{url}: push rejected ({refs}): {reason}")]
    Rejected { url: String, refs: String, reason: String },
    #[error("{url}: git push failed: {stderr}")]
    Push { url: String, stderr: String },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the password file {path}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{url}: the host key cannot be checked: {path} does not exist (mount known_hosts there, set --ssh-known-hosts-file, or pass --ssh-known-hosts=false)"
    )]
    NoKnownHosts { url: String, path: PathBuf },
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
}

impl RemoteError {
    /// Whether trying again later may succeed (the network, the remote, a
    /// push that raced another): not a wrong password or a missing file.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RemoteError::Fetch { .. }
                | RemoteError::Timeout { .. }
                | RemoteError::Rejected { .. }
                | RemoteError::Push { .. }
        )
    }
}

/// The URL of remote `name` in the repository at `git_dir`'s config.
pub fn configured_url(git_dir: &std::path::Path, name: &str) -> Result<Option<String>, crate::repo::RepoError> {
    let repo = gix::open_opts(git_dir, gix::open::Options::isolated()).map_err(|source| {
        crate::repo::RepoError::NotARepository {
            path: git_dir.to_owned(),
            source,
        }
    })?;
    let key = format!("remote.{name}.url");
    Ok(repo.config_snapshot().string(key.as_str()).map(|v| v.to_string()))
}

/// The remote-tracking ref that fetches of `remote`'s ref `name` land in:
/// `refs/heads/x` -> `refs/remotes/<remote>/x`, any other `refs/y` ->
/// `refs/remotes/<remote>/y` (so the default metadata ref
/// `refs/gitcd/metadata/refs/heads/x` lands in
/// `refs/remotes/<remote>/gitcd/metadata/refs/heads/x`). A fetch never moves
/// a local ref.
pub fn tracking_ref(remote: &str, name: &str) -> String {
    let rest = name
        .strip_prefix("refs/heads/")
        .or_else(|| name.strip_prefix("refs/"))
        .unwrap_or(name);
    format!("refs/remotes/{remote}/{rest}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn tracking_refs() {
        assert_eq!(
            super::tracking_ref("origin", "refs/heads/main"),
            "refs/remotes/origin/main"
        );
        assert_eq!(
            super::tracking_ref("up", "refs/gitcd/metadata/refs/heads/a"),
            "refs/remotes/up/gitcd/metadata/refs/heads/a"
        );
    }
}
