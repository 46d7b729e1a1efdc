//! Request validation as etcd's v3rpc layer does it before a request reaches
//! the store (`checkRangeRequest`, `checkPutRequest`, `checkTxnRequest`,
//! `checkIntervals`), with the same errors in the same order.

use std::collections::HashSet;

use bytes::Bytes;
use tonic::{Code, Status};

use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, range_request, request_op,
};

pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const INVALID_SORT: &str = "etcdserver: invalid sort option";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

pub fn invalid(message: &str) -> Status {
    Status::new(Code::InvalidArgument, message)
}

pub fn range(r: &RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(invalid(EMPTY_KEY));
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(invalid(INVALID_SORT));
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(invalid(EMPTY_KEY));
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(invalid(VALUE_PROVIDED));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(invalid(LEASE_PROVIDED));
    }
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(invalid(EMPTY_KEY));
    }
    Ok(())
}

pub fn txn(r: &TxnRequest) -> Result<(), Status> {
    txn_ops(r)?;
    intervals(&r.success)?;
    intervals(&r.failure)?;
    Ok(())
}

fn txn_ops(r: &TxnRequest) -> Result<(), Status> {
    if r.compare.len().max(r.success.len()).max(r.failure.len()) > MAX_TXN_OPS {
        return Err(invalid(TOO_MANY_OPS));
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(invalid(EMPTY_KEY));
    }
    for op in r.success.iter().chain(&r.failure) {
        request_op_check(op)?;
    }
    Ok(())
}

fn request_op_check(op: &RequestOp) -> Result<(), Status> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => range(r),
        Some(request_op::Request::RequestPut(p)) => put(p),
        Some(request_op::Request::RequestDeleteRange(d)) => delete_range(d),
        Some(request_op::Request::RequestTxn(t)) => txn_ops(t),
        None => Err(invalid(KEY_NOT_FOUND)),
    }
}

/// A key interval as etcd's duplicate check sees it: raw bytes, `[key,
/// end)` or a point.
struct Interval {
    start: Bytes,
    end: Option<Bytes>,
}

impl Interval {
    fn contains(&self, point: &[u8]) -> bool {
        match &self.end {
            None => self.start.as_ref() == point,
            Some(end) => self.start.as_ref() <= point && point < end.as_ref(),
        }
    }
}

/// etcd's `checkIntervals`: no key is put twice, and no put overlaps a
/// delete, within one branch including the nested txns it runs; the two
/// branches of a nested txn may put the same key.
fn intervals(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<Interval>), Status> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(Interval {
                start: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let overlaps = |dels: &[Interval], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: HashSet<Bytes> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (then_puts, then_dels) = intervals(&t.success)?;
        let (else_puts, else_dels) = intervals(&t.failure)?;
        for k in &then_puts {
            if puts.contains(k) || overlaps(&dels, k) {
                return Err(invalid(DUPLICATE_KEY));
            }
        }
        puts.extend(then_puts.iter().cloned());
        for k in else_puts {
            if (puts.contains(&k) && !then_puts.contains(&k)) || overlaps(&dels, &k) {
                return Err(invalid(DUPLICATE_KEY));
            }
            puts.insert(k);
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || overlaps(&dels, &p.key) {
            return Err(invalid(DUPLICATE_KEY));
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from(k.to_owned()),
                ..Default::default()
            })),
        }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::from(k.to_owned()),
                range_end: Bytes::from(end.to_owned()),
                ..Default::default()
            })),
        }
    }
    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    #[test]
    fn duplicate_keys() {
        let cases: Vec<(Vec<RequestOp>, bool)> = vec![
            (vec![put_op("a"), put_op("b")], true),
            (vec![put_op("a"), put_op("a")], false),
            (vec![del_op("a", "c"), put_op("b")], false),
            (vec![del_op("a", ""), del_op("a", "")], true),
            (vec![txn_op(vec![put_op("a")], vec![put_op("a")])], true),
            (vec![txn_op(vec![put_op("a")], vec![]), put_op("a")], false),
            (vec![txn_op(vec![del_op("a", "")], vec![]), put_op("a")], false),
            (vec![del_op("b", "\0"), put_op("c")], true),
        ];
        for (i, (ops, ok)) in cases.into_iter().enumerate() {
            let r = TxnRequest {
                compare: vec![],
                success: ops,
                failure: vec![],
            };
            assert_eq!(txn(&r).is_ok(), ok, "case {i}");
        }
    }

    #[test]
    fn too_many_ops_and_empty_ops() {
        let r = TxnRequest {
            compare: vec![],
            success: (0..129).map(|i| put_op(&format!("k{i}"))).collect(),
            failure: vec![],
        };
        assert_eq!(
            txn(&r).map_err(|s| s.message().to_owned()),
            Err(TOO_MANY_OPS.to_owned())
        );
        let r = TxnRequest {
            compare: vec![],
            success: vec![RequestOp { request: None }],
            failure: vec![],
        };
        assert_eq!(
            txn(&r).map_err(|s| s.message().to_owned()),
            Err(KEY_NOT_FOUND.to_owned())
        );
    }
}
