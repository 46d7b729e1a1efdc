//! The writer's jobs: a typed operation, the channel its answer goes back
//! on, and the answer kept until its group is durable. The writer handles
//! every job alike ([`Job`]); each operation says what it does to the working
//! state ([`Operation::apply`]) and what it answers, so a caller gets exactly
//! its response type back.

use tokio::sync::oneshot;

use super::apply::Apply;
use super::changes::ChangeSet;
use super::{Applied, Error, Granted};
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest,
    TxnResponse, request_op,
};

/// A request the writer applies.
pub(crate) trait Operation: Send + 'static {
    type Output: Send + 'static;

    /// Applies the request to the working state (etcd's rules in
    /// [`Apply`]). On error the writer undoes whatever it changed.
    fn apply(&self, a: &mut Apply<'_>) -> Result<Self::Output, Error>;

    /// Whether it reads revisions the writer may have applied but not yet
    /// committed (a txn with a Range at an explicit revision).
    fn reads_history(&self) -> bool {
        false
    }

    /// Whether its revision gets a commit of its own.
    fn own_commit(&self) -> bool {
        false
    }
}

impl Operation for PutRequest {
    type Output = PutResponse;
    fn apply(&self, a: &mut Apply<'_>) -> Result<PutResponse, Error> {
        a.put(self)
    }
}

impl Operation for DeleteRangeRequest {
    type Output = DeleteRangeResponse;
    fn apply(&self, a: &mut Apply<'_>) -> Result<DeleteRangeResponse, Error> {
        a.writable(false)?;
        Ok(a.delete_range(self))
    }
}

impl Operation for AlarmRequest {
    type Output = AlarmResponse;
    fn apply(&self, a: &mut Apply<'_>) -> Result<AlarmResponse, Error> {
        Ok(a.alarm(self))
    }
}

impl Operation for TxnRequest {
    type Output = TxnResponse;
    fn apply(&self, a: &mut Apply<'_>) -> Result<TxnResponse, Error> {
        a.txn(self)
    }
    fn reads_history(&self) -> bool {
        reads_history(self)
    }
}

/// Compaction at a revision.
pub(crate) struct Compact(pub i64);

impl Operation for Compact {
    type Output = i64;
    fn apply(&self, a: &mut Apply<'_>) -> Result<i64, Error> {
        a.compact(self.0)
    }
}

pub(crate) struct LeaseGrant {
    pub id: i64,
    pub ttl: i64,
}

impl Operation for LeaseGrant {
    type Output = Granted;
    fn apply(&self, a: &mut Apply<'_>) -> Result<Granted, Error> {
        a.lease_grant(self.id, self.ttl)
    }
}

pub(crate) struct LeaseRevoke(pub i64);

impl Operation for LeaseRevoke {
    type Output = i64;
    fn apply(&self, a: &mut Apply<'_>) -> Result<i64, Error> {
        a.lease_revoke(self.0)
    }
}

/// The lessor found lease `0` expired; nobody waits for the answer.
pub(crate) struct LeaseExpire(pub i64);

impl Operation for LeaseExpire {
    type Output = ();
    fn apply(&self, a: &mut Apply<'_>) -> Result<(), Error> {
        a.lease_expire(self.0);
        Ok(())
    }
}

impl Operation for ChangeSet {
    type Output = Applied;
    fn apply(&self, a: &mut Apply<'_>) -> Result<Applied, Error> {
        Ok(Applied {
            revision: a.change_set(self)?,
        })
    }
    fn own_commit(&self) -> bool {
        true
    }
}

/// A queued job, whatever its operation.
pub(crate) trait Job: Send {
    /// Applies the operation and keeps its answer; whether it succeeded.
    fn apply(&mut self, a: &mut Apply<'_>) -> bool;
    fn reads_history(&self) -> bool;
    fn own_commit(&self) -> bool;
    /// Sends the kept answer, or `failure` when the group did not become
    /// durable.
    fn answer(self: Box<Self>, failure: Option<Error>);
}

/// An operation with its reply channel.
pub(crate) struct Typed<O: Operation> {
    op: O,
    reply: oneshot::Sender<Result<O::Output, Error>>,
    answer: Option<Result<O::Output, Error>>,
}

impl<O: Operation> Typed<O> {
    pub fn new(op: O, reply: oneshot::Sender<Result<O::Output, Error>>) -> Self {
        Self {
            op,
            reply,
            answer: None,
        }
    }
}

impl<O: Operation> Job for Typed<O> {
    fn apply(&mut self, a: &mut Apply<'_>) -> bool {
        let answer = self.op.apply(a);
        let ok = answer.is_ok();
        self.answer = Some(answer);
        ok
    }

    fn reads_history(&self) -> bool {
        self.op.reads_history()
    }

    fn own_commit(&self) -> bool {
        self.op.own_commit()
    }

    fn answer(self: Box<Self>, failure: Option<Error>) {
        let answer = match failure {
            Some(e) => Err(e),
            None => self.answer.unwrap_or(Err(Error::Stopped)),
        };
        // The requester may have gone away; the write stands.
        let _ = self.reply.send(answer);
    }
}

/// Whether a txn has a Range at an explicit revision, in any branch.
fn reads_history(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(request_op::Request::RequestRange(r)) => r.revision > 0,
        Some(request_op::Request::RequestTxn(t)) => reads_history(t),
        _ => false,
    })
}
