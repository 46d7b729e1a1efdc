//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{Context, check, status};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server,
};

pub struct KvService(pub Context);

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
        let mut resp = self.0.store.put(req).await.map_err(status)?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        check::delete_range(&req)?;
        self.0.check_size(req.encoded_len())?;
        let mut resp = self.0.store.delete_range(req).await.map_err(status)?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        check::txn(&req)?;
        // etcd serves read-only txns without proposing them: no size check
        // (and the store answers them without waiting behind writes).
        if !crate::store::is_read_only(&req) {
            self.0.check_size(req.encoded_len())?;
        }
        let mut resp = self.0.store.txn(req).await.map_err(status)?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        self.0.check_size(req.encoded_len())?;
        let rev = self.0.store.compact(req.revision).await.map_err(status)?;
        Ok(Response::new(CompactionResponse {
            header: self.0.header(rev),
        }))
    }
}
