//! `etcdserverpb.Watch`: one task per stream owns that stream's watchers.
//!
//! The task wakes when the store publishes a revision, when the client
//! sends a request, and on the progress tick. Each watcher remembers the
//! next revision it needs and catches up from the store's event window (or
//! Git, for older revisions) in order, so a slow stream only delays itself:
//! the writer never waits for watchers, and what a stream holds is bounded
//! by its outgoing queue.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use crate::proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request, watch_request, watch_server,
};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::store::{KeyRange, RevisionEvents};

/// etcd's texts for refused watch creations.
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const PERMISSION_DENIED: &str = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
/// Most revisions fetched for one catch-up step (etcd's watchBatchMaxRevs).
const MAX_REVISIONS_PER_STEP: usize = 1000;
/// Responses queued for one stream before its task waits for the client.
const STREAM_QUEUE: usize = 128;

pub struct WatchService {
    pub ctx: Context,
    /// How often watchers that asked for progress notifications get one
    /// (etcd's --watch-progress-notify-interval).
    pub progress_interval: Duration,
}

#[tonic::async_trait]
impl watch_server::Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let credentials = super::Credentials::of(&request);
        let responses = watch_stream(
            self.ctx.clone(),
            credentials,
            request.into_inner(),
            self.progress_interval,
        );
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Serves one Watch stream: its requests come from `inbound`, its responses
/// go to the returned stream. A task owns the stream's watchers until the
/// client goes away or the server stops.
pub fn watch_stream(
    ctx: Context,
    credentials: super::Credentials,
    inbound: impl Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    progress_interval: Duration,
) -> ReceiverStream<Result<WatchResponse, Status>> {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    ctx.watch_gauges.streams.inc();
    let stream = WatchStream {
        ctx,
        credentials,
        watchers: BTreeMap::new(),
        next_id: 0,
        progress_pending: false,
        tx,
        counted: 0,
    };
    tokio::spawn(stream.run(inbound, progress_interval));
    ReceiverStream::new(rx)
}

struct Watcher {
    range: KeyRange,
    /// The listener's namespace: events' keys lose its prefix.
    ns: super::namespace::Namespace,
    /// The next revision this watcher needs.
    next: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress: bool,
    fragment: bool,
    /// Whether events went out since the last progress tick.
    sent_since_tick: bool,
}

struct WatchStream {
    ctx: Context,
    /// Who opened the stream: each watcher's range is checked against the
    /// user's permissions when it is created.
    credentials: super::Credentials,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// A WatchProgressRequest waits until every watcher is synced.
    progress_pending: bool,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    /// Watchers counted in the watcher gauge.
    counted: i64,
}

impl WatchStream {
    /// Brings the watcher gauge to this stream's count.
    fn count_watchers(&mut self) {
        let now = self.watchers.len() as i64;
        self.ctx.watch_gauges.watchers.add(now - self.counted);
        self.counted = now;
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.ctx.watch_gauges.watchers.sub(self.counted);
        self.ctx.watch_gauges.streams.dec();
    }
}

/// The client went away: the stream ends.
struct Closed;

impl WatchStream {
    async fn run(
        mut self,
        mut inbound: impl Stream<Item = Result<WatchRequest, Status>> + Unpin,
        progress_interval: Duration,
    ) {
        let mut published = self.ctx.store.subscribe();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + progress_interval, progress_interval);
        loop {
            if self.deliver().await.is_err() {
                return;
            }
            self.count_watchers();
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => {
                        if self.handle(req).await.is_err() {
                            return;
                        }
                    }
                    None | Some(Err(_)) => return,
                },
                changed = published.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = ticker.tick() => {
                    if self.progress_tick().await.is_err() {
                        return;
                    }
                }
                _ = self.ctx.stopped() => return,
            }
        }
    }

    fn current(&self) -> i64 {
        self.ctx.store.snapshot().revision
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Closed> {
        self.tx.send(Ok(resp)).await.map_err(|_| Closed)
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Closed> {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    let header = self.ctx.header(self.current());
                    self.send(WatchResponse {
                        header,
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Closed> {
        let current = self.current();
        let ns = self.ctx.namespace.clone();
        let (key, range_end) = if !ns.is_empty() {
            // As etcd's namespace proxy: the key (even empty) and the end
            // go through the prefix.
            (ns.key(&c.key), ns.end(&c.range_end))
        } else if c.key.is_empty() {
            (Bytes::from_static(b"\0"), c.range_end.clone())
        } else {
            (c.key.clone(), c.range_end.clone())
        };
        if !self.permitted(&key, &range_end) {
            // etcd puts the whole status text in the reason.
            return self
                .send(WatchResponse {
                    header: self.ctx.header(current),
                    watch_id: c.watch_id,
                    created: true,
                    canceled: true,
                    cancel_reason: PERMISSION_DENIED.to_owned(),
                    ..Default::default()
                })
                .await;
        }
        let range = KeyRange::from_request(&key, &range_end);
        let refused = |reason: &str| WatchResponse {
            header: self.ctx.header(current),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_owned(),
            ..Default::default()
        };
        if let KeyRange::Interval { start, end: Some(end) } = &range
            && start >= end
        {
            return self.send(refused(EMPTY_RANGE)).await;
        }
        let id = if c.watch_id == 0 {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.watchers.contains_key(&c.watch_id) {
            return self.send(refused(DUPLICATE_ID)).await;
        } else {
            c.watch_id
        };
        let filters = |f: watch_create_request::FilterType| c.filters.contains(&(f as i32));
        self.watchers.insert(
            id,
            Watcher {
                range,
                ns,
                next: if c.start_revision == 0 {
                    current + 1
                } else {
                    c.start_revision
                },
                prev_kv: c.prev_kv,
                no_put: filters(watch_create_request::FilterType::Noput),
                no_delete: filters(watch_create_request::FilterType::Nodelete),
                progress: c.progress_notify,
                fragment: c.fragment,
                sent_since_tick: false,
            },
        );
        self.send(WatchResponse {
            header: self.ctx.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    /// etcd's `isWatchPermitted`: read permission on the watched range, in
    /// etcd's form (a `"\0"` end checks the key alone).
    fn permitted(&self, key: &[u8], range_end: &[u8]) -> bool {
        let Ok(who) = self.ctx.resolve(&self.credentials) else {
            return false;
        };
        let end: &[u8] = if range_end == b"\0" { b"" } else { range_end };
        self.ctx
            .store
            .snapshot()
            .auth
            .check_read(who.as_ref(), key, end)
            .is_ok()
    }

    /// Brings every watcher up to the published revision, then answers a
    /// pending progress request if all are synced.
    async fn deliver(&mut self) -> Result<(), Closed> {
        loop {
            let snap = self.ctx.store.snapshot();
            let (current, compact) = (snap.revision, snap.compact_revision);
            let Some(from) = self.watchers.values().map(|w| w.next).filter(|n| *n <= current).min() else {
                break;
            };
            // Watchers left behind by a compaction are cancelled, as in etcd.
            let compacted: Vec<i64> = self
                .watchers
                .iter()
                .filter(|(_, w)| w.next < compact)
                .map(|(id, _)| *id)
                .collect();
            for id in compacted {
                self.watchers.remove(&id);
                // etcd sends this one with header revision 0.
                self.send(WatchResponse {
                    header: self.ctx.header(0),
                    watch_id: id,
                    canceled: true,
                    compact_revision: compact,
                    ..Default::default()
                })
                .await?;
            }
            let from = from.max(compact);
            let revisions = match self.ctx.store.events(from, current, MAX_REVISIONS_PER_STEP).await {
                Ok(r) if !r.is_empty() => r,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, from, "watch cannot read history");
                    let _ = self.tx.send(Err(super::status(e))).await;
                    return Err(Closed);
                }
            };
            let last = revisions.last().map_or(from, |r| r.revision);
            let max_bytes = self.ctx.identity.max_request_bytes;
            let mut outgoing = Vec::new();
            for (id, w) in self.watchers.iter_mut() {
                if w.next > last {
                    continue;
                }
                let events = w.events(&revisions, compact);
                w.next = last + 1;
                if !events.is_empty() {
                    w.sent_since_tick = true;
                    let resp = WatchResponse {
                        header: self.ctx.header(last),
                        watch_id: *id,
                        events,
                        ..Default::default()
                    };
                    outgoing.extend(fragments(resp, w.fragment, max_bytes));
                }
            }
            for resp in outgoing {
                self.send(resp).await?;
            }
        }
        if self.progress_pending {
            let current = self.current();
            if self.watchers.values().all(|w| w.next > current) {
                self.progress_pending = false;
                self.send(WatchResponse {
                    header: self.ctx.header(current),
                    watch_id: -1,
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }

    /// etcd's progress notification: an empty response for each synced
    /// watcher that asked for them and got no events since the last tick.
    async fn progress_tick(&mut self) -> Result<(), Closed> {
        let current = self.current();
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress && !w.sent_since_tick && w.next > current)
            .map(|(id, _)| *id)
            .collect();
        for w in self.watchers.values_mut() {
            w.sent_since_tick = false;
        }
        for id in due {
            self.send(WatchResponse {
                header: self.ctx.header(current),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}

impl Watcher {
    /// This watcher's events among `revisions`, in order.
    fn events(&self, revisions: &[Arc<RevisionEvents>], compact: i64) -> Vec<Event> {
        let mut out = Vec::new();
        for r in revisions.iter().filter(|r| r.revision >= self.next) {
            for c in &r.changes {
                if !self.range.contains(&c.key) {
                    continue;
                }
                let key = self.ns.strip(&c.key);
                let (kind, kv) = match &c.new {
                    Some(kv) => (EventType::Put, kv.to_proto(&key)),
                    None => (
                        EventType::Delete,
                        KeyValue {
                            key: key.clone(),
                            mod_revision: r.revision,
                            ..Default::default()
                        },
                    ),
                };
                if (kind == EventType::Put && self.no_put) || (kind == EventType::Delete && self.no_delete) {
                    continue;
                }
                // etcd reads the previous value at revision - 1, which a
                // compaction may have removed.
                let prev_kv = match &c.prev {
                    Some(p) if self.prev_kv && r.revision > compact => Some(p.to_proto(&key)),
                    _ => None,
                };
                out.push(Event {
                    r#type: kind as i32,
                    kv: Some(kv),
                    prev_kv,
                });
            }
        }
        out
    }
}

/// etcd's `sendFragments`: a response over the request-size limit with at
/// least two events is split into parts flagged `fragment`, the last
/// unflagged.
fn fragments(resp: WatchResponse, fragment: bool, max_bytes: usize) -> Vec<WatchResponse> {
    if !fragment || resp.encoded_len() < max_bytes || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut out = Vec::new();
    let mut events = resp.events.into_iter().peekable();
    let template = WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..resp
    };
    while events.peek().is_some() {
        let mut part = template.clone();
        while let Some(e) = events.peek() {
            part.events.push(e.clone());
            if part.events.len() > 1 && part.encoded_len() >= max_bytes {
                part.events.pop();
                break;
            }
            events.next();
        }
        if events.peek().is_none() {
            part.fragment = false;
        }
        out.push(part);
    }
    out
}

#[cfg(test)]
mod tests {
    //! A watch stream driven in memory: its requests come from a channel,
    //! its store is a real one in a temp dir.

    use super::*;
    use crate::proto::etcdserverpb::{PutRequest, WatchCancelRequest, WatchProgressRequest};
    use crate::store::{Store, StoreConfig};

    struct Harness {
        _dir: tempfile::TempDir,
        /// Dropping it would tell the stream that the server stops.
        _stop: tokio::sync::watch::Sender<bool>,
        store: Store,
        requests: mpsc::Sender<Result<WatchRequest, Status>>,
        responses: ReceiverStream<Result<WatchResponse, Status>>,
    }

    impl Harness {
        fn new() -> anyhow::Result<Self> {
            let dir = tempfile::tempdir()?;
            let store = Store::open(StoreConfig::with_repo(dir.path().join("repo")))?;
            let (stop, stopping) = tokio::sync::watch::channel(false);
            let ctx = Context {
                store: store.clone(),
                identity: Arc::new(super::super::Identity::new("t", "refs/heads/main", Vec::new(), 1 << 20)),
                stopping,
                watch_gauges: Default::default(),
                members: Default::default(),
                authn: Default::default(),
                quota_bytes: None,
                namespace: Default::default(),
            };
            let (requests, inbound) = mpsc::channel(16);
            let responses = watch_stream(
                ctx,
                Default::default(),
                ReceiverStream::new(inbound),
                Duration::from_secs(3600),
            );
            Ok(Self {
                _dir: dir,
                _stop: stop,
                store,
                requests,
                responses,
            })
        }

        async fn send(&self, r: watch_request::RequestUnion) -> anyhow::Result<()> {
            self.requests.send(Ok(WatchRequest { request_union: Some(r) })).await?;
            Ok(())
        }

        async fn create(&self, c: WatchCreateRequest) -> anyhow::Result<()> {
            self.send(watch_request::RequestUnion::CreateRequest(c)).await
        }

        async fn next(&mut self) -> anyhow::Result<WatchResponse> {
            let r = tokio::time::timeout(Duration::from_secs(10), self.responses.next()).await?;
            Ok(r.ok_or_else(|| anyhow::anyhow!("the stream ended"))??)
        }

        async fn put(&self, key: &str, value: &str) -> anyhow::Result<i64> {
            let r = self
                .store
                .put(PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value: Bytes::copy_from_slice(value.as_bytes()),
                    ..Default::default()
                })
                .await?;
            Ok(r.header.map_or(0, |h| h.revision))
        }

        /// Events of watcher `id` until `n` have come, skipping others.
        async fn events(&mut self, id: i64, n: usize) -> anyhow::Result<Vec<Event>> {
            let mut out = Vec::new();
            while out.len() < n {
                let r = self.next().await?;
                if r.watch_id == id {
                    out.extend(r.events);
                }
            }
            Ok(out)
        }
    }

    fn prefix(p: &str) -> WatchCreateRequest {
        let mut end = p.as_bytes().to_vec();
        *end.last_mut().expect("a prefix") += 1;
        WatchCreateRequest {
            key: Bytes::copy_from_slice(p.as_bytes()),
            range_end: Bytes::from(end),
            ..Default::default()
        }
    }

    fn keys(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8_lossy(&e.kv.as_ref().expect("an event has a kv").key).into_owned())
            .collect()
    }

    /// `created` comes first with id 0; then the events in range, in order,
    /// each at its revision; a past start replays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn created_first_then_events_in_order() -> anyhow::Result<()> {
        let mut h = Harness::new()?;
        h.create(prefix("/a/")).await?;
        let created = h.next().await?;
        assert!(created.created && created.watch_id == 0, "{created:?}");
        let r1 = h.put("/a/1", "x").await?;
        h.put("/b/1", "out of range").await?;
        let r3 = h.put("/a/2", "y").await?;
        let events = h.events(0, 2).await?;
        assert_eq!(keys(&events), ["/a/1", "/a/2"]);
        let mods: Vec<i64> = events
            .iter()
            .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
            .collect();
        assert_eq!(mods, [r1, r3]);
        // A second watcher from the past replays the same.
        h.create(WatchCreateRequest {
            start_revision: r1,
            ..prefix("/a/")
        })
        .await?;
        let created = h.next().await?;
        assert_eq!(created.watch_id, 1);
        assert_eq!(keys(&h.events(1, 2).await?), ["/a/1", "/a/2"]);
        Ok(())
    }

    /// Filters and prev_kv: NOPUT drops puts, prev_kv carries the value
    /// before; a DELETE event names its revision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn filters_and_prev_kv() -> anyhow::Result<()> {
        let mut h = Harness::new()?;
        h.put("/k", "old").await?;
        h.create(WatchCreateRequest {
            prev_kv: true,
            filters: vec![watch_create_request::FilterType::Noput as i32],
            ..prefix("/k")
        })
        .await?;
        h.next().await?;
        h.put("/k", "new").await?;
        let deleted = h
            .store
            .delete_range(crate::proto::etcdserverpb::DeleteRangeRequest {
                key: Bytes::from_static(b"/k"),
                ..Default::default()
            })
            .await?;
        let events = h.events(0, 1).await?;
        assert_eq!(events[0].r#type, EventType::Delete as i32);
        assert_eq!(
            events[0].kv.as_ref().map(|kv| kv.mod_revision),
            deleted.header.map(|h| h.revision)
        );
        assert_eq!(
            events[0].prev_kv.as_ref().map(|kv| kv.value.as_ref()),
            Some(b"new".as_slice())
        );
        Ok(())
    }

    /// Refusals with etcd's texts: an empty range, a duplicate id. Cancel
    /// answers `canceled`. A progress request is answered with watch id -1
    /// once every watcher is synced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_cancel_and_progress() -> anyhow::Result<()> {
        let mut h = Harness::new()?;
        h.create(WatchCreateRequest {
            key: Bytes::from_static(b"/b"),
            range_end: Bytes::from_static(b"/a"),
            ..Default::default()
        })
        .await?;
        let empty = h.next().await?;
        assert_eq!(
            (empty.watch_id, empty.canceled, empty.cancel_reason.as_str()),
            (-1, true, EMPTY_RANGE)
        );
        h.create(WatchCreateRequest {
            watch_id: 7,
            ..prefix("/x")
        })
        .await?;
        assert_eq!(h.next().await?.watch_id, 7);
        h.create(WatchCreateRequest {
            watch_id: 7,
            ..prefix("/y")
        })
        .await?;
        let dup = h.next().await?;
        assert_eq!(dup.cancel_reason, DUPLICATE_ID);
        h.send(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await?;
        let progress = h.next().await?;
        assert_eq!(progress.watch_id, -1);
        assert!(progress.events.is_empty());
        h.send(watch_request::RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 7,
        }))
        .await?;
        let canceled = h.next().await?;
        assert!(canceled.canceled && canceled.watch_id == 7);
        Ok(())
    }

    /// A watcher left below the compact revision is cancelled with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_cancels_watchers_behind_it() -> anyhow::Result<()> {
        let mut h = Harness::new()?;
        for i in 0..4 {
            h.put("/c", &i.to_string()).await?;
        }
        let compact = h.store.snapshot().revision;
        h.store.compact(compact).await?;
        h.create(WatchCreateRequest {
            start_revision: 2,
            ..prefix("/c")
        })
        .await?;
        assert!(h.next().await?.created);
        let canceled = h.next().await?;
        assert!(canceled.canceled);
        assert_eq!(canceled.compact_revision, compact);
        Ok(())
    }
}
