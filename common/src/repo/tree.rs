//! Git trees: parsing, encoding, and an editable in-memory cache of the trees
//! along the paths gitcd writes, so that a write re-encodes only the trees it
//! changes and never re-reads the rest.

use std::collections::BTreeMap;

use gix::ObjectId;

use super::{LocalRepo, ObjectWriter, RepoError};
use crate::keys::SELF_NAME;

/// Git's modes, as written in trees.
pub const MODE_TREE: u32 = 0o40000;
pub const MODE_BLOB: u32 = 0o100644;
pub const MODE_EXEC: u32 = 0o100755;
pub const MODE_LINK: u32 = 0o120000;
pub const MODE_COMMIT: u32 = 0o160000;

/// One entry of a tree object as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub mode: u32,
    pub name: Vec<u8>,
    pub id: ObjectId,
}

impl RawEntry {
    pub fn is_tree(&self) -> bool {
        self.mode == MODE_TREE
    }
    /// Files gitcd serves as keys: regular, executable and symlink blobs.
    pub fn is_file(&self) -> bool {
        matches!(self.mode, MODE_BLOB | MODE_EXEC | MODE_LINK)
    }
}

/// Parses the body of a tree object.
pub fn parse(id: ObjectId, mut data: &[u8]) -> Result<Vec<RawEntry>, RepoError> {
    let malformed = || RepoError::Malformed {
        id,
        reason: "truncated tree entry",
    };
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data.iter().position(|b| *b == b' ').ok_or_else(malformed)?;
        let mode = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .ok_or_else(malformed)?;
        let rest = &data[sp + 1..];
        let nul = rest.iter().position(|b| *b == 0).ok_or_else(malformed)?;
        let name = rest[..nul].to_vec();
        let oid = rest.get(nul + 1..nul + 21).ok_or_else(malformed)?;
        out.push(RawEntry {
            mode: normalize_mode(mode),
            name,
            id: ObjectId::from_bytes_or_panic(oid),
        });
        data = &rest[nul + 21..];
    }
    Ok(out)
}

fn normalize_mode(mode: u32) -> u32 {
    match mode & 0o170000 {
        0o040000 => MODE_TREE,
        0o120000 => MODE_LINK,
        0o160000 => MODE_COMMIT,
        _ if mode & 0o100 != 0 => MODE_EXEC,
        _ => MODE_BLOB,
    }
}

/// Git orders tree entries by name, comparing a tree's name as if it ended
/// in `/`. The map key of a child is that sort key.
fn sort_key(name: &[u8], is_tree: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.extend_from_slice(name);
    if is_tree {
        k.push(b'/');
    }
    k
}

#[derive(Clone, Debug)]
enum Child {
    /// A blob, symlink or gitlink: anything that is not a tree.
    Leaf { mode: u32, id: ObjectId },
    /// A subtree, loaded on first use.
    Tree { id: ObjectId, node: Option<Box<TreeNode>> },
}

/// An editable tree. Subtrees are loaded from the repository when first
/// walked into and then kept; `id` is the object id while the node is clean.
#[derive(Clone, Debug, Default)]
pub struct TreeNode {
    children: BTreeMap<Vec<u8>, Child>,
    id: Option<ObjectId>,
    /// The id this tree had when last loaded or written: its next version is
    /// stored as a delta against it when packs are folded.
    previous: Option<ObjectId>,
}

impl TreeNode {
    /// The empty tree.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads the tree `id` (one level; subtrees stay unloaded).
    pub fn load(repo: &LocalRepo, id: ObjectId) -> Result<Self, RepoError> {
        let mut children = BTreeMap::new();
        for e in repo.tree_entries(id)? {
            let child = if e.is_tree() {
                Child::Tree { id: e.id, node: None }
            } else {
                Child::Leaf { mode: e.mode, id: e.id }
            };
            children.insert(sort_key(&e.name, e.is_tree()), child);
        }
        Ok(Self {
            children,
            id: Some(id),
            previous: Some(id),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    fn subtree_mut(&mut self, repo: &LocalRepo, name: &[u8]) -> Result<Option<&mut TreeNode>, RepoError> {
        match self.children.get_mut(&sort_key(name, true)) {
            Some(Child::Tree { id, node }) => {
                if node.is_none() {
                    *node = Some(Box::new(TreeNode::load(repo, *id)?));
                }
                Ok(node.as_deref_mut())
            }
            _ => Ok(None),
        }
    }

    fn leaf(&self, name: &[u8]) -> Option<(u32, ObjectId)> {
        match self.children.get(&sort_key(name, false)) {
            Some(Child::Leaf { mode, id }) => Some((*mode, *id)),
            _ => None,
        }
    }

    fn set_leaf(&mut self, name: &[u8], mode: u32, id: ObjectId) {
        self.id = None;
        self.children.insert(sort_key(name, false), Child::Leaf { mode, id });
    }

    fn remove_leaf(&mut self, name: &[u8]) -> bool {
        let removed = self.children.remove(&sort_key(name, false)).is_some();
        if removed {
            self.id = None;
        }
        removed
    }

    /// Stores blob `id` as the value at `path` (a key's natural path, see
    /// [`crate::keys`]), keeping the `%self` rule: a value whose path is a
    /// directory lives in it as `%self`, and a value in the way of a new
    /// directory moves into it.
    pub fn put(&mut self, repo: &LocalRepo, path: &[String], id: ObjectId) -> Result<(), RepoError> {
        let (last, dirs) = path.split_last().expect("a key path has at least one segment");
        let mut node = self;
        for name in dirs {
            let name = name.as_bytes();
            node.id = None;
            if node.subtree_mut(repo, name)?.is_none() {
                let mut dir = TreeNode::empty();
                if let Some((mode, blob)) = node.leaf(name) {
                    node.remove_leaf(name);
                    dir.set_leaf(SELF_NAME.as_bytes(), mode, blob);
                }
                node.children.insert(
                    sort_key(name, true),
                    Child::Tree {
                        id: ObjectId::null(gix::hash::Kind::Sha1),
                        node: Some(Box::new(dir)),
                    },
                );
            }
            node = node
                .subtree_mut(repo, name)?
                .expect("the directory exists: it was found or just inserted");
        }
        let last = last.as_bytes();
        node.id = None;
        let mode = node
            .leaf(last)
            .map(|(m, _)| m)
            .filter(|m| *m != MODE_COMMIT)
            .unwrap_or(MODE_BLOB);
        match node.subtree_mut(repo, last)? {
            Some(dir) => dir.set_leaf(SELF_NAME.as_bytes(), MODE_BLOB, id),
            None => node.set_leaf(last, mode, id),
        }
        Ok(())
    }

    /// Removes the value at `path`; directories left empty disappear and a
    /// directory left holding only `%self` turns back into that file.
    pub fn remove(&mut self, repo: &LocalRepo, path: &[String]) -> Result<bool, RepoError> {
        let (first, rest) = path.split_first().expect("a key path has at least one segment");
        let name = first.as_bytes();
        if rest.is_empty() {
            if self.remove_leaf(name) {
                return Ok(true);
            }
            let removed = match self.subtree_mut(repo, name)? {
                Some(dir) => dir.remove_leaf(SELF_NAME.as_bytes()),
                None => false,
            };
            if removed {
                self.id = None;
                self.tidy(name);
            }
            return Ok(removed);
        }
        let removed = match self.subtree_mut(repo, name)? {
            Some(dir) => dir.remove(repo, rest)?,
            None => false,
        };
        if removed {
            self.id = None;
            self.tidy(name);
        }
        Ok(removed)
    }

    /// After a removal below directory `name`: drop it when empty, and fold
    /// it back into a file when only `%self` is left.
    fn tidy(&mut self, name: &[u8]) {
        let key = sort_key(name, true);
        let Some(Child::Tree { node: Some(dir), .. }) = self.children.get(&key) else {
            return;
        };
        if dir.children.is_empty() {
            self.children.remove(&key);
        } else if dir.children.len() == 1
            && let Some((mode, id)) = dir.leaf(SELF_NAME.as_bytes())
        {
            self.children.remove(&key);
            self.set_leaf(name, mode, id);
        }
    }

    /// The subtree `name`, made empty when missing (a file in its way goes).
    fn dir_mut(&mut self, repo: &LocalRepo, name: &[u8]) -> Result<&mut TreeNode, RepoError> {
        self.id = None;
        if self.subtree_mut(repo, name)?.is_none() {
            self.remove_leaf(name);
            self.children.insert(
                sort_key(name, true),
                Child::Tree {
                    id: ObjectId::null(gix::hash::Kind::Sha1),
                    node: Some(Box::new(TreeNode::empty())),
                },
            );
        }
        Ok(self
            .subtree_mut(repo, name)?
            .expect("the directory exists: it was found or just inserted"))
    }

    /// Stores `id` in the hash trie below directory `dir` (the metadata's
    /// `keys/`, docs/format.md "Metadata tree"): the first `top` digits of
    /// `hex` name a directory; below it, each directory level is named by
    /// one more digit, and the blob by the digits left. A directory holding
    /// more than `max_leaf` blobs splits into directories by their next
    /// digit, and from then on holds only directories. Nothing merges back:
    /// readers search the levels (see [`crate::store::history::key_meta`]).
    pub fn put_hashed(
        &mut self,
        repo: &LocalRepo,
        (dir, top, max_leaf): (&str, usize, usize),
        hex: &[u8],
        id: ObjectId,
    ) -> Result<(), RepoError> {
        let mut node = self.dir_mut(repo, dir.as_bytes())?.dir_mut(repo, &hex[..top])?;
        let mut depth = top;
        // A directory that has split holds only directories.
        while depth + 1 < hex.len() && node.children.keys().any(|k| k.ends_with(b"/")) {
            node = node.dir_mut(repo, &hex[depth..=depth])?;
            depth += 1;
        }
        node.set_leaf(&hex[depth..], MODE_BLOB, id);
        node.split(repo, max_leaf)
    }

    /// Removes the blob `put_hashed` stored for `hex`; directories left
    /// empty disappear.
    pub fn remove_hashed(
        &mut self,
        repo: &LocalRepo,
        (dir, top): (&str, usize),
        hex: &[u8],
    ) -> Result<bool, RepoError> {
        let mut path: Vec<&[u8]> = vec![dir.as_bytes(), &hex[..top]];
        let mut depth = top;
        loop {
            path.push(&hex[depth..]);
            if self.remove_path(repo, &path)? {
                return Ok(true);
            }
            path.pop();
            if depth + 1 >= hex.len() {
                return Ok(false);
            }
            path.push(&hex[depth..=depth]);
            depth += 1;
        }
    }

    /// Removes the file at `path` (no `%self` rule); directories left
    /// empty disappear. False when there is no such file.
    fn remove_path(&mut self, repo: &LocalRepo, path: &[&[u8]]) -> Result<bool, RepoError> {
        let (name, rest) = path.split_first().expect("a path has at least one segment");
        if rest.is_empty() {
            return Ok(self.remove_leaf(name));
        }
        let removed = match self.subtree_mut(repo, name)? {
            Some(dir) => dir.remove_path(repo, rest)?,
            None => return Ok(false),
        };
        if removed {
            self.id = None;
            self.tidy(name);
        }
        Ok(removed)
    }

    /// Splits this trie directory by the next digit of its blobs' names
    /// when it holds more than `max_leaf` of them (and again below, for a
    /// skewed one). Blobs named by one digit stay: there is no next one.
    fn split(&mut self, repo: &LocalRepo, max_leaf: usize) -> Result<(), RepoError> {
        let splittable = |name: &[u8], child: &Child| name.len() > 1 && matches!(child, Child::Leaf { .. });
        if self.children.iter().filter(|(k, c)| splittable(k, c)).count() <= max_leaf {
            return Ok(());
        }
        let (blobs, rest): (BTreeMap<_, _>, _) = std::mem::take(&mut self.children)
            .into_iter()
            .partition(|(k, c)| splittable(k, c));
        self.children = rest;
        let mut made = std::collections::BTreeSet::new();
        for (name, child) in blobs {
            let Child::Leaf { mode, id } = child else {
                unreachable!("only blobs were taken")
            };
            self.dir_mut(repo, &name[..1])?.set_leaf(&name[1..], mode, id);
            made.insert(name[..1].to_vec());
        }
        for digit in made {
            self.dir_mut(repo, &digit)?.split(repo, max_leaf)?;
        }
        Ok(())
    }

    /// Sets a file directly in this tree (for metadata root entries).
    pub fn set_file(&mut self, name: &str, id: ObjectId) {
        self.set_leaf(name.as_bytes(), MODE_BLOB, id);
    }

    /// Removes a file directly in this tree.
    pub fn remove_file(&mut self, name: &str) {
        self.remove_leaf(name.as_bytes());
    }

    /// Writes every changed tree and returns the root's id.
    pub fn write(&mut self, out: &mut ObjectWriter) -> Result<ObjectId, RepoError> {
        if let Some(id) = self.id {
            return Ok(id);
        }
        let size: usize = self.children.keys().map(|k| k.len() + 28).sum();
        let mut buf = Vec::with_capacity(size);
        for (key, child) in self.children.iter_mut() {
            let (mode, id, name) = match child {
                Child::Leaf { mode, id } => (*mode, *id, &key[..]),
                Child::Tree { id, node } => {
                    if let Some(node) = node {
                        *id = node.write(out)?;
                    }
                    (MODE_TREE, *id, &key[..key.len() - 1])
                }
            };
            buf.extend_from_slice(mode_bytes(mode));
            buf.extend_from_slice(name);
            buf.push(0);
            buf.extend_from_slice(id.as_bytes());
        }
        let id = out.write_tree(buf, self.previous)?;
        self.id = Some(id);
        self.previous = Some(id);
        Ok(id)
    }
}

/// A path as tree entry names from some root.
pub type Path = Vec<Vec<u8>>;

/// A mode as written in a tree entry, with its trailing space.
fn mode_bytes(mode: u32) -> &'static [u8] {
    match mode {
        MODE_TREE => b"40000 ",
        MODE_EXEC => b"100755 ",
        MODE_LINK => b"120000 ",
        MODE_COMMIT => b"160000 ",
        _ => b"100644 ",
    }
}

/// Every file below tree `root`, with its path, in Git order. Gitlinks are
/// skipped: they are not files.
pub fn walk_files(repo: &LocalRepo, root: ObjectId) -> Result<Vec<(Path, ObjectId)>, RepoError> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    walk_into(repo, root, &mut path, &mut out)?;
    Ok(out)
}

fn walk_into(
    repo: &LocalRepo,
    tree: ObjectId,
    path: &mut Vec<Vec<u8>>,
    out: &mut Vec<(Path, ObjectId)>,
) -> Result<(), RepoError> {
    for e in repo.tree_entries(tree)? {
        path.push(e.name.clone());
        if e.is_tree() {
            walk_into(repo, e.id, path, out)?;
        } else if e.is_file() {
            out.push((path.clone(), e.id));
        }
        path.pop();
    }
    Ok(())
}

/// The files that differ between trees `old` and `new` (either may be
/// absent): `(path, new blob or None when removed)`. Unchanged subtrees are
/// skipped without being read.
pub fn diff_files(
    repo: &LocalRepo,
    old: Option<ObjectId>,
    new: Option<ObjectId>,
) -> Result<Vec<(Path, Option<ObjectId>)>, RepoError> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    diff_into(repo, old, new, &mut path, &mut out)?;
    Ok(out)
}

fn diff_into(
    repo: &LocalRepo,
    old: Option<ObjectId>,
    new: Option<ObjectId>,
    path: &mut Vec<Vec<u8>>,
    out: &mut Vec<(Path, Option<ObjectId>)>,
) -> Result<(), RepoError> {
    if old == new {
        return Ok(());
    }
    let load = |id: Option<ObjectId>| -> Result<BTreeMap<Vec<u8>, RawEntry>, RepoError> {
        Ok(match id {
            Some(id) => repo
                .tree_entries(id)?
                .into_iter()
                .map(|e| (sort_key(&e.name, e.is_tree()), e))
                .collect(),
            None => BTreeMap::new(),
        })
    };
    let (a, b) = (load(old)?, load(new)?);
    let names: std::collections::BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    for key in names {
        let (ea, eb) = (a.get(key), b.get(key));
        let entry = ea.or(eb).expect("the name comes from one of the trees");
        path.push(entry.name.clone());
        if entry.is_tree() {
            diff_into(repo, ea.map(|e| e.id), eb.map(|e| e.id), path, out)?;
        } else {
            let fa = ea.filter(|e| e.is_file()).map(|e| e.id);
            let fb = eb.filter(|e| e.is_file()).map(|e| e.id);
            if fa != fb {
                out.push((path.clone(), fb));
            }
        }
        path.pop();
    }
    Ok(())
}
