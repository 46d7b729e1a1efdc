//! Grouped commits: when writes queue up, one commit holds several revisions,
//! and every historical read and watch replay stays exact. Checked against a
//! real etcd: the writes gitcd acknowledged are replayed on etcd in revision
//! order, then every revision is read from both, and both replay all events.

use std::time::Duration;

use anyhow::{Result, ensure};
use bytes::Bytes;
use common::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op};
use common::proto::mvccpb::{Event, KeyValue};
use common::store::StoreConfig;

use crate::support::{Client, Etcd, Gitcd, fsck, git};
use crate::watch::{WatchStream, watch_prefix};

const CLIENTS: usize = 24;
const OPS: usize = 30;

/// A write, replayable on another server.
#[derive(Clone, Debug)]
enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
}

fn op(client: usize, i: usize) -> Op {
    let key = |n: usize| Bytes::from(format!("/g/{}", n % 12));
    let value = Bytes::from(format!("c{client}-{i}"));
    match (client + i) % 5 {
        0 => Op::Delete(DeleteRangeRequest {
            key: key(i),
            prev_kv: true,
            ..Default::default()
        }),
        1 => Op::Txn(TxnRequest {
            success: (0..3)
                .map(|n| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key(client + n),
                        value: value.clone(),
                        ..Default::default()
                    })),
                })
                .collect(),
            ..Default::default()
        }),
        _ => Op::Put(PutRequest {
            key: key(client * 7 + i),
            value,
            prev_kv: true,
            ..Default::default()
        }),
    }
}

/// Sends `op`; the revision it made, if it made one.
async fn send(c: &mut Client, op: &Op) -> Result<Option<i64>> {
    Ok(match op {
        Op::Put(p) => c.kv.put(p.clone()).await?.into_inner().header.map(|h| h.revision),
        Op::Delete(d) => {
            let r = c.kv.delete_range(d.clone()).await?.into_inner();
            (r.deleted > 0).then(|| r.header.map(|h| h.revision)).flatten()
        }
        Op::Txn(t) => c.kv.txn(t.clone()).await?.into_inner().header.map(|h| h.revision),
    })
}

/// Every key with its bookkeeping at `revision`.
async fn state_at(c: &mut Client, revision: i64) -> Result<Vec<KeyValue>> {
    let r =
        c.kv.range(RangeRequest {
            key: Bytes::from_static(b"/g/"),
            range_end: Bytes::from_static(b"/g0"),
            revision,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs)
}

/// Every event of the `/g/` prefix from revision 2 to `last`, with previous values.
async fn events(addr: std::net::SocketAddr, last: i64) -> Result<Vec<Event>> {
    let mut w = WatchStream::open(addr).await?;
    let mut create = watch_prefix("/g/", 2);
    create.prev_kv = true;
    w.create(create).await?;
    let mut out: Vec<Event> = Vec::new();
    while out
        .last()
        .and_then(|e| e.kv.as_ref())
        .is_none_or(|kv| kv.mod_revision < last)
    {
        out.extend(w.next(Duration::from_secs(20)).await?.events);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grouped_commits_keep_every_revision_exact() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let gitcd = Gitcd::start(&repo).await?;
    let client = gitcd.client().await?;

    // Many clients at once, so that writes queue up behind each commit.
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0..OPS {
                let op = op(c, i);
                if let Some(rev) = send(&mut client, &op).await? {
                    made.push((rev, op));
                }
            }
            anyhow::Ok(made)
        }));
    }
    let mut made = Vec::new();
    for t in tasks {
        made.extend(t.await??);
    }
    made.sort_by_key(|(rev, _)| *rev);
    let last = made.last().map_or(1, |(rev, _)| *rev);
    ensure!(
        made.iter().map(|(rev, _)| *rev).eq(2..=last),
        "each acknowledged write made the next revision"
    );
    gitcd.stop().await?;

    let log = git(
        &repo,
        &[
            "log",
            "--first-parent",
            "--format=%s",
            "refs/gitcd/metadata/refs/heads/main",
        ],
    )?;
    let grouped = log.lines().filter(|l| l.contains('-')).count();
    ensure!(grouped > 0, "no commit grouped revisions:\n{log}");
    let commits = log.lines().count();
    ensure!(
        (commits as i64) < last,
        "{commits} metadata commits for {last} revisions"
    );
    fsck(&repo, &["--strict"]).await?;

    // The same writes, one by one, on etcd.
    let etcd = Etcd::start().await?;
    let mut oracle = Client::connect(etcd.addr).await?;
    for (rev, op) in &made {
        ensure!(
            send(&mut oracle, op).await? == Some(*rev),
            "etcd gave {op:?} another revision than {rev}"
        );
    }

    // Restarted, with no events in memory: everything comes from Git.
    let mut config = StoreConfig::with_repo(&repo);
    config.history_window = 1;
    let gitcd = Gitcd::start_with(config).await?;
    let mut ours = gitcd.client().await?;
    for rev in 1..=last {
        ensure!(
            state_at(&mut ours, rev).await? == state_at(&mut oracle, rev).await?,
            "state at revision {rev} differs from etcd's"
        );
    }
    let (theirs, mine) = (events(etcd.addr, last).await?, events(gitcd.addr, last).await?);
    ensure!(
        theirs.len() == mine.len(),
        "{} events, etcd has {}",
        mine.len(),
        theirs.len()
    );
    for (a, b) in theirs.iter().zip(&mine) {
        ensure!(a == b, "event differs from etcd's:\n{b:?}\n{a:?}");
    }
    gitcd.stop().await?;

    // One revision per commit when asked.
    let strict = dir.path().join("strict");
    let mut config = StoreConfig::with_repo(&strict);
    config.max_commit_revisions = 1;
    let gitcd = Gitcd::start_with(config).await?;
    let mut tasks = Vec::new();
    for c in 0..8 {
        let mut client = gitcd.client().await?;
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let put = PutRequest {
                    key: Bytes::from(format!("/s/{c}")),
                    value: Bytes::from(format!("{i}")),
                    ..Default::default()
                };
                client.kv.put(put).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // One at a time: a commit, and a pack, each.
    let mut client = gitcd.client().await?;
    for i in 0..150 {
        let put = PutRequest {
            key: Bytes::from_static(b"/s/seq"),
            value: Bytes::from(format!("{i}")),
            ..Default::default()
        };
        client.kv.put(put).await?;
    }
    gitcd.stop().await?;
    let log = git(
        &strict,
        &[
            "log",
            "--first-parent",
            "--format=%s",
            "refs/gitcd/metadata/refs/heads/main",
        ],
    )?;
    ensure!(log.lines().count() == 231, "230 writes and the first commit:\n{log}");
    ensure!(
        !log.contains('-'),
        "a commit grouped revisions with --max-commit-revisions=1"
    );

    // Each group was one pack (over 150 of them); every 128 are folded into
    // one whose trees are deltas, and folded packs merge geometrically: fewer
    // remain, and they hold deltas.
    let packs: Vec<_> = std::fs::read_dir(strict.join("objects/pack"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    ensure!(packs.len() < 128, "{} packs after over 150 groups", packs.len());
    let mut deltas = false;
    for idx in &packs {
        // A pack merged away meanwhile is not looked at.
        if let Ok(v) = git(&strict, &["verify-pack", "-v", &idx.display().to_string()]) {
            deltas |= v.contains("chain length = 1:");
        }
    }
    ensure!(deltas, "no pack holds a delta");
    fsck(&strict, &["--strict"]).await?;
    Ok(())
}
