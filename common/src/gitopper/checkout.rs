//! A service's checkout at `<mount>/<service>`, Gitopper's layout: a clone
//! with full history but blobs only on demand (`--filter=blob:none`), sparse
//! to exactly the linked paths, owned by the service's user (git runs as
//! that user), tracking one branch.
//!
//! Writes go through the `git` CLI (clone, fetch, sparse-checkout, stash,
//! checkout); reads are answered in-process by gix: the commit checked out,
//! a branch tip, a rollback hash, and whether the linked paths differ
//! between two commits (their tree entries compared, so a change elsewhere
//! in the repository is not a change, and `a/b` is not `a/bc`).
//!
//! The sparse patterns are non-cone (`/prometheus/etc`, `/caddy/Caddyfile`),
//! so a file link checks out that file and not its siblings.

use std::path::PathBuf;

use tokio::time::Instant;

use super::git::{Git, RunAs};
use crate::sync::git::{CmdError, Output};

/// A checkout operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// git failed (its command line and stderr are in the error).
    #[error(transparent)]
    Git(#[from] CmdError),
    /// A file system step failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// gix could not read what git wrote.
    #[error("reading {what} in {dir}: {reason}")]
    Read {
        /// What was read.
        what: String,
        /// The checkout.
        dir: PathBuf,
        /// gix's error.
        reason: String,
    },
}

/// A rollback hash that does not name a commit of the checkout.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Not 4 to 40 hexadecimal digits.
    #[error("not a valid hexadecimal git hash: {0:?}")]
    NotHex(String),
    /// No such commit (or an ambiguous prefix).
    #[error("{rev:?} is not a commit of {dir}: {reason}")]
    Unknown {
        /// What was asked.
        rev: String,
        /// The checkout.
        dir: PathBuf,
        /// gix's error.
        reason: String,
    },
}

/// One service's checkout.
#[derive(Clone, Debug)]
pub struct Checkout {
    /// `<mount>/<service>`.
    pub dir: PathBuf,
    /// The repository URL.
    pub upstream: String,
    /// The branch.
    pub branch: String,
    /// The linked paths (clean, relative).
    pub links: Vec<String>,
    /// Who owns it; `None`: git-sync's user.
    pub owner: Option<RunAs>,
}

impl Checkout {
    /// Whether the clone was made (`<dir>/.git` is a directory).
    pub fn exists(&self) -> bool {
        self.dir.join(".git").is_dir()
    }

    async fn git(&self, git: &Git, args: &[&str], stdin: Option<&str>, deadline: Instant) -> Result<Output, CmdError> {
        git.run(self.owner.as_ref(), Some(&self.dir), args, stdin, deadline)
            .await
    }

    /// The sparse patterns: each link, anchored at the top and escaped; with
    /// no links, the top-level files (what cone mode checks out).
    pub fn patterns(&self) -> String {
        if self.links.is_empty() {
            return "/*\n!/*/\n".into();
        }
        let mut out = String::new();
        for l in &self.links {
            out.push('/');
            for c in l.chars() {
                if matches!(c, '\\' | '*' | '?' | '[' | ']' | '!' | '#') {
                    out.push('\\');
                }
                out.push(c);
            }
            if l.ends_with(' ') {
                out.insert(out.len() - 1, '\\');
            }
            out.push('\n');
        }
        out
    }

    /// Makes `<dir>` (owned by the service's user) and clones into it:
    /// `git clone --no-checkout --filter=blob:none --branch <branch>`, the
    /// sparse patterns, then the checkout of the branch. A directory that
    /// is already there and not empty makes git refuse; nothing is deleted.
    pub async fn clone_repo(&self, git: &Git, deadline: Instant) -> Result<(), CheckoutError> {
        let io = |what: String| move |source| CheckoutError::Io { what, source };
        if let Some(parent) = self.dir.parent() {
            crate::sync::fs::mkdir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        if !self.dir.exists() {
            std::fs::create_dir(&self.dir).map_err(io(format!("creating {}", self.dir.display())))?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o775))
                .map_err(io(format!("setting the mode of {}", self.dir.display())))?;
        }
        if let Some(u) = &self.owner {
            std::os::unix::fs::chown(&self.dir, Some(u.uid), Some(u.gid)).map_err(io(format!(
                "giving {} to {}",
                self.dir.display(),
                u.name
            )))?;
        }
        let dir = self.dir.to_string_lossy().into_owned();
        git.run(
            self.owner.as_ref(),
            None,
            &[
                "clone",
                "--quiet",
                "--no-checkout",
                "--filter=blob:none",
                "--branch",
                &self.branch,
                "--",
                &self.upstream,
                &dir,
            ],
            None,
            deadline,
        )
        .await?;
        self.set_patterns(git, deadline).await?;
        self.git(git, &["checkout", "--quiet", &self.branch, "--"], None, deadline)
            .await?;
        Ok(())
    }

    async fn set_patterns(&self, git: &Git, deadline: Instant) -> Result<(), CheckoutError> {
        let patterns = self.patterns();
        self.git(
            git,
            &["sparse-checkout", "set", "--no-cone", "--stdin"],
            Some(&patterns),
            deadline,
        )
        .await?;
        Ok(())
    }

    /// Brings an existing checkout in line with the services file: origin's
    /// URL and the sparse patterns (links may have been added or removed),
    /// and finishes a clone that was never checked out.
    pub async fn configure(&self, git: &Git, deadline: Instant) -> Result<(), CheckoutError> {
        let url = self.read(|r| {
            Ok(r.config_snapshot()
                .string("remote.origin.url")
                .map(|s| s.to_string())
                .unwrap_or_default())
        })?;
        if url != self.upstream {
            self.git(git, &["remote", "set-url", "origin", &self.upstream], None, deadline)
                .await?;
        }
        let current = std::fs::read_to_string(self.dir.join(".git/info/sparse-checkout")).unwrap_or_default();
        if current != self.patterns() {
            self.set_patterns(git, deadline).await?;
        }
        if !self.dir.join(".git/index").exists() {
            // A clone whose first checkout failed (its blobs could not be
            // fetched, say): finish it, or fail again with git's reason.
            self.git(git, &["checkout", "--quiet", &self.branch, "--"], None, deadline)
                .await?;
        }
        Ok(())
    }

    /// Fetches the branch and returns its tip (full hash).
    pub async fn fetch(&self, git: &Git, deadline: Instant) -> Result<String, CheckoutError> {
        let refspec = format!("+refs/heads/{b}:refs/remotes/origin/{b}", b = self.branch);
        self.git(
            git,
            &["fetch", "--quiet", "--no-auto-gc", "origin", &refspec],
            None,
            deadline,
        )
        .await?;
        let name = format!("refs/remotes/origin/{}", self.branch);
        self.read(|r| {
            let mut reference = r.find_reference(name.as_str()).map_err(|e| e.to_string())?;
            Ok(reference.peel_to_id().map_err(|e| e.to_string())?.to_string())
        })
    }

    /// Puts the branch at `tip` and checks it out: local edits are stashed
    /// first (kept in `git stash list`, as Gitopper does); a file in the way
    /// makes git refuse, and nothing is overwritten.
    pub async fn check_out_branch_at(&self, git: &Git, tip: &str, deadline: Instant) -> Result<(), CheckoutError> {
        self.git(git, &["stash", "--quiet"], None, deadline).await?;
        self.git(
            git,
            &["checkout", "--quiet", "-B", &self.branch, tip, "--"],
            None,
            deadline,
        )
        .await?;
        Ok(())
    }

    /// Checks out `hash` on a detached HEAD (a rollback), local edits
    /// stashed first.
    pub async fn check_out_detached(&self, git: &Git, hash: &str, deadline: Instant) -> Result<(), CheckoutError> {
        self.git(git, &["stash", "--quiet"], None, deadline).await?;
        self.git(git, &["checkout", "--quiet", "--detach", hash, "--"], None, deadline)
            .await?;
        Ok(())
    }

    fn read<T>(&self, f: impl FnOnce(&gix::Repository) -> Result<T, String>) -> Result<T, CheckoutError> {
        let repo = gix::open_opts(&self.dir, gix::open::Options::isolated()).map_err(|e| CheckoutError::Read {
            what: "the repository".into(),
            dir: self.dir.clone(),
            reason: e.to_string(),
        })?;
        f(&repo).map_err(|reason| CheckoutError::Read {
            what: "a commit".into(),
            dir: self.dir.clone(),
            reason,
        })
    }

    /// The commit checked out (full hash).
    pub fn head(&self) -> Result<String, CheckoutError> {
        self.read(|r| Ok(r.head_id().map_err(|e| e.to_string())?.to_string()))
    }

    /// The full hash of the commit `rev` (4 to 40 hex digits) names.
    pub fn resolve(&self, rev: &str) -> Result<String, ResolveError> {
        if !(4..=40).contains(&rev.len()) || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ResolveError::NotHex(rev.to_string()));
        }
        let unknown = |reason: String| ResolveError::Unknown {
            rev: rev.to_string(),
            dir: self.dir.clone(),
            reason,
        };
        let repo = gix::open_opts(&self.dir, gix::open::Options::isolated()).map_err(|e| unknown(e.to_string()))?;
        let id = repo.rev_parse_single(rev).map_err(|e| unknown(e.to_string()))?;
        let commit = id
            .object()
            .map_err(|e| unknown(e.to_string()))?
            .peel_to_kind(gix::object::Kind::Commit)
            .map_err(|e| unknown(e.to_string()))?;
        Ok(commit.id.to_string())
    }

    /// Whether any linked path differs between commits `old` and `new`
    /// (its tree entry's id or mode, or its presence). An unreadable commit
    /// counts as a difference: better one action too many than one missed.
    pub fn links_differ(&self, old: &str, new: &str) -> bool {
        if old == new {
            return false;
        }
        let entries = |r: &gix::Repository, hex: &str| -> Result<Vec<Option<(gix::ObjectId, u16)>>, String> {
            let id = gix::ObjectId::from_hex(hex.as_bytes()).map_err(|e| e.to_string())?;
            let tree = r
                .find_commit(id)
                .map_err(|e| e.to_string())?
                .tree()
                .map_err(|e| e.to_string())?;
            let paths: Vec<&str> = if self.links.is_empty() {
                vec![]
            } else {
                self.links.iter().map(String::as_str).collect()
            };
            if paths.is_empty() {
                return Ok(vec![Some((tree.id, 0))]);
            }
            paths
                .into_iter()
                .map(|p| {
                    Ok(tree
                        .lookup_entry_by_path(p)
                        .map_err(|e| e.to_string())?
                        .map(|e| (e.object_id(), e.mode().value())))
                })
                .collect()
        };
        self.read(|r| Ok(entries(r, old)? != entries(r, new)?)).unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitopper::metrics::Metrics;
    use crate::sync::log::Log;
    use std::path::Path;
    use std::process::Command;
    use std::sync::Arc;

    fn sh_git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn commit(repo: &Path, files: &[(&str, &str)]) -> String {
        for (p, c) in files {
            let p = repo.join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, c).expect("write");
        }
        sh_git(repo, &["add", "-A"]);
        sh_git(repo, &["commit", "-qm", "c"]);
        sh_git(repo, &["rev-parse", "HEAD"])
    }

    async fn git() -> Git {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let env = vec![
            ("GIT_AUTHOR_NAME".into(), "t".into()),
            ("GIT_AUTHOR_EMAIL".into(), "t@t".into()),
            ("GIT_COMMITTER_NAME".into(), "t".into()),
            ("GIT_COMMITTER_EMAIL".into(), "t@t".into()),
        ];
        Git::new("git".into(), env, &[], vec![], &[], Log::new(0, None), metrics)
            .await
            .expect("git")
    }

    #[tokio::test]
    async fn sparse_partial_clone_pull_and_rollback() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let up = dir.path().join("up");
        std::fs::create_dir(&up)?;
        sh_git(&up, &["init", "-q", "-b", "main"]);
        sh_git(&up, &["config", "uploadpack.allowFilter", "true"]);
        let first = commit(
            &up,
            &[
                ("a/etc/x", "1"),
                ("a/etcetera", "near"),
                ("b/y", "1"),
                ("c/Caddyfile", "1"),
                ("c/sibling", "s"),
            ],
        );
        let git = git().await;
        let co = Checkout {
            dir: dir.path().join("mount/svc"),
            upstream: format!("file://{}", up.display()),
            branch: "main".into(),
            links: vec!["a/etc".into(), "c/Caddyfile".into()],
            owner: None,
        };
        let deadline = crate::sync::git::deadline_in(std::time::Duration::from_secs(60));
        assert!(!co.exists());
        co.clone_repo(&git, deadline).await?;
        assert!(co.exists());
        assert_eq!(co.head()?, first);
        assert_eq!(std::fs::read_to_string(co.dir.join("a/etc/x"))?, "1");
        assert_eq!(std::fs::read_to_string(co.dir.join("c/Caddyfile"))?, "1");
        for absent in ["b/y", "c/sibling", "a/etcetera"] {
            assert!(!co.dir.join(absent).exists(), "{absent} is not linked");
        }
        // Full history, and only the needed blobs: a promisor remote.
        assert_eq!(sh_git(&co.dir, &["config", "remote.origin.promisor"]), "true");

        let unrelated = commit(&up, &[("b/y", "2"), ("a/etcetera", "still near")]);
        assert_eq!(co.fetch(&git, deadline).await?, unrelated);
        assert!(!co.links_differ(&first, &unrelated), "b/ and a/etcetera are not linked");
        co.check_out_branch_at(&git, &unrelated, deadline).await?;
        assert_eq!(co.head()?, unrelated);
        let related = commit(&up, &[("c/Caddyfile", "2")]);
        assert_eq!(co.fetch(&git, deadline).await?, related);
        assert!(co.links_differ(&unrelated, &related));
        co.check_out_branch_at(&git, &related, deadline).await?;
        assert_eq!(std::fs::read_to_string(co.dir.join("c/Caddyfile"))?, "2");

        // A local edit is stashed, not lost, and does not block.
        std::fs::write(co.dir.join("a/etc/x"), "edited")?;
        let short = &first[..7];
        let pinned = co.resolve(short)?;
        assert_eq!(pinned, first);
        co.check_out_detached(&git, &pinned, deadline).await?;
        assert_eq!(co.head()?, first);
        assert_eq!(std::fs::read_to_string(co.dir.join("c/Caddyfile"))?, "1");
        assert_eq!(std::fs::read_to_string(co.dir.join("a/etc/x"))?, "1");
        assert!(sh_git(&co.dir, &["stash", "list"]).contains("stash@{0}"));
        // Back to the branch from a detached HEAD.
        co.check_out_branch_at(&git, &related, deadline).await?;
        assert_eq!(sh_git(&co.dir, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");

        assert!(matches!(co.resolve("xyz"), Err(ResolveError::NotHex(_))));
        assert!(matches!(co.resolve("abc"), Err(ResolveError::NotHex(_))), "too short");
        assert!(matches!(co.resolve(&"0".repeat(40)), Err(ResolveError::Unknown { .. })));
        assert!(git.metrics.git_ops.get() >= 8);
        Ok(())
    }

    #[tokio::test]
    async fn configure_follows_the_services_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let up = dir.path().join("up");
        std::fs::create_dir(&up)?;
        sh_git(&up, &["init", "-q", "-b", "main"]);
        commit(&up, &[("a/x", "1"), ("b/y", "1")]);
        let git = git().await;
        let mut co = Checkout {
            dir: dir.path().join("svc"),
            upstream: format!("file://{}", up.display()),
            branch: "main".into(),
            links: vec!["a".into()],
            owner: None,
        };
        let deadline = crate::sync::git::deadline_in(std::time::Duration::from_secs(60));
        co.clone_repo(&git, deadline).await?;
        assert!(!co.dir.join("b/y").exists());
        co.links.push("b".into());
        co.upstream = up.display().to_string();
        co.configure(&git, deadline).await?;
        assert_eq!(std::fs::read_to_string(co.dir.join("b/y"))?, "1");
        assert_eq!(
            sh_git(&co.dir, &["remote", "get-url", "origin"]),
            up.display().to_string()
        );
        // A clone that was never checked out (no index) is finished.
        std::fs::remove_file(co.dir.join(".git/index"))?;
        std::fs::remove_dir_all(co.dir.join("a"))?;
        co.configure(&git, deadline).await?;
        assert_eq!(std::fs::read_to_string(co.dir.join("a/x"))?, "1");
        Ok(())
    }

    #[test]
    fn patterns_are_anchored_and_escaped() {
        let co = Checkout {
            dir: "/x".into(),
            upstream: String::new(),
            branch: String::new(),
            links: vec!["a/etc".into(), "weird/[x]*".into(), "#hash".into()],
            owner: None,
        };
        assert_eq!(co.patterns(), "/a/etc\n/weird/\\[x\\]\\*\n/\\#hash\n");
    }
}
