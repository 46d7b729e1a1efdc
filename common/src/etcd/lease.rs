//! `etcdserverpb.Lease`.

use std::pin::Pin;

use prost::Message as _;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{Context, auth_status, status};
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, lease_server,
};

pub struct LeaseService(pub Context);

#[tonic::async_trait]
impl lease_server::Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        // etcd's quota counts a lease too; gitcd's counts live keys and
        // values only, so a lease passes unless the quota is already spent.
        self.0.check_quota(0).await?;
        self.0.who(&request)?;
        let req = request.into_inner();
        self.0.check_size(req.encoded_len())?;
        let granted = self.0.store.lease_grant(req.id, req.ttl).await.map_err(status)?;
        Ok(Response::new(LeaseGrantResponse {
            header: self.0.header(granted.revision),
            id: granted.id,
            ttl: granted.ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = self.0.who(&request)?;
        super::kv::check_lease_keys(&self.0, who.as_ref(), request.get_ref().id)?;
        let req = request.into_inner();
        let revision = self.0.store.lease_revoke(req.id).await.map_err(status)?;
        Ok(Response::new(LeaseRevokeResponse {
            header: self.0.header(revision),
        }))
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let ctx = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => req,
                        _ => break,
                    },
                    _ = ctx.stopped() => break,
                };
                // An unknown lease answers TTL 0, as etcd does.
                let ttl = ctx.store.keep_alive(req.id).unwrap_or(0);
                let resp = LeaseKeepAliveResponse {
                    header: ctx.header(ctx.store.snapshot().revision),
                    id: req.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        if request.get_ref().keys {
            // etcd's `checkLeaseTimeToLive`: the keys are shown only to a
            // user who may read each of them.
            let snap = self.0.store.snapshot();
            if snap.auth.enabled {
                // Each key is checked; a lease without keys needs no user.
                let who = self.0.who(&request)?;
                if let Some(l) = snap.leases.get(&request.get_ref().id) {
                    for key in l.keys.iter() {
                        snap.auth.check_read(who.as_ref(), key, b"").map_err(auth_status)?;
                    }
                }
            }
        }
        let req = request.into_inner();
        let header = self.0.header(self.0.store.snapshot().revision);
        // An unknown lease answers TTL -1, as etcd does.
        let resp = match self.0.store.time_to_live(req.id) {
            Some((ttl, granted_ttl, keys)) => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl,
                granted_ttl,
                // Behind a namespace: only its keys, without the prefix (as
                // etcd's namespace proxy answers).
                keys: if req.keys {
                    let ns = &self.0.namespace;
                    keys.iter().filter(|k| ns.contains(k)).map(|k| ns.strip(k)).collect()
                } else {
                    Vec::new()
                },
            },
            None => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(&self, _: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        let snap = self.0.store.snapshot();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.0.header(snap.revision),
            leases: snap.leases.keys().map(|id| LeaseStatus { id: *id }).collect(),
        }))
    }
}
