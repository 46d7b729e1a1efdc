//! Leases: grant, keep-alive, time-to-live, list, revoke and expiry, against
//! gitcd and side by side with a real etcd; and after a restart.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use common::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, WatchCreateRequest,
};
use common::proto::mvccpb::event::EventType;

use crate::support::{Client, Etcd, Gitcd, eventually};
use crate::watch::{WatchStream, watch_prefix};

fn put_leased(k: &str, lease: i64) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::from_static(b"v"),
        lease,
        ..Default::default()
    }
}

async fn keep_alive_once(c: &Client, id: i64) -> Result<i64> {
    let mut lease = c.lease.clone();
    let mut answers = lease
        .lease_keep_alive(tokio_stream::iter([LeaseKeepAliveRequest { id }]))
        .await?
        .into_inner();
    Ok(answers.message().await?.map_or(-100, |r| r.ttl))
}

/// The lease lifecycle answers as etcd's do (timing-dependent TTLs aside).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_lifecycle_matches_etcd() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gitcd = Gitcd::start(&dir.path().join("repo")).await?;
    let etcd = Etcd::start().await?;
    let mut transcripts = Vec::new();
    for addr in [gitcd.addr, etcd.addr] {
        let mut c = Client::connect(addr).await?;
        let mut t = Vec::new();
        let g = c
            .lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 42 })
            .await?
            .into_inner();
        t.push(format!("grant {} {}", g.id, g.ttl));
        let g = c
            .lease
            .lease_grant(LeaseGrantRequest { ttl: 1, id: 43 })
            .await?
            .into_inner();
        t.push(format!("grant min {} {}", g.id, g.ttl));
        // Out of the way before it could expire on a slow machine.
        c.lease.lease_revoke(LeaseRevokeRequest { id: 43 }).await?;
        let g = c
            .lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await?
            .into_inner();
        t.push(format!("grant auto positive={}", g.id > 0));
        c.lease.lease_revoke(LeaseRevokeRequest { id: g.id }).await?;
        for id in [42, 42] {
            let e = c.lease.lease_grant(LeaseGrantRequest { ttl: 60, id }).await;
            t.push(format!(
                "{:?}",
                e.map(|r| r.into_inner().id)
                    .map_err(|s| (s.code(), s.message().to_owned()))
            ));
        }
        c.kv.put(put_leased("/l/a", 42)).await?;
        c.kv.put(put_leased("/l/b", 42)).await?;
        let e = c.kv.put(put_leased("/l/c", 4242)).await;
        t.push(format!(
            "{:?}",
            e.map(|_| ()).map_err(|s| (s.code(), s.message().to_owned()))
        ));
        let ttl = c
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id: 42, keys: true })
            .await?
            .into_inner();
        // etcd lists a lease's keys in Go map order: compare them as a set.
        let mut keys = ttl.keys.clone();
        keys.sort();
        t.push(format!(
            "ttl id={} granted={} keys={:?} left_ok={}",
            ttl.id,
            ttl.granted_ttl,
            keys,
            ttl.ttl > 55
        ));
        let ttl = c
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id: 4242, keys: true })
            .await?
            .into_inner();
        t.push(format!(
            "ttl unknown id={} ttl={} granted={}",
            ttl.id, ttl.ttl, ttl.granted_ttl
        ));
        t.push(format!("keepalive {}", keep_alive_once(&c, 42).await?));
        t.push(format!("keepalive unknown {}", keep_alive_once(&c, 4242).await?));
        let mut leases: Vec<i64> = c
            .lease
            .lease_leases(LeaseLeasesRequest {})
            .await?
            .into_inner()
            .leases
            .iter()
            .map(|l| l.id)
            .collect();
        leases.sort();
        t.push(format!("leases {leases:?}"));
        let r = c.lease.lease_revoke(LeaseRevokeRequest { id: 42 }).await?.into_inner();
        t.push(format!("revoke rev={}", r.header.map_or(0, |h| h.revision)));
        let e = c.lease.lease_revoke(LeaseRevokeRequest { id: 42 }).await;
        t.push(format!(
            "{:?}",
            e.map(|_| ()).map_err(|s| (s.code(), s.message().to_owned()))
        ));
        let r =
            c.kv.range(RangeRequest {
                key: Bytes::from_static(b"/l/"),
                range_end: Bytes::from_static(b"/l0"),
                ..Default::default()
            })
            .await?
            .into_inner();
        t.push(format!("left {} at {}", r.count, r.header.map_or(0, |h| h.revision)));
        let e = c
            .lease
            .lease_grant(LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 44,
            })
            .await;
        t.push(format!(
            "{:?}",
            e.map(|_| ()).map_err(|s| (s.code(), s.message().to_owned()))
        ));
        transcripts.push(t);
    }
    assert_eq!(transcripts[0], transcripts[1]);
    gitcd.stop().await?;
    Ok(())
}

/// An expired lease deletes its keys in one revision, with DELETE events
/// carrying the previous values; keep-alive holds it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_deletes_keys_in_one_revision() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    let short = c
        .lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await?
        .into_inner()
        .id;
    let kept = c
        .lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await?
        .into_inner()
        .id;
    for i in 0..5 {
        c.kv.put(put_leased(&format!("/e/{i}"), short)).await?;
    }
    c.kv.put(put_leased("/e/kept", kept)).await?;
    let mut watch = WatchStream::open(gitcd.addr).await?;
    watch
        .create(WatchCreateRequest {
            prev_kv: true,
            ..watch_prefix("/e/", 0)
        })
        .await?;
    assert!(watch.next(Duration::from_secs(5)).await?.created);
    let started = Instant::now();
    let keeper = {
        let c = c.clone();
        tokio::spawn(async move {
            for _ in 0..8 {
                let _ = keep_alive_once(&c, kept).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let r = watch.next(Duration::from_secs(10)).await?;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(8),
        "expired after {elapsed:?}"
    );
    assert_eq!(r.events.len(), 5, "all keys of the lease in one response");
    let revs: Vec<i64> = r
        .events
        .iter()
        .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
        .collect();
    assert!(revs.iter().all(|r| *r == revs[0]), "one revision: {revs:?}");
    for e in &r.events {
        assert_eq!(e.r#type, EventType::Delete as i32);
        assert_eq!(e.prev_kv.as_ref().map(|p| p.lease), Some(short));
    }
    let ttl = c
        .lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id: short, keys: false })
        .await?
        .into_inner();
    assert_eq!(ttl.ttl, -1);
    keeper.await?;
    let r =
        c.kv.range(RangeRequest {
            key: Bytes::from_static(b"/e/kept"),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(r.count, 1, "a lease kept alive does not expire");
    gitcd.stop().await?;
    Ok(())
}

/// Leases survive a restart, with a fresh TTL, and still expire after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_survive_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let gitcd = Gitcd::start(&repo).await?;
    let mut c = gitcd.client().await?;
    c.lease.lease_grant(LeaseGrantRequest { ttl: 3, id: 7 }).await?;
    c.lease.lease_grant(LeaseGrantRequest { ttl: 1000, id: 8 }).await?;
    c.kv.put(put_leased("/r/a", 7)).await?;
    c.kv.put(put_leased("/r/b", 8)).await?;
    gitcd.stop().await?;

    let gitcd = Gitcd::start(&repo).await?;
    let mut c = gitcd.client().await?;
    let ttl = c
        .lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id: 8, keys: true })
        .await?
        .into_inner();
    assert_eq!((ttl.granted_ttl, ttl.keys), (1000, vec![Bytes::from_static(b"/r/b")]));
    assert!(ttl.ttl > 990);
    let c2 = c.clone();
    eventually("lease 7 to expire after the restart", Duration::from_secs(10), || {
        let mut c = c2.clone();
        async move {
            let r =
                c.kv.range(RangeRequest {
                    key: Bytes::from_static(b"/r/a"),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.count == 0).then_some(()))
        }
    })
    .await?;
    let leases = c.lease.lease_leases(LeaseLeasesRequest {}).await?.into_inner().leases;
    assert_eq!(leases.iter().map(|l| l.id).collect::<Vec<_>>(), vec![8]);
    gitcd.stop().await?;
    Ok(())
}
