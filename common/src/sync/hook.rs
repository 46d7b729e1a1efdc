//! Hooks run after (or, for the pre-publish exechook, just before) a hash is
//! published: an exechook (a command run in the new worktree with
//! `GITSYNC_HASH` added to the environment) and a webhook (an HTTP request
//! carrying a `Gitsync-Hash` header).
//!
//! Each hook has a runner task fed through a "newest value wins" channel:
//! while a hook is failing and backing off, only the newest hash is kept,
//! and a hash that succeeded is not run again by this process. Delivery is
//! at least once per hash (a restart runs the hook again), so hooks must be
//! idempotent. In one-time mode a runner makes one attempt and reports
//! whether it succeeded.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{oneshot, watch};

use super::git::{self, CmdError, Spec};
use super::log::Log;
use super::metrics::Metrics;

/// An exechook's settings.
#[derive(Clone, Debug)]
pub struct ExecHookConfig {
    /// The command, run without arguments (no shell).
    pub command: String,
    /// Killed after this long.
    pub timeout: Duration,
    /// Wait this long before retrying a failure.
    pub backoff: Duration,
}

/// A webhook's settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Where to send it.
    pub url: String,
    /// The HTTP method.
    pub method: String,
    /// The status that means success; 0 accepts any answer.
    pub success_status: u16,
    /// Request timeout.
    pub timeout: Duration,
    /// Wait this long before retrying a failure.
    pub backoff: Duration,
}

/// What a hook does with a hash.
pub enum Hook {
    /// Run a command in the hash's worktree.
    Exec {
        /// `exechook` or `pre-publish-exechook`: the metric label and logger.
        name: &'static str,
        /// Settings.
        config: ExecHookConfig,
        /// `<root>/.worktrees`: the command runs in `<this>/<hash>`.
        worktrees: PathBuf,
        /// Environment added to the inherited one (git's private config,
        /// ssh command).
        env: Vec<(OsString, OsString)>,
    },
    /// Send an HTTP request.
    Web {
        /// Settings.
        config: WebhookConfig,
        /// The HTTP client.
        client: reqwest::Client,
    },
}

/// Why one hook run failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The command failed.
    #[error(transparent)]
    Exec(#[from] CmdError),
    /// The request failed.
    #[error("{0}")]
    Http(String),
    /// The webhook answered with another status.
    #[error("received response code {got} expected {want}, body: {body:?}")]
    Status {
        /// Status received.
        got: u16,
        /// Status expected.
        want: u16,
        /// Body received.
        body: String,
    },
}

impl Hook {
    /// The metric label and logger name.
    pub fn name(&self) -> &'static str {
        match self {
            Hook::Exec { name, .. } => name,
            Hook::Web { .. } => "webhook",
        }
    }

    fn backoff(&self) -> Duration {
        match self {
            Hook::Exec { config, .. } => config.backoff,
            Hook::Web { config, .. } => config.backoff,
        }
    }

    async fn run(&self, log: &Log, hash: &str) -> Result<(), HookError> {
        match self {
            Hook::Exec {
                config, worktrees, env, ..
            } => {
                let mut env = env.clone();
                env.push(("GITSYNC_HASH".into(), hash.into()));
                let cwd = worktrees.join(hash);
                log.info(
                    0,
                    "running exechook",
                    &[
                        ("hash", hash.into()),
                        ("command", config.command.clone().into()),
                        ("timeout", format!("{:?}", config.timeout).into()),
                    ],
                );
                let out = git::run(
                    log,
                    Spec {
                        program: &config.command,
                        args: &[],
                        cwd: Some(&cwd),
                        env: &env,
                        stdin: None,
                        deadline: git::deadline_in(config.timeout),
                    },
                )
                .await?;
                log.info(
                    1,
                    "exechook succeeded",
                    &[
                        ("hash", hash.into()),
                        ("stdout", out.stdout.into()),
                        ("stderr", out.stderr.into()),
                    ],
                );
                Ok(())
            }
            Hook::Web { config, client } => {
                log.info(
                    0,
                    "sending webhook",
                    &[
                        ("hash", hash.into()),
                        ("url", config.url.clone().into()),
                        ("method", config.method.clone().into()),
                        ("timeout", format!("{:?}", config.timeout).into()),
                    ],
                );
                let method = reqwest::Method::from_bytes(config.method.as_bytes())
                    .map_err(|e| HookError::Http(format!("invalid method {:?}: {e}", config.method)))?;
                let resp = client
                    .request(method, &config.url)
                    .header("Gitsync-Hash", hash)
                    .timeout(config.timeout)
                    .send()
                    .await
                    .map_err(|e| HookError::Http(super::log::error_chain(&e)))?;
                let got = resp.status().as_u16();
                let body = resp
                    .text()
                    .await
                    .map_err(|e| HookError::Http(super::log::error_chain(&e)))?;
                if config.success_status > 0 && got != config.success_status {
                    return Err(HookError::Status {
                        got,
                        want: config.success_status,
                        body,
                    });
                }
                log.info(
                    1,
                    "webhook succeeded",
                    &[("hash", hash.into()), ("status", got.into()), ("body", body.into())],
                );
                Ok(())
            }
        }
    }
}

/// The producer side of a hook's runner task.
pub struct HookRunner {
    tx: watch::Sender<Option<String>>,
    result: Option<oneshot::Receiver<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl HookRunner {
    /// Starts the runner task. In `one_time` mode it runs the first hash
    /// once and reports the outcome to [`HookRunner::wait`].
    pub fn spawn(hook: Hook, log: Log, metrics: Arc<Metrics>, one_time: bool) -> Self {
        let (tx, mut rx) = watch::channel::<Option<String>>(None);
        let (result_tx, result_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut result_tx = one_time.then_some(result_tx);
            let mut last_ok: Option<String> = None;
            while rx.changed().await.is_ok() {
                loop {
                    let Some(hash) = rx.borrow_and_update().clone() else {
                        break;
                    };
                    if last_ok.as_deref() == Some(hash.as_str()) {
                        break;
                    }
                    let name = hook.name();
                    match hook.run(&log, &hash).await {
                        Ok(()) => {
                            metrics.hook_run_count.with_label_values(&[name, "success"]).inc();
                            last_ok = Some(hash);
                            if let Some(tx) = result_tx.take() {
                                let _ = tx.send(true);
                                return;
                            }
                            break;
                        }
                        Err(e) => {
                            log.error(
                                Some(&e),
                                "hook failed",
                                &[
                                    ("hash", Value::from(hash.clone())),
                                    ("retry", format!("{:?}", hook.backoff()).into()),
                                ],
                            );
                            metrics.hook_run_count.with_label_values(&[name, "error"]).inc();
                            if let Some(tx) = result_tx.take() {
                                let _ = tx.send(false);
                                return;
                            }
                            tokio::time::sleep(hook.backoff()).await;
                        }
                    }
                }
            }
        });
        Self {
            tx,
            result: Some(result_rx),
            task,
        }
    }

    /// Hands the runner a hash; a hash not yet taken is replaced.
    pub fn send(&self, hash: &str) {
        self.tx.send_replace(Some(hash.to_string()));
    }

    /// One-time mode: waits for the single attempt; true if it succeeded.
    pub async fn wait(&mut self) -> bool {
        match self.result.take() {
            Some(rx) => rx.await.unwrap_or(false),
            None => false,
        }
    }
}

impl Drop for HookRunner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn exec_hook(dir: &std::path::Path, script: &str, backoff: Duration) -> Result<Hook, std::io::Error> {
        let cmd = dir.join("hook.sh");
        std::fs::write(&cmd, format!("#!/bin/sh\n{script}\n"))?;
        std::fs::set_permissions(&cmd, std::fs::Permissions::from_mode(0o755))?;
        Ok(Hook::Exec {
            name: "exechook",
            config: ExecHookConfig {
                command: cmd.display().to_string(),
                timeout: Duration::from_secs(10),
                backoff,
            },
            worktrees: dir.join("wt"),
            env: vec![("ENVKEY".into(), "envval".into())],
        })
    }

    async fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let lines: Vec<String> = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            if lines.len() >= n || std::time::Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn exechook_runs_in_the_worktree_with_the_hash() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let log_file = dir.path().join("runs");
        for h in ["aaa", "bbb"] {
            std::fs::create_dir_all(dir.path().join("wt").join(h))?;
        }
        let script = format!(
            "echo \"$(basename \"$PWD\") $GITSYNC_HASH $ENVKEY\" >> {}",
            log_file.display()
        );
        let hook = exec_hook(dir.path(), &script, Duration::from_secs(1))?;
        let metrics = Arc::new(Metrics::new()?);
        let runner = HookRunner::spawn(hook, Log::new(0, None), metrics.clone(), false);
        runner.send("aaa");
        assert_eq!(wait_for_lines(&log_file, 1).await, ["aaa aaa envval"]);
        runner.send("aaa"); // already done: not run again
        runner.send("bbb");
        assert_eq!(wait_for_lines(&log_file, 2).await, ["aaa aaa envval", "bbb bbb envval"]);
        assert_eq!(
            metrics.hook_run_count.with_label_values(&["exechook", "success"]).get(),
            2.0
        );
        Ok(())
    }

    #[tokio::test]
    async fn one_time_reports_failure_after_one_attempt() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("wt/aaa"))?;
        let log_file = dir.path().join("runs");
        let hook = exec_hook(
            dir.path(),
            &format!("echo x >> {}; exit 1", log_file.display()),
            Duration::from_secs(1),
        )?;
        let metrics = Arc::new(Metrics::new()?);
        let mut runner = HookRunner::spawn(hook, Log::new(0, None), metrics.clone(), true);
        runner.send("aaa");
        assert!(!runner.wait().await);
        assert_eq!(std::fs::read_to_string(&log_file)?.lines().count(), 1);
        assert_eq!(
            metrics.hook_run_count.with_label_values(&["exechook", "error"]).get(),
            1.0
        );
        Ok(())
    }
}
