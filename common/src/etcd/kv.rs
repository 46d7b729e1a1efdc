//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{Context, check, status};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server,
};
use crate::store::{WriteOp, WriteResult};

pub struct KvService(pub Context);

impl KvService {
    async fn write(&self, op: WriteOp) -> Result<WriteResult, Status> {
        self.0.store.write(op).await.map_err(status)
    }
}

fn unexpected(what: &str) -> Status {
    Status::internal(format!("gitcd: the store answered {what} with another kind of result"))
}

#[tonic::async_trait]
impl kv_server::Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        check::range(&req)?;
        let mut resp = self.0.store.range(req).await.map_err(status)?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        check::put(&req)?;
        self.0.check_size(req.encoded_len())?;
        match self.write(WriteOp::Put(req)).await? {
            WriteResult::Put(mut resp) => {
                self.0.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("Put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        check::delete_range(&req)?;
        self.0.check_size(req.encoded_len())?;
        match self.write(WriteOp::DeleteRange(req)).await? {
            WriteResult::DeleteRange(mut resp) => {
                self.0.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("DeleteRange")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        check::txn(&req)?;
        if crate::store::is_read_only(&req) {
            // etcd serves read-only txns without proposing them: no size check,
            // and no wait behind writes.
            let mut resp = self.0.store.read_txn(req).await.map_err(status)?;
            self.0.fill(&mut resp.header);
            return Ok(Response::new(resp));
        }
        self.0.check_size(req.encoded_len())?;
        match self.write(WriteOp::Txn(req)).await? {
            WriteResult::Txn(mut resp) => {
                self.0.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("Txn")),
        }
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        self.0.check_size(req.encoded_len())?;
        match self.write(WriteOp::Compact(req)).await? {
            WriteResult::Revision(rev) => Ok(Response::new(CompactionResponse {
                header: self.0.header(rev),
            })),
            _ => Err(unexpected("Compact")),
        }
    }
}
