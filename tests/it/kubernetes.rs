//! Ports of Kubernetes' storage-layer scenarios (k8s.io/apiserver
//! pkg/storage/etcd3), made with exactly the etcd calls kube-apiserver makes.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use common::proto::etcdserverpb::{
    CompactionRequest, Compare, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse, WatchCreateRequest, compare, request_op, response_op,
};
use common::proto::mvccpb::event::EventType;

use crate::support::{Client, Gitcd};
use crate::watch::{WatchStream, watch_prefix};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn prefix_end(prefix: &str) -> Bytes {
    let mut e = prefix.as_bytes().to_vec();
    if let Some(l) = e.last_mut() {
        *l += 1;
    }
    Bytes::from(e)
}

fn rev(h: &Option<common::proto::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// store.go `Create`: `Txn(If(ModRevision(key) = 0)).Then(OpPut(key, data, lease?))`.
async fn create(c: &mut Client, key: &str, value: &str, lease: i64) -> Result<TxnResponse> {
    optimistic_put(c, key, value, 0, lease).await
}

/// store.go `GuaranteedUpdate`: `Txn(If(ModRevision(key) = rev)).Then(OpPut).Else(OpGet(key))`.
async fn optimistic_put(c: &mut Client, key: &str, value: &str, expected: i64, lease: i64) -> Result<TxnResponse> {
    Ok(c.kv
        .txn(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: b(key),
                target_union: Some(compare::TargetUnion::ModRevision(expected)),
                range_end: Bytes::new(),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b(key),
                    value: b(value),
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b(key),
                    ..Default::default()
                })),
            }],
        })
        .await?
        .into_inner())
}

/// store.go `List`: one page.
async fn list_page(c: &mut Client, prefix: &str, start: Bytes, limit: i64, revision: i64) -> Result<RangeResponse> {
    Ok(c.kv
        .range(RangeRequest {
            key: start,
            range_end: prefix_end(prefix),
            limit,
            revision,
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// List paging: continue tokens pin every page to the first page's
/// revision, while writers change the collection in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_pages_are_pinned_to_the_first_revision() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    let prefix = "/registry/pods/default/";
    for i in 0..25 {
        create(&mut c, &format!("{prefix}pod-{i:02}"), &format!("v1 {i}"), 0).await?;
    }
    let first = list_page(&mut c, prefix, b(prefix), 10, 0).await?;
    let pinned = rev(&first.header);
    assert_eq!((first.kvs.len(), first.more, first.count), (10, true, 25));
    let mut names: Vec<Bytes> = first.kvs.iter().map(|kv| kv.key.clone()).collect();
    let mut next = first.kvs.last().map(|kv| kv.key.clone());
    let mut writes = 0;
    while let Some(last) = next {
        // Writers keep going between pages.
        create(&mut c, &format!("{prefix}pod-new-{writes}"), "new", 0).await?;
        let victim = format!("{prefix}pod-{:02}", 20 + writes);
        let current =
            c.kv.range(RangeRequest {
                key: b(&victim),
                ..Default::default()
            })
            .await?
            .into_inner();
        optimistic_put(&mut c, &victim, "v2", current.kvs[0].mod_revision, 0).await?;
        writes += 1;
        let mut start = last.to_vec();
        start.push(0);
        let page = list_page(&mut c, prefix, Bytes::from(start), 10, pinned).await?;
        ensure!(rev(&page.header) > pinned, "header is the current revision");
        for kv in &page.kvs {
            ensure!(
                kv.mod_revision <= pinned,
                "{:?} is newer than the pinned revision",
                kv.key
            );
            ensure!(kv.value.starts_with(b"v1"), "a page shows the pinned state");
        }
        names.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        next = if page.more {
            page.kvs.last().map(|kv| kv.key.clone())
        } else {
            None
        };
    }
    assert_eq!(names.len(), 25);
    assert!(names.windows(2).all(|w| w[0] < w[1]));
    // remainingItemCount = count - limit on the next page, at the pinned revision.
    let second = list_page(&mut c, prefix, b(&format!("{prefix}pod-09\0")), 10, pinned).await?;
    assert_eq!(second.count, 15);
    // A consistent list (limit 1, current revision) sees the new objects.
    let now = list_page(&mut c, prefix, b(prefix), 1, 0).await?;
    assert_eq!(now.count, 25 + writes);
    gitcd.stop().await?;
    Ok(())
}

/// GuaranteedUpdate under contention: conflicts are answered with the
/// current object (the Else Get), retries succeed, no update is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guaranteed_update_with_conflicts() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    let key = "/registry/configmaps/default/counter";
    create(&mut c, key, "0", 0).await?;
    let workers = 6;
    let per_worker = 15;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            let r =
                c.kv.range(RangeRequest {
                    key: b(key),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut current = (r.kvs[0].mod_revision, String::from_utf8(r.kvs[0].value.to_vec())?);
            let mut done = 0;
            while done < per_worker {
                let n: i64 = current.1.parse()?;
                let resp = optimistic_put(&mut c, key, &(n + 1).to_string(), current.0, 0).await?;
                if resp.succeeded {
                    done += 1;
                    current = (rev(&resp.header), (n + 1).to_string());
                } else {
                    conflicts += 1;
                    let Some(response_op::Response::ResponseRange(r)) = &resp.responses[0].response else {
                        anyhow::bail!("the else branch answers with the object");
                    };
                    current = (r.kvs[0].mod_revision, String::from_utf8(r.kvs[0].value.to_vec())?);
                }
            }
            anyhow::Ok(conflicts)
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await??;
    }
    let r =
        c.kv.range(RangeRequest {
            key: b(key),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(r.kvs[0].value, b(&(workers * per_worker).to_string()));
    assert_eq!(r.kvs[0].version, 1 + (workers * per_worker) as i64);
    assert!(conflicts > 0, "the workers did contend");
    gitcd.stop().await?;
    Ok(())
}

/// compact.go: a CAS on `compact_rev_key`'s VERSION, then Compact of the
/// previous round's revision; newer kube-apiservers also watch the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_loop_on_compact_rev_key() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    let mut watch = WatchStream::open(gitcd.addr).await?;
    watch
        .create(WatchCreateRequest {
            key: b("compact_rev_key"),
            ..Default::default()
        })
        .await?;
    assert!(watch.next(Duration::from_secs(5)).await?.created);
    let mut version = 0i64;
    let mut previous = 0i64;
    for round in 0..4 {
        for i in 0..3 {
            c.kv.put(PutRequest {
                key: b(&format!("/registry/events/default/e-{round}-{i}")),
                value: b("x"),
                ..Default::default()
            })
            .await?;
        }
        let current = rev(&c
            .kv
            .range(RangeRequest {
                key: b("/registry/health"),
                ..Default::default()
            })
            .await?
            .into_inner()
            .header);
        let resp =
            c.kv.txn(TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Version as i32,
                    key: b("compact_rev_key"),
                    target_union: Some(compare::TargetUnion::Version(version)),
                    range_end: Bytes::new(),
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b("compact_rev_key"),
                        value: b(&current.to_string()),
                        ..Default::default()
                    })),
                }],
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: b("compact_rev_key"),
                        ..Default::default()
                    })),
                }],
            })
            .await?
            .into_inner();
        assert!(resp.succeeded, "round {round}: the CAS clock matches");
        version += 1;
        let event = watch.next(Duration::from_secs(5)).await?;
        let kv = event.events[0].kv.clone().unwrap_or_default();
        assert_eq!((kv.value, kv.version), (b(&current.to_string()), version));
        if previous > 0 {
            c.kv.compact(CompactionRequest {
                revision: previous,
                physical: false,
            })
            .await?;
            let old =
                c.kv.range(RangeRequest {
                    key: b("/"),
                    range_end: b("0"),
                    revision: previous - 1,
                    ..Default::default()
                })
                .await;
            let s = old.expect_err("below the compact revision");
            assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
            let at =
                c.kv.range(RangeRequest {
                    key: b("/"),
                    range_end: b("0"),
                    revision: previous,
                    ..Default::default()
                })
                .await?;
            assert_eq!(rev(&at.into_inner().header), rev(&resp.header));
        }
        previous = current;
    }
    gitcd.stop().await?;
    Ok(())
}

/// watcher.go: watch from a resource version with prev_kv; updates and
/// deletes carry the previous object, creates do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_from_resource_version_with_prev_kv() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    let prefix = "/registry/secrets/ns/";
    let created = create(&mut c, &format!("{prefix}a"), "1", 0).await?;
    let rv = rev(&created.header);
    optimistic_put(&mut c, &format!("{prefix}a"), "2", rv, 0).await?;
    c.kv.delete_range(common::proto::etcdserverpb::DeleteRangeRequest {
        key: b(&format!("{prefix}a")),
        ..Default::default()
    })
    .await?;
    create(&mut c, &format!("{prefix}b"), "1", 0).await?;
    let mut watch = WatchStream::open(gitcd.addr).await?;
    watch
        .create(WatchCreateRequest {
            prev_kv: true,
            progress_notify: true,
            ..watch_prefix(prefix, rv + 1)
        })
        .await?;
    let said = watch.drain(Duration::from_millis(200)).await;
    let events: Vec<_> = said.into_iter().flat_map(|r| r.events).collect();
    let kinds: Vec<(i32, bool)> = events.iter().map(|e| (e.r#type, e.prev_kv.is_some())).collect();
    assert_eq!(
        kinds,
        vec![
            (EventType::Put as i32, true),
            (EventType::Delete as i32, true),
            (EventType::Put as i32, false)
        ]
    );
    assert_eq!(events[1].prev_kv.as_ref().map(|p| p.value.clone()), Some(b("2")));
    gitcd.stop().await?;
    Ok(())
}

/// Events share one lease, up to 1,000 objects (lease_manager.go); its
/// expiry deletes them all in one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_objects_on_one_event_lease() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    let lease = c
        .lease
        .lease_grant(LeaseGrantRequest { ttl: 3, id: 0 })
        .await?
        .into_inner()
        .id;
    // Keep the lease alive while the objects are created, as a long-TTL
    // event lease would be; then let it lapse.
    let keeper = {
        let mut lease_client = c.lease.clone();
        tokio::spawn(async move {
            loop {
                let ka = common::proto::etcdserverpb::LeaseKeepAliveRequest { id: lease };
                if lease_client.lease_keep_alive(tokio_stream::iter([ka])).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for w in 0..10 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                create(&mut c, &format!("/registry/events/ns/ev-{w}-{i}"), "event", lease).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut watch = WatchStream::open(gitcd.addr).await?;
    watch.create(watch_prefix("/registry/events/", 0)).await?;
    keeper.abort();
    assert!(watch.next(Duration::from_secs(5)).await?.created);
    let mut deleted = Vec::new();
    while deleted.len() < 1000 {
        let r = watch.next(Duration::from_secs(15)).await?;
        deleted.extend(
            r.events
                .into_iter()
                .map(|e| (e.r#type, e.kv.map_or(0, |kv| kv.mod_revision))),
        );
    }
    assert!(deleted.iter().all(|(t, _)| *t == EventType::Delete as i32));
    assert!(deleted.iter().all(|(_, r)| *r == deleted[0].1), "one revision");
    let left = list_page(&mut c, "/registry/events/", b("/registry/events/"), 0, 0).await?;
    assert_eq!(left.count, 0);
    gitcd.stop().await?;
    Ok(())
}

/// The master lease reconciler: a new 2 s lease and a put every second;
/// once the refreshes stop, the key expires on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_lease_regranted_then_expiring_on_time() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    let key = "/registry/masterleases/127.0.0.1";
    let mut last_put = Instant::now();
    for _ in 0..4 {
        let lease = c
            .lease
            .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
            .await?
            .into_inner()
            .id;
        c.kv.put(PutRequest {
            key: b(key),
            value: b("ip"),
            lease,
            ..Default::default()
        })
        .await?;
        last_put = Instant::now();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let r =
            c.kv.range(RangeRequest {
                key: b(key),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(r.count, 1, "refreshed in time: still there");
    }
    loop {
        let r =
            c.kv.range(RangeRequest {
                key: b(key),
                ..Default::default()
            })
            .await?
            .into_inner();
        if r.count == 0 {
            break;
        }
        ensure!(
            last_put.elapsed() < Duration::from_secs(8),
            "the master lease did not expire"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = last_put.elapsed();
    assert!(took >= Duration::from_millis(1900), "expired early: {took:?}");
    gitcd.stop().await?;
    Ok(())
}
