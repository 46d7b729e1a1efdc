//! The MVCC store over Git: etcd's key-value semantics, with every revision a
//! commit (see `docs/format.md` and `docs/architecture.md`).
//!
//! Readers take an immutable [`Snapshot`] (persistent maps, so taking one is
//! O(1)); reads at the current revision never touch Git. Historical reads go
//! to the revision's commits. One writer thread applies writes in order,
//! groups the requests that queue up while it commits, makes the whole group
//! durable with one round of fsync, and only then publishes the new snapshot
//! and answers. The store knows nothing of gRPC: it speaks the etcd message
//! types (a neutral part the gRPC layer shares) and [`Error`].
//!
//! Topics: `open` (loading, building metadata, start-up repairs), `ingest`
//! (commits others made), `commit` (revisions into commit pairs), `writer`
//! (the thread and its batches), `job` (the typed requests it takes),
//! `apply` (etcd's rules for each request), `revisions` (where each revision
//! lives), `events` (the watch window), `history` (reads of past revisions),
//! `range` (Range semantics).

mod apply;
mod auth;
mod changes;
mod commit;
mod events;
pub(crate) mod history;
mod ingest;
mod job;
mod maintenance;
mod open;
mod range;
pub mod revisions;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use gix::ObjectId;

use crate::lease::Lessor;
use crate::meta::KeyMeta;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use crate::proto::mvccpb;
use crate::repo::{Maintenance, Repo, RepoError, Signature};

pub use apply::{Change, is_read_only};
pub use changes::{ChangeSet, KeyChange, NewValue};
pub use events::RevisionEvents;
pub use maintenance::{KvHash, RestoreError, Restored, SnapshotFile, restore};
pub use range::KeyRange;
pub use revisions::parse_revisions;

/// What a request can fail with: etcd's conditions (the gRPC layer maps
/// each to etcd's exact status), and ours.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
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
    /// A [`ChangeSet`]'s expectation did not hold: the key changed since the
    /// change set was computed. Compute it again.
    #[error("key {key:?} changed since the change set was computed (mod revision {found}, expected {expected})")]
    Changed { key: String, expected: i64, found: i64 },
    /// The NOSPACE alarm is raised: writes that add data are refused.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// The CORRUPT alarm is raised: writes are refused.
    #[error("corrupt cluster")]
    Corrupt,
    /// etcd's authentication and permission conditions.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// A lock waiter's key went away (its lease expired) while it waited.
    #[error("mutex: session is expired")]
    SessionExpired,
    /// An election call whose caller does not lead (any more).
    #[error("election: not leader")]
    NotLeader,
    /// An election nobody leads.
    #[error("election: no leader")]
    NoLeader,
    #[error("the store is shutting down")]
    Stopped,
    /// The store cannot read or write its repository. Shared: one failure
    /// answers every request of its group.
    #[error("storage failure")]
    Storage(#[source] Arc<StorageError>),
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage(Arc::new(e))
    }
}

impl From<RepoError> for Error {
    fn from(e: RepoError) -> Self {
        Error::Storage(Arc::new(e.into()))
    }
}

impl From<CorruptError> for Error {
    fn from(e: CorruptError) -> Self {
        Error::Storage(Arc::new(e.into()))
    }
}

impl Error {
    /// Whether the failure is a full disk (what raises the NOSPACE alarm).
    pub fn is_disk_full(&self) -> bool {
        let Error::Storage(e) = self else { return false };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::StorageFull
            {
                return true;
            }
            cause = c.source();
        }
        false
    }
}

/// What goes wrong with the repository under the store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
    /// The data ref moved under every attempt to write.
    #[error("{data_ref} keeps moving under gitcd's writes (gave up after {attempts} attempts)")]
    Contended { data_ref: String, attempts: usize },
    #[error("cannot start the writer thread")]
    Thread(#[source] std::io::Error),
    /// A commit made on top of the data ref while the ref was behind the
    /// journal could not be merged.
    #[error("cannot merge {head}, committed onto {data_ref} while the ref was behind gitcd's writes: {reason}")]
    MergeBehind {
        data_ref: String,
        head: ObjectId,
        reason: String,
    },
    /// The auth ref's tree is not what this gitcd reads.
    #[error("auth ref {auth_ref} at {commit}")]
    Auth {
        auth_ref: String,
        commit: ObjectId,
        #[source]
        source: crate::meta::ParseError,
    },
}

/// The repository is not a gitcd store as expected: what is wrong, where.
#[derive(Debug, thiserror::Error)]
pub enum CorruptError {
    #[error("metadata commit {commit} has no `{entry}` entry")]
    MissingEntry { commit: ObjectId, entry: &'static str },
    #[error("metadata commit {commit} is format {found:?}; this gitcd reads {expected} (a newer gitcd wrote it?)")]
    Format {
        commit: ObjectId,
        found: String,
        expected: &'static str,
    },
    #[error("metadata `{entry}` of commit {commit}")]
    Malformed {
        commit: ObjectId,
        entry: String,
        #[source]
        source: crate::meta::ParseError,
    },
    #[error("key {key:?} has metadata but no file in data commit {data}")]
    MissingFile { key: String, data: ObjectId },
    #[error("key {key:?} has metadata but no file in data tree {tree}")]
    MissingFileInTree { key: String, tree: ObjectId },
    #[error("metadata tree {tree} has no entry for key {key:?}")]
    MissingKeyMeta { key: String, tree: ObjectId },
    #[error("metadata blob {blob}")]
    MalformedBlob {
        blob: ObjectId,
        #[source]
        source: crate::meta::ParseError,
    },
    #[error("journaled log of acknowledged revisions {blob}: {why}")]
    Deferred { blob: ObjectId, why: String },
    #[error("metadata commit {commit} has message {message:?}, not a revision")]
    Message { commit: ObjectId, message: String },
    #[error("metadata commit {commit} has {parents} parents (a metadata commit has 0 or 2)")]
    Parents { commit: ObjectId, parents: usize },
    #[error("no revision {revision} before the grouped commit {commit}")]
    NoBase { revision: i64, commit: ObjectId },
    #[error("grouped commit {commit} has no log of revision {revision}")]
    NoLogRevision { revision: i64, commit: ObjectId },
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
    /// How often the data ref is read for commits made by others when no
    /// change notification came (file systems without inotify).
    pub poll_interval: Duration,
    /// Most revisions one commit may group when writes queue up (1: every
    /// revision is its own commit).
    pub max_commit_revisions: usize,
    /// With a journal, while more writes wait, how long acknowledged
    /// revisions may stay in the journal before their commit (and the refs
    /// move): the journal makes each batch durable, and a commit costs its
    /// trees. When nothing waits a write is committed before its answer.
    pub commit_interval: Duration,
    /// Whether this store may maintain the repository's packs.
    pub maintenance: Maintenance,
    /// The member id of the alarms the store raises itself (a full disk).
    pub member_id: u64,
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
            poll_interval: Duration::from_millis(500),
            max_commit_revisions: 4096,
            commit_interval: Duration::from_millis(250),
            maintenance: Maintenance::Auto,
            member_id: 0,
        }
    }

    /// The ref of the store's users, roles and permissions:
    /// `refs/gitcd/auth/` + the data ref. Never pushed nor merged.
    pub fn auth_ref(&self) -> String {
        format!("refs/gitcd/auth/{}", self.data_ref)
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

/// What a live key counts towards the quota: its key and value bytes.
pub(crate) fn kv_bytes(key: &[u8], kv: &Kv) -> i64 {
    (key.len() + kv.value.len()) as i64
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
    /// The data commit this state is (or, inside a group not yet written,
    /// builds on).
    pub data_commit: ObjectId,
    /// Raised alarms: (member id, `AlarmType` number), etcd's alarm store.
    pub alarms: imbl::OrdSet<(u64, i32)>,
    /// Bytes of the keys and values live at this revision: what
    /// `--quota-backend-bytes` measures (Git keeps all history, so history
    /// is not what a quota can limit).
    pub live_bytes: i64,
    /// Users, roles, permissions, and whether auth is on.
    pub auth: Arc<crate::auth::AuthState>,
}

/// etcd's alarm types, as their numbers.
pub const ALARM_NOSPACE: i32 = 1;
pub const ALARM_CORRUPT: i32 = 2;

impl Snapshot {
    /// An empty state at `revision`.
    pub fn empty(revision: i64) -> Self {
        Self {
            revision,
            compact_revision: -1,
            kvs: imbl::OrdMap::new(),
            leases: imbl::OrdMap::new(),
            data_commit: ObjectId::null(gix::hash::Kind::Sha1),
            alarms: imbl::OrdSet::new(),
            live_bytes: 0,
            auth: Arc::default(),
        }
    }

    /// Whether an alarm of type `alarm` is raised.
    pub fn alarmed(&self, alarm: i32) -> bool {
        self.alarms.iter().any(|(_, a)| *a == alarm)
    }

    /// Sets `key` to `new`, or deletes it, keeping each lease's set of keys
    /// in step; returns the change, with the value it replaced.
    pub(crate) fn set(&mut self, key: Bytes, new: Option<Kv>) -> apply::Change {
        let prev = match &new {
            Some(kv) => self.kvs.insert(key.clone(), kv.clone()),
            None => self.kvs.remove(&key),
        };
        let lease_of = |kv: &Option<Kv>| kv.as_ref().map(|kv| kv.meta.lease).filter(|l| *l != 0);
        let (old_lease, new_lease) = (lease_of(&prev), lease_of(&new));
        if old_lease != new_lease {
            if let Some(l) = old_lease.and_then(|l| self.leases.get_mut(&l)) {
                l.keys.remove(&key);
            }
            if let Some(l) = new_lease.and_then(|l| self.leases.get_mut(&l)) {
                l.keys.insert(key.clone());
            }
        }
        apply::Change { key, prev, new }
    }
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    pub id: i64,
    pub ttl: i64,
    pub revision: i64,
}

/// What applying a [`ChangeSet`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The revision it made; `None` when it changed nothing.
    pub revision: Option<i64>,
}

/// The store's metrics: etcd's commit durations, and gitcd's own.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// `etcd_disk_backend_commit_duration_seconds`: making a group durable
    /// (its pack, the refs, their fsyncs).
    pub commit_duration: prometheus::Histogram,
    /// `gitcd_commits_total`: commit pairs written.
    pub commits: prometheus::IntCounter,
    /// `gitcd_revisions_per_commit`.
    pub revisions_per_commit: prometheus::Histogram,
    pub maintenance: crate::repo::maintenance::Counters,
}

impl StoreMetrics {
    fn new(maintenance: crate::repo::maintenance::Counters) -> Self {
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram options")
        };
        Self {
            commit_duration: histogram(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend (gitcd: a group's pack, refs and fsyncs).",
                prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets"),
            ),
            commits: prometheus::IntCounter::new("gitcd_commits_total", "Commit pairs (data and metadata) written.")
                .expect("a valid metric name"),
            revisions_per_commit: histogram(
                "gitcd_revisions_per_commit",
                "Revisions each commit pair holds (more than one when writes queue up).",
                prometheus::exponential_buckets(1.0, 2.0, 13).expect("valid buckets"),
            ),
            maintenance,
        }
    }

    fn register(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.commit_duration.clone()))?;
        registry.register(Box::new(self.commits.clone()))?;
        registry.register(Box::new(self.revisions_per_commit.clone()))?;
        registry.register(Box::new(self.maintenance.folds.clone()))?;
        registry.register(Box::new(self.maintenance.consolidations.clone()))?;
        Ok(())
    }
}

/// What readers share with the writer thread.
struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    /// See [`Store::snapshot_in_git`].
    in_git: Arc<RwLock<Arc<Snapshot>>>,
    revisions: Arc<revisions::Revisions>,
    /// The events of recent revisions, for watchers and `prev_kv`.
    window: RwLock<events::Window>,
    /// The latest published revision; watchers wait on it.
    published: tokio::sync::watch::Sender<i64>,
    /// When each lease expires (not persisted: a restart grants a fresh TTL).
    lessor: std::sync::Mutex<Lessor>,
    repo: Repo,
    maintains_packs: bool,
    config: StoreConfig,
    metrics: StoreMetrics,
    /// Why the last group failed, until one succeeds.
    failure: std::sync::Mutex<Option<String>>,
    /// The objects' size on disk, tracked (no walk per call).
    usage: Arc<crate::repo::usage::DiskUsage>,
    /// Asks the pack maintainer for a consolidation (Defragment).
    packs: crate::repo::maintenance::MaintenanceHandle,
}

/// A handle to an open store; cheap to clone. The writer thread stops when
/// [`Store::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    jobs: std::sync::mpsc::SyncSender<writer::Message>,
    /// Jobs sent and not yet taken by the writer: it keeps the refs behind
    /// the journal while this is not zero.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Limits the number of queued writes; beyond it senders wait.
const QUEUE_DEPTH: usize = 4096;

impl Store {
    /// Opens (creating or initialising as needed) the store and starts its
    /// writer thread. Blocking: call it from a blocking context. Fails with
    /// [`RepoError::Locked`] when another process writes the same branch
    /// pair.
    pub fn open(config: StoreConfig) -> Result<Self, StorageError> {
        let repo = Repo::open_or_init(&config.repo)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_DEPTH);
        let mut loaded = writer::Writer::open(&repo, &config)?;
        let usage = Arc::new(crate::repo::usage::DiskUsage::track(repo.git_dir()));
        loaded.objects.count_in(usage.clone());
        let snapshot = loaded.snapshot();
        let mut window = events::Window::new(config.history_window);
        for e in loaded.take_events() {
            window.push(e);
        }
        let mut lessor = Lessor::default();
        let now = std::time::Instant::now();
        for l in snapshot.leases.values() {
            lessor.grant(l.id, l.ttl, now);
        }
        let (published, _) = tokio::sync::watch::channel(snapshot.revision);
        let shared = Arc::new(Shared {
            snapshot: RwLock::new(Arc::new(snapshot)),
            in_git: loaded.in_git.clone(),
            revisions: loaded.revisions(),
            window: RwLock::new(window),
            published,
            lessor: std::sync::Mutex::new(lessor),
            repo,
            maintains_packs: loaded.maintains_packs(),
            config: config.clone(),
            metrics: loaded.metrics().clone(),
            failure: std::sync::Mutex::new(None),
            usage,
            packs: loaded.maintenance_handle(),
        });
        loaded.watch_refs(tx.clone());
        let queued = loaded.queued.clone();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("gitcd-writer".into())
            .spawn(move || loaded.run(thread_shared, rx))
            .map_err(StorageError::Thread)?;
        Ok(Self {
            shared,
            jobs: tx,
            queued,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Builds or catches up the metadata of `config`'s data ref and returns
    /// the revision reached, without serving.
    pub fn init(config: &StoreConfig) -> Result<i64, StorageError> {
        let repo = Repo::open_or_init(&config.repo)?;
        let w = writer::Writer::open(&repo, config)?;
        Ok(w.snapshot().revision)
    }

    /// Stops the writer once the writes queued before this call are done,
    /// and waits for it. Later writes answer [`Error::Stopped`]. Blocking.
    pub fn close(&self) {
        let _ = self.jobs.send(writer::Message::Stop);
        let thread = self.thread.lock().expect("writer handle lock is never poisoned").take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the writer thread panicked");
        }
    }

    /// The latest published state.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared
            .snapshot
            .read()
            .expect("snapshot lock is never poisoned: holders do not panic")
            .clone()
    }

    /// The newest state whose data commit the data ref on disk has reached,
    /// with every object it names: what a reader of Git starting from
    /// [`Snapshot::data_commit`] needs (a merge's plan). While writes
    /// queue, the refs and packs trail the journal, so this trails
    /// [`Self::snapshot`] by up to 100 ms (it is never ahead of it).
    pub fn snapshot_in_git(&self) -> Arc<Snapshot> {
        self.shared
            .in_git
            .read()
            .expect("in-git lock is never poisoned")
            .clone()
    }

    /// Size of the repository's objects on disk in bytes: a running count
    /// that follows what gitcd and others write and delete (no directory
    /// walk per call), and includes every acknowledged write.
    pub fn db_size(&self) -> i64 {
        self.shared.usage.bytes()
    }

    /// Registers the store's metrics in `registry`.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        self.shared.metrics.register(registry)
    }

    /// Whether the store can write: `Err` with why when its last group
    /// failed (until one succeeds) or when it is closed.
    pub fn health(&self) -> Result<(), String> {
        let closed = self
            .thread
            .lock()
            .expect("writer handle lock is never poisoned")
            .as_ref()
            .is_none_or(|t| t.is_finished());
        if closed {
            return Err("the store is closed".into());
        }
        match &*self.shared.failure.lock().expect("failure lock is never poisoned") {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// Whether this store maintains its repository's packs (it holds the
    /// maintenance lock).
    pub fn maintains_packs(&self) -> bool {
        self.shared.maintains_packs
    }

    /// The data ref this store serves.
    pub fn data_ref(&self) -> &str {
        &self.shared.config.data_ref
    }

    /// The metadata ref this store writes.
    pub fn metadata_ref(&self) -> &str {
        &self.shared.config.metadata_ref
    }

    /// The repository's `.git` directory.
    pub fn git_dir(&self) -> &std::path::Path {
        self.shared.repo.git_dir()
    }

    /// A thread-local handle of the store's repository, for reading.
    pub fn repo(&self) -> crate::repo::LocalRepo {
        self.shared.repo.local()
    }

    /// Serves a Range. Current-revision reads use the snapshot; older ones
    /// read Git on a blocking thread.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Error> {
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
                .map_err(|_| Error::Stopped)?
            }
        }
    }

    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, Error> {
        self.submit(req).await
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        self.submit(req).await
    }

    /// A Put whose permissions were checked at auth revision `auth` (when
    /// auth is on): refused with `AuthOldRevision` if users or roles changed
    /// since.
    pub async fn put_as(&self, req: PutRequest, auth: Option<u64>) -> Result<PutResponse, Error> {
        match auth {
            Some(auth_revision) => self.submit(auth::Guarded { op: req, auth_revision }).await,
            None => self.submit(req).await,
        }
    }

    /// A DeleteRange checked at auth revision `auth` (see [`Store::put_as`]).
    pub async fn delete_range_as(
        &self,
        req: DeleteRangeRequest,
        auth: Option<u64>,
    ) -> Result<DeleteRangeResponse, Error> {
        match auth {
            Some(auth_revision) => self.submit(auth::Guarded { op: req, auth_revision }).await,
            None => self.submit(req).await,
        }
    }

    /// A Txn checked at auth revision `auth` (see [`Store::put_as`]); a
    /// read-only one is answered from the latest snapshot.
    pub async fn txn_as(&self, req: TxnRequest, auth: Option<u64>) -> Result<TxnResponse, Error> {
        match auth {
            Some(auth_revision) if !is_read_only(&req) => self.submit(auth::Guarded { op: req, auth_revision }).await,
            _ => self.txn(req).await,
        }
    }

    /// etcd's Alarm request (GET, ACTIVATE, DEACTIVATE); raising and
    /// clearing are recorded in the metadata (`alarms`).
    pub async fn alarm(
        &self,
        req: crate::proto::etcdserverpb::AlarmRequest,
    ) -> Result<crate::proto::etcdserverpb::AlarmResponse, Error> {
        self.submit(req).await
    }

    /// Serves a Txn: one with writes goes to the writer; one without is
    /// answered from the latest snapshot without queueing behind writes (as
    /// etcd does).
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Error> {
        if !is_read_only(&req) {
            return self.submit(req).await;
        }
        let mut snap = (*self.snapshot()).clone();
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let repo = shared.repo.local();
            let history = |rev: i64, range: &KeyRange| history::read_at(&repo, &shared.revisions, rev, range);
            apply::Apply::new(&mut snap, &history).txn(&req)
        })
        .await
        .map_err(|_| Error::Stopped)?
    }

    /// Records `revision` as the compact revision; answers the revision the
    /// compaction saw.
    pub async fn compact(&self, revision: i64) -> Result<i64, Error> {
        self.submit(job::Compact(revision)).await
    }

    /// Grants a lease (`id` 0: the store picks one).
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<Granted, Error> {
        self.submit(job::LeaseGrant { id, ttl }).await
    }

    /// Revokes a lease, deleting its keys in one revision; answers the
    /// revision after.
    pub async fn lease_revoke(&self, id: i64) -> Result<i64, Error> {
        self.submit(job::LeaseRevoke(id)).await
    }

    /// Applies a change set as one revision of its own (the contract for
    /// merges and other writers that are not etcd clients), see
    /// [`ChangeSet`].
    pub async fn apply(&self, changes: ChangeSet) -> Result<Applied, Error> {
        self.submit(changes).await
    }

    /// Renews lease `id`; its granted TTL, or `None` if it does not exist.
    pub fn keep_alive(&self, id: i64) -> Option<i64> {
        let ttl = self.snapshot().leases.get(&id)?.ttl;
        let renewed =
            self.shared
                .lessor
                .lock()
                .expect("lessor lock is never poisoned")
                .renew(id, ttl, std::time::Instant::now());
        renewed.then_some(ttl)
    }

    /// Seconds left before lease `id` expires, its granted TTL and its keys.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64, Vec<Bytes>)> {
        let lease = self.snapshot().leases.get(&id).cloned()?;
        let deadline = self
            .shared
            .lessor
            .lock()
            .expect("lessor lock is never poisoned")
            .deadline(id)?;
        let left = deadline.saturating_duration_since(std::time::Instant::now()).as_secs() as i64;
        Some((left, lease.ttl, lease.keys.into_iter().collect()))
    }

    /// Follows the published revision: it changes after every durable group
    /// of writes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.published.subscribe()
    }

    /// The events of revisions `from..=to` (at most `limit` revisions), from
    /// the in-memory window or, when older, from Git. Revisions below the
    /// compact revision are refused.
    pub async fn events(&self, from: i64, to: i64, limit: usize) -> Result<Vec<Arc<RevisionEvents>>, Error> {
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
                .collect::<Result<Vec<_>, Error>>()
        })
        .await
        .map_err(|_| Error::Stopped)??;
        out.extend(cached);
        Ok(out)
    }

    /// Queues a job and waits until it is durable.
    async fn submit<J: job::Operation>(&self, op: J) -> Result<J::Output, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let message = writer::Message::Job(Box::new(job::Typed::new(op, reply)));
        let jobs = self.jobs.clone();
        self.queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = match jobs.try_send(message) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(message)) => {
                tokio::task::spawn_blocking(move || jobs.send(message))
                    .await
                    .map_err(|_| ())
                    .and_then(|r| r.map_err(|_| ()))
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() {
            self.queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Error::Stopped);
        }
        rx.await.map_err(|_| Error::Stopped)?
    }
}

#[cfg(test)]
mod tests;
