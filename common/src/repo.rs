//! Everything Git: opening repositories, reading objects, writing durable
//! objects and moving refs with compare-and-swap.
//!
//! gix reads objects (loose and packed) and runs ref transactions. Objects are
//! written by our own small writer because gix never fsyncs: a group's objects
//! become one pack (and index), fsynced and renamed into place, before any ref
//! points at them. Refs are fsynced after their transaction. Tree and commit objects are encoded here too: the format
//! is small and this keeps the hot path free of gix's validation costs.

mod delta;
mod pack;
mod packs;
pub mod tree;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use gix::ObjectId;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};

use pack::PackBuilder;
pub use tree::TreeNode;

/// Errors from the Git layer. Each names what was being done and where.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading object {id}: {message}")]
    Read { id: ObjectId, message: String },
    #[error("object {id} is a {actual}, expected a {expected}")]
    Kind {
        id: ObjectId,
        actual: String,
        expected: &'static str,
    },
    #[error("object {id} is malformed: {message}")]
    Malformed { id: ObjectId, message: String },
    #[error("reference {name}: {message}")]
    Ref { name: String, message: String },
    #[error("reference {name} moved concurrently: {message}")]
    RefConflict { name: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The object kinds gitcd reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Blob,
    Tree,
    Commit,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Tree => "tree",
            Kind::Commit => "commit",
        }
    }
}

/// A parsed commit: what gitcd needs of one.
#[derive(Clone, Debug)]
pub struct Commit {
    pub tree: ObjectId,
    pub parents: Vec<ObjectId>,
    /// The message, without headers.
    pub message: Vec<u8>,
}

/// Who commits, and when.
#[derive(Clone, Debug)]
pub struct Signature {
    pub name: String,
    pub email: String,
}

/// A repository opened for gitcd.
pub struct Repo {
    git: gix::ThreadSafeRepository,
    git_dir: PathBuf,
}

impl Repo {
    /// Opens the repository at `path`, creating a bare one when `path` does
    /// not exist or is an empty directory.
    pub fn open_or_init(path: &Path) -> Result<Self, RepoError> {
        let empty_dir = path.is_dir() && fs::read_dir(path).map_err(io_err(path))?.next().is_none();
        if !path.exists() || empty_dir {
            fs::create_dir_all(path).map_err(io_err(path))?;
            gix::init_bare(path).map_err(|e| RepoError::Open {
                path: path.to_owned(),
                message: format!("cannot create a bare repository: {e}"),
            })?;
        }
        Self::open(path)
    }

    /// Opens an existing repository (bare or not).
    pub fn open(path: &Path) -> Result<Self, RepoError> {
        // Index slots are fixed at open: leave room for the packs written
        // while serving, between folds and merges.
        let opts =
            gix::open::Options::isolated().object_store_slots(gix::odb::store::init::Slots::AsNeededByDiskState {
                multiplier: 2.0,
                minimum: 1024,
            });
        let git = gix::ThreadSafeRepository::open_opts(path, opts).map_err(|e| RepoError::Open {
            path: path.to_owned(),
            message: format!(
                "not a Git repository ({e}); point --repo at a repository, or at a missing or empty directory to create one"
            ),
        })?;
        if git.to_thread_local().object_hash() != gix::hash::Kind::Sha1 {
            return Err(RepoError::Open {
                path: path.to_owned(),
                message: "SHA-256 repositories are not supported yet".into(),
            });
        }
        let git_dir = git.git_dir().to_owned();
        Ok(Self { git, git_dir })
    }

    /// The `.git` directory (the repository itself when bare).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// A handle for the current thread.
    pub fn local(&self) -> LocalRepo {
        let mut git = self.git.to_thread_local();
        git.object_cache_size_if_unset(16 << 20);
        LocalRepo {
            git,
            git_dir: self.git_dir.clone(),
        }
    }
}

/// A thread-local view of a [`Repo`]: reads objects and refs.
pub struct LocalRepo {
    git: gix::Repository,
    git_dir: PathBuf,
}

impl LocalRepo {
    /// Reads the raw bytes of object `id`, checking its kind.
    pub fn read(&self, id: ObjectId, expected: Kind) -> Result<Vec<u8>, RepoError> {
        let obj = self.git.find_object(id).map_err(|e| RepoError::Read {
            id,
            message: e.to_string(),
        })?;
        let actual = match obj.kind {
            gix::object::Kind::Blob => Kind::Blob,
            gix::object::Kind::Tree => Kind::Tree,
            gix::object::Kind::Commit => Kind::Commit,
            gix::object::Kind::Tag => {
                return Err(RepoError::Kind {
                    id,
                    actual: "tag".into(),
                    expected: expected.name(),
                });
            }
        };
        if actual != expected {
            return Err(RepoError::Kind {
                id,
                actual: actual.name().into(),
                expected: expected.name(),
            });
        }
        Ok(obj.detach().data)
    }

    /// Reads and parses commit `id`.
    pub fn commit(&self, id: ObjectId) -> Result<Commit, RepoError> {
        let data = self.read(id, Kind::Commit)?;
        parse_commit(id, &data)
    }

    /// Reads and parses tree `id` into its entries, in Git's order.
    pub fn tree_entries(&self, id: ObjectId) -> Result<Vec<tree::RawEntry>, RepoError> {
        let data = self.read(id, Kind::Tree)?;
        tree::parse(id, &data)
    }

    /// Looks up `path` (entry names) below tree `root`.
    pub fn lookup(&self, root: ObjectId, path: &[&[u8]]) -> Result<Option<tree::RawEntry>, RepoError> {
        let mut current = root;
        let mut found = None;
        for (i, name) in path.iter().enumerate() {
            let entries = self.tree_entries(current)?;
            match entries.into_iter().find(|e| e.name == *name) {
                Some(e) if i + 1 == path.len() => found = Some(e),
                Some(e) if e.is_tree() => current = e.id,
                _ => return Ok(None),
            }
        }
        Ok(found)
    }

    /// The object a direct reference points at, if the reference exists.
    pub fn ref_target(&self, name: &str) -> Result<Option<ObjectId>, RepoError> {
        let r = self.git.try_find_reference(name).map_err(|e| RepoError::Ref {
            name: name.into(),
            message: e.to_string(),
        })?;
        match r {
            None => Ok(None),
            Some(r) => match r.target().try_id() {
                Some(id) => Ok(Some(id.to_owned())),
                None => Err(RepoError::Ref {
                    name: name.into(),
                    message: "is a symbolic reference; gitcd needs a direct one".into(),
                }),
            },
        }
    }

    /// Removes lock files of `refs` that a killed writer left behind: a lock
    /// still present after `patience` is taken as stale. Returns the paths
    /// removed.
    pub fn clear_stale_locks(&self, refs: &[&str], patience: std::time::Duration) -> Result<Vec<PathBuf>, RepoError> {
        let locks: Vec<PathBuf> = refs
            .iter()
            .map(|r| self.git_dir.join(format!("{r}.lock")))
            .chain([self.git_dir.join("packed-refs.lock")])
            .collect();
        let deadline = std::time::Instant::now() + patience;
        while locks.iter().any(|l| l.exists()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut removed = Vec::new();
        for l in locks {
            if l.exists() {
                fs::remove_file(&l).map_err(io_err(&l))?;
                removed.push(l);
            }
        }
        Ok(removed)
    }

    /// Moves references atomically with compare-and-swap: each edit is
    /// `(name, expected old value or None for "must not exist", new value)`.
    /// The ref files and their directories are fsynced before returning.
    pub fn update_refs(
        &self,
        edits: &[(&str, Option<ObjectId>, ObjectId)],
        message: &str,
        committer: &Signature,
    ) -> Result<(), RepoError> {
        let mut ref_edits = Vec::with_capacity(edits.len());
        for (name, old, new) in edits {
            let full: gix::refs::FullName =
                (*name)
                    .try_into()
                    .map_err(|e: gix::validate::reference::name::Error| RepoError::Ref {
                        name: (*name).into(),
                        message: e.to_string(),
                    })?;
            ref_edits.push(RefEdit {
                change: Change::Update {
                    log: LogChange {
                        mode: RefLog::AndReference,
                        force_create_reflog: false,
                        message: message.into(),
                    },
                    expected: match old {
                        Some(old) => PreviousValue::MustExistAndMatch(gix::refs::Target::Object(*old)),
                        None => PreviousValue::MustNotExist,
                    },
                    new: gix::refs::Target::Object(*new),
                },
                name: full,
                deref: false,
            });
        }
        let time = gix::date::Time::now_local_or_utc();
        let mut time_buf = gix::date::parse::TimeBuf::default();
        let sig = gix::actor::SignatureRef {
            name: committer.name.as_str().into(),
            email: committer.email.as_str().into(),
            time: time.to_str(&mut time_buf),
        };
        self.git
            .edit_references_as(ref_edits, Some(sig))
            .map_err(|e| RepoError::RefConflict {
                name: edits.iter().map(|e| e.0).collect::<Vec<_>>().join(", "),
                message: e.to_string(),
            })?;
        // The ref files, and the directories whose entries changed: the
        // parent of an updated ref; every ancestor of a created one (its
        // directories may be new).
        let mut dirs = BTreeSet::new();
        for (name, old, _) in edits {
            let path = self.git_dir.join(name);
            dirs.insert(path.clone());
            let mut dir = path.parent();
            while let Some(d) = dir {
                dirs.insert(d.to_owned());
                if d == self.git_dir || old.is_some() {
                    break;
                }
                dir = d.parent();
            }
        }
        sync_all(&dirs.into_iter().collect::<Vec<_>>())
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
}

/// Collects objects into one pack in memory, a group at a time. An object is
/// readable only once its pack is written ([`ObjectWriter::sync`], or
/// [`Packs::write`] of [`ObjectWriter::take`]n objects), and nothing may point
/// at it before.
pub struct ObjectWriter {
    pending: PackBuilder,
    packs: packs::Packs,
}

/// Pack bytes held in memory before they are written out unasked.
const MAX_PENDING_PACK: usize = 64 << 20;

impl ObjectWriter {
    pub fn new(git_dir: &Path) -> Self {
        Self {
            pending: PackBuilder::default(),
            packs: packs::Packs::new(git_dir),
        }
    }

    /// Total bytes of pack data written.
    pub fn bytes_written(&self) -> u64 {
        self.packs.bytes_written()
    }

    /// Whether objects await [`ObjectWriter::sync`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Adds one object to the pending pack and returns its id.
    pub fn write(&mut self, kind: Kind, data: &[u8]) -> Result<ObjectId, RepoError> {
        let id = object_id(kind, data);
        self.pending.add(id, kind, data);
        self.spill()?;
        Ok(id)
    }

    /// Adds a tree, which replaces tree `previous` (if any), and returns its
    /// id.
    pub fn write_tree(&mut self, content: Vec<u8>, previous: Option<ObjectId>) -> Result<ObjectId, RepoError> {
        let id = object_id(Kind::Tree, &content);
        self.pending.add_tree(id, content, previous);
        self.spill()?;
        Ok(id)
    }

    /// A long catch-up (gitcd-init over a big history) must not hold all of
    /// it in memory: packs written early are harmless, since nothing points
    /// at their objects before the refs move.
    fn spill(&mut self) -> Result<(), RepoError> {
        if self.pending.memory() >= MAX_PENDING_PACK {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every object written so far durable and visible, as one pack.
    pub fn sync(&mut self) -> Result<(), RepoError> {
        self.packs.write(std::mem::take(&mut self.pending))
    }

    /// Drops objects not yet synced (a failed group).
    pub fn discard(&mut self) {
        self.pending = PackBuilder::default();
    }
}

/// The id of object `data` of `kind`.
fn object_id(kind: Kind, data: &[u8]) -> ObjectId {
    let header = format!("{} {}\0", kind.name(), data.len());
    let mut hasher = <sha1::Sha1 as sha1::Digest>::new();
    sha1::Digest::update(&mut hasher, header.as_bytes());
    sha1::Digest::update(&mut hasher, data);
    ObjectId::from_bytes_or_panic(&sha1::Digest::finalize(hasher))
}

pub fn encode_commit(tree: ObjectId, parents: &[ObjectId], who: &Signature, message: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut out = format!("tree {tree}\n");
    for p in parents {
        out.push_str(&format!("parent {p}\n"));
    }
    let sig = format!("{} <{}> {now} +0000", who.name, who.email);
    out.push_str(&format!("author {sig}\ncommitter {sig}\n\n{message}"));
    if !message.ends_with('\n') {
        out.push('\n');
    }
    out.into_bytes()
}

/// Parses a commit object.
pub fn parse_commit(id: ObjectId, data: &[u8]) -> Result<Commit, RepoError> {
    let malformed = |m: &str| RepoError::Malformed {
        id,
        message: m.to_owned(),
    };
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| (&data[..p], &data[p + 2..]))
        .unwrap_or((data, &[][..]));
    let (headers, message) = split;
    let mut tree = None;
    let mut parents = Vec::new();
    for line in headers.split(|b| *b == b'\n') {
        if let Some(hex) = line.strip_prefix(b"tree ") {
            tree = Some(ObjectId::from_hex(hex).map_err(|_| malformed("bad tree id"))?);
        } else if let Some(hex) = line.strip_prefix(b"parent ") {
            parents.push(ObjectId::from_hex(hex).map_err(|_| malformed("bad parent id"))?);
        }
    }
    Ok(Commit {
        tree: tree.ok_or_else(|| malformed("no tree header"))?,
        parents,
        message: message.to_vec(),
    })
}

fn sync_file(path: &Path) -> Result<(), RepoError> {
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

fn sync_dir(path: &Path) -> Result<(), RepoError> {
    sync_file(path)
}

/// Threads that fsync a ref transaction's files and directories.
const SYNC_THREADS: usize = 8;

/// fsyncs files or directories on up to [`SYNC_THREADS`] threads.
fn sync_all(paths: &[PathBuf]) -> Result<(), RepoError> {
    if paths.len() <= 1 {
        return paths.iter().try_for_each(|p| sync_file(p));
    }
    let chunk = paths.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().try_for_each(|p| sync_file(p))))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join().unwrap_or_else(|_| {
                Err(RepoError::Io {
                    path: PathBuf::from("fsync worker"),
                    source: io::Error::other("an fsync thread panicked"),
                })
            })
        })
    })
}

/// Total size of the files below `dir` (the repository's object store).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Git itself, to check what gitcd writes.
#[cfg(test)]
mod git_cli {
    use std::process::Command;

    /// Runs `git` with `args`: its output, or an error with what it said.
    pub fn run(args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let out = Command::new("git").args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// Object `id` of `kind` as git reads it from repository `git_dir`.
    pub fn cat_file(git_dir: &std::path::Path, kind: &str, id: gix::ObjectId) -> anyhow::Result<Vec<u8>> {
        let dir = git_dir.to_str().expect("test paths are UTF-8");
        run(&["--git-dir", dir, "cat-file", kind, &id.to_string()])
    }
}
