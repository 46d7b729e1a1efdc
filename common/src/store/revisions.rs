//! Where each revision lives in Git: the revision index (revision ->
//! commits), and the parsed logs of grouped commits read lately.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use gix::ObjectId;

use super::{Error, RevisionEvents, history};
use crate::meta::LogRevision;
use crate::repo::LocalRepo;

/// Where one revision lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevisionCommits {
    /// The newest metadata commit at this revision, and its data commit.
    /// Inside a group (before its last revision) these are the group's
    /// commits, whose trees hold a later state: see `exact`.
    pub metadata: ObjectId,
    pub data: ObjectId,
    /// Whether the trees of `metadata` and `data` are this revision's state.
    pub exact: bool,
    /// When the revision was written in a commit grouping several: that
    /// metadata commit (its `log` has each revision's changes) and the
    /// group's first revision.
    pub group: Option<(ObjectId, i64)>,
}

impl RevisionCommits {
    /// A commit pair whose trees are exactly one revision's state.
    pub fn exact(metadata: ObjectId, data: ObjectId) -> Self {
        Self {
            metadata,
            data,
            exact: true,
            group: None,
        }
    }
}

/// revision -> commits, for every revision of the store: runs of
/// consecutive revisions (a store restored from its upstream jumps, see
/// docs/format.md, and starts a new run). Appended by the writer before it
/// publishes; readers only ask for published revisions.
#[derive(Debug, Default)]
pub struct RevisionIndex {
    /// (first revision, commits of it and the revisions after), ascending.
    runs: Vec<(i64, Vec<RevisionCommits>)>,
}

impl RevisionIndex {
    pub fn get(&self, revision: i64) -> Option<RevisionCommits> {
        let i = self
            .runs
            .partition_point(|(first, _)| *first <= revision)
            .checked_sub(1)?;
        let (first, commits) = &self.runs[i];
        commits.get(usize::try_from(revision - first).ok()?).copied()
    }

    /// The newest revision recorded.
    pub fn last(&self) -> Option<i64> {
        self.runs.last().map(|(first, c)| first + c.len() as i64 - 1)
    }

    /// Records where `revision` lives. A revision already known keeps its
    /// commits: a later commit at the same revision changed metadata only
    /// (leases, compaction), not keys, and may not have landed yet.
    /// Revisions only grow; a gap starts a new run.
    pub fn set(&mut self, revision: i64, commits: RevisionCommits) {
        match self.last() {
            Some(last) if revision <= last => {}
            Some(last) if revision == last + 1 => {
                self.runs.last_mut().expect("a last revision has a run").1.push(commits);
            }
            _ => self.runs.push((revision, vec![commits])),
        }
    }

    /// Forgets the revisions after `revision` (written, then not landed).
    pub fn truncate(&mut self, revision: i64) {
        while let Some((first, commits)) = self.runs.last_mut() {
            if *first > revision {
                self.runs.pop();
                continue;
            }
            commits.truncate(usize::try_from(revision + 1 - *first).unwrap_or(0));
            break;
        }
    }
}

/// Where each revision lives, and the logs of the grouped commits read
/// lately (a page of a list pinned at one revision reads the same log again).
#[derive(Debug, Default)]
pub struct Revisions {
    pub index: RwLock<RevisionIndex>,
    logs: Mutex<VecDeque<(ObjectId, Arc<Vec<LogRevision>>)>>,
    /// Revisions acknowledged and not yet in a commit (the writer defers
    /// the commit while writes queue): consecutive, after the index's last.
    /// They leave once their commit is readable, after the index has them.
    deferred: RwLock<Arc<Vec<Arc<RevisionEvents>>>>,
}

/// How many grouped commits' logs [`Revisions`] keeps parsed.
const LOG_CACHE: usize = 8;

impl Revisions {
    pub fn get(&self, revision: i64) -> Option<RevisionCommits> {
        self.index
            .read()
            .expect("revision index lock is never poisoned")
            .get(revision)
    }

    /// The revisions acknowledged and not yet committed, oldest first.
    pub fn deferred(&self) -> Arc<Vec<Arc<RevisionEvents>>> {
        self.deferred
            .read()
            .expect("deferred revisions lock is never poisoned")
            .clone()
    }

    /// The deferred revision `revision`, if it is one.
    pub fn deferred_at(&self, revision: i64) -> Option<Arc<RevisionEvents>> {
        let deferred = self.deferred();
        let first = deferred.first()?.revision;
        deferred.get(usize::try_from(revision - first).ok()?).cloned()
    }

    pub(super) fn set_deferred(&self, revisions: Vec<Arc<RevisionEvents>>) {
        *self
            .deferred
            .write()
            .expect("deferred revisions lock is never poisoned") = Arc::new(revisions);
    }

    /// The revisions recorded in grouped metadata commit `commit`.
    pub fn log(&self, repo: &LocalRepo, commit: ObjectId) -> Result<Arc<Vec<LogRevision>>, Error> {
        let cached =
            |logs: &VecDeque<(ObjectId, Arc<_>)>| logs.iter().find(|(id, _)| *id == commit).map(|(_, l)| Arc::clone(l));
        if let Some(l) = cached(&self.logs.lock().expect("log cache lock is never poisoned")) {
            return Ok(l);
        }
        let log = Arc::new(history::group_log(repo, commit)?);
        let mut logs = self.logs.lock().expect("log cache lock is never poisoned");
        if logs.len() >= LOG_CACHE {
            logs.pop_front();
        }
        logs.push_back((commit, log.clone()));
        Ok(log)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u8) -> RevisionCommits {
        let id = ObjectId::from_bytes_or_panic(&[n; 20]);
        RevisionCommits::exact(id, id)
    }

    #[test]
    fn index_runs_and_gaps() {
        let mut index = RevisionIndex::default();
        assert_eq!(index.get(1), None);
        index.set(1, at(1));
        index.set(2, at(2));
        index.set(2, at(9));
        assert_eq!(index.get(2), Some(at(2)), "a known revision keeps its first commits");
        // A jump (a store restored from upstream) starts a new run.
        index.set(1_000_003, at(3));
        index.set(1_000_004, at(4));
        assert_eq!(index.get(3), None);
        assert_eq!(index.get(1_000_002), None);
        assert_eq!(index.get(1_000_003), Some(at(3)));
        assert_eq!(index.last(), Some(1_000_004));
        index.truncate(1_000_003);
        assert_eq!(index.get(1_000_004), None);
        index.truncate(1);
        assert_eq!(index.last(), Some(1));
        assert_eq!(index.get(2), None);
        index.truncate(0);
        assert_eq!(index.last(), None);
    }

    #[test]
    fn commit_messages_name_revisions() {
        assert_eq!(parse_revisions(b"12"), Some((12, 12, false)));
        assert_eq!(parse_revisions(b"12\n\nlease grant 5 ttl 60"), Some((12, 12, false)));
        assert_eq!(parse_revisions(b"41-57\n"), Some((41, 57, true)));
        assert_eq!(parse_revisions(b"48-48"), Some((48, 48, true)));
        assert_eq!(parse_revisions(b"57-41"), None);
        assert_eq!(parse_revisions(b"init"), None);
    }
}
