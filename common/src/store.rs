//! The MVCC store over Git: etcd's key-value semantics, with every revision a
//! commit (see `docs/format.md` and `docs/architecture.md`).
//!
//! Readers take an immutable [`Snapshot`] (persistent maps, so taking one is
//! O(1)); reads at the current revision never touch Git. Historical reads go
//! to the revision's commits. One writer thread applies writes in order,
//! groups the requests that queue up while it commits, makes the whole group
//! durable with one round of fsync, and only then publishes the new snapshot
//! and answers.

mod apply;
mod events;
mod history;
mod range;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use gix::ObjectId;
use tokio::sync::oneshot;

use crate::meta::KeyMeta;
use crate::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use crate::proto::mvccpb;
use crate::repo::{Repo, RepoError, Signature};

pub use apply::{Change, is_read_only};
pub use events::RevisionEvents;
pub use range::KeyRange;

/// etcd's errors, and ours. The gRPC layer maps each to etcd's exact status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("the store is shutting down")]
    Stopped,
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("repository is not a gitcd store as expected: {0}")]
    Corrupt(String),
}

/// How a store is found and written.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Repository path; created bare when missing.
    pub repo: PathBuf,
    pub data_ref: String,
    pub metadata_ref: String,
    pub committer: Signature,
    /// Revision of the oldest data commit when metadata is first built.
    pub start_revision: i64,
    /// How many recent revisions keep their events in memory (for watchers
    /// catching up); older ones are read from Git.
    pub history_window: usize,
    /// How often the data ref is checked for commits made by others.
    pub poll_interval: std::time::Duration,
    /// Most revisions one commit may group when writes queue up (1: every
    /// revision is its own commit).
    pub max_commit_revisions: usize,
}

impl StoreConfig {
    /// The seed's defaults for a repository path.
    pub fn with_repo(repo: impl Into<PathBuf>) -> Self {
        Self {
            repo: repo.into(),
            data_ref: "refs/heads/main".into(),
            metadata_ref: "refs/gitcd/metadata/refs/heads/main".into(),
            committer: Signature {
                name: "trishanku".into(),
                email: "trishanku@heaven.com".into(),
            },
            start_revision: 1,
            history_window: 10_000,
            poll_interval: std::time::Duration::from_millis(500),
            max_commit_revisions: 128,
        }
    }
}

/// A live key: its bookkeeping and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub meta: KeyMeta,
    pub value: Bytes,
}

impl Kv {
    pub fn to_proto(&self, key: &Bytes) -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: key.clone(),
            create_revision: self.meta.create_revision,
            mod_revision: self.meta.mod_revision,
            version: self.meta.version,
            value: self.value.clone(),
            lease: self.meta.lease,
        }
    }
}

/// A lease the store knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    pub keys: imbl::OrdSet<Bytes>,
}

/// The state at one revision, as readers see it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub revision: i64,
    /// etcd's compactMainRev: -1 until the first compaction.
    pub compact_revision: i64,
    pub kvs: imbl::OrdMap<Bytes, Kv>,
    pub leases: imbl::OrdMap<i64, Lease>,
}

/// Where each revision lives in Git.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevisionCommits {
    /// The newest metadata commit at this revision, and its data commit.
    /// Inside a group (before its last revision) these are the group's
    /// commits, whose trees hold a later state: see `exact`.
    pub metadata: ObjectId,
    pub data: ObjectId,
    /// Whether the trees of `metadata` and `data` are this revision's state.
    pub exact: bool,
    /// When the revision was written in a commit grouping several: that
    /// metadata commit (its `log` has each revision's changes) and the
    /// group's first revision.
    pub group: Option<(ObjectId, i64)>,
}

impl RevisionCommits {
    /// A commit pair whose trees are exactly one revision's state.
    pub fn exact(metadata: ObjectId, data: ObjectId) -> Self {
        Self {
            metadata,
            data,
            exact: true,
            group: None,
        }
    }
}

/// revision -> commits, for every revision of the store. Appended by the
/// writer before it publishes; readers only ask for published revisions.
#[derive(Debug, Default)]
pub(crate) struct RevisionIndex {
    first: i64,
    commits: Vec<RevisionCommits>,
}

impl RevisionIndex {
    fn get(&self, revision: i64) -> Option<RevisionCommits> {
        let i = usize::try_from(revision.checked_sub(self.first)?).ok()?;
        self.commits.get(i).copied()
    }

    /// Records where `revision` lives. A revision already known keeps its
    /// commits: a later commit at the same revision changed metadata only
    /// (leases, compaction), not keys, and may not have landed yet.
    fn set(&mut self, revision: i64, commits: RevisionCommits) {
        if self.commits.is_empty() {
            self.first = revision;
        }
        let i = usize::try_from(revision - self.first).expect("revisions only grow");
        if i >= self.commits.len() {
            self.commits.push(commits);
        }
    }

    /// Forgets the revisions after `revision` (written, then not landed).
    fn truncate(&mut self, revision: i64) {
        let keep = usize::try_from(revision + 1 - self.first).unwrap_or(0);
        self.commits.truncate(keep);
    }
}

/// Where each revision lives, and the logs of the grouped commits read
/// lately (a page of a list pinned at one revision reads the same log again).
#[derive(Debug, Default)]
pub(crate) struct Revisions {
    pub(crate) index: RwLock<RevisionIndex>,
    logs: std::sync::Mutex<std::collections::VecDeque<(ObjectId, Arc<Vec<crate::meta::LogRevision>>)>>,
}

/// How many grouped commits' logs [`Revisions`] keeps parsed.
const LOG_CACHE: usize = 8;

impl Revisions {
    fn get(&self, revision: i64) -> Option<RevisionCommits> {
        self.index
            .read()
            .expect("revision index lock is never poisoned")
            .get(revision)
    }

    /// The revisions recorded in grouped metadata commit `commit`.
    fn log(
        &self,
        repo: &crate::repo::LocalRepo,
        commit: ObjectId,
    ) -> Result<Arc<Vec<crate::meta::LogRevision>>, StoreError> {
        let cached = |logs: &std::collections::VecDeque<(ObjectId, Arc<_>)>| {
            logs.iter().find(|(id, _)| *id == commit).map(|(_, l)| Arc::clone(l))
        };
        if let Some(l) = cached(&self.logs.lock().expect("log cache lock is never poisoned")) {
            return Ok(l);
        }
        let log = Arc::new(history::group_log(repo, commit)?);
        let mut logs = self.logs.lock().expect("log cache lock is never poisoned");
        if logs.len() >= LOG_CACHE {
            logs.pop_front();
        }
        logs.push_back((commit, log.clone()));
        Ok(log)
    }
}

/// A write for the writer thread.
#[derive(Clone, Debug)]
pub enum WriteOp {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    LeaseGrant { id: i64, ttl: i64 },
    LeaseRevoke { id: i64 },
}

/// What a write answers.
#[derive(Debug)]
pub enum WriteResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    /// Compaction and lease changes answer with the revision they saw.
    Revision(i64),
    LeaseGranted {
        id: i64,
        ttl: i64,
        revision: i64,
    },
}

pub(crate) struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteResult, StoreError>>,
}

struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    revisions: Arc<Revisions>,
    /// The events of recent revisions, for watchers and `prev_kv`.
    window: RwLock<events::Window>,
    /// The latest published revision; watchers wait on it.
    published: tokio::sync::watch::Sender<i64>,
    /// When each lease expires (not persisted: a restart grants a fresh TTL).
    deadlines: std::sync::Mutex<std::collections::HashMap<i64, std::time::Instant>>,
    repo: Repo,
    /// Object store size at start; the writer adds what it writes.
    db_size_base: i64,
    db_size: std::sync::atomic::AtomicI64,
}

/// A handle to an open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    jobs: std::sync::mpsc::SyncSender<Job>,
}

/// Limits the number of queued writes; beyond it senders wait.
const QUEUE_DEPTH: usize = 4096;

impl Store {
    /// Opens (creating or initialising as needed) the store and starts its
    /// writer thread. Blocking: call it from a blocking context.
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        let repo = Repo::open_or_init(&config.repo)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_DEPTH);
        let mut loaded = writer::Writer::open(&repo, &config)?;
        let db_size = crate::repo::dir_size(&repo.git_dir().join("objects"));
        let db_size = i64::try_from(db_size).unwrap_or(i64::MAX);
        let snapshot = loaded.snapshot();
        let mut window = events::Window::new(config.history_window);
        for e in loaded.take_events() {
            window.push(e);
        }
        let now = std::time::Instant::now();
        let deadlines = snapshot
            .leases
            .values()
            .map(|l| (l.id, now + std::time::Duration::from_secs(l.ttl.max(0) as u64)))
            .collect();
        let (published, _) = tokio::sync::watch::channel(snapshot.revision);
        let shared = Arc::new(Shared {
            snapshot: RwLock::new(Arc::new(snapshot)),
            revisions: loaded.index(),
            window: RwLock::new(window),
            published,
            deadlines: std::sync::Mutex::new(deadlines),
            repo,
            db_size_base: db_size - loaded.bytes_written(),
            db_size: std::sync::atomic::AtomicI64::new(db_size),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("gitcd-writer".into())
            .spawn(move || loaded.run(thread_shared, rx))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { shared, jobs: tx })
    }

    /// Builds or catches up the metadata of `config`'s data ref and returns
    /// the revision reached, without serving.
    pub fn init(config: &StoreConfig) -> Result<i64, StoreError> {
        let repo = Repo::open_or_init(&config.repo)?;
        let w = writer::Writer::open(&repo, config)?;
        Ok(w.snapshot().revision)
    }

    /// The latest published state.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared
            .snapshot
            .read()
            .expect("snapshot lock is never poisoned: holders do not panic")
            .clone()
    }

    /// Size of the repository's object store in bytes, kept as a running
    /// count (no directory walk per call).
    pub fn db_size(&self) -> i64 {
        self.shared.db_size.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serves a Range. Current-revision reads use the snapshot; older ones
    /// read Git on a blocking thread.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        let snap = self.snapshot();
        match range::read_revision(&snap, req.revision)? {
            None => Ok(range::range_snapshot(&snap, &req)),
            Some(rev) => {
                let shared = self.shared.clone();
                tokio::task::spawn_blocking(move || {
                    let range = KeyRange::from_request(&req.key, &req.range_end);
                    let kvs = history::read_at(&shared.repo.local(), &shared.revisions, rev, &range)?;
                    Ok(range::select(&req, snap.revision, kvs.len() as i64, kvs.into_iter()))
                })
                .await
                .map_err(|_| StoreError::Stopped)?
            }
        }
    }

    /// Serves a Txn without writes against the latest snapshot, without
    /// queueing behind writes (as etcd does).
    pub async fn read_txn(&self, req: TxnRequest) -> Result<TxnResponse, StoreError> {
        let mut snap = (*self.snapshot()).clone();
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let repo = shared.repo.local();
            let history = |rev: i64, range: &KeyRange| history::read_at(&repo, &shared.revisions, rev, range);
            let begin = snap.revision;
            let mut apply = apply::Apply {
                state: &mut snap,
                begin,
                changes: Vec::new(),
                history: &history,
            };
            apply.txn(&req)
        })
        .await
        .map_err(|_| StoreError::Stopped)?
    }

    /// Follows the published revision: it changes after every durable group
    /// of writes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.published.subscribe()
    }

    /// The events of revisions `from..=to` (at most `limit` revisions), from
    /// the in-memory window or, when older, from Git. Revisions below the
    /// compact revision are refused.
    pub async fn events(&self, from: i64, to: i64, limit: usize) -> Result<Vec<Arc<RevisionEvents>>, StoreError> {
        let to = to.min(from.saturating_add(limit as i64) - 1);
        if from > to {
            return Ok(Vec::new());
        }
        let (cached, first) = {
            let w = self.shared.window.read().expect("window lock is never poisoned");
            (w.range(from, to), w.first())
        };
        if first.is_some_and(|f| f <= from) {
            return Ok(cached);
        }
        let git_to = first.map_or(to, |f| (f - 1).min(to));
        let shared = self.shared.clone();
        let mut out = tokio::task::spawn_blocking(move || {
            let repo = shared.repo.local();
            (from..=git_to)
                .map(|rev| events::from_git(&repo, &shared.revisions, rev).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|_| StoreError::Stopped)??;
        out.extend(cached);
        Ok(out)
    }

    /// Renews lease `id`; its granted TTL, or `None` if it does not exist.
    pub fn keep_alive(&self, id: i64) -> Option<i64> {
        let lease = self.snapshot().leases.get(&id).cloned()?;
        let mut deadlines = self.shared.deadlines.lock().expect("deadline lock is never poisoned");
        let deadline = deadlines.get_mut(&id)?;
        *deadline = std::time::Instant::now() + std::time::Duration::from_secs(lease.ttl.max(0) as u64);
        Some(lease.ttl)
    }

    /// Seconds left before lease `id` expires, its granted TTL and its keys.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64, Vec<Bytes>)> {
        let lease = self.snapshot().leases.get(&id).cloned()?;
        let deadline = *self
            .shared
            .deadlines
            .lock()
            .expect("deadline lock is never poisoned")
            .get(&id)?;
        let left = deadline.saturating_duration_since(std::time::Instant::now()).as_secs() as i64;
        Some((left, lease.ttl, lease.keys.into_iter().collect()))
    }

    /// Queues a write and waits until it is durable.
    pub async fn write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        let jobs = self.jobs.clone();
        let job = Job { op, reply };
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(job)) => {
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .map_err(|_| StoreError::Stopped)?
                    .map_err(|_| StoreError::Stopped)?;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::Stopped),
        }
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}
