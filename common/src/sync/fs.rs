//! Filesystem helpers for git-sync's layout: `rm -rf` that never follows a
//! symlink, directories made 0775 (less the umask), touch, and lexical path
//! arithmetic (cleaning, relative paths) for the relative link and gitdir
//! targets.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

use super::log::Log;

/// Directories are made 0775 (less the umask), so that a consumer with
/// another UID in the same group can use them.
pub fn mkdir_all(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o775).create(path)
}

/// A directory entry offered to [`remove_dir_contents_if`].
pub struct Entry {
    /// Its file name.
    pub name: String,
    /// Its modification time (following symlinks).
    pub modified: Option<SystemTime>,
}

/// Removes every entry of `dir` for which `keep_not` says true; the first
/// error is returned after trying them all.
pub fn remove_dir_contents_if(dir: &Path, log: &Log, mut remove: impl FnMut(&Entry) -> bool) -> std::io::Result<()> {
    let mut first_err = None;
    for ent in std::fs::read_dir(dir)? {
        let ent = ent?;
        let path = ent.path();
        let modified = match std::fs::metadata(&path) {
            Ok(m) => m.modified().ok(),
            Err(e) => {
                log.error(
                    Some(&e),
                    "failed to stat path, skipping",
                    &[("path", Value::from(path.display().to_string()))],
                );
                continue;
            }
        };
        let entry = Entry {
            name: ent.file_name().to_string_lossy().into_owned(),
            modified,
        };
        if !remove(&entry) {
            log.info(4, "skipping path", &[("path", Value::from(path.display().to_string()))]);
            continue;
        }
        log.info(
            4,
            "removing path recursively",
            &[("path", Value::from(path.display().to_string()))],
        );
        if let Err(e) = remove_all(&path) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// `rm -rf`: a symlink is removed, not followed; missing is fine.
pub fn remove_all(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    }
}

pub(super) fn dir_is_empty(dir: &Path) -> std::io::Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

pub(super) fn touch_dir(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    let now = SystemTime::now();
    f.set_times(std::fs::FileTimes::new().set_accessed(now).set_modified(now))
}

/// Creates `path` (and its parents) or updates its times.
pub fn touch(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        mkdir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let now = SystemTime::now();
    f.set_times(std::fs::FileTimes::new().set_accessed(now).set_modified(now))
}

/// The directory holding the link.
pub fn link_dir(link: &Path) -> &Path {
    link.parent().unwrap_or(Path::new("/"))
}

/// `path` cleaned lexically: `.` dropped, `..` applied, no trailing slash.
pub fn clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().collect()
}

pub(super) fn join_clean(base: &Path, rel: &Path) -> PathBuf {
    clean(&base.join(rel))
}

/// The relative path from directory `from` to `to` (both absolute, clean).
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = clean(from).components().map(|c| c.as_os_str().to_owned()).collect();
    let to: Vec<_> = clean(to).components().map(|c| c.as_os_str().to_owned()).collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn relative_paths() {
        let cases = [
            ("/root", "/root/.worktrees/abc", ".worktrees/abc"),
            ("/root/.worktrees/abc", "/root", "../.."),
            ("/other/dir", "/root/.worktrees/abc", "../../root/.worktrees/abc"),
            ("/root", "/root", "."),
            ("/", "/root/x", "root/x"),
        ];
        for (from, to, want) in cases {
            assert_eq!(
                relative_path(Path::new(from), Path::new(to)),
                PathBuf::from(want),
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean(Path::new("/a/./b/../c/")), PathBuf::from("/a/c"));
        assert_eq!(clean(Path::new("/../../a/b/../../a")), PathBuf::from("/a"));
        assert_eq!(clean(Path::new("a/../..")), PathBuf::from(".."));
    }

    #[test]
    fn touch_creates_parents_and_updates_mtime() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("a/b/touch");
        touch(&f)?;
        let first = std::fs::metadata(&f)?.modified()?;
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(&f)?.set_times(std::fs::FileTimes::new().set_modified(old))?;
        touch(&f)?;
        assert!(std::fs::metadata(&f)?.modified()? >= first);
        Ok(())
    }
}
