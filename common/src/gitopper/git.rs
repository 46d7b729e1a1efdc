//! The `git` every service's checkout runs: as the service's user, with a
//! private global config per user, the HTTP(S) credentials through a
//! credential helper, a deadline per command, and Gitopper's git counters.
//! Command lines are logged at -v5 (URL passwords redacted) and outputs at
//! -v6; standard input is never logged.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;

use super::checkout::CheckoutError;
use super::metrics::Metrics;
use crate::sync::credentials::{Credential, redact_url};
use crate::sync::git::{CmdError, CmdFailure, Output, cmd_for_log};
use crate::sync::log::Log;

/// Another user git runs as (git-sync must be root for that).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory (git's `$HOME`).
    pub home: PathBuf,
}

/// Whom git runs as for a service owned by `user`: `None` for git-sync's
/// own user. An unknown user is an error (Gitopper would run git as root),
/// and so is another user when git-sync is not root.
pub fn run_as(user: Option<&str>) -> Result<Option<RunAs>, String> {
    let Some(name) = user else { return Ok(None) };
    let u = nix::unistd::User::from_name(name)
        .map_err(|e| format!("looking up user {name:?}: {e}"))?
        .ok_or_else(|| format!("user {name:?} does not exist"))?;
    let me = nix::unistd::geteuid();
    if u.uid == me {
        return Ok(None);
    }
    if !me.is_root() {
        return Err(format!(
            "git must run as {name:?}, and only root can do that (git-sync runs as uid {me})"
        ));
    }
    Ok(Some(RunAs {
        name: name.to_string(),
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
    }))
}

/// The `git` every checkout uses: the program, the environment every call
/// gets, a private global config per user, the HTTP(S) credentials, the log
/// and the git counters.
///
/// Credentials reach git through a credential helper written into each
/// private config (`credential.<url>.helper` for a credential with a URL,
/// `credential.helper` for one without, which serves every upstream). The
/// helper prints what two variables of git's environment hold: the
/// username and the password, the password file read again before every
/// git call (so that it can be rotated). Neither is in a command line, a
/// file git-sync writes, or a log; the environment of a process is readable
/// by its own user and root only.
#[derive(Clone)]
pub struct Git {
    /// The program (`--git`).
    pub program: String,
    /// Added to every call's environment.
    pub env: Vec<(OsString, OsString)>,
    /// HTTP(S) credentials; a credential without a URL serves every
    /// upstream.
    pub credentials: Arc<Vec<Credential>>,
    /// Where commands are logged (-v5, outputs at -v6).
    pub log: Log,
    /// `gitopper_machine_git_{ops,errors}_total`.
    pub metrics: Arc<Metrics>,
    configs: Arc<Configs>,
}

/// The private global git config files, one per user, each readable only by
/// its user, in a directory others can pass through but not list. Removed
/// when the last [`Git`] goes.
struct Configs {
    _dir: Option<tempfile::TempDir>,
    files: BTreeMap<Option<u32>, PathBuf>,
}

impl Git {
    /// Sets up the private configs (the credential helpers, then the
    /// `--git-config` pairs) for git-sync's own user and each of `users`.
    pub async fn new(
        program: String,
        env: Vec<(OsString, OsString)>,
        config: &[(String, String)],
        credentials: Vec<Credential>,
        users: &[RunAs],
        log: Log,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CheckoutError> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("git-sync-gitopper.")
            .tempdir()
            .map_err(|source| CheckoutError::Io {
                what: "creating the private git config directory".into(),
                source,
            })?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).map_err(|source| {
            CheckoutError::Io {
                what: "setting the private git config directory's mode".into(),
                source,
            }
        })?;
        let mut git = Self {
            program,
            env,
            credentials: Arc::new(credentials),
            log,
            metrics,
            configs: Arc::new(Configs {
                _dir: None,
                files: BTreeMap::new(),
            }),
        };
        let mut files = BTreeMap::new();
        let owners = std::iter::once(None).chain(users.iter().map(|u| Some(u.uid)));
        for uid in owners {
            if files.contains_key(&uid) {
                continue;
            }
            let file = dir
                .path()
                .join(format!("gitconfig-{}", uid.map_or("self".into(), |u| u.to_string())));
            std::fs::write(&file, "").map_err(|source| CheckoutError::Io {
                what: format!("writing {}", file.display()),
                source,
            })?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
                CheckoutError::Io {
                    what: format!("setting the mode of {}", file.display()),
                    source,
                }
            })?;
            let f = file.to_string_lossy().into_owned();
            let deadline = crate::sync::git::deadline_in(std::time::Duration::from_secs(30));
            // Credentials with a URL first: git asks the helpers in order
            // and stops at the first that answers.
            let mut helpers: Vec<(String, String)> = Vec::new();
            for (i, c) in git.credentials.iter().enumerate().filter(|(_, c)| !c.url.is_empty()) {
                helpers.push((format!("credential.{}.helper", c.url), helper(i)));
            }
            for (i, _) in git.credentials.iter().enumerate().filter(|(_, c)| c.url.is_empty()) {
                helpers.push(("credential.helper".into(), helper(i)));
            }
            for (k, v) in &helpers {
                git.run(None, None, &["config", "--file", &f, "--add", k, v], None, deadline)
                    .await?;
            }
            for (k, v) in config {
                git.run(None, None, &["config", "--file", &f, k, v], None, deadline)
                    .await?;
            }
            if let Some(uid) = uid {
                std::os::unix::fs::chown(&file, Some(uid), None).map_err(|source| CheckoutError::Io {
                    what: format!("giving {} to uid {uid}", file.display()),
                    source,
                })?;
            }
            files.insert(uid, file);
        }
        git.configs = Arc::new(Configs { _dir: Some(dir), files });
        Ok(git)
    }

    /// Runs `git <args>` in `cwd`, as `user` when given, until `deadline`.
    pub async fn run(
        &self,
        user: Option<&RunAs>,
        cwd: Option<&Path>,
        args: &[&str],
        stdin: Option<&str>,
        deadline: Instant,
    ) -> Result<Output, CmdError> {
        self.metrics.git_ops.inc();
        let out = self.run_uncounted(user, cwd, args, stdin, deadline).await;
        if out.is_err() {
            self.metrics.git_errors.inc();
        }
        out
    }

    async fn run_uncounted(
        &self,
        user: Option<&RunAs>,
        cwd: Option<&Path>,
        args: &[&str],
        stdin: Option<&str>,
        deadline: Instant,
    ) -> Result<Output, CmdError> {
        // An upstream may carry a password in its URL: never in a log or
        // an error.
        let redacted: Vec<String> = args.iter().map(|a| redact_url(a)).collect();
        let redacted: Vec<&str> = redacted.iter().map(String::as_str).collect();
        let cmd_str = cmd_for_log(&self.program, &redacted);
        self.log.info(
            5,
            "running command",
            &[
                (
                    "cwd",
                    Value::from(cwd.map(|p| p.display().to_string()).unwrap_or_default()),
                ),
                ("cmd", Value::from(cmd_str.clone())),
                ("user", Value::from(user.map(|u| u.name.clone()).unwrap_or_default())),
            ],
        );
        let mut cmd = tokio::process::Command::new(&self.program);
        for (i, c) in self.credentials.iter().enumerate() {
            let password = match &c.password_file {
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(p) => p.trim_end_matches(['\n', '\r']).to_string(),
                    Err(e) => {
                        let e = std::io::Error::new(e.kind(), format!("reading password file {}: {e}", path.display()));
                        return Err(CmdError {
                            cmd: cmd_str,
                            kind: CmdFailure::Spawn(e),
                            stdout: String::new(),
                            stderr: String::new(),
                        });
                    }
                },
                None => c.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default(),
            };
            cmd.env(format!("{CREDENTIAL_VAR}_USERNAME_{i}"), &c.username)
                .env(format!("{CREDENTIAL_VAR}_PASSWORD_{i}"), password);
        }
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("GIT_CONFIG_NOSYSTEM", "true")
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(f) = self.configs.files.get(&user.map(|u| u.uid)) {
            cmd.env("GIT_CONFIG_GLOBAL", f);
        }
        if let Some(u) = user {
            // std drops root's supplementary groups when it sets the uid.
            cmd.uid(u.uid).gid(u.gid).env("HOME", &u.home).env("USER", &u.name);
        }
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let fail = |kind, stdout: &[u8], stderr: &[u8]| CmdError {
            cmd: cmd_str.clone(),
            kind,
            stdout: trim(stdout),
            stderr: trim(stderr),
        };
        let started = std::time::Instant::now();
        let mut child = cmd.spawn().map_err(|e| fail(CmdFailure::Spawn(e), b"", b""))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(input.as_bytes()).await;
            drop(pipe);
        }
        let out = match tokio::time::timeout_at(deadline, child.wait_with_output()).await {
            Err(_) => return Err(fail(CmdFailure::Timeout, b"", b"")),
            Ok(Err(e)) => return Err(fail(CmdFailure::Spawn(e), b"", b"")),
            Ok(Ok(out)) => out,
        };
        if !out.status.success() {
            return Err(fail(CmdFailure::Exit(out.status), &out.stdout, &out.stderr));
        }
        let output = Output {
            stdout: trim(&out.stdout),
            stderr: trim(&out.stderr),
        };
        self.log.info(
            6,
            "command result",
            &[
                ("stdout", Value::from(output.stdout.clone())),
                ("stderr", Value::from(output.stderr.clone())),
                ("time", Value::from(format!("{:?}", started.elapsed()))),
            ],
        );
        Ok(output)
    }
}

/// The prefix of the variables that hand credentials to the helper.
const CREDENTIAL_VAR: &str = "GITSYNC_SERVICES_CREDENTIAL";

/// The credential helper for credential `i`: it answers `get` with the
/// username and password in git's environment, and ignores `store` and
/// `erase` (nothing is kept).
fn helper(i: usize) -> String {
    format!(
        "!f() {{ test \"$1\" = get || exit 0; printf 'username=%s\\npassword=%s\\n' \
         \"${CREDENTIAL_VAR}_USERNAME_{i}\" \"${CREDENTIAL_VAR}_PASSWORD_{i}\"; }}; f"
    )
}

fn trim(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(run_as(None), Ok(None));
        assert!(
            run_as(Some("no-such-user-here"))
                .expect_err("unknown")
                .contains("does not exist")
        );
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name);
        if let Some(me) = me {
            assert_eq!(run_as(Some(&me)), Ok(None), "git-sync's own user");
        }
    }

    #[test]
    fn the_credential_helper_answers_get_only() -> Result<(), Box<dyn std::error::Error>> {
        let script = helper(3);
        let body = script.strip_prefix('!').ok_or("a shell helper")?;
        let run = |op: &str| -> Result<String, Box<dyn std::error::Error>> {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{body} \"$@\""))
                .arg("helper")
                .arg(op)
                .env(format!("{CREDENTIAL_VAR}_USERNAME_3"), "alice")
                .env(format!("{CREDENTIAL_VAR}_PASSWORD_3"), "p a$s'w\\d")
                .output()?;
            assert!(out.status.success());
            Ok(String::from_utf8(out.stdout)?)
        };
        assert_eq!(run("get")?, "username=alice\npassword=p a$s'w\\d\n");
        assert_eq!(run("store")?, "");
        assert_eq!(run("erase")?, "");
        assert!(!script.contains("alice"), "the helper holds no credential itself");
        Ok(())
    }
}
