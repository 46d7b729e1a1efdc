//! `etcdserverpb.Cluster`: gitcd is a single member. MemberList answers it;
//! the membership changes answer what a single-member etcd 3.5 answers when
//! the change cannot be made: an unknown member is not found, removing the
//! only member (or adding one, which gitcd cannot start) leaves too few
//! started members, and only a learner can be promoted. MemberUpdate of the
//! member itself records its peer URLs (in memory: gitcd has no peers).

use tonic::{Code, Request, Response, Status};

use super::Context;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    cluster_server,
};

/// etcd's texts. etcd 3.5 answers "not enough started members" with code
/// Unknown: its error table maps it to a client-side error value, which gRPC
/// does not recognise as a status.
const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
const NOT_ENOUGH_STARTED: &str = "etcdserver: re-configuration failed due to not enough started members";
const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";

pub struct ClusterService(pub Context);

impl ClusterService {
    fn members(&self) -> Vec<Member> {
        let id = &self.0.identity;
        vec![Member {
            id: id.member_id,
            name: id.name.clone(),
            peer_ur_ls: self.0.members.peer_urls(),
            client_ur_ls: id.client_urls.clone(),
            is_learner: false,
        }]
    }

    /// Membership changes need the root role once auth is on (etcd's
    /// `checkMembershipOperationPermission`).
    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.0.admin(request).map(|_| ())
    }

    fn known(&self, id: u64) -> Result<(), Status> {
        if id == self.0.identity.member_id {
            Ok(())
        } else {
            Err(Status::new(Code::NotFound, MEMBER_NOT_FOUND))
        }
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for ClusterService {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        self.check(&request)?;
        // A member gitcd cannot start would cost the cluster its quorum.
        Err(Status::new(Code::Unknown, NOT_ENOUGH_STARTED))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.check(&request)?;
        self.known(request.get_ref().id)?;
        Err(Status::new(Code::Unknown, NOT_ENOUGH_STARTED))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.check(&request)?;
        let req = request.into_inner();
        self.known(req.id)?;
        self.0.members.set_peer_urls(req.peer_ur_ls);
        Ok(Response::new(MemberUpdateResponse {
            header: self.0.header(self.0.store.snapshot().revision),
            members: self.members(),
        }))
    }

    async fn member_list(&self, _: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let rev = self.0.store.snapshot().revision;
        Ok(Response::new(MemberListResponse {
            header: self.0.header(rev),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.check(&request)?;
        self.known(request.get_ref().id)?;
        Err(Status::new(Code::FailedPrecondition, NOT_LEARNER))
    }
}
