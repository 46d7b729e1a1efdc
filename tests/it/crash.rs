//! Crash safety: `gitcd serve` killed with SIGKILL while clients write loses
//! no acknowledged write and leaves a consistent repository.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use bytes::Bytes;
use common::proto::etcdserverpb::PutRequest;

use crate::support::{Client, all_kvs, free_port, fsck, git};

fn spawn_gitcd(repo: &Path, port: u16, log: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Ok(Command::new(env!("CARGO_BIN_EXE_gitcd"))
        .args(["serve", "--listen-urls", &format!("http://127.0.0.1:{port}")])
        .arg("--repo")
        .arg(repo)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// Every key below `prefix` with its value (at the current revision).
async fn stored(c: &mut Client, prefix: &str) -> Result<std::collections::HashMap<Vec<u8>, Vec<u8>>> {
    Ok(all_kvs(c, 0)
        .await?
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
        .collect())
}

/// `writers` clients put keys `<prefix>/<writer>/<i>` (value `v<i>`) until
/// gitcd dies, recording each acknowledged one in `acked`; `child` is
/// killed once `after` more writes were acknowledged.
async fn write_until_killed(
    client: &Client,
    child: &mut Child,
    acked: &Arc<Mutex<Vec<(String, String)>>>,
    prefix: &str,
    writers: usize,
    after: usize,
) -> Result<()> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (mut c, acked, prefix) = (client.clone(), acked.clone(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let (key, value) = (format!("{prefix}/{w}/{i}"), format!("v{i}"));
                match c.put(&key, value.clone()).await {
                    Ok(_) => acked.lock().expect("lock").push((key, value)),
                    Err(_) => break,
                }
            }
        }));
    }
    let target = acked.lock().expect("lock").len() + after;
    crate::support::eventually("writes to be acknowledged", Duration::from_secs(60), || {
        let n = acked.lock().expect("lock").len();
        async move { Ok((n >= target).then_some(())) }
    })
    .await?;
    child.kill()?;
    child.wait()?;
    for t in tasks {
        t.await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let log = dir.path().join("gitcd.log");
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for round in 0..3 {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut child = spawn_gitcd(&repo, port, &log)?;
        let client = Client::ready(addr)
            .await
            .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        // Let the writers get going, then kill in the middle of it.
        write_until_killed(&client, &mut child, &acked, &format!("/crash/{round}"), 8, 100).await?;

        // Restart: every acknowledged write is there.
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut child = spawn_gitcd(&repo, port, &log)?;
        let mut c = Client::ready(addr)
            .await
            .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        let stored = stored(&mut c, "/crash/").await?;
        for (k, v) in acked.lock().expect("lock").iter() {
            assert_eq!(
                stored.get(k.as_bytes()).map(Vec::as_slice),
                Some(v.as_bytes()),
                "acknowledged {k} lost"
            );
        }
        child.kill()?;
        child.wait()?;

        // The repository is consistent: fsck is clean and the refs agree.
        fsck(&repo, &["--no-dangling"]).await?;
        let data = git(&repo, &["rev-parse", "refs/heads/main"])?;
        let named = git(&repo, &["cat-file", "-p", "refs/gitcd/metadata/refs/heads/main:data"])?;
        assert_eq!(data.trim(), named.trim(), "data ref and metadata disagree");
    }
    Ok(())
}

/// gitcd is killed while revisions are acknowledged and not yet in a commit
/// (the journal holds them and a log of them): the next start commits them,
/// and every acknowledged write is there, in a consistent repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_deferred_revisions_commits_them_at_the_next_start() -> Result<()> {
    use common::repo::journal;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let log = dir.path().join("gitcd.log");
    let meta_ref = "refs/gitcd/metadata/refs/heads/main";
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for round in 0.. {
        ensure!(round < 10, "no kill found revisions deferred");
        let port = free_port()?;
        let mut child = spawn_gitcd(&repo, port, &log)?;
        let client = Client::ready(format!("127.0.0.1:{port}").parse()?)
            .await
            .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        write_until_killed(&client, &mut child, &acked, &format!("/deferred/{round}"), 16, 300).await?;
        let deferred = journal::read(&journal::journal_path(&repo, meta_ref))?
            .and_then(|r| r.refs.get("gitcd:deferred").copied().flatten())
            .is_some_and(|id| !id.is_null());
        let before = std::fs::read_to_string(&log)?.len();
        let port = free_port()?;
        let mut child = spawn_gitcd(&repo, port, &log)?;
        let mut c = Client::ready(format!("127.0.0.1:{port}").parse()?)
            .await
            .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        let stored = stored(&mut c, "/deferred/").await?;
        for (k, v) in acked.lock().expect("lock").iter() {
            assert_eq!(
                stored.get(k.as_bytes()).map(Vec::as_slice),
                Some(v.as_bytes()),
                "acknowledged {k} lost"
            );
        }
        drop(c);
        child.kill()?;
        child.wait()?;
        fsck(&repo, &["--no-dangling"]).await?;
        let data = git(&repo, &["rev-parse", "refs/heads/main"])?;
        let named = git(&repo, &["cat-file", "-p", &format!("{meta_ref}:data")])?;
        assert_eq!(data.trim(), named.trim(), "data ref and metadata disagree");
        if deferred {
            let started = &std::fs::read_to_string(&log)?[before..];
            ensure!(
                started.contains("committing revisions acknowledged before a crash"),
                "the start did not commit the deferred revisions: {started}"
            );
            break;
        }
    }
    Ok(())
}

/// gitcd is killed while writes queue, so its refs on disk are behind the
/// journal (or its last revisions wait in the journal for their commit);
/// then someone commits on top of the lagging data ref. The next
/// start merges that commit with the journaled writes: none is lost, the
/// pushed file is a key, and the branch descends from the pushed commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_on_a_lagging_ref_before_the_restart_is_merged() -> Result<()> {
    use common::repo::journal;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let log = dir.path().join("gitcd.log");
    let meta_ref = "refs/gitcd/metadata/refs/heads/main";
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    // Until a kill finds the refs behind (nearly always the first).
    for round in 0.. {
        ensure!(round < 10, "no kill left the refs behind the journal and unlocked");
        let port = free_port()?;
        let mut child = spawn_gitcd(&repo, port, &log)?;
        let client = Client::ready(format!("127.0.0.1:{port}").parse()?)
            .await
            .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        write_until_killed(&client, &mut child, &acked, &format!("/lag/{round}"), 16, 300).await?;
        let recovered =
            journal::read(&journal::journal_path(&repo, meta_ref))?.context("a killed gitcd leaves records")?;
        let journaled = recovered.refs.get("refs/heads/main").copied().flatten();
        let on_disk = git(&repo, &["rev-parse", "refs/heads/main"])?.trim().to_owned();
        // Behind: the ref on disk lags the journal's, or acknowledged
        // revisions wait for their commit in the journal alone.
        let behind = journaled.is_some_and(|j| j != on_disk.as_str())
            || recovered.refs.get("gitcd:deferred").copied().flatten().is_some();
        // A kill inside a ref transaction leaves its lock, which refuses the
        // push below (the next start removes it).
        let locked = repo.join("refs/heads/main.lock").exists();
        if behind && !locked {
            break;
        }
        // Not behind this time, or locked: start again (the next start
        // recovers).
    }

    // A person's commit on top of the ref as it is on disk.
    let work = dir.path().join("work");
    git(
        dir.path(),
        &["clone", "-q", repo.to_str().context("UTF-8 path")?, "work"],
    )?;
    crate::support::commit_files(&work, &[("pushed/x", "from a person")], "a person's commit")?;
    git(&work, &["push", "-q", "origin", "HEAD:refs/heads/main"])?;
    let pushed = git(&work, &["rev-parse", "HEAD"])?.trim().to_owned();

    let port = free_port()?;
    let mut child = spawn_gitcd(&repo, port, &log)?;
    let mut c = Client::ready(format!("127.0.0.1:{port}").parse()?)
        .await
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
    let stored = stored(&mut c, "/").await?;
    for (k, v) in acked.lock().expect("lock").iter() {
        assert_eq!(
            stored.get(k.as_bytes()).map(Vec::as_slice),
            Some(v.as_bytes()),
            "acknowledged {k} lost"
        );
    }
    assert_eq!(
        stored.get(b"/pushed/x".as_slice()).map(Vec::as_slice),
        Some(b"from a person".as_slice())
    );
    child.kill()?;
    child.wait()?;
    git(&repo, &["merge-base", "--is-ancestor", &pushed, "refs/heads/main"]).context("the pushed commit is in main")?;
    fsck(&repo, &["--no-dangling"]).await?;
    Ok(())
}

/// A ref lock left by a writer that died does not block the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_ref_locks_are_cleared_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    crate::support::Gitcd::start(&repo).await?.stop().await?;
    std::fs::write(repo.join("refs/heads/main.lock"), "")?;
    std::fs::create_dir_all(repo.join("refs/gitcd/metadata/refs/heads"))?;
    std::fs::write(repo.join("refs/gitcd/metadata/refs/heads/main.lock"), "")?;
    let gitcd = crate::support::Gitcd::start(&repo).await?;
    let mut c = gitcd.client().await?;
    c.kv.put(PutRequest {
        key: Bytes::from_static(b"/after"),
        value: Bytes::from_static(b"lock"),
        ..Default::default()
    })
    .await?;
    assert!(!repo.join("refs/heads/main.lock").exists());
    gitcd.stop().await?;
    Ok(())
}

/// A machine that loses power loses what the page cache held: packs and refs
/// written without fsync. The journal holds every acknowledged group: a
/// start after the loss puts their packs back, moves the refs forward again,
/// and removes a pack torn by the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_page_cache_is_recovered_from_the_journal() -> Result<()> {
    lose_the_page_cache(50, |i| format!("v{i}").into_bytes(), |_| Ok(()), |_| Ok(()), false).await
}

/// The same with 32 MB of values: the journal's first file fills and the
/// writer moves to the second (its checkpoint follows the first), while a
/// thread fsyncs what the first holds and retires it. The data ref is then
/// rewound to the branch's first commit, which no record of the second file
/// names: the journal's head descends from it, so it is this store's and
/// moves forward (the refs on disk lag the journal while writes queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_page_cache_after_the_journal_moved_to_its_other_file() -> Result<()> {
    let value = |i: usize| {
        let mut value = vec![0u8; 200_000];
        rand::Rng::fill(&mut rand::rng(), &mut value[..]);
        value[0] = i as u8;
        value
    };
    let moved = |repo: &Path| {
        use common::repo::journal;
        let first = journal::journal_path(repo, "refs/gitcd/metadata/refs/heads/main");
        let flags = std::fs::read(journal::second_file(&first))?[13];
        anyhow::ensure!(
            flags == 2,
            "the second file's checkpoint follows the first (flags {flags})"
        );
        Ok(())
    };
    let retired = |repo: &Path| {
        use common::repo::journal;
        let first = journal::journal_path(repo, "refs/gitcd/metadata/refs/heads/main");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::read(&first)?[13] != 1 {
            anyhow::ensure!(std::time::Instant::now() < deadline, "the first file is never retired");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    };
    lose_the_page_cache(40, value, retired, moved, true).await
}

/// Four writers put `per_writer` keys each (values from `value`), gitcd is
/// killed, the page cache "lost" (the journaled packs deleted, the data ref
/// rewound, the metadata ref's file torn, a torn pack added); the next start
/// must bring back every acknowledged write. `settled` waits for the
/// repository before the kill, `killed` checks it just after; `to_root`
/// rewinds the data ref to the branch's first commit instead of the
/// journal's first value.
async fn lose_the_page_cache(
    per_writer: usize,
    value: fn(usize) -> Vec<u8>,
    settled: fn(&Path) -> Result<()>,
    killed: fn(&Path) -> Result<()>,
    to_root: bool,
) -> Result<()> {
    use common::repo::journal;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let log = dir.path().join("gitcd.log");
    let port = free_port()?;
    let mut child = spawn_gitcd(&repo, port, &log)?;
    let client = Client::ready(format!("127.0.0.1:{port}").parse()?)
        .await
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = client.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..per_writer {
                let (key, value) = (format!("/lost/{w}/{i}"), value(i));
                c.put(&key, value.clone()).await?;
                acked.push((key, value));
            }
            anyhow::Ok(acked)
        }));
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await??);
    }
    settled(&repo)?;
    child.kill()?;
    child.wait()?;
    killed(&repo)?;

    // What the page cache held since the last checkpoint is lost: the
    // journaled packs vanish, the data ref goes back to its checkpointed
    // value, the metadata ref's file is torn.
    let meta_ref = "refs/gitcd/metadata/refs/heads/main";
    let recovered = journal::read(&journal::journal_path(&repo, meta_ref))?.context("a killed gitcd leaves records")?;
    assert!(!recovered.packs.is_empty(), "acknowledged groups are journaled");
    let root = git(&repo, &["rev-list", "--max-parents=0", "refs/heads/main"])?
        .trim()
        .to_owned();
    let pack_dir = repo.join("objects").join("pack");
    for pack in &recovered.packs {
        let hex: String = pack.checksum().iter().map(|b| format!("{b:02x}")).collect();
        for ext in ["pack", "idx"] {
            let _ = std::fs::remove_file(pack_dir.join(format!("pack-{hex}.{ext}")));
        }
    }
    let rewound = if to_root {
        ensure!(
            !recovered.seen["refs/heads/main"].iter().any(|s| *s == root),
            "no record names the first commit"
        );
        root
    } else {
        recovered.seen["refs/heads/main"][0].to_string()
    };
    // A kill inside a ref transaction (the commit after the burst) leaves
    // its lock, which the next start clears as stale.
    let _ = std::fs::remove_file(repo.join("refs/heads/main.lock"));
    git(&repo, &["update-ref", "refs/heads/main", &rewound])?;
    // The metadata ref's file was renamed into place, its content never
    // written: empty.
    std::fs::write(repo.join(meta_ref), b"")?;
    // And a group never acknowledged left a torn pack.
    let torn = pack_dir.join(format!("pack-{}.pack", "ab".repeat(20)));
    std::fs::write(&torn, b"PACK\0\0\0\x02 torn by a crash")?;
    std::fs::write(torn.with_extension("idx"), b"\xfftOc torn")?;

    let port = free_port()?;
    let mut child = spawn_gitcd(&repo, port, &log)?;
    let mut c = Client::ready(format!("127.0.0.1:{port}").parse()?)
        .await
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
    let stored = stored(&mut c, "/lost/").await?;
    assert_eq!(stored.len(), acked.len());
    for (k, v) in &acked {
        assert_eq!(
            stored.get(k.as_bytes()).map(Vec::as_slice),
            Some(v.as_slice()),
            "acknowledged {k} lost"
        );
    }
    assert!(!torn.exists(), "the torn pack is removed");
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains("recovered from the journal"), "{text}");
    assert!(text.contains("removing a ref file torn by a crash"), "{text}");
    // A clean stop leaves nothing to recover.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = child.wait()?;
    ensure!(
        status.success(),
        "{status} at a clean stop: {}",
        std::fs::read_to_string(&log)?
    );
    assert!(journal::read(&journal::journal_path(&repo, meta_ref))?.is_none());
    fsck(&repo, &["--no-dangling"]).await?;
    let data = git(&repo, &["rev-parse", "refs/heads/main"])?;
    let named = git(&repo, &["cat-file", "-p", &format!("{meta_ref}:data")])?;
    assert_eq!(data.trim(), named.trim(), "data ref and metadata disagree");
    Ok(())
}
