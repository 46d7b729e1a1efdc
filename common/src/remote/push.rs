//! Pushing with the `git` CLI (gix cannot push yet): explicit refspecs,
//! atomic when several refs go together (a branch pair moves as one), never
//! forced, with a deadline after which the child is killed.

use std::path::Path;
use std::time::Duration;

use super::{Credentials, Remote, RemoteError, redact, redact_text};

/// One ref to push: `local` to the remote's `remote_ref`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSpec {
    pub local: String,
    pub remote_ref: String,
}

/// What a successful push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// At least one ref moved.
    Pushed,
    /// The remote already had every ref at these commits.
    UpToDate,
}

/// Pushes `specs` to `remote` in one atomic push: all move or none.
/// A remote ref that moved ahead (someone else pushed) is
/// [`RemoteError::Rejected`].
pub async fn push(
    git_dir: &Path,
    remote: &Remote,
    credentials: &Credentials,
    specs: &[PushSpec],
    timeout: Duration,
) -> Result<PushOutcome, RemoteError> {
    credentials.check_for(&remote.url)?;
    let url = redact(&remote.url);
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["push", "--porcelain", "--no-verify"]);
    if specs.len() > 1 {
        cmd.arg("--atomic");
    }
    // The URL, not the remote's name: fetches are ours (gix) and must not be
    // shadowed by a configured `remote.<name>.push`.
    cmd.arg(&remote.url);
    for s in specs {
        cmd.arg(format!("{}:{}", s.local, s.remote_ref));
    }
    cmd.envs(credentials.git_env())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| RemoteError::Spawn {
        program: "git (push needs it on PATH)".into(),
        source,
    })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.map_err(|source| RemoteError::Spawn {
            program: "git push".into(),
            source,
        })?,
        Err(_) => return Err(RemoteError::Timeout { url, after: timeout }),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = redact_text(String::from_utf8_lossy(&out.stderr).trim());
    // Porcelain lines: "<flag>\t<from>:<to>\t<summary>"; '!' is a rejection,
    // '=' up to date.
    let lines: Vec<(&str, &str, &str)> = stdout
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '\t');
            Some((parts.next()?, parts.next()?, parts.next().unwrap_or("")))
        })
        .collect();
    let rejected: Vec<String> = lines
        .iter()
        .filter(|(flag, _, _)| *flag == "!")
        .map(|(_, refs, summary)| format!("{refs} {summary}"))
        .collect();
    if !out.status.success() {
        if !rejected.is_empty() {
            return Err(RemoteError::Rejected {
                url,
                refs: specs
                    .iter()
                    .map(|s| s.remote_ref.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: rejected.join("; "),
            });
        }
        let auth = stderr.contains("Authentication failed")
            || stderr.contains("could not read Username")
            || stderr.contains("could not read Password")
            || stderr.contains("Permission denied")
            || stderr.contains(" 401");
        if auth {
            return Err(RemoteError::Auth { url, source: None });
        }
        return Err(RemoteError::Push { url, stderr });
    }
    let moved = lines.iter().any(|(flag, _, _)| *flag != "=" && *flag != "!");
    Ok(if moved {
        PushOutcome::Pushed
    } else {
        PushOutcome::UpToDate
    })
}
