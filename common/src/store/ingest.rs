//! Commits that reach the data ref from outside gitcd (a `git push`, a
//! person's commit) become revisions: each commit of the first-parent chain
//! after the history gitcd knows is one revision, its changes the difference
//! between the current state and the commit's tree.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use gix::ObjectId;

use super::commit::DataCommit;
use super::writer::Writer;
use super::{Kv, RevisionEvents, StorageError};
use crate::keys;
use crate::meta::KeyMeta;
use crate::repo::{Kind, TreeNode, tree};

impl Writer {
    /// Turns the commits that lead to `target` (beyond the ones already
    /// revisions) into revisions. The walk stops at a data commit gitcd made
    /// or ingested lately, or at the merge base with the current head: a
    /// target that is already in the history (a reset) is one revision to
    /// its state.
    pub(super) fn ingest(&mut self, target: ObjectId) -> Result<Vec<i64>, StorageError> {
        self.objects.write_out()?;
        let head = self.data_head.expect("an open store has a data commit");
        let base = if self.known.contains(&target) {
            Some(target)
        } else {
            self.repo.merge_bases(target, head)?.into_iter().next()
        };
        let known = &self.known;
        let (mut chain, _) = self
            .repo
            .first_parent_chain(target, |id| known.contains(&id) || Some(id) == base)?;
        if chain.is_empty() {
            chain.push(target);
        }
        tracing::info!(commits = chain.len(), data_ref = %self.config.data_ref, head = %target, "picking up commits made outside gitcd");
        self.ingest_chain(&chain)
    }

    /// Takes in `theirs`, found on the data ref where this store had put
    /// `ours_on_disk`. When this store's head is ahead of the ref (commits
    /// in the journal not on it yet) and `theirs` was made on top of the ref (a push while the
    /// ref was behind), it is merged like an upstream head: the ref's later
    /// commits must not undo writes already acknowledged. Otherwise its
    /// commits become revisions ([`Self::ingest`]).
    pub(super) fn take_in(&mut self, theirs: ObjectId, ours_on_disk: Option<ObjectId>) -> Result<(), StorageError> {
        // Merge bases are gix's walk, which reads the pack directory only.
        self.objects.write_out()?;
        // Ahead of the ref: commits in the journal not on it yet, or
        // deferred revisions just committed.
        let ahead = self.data_head != ours_on_disk;
        let on_top = match ours_on_disk {
            Some(base) if ahead => self.repo.is_ancestor(base, theirs)?,
            _ => false,
        };
        if on_top {
            let incoming = crate::merge::Incoming {
                commit: theirs,
                meta_tree: None,
                name: self.config.data_ref.clone(),
            };
            let data_ref = self.config.data_ref.clone();
            let failed = move |reason: String| StorageError::MergeBehind {
                data_ref: data_ref.clone(),
                head: theirs,
                reason,
            };
            let outcome =
                match crate::merge::plan(&self.repo, &self.working, &incoming, &crate::merge::Policy::default()) {
                    Ok(o) => o,
                    Err(crate::merge::MergeError::Repo(e)) => return Err(StorageError::Repo(e)),
                    Err(crate::merge::MergeError::Store(super::Error::Storage(e))) => {
                        return Err(std::sync::Arc::try_unwrap(e).unwrap_or_else(|e| failed(e.to_string())));
                    }
                    Err(crate::merge::MergeError::Store(e)) => return Err(failed(e.to_string())),
                };
            tracing::info!(data_ref = %self.config.data_ref, head = %theirs, "merging commits pushed while the data ref was behind the journal");
            match outcome {
                crate::merge::Outcome::Changes(set) => {
                    let (reply, _) = tokio::sync::oneshot::channel();
                    let mut job = super::job::Typed::new(set, reply);
                    match self.apply_job(&mut job, &mut Vec::new()) {
                        Ok(_) => {}
                        Err(super::Error::Storage(e)) => {
                            return Err(std::sync::Arc::try_unwrap(e).unwrap_or_else(|e| failed(e.to_string())));
                        }
                        Err(e) => return Err(failed(e.to_string())),
                    }
                }
                // Every key it changed already has its value here: the ref
                // moves on from it to this store's head.
                crate::merge::Outcome::Unchanged | crate::merge::Outcome::UpToDate => {
                    tracing::info!(head = %theirs, "the pushed commit changes no key here");
                }
            }
        } else {
            self.ingest(theirs)?;
        }
        if let Some(entry) = self.unpublished.get_mut(&self.config.data_ref) {
            entry.0 = Some(theirs);
        }
        Ok(())
    }

    /// Makes each commit of `chain` (oldest first) one revision.
    pub(super) fn ingest_chain(&mut self, chain: &[ObjectId]) -> Result<Vec<i64>, StorageError> {
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
            let time = commit.time.saturating_mul(1_000_000_000);
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
                                time,
                            },
                            None => KeyMeta {
                                create_revision: rev,
                                mod_revision: rev,
                                version: 1,
                                lease: 0,
                                time,
                            },
                        };
                        changes.push(self.working.set(key, Some(Kv { meta: m, value })));
                    }
                    None => {
                        if prev.is_some() {
                            changes.push(self.working.set(key, None));
                        }
                    }
                }
            }
            self.working.revision = rev;
            self.data_tree = TreeNode::load(&self.repo, commit.tree)?;
            self.write_commits(
                &[Arc::new(RevisionEvents { revision: rev, changes })],
                DataCommit::Existing(id),
                &[],
            )?;
            revisions.push(rev);
        }
        Ok(revisions)
    }
}
