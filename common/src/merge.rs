//! The merge engine: a three-way merge, per key, of another branch's head
//! into a store's state, giving the [`ChangeSet`] that the store applies
//! as one revision.
//!
//! Between the receiving state (ours), the incoming head (theirs) and their
//! merge base, for each key theirs changed since the base:
//! - changed on their side only: theirs; changed on both to the same value:
//!   that value;
//! - changed on both to different values: when the base and both sides are
//!   JSON objects or YAML mappings, a structural merge field by field
//!   ([`structural`]); otherwise the policy picks the whole value;
//! - modified on one side, deleted on the other: the policy (under
//!   `newest`, the modification wins when it was written after the
//!   deletion; the deletion's time is the time of the first commit of the
//!   deleting side that no longer has the key).
//!
//! Keys the filter excludes are never taken from theirs. The incoming head
//! is up to date when it is in our history; a merge that changes nothing
//! makes no commit; when our head is the merge base and nothing is
//! excluded, the branch fast-forwards. Several merge bases (criss-cross
//! history, common when two loops merge each other) are merged into one
//! virtual base first, recursively, as git's `ort` does; conflicts inside
//! it go to the greater value, so every machine builds the same base. The
//! result is deterministic: the same three inputs give the same keys
//! whichever side merges, under `newest` (time, then value bytes) and for
//! structural merges (canonical field order), so two loops that merge each
//! other converge.

pub mod pattern;
pub mod presets;
mod structural;
#[cfg(test)]
mod tests;
mod view;
mod yaml;

use bytes::Bytes;
use gix::ObjectId;

pub use pattern::{KeyFilter, KeyPattern};

use crate::repo::{LocalRepo, RepoError};
use crate::store::{ChangeSet, KeyChange, NewValue, Snapshot};
use view::{Blob, View};

/// Who wins a key changed differently on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Conflict {
    /// The receiving side.
    Ours,
    /// The side merged in.
    Theirs,
    /// The value written later (by the write time in each key's metadata);
    /// ties go to the greater value bytes, and a value beats a deletion.
    #[default]
    Newest,
}

impl std::str::FromStr for Conflict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ours" => Ok(Conflict::Ours),
            "theirs" => Ok(Conflict::Theirs),
            "newest" => Ok(Conflict::Newest),
            _ => Err(format!("{s:?} is not a conflict policy: ours, theirs or newest")),
        }
    }
}

/// One side of a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Ours,
    Theirs,
}

/// How merges decide.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub conflict: Conflict,
    pub filter: KeyFilter,
}

/// A head to merge in.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// Its data commit.
    pub commit: ObjectId,
    /// The metadata tree that describes it, when known: its keys' write
    /// times. Without one, its values count as written at its commit time.
    pub meta_tree: Option<ObjectId>,
    /// What the merge commit's message calls it.
    pub name: String,
}

/// What merging decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The incoming head is already in the receiving history.
    UpToDate,
    /// The merge changes no key here (equal or excluded): no commit, no
    /// revision.
    Unchanged,
    /// The changes to apply as one revision.
    Changes(ChangeSet),
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// Virtual bases nest at most this deep; below, the first base is used.
const MAX_VIRTUAL_DEPTH: usize = 8;
/// How many commits a search for when a key was deleted walks at most.
const MAX_DELETION_WALK: usize = 1000;

/// Plans the merge of `incoming` into the state `ours`: a store snapshot
/// whose data commit is in the repository (`Store::snapshot_in_git`; the
/// latest snapshot's may still be in the writer's memory). Reads Git;
/// holds no lock.
pub fn plan(repo: &LocalRepo, ours: &Snapshot, incoming: &Incoming, policy: &Policy) -> Result<Outcome, MergeError> {
    let head = ours.data_commit;
    if incoming.commit == head {
        return Ok(Outcome::UpToDate);
    }
    let bases = repo.merge_bases(head, incoming.commit)?;
    if bases.contains(&incoming.commit) {
        return Ok(Outcome::UpToDate);
    }
    let fast_forward = bases == [head];
    let base = base_view(repo, &bases, 0)?;
    let theirs = View::of_commit(repo, incoming.commit)?;
    let theirs_time = Times::new(repo, incoming)?;
    let mut changes = Vec::new();
    let mut excluded = false;
    for key in base.changed(repo, &theirs)? {
        if !policy.filter.allows(&key) {
            excluded = true;
            continue;
        }
        let ours_kv = ours.kvs.get(&key);
        let ours_blob = ours_kv.map(|kv| Blob::of(kv.value.clone()));
        let (b, t) = (base.get(repo, &key)?, theirs.get(repo, &key)?);
        let result = if ours_blob == t {
            continue;
        } else if ours_blob == b {
            t.map(|t| theirs_time.of(repo, &key).map(|time| (t, time)))
                .transpose()?
        } else if t == b {
            continue;
        } else {
            let o = ours_kv.map(|kv| (Blob::of(kv.value.clone()), kv.meta.time));
            let t = t
                .map(|t| theirs_time.of(repo, &key).map(|time| (t, time)))
                .transpose()?;
            let pick = match policy.conflict {
                Conflict::Ours => Side::Ours,
                Conflict::Theirs => Side::Theirs,
                Conflict::Newest => {
                    let when = |side: &Option<(Blob, i64)>, other_head: ObjectId| match side {
                        Some((_, time)) => Ok::<_, MergeError>(*time),
                        None => deleted_at(repo, other_head, &key, &bases),
                    };
                    newest(
                        o.as_ref().map(|(b, _)| b),
                        when(&o, head)?,
                        t.as_ref().map(|(b, _)| b),
                        when(&t, incoming.commit)?,
                    )
                }
            };
            resolve(repo, b.as_ref(), o, t, pick)?
        };
        let unchanged = match (&result, ours_kv) {
            (Some((v, _)), Some(kv)) => v.id == Blob::of(kv.value.clone()).id,
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            continue;
        }
        changes.push(KeyChange {
            key: key.clone(),
            expect_mod: ours_kv.map_or(0, |kv| kv.meta.mod_revision),
            new: match result {
                Some((v, time)) => Some(NewValue {
                    value: v.read(repo)?,
                    time,
                }),
                None => None,
            },
        });
    }
    if changes.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    let short = &incoming.commit.to_string()[..12];
    let mut set = ChangeSet {
        changes,
        computed_on: Some(head),
        message: format!("merge {} {short}", incoming.name),
        ..Default::default()
    };
    if fast_forward && !excluded {
        set.fast_forward = Some(incoming.commit);
    } else {
        set.parents = vec![incoming.commit];
    }
    Ok(Outcome::Changes(set))
}

/// The value two differing sides merge to (each with its write time):
/// structural when all three are mappings, else the picked side's.
fn resolve(
    repo: &LocalRepo,
    base: Option<&Blob>,
    ours: Option<(Blob, i64)>,
    theirs: Option<(Blob, i64)>,
    pick: Side,
) -> Result<Option<(Blob, i64)>, MergeError> {
    if let (Some(b), Some((o, ot)), Some((t, tt))) = (base, &ours, &theirs) {
        let (bb, ob, tb) = (b.read(repo)?, o.read(repo)?, t.read(repo)?);
        if let Some(merged) = structural::merge(&bb, &ob, &tb, pick) {
            let merged = Blob::of(Bytes::from(merged));
            let time = if merged == *o {
                *ot
            } else if merged == *t {
                *tt
            } else {
                (*ot).max(*tt)
            };
            return Ok(Some((merged, time)));
        }
    }
    Ok(match pick {
        Side::Ours => ours,
        Side::Theirs => theirs,
    })
}

/// Under `newest`: the side written later; on equal times the greater
/// value, and a value over a deletion.
fn newest(ours: Option<&Blob>, ours_time: i64, theirs: Option<&Blob>, theirs_time: i64) -> Side {
    match ours_time.cmp(&theirs_time) {
        std::cmp::Ordering::Greater => Side::Ours,
        std::cmp::Ordering::Less => Side::Theirs,
        std::cmp::Ordering::Equal => match (ours, theirs) {
            (Some(o), Some(t)) if o.id >= t.id => Side::Ours,
            (Some(_), Some(_)) => Side::Theirs,
            (Some(_), None) => Side::Ours,
            _ => Side::Theirs,
        },
    }
}

/// The write times of the incoming side's keys.
struct Times {
    meta_tree: Option<ObjectId>,
    /// Values without a known time count as written then.
    fallback: i64,
}

impl Times {
    fn new(repo: &LocalRepo, incoming: &Incoming) -> Result<Self, RepoError> {
        Ok(Self {
            meta_tree: incoming.meta_tree,
            fallback: repo.commit(incoming.commit)?.time.saturating_mul(1_000_000_000),
        })
    }

    fn of(&self, repo: &LocalRepo, key: &[u8]) -> Result<i64, MergeError> {
        let Some(tree) = self.meta_tree else {
            return Ok(self.fallback);
        };
        Ok(crate::store::history::key_meta(repo, tree, key)?.map_or(self.fallback, |m| m.time))
    }
}

/// When `key` was deleted on the side whose head is `head`: the commit
/// time of the first commit (walking its first-parent chain back towards
/// `bases`) that no longer has it.
fn deleted_at(repo: &LocalRepo, head: ObjectId, key: &Bytes, bases: &[ObjectId]) -> Result<i64, MergeError> {
    let mut first_without = repo.commit(head)?;
    let mut current = first_without.parents.first().copied();
    for _ in 0..MAX_DELETION_WALK {
        let Some(id) = current else { break };
        let c = repo.commit(id)?;
        let has =
            !crate::store::history::files_in(repo, c.tree, &crate::store::KeyRange::Single(key.clone()))?.is_empty();
        if has || bases.contains(&id) {
            break;
        }
        current = c.parents.first().copied();
        first_without = c;
    }
    Ok(first_without.time.saturating_mul(1_000_000_000))
}

/// The merge base of `bases`: none is the empty tree, one is itself,
/// several are merged into a virtual one.
fn base_view(repo: &LocalRepo, bases: &[ObjectId], depth: usize) -> Result<View, MergeError> {
    let Some((first, rest)) = bases.split_first() else {
        return Ok(View::default());
    };
    let mut acc = View::of_commit(repo, *first)?;
    if depth >= MAX_VIRTUAL_DEPTH {
        return Ok(acc);
    }
    let mut merged = vec![*first];
    for next in rest {
        let inner = repo.merge_bases_of(*next, &merged)?;
        let base = base_view(repo, &inner, depth + 1)?;
        let theirs = View::of_commit(repo, *next)?;
        for key in base.changed(repo, &theirs)? {
            let (b, o, t) = (base.get(repo, &key)?, acc.get(repo, &key)?, theirs.get(repo, &key)?);
            let result = if o == t || t == b {
                continue;
            } else if o == b {
                t
            } else {
                // The greater value wins, so every machine builds the same
                // virtual base; a value beats a deletion.
                let pick = match (&o, &t) {
                    (Some(o), Some(t)) if o.id >= t.id => Side::Ours,
                    (Some(_), None) => Side::Ours,
                    _ => Side::Theirs,
                };
                resolve(repo, b.as_ref(), o.map(|o| (o, 0)), t.map(|t| (t, 0)), pick)?.map(|(v, _)| v)
            };
            acc.overrides.insert(key, result);
        }
        merged.push(*next);
    }
    Ok(acc)
}
