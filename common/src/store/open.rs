//! Opening a store: taking the branch pair's writer lock, loading the
//! metadata (or building it for existing history), and bringing the data
//! ref and the metadata together after a crash or while gitcd was down.

use std::collections::BTreeMap;

use bytes::Bytes;
use gix::ObjectId;

use super::revisions::{RevisionCommits, RevisionIndex, parse_revisions};
use super::writer::{DEFERRED_ENTRY, DEFERRED_HEADER, MAX_BATCH, STALE_LOCK_PATIENCE, Writer};
use super::{CorruptError, Kv, Lease, RevisionEvents, Snapshot, StorageError, StoreConfig};
use crate::keys;
use crate::meta;
use crate::repo::journal::{self, Journal, Recovered};
use crate::repo::lock::{OwnerLock, restored_marker_path, writer_lock_path};
use crate::repo::refs::RefUpdate;
use crate::repo::{Kind, LocalRepo, ObjectWriter, Repo, RepoError, TreeNode, tree};

use std::sync::Arc;

/// How far the revisions of a store restored from its upstream jump: more
/// than it can have acknowledged after its last successful push (see
/// docs/format.md for the limits).
pub const RESTORE_JUMP: i64 = 1_000_000;

impl Writer {
    /// Opens the store in `repo`: loads it, or builds its metadata first, and
    /// brings it up to date with the data ref. Leaves everything durable.
    pub fn open(repo: &Repo, config: &StoreConfig) -> Result<Self, StorageError> {
        let local = repo.local();
        let lock = OwnerLock::take(
            &writer_lock_path(repo.git_dir(), &config.metadata_ref),
            &format!("writes {} and {}", config.data_ref, config.metadata_ref),
        )?;
        let stale = local.clear_stale_locks(&[&config.data_ref, &config.metadata_ref], STALE_LOCK_PATIENCE)?;
        for lock in stale {
            tracing::warn!(lock = %lock.display(), "removed a ref lock left by a writer that died");
        }
        let (mut journal, recovered) = Journal::open(
            repo.git_dir(),
            &journal::journal_path(repo.git_dir(), &config.metadata_ref),
        )?;
        let (behind, deferred) = match recovered {
            Some(recovered) => recover(&local, config, &recovered)?,
            None => (None, None),
        };
        let meta_ref = local.ref_target(&config.metadata_ref)?;
        let data_ref = local.ref_target(&config.data_ref)?;
        let working = Snapshot::empty(config.start_revision - 1);
        let objects = ObjectWriter::new(repo.git_dir(), config.maintenance);
        let mut w = Writer::assemble(local, objects, config.clone(), working, lock);
        match meta_ref {
            None => w.initialize(data_ref)?,
            Some(m) => {
                w.load(m)?;
                let mut behind = behind;
                if let Some(log) = deferred
                    && let Some(before) = w.replay_deferred(log)?
                {
                    behind = behind.or(Some(before));
                }
                w.reconcile(data_ref, behind)?;
            }
        }
        w.load_auth()?;
        let marker = restored_marker_path(repo.git_dir(), &config.metadata_ref);
        if marker.exists() {
            w.jump_after_restore()?;
            std::fs::remove_file(&marker).map_err(|source| crate::repo::RepoError::Io { path: marker, source })?;
        }
        // Everything opening wrote was durable; the refs as a crash's
        // recovery or the last run left them are fsynced by the journal's
        // first checkpoint, which names them.
        let mut refs = BTreeMap::from([
            (w.config.metadata_ref.clone(), w.meta_head),
            (w.config.data_ref.clone(), w.data_head),
        ]);
        if w.auth_head.is_some() {
            refs.insert(w.config.auth_ref(), w.auth_head);
        }
        journal.start(refs)?;
        let fresh = w.repo.fresh();
        w.objects.attach_journal(journal, fresh);
        w.mark_durable();
        w.reset_in_git();
        Ok(w)
    }

    /// A branch pair restored from its upstream (its volume was lost) may
    /// have acknowledged revisions that never reached the upstream: jump
    /// past any of them, and compact at the jump, so that no client sees a
    /// revision twice or goes back, and a watcher from before relists.
    fn jump_after_restore(&mut self) -> Result<(), StorageError> {
        let from = self.working.revision;
        let to = from + RESTORE_JUMP;
        self.working.revision = to;
        self.working.compact_revision = to;
        let message = format!("{to}\n\nrestored from upstream: revisions jump from {from} to {to}");
        self.write_meta_commit(to, to, &message, None)?;
        let before = self.repo.ref_target(&self.config.metadata_ref)?;
        let data = self.data_head;
        self.persist(data, before)?;
        tracing::warn!(from, to, metadata_ref = %self.config.metadata_ref, "restored from upstream: revisions jump past any acknowledged but not pushed");
        Ok(())
    }

    /// Builds metadata for a repository that has none: a first empty commit
    /// when the data ref does not exist, else one revision per commit of the
    /// data ref's first-parent chain, oldest first.
    fn initialize(&mut self, data_ref: Option<ObjectId>) -> Result<(), StorageError> {
        // A new store in a repository whose HEAD names no commit yet: HEAD
        // names the data ref, so that the next start without --data-ref
        // (and a clone) finds it.
        if let Ok(Some(head)) = self.repo.symbolic_target("HEAD")
            && self.repo.ref_target(&head).ok().flatten().is_none()
            && head != self.config.data_ref
        {
            self.repo.set_head(&self.config.data_ref)?;
        }
        match data_ref {
            None => {
                let rev = self.working.revision + 1;
                self.working.revision = rev;
                let first = RevisionEvents {
                    revision: rev,
                    changes: Vec::new(),
                };
                self.write_commits(&[Arc::new(first)], super::commit::DataCommit::new(), &[])?;
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
    pub(super) fn load(&mut self, head: ObjectId) -> Result<(), StorageError> {
        let commit = self.repo.commit(head)?;
        let root = self.repo.tree_entries(commit.tree)?;
        let entry = |name: &str| root.iter().find(|e| e.name == name.as_bytes());
        let blob = |name: &str| -> Result<Option<Vec<u8>>, StorageError> {
            match entry(name) {
                Some(e) => Ok(Some(self.repo.read(e.id, Kind::Blob)?)),
                None => Ok(None),
            }
        };
        let missing = |entry: &'static str| CorruptError::MissingEntry { commit: head, entry };
        let malformed = |entry: &str, source| CorruptError::Malformed {
            commit: head,
            entry: entry.into(),
            source,
        };
        let format = blob(meta::FORMAT_ENTRY)?.ok_or_else(|| missing(meta::FORMAT_ENTRY))?;
        if !meta::READ_FORMATS.iter().any(|f| format.trim_ascii() == f.as_bytes()) {
            return Err(CorruptError::Format {
                commit: head,
                found: String::from_utf8_lossy(&format).trim().into(),
                expected: "gitcd/1, gitcd/2 and gitcd/3",
            }
            .into());
        }
        let int = |name: &str| -> Result<Option<i64>, StorageError> {
            Ok(blob(name)?
                .map(|b| meta::decode_int(name, &b).map_err(|e| malformed(name, e)))
                .transpose()?)
        };
        let revision = int(meta::REVISION_ENTRY)?.ok_or_else(|| missing(meta::REVISION_ENTRY))?;
        let compact = int(meta::COMPACT_ENTRY)?.unwrap_or(-1);
        let data = self.data_entry(head, commit.tree)?;
        let leases = match blob(meta::LEASES_ENTRY)? {
            Some(b) => meta::decode_leases(&b).map_err(|e| malformed(meta::LEASES_ENTRY, e))?,
            None => Vec::new(),
        };
        let alarms = match blob(meta::ALARMS_ENTRY)? {
            Some(b) => meta::decode_alarms(&b).map_err(|e| malformed(meta::ALARMS_ENTRY, e))?,
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
            for (path, id) in tree::walk_files(&self.repo, keys_dir.id)? {
                let (key, m) = meta::decode_key(&self.repo.read(id, Kind::Blob)?).map_err(|e| {
                    let name: Vec<String> = path.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
                    malformed(&format!("{}/{}", meta::KEYS_DIR, name.join("/")), e)
                })?;
                let value_id = blobs.get(&key).ok_or_else(|| CorruptError::MissingFile {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    data,
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
        let live_bytes = kvs.iter().map(|(k, kv)| super::kv_bytes(k, kv)).sum();
        self.working = Snapshot {
            revision,
            compact_revision: compact,
            kvs,
            leases: lease_map,
            data_commit: data,
            alarms: alarms.into_iter().collect(),
            live_bytes,
            auth: self.working.auth.clone(),
        };

        // The revision index: the metadata commits' first-parent chain.
        let mut entries: BTreeMap<i64, RevisionCommits> = BTreeMap::new();
        let mut recent = Vec::new();
        let mut current = Some(head);
        while let Some(id) = current {
            let c = self.repo.commit(id)?;
            let (first, last, logged) = parse_revisions(&c.message).ok_or_else(|| CorruptError::Message {
                commit: id,
                message: String::from_utf8_lossy(&c.message).into_owned(),
            })?;
            let (prev, data) = match c.parents.as_slice() {
                [prev, data] => (Some(*prev), *data),
                [] => (None, self.data_entry(id, c.tree)?),
                _ => {
                    return Err(CorruptError::Parents {
                        commit: id,
                        parents: c.parents.len(),
                    }
                    .into());
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
            if recent.len() < 4096 {
                recent.push(data);
            }
            current = prev;
        }
        let mut index = RevisionIndex::default();
        for (rev, commits) in entries {
            index.set(rev, commits);
        }
        for data in recent.into_iter().rev() {
            self.known.insert(data);
        }
        *self
            .revisions
            .index
            .write()
            .expect("revision index lock is never poisoned") = index;
        self.data_tree = TreeNode::load(&self.repo, data_commit.tree)?;
        self.meta_tree = TreeNode::load(&self.repo, commit.tree)?;
        self.data_head = Some(data);
        self.meta_head = Some(head);
        Ok(())
    }

    /// Loads users, roles and permissions from the auth ref (none yet: auth
    /// is off, revision 1).
    pub(super) fn load_auth(&mut self) -> Result<(), StorageError> {
        let auth_ref = self.config.auth_ref();
        let Some(head) = self.repo.ref_target(&auth_ref)? else {
            self.auth_head = None;
            self.working.auth = Default::default();
            return Ok(());
        };
        let tree = self.repo.commit(head)?.tree;
        let mut files = Vec::new();
        for (path, id) in tree::walk_files(&self.repo, tree)? {
            files.push((path, self.repo.read(id, Kind::Blob)?));
        }
        let state = crate::auth::decode(files).map_err(|source| StorageError::Auth {
            auth_ref,
            commit: head,
            source,
        })?;
        self.auth_head = Some(head);
        self.working.auth = Arc::new(state);
        Ok(())
    }

    /// The data commit named by the `data` entry of metadata tree `tree` (of
    /// commit `commit`).
    fn data_entry(&self, commit: ObjectId, tree: ObjectId) -> Result<ObjectId, StorageError> {
        let entry = self
            .repo
            .lookup(tree, &[meta::DATA_ENTRY.as_bytes()])?
            .ok_or(CorruptError::MissingEntry {
                commit,
                entry: meta::DATA_ENTRY,
            })?;
        let hex = self.repo.read(entry.id, Kind::Blob)?;
        ObjectId::from_hex(hex.trim_ascii()).map_err(|_| {
            StorageError::from(CorruptError::Malformed {
                commit,
                entry: meta::DATA_ENTRY.into(),
                source: meta::ParseError::new(format!(
                    "{:?} is not an object id",
                    String::from_utf8_lossy(&hex).trim()
                )),
            })
        })
    }

    /// Commits the revisions a crash left acknowledged and uncommitted:
    /// the journal's logs of them, newest `head` first, each naming the one
    /// before. Those the loaded metadata already holds are skipped (a start
    /// that crashed after committing them). Returns the data commit the
    /// store was at before, when it committed any: the data ref on disk is
    /// behind the new one, and a commit someone made on top of it meanwhile
    /// must be merged, not taken as the new state (see [`Self::reconcile`]).
    fn replay_deferred(&mut self, head: ObjectId) -> Result<Option<ObjectId>, StorageError> {
        let loaded = self.working.revision;
        let mut logs = Vec::new();
        let mut at = Some(head);
        while let Some(id) = at {
            let content = self.repo.read(id, Kind::Blob)?;
            let corrupt = |why: &str| CorruptError::Deferred {
                blob: id,
                why: why.to_owned(),
            };
            let rest = content
                .strip_prefix(format!("{DEFERRED_HEADER}\nprevious ").as_bytes())
                .ok_or_else(|| corrupt("no header"))?;
            let end = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| corrupt("no header"))?;
            let previous = std::str::from_utf8(&rest[..end]).map_err(|_| corrupt("bad previous log"))?;
            let repo = &self.repo;
            let mut read_blob = |b: ObjectId| {
                repo.read(b, Kind::Blob)
                    .map(bytes::Bytes::from)
                    .map_err(|e| meta::ParseError::new(crate::error::chain(&e).to_string()))
            };
            let log = meta::decode_log(&bytes::Bytes::copy_from_slice(&rest[end + 1..]), &mut read_blob)
                .map_err(|e| corrupt(&e.to_string()))?;
            let done = log.first().is_none_or(|r| r.revision <= loaded + 1);
            logs.push(log);
            at = match previous {
                _ if done => None,
                "none" => None,
                hex => Some(ObjectId::from_hex(hex.as_bytes()).map_err(|_| corrupt("bad previous log"))?),
            };
        }
        let revisions: Vec<meta::LogRevision> = logs
            .into_iter()
            .rev()
            .flatten()
            .filter(|r| r.revision > loaded)
            .collect();
        let Some(first) = revisions.first().map(|r| r.revision) else {
            return Ok(None);
        };
        if first != loaded + 1 {
            return Err(CorruptError::Deferred {
                blob: head,
                why: format!("its revisions start at {first}, the metadata ends at {loaded}"),
            }
            .into());
        }
        for r in &revisions {
            let changes = r
                .changes
                .iter()
                .map(|c| {
                    let new = c.new.clone().map(|(meta, value)| Kv { meta, value });
                    self.working.set(c.key.clone(), new)
                })
                .collect();
            self.working.revision = r.revision;
            self.group.push(Arc::new(RevisionEvents {
                revision: r.revision,
                changes,
            }));
        }
        tracing::warn!(
            from = first,
            to = self.working.revision,
            "committing revisions acknowledged before a crash from the journal"
        );
        let (meta_before, data_before) = (self.meta_head, self.data_head);
        self.flush_group()?;
        // The metadata ref moves here; the data ref follows in `reconcile`
        // (a fast-forward, or a merge when someone else moved it). A crash
        // between the two replays again: the journal is not started yet, so
        // the next start recovers from the same records, which move the
        // metadata ref back to its journaled value and name the same log.
        let data = self.data_head;
        self.persist(data, meta_before)?;
        self.pending_events.clear();
        Ok(data_before)
    }

    /// Brings a freshly loaded store and its data ref together: repairs a
    /// data ref that a crash left behind, or turns commits made by others
    /// into revisions; merges them when they were made on `behind`, a value
    /// the ref held while it lagged the journal (see [`recover`]).
    fn reconcile(&mut self, data_ref: Option<ObjectId>, behind: Option<ObjectId>) -> Result<(), StorageError> {
        let ours = self.data_head.expect("a loaded store has a data commit");
        match data_ref {
            Some(theirs) if theirs == ours => Ok(()),
            None => {
                tracing::warn!(data_ref = %self.config.data_ref, commit = %ours, "data ref missing: recreating it");
                let edit = RefUpdate {
                    name: &self.config.data_ref,
                    old: None,
                    new: ours,
                };
                self.repo
                    .update_refs(&[edit], "gitcd: repair", &self.config.committer)?;
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
                    let edit = RefUpdate {
                        name: &self.config.data_ref,
                        old: Some(theirs),
                        new: ours,
                    };
                    self.repo
                        .update_refs(&[edit], "gitcd: repair", &self.config.committer)?;
                    Ok(())
                } else {
                    let before = self.meta_head;
                    match behind {
                        Some(base) => {
                            self.unpublished
                                .insert(self.config.data_ref.clone(), (Some(base), ours));
                            let taken = self.take_in(theirs, Some(base));
                            self.unpublished.clear();
                            taken?;
                        }
                        None => {
                            self.ingest(theirs)?;
                        }
                    }
                    self.persist(Some(theirs), before)
                }
            }
        }
    }
}

/// Removes the loose file of ref `name` when it holds no ref at all (a
/// file a crash left torn: moved into place, its content never synced; the
/// journal knows the value). Says whether it did.
fn remove_torn_ref(local: &LocalRepo, name: &str) -> Result<bool, StorageError> {
    let path = local.git_dir().join(name);
    let Ok(content) = std::fs::read(&path) else {
        return Ok(false);
    };
    let text = String::from_utf8_lossy(&content);
    let text = text.trim_end();
    let is_ref = text.starts_with("ref: ") || ObjectId::from_hex(text.as_bytes()).is_ok();
    if is_ref {
        return Ok(false);
    }
    tracing::warn!(
        reference = name,
        bytes = content.len(),
        "removing a ref file torn by a crash; the journal holds its value"
    );
    std::fs::remove_file(&path).map_err(|source| RepoError::Io { path, source })?;
    Ok(true)
}

/// After a crash: puts back the packs of the groups the journal made
/// durable and removes torn ones, then moves the refs back to their last
/// durable values: the metadata and auth refs (only this store writes them)
/// always; the data ref when it names a value this store wrote, an ancestor
/// of the journaled value, or a commit that cannot be read (others may have
/// moved it meanwhile: that stays). Returns the value such a commit was
/// made on when the journal names it (the ref lagged the journal then: the
/// commit is merged, not taken as the new state).
///
/// Also returns the newest log of revisions acknowledged before their commit
/// (see `Writer::defer_group`), when the journal names one.
fn recover(
    local: &LocalRepo,
    config: &StoreConfig,
    recovered: &Recovered,
) -> Result<(Option<ObjectId>, Option<ObjectId>), StorageError> {
    let pack_dir = local.git_dir().join("objects").join("pack");
    let mut read_tree = |id| local.read(id, Kind::Tree).ok();
    let (written, removed) = journal::restore_packs(&pack_dir, recovered, &mut read_tree)?;
    let mut moved = Vec::new();
    let mut behind = None;
    let auth_ref = config.auth_ref();
    for name in [&config.metadata_ref, &auth_ref, &config.data_ref] {
        let Some(&Some(want)) = recovered.refs.get(name.as_str()) else {
            continue;
        };
        let have = match local.ref_target(name) {
            Err(RepoError::RefRead { .. }) if remove_torn_ref(local, name)? => local.ref_target(name)?,
            have => have?,
        };
        if have == Some(want) {
            continue;
        }
        if name == &config.data_ref {
            // Ours: a value this store wrote, or one its journaled head
            // descends from (the ref was behind the journal).
            let ours = have.is_none_or(|h| {
                recovered.seen.get(name.as_str()).is_some_and(|s| s.contains(&h))
                    || local.is_ancestor(h, want).unwrap_or(false)
            });
            if let Some(h) = have
                && !ours
                && local.commit(h).is_ok()
            {
                let seen = recovered.seen.get(name.as_str());
                if let [base] = local.merge_bases(h, want).unwrap_or_default().as_slice()
                    && *base != want
                    && seen.is_some_and(|s| s.contains(base))
                {
                    behind = Some(*base);
                }
                continue;
            }
        }
        let edit = RefUpdate {
            name,
            old: have,
            new: want,
        };
        local.update_refs(&[edit], "gitcd: recover from journal", &config.committer)?;
        moved.push(name.as_str());
    }
    tracing::warn!(
        packs_written = written,
        torn_packs_removed = removed,
        refs_moved = ?moved,
        "recovered from the journal after an unclean stop"
    );
    let deferred = recovered
        .refs
        .get(DEFERRED_ENTRY)
        .copied()
        .flatten()
        .filter(|id| !id.is_null());
    Ok((behind, deferred))
}
