//! Advisory locks (`flock`) that make one process the owner of a job in a
//! repository shared with others: serving a branch pair, maintaining packs.
//! The kernel releases a lock when its holder exits, however it exits, so a
//! killed owner never leaves a stale one. The file names its holder for
//! people (`pid 123 gitcd serve refs/heads/main`).

use std::fs;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use super::{RepoError, io_err};

/// A held lock; released on drop.
#[derive(Debug)]
pub struct OwnerLock {
    path: PathBuf,
    _file: fs::File,
}

impl OwnerLock {
    /// Takes the lock at `path` without waiting, recording `holder`; `None`
    /// with who holds it when another process does.
    pub fn try_take(path: &Path, holder: &str) -> Result<Result<Self, String>, RepoError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut who = String::new();
                let _ = file.read_to_string(&mut who);
                let who = who.trim();
                return Ok(Err(if who.is_empty() { "unknown".into() } else { who.into() }));
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(path)(e)),
        }
        let record = format!("pid {} {holder}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(record.as_bytes()))
            .map_err(io_err(path))?;
        Ok(Ok(Self {
            path: path.to_owned(),
            _file: file,
        }))
    }

    /// Takes the lock at `path` or fails with [`RepoError::Locked`].
    pub fn take(path: &Path, holder: &str) -> Result<Self, RepoError> {
        Self::try_take(path, holder)?.map_err(|holder| RepoError::Locked {
            path: path.to_owned(),
            holder,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where the lock of the store on branch pair `metadata_ref` lives.
pub fn writer_lock_path(git_dir: &Path, metadata_ref: &str) -> PathBuf {
    let digest = <sha1::Sha1 as sha1::Digest>::digest(metadata_ref.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    git_dir.join("gitcd").join(format!("writer-{hex}.lock"))
}

/// Where the marker lives that says the branch pair `metadata_ref` was just
/// restored from its upstream (written by git-pre, removed by the store once
/// it has jumped its revisions, see docs/format.md).
pub fn restored_marker_path(git_dir: &Path, metadata_ref: &str) -> PathBuf {
    let lock = writer_lock_path(git_dir, metadata_ref);
    lock.with_file_name(
        lock.file_name()
            .map(|n| n.to_string_lossy().replace("writer-", "restored-").replace(".lock", ""))
            .unwrap_or_default(),
    )
}

/// Where the lock of the repository's pack maintenance lives.
pub fn maintenance_lock_path(git_dir: &Path) -> PathBuf {
    git_dir.join("gitcd").join("maintenance.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One holder at a time (flock conflicts between two open file
    /// descriptions, even in one process), the second told who holds it, and
    /// the lock free again once dropped.
    #[test]
    fn one_owner_at_a_time() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gitcd/x.lock");
        let first = OwnerLock::take(&path, "first")?;
        let refused = OwnerLock::try_take(&path, "second")?.err();
        assert_eq!(refused, Some(format!("pid {} first", std::process::id())));
        assert!(matches!(
            OwnerLock::take(&path, "second"),
            Err(RepoError::Locked { .. })
        ));
        drop(first);
        let second = OwnerLock::take(&path, "second")?;
        assert_eq!(
            fs::read_to_string(second.path())?.trim(),
            format!("pid {} second", std::process::id())
        );
        Ok(())
    }
}
