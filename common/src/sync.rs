//! git-sync: keeps a Git repository checked out under a root directory and
//! publishes each new revision atomically through a symlink whose target's
//! basename is the commit hash. A drop-in for kubernetes/git-sync v4: the
//! same git commands against the `git` it is told to use, the same layout,
//! hooks, metrics, HTTP endpoint and exit behaviour.
//!
//! [`run`] owns the loop; [`repo`] the git sequence of one sync; [`hook`]
//! the exechooks and webhook; [`http`] the endpoint; [`credentials`] and
//! [`github`] what is handed to git's credential helper; [`reap`] the PID 1
//! shim.

pub mod credentials;
pub mod fs;
pub mod git;
pub mod gitconfig;
pub mod github;
pub mod hook;
pub mod http;
pub mod log;
pub mod metrics;
pub mod read;
pub mod reap;
pub mod repo;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use self::credentials::{Credential, CredentialError};
use self::git::Git;
use self::github::GithubApp;
use self::hook::{ExecHookConfig, Hook, HookRunner, WebhookConfig};
use self::log::Log;
use self::metrics::Metrics;
pub use self::repo::{GitGc, Submodules};
use self::repo::{Publish, Repo};

/// Where git-sync keeps SSH and cookie secrets in its image.
pub const COOKIE_FILE: &str = "/etc/git-secret/cookie_file";

/// Everything a run needs; built from flags by the binary.
#[derive(Clone, Debug)]
pub struct Config {
    /// The repository URL (userinfo already moved into `credentials`).
    pub repo: String,
    /// Branch, tag, full hash or `HEAD`.
    pub git_ref: String,
    /// `--root` as given (made absolute and symlink-free at start).
    pub root: PathBuf,
    /// `--link`: absolute, or relative to the root.
    pub link: PathBuf,
    /// `--depth`: 0 for full history.
    pub depth: u32,
    /// `--filter` for a partial clone.
    pub filter: Option<String>,
    /// `--submodules`.
    pub submodules: Submodules,
    /// `--sparse-checkout-file`.
    pub sparse_checkout_file: Option<PathBuf>,
    /// `--git`: the git program.
    pub git: String,
    /// `--git-config` then `--git-config-add` pairs, applied in order.
    pub git_config: Vec<(String, String)>,
    /// `--git-gc`.
    pub git_gc: GitGc,
    /// `--period`.
    pub period: Duration,
    /// `--init-period` (already defaulted to `period`).
    pub init_period: Duration,
    /// `--sync-timeout`.
    pub sync_timeout: Duration,
    /// `--one-time`.
    pub one_time: bool,
    /// `--max-failures`: negative retries forever.
    pub max_failures: i64,
    /// `--init-max-failures`, when set.
    pub init_max_failures: Option<i64>,
    /// `--error-file`: absolute, or relative to the root.
    pub error_file: Option<PathBuf>,
    /// `--touch-file`: absolute, or relative to the root.
    pub touch_file: Option<PathBuf>,
    /// `--stale-worktree-timeout`.
    pub stale_worktree_timeout: Duration,
    /// `--sync-on-signal`, as a signal number.
    pub sync_on_signal: Option<i32>,
    /// `--add-user`.
    pub add_user: bool,
    /// `--group-write`: umask 002 instead of 022.
    pub group_write: bool,
    /// `--exechook-*`.
    pub exechook: Option<ExecHookConfig>,
    /// `--pre-publish-exechook-*`.
    pub pre_publish_exechook: Option<ExecHookConfig>,
    /// `--webhook-*`.
    pub webhook: Option<WebhookConfig>,
    /// `--http-bind`.
    pub http_bind: Option<String>,
    /// `--http-metrics`.
    pub http_metrics: bool,
    /// `--http-pprof`.
    pub http_pprof: bool,
    /// `--username`/password first, then every `--credential`.
    pub credentials: Vec<Credential>,
    /// `--askpass-url`.
    pub askpass_url: Option<String>,
    /// `--cookie-file`.
    pub cookie_file: bool,
    /// `--ssh-key-file` (repeatable).
    pub ssh_key_files: Vec<PathBuf>,
    /// `--ssh-known-hosts`.
    pub ssh_known_hosts: bool,
    /// `--ssh-known-hosts-file`.
    pub ssh_known_hosts_file: PathBuf,
    /// GitHub App authentication.
    pub github_app: Option<GithubApp>,
    /// `-v`.
    pub verbosity: u8,
    /// The flags set, rendered with secrets redacted, for the start-up log.
    pub flags_for_log: Vec<String>,
    /// This program's version.
    pub version: String,
}

/// How a run ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    /// `--one-time`: synced; `hooks_ok` is false if a hook failed.
    OneTime {
        /// Whether every hook succeeded.
        hooks_ok: bool,
    },
    /// Parked after syncing a hash, then interrupted (SIGINT).
    Interrupted,
}

/// Why a run stopped with an error (the process exits 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The git program is not on PATH.
    #[error("git executable not found: {0:?}")]
    GitNotFound(String),
    /// Setting up (root, config, user, HTTP) failed.
    #[error("{what}")]
    Setup {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Consecutive failures reached the limit.
    #[error("too many failures, aborting")]
    TooManyFailures,
    /// The HTTP endpoint stopped.
    #[error("HTTP server terminated")]
    HttpServer(#[source] std::io::Error),
}

fn setup_err(what: impl Into<String>) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> RunError {
    move |source| RunError::Setup {
        what: what.into(),
        source,
    }
}

/// The error file's absolute path for `root` (absolute), if configured.
pub fn error_file_path(error_file: Option<&Path>, root: &Path) -> Option<PathBuf> {
    error_file.map(|f| root.join(f))
}

/// `root` made absolute and cleaned (not yet symlink-free).
pub fn absolute_root(root: &Path) -> std::io::Result<PathBuf> {
    let abs = if root.is_absolute() {
        root.to_path_buf()
    } else {
        std::env::current_dir()?.join(root)
    };
    Ok(fs::clean(&abs))
}

struct Hooks {
    pre_publish: Option<HookRunner>,
    exechook: Option<HookRunner>,
    webhook: Option<HookRunner>,
}

impl Publish for Hooks {
    fn before_publish(&mut self, hash: &str) {
        if let Some(h) = &self.pre_publish {
            h.send(hash);
        }
    }

    fn after_publish(&mut self, hash: &str) {
        for h in [&self.exechook, &self.webhook].into_iter().flatten() {
            h.send(hash);
        }
    }
}

/// Shared with the HTTP endpoint.
pub struct State {
    /// Set after the first successful sync.
    pub ready: AtomicBool,
    /// The metrics.
    pub metrics: Arc<Metrics>,
}

/// Runs git-sync until `--one-time` finishes, the failure limit is hit, or
/// the process is interrupted while parked on a hash. `log` is the logger
/// the binary built (verbosity and error file).
pub async fn run(config: Config, log: Log) -> Result<Finished, RunError> {
    log.info(
        0,
        "starting up",
        &[
            ("version", config.version.clone().into()),
            ("pid", std::process::id().into()),
            ("uid", nix::unistd::getuid().as_raw().into()),
            ("gid", nix::unistd::getgid().as_raw().into()),
            ("home", std::env::var("HOME").unwrap_or_default().into()),
            ("flags", config.flags_for_log.clone().into()),
        ],
    );
    if find_in_path(&config.git).is_none() {
        let e = RunError::GitNotFound(config.git.clone());
        log.error(
            Some(&e),
            "FATAL: git executable not found",
            &[("git", config.git.clone().into())],
        );
        return Err(e);
    }

    let mask = if config.group_write { 0o002 } else { 0o022 };
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));

    let abs_root = absolute_root(&config.root).map_err(|e| fatal(&log, "can't absolutize --root", e))?;
    fs::mkdir_all(&abs_root).map_err(|e| fatal(&log, "FATAL: can't make root dir", e))?;
    let root = std::fs::canonicalize(&abs_root).map_err(|e| fatal(&log, "FATAL: can't normalize root path", e))?;
    if root != config.root {
        log.info(
            0,
            "normalized root path",
            &[
                ("root", config.root.display().to_string().into()),
                ("result", root.display().to_string().into()),
            ],
        );
    }
    let link = fs::clean(&root.join(&config.link));
    let touch_file = config.touch_file.as_ref().map(|t| fs::clean(&root.join(t)));

    if config.add_user {
        add_user().map_err(|e| fatal(&log, "FATAL: can't add user", e))?;
    }

    // git's private global config: the user's own is left alone.
    let gitconfig = tempfile::Builder::new()
        .prefix("git-sync.gitconfig.")
        .tempfile()
        .map_err(|e| fatal(&log, "FATAL: can't create gitconfig file", e))?
        .into_temp_path();
    log.info(
        2,
        "created private gitconfig file",
        &[("path", gitconfig.display().to_string().into())],
    );
    let mut env: Vec<(OsString, OsString)> = vec![
        ("GIT_CONFIG_GLOBAL".into(), gitconfig.as_os_str().to_owned()),
        ("GIT_CONFIG_NOSYSTEM".into(), "true".into()),
    ];
    env.push(("GIT_SSH_COMMAND".into(), ssh_command(&config, &log).into()));
    let git = Git {
        program: config.git.clone(),
        env,
        log: log.clone(),
    };
    setup_git(&git, &config)
        .await
        .map_err(|e| fatal_boxed(&log, "can't set up git", e))?;

    let metrics = Arc::new(Metrics::new().map_err(|e| fatal(&log, "can't register metrics", e))?);
    let state = Arc::new(State {
        ready: AtomicBool::new(false),
        metrics: metrics.clone(),
    });

    let server = match &config.http_bind {
        Some(bind) => {
            let listener = http::bind(bind)
                .await
                .map_err(|e| fatal(&log, &format!("can't bind HTTP endpoint {bind}"), e))?;
            let mut reasons = vec!["liveness"];
            if config.http_metrics {
                reasons.push("metrics");
            }
            if config.http_pprof {
                reasons.push("pprof");
            }
            log.info(
                0,
                "serving HTTP",
                &[
                    ("endpoint", bind.clone().into()),
                    (
                        "address",
                        listener.local_addr().map(|a| a.to_string()).unwrap_or_default().into(),
                    ),
                    ("reasons", reasons.into()),
                ],
            );
            let opts = http::Options {
                metrics: config.http_metrics,
                pprof: config.http_pprof,
            };
            Some(tokio::spawn(http::serve(listener, state.clone(), opts)))
        }
        None => None,
    };

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| fatal(&log, "can't build an HTTP client", e))?;
    let worktrees = root.join(".worktrees");
    let exec_hook = |name: &'static str, c: &ExecHookConfig| {
        HookRunner::spawn(
            Hook::Exec {
                name,
                config: c.clone(),
                worktrees: worktrees.clone(),
                env: git.env.clone(),
            },
            log.named(name),
            metrics.clone(),
            config.one_time,
        )
    };
    let hooks = Hooks {
        pre_publish: config
            .pre_publish_exechook
            .as_ref()
            .map(|c| exec_hook("pre-publish-exechook", c)),
        exechook: config.exechook.as_ref().map(|c| exec_hook("exechook", c)),
        webhook: config.webhook.as_ref().map(|c| {
            HookRunner::spawn(
                Hook::Web {
                    config: c.clone(),
                    client: client.clone(),
                },
                log.named("webhook"),
                metrics.clone(),
                config.one_time,
            )
        }),
    };

    let repo = Repo {
        git: git.clone(),
        root,
        repo: config.repo.clone(),
        git_ref: config.git_ref.clone(),
        depth: config.depth,
        filter: config.filter.clone(),
        submodules: config.submodules,
        gc: config.git_gc,
        link,
        sparse_checkout_file: config.sparse_checkout_file.clone(),
        stale_timeout: config.stale_worktree_timeout,
        sync_count: 0,
        fetch_count: metrics.fetch_count.clone(),
    };
    let looped = sync_loop(&config, &log, repo, hooks, state, &client, touch_file.as_deref());
    let result = match server {
        Some(mut server) => {
            tokio::select! {
                r = looped => r,
                r = &mut server => {
                    let e = match r {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => std::io::Error::other("stopped"),
                        Err(e) => std::io::Error::other(e.to_string()),
                    };
                    log.error(Some(&e), "HTTP server terminated", &[]);
                    Err(RunError::HttpServer(e))
                }
            }
        }
        None => looped.await,
    };
    drop(gitconfig);
    result
}

fn fatal(log: &Log, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> RunError {
    fatal_boxed(log, what, Box::new(e))
}

fn fatal_boxed(log: &Log, what: &str, e: Box<dyn std::error::Error + Send + Sync>) -> RunError {
    log.error(Some(e.as_ref()), what, &[]);
    setup_err(what)(e)
}

#[allow(clippy::too_many_arguments)]
async fn sync_loop(
    config: &Config,
    log: &Log,
    mut repo: Repo,
    mut hooks: Hooks,
    state: Arc<State>,
    client: &reqwest::Client,
    touch_file: Option<&Path>,
) -> Result<Finished, RunError> {
    let mut sync_signal = match config.sync_on_signal {
        Some(sig) => {
            log.info(1, "installing signal handler", &[("signal", sig.into())]);
            Some(
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(sig))
                    .map_err(|e| fatal(log, "can't install the sync signal handler", e))?,
            )
        }
        None => None,
    };
    let mut creds = CredState::default();
    let mut fail_count: i64 = 0;
    let mut sync_count: u64 = 0;
    let mut initial_done = false;
    let mut wait = config.init_period;
    loop {
        let start = std::time::Instant::now();
        let deadline = git::deadline_in(config.sync_timeout);
        let outcome = match refresh_credentials(config, &repo.git, client, &state.metrics, &mut creds, deadline).await {
            Err(e) => Err(repo::SyncError::Credentials(log::error_chain(e.as_ref()))),
            Ok(()) => repo.sync(&mut hooks, deadline).await,
        };
        match outcome {
            Err(e) => {
                fail_count += 1;
                state.metrics.sync_done(metrics::ERROR, start.elapsed());
                let max = match (initial_done, config.init_max_failures) {
                    (false, Some(n)) => n,
                    _ => config.max_failures,
                };
                if max >= 0 && fail_count >= max {
                    log.error(
                        Some(&e),
                        "too many failures, aborting",
                        &[("failCount", fail_count.into()), ("maxFailures", max.into())],
                    );
                    return Err(RunError::TooManyFailures);
                }
                log.error(
                    Some(&e),
                    "error syncing repo, will retry",
                    &[("failCount", fail_count.into())],
                );
            }
            Ok(synced) => {
                if !initial_done {
                    initial_done = true;
                    wait = config.period;
                    if config.init_period != config.period {
                        log.info(
                            0,
                            "initial sync complete, switching to normal period",
                            &[
                                ("initPeriod", format!("{:?}", config.init_period).into()),
                                ("period", format!("{:?}", config.period).into()),
                            ],
                        );
                    }
                }
                state.ready.store(true, Ordering::SeqCst);
                if synced.changed || sync_count == 0 {
                    if let Some(t) = touch_file {
                        match fs::touch(t) {
                            Ok(()) => log.info(3, "touched touch-file", &[("path", t.display().to_string().into())]),
                            Err(e) => log.error(
                                Some(&e),
                                "failed to touch touch-file",
                                &[("path", t.display().to_string().into())],
                            ),
                        }
                    }
                    state.metrics.sync_done(metrics::SUCCESS, start.elapsed());
                } else {
                    state.metrics.sync_done(metrics::NOOP, start.elapsed());
                }
                sync_count += 1;
                for e in repo.cleanup(deadline).await {
                    log.error(Some(&e), "git cleanup failed", &[]);
                }
                if config.one_time {
                    let mut ok = true;
                    if synced.changed
                        && let Some(h) = &mut hooks.pre_publish
                    {
                        ok &= h.wait().await;
                    }
                    if let Some(h) = &mut hooks.exechook {
                        ok &= h.wait().await;
                    }
                    if let Some(h) = &mut hooks.webhook {
                        ok &= h.wait().await;
                    }
                    log.delete_error_file();
                    log.info(0, "exiting after one sync", &[("status", i32::from(!ok).into())]);
                    return Ok(Finished::OneTime { hooks_ok: ok });
                }
                if synced.hash == config.git_ref {
                    log.info(
                        0,
                        "ref appears to be a git hash, no further sync needed",
                        &[("ref", config.git_ref.clone().into())],
                    );
                    log.delete_error_file();
                    return park().await;
                }
                if fail_count > 0 {
                    log.info(4, "resetting failure count", &[("failCount", fail_count.into())]);
                    fail_count = 0;
                }
                log.delete_error_file();
            }
        }
        log.info(
            3,
            "next sync",
            &[
                ("waitTime", format!("{wait:?}").into()),
                ("syncCount", sync_count.into()),
            ],
        );
        let sleep = tokio::time::sleep(wait);
        match &mut sync_signal {
            Some(sig) => {
                tokio::select! {
                    () = sleep => {}
                    _ = sig.recv() => log.info(1, "caught signal", &[("signal", config.sync_on_signal.into())]),
                }
            }
            None => sleep.await,
        }
    }
}

/// Parked after syncing a fixed hash: nothing more to do; SIGINT exits 0.
async fn park() -> Result<Finished, RunError> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
    Ok(Finished::Interrupted)
}

#[derive(Default)]
struct CredState {
    github_expiry: Option<SystemTime>,
}

async fn refresh_credentials(
    config: &Config,
    git: &Git,
    client: &reqwest::Client,
    metrics: &Metrics,
    state: &mut CredState,
    deadline: tokio::time::Instant,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    for cred in &config.credentials {
        credentials::store_credential(git, cred, deadline).await?;
    }
    if let Some(url) = &config.askpass_url {
        match credentials::call_askpass_url(git, client, url, &config.repo, deadline).await {
            Ok(()) => metrics.askpass_count.with_label_values(&[metrics::SUCCESS]).inc(),
            Err(e) => {
                metrics.askpass_count.with_label_values(&[metrics::ERROR]).inc();
                return Err(Box::new(e));
            }
        }
    }
    if let Some(app) = &config.github_app {
        let soon = SystemTime::now() + Duration::from_secs(30);
        if state.github_expiry.is_none_or(|t| t < soon) {
            match app.refresh(git, client, &config.repo, deadline).await {
                Ok(expiry) => {
                    state.github_expiry = Some(expiry);
                    metrics
                        .github_app_token_count
                        .with_label_values(&[metrics::SUCCESS])
                        .inc();
                }
                Err(e) => {
                    metrics
                        .github_app_token_count
                        .with_label_values(&[metrics::ERROR])
                        .inc();
                    return Err(Box::new(e));
                }
            }
        }
    }
    Ok(())
}

/// `git version`, git-sync's default configs, the cookie file, then the
/// user's `--git-config`/`--git-config-add`, and a log of the result.
async fn setup_git(git: &Git, config: &Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let deadline = git::deadline_in(Duration::from_secs(30));
    let version = git.run(None, &["version"], deadline).await?;
    git.log.info(0, "git version", &[("version", version.stdout.into())]);
    let defaults = [
        ("gc.autoDetach", "false"),
        ("gc.pruneExpire", "now"),
        ("credential.helper", "cache --timeout 3600"),
        ("core.askPass", "true"),
        ("safe.directory", "*"),
    ];
    for (k, v) in defaults {
        git.run(None, &["config", "--global", k, v], deadline).await?;
    }
    if config.cookie_file {
        git.log.info(1, "configuring git cookie file", &[]);
        std::fs::metadata(COOKIE_FILE)
            .map_err(|e| CredentialError::Askpass(format!("can't access git cookiefile: {e}")))?;
        git.run(None, &["config", "--global", "http.cookiefile", COOKIE_FILE], deadline)
            .await?;
    }
    if !config.git_config.is_empty() {
        git.log.info(
            1,
            "setting additional git configs",
            &[(
                "configs",
                config
                    .git_config
                    .iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .into(),
            )],
        );
    }
    for (k, v) in &config.git_config {
        git.run(None, &["config", "--global", k, v], deadline).await?;
    }
    let listed = git.run(None, &["config", "--list", "-z"], deadline).await?;
    let mut configs = serde_json::Map::new();
    for entry in listed.stdout.split('\0').filter(|e| !e.is_empty()) {
        let (k, v) = entry.split_once('\n').unwrap_or((entry, ""));
        configs.insert(k.to_string(), Value::from(v));
    }
    git.log.info(0, "git config", &[("configs", Value::Object(configs))]);
    Ok(())
}

/// `$GIT_SSH_COMMAND` (or `ssh`), more verbose at -v 5/7/9, with every key
/// file and the known-hosts policy.
fn ssh_command(config: &Config, log: &Log) -> String {
    let mut cmd = std::env::var("GIT_SSH_COMMAND")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ssh".into());
    match log.verbosity() {
        9.. => cmd.push_str(" -vvv"),
        7..=8 => cmd.push_str(" -vv"),
        5..=6 => cmd.push_str(" -v"),
        _ => {}
    }
    for key in &config.ssh_key_files {
        cmd.push_str(&format!(" -i {}", key.display()));
    }
    if config.ssh_known_hosts {
        cmd.push_str(&format!(
            " -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
            config.ssh_known_hosts_file.display()
        ));
    } else {
        cmd.push_str(" -o StrictHostKeyChecking=no");
    }
    log.info(9, "setting $GIT_SSH_COMMAND", &[("value", cmd.clone().into())]);
    cmd
}

/// A signal name (`SIGHUP` or `HUP`) to its number.
pub fn signal_number(name: &str) -> Option<i32> {
    let full = if name.starts_with("SIG") {
        name.to_string()
    } else {
        format!("SIG{name}")
    };
    full.parse::<nix::sys::signal::Signal>().ok().map(|s| s as i32)
}

/// The program as `exec` would find it: a path, or a name on `$PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
}

/// Adds `git-sync:x:UID:GID::$HOME:/sbin/nologin` to /etc/passwd when the
/// UID has no entry (ssh needs one).
fn add_user() -> std::io::Result<()> {
    let uid = nix::unistd::getuid();
    if matches!(nix::unistd::User::from_uid(uid), Ok(Some(_))) {
        return Ok(());
    }
    let home = match std::env::var("HOME") {
        Ok(h) if !h.is_empty() => h,
        _ => std::env::current_dir()?.display().to_string(),
    };
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().append(true).open("/etc/passwd")?;
    writeln!(
        f,
        "git-sync:x:{}:{}::{home}:/sbin/nologin",
        uid.as_raw(),
        nix::unistd::getgid().as_raw()
    )
}
