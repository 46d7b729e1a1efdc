//! The repository under `--root` and one sync of it: the sequence of git
//! commands git-sync v4 runs, the layout it leaves, and its repairs.
//!
//! Layout: `<root>/.git` (made by `git init -b git-sync`, remote `origin` =
//! the repo URL), one worktree per published hash at
//! `<root>/.worktrees/<hash>` whose `.git` file points back with a relative
//! path, and the `--link` symlink, whose relative target ends in the hash.
//! Nothing is trusted across restarts: every sync checks the root and the
//! current worktree and rebuilds what fails the checks.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::time::Instant;

use super::fs::{
    dir_is_empty, join_clean, link_dir, mkdir_all, relative_path, remove_all, remove_dir_contents_if, touch_dir,
};
use super::git::{CmdError, Git};
use super::log::Log;

/// How submodules are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submodules {
    /// `git submodule update --init --recursive`.
    Recursive,
    /// `git submodule update --init` (first level only).
    Shallow,
    /// Not touched.
    Off,
}

/// How `git gc` runs after old worktrees are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitGc {
    /// `git gc --auto`.
    Auto,
    /// `git gc`.
    Always,
    /// `git gc --aggressive`.
    Aggressive,
    /// Never.
    Off,
}

/// A sync that failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A git command failed.
    #[error(transparent)]
    Git(#[from] CmdError),
    /// A filesystem operation failed.
    #[error("{what} {path:?}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `git init` left something that still fails the checks.
    #[error("can't initialize git repo directory")]
    InitFailed,
    /// Credentials could not be refreshed.
    #[error("credential refresh failed: {0}")]
    Credentials(String),
    /// `git rev-parse --is-shallow-repository` said something else.
    #[error("unparseable bool: {0:?}")]
    Shallow(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SyncError + 'a {
    move |source| SyncError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The repository and how to sync it.
pub struct Repo {
    /// git and its environment.
    pub git: Git,
    /// Absolute, symlink-free root.
    pub root: PathBuf,
    /// The URL fetched from.
    pub repo: String,
    /// Branch, tag, full hash, or HEAD.
    pub git_ref: String,
    /// `--depth`; 0 is full history.
    pub depth: u32,
    /// `--filter`, for a partial clone.
    pub filter: Option<String>,
    /// Submodule handling.
    pub submodules: Submodules,
    /// `--git-gc`.
    pub gc: GitGc,
    /// Absolute path of the symlink.
    pub link: PathBuf,
    /// Sparse-checkout patterns copied into each worktree.
    pub sparse_checkout_file: Option<PathBuf>,
    /// How long superseded worktrees are kept.
    pub stale_timeout: Duration,
    /// Syncs done by this process.
    pub sync_count: u64,
    /// `git_fetch_count_total`: counts "update required".
    pub fetch_count: prometheus::IntCounter,
}

/// What a sync did.
pub struct Synced {
    /// The published hash changed (or the layout was upgraded).
    pub changed: bool,
    /// The hash now published.
    pub hash: String,
}

/// Called around publishing.
pub trait Publish {
    /// Just before the link moves to a new hash.
    fn before_publish(&mut self, hash: &str);
    /// After the link points at `hash` (also on the first sync of a process).
    fn after_publish(&mut self, hash: &str);
}

impl Repo {
    fn log(&self) -> &Log {
        &self.git.log
    }

    async fn git(&self, cwd: &Path, args: &[&str], deadline: Instant) -> Result<String, CmdError> {
        Ok(self.git.run(Some(cwd), args, deadline).await?.stdout)
    }

    /// `<root>/.worktrees/<hash>`; the directory of all of them for "".
    pub fn worktree_for(&self, hash: &str) -> PathBuf {
        if hash.is_empty() {
            self.root.join(".worktrees")
        } else {
            self.root.join(".worktrees").join(hash)
        }
    }

    /// The worktree the link points at now (resolved against the link's
    /// directory), if any.
    pub fn current_worktree(&self) -> Result<Option<PathBuf>, SyncError> {
        match std::fs::read_link(&self.link) {
            Ok(target) if target.as_os_str().is_empty() => Ok(None),
            Ok(target) if target.is_absolute() => Ok(Some(target)),
            Ok(target) => Ok(Some(join_clean(link_dir(&self.link), &target))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SyncError::Io {
                what: "can't read link",
                path: self.link.clone(),
                source: e,
            }),
        }
    }

    async fn sanity_check_repo(&self, deadline: Instant) -> bool {
        let log = self.log();
        log.info(3, "sanity-checking git repo", &[("repo", path_value(&self.root))]);
        match dir_is_empty(&self.root) {
            Err(e) => {
                log.error(
                    Some(&e),
                    "can't list repo directory",
                    &[("path", path_value(&self.root))],
                );
                return false;
            }
            Ok(true) => {
                log.info(3, "repo directory is empty", &[("path", path_value(&self.root))]);
                return false;
            }
            Ok(false) => {}
        }
        let top = if super::read::is_toplevel(&self.root) {
            Ok(self.root.display().to_string())
        } else {
            self.git(&self.root, &["rev-parse", "--show-toplevel"], deadline).await
        };
        match top {
            Err(e) => {
                log.error(Some(&e), "can't get repo toplevel", &[("path", path_value(&self.root))]);
                return false;
            }
            Ok(top) if Path::new(top.trim()) != self.root => {
                log.error(
                    None,
                    "repo directory is under another repo",
                    &[("path", path_value(&self.root)), ("parent", top.trim().into())],
                );
                return false;
            }
            Ok(_) => {}
        }
        if let Err(e) = self
            .git(&self.root, &["fsck", "--no-progress", "--connectivity-only"], deadline)
            .await
        {
            log.error(Some(&e), "repo fsck failed", &[("path", path_value(&self.root))]);
            return false;
        }
        let lock = self.root.join(".git/shallow.lock");
        match std::fs::symlink_metadata(&lock) {
            Ok(_) => {
                log.error(None, "repo contains lock file", &[("path", path_value(&lock))]);
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                log.error(Some(&e), "error calling stat on file", &[("path", path_value(&lock))]);
                false
            }
        }
    }

    /// Makes `root` a usable repository: checks it, wipes its contents and
    /// re-inits when the checks fail, and points `origin` at the repo URL.
    pub async fn init_repo(&self, deadline: Instant) -> Result<(), SyncError> {
        let log = self.log();
        let mut need_init = false;
        match std::fs::metadata(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log.info(
                    1,
                    "repo directory does not exist, creating it",
                    &[("path", path_value(&self.root))],
                );
                mkdir_all(&self.root).map_err(io("can't make root directory", &self.root))?;
                need_init = true;
            }
            Err(e) => return Err(io("can't stat root directory", &self.root)(e)),
            Ok(_) => {
                log.info(3, "repo directory exists", &[("path", path_value(&self.root))]);
                if !self.sanity_check_repo(deadline).await {
                    // The root itself may be a volume mount: empty it, never remove it.
                    log.info(
                        0,
                        "repo directory was empty or failed checks",
                        &[("path", path_value(&self.root))],
                    );
                    remove_dir_contents_if(&self.root, log, |_| true)
                        .map_err(io("can't wipe unusable root directory", &self.root))?;
                    need_init = true;
                }
            }
        }
        if need_init {
            log.info(0, "initializing repo directory", &[("path", path_value(&self.root))]);
            self.git(&self.root, &["init", "-b", "git-sync"], deadline).await?;
            if !self.sanity_check_repo(deadline).await {
                return Err(SyncError::InitFailed);
            }
        }
        if super::read::origin_url(&self.root).as_deref() == Some(self.repo.as_str()) {
            return Ok(());
        }
        match self
            .git
            .run(Some(&self.root), &["remote", "get-url", "origin"], deadline)
            .await
        {
            Err(e) if e.stderr.contains("No such remote") => {
                self.git(&self.root, &["remote", "add", "origin", &self.repo], deadline)
                    .await?;
            }
            Err(e) => return Err(e.into()),
            Ok(out) if out.stdout.trim() != self.repo => {
                self.git(&self.root, &["remote", "set-url", "origin", &self.repo], deadline)
                    .await?;
            }
            Ok(_) => {}
        }
        Ok(())
    }

    async fn sanity_check_worktree(&self, worktree: &Path, hash: &str, deadline: Instant) -> bool {
        let log = self.log();
        log.info(3, "sanity-checking worktree", &[("worktree", path_value(worktree))]);
        match dir_is_empty(worktree) {
            Err(e) => {
                log.error(
                    Some(&e),
                    "can't list worktree directory",
                    &[("path", path_value(worktree))],
                );
                return false;
            }
            Ok(true) => {
                log.info(0, "worktree is empty", &[("path", path_value(worktree))]);
                return false;
            }
            Ok(false) => {}
        }
        let head = match super::read::head(worktree) {
            Some(h) => Ok(h),
            None => self.git(worktree, &["rev-parse", "HEAD"], deadline).await,
        };
        match head {
            Err(e) => {
                log.error(Some(&e), "can't get worktree HEAD", &[("path", path_value(worktree))]);
                return false;
            }
            Ok(head) if head != hash => {
                log.info(
                    0,
                    "worktree HEAD does not match worktree",
                    &[("path", path_value(worktree)), ("head", head.into())],
                );
                return false;
            }
            Ok(_) => {}
        }
        if let Err(e) = self
            .git(worktree, &["fsck", "--no-progress", "--connectivity-only"], deadline)
            .await
        {
            log.error(Some(&e), "worktree fsck failed", &[("path", path_value(worktree))]);
            return false;
        }
        true
    }

    async fn remove_worktree(&self, worktree: &Path, deadline: Instant) -> Result<(), SyncError> {
        match std::fs::symlink_metadata(worktree) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("can't stat worktree", worktree)(e)),
            Ok(_) => {}
        }
        self.log()
            .info(1, "removing worktree", &[("path", path_value(worktree))]);
        remove_all(worktree).map_err(io("error removing directory", worktree))?;
        self.git(&self.root, &["worktree", "prune", "--verbose"], deadline)
            .await?;
        Ok(())
    }

    async fn is_shallow(&self, deadline: Instant) -> Result<bool, SyncError> {
        let out = self
            .git(&self.root, &["rev-parse", "--is-shallow-repository"], deadline)
            .await?;
        match out.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(SyncError::Shallow(other.to_string())),
        }
    }

    async fn fetch(&self, deadline: Instant) -> Result<(), SyncError> {
        self.log().info(
            2,
            "fetching",
            &[
                ("ref", self.git_ref.clone().into()),
                ("repo", super::credentials::redact_url(&self.repo).into()),
            ],
        );
        let depth = self.depth.to_string();
        let mut args = vec![
            "fetch",
            &self.repo,
            &self.git_ref,
            "--verbose",
            "--no-progress",
            "--prune",
            "--no-auto-gc",
        ];
        if self.depth > 0 {
            args.extend(["--depth", &depth]);
        } else if self.is_shallow(deadline).await? {
            args.push("--unshallow");
        }
        if let Some(f) = &self.filter {
            args.extend(["--filter", f]);
        }
        self.git(&self.root, &args, deadline).await?;
        Ok(())
    }

    async fn create_worktree(&self, hash: &str, deadline: Instant) -> Result<PathBuf, SyncError> {
        let wt = self.worktree_for(hash);
        // A directory left by a crash between `worktree add` and publishing
        // would make `worktree add` refuse.
        self.remove_worktree(&wt, deadline).await?;
        self.log().info(
            1,
            "adding worktree",
            &[("path", path_value(&wt)), ("hash", hash.into())],
        );
        let wt_str = wt.to_string_lossy();
        self.git(
            &self.root,
            &["worktree", "add", "--force", "--detach", &wt_str, hash, "--no-checkout"],
            deadline,
        )
        .await?;
        Ok(wt)
    }

    async fn configure_worktree(&self, wt: &Path, hash: &str, deadline: Instant) -> Result<(), SyncError> {
        // A relative gitdir, so the volume can be mounted at another path.
        let rel = relative_path(wt, &self.root);
        let gitdir = rel.join(".git").join("worktrees").join(hash);
        let dotgit = wt.join(".git");
        std::fs::write(&dotgit, format!("gitdir: {}\n", gitdir.display()))
            .map_err(io("can't write worktree .git file", &dotgit))?;

        let info = self.root.join(".git/worktrees").join(hash).join("info");
        let sparse = info.join("sparse-checkout");
        match &self.sparse_checkout_file {
            None => {
                let _ = remove_all(&sparse);
            }
            Some(file) => {
                self.log().info(1, "configuring worktree sparse checkout", &[]);
                let patterns = std::fs::read(file).map_err(io("can't read sparse-checkout file", file))?;
                if !info.exists() {
                    std::fs::DirBuilder::new()
                        .mode(0o775)
                        .create(&info)
                        .map_err(io("can't make directory", &info))?;
                }
                std::fs::write(&sparse, patterns).map_err(io("can't write sparse-checkout file", &sparse))?;
                self.git(wt, &["sparse-checkout", "init"], deadline).await?;
            }
        }

        self.log().info(1, "setting worktree HEAD", &[("hash", hash.into())]);
        self.git(wt, &["reset", "--hard", hash, "--"], deadline).await?;

        if self.submodules != Submodules::Off {
            self.log().info(1, "updating submodules", &[]);
            let depth = self.depth.to_string();
            let mut args = vec!["submodule", "update", "--init"];
            if self.submodules == Submodules::Recursive {
                args.push("--recursive");
            }
            if self.depth != 0 {
                args.extend(["--depth", &depth]);
            }
            self.git(wt, &args, deadline).await?;
        }
        Ok(())
    }

    /// Points the link at `wt` atomically: a relative `tmp-link` beside it,
    /// renamed over the old one.
    pub fn publish_symlink(&self, wt: &Path) -> Result<(), SyncError> {
        let dir = link_dir(&self.link);
        mkdir_all(dir).map_err(io("error making symlink dir", dir))?;
        let target = relative_path(dir, wt);
        let tmp = dir.join("tmp-link");
        self.log().info(
            2,
            "creating tmp symlink",
            &[
                ("dir", path_value(dir)),
                ("link", "tmp-link".into()),
                ("target", path_value(&target)),
            ],
        );
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io("error creating symlink", &tmp))?;
        std::fs::rename(&tmp, &self.link).map_err(io("error replacing symlink", &self.link))?;
        Ok(())
    }

    /// One sync: credentials are the caller's; this fetches the ref,
    /// publishes its hash if it changed (or repairs what it finds broken),
    /// and calls the hooks.
    pub async fn sync(&mut self, hooks: &mut dyn Publish, deadline: Instant) -> Result<Synced, SyncError> {
        self.log().info(
            3,
            "syncing",
            &[("repo", super::credentials::redact_url(&self.repo).into())],
        );
        self.init_repo(deadline).await?;

        let current_wt = self.current_worktree()?;
        let mut current_hash = current_wt
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.log().info(
            3,
            "current state",
            &[
                ("hash", current_hash.clone().into()),
                (
                    "worktree",
                    current_wt.as_deref().map(path_value).unwrap_or(Value::from("")),
                ),
            ],
        );

        self.fetch(deadline).await?;
        // ^{} peels an annotated tag to its commit; gix reads it without a
        // process when it can.
        let remote_hash = match super::read::fetch_head_commit(&self.root) {
            Some(h) => h,
            None => self
                .git(&self.root, &["rev-parse", "FETCH_HEAD^{}"], deadline)
                .await?
                .trim()
                .to_string(),
        };

        if !current_hash.is_empty() && current_hash == remote_hash {
            self.log().info(
                3,
                "current hash is same as remote",
                &[("hash", current_hash.clone().into())],
            );
            if let Some(wt) = &current_wt
                && !self.sanity_check_worktree(wt, &current_hash, deadline).await
            {
                self.log()
                    .info(0, "worktree failed checks or was empty", &[("path", path_value(wt))]);
                self.remove_worktree(wt, deadline).await?;
                current_hash.clear();
            }
        }

        // A v3 layout (worktree elsewhere) counts as a change, so it is
        // rebuilt in the v4 place.
        let expected_wt = self.worktree_for(&current_hash);
        let in_place = current_wt.as_deref() == Some(expected_wt.as_path());
        let changed = current_hash != remote_hash || !in_place;

        if changed || self.sync_count == 0 {
            self.log().info(
                0,
                "update required",
                &[
                    ("ref", self.git_ref.clone().into()),
                    ("local", current_hash.clone().into()),
                    ("remote", remote_hash.clone().into()),
                    ("syncCount", self.sync_count.into()),
                ],
            );
            self.fetch_count.inc();
            // Moves the repo's branch without touching files, so that later
            // fetches have a base.
            self.git(&self.root, &["reset", "--soft", &remote_hash, "--"], deadline)
                .await?;
            let new_wt = if changed {
                self.create_worktree(&remote_hash, deadline).await?
            } else {
                expected_wt.clone()
            };
            // Always re-applied: settings such as sparse checkout may differ
            // from the previous run's.
            self.configure_worktree(&new_wt, &remote_hash, deadline).await?;
            if changed {
                hooks.before_publish(&remote_hash);
                self.publish_symlink(&new_wt)?;
                if let Some(old) = &current_wt {
                    // Starts the old worktree's stale timer.
                    if let Err(e) = touch_dir(old) {
                        self.log().error(
                            Some(&e),
                            "can't change stale worktree mtime",
                            &[("path", path_value(old))],
                        );
                    }
                }
            }
            hooks.after_publish(&remote_hash);
            self.sync_count += 1;
            self.log().info(
                0,
                "updated successfully",
                &[
                    ("ref", self.git_ref.clone().into()),
                    ("remote", remote_hash.clone().into()),
                    ("syncCount", self.sync_count.into()),
                ],
            );
            if let Some(old) = &current_wt
                && !current_hash.is_empty()
                && !in_place
            {
                // A worktree from an older layout: cleanup would not see it.
                let _ = remove_all(old);
            }
        } else {
            self.log().info(
                2,
                "update not required",
                &[
                    ("ref", self.git_ref.clone().into()),
                    ("remote", remote_hash.clone().into()),
                    ("syncCount", self.sync_count.into()),
                ],
            );
        }
        Ok(Synced {
            changed,
            hash: remote_hash,
        })
    }

    /// Removes superseded worktrees past the stale timeout (and anything
    /// else in `.worktrees/` that is not the current one), then, only if
    /// something went, prunes, expires reflogs and runs `git gc`. Errors
    /// are collected, not fatal.
    pub async fn cleanup(&self, deadline: Instant) -> Vec<SyncError> {
        let mut errs = Vec::new();
        let removed = match self.remove_stale_worktrees() {
            Ok(n) => n,
            Err(e) => {
                errs.push(e);
                0
            }
        };
        if removed == 0 && errs.is_empty() {
            return errs;
        }
        self.log().info(3, "pruning worktrees", &[]);
        if let Err(e) = self
            .git(&self.root, &["worktree", "prune", "--verbose"], deadline)
            .await
        {
            errs.push(e.into());
        }
        self.log().info(3, "expiring unreachable refs", &[]);
        if let Err(e) = self
            .git(
                &self.root,
                &["reflog", "expire", "--expire-unreachable=all", "--all"],
                deadline,
            )
            .await
        {
            errs.push(e.into());
        }
        let gc: Option<&[&str]> = match self.gc {
            GitGc::Auto => Some(&["gc", "--auto"]),
            GitGc::Always => Some(&["gc"]),
            GitGc::Aggressive => Some(&["gc", "--aggressive"]),
            GitGc::Off => None,
        };
        if let Some(args) = gc {
            self.log().info(3, "running git garbage collection", &[]);
            if let Err(e) = self.git(&self.root, args, deadline).await {
                errs.push(e.into());
            }
        }
        errs
    }

    fn remove_stale_worktrees(&self) -> Result<usize, SyncError> {
        let current = self.current_worktree()?;
        let current_name = current
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.log().info(
            3,
            "cleaning up stale worktrees",
            &[("currentHash", current_name.clone().into())],
        );
        let dir = self.worktree_for("");
        let now = SystemTime::now();
        let stale = self.stale_timeout;
        let mut count = 0;
        remove_dir_contents_if(&dir, self.log(), |entry| {
            let old_enough = entry
                .modified
                .map(|m| now.duration_since(m).unwrap_or_default() > stale)
                .unwrap_or(true);
            let gone = entry.name != current_name && old_enough;
            if gone {
                count += 1;
            }
            gone
        })
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(io("can't clean up worktrees", &dir))?;
        Ok(count)
    }
}

fn path_value(p: &Path) -> Value {
    Value::from(p.display().to_string())
}
