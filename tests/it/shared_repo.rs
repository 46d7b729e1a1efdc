//! A repository shared with Git: while gitcd serves writes and folds and
//! consolidates its packs, `git push` brings a large history in, `git fetch`
//! brings another, `git gc --auto` runs, and a second gitcd serves another
//! branch pair of the same repository. Afterwards `git fsck --strict` is
//! clean, every acknowledged write is there, and every pushed commit is
//! readable. One process owns pack maintenance.

use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use bytes::Bytes;
use common::proto::etcdserverpb::PutRequest;
use common::store::StoreConfig;

use crate::support::{Client, Gitcd, all_kvs, commit_files, fsck, git, new_work_repo};

/// A history of `commits` commits over a few hundred files, made by git
/// fast-import (quick, and large enough that receive-pack keeps a pack).
fn big_history(dir: &Path, commits: usize) -> Result<()> {
    new_work_repo(dir)?;
    let mut script = String::new();
    for c in 0..commits {
        let message = format!("c{c}");
        script.push_str(&format!(
            "commit refs/heads/main\ncommitter t <t@t> {} +0000\ndata {}\n{message}\n",
            1_700_000_000 + c,
            message.len()
        ));
        for f in 0..8 {
            let content = format!("file {} of commit {c}\n{}\n", (c * 8 + f) % 300, "x".repeat(c % 50));
            script.push_str(&format!(
                "M 100644 inline d{}/f{}\ndata {}\n{content}\n",
                f % 4,
                (c * 8 + f) % 300,
                content.len()
            ));
        }
    }
    use std::io::Write as _;
    let mut child = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["fast-import", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(script.as_bytes())?;
    ensure!(child.wait()?.success(), "git fast-import failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn git_and_gitcd_share_a_repository() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo.git");
    let gitcd = Gitcd::start(&repo).await?;
    let mut other_config = StoreConfig::with_repo(&repo);
    other_config.data_ref = "refs/heads/other".into();
    other_config.metadata_ref = "refs/gitcd/metadata/refs/heads/other".into();
    let other = Gitcd::start_with(other_config).await?;

    // Writers: enough groups for several folds (128 group packs each).
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let addr = gitcd.addr;
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await?;
                let mut acked = Vec::new();
                for i in 0..150 {
                    let (key, value) = (format!("/w{w}/k{}", i % 40), format!("{w}-{i}"));
                    c.put(&key, value.clone()).await?;
                    acked.push((key, value));
                }
                anyhow::Ok(acked)
            })
        })
        .collect();
    let mut other_client = other.client().await?;

    // Meanwhile: a push of a large history, a fetch of another, gc --auto.
    let pushed = dir.path().join("pushed");
    big_history(&pushed, 400)?;
    let fetched = dir.path().join("fetched");
    new_work_repo(&fetched)?;
    for i in 0..20 {
        commit_files(&fetched, &[(&format!("f{i}"), &"y".repeat(1000 + i))], &format!("f{i}"))?;
    }
    let repo_url = repo.to_str().context("UTF-8 path")?;
    // The receiving side's own `gc --auto` would go on after the push
    // returns and prune loose object directories under the fetch below (a
    // race between two git processes, not gitcd's): gc runs once, below.
    git(&repo, &["config", "receive.autogc", "false"])?;
    git(&pushed, &["push", "-q", repo_url, "main:refs/heads/imported"])?;
    git(
        &repo,
        &[
            "fetch",
            "-q",
            fetched.to_str().context("UTF-8 path")?,
            "main:refs/heads/fetched",
        ],
    )?;
    other_client
        .kv
        .put(PutRequest {
            key: Bytes::from_static(b"/other"),
            value: Bytes::from_static(b"1"),
            ..Default::default()
        })
        .await?;
    git(
        &repo,
        &["-c", "gc.autoPackLimit=2", "-c", "gc.auto=1", "gc", "--auto", "--quiet"],
    )?;

    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await??);
    }
    gitcd.stop().await?;
    other.stop().await?;

    fsck(&repo, &["--strict"]).await?;
    let missing = git(
        &repo,
        &[
            "rev-list",
            "--objects",
            "--missing=print",
            "refs/heads/imported",
            "refs/heads/fetched",
        ],
    )?;
    ensure!(
        !missing.lines().any(|l| l.starts_with('?')),
        "objects missing: {missing}"
    );
    ensure!(
        git(&repo, &["rev-parse", "refs/heads/imported"])? == git(&pushed, &["rev-parse", "main"])?,
        "the pushed history is whole"
    );

    // Every acknowledged write, after a restart.
    let gitcd = Gitcd::start(&repo).await?;
    let mut c = gitcd.client().await?;
    let now: std::collections::BTreeMap<String, String> = all_kvs(&mut c, 0)
        .await?
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    let mut last = std::collections::BTreeMap::new();
    for (k, v) in acked {
        last.insert(k, v);
    }
    for (k, v) in &last {
        ensure!(now.get(k) == Some(v), "{k}: acknowledged {v}, found {:?}", now.get(k));
    }
    gitcd.stop().await?;
    Ok(())
}

/// Only one process maintains a repository's packs: the first store to
/// open takes the lock; a second store of the same repository does not.
#[tokio::test]
async fn one_maintainer_per_repository() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo.git");
    let first = common::store::Store::open(StoreConfig::with_repo(&repo))?;
    let mut config = StoreConfig::with_repo(&repo);
    config.data_ref = "refs/heads/b".into();
    config.metadata_ref = "refs/gitcd/metadata/refs/heads/b".into();
    let second = common::store::Store::open(config.clone())?;
    ensure!(first.maintains_packs() && !second.maintains_packs());
    first.close();
    second.close();
    config.maintenance = common::repo::Maintenance::Off;
    let off = common::store::Store::open(config)?;
    ensure!(!off.maintains_packs(), "--pack-maintenance=off");
    off.close();
    Ok(())
}

/// A person's commit made on top of the data ref while writes queue: the
/// refs then lag the journal (they move once per commit interval at most), so the
/// commit is made on a ref behind the acknowledged writes. It is merged,
/// not taken as the new state: every acknowledged write stays, every pushed
/// file becomes a key, and the branch descends from every pushed commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_made_on_a_ref_behind_the_journal_are_merged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo.git");
    let gitcd = Gitcd::start(&repo).await?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let (addr, done) = (gitcd.addr, done.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await?;
                let mut acked = Vec::new();
                let mut i = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) || i < 50 {
                    let (key, value) = (format!("/w{w}/k{}", i % 20), format!("{w}-{i}"));
                    c.put(&key, value.clone()).await?;
                    acked.push((key, value));
                    i += 1;
                }
                anyhow::Ok(acked)
            })
        })
        .collect();

    // Commits on top of whatever the ref holds, moved with compare-and-swap
    // (as `git push` does); one that loses the race to gitcd is made again.
    let index = dir.path().join("index");
    let mut pushed = Vec::new();
    for p in 0..12 {
        loop {
            let head = git(&repo, &["rev-parse", "refs/heads/main"])?.trim().to_owned();
            let file = dir.path().join("value");
            std::fs::write(&file, format!("pushed {p}"))?;
            let blob = git(&repo, &["hash-object", "-w", file.to_str().context("UTF-8 path")?])?
                .trim()
                .to_owned();
            let with_index = |args: &[&str]| -> Result<String> {
                let out = std::process::Command::new("git")
                    .arg("--git-dir")
                    .arg(&repo)
                    .args(args)
                    .env("GIT_INDEX_FILE", &index)
                    .output()?;
                ensure!(
                    out.status.success(),
                    "git {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(String::from_utf8(out.stdout)?.trim().to_owned())
            };
            with_index(&["read-tree", &head])?;
            with_index(&[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("100644,{blob},pushed/p{p}"),
            ])?;
            let tree = with_index(&["write-tree"])?;
            let commit = git(
                &repo,
                &["commit-tree", &tree, "-p", &head, "-m", &format!("pushed {p}")],
            )?
            .trim()
            .to_owned();
            let moved = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(&repo)
                .args(["update-ref", "refs/heads/main", &commit, &head])
                .output()?;
            if moved.status.success() {
                pushed.push(commit);
                break;
            }
        }
        // The next commit goes on top of what gitcd made of this one.
        let last = pushed.last().cloned().unwrap_or_default();
        crate::support::eventually(
            "gitcd to take the commit in",
            std::time::Duration::from_secs(10),
            || {
                let moved = git(&repo, &["rev-parse", "refs/heads/main"]).map(|h| h.trim() != last);
                async move { Ok(moved?.then_some(())) }
            },
        )
        .await?;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await??);
    }

    let c = gitcd.client().await?;
    let now = crate::support::eventually("the pushed keys", std::time::Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            let kvs = all_kvs(&mut c, 0).await?;
            let now: std::collections::BTreeMap<String, String> = kvs
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect();
            let all = (0..12).all(|p| now.contains_key(&format!("/pushed/p{p}")));
            Ok(all.then_some(now))
        }
    })
    .await?;
    for p in 0..12 {
        ensure!(now[&format!("/pushed/p{p}")] == format!("pushed {p}"), "/pushed/p{p}");
    }
    let mut last = std::collections::BTreeMap::new();
    for (k, v) in acked {
        last.insert(k, v);
    }
    for (k, v) in &last {
        ensure!(now.get(k) == Some(v), "{k}: acknowledged {v}, found {:?}", now.get(k));
    }
    drop(c);
    gitcd.stop().await?;
    let head = git(&repo, &["rev-parse", "refs/heads/main"])?.trim().to_owned();
    for commit in &pushed {
        git(&repo, &["merge-base", "--is-ancestor", commit, &head])
            .with_context(|| format!("{commit} is not in main"))?;
    }
    fsck(&repo, &["--strict"]).await?;
    Ok(())
}
