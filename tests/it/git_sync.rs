//! git-sync, the fast cases: the binary against file:// repositories made by
//! real git, on-disk layout, readiness and metrics, exit codes. The long
//! cases (git-sync's own e2e suite) are in `e2e/git-sync` (`make e2e-git-sync`).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::support::git;

const BIN: &str = env!("CARGO_BIN_EXE_git-sync");

/// A source repository with one commit of `file`.
fn source(dir: &Path, content: &str) -> Result<std::path::PathBuf> {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    commit(&repo, content)?;
    Ok(repo)
}

fn commit(repo: &Path, content: &str) -> Result<String> {
    std::fs::write(repo.join("file"), content)?;
    git(repo, &["add", "file"])?;
    git(repo, &["commit", "-qm", content])?;
    Ok(git(repo, &["rev-parse", "HEAD"])?.trim().to_string())
}

fn git_sync(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("HOME", home).env_remove("GIT_SSH_COMMAND");
    c
}

fn run(home: &Path, args: &[&str]) -> Result<Output> {
    Ok(git_sync(home).args(args).output()?)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET http://addr/path` on a fresh connection: (status, body).
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).context("no status")?.parse()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn one_time_sync_leaves_git_syncs_layout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = source(dir.path(), "one")?;
    let hash = git(&repo, &["rev-parse", "HEAD"])?.trim().to_string();
    let root = dir.path().join("vol/root");
    let url = format!("file://{}", repo.display());
    let o = run(
        dir.path(),
        &[
            "--repo",
            &url,
            "--root",
            root.to_str().context("utf-8")?,
            "--one-time",
            "--link=current",
        ],
    )?;
    assert!(o.status.success(), "{}", stderr(&o));
    // The link is relative and its basename is the hash.
    let target = std::fs::read_link(root.join("current"))?;
    assert_eq!(target, Path::new(".worktrees").join(&hash));
    assert_eq!(std::fs::read_to_string(root.join("current/file"))?, "one");
    // The worktree's gitdir is relative too: the volume can move.
    let dotgit = std::fs::read_to_string(root.join(".worktrees").join(&hash).join(".git"))?;
    assert_eq!(dotgit, format!("gitdir: ../../.git/worktrees/{hash}\n"));
    std::fs::rename(dir.path().join("vol"), dir.path().join("moved"))?;
    let moved = dir.path().join("moved/root/current");
    assert_eq!(git(&moved, &["rev-parse", "HEAD"])?.trim(), hash);
    // The repository's branch is git-sync's and origin is the URL.
    let moved_root = dir.path().join("moved/root");
    assert_eq!(git(&moved_root, &["remote", "get-url", "origin"])?.trim(), url);
    assert_eq!(
        git(&moved_root, &["rev-parse", "--abbrev-ref", "HEAD"])?.trim(),
        "git-sync"
    );
    // Logs are JSON lines; the first says "starting up".
    let first = stderr(&o).lines().next().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&first).context(first.clone())?;
    assert_eq!(v["msg"], "starting up");
    Ok(())
}

#[test]
fn exit_codes_are_git_syncs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = source(dir.path(), "x")?;
    let url = format!("file://{}", repo.display());
    let root = dir.path().join("root");
    let root = root.to_str().context("utf-8")?;
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--help"], 0, ""),
        (&["--version"], 0, ""),
        (&["--man"], 0, ""),
        (&["--bogus"], 2, "--bogus"),
        (&["--repo", &url], 1, "--root must be specified"),
        (&["--root", root], 1, "--repo must be specified"),
        (&["--repo", &url, "--root", root, "--git-gc=never"], 1, "--git-gc"),
        (
            &["--repo", &url, "--root", root, "--one-time", "--ref=nope"],
            1,
            "couldn't find remote ref",
        ),
        (
            &["--repo", &url, "--root", root, "--git=/no/such/git"],
            1,
            "git executable not found",
        ),
    ];
    for (args, code, needle) in cases {
        let o = run(dir.path(), args)?;
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    Ok(())
}

#[test]
fn readiness_metrics_and_following_a_branch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = source(dir.path(), "one")?;
    let root = dir.path().join("root");
    let port = crate::support::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let child = git_sync(dir.path())
        .args([
            &format!("--repo=file://{}", repo.display()),
            &format!("--root={}", root.display()),
            "--ref=main",
            "--period=100ms",
            "--http-metrics",
            "--touch-file=synced",
        ])
        .env("GITSYNC_HTTP_BIND", &addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _guard = Running(child);
    poll("the first sync", Duration::from_secs(30), || {
        root.join("synced").exists().then_some(())
    })?;
    let (status, _) = http_get(&addr, "/")?;
    assert_eq!(status, 200);
    let (status, metrics) = http_get(&addr, "/metrics")?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("git_sync_count_total{status=\"success\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("git_fetch_count_total 1"), "{metrics}");
    std::fs::remove_file(root.join("synced"))?;
    let second = commit(&repo, "two")?;
    poll("the second sync", Duration::from_secs(30), || {
        let t = std::fs::read_link(root.join("repo")).ok()?;
        (t.file_name()? == second.as_str()).then_some(())
    })?;
    assert_eq!(std::fs::read_to_string(root.join("repo/file"))?, "two");
    Ok(())
}

#[test]
fn not_ready_until_the_first_sync() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let port = crate::support::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    // A repository that does not exist: the sync keeps failing.
    let child = git_sync(dir.path())
        .args([
            "--repo=file:///no/such/repo",
            &format!("--root={}", root.display()),
            "--max-failures=-1",
            "--period=100ms",
            &format!("--http-bind={addr}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _guard = Running(child);
    let (status, body) = poll("the endpoint", Duration::from_secs(30), || http_get(&addr, "/").ok())?;
    assert_eq!(status, 503);
    assert_eq!(body, "repo is not ready\n");
    Ok(())
}
