//! Applying one write request to the writer's working state, with etcd's
//! semantics (its `apply`, `txn`, compaction and lessor code paths): all
//! changes of a request form one revision, `begin + 1`, and a request that
//! changes nothing makes no revision. Also the rules of a [`ChangeSet`].

use bytes::Bytes;
use gix::ObjectId;

use super::changes::ChangeSet;
use super::range::{KeyRange, range_map, select};
use super::{Error, Granted, Kv, Lease, Snapshot};
use crate::meta::KeyMeta;
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    alarm_request, compare, request_op, response_op,
};

/// One key's change within a revision.
#[derive(Clone, Debug)]
pub struct Change {
    pub key: Bytes,
    pub prev: Option<Kv>,
    /// `None` for a delete.
    pub new: Option<Kv>,
}

/// Reads a past revision (from Git) for a Range inside a Txn.
pub type HistoryReader<'a> = dyn Fn(i64, &KeyRange) -> Result<Vec<(Bytes, Kv)>, Error> + 'a;

/// etcd's lease limits.
const MAX_LEASE_TTL: i64 = 9_000_000_000;
pub const MIN_LEASE_TTL: i64 = 2;

/// A lease whose clock changes once the write is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl: i64 },
    Revoked { id: i64 },
}

/// A revision that gets a commit of its own (a merge), with its data
/// commit's extra parents or the commit to fast-forward to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnCommit {
    pub parents: Vec<ObjectId>,
    pub fast_forward: Option<ObjectId>,
    pub computed_on: Option<ObjectId>,
    pub message: String,
}

/// The application of one request on top of `state` at revision `begin`.
pub struct Apply<'a> {
    pub state: &'a mut Snapshot,
    pub begin: i64,
    pub changes: Vec<Change>,
    pub history: &'a HistoryReader<'a>,
    /// What changed besides keys (leases, compaction), for the commit message.
    pub notes: Vec<String>,
    pub leases: Vec<LeaseChange>,
    /// Set by a change set: its revision is committed alone.
    pub own_commit: Option<OwnCommit>,
    /// When the request is applied: the write time of the values it puts
    /// (nanoseconds since the Unix epoch).
    pub now: i64,
    /// What changed in users and roles, for the auth ref's commit message.
    pub auth_notes: Vec<String>,
}

/// Now, in nanoseconds since the Unix epoch.
pub fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl<'a> Apply<'a> {
    /// The application of a request on top of `state`.
    pub fn new(state: &'a mut Snapshot, history: &'a HistoryReader<'a>) -> Self {
        let begin = state.revision;
        Self {
            state,
            begin,
            changes: Vec::new(),
            history,
            notes: Vec::new(),
            leases: Vec::new(),
            own_commit: None,
            now: unix_nanos(),
            auth_notes: Vec::new(),
        }
    }

    /// etcd's alarm appliers: with CORRUPT raised every write is refused;
    /// with NOSPACE, the writes that add data (`adds`).
    pub fn writable(&self, adds: bool) -> Result<(), Error> {
        if self.state.alarmed(super::ALARM_CORRUPT) {
            Err(Error::Corrupt)
        } else if adds && self.state.alarmed(super::ALARM_NOSPACE) {
            Err(Error::NoSpace)
        } else {
            Ok(())
        }
    }

    /// The revision the request's changes get.
    fn next(&self) -> i64 {
        self.begin + 1
    }

    /// The revision a read inside this request sees.
    fn current(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin
        } else {
            self.next()
        }
    }

    /// A standalone Put (etcd checks its lease first).
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, Error> {
        self.writable(true)?;
        if req.lease != 0 && !self.state.leases.contains_key(&req.lease) {
            return Err(Error::LeaseNotFound);
        }
        self.put_in_txn(req)
    }

    fn put_in_txn(&mut self, req: &PutRequest) -> Result<PutResponse, Error> {
        self.put_at(req, self.now)
    }

    /// A put whose value was written at `time`.
    fn put_at(&mut self, req: &PutRequest, time: i64) -> Result<PutResponse, Error> {
        let prev = self.state.kvs.get(req.key.as_ref()).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(Error::KeyNotFound);
        }
        // A request's key and value are slices of the buffer its message was
        // decoded from (several KiB): the store keeps copies of their own
        // size, not the whole buffer for as long as the key lives.
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => Bytes::copy_from_slice(&req.value),
        };
        let key = Bytes::copy_from_slice(&req.key);
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.meta.lease,
            _ => req.lease,
        };
        let rev = self.next();
        let meta = match &prev {
            Some(p) => KeyMeta {
                create_revision: p.meta.create_revision,
                mod_revision: rev,
                version: p.meta.version + 1,
                lease,
                time,
            },
            None => KeyMeta {
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                lease,
                time,
            },
        };
        let prev_kv = if req.prev_kv {
            prev.as_ref().map(|p| p.to_proto(&key))
        } else {
            None
        };
        let change = self.state.set(key, Some(Kv { meta, value }));
        self.changes.push(change);
        Ok(PutResponse {
            header: header(rev),
            prev_kv,
        })
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let range = KeyRange::from_request(&req.key, &req.range_end);
        let doomed: Vec<(Bytes, Kv)> = range
            .iter(&self.state.kvs)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let prev_kvs = if req.prev_kv {
            doomed.iter().map(|(k, v)| v.to_proto(k)).collect()
        } else {
            Vec::new()
        };
        let deleted = doomed.len() as i64;
        for (key, _) in doomed {
            let change = self.state.set(key, None);
            self.changes.push(change);
        }
        let revision = if deleted != 0 || !self.changes.is_empty() {
            self.next()
        } else {
            self.begin
        };
        DeleteRangeResponse {
            header: header(revision),
            deleted,
            prev_kvs,
        }
    }

    /// A Range inside a Txn, which sees the Txn's earlier writes.
    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        let current = self.current();
        let rev = if req.revision <= 0 { current } else { req.revision };
        if rev < self.state.compact_revision {
            return Err(Error::Compacted);
        }
        if rev == current {
            return Ok(range_map(&self.state.kvs, current, req));
        }
        let range = KeyRange::from_request(&req.key, &req.range_end);
        let kvs = if rev == self.begin {
            // The state before this request: undo its changes.
            let mut before = self.state.kvs.clone();
            for c in self.changes.iter().rev() {
                match &c.prev {
                    Some(p) => before.insert(c.key.clone(), p.clone()),
                    None => before.remove(&c.key),
                };
            }
            range.iter(&before).map(|(k, v)| (k.clone(), v.clone())).collect()
        } else {
            (self.history)(rev, &range)?
        };
        Ok(select(req, current, kvs.len() as i64, kvs.into_iter()))
    }

    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, Error> {
        if !is_read_only(req) {
            self.writable(puts_data(req))?;
        }
        let path = self.compare_path(req);
        self.check_requests(req, &path, &|a, op| a.check_range(op))?;
        if !is_read_only(req) {
            self.check_requests(req, &path, &|a, op| a.check_put(op))?;
        }
        let mut resp = TxnResponse::default();
        self.apply_txn(req, &path, &mut resp)?;
        resp.header = header(self.current());
        Ok(resp)
    }

    /// Evaluates the compares of a txn and of the nested txns on the path it
    /// will take, all against the state before any of its writes.
    fn compare_path(&self, req: &TxnRequest) -> Vec<bool> {
        let ok = req.compare.iter().all(|c| self.compare(c));
        let mut path = vec![ok];
        for op in if ok { &req.success } else { &req.failure } {
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                path.extend(self.compare_path(t));
            }
        }
        path
    }

    fn compare(&self, c: &Compare) -> bool {
        let range = KeyRange::from_request(&c.key, &c.range_end);
        let mut any = false;
        for (_, kv) in range.iter(&self.state.kvs) {
            any = true;
            if !compare_kv(c, Some(kv)) {
                return false;
            }
        }
        any || compare_kv(c, None)
    }

    fn check_requests(
        &self,
        req: &TxnRequest,
        path: &[bool],
        check: &dyn Fn(&Self, &RequestOp) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        let mut path = path;
        let mut txns = 0;
        let ops = if path[0] { &req.success } else { &req.failure };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                let n = self.check_requests(t, &path[1..], check)?;
                txns += n + 1;
                path = &path[n + 1..];
                continue;
            }
            check(self, op)?;
        }
        Ok(txns)
    }

    fn check_range(&self, op: &RequestOp) -> Result<(), Error> {
        let Some(request_op::Request::RequestRange(r)) = &op.request else {
            return Ok(());
        };
        if r.revision == 0 {
            Ok(())
        } else if r.revision > self.begin {
            Err(Error::FutureRevision)
        } else if r.revision < self.state.compact_revision {
            Err(Error::Compacted)
        } else {
            Ok(())
        }
    }

    fn check_put(&self, op: &RequestOp) -> Result<(), Error> {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            return Ok(());
        };
        if (p.ignore_value || p.ignore_lease) && !self.state.kvs.contains_key(p.key.as_ref()) {
            return Err(Error::KeyNotFound);
        }
        if p.lease != 0 && !self.state.leases.contains_key(&p.lease) {
            return Err(Error::LeaseNotFound);
        }
        Ok(())
    }

    fn apply_txn(&mut self, req: &TxnRequest, path: &[bool], resp: &mut TxnResponse) -> Result<usize, Error> {
        let mut path = path;
        resp.succeeded = path[0];
        let ops = if path[0] { &req.success } else { &req.failure };
        let mut txns = 0;
        for op in ops {
            let r = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    Some(response_op::Response::ResponseRange(self.range(r)?))
                }
                Some(request_op::Request::RequestPut(p)) => {
                    Some(response_op::Response::ResponsePut(self.put_in_txn(p)?))
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    Some(response_op::Response::ResponseDeleteRange(self.delete_range(d)))
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    // etcd leaves a nested txn's header without a revision.
                    let mut nested = TxnResponse {
                        header: Some(ResponseHeader::default()),
                        ..Default::default()
                    };
                    let n = self.apply_txn(t, &path[1..], &mut nested)?;
                    txns += n + 1;
                    path = &path[n + 1..];
                    Some(response_op::Response::ResponseTxn(nested))
                }
                None => None,
            };
            resp.responses.push(ResponseOp { response: r });
        }
        Ok(txns)
    }
}

impl Apply<'_> {
    /// Records `revision` as the compact revision; answers the revision now.
    pub fn compact(&mut self, revision: i64) -> Result<i64, Error> {
        self.writable(false)?;
        if revision <= self.state.compact_revision {
            return Err(Error::Compacted);
        }
        if revision > self.state.revision {
            return Err(Error::FutureRevision);
        }
        self.state.compact_revision = revision;
        self.notes.push(format!("compact {revision}"));
        Ok(self.begin)
    }

    /// Grants a lease; id 0 picks a random free positive id.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<Granted, Error> {
        self.writable(true)?;
        if ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        if self.state.leases.contains_key(&id) {
            return Err(Error::LeaseExists);
        }
        let mut id = id;
        while id == 0 || self.state.leases.contains_key(&id) {
            id = rand::random::<i64>() & i64::MAX;
        }
        let ttl = ttl.max(MIN_LEASE_TTL);
        self.state.leases.insert(
            id,
            Lease {
                id,
                ttl,
                keys: imbl::OrdSet::new(),
            },
        );
        self.notes.push(format!("lease grant {id} ttl {ttl}"));
        self.leases.push(LeaseChange::Granted { id, ttl });
        Ok(Granted {
            id,
            ttl,
            revision: self.begin,
        })
    }

    /// Revokes a lease and deletes its keys, in one revision; answers the
    /// revision after.
    pub fn lease_revoke(&mut self, id: i64) -> Result<i64, Error> {
        self.writable(false)?;
        let lease = self.state.leases.remove(&id).ok_or(Error::LeaseNotFound)?;
        for key in lease.keys.iter() {
            self.delete_range(&DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            });
        }
        self.notes.push(format!("lease revoke {id}"));
        self.leases.push(LeaseChange::Revoked { id });
        Ok(self.current())
    }

    /// A lease whose deadline passed: revoked as by its owner, alarms or
    /// not. One already gone only loses its clock.
    pub fn lease_expire(&mut self, id: i64) {
        let Some(lease) = self.state.leases.remove(&id) else {
            self.leases.push(LeaseChange::Revoked { id });
            return;
        };
        for key in lease.keys.iter() {
            self.delete_range(&DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            });
        }
        self.notes.push(format!("lease revoke {id}"));
        self.leases.push(LeaseChange::Revoked { id });
    }

    /// etcd's alarm request: GET lists the raised alarms (of one type, or all
    /// for NONE); ACTIVATE raises one (answering it, new or not);
    /// DEACTIVATE clears one (answering it if it was raised).
    pub fn alarm(&mut self, req: &AlarmRequest) -> AlarmResponse {
        use alarm_request::AlarmAction;
        let member = |(id, alarm): &(u64, i32)| AlarmMember {
            member_id: *id,
            alarm: *alarm,
        };
        let mut alarms = Vec::new();
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                alarms = self
                    .state
                    .alarms
                    .iter()
                    .filter(|(_, a)| req.alarm == 0 || *a == req.alarm)
                    .map(member)
                    .collect();
            }
            Ok(AlarmAction::Activate) if req.alarm != 0 => {
                let raised = (req.member_id, req.alarm);
                if self.state.alarms.insert(raised).is_none() {
                    self.notes
                        .push(format!("alarm activate {} {}", raised.0, alarm_name(raised.1)));
                }
                alarms.push(member(&raised));
            }
            Ok(AlarmAction::Deactivate) => {
                let cleared = (req.member_id, req.alarm);
                if self.state.alarms.remove(&cleared).is_some() {
                    self.notes
                        .push(format!("alarm deactivate {} {}", cleared.0, alarm_name(cleared.1)));
                    alarms.push(member(&cleared));
                }
            }
            _ => {}
        }
        AlarmResponse {
            header: header(self.begin),
            alarms,
        }
    }

    /// Applies a change set: refused with [`Error::Changed`] if a key is not
    /// at the mod revision it expects; otherwise every change, as one
    /// revision (none when nothing changes). A merged-in key keeps the lease
    /// it has here; a new one has none (leases are local).
    pub fn change_set(&mut self, set: &ChangeSet) -> Result<Option<i64>, Error> {
        for c in &set.changes {
            let found = self.state.kvs.get(c.key.as_ref()).map_or(0, |kv| kv.meta.mod_revision);
            if found != c.expect_mod {
                return Err(Error::Changed {
                    key: String::from_utf8_lossy(&c.key).into_owned(),
                    expected: c.expect_mod,
                    found,
                });
            }
        }
        for c in &set.changes {
            match &c.new {
                Some(new) => {
                    let lease = self.state.kvs.get(c.key.as_ref()).map_or(0, |kv| kv.meta.lease);
                    let unchanged = self
                        .state
                        .kvs
                        .get(c.key.as_ref())
                        .is_some_and(|kv| kv.value == new.value);
                    if !unchanged {
                        let put = PutRequest {
                            key: c.key.clone(),
                            value: new.value.clone(),
                            lease,
                            ..Default::default()
                        };
                        self.put_at(&put, new.time)?;
                    }
                }
                None => {
                    self.delete_range(&DeleteRangeRequest {
                        key: c.key.clone(),
                        ..Default::default()
                    });
                }
            }
        }
        if self.changes.is_empty() {
            return Ok(None);
        }
        self.own_commit = Some(OwnCommit {
            parents: set.parents.clone(),
            fast_forward: set.fast_forward,
            computed_on: set.computed_on,
            message: set.message.clone(),
        });
        Ok(Some(self.next()))
    }
}

fn alarm_name(alarm: i32) -> &'static str {
    match alarm {
        super::ALARM_NOSPACE => "NOSPACE",
        super::ALARM_CORRUPT => "CORRUPT",
        _ => "NONE",
    }
}

/// Whether a txn puts data as etcd's quota counts it: a put among its own
/// success or failure ops (nested txns are not counted, as in etcd).
pub fn puts_data(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .any(|op| matches!(op.request, Some(request_op::Request::RequestPut(_))))
}

/// Whether a txn (all branches, nested too) has no writes.
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success.iter().chain(&req.failure).all(|op| match &op.request {
        Some(request_op::Request::RequestPut(_)) | Some(request_op::Request::RequestDeleteRange(_)) => false,
        Some(request_op::Request::RequestTxn(t)) => is_read_only(t),
        _ => true,
    })
}

/// etcd's `compareKV`; a missing key compares as an all-zero KeyValue, and a
/// VALUE compare on a missing key is false.
fn compare_kv(c: &Compare, kv: Option<&Kv>) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let zero = Kv {
        meta: KeyMeta::default(),
        value: Bytes::new(),
    };
    let ord = match target {
        CompareTarget::Value => {
            let Some(kv) = kv else { return false };
            let want = match &c.target_union {
                Some(TargetUnion::Value(v)) => v.as_ref(),
                _ => &[],
            };
            kv.value.as_ref().cmp(want)
        }
        _ => {
            let kv = kv.unwrap_or(&zero);
            let (have, want) = match (target, &c.target_union) {
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => (kv.meta.version, *v),
                (CompareTarget::Version, _) => (kv.meta.version, 0),
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => (kv.meta.create_revision, *v),
                (CompareTarget::Create, _) => (kv.meta.create_revision, 0),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => (kv.meta.mod_revision, *v),
                (CompareTarget::Mod, _) => (kv.meta.mod_revision, 0),
                (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => (kv.meta.lease, *v),
                (_, _) => (kv.meta.lease, 0),
            };
            have.cmp(&want)
        }
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    //! etcd's rules, driven in memory: a snapshot, a request, the answer.

    use super::*;
    use crate::proto::etcdserverpb::{RequestOp, compare::CompareResult, compare::CompareTarget, compare::TargetUnion};
    use crate::store::changes::{KeyChange, NewValue};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// A state at revision 5 with `/a`=1 (created at 2, modified at 4,
    /// version 2) and `/b`=2 on lease 7.
    fn state() -> Snapshot {
        let mut kvs = imbl::OrdMap::new();
        let kv = |c, m, v, lease, value: &str| Kv {
            meta: KeyMeta {
                create_revision: c,
                mod_revision: m,
                version: v,
                lease,
                time: 0,
            },
            value: b(value),
        };
        kvs.insert(b("/a"), kv(2, 4, 2, 0, "1"));
        kvs.insert(b("/b"), kv(3, 3, 1, 7, "2"));
        let mut leases = imbl::OrdMap::new();
        leases.insert(
            7,
            Lease {
                id: 7,
                ttl: 60,
                keys: [b("/b")].into_iter().collect(),
            },
        );
        Snapshot {
            revision: 5,
            kvs,
            leases,
            ..Snapshot::empty(5)
        }
    }

    fn no_history(_: i64, _: &KeyRange) -> Result<Vec<(Bytes, Kv)>, Error> {
        Err(Error::Compacted)
    }

    fn cmp(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
        Compare {
            key: b(key),
            target: target as i32,
            result: result as i32,
            target_union: Some(union),
            range_end: Bytes::new(),
        }
    }

    fn put_op(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b(key),
                value: b(value),
                ..Default::default()
            })),
        }
    }

    fn range_op(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b(key),
                ..Default::default()
            })),
        }
    }

    /// Compares on a missing key see an all-zero key (etcd's compareKV); a
    /// VALUE compare on a missing key is false whatever it asks.
    #[test]
    fn compares_on_missing_keys() {
        use CompareResult::*;
        use CompareTarget::*;
        let cases = [
            (cmp("/x", Version, Equal, TargetUnion::Version(0)), true),
            (cmp("/x", Create, Equal, TargetUnion::CreateRevision(0)), true),
            (cmp("/x", Mod, Greater, TargetUnion::ModRevision(0)), false),
            (cmp("/x", Lease, Equal, TargetUnion::Lease(0)), true),
            (cmp("/x", Value, Equal, TargetUnion::Value(Bytes::new())), false),
            (cmp("/x", Value, NotEqual, TargetUnion::Value(b("v"))), false),
            (cmp("/a", Mod, Equal, TargetUnion::ModRevision(4)), true),
            (cmp("/a", Value, Less, TargetUnion::Value(b("2"))), true),
            (cmp("/b", Lease, Equal, TargetUnion::Lease(7)), true),
        ];
        for (c, want) in cases {
            let mut s = state();
            let history = no_history;
            let resp = Apply::new(&mut s, &history)
                .txn(&TxnRequest {
                    compare: vec![c.clone()],
                    ..Default::default()
                })
                .expect("a txn without writes succeeds");
            assert_eq!(resp.succeeded, want, "{c:?}");
        }
    }

    /// Every compare on the path a txn takes, nested ones too, sees the
    /// state before the txn's writes; reads inside the txn see them.
    #[test]
    fn txn_compares_before_writes_and_reads_after() -> Result<(), Error> {
        let mut s = state();
        let history = no_history;
        let absent = cmp(
            "/k",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        );
        let nested = TxnRequest {
            compare: vec![absent.clone()],
            success: vec![put_op("/j", "nested saw /k absent")],
            failure: vec![put_op("/j", "nested saw /k")],
        };
        let req = TxnRequest {
            compare: vec![absent],
            success: vec![
                put_op("/k", "1"),
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(nested)),
                },
                range_op("/k"),
            ],
            failure: vec![],
        };
        let mut a = Apply::new(&mut s, &history);
        let resp = a.txn(&req)?;
        assert!(resp.succeeded);
        assert_eq!(
            resp.header.map(|h| h.revision),
            Some(6),
            "one revision for the whole txn"
        );
        let Some(response_op::Response::ResponseRange(r)) = &resp.responses[2].response else {
            panic!("a range answer: {resp:?}");
        };
        assert_eq!(r.kvs[0].value, b("1"), "the range sees the txn's put");
        assert_eq!(r.kvs[0].mod_revision, 6);
        assert_eq!(a.changes.len(), 2);
        assert_eq!(
            s.kvs.get(&b("/j")).map(|kv| kv.value.clone()),
            Some(b("nested saw /k absent"))
        );
        Ok(())
    }

    /// Checks run before any write: a txn whose later put names a missing
    /// lease changes nothing.
    #[test]
    fn txn_checks_before_writing() {
        let mut s = state();
        let history = no_history;
        let mut a = Apply::new(&mut s, &history);
        let mut bad = PutRequest {
            key: b("/z"),
            lease: 99,
            ..Default::default()
        };
        let req = TxnRequest {
            success: vec![
                put_op("/y", "1"),
                RequestOp {
                    request: Some(request_op::Request::RequestPut(bad.clone())),
                },
            ],
            ..Default::default()
        };
        assert!(matches!(a.txn(&req), Err(Error::LeaseNotFound)));
        assert!(a.changes.is_empty(), "nothing applied");
        bad.lease = 0;
        bad.ignore_value = true;
        let req = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(bad)),
            }],
            ..Default::default()
        };
        assert!(matches!(a.txn(&req), Err(Error::KeyNotFound)));
    }

    /// Puts: versions and revisions as etcd counts them; ignore_value and
    /// ignore_lease need the key; a put's lease must exist.
    #[test]
    fn puts() -> Result<(), Error> {
        let mut s = state();
        let history = no_history;
        let mut a = Apply::new(&mut s, &history);
        let resp = a.put(&PutRequest {
            key: b("/a"),
            value: b("3"),
            prev_kv: true,
            ..Default::default()
        })?;
        assert_eq!(resp.prev_kv.map(|p| p.value), Some(b("1")));
        assert_eq!(resp.header.map(|h| h.revision), Some(6));
        let m = a.state.kvs[&b("/a")].meta;
        assert_eq!((m.create_revision, m.mod_revision, m.version), (2, 6, 3));
        let ignore = |key: &str| PutRequest {
            key: b(key),
            ignore_value: true,
            ..Default::default()
        };
        assert!(matches!(a.put(&ignore("/missing")), Err(Error::KeyNotFound)));
        a.put(&ignore("/b"))?;
        assert_eq!(a.state.kvs[&b("/b")].value, b("2"), "ignore_value keeps the value");
        assert_eq!(a.state.kvs[&b("/b")].meta.lease, 0, "and the lease follows the request");
        assert!(!a.state.leases[&7].keys.contains(&b("/b")), "detached from lease 7");
        let leased = PutRequest {
            key: b("/c"),
            lease: 8,
            ..Default::default()
        };
        assert!(matches!(a.put(&leased), Err(Error::LeaseNotFound)));
        Ok(())
    }

    /// A request's key and value are slices of the buffer its message was
    /// decoded from; what the store keeps must not hold that buffer.
    #[test]
    fn a_put_keeps_its_own_copies_of_key_and_value() -> Result<(), Error> {
        let mut s = state();
        let history = no_history;
        let mut a = Apply::new(&mut s, &history);
        let message = Bytes::from(vec![b'k'; 8192]);
        a.put(&PutRequest {
            key: message.slice(0..4),
            value: message.slice(4..260),
            ..Default::default()
        })?;
        let inside = |b: &Bytes| message.as_ptr_range().contains(&b.as_ptr());
        let (key, kv) = a.state.kvs.get_key_value(&message.slice(0..4)).expect("the put key");
        assert!(
            !inside(key) && !inside(&kv.value),
            "the store holds slices of the request"
        );
        let change = a.changes.last().expect("the put's change");
        assert!(!inside(&change.key));
        assert_eq!((key.len(), kv.value.len()), (4, 256));
        Ok(())
    }

    /// Deleting nothing makes no revision; deleting a range reports what it
    /// took.
    #[test]
    fn deletes() {
        let mut s = state();
        let history = no_history;
        let mut a = Apply::new(&mut s, &history);
        let none = a.delete_range(&DeleteRangeRequest {
            key: b("/x"),
            ..Default::default()
        });
        assert_eq!((none.deleted, none.header.map(|h| h.revision)), (0, Some(5)));
        assert!(a.changes.is_empty());
        let all = a.delete_range(&DeleteRangeRequest {
            key: b("/"),
            range_end: b("0"),
            prev_kv: true,
        });
        assert_eq!(all.deleted, 2);
        assert_eq!(all.prev_kvs.len(), 2);
        assert_eq!(all.header.map(|h| h.revision), Some(6));
        assert!(a.state.leases[&7].keys.is_empty(), "a deleted key leaves its lease");
    }

    /// Compaction and leases, as etcd's lessor and compactor answer.
    #[test]
    fn compaction_and_leases() -> Result<(), Error> {
        let mut s = state();
        let history = no_history;
        let mut a = Apply::new(&mut s, &history);
        assert!(matches!(a.compact(6), Err(Error::FutureRevision)));
        assert_eq!(a.compact(3)?, 5);
        assert!(matches!(a.compact(3), Err(Error::Compacted)));
        assert!(matches!(a.lease_grant(7, 10), Err(Error::LeaseExists)));
        assert!(matches!(a.lease_grant(1, 9_000_000_001), Err(Error::LeaseTtlTooLarge)));
        let g = a.lease_grant(0, 1)?;
        assert!(g.id > 0 && g.id != 7, "a fresh positive id: {}", g.id);
        assert_eq!(g.ttl, MIN_LEASE_TTL);
        assert!(a.changes.is_empty(), "grants change no key");
        assert_eq!(a.lease_revoke(7)?, 6, "revoking deletes /b: one revision");
        assert!(!a.state.kvs.contains_key(&b("/b")));
        assert!(matches!(a.lease_revoke(7), Err(Error::LeaseNotFound)));
        assert_eq!(
            a.leases,
            vec![
                LeaseChange::Granted {
                    id: g.id,
                    ttl: MIN_LEASE_TTL
                },
                LeaseChange::Revoked { id: 7 }
            ]
        );
        Ok(())
    }

    /// A change set applies only while its keys are as it saw them; it is
    /// one revision, merged keys keep their local lease, and a set that
    /// changes nothing makes none.
    #[test]
    fn change_sets() -> Result<(), Error> {
        let set = |changes: Vec<KeyChange>| ChangeSet {
            changes,
            message: "merge".into(),
            ..Default::default()
        };
        let change = |key: &str, expect_mod, value: Option<&str>| KeyChange {
            key: b(key),
            expect_mod,
            new: value.map(|v| NewValue { value: b(v), time: 42 }),
        };
        let mut s = state();
        let history = no_history;
        let mut a = Apply::new(&mut s, &history);
        let stale = set(vec![change("/a", 3, Some("x"))]);
        assert!(matches!(
            a.change_set(&stale),
            Err(Error::Changed {
                expected: 3,
                found: 4,
                ..
            })
        ));
        let same = set(vec![change("/a", 4, Some("1"))]);
        assert_eq!(a.change_set(&same)?, None, "same value: no revision");
        assert!(a.own_commit.is_none());
        let real = set(vec![
            change("/b", 3, Some("20")),
            change("/new", 0, Some("n")),
            change("/a", 4, None),
        ]);
        assert_eq!(a.change_set(&real)?, Some(6));
        assert_eq!(
            a.state.kvs[&b("/b")].meta.lease,
            7,
            "a merged key keeps its local lease"
        );
        assert_eq!(a.state.kvs[&b("/new")].meta.lease, 0);
        assert_eq!(a.state.kvs[&b("/new")].meta.create_revision, 6);
        assert_eq!(
            a.state.kvs[&b("/new")].meta.time,
            42,
            "a merged value keeps its write time"
        );
        assert!(!a.state.kvs.contains_key(&b("/a")));
        assert_eq!(a.changes.len(), 3);
        assert_eq!(a.own_commit.as_ref().map(|o| o.message.as_str()), Some("merge"));
        Ok(())
    }
}
