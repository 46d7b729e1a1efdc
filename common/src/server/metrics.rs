//! The server's metrics, with etcd's names where the meaning is the same:
//! `grpc_server_started_total` and `grpc_server_handled_total` by method
//! and code (go-grpc-prometheus's, which etcd exports), `etcd_server_has_leader`,
//! `etcd_mvcc_db_total_size_in_bytes`, `etcd_debugging_mvcc_keys_total`, the
//! watch stream and watcher gauges. The store adds its own (commit
//! durations, `gitcd_*`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use prometheus::{IntCounterVec, IntGauge, Opts};
use tower::Service as _;

use crate::store::Store;

/// The gauges and counters the server keeps.
#[derive(Clone)]
pub struct Server {
    started: IntCounterVec,
    handled: IntCounterVec,
    has_leader: IntGauge,
    db_size: IntGauge,
    db_size_in_use: IntGauge,
    keys: IntGauge,
    watch_streams: IntGauge,
    watchers: IntGauge,
}

impl Server {
    pub fn new(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let started = IntCounterVec::new(
            Opts::new(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
            ),
            &labels,
        )?;
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
        let s = Self {
            started,
            handled,
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            )?,
            db_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes (gitcd: the repository's objects).",
            )?,
            db_size_in_use: gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            )?,
            keys: gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.")?,
            watch_streams: gauge(
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
            )?,
            watchers: gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.")?,
        };
        registry.register(Box::new(s.started.clone()))?;
        registry.register(Box::new(s.handled.clone()))?;
        for g in [
            &s.has_leader,
            &s.db_size,
            &s.db_size_in_use,
            &s.keys,
            &s.watch_streams,
            &s.watchers,
        ] {
            registry.register(Box::new(g.clone()))?;
        }
        s.has_leader.set(1);
        Ok(s)
    }

    /// The gauges the watch streams move.
    pub fn watch_gauges(&self) -> crate::etcd::WatchGauges {
        crate::etcd::WatchGauges {
            streams: self.watch_streams.clone(),
            watchers: self.watchers.clone(),
        }
    }

    /// Sets the gauges read from the store (before a scrape).
    pub fn refresh(&self, store: &Store) {
        let size = store.db_size();
        self.db_size.set(size);
        self.db_size_in_use.set(size);
        self.keys.set(store.snapshot().kvs.len() as i64);
    }
}

/// The kind of an etcd method, as go-grpc-prometheus names it.
fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" => "server_stream",
        _ => "unary",
    }
}

/// gRPC's code names, as the `grpc_code` label has them.
fn code_name(code: &str) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    code.parse::<usize>()
        .ok()
        .and_then(|c| NAMES.get(c))
        .copied()
        .unwrap_or("Unknown")
}

/// The gRPC routes, counting each call's start and its end by code.
#[derive(Clone)]
pub struct Instrumented {
    routes: tonic::service::Routes,
    metrics: Server,
}

impl Instrumented {
    pub fn new(routes: tonic::service::Routes, metrics: Server) -> Self {
        Self { routes, metrics }
    }

    pub async fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<tonic::body::Body> {
        let path = req.uri().path().trim_start_matches('/').to_owned();
        let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
        let labels = [grpc_type(method).to_owned(), service.to_owned(), method.to_owned()];
        self.metrics
            .started
            .with_label_values(&[labels[0].as_str(), &labels[1], &labels[2]])
            .inc();
        let mut routes = self.routes.clone();
        let resp = match routes.call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        // A trailers-only answer (an error) has its status in the headers.
        if let Some(code) = resp.headers().get("grpc-status") {
            let code = code_name(code.to_str().unwrap_or(""));
            self.metrics
                .handled
                .with_label_values(&[labels[0].as_str(), &labels[1], &labels[2], code])
                .inc();
            return resp;
        }
        let handled = self.metrics.handled.clone();
        resp.map(|body| {
            tonic::body::Body::new(CountAtEnd {
                inner: body,
                done: Some(Box::new(move |code: &str| {
                    handled
                        .with_label_values(&[labels[0].as_str(), &labels[1], &labels[2], code])
                        .inc();
                })),
            })
        })
    }
}

type Done = Box<dyn FnOnce(&str) + Send>;

/// A response body that counts the call when its trailers (the status)
/// pass, or when it ends without any.
struct CountAtEnd {
    inner: tonic::body::Body,
    done: Option<Done>,
}

impl http_body::Body for CountAtEnd {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(done) = self.done.take()
                {
                    done(code_name(
                        trailers.get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("2"),
                    ));
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(done) = self.done.take() {
                    done("Unknown");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountAtEnd {
    fn drop(&mut self) {
        // A stream the client cancelled ends without trailers.
        if let Some(done) = self.done.take() {
            done("Canceled");
        }
    }
}
