//! Watch: behaviour tests against gitcd, and differential tests where the
//! same writes and watches go to gitcd and a real etcd and the event streams
//! and control answers must agree.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;
use common::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse, request_op, watch_client::WatchClient, watch_create_request,
    watch_request,
};
use common::proto::mvccpb::Event;
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::support::{Client, Etcd, Gitcd};

/// One open watch stream.
pub struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    rx: mpsc::Receiver<Result<WatchResponse, tonic::Status>>,
}

impl WatchStream {
    /// Opens a stream. The call runs in its own task: etcd (grpc-go) sends
    /// the response headers only with the first response, so requests must
    /// be sendable before the call returns.
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
        let (tx, requests) = mpsc::channel(1024);
        let (responses, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let call = WatchClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .watch(tokio_stream::wrappers::ReceiverStream::new(requests))
                .await;
            match call {
                Ok(r) => {
                    let mut stream: Streaming<WatchResponse> = r.into_inner();
                    loop {
                        let item = match stream.message().await {
                            Ok(Some(m)) => Ok(m),
                            Ok(None) => break,
                            Err(e) => Err(e),
                        };
                        let failed = item.is_err();
                        if responses.send(item).await.is_err() || failed {
                            break;
                        }
                    }
                }
                Err(e) => {
                    let _ = responses.send(Err(e)).await;
                }
            }
        });
        Ok(Self { tx, rx })
    }

    pub async fn create(&self, c: WatchCreateRequest) -> Result<()> {
        self.send(watch_request::RequestUnion::CreateRequest(c)).await
    }

    pub async fn send(&self, r: watch_request::RequestUnion) -> Result<()> {
        self.tx.send(WatchRequest { request_union: Some(r) }).await?;
        Ok(())
    }

    /// The next response, or an error after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<WatchResponse> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(Ok(r))) => Ok(r),
            Ok(None) => bail!("watch stream ended"),
            Ok(Some(Err(s))) => bail!("watch stream failed: {s}"),
            Err(_) => bail!("no watch response within {timeout:?}"),
        }
    }

    /// Every response until none comes for `idle`.
    pub async fn drain(&mut self, idle: Duration) -> Vec<WatchResponse> {
        let mut out = Vec::new();
        while let Ok(r) = self.next(idle).await {
            out.push(r);
        }
        out
    }
}

pub fn watch_prefix(prefix: &str, start: i64) -> WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    WatchCreateRequest {
        key: Bytes::copy_from_slice(prefix.as_bytes()),
        range_end: Bytes::from(end),
        start_revision: start,
        ..Default::default()
    }
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    }
}

fn del(k: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        ..Default::default()
    }
}

/// What a watch stream said, comparable across servers: control answers in
/// order (cluster fields dropped), and each watcher's events flattened (how
/// events are batched into responses is not part of the contract).
#[derive(Debug, PartialEq, Eq, Default)]
struct Said {
    /// Per watch id, in order (the order across watchers is not defined).
    control: BTreeMap<i64, Vec<String>>,
    events: BTreeMap<i64, Vec<Event>>,
    fragments: usize,
}

fn summarize(responses: Vec<WatchResponse>) -> Said {
    let mut said = Said::default();
    for r in responses {
        if r.fragment {
            said.fragments += 1;
        }
        if r.created || r.canceled || r.compact_revision != 0 || r.events.is_empty() {
            said.control.entry(r.watch_id).or_default().push(format!(
                "created={} canceled={} compact={} reason={:?} events={} rev={}",
                r.created,
                r.canceled,
                r.compact_revision,
                r.cancel_reason,
                r.events.len(),
                r.header.map_or(0, |h| h.revision)
            ));
        }
        said.events.entry(r.watch_id).or_default().extend(r.events);
    }
    said.events.retain(|_, e| !e.is_empty());
    said
}

/// The writes both servers get before the watches.
async fn history(c: &mut Client) -> Result<()> {
    c.kv.put(put("/w/a", "1")).await?;
    c.kv.put(put("/w/b", "1")).await?;
    c.kv.put(put("/w/a", "2")).await?;
    c.kv.put(put("/other", "x")).await?;
    c.kv.delete_range(del("/w/b")).await?;
    c.kv.compact(CompactionRequest {
        revision: 4,
        physical: false,
    })
    .await?;
    c.kv.txn(TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(put("/w/c", "1"))),
            },
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(del("/w/a"))),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(put("/w/b", "again"))),
            },
        ],
        failure: vec![],
    })
    .await?;
    c.kv.put(put("/w/c", "2")).await?;
    Ok(())
}

/// The watches both servers get, after `history` (current revision 8).
fn watches() -> Vec<WatchCreateRequest> {
    use watch_create_request::FilterType;
    vec![
        WatchCreateRequest {
            prev_kv: true,
            ..watch_prefix("/w/", 5)
        },
        WatchCreateRequest {
            key: Bytes::from_static(b"/w/a"),
            start_revision: 1,
            ..Default::default()
        },
        WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            prev_kv: true,
            ..watch_prefix("/w/", 4)
        },
        WatchCreateRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            start_revision: 6,
            filters: vec![FilterType::Nodelete as i32],
            ..Default::default()
        },
        WatchCreateRequest {
            watch_id: 100,
            ..watch_prefix("/w/", 0)
        },
        WatchCreateRequest {
            watch_id: 100,
            ..watch_prefix("/w/", 0)
        },
        WatchCreateRequest {
            key: Bytes::from_static(b"/b"),
            range_end: Bytes::from_static(b"/a"),
            ..Default::default()
        },
        WatchCreateRequest {
            start_revision: 10,
            prev_kv: true,
            ..watch_prefix("/", 0)
        },
        WatchCreateRequest {
            key: Bytes::new(),
            range_end: Bytes::from_static(b"\0"),
            start_revision: 7,
            ..Default::default()
        },
        WatchCreateRequest {
            key: Bytes::from_static(b"/w/c"),
            prev_kv: true,
            ..Default::default()
        },
    ]
}

/// Writes after the watches are open: live events.
async fn live(c: &mut Client) -> Result<()> {
    c.kv.put(put("/w/c", "3")).await?;
    c.kv.put(put("/w/d", "1")).await?;
    c.kv.delete_range(del("/w/c")).await?;
    c.kv.put(put("/z", "1")).await?;
    Ok(())
}

async fn run_watch_scenario(addr: SocketAddr) -> Result<Said> {
    let mut c = Client::connect(addr).await?;
    history(&mut c).await?;
    let mut stream = WatchStream::open(addr).await?;
    for w in watches() {
        stream.create(w).await?;
    }
    let mut responses = stream.drain(Duration::from_millis(500)).await;
    live(&mut c).await?;
    responses.extend(stream.drain(Duration::from_millis(500)).await);
    stream
        .send(watch_request::RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 100,
        }))
        .await?;
    stream
        .send(watch_request::RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 999,
        }))
        .await?;
    c.kv.put(put("/w/e", "after cancel")).await?;
    responses.extend(stream.drain(Duration::from_millis(500)).await);
    Ok(summarize(responses))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_streams_match_etcd() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gitcd = Gitcd::start(&dir.path().join("repo")).await?;
    let etcd = Etcd::start().await?;
    let ours = run_watch_scenario(gitcd.addr).await?;
    let theirs = run_watch_scenario(etcd.addr).await?;
    assert_eq!(ours.control, theirs.control, "control answers differ");
    for (id, events) in &theirs.events {
        assert_eq!(ours.events.get(id), Some(events), "events of watch {id} differ");
    }
    assert_eq!(ours.events.len(), theirs.events.len());
    assert!(!ours.events.is_empty());
    gitcd.stop().await?;
    Ok(())
}

/// Events of every revision, in order, after a restart too (history from Git).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_reads_history_from_git_after_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let mut store = common::store::StoreConfig::with_repo(&repo);
    store.history_window = 2;
    let gitcd = Gitcd::start_with(store.clone()).await?;
    let mut c = gitcd.client().await?;
    history(&mut c).await?;
    let mut stream = WatchStream::open(gitcd.addr).await?;
    stream
        .create(WatchCreateRequest {
            prev_kv: true,
            ..watch_prefix("/w/", 4)
        })
        .await?;
    let before = summarize(stream.drain(Duration::from_millis(300)).await);
    gitcd.stop().await?;
    let gitcd = Gitcd::start_with(store).await?;
    let mut stream = WatchStream::open(gitcd.addr).await?;
    stream
        .create(WatchCreateRequest {
            prev_kv: true,
            ..watch_prefix("/w/", 4)
        })
        .await?;
    let after = summarize(stream.drain(Duration::from_millis(300)).await);
    // Within a revision, Git gives key order; this revision's txn wrote
    // /w/c, /w/a, /w/b: compare as sets per revision.
    let by_rev = |s: &Said| {
        let mut m: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for e in s.events.values().flatten() {
            let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            m.entry(rev).or_default().push(format!("{e:?}"));
        }
        m.values_mut().for_each(|v| v.sort());
        m
    };
    assert_eq!(by_rev(&before), by_rev(&after));
    assert_eq!(by_rev(&after).keys().copied().collect::<Vec<_>>(), vec![4, 6, 7, 8]);
    gitcd.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_notifications_and_requests() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    c.kv.put(put("/p/a", "1")).await?;
    let mut stream = WatchStream::open(gitcd.addr).await?;
    // A progress request with no watchers is answered at once.
    stream
        .send(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await?;
    let r = stream.next(Duration::from_secs(5)).await?;
    assert_eq!(
        (r.watch_id, r.events.len(), r.header.map(|h| h.revision)),
        (-1, 0, Some(2))
    );
    stream
        .create(WatchCreateRequest {
            progress_notify: true,
            ..watch_prefix("/p/", 0)
        })
        .await?;
    assert!(stream.next(Duration::from_secs(5)).await?.created);
    // Idle: a progress notification at the current revision (interval 300 ms in tests).
    let r = stream.next(Duration::from_secs(5)).await?;
    assert_eq!(
        (r.watch_id, r.events.len(), r.header.map(|h| h.revision)),
        (0, 0, Some(2))
    );
    c.kv.put(put("/q", "elsewhere")).await?;
    let r = stream.next(Duration::from_secs(5)).await?;
    assert_eq!(
        (r.watch_id, r.events.len(), r.header.map(|h| h.revision)),
        (0, 0, Some(3))
    );
    stream
        .send(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await?;
    let r = loop {
        let r = stream.next(Duration::from_secs(5)).await?;
        if r.watch_id == -1 {
            break r;
        }
    };
    assert_eq!((r.events.len(), r.header.map(|h| h.revision)), (0, Some(3)));
    gitcd.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_responses_fragment_when_asked() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    let big = "x".repeat(700_000);
    for i in 0..4 {
        c.kv.put(put(&format!("/f/{i}"), &big)).await?;
    }
    let mut stream = WatchStream::open(gitcd.addr).await?;
    stream
        .create(WatchCreateRequest {
            fragment: true,
            ..watch_prefix("/f/", 1)
        })
        .await?;
    let said = summarize(stream.drain(Duration::from_millis(500)).await);
    assert_eq!(said.events.get(&0).map(Vec::len), Some(4));
    assert!(said.fragments >= 1, "{} fragments", said.fragments);
    gitcd.stop().await?;
    Ok(())
}

/// A watch on a busy prefix sees every revision exactly once, in order,
/// while 1,000 other watchers are open and writers keep writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_prefix_with_a_thousand_watchers_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gitcd = Gitcd::start(&dir.path().join("repo")).await?;
    // 1,000 watchers over 20 streams, on other prefixes and on the busy one.
    let mut others = Vec::new();
    for s in 0..20 {
        let stream = WatchStream::open(gitcd.addr).await?;
        for w in 0..50 {
            let prefix = if w % 2 == 0 {
                "/busy/".to_owned()
            } else {
                format!("/quiet/{s}/{w}/")
            };
            stream.create(watch_prefix(&prefix, 0)).await?;
        }
        others.push(stream);
    }
    // A stream whose client never reads: it must hold up nobody.
    let stalled = WatchStream::open(gitcd.addr).await?;
    for _ in 0..10 {
        stalled.create(watch_prefix("/busy/", 0)).await?;
    }
    let mut watched = WatchStream::open(gitcd.addr).await?;
    watched.create(watch_prefix("/busy/", 0)).await?;
    assert!(watched.next(Duration::from_secs(10)).await?.created);
    let writers = 8;
    let per_writer = 50;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut c = gitcd.client().await?;
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                c.kv.put(put(&format!("/busy/{w}"), &i.to_string())).await?;
            }
            anyhow::Ok(())
        }));
    }
    // Drain the other streams so that they do not stall (they may lag).
    let drainers: Vec<_> = others
        .into_iter()
        .map(|mut s| tokio::spawn(async move { s.drain(Duration::from_secs(3)).await.len() }))
        .collect();
    for t in tasks {
        t.await??;
    }
    let mut revisions = Vec::new();
    while revisions.len() < writers * per_writer {
        let r = watched.next(Duration::from_secs(20)).await?;
        for e in r.events {
            revisions.push(e.kv.map_or(0, |kv| kv.mod_revision));
        }
    }
    let expected: Vec<i64> = (2..2 + (writers * per_writer) as i64).collect();
    assert_eq!(revisions, expected, "every revision exactly once, in order");
    for d in drainers {
        assert!(d.await? > 0);
    }
    drop(stalled);
    gitcd.stop().await?;
    Ok(())
}

/// Commits pushed with plain git produce the same events as API writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn external_commits_produce_watch_events() -> Result<()> {
    use crate::support::{commit_files, git, new_work_repo};
    let dir = tempfile::tempdir()?;
    let served = dir.path().join("served.git");
    let gitcd = Gitcd::start(&served).await?;
    let mut watch = WatchStream::open(gitcd.addr).await?;
    watch
        .create(WatchCreateRequest {
            prev_kv: true,
            ..watch_prefix("/docs/", 0)
        })
        .await?;
    assert!(watch.next(Duration::from_secs(5)).await?.created);
    let work = dir.path().join("work");
    new_work_repo(&work)?;
    let url = served.to_str().unwrap_or_default();
    git(&work, &["pull", "-q", url, "main"])?;
    commit_files(&work, &[("docs/readme", "hello")], "add docs")?;
    git(&work, &["push", "-q", url, "main"])?;
    let r = watch.next(Duration::from_secs(10)).await?;
    let e = &r.events[0];
    assert_eq!(e.r#type, common::proto::mvccpb::event::EventType::Put as i32);
    assert_eq!(
        e.kv.as_ref().map(|kv| (kv.key.clone(), kv.value.clone(), kv.version)),
        Some((Bytes::from_static(b"/docs/readme"), Bytes::from_static(b"hello"), 1))
    );
    commit_files(&work, &[("docs/readme", "changed")], "edit docs")?;
    git(&work, &["push", "-q", url, "main"])?;
    let r = watch.next(Duration::from_secs(10)).await?;
    let e = &r.events[0];
    assert_eq!(
        e.prev_kv.as_ref().map(|p| p.value.clone()),
        Some(Bytes::from_static(b"hello"))
    );
    assert_eq!(e.kv.as_ref().map(|kv| kv.version), Some(2));
    gitcd.stop().await?;
    Ok(())
}
