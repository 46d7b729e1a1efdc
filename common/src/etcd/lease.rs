//! `etcdserverpb.Lease`.

use std::pin::Pin;

use prost::Message as _;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{Context, status};
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    lease_server,
};
use crate::store::{WriteOp, WriteResult};

pub struct LeaseService(pub Context);

#[tonic::async_trait]
impl lease_server::Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let req = request.into_inner();
        self.0.check_size(req.encoded_len())?;
        match self
            .0
            .store
            .write(WriteOp::LeaseGrant {
                id: req.id,
                ttl: req.ttl,
            })
            .await
            .map_err(status)?
        {
            WriteResult::LeaseGranted { id, ttl, revision } => Ok(Response::new(LeaseGrantResponse {
                header: self.0.header(revision),
                id,
                ttl,
                error: String::new(),
            })),
            _ => Err(Status::internal(
                "gitcd: the store answered LeaseGrant with another kind of result",
            )),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let req = request.into_inner();
        match self
            .0
            .store
            .write(WriteOp::LeaseRevoke { id: req.id })
            .await
            .map_err(status)?
        {
            WriteResult::Revision(revision) => Ok(Response::new(LeaseRevokeResponse {
                header: self.0.header(revision),
            })),
            _ => Err(Status::internal(
                "gitcd: the store answered LeaseRevoke with another kind of result",
            )),
        }
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        _: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        Err(super::unimplemented::method("Lease/LeaseKeepAlive"))
    }

    async fn lease_time_to_live(
        &self,
        _: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Err(super::unimplemented::method("Lease/LeaseTimeToLive"))
    }

    async fn lease_leases(&self, _: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        Err(super::unimplemented::method("Lease/LeaseLeases"))
    }
}
