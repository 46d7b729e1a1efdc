//! Maintenance and Cluster: Status, Alarm (and what NOSPACE and CORRUPT
//! refuse), Hash and HashKV, Defragment, MoveLeader, Downgrade and the
//! membership changes of a single member, differentially against etcd 3.5.

use anyhow::Result;
use bytes::Bytes;
use common::proto::etcdserverpb::{
    AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, DeleteRangeRequest, DowngradeRequest, HashKvRequest,
    HashRequest, LeaseGrantRequest, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest, MoveLeaderRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
    alarm_request::AlarmAction, cluster_client::ClusterClient, downgrade_request::DowngradeAction, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, request_op,
};

use crate::oracle::{Pair, Side, render};
use crate::support::Gitcd;

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    }
}

fn alarm(action: AlarmAction, member: u64, alarm: AlarmType) -> AlarmRequest {
    AlarmRequest {
        action: action as i32,
        member_id: member,
        alarm: alarm as i32,
    }
}

/// Status with what legitimately differs left out: the version (gitcd
/// reports 3.5.16, the oracle is 3.5.1), sizes and raft indexes.
async fn status_errors(s: Side) -> String {
    match MaintenanceClient::new(s.channel).status(StatusRequest {}).await {
        Ok(r) => format!("errors {:?}", r.into_inner().errors),
        Err(e) => format!("error {:?}: {}", e.code(), e.message()),
    }
}

/// Cluster: the single member's answers to membership changes; MoveLeader
/// and Downgrade as a single-member etcd 3.5 answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_member_cluster_answers_match_etcd() -> Result<()> {
    let pair = Pair::start(&[]).await?;
    pair.agree("MemberRemove of an unknown member", |s| async move {
        render(
            ClusterClient::new(s.channel)
                .member_remove(MemberRemoveRequest { id: 1234 })
                .await,
        )
    })
    .await?;
    pair.agree("MemberRemove of the only member", |s| async move {
        render(
            ClusterClient::new(s.channel)
                .member_remove(MemberRemoveRequest { id: s.member_id })
                .await,
        )
    })
    .await?;
    // MemberUpdate of an unknown member: etcd 3.5.1 (the oracle) never
    // answers it (its raft change is refused and the request waits until
    // the client gives up); gitcd answers etcd's error for a member that is
    // not there, as later etcd releases do. Not sent to the oracle.
    let unknown = ClusterClient::new(pair.ours.channel.clone())
        .member_update(MemberUpdateRequest {
            id: 1234,
            peer_ur_ls: vec!["http://127.0.0.1:1".into()],
        })
        .await;
    assert_eq!(render(unknown), "error NotFound: etcdserver: member not found");
    // MemberPromote: etcd 3.5.1 (the oracle) answers it only at times (the
    // request waits on its raft log, and the client often gives up after
    // 30 s), so gitcd's answers are checked alone against etcd 3.5's texts:
    // an unknown member is not found, the member itself is no learner.
    for (id, want) in [
        (1234, "error NotFound: etcdserver: member not found"),
        (
            pair.ours.member_id,
            "error FailedPrecondition: etcdserver: can only promote a learner member",
        ),
    ] {
        let promoted = ClusterClient::new(pair.ours.channel.clone())
            .member_promote(MemberPromoteRequest { id })
            .await;
        assert_eq!(render(promoted), want);
    }
    for id in [Some(1234), None] {
        pair.agree("MoveLeader", |s| async move {
            render(
                MaintenanceClient::new(s.channel)
                    .move_leader(MoveLeaderRequest {
                        target_id: id.unwrap_or(s.member_id),
                    })
                    .await,
            )
        })
        .await?;
    }
    let downgrades = [
        (DowngradeAction::Validate as i32, "3.4"),
        (DowngradeAction::Validate as i32, "3.4.2"),
        (DowngradeAction::Validate as i32, "3.3"),
        (DowngradeAction::Validate as i32, "3.5"),
        (DowngradeAction::Validate as i32, "three"),
        (DowngradeAction::Cancel as i32, ""),
        (DowngradeAction::Enable as i32, "3.3"),
        (7, "3.4"),
    ];
    for (action, version) in downgrades {
        pair.agree(&format!("Downgrade {action} {version}"), |s| async move {
            let r = MaintenanceClient::new(s.channel)
                .downgrade(DowngradeRequest {
                    action,
                    version: version.into(),
                })
                .await;
            // The header's revision is the store's: both are at 1.
            render(r)
        })
        .await?;
    }
    // A downgrade enabled, then cancelled: etcd 3.5.1 (the oracle) times
    // out on ENABLE (`etcdserver: request timed out`), so these answers are
    // checked on gitcd alone, against etcd 3.5's texts.
    let enabled = [
        (DowngradeAction::Enable, "3.4", "DowngradeResponse"),
        (
            DowngradeAction::Validate,
            "3.4",
            "error FailedPrecondition: etcdserver: cluster has a downgrade job in progress",
        ),
        (
            DowngradeAction::Enable,
            "3.4",
            "error FailedPrecondition: etcdserver: cluster has a downgrade job in progress",
        ),
        (DowngradeAction::Cancel, "", "DowngradeResponse"),
        (
            DowngradeAction::Cancel,
            "",
            "error FailedPrecondition: etcdserver: no inflight downgrade job",
        ),
    ];
    for (action, version, want) in enabled {
        let got = render(
            MaintenanceClient::new(pair.ours.channel.clone())
                .downgrade(DowngradeRequest {
                    action: action as i32,
                    version: version.into(),
                })
                .await,
        );
        assert!(got.starts_with(want), "Downgrade {action:?} {version}: {got}");
    }
    // A peer URL update of the member itself is recorded.
    let listed = pair
        .agree("MemberUpdate of the member itself", |s| async move {
            let mut c = ClusterClient::new(s.channel);
            let updated = c
                .member_update(MemberUpdateRequest {
                    id: s.member_id,
                    peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
                })
                .await;
            let peers = updated.map(|r| {
                r.into_inner()
                    .members
                    .into_iter()
                    .map(|m| (m.id, m.peer_ur_ls))
                    .collect::<Vec<_>>()
            });
            let listed = c.member_list(MemberListRequest::default()).await.map(|r| {
                r.into_inner()
                    .members
                    .into_iter()
                    .map(|m| (m.id, m.peer_ur_ls))
                    .collect::<Vec<_>>()
            });
            format!("{peers:?} {listed:?}")
        })
        .await?;
    assert!(listed.contains("2380"), "{listed}");
    // Adding a member: etcd 3.5 accepts it and loses its quorum (the new
    // member never starts); gitcd cannot start one and answers the error
    // etcd gives when a change would leave too few started members. Not
    // sent to the oracle, which would stop answering.
    let s = ClusterClient::new(pair.ours.channel.clone())
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:1".into()],
            is_learner: false,
        })
        .await
        .expect_err("a single member cannot grow");
    assert_eq!(
        s.message(),
        "etcdserver: re-configuration failed due to not enough started members"
    );
    pair.gitcd.stop().await?;
    Ok(())
}

/// Alarms: raised and cleared by clients; NOSPACE refuses what adds data
/// (puts, txns with puts, lease grants) and lets reads and deletes through;
/// CORRUPT refuses every write; Status lists them. The same against etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alarms_match_etcd() -> Result<()> {
    let pair = Pair::start(&[]).await?;
    let put_txn = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put("/t", "1"))),
        }],
        failure: vec![],
    };
    let delete_txn = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"/t"),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let writes = |s: Side| {
        let (put_txn, delete_txn) = (put_txn.clone(), delete_txn.clone());
        async move {
            let mut kv = KvClient::new(s.channel.clone());
            let mut out = vec![
                render(kv.put(put("/a", "1")).await),
                render(kv.txn(put_txn).await),
                render(kv.txn(delete_txn).await),
                render(
                    kv.delete_range(DeleteRangeRequest {
                        key: Bytes::from_static(b"/x"),
                        ..Default::default()
                    })
                    .await,
                ),
                render(
                    kv.range(RangeRequest {
                        key: Bytes::from_static(b"/a"),
                        ..Default::default()
                    })
                    .await,
                ),
                render(
                    LeaseClient::new(s.channel.clone())
                        .lease_grant(LeaseGrantRequest { ttl: 60, id: 9 })
                        .await,
                ),
            ];
            out.push(status_errors(s).await);
            out.join("\n")
        }
    };
    pair.agree("writes without alarms", writes).await?;
    let steps = [
        (AlarmAction::Get, AlarmType::None),
        (AlarmAction::Activate, AlarmType::None),
        (AlarmAction::Deactivate, AlarmType::Nospace),
        (AlarmAction::Activate, AlarmType::Nospace),
        (AlarmAction::Activate, AlarmType::Nospace),
        (AlarmAction::Get, AlarmType::None),
        (AlarmAction::Get, AlarmType::Nospace),
        (AlarmAction::Get, AlarmType::Corrupt),
    ];
    for (action, kind) in steps {
        pair.agree(&format!("alarm {action:?} {kind:?}"), |s| async move {
            render(
                MaintenanceClient::new(s.channel)
                    .alarm(alarm(action, s.member_id, kind))
                    .await,
            )
        })
        .await?;
    }
    pair.agree("writes under NOSPACE", writes).await?;
    pair.agree("disarm NOSPACE", |s| async move {
        render(
            MaintenanceClient::new(s.channel)
                .alarm(alarm(AlarmAction::Deactivate, s.member_id, AlarmType::Nospace))
                .await,
        )
    })
    .await?;
    pair.agree("writes after NOSPACE", writes).await?;
    pair.agree("raise CORRUPT", |s| async move {
        render(
            MaintenanceClient::new(s.channel)
                .alarm(alarm(AlarmAction::Activate, s.member_id, AlarmType::Corrupt))
                .await,
        )
    })
    .await?;
    pair.agree("writes under CORRUPT", |s| {
        let writes = writes(s.clone());
        async move {
            let compact = render(
                KvClient::new(s.channel.clone())
                    .compact(CompactionRequest {
                        revision: 1,
                        physical: false,
                    })
                    .await,
            );
            format!("{}\n{compact}", writes.await)
        }
    })
    .await?;
    pair.agree("disarm CORRUPT", |s| async move {
        render(
            MaintenanceClient::new(s.channel)
                .alarm(alarm(AlarmAction::Deactivate, s.member_id, AlarmType::Corrupt))
                .await,
        )
    })
    .await?;
    pair.agree("writes after CORRUPT", writes).await?;
    pair.gitcd.stop().await?;
    Ok(())
}

/// HashKV: errors as etcd's for compacted and future revisions; the hash is
/// stable for the same data and revision and changes with a write; a past
/// revision hashes as it was. Defragment and Hash answer as etcd's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hashes_and_defragment() -> Result<()> {
    let pair = Pair::start(&[]).await?;
    for side in [&pair.ours, &pair.theirs] {
        let mut kv = KvClient::new(side.channel.clone());
        for i in 0..4 {
            kv.put(put(&format!("/h/{i}"), "v")).await?;
        }
        kv.compact(CompactionRequest {
            revision: 3,
            physical: true,
        })
        .await?;
    }
    for revision in [0, 2, 3, 4, 5, 6, -1] {
        pair.agree(&format!("HashKV {revision}"), |s| async move {
            render(
                MaintenanceClient::new(s.channel)
                    .hash_kv(HashKvRequest { revision })
                    .await,
            )
        })
        .await?;
    }
    pair.agree("Hash", |s| async move {
        render(MaintenanceClient::new(s.channel).hash(HashRequest {}).await)
    })
    .await?;
    pair.agree("Defragment", |s| async move {
        render(MaintenanceClient::new(s.channel).defragment(DefragmentRequest {}).await)
    })
    .await?;

    let mut m = MaintenanceClient::new(pair.ours.channel.clone());
    let mut kv = KvClient::new(pair.ours.channel.clone());
    let at = |m: &mut MaintenanceClient<_>, revision| {
        let mut m = m.clone();
        async move { anyhow::Ok(m.hash_kv(HashKvRequest { revision }).await?.into_inner().hash) }
    };
    let h5 = at(&mut m, 5).await?;
    assert_eq!(h5, at(&mut m, 0).await?, "revision 5 is the current one");
    assert_eq!(h5, at(&mut m, 5).await?, "stable");
    kv.put(put("/h/0", "v")).await?;
    let h6 = at(&mut m, 0).await?;
    assert_ne!(h5, h6, "a write changes the hash (the key's mod revision moved)");
    assert_eq!(h5, at(&mut m, 5).await?, "revision 5, read from Git, hashes as it was");
    let whole = m.hash(HashRequest {}).await?.into_inner().hash;
    assert_ne!(whole, h6, "Hash covers more than the keys");
    pair.gitcd.stop().await?;
    Ok(())
}

/// The quota measures live keys and values: a write that would pass it is
/// refused with etcd's error and raises NOSPACE; reads and deletes go on;
/// deleting and disarming lets writes in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_raises_nospace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gitcd = Gitcd::start_config(common::store::StoreConfig::with_repo(dir.path().join("repo")), |c| {
        c.quota_backend_bytes = Some(10_000)
    })
    .await?;
    let c = gitcd.client().await?;
    let mut kv = c.kv.clone();
    let mut m = c.maintenance.clone();
    kv.put(put("/big", &"x".repeat(8_000))).await?;
    let s = kv
        .put(put("/more", &"y".repeat(3_000)))
        .await
        .expect_err("past the quota");
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        )
    );
    let alarms = m.alarm(AlarmRequest::default()).await?.into_inner().alarms;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].alarm, AlarmType::Nospace as i32);
    let small = kv.put(put("/small", "z")).await.expect_err("NOSPACE refuses every put");
    assert_eq!(small.code(), tonic::Code::ResourceExhausted);
    kv.range(RangeRequest {
        key: Bytes::from_static(b"/big"),
        ..Default::default()
    })
    .await?;
    kv.delete_range(DeleteRangeRequest {
        key: Bytes::from_static(b"/big"),
        ..Default::default()
    })
    .await?;
    let status = m.status(StatusRequest {}).await?.into_inner();
    assert_eq!(status.errors.len(), 1, "{:?}", status.errors);
    assert!(status.errors[0].ends_with("alarm:NOSPACE "), "{:?}", status.errors);
    m.alarm(AlarmRequest {
        action: AlarmAction::Deactivate as i32,
        member_id: alarms[0].member_id,
        alarm: AlarmType::Nospace as i32,
    })
    .await?;
    kv.put(put("/more", &"y".repeat(3_000))).await?;
    gitcd.stop().await?;
    // The alarm was recorded in the metadata: it survives a restart.
    let gitcd = Gitcd::start_config(common::store::StoreConfig::with_repo(dir.path().join("repo")), |c| {
        c.quota_backend_bytes = Some(10_000)
    })
    .await?;
    let mut kv = gitcd.client().await?.kv;
    kv.put(put("/more2", &"y".repeat(8_000)))
        .await
        .expect_err("past the quota again");
    gitcd.stop().await?;
    let gitcd = Gitcd::start(&dir.path().join("repo")).await?;
    let mut c = gitcd.client().await?;
    assert_eq!(
        c.maintenance
            .alarm(AlarmRequest::default())
            .await?
            .into_inner()
            .alarms
            .len(),
        1,
        "the NOSPACE alarm is kept across a restart"
    );
    gitcd.stop().await?;
    Ok(())
}

/// etcdctl 3.4's and 3.5's maintenance commands (`alarm list`, `alarm
/// disarm`, `defrag`, `endpoint hashkv`, `endpoint status` errors) print the
/// same for gitcd as for etcd 3.5, once each server's endpoint is written
/// `<endpoint>` and the hash (gitcd's own, see docs/format.md) `_`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_maintenance_commands_match_etcd() -> Result<()> {
    let pair = Pair::start(&[]).await?;
    let v35 = crate::support::etcdctl35()?;
    let binaries = [std::path::PathBuf::from("etcdctl"), v35];
    let steps: &[&[&str]] = &[
        &["put", "/m/a", "1"],
        &["alarm", "list"],
        &["alarm", "disarm"],
        &["defrag"],
        &["endpoint", "hashkv"],
        &["endpoint", "hashkv", "--rev=1"],
        &["compact", "2"],
        &["endpoint", "hashkv", "--rev=1"],
        &["alarm", "list"],
    ];
    for etcdctl in &binaries {
        for args in steps {
            pair.agree(&format!("{} {args:?}", etcdctl.display()), |s| {
                let etcdctl = etcdctl.clone();
                async move {
                    let out = std::process::Command::new(&etcdctl)
                        .env("ETCDCTL_API", "3")
                        .arg(format!("--endpoints={}", s.endpoint))
                        .arg("--dial-timeout=5s")
                        .args(*args)
                        .output();
                    match out {
                        Ok(o) => {
                            let err: String = String::from_utf8_lossy(&o.stderr)
                                .lines()
                                .filter(|l| !l.starts_with("{\"level\":"))
                                .map(|l| format!("{l}\n"))
                                .collect();
                            let text =
                                format!("ok {}\n{}{err}", o.status.success(), String::from_utf8_lossy(&o.stdout))
                                    .replace(&s.endpoint, "<endpoint>");
                            crate::oracle::scrub_number(&text, "<endpoint>, ")
                        }
                        Err(e) => format!("cannot run {}: {e}", etcdctl.display()),
                    }
                }
            })
            .await?;
        }
    }
    pair.gitcd.stop().await?;
    Ok(())
}
