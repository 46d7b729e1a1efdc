//! The single writer: applies jobs in order, makes a whole group of them
//! durable with one round of fsync and one compare-and-swap of both refs,
//! then publishes and answers. Revisions become commits in `commit`, commits
//! made by others become revisions in `ingest`, and the store is loaded or
//! built in `open`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use gix::ObjectId;

use super::apply::{Apply, LeaseChange};
use super::job::{Job, LeaseExpire, Typed};
use super::revisions::Revisions;
use super::{Error, KeyRange, RevisionEvents, Shared, Snapshot, StorageError, StoreConfig, history};
use crate::repo::lock::OwnerLock;
use crate::repo::refs::{RefUpdate, RefWatcher};
use crate::repo::{LocalRepo, ObjectWriter, RepoError, TreeNode};

/// Most requests grouped into one durable batch.
pub(super) const MAX_BATCH: usize = 512;
/// How often a batch is retried when someone else moved a ref under it.
const MAX_CONFLICT_RETRIES: usize = 16;
/// A group that rewrote this many bytes of trees (a flat directory of tens
/// of thousands of keys) makes the next one gather requests for up to half
/// as long as it took: such a group's cost is its trees, whatever the
/// number of requests in it, so fewer and larger groups leave the CPU to
/// the clients. Groups of small trees (W1's, kube-apiserver's) never wait:
/// their cost grows with their requests, and a wait is only latency.
const GATHER_TREES: u64 = 4 << 20;
/// Longest a group waits to gather requests.
const MAX_GATHER: Duration = Duration::from_millis(50);
/// Deferred revisions are committed once no batch came for this long (a
/// burst ended), or at the store's `commit_interval`. Under load a pause
/// this long is rare; a shorter one (a few milliseconds, while the clients
/// just answered send their next requests) would commit every few batches
/// and spend the writer on trees.
const IDLE_COMMIT: Duration = Duration::from_millis(50);
/// The journal entry naming the newest log of deferred revisions (see
/// [`Writer::defer_group`]); not a ref (no ref name has a colon).
pub(super) const DEFERRED_ENTRY: &str = "gitcd:deferred";
/// The first line of a log of deferred revisions.
pub(super) const DEFERRED_HEADER: &str = "gitcd deferred revisions";

/// What the writer's queue carries.
pub(crate) enum Message {
    Job(Box<dyn Job>),
    /// A ref may have moved (the ref watcher saw its file change).
    RefsChanged,
    /// Finish the jobs queued before, then stop.
    Stop,
}

/// What is durable on disk: where to roll back to when a batch fails.
#[derive(Clone)]
pub(super) struct Durable {
    pub snapshot: Snapshot,
    pub data_head: ObjectId,
    pub meta_head: Option<ObjectId>,
    pub auth_head: Option<ObjectId>,
    pub unpublished: Unpublished,
    /// Revisions acknowledged and not yet in a commit, and the newest
    /// journaled log of them.
    pub group: Vec<Arc<RevisionEvents>>,
    pub deferred_log: Option<ObjectId>,
}

/// Refs moved in the journal and not yet on disk: each one's value on disk
/// (what the compare-and-swap expects) and its durable value.
pub(super) type Unpublished = BTreeMap<String, (Option<ObjectId>, ObjectId)>;

/// Data commits the store has written or ingested lately: where a walk of
/// commits made by others stops. Bounded; older history is found through
/// merge bases.
#[derive(Default)]
pub(super) struct Known {
    set: HashSet<ObjectId>,
    order: VecDeque<ObjectId>,
}

/// How many recent data commits [`Known`] remembers.
const KNOWN_COMMITS: usize = 4096;

impl Known {
    pub fn insert(&mut self, id: ObjectId) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > KNOWN_COMMITS
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.set.contains(id)
    }
}

pub struct Writer {
    pub(super) repo: LocalRepo,
    pub(super) objects: ObjectWriter,
    pub(super) config: StoreConfig,
    pub(super) data_tree: TreeNode,
    pub(super) meta_tree: TreeNode,
    pub(super) data_head: Option<ObjectId>,
    pub(super) meta_head: Option<ObjectId>,
    /// The auth ref's commit (none until the first change of users or roles).
    pub(super) auth_head: Option<ObjectId>,
    /// The auth ref's move to make with the next refs: (old, new).
    pub(super) auth_pending: Option<(Option<ObjectId>, ObjectId)>,
    pub(super) working: Snapshot,
    pub(super) revisions: Arc<Revisions>,
    pub(super) known: Known,
    pub(super) durable: Option<Durable>,
    /// Events of the revisions written since the last publication.
    pub(super) pending_events: Vec<Arc<RevisionEvents>>,
    /// Revisions applied but not yet written: the next commit's.
    pub(super) group: Vec<Arc<RevisionEvents>>,
    /// What the next commit changes besides keys (lease grants, compaction).
    pub(super) group_notes: Vec<String>,
    /// How many of `group`'s revisions are deferred: acknowledged, their
    /// events handed out, their values' blobs written.
    pub(super) announced: usize,
    /// How many of `group`'s revisions the in-memory data and metadata
    /// trees already hold (staged as they were deferred, so that a commit
    /// writes trees only). Zero after a rollback reloads the trees.
    pub(super) staged: usize,
    /// The newest journaled log of the deferred revisions.
    deferred_log: Option<ObjectId>,
    /// Each deferred key's newest value blob, by mod revision: its commit
    /// names the blob without writing it again.
    pub(super) deferred_blobs: std::collections::HashMap<bytes::Bytes, (i64, ObjectId)>,
    /// Lease clocks to start or stop once the batch is durable.
    lease_changes: Vec<LeaseChange>,
    /// Set by the ref watcher; cleared when the data ref is read.
    refs_changed: Arc<AtomicBool>,
    /// A failed write could not be rolled back: nothing in memory can be
    /// trusted until a reload from the refs succeeds.
    needs_reload: bool,
    watcher: Option<RefWatcher>,
    /// See [`Unpublished`]; empty without a journal.
    pub(super) unpublished: Unpublished,
    /// When the refs last moved on disk.
    published_at: Instant,
    /// The newest state whose data commit is in the repository, on disk
    /// with the objects it names: see [`super::Store::snapshot_in_git`].
    pub(super) in_git: Arc<std::sync::RwLock<Arc<Snapshot>>>,
    /// The state at the newest refs of [`Self::unpublished`]: `on_disk`
    /// once they move on disk.
    awaiting_git: Option<Arc<Snapshot>>,
    /// A state whose refs moved on disk: `in_git` once it is published
    /// (so that `in_git` never runs ahead of the published snapshot).
    on_disk: Option<Arc<Snapshot>>,
    /// Jobs queued and not yet taken (counted by [`super::Store`]).
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) metrics: super::StoreMetrics,
    /// One writer per branch pair.
    pub(super) _lock: OwnerLock,
}

impl Writer {
    pub fn snapshot(&self) -> Snapshot {
        self.working.clone()
    }

    /// The events of the revisions written and not yet handed out.
    pub fn take_events(&mut self) -> Vec<Arc<RevisionEvents>> {
        std::mem::take(&mut self.pending_events)
    }

    pub fn metrics(&self) -> &super::StoreMetrics {
        &self.metrics
    }

    pub fn maintains_packs(&self) -> bool {
        self.objects.maintains()
    }

    pub fn maintenance_handle(&self) -> crate::repo::maintenance::MaintenanceHandle {
        self.objects.maintenance_handle()
    }

    pub fn revisions(&self) -> Arc<Revisions> {
        self.revisions.clone()
    }

    pub(super) fn assemble(
        repo: LocalRepo,
        objects: ObjectWriter,
        config: StoreConfig,
        working: Snapshot,
        lock: OwnerLock,
    ) -> Self {
        let metrics = super::StoreMetrics::new(objects.maintenance_counters().clone());
        Writer {
            metrics,
            repo,
            objects,
            config,
            data_tree: TreeNode::empty(),
            meta_tree: TreeNode::empty(),
            data_head: None,
            meta_head: None,
            auth_head: None,
            auth_pending: None,
            in_git: Arc::new(std::sync::RwLock::new(Arc::new(working.clone()))),
            awaiting_git: None,
            on_disk: None,
            working,
            revisions: Arc::new(Revisions::default()),
            known: Known::default(),
            durable: None,
            pending_events: Vec::new(),
            group: Vec::new(),
            group_notes: Vec::new(),
            announced: 0,
            staged: 0,
            deferred_log: None,
            deferred_blobs: Default::default(),
            lease_changes: Vec::new(),
            refs_changed: Arc::new(AtomicBool::new(false)),
            needs_reload: false,
            watcher: None,
            unpublished: Unpublished::new(),
            published_at: Instant::now(),
            queued: Arc::new(AtomicUsize::new(0)),
            _lock: lock,
        }
    }

    /// Asks to be woken (through `queue`) when someone moves the data ref.
    /// Without inotify the writer still reads it every `--poll-interval`.
    pub fn watch_refs(&mut self, queue: SyncSender<Message>) {
        let flag = self.refs_changed.clone();
        let on_change = move || {
            flag.store(true, Ordering::Release);
            // A full queue means the writer is busy and reads the flag soon.
            let _ = queue.try_send(Message::RefsChanged);
        };
        match RefWatcher::new(self.repo.git_dir(), &self.config.data_ref, on_change) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::warn!(error = %e, poll_interval = ?self.config.poll_interval, "cannot watch the data ref for changes; reading it every poll interval")
            }
        }
    }

    pub(super) fn mark_durable(&mut self) {
        self.durable = Some(Durable {
            snapshot: self.working.clone(),
            data_head: self.data_head.expect("an open store has a data commit"),
            meta_head: self.meta_head,
            auth_head: self.auth_head,
            unpublished: self.unpublished.clone(),
            group: self.group.clone(),
            deferred_log: self.deferred_log,
        });
    }

    /// Serves jobs until [`Message::Stop`] or until every
    /// [`super::Store`] handle is dropped.
    pub fn run(mut self, shared: Arc<Shared>, queue: Receiver<Message>) {
        let mut last_ref_read = Instant::now();
        let mut last_batch = Instant::now();
        let mut stopping = false;
        // How long the last group took to write, and whether its trees
        // were large.
        let (mut last_cost, mut large_trees) = (Duration::ZERO, false);
        while !stopping {
            let now = Instant::now();
            let next_expiry = shared
                .lessor
                .lock()
                .expect("lessor lock is never poisoned")
                .next_deadline();
            let poll_due = last_ref_read + self.config.poll_interval;
            let mut wake = next_expiry.map_or(poll_due, |d| d.min(poll_due));
            if !self.unpublished.is_empty() || !self.group.is_empty() {
                wake = wake.min(self.published_at + self.config.commit_interval);
            }
            if !self.group.is_empty() {
                wake = wake.min(last_batch + IDLE_COMMIT);
            }
            let mut batch: Vec<Box<dyn Job>> = Vec::new();
            match queue.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Message::Job(job)) => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    batch.push(job);
                }
                Ok(Message::RefsChanged) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Message::Stop) => stopping = true,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let gather_until =
                (large_trees && !batch.is_empty()).then(|| Instant::now() + (last_cost / 2).min(MAX_GATHER));
            while batch.len() < MAX_BATCH && !stopping {
                let next = match gather_until {
                    Some(until) => queue
                        .recv_timeout(until.saturating_duration_since(Instant::now()))
                        .map_err(|_| ()),
                    None => queue.try_recv().map_err(|_| ()),
                };
                match next {
                    Ok(Message::Job(job)) => {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        batch.push(job);
                    }
                    Ok(Message::RefsChanged) => {}
                    Ok(Message::Stop) => stopping = true,
                    Err(()) => break,
                }
            }
            // Expired leases are revoked like any write, by nobody waiting.
            let expired = shared
                .lessor
                .lock()
                .expect("lessor lock is never poisoned")
                .expired(Instant::now());
            for id in expired {
                tracing::debug!(lease = id, "lease expired");
                let (reply, _) = tokio::sync::oneshot::channel();
                batch.push(Box::new(Typed::new(LeaseExpire(id), reply)));
            }
            let read_refs = self.refs_changed.swap(false, Ordering::Acquire) || Instant::now() >= poll_due;
            if read_refs {
                last_ref_read = Instant::now();
            }
            let due = Instant::now() >= self.published_at + self.config.commit_interval;
            // Deferred revisions get their commit once it is due.
            let commit_due = !self.group.is_empty() && (due || Instant::now() >= last_batch + IDLE_COMMIT);
            if batch.is_empty() && !read_refs && !commit_due {
                if !self.unpublished.is_empty() && due {
                    self.publish_refs_idle();
                }
                continue;
            }
            // More than one client waiting is what makes a commit worth
            // deferring: the next batch is coming. Once deferring, it goes
            // on until the commit is due or the writes pause.
            let defer = !stopping
                && (batch.len() > 1 || self.queued.load(Ordering::Relaxed) > 0 || !self.group.is_empty())
                && !batch.is_empty();
            let (started, trees_before) = (Instant::now(), self.objects.tree_bytes_written());
            self.run_batch(&shared, batch, read_refs, defer);
            last_batch = Instant::now();
            last_cost = started.elapsed();
            large_trees = self.objects.tree_bytes_written() - trees_before >= GATHER_TREES;
        }
        // The journal's clean checkpoint at drop needs the refs on disk; a
        // data ref moved meanwhile is merged first.
        if !self.group.is_empty() {
            self.run_batch(&shared, Vec::new(), false, false);
        }
        for _ in 0..MAX_CONFLICT_RETRIES {
            self.publish_refs_idle();
            if self.unpublished.is_empty() || !self.refs_changed.swap(false, Ordering::Acquire) {
                break;
            }
            self.run_batch(&shared, Vec::new(), true, false);
        }
    }

    /// Moves the refs on disk to their durable values, between batches.
    /// A failure loses nothing (the journal holds them): a ref moved by
    /// someone else is read, and merged, by the next batch; another error
    /// is tried again later.
    fn publish_refs_idle(&mut self) {
        match self.publish_refs() {
            // Between batches: every state is published.
            Ok(()) => self.show_in_git(),
            Err(StorageError::Repo(RepoError::RefConflict { .. })) => {
                tracing::info!(data_ref = %self.config.data_ref, "the data ref moved before gitcd's last writes reached it; merging");
                self.refs_changed.store(true, Ordering::Release);
            }
            Err(e) => {
                self.published_at = Instant::now();
                tracing::warn!(error = %crate::error::chain(&e), "cannot move the refs to the journal's values yet; trying again");
            }
        }
    }

    /// Moves every ref in [`Self::unpublished`] on disk, with
    /// compare-and-swap against the value it had there.
    fn publish_refs(&mut self) -> Result<(), StorageError> {
        if self.unpublished.is_empty() {
            return Ok(());
        }
        let edits: Vec<RefUpdate> = self
            .unpublished
            .iter()
            .map(|(name, &(old, new))| RefUpdate { name, old, new })
            .collect();
        // The refs' commits' objects may still be in memory only.
        self.objects.write_out()?;
        let message = format!("gitcd: revision {}", self.working.revision);
        let journaled = self.objects.journaled();
        self.repo
            .update_refs_with(&edits, &message, &self.config.committer, !journaled)?;
        self.unpublished.clear();
        self.objects.refs_behind(false);
        if let Some(d) = &mut self.durable {
            d.unpublished.clear();
        }
        if let Some(state) = self.awaiting_git.take() {
            self.on_disk = Some(state);
        }
        self.published_at = Instant::now();
        Ok(())
    }

    fn run_batch(&mut self, shared: &Shared, mut batch: Vec<Box<dyn Job>>, mut read_refs: bool, defer: bool) {
        let mut attempt = 0;
        let failure = loop {
            if self.needs_reload {
                match self.rollback() {
                    Ok(()) => {
                        self.needs_reload = false;
                        read_refs = true;
                        tracing::info!("reloaded the store from its refs; writing again");
                    }
                    Err(e) => break Some(Error::from(e)),
                }
            }
            match self.try_batch(&mut batch, read_refs, defer) {
                Ok(()) => {
                    self.mark_durable();
                    self.publish(shared);
                    break None;
                }
                Err(e) => {
                    let conflict = matches!(&e, Error::Storage(s) if matches!(**s, StorageError::Repo(RepoError::RefConflict { .. })));
                    if let Err(reload) = self.rollback() {
                        tracing::error!(error = %crate::error::chain(&reload), "cannot reload the store after a failed write; refusing writes until it can");
                        self.needs_reload = true;
                        break Some(e);
                    }
                    if conflict && attempt < MAX_CONFLICT_RETRIES {
                        attempt += 1;
                        read_refs = true;
                        tracing::info!(attempt, "refs moved under a write; retrying on top of them");
                        continue;
                    }
                    if conflict {
                        break Some(Error::from(StorageError::Contended {
                            data_ref: self.config.data_ref.clone(),
                            attempts: attempt + 1,
                        }));
                    }
                    tracing::error!(error = %crate::error::chain(&e), "write failed");
                    if e.is_disk_full() {
                        self.disk_full(shared);
                    }
                    break Some(e);
                }
            }
        };
        *shared.failure.lock().expect("failure lock is never poisoned") = match &failure {
            Some(Error::Storage(e)) => Some(crate::error::chain(&**e).to_string()),
            _ => None,
        };
        for job in batch {
            job.answer(failure.clone());
        }
    }

    /// Hands a durable group to readers: events to the window, lease
    /// clocks, the new snapshot, and the new revision to watchers.
    fn publish(&mut self, shared: &Shared) {
        let events = self.take_events();
        {
            let mut window = shared.window.write().expect("window lock is never poisoned");
            for e in events {
                window.push(e);
            }
        }
        {
            let now = Instant::now();
            let mut lessor = shared.lessor.lock().expect("lessor lock is never poisoned");
            for change in self.lease_changes.drain(..) {
                match change {
                    LeaseChange::Granted { id, ttl } => lessor.grant(id, ttl, now),
                    LeaseChange::Revoked { id } => lessor.revoke(id),
                }
            }
        }
        let revision = self.working.revision;
        *shared.snapshot.write().expect("snapshot lock is never poisoned") = Arc::new(self.working.clone());
        shared.published.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
        self.show_in_git();
    }

    /// Hands readers of Git the published state whose refs moved on disk.
    fn show_in_git(&mut self) {
        if let Some(state) = self.on_disk.take() {
            *self.in_git.write().expect("in-git lock is never poisoned") = state;
        }
    }

    /// At open: the state in Git is the opened one.
    pub(super) fn reset_in_git(&mut self) {
        (self.awaiting_git, self.on_disk) = (None, None);
        *self.in_git.write().expect("in-git lock is never poisoned") = Arc::new(self.working.clone());
    }

    /// The disk is full: raise etcd's NOSPACE alarm, so that writes which
    /// add data are refused until an operator frees space and disarms it
    /// (`etcdctl alarm disarm`). Held in memory until a metadata commit can
    /// record it.
    fn disk_full(&mut self, shared: &Shared) {
        let alarm = (self.config.member_id, super::ALARM_NOSPACE);
        if self.working.alarms.contains(&alarm) {
            return;
        }
        tracing::warn!("the disk is full: NOSPACE alarm raised; free space, then `etcdctl alarm disarm`");
        self.working.alarms.insert(alarm);
        if let Some(d) = &mut self.durable {
            d.snapshot.alarms.insert(alarm);
        }
        *shared.snapshot.write().expect("snapshot lock is never poisoned") = Arc::new(self.working.clone());
    }

    /// Forgets everything not durable: reloads from the refs.
    fn rollback(&mut self) -> Result<(), StorageError> {
        self.pending_events.clear();
        self.group.clear();
        self.announced = 0;
        self.staged = 0;
        self.group_notes.clear();
        self.lease_changes.clear();
        self.auth_pending = None;
        // The state in Git stays the older one until the next group.
        self.awaiting_git = None;
        self.on_disk = None;
        self.objects.discard();
        let repo_meta = self.repo.ref_target(&self.config.metadata_ref)?;
        let durable = self.durable.clone().expect("an open store is durable");
        self.revisions
            .index
            .write()
            .expect("revision index lock is never poisoned")
            .truncate(durable.snapshot.revision);
        // The metadata ref on disk is this store's own when it is what the
        // store last put there.
        let ours_on_disk = durable
            .unpublished
            .get(&self.config.metadata_ref)
            .map_or(durable.meta_head, |&(on_disk, _)| on_disk);
        if repo_meta == ours_on_disk {
            self.unpublished = durable.unpublished;
            self.working = durable.snapshot;
            // Deferred revisions were acknowledged: they stay.
            self.announced = durable.group.len();
            self.revisions.set_deferred(durable.group.clone());
            self.group = durable.group;
            self.deferred_log = durable.deferred_log;
            self.data_head = Some(durable.data_head);
            self.meta_head = durable.meta_head;
            self.auth_head = durable.auth_head;
            let data_tree = self.repo.commit(durable.data_head)?.tree;
            self.data_tree = TreeNode::load(&self.repo, data_tree)?;
            self.meta_tree = match durable.meta_head {
                Some(m) => TreeNode::load(&self.repo, self.repo.commit(m)?.tree)?,
                None => TreeNode::empty(),
            };
        } else if let Some(m) = repo_meta {
            // Someone else wrote metadata: start over from it.
            if !durable.group.is_empty() {
                tracing::error!(
                    revisions = durable.group.len(),
                    metadata_ref = %self.config.metadata_ref,
                    "someone else moved the metadata ref: dropping the revisions acknowledged and not yet committed"
                );
            }
            self.revisions.set_deferred(Vec::new());
            self.deferred_log = None;
            self.deferred_blobs.clear();
            self.unpublished.clear();
            self.objects.refs_behind(false);
            self.load(m)?;
            self.load_auth()?;
            self.mark_durable();
        }
        Ok(())
    }

    /// Applies `batch` in order on top of the durable state and makes the
    /// result durable. The data ref is read first when `read_refs` (someone
    /// may have moved it); otherwise a move shows as a ref conflict.
    fn try_batch(&mut self, batch: &mut [Box<dyn Job>], read_refs: bool, defer: bool) -> Result<(), Error> {
        let durable = self.durable.clone().expect("an open store is durable");
        // What this store last put on disk (its durable head unless the
        // journal holds newer commits).
        let ours_on_disk = self
            .unpublished
            .get(&self.config.data_ref)
            .map_or(Some(durable.data_head), |&(on_disk, _)| on_disk);
        let data_ref = if read_refs {
            self.repo.ref_target(&self.config.data_ref)?
        } else {
            ours_on_disk
        };
        let mut wrote = false;
        let mut auth_notes = Vec::new();
        if data_ref != ours_on_disk
            && let Some(theirs) = data_ref
        {
            // Revisions acknowledged before are committed first; theirs
            // merge onto them.
            if !self.group.is_empty() {
                self.flush_group()?;
                self.objects.sync()?;
            }
            self.take_in(theirs, ours_on_disk)?;
            wrote = true;
        }
        for job in batch.iter_mut() {
            wrote |= self.apply_job(&mut **job, &mut auth_notes)?;
        }
        // A batch that changed keys only, while more writes come, is made
        // durable by the journal alone; its commit waits for the next ones'.
        let committed_nothing = self.data_head == Some(durable.data_head)
            && self.meta_head == durable.meta_head
            && self.auth_pending.is_none();
        if defer
            && committed_nothing
            && self.objects.journaled()
            && auth_notes.is_empty()
            && self.group_notes.is_empty()
            && self.published_at.elapsed() < self.config.commit_interval
        {
            if wrote {
                self.defer_group()?;
            }
            return Ok(());
        }
        wrote |= !self.group.is_empty();
        self.flush_group()?;
        if !auth_notes.is_empty() {
            self.write_auth_commit(&auth_notes)?;
            wrote = true;
        }
        if wrote {
            let data_before = if data_ref == ours_on_disk {
                Some(durable.data_head)
            } else {
                data_ref
            };
            self.persist(data_before, durable.meta_head)?;
        }
        Ok(())
    }

    /// Applies one job on top of the working state; whether it wrote
    /// anything. Changes to users and roles add to `auth_notes`.
    pub(super) fn apply_job(&mut self, job: &mut dyn Job, auth_notes: &mut Vec<String>) -> Result<bool, Error> {
        // A txn that reads a past revision may read one applied in this
        // batch: it must be in a commit, and its objects visible. A
        // revision with a commit of its own follows the ones before.
        if job.reads_history() || job.own_commit() {
            self.flush_group()?;
            if job.reads_history() && self.objects.has_pending() {
                self.objects.sync()?;
            }
        }
        let before = self.working.clone();
        let repo = &self.repo;
        let revisions = &self.revisions;
        let history = |rev: i64, range: &KeyRange| history::read_at(repo, revisions, rev, range);
        let mut a = Apply::new(&mut self.working, &history);
        if !job.apply(&mut a) {
            self.working = before;
            return Ok(false);
        }
        let begin = a.begin;
        let (changes, notes, leases, own) = (a.changes, a.notes, a.leases, a.own_commit);
        auth_notes.extend(a.auth_notes);
        self.lease_changes.extend(leases);
        if !changes.is_empty() {
            self.working.revision = begin + 1;
            self.group.push(Arc::new(RevisionEvents {
                revision: begin + 1,
                changes,
            }));
            self.group_notes.extend(notes);
            if let Some(own) = own {
                self.write_own_commit(&own)?;
            } else if self.group.len() >= self.config.max_commit_revisions {
                self.flush_group()?;
            }
            Ok(true)
        } else if !notes.is_empty() {
            if self.group.is_empty() {
                let message = format!("{begin}\n\n{}", notes.join("\n"));
                self.write_meta_commit(begin, begin, &message, None)?;
            } else {
                self.group_notes.extend(notes);
            }
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Makes the revisions applied since the last call durable without a
    /// commit: their values' blobs and a log of them (the `log` format of a
    /// grouped commit, every value named by its blob, after a line naming
    /// the log before) go to the journal, whose entry [`DEFERRED_ENTRY`]
    /// names the newest log. Their events are handed out now; the commit
    /// that holds them comes with a later batch, and a start after a crash
    /// makes it from the logs (`Writer::replay_deferred`).
    fn defer_group(&mut self) -> Result<(), StorageError> {
        let started = Instant::now();
        let new: Vec<Arc<RevisionEvents>> = self.group[self.announced..].to_vec();
        let mut log = Vec::with_capacity(new.len());
        for r in &new {
            let mut changes = Vec::with_capacity(r.changes.len());
            for c in &r.changes {
                let size = |kv: Option<&super::Kv>| kv.map_or(0, |kv| super::kv_bytes(&c.key, kv));
                self.working.live_bytes += size(c.new.as_ref()) - size(c.prev.as_ref());
                let blob = match &c.new {
                    Some(kv) => {
                        let id = self.objects.write(crate::repo::Kind::Blob, &kv.value)?;
                        self.deferred_blobs.insert(c.key.clone(), (kv.meta.mod_revision, id));
                        Some(id)
                    }
                    None => None,
                };
                changes.push(crate::meta::LogChange {
                    key: c.key.clone(),
                    new: c.new.as_ref().map(|kv| (kv.meta, kv.value.clone())),
                    blob,
                });
            }
            log.push(crate::meta::LogRevision {
                revision: r.revision,
                changes,
            });
        }
        // The commit to come writes trees only. Before the journal record:
        // a failure here fails the batch with nothing made durable.
        self.stage(&new, false)?;
        self.staged = self.group.len();
        let previous = self.deferred_log.map_or_else(|| "none".to_owned(), |id| id.to_string());
        let mut content = format!("{DEFERRED_HEADER}\nprevious {previous}\n").into_bytes();
        content.extend(crate::meta::encode_log(&log));
        let id = self.objects.write(crate::repo::Kind::Blob, &content)?;
        self.objects.sync()?;
        self.objects.commit(&[(DEFERRED_ENTRY, id)])?;
        self.deferred_log = Some(id);
        self.pending_events.extend(new);
        self.announced = self.group.len();
        self.revisions.set_deferred(self.group.clone());
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Makes everything written durable and moves the refs from what they
    /// were (`data_before`, `meta_before`) to the new heads, atomically with
    /// compare-and-swap.
    pub(super) fn persist(
        &mut self,
        data_before: Option<ObjectId>,
        meta_before: Option<ObjectId>,
    ) -> Result<(), StorageError> {
        let started = Instant::now();
        self.objects.sync()?;
        let meta = self.meta_head.expect("persist after writing metadata");
        let data = self.data_head.expect("persist after writing data");
        let auth_ref = self.config.auth_ref();
        let mut edits = Vec::new();
        if meta_before != Some(meta) {
            edits.push(RefUpdate {
                name: &self.config.metadata_ref,
                old: meta_before,
                new: meta,
            });
        }
        if data_before != Some(data) {
            edits.push(RefUpdate {
                name: &self.config.data_ref,
                old: data_before,
                new: data,
            });
        }
        if let Some((old, new)) = self.auth_pending.take() {
            edits.push(RefUpdate {
                name: &auth_ref,
                old,
                new,
            });
        }
        if edits.is_empty() {
            return Ok(());
        }
        // With a journal, the refs move unsynced and one journal record,
        // synced, makes the group durable (packs and refs alike). While
        // more writes wait, the refs stay behind for up to the commit interval.
        let moved: Vec<(String, ObjectId)> = edits.iter().map(|e| (e.name.to_owned(), e.new)).collect();
        for e in edits {
            let on_disk = self.unpublished.get(e.name).map_or(e.old, |&(on_disk, _)| on_disk);
            self.unpublished.insert(e.name.to_owned(), (on_disk, e.new));
        }
        // The group is flushed: the working state is the new data commit's.
        self.awaiting_git = Some(Arc::new(self.working.clone()));
        let waiting = self.queued.load(Ordering::Relaxed) > 0;
        if !self.objects.journaled() || !waiting || self.published_at.elapsed() >= self.config.commit_interval {
            self.publish_refs()?;
        }
        let mut moved: Vec<(&str, ObjectId)> = moved.iter().map(|(name, id)| (name.as_str(), *id)).collect();
        // The deferred revisions are in these commits now.
        let was_deferred = self.group.is_empty() && self.deferred_log.is_some();
        if was_deferred {
            moved.push((DEFERRED_ENTRY, ObjectId::null(gix::hash::Kind::Sha1)));
        }
        self.objects.refs_behind(!self.unpublished.is_empty());
        self.objects.commit(&moved)?;
        if was_deferred {
            self.deferred_log = None;
            self.deferred_blobs.clear();
            self.revisions.set_deferred(Vec::new());
        }
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// How long a ref lock may stay at start-up before it is taken as stale.
pub(super) const STALE_LOCK_PATIENCE: Duration = Duration::from_secs(2);
