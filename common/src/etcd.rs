//! The etcd v3 gRPC services. Thin: validate as etcd's v3rpc layer does,
//! call the store, fill the response header, map errors to etcd's exact
//! statuses (clients parse the texts).

pub mod check;
pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod unimplemented;
pub mod watch;

use std::sync::Arc;

use tonic::{Code, Status};

use crate::proto::etcdserverpb::ResponseHeader;
use crate::store::{Error, Store};

/// The version reported by `Status`: an etcd 3.5 API level, >= 3.5.13 so
/// that newer kube-apiservers enable progress-notify based features.
pub const ETCD_VERSION: &str = "3.5.16";

/// etcd's default `--max-request-bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 3 * 512 * 1024;
/// gRPC's receive limit is the request limit plus this (etcd's
/// `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Who this server is, for headers, Status and MemberList.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub max_request_bytes: usize,
}

impl Identity {
    /// Stable ids derived from the member's name and the data it serves.
    pub fn new(name: &str, data_ref: &str, client_urls: Vec<String>, max_request_bytes: usize) -> Self {
        let id = |what: &str| {
            let d = <sha1::Sha1 as sha1::Digest>::digest(format!("gitcd {what} {name} {data_ref}"));
            u64::from_be_bytes(d[..8].try_into().expect("a SHA-1 digest has 20 bytes")) & !(1 << 63)
        };
        Self {
            cluster_id: id("cluster"),
            member_id: id("member"),
            name: name.to_owned(),
            client_urls,
            peer_urls: Vec::new(),
            max_request_bytes,
        }
    }
}

/// The gauges watch streams keep (`etcd_debugging_mvcc_watch_stream_total`,
/// `etcd_debugging_mvcc_watcher_total`).
#[derive(Clone, Debug)]
pub struct WatchGauges {
    pub streams: prometheus::IntGauge,
    pub watchers: prometheus::IntGauge,
}

impl Default for WatchGauges {
    fn default() -> Self {
        let gauge = |name: &str| prometheus::IntGauge::new(name, name).expect("a valid metric name");
        Self {
            streams: gauge("watch_streams"),
            watchers: gauge("watchers"),
        }
    }
}

/// What every service holds.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    pub identity: Arc<Identity>,
    /// Turns true when the server shuts down: long-lived streams end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    pub watch_gauges: WatchGauges,
}

impl Context {
    /// Completes when the server starts shutting down.
    pub async fn stopped(&self) {
        let mut s = self.stopping.clone();
        let _ = s.wait_for(|s| *s).await;
    }

    /// A top-level response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: raft_term(revision),
        })
    }

    /// Fills the identity fields of a header the store made.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = self.header(revision);
    }

    /// etcd's request size check, made before a write is proposed.
    pub fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        // etcd measures the request wrapped in its raft envelope.
        const RAFT_ENVELOPE: usize = 17;
        if encoded_len + RAFT_ENVELOPE > self.identity.max_request_bytes {
            return Err(check::invalid(check::REQUEST_TOO_LARGE));
        }
        Ok(())
    }
}

/// gitcd has no raft: its term and index follow the revision.
pub fn raft_term(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// The one mapping from store errors to gRPC statuses, with etcd's codes and
/// texts.
pub fn status(e: Error) -> Status {
    match e {
        Error::Compacted => Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        Error::FutureRevision => Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        Error::KeyNotFound => Status::new(Code::InvalidArgument, "etcdserver: key not found"),
        Error::LeaseNotFound => Status::new(Code::NotFound, "etcdserver: requested lease not found"),
        Error::LeaseExists => Status::new(Code::FailedPrecondition, "etcdserver: lease already exists"),
        Error::LeaseTtlTooLarge => Status::new(Code::OutOfRange, "etcdserver: too large lease TTL"),
        Error::Stopped => Status::new(Code::Unavailable, "etcdserver: server stopped"),
        e @ Error::Changed { .. } => Status::new(Code::Aborted, format!("gitcd: {e}")),
        Error::Storage(e) => {
            let text = crate::error::chain(&*e).to_string();
            tracing::error!(error = %text, "storage error");
            Status::new(Code::Internal, format!("gitcd: {text}"))
        }
    }
}
