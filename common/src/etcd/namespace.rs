//! A listener's key namespace (`--namespace`, `--namespace-listen-urls`):
//! every key a client sends is prefixed, every key it gets back has the
//! prefix removed, exactly as etcd's `grpc-proxy start --namespace`
//! translates (its client's `namespace` package): a key becomes
//! `prefix + key`; a range end `"\0"` (every key from `key` on) becomes the
//! end of the prefix's keys; any other non-empty range end becomes
//! `prefix + end`. The only key of the prefix's range a client cannot name
//! is the prefix itself (its empty key). Compaction, leases and revisions
//! stay global, as behind etcd's proxy.

use bytes::Bytes;

use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse, request_op,
    response_op,
};
use crate::proto::mvccpb::KeyValue;

/// A key prefix; empty: no namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace(Bytes);

impl Namespace {
    pub fn new(prefix: impl Into<Bytes>) -> Self {
        Self(prefix.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn prefix(&self) -> &Bytes {
        &self.0
    }

    /// `key` as stored.
    pub fn key(&self, key: &[u8]) -> Bytes {
        if self.0.is_empty() {
            return Bytes::copy_from_slice(key);
        }
        let mut k = Vec::with_capacity(self.0.len() + key.len());
        k.extend_from_slice(&self.0);
        k.extend_from_slice(key);
        k.into()
    }

    /// A range end as stored (etcd's `prefixInterval`, the end half).
    pub fn end(&self, end: &[u8]) -> Bytes {
        if self.0.is_empty() || end.is_empty() {
            return Bytes::copy_from_slice(end);
        }
        if end == b"\0" {
            // The end of the prefix's keys: the prefix plus one, with carry.
            let mut e = self.0.to_vec();
            for i in (0..e.len()).rev() {
                e[i] = e[i].wrapping_add(1);
                if e[i] != 0 {
                    return e.into();
                }
            }
            return Bytes::from_static(b"\0");
        }
        self.key(end)
    }

    /// A stored key as the client knows it.
    pub fn strip(&self, key: &Bytes) -> Bytes {
        if key.starts_with(&self.0) {
            key.slice(self.0.len()..)
        } else {
            key.clone()
        }
    }

    pub fn strip_kv(&self, kv: &mut KeyValue) {
        kv.key = self.strip(&kv.key);
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key.starts_with(&self.0)
    }

    pub fn range(&self, r: &mut RangeRequest) {
        r.range_end = self.end(&r.range_end);
        r.key = self.key(&r.key);
    }

    pub fn put(&self, p: &mut PutRequest) {
        p.key = self.key(&p.key);
    }

    pub fn delete(&self, d: &mut DeleteRangeRequest) {
        d.range_end = self.end(&d.range_end);
        d.key = self.key(&d.key);
    }

    fn compare(&self, c: &mut Compare) {
        c.range_end = self.end(&c.range_end);
        c.key = self.key(&c.key);
    }

    fn op(&self, op: &mut RequestOp) {
        match &mut op.request {
            Some(request_op::Request::RequestRange(r)) => self.range(r),
            Some(request_op::Request::RequestPut(p)) => self.put(p),
            Some(request_op::Request::RequestDeleteRange(d)) => self.delete(d),
            Some(request_op::Request::RequestTxn(t)) => self.txn(t),
            None => {}
        }
    }

    /// Every compare and op, nested txns too.
    pub fn txn(&self, t: &mut TxnRequest) {
        t.compare.iter_mut().for_each(|c| self.compare(c));
        t.success.iter_mut().for_each(|o| self.op(o));
        t.failure.iter_mut().for_each(|o| self.op(o));
    }

    fn response_op(&self, r: &mut ResponseOp) {
        match &mut r.response {
            Some(response_op::Response::ResponseRange(r)) => r.kvs.iter_mut().for_each(|kv| self.strip_kv(kv)),
            Some(response_op::Response::ResponsePut(p)) => p.prev_kv.iter_mut().for_each(|kv| self.strip_kv(kv)),
            Some(response_op::Response::ResponseDeleteRange(d)) => {
                d.prev_kvs.iter_mut().for_each(|kv| self.strip_kv(kv))
            }
            Some(response_op::Response::ResponseTxn(t)) => self.txn_response(t),
            None => {}
        }
    }

    pub fn txn_response(&self, t: &mut TxnResponse) {
        t.responses.iter_mut().for_each(|r| self.response_op(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's prefixInterval cases: a key, a `"\0"` end (to the prefix's
    /// end, with carry over 0xff), any other end, and no namespace.
    #[test]
    fn intervals() {
        type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8], &'a [u8]);
        let cases: &[Case] = &[
            (b"/t/", b"a", b"", b"/t/a", b""),
            (b"/t/", b"a", b"\0", b"/t/a", b"/t0"),
            (b"/t/", b"\0", b"\0", b"/t/\0", b"/t0"),
            (b"/t/", b"a", b"b", b"/t/a", b"/t/b"),
            (b"/t/", b"", b"", b"/t/", b""),
            (b"a\xff", b"k", b"\0", b"a\xffk", b"b\0"),
            (b"\xff\xff", b"k", b"\0", b"\xff\xffk", b"\0"),
            (b"", b"k", b"\0", b"k", b"\0"),
        ];
        for (pfx, key, end, want_key, want_end) in cases {
            let ns = Namespace::new(Bytes::copy_from_slice(pfx));
            assert_eq!(ns.key(key).as_ref(), *want_key, "{pfx:?} {key:?}");
            assert_eq!(ns.end(end).as_ref(), *want_end, "{pfx:?} {end:?}");
        }
    }

    #[test]
    fn stripping() {
        let ns = Namespace::new(Bytes::from_static(b"/t/"));
        assert_eq!(ns.strip(&Bytes::from_static(b"/t/a")).as_ref(), b"a");
        assert_eq!(ns.strip(&Bytes::from_static(b"/t/")).as_ref(), b"");
    }
}
