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
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
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
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream = WatchStream {
            ctx: self.ctx.clone(),
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_pending: false,
            tx,
        };
        tokio::spawn(stream.run(request.into_inner(), self.progress_interval));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Watcher {
    range: KeyRange,
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
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// A WatchProgressRequest waits until every watcher is synced.
    progress_pending: bool,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
}

/// The client went away: the stream ends.
struct Closed;

impl WatchStream {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>, progress_interval: Duration) {
        let mut published = self.ctx.store.subscribe();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + progress_interval, progress_interval);
        loop {
            if self.deliver().await.is_err() {
                return;
            }
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if self.handle(req).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
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
        let key = if c.key.is_empty() {
            Bytes::from_static(b"\0")
        } else {
            c.key.clone()
        };
        let range = KeyRange::from_request(&key, &c.range_end);
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
                let (kind, kv) = match &c.new {
                    Some(kv) => (EventType::Put, kv.to_proto(&c.key)),
                    None => (
                        EventType::Delete,
                        KeyValue {
                            key: c.key.clone(),
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
                    Some(p) if self.prev_kv && r.revision > compact => Some(p.to_proto(&c.key)),
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
