//! Reads of past revisions from Git: the data tree of the revision's data
//! commit gives keys and values, the metadata tree gives their bookkeeping.
//! Exact at every revision: a revision is a commit, or lies inside a commit
//! grouping several whose `log` records each one's changes.

use bytes::Bytes;

use super::revisions::{RevisionCommits, Revisions};
use super::{CorruptError, Error, KeyRange, Kv};
use crate::keys;
use crate::meta;
use crate::repo::{Kind, LocalRepo, tree};

/// Every live key of `range` at revision `rev`, found through `revisions`.
pub fn read_at(repo: &LocalRepo, revisions: &Revisions, rev: i64, range: &KeyRange) -> Result<Vec<(Bytes, Kv)>, Error> {
    // Acknowledged, not yet committed: the state before them, then theirs.
    let deferred = revisions.deferred();
    if let Some(first) = deferred.first().map(|r| r.revision)
        && rev >= first
    {
        let mut kvs: std::collections::BTreeMap<Bytes, Kv> =
            read_at(repo, revisions, first - 1, range)?.into_iter().collect();
        for r in deferred.iter().take_while(|r| r.revision <= rev) {
            for c in r.changes.iter().filter(|c| range.contains(&c.key)) {
                match &c.new {
                    Some(kv) => kvs.insert(c.key.clone(), kv.clone()),
                    None => kvs.remove(&c.key),
                };
            }
        }
        return Ok(kvs.into_iter().collect());
    }
    let (commits, base) = {
        let index = revisions.index.read().expect("revision index lock is never poisoned");
        let commits = index.get(rev).ok_or(Error::Compacted)?;
        let base = match commits.group {
            Some((group, first)) if !commits.exact => Some(index.get(first - 1).ok_or(CorruptError::NoBase {
                revision: first - 1,
                commit: group,
            })?),
            _ => None,
        };
        (commits, base)
    };
    let (Some(base), Some((group, _))) = (base, commits.group) else {
        return read_range(repo, commits, range);
    };
    // Inside a group: the state before the group, then the group's log up
    // to `rev`.
    let mut kvs: std::collections::BTreeMap<Bytes, Kv> = read_range(repo, base, range)?.into_iter().collect();
    for r in revisions.log(repo, group)?.iter().take_while(|r| r.revision <= rev) {
        for c in r.changes.iter().filter(|c| range.contains(&c.key)) {
            match &c.new {
                Some((meta, value)) => kvs.insert(
                    c.key.clone(),
                    Kv {
                        meta: *meta,
                        value: value.clone(),
                    },
                ),
                None => kvs.remove(&c.key),
            };
        }
    }
    Ok(kvs.into_iter().collect())
}

/// The data commit metadata commit `commit` describes (its second parent,
/// or its `data` entry for a first one).
pub fn data_of(repo: &LocalRepo, commit: gix::ObjectId) -> Result<gix::ObjectId, Error> {
    let c = repo.commit(commit)?;
    if let [_, data] = c.parents.as_slice() {
        return Ok(*data);
    }
    let entry = repo
        .lookup(c.tree, &[meta::DATA_ENTRY.as_bytes()])?
        .ok_or(CorruptError::MissingEntry {
            commit,
            entry: meta::DATA_ENTRY,
        })?;
    let hex = repo.read(entry.id, Kind::Blob)?;
    Ok(
        gix::ObjectId::from_hex(hex.trim_ascii()).map_err(|_| CorruptError::Malformed {
            commit,
            entry: meta::DATA_ENTRY.into(),
            source: meta::ParseError::new("not an object id"),
        })?,
    )
}

/// The revisions recorded in the `log` of grouped metadata commit `commit`.
pub fn group_log(repo: &LocalRepo, commit: gix::ObjectId) -> Result<Vec<meta::LogRevision>, Error> {
    let tree = repo.commit(commit)?.tree;
    let entry = repo
        .lookup(tree, &[meta::LOG_ENTRY.as_bytes()])?
        .ok_or(CorruptError::MissingEntry {
            commit,
            entry: meta::LOG_ENTRY,
        })?;
    let blob = Bytes::from(repo.read(entry.id, Kind::Blob)?);
    let mut read_blob = |id| {
        repo.read(id, Kind::Blob)
            .map(Bytes::from)
            .map_err(|e| meta::ParseError::new(format!("reading the value blob: {}", crate::error::chain(&e))))
    };
    Ok(
        meta::decode_log(&blob, &mut read_blob).map_err(|source| CorruptError::Malformed {
            commit,
            entry: meta::LOG_ENTRY.into(),
            source,
        })?,
    )
}

/// Every live key of `range` at the revision of `commits`, in key order.
pub fn read_range(repo: &LocalRepo, commits: RevisionCommits, range: &KeyRange) -> Result<Vec<(Bytes, Kv)>, Error> {
    let data_tree = repo.commit(commits.data)?.tree;
    let meta_tree = repo.commit(commits.metadata)?.tree;
    let files = files_in(repo, data_tree, range)?;
    let mut result = Vec::with_capacity(files.len());
    for (key, blob) in files {
        let meta = key_meta(repo, meta_tree, &key)?.ok_or_else(|| CorruptError::MissingKeyMeta {
            key: String::from_utf8_lossy(&key).into_owned(),
            tree: meta_tree,
        })?;
        let value = Bytes::from(repo.read(blob, Kind::Blob)?);
        result.push((key, Kv { meta, value }));
    }
    Ok(result)
}

/// The files of data tree `data_tree` whose keys are in `range`, in key
/// order, with their blobs.
pub fn files_in(
    repo: &LocalRepo,
    data_tree: gix::ObjectId,
    range: &KeyRange,
) -> Result<Vec<(Bytes, gix::ObjectId)>, Error> {
    Ok(match range {
        KeyRange::Single(key) => single_file(repo, data_tree, key)?.into_iter().collect(),
        KeyRange::Interval { start, end } => {
            let dir = common_directory(start, end.as_deref());
            let root = if dir.is_empty() {
                Some(data_tree)
            } else {
                let names: Vec<&[u8]> = dir.iter().map(|s| s.as_bytes()).collect();
                repo.lookup(data_tree, &names)?.filter(|e| e.is_tree()).map(|e| e.id)
            };
            let mut out = Vec::new();
            if let Some(root) = root {
                for (rel, blob) in tree::walk_files(repo, root)? {
                    let mut path: Vec<Vec<u8>> = dir.iter().map(|s| s.as_bytes().to_vec()).collect();
                    path.extend(rel);
                    let key = keys::decode(&path);
                    if range.contains(&key) {
                        out.push((Bytes::from(key), blob));
                    }
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out.dedup_by(|a, b| a.0 == b.0);
            out
        }
    })
}

/// The metadata of `key` in metadata tree `meta_tree`, if it is live there.
pub fn key_meta(repo: &LocalRepo, meta_tree: gix::ObjectId, key: &[u8]) -> Result<Option<meta::KeyMeta>, Error> {
    let hex = meta::key_hex(key);
    let top = meta::KEYS_TOP_DIGITS;
    let Some(mut dir) = repo.lookup(meta_tree, &[meta::KEYS_DIR.as_bytes(), &hex[..top]])? else {
        return Ok(None);
    };
    // Down the trie: the blob named by the digits left, or the directory
    // named by the next one.
    let mut depth = top;
    let entry = loop {
        if !dir.is_tree() {
            return Ok(None);
        }
        let entries = repo.tree_entries(dir.id)?;
        if let Some(blob) = entries.iter().find(|e| e.name == hex[depth..] && e.is_file()) {
            break blob.clone();
        }
        match entries
            .into_iter()
            .find(|e| depth + 1 < hex.len() && e.name == hex[depth..=depth])
        {
            Some(next) => (dir, depth) = (next, depth + 1),
            None => return Ok(None),
        }
    };
    let (_, m) = meta::decode_key(&repo.read(entry.id, Kind::Blob)?)
        .map_err(|source| CorruptError::MalformedBlob { blob: entry.id, source })?;
    Ok(Some(m))
}

fn single_file(
    repo: &LocalRepo,
    data_tree: gix::ObjectId,
    key: &Bytes,
) -> Result<Option<(Bytes, gix::ObjectId)>, Error> {
    let path = keys::encode(key);
    let names: Vec<&[u8]> = path.iter().map(|s| s.as_bytes()).collect();
    Ok(match repo.lookup(data_tree, &names)? {
        Some(e) if e.is_file() => Some((key.clone(), e.id)),
        Some(e) if e.is_tree() => repo
            .lookup(e.id, &[keys::SELF_NAME.as_bytes()])?
            .filter(|e| e.is_file())
            .map(|e| (key.clone(), e.id)),
        _ => None,
    })
}

/// The directory (natural path) holding every key of `[start, end)`: the
/// part of their common prefix up to its last `/`. Empty means the root.
fn common_directory(start: &[u8], end: Option<&[u8]>) -> Vec<String> {
    let Some(end) = end else { return Vec::new() };
    let mut common = start.iter().zip(end).take_while(|(a, b)| a == b).count();
    // A prefix query (`end` is the prefix with its last byte incremented):
    // every key in range also shares that last byte with `start`.
    if end.len() == common + 1 && start.get(common).is_some_and(|b| b.checked_add(1) == Some(end[common])) {
        common += 1;
    }
    let prefix = &start[..common];
    if !prefix.starts_with(b"/") {
        return Vec::new();
    }
    match prefix.iter().rposition(|b| *b == b'/') {
        Some(0) | None => Vec::new(),
        Some(last) => keys::encode(&prefix[..last]),
    }
}

#[cfg(test)]
mod tests {
    use super::common_directory;

    #[test]
    fn common_directories() {
        type Case<'a> = (&'a [u8], Option<&'a [u8]>, &'a [&'a str]);
        let cases: &[Case] = &[
            (b"/registry/pods/", Some(b"/registry/pods0"), &["registry", "pods"]),
            (
                b"/registry/pods/ns/a",
                Some(b"/registry/pods/ns/b"),
                &["registry", "pods", "ns"],
            ),
            (b"/a", Some(b"/b"), &[]),
            (b"/a", None, &[]),
            (b"a/b/", Some(b"a/b0"), &[]),
        ];
        for (start, end, dir) in cases {
            assert_eq!(common_directory(start, *end), *dir);
        }
    }
}
