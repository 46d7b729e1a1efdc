//! Namespaces: one gitcd serving two tenants on their own listeners
//! (`--namespace-listen-urls`), against etcd 3.5 with one
//! `etcd grpc-proxy start --namespace` in front of it per tenant. The same
//! requests through each tenant's endpoint on both sides, and the whole
//! key space seen without a namespace, must agree.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use common::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest, compare, kv_client::KvClient, lease_client::LeaseClient, request_op,
    watch_client::WatchClient, watch_request,
};
use tonic::transport::Channel;

use crate::oracle::{Pair, Side, render};
use crate::support::Proxy;

const TENANT_A: &str = "/tenant-a/";
const TENANT_B: &str = "/tenant-b/";

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

fn put(k: &[u8], v: &str) -> PutRequest {
    PutRequest {
        key: b(k),
        value: b(v.as_bytes()),
        prev_kv: true,
        ..Default::default()
    }
}

fn range(k: &[u8], end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    }
}

fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

async fn connect(addr: std::net::SocketAddr) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .timeout(Duration::from_secs(30))
        .connect()
        .await?)
}

/// One tenant's requests: puts, ranges of every shape (a key, a prefix,
/// from a key on, everything, an empty key), a txn with compares and
/// nested ops, deletes with prev_kv, a key on a lease.
async fn tenant_ops(channel: Channel, tag: &str, lease: i64) -> Vec<String> {
    let mut kv = KvClient::new(channel.clone());
    let mut out = Vec::new();
    for (k, v) in [(&b"a"[..], "1"), (b"b", "2"), (b"c/d", "3"), (b"c/e", "4"), (b"a", "5")] {
        out.push(render(kv.put(put(k, &format!("{tag}{v}"))).await));
    }
    for (k, end) in [
        (&b"\0"[..], &b"\0"[..]),
        (b"c/", b"c0"),
        (b"b", b"\0"),
        (b"a", b""),
        (b"", b""),
        (b"", b"\0"),
        (b"zz", b"a"),
    ] {
        out.push(render(kv.range(range(k, end)).await));
    }
    out.push(render(
        kv.range(RangeRequest {
            limit: 1,
            ..range(b"\0", b"\0")
        })
        .await,
    ));
    let txn = TxnRequest {
        compare: vec![
            Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: b(b"a"),
                target_union: Some(compare::TargetUnion::Value(b(format!("{tag}5").as_bytes()))),
                range_end: Bytes::new(),
            },
            Compare {
                result: compare::CompareResult::Greater as i32,
                target: compare::CompareTarget::Version as i32,
                key: b(b"c/"),
                target_union: Some(compare::TargetUnion::Version(0)),
                range_end: b(b"c0"),
            },
        ],
        success: vec![
            op(request_op::Request::RequestPut(put(b"a", &format!("{tag}6")))),
            op(request_op::Request::RequestRange(range(b"c/", b"c0"))),
            op(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: b(b"b"),
                prev_kv: true,
                ..Default::default()
            })),
            op(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success: vec![op(request_op::Request::RequestRange(RangeRequest {
                    keys_only: true,
                    ..range(b"\0", b"\0")
                }))],
                failure: vec![],
            })),
        ],
        failure: vec![],
    };
    out.push(render(kv.txn(txn).await));
    out.push(render(
        kv.delete_range(DeleteRangeRequest {
            key: b(b"c/"),
            range_end: b(b"c0"),
            prev_kv: true,
        })
        .await,
    ));
    out.push(render(
        kv.delete_range(DeleteRangeRequest {
            key: Bytes::new(),
            ..Default::default()
        })
        .await,
    ));
    let mut leases = LeaseClient::new(channel);
    out.push(render(
        leases.lease_grant(LeaseGrantRequest { ttl: 600, id: lease }).await,
    ));
    out.push(render(
        kv.put(PutRequest {
            lease,
            ..put(b"leased", "x")
        })
        .await,
    ));
    out.push(render(
        leases
            .lease_time_to_live(LeaseTimeToLiveRequest { id: lease, keys: true })
            .await,
    ));
    out
}

/// Two tenants side by side, a watcher on each, and keys next to the
/// prefixes (the prefix itself, a key sorting just past it) that no tenant
/// may see.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaces_match_etcd_grpc_proxy() -> Result<()> {
    let pair = Pair::start_with(&[], |c| {
        for prefix in [TENANT_A, TENANT_B] {
            c.tenants.push(common::server::Tenant {
                prefix: b(prefix.as_bytes()),
                listen: vec![common::http::ListenUrl {
                    addr: "127.0.0.1:0".parse().expect("a loopback address"),
                    tls: false,
                }],
            });
        }
    })
    .await?;
    let proxy_a = Proxy::start(pair._etcd.addr, TENANT_A).await?;
    let proxy_b = Proxy::start(pair._etcd.addr, TENANT_B).await?;
    let ours = (
        connect(pair.gitcd.tenants[0]).await?,
        connect(pair.gitcd.tenants[1]).await?,
    );
    let theirs = (connect(proxy_a.addr).await?, connect(proxy_b.addr).await?);
    let run = |raw: Side, (a, z): (Channel, Channel)| async move {
        let mut out = Vec::new();
        let mut kv = KvClient::new(raw.channel.clone());
        for k in ["/tenant-a/", "/tenant-a", "/tenant-a0", "/tenant-a/\0"] {
            out.push(render(kv.put(put(k.as_bytes(), "outside")).await));
        }
        // A watcher on each tenant, on everything it can see, with prev_kv.
        let mut watches = Vec::new();
        for channel in [&a, &z] {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let _ = tx
                .send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                        key: b(b"\0"),
                        range_end: b(b"\0"),
                        prev_kv: true,
                        ..Default::default()
                    })),
                })
                .await;
            match WatchClient::new(channel.clone())
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(r) => {
                    let mut stream = r.into_inner();
                    let created = stream.message().await;
                    out.push(format!("created {:?}", created.map(|m| m.map(|m| m.created))));
                    watches.push((tx, stream));
                }
                Err(e) => out.push(format!("watch: {e}")),
            }
        }
        out.extend(tenant_ops(a.clone(), "A", 0x100).await);
        out.extend(tenant_ops(z.clone(), "B", 0x200).await);
        for (i, channel) in [&a, &z].into_iter().enumerate() {
            out.push(render(KvClient::new(channel.clone()).put(put(b"end", "x")).await));
            let Some((_, stream)) = watches.get_mut(i) else {
                continue;
            };
            // Every event up to the tenant's own "end".
            loop {
                match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                    Ok(Ok(Some(m))) => {
                        let last = m.events.iter().any(|e| e.kv.as_ref().is_some_and(|kv| kv.key == "end"));
                        out.push(format!("watch {i}: {:?}", m.events));
                        if last {
                            break;
                        }
                    }
                    other => {
                        out.push(format!("watch {i} ended: {other:?}"));
                        break;
                    }
                }
            }
        }
        out.push(render(
            kv.range(RangeRequest {
                keys_only: true,
                ..range(b"\0", b"\0")
            })
            .await,
        ));
        // A lease's remaining TTL depends on when the second ticks.
        crate::oracle::scrub_number(&raw.normalise(&out.join("\n")), "ttl: ")
    };
    let a = run(pair.ours.clone(), ours).await;
    let b = run(pair.theirs.clone(), theirs).await;
    if a != b {
        for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
            if x != y {
                anyhow::bail!("line {i} disagrees\n  gitcd: {x}\n  etcd:  {y}\n\ngitcd's whole answer:\n{a}");
            }
        }
        anyhow::bail!("the answers differ in length\n  gitcd: {a}\n  etcd:  {b}");
    }
    anyhow::ensure!(
        a.contains("watch 0: [Event") && a.contains("watch 1: [Event") && !a.contains("ended"),
        "each tenant's watcher saw its events: {a}"
    );
    for (tenant, other) in [("watch 0", "B1"), ("watch 1", "A1")] {
        let leaked = a.lines().any(|l| l.starts_with(tenant) && l.contains(other));
        anyhow::ensure!(!leaked, "{tenant} saw the other tenant's {other}");
    }
    // etcdctl 3.5 through tenant A's endpoint on both sides.
    let steps: &[&[&str]] = &[
        &["put", "x", "1"],
        &["put", "y/z", "2", "--prev-kv"],
        &["get", "", "--prefix"],
        &["get", "y/", "--prefix", "--keys-only"],
        &["get", "--from-key", "b", "--keys-only"],
        &["get", "x", "-w", "fields"],
        &["del", "y/", "--prefix", "--prev-kv"],
        &["del", "nothing"],
        &["get", ""],
    ];
    let endpoints = [
        (pair.gitcd.tenants[0].to_string(), &pair.ours),
        (proxy_a.addr.to_string(), &pair.theirs),
    ];
    for args in steps {
        let mut answers = Vec::new();
        for (endpoint, side) in &endpoints {
            let (ok, out, err) = crate::support::etcdctl35_run(endpoint, args, &[], "")?;
            // etcdctl's retry logs carry a time stamp and a resolver address.
            let err: String = err.lines().filter(|l| !l.starts_with("{\"level\":")).collect();
            let text = format!("ok {ok}\n{out}{err}");
            // Cluster ids and raft terms, as in every comparison (see oracle.rs).
            let text = crate::oracle::scrub_number(&side.normalise(&text), "\"ClusterID\" : ");
            answers.push(crate::oracle::scrub_number(&text, "\"RaftTerm\" : "));
        }
        anyhow::ensure!(
            answers[0] == answers[1],
            "etcdctl {args:?} disagrees\n  gitcd: {}\n  etcd:  {}",
            answers[0],
            answers[1]
        );
    }
    pair.gitcd.stop().await?;
    Ok(())
}

/// `--namespace` on the main listener: its clients' keys (locks' too) are
/// stored under the prefix (the data tree shows them there) and come back
/// without it; Snapshot is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespaced_listener_stores_under_its_prefix() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let gitcd = crate::support::Gitcd::start_config(common::store::StoreConfig::with_repo(&repo), |c| {
        c.namespace = b(b"/solo/");
    })
    .await?;
    let channel = connect(gitcd.addr).await?;
    let mut kv = KvClient::new(channel.clone());
    kv.put(put(b"k", "v")).await?;
    // A lock taken through the namespace lives in it too.
    let lock = common::proto::v3lockpb::lock_client::LockClient::new(channel.clone())
        .lock(common::proto::v3lockpb::LockRequest {
            name: b(b"job"),
            lease: 0,
        })
        .await?
        .into_inner();
    anyhow::ensure!(lock.key.starts_with(b"job/"), "{:?}", lock.key);
    let got = kv.range(range(b"\0", b"\0")).await?.into_inner();
    let keys: Vec<&[u8]> = got.kvs.iter().map(|kv| kv.key.as_ref()).collect();
    anyhow::ensure!(keys == [&lock.key[..], &b"k"[..]], "{keys:?}");
    // A snapshot would hold every tenant's keys: refused.
    let mut snapshot = common::proto::etcdserverpb::maintenance_client::MaintenanceClient::new(channel)
        .snapshot(common::proto::etcdserverpb::SnapshotRequest {})
        .await;
    let refused = match &mut snapshot {
        Ok(stream) => stream.get_mut().message().await.err(),
        Err(e) => Some(e.clone()),
    };
    anyhow::ensure!(
        refused.as_ref().map(|e| e.message()) == Some("etcdserver: permission denied"),
        "{refused:?}"
    );
    gitcd.stop().await?;
    let stored = crate::support::git(&repo, &["show", "refs/heads/main:solo/k"])?;
    anyhow::ensure!(stored == "v", "{stored}");
    let files = crate::support::git(&repo, &["ls-tree", "-r", "--name-only", "refs/heads/main"])?;
    anyhow::ensure!(files.lines().any(|f| f.starts_with("solo/job/")), "{files}");
    Ok(())
}
