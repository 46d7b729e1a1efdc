//! Reads that gix answers in-process, where git-sync starts a `git`: the
//! commit `FETCH_HEAD` names (annotated tags peeled), a worktree's HEAD,
//! whether the root is a repository's top level, and `origin`'s URL. All
//! are plain reads of what git wrote; anything gix cannot open or parse
//! gives no answer, and the caller asks the `git` CLI instead, so a doubtful
//! case is always git's to decide.

use std::path::Path;

fn open(path: &Path) -> Option<gix::Repository> {
    gix::open_opts(path, gix::open::Options::isolated()).ok()
}

/// The commit the first line of `<root>/.git/FETCH_HEAD` names, peeled
/// (`git rev-parse FETCH_HEAD^{}`).
pub fn fetch_head_commit(root: &Path) -> Option<String> {
    let repo = open(root)?;
    let text = std::fs::read_to_string(repo.git_dir().join("FETCH_HEAD")).ok()?;
    let hex = text.lines().next()?.split(['\t', ' ']).next()?;
    let id = gix::ObjectId::from_hex(hex.as_bytes()).ok()?;
    let commit = repo
        .find_object(id)
        .ok()?
        .peel_to_kind(gix::object::Kind::Commit)
        .ok()?;
    Some(commit.id.to_string())
}

/// The commit a worktree's HEAD points at (`git rev-parse HEAD` in it).
pub fn head(worktree: &Path) -> Option<String> {
    Some(open(worktree)?.head_id().ok()?.to_string())
}

/// True when `root` (absolute, symlink-free) is the work tree of the
/// repository at `root/.git`, i.e. `git rev-parse --show-toplevel` in it
/// says `root`. False means "ask git" (a root inside another repository is
/// git's to report).
pub fn is_toplevel(root: &Path) -> bool {
    open(root).and_then(|r| r.workdir().map(|w| w == root)).unwrap_or(false)
}

/// `remote.origin.url` as the repository's config has it.
pub fn origin_url(root: &Path) -> Option<String> {
    Some(open(root)?.config_snapshot().string("remote.origin.url")?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
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

    #[test]
    fn agrees_with_git_on_tags_and_worktrees() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("src");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&src)?;
        std::fs::create_dir_all(&root)?;
        git(&src, &["init", "-q", "-b", "main"]);
        std::fs::write(src.join("f"), "x")?;
        git(&src, &["add", "f"]);
        git(&src, &["commit", "-qm", "one"]);
        git(&src, &["tag", "-a", "-m", "annotated", "v1"]);
        git(&root, &["init", "-q", "-b", "git-sync"]);
        assert_eq!(fetch_head_commit(&root), None, "no FETCH_HEAD yet");
        assert!(is_toplevel(&root));
        let sub = root.join("sub");
        std::fs::create_dir_all(&sub)?;
        assert!(!is_toplevel(&sub), "inside another repository: git decides");
        assert_eq!(origin_url(&root), None);
        git(&root, &["remote", "add", "origin", "file:///x/y"]);
        assert_eq!(origin_url(&root).as_deref(), Some("file:///x/y"));
        let url = format!("file://{}", src.display());
        for r in ["main", "v1"] {
            git(&root, &["fetch", "-q", &url, r, "--depth", "1"]);
            assert_eq!(
                fetch_head_commit(&root),
                Some(git(&root, &["rev-parse", "FETCH_HEAD^{}"])),
                "{r}"
            );
        }
        let hash = git(&root, &["rev-parse", "FETCH_HEAD^{}"]);
        let wt = root.join(".worktrees").join(&hash);
        git(
            &root,
            &["worktree", "add", "-q", "--detach", &wt.display().to_string(), &hash],
        );
        assert_eq!(head(&wt), Some(hash));
        assert_eq!(head(&dir.path().join("nowhere")), None);
        Ok(())
    }
}
