//! `etcdserverpb.Maintenance`: Status, Alarm and Defragment; the rest answer
//! Unimplemented, naming the method.

use tonic::{Request, Response, Status};

use super::{Context, ETCD_VERSION, raft_term};
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse, alarm_request, maintenance_server,
};

pub struct MaintenanceService(pub Context);

#[tonic::async_trait]
impl maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        if req.action == alarm_request::AlarmAction::Activate as i32 {
            return Err(super::unimplemented::method("Maintenance/Alarm ACTIVATE"));
        }
        // gitcd raises no alarms: GET lists none and DEACTIVATE has nothing to clear.
        let rev = self.0.store.snapshot().revision;
        Ok(Response::new(AlarmResponse {
            header: self.0.header(rev),
            alarms: Vec::new(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let rev = self.0.store.snapshot().revision;
        let size = self.0.store.db_size();
        Ok(Response::new(StatusResponse {
            header: self.0.header(rev),
            version: ETCD_VERSION.into(),
            db_size: size,
            leader: self.0.identity.member_id,
            raft_index: raft_term(rev),
            raft_term: raft_term(rev),
            raft_applied_index: raft_term(rev),
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner: false,
        }))
    }

    async fn defragment(&self, _: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        // Nothing to defragment: Git's object store is compacted by `git gc`.
        let rev = self.0.store.snapshot().revision;
        Ok(Response::new(DefragmentResponse {
            header: self.0.header(rev),
        }))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(super::unimplemented::method("Maintenance/Hash"))
    }

    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(super::unimplemented::method("Maintenance/HashKV"))
    }

    type SnapshotStream = tokio_stream::Empty<Result<SnapshotResponse, Status>>;

    async fn snapshot(&self, _: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(super::unimplemented::method("Maintenance/Snapshot"))
    }

    async fn move_leader(&self, _: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(super::unimplemented::method("Maintenance/MoveLeader"))
    }

    async fn downgrade(&self, _: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(super::unimplemented::method("Maintenance/Downgrade"))
    }
}
