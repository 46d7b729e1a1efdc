//! Running the `git` that `--git` names (and hook commands): captured output,
//! a deadline, and errors that carry the command line and git's stderr.
//!
//! Standard input (credentials go through it) is never logged nor put in an
//! error. Command lines are logged at -v5 and outputs at -v6, as git-sync does.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;

use super::log::Log;

/// A command that failed: the command line, what went wrong, and its output.
#[derive(Debug, thiserror::Error)]
#[error("Run({cmd}): {kind}: {{ stdout: {stdout:?}, stderr: {stderr:?} }}")]
pub struct CmdError {
    /// The command line as logged.
    pub cmd: String,
    /// Why it failed.
    pub kind: CmdFailure,
    /// Its standard output, trimmed.
    pub stdout: String,
    /// Its standard error, trimmed.
    pub stderr: String,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdFailure {
    /// It could not be started.
    #[error("{0}")]
    Spawn(#[source] std::io::Error),
    /// It ran and exited unsuccessfully.
    #[error("{0}")]
    Exit(ExitStatus),
    /// The deadline passed; it was killed.
    #[error("context deadline exceeded")]
    Timeout,
}

/// The output of a successful command, trimmed of surrounding whitespace.
#[derive(Debug, Default, Clone)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// How to run one command.
pub struct Spec<'a> {
    /// The program (looked up on PATH).
    pub program: &'a str,
    /// Its arguments.
    pub args: &'a [&'a str],
    /// Working directory, or the current one.
    pub cwd: Option<&'a Path>,
    /// Variables added to (or replacing those of) the inherited environment.
    pub env: &'a [(OsString, OsString)],
    /// Written to its standard input, never logged.
    pub stdin: Option<&'a str>,
    /// Killed when this passes.
    pub deadline: Instant,
}

/// The `git` that `--git` names, with the environment every git call gets
/// (private global config, ssh command).
#[derive(Clone, Debug)]
pub struct Git {
    /// The program (looked up on PATH).
    pub program: String,
    /// Added to the inherited environment of every git call and hook.
    pub env: Vec<(OsString, OsString)>,
    /// Where commands are logged.
    pub log: Log,
}

impl Git {
    /// Runs `git <args>` in `cwd` until `deadline`.
    pub async fn run(&self, cwd: Option<&Path>, args: &[&str], deadline: Instant) -> Result<Output, CmdError> {
        self.run_stdin(cwd, args, None, deadline).await
    }

    /// Runs `git <args>` with `stdin` (never logged) until `deadline`.
    pub async fn run_stdin(
        &self,
        cwd: Option<&Path>,
        args: &[&str],
        stdin: Option<&str>,
        deadline: Instant,
    ) -> Result<Output, CmdError> {
        run(
            &self.log,
            Spec {
                program: &self.program,
                args,
                cwd,
                env: &self.env,
                stdin,
                deadline,
            },
        )
        .await
    }
}

/// Runs `spec`, logging through `log`.
pub async fn run(log: &Log, spec: Spec<'_>) -> Result<Output, CmdError> {
    let cmd_str = cmd_for_log(spec.program, spec.args);
    log.info(
        5,
        "running command",
        &[
            (
                "cwd",
                Value::from(spec.cwd.map(|p| p.display().to_string()).unwrap_or_default()),
            ),
            ("cmd", Value::from(cmd_str.clone())),
        ],
    );
    let mut cmd = tokio::process::Command::new(spec.program);
    cmd.args(spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = spec.cwd {
        cmd.current_dir(cwd);
    }
    let start = std::time::Instant::now();
    let fail = |kind, stdout: &[u8], stderr: &[u8]| CmdError {
        cmd: cmd_str.clone(),
        kind,
        stdout: trim(stdout),
        stderr: trim(stderr),
    };
    let mut child = cmd.spawn().map_err(|e| fail(CmdFailure::Spawn(e), b"", b""))?;
    if let (Some(input), Some(mut pipe)) = (spec.stdin, child.stdin.take()) {
        // A child that does not read its input is not an error here: its
        // exit status says what happened.
        let _ = pipe.write_all(input.as_bytes()).await;
        drop(pipe);
    }
    let out = match tokio::time::timeout_at(spec.deadline, child.wait_with_output()).await {
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
    log.info(
        6,
        "command result",
        &[
            ("stdout", Value::from(output.stdout.clone())),
            ("stderr", Value::from(output.stderr.clone())),
            ("time", Value::from(format!("{:?}", start.elapsed()))),
        ],
    );
    Ok(output)
}

fn trim(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// The command line as git-sync logs it: words with blanks are quoted.
pub fn cmd_for_log(program: &str, args: &[&str]) -> String {
    let quote = |s: &str| {
        if s.contains([' ', '\t', '\n']) {
            format!("{s:?}")
        } else {
            s.to_string()
        }
    };
    let mut out = quote(program);
    for a in args {
        out.push(' ');
        out.push_str(&quote(a));
    }
    out
}

/// A deadline `d` from now, saturating far in the future.
pub fn deadline_in(d: Duration) -> Instant {
    Instant::now()
        .checked_add(d)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(program: &'a str, args: &'a [&'a str], deadline: Instant) -> Spec<'a> {
        Spec {
            program,
            args,
            cwd: None,
            env: &[],
            stdin: None,
            deadline,
        }
    }

    #[tokio::test]
    async fn failures_carry_stderr_and_the_command() {
        let log = Log::new(0, None);
        let args = ["-c", "echo out; echo 'no such ref' >&2; exit 3"];
        let err = run(&log, spec("sh", &args, deadline_in(Duration::from_secs(10))))
            .await
            .expect_err("exit 3 is a failure");
        assert_eq!(err.stderr, "no such ref");
        assert_eq!(err.stdout, "out");
        let text = err.to_string();
        assert!(text.starts_with("Run(sh -c \"echo out;"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("stderr: \"no such ref\""), "{text}");
    }

    #[tokio::test]
    async fn deadline_kills() {
        let log = Log::new(0, None);
        let args = ["-c", "exec sleep 30"];
        let started = std::time::Instant::now();
        let err = run(&log, spec("sh", &args, deadline_in(Duration::from_millis(100))))
            .await
            .expect_err("deadline");
        assert!(matches!(err.kind, CmdFailure::Timeout));
        assert!(err.to_string().contains("context deadline exceeded"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn stdin_is_fed_and_output_trimmed() -> Result<(), CmdError> {
        let log = Log::new(0, None);
        let args = ["-c", "cat; echo"];
        let mut s = spec("sh", &args, deadline_in(Duration::from_secs(10)));
        s.stdin = Some("  secret\n");
        let out = run(&log, s).await?;
        assert_eq!(out.stdout, "secret");
        Ok(())
    }

    #[test]
    fn quoting_for_logs() {
        assert_eq!(cmd_for_log("git", &["config", "a b"]), "git config \"a b\"");
    }
}
