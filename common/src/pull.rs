//! Keeping a store's branch pair and an upstream together: fetch the
//! branches to merge, merge each into the store (one revision per merge,
//! through [`Store::apply`]), push the store's pair. `gitcd serve
//! --upstream-ref` runs it with the upstream branch; `gitcd-pull` with
//! every participant's branch (and its own, which someone else may have
//! moved).
//!
//! No lock is held across network I/O: the fetch and the push run while
//! the store serves; a merge is a change set computed off the writer's
//! thread and applied only if the keys it read are unchanged (else it is
//! computed again). An unreachable upstream never blocks serving: passes
//! fail, are retried with exponential backoff and jitter, and the branch
//! catches up when the remote returns. A rejected push (someone moved the
//! remote ref) fetches, merges and pushes again at the next pass, at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gix::ObjectId;

use crate::merge::{self, Incoming, Outcome, Policy};
use crate::remote::{self, Credentials, FetchSpec, PushOutcome, PushSpec, Remote, RemoteError};
use crate::store::{Error as StoreError, Store};

/// What a pull loop does.
#[derive(Clone, Debug)]
pub struct PullConfig {
    pub remote: Remote,
    pub credentials: Credentials,
    /// The remote data refs to merge in, in order; each one's metadata ref
    /// is `refs/gitcd/metadata/<ref>` (its keys' write times).
    pub merge_refs: Vec<String>,
    /// Push the store's branch pair after merging, and soon after each
    /// local write.
    pub push: bool,
    /// How often a pass runs; `Duration::ZERO` runs one pass.
    pub interval: Duration,
    pub policy: Policy,
    /// Deadline of each fetch and push.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("merging {name}")]
    Merge {
        name: String,
        #[source]
        source: merge::MergeError,
    },
    #[error("applying the merge of {name}")]
    Apply {
        name: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    #[error("a blocking task panicked")]
    Panicked,
}

/// Counts and times of the loop's work, for logs, readiness and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsInner>,
    metrics: Option<Metrics>,
}

/// The loop's Prometheus metrics.
#[derive(Debug)]
struct Metrics {
    /// By operation (fetch, merge, push) and result (success, failure).
    operations: prometheus::IntCounterVec,
    /// By operation: the time of the last success.
    last_success: prometheus::GaugeVec,
}

#[derive(Clone, Debug, Default)]
pub struct StatsInner {
    pub fetches: u64,
    pub fetch_failures: u64,
    pub merges: u64,
    pub merge_failures: u64,
    pub pushes: u64,
    pub push_failures: u64,
    pub last_fetch: Option<SystemTime>,
    pub last_merge: Option<SystemTime>,
    pub last_push: Option<SystemTime>,
    /// When a whole pass last succeeded (fetch, merges and, when pushing, the push).
    pub last_pass: Option<Instant>,
}

impl Stats {
    /// Stats that also feed `gitcd_pull_operations_total{operation,result}`
    /// and `gitcd_pull_last_success_timestamp_seconds{operation}` in
    /// `registry`.
    pub fn with_metrics(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let operations = prometheus::IntCounterVec::new(
            prometheus::Opts::new("gitcd_pull_operations_total", "Fetches, merges and pushes, by result"),
            &["operation", "result"],
        )?;
        let last_success = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "gitcd_pull_last_success_timestamp_seconds",
                "When each operation last succeeded (Unix time)",
            ),
            &["operation"],
        )?;
        registry.register(Box::new(operations.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        Ok(Self {
            inner: Mutex::default(),
            metrics: Some(Metrics {
                operations,
                last_success,
            }),
        })
    }

    /// Counts one `operation` (fetch, merge, push) that succeeded or not.
    fn count(&self, operation: &str, ok: bool) {
        let now = SystemTime::now();
        self.update(|s| {
            let (done, failed, last) = match operation {
                "fetch" => (&mut s.fetches, &mut s.fetch_failures, &mut s.last_fetch),
                "merge" => (&mut s.merges, &mut s.merge_failures, &mut s.last_merge),
                _ => (&mut s.pushes, &mut s.push_failures, &mut s.last_push),
            };
            if ok {
                *done += 1;
                *last = Some(now);
            } else {
                *failed += 1;
            }
        });
        if let Some(m) = &self.metrics {
            m.operations
                .with_label_values(&[operation, if ok { "success" } else { "failure" }])
                .inc();
            if ok {
                let secs = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                m.last_success.with_label_values(&[operation]).set(secs);
            }
        }
    }

    pub fn snapshot(&self) -> StatsInner {
        self.inner.lock().expect("stats lock is never poisoned").clone()
    }

    fn update(&self, f: impl FnOnce(&mut StatsInner)) {
        f(&mut self.inner.lock().expect("stats lock is never poisoned"));
    }

    /// Whether the last successful pass is younger than `age`.
    pub fn fresh(&self, age: Duration) -> bool {
        self.snapshot().last_pass.is_some_and(|t| t.elapsed() < age)
    }
}

/// How often a change set is computed again when local writes keep
/// touching its keys.
const MAX_REPLANS: usize = 8;
/// The longest wait between failed passes.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs passes until `stop` turns true (or one pass, for a zero interval,
/// whose error is returned).
pub async fn run(
    store: Store,
    config: PullConfig,
    stats: Arc<Stats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), PullError> {
    let mut puller = Puller {
        store,
        config,
        stats,
        pushed: None,
    };
    if puller.config.interval.is_zero() {
        return puller.pass().await;
    }
    if *stop.borrow() {
        return Ok(());
    }
    let mut writes = puller.store.subscribe();
    let mut backoff = backoff(puller.config.interval);
    loop {
        let wait = match puller.pass().await {
            Ok(()) => {
                backoff = self::backoff(puller.config.interval);
                puller.config.interval
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                tracing::warn!(error = %crate::error::chain(&e), retry_in = ?delay, "pull pass failed");
                delay
            }
        };
        let deadline = tokio::time::Instant::now() + wait;
        // Between passes: push soon after local writes.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                changed = writes.changed(), if puller.config.push => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if let Err(e) = puller.push().await {
                        tracing::warn!(error = %crate::error::chain(&e), "push after a write failed");
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Exponential delays with jitter from `interval` up to [`MAX_BACKOFF`],
/// forever: a daemon keeps trying (and says so in its readiness).
fn backoff(interval: Duration) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(interval.max(Duration::from_millis(100)))
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

struct Puller {
    store: Store,
    config: PullConfig,
    stats: Arc<Stats>,
    /// The pair last pushed (data, metadata): no push when unchanged.
    pushed: Option<(ObjectId, ObjectId)>,
}

impl Puller {
    /// Fetch, merge each ref, push.
    async fn pass(&mut self) -> Result<(), PullError> {
        let fetched = self.fetch().await?;
        for name in self.config.merge_refs.clone() {
            if let Some(incoming) = fetched.iter().find(|i| i.name == name).cloned() {
                self.merge(incoming).await?;
            }
        }
        if self.config.push {
            self.push().await?;
        }
        self.stats.update(|s| s.last_pass = Some(Instant::now()));
        Ok(())
    }

    async fn fetch(&self) -> Result<Vec<Incoming>, PullError> {
        let remote_name = self.config.remote.name.clone();
        let mut specs = Vec::new();
        for r in &self.config.merge_refs {
            for name in [r.clone(), metadata_ref(r)] {
                specs.push(FetchSpec {
                    local_ref: remote::tracking_ref(&remote_name, &name),
                    remote_ref: name,
                });
            }
        }
        let (git_dir, remote, credentials, timeout) = (
            self.store.git_dir().to_owned(),
            self.config.remote.clone(),
            self.config.credentials.clone(),
            self.config.timeout,
        );
        let result =
            tokio::task::spawn_blocking(move || remote::fetch(&git_dir, &remote, &credentials, &specs, timeout))
                .await
                .map_err(|_| PullError::Panicked)?;
        let fetched = match result {
            Ok(f) => {
                self.stats.count("fetch", true);
                f
            }
            Err(e) => {
                self.stats.count("fetch", false);
                return Err(e.into());
            }
        };
        let repo = self.store.repo();
        let mut out = Vec::new();
        for r in &self.config.merge_refs {
            let Some(commit) = fetched.refs.get(r).copied() else {
                tracing::debug!(remote_ref = %r, "not on the remote (yet)");
                continue;
            };
            // The metadata tree describing exactly this commit, if the
            // remote has it (a gitcd pushed the pair atomically).
            let meta_tree = match fetched.refs.get(&metadata_ref(r)) {
                Some(meta) => {
                    let c = repo.commit(*meta)?;
                    let describes = crate::store::history::data_of(&repo, *meta).ok() == Some(commit);
                    describes.then_some(c.tree)
                }
                None => None,
            };
            out.push(Incoming {
                commit,
                meta_tree,
                name: r.clone(),
            });
        }
        Ok(out)
    }

    /// Merges `incoming` into the store: computed off the writer's thread,
    /// applied as one revision, computed again if a local write touched
    /// one of its keys meanwhile.
    async fn merge(&self, incoming: Incoming) -> Result<(), PullError> {
        for _ in 0..MAX_REPLANS {
            let (store, policy, inc) = (self.store.clone(), self.config.policy.clone(), incoming.clone());
            let outcome = tokio::task::spawn_blocking(move || {
                merge::plan(&store.repo(), &store.snapshot_in_git(), &inc, &policy)
            })
            .await
            .map_err(|_| PullError::Panicked)?
            .map_err(|source| {
                self.stats.count("merge", false);
                PullError::Merge {
                    name: incoming.name.clone(),
                    source,
                }
            })?;
            let set = match outcome {
                Outcome::UpToDate | Outcome::Unchanged => return Ok(()),
                Outcome::Changes(set) => set,
            };
            let keys = set.changes.len();
            if tracing::enabled!(tracing::Level::DEBUG) {
                let names: Vec<String> = set
                    .changes
                    .iter()
                    .map(|c| String::from_utf8_lossy(&c.key).into_owned())
                    .collect();
                tracing::debug!(from = %incoming.name, keys = ?names, "merging");
            }
            match self.store.apply(set).await {
                Ok(applied) => {
                    self.stats.count("merge", true);
                    tracing::info!(from = %incoming.name, commit = %incoming.commit, keys, revision = ?applied.revision, "merged");
                    return Ok(());
                }
                Err(StoreError::Changed { .. }) => continue,
                Err(source) => {
                    self.stats.count("merge", false);
                    return Err(PullError::Apply {
                        name: incoming.name.clone(),
                        source,
                    });
                }
            }
        }
        tracing::info!(from = %incoming.name, "local writes keep changing the keys of this merge; next pass");
        Ok(())
    }

    /// Pushes the store's branch pair, atomically, unless it is as last
    /// pushed.
    async fn push(&mut self) -> Result<(), PullError> {
        let repo = self.store.repo();
        let (data_ref, meta_ref) = (self.store.data_ref().to_owned(), self.store.metadata_ref().to_owned());
        // The metadata ref is authoritative: push it and the data commit it
        // describes, so the pair on the remote always matches.
        let Some(meta) = repo.ref_target(&meta_ref)? else {
            return Ok(());
        };
        let data = crate::store::history::data_of(&repo, meta).map_err(|e| PullError::Apply {
            name: meta_ref.clone(),
            source: e,
        })?;
        if self.pushed == Some((data, meta)) {
            return Ok(());
        }
        let specs = [
            PushSpec {
                local: data.to_string(),
                remote_ref: data_ref,
            },
            PushSpec {
                local: meta.to_string(),
                remote_ref: meta_ref,
            },
        ];
        let pushed = remote::push(
            self.store.git_dir(),
            &self.config.remote,
            &self.config.credentials,
            &specs,
            self.config.timeout,
        )
        .await;
        match pushed {
            Ok(outcome) => {
                self.pushed = Some((data, meta));
                self.stats.count("push", true);
                if outcome == PushOutcome::Pushed {
                    tracing::debug!(%data, "pushed");
                }
                Ok(())
            }
            Err(e) => {
                self.stats.count("push", false);
                Err(e.into())
            }
        }
    }
}

/// The metadata ref of data ref `data_ref`, by the default rule.
pub fn metadata_ref(data_ref: &str) -> String {
    format!("refs/gitcd/metadata/{data_ref}")
}

/// `gitcd-pull` (= `gitcd pull`): a store of its own branch pair (the
/// upstream's `main`, usually), the loop merging every participant's
/// branch into it, and the admin endpoints of its Deployment.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub store: crate::store::StoreConfig,
    pub pull: PullConfig,
    /// Where `/livez`, `/readyz` and `/metrics` are served.
    pub listen_metrics: Vec<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the store")]
    Store(#[from] crate::store::StorageError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("a blocking task panicked")]
    Panicked,
}

/// Runs `gitcd-pull` until `shutdown` (one pass for a zero interval).
pub async fn run_daemon(
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let mut listeners = Vec::new();
    for addr in &config.listen_metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Bind { addr: *addr, source })?;
        tracing::info!(addr = %l.local_addr().unwrap_or(*addr), "serving /livez, /readyz, /metrics");
        listeners.push(l);
    }
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .map_err(|_| DaemonError::Panicked)??;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // Ready while the last pass that merged and pushed is recent.
    let fresh_for = (config.pull.interval * 3).max(Duration::from_secs(10)) + config.pull.timeout;
    let stats_cell: Arc<std::sync::OnceLock<Arc<Stats>>> = Arc::default();
    let admin = {
        let cell = stats_cell.clone();
        crate::http::Admin::new(Arc::new(move || cell.get().is_some_and(|s| s.fresh(fresh_for))))
    };
    let stats = Arc::new(Stats::with_metrics(&admin.registry)?);
    let _ = stats_cell.set(stats.clone());
    for l in listeners {
        tokio::spawn(crate::http::serve_admin(l, None, admin.clone(), stop.clone()));
    }
    tracing::info!(
        data_ref = %config.store.data_ref,
        merge = ?config.pull.merge_refs,
        remote = %remote::redact(&config.pull.remote.url),
        "merging"
    );
    let result = run(store.clone(), config.pull, stats, stop).await;
    tokio::task::spawn_blocking(move || store.close())
        .await
        .map_err(|_| DaemonError::Panicked)?;
    Ok(result?)
}
