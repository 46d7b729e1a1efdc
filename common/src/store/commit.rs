//! Turning revisions into commits: a data commit (one file per key) and a
//! metadata commit (one blob per key, the root entries, the `log` of a
//! grouped commit), both with the revision as their message. The objects
//! are written but not yet durable: `Writer::persist` makes them so.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use gix::ObjectId;

use super::apply::OwnCommit;
use super::revisions::RevisionCommits;
use super::writer::Writer;
use super::{Kv, RevisionEvents, StorageError};
use crate::keys;
use crate::meta::{self, LeaseRecord};
use crate::repo::{self, Kind, RepoError, TreeNode};

/// Where a revision's data commit comes from.
pub(super) enum DataCommit<'a> {
    /// A new commit on top of the head, with these extra parents (a merge).
    New { extra_parents: &'a [ObjectId] },
    /// A commit that already holds the change (someone else's, or the head a
    /// fast-forward moves to): the data tree is already its tree.
    Existing(ObjectId),
}

impl DataCommit<'_> {
    pub fn new() -> Self {
        DataCommit::New { extra_parents: &[] }
    }
}

impl Writer {
    /// Writes the commits of `revisions` (consecutive, one or several): a
    /// data commit as `data` says and a metadata commit, which records each
    /// revision's changes in its `log` when there are several or when one
    /// changed several keys. `notes` say what else changed (leases,
    /// compaction, what was merged).
    pub(super) fn write_commits(
        &mut self,
        revisions: &[Arc<RevisionEvents>],
        data: DataCommit<'_>,
        notes: &[String],
    ) -> Result<(), StorageError> {
        self.write_revisions(revisions, data, notes, 0, 0)
    }

    /// [`Writer::write_commits`], where the first `announced` revisions were
    /// deferred (`Writer::defer_group`): their events are out, their
    /// values' blobs written and counted; the trees hold the first `staged`.
    fn write_revisions(
        &mut self,
        revisions: &[Arc<RevisionEvents>],
        data: DataCommit<'_>,
        notes: &[String],
        announced: usize,
        staged: usize,
    ) -> Result<(), StorageError> {
        let (Some(first), Some(last)) = (revisions.first(), revisions.last()) else {
            return Ok(());
        };
        let (first, last) = (first.revision, last.revision);
        self.metrics.commits.inc();
        self.metrics.revisions_per_commit.observe((last - first + 1) as f64);
        let external = matches!(data, DataCommit::Existing(_));
        for r in &revisions[announced..] {
            for c in &r.changes {
                let size = |kv: Option<&Kv>| kv.map_or(0, |kv| super::kv_bytes(&c.key, kv));
                self.working.live_bytes += size(c.new.as_ref()) - size(c.prev.as_ref());
            }
        }
        // The blob of each key's final value: the log names it. Staged
        // revisions' blobs are the deferred ones.
        let blobs = self.stage(&revisions[staged..], external)?;
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
        let logged = !external && (first != last || revisions.iter().any(|r| r.changes.len() > 1));
        let meta_message = if logged && first == last {
            format!("{first}-{message}")
        } else {
            message.clone()
        };
        let data = match data {
            DataCommit::Existing(id) => id,
            DataCommit::New { extra_parents } => {
                let tree = self.data_tree.write(&mut self.objects)?;
                let parents: Vec<ObjectId> = self
                    .data_head
                    .into_iter()
                    .chain(extra_parents.iter().copied())
                    .collect();
                let body = repo::encode_commit(tree, &parents, &self.config.committer, &message);
                self.objects.write(Kind::Commit, &body)?
            }
        };
        self.data_head = Some(data);
        self.working.data_commit = data;
        self.known.insert(data);
        self.pending_events.extend(revisions.iter().skip(announced).cloned());
        let log = logged.then(|| {
            // A key's last change in the group names the blob its value is
            // in (the data tree has it); earlier ones keep it inline.
            let mut last: HashMap<&Bytes, (i64, usize)> = HashMap::new();
            for r in revisions {
                for (i, c) in r.changes.iter().enumerate() {
                    last.insert(&c.key, (r.revision, i));
                }
            }
            let log: Vec<meta::LogRevision> = revisions
                .iter()
                .map(|r| meta::LogRevision {
                    revision: r.revision,
                    changes: r
                        .changes
                        .iter()
                        .enumerate()
                        .map(|(i, c)| meta::LogChange {
                            key: c.key.clone(),
                            new: c.new.as_ref().map(|kv| (kv.meta, kv.value.clone())),
                            blob: match &c.new {
                                Some(kv) if last.get(&c.key) == Some(&(r.revision, i)) => {
                                    blobs.get(&c.key).copied().or_else(|| {
                                        self.deferred_blobs
                                            .get(&c.key)
                                            .filter(|(rev, _)| *rev == kv.meta.mod_revision)
                                            .map(|&(_, id)| id)
                                    })
                                }
                                _ => None,
                            },
                        })
                        .collect(),
                })
                .collect();
            meta::encode_log(&log)
        });
        self.write_meta_commit(first, last, &meta_message, log)
    }

    /// Puts the final state of each key `revisions` change into the data
    /// tree (unless `external`: the data commit exists) and the metadata
    /// trie; the blob of each key's final value.
    pub(super) fn stage(
        &mut self,
        revisions: &[Arc<RevisionEvents>],
        external: bool,
    ) -> Result<HashMap<Bytes, ObjectId>, StorageError> {
        let mut finals: BTreeMap<&Bytes, Option<&Kv>> = BTreeMap::new();
        for r in revisions {
            for c in &r.changes {
                finals.insert(&c.key, c.new.as_ref());
            }
        }
        let mut blobs = HashMap::new();
        for (key, new) in finals {
            let hex = meta::key_hex(key);
            match new {
                Some(kv) => {
                    if !external {
                        let blob = match self.deferred_blobs.get(key) {
                            Some(&(rev, id)) if rev == kv.meta.mod_revision => id,
                            _ => self.objects.write(Kind::Blob, &kv.value)?,
                        };
                        self.data_tree.put(&self.repo, &keys::encode(key), blob)?;
                        blobs.insert(key.clone(), blob);
                    }
                    let blob = self.objects.write(Kind::Blob, &meta::encode_key(key, &kv.meta))?;
                    let trie = (meta::KEYS_DIR, meta::KEYS_TOP_DIGITS, meta::KEYS_MAX_LEAF);
                    self.meta_tree.put_hashed(&self.repo, trie, &hex, blob)?;
                }
                None => {
                    if !external {
                        self.data_tree.remove(&self.repo, &keys::encode(key))?;
                    }
                    self.meta_tree
                        .remove_hashed(&self.repo, (meta::KEYS_DIR, meta::KEYS_TOP_DIGITS), &hex)?;
                }
            }
        }
        Ok(blobs)
    }

    /// Writes the revisions applied since the last commit as one commit.
    pub(super) fn flush_group(&mut self) -> Result<(), StorageError> {
        let group = std::mem::take(&mut self.group);
        let notes = std::mem::take(&mut self.group_notes);
        let announced = std::mem::take(&mut self.announced);
        let staged = std::mem::take(&mut self.staged);
        self.write_revisions(&group, DataCommit::new(), &notes, announced, staged)
    }

    /// Writes the one revision in the group (a change set's, applied right
    /// after a flush) as its own commit: a fast-forward to the commit the
    /// set names when the branch is still where the set was computed, else
    /// a new data commit with the set's extra parents.
    pub(super) fn write_own_commit(&mut self, own: &OwnCommit) -> Result<(), StorageError> {
        let group = std::mem::take(&mut self.group);
        let mut notes = std::mem::take(&mut self.group_notes);
        let announced = std::mem::take(&mut self.announced);
        // The group was committed before the change set was applied: its
        // one revision is not staged.
        let staged = std::mem::take(&mut self.staged);
        debug_assert_eq!(staged, 0);
        if !own.message.is_empty() {
            notes.insert(0, own.message.clone());
        }
        let head = self.data_head;
        match own.fast_forward {
            Some(target) if own.computed_on.is_some() && own.computed_on == head => {
                let tree = self.repo.commit(target)?.tree;
                self.data_tree = TreeNode::load(&self.repo, tree)?;
                // The metadata still needs each key's new bookkeeping.
                self.write_revisions(&group, DataCommit::Existing(target), &notes, announced, 0)
            }
            ff => {
                let parents: Vec<ObjectId> = own.parents.iter().copied().chain(ff).collect();
                self.write_revisions(
                    &group,
                    DataCommit::New {
                        extra_parents: &parents,
                    },
                    &notes,
                    announced,
                    0,
                )
            }
        }
    }

    /// Writes a commit of the auth ref for the current users and roles;
    /// `notes` say what changed. The ref moves with the batch's others.
    pub(super) fn write_auth_commit(&mut self, notes: &[String]) -> Result<(), StorageError> {
        let state = self.working.auth.clone();
        let mut tree = TreeNode::empty();
        for (path, content) in crate::auth::encode(&state) {
            let id = self.objects.write(Kind::Blob, &content)?;
            match path.as_slice() {
                [name] => tree.set_file(name, id),
                _ => tree.put(&self.repo, &path, id)?,
            }
        }
        let tree = tree.write(&mut self.objects)?;
        let message = format!("auth {}\n\n{}", state.revision, notes.join("\n"));
        let parents: Vec<ObjectId> = self.auth_head.into_iter().collect();
        let body = repo::encode_commit(tree, &parents, &self.config.committer, &message);
        let id = self.objects.write(Kind::Commit, &body)?;
        let old = self.auth_pending.map_or(self.auth_head, |(old, _)| old);
        self.auth_pending = Some((old, id));
        self.auth_head = Some(id);
        Ok(())
    }

    /// Writes a metadata commit for the current state, which revisions
    /// `first..=last` brought (with their `log` when several).
    pub(super) fn write_meta_commit(
        &mut self,
        first: i64,
        last: i64,
        message: &str,
        log: Option<Vec<u8>>,
    ) -> Result<(), StorageError> {
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
        let alarms = &self.working.alarms;
        put(
            meta::ALARMS_ENTRY,
            (!alarms.is_empty()).then(|| meta::encode_alarms(alarms)),
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
        let mut index = self
            .revisions
            .index
            .write()
            .expect("revision index lock is never poisoned");
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
}
