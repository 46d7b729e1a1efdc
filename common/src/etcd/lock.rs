//! `v3lockpb.Lock` and `v3electionpb.Election`, served as etcd 3.5 serves
//! them: as recipes over the KV API, run for the caller (its token and
//! certificate go with every step, so auth checks each key as for a KV
//! request, and a namespaced listener confines them to its prefix).
//!
//! A lock named `n` is the set of keys `n/<lease in hex>`; the key with the
//! smallest create revision holds it, and each waiter waits for every key
//! created before its own to go. An election named `n` is the same queue of
//! keys whose values are the candidates' proclamations; the first is the
//! leader. A waiter whose client goes away, or whose wait fails, takes its
//! key back (etcd's Unlock or Resign on a failed wait).

use std::pin::Pin;

use bytes::Bytes;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::kv::KvService;
use super::{Context, Credentials, status};
use crate::proto::etcdserverpb::kv_server::Kv as _;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest,
    TxnResponse, compare, range_request, request_op, response_op,
};
use crate::proto::mvccpb::KeyValue;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse, election_server,
};
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server};
use crate::store::Error;

/// The TTL of the lease etcd's session grants when the request names none.
const SESSION_TTL: i64 = 60;

/// An error of a KV step, as etcd's lock and election servers pass on what
/// their internal client got: a plain error, which gRPC sends with code
/// Unknown and the status's text.
fn relayed(s: Status) -> Status {
    Status::unknown(s.message())
}

/// etcd's text for an election call without its leader key.
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// The end of the range of keys starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): its last byte below 0xff incremented, the rest cut;
/// `"\0"` (every key from `prefix` on) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(b"\0")
}

/// The KV API as the caller: every step checked as a KV request of theirs.
#[derive(Clone)]
struct Caller {
    kv: std::sync::Arc<KvService>,
    credentials: Credentials,
}

impl Caller {
    fn new<T>(ctx: &Context, request: &Request<T>) -> Self {
        Self {
            kv: std::sync::Arc::new(KvService(ctx.clone())),
            credentials: Credentials::of(request),
        }
    }

    fn ctx(&self) -> &Context {
        &self.kv.0
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        if let Some(token) = &self.credentials.token
            && let Ok(v) = token.parse()
        {
            r.metadata_mut().insert("token", v);
        }
        if let Some(cn) = &self.credentials.common_name {
            r.extensions_mut().insert(crate::tls::ClientCommonName(cn.clone()));
        }
        r
    }

    async fn txn(&self, t: TxnRequest) -> Result<TxnResponse, Status> {
        Ok(self.kv.txn(self.request(t)).await.map_err(relayed)?.into_inner())
    }

    async fn range(&self, r: RangeRequest) -> Result<RangeResponse, Status> {
        Ok(self.kv.range(self.request(r)).await.map_err(relayed)?.into_inner())
    }

    async fn delete(&self, key: Bytes) -> Result<Option<ResponseHeader>, Status> {
        let d = DeleteRangeRequest {
            key,
            ..Default::default()
        };
        Ok(self
            .kv
            .delete_range(self.request(d))
            .await
            .map_err(relayed)?
            .into_inner()
            .header)
    }

    /// etcd's session: the caller's lease, or (lease 0) a new one of the
    /// session's default TTL, which the caller's key is then attached to.
    async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = self
            .ctx()
            .store
            .lease_grant(0, SESSION_TTL)
            .await
            .map_err(|e| relayed(status(e)))?;
        Ok(granted.id)
    }

    /// Deletes `key` if it still has `create_revision` (etcd's Resign).
    async fn delete_if_created(&self, key: Bytes, create_revision: i64) -> Result<TxnResponse, Status> {
        self.txn(TxnRequest {
            compare: vec![created_at(&key, create_revision)],
            success: vec![op_delete(key)],
            failure: Vec::new(),
        })
        .await
    }

    /// etcd's `waitDeletes`: until no key under `prefix` created at or
    /// before `max_create_revision` is left, waits for the newest of them
    /// to go.
    async fn wait_deletes(&self, prefix: &Bytes, max_create_revision: i64) -> Result<(), Status> {
        loop {
            let last = self
                .range(RangeRequest {
                    max_create_revision,
                    ..first_created(prefix, range_request::SortOrder::Descend)
                })
                .await?;
            let Some(kv) = last.kvs.into_iter().next() else {
                return Ok(());
            };
            self.wait_delete(&kv.key, kv.create_revision).await?;
        }
    }

    /// Waits until `key`, created at `create_revision`, is deleted (it is
    /// then missing or created anew).
    async fn wait_delete(&self, key: &Bytes, create_revision: i64) -> Result<(), Status> {
        let store = &self.ctx().store;
        let key = self.ctx().namespace.key(key);
        let mut published = store.subscribe();
        loop {
            published.borrow_and_update();
            let now = store.snapshot().kvs.get(&key).map(|kv| kv.meta.create_revision);
            if now != Some(create_revision) {
                return Ok(());
            }
            tokio::select! {
                changed = published.changed() => changed.map_err(|_| status(Error::Stopped))?,
                () = self.ctx().stopped() => return Err(status(Error::Stopped)),
            }
        }
    }
}

/// Takes a waiter's key back unless disarmed: a wait that fails, or whose
/// client goes away (the request's future is dropped), leaves no key that
/// would hold the lock or the lead for nobody.
struct TakeBack {
    caller: Caller,
    key: Bytes,
    create_revision: i64,
    armed: bool,
}

impl Drop for TakeBack {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (caller, key, rev) = (self.caller.clone(), self.key.clone(), self.create_revision);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = caller.delete_if_created(key, rev).await {
                    tracing::warn!(error = %e.message(), "cannot take back a lock or election key");
                }
            });
        }
    }
}

fn created_at(key: &Bytes, create_revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::CreateRevision(create_revision)),
        range_end: Bytes::new(),
    }
}

fn op_put(key: Bytes, value: Bytes, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        })),
    }
}

fn op_get(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

fn op_delete(key: Bytes) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key,
            ..Default::default()
        })),
    }
}

fn get(key: &Bytes) -> RangeRequest {
    RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

/// The key under `prefix` created first (`Ascend`) or last (`Descend`):
/// etcd's `WithFirstCreate` and `WithLastCreate`.
fn first_created(prefix: &Bytes, order: range_request::SortOrder) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

fn range_of(r: &TxnResponse, at: usize) -> Vec<KeyValue> {
    match r.responses.get(at).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => r.kvs.clone(),
        _ => Vec::new(),
    }
}

/// A queue's prefix (`name/`) and a member's key in it (`name/<lease hex>`).
fn queue_key(name: &[u8], lease: i64) -> (Bytes, Bytes) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut key = prefix.clone();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    (prefix.into(), key.into())
}

/// A plain error of etcd's lock and election servers: gRPC sends it with
/// code Unknown and its text.
fn plain(text: &str) -> Status {
    Status::unknown(text)
}

pub struct LockService(pub Context);

#[tonic::async_trait]
impl lock_server::Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = Caller::new(&self.0, &request);
        let mut req = request.into_inner();
        req.lease = caller.session_lease(req.lease).await?;
        let (prefix, key) = queue_key(&req.name, req.lease);
        let owner = first_created(&prefix, range_request::SortOrder::Ascend);
        let tried = caller
            .txn(TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![op_put(key.clone(), Bytes::new(), req.lease), op_get(owner.clone())],
                failure: vec![op_get(get(&key)), op_get(owner)],
            })
            .await?;
        let mut my_rev = tried.header.as_ref().map_or(0, |h| h.revision);
        if !tried.succeeded {
            my_rev = range_of(&tried, 0).first().map_or(0, |kv| kv.create_revision);
        }
        let holder = range_of(&tried, 1);
        if holder.first().is_none_or(|kv| kv.create_revision == my_rev) {
            return Ok(Response::new(LockResponse {
                header: tried.header,
                key,
            }));
        }
        let mut take_back = TakeBack {
            caller: caller.clone(),
            key: key.clone(),
            create_revision: my_rev,
            armed: true,
        };
        caller.wait_deletes(&prefix, my_rev - 1).await?;
        let mine = caller.range(get(&key)).await?;
        if mine.kvs.is_empty() {
            take_back.armed = false;
            return Err(status(Error::SessionExpired));
        }
        take_back.armed = false;
        Ok(Response::new(LockResponse {
            header: mine.header,
            key,
        }))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let caller = Caller::new(&self.0, &request);
        let header = caller.delete(request.into_inner().key).await?;
        Ok(Response::new(UnlockResponse { header }))
    }
}

pub struct ElectionService(pub Context);

impl ElectionService {
    /// etcd's `Proclaim` for a resumed leader: the new value, if `leader`
    /// still leads with the key it was elected with.
    async fn proclaim_as(caller: &Caller, leader: &LeaderKey, value: Bytes) -> Result<TxnResponse, Status> {
        let r = caller
            .txn(TxnRequest {
                compare: vec![created_at(&leader.key, leader.rev)],
                success: vec![op_put(leader.key.clone(), value, leader.lease)],
                failure: Vec::new(),
            })
            .await?;
        if !r.succeeded {
            return Err(status(Error::NotLeader));
        }
        Ok(r)
    }
}

type Observed = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl election_server::Election for ElectionService {
    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let caller = Caller::new(&self.0, &request);
        let mut req = request.into_inner();
        req.lease = caller.session_lease(req.lease).await?;
        let (prefix, key) = queue_key(&req.name, req.lease);
        let tried = caller
            .txn(TxnRequest {
                compare: vec![created_at(&key, 0)],
                success: vec![op_put(key.clone(), req.value.clone(), req.lease)],
                failure: vec![op_get(get(&key))],
            })
            .await?;
        let mut rev = tried.header.as_ref().map_or(0, |h| h.revision);
        let leader = |rev| LeaderKey {
            name: req.name.clone(),
            key: key.clone(),
            rev,
            lease: req.lease,
        };
        if !tried.succeeded {
            let kv = range_of(&tried, 0).into_iter().next().unwrap_or_default();
            rev = kv.create_revision;
            if kv.value != req.value
                && let Err(e) = Self::proclaim_as(&caller, &leader(rev), req.value.clone()).await
            {
                let _ = caller.delete_if_created(key.clone(), rev).await;
                return Err(e);
            }
        }
        let mut take_back = TakeBack {
            caller: caller.clone(),
            key: key.clone(),
            create_revision: rev,
            armed: true,
        };
        let waited = caller.wait_deletes(&prefix, rev - 1).await;
        take_back.armed = false;
        waited?;
        Ok(Response::new(CampaignResponse {
            header: tried.header,
            leader: Some(leader(rev)),
        }))
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let caller = Caller::new(&self.0, &request);
        let req = request.into_inner();
        let leader = req.leader.ok_or_else(|| plain(MISSING_LEADER_KEY))?;
        let r = Self::proclaim_as(&caller, &leader, req.value).await?;
        Ok(Response::new(ProclaimResponse { header: r.header }))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let caller = Caller::new(&self.0, &request);
        let (prefix, _) = queue_key(&request.into_inner().name, 0);
        let r = caller
            .range(first_created(&prefix, range_request::SortOrder::Ascend))
            .await?;
        let kv = r.kvs.into_iter().next().ok_or_else(|| status(Error::NoLeader))?;
        Ok(Response::new(LeaderResponse {
            header: r.header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = Observed;

    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = Caller::new(&self.0, &request);
        let (prefix, _) = queue_key(&request.into_inner().name, 0);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            tokio::select! {
                () = observe(&caller, &prefix, &tx) => {}
                () = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let caller = Caller::new(&self.0, &request);
        let leader = request.into_inner().leader.ok_or_else(|| plain(MISSING_LEADER_KEY))?;
        let r = caller.delete_if_created(leader.key, leader.rev).await?;
        Ok(Response::new(ResignResponse { header: r.header }))
    }
}

/// The events of revisions from `from` on, once there are some.
async fn events_from(
    ctx: &Context,
    published: &mut tokio::sync::watch::Receiver<i64>,
    from: i64,
) -> Result<Vec<std::sync::Arc<crate::store::RevisionEvents>>, Error> {
    loop {
        let now = *published.borrow_and_update();
        if now >= from {
            return ctx.store.events(from, now, 1000).await;
        }
        tokio::select! {
            changed = published.changed() => changed.map_err(|_| Error::Stopped)?,
            () = ctx.stopped() => return Err(Error::Stopped),
        }
    }
}

/// etcd's `Election.Observe`: the leader now (or the first to come), then
/// each value it proclaims, until its key goes; then the next leader. Ends
/// quietly when the history it needs is compacted or the server stops, as
/// etcd's ends its stream.
async fn observe(caller: &Caller, prefix: &Bytes, tx: &tokio::sync::mpsc::Sender<Result<LeaderResponse, Status>>) {
    let ctx = caller.ctx();
    let ns = &ctx.namespace;
    let mut published = ctx.store.subscribe();
    // Events carry stored keys: the namespace's prefix on.
    let stored = ns.key(prefix);
    let range = crate::store::KeyRange::from_request(&stored, &prefix_end(&stored));
    loop {
        let now = match caller
            .range(first_created(prefix, range_request::SortOrder::Ascend))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let (mut revision, kv) = match now.kvs.into_iter().next() {
            Some(kv) => (now.header.as_ref().map_or(0, |h| h.revision), kv),
            None => {
                // Wait for the first put under the prefix.
                let mut from = now.header.as_ref().map_or(0, |h| h.revision);
                let mut first = None;
                while first.is_none() {
                    let Ok(batch) = events_from(ctx, &mut published, from).await else {
                        return;
                    };
                    for rev in &batch {
                        from = rev.revision + 1;
                        first = rev
                            .changes
                            .iter()
                            .find(|c| c.new.is_some() && range.contains(&c.key))
                            .and_then(|c| c.new.as_ref().map(|kv| kv.to_proto(&ns.strip(&c.key))));
                        if first.is_some() {
                            break;
                        }
                    }
                }
                let kv = first.expect("the loop ends with a put");
                (kv.mod_revision, kv)
            }
        };
        let key = ns.key(&kv.key);
        if tx
            .send(Ok(LeaderResponse {
                header: ctx.header(revision),
                kv: Some(kv),
            }))
            .await
            .is_err()
        {
            return;
        }
        // Follow the leader's key until it is deleted.
        'follow: loop {
            let Ok(batch) = events_from(ctx, &mut published, revision + 1).await else {
                return;
            };
            for rev in &batch {
                revision = rev.revision;
                for c in rev.changes.iter().filter(|c| c.key == key) {
                    let Some(new) = &c.new else {
                        break 'follow;
                    };
                    let sent = tx
                        .send(Ok(LeaderResponse {
                            header: ctx.header(rev.revision),
                            kv: Some(new.to_proto(&ns.strip(&c.key))),
                        }))
                        .await;
                    if sent.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        let cases: &[(&[u8], &[u8])] = &[(b"a/", b"a0"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"), (b"", b"\0")];
        for (p, end) in cases {
            assert_eq!(prefix_end(p).as_ref(), *end, "{p:?}");
        }
    }

    #[test]
    fn queue_keys() {
        let (p, k) = queue_key(b"job", 0x694d_8a12);
        assert_eq!(p.as_ref(), b"job/");
        assert_eq!(k.as_ref(), b"job/694d8a12");
    }
}
