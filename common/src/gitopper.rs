//! git-sync for hosts: Gitopper's per-service GitOps as a mode of git-sync
//! (`git-sync --services FILE`).
//!
//! One repository, many services on many machines. This machine reads the
//! services file (Gitopper's TOML, [`config`]), keeps the services whose
//! `machine` is one of its names, and for each keeps a sparse checkout of
//! just the linked paths ([`checkout`]), shows them where the service reads
//! them ([`links`]), and tells the service when they change ([`action`]);
//! [`tracker`] runs that per service, in Gitopper's states ([`state`]),
//! which survive a restart. [`api`] is the remote API (JSON over HTTP(S),
//! authenticated), [`client`] its `gitopperctl`, [`metrics`] Gitopper's
//! metrics.
//!
//! [`run`] returns how the process should end: SIGINT or SIGTERM stop it
//! (exit 0), SIGHUP or a change of the services file with
//! `--services-restart` end it with Gitopper's exit code 2 (systemd's
//! `Restart=on-failure` starts it again), and a machine with no services
//! exits 0 as Gitopper does.
//!
//! Bootstrapping (Gitopper's `-U -D -B -M -P`): the services file itself
//! comes from the repository, checked out first as the service `gitopper`
//! (sparse on its directory, no action), which is then tracked like any
//! other; with `--services-restart`, a change to the file pushed to the
//! repository restarts git-sync with it.

pub mod action;
pub mod api;
pub mod checkout;
pub mod client;
pub mod config;
pub mod git;
pub mod links;
pub mod metrics;
pub mod state;
pub mod tracker;

use std::convert::Infallible;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::sync::watch;

use self::checkout::Checkout;
use self::git::Git;
use self::metrics::Metrics;
use self::tracker::{Ctx, Tracked};
use crate::sync::log::{Log, error_chain};
use crate::tls::TlsConfig;

/// The name of git-sync's own service when bootstrapping (Gitopper's).
pub const SELF_SERVICE: &str = "gitopper";

/// Everything a run needs; built from flags by the binary.
#[derive(Clone, Debug)]
pub struct Config {
    /// `--services`: the services file (relative to the bootstrap
    /// directory when bootstrapping).
    pub services_file: PathBuf,
    /// The names this machine answers to (`--hostname`, else its hostname).
    pub hostnames: Vec<String>,
    /// `--period`: between pulls, plus up to half again of jitter.
    pub period: Duration,
    /// `--sync-timeout`: one step's git commands and action.
    pub step_timeout: Duration,
    /// `--git`.
    pub git: String,
    /// `--git-config` and `--git-config-add`, in order.
    pub git_config: Vec<(String, String)>,
    /// `GIT_SSH_COMMAND`, when an ssh flag was given.
    pub ssh_command: Option<String>,
    /// HTTP(S) credentials (`--username` with `--password-file` or
    /// `$GITSYNC_PASSWORD` for every upstream, with an empty URL;
    /// `--credential` for the upstreams under its URL).
    pub credentials: Vec<crate::sync::credentials::Credential>,
    /// `--services-links`.
    pub link_mode: links::Mode,
    /// The systemctl program.
    pub systemctl: String,
    /// `--http-bind`: readiness (and metrics).
    pub http_bind: Option<String>,
    /// `--http-metrics`.
    pub http_metrics: bool,
    /// The API, when `--api-bind` is given.
    pub api: Option<ApiConfig>,
    /// `--services-restart`: a change of the services file exits 2.
    pub restart_on_change: bool,
    /// Bootstrapping, when `--bootstrap-upstream` and `--bootstrap-mount`
    /// are given.
    pub bootstrap: Option<Bootstrap>,
    /// The flags set, for the start-up log (no secrets in them).
    pub flags_for_log: Vec<String>,
    /// This program's version.
    pub version: String,
}

/// The API's listener.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `--api-bind`.
    pub bind: String,
    /// HTTPS: `--api-tls-cert-file`, `--api-tls-key-file`, and
    /// `--api-client-ca-file` as the trusted CA.
    pub tls: Option<TlsConfig>,
    /// Who may call.
    pub auth: api::Auth,
}

/// Gitopper's bootstrap flags.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    /// `--bootstrap-upstream`.
    pub upstream: String,
    /// `--bootstrap-directory`: the directory of the repository holding
    /// the services file.
    pub directory: String,
    /// `--bootstrap-branch`.
    pub branch: String,
    /// `--bootstrap-mount`: git-sync's checkout is `<mount>/gitopper`.
    pub mount: PathBuf,
    /// `--bootstrap-pull`: pull before reading the services file.
    pub pull: bool,
}

/// How a run ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    /// SIGINT or SIGTERM (exit 0).
    Stopped,
    /// SIGHUP (exit 2).
    Hangup,
    /// The services file changed, with `--services-restart` (exit 2).
    ServicesChanged,
    /// No service is for this machine (exit 0).
    NoServices,
}

impl Finished {
    /// The exit code.
    pub fn code(&self) -> u8 {
        match self {
            Self::Stopped | Self::NoServices => 0,
            Self::Hangup | Self::ServicesChanged => 2,
        }
    }
}

/// Why a run failed (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The services file is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The services for this machine are inconsistent.
    #[error("{0}")]
    Services(String),
    /// The bootstrap checkout failed.
    #[error("bootstrapping from {upstream}")]
    Bootstrap {
        /// The repository.
        upstream: String,
        /// Why.
        #[source]
        source: checkout::CheckoutError,
    },
    /// Setting up (git, metrics, TLS, a listener, signals) failed.
    #[error("{what}")]
    Setup {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A tracker or server task ended unexpectedly.
    #[error("task {0} ended unexpectedly")]
    TaskDied(String),
}

fn setup(what: impl Into<String>) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> RunError {
    move |source| RunError::Setup {
        what: what.into(),
        source,
    }
}

/// This machine's hostname (`$HOSTNAME` if the system will not say).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// The bootstrap service: the directory holding the services file, checked
/// out at `<mount>/gitopper`, with no link and no action.
pub fn self_service(b: &Bootstrap, machine: &str) -> config::Service {
    config::Service {
        name: SELF_SERVICE.into(),
        machine: machine.into(),
        upstream: b.upstream.clone(),
        branch: b.branch.clone(),
        user: None,
        package: None,
        checkout: b.mount.join(SELF_SERVICE),
        dirs: vec![config::Link {
            local: None,
            link: b.directory.clone(),
            file: false,
        }],
        action: config::Action::Nothing,
    }
}

/// Where the services file is when bootstrapping: under the bootstrap
/// directory of the checkout, whether `--services` is absolute or not (as
/// Gitopper joins them).
pub fn bootstrapped_services_file(b: &Bootstrap, services: &Path) -> PathBuf {
    let rel: PathBuf = services
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::ParentDir))
        .collect();
    b.mount.join(SELF_SERVICE).join(&b.directory).join(rel)
}

/// Runs the services of this machine until a signal (or a change of the
/// services file) ends it. How it ended, or why it failed, is logged.
pub async fn run(config: Config, log: Log) -> Result<Finished, RunError> {
    let result = run_logged(config, &log).await;
    match &result {
        Ok(f) => log.info(
            0,
            "exiting",
            &[("reason", format!("{f:?}").into()), ("code", f.code().into())],
        ),
        Err(e) => log.error(Some(e), "FATAL: exiting", &[]),
    }
    result
}

async fn run_logged(config: Config, log: &Log) -> Result<Finished, RunError> {
    let log = log.clone();
    log.info(
        0,
        "starting up",
        &[
            ("version", config.version.clone().into()),
            ("mode", "services".into()),
            ("pid", std::process::id().into()),
            ("uid", nix::unistd::getuid().as_raw().into()),
            ("hostnames", config.hostnames.clone().into()),
            ("flags", config.flags_for_log.clone().into()),
        ],
    );
    let metrics = Arc::new(Metrics::new().map_err(|e| setup("registering metrics")(Box::new(e)))?);
    let hostname = config.hostnames.first().cloned().unwrap_or_default();
    let mut env: Vec<(OsString, OsString)> = vec![
        ("GIT_AUTHOR_NAME".into(), "git-sync".into()),
        ("GIT_COMMITTER_NAME".into(), "git-sync".into()),
        ("GIT_AUTHOR_EMAIL".into(), format!("git-sync@{hostname}").into()),
        ("GIT_COMMITTER_EMAIL".into(), format!("git-sync@{hostname}").into()),
    ];
    if let Some(ssh) = &config.ssh_command {
        env.push(("GIT_SSH_COMMAND".into(), ssh.into()));
    }

    let mut services_file = config.services_file.clone();
    let mut self_spec = None;
    if let Some(b) = &config.bootstrap {
        let spec = self_service(b, &hostname);
        let git = Git::new(
            config.git.clone(),
            env.clone(),
            &config.git_config,
            config.credentials.clone(),
            &[],
            log.clone(),
            metrics.clone(),
        )
        .await
        .map_err(|e| setup("setting up git")(Box::new(e)))?;
        bootstrap(&git, &spec, b.pull, config.step_timeout, &log).await?;
        services_file = bootstrapped_services_file(b, &config.services_file);
        log.info(
            0,
            "bootstrapped",
            &[("services", services_file.display().to_string().into())],
        );
        self_spec = Some(spec);
    }

    let file = config::read(&services_file)?;
    let ignored = file.ignored_global_keys();
    if !ignored.is_empty() {
        log.info(
            0,
            "keys in [global] that services do not inherit (as in Gitopper): ignored",
            &[("keys", ignored.into())],
        );
    }
    if file.global.keys.as_ref().is_some_and(|k| !k.is_empty()) {
        log.info(
            0,
            "[global] keys (Gitopper's SSH keys) are not used: the API authenticates with --api-token-file or --api-client-ca-file",
            &[],
        );
    }
    let cwd = std::env::current_dir().map_err(|e| setup("reading the current directory")(Box::new(e)))?;
    let mut specs = file.for_machine(&config.hostnames, &cwd).map_err(RunError::Services)?;
    if let Some(s) = self_spec {
        if specs.iter().any(|x| x.name == s.name) {
            return Err(RunError::Services(format!(
                "service {:?} is git-sync's own when bootstrapping, and the services file has one too",
                s.name
            )));
        }
        specs.push(s);
    }
    if specs.is_empty() {
        log.info(
            0,
            "no services for this machine, exiting",
            &[("hostnames", config.hostnames.clone().into())],
        );
        return Ok(Finished::NoServices);
    }

    let owners: Vec<_> = specs.iter().map(|s| git::run_as(s.user.as_deref())).collect();
    let users: Vec<_> = owners.iter().filter_map(|o| o.clone().ok().flatten()).collect();
    let git = Git::new(
        config.git.clone(),
        env,
        &config.git_config,
        config.credentials.clone(),
        &users,
        log.clone(),
        metrics.clone(),
    )
    .await
    .map_err(|e| setup("setting up git")(Box::new(e)))?;
    let ctx = Arc::new(Ctx {
        git,
        runner: action::Runner {
            systemctl: config.systemctl.clone(),
            log: log.clone(),
        },
        metrics: metrics.clone(),
        log: log.clone(),
        link_mode: config.link_mode,
        step_timeout: config.step_timeout,
        os_release: std::fs::read_to_string("/etc/os-release").unwrap_or_default(),
    });
    let now = SystemTime::now();
    let tracked: Vec<Arc<Tracked>> = specs
        .into_iter()
        .zip(owners)
        .map(|(spec, owner)| Arc::new(Tracked::new(spec, owner, now)))
        .collect();
    for t in &tracked {
        t.show(&ctx);
        log.info(
            0,
            "service",
            &[
                ("service", t.spec.name.clone().into()),
                (
                    "upstream",
                    crate::sync::credentials::redact_url(&t.spec.upstream).into(),
                ),
                ("branch", t.spec.branch.clone().into()),
                ("checkout", t.spec.checkout.display().to_string().into()),
                ("state", t.status().state.as_str().into()),
            ],
        );
    }

    let (stop_tx, stop) = watch::channel(false);
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for t in &tracked {
        let (t, ctx, stop, ready) = (t.clone(), ctx.clone(), stop.clone(), ready.clone());
        let period = config.period;
        let name = format!("tracker {}", t.spec.name);
        tasks.spawn(async move {
            track(t, ctx, period, stop, ready).await;
            name
        });
    }

    if let Some(bind) = &config.http_bind {
        let listener = crate::sync::http::bind(bind)
            .await
            .map_err(|e| setup(format!("binding the HTTP endpoint {bind}"))(Box::new(e)))?;
        log_bound(&log, "serving HTTP", bind, &listener);
        let (metrics, ready, total, with_metrics) =
            (metrics.clone(), ready.clone(), tracked.len(), config.http_metrics);
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let answer = endpoint(
                req.uri().path(),
                &metrics,
                with_metrics,
                ready.load(Ordering::SeqCst) >= total,
            );
            async move { Ok::<_, Infallible>(answer) }
        });
        let stop = stop.clone();
        tasks.spawn(async move {
            crate::http::serve(listener, None, service, stop, Duration::from_secs(5)).await;
            "HTTP endpoint".to_string()
        });
    }

    if let Some(api_config) = &config.api {
        let tls = match &api_config.tls {
            Some(t) => {
                let clients = if api_config.auth.client_certs {
                    crate::tls::ClientCerts::Allow
                } else {
                    crate::tls::ClientCerts::Ignore
                };
                Some(crate::tls::acceptor_with(t, clients).map_err(|e| setup("the API's TLS")(Box::new(e)))?)
            }
            None => None,
        };
        let listener = crate::sync::http::bind(&api_config.bind)
            .await
            .map_err(|e| setup(format!("binding the API {}", api_config.bind))(Box::new(e)))?;
        log_bound(&log, "serving the API", &api_config.bind, &listener);
        let api = Arc::new(api::Api {
            services: tracked.clone(),
            machines: file.machines(),
            actual: hostname.clone(),
            auth: api_config.auth.clone(),
            ctx: ctx.clone(),
        });
        let stop = stop.clone();
        tasks.spawn(async move {
            let make = move |peer: &crate::http::Peer| {
                let (api, peer) = (api.clone(), *peer);
                hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { api.handle(&peer, req).await }
                })
            };
            crate::http::serve_per_connection(listener, tls, make, stop, Duration::from_secs(5)).await;
            "API".to_string()
        });
    }

    let signal = |k| tokio::signal::unix::signal(k).map_err(|e| setup("installing signal handlers")(Box::new(e)));
    let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = signal(tokio::signal::unix::SignalKind::hangup())?;
    let watched = config.restart_on_change.then(|| services_file.clone());
    let poll = config.period.min(Duration::from_secs(30));
    let result = tokio::select! {
        _ = sigint.recv() => Ok(Finished::Stopped),
        _ = sigterm.recv() => Ok(Finished::Stopped),
        _ = sighup.recv() => Ok(Finished::Hangup),
        () = watch_file(watched, poll) => Ok(Finished::ServicesChanged),
        Some(done) = tasks.join_next() => Err(RunError::TaskDied(match done {
            Ok(name) => name,
            Err(e) => e.to_string(),
        })),
    };
    let _ = stop_tx.send(true);
    // Trackers stop between steps or inside one (its git is killed).
    if tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tasks.abort_all();
    }
    result
}

fn log_bound(log: &Log, what: &str, bind: &str, listener: &tokio::net::TcpListener) {
    log.info(
        0,
        what,
        &[
            ("endpoint", bind.into()),
            (
                "address",
                listener.local_addr().map(|a| a.to_string()).unwrap_or_default().into(),
            ),
        ],
    );
}

/// `--http-bind`: `/metrics` (with `--http-metrics`), and every other path
/// git-sync's readiness: 503 until every service has had its first step.
fn endpoint(path: &str, metrics: &Metrics, with_metrics: bool, ready: bool) -> Response<Full<Bytes>> {
    let (status, ctype, body) = if with_metrics && path == "/metrics" {
        match metrics.render() {
            Ok(b) => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", b),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            ),
        }
    } else if ready {
        (StatusCode::OK, "text/plain; charset=utf-8", String::new())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "services are not ready\n".to_string(),
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

/// One tracker: a step now, then one per period (with Gitopper's jitter of
/// up to half a period) or when woken, until `stop`.
async fn track(
    t: Arc<Tracked>,
    ctx: Arc<Ctx>,
    period: Duration,
    mut stop: watch::Receiver<bool>,
    ready: Arc<AtomicUsize>,
) {
    let mut first = true;
    loop {
        tokio::select! {
            () = t.step(&ctx) => {}
            () = crate::http::stopped(&mut stop) => return,
        }
        if first {
            first = false;
            ready.fetch_add(1, Ordering::SeqCst);
        }
        let jitter = period.mul_f64(rand::random::<f64>() / 2.0);
        tokio::select! {
            () = tokio::time::sleep(period + jitter) => {}
            () = t.wake.notified() => {}
            () = crate::http::stopped(&mut stop) => return,
        }
    }
}

/// Completes when the file's content changes (polled every `poll`); never
/// without a file.
async fn watch_file(file: Option<PathBuf>, poll: Duration) {
    let Some(file) = file else {
        return std::future::pending().await;
    };
    let first = std::fs::read(&file).ok();
    loop {
        tokio::time::sleep(poll).await;
        let now = std::fs::read(&file).ok();
        if now.is_some() && now != first {
            return;
        }
    }
}

/// The bootstrap checkout: cloned if missing (or brought in line), pulled
/// with `pull` (a failure only warns: the checkout there may do).
async fn bootstrap(
    git: &Git,
    spec: &config::Service,
    pull: bool,
    timeout: Duration,
    log: &Log,
) -> Result<(), RunError> {
    let co = Checkout {
        dir: spec.checkout.clone(),
        upstream: spec.upstream.clone(),
        branch: spec.branch.clone(),
        links: spec.dirs.iter().map(|d| d.link.clone()).collect(),
        owner: None,
    };
    let deadline = crate::sync::git::deadline_in(timeout);
    let err = |source| RunError::Bootstrap {
        upstream: crate::sync::credentials::redact_url(&spec.upstream),
        source,
    };
    if co.exists() {
        co.configure(git, deadline).await.map_err(err)?;
        if pull {
            let pulled = async {
                let tip = co.fetch(git, deadline).await?;
                co.check_out_branch_at(git, &tip, deadline).await
            };
            if let Err(e) = pulled.await {
                log.error(
                    None,
                    "bootstrap pull failed, continuing with the checkout there",
                    &[("error", error_chain(&e).into())],
                );
            }
        }
    } else {
        co.clone_repo(git, deadline).await.map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_paths_are_gitoppers() {
        let b = Bootstrap {
            upstream: "u".into(),
            directory: "gitopper".into(),
            branch: "main".into(),
            mount: "/m".into(),
            pull: false,
        };
        for services in ["config.toml", "/config.toml", "./config.toml"] {
            assert_eq!(
                bootstrapped_services_file(&b, Path::new(services)),
                Path::new("/m/gitopper/gitopper/config.toml")
            );
        }
        let s = self_service(&b, "host");
        assert_eq!(s.checkout, Path::new("/m/gitopper"));
        assert_eq!(s.dirs[0].link, "gitopper");
        assert_eq!(s.action, config::Action::Nothing);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Finished::Stopped.code(), 0);
        assert_eq!(Finished::NoServices.code(), 0);
        assert_eq!(Finished::Hangup.code(), 2);
        assert_eq!(Finished::ServicesChanged.code(), 2);
    }
}
