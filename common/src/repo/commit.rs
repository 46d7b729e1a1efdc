//! Commits: parsing, encoding, and walking history (first-parent chains,
//! ancestry, merge bases).

use gix::ObjectId;

use super::{Kind, LocalRepo, RepoError};

/// A parsed commit: what gitcd needs of one.
#[derive(Clone, Debug)]
pub struct Commit {
    pub tree: ObjectId,
    pub parents: Vec<ObjectId>,
    /// Committer time, seconds since the epoch.
    pub time: i64,
    /// The message, without headers.
    pub message: Vec<u8>,
}

/// Who commits.
#[derive(Clone, Debug)]
pub struct Signature {
    pub name: String,
    pub email: String,
}

impl LocalRepo {
    /// Reads and parses commit `id`.
    pub fn commit(&self, id: ObjectId) -> Result<Commit, RepoError> {
        let data = self.read(id, Kind::Commit)?;
        parse_commit(id, &data)
    }

    /// Walks first parents from `from` until `stop` says yes: returns the
    /// commits walked (oldest first, without the stopping one) and the commit
    /// it stopped at, or `None` when it reached a root.
    pub fn first_parent_chain(
        &self,
        from: ObjectId,
        mut stop: impl FnMut(ObjectId) -> bool,
    ) -> Result<(Vec<ObjectId>, Option<ObjectId>), RepoError> {
        let mut chain = Vec::new();
        let mut current = Some(from);
        while let Some(id) = current {
            if stop(id) {
                chain.reverse();
                return Ok((chain, Some(id)));
            }
            chain.push(id);
            current = self.commit(id)?.parents.first().copied();
        }
        chain.reverse();
        Ok((chain, None))
    }

    /// Every best common ancestor of `one` and `two` (`git merge-base
    /// --all`), in a stable order; empty when they share no history.
    pub fn merge_bases(&self, one: ObjectId, two: ObjectId) -> Result<Vec<ObjectId>, RepoError> {
        self.merge_bases_of(one, &[two])
    }

    /// Every best common ancestor of `one` and all of `others` together (a
    /// merge of `others` and `one`), in a stable order. gix walks the
    /// commits in the object database: not those the writer holds in memory
    /// ([`super::fresh`]), which it writes out first.
    pub fn merge_bases_of(&self, one: ObjectId, others: &[ObjectId]) -> Result<Vec<ObjectId>, RepoError> {
        let mut bases: Vec<ObjectId> = self
            .git
            .merge_bases_many(one, others)
            .map_err(|source| RepoError::Read { id: one, source })?
            .into_iter()
            .map(|id| id.detach())
            .collect();
        bases.sort();
        Ok(bases)
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: ObjectId, descendant: ObjectId) -> Result<bool, RepoError> {
        if ancestor == descendant {
            return Ok(true);
        }
        Ok(self.merge_bases(ancestor, descendant)?.contains(&ancestor))
    }
}

/// Encodes a commit of `tree` with `parents`, by `who`, now.
pub fn encode_commit(tree: ObjectId, parents: &[ObjectId], who: &Signature, message: &str) -> Vec<u8> {
    use std::fmt::Write as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut out = String::with_capacity(256 + message.len());
    let _ = writeln!(out, "tree {tree}");
    for p in parents {
        let _ = writeln!(out, "parent {p}");
    }
    let sig = format!("{} <{}> {now} +0000", who.name, who.email);
    let _ = write!(out, "author {sig}\ncommitter {sig}\n\n{message}");
    if !message.ends_with('\n') {
        out.push('\n');
    }
    out.into_bytes()
}

/// Parses a commit object.
pub fn parse_commit(id: ObjectId, data: &[u8]) -> Result<Commit, RepoError> {
    let malformed = |reason| RepoError::Malformed { id, reason };
    let (headers, message) = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| (&data[..p], &data[p + 2..]))
        .unwrap_or((data, &[][..]));
    let mut tree = None;
    let mut parents = Vec::new();
    let mut time = 0;
    for line in headers.split(|b| *b == b'\n') {
        if let Some(hex) = line.strip_prefix(b"tree ") {
            tree = Some(ObjectId::from_hex(hex).map_err(|_| malformed("bad tree id"))?);
        } else if let Some(hex) = line.strip_prefix(b"parent ") {
            parents.push(ObjectId::from_hex(hex).map_err(|_| malformed("bad parent id"))?);
        } else if let Some(sig) = line.strip_prefix(b"committer ") {
            // "... <email> <seconds> <zone>"
            let after = sig.iter().rposition(|b| *b == b'>').map_or(sig, |p| &sig[p + 1..]);
            time = std::str::from_utf8(after)
                .ok()
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        }
    }
    Ok(Commit {
        tree: tree.ok_or_else(|| malformed("no tree header"))?,
        parents,
        time,
        message: message.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_round_trip() -> Result<(), RepoError> {
        let tree = ObjectId::empty_tree(gix::hash::Kind::Sha1);
        let who = Signature {
            name: "t".into(),
            email: "t@t".into(),
        };
        let body = encode_commit(tree, &[tree, tree], &who, "12");
        let c = parse_commit(tree, &body)?;
        assert_eq!(c.tree, tree);
        assert_eq!(c.parents, vec![tree, tree]);
        assert_eq!(c.message, b"12\n");
        assert!(c.time > 1_600_000_000, "committer time parsed: {}", c.time);
        assert!(parse_commit(tree, b"parent zz\n\nx").is_err());
        Ok(())
    }
}
