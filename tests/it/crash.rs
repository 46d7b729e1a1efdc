//! Crash safety: `gitcd serve` killed with SIGKILL while clients write loses
//! no acknowledged write and leaves a consistent repository.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use common::proto::etcdserverpb::{PutRequest, RangeRequest};

use crate::support::{Client, free_port, fsck, git};

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
        let mut writers = Vec::new();
        for w in 0..8 {
            let mut c = client.clone();
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/crash/{round}/{w}/{i}");
                    let value = format!("v{i}");
                    let put = PutRequest {
                        key: Bytes::from(key.clone()),
                        value: Bytes::from(value.clone()),
                        ..Default::default()
                    };
                    match c.kv.put(put).await {
                        Ok(_) => acked.lock().expect("lock").push((key, value)),
                        Err(_) => break,
                    }
                }
            }));
        }
        // Let the writers get going, then kill in the middle of it.
        let target = acked.lock().expect("lock").len() + 100;
        crate::support::eventually("writes to be acknowledged", Duration::from_secs(60), || {
            let n = acked.lock().expect("lock").len();
            async move { Ok((n >= target).then_some(())) }
        })
        .await?;
        child.kill()?;
        child.wait()?;
        for w in writers {
            w.await?;
        }

        // Restart: every acknowledged write is there.
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut child = spawn_gitcd(&repo, port, &log)?;
        let mut c = Client::ready(addr)
            .await
            .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        let r =
            c.kv.range(RangeRequest {
                key: Bytes::from_static(b"/crash/"),
                range_end: Bytes::from_static(b"/crash0"),
                ..Default::default()
            })
            .await?
            .into_inner();
        let stored: std::collections::HashMap<Vec<u8>, Vec<u8>> = r
            .kvs
            .into_iter()
            .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
            .collect();
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
