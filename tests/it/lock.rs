//! v3lock and v3election, differentially against etcd 3.5 over gRPC (the
//! services etcd 3.5 serves on every member), and etcdctl 3.5's `lock` and
//! `elect`.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use common::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseRevokeRequest, RangeRequest, kv_client::KvClient, lease_client::LeaseClient,
};
use common::proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest, election_client::ElectionClient,
};
use common::proto::v3lockpb::{LockRequest, UnlockRequest, lock_client::LockClient};

use crate::oracle::{Pair, Side, render};
use crate::support::eventually;

const A: i64 = 0xa1;
const B: i64 = 0xb2;
const C: i64 = 0xc3;

async fn grant(s: &Side, id: i64) -> String {
    render(
        LeaseClient::new(s.channel.clone())
            .lease_grant(LeaseGrantRequest { ttl: 600, id })
            .await,
    )
}

/// Waits until `key` exists on `s`: a waiter has queued.
async fn queued(s: &Side, key: &str) -> Result<()> {
    let key = Bytes::copy_from_slice(key.as_bytes());
    eventually("the waiter's key", Duration::from_secs(10), || {
        let (channel, key) = (s.channel.clone(), key.clone());
        async move {
            let r = KvClient::new(channel)
                .range(RangeRequest {
                    key,
                    ..Default::default()
                })
                .await?;
            Ok((r.into_inner().count == 1).then_some(()))
        }
    })
    .await
}

/// Lock: taken at once when free, again by the same lease; a second lease
/// waits until the holder unlocks; a lease revoked while waiting ends the
/// wait with etcd's error; a missing lease is refused; Unlock of a missing
/// key answers as etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_matches_etcd() -> Result<()> {
    let pair = Pair::start(&[]).await?;
    pair.agree("lock sequence", |s| async move {
        let mut out = vec![grant(&s, A).await, grant(&s, B).await, grant(&s, C).await];
        let mut lock = LockClient::new(s.channel.clone());
        let name = || Bytes::from_static(b"job");
        out.push(render(lock.lock(LockRequest { name: name(), lease: A }).await));
        out.push(render(lock.lock(LockRequest { name: name(), lease: A }).await));
        let mut waiter = LockClient::new(s.channel.clone());
        let waiting = tokio::spawn(async move { render(waiter.lock(LockRequest { name: name(), lease: B }).await) });
        if let Err(e) = queued(&s, "job/b2").await {
            return format!("{e}");
        }
        out.push(format!("waiting: {}", !waiting.is_finished()));
        out.push(render(
            lock.unlock(UnlockRequest {
                key: Bytes::from_static(b"job/a1"),
            })
            .await,
        ));
        out.push(waiting.await.unwrap_or_else(|e| e.to_string()));
        // A waiter whose lease goes while it waits.
        let mut waiter = LockClient::new(s.channel.clone());
        let waiting = tokio::spawn(async move { render(waiter.lock(LockRequest { name: name(), lease: C }).await) });
        if let Err(e) = queued(&s, "job/c3").await {
            return format!("{e}");
        }
        out.push(render(
            LeaseClient::new(s.channel.clone())
                .lease_revoke(LeaseRevokeRequest { id: C })
                .await,
        ));
        out.push(render(
            lock.unlock(UnlockRequest {
                key: Bytes::from_static(b"job/b2"),
            })
            .await,
        ));
        out.push(waiting.await.unwrap_or_else(|e| e.to_string()));
        out.push(render(
            lock.lock(LockRequest {
                name: name(),
                lease: 0x999,
            })
            .await,
        ));
        // Lease 0: the server grants a session lease (its id is random on
        // both sides, so the key's lease part is written <lease>).
        let session = render(lock.lock(LockRequest { name: name(), lease: 0 }).await);
        out.push(match session.split_once("b\"job/") {
            Some((head, tail)) => format!("{head}b\"job/<lease>{}", &tail[tail.find('"').unwrap_or(0)..]),
            None => session,
        });
        out.push(render(
            lock.unlock(UnlockRequest {
                key: Bytes::from_static(b"nothing"),
            })
            .await,
        ));
        out.join("\n")
    })
    .await?;
    pair.gitcd.stop().await?;
    Ok(())
}

/// etcdctl 3.5's `lock` (the client's own recipe over KV) runs a command
/// holding the lock, on gitcd as on etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_lock_matches_etcd() -> Result<()> {
    let pair = Pair::start(&[]).await?;
    pair.agree("etcdctl lock", |s| async move {
        match crate::support::etcdctl35_run(&s.endpoint, &["lock", "job", "echo", "held"], &[], "") {
            Ok((ok, out, err)) => format!("ok {ok}\n{out}{err}"),
            Err(e) => format!("cannot run etcdctl: {e}"),
        }
    })
    .await?;
    pair.gitcd.stop().await?;
    Ok(())
}

/// Election: no leader; a campaign wins at once; Leader and Proclaim; a
/// second candidate waits until the leader resigns; Proclaim and Resign
/// with a stale or missing leader key; Observe follows proclamations and
/// the next leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn election_matches_etcd() -> Result<()> {
    let pair = Pair::start(&[]).await?;
    pair.agree("election sequence", |s| async move {
        let mut out = vec![grant(&s, A).await, grant(&s, B).await];
        let mut e = ElectionClient::new(s.channel.clone());
        let name = || Bytes::from_static(b"chief");
        let leader_of = |lease: i64, rev: i64| LeaderKey {
            name: name(),
            key: Bytes::from(format!("chief/{lease:x}")),
            rev,
            lease,
        };
        out.push(render(e.leader(LeaderRequest { name: name() }).await));
        let won = e
            .campaign(CampaignRequest {
                name: name(),
                lease: A,
                value: Bytes::from_static(b"a1"),
            })
            .await;
        let a_rev = won
            .as_ref()
            .ok()
            .and_then(|r| r.get_ref().leader.as_ref())
            .map_or(0, |l| l.rev);
        out.push(render(won));
        out.push(render(e.leader(LeaderRequest { name: name() }).await));
        out.push(render(
            e.proclaim(ProclaimRequest {
                leader: Some(leader_of(A, a_rev)),
                value: Bytes::from_static(b"a2"),
            })
            .await,
        ));
        out.push(render(
            e.proclaim(ProclaimRequest {
                leader: Some(leader_of(A, a_rev + 100)),
                value: Bytes::from_static(b"x"),
            })
            .await,
        ));
        out.push(render(
            e.proclaim(ProclaimRequest {
                leader: None,
                value: Bytes::from_static(b"x"),
            })
            .await,
        ));
        out.push(render(e.resign(ResignRequest { leader: None }).await));
        // Campaigning again with the same lease changes the value only.
        out.push(render(
            e.campaign(CampaignRequest {
                name: name(),
                lease: A,
                value: Bytes::from_static(b"a3"),
            })
            .await,
        ));
        let mut observer = ElectionClient::new(s.channel.clone());
        let mut observed = match observer.observe(LeaderRequest { name: name() }).await {
            Ok(r) => r.into_inner(),
            Err(e) => return format!("observe: {e}"),
        };
        let mut candidate = ElectionClient::new(s.channel.clone());
        let waiting = tokio::spawn(async move {
            render(
                candidate
                    .campaign(CampaignRequest {
                        name: name(),
                        lease: B,
                        value: Bytes::from_static(b"b1"),
                    })
                    .await,
            )
        });
        if let Err(e) = queued(&s, "chief/b2").await {
            return format!("{e}");
        }
        out.push(format!("waiting: {}", !waiting.is_finished()));
        out.push(render(
            e.proclaim(ProclaimRequest {
                leader: Some(leader_of(A, a_rev)),
                value: Bytes::from_static(b"a4"),
            })
            .await,
        ));
        out.push(render(
            e.resign(ResignRequest {
                leader: Some(leader_of(A, a_rev)),
            })
            .await,
        ));
        out.push(waiting.await.unwrap_or_else(|e| e.to_string()));
        out.push(render(e.leader(LeaderRequest { name: name() }).await));
        out.push(render(
            e.resign(ResignRequest {
                leader: Some(leader_of(A, a_rev)),
            })
            .await,
        ));
        // What the observer saw: a3 (the leader when it started), a4, then b1.
        for _ in 0..3 {
            let next = tokio::time::timeout(Duration::from_secs(10), observed.message()).await;
            out.push(match next {
                Ok(Ok(Some(m))) => format!("observed {m:?}"),
                Ok(Ok(None)) => "observe ended".into(),
                Ok(Err(e)) => format!("observe error {:?}: {}", e.code(), e.message()),
                Err(_) => "observe: nothing within 10 s".into(),
            });
        }
        out.join("\n")
    })
    .await?;
    pair.gitcd.stop().await?;
    Ok(())
}
