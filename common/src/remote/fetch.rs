//! Fetching with gix: the refs asked for (those the remote has) land in
//! remote-tracking refs, and the pack they bring is fsynced before this
//! returns, since a merge commit may point into it right after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gix::ObjectId;

use super::{Credentials, Remote, RemoteError, redact};

/// One ref to fetch and where it lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchSpec {
    /// The ref on the remote, e.g. `refs/heads/main`.
    pub remote_ref: String,
    /// The local remote-tracking ref it lands in, e.g.
    /// `refs/remotes/origin/main`.
    pub local_ref: String,
}

/// What a fetch found: the asked-for refs the remote has, with their
/// commits (now present locally); refs it lacks are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub refs: BTreeMap<String, ObjectId>,
}

/// Fetches `specs` from `remote` into the repository at `git_dir`, giving
/// up after `timeout`. Blocking: call it from a blocking thread.
pub fn fetch(
    git_dir: &Path,
    remote: &Remote,
    credentials: &Credentials,
    specs: &[FetchSpec],
    timeout: Duration,
) -> Result<Fetched, RemoteError> {
    credentials.check_for(&remote.url)?;
    let interrupt = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let job = {
        let (git_dir, remote, credentials, specs, interrupt) = (
            git_dir.to_owned(),
            remote.clone(),
            credentials.clone(),
            specs.to_vec(),
            interrupt.clone(),
        );
        move || {
            let _ = tx.send(fetch_now(&git_dir, &remote, &credentials, &specs, &interrupt));
        }
    };
    std::thread::Builder::new()
        .name("gitcd-fetch".into())
        .spawn(job)
        .map_err(|source| RemoteError::Spawn {
            program: "a fetch thread".into(),
            source,
        })?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => {
            // The thread stops at its next check of the flag, or when the
            // connection's own timeouts fire.
            interrupt.store(true, Ordering::Relaxed);
            Err(RemoteError::Timeout {
                url: redact(&remote.url),
                after: timeout,
            })
        }
    }
}

fn fetch_now(
    git_dir: &Path,
    remote: &Remote,
    credentials: &Credentials,
    specs: &[FetchSpec],
    interrupt: &AtomicBool,
) -> Result<Fetched, RemoteError> {
    let url = redact(&remote.url);
    // ssh says why it failed on its stderr, which gix does not capture.
    let ssh_stderr = SshStderr::new(git_dir);
    let failed = |source: gix::Error| classify(&url, source, ssh_stderr.read());
    let overrides = [
        format!(
            "core.sshCommand={} 2>>{}",
            credentials.ssh_command(),
            super::credentials::shell_quote(&ssh_stderr.path.to_string_lossy())
        ),
        // A dead HTTP server fails instead of hanging.
        "http.lowSpeedLimit=1".to_owned(),
        "http.lowSpeedTime=30".to_owned(),
        "gitoxide.http.connectTimeout=10s".to_owned(),
    ];
    let opts = gix::open::Options::isolated().config_overrides(overrides);
    let repo = gix::ThreadSafeRepository::open_opts(git_dir, opts)
        .map_err(|source| crate::repo::RepoError::NotARepository {
            path: git_dir.to_owned(),
            source,
        })?
        .to_thread_local();
    let refspecs: Vec<String> = specs
        .iter()
        .map(|s| format!("+{}:{}", s.remote_ref, s.local_ref))
        .collect();
    let gix_remote = repo
        .remote_at(remote.url.as_str())
        .and_then(|r| r.with_refspecs(refspecs.iter().map(String::as_str), gix::remote::Direction::Fetch))
        .map_err(failed)?;
    let mut connection = gix_remote.connect(gix::remote::Direction::Fetch).map_err(failed)?;
    let (user, password) = (credentials.username.clone(), credentials.password()?);
    connection.set_credentials(move |action| {
        use gix::credentials::helper::{Action, NextAction};
        use gix::credentials::protocol::Outcome;
        match action {
            Action::Get(ctx) => match (&user, &password) {
                (Some(user), Some(password)) => Ok(Some(Outcome {
                    identity: gix::sec::identity::Account {
                        username: user.clone(),
                        password: password.clone(),
                        oauth_refresh_token: None,
                    },
                    next: NextAction::from(ctx),
                })),
                // Nothing to offer: the remote's refusal becomes our error.
                _ => Err(gix::error::message("no credentials (--username and --password-file) for this remote").into()),
            },
            Action::Store(_) | Action::Erase(_) => Ok(None),
        }
    });
    let prepared = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(failed)?;
    let advertised: BTreeMap<String, ObjectId> = prepared
        .ref_map()
        .remote_refs
        .iter()
        .filter_map(|r| match r {
            gix::protocol::handshake::Ref::Direct { full_ref_name, object }
            | gix::protocol::handshake::Ref::Symbolic {
                full_ref_name, object, ..
            } => Some((full_ref_name.to_string(), *object)),
            _ => None,
        })
        .collect();
    let refs: BTreeMap<String, ObjectId> = specs
        .iter()
        .filter_map(|s| advertised.get(&s.remote_ref).map(|id| (s.remote_ref.clone(), *id)))
        .collect();
    if refs.is_empty() {
        return Ok(Fetched { refs });
    }
    let outcome = prepared.receive(gix::progress::Discard, interrupt).map_err(failed)?;
    if let gix::remote::fetch::Status::Change { write_pack_bundle, .. } = outcome.status {
        let files: Vec<PathBuf> = [write_pack_bundle.data_path, write_pack_bundle.index_path]
            .into_iter()
            .flatten()
            .collect();
        for f in &files {
            crate::repo::objects::sync_path(f)?;
        }
        if let Some(dir) = files.first().and_then(|f| f.parent()) {
            crate::repo::objects::sync_path(dir)?;
        }
    }
    Ok(Fetched { refs })
}

/// A temporary file for ssh's stderr, removed when dropped.
struct SshStderr {
    path: PathBuf,
}

impl SshStderr {
    fn new(git_dir: &Path) -> Self {
        let dir = git_dir.join("gitcd");
        let _ = std::fs::create_dir_all(&dir);
        Self {
            path: dir.join(format!("ssh-{}.err", rand::random::<u64>())),
        }
    }

    /// What ssh said, trimmed; `None` when nothing.
    fn read(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.lines().last().unwrap_or(text).to_owned())
    }
}

impl Drop for SshStderr {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A wrong or missing password, a refused key or an unknown host key is
/// not a network failure: say which.
fn classify(url: &str, source: gix::Error, ssh_says: Option<String>) -> RemoteError {
    use gix::error::Class;
    let text = format!("{} {}", crate::error::chain(&source), ssh_says.as_deref().unwrap_or(""));
    if text.contains("Host key verification failed") || text.contains("No ED25519 host key is known") {
        return RemoteError::HostKey { url: url.to_owned() };
    }
    let auth = source
        .classify()
        .any(|c| matches!(c.class(), Class::Unauthenticated | Class::PermissionDenied))
        || text.contains("401")
        || text.contains("no credentials")
        || text.contains("Permission denied");
    if auth {
        RemoteError::Auth {
            url: url.to_owned(),
            source: Some(source),
        }
    } else {
        RemoteError::Fetch {
            url: url.to_owned(),
            ssh_says,
            source,
        }
    }
}
