//! Differential tests: the same requests to gitcd and to a real etcd must
//! get the same answers (cluster/member ids and raft terms aside), errors
//! included.

use anyhow::Result;
use bytes::Bytes;
use common::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse, compare, range_request, request_op, response_op,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{Client, Etcd, Gitcd};

#[derive(Clone, Debug)]
pub enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    Grant(LeaseGrantRequest),
    Revoke(LeaseRevokeRequest),
}

fn clean(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

/// Responses whose order etcd does not define (sorts with ties) are
/// compared as sets.
fn clean_range(r: &mut RangeResponse, req: &RangeRequest) {
    clean(&mut r.header);
    if req.sort_target != range_request::SortTarget::Key as i32 {
        r.kvs.sort_by(|a, b| a.key.cmp(&b.key));
    }
}

fn clean_txn(r: &mut TxnResponse, req: &TxnRequest) {
    clean(&mut r.header);
    let ops = if r.succeeded { &req.success } else { &req.failure };
    for (resp, op) in r.responses.iter_mut().zip(ops) {
        match (&mut resp.response, &op.request) {
            (Some(response_op::Response::ResponseRange(rr)), Some(request_op::Request::RequestRange(q))) => {
                clean_range(rr, q)
            }
            (Some(response_op::Response::ResponsePut(p)), _) => clean(&mut p.header),
            (Some(response_op::Response::ResponseDeleteRange(d)), _) => clean(&mut d.header),
            (Some(response_op::Response::ResponseTxn(t)), Some(request_op::Request::RequestTxn(q))) => clean_txn(t, q),
            _ => {}
        }
    }
}

/// Runs `op` and renders the answer (or the error's code and message).
pub async fn exec(c: &mut Client, op: &Op) -> String {
    fn err(s: tonic::Status) -> String {
        format!("error {:?}: {}", s.code(), s.message())
    }
    match op {
        Op::Range(q) => match c.kv.range(q.clone()).await {
            Ok(r) => {
                let mut r = r.into_inner();
                clean_range(&mut r, q);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
        Op::Put(q) => match c.kv.put(q.clone()).await {
            Ok(r) => {
                let mut r = r.into_inner();
                clean(&mut r.header);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
        Op::Delete(q) => match c.kv.delete_range(q.clone()).await {
            Ok(r) => {
                let mut r = r.into_inner();
                clean(&mut r.header);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
        Op::Txn(q) => match c.kv.txn(q.clone()).await {
            Ok(r) => {
                let mut r = r.into_inner();
                clean_txn(&mut r, q);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
        Op::Compact(q) => match c.kv.compact(*q).await {
            Ok(r) => {
                let mut r = r.into_inner();
                clean(&mut r.header);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
        Op::Grant(q) => match c.lease.lease_grant(*q).await {
            Ok(r) => {
                let mut r = r.into_inner();
                clean(&mut r.header);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
        Op::Revoke(q) => match c.lease.lease_revoke(*q).await {
            Ok(r) => {
                let mut r = r.into_inner();
                clean(&mut r.header);
                format!("{r:?}")
            }
            Err(s) => err(s),
        },
    }
}

/// Runs `ops` against both servers and fails on the first disagreement.
async fn agree(ops: &[Op]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gitcd = Gitcd::start(&dir.path().join("repo")).await?;
    let etcd = Etcd::start().await?;
    let mut ours = gitcd.client().await?;
    let mut theirs = Client::connect(etcd.addr).await?;
    for (i, op) in ops.iter().enumerate() {
        let a = exec(&mut ours, op).await;
        let b = exec(&mut theirs, op).await;
        assert_eq!(a, b, "op {i} disagrees: {op:?}\n  gitcd: {a}\n  etcd:  {b}");
    }
    gitcd.stop().await?;
    Ok(())
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}
fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    }
}
fn get(k: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    }
}
fn del(k: &str, end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(k),
        range_end: b(end),
        prev_kv: true,
    }
}
fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(k, v))),
    }
}
fn op_get(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(get(k, end))),
    }
}
fn op_del(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(del(k, end))),
    }
}
fn cmp_mod(k: &str, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: b(k),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        range_end: Bytes::new(),
    }
}

/// A scripted sequence through every option the KV issue names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scripted_sequence_matches_etcd() -> Result<()> {
    use range_request::{SortOrder, SortTarget};
    let mut ops = vec![
        Op::Range(get("/a", "")),
        Op::Put(put("/a", "1")),
        Op::Put(PutRequest {
            prev_kv: true,
            ..put("/a", "2")
        }),
        Op::Put(put("/a/b", "3")),
        Op::Put(put("/b", "4")),
        Op::Put(put("compact_rev_key", "0")),
        Op::Put(put("/c", "")),
        Op::Range(get("/", "0")),
        Op::Range(get("\0", "\0")),
        Op::Range(get("/a", "\0")),
        Op::Range(get("/b", "/a")),
        Op::Range(RangeRequest {
            limit: 2,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            limit: -1,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            count_only: true,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            keys_only: true,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            revision: 2,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            revision: 1,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            revision: 100,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            revision: -5,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            sort_order: SortOrder::Descend as i32,
            limit: 2,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            sort_target: SortTarget::Mod as i32,
            sort_order: SortOrder::Descend as i32,
            limit: 2,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            sort_target: SortTarget::Create as i32,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Ascend as i32,
            limit: 3,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            min_mod_revision: 3,
            max_mod_revision: 4,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            min_create_revision: 4,
            max_create_revision: 5,
            limit: 1,
            ..get("/", "0")
        }),
        Op::Range(get("", "")),
        Op::Put(put("", "x")),
        Op::Put(PutRequest {
            ignore_value: true,
            ..put("/missing", "")
        }),
        Op::Put(PutRequest {
            ignore_value: true,
            ..put("/a", "v")
        }),
        Op::Put(PutRequest {
            ignore_lease: true,
            lease: 5,
            ..put("/a", "")
        }),
        Op::Put(PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put("/a", "")
        }),
        Op::Put(PutRequest {
            lease: 12345,
            ..put("/a", "x")
        }),
        Op::Grant(LeaseGrantRequest { ttl: 100, id: 77 }),
        Op::Grant(LeaseGrantRequest { ttl: 100, id: 77 }),
        Op::Grant(LeaseGrantRequest { ttl: 1, id: 78 }),
        Op::Grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 79,
        }),
        Op::Put(PutRequest {
            lease: 77,
            ..put("/leased", "x")
        }),
        Op::Put(PutRequest {
            ignore_lease: true,
            ..put("/leased", "y")
        }),
        Op::Range(get("/leased", "")),
        Op::Delete(del("/nothing", "")),
        Op::Delete(del("/a/", "/a0")),
        Op::Delete(del("/zz", "\0")),
        Op::Txn(TxnRequest {
            compare: vec![cmp_mod("/a", 0)],
            success: vec![op_put("/a", "created")],
            failure: vec![op_get("/a", "")],
        }),
        Op::Txn(TxnRequest {
            compare: vec![cmp_mod("/new", 0)],
            success: vec![op_put("/new", "created"), op_get("/new", ""), op_get("/", "0")],
            failure: vec![op_get("/new", "")],
        }),
        Op::Txn(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: b("/missing"),
                target_union: Some(compare::TargetUnion::Value(Bytes::new())),
                range_end: Bytes::new(),
            }],
            success: vec![op_put("/x", "1")],
            failure: vec![op_put("/y", "1"), op_del("/b", "")],
        }),
        Op::Txn(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Greater as i32,
                target: compare::CompareTarget::Version as i32,
                key: b("/"),
                target_union: Some(compare::TargetUnion::Version(0)),
                range_end: b("0"),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    compare: vec![cmp_mod("/x", 0)],
                    success: vec![op_put("/nested", "1")],
                    failure: vec![op_put("/nested", "2")],
                })),
            }],
            failure: vec![],
        }),
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![op_put("/d", "1"), op_put("/d", "2")],
            failure: vec![],
        }),
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![op_del("/d", "/e"), op_put("/d1", "2")],
            failure: vec![],
        }),
        Op::Txn(TxnRequest {
            compare: vec![],
            success: (0..129).map(|i| op_put(&format!("/many/{i}"), "v")).collect(),
            failure: vec![],
        }),
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![RequestOp { request: None }],
            failure: vec![],
        }),
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![op_get("/", "0"), op_del("/nested", ""), op_get("/", "0")],
            failure: vec![],
        }),
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    revision: 3,
                    ..get("/", "0")
                })),
            }],
            failure: vec![],
        }),
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![
                op_put("/t", "1"),
                RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        revision: 1000,
                        ..get("/", "0")
                    })),
                },
            ],
            failure: vec![],
        }),
        Op::Compact(CompactionRequest {
            revision: 1000,
            physical: false,
        }),
        Op::Compact(CompactionRequest {
            revision: 5,
            physical: false,
        }),
        Op::Compact(CompactionRequest {
            revision: 5,
            physical: false,
        }),
        Op::Compact(CompactionRequest {
            revision: 4,
            physical: false,
        }),
        Op::Range(RangeRequest {
            revision: 4,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            revision: 5,
            ..get("/", "0")
        }),
        Op::Range(RangeRequest {
            revision: 6,
            ..get("/", "0")
        }),
        Op::Txn(TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    revision: 2,
                    ..get("/", "0")
                })),
            }],
            failure: vec![],
        }),
        Op::Revoke(LeaseRevokeRequest { id: 77 }),
        Op::Revoke(LeaseRevokeRequest { id: 77 }),
        Op::Range(get("/", "0")),
    ];
    // Request size: just under and over the limit.
    let big = "x".repeat(common::etcd::DEFAULT_MAX_REQUEST_BYTES - 100);
    ops.push(Op::Put(put("/big", &big)));
    let too_big = "x".repeat(common::etcd::DEFAULT_MAX_REQUEST_BYTES + 100);
    ops.push(Op::Put(put("/big", &too_big)));
    ops.push(Op::Range(RangeRequest {
        keys_only: true,
        ..get("/", "0")
    }));
    agree(&ops).await
}

/// Random operations over a small key space, several seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_operations_match_etcd() -> Result<()> {
    for seed in [1u64, 2, 3, 4, 5] {
        let ops = random_ops(seed, 300);
        agree(&ops).await.map_err(|e| anyhow::anyhow!("seed {seed}: {e}"))?;
    }
    Ok(())
}

const KEYS: &[&str] = &["/a", "/a/b", "/a/c", "/b", "/b/", "/c/d/e", "k", "/x\0y", "/é"];

fn key(rng: &mut StdRng) -> String {
    KEYS[rng.random_range(0..KEYS.len())].to_owned()
}

fn range_end(rng: &mut StdRng, k: &str) -> String {
    match rng.random_range(0..5) {
        0 | 1 => String::new(),
        2 => "\0".into(),
        3 => {
            let mut e = k.as_bytes().to_vec();
            if let Some(last) = e.last_mut() {
                *last += 1;
            }
            String::from_utf8_lossy(&e).into_owned()
        }
        _ => key(rng),
    }
}

fn random_range(rng: &mut StdRng, rev: i64) -> RangeRequest {
    use range_request::SortOrder;
    let k = key(rng);
    let mut r = RangeRequest {
        key: b(&k),
        range_end: b(&range_end(rng, &k)),
        ..Default::default()
    };
    if rng.random_bool(0.3) {
        r.revision = [0, -1, rev, rev - 1, rev - 3, 1, rev + 1][rng.random_range(0..7)];
    }
    if rng.random_bool(0.3) {
        r.limit = rng.random_range(-1..3);
    }
    if rng.random_bool(0.3) {
        r.sort_order = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][rng.random_range(0..3)] as i32;
        if r.limit == 0 || r.limit == -1 {
            r.sort_target = rng.random_range(0..5);
        }
    }
    r.keys_only = rng.random_bool(0.1);
    r.count_only = rng.random_bool(0.1);
    if rng.random_bool(0.1) {
        r.min_mod_revision = rng.random_range(0..rev + 1);
        r.max_create_revision = rng.random_range(0..rev + 1);
    }
    r
}

fn random_put(rng: &mut StdRng) -> PutRequest {
    let mut p = put(&key(rng), &format!("v{}", rng.random_range(0..4)));
    p.prev_kv = rng.random_bool(0.5);
    if rng.random_bool(0.1) {
        p.ignore_value = true;
        p.value = Bytes::new();
    }
    if rng.random_bool(0.1) {
        p.lease = [1, 2, 99][rng.random_range(0..3)];
    }
    p
}

fn random_delete(rng: &mut StdRng) -> DeleteRangeRequest {
    let k = key(rng);
    DeleteRangeRequest {
        key: b(&k),
        range_end: b(&range_end(rng, &k)),
        prev_kv: rng.random_bool(0.5),
    }
}

fn random_compare(rng: &mut StdRng, rev: i64) -> Compare {
    use compare::{CompareTarget, TargetUnion};
    let target = [
        CompareTarget::Version,
        CompareTarget::Create,
        CompareTarget::Mod,
        CompareTarget::Value,
        CompareTarget::Lease,
    ][rng.random_range(0..5)];
    let n = rng.random_range(0..rev.max(1) + 1);
    let union = match target {
        CompareTarget::Version => TargetUnion::Version(rng.random_range(0..3)),
        CompareTarget::Create => TargetUnion::CreateRevision(n),
        CompareTarget::Mod => TargetUnion::ModRevision(n),
        CompareTarget::Value => TargetUnion::Value(b(&format!("v{}", rng.random_range(0..4)))),
        CompareTarget::Lease => TargetUnion::Lease(rng.random_range(0..2)),
    };
    let k = key(rng);
    Compare {
        result: rng.random_range(0..4),
        target: target as i32,
        key: b(&k),
        target_union: Some(union),
        range_end: if rng.random_bool(0.2) {
            b(&range_end(rng, &k))
        } else {
            Bytes::new()
        },
    }
}

fn random_request_op(rng: &mut StdRng, rev: i64, depth: u32) -> RequestOp {
    let r = match rng.random_range(0..if depth < 1 { 4 } else { 3 }) {
        0 => request_op::Request::RequestRange(random_range(rng, rev)),
        1 => request_op::Request::RequestPut(random_put(rng)),
        2 => request_op::Request::RequestDeleteRange(random_delete(rng)),
        _ => request_op::Request::RequestTxn(random_txn(rng, rev, depth + 1)),
    };
    RequestOp { request: Some(r) }
}

fn random_txn(rng: &mut StdRng, rev: i64, depth: u32) -> TxnRequest {
    TxnRequest {
        compare: (0..rng.random_range(0..3)).map(|_| random_compare(rng, rev)).collect(),
        success: (0..rng.random_range(0..4))
            .map(|_| random_request_op(rng, rev, depth))
            .collect(),
        failure: (0..rng.random_range(0..3))
            .map(|_| random_request_op(rng, rev, depth))
            .collect(),
    }
}

fn random_ops(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    // The revision is only an estimate (it steers the generator); both
    // servers get the same requests whatever it is.
    let mut rev = 1i64;
    let mut ops = vec![
        Op::Grant(LeaseGrantRequest { ttl: 1000, id: 1 }),
        Op::Grant(LeaseGrantRequest { ttl: 1000, id: 2 }),
    ];
    for _ in 0..n {
        let op = match rng.random_range(0..20) {
            0..=5 => Op::Range(random_range(&mut rng, rev)),
            6..=10 => {
                rev += 1;
                Op::Put(random_put(&mut rng))
            }
            11..=12 => {
                rev += 1;
                Op::Delete(random_delete(&mut rng))
            }
            13..=17 => {
                rev += 1;
                Op::Txn(random_txn(&mut rng, rev, 0))
            }
            18 => Op::Compact(CompactionRequest {
                revision: rng.random_range((rev - 8).max(1)..rev + 2),
                physical: false,
            }),
            _ => Op::Revoke(LeaseRevokeRequest {
                id: rng.random_range(1..4),
            }),
        };
        ops.push(op);
    }
    ops
}

/// etcd 3.5 refuses unknown sort enums (3.4, the oracle here, ignores them):
/// gitcd reports an etcd 3.5 version, so it answers as 3.5 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_sort_option_is_refused_as_in_etcd_3_5() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    for (order, target) in [(7, 0), (0, 9)] {
        let s =
            c.kv.range(RangeRequest {
                sort_order: order,
                sort_target: target,
                ..get("/", "0")
            })
            .await
            .expect_err("an unknown sort enum is refused");
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::InvalidArgument, "etcdserver: invalid sort option")
        );
    }
    gitcd.stop().await?;
    Ok(())
}
