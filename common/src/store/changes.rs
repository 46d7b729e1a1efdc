//! The contract for writers that are not etcd clients (a merge, an import):
//! "apply these changes as one revision, provided the keys are still as I
//! saw them". The store checks each key's mod revision at the moment it
//! applies the set, so a change set computed off the writer's thread (no
//! lock held while reading Git or the network) is exact: if a local write
//! touched one of its keys meanwhile, the set is refused with
//! [`super::Error::Changed`] and its maker computes it again; local writes
//! to other keys neither wait for it nor conflict with it.

use bytes::Bytes;
use gix::ObjectId;

/// Changes to several keys, made as one revision committed on its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub changes: Vec<KeyChange>,
    /// Extra parents of the data commit, after the branch's head (the head
    /// a merge brings in).
    pub parents: Vec<ObjectId>,
    /// A data commit whose tree is exactly the tree of `computed_on` with
    /// these changes (a fast-forward): if the branch is still at
    /// `computed_on` when the set applies, the branch moves to it and no
    /// data commit is made; otherwise it becomes an extra parent of a new
    /// merge commit.
    pub fast_forward: Option<ObjectId>,
    /// The data commit the set was computed on (the branch head then).
    pub computed_on: Option<ObjectId>,
    /// Said in the commit message after the revision (e.g. what was merged).
    pub message: String,
}

/// One key's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    pub key: Bytes,
    /// The key's mod revision when the change was computed; 0 when it was
    /// absent.
    pub expect_mod: i64,
    /// The new value; `None` deletes the key.
    pub new: Option<NewValue>,
}

/// A key's new value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewValue {
    pub value: Bytes,
    /// When it was written (nanoseconds since the Unix epoch): merges carry
    /// a value's time with it.
    pub time: i64,
}
