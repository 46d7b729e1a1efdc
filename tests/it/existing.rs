//! Serving a repository made with plain `git`: `gitcd-init` builds its
//! metadata, every file is a key, `--rev` reads each commit, and commits
//! pushed while gitcd serves become revisions.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use bytes::Bytes;
use common::proto::etcdserverpb::{PutRequest, RangeRequest};

use crate::support::{Gitcd, all_kvs, commit_files, eventually, git, new_work_repo};

/// The state of a commit as etcd would list it: ("/path", content).
fn commit_state(repo: &Path, commit: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let files = git(repo, &["ls-tree", "-r", "-z", "--name-only", commit])?;
    let mut out = Vec::new();
    for path in files.split('\0').filter(|p| !p.is_empty()) {
        let content = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["cat-file", "blob", &format!("{commit}:{path}")])
            .output()?
            .stdout;
        out.push((format!("/{path}").into_bytes(), content));
    }
    out.sort();
    Ok(out)
}

fn gitcd_init(repo: &Path) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_gitcd-init"))
        .arg("--repo")
        .arg(repo)
        .output()?;
    ensure!(
        out.status.success(),
        "gitcd-init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A history with nested directories, an edit, a delete and a merge.
fn make_history(work: &Path) -> Result<()> {
    new_work_repo(work)?;
    commit_files(
        work,
        &[("a.txt", "one"), ("dir/b", "bee"), ("dir/sub/c", "sea")],
        "first",
    )?;
    commit_files(work, &[("a.txt", "two")], "edit a")?;
    git(work, &["rm", "-q", "dir/b"])?;
    git(work, &["commit", "-q", "-m", "remove b"])?;
    git(work, &["checkout", "-q", "-b", "feature"])?;
    commit_files(work, &[("f/x", "feature x")], "feature")?;
    commit_files(work, &[("f/y", "feature y")], "feature 2")?;
    git(work, &["checkout", "-q", "main"])?;
    commit_files(work, &[("m", "main only")], "main")?;
    git(work, &["merge", "-q", "--no-ff", "-m", "merge feature", "feature"])?;
    commit_files(work, &[("deep/nested/path/file", "deep")], "deep")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn existing_repository_is_served_revision_by_revision() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    let served = dir.path().join("served.git");
    make_history(&work)?;
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().context("utf-8 path")?,
            "served.git",
        ],
    )?;

    // First-parent commits, oldest first: revisions 1..=6, the merge one of them.
    let chain: Vec<String> = git(&work, &["rev-list", "--first-parent", "--reverse", "main"])?
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(chain.len(), 6);

    let out = gitcd_init(&served)?;
    assert!(out.contains("at revision 6"), "{out}");
    let meta_before = git(&served, &["rev-parse", "refs/gitcd/metadata/refs/heads/main"])?;
    // Idempotent: a second run changes nothing.
    let out = gitcd_init(&served)?;
    assert!(out.contains("at revision 6"), "{out}");
    assert_eq!(
        git(&served, &["rev-parse", "refs/gitcd/metadata/refs/heads/main"])?,
        meta_before
    );
    let meta_log = git(
        &served,
        &[
            "log",
            "--first-parent",
            "--format=%s",
            "refs/gitcd/metadata/refs/heads/main",
        ],
    )?;
    assert_eq!(meta_log, "6\n5\n4\n3\n2\n1\n");

    let gitcd = Gitcd::start(&served).await?;
    let mut c = gitcd.client().await?;
    for (i, commit) in chain.iter().enumerate() {
        let rev = i as i64 + 1;
        assert_eq!(
            all_kvs(&mut c, rev).await?,
            commit_state(&work, commit)?,
            "revision {rev}"
        );
    }
    // Metadata of the merged files: created by the merge revision.
    let r =
        c.kv.range(RangeRequest {
            key: Bytes::from_static(b"/f/x"),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        (r.kvs[0].create_revision, r.kvs[0].mod_revision, r.kvs[0].version),
        (5, 5, 1)
    );
    let r =
        c.kv.range(RangeRequest {
            key: Bytes::from_static(b"/a.txt"),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        (r.kvs[0].create_revision, r.kvs[0].mod_revision, r.kvs[0].version),
        (1, 2, 2)
    );

    // A commit pushed while gitcd serves becomes revision 7.
    commit_files(&work, &[("a.txt", "three"), ("new/file", "new")], "external edit")?;
    git(&work, &["rm", "-q", "m"])?;
    git(&work, &["commit", "-q", "-m", "external delete"])?;
    git(&work, &["push", "-q", served.to_str().context("utf-8 path")?, "main"])?;
    let head = git(&work, &["rev-parse", "HEAD"])?;
    let mut c2 = c.clone();
    let state = eventually(
        "the pushed commits to become revisions",
        Duration::from_secs(20),
        || {
            let mut c = c2.clone();
            async move {
                let r =
                    c.kv.range(RangeRequest {
                        key: Bytes::from_static(b"/a.txt"),
                        ..Default::default()
                    })
                    .await?;
                let r = r.into_inner();
                Ok((r.header.as_ref().map(|h| h.revision) == Some(8)).then_some(r))
            }
        },
    )
    .await?;
    assert_eq!(state.kvs[0].value.as_ref(), b"three");
    assert_eq!((state.kvs[0].mod_revision, state.kvs[0].version), (7, 3));
    assert_eq!(all_kvs(&mut c2, 8).await?, commit_state(&work, head.trim())?);
    assert!(all_kvs(&mut c2, 7).await?.iter().any(|(k, _)| k == b"/m"));

    // gitcd's own writes continue the same history.
    c.kv.put(PutRequest {
        key: Bytes::from_static(b"/written/by/gitcd"),
        value: Bytes::from_static(b"yes"),
        ..Default::default()
    })
    .await?;
    let log = git(&served, &["log", "--format=%s", "-3", "refs/heads/main"])?;
    assert_eq!(log, "9\nexternal delete\nexternal edit\n");
    assert_eq!(git(&served, &["show", "refs/heads/main:written/by/gitcd"])?, "yes");
    gitcd.stop().await?;

    // Offline catch-up: gitcd-init picks up commits made while nothing served.
    git(
        &work,
        &[
            "pull",
            "-q",
            "--no-rebase",
            served.to_str().context("utf-8 path")?,
            "main",
        ],
    )?;
    commit_files(&work, &[("offline", "1")], "offline")?;
    git(&work, &["push", "-q", served.to_str().context("utf-8 path")?, "main"])?;
    let out = gitcd_init(&served)?;
    assert!(out.contains("at revision 10"), "{out}");
    let gitcd = Gitcd::start(&served).await?;
    let mut c = gitcd.client().await?;
    let state = all_kvs(&mut c, 0).await?;
    assert!(state.contains(&(b"/offline".to_vec(), b"1".to_vec())));
    assert!(state.contains(&(b"/written/by/gitcd".to_vec(), b"yes".to_vec())));
    gitcd.stop().await?;
    Ok(())
}

/// `gitcd serve` on a repository with data but no metadata builds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_initialises_a_repository_without_metadata() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    new_work_repo(&work)?;
    commit_files(&work, &[("registry/pods/ns/p1", "pod")], "one")?;
    let gitcd = Gitcd::start(&work).await?;
    let mut c = gitcd.client().await?;
    assert_eq!(
        all_kvs(&mut c, 0).await?,
        vec![(b"/registry/pods/ns/p1".to_vec(), b"pod".to_vec())]
    );
    gitcd.stop().await?;
    Ok(())
}
