//! The single writer: applies writes in order, turns each revision into a
//! data commit and a metadata commit, makes a whole group of requests
//! durable with one round of fsync and one compare-and-swap of both refs,
//! then publishes and answers. It also turns commits that others made on the
//! data ref into revisions, and builds metadata for existing history.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};

use bytes::Bytes;
use gix::ObjectId;

use super::apply::{Apply, Change};
use super::{
    Job, KeyRange, Kv, Lease, RevisionCommits, RevisionEvents, RevisionIndex, Revisions, Shared, Snapshot, StoreConfig,
    StoreError, WriteOp, WriteResult, history,
};
use crate::keys;
use crate::meta::{self, KeyMeta, LeaseRecord};
use crate::repo::{self, Kind, LocalRepo, ObjectWriter, Repo, RepoError, TreeNode, tree};

/// Most requests grouped into one durable batch.
const MAX_BATCH: usize = 512;
/// How often a batch is retried when someone else moved a ref under it.
const MAX_CONFLICT_RETRIES: usize = 3;
/// How long a ref lock may stay at start-up before it is taken as stale.
const STALE_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
/// etcd's lease limits.
const MAX_LEASE_TTL: i64 = 9_000_000_000;
pub const MIN_LEASE_TTL: i64 = 2;

/// What is durable on disk: where to roll back to when a batch fails.
#[derive(Clone)]
struct Durable {
    snapshot: Snapshot,
    data_head: ObjectId,
    meta_head: Option<ObjectId>,
}

pub struct Writer {
    repo: LocalRepo,
    objects: ObjectWriter,
    config: StoreConfig,
    data_tree: TreeNode,
    meta_tree: TreeNode,
    data_head: Option<ObjectId>,
    meta_head: Option<ObjectId>,
    working: Snapshot,
    index: Arc<Revisions>,
    known_data: HashSet<ObjectId>,
    durable: Option<Durable>,
    /// Events of the revisions written since the last publication.
    pending_events: Vec<Arc<RevisionEvents>>,
    /// Revisions applied but not yet written: the next commit's.
    group: Vec<Arc<RevisionEvents>>,
    /// What the next commit changes besides keys (lease grants, compaction).
    group_notes: Vec<String>,
}

impl Writer {
    /// Opens the store in `repo`: loads it, or builds its metadata first, and
    /// brings it up to date with the data ref. Leaves everything durable.
    pub fn open(repo: &Repo, config: &StoreConfig) -> Result<Self, StoreError> {
        let local = repo.local();
        let stale = local.clear_stale_locks(&[&config.data_ref, &config.metadata_ref], STALE_LOCK_PATIENCE)?;
        for lock in stale {
            tracing::warn!(lock = %lock.display(), "removed a ref lock left by a writer that died");
        }
        let meta_ref = local.ref_target(&config.metadata_ref)?;
        let data_ref = local.ref_target(&config.data_ref)?;
        let mut w = Writer {
            objects: ObjectWriter::new(repo.git_dir()),
            repo: local,
            config: config.clone(),
            data_tree: TreeNode::empty(),
            meta_tree: TreeNode::empty(),
            data_head: None,
            meta_head: None,
            working: Snapshot {
                revision: config.start_revision - 1,
                compact_revision: -1,
                kvs: imbl::OrdMap::new(),
                leases: imbl::OrdMap::new(),
            },
            index: Arc::new(Revisions::default()),
            known_data: HashSet::new(),
            durable: None,
            pending_events: Vec::new(),
            group: Vec::new(),
            group_notes: Vec::new(),
        };
        match meta_ref {
            None => w.initialize(data_ref)?,
            Some(m) => {
                w.load(m)?;
                w.reconcile(data_ref)?;
            }
        }
        w.mark_durable();
        Ok(w)
    }

    pub fn snapshot(&self) -> Snapshot {
        self.working.clone()
    }

    /// The events of the revisions written and not yet handed out.
    pub fn take_events(&mut self) -> Vec<Arc<RevisionEvents>> {
        std::mem::take(&mut self.pending_events)
    }

    /// Bytes of objects this writer has written.
    pub fn bytes_written(&self) -> i64 {
        i64::try_from(self.objects.bytes_written()).unwrap_or(i64::MAX)
    }

    pub fn index(&self) -> Arc<Revisions> {
        self.index.clone()
    }

    fn mark_durable(&mut self) {
        self.durable = Some(Durable {
            snapshot: self.working.clone(),
            data_head: self.data_head.expect("an open store has a data commit"),
            meta_head: self.meta_head,
        });
    }

    /// Builds metadata for a repository that has none: a first empty commit
    /// when the data ref does not exist, else one revision per commit of the
    /// data ref's first-parent chain, oldest first.
    fn initialize(&mut self, data_ref: Option<ObjectId>) -> Result<(), StoreError> {
        match data_ref {
            None => {
                let rev = self.working.revision + 1;
                self.working.revision = rev;
                let first = RevisionEvents {
                    revision: rev,
                    changes: Vec::new(),
                };
                self.write_commits(&[Arc::new(first)], None, &[])?;
            }
            Some(head) => {
                let (chain, _) = self.repo.first_parent_chain(head, |_| false)?;
                tracing::info!(commits = chain.len(), data_ref = %self.config.data_ref, "building metadata for existing history");
                self.ingest_chain(&chain)?;
            }
        }
        self.persist(data_ref, None)?;
        Ok(())
    }

    /// Loads the store from metadata commit `head`.
    fn load(&mut self, head: ObjectId) -> Result<(), StoreError> {
        let commit = self.repo.commit(head)?;
        let root = self.repo.tree_entries(commit.tree)?;
        let entry = |name: &str| root.iter().find(|e| e.name == name.as_bytes());
        let blob = |name: &str| -> Result<Option<Vec<u8>>, StoreError> {
            match entry(name) {
                Some(e) => Ok(Some(self.repo.read(e.id, Kind::Blob)?)),
                None => Ok(None),
            }
        };
        let corrupt = |m: String| StoreError::Corrupt(format!("{} ({head}): {m}", self.config.metadata_ref));
        let format = blob(meta::FORMAT_ENTRY)?.ok_or_else(|| corrupt("no `format` entry".into()))?;
        if format.trim_ascii() != meta::FORMAT.as_bytes() {
            return Err(corrupt(format!(
                "format {:?} is not {:?}, the one this gitcd reads",
                String::from_utf8_lossy(&format),
                meta::FORMAT
            )));
        }
        let int = |name: &str| -> Result<Option<i64>, StoreError> {
            blob(name)?
                .map(|b| meta::decode_int(name, &b).map_err(|e| corrupt(e.to_string())))
                .transpose()
        };
        let revision = int(meta::REVISION_ENTRY)?.ok_or_else(|| corrupt("no `revision` entry".into()))?;
        let compact = int(meta::COMPACT_ENTRY)?.unwrap_or(-1);
        let data_hex = blob(meta::DATA_ENTRY)?.ok_or_else(|| corrupt("no `data` entry".into()))?;
        let data = ObjectId::from_hex(data_hex.trim_ascii()).map_err(|e| corrupt(format!("bad `data` entry: {e}")))?;
        let leases = match blob(meta::LEASES_ENTRY)? {
            Some(b) => meta::decode_leases(&b).map_err(|e| corrupt(e.to_string()))?,
            None => Vec::new(),
        };

        // Keys and values.
        let data_commit = self.repo.commit(data)?;
        let mut blobs: BTreeMap<Vec<u8>, ObjectId> = BTreeMap::new();
        for (path, id) in tree::walk_files(&self.repo, data_commit.tree)? {
            blobs.insert(keys::decode(&path), id);
        }
        let mut kvs = imbl::OrdMap::new();
        if let Some(keys_dir) = entry(meta::KEYS_DIR) {
            for (_, id) in tree::walk_files(&self.repo, keys_dir.id)? {
                let (key, m) =
                    meta::decode_key(&self.repo.read(id, Kind::Blob)?).map_err(|e| corrupt(e.to_string()))?;
                let value_id = blobs.get(&key).ok_or_else(|| {
                    corrupt(format!(
                        "key {:?} has metadata but no file in data commit {data}",
                        String::from_utf8_lossy(&key)
                    ))
                })?;
                let value = Bytes::from(self.repo.read(*value_id, Kind::Blob)?);
                kvs.insert(Bytes::from(key), Kv { meta: m, value });
            }
        }
        let mut lease_map: imbl::OrdMap<i64, Lease> = leases
            .iter()
            .map(|l| {
                (
                    l.id,
                    Lease {
                        id: l.id,
                        ttl: l.ttl,
                        keys: imbl::OrdSet::new(),
                    },
                )
            })
            .collect();
        for (k, kv) in kvs.iter() {
            if let Some(l) = lease_map.get_mut(&kv.meta.lease) {
                l.keys.insert(k.clone());
            }
        }
        self.working = Snapshot {
            revision,
            compact_revision: compact,
            kvs,
            leases: lease_map,
        };

        // The revision index: the metadata commits' first-parent chain.
        let mut index = RevisionIndex::default();
        let mut entries: BTreeMap<i64, RevisionCommits> = BTreeMap::new();
        let mut current = Some(head);
        while let Some(id) = current {
            let c = self.repo.commit(id)?;
            let (first, last, logged) = parse_revisions(&c.message).ok_or_else(|| {
                corrupt(format!(
                    "metadata commit {id} has message {:?}, not a revision",
                    String::from_utf8_lossy(&c.message)
                ))
            })?;
            let (prev, data) = match c.parents.as_slice() {
                [prev, data] => (Some(*prev), *data),
                [] => (None, self.data_entry(c.tree)?),
                _ => {
                    return Err(corrupt(format!("metadata commit {id} has {} parents", c.parents.len())));
                }
            };
            let group = logged.then_some((id, first));
            for rev in first..=last {
                // Walking newest first: a newer commit at the same revision
                // (a metadata-only change) wins, the group keeps its log.
                entries
                    .entry(rev)
                    .and_modify(|e| e.group = e.group.or(group))
                    .or_insert(RevisionCommits {
                        metadata: id,
                        data,
                        exact: rev == last,
                        group,
                    });
            }
            self.known_data.insert(data);
            current = prev;
        }
        for (rev, commits) in entries {
            index.set(rev, commits);
        }
        *self.index.index.write().expect("revision index lock is never poisoned") = index;
        self.data_tree = TreeNode::load(&self.repo, data_commit.tree)?;
        self.meta_tree = TreeNode::load(&self.repo, commit.tree)?;
        self.data_head = Some(data);
        self.meta_head = Some(head);
        Ok(())
    }

    /// The data commit named by the `data` entry of metadata tree `tree`.
    fn data_entry(&self, tree: ObjectId) -> Result<ObjectId, StoreError> {
        let entry = self
            .repo
            .lookup(tree, &[meta::DATA_ENTRY.as_bytes()])?
            .ok_or_else(|| StoreError::Corrupt(format!("metadata tree {tree} has no `data` entry")))?;
        let hex = self.repo.read(entry.id, Kind::Blob)?;
        ObjectId::from_hex(hex.trim_ascii())
            .map_err(|e| StoreError::Corrupt(format!("metadata tree {tree}: bad `data` entry: {e}")))
    }

    /// Brings a freshly loaded store and its data ref together: repairs a
    /// data ref that a crash left behind, or turns commits made by others
    /// into revisions.
    fn reconcile(&mut self, data_ref: Option<ObjectId>) -> Result<(), StoreError> {
        let ours = self.data_head.expect("a loaded store has a data commit");
        match data_ref {
            Some(theirs) if theirs == ours => Ok(()),
            None => {
                tracing::warn!(data_ref = %self.config.data_ref, commit = %ours, "data ref missing: recreating it");
                self.repo.update_refs(
                    &[(&self.config.data_ref, None, ours)],
                    "gitcd: repair",
                    &self.config.committer,
                )?;
                Ok(())
            }
            Some(theirs) => {
                let mut steps = 0;
                let (_, found) = self.repo.first_parent_chain(ours, |id| {
                    steps += 1;
                    id == theirs || steps > MAX_BATCH + 1
                })?;
                if found == Some(theirs) {
                    tracing::warn!(data_ref = %self.config.data_ref, from = %theirs, to = %ours, "data ref left behind by an interrupted write: moving it forward");
                    self.repo.update_refs(
                        &[(&self.config.data_ref, Some(theirs), ours)],
                        "gitcd: repair",
                        &self.config.committer,
                    )?;
                    Ok(())
                } else {
                    let before = self.meta_head;
                    self.ingest(theirs)?;
                    self.persist(Some(theirs), before)
                }
            }
        }
    }

    /// Turns the commits that lead to `target` (beyond the ones already
    /// revisions) into revisions, diffing each against the current state.
    fn ingest(&mut self, target: ObjectId) -> Result<Vec<i64>, StoreError> {
        let known = &self.known_data;
        let (mut chain, _) = self.repo.first_parent_chain(target, |id| known.contains(&id))?;
        if chain.is_empty() {
            chain.push(target);
        }
        tracing::info!(commits = chain.len(), data_ref = %self.config.data_ref, head = %target, "picking up commits made outside gitcd");
        self.ingest_chain(&chain)
    }

    fn ingest_chain(&mut self, chain: &[ObjectId]) -> Result<Vec<i64>, StoreError> {
        let mut revisions = Vec::with_capacity(chain.len());
        for &id in chain {
            let commit = self.repo.commit(id)?;
            let old_tree = match self.data_head {
                Some(_) => Some(self.data_tree.write(&mut self.objects)?),
                None => None,
            };
            let mut by_key: BTreeMap<Vec<u8>, Option<ObjectId>> = BTreeMap::new();
            for (path, blob) in tree::diff_files(&self.repo, old_tree, Some(commit.tree))? {
                let key = keys::decode(&path);
                match blob {
                    Some(b) => {
                        by_key.insert(key, Some(b));
                    }
                    None => {
                        by_key.entry(key).or_insert(None);
                    }
                }
            }
            let rev = self.working.revision + 1;
            let mut changes = Vec::with_capacity(by_key.len());
            for (key, blob) in by_key {
                let key = Bytes::from(key);
                let prev = self.working.kvs.get(&key).cloned();
                match blob {
                    Some(b) => {
                        let value = Bytes::from(self.repo.read(b, Kind::Blob)?);
                        let m = match &prev {
                            Some(p) => KeyMeta {
                                create_revision: p.meta.create_revision,
                                mod_revision: rev,
                                version: p.meta.version + 1,
                                lease: p.meta.lease,
                            },
                            None => KeyMeta {
                                create_revision: rev,
                                mod_revision: rev,
                                version: 1,
                                lease: 0,
                            },
                        };
                        let kv = Kv { meta: m, value };
                        self.working.kvs.insert(key.clone(), kv.clone());
                        changes.push(Change {
                            key,
                            prev,
                            new: Some(kv),
                        });
                    }
                    None => {
                        if let Some(p) = prev {
                            if let Some(l) = self.working.leases.get_mut(&p.meta.lease) {
                                l.keys.remove(&key);
                            }
                            self.working.kvs.remove(&key);
                            changes.push(Change {
                                key,
                                prev: Some(p),
                                new: None,
                            });
                        }
                    }
                }
            }
            self.working.revision = rev;
            self.data_tree = TreeNode::load(&self.repo, commit.tree)?;
            self.write_commits(&[Arc::new(RevisionEvents { revision: rev, changes })], Some(id), &[])?;
            revisions.push(rev);
        }
        Ok(revisions)
    }

    /// Writes the commits of revisions `revisions` (consecutive, one or
    /// several): a data commit (unless `external` names the data commit that
    /// already holds the change) and a metadata commit, which records each
    /// revision's changes in its `log` when there are several. `notes` say
    /// what else changed (leases, compaction). Objects are written but not
    /// yet durable.
    fn write_commits(
        &mut self,
        revisions: &[Arc<RevisionEvents>],
        external: Option<ObjectId>,
        notes: &[String],
    ) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (revisions.first(), revisions.last()) else {
            return Ok(());
        };
        let (first, last) = (first.revision, last.revision);
        // Each key's state after the last revision.
        let mut finals: BTreeMap<&Bytes, Option<&Kv>> = BTreeMap::new();
        for c in revisions.iter().flat_map(|r| &r.changes) {
            finals.insert(&c.key, c.new.as_ref());
        }
        for (key, new) in finals {
            let [shard, rest] = meta::key_path(key);
            let meta_path = [meta::KEYS_DIR.to_owned(), shard, rest];
            match new {
                Some(kv) => {
                    if external.is_none() {
                        let blob = self.objects.write(Kind::Blob, &kv.value)?;
                        self.data_tree.put(&self.repo, &keys::encode(key), blob)?;
                    }
                    let blob = self.objects.write(Kind::Blob, &meta::encode_key(key, &kv.meta))?;
                    self.meta_tree.put(&self.repo, &meta_path, blob)?;
                }
                None => {
                    if external.is_none() {
                        self.data_tree.remove(&self.repo, &keys::encode(key))?;
                    }
                    self.meta_tree.remove(&self.repo, &meta_path)?;
                }
            }
        }
        let mut message = if first == last {
            last.to_string()
        } else {
            format!("{first}-{last}")
        };
        if !notes.is_empty() {
            message = format!("{message}\n\n{}", notes.join("\n"));
        }
        // The log keeps what the trees cannot: the state at each revision
        // inside a group, and the order of a txn's changes (etcd's event
        // order). Commits made by others have neither. The metadata message
        // tells readers whether there is one.
        let logged = external.is_none() && (first != last || revisions.iter().any(|r| r.changes.len() > 1));
        let meta_message = if logged && first == last {
            format!("{first}-{message}")
        } else {
            message.clone()
        };
        let data = match external {
            Some(id) => id,
            None => {
                let tree = self.data_tree.write(&mut self.objects)?;
                let parents: Vec<ObjectId> = self.data_head.into_iter().collect();
                let body = repo::encode_commit(tree, &parents, &self.config.committer, &message);
                self.objects.write(Kind::Commit, &body)?
            }
        };
        self.data_head = Some(data);
        self.known_data.insert(data);
        self.pending_events.extend(revisions.iter().cloned());
        let log = logged.then(|| {
            let log: Vec<meta::LogRevision> = revisions
                .iter()
                .map(|r| meta::LogRevision {
                    revision: r.revision,
                    changes: r
                        .changes
                        .iter()
                        .map(|c| meta::LogChange {
                            key: c.key.clone(),
                            new: c.new.as_ref().map(|kv| (kv.meta, kv.value.clone())),
                        })
                        .collect(),
                })
                .collect();
            meta::encode_log(&log)
        });
        self.write_meta_commit(first, last, &meta_message, log)
    }

    /// Writes the revisions applied since the last commit as one commit.
    fn flush_group(&mut self) -> Result<(), StoreError> {
        let group = std::mem::take(&mut self.group);
        let notes = std::mem::take(&mut self.group_notes);
        self.write_commits(&group, None, &notes)
    }

    /// Writes a metadata commit for the current state, which revisions
    /// `first..=last` brought (with their `log` when several).
    fn write_meta_commit(
        &mut self,
        first: i64,
        last: i64,
        message: &str,
        log: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let rev = last;
        let data = self.data_head.expect("metadata describes a data commit");
        let mut put = |name: &str, content: Option<Vec<u8>>| -> Result<(), RepoError> {
            match content {
                Some(c) => {
                    let id = self.objects.write(Kind::Blob, &c)?;
                    self.meta_tree.set_file(name, id);
                }
                None => self.meta_tree.remove_file(name),
            }
            Ok(())
        };
        put(meta::FORMAT_ENTRY, Some(format!("{}\n", meta::FORMAT).into_bytes()))?;
        put(meta::REVISION_ENTRY, Some(format!("{rev}\n").into_bytes()))?;
        put(meta::DATA_ENTRY, Some(format!("{data}\n").into_bytes()))?;
        let compact = self.working.compact_revision;
        put(
            meta::COMPACT_ENTRY,
            (compact >= 0).then(|| format!("{compact}\n").into_bytes()),
        )?;
        let leases: Vec<LeaseRecord> = self
            .working
            .leases
            .values()
            .map(|l| LeaseRecord { id: l.id, ttl: l.ttl })
            .collect();
        put(
            meta::LEASES_ENTRY,
            (!leases.is_empty()).then(|| meta::encode_leases(&leases)),
        )?;
        let logged = log.is_some();
        put(meta::LOG_ENTRY, log)?;
        let tree = self.meta_tree.write(&mut self.objects)?;
        // The data commit is the second parent (it stays reachable from the
        // metadata ref); the first metadata commit has no parent at all, so
        // that `git log --first-parent` walks metadata only.
        let parents: Vec<ObjectId> = match self.meta_head {
            Some(prev) => vec![prev, data],
            None => Vec::new(),
        };
        let body = repo::encode_commit(tree, &parents, &self.config.committer, message);
        let id = self.objects.write(Kind::Commit, &body)?;
        self.meta_head = Some(id);
        let mut index = self.index.index.write().expect("revision index lock is never poisoned");
        if !logged {
            index.set(rev, RevisionCommits::exact(id, data));
        } else {
            for r in first..=last {
                index.set(
                    r,
                    RevisionCommits {
                        metadata: id,
                        data,
                        exact: r == last,
                        group: Some((id, first)),
                    },
                );
            }
        }
        Ok(())
    }

    /// Makes everything written durable and moves the refs from what they
    /// were (`data_before`, `meta_before`) to the new heads, atomically with
    /// compare-and-swap.
    fn persist(&mut self, data_before: Option<ObjectId>, meta_before: Option<ObjectId>) -> Result<(), StoreError> {
        self.objects.sync()?;
        let meta = self.meta_head.expect("persist after writing metadata");
        let data = self.data_head.expect("persist after writing data");
        let mut edits = vec![(self.config.metadata_ref.as_str(), meta_before, meta)];
        if data_before != Some(data) {
            edits.push((self.config.data_ref.as_str(), data_before, data));
        }
        let message = format!("gitcd: revision {}", self.working.revision);
        self.repo.update_refs(&edits, &message, &self.config.committer)?;
        Ok(())
    }

    /// Serves write jobs until every [`super::Store`] handle is dropped.
    pub fn run(mut self, shared: Arc<Shared>, jobs: Receiver<Job>) {
        loop {
            let mut batch = Vec::new();
            match jobs.recv_timeout(self.config.poll_interval) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            // Expired leases are revoked like any write, by nobody waiting.
            let expired: Vec<i64> = {
                let now = std::time::Instant::now();
                let deadlines = shared.deadlines.lock().expect("deadline lock is never poisoned");
                deadlines
                    .iter()
                    .filter(|(_, d)| **d <= now)
                    .map(|(id, _)| *id)
                    .collect()
            };
            for id in expired {
                tracing::debug!(lease = id, "lease expired");
                let (reply, _) = tokio::sync::oneshot::channel();
                batch.push(Job {
                    op: WriteOp::LeaseRevoke { id },
                    reply,
                });
            }
            let (ops, replies): (Vec<WriteOp>, Vec<_>) = batch.into_iter().map(|j| (j.op, j.reply)).unzip();
            let results = self.run_batch(&shared, &ops);
            for (reply, result) in replies.into_iter().zip(results) {
                // The requester may have gone away; the write stands.
                let _ = reply.send(result);
            }
        }
    }

    fn run_batch(&mut self, shared: &Shared, ops: &[WriteOp]) -> Vec<Result<WriteResult, StoreError>> {
        let mut attempt = 0;
        loop {
            match self.try_batch(ops) {
                Ok(results) => {
                    self.mark_durable();
                    self.publish(shared, ops, &results);
                    return results;
                }
                Err(e) => {
                    let conflict = matches!(e, StoreError::Repo(RepoError::RefConflict { .. }));
                    if let Err(reload) = self.rollback() {
                        tracing::error!(error = %reload, "cannot reload the store after a failed write; stopping writes");
                        return ops.iter().map(|_| Err(StoreError::Stopped)).collect();
                    }
                    if conflict && attempt < MAX_CONFLICT_RETRIES {
                        attempt += 1;
                        tracing::info!(error = %e, attempt, "refs moved under a write; retrying on top of them");
                        continue;
                    }
                    tracing::error!(error = %e, "write failed");
                    let msg = e.to_string();
                    return ops
                        .iter()
                        .map(|_| Err(StoreError::Corrupt(format!("write failed: {msg}"))))
                        .collect();
                }
            }
        }
    }

    /// Hands a durable group to readers: events to the window, the new
    /// snapshot, lease deadlines, and the new revision to watchers.
    fn publish(&mut self, shared: &Shared, ops: &[WriteOp], results: &[Result<WriteResult, StoreError>]) {
        let events = self.take_events();
        {
            let mut window = shared.window.write().expect("window lock is never poisoned");
            for e in events {
                window.push(e);
            }
        }
        {
            let now = std::time::Instant::now();
            let mut deadlines = shared.deadlines.lock().expect("deadline lock is never poisoned");
            for (op, result) in ops.iter().zip(results) {
                match (op, result) {
                    (_, Ok(WriteResult::LeaseGranted { id, ttl, .. })) => {
                        deadlines.insert(*id, now + std::time::Duration::from_secs((*ttl).max(0) as u64));
                    }
                    (WriteOp::LeaseRevoke { id }, Ok(_) | Err(StoreError::LeaseNotFound)) => {
                        deadlines.remove(id);
                    }
                    _ => {}
                }
            }
        }
        let revision = self.working.revision;
        *shared.snapshot.write().expect("snapshot lock is never poisoned") = Arc::new(self.working.clone());
        shared.db_size.store(
            shared.db_size_base + self.objects.bytes_written() as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        shared.published.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
    }

    /// Forgets everything not durable: reloads from the refs.
    fn rollback(&mut self) -> Result<(), StoreError> {
        self.pending_events.clear();
        self.group.clear();
        self.group_notes.clear();
        self.objects.discard();
        let repo_meta = self.repo.ref_target(&self.config.metadata_ref)?;
        let durable = self.durable.clone().expect("an open store is durable");
        self.index
            .index
            .write()
            .expect("revision index lock is never poisoned")
            .truncate(durable.snapshot.revision);
        if repo_meta == durable.meta_head {
            self.working = durable.snapshot;
            self.data_head = Some(durable.data_head);
            self.meta_head = durable.meta_head;
            let data_tree = self.repo.commit(durable.data_head)?.tree;
            self.data_tree = TreeNode::load(&self.repo, data_tree)?;
            self.meta_tree = match durable.meta_head {
                Some(m) => TreeNode::load(&self.repo, self.repo.commit(m)?.tree)?,
                None => TreeNode::empty(),
            };
        } else if let Some(m) = repo_meta {
            // Someone else wrote metadata: start over from it.
            self.load(m)?;
            self.mark_durable();
        }
        Ok(())
    }

    fn try_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<Result<WriteResult, StoreError>>, StoreError> {
        let durable = self.durable.clone().expect("an open store is durable");
        let data_ref = self.repo.ref_target(&self.config.data_ref)?;
        let mut wrote = false;
        if data_ref != Some(durable.data_head)
            && let Some(theirs) = data_ref
        {
            self.ingest(theirs)?;
            wrote = true;
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            // A txn that reads a past revision may read one applied in this
            // batch: it must be in a commit, and its objects visible.
            if let WriteOp::Txn(t) = op
                && reads_history(t)
            {
                self.flush_group()?;
                if self.objects.has_pending() {
                    self.objects.sync()?;
                }
            }
            let before = self.working.clone();
            let begin = before.revision;
            match self.apply(op) {
                Err(e) => {
                    self.working = before;
                    results.push(Err(e));
                }
                Ok((result, changes, meta_changed)) => {
                    if !changes.is_empty() {
                        self.working.revision = begin + 1;
                        self.group.push(Arc::new(RevisionEvents {
                            revision: begin + 1,
                            changes,
                        }));
                        if self.group.len() >= self.config.max_commit_revisions {
                            self.flush_group()?;
                        }
                        wrote = true;
                    } else if meta_changed && self.group.is_empty() {
                        self.write_meta_commit(begin, begin, &format!("{begin}\n\n{}", op_summary(op)), None)?;
                        wrote = true;
                    } else if meta_changed {
                        self.group_notes.push(op_summary(op));
                    }
                    results.push(Ok(result));
                }
            }
        }
        self.flush_group()?;
        if wrote {
            let data_before = data_ref.or(Some(durable.data_head));
            self.persist(data_before, durable.meta_head)?;
        }
        Ok(results)
    }

    /// Applies one op to the working state: its answer, its key changes, and
    /// whether it changed metadata outside the keys (compaction, leases).
    fn apply(&mut self, op: &WriteOp) -> Result<(WriteResult, Vec<Change>, bool), StoreError> {
        let repo = &self.repo;
        let index = &self.index;
        let history = |rev: i64, range: &KeyRange| history::read_at(repo, index, rev, range);
        let begin = self.working.revision;
        let mut a = Apply {
            state: &mut self.working,
            begin,
            changes: Vec::new(),
            history: &history,
        };
        let (result, meta_changed) = match op {
            WriteOp::Put(p) => (WriteResult::Put(a.put(p)?), false),
            WriteOp::DeleteRange(d) => (WriteResult::DeleteRange(a.delete_range(d)), false),
            WriteOp::Txn(t) => (WriteResult::Txn(a.txn(t)?), false),
            WriteOp::Compact(c) => {
                if c.revision <= a.state.compact_revision {
                    return Err(StoreError::Compacted);
                }
                if c.revision > a.state.revision {
                    return Err(StoreError::FutureRevision);
                }
                a.state.compact_revision = c.revision;
                (WriteResult::Revision(begin), true)
            }
            WriteOp::LeaseGrant { id, ttl } => {
                if *ttl > MAX_LEASE_TTL {
                    return Err(StoreError::LeaseTtlTooLarge);
                }
                let mut id = *id;
                if a.state.leases.contains_key(&id) {
                    return Err(StoreError::LeaseExists);
                }
                while id == 0 || a.state.leases.contains_key(&id) {
                    id = rand::random::<i64>() & i64::MAX;
                }
                let ttl = (*ttl).max(MIN_LEASE_TTL);
                a.state.leases.insert(
                    id,
                    Lease {
                        id,
                        ttl,
                        keys: imbl::OrdSet::new(),
                    },
                );
                (
                    WriteResult::LeaseGranted {
                        id,
                        ttl,
                        revision: begin,
                    },
                    true,
                )
            }
            WriteOp::LeaseRevoke { id } => {
                let lease = a.state.leases.remove(id).ok_or(StoreError::LeaseNotFound)?;
                for key in lease.keys.iter() {
                    a.delete_range(&crate::proto::etcdserverpb::DeleteRangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    });
                }
                let revision = if a.changes.is_empty() { begin } else { begin + 1 };
                (WriteResult::Revision(revision), true)
            }
        };
        let changes = a.changes;
        Ok((result, changes, meta_changed))
    }
}

/// Whether a txn has a Range at an explicit revision, in any branch.
fn reads_history(t: &crate::proto::etcdserverpb::TxnRequest) -> bool {
    use crate::proto::etcdserverpb::request_op::Request;
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Request::RequestRange(r)) => r.revision > 0,
        Some(Request::RequestTxn(t)) => reads_history(t),
        _ => false,
    })
}

fn op_summary(op: &WriteOp) -> String {
    match op {
        WriteOp::Compact(c) => format!("compact {}", c.revision),
        WriteOp::LeaseGrant { id, ttl } => format!("lease grant {id} ttl {ttl}"),
        WriteOp::LeaseRevoke { id } => format!("lease revoke {id}"),
        _ => "metadata".into(),
    }
}

/// The revisions a metadata commit message names on its first line: one
/// revision in decimal, or `first-last` for a commit with a `log` (a group of
/// revisions, or one whose changes' order the log keeps); and which it is.
pub fn parse_revisions(message: &[u8]) -> Option<(i64, i64, bool)> {
    let line = std::str::from_utf8(message.split(|b| *b == b'\n').next()?).ok()?.trim();
    match line.split_once('-') {
        None => line.parse().ok().map(|r| (r, r, false)),
        Some((first, last)) => {
            let (first, last) = (first.parse().ok()?, last.parse().ok()?);
            (first <= last).then_some((first, last, true))
        }
    }
}
