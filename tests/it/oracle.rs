//! Differential testing against etcd 3.5: a gitcd and an etcd 3.5.1 (`make
//! deps` installs it) side by side, the same request sent to both, the two
//! answers compared after normalising only what legitimately differs.
//!
//! The normalisations, each for a reason:
//! - `cluster_id`, `member_id`, `raft_term` in headers: ids are derived from
//!   names and data (gitcd) or random (etcd), and gitcd has no raft term;
//! - each server's own member id, wherever it appears (alarms, members):
//!   written `<self>`;
//! - auth tokens: random by design (`<token>`);
//! - hashes: gitcd hashes its own data (see `store`'s Maintenance docs),
//!   not bbolt's pages;
//! - the lease id of a session lease the server grants itself (Lock with
//!   lease 0): random on both sides (`<lease>`);
//! - a lease's remaining TTL behind a proxy (`ttl: _`): it depends on when
//!   the second ticks;
//! - etcdctl's retry log lines on stderr: they carry a time stamp and the
//!   address of its resolver.
//!
//! Where the oracle (etcd 3.5.1) cannot answer reliably (MemberPromote, MemberUpdate of an
//! unknown member, Downgrade ENABLE: it times out), gitcd's answer is
//! checked alone against etcd 3.5's texts; where 3.5.1 predates a check
//! later 3.5 releases make (a permission with an inverted range), the case
//! is a unit test (`auth::tests::permission_management`).

use std::time::Duration;

use anyhow::Result;
use common::proto::etcdserverpb::{MemberListRequest, cluster_client::ClusterClient};
use tonic::transport::Channel;

use crate::support::{Etcd, Gitcd};

/// One side of a differential test.
#[derive(Clone)]
pub struct Side {
    pub channel: Channel,
    pub member_id: u64,
    pub endpoint: String,
}

impl Side {
    pub async fn connect(addr: std::net::SocketAddr) -> Result<Self> {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .timeout(Duration::from_secs(30))
            .connect()
            .await?;
        let members = ClusterClient::new(channel.clone())
            .member_list(MemberListRequest::default())
            .await?
            .into_inner();
        Ok(Self {
            channel,
            member_id: members.header.map_or(0, |h| h.member_id),
            endpoint: addr.to_string(),
        })
    }

    /// `text` with this side's member id replaced and the other
    /// normalisations made.
    pub fn normalise(&self, text: &str) -> String {
        let mut out = text.replace(&self.member_id.to_string(), "<self>");
        for field in ["cluster_id: ", "raft_term: ", "hash: "] {
            out = scrub_number(&out, field);
        }
        out
    }
}

/// Replaces the number after each `field` with `_`.
pub fn scrub_number(text: &str, field: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(field) {
        out.push_str(&rest[..at + field.len()]);
        rest = &rest[at + field.len()..];
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 {
            out.push('_');
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// A gitcd and an etcd 3.5.
pub struct Pair {
    pub gitcd: Gitcd,
    pub _etcd: Etcd,
    pub ours: Side,
    pub theirs: Side,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Both servers with default settings (gitcd's bcrypt cost lowered, as
    /// etcd's `--bcrypt-cost` is in `extra` when a test needs it).
    pub async fn start(etcd_flags: &[&str]) -> Result<Self> {
        Self::start_with(etcd_flags, |_| {}).await
    }

    pub async fn start_with(etcd_flags: &[&str], tweak: impl FnOnce(&mut common::server::ServeConfig)) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let gitcd = Gitcd::start_config(common::store::StoreConfig::with_repo(dir.path().join("repo")), tweak).await?;
        let etcd = Etcd::start35(etcd_flags).await?;
        let ours = Side::connect(gitcd.addr).await?;
        let theirs = Side::connect(etcd.addr).await?;
        Ok(Self {
            gitcd,
            _etcd: etcd,
            ours,
            theirs,
            _dir: dir,
        })
    }

    /// Runs `call` on both sides and requires the same normalised answer.
    pub async fn agree<F, Fut>(&self, what: &str, call: F) -> Result<String>
    where
        F: Fn(Side) -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let a = self.ours.normalise(&call(self.ours.clone()).await);
        let b = self.theirs.normalise(&call(self.theirs.clone()).await);
        anyhow::ensure!(a == b, "{what} disagrees\n  gitcd: {a}\n  etcd:  {b}");
        Ok(a)
    }
}

/// Renders a unary answer: the response, or the status code and message.
pub fn render<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> String {
    match r {
        Ok(r) => format!("{:?}", r.into_inner()),
        Err(s) => format!("error {:?}: {}", s.code(), s.message()),
    }
}

/// A request carrying `token` (etcd's `token` metadata) when given.
pub fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token
        && let Ok(v) = t.parse()
    {
        r.metadata_mut().insert("token", v);
    }
    r
}

#[test]
fn scrubbing() {
    assert_eq!(
        scrub_number("cluster_id: 12, x: 3, raft_term: 7 }", "cluster_id: "),
        "cluster_id: _, x: 3, raft_term: 7 }"
    );
}
