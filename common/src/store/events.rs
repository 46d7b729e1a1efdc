//! The events of each revision: kept in memory for a window of recent
//! revisions (the writer records them exactly, in the order the request made
//! them), and rebuilt from Git for older ones (from a grouped commit's log,
//! in their order, or by diffing the metadata trees of two revisions; within
//! a revision they then come in key order).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::apply::Change;
use super::revisions::Revisions;
use super::{CorruptError, Error, Kv, history};
use crate::meta;
use crate::repo::{Kind, LocalRepo, tree};

/// What one revision changed.
#[derive(Clone, Debug)]
pub struct RevisionEvents {
    pub revision: i64,
    pub changes: Vec<Change>,
}

/// The events of the most recent revisions, contiguous.
#[derive(Debug)]
pub struct Window {
    events: VecDeque<Arc<RevisionEvents>>,
    capacity: usize,
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends the next revision's events, forgetting the oldest beyond
    /// capacity.
    pub fn push(&mut self, e: Arc<RevisionEvents>) {
        if let Some(last) = self.events.back()
            && last.revision + 1 != e.revision
        {
            // Not contiguous (a reload): start over.
            self.events.clear();
        }
        self.events.push_back(e);
        while self.events.len() > self.capacity {
            self.events.pop_front();
        }
    }

    /// The oldest revision held.
    pub fn first(&self) -> Option<i64> {
        self.events.front().map(|e| e.revision)
    }

    /// The held revisions within `from..=to`.
    pub fn range(&self, from: i64, to: i64) -> Vec<Arc<RevisionEvents>> {
        let Some(first) = self.first() else {
            return Vec::new();
        };
        let start = usize::try_from(from - first).unwrap_or(0);
        self.events
            .iter()
            .skip(start)
            .take_while(|e| e.revision <= to)
            .filter(|e| e.revision >= from)
            .cloned()
            .collect()
    }
}

/// Rebuilds the events of revision `rev` from Git: the keys whose metadata
/// blobs differ between revision `rev - 1` and `rev`.
pub fn from_git(repo: &LocalRepo, index: &Revisions, rev: i64) -> Result<RevisionEvents, Error> {
    if let Some(deferred) = index.deferred_at(rev) {
        return Ok((*deferred).clone());
    }
    let now = index.get(rev).ok_or(Error::Compacted)?;
    if let Some((group, first)) = now.group {
        return from_log(repo, index, (group, &index.log(repo, group)?), first, rev);
    }
    // The revision before; after a jump (a restored store) there is none,
    // and the state before is the previous metadata commit's.
    let before = match index.get(rev - 1) {
        Some(b) => Some(b),
        None => {
            let parents = repo.commit(now.metadata)?.parents;
            match parents.as_slice() {
                [prev, _] => {
                    let data = history::data_of(repo, *prev)?;
                    Some(super::revisions::RevisionCommits::exact(*prev, data))
                }
                _ => None,
            }
        }
    };
    let keys_tree = |commit: gix::ObjectId| -> Result<Option<gix::ObjectId>, Error> {
        let tree = repo.commit(commit)?.tree;
        Ok(repo.lookup(tree, &[meta::KEYS_DIR.as_bytes()])?.map(|e| e.id))
    };
    let new_keys = keys_tree(now.metadata)?;
    let old_keys = match before {
        Some(b) => keys_tree(b.metadata)?,
        None => None,
    };
    let new_data = repo.commit(now.data)?.tree;
    let old_data = match before {
        Some(b) => Some(repo.commit(b.data)?.tree),
        None => None,
    };
    let old_meta_tree = match before {
        Some(b) => Some(repo.commit(b.metadata)?.tree),
        None => None,
    };
    // The keys whose blobs differ. A blob that only moved (its trie
    // directory split) shows as removed at one path and added at another:
    // its key is compared below and drops out.
    let mut touched = std::collections::BTreeSet::new(); // in key order, as events of one revision come
    for (path, blob) in tree::diff_files(repo, old_keys, new_keys)? {
        let blob = match blob {
            Some(b) => b,
            None => {
                // Removed: the key is named in the old blob.
                // (`diff_files` reports a removal only when there was an
                // old tree holding it.)
                let old_tree = old_keys.expect("a removed entry comes from the old tree");
                let names: Vec<&[u8]> = path.iter().map(Vec::as_slice).collect();
                repo.lookup(old_tree, &names)?
                    .expect("a removed entry is in the old tree")
                    .id
            }
        };
        touched.insert(Bytes::from(decode_key_blob(repo, blob)?.0));
    }
    let new_meta_tree = repo.commit(now.metadata)?.tree;
    let mut changes = Vec::new();
    for key in touched {
        let new_meta = history::key_meta(repo, new_meta_tree, &key)?;
        let prev_meta = match old_meta_tree {
            Some(mt) => history::key_meta(repo, mt, &key)?,
            None => None,
        };
        if new_meta == prev_meta {
            continue;
        }
        let new = match new_meta {
            Some(m) => Some(Kv {
                meta: m,
                value: value_at(repo, new_data, &key)?,
            }),
            None => None,
        };
        let prev = match (prev_meta, old_data) {
            (Some(m), Some(dt)) => Some(Kv {
                meta: m,
                value: value_at(repo, dt, &key)?,
            }),
            _ => None,
        };
        changes.push(Change { key, prev, new });
    }
    Ok(RevisionEvents { revision: rev, changes })
}

/// The events of revision `rev`, written in grouped commit `group` whose first
/// revision is `first`: its log has them in order; previous values come from
/// the log's earlier revisions or the state before the group.
fn from_log(
    repo: &LocalRepo,
    index: &Revisions,
    (group, log): (gix::ObjectId, &[meta::LogRevision]),
    first: i64,
    rev: i64,
) -> Result<RevisionEvents, Error> {
    let earlier: Vec<&meta::LogRevision> = log.iter().take_while(|r| r.revision < rev).collect();
    let this = log
        .iter()
        .find(|r| r.revision == rev)
        .ok_or(CorruptError::NoLogRevision {
            revision: rev,
            commit: group,
        })?;
    let base = index.get(first - 1).ok_or(CorruptError::NoBase {
        revision: first - 1,
        commit: group,
    })?;
    let mut changes = Vec::with_capacity(this.changes.len());
    for c in &this.changes {
        let logged = earlier
            .iter()
            .rev()
            .find_map(|r| r.changes.iter().rev().find(|e| e.key == c.key));
        let prev = match logged {
            Some(e) => e.new.clone().map(|(meta, value)| Kv { meta, value }),
            None => history::read_range(repo, base, &super::KeyRange::Single(c.key.clone()))?
                .into_iter()
                .next()
                .map(|(_, kv)| kv),
        };
        let new = c.new.clone().map(|(meta, value)| Kv { meta, value });
        changes.push(Change {
            key: c.key.clone(),
            prev,
            new,
        });
    }
    Ok(RevisionEvents { revision: rev, changes })
}

fn value_at(repo: &LocalRepo, data_tree: gix::ObjectId, key: &Bytes) -> Result<Bytes, Error> {
    let range = super::KeyRange::Single(key.clone());
    let found = history::files_in(repo, data_tree, &range)?;
    match found.into_iter().next() {
        Some((_, blob)) => Ok(Bytes::from(repo.read(blob, Kind::Blob)?)),
        None => Err(CorruptError::MissingFileInTree {
            key: String::from_utf8_lossy(key).into_owned(),
            tree: data_tree,
        }
        .into()),
    }
}

/// A key's metadata blob, decoded.
fn decode_key_blob(repo: &LocalRepo, blob: gix::ObjectId) -> Result<(Vec<u8>, meta::KeyMeta), Error> {
    Ok(meta::decode_key(&repo.read(blob, Kind::Blob)?)
        .map_err(|source| CorruptError::MalformedBlob { blob, source })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(revision: i64) -> Arc<RevisionEvents> {
        Arc::new(RevisionEvents {
            revision,
            changes: Vec::new(),
        })
    }

    fn revisions(v: &[Arc<RevisionEvents>]) -> Vec<i64> {
        v.iter().map(|e| e.revision).collect()
    }

    /// The window holds the newest `capacity` revisions, contiguous; a gap
    /// (a reload) starts it over.
    #[test]
    fn window_keeps_the_newest_contiguous_revisions() {
        let mut w = Window::new(3);
        assert_eq!(w.first(), None);
        assert!(w.range(1, 10).is_empty());
        for r in 1..=5 {
            w.push(rev(r));
        }
        assert_eq!(w.first(), Some(3));
        assert_eq!(revisions(&w.range(1, 10)), [3, 4, 5]);
        assert_eq!(revisions(&w.range(4, 4)), [4]);
        assert!(w.range(6, 9).is_empty());
        w.push(rev(9));
        assert_eq!(w.first(), Some(9), "not contiguous: starts over");
        assert_eq!(revisions(&w.range(0, 100)), [9]);
    }
}
