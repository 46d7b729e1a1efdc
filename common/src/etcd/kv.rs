//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact. Each request is
//! checked as etcd checks it, in etcd's order: the quota (writes that add
//! data), the request's shape, the caller's token, the size, then the
//! caller's permissions on every key range it reads or writes. A write
//! carries the auth revision its permissions were checked at, so that a
//! permission revoked meanwhile refuses it.

use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{Context, auth_status, check, status};
use crate::auth::{AuthInfo, AuthState};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, kv_server, request_op,
};

pub struct KvService(pub Context);

/// What a put adds to the live data (what the quota counts).
pub fn put_cost(p: &PutRequest) -> i64 {
    (p.key.len() + p.value.len()) as i64
}

/// etcd's quota cost of a txn: the larger of its branches' puts (nested txns
/// are not counted, as in etcd).
pub fn txn_cost(t: &TxnRequest) -> i64 {
    let branch = |ops: &[RequestOp]| -> i64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => put_cost(p),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// etcd's `checkLeasePuts`: attaching a key to a lease (or revoking it)
/// needs write permission on every key the lease holds, unless the caller
/// has the root role.
pub fn check_lease_keys(ctx: &Context, who: Option<&AuthInfo>, lease: i64) -> Result<(), Status> {
    let snap = ctx.store.snapshot();
    let Some(l) = snap.leases.get(&lease) else {
        return Ok(());
    };
    if snap.auth.check_admin(who).is_ok() {
        return Ok(());
    }
    for key in l.keys.iter() {
        snap.auth.check_write(who, key, b"").map_err(auth_status)?;
    }
    Ok(())
}

/// etcd's `checkTxnAuth`: compares and ranges need read permission, puts and
/// deletes write permission (and read, for a delete with `prev_kv`). Nested
/// txns are checked too (etcd 3.5 skips them; gitcd does not let them past
/// the permissions).
pub fn check_txn(auth: &AuthState, who: Option<&AuthInfo>, t: &TxnRequest) -> Result<(), Status> {
    for c in &t.compare {
        auth.check_read(who, &c.key, &c.range_end).map_err(auth_status)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                auth.check_read(who, &r.key, &r.range_end).map_err(auth_status)?
            }
            Some(request_op::Request::RequestPut(p)) => auth.check_write(who, &p.key, b"").map_err(auth_status)?,
            Some(request_op::Request::RequestDeleteRange(d)) => {
                if d.prev_kv {
                    auth.check_read(who, &d.key, &d.range_end).map_err(auth_status)?;
                }
                auth.check_write(who, &d.key, &d.range_end).map_err(auth_status)?;
            }
            Some(request_op::Request::RequestTxn(nested)) => check_txn(auth, who, nested)?,
            None => {}
        }
    }
    Ok(())
}

/// etcd's namespace proxy refuses an empty key in its client, before
/// etcd sees it: a plain error, which gRPC sends with code Unknown.
fn namespaced_empty_key(ctx: &Context, key: &[u8]) -> Result<(), Status> {
    if !ctx.namespace.is_empty() && key.is_empty() {
        return Err(Status::unknown(check::EMPTY_KEY));
    }
    Ok(())
}

impl KvService {
    /// The auth revision a write's permissions were checked at, while auth
    /// is on.
    fn guard(&self, who: &Option<AuthInfo>) -> Option<u64> {
        who.as_ref().map(|w| w.revision)
    }

    /// After a read: refused if users or roles changed while it ran (etcd's
    /// `doSerialize`).
    fn recheck(&self, who: &Option<AuthInfo>) -> Result<(), Status> {
        match who {
            Some(w) if w.revision != self.0.store.snapshot().auth.revision => {
                Err(auth_status(crate::auth::AuthError::AuthOldRevision))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl kv_server::Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        namespaced_empty_key(&self.0, &request.get_ref().key)?;
        check::range(request.get_ref())?;
        let who = self.0.who(&request)?;
        let mut req = request.into_inner();
        let ns = &self.0.namespace;
        ns.range(&mut req);
        let auth = self.0.store.snapshot().auth.clone();
        auth.check_read(who.as_ref(), &req.key, &req.range_end)
            .map_err(auth_status)?;
        let mut resp = self.0.store.range(req).await.map_err(status)?;
        self.recheck(&who)?;
        resp.kvs.iter_mut().for_each(|kv| ns.strip_kv(kv));
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.0.check_quota(put_cost(request.get_ref())).await?;
        namespaced_empty_key(&self.0, &request.get_ref().key)?;
        check::put(request.get_ref())?;
        let who = self.0.who(&request)?;
        let mut req = request.into_inner();
        self.0.check_size(req.encoded_len())?;
        let ns = &self.0.namespace;
        ns.put(&mut req);
        let auth = self.0.store.snapshot().auth.clone();
        auth.check_write(who.as_ref(), &req.key, b"").map_err(auth_status)?;
        check_lease_keys(&self.0, who.as_ref(), req.lease)?;
        if req.prev_kv {
            auth.check_read(who.as_ref(), &req.key, b"").map_err(auth_status)?;
        }
        let mut resp = self.0.store.put_as(req, self.guard(&who)).await.map_err(status)?;
        resp.prev_kv.iter_mut().for_each(|kv| ns.strip_kv(kv));
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        namespaced_empty_key(&self.0, &request.get_ref().key)?;
        check::delete_range(request.get_ref())?;
        let who = self.0.who(&request)?;
        let mut req = request.into_inner();
        self.0.check_size(req.encoded_len())?;
        let ns = &self.0.namespace;
        ns.delete(&mut req);
        let auth = self.0.store.snapshot().auth.clone();
        auth.check_write(who.as_ref(), &req.key, &req.range_end)
            .map_err(auth_status)?;
        if req.prev_kv {
            auth.check_read(who.as_ref(), &req.key, &req.range_end)
                .map_err(auth_status)?;
        }
        let mut resp = self
            .0
            .store
            .delete_range_as(req, self.guard(&who))
            .await
            .map_err(status)?;
        resp.prev_kvs.iter_mut().for_each(|kv| ns.strip_kv(kv));
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let read_only = crate::store::is_read_only(request.get_ref());
        if !read_only {
            self.0.check_quota(txn_cost(request.get_ref())).await?;
        }
        check::txn(request.get_ref())?;
        let who = self.0.who(&request)?;
        let mut req = request.into_inner();
        // etcd serves read-only txns without proposing them: no size check
        // (and the store answers them without waiting behind writes).
        if !read_only {
            self.0.check_size(req.encoded_len())?;
        }
        let ns = &self.0.namespace;
        ns.txn(&mut req);
        let auth = self.0.store.snapshot().auth.clone();
        check_txn(&auth, who.as_ref(), &req)?;
        let mut resp = self.0.store.txn_as(req, self.guard(&who)).await.map_err(status)?;
        if read_only {
            self.recheck(&who)?;
        }
        ns.txn_response(&mut resp);
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        // etcd checks the token but no permission: any client may compact.
        self.0.who(&request)?;
        let req = request.into_inner();
        self.0.check_size(req.encoded_len())?;
        let rev = self.0.store.compact(req.revision).await.map_err(status)?;
        Ok(Response::new(CompactionResponse {
            header: self.0.header(rev),
        }))
    }
}
