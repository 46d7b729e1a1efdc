//! The sides of a merge as the engine reads them: a data tree, possibly
//! with some keys overridden (a virtual merge base, built from several
//! bases, is a base tree plus what merging the others into it changed).
//! Values are compared by blob id, so most comparisons read no blob.

use std::collections::BTreeMap;

use bytes::Bytes;
use gix::ObjectId;

use crate::keys;
use crate::repo::{Kind, LocalRepo, RepoError, objects::blob_id, tree};
use crate::store::KeyRange;
use crate::store::history::files_in;

/// A value: its blob id, and its bytes once read.
#[derive(Clone, Debug)]
pub struct Blob {
    pub id: ObjectId,
    pub bytes: Option<Bytes>,
}

impl Blob {
    pub fn of(bytes: Bytes) -> Self {
        Self {
            id: blob_id(&bytes),
            bytes: Some(bytes),
        }
    }

    pub fn read(&self, repo: &LocalRepo) -> Result<Bytes, RepoError> {
        match &self.bytes {
            Some(b) => Ok(b.clone()),
            None => Ok(Bytes::from(repo.read(self.id, Kind::Blob)?)),
        }
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// One side: a data tree (none: empty) and overridden keys (`None`:
/// absent).
#[derive(Clone, Debug, Default)]
pub struct View {
    pub tree: Option<ObjectId>,
    pub overrides: BTreeMap<Bytes, Option<Blob>>,
}

impl View {
    pub fn of_commit(repo: &LocalRepo, commit: ObjectId) -> Result<Self, RepoError> {
        Ok(Self {
            tree: Some(repo.commit(commit)?.tree),
            overrides: BTreeMap::new(),
        })
    }

    /// The value of `key` here.
    pub fn get(&self, repo: &LocalRepo, key: &Bytes) -> Result<Option<Blob>, crate::store::Error> {
        if let Some(v) = self.overrides.get(key) {
            return Ok(v.clone());
        }
        let Some(tree) = self.tree else { return Ok(None) };
        Ok(files_in(repo, tree, &KeyRange::Single(key.clone()))?
            .into_iter()
            .next()
            .map(|(_, id)| Blob { id, bytes: None }))
    }

    /// The keys whose values differ between `self` and `other`, in key
    /// order: the files of the tree diff (reading only subtrees that
    /// differ) and the overridden keys, each checked.
    pub fn changed(&self, repo: &LocalRepo, other: &View) -> Result<Vec<Bytes>, crate::store::Error> {
        let mut candidates: std::collections::BTreeSet<Bytes> = std::collections::BTreeSet::new();
        for (path, _) in tree::diff_files(repo, self.tree, other.tree)? {
            candidates.insert(Bytes::from(keys::decode(&path)));
        }
        candidates.extend(self.overrides.keys().cloned());
        candidates.extend(other.overrides.keys().cloned());
        let mut out = Vec::new();
        for key in candidates {
            if self.get(repo, &key)? != other.get(repo, &key)? {
                out.push(key);
            }
        }
        Ok(out)
    }
}
