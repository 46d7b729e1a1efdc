//! Everything Git: opening repositories, reading objects, writing durable
//! objects, moving refs with compare-and-swap, and keeping packs few.
//!
//! gix reads objects (loose and packed) and runs ref transactions. Objects are
//! written by our own small writer because gix never fsyncs: a group's objects
//! become one pack (and index), renamed into place before any ref points at
//! them; a store's groups are made durable by one sync of its [`journal`],
//! other writers fsync the pack and, after their transaction, the refs. Tree and commit
//! objects are encoded here too: the format is small and this keeps the hot
//! path free of gix's validation costs.
//!
//! Topics: [`objects`] (reading, [`ObjectWriter`], fsync), [`refs`] (reading,
//! compare-and-swap, watching for others' updates), [`commit`] (parsing,
//! encoding, walks and merge bases), [`journal`] (durability with one sync
//! per group, and recovery), [`tree`] (parsing, encoding, the
//! editable tree cache, walks and diffs), `pack` and `delta` (the pack
//! format), [`maintenance`] (who folds and consolidates a repository's packs),
//! [`lock`] (the advisory locks that make one process the owner of a job).

pub mod bundle;
pub mod commit;
mod delta;
pub mod fresh;
pub mod journal;
pub mod lock;
pub mod maintenance;
pub mod objects;
mod pack;
pub mod refs;
pub mod tree;
pub mod usage;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use gix::ObjectId;

pub use commit::{Commit, Signature, encode_commit, parse_commit};
pub use maintenance::Maintenance;
pub use objects::{ObjectWriter, dir_size};
pub use tree::TreeNode;

/// Errors from the Git layer. Each names what was being done and where, and
/// keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(
        "{path}: not a Git repository; point --repo at a repository, or at a missing or empty directory to create one"
    )]
    NotARepository {
        path: PathBuf,
        #[source]
        source: gix::Error,
    },
    #[error("{path}: cannot create a bare repository")]
    Init {
        path: PathBuf,
        #[source]
        source: gix::Error,
    },
    #[error("{path}: SHA-256 repositories are not supported yet")]
    Sha256 { path: PathBuf },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading object {id}")]
    Read {
        id: ObjectId,
        #[source]
        source: gix::Error,
    },
    #[error("object {id} is a {actual}, expected a {expected}")]
    Kind {
        id: ObjectId,
        actual: &'static str,
        expected: &'static str,
    },
    #[error("object {id} is malformed: {reason}")]
    Malformed { id: ObjectId, reason: &'static str },
    #[error("object {id}, held in memory until the refs move, cannot be read: {reason}")]
    Fresh { id: ObjectId, reason: String },
    #[error("reference {name:?} is not a valid ref name")]
    RefName {
        name: String,
        #[source]
        source: gix::validate::reference::name::Error,
    },
    #[error("reading reference {name}")]
    RefRead {
        name: String,
        #[source]
        source: gix::Error,
    },
    #[error("reference {name} is symbolic; gitcd needs a direct one")]
    Symbolic { name: String },
    /// A compare-and-swap found another value, or another writer held the
    /// lock: read again and retry.
    #[error("references {names} moved concurrently")]
    RefConflict {
        names: String,
        #[source]
        source: gix::Error,
    },
    #[error("updating references {names}")]
    RefUpdate {
        names: String,
        #[source]
        source: gix::Error,
    },
    #[error("{path} is locked by another process ({holder})")]
    Locked { path: PathBuf, holder: String },
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
    pub fn name(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Tree => "tree",
            Kind::Commit => "commit",
        }
    }
}

/// The data ref to serve when none is given: the branch `HEAD` names in the
/// repository at `path` (`refs/heads/master` in one made by an older `git
/// init`), and `refs/heads/main` where there is no repository yet or `HEAD`
/// names no branch.
pub fn default_data_ref(path: &Path) -> String {
    const DEFAULT: &str = "refs/heads/main";
    let Ok(repo) = Repo::open(path) else {
        return DEFAULT.into();
    };
    match repo.local().symbolic_target("HEAD") {
        Ok(Some(target)) if target.starts_with("refs/heads/") => target,
        _ => DEFAULT.into(),
    }
}

/// A repository opened for gitcd.
pub struct Repo {
    git: gix::ThreadSafeRepository,
    git_dir: PathBuf,
    /// Objects of this process's writer not in the pack directory yet.
    fresh: std::sync::Arc<fresh::Fresh>,
}

impl Repo {
    /// Opens the repository at `path`, creating a bare one when `path` does
    /// not exist or is an empty directory.
    pub fn open_or_init(path: &Path) -> Result<Self, RepoError> {
        let empty_dir = path.is_dir() && fs::read_dir(path).map_err(io_err(path))?.next().is_none();
        if !path.exists() || empty_dir {
            fs::create_dir_all(path).map_err(io_err(path))?;
            gix::init_bare(path).map_err(|source| RepoError::Init {
                path: path.to_owned(),
                source,
            })?;
        }
        Self::open(path)
    }

    /// Opens an existing repository (bare or not).
    pub fn open(path: &Path) -> Result<Self, RepoError> {
        // Index slots are fixed at open: leave room for the packs written
        // while serving, between folds and consolidations.
        let opts =
            gix::open::Options::isolated().object_store_slots(gix::odb::store::init::Slots::AsNeededByDiskState {
                multiplier: 2.0,
                minimum: 1024,
            });
        let git = gix::ThreadSafeRepository::open_opts(path, opts).map_err(|source| RepoError::NotARepository {
            path: path.to_owned(),
            source,
        })?;
        if git.to_thread_local().object_hash() != gix::hash::Kind::Sha1 {
            return Err(RepoError::Sha256 { path: path.to_owned() });
        }
        let git_dir = git.git_dir().to_owned();
        Ok(Self {
            git,
            git_dir,
            fresh: Default::default(),
        })
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
            fresh: self.fresh.clone(),
        }
    }
}

/// A thread-local view of a [`Repo`]: reads objects and refs, moves refs.
pub struct LocalRepo {
    git: gix::Repository,
    git_dir: PathBuf,
    fresh: std::sync::Arc<fresh::Fresh>,
}

impl LocalRepo {
    /// The `.git` directory (the repository itself when bare).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }
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
