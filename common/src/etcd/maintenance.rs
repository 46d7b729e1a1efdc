//! `etcdserverpb.Maintenance`, as a single-member etcd 3.5 serves it:
//! Status; Alarm (NOSPACE and CORRUPT, raised by clients, by the quota or by
//! a full disk); Hash and HashKV (gitcd's hashes, see `store`'s docs);
//! Defragment (the pack maintainer consolidates the object store); Snapshot
//! (a Git bundle of the branch pair, then the SHA-256 of the stream, as etcd
//! ends it); MoveLeader to itself; Downgrade's validate, enable and cancel.
//! While auth is on, Defragment, Snapshot, Hash and HashKV need the root
//! role, refused as etcd's Maintenance server refuses them (code Unknown,
//! the auth package's text).

use std::pin::Pin;

use tokio::io::AsyncReadExt as _;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

use super::{Context, ETCD_VERSION, raft_term, raw_auth_status, status};
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse, downgrade_request, maintenance_server,
};

/// The cluster version gitcd reports (`/version`'s `etcdcluster`).
pub const CLUSTER_VERSION: (u64, u64) = (3, 5);
/// etcd's snapshot chunk size.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

pub struct MaintenanceService(pub Context);

impl MaintenanceService {
    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.0.admin_raw(request).map(|_| ()).map_err(raw_auth_status)
    }
}

/// etcd's text of an alarm in Status' errors (gogoproto's compact text).
fn alarm_text(member: u64, alarm: i32) -> String {
    let name = match alarm {
        crate::store::ALARM_NOSPACE => "NOSPACE",
        crate::store::ALARM_CORRUPT => "CORRUPT",
        _ => "NONE",
    };
    format!("memberID:{member} alarm:{name} ")
}

/// etcd's `convertToClusterVersion`: `X.Y.Z` (with optional pre-release and
/// build parts) or `X.Y`, cut to major and minor.
fn cluster_version(v: &str) -> Option<(u64, u64)> {
    let parse = |s: &str| -> Option<(u64, u64)> {
        let core = s.split(['-', '+']).next()?;
        let parts: Vec<&str> = core.split('.').collect();
        let [major, minor, patch] = parts.as_slice() else {
            return None;
        };
        let number = |p: &str| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        };
        number(patch)?;
        Some((number(major)?, number(minor)?))
    };
    parse(v).or_else(|| parse(&format!("{v}.0")))
}

fn downgrade_error(text: &'static str, code: Code) -> Status {
    Status::new(code, text)
}

#[tonic::async_trait]
impl maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.0.who(&request)?;
        let mut resp = self.0.store.alarm(request.into_inner()).await.map_err(status)?;
        resp.header = self.0.header(self.0.store.snapshot().revision);
        Ok(Response::new(resp))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let snap = self.0.store.snapshot();
        let rev = snap.revision;
        let size = self.0.store.db_size();
        Ok(Response::new(StatusResponse {
            header: self.0.header(rev),
            version: ETCD_VERSION.into(),
            db_size: size,
            leader: self.0.identity.member_id,
            raft_index: raft_term(rev),
            raft_term: raft_term(rev),
            raft_applied_index: raft_term(rev),
            errors: snap.alarms.iter().map(|(m, a)| alarm_text(*m, *a)).collect(),
            db_size_in_use: size,
            is_learner: false,
        }))
    }

    async fn defragment(&self, request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        self.admin(&request)?;
        if !self.0.store.defragment().await.map_err(status)? {
            tracing::info!("defragment: another process maintains this repository's packs; nothing to do here");
        }
        // etcd answers Defragment without a header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin(&request)?;
        let (hash, revision) = self.0.store.hash();
        Ok(Response::new(HashResponse {
            header: self.0.header(revision),
            hash,
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.admin(&request)?;
        let h = self.0.store.hash_kv(request.get_ref().revision).await.map_err(status)?;
        Ok(Response::new(HashKvResponse {
            header: self.0.header(h.revision),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: 0,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin(&request)?;
        if !self.0.namespace.is_empty() {
            // A snapshot holds every tenant's keys: not for a namespace.
            return Err(super::auth_status(crate::auth::AuthError::PermissionDenied));
        }
        let snapshot = self.0.store.snapshot_bundle().await.map_err(status)?;
        tracing::info!(
            bytes = snapshot.len,
            revision = snapshot.revision,
            "sending a snapshot (Git bundle)"
        );
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let total = snapshot.len;
            let mut file = tokio::fs::File::from_std(snapshot.file);
            let mut sha = <sha2::Sha256 as sha2::Digest>::new();
            let mut sent = 0u64;
            while sent < total {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK.min((total - sent) as usize)];
                if let Err(e) = file.read_exact(&mut buf).await {
                    let _ = tx
                        .send(Err(Status::internal(format!("gitcd: reading the snapshot: {e}"))))
                        .await;
                    return;
                }
                sent += buf.len() as u64;
                sha2::Digest::update(&mut sha, &buf);
                let chunk = SnapshotResponse {
                    header: None,
                    remaining_bytes: total - sent,
                    blob: buf.into(),
                    version: String::new(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            let digest: [u8; 32] = sha2::Digest::finalize(sha).into();
            let _ = tx
                .send(Ok(SnapshotResponse {
                    header: None,
                    remaining_bytes: 0,
                    blob: digest.to_vec().into(),
                    version: String::new(),
                }))
                .await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        // The only member leads: moving to itself is done at once, anywhere
        // else there is no member to move to.
        if request.get_ref().target_id != self.0.identity.member_id {
            return Err(Status::new(
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ));
        }
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(&self, request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        use downgrade_request::DowngradeAction;
        let req = request.into_inner();
        let current = format!("{}.{}.0", CLUSTER_VERSION.0, CLUSTER_VERSION.1);
        let validate = |v: &str| -> Result<String, Status> {
            let target = cluster_version(v).ok_or_else(|| {
                downgrade_error(
                    "etcdserver: wrong downgrade target version format",
                    Code::InvalidArgument,
                )
            })?;
            if target != (CLUSTER_VERSION.0, CLUSTER_VERSION.1 - 1) {
                return Err(downgrade_error(
                    "etcdserver: invalid downgrade target version",
                    Code::InvalidArgument,
                ));
            }
            if self.0.members.downgrade().is_some() {
                return Err(downgrade_error(
                    "etcdserver: cluster has a downgrade job in progress",
                    Code::FailedPrecondition,
                ));
            }
            Ok(format!("{}.{}.0", target.0, target.1))
        };
        match DowngradeAction::try_from(req.action) {
            Ok(DowngradeAction::Validate) => {
                validate(&req.version)?;
            }
            Ok(DowngradeAction::Enable) => {
                let target = validate(&req.version)?;
                self.0.members.set_downgrade(Some(target));
            }
            Ok(DowngradeAction::Cancel) => {
                if self.0.members.downgrade().is_none() {
                    return Err(downgrade_error(
                        "etcdserver: no inflight downgrade job",
                        Code::FailedPrecondition,
                    ));
                }
                self.0.members.set_downgrade(None);
            }
            Err(_) => return Err(Status::new(Code::Unknown, "etcdserver: unknown method")),
        }
        Ok(Response::new(DowngradeResponse {
            header: self.0.header(self.0.store.snapshot().revision),
            version: current,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_versions() {
        let cases = [
            ("3.4", Some((3, 4))),
            ("3.4.0", Some((3, 4))),
            ("3.4.7-rc.1", Some((3, 4))),
            ("3", None),
            ("v3.4", None),
            ("3.4.x", None),
            ("", None),
        ];
        for (v, want) in cases {
            assert_eq!(cluster_version(v), want, "{v:?}");
        }
    }
}
