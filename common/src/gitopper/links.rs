//! Where a service reads its files: each `dirs` entry's `local` shows
//! `<checkout>/<link>`, by a bind mount where the kernel permits one (root,
//! or CAP_SYS_ADMIN), and otherwise by a symlink.
//!
//! `--services-links` decides: `auto` (the default) tries a bind mount and
//! falls back to a symlink when mounting is not permitted (EPERM), `bind`
//! only mounts (a refusal is an error), `symlink` never mounts.
//!
//! A bind mount needs its mount point: a missing `local` is created (a
//! directory, or an empty file for `file = true`) and given to the
//! service's user, as Gitopper does. A `local` that already shows the
//! checkout's path (the same inode) is left alone; a mount that shows
//! something else is replaced, which is how a file bind mount follows git
//! replacing the file (git writes a new inode; Gitopper #76).
//!
//! A symlink replaces only what is safe to replace: nothing, another
//! symlink (atomically, through a temporary link renamed over it), an
//! empty directory or an empty file (a mount point left behind). A `local`
//! with content is never deleted: the link is refused.
//!
//! Bind mounts are left in place when git-sync exits (Gitopper's
//! behaviour), so a restart finds them already right.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::config::Link;
use super::git::RunAs;

/// `--services-links`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bind mounts, symlinks where mounting is not permitted.
    Auto,
    /// Bind mounts only.
    Bind,
    /// Symlinks only.
    Symlink,
}

/// How one `local` shows its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// A bind mount.
    Bind,
    /// A symlink.
    Symlink,
}

impl How {
    /// `bind` or `symlink`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Symlink => "symlink",
        }
    }
}

/// The links of one service, as made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Made {
    /// How many were made or remade now (zero: everything was in place).
    pub changed: usize,
    /// Each linked `local` and how it shows its path.
    pub links: Vec<(PathBuf, How)>,
}

/// A link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The linked path is not in the checkout.
    #[error("{link:?} is not in the checkout at {checkout}")]
    Missing {
        /// The link.
        link: String,
        /// The checkout.
        checkout: PathBuf,
    },
    /// `file` says file and the repository has a directory, or the reverse.
    #[error("{link:?} is a {actual} in the repository, and the services file says {said}")]
    Kind {
        /// The link.
        link: String,
        /// What it is.
        actual: &'static str,
        /// What `file` says.
        said: &'static str,
    },
    /// Something with content is where the symlink would go.
    #[error(
        "{local} exists and is not empty: git-sync does not replace it with a symlink (move it away, or let a bind mount cover it)"
    )]
    Occupied {
        /// The path.
        local: PathBuf,
    },
    /// A file system or mount call failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LinkError + 'a {
    move |source| LinkError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Makes every link of a service whose checkout is `checkout`. Returns how
/// many were (re)made, which is what asks for a service start.
pub fn ensure(links: &[Link], checkout: &Path, mode: Mode, owner: Option<&RunAs>) -> Result<Made, LinkError> {
    let mut made = Made::default();
    for l in links {
        let Some(local) = &l.local else { continue };
        let source = checkout.join(&l.link);
        let meta = std::fs::metadata(&source).map_err(|_| LinkError::Missing {
            link: l.link.clone(),
            checkout: checkout.to_owned(),
        })?;
        if meta.is_dir() == l.file {
            let (actual, said) = if meta.is_dir() {
                ("directory", "file = true")
            } else {
                ("file", "a directory (no file = true)")
            };
            return Err(LinkError::Kind {
                link: l.link.clone(),
                actual,
                said,
            });
        }
        let (changed, how) = match mode {
            Mode::Symlink => (symlink(&source, local, owner)?, How::Symlink),
            Mode::Bind => (bind(&source, local, l.file, owner)?, How::Bind),
            Mode::Auto => match bind(&source, local, l.file, owner) {
                Ok(c) => (c, How::Bind),
                Err(LinkError::Io { source: e, .. }) if e.raw_os_error() == Some(nix::libc::EPERM) => {
                    (symlink(&source, local, owner)?, How::Symlink)
                }
                Err(e) => return Err(e),
            },
        };
        made.changed += usize::from(changed);
        made.links.push((local.clone(), how));
    }
    Ok(made)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// A bind mount of `source` on `local`; true if one was made now.
fn bind(source: &Path, local: &Path, file: bool, owner: Option<&RunAs>) -> Result<bool, LinkError> {
    use nix::mount::{MntFlags, MsFlags};
    if std::fs::symlink_metadata(local).is_err() {
        if file {
            if let Some(parent) = local.parent() {
                crate::sync::fs::mkdir_all(parent).map_err(io("creating", parent))?;
            }
            std::fs::File::create(local).map_err(io("creating", local))?;
        } else {
            crate::sync::fs::mkdir_all(local).map_err(io("creating", local))?;
        }
        if let Some(u) = owner {
            std::os::unix::fs::chown(local, Some(u.uid), Some(u.gid))
                .map_err(io("giving to the service's user", local))?;
        }
    }
    if same_file(local, source) {
        return Ok(false);
    }
    if is_mount_point(local) {
        nix::mount::umount2(local, MntFlags::MNT_DETACH).map_err(|e| LinkError::Io {
            what: "unmounting",
            path: local.to_owned(),
            source: e.into(),
        })?;
    }
    nix::mount::mount(Some(source), local, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| {
        LinkError::Io {
            what: "bind-mounting onto",
            path: local.to_owned(),
            source: e.into(),
        }
    })?;
    Ok(true)
}

/// A symlink at `local` to `source`; true if one was made now.
fn symlink(source: &Path, local: &Path, owner: Option<&RunAs>) -> Result<bool, LinkError> {
    match std::fs::symlink_metadata(local) {
        Err(_) => {
            if let Some(parent) = local.parent() {
                crate::sync::fs::mkdir_all(parent).map_err(io("creating", parent))?;
            }
        }
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(local).is_ok_and(|t| t == source) {
                return Ok(false);
            }
        }
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir(local).map_err(|_| LinkError::Occupied {
                local: local.to_owned(),
            })?;
        }
        Ok(m) if m.is_file() && m.len() == 0 => {
            std::fs::remove_file(local).map_err(io("removing the empty file", local))?;
        }
        Ok(_) => {
            return Err(LinkError::Occupied {
                local: local.to_owned(),
            });
        }
    }
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = local.with_file_name(format!(".{name}.git-sync-tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(source, &tmp).map_err(io("creating the symlink", &tmp))?;
    if let Some(u) = owner {
        std::os::unix::fs::lchown(&tmp, Some(u.uid), Some(u.gid)).map_err(io("giving to the service's user", &tmp))?;
    }
    std::fs::rename(&tmp, local).map_err(io("renaming the symlink onto", local))?;
    Ok(true)
}

/// Whether `path` is a mount point, by `/proc/self/mountinfo`.
fn is_mount_point(path: &Path) -> bool {
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&unescape(m)) == path)
}

/// mountinfo's octal escapes (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(local: &Path, link: &str, file: bool) -> Link {
        Link {
            local: Some(local.to_owned()),
            link: link.into(),
            file,
        }
    }

    #[test]
    fn symlinks_replace_only_what_is_safe() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let co = dir.path().join("co");
        std::fs::create_dir_all(co.join("etc"))?;
        std::fs::write(co.join("etc/conf"), "c")?;
        std::fs::write(co.join("Caddyfile"), "f")?;
        let etc = dir.path().join("target/etc");
        let caddy = dir.path().join("target/Caddyfile");
        let links = [link(&etc, "etc", false), link(&caddy, "Caddyfile", true)];
        let made = ensure(&links, &co, Mode::Symlink, None)?;
        assert_eq!(made.changed, 2);
        assert_eq!(made.links, [(etc.clone(), How::Symlink), (caddy.clone(), How::Symlink)]);
        assert_eq!(std::fs::read_to_string(etc.join("conf"))?, "c");
        assert_eq!(std::fs::read_link(&caddy)?, co.join("Caddyfile"));
        assert_eq!(ensure(&links, &co, Mode::Symlink, None)?.changed, 0, "in place");
        // Another symlink, an empty directory, an empty file: replaced.
        std::fs::remove_file(&etc)?;
        std::os::unix::fs::symlink("/elsewhere", &etc)?;
        std::fs::remove_file(&caddy)?;
        std::fs::write(&caddy, "")?;
        assert_eq!(ensure(&links, &co, Mode::Symlink, None)?.changed, 2);
        std::fs::remove_file(&etc)?;
        std::fs::create_dir(&etc)?;
        assert_eq!(ensure(&links, &co, Mode::Symlink, None)?.changed, 1);
        // Content is never deleted.
        std::fs::remove_file(&etc)?;
        std::fs::create_dir(&etc)?;
        std::fs::write(etc.join("mine"), "keep")?;
        let e = ensure(&links, &co, Mode::Symlink, None).expect_err("occupied");
        assert!(matches!(e, LinkError::Occupied { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(etc.join("mine"))?, "keep");
        Ok(())
    }

    #[test]
    fn links_must_exist_and_match_their_kind() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let co = dir.path().join("co");
        std::fs::create_dir_all(co.join("etc"))?;
        let t = dir.path().join("t");
        let e = ensure(&[link(&t, "nope", false)], &co, Mode::Symlink, None).expect_err("missing");
        assert!(matches!(e, LinkError::Missing { .. }), "{e}");
        let e = ensure(&[link(&t, "etc", true)], &co, Mode::Symlink, None).expect_err("kind");
        assert!(e.to_string().contains("is a directory"), "{e}");
        let only_checked_out = Link {
            local: None,
            link: "etc".into(),
            file: false,
        };
        assert_eq!(ensure(&[only_checked_out], &co, Mode::Bind, None)?, Made::default());
        Ok(())
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/no/such/dir")));
    }
}
