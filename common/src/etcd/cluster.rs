//! `etcdserverpb.Cluster`: gitcd is a single member; MemberList answers it,
//! membership changes answer Unimplemented.

use tonic::{Request, Response, Status};

use super::Context;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    cluster_server,
};

pub struct ClusterService(pub Context);

#[tonic::async_trait]
impl cluster_server::Cluster for ClusterService {
    async fn member_add(&self, _: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(super::unimplemented::method("Cluster/MemberAdd"))
    }

    async fn member_remove(&self, _: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(super::unimplemented::method("Cluster/MemberRemove"))
    }

    async fn member_update(&self, _: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(super::unimplemented::method("Cluster/MemberUpdate"))
    }

    async fn member_list(&self, _: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let id = &self.0.identity;
        let rev = self.0.store.snapshot().revision;
        Ok(Response::new(MemberListResponse {
            header: self.0.header(rev),
            members: vec![Member {
                id: id.member_id,
                name: id.name.clone(),
                peer_ur_ls: id.peer_urls.clone(),
                client_ur_ls: id.client_urls.clone(),
                is_learner: false,
            }],
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(super::unimplemented::method("Cluster/MemberPromote"))
    }
}
