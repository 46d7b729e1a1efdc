//! The etcd v3 gRPC services. Thin: validate as etcd's v3rpc layer does,
//! call the store, fill the response header, map errors to etcd's exact
//! statuses (clients parse the texts).

pub mod auth;
pub mod check;
pub mod cluster;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod namespace;
pub mod watch;

use std::sync::{Arc, Mutex};

use tonic::{Code, Status};

use crate::auth::{AuthError, AuthInfo, Tokens};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::store::{Error, Store};

/// The version reported by `Status`: an etcd 3.5 API level, >= 3.5.13 so
/// that newer kube-apiservers enable progress-notify based features.
pub const ETCD_VERSION: &str = "3.5.16";

/// etcd's default `--max-request-bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 3 * 512 * 1024;
/// gRPC's receive limit is the request limit plus this (etcd's
/// `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Who this server is, for headers, Status and MemberList.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub max_request_bytes: usize,
}

impl Identity {
    /// Stable ids derived from the member's name and the data it serves.
    pub fn new(name: &str, data_ref: &str, client_urls: Vec<String>, max_request_bytes: usize) -> Self {
        let id = |what: &str| {
            let d = <sha1::Sha1 as sha1::Digest>::digest(format!("gitcd {what} {name} {data_ref}"));
            u64::from_be_bytes(d[..8].try_into().expect("a SHA-1 digest has 20 bytes")) & !(1 << 63)
        };
        Self {
            cluster_id: id("cluster"),
            member_id: id("member"),
            name: name.to_owned(),
            client_urls,
            peer_urls: Vec::new(),
            max_request_bytes,
        }
    }
}

/// The gauges watch streams keep (`etcd_debugging_mvcc_watch_stream_total`,
/// `etcd_debugging_mvcc_watcher_total`).
#[derive(Clone, Debug)]
pub struct WatchGauges {
    pub streams: prometheus::IntGauge,
    pub watchers: prometheus::IntGauge,
}

impl Default for WatchGauges {
    fn default() -> Self {
        let gauge = |name: &str| prometheus::IntGauge::new(name, name).expect("a valid metric name");
        Self {
            streams: gauge("watch_streams"),
            watchers: gauge("watchers"),
        }
    }
}

/// What the single member changes in memory: its peer URLs (MemberUpdate)
/// and a downgrade enabled by Downgrade ENABLE (gitcd has no raft log to
/// keep them in; a restart forgets them).
#[derive(Debug, Default)]
pub struct Members {
    peer_urls: Mutex<Vec<String>>,
    downgrade: Mutex<Option<String>>,
}

impl Members {
    pub fn peer_urls(&self) -> Vec<String> {
        self.peer_urls.lock().expect("peer URL lock is never poisoned").clone()
    }

    pub fn set_peer_urls(&self, urls: Vec<String>) {
        *self.peer_urls.lock().expect("peer URL lock is never poisoned") = urls;
    }

    /// The downgrade target, when one is enabled.
    pub fn downgrade(&self) -> Option<String> {
        self.downgrade.lock().expect("downgrade lock is never poisoned").clone()
    }

    pub fn set_downgrade(&self, target: Option<String>) {
        *self.downgrade.lock().expect("downgrade lock is never poisoned") = target;
    }
}

/// How requests are authenticated (etcd's `--auth-token=simple`,
/// `--auth-token-ttl`, `--bcrypt-cost`, `--client-cert-auth`).
pub struct Authn {
    pub tokens: Tokens,
    pub bcrypt_cost: u32,
    /// A verified client certificate's common name is the user of a request
    /// without a token.
    pub client_cert_auth: bool,
}

impl Authn {
    pub fn new(token_ttl: std::time::Duration, bcrypt_cost: u32, client_cert_auth: bool) -> Self {
        Self {
            tokens: Tokens::new(token_ttl),
            bcrypt_cost,
            client_cert_auth,
        }
    }
}

impl Default for Authn {
    fn default() -> Self {
        Self::new(crate::auth::DEFAULT_TOKEN_TTL, crate::auth::DEFAULT_BCRYPT_COST, false)
    }
}

/// etcd's default `--quota-backend-bytes` (2 GiB), which gitcd measures on
/// the live keys and values.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 << 30;

/// What a request carries to say who sent it: an auth token (metadata
/// `token`, or `authorization` as etcd's gateway sends it) and the verified
/// client certificate's common name.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub common_name: Option<String>,
}

impl Credentials {
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let metadata = request.metadata();
        let token = metadata
            .get("token")
            .or_else(|| metadata.get("authorization"))
            .map(|t| t.to_str().unwrap_or_default().to_owned());
        Self {
            token,
            common_name: request
                .extensions()
                .get::<crate::tls::ClientCommonName>()
                .map(|cn| cn.0.clone()),
        }
    }
}

/// What every service holds.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    pub identity: Arc<Identity>,
    /// Turns true when the server shuts down: long-lived streams end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    pub watch_gauges: WatchGauges,
    pub members: Arc<Members>,
    pub authn: Arc<Authn>,
    /// Most bytes of live keys and values; `None`: no quota.
    pub quota_bytes: Option<i64>,
    /// The key prefix this listener confines its clients to (empty: none).
    pub namespace: namespace::Namespace,
}

impl Context {
    /// Completes when the server starts shutting down.
    pub async fn stopped(&self) {
        let mut s = self.stopping.clone();
        let _ = s.wait_for(|s| *s).await;
    }

    /// A top-level response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: raft_term(revision),
        })
    }

    /// Fills the identity fields of a header the store made.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = self.header(revision);
    }

    /// Who sent `request` (etcd's `AuthInfoFromCtx`): `None` while auth is
    /// off or when the request carries no credentials; the user of its
    /// `token` (an unknown or expired one is refused); without a token, with
    /// `--client-cert-auth`, the client certificate's common name.
    pub fn who_raw<T>(&self, request: &tonic::Request<T>) -> Result<Option<AuthInfo>, AuthError> {
        self.resolve(&Credentials::of(request))
    }

    /// Who `credentials` name, as [`Context::who_raw`].
    pub fn resolve(&self, credentials: &Credentials) -> Result<Option<AuthInfo>, AuthError> {
        let auth = self.store.snapshot().auth.clone();
        if !auth.enabled {
            return Ok(None);
        }
        if let Some(token) = &credentials.token {
            let user = self.authn.tokens.user(token).ok_or(AuthError::InvalidAuthToken)?;
            return Ok(Some(AuthInfo {
                user,
                revision: auth.revision,
            }));
        }
        if self.authn.client_cert_auth
            && let Some(cn) = &credentials.common_name
        {
            return Ok(Some(AuthInfo {
                user: cn.clone(),
                revision: auth.revision,
            }));
        }
        Ok(None)
    }

    /// [`Context::who_raw`], refusals as etcd's statuses.
    pub fn who<T>(&self, request: &tonic::Request<T>) -> Result<Option<AuthInfo>, Status> {
        self.who_raw(request).map_err(auth_status)
    }

    /// The caller, who must have the root role while auth is on (etcd's
    /// `IsAdminPermitted`).
    pub fn admin_raw<T>(&self, request: &tonic::Request<T>) -> Result<Option<AuthInfo>, AuthError> {
        let who = self.who_raw(request)?;
        self.store.snapshot().auth.check_admin(who.as_ref())?;
        Ok(who)
    }

    /// [`Context::admin_raw`], refusals as etcd's statuses.
    pub fn admin<T>(&self, request: &tonic::Request<T>) -> Result<Option<AuthInfo>, Status> {
        self.admin_raw(request).map_err(auth_status)
    }

    /// etcd's quota check before a write that adds `cost` bytes: past the
    /// quota, the NOSPACE alarm is raised and the write refused.
    pub async fn check_quota(&self, cost: i64) -> Result<(), Status> {
        let Some(quota) = self.quota_bytes else {
            return Ok(());
        };
        if self.store.snapshot().live_bytes + cost <= quota {
            return Ok(());
        }
        let raise = crate::proto::etcdserverpb::AlarmRequest {
            action: crate::proto::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.identity.member_id,
            alarm: crate::store::ALARM_NOSPACE,
        };
        if let Err(e) = self.store.alarm(raise).await {
            tracing::warn!(error = %crate::error::chain(&e), "cannot raise the NOSPACE alarm");
        }
        Err(status(Error::NoSpace))
    }

    /// etcd's request size check, made before a write is proposed.
    pub fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        // etcd measures the request wrapped in its raft envelope.
        const RAFT_ENVELOPE: usize = 17;
        if encoded_len + RAFT_ENVELOPE > self.identity.max_request_bytes {
            return Err(check::invalid(check::REQUEST_TOO_LARGE));
        }
        Ok(())
    }
}

/// gitcd has no raft: its term and index follow the revision.
pub fn raft_term(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// The one mapping from store errors to gRPC statuses, with etcd's codes and
/// texts.
pub fn status(e: Error) -> Status {
    match e {
        Error::Compacted => Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        Error::FutureRevision => Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        Error::KeyNotFound => Status::new(Code::InvalidArgument, "etcdserver: key not found"),
        Error::LeaseNotFound => Status::new(Code::NotFound, "etcdserver: requested lease not found"),
        Error::LeaseExists => Status::new(Code::FailedPrecondition, "etcdserver: lease already exists"),
        Error::LeaseTtlTooLarge => Status::new(Code::OutOfRange, "etcdserver: too large lease TTL"),
        Error::Stopped => Status::new(Code::Unavailable, "etcdserver: server stopped"),
        Error::NoSpace => Status::new(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
        Error::Corrupt => Status::new(Code::DataLoss, "etcdserver: corrupt cluster"),
        Error::Auth(e) => auth_status(e),
        // etcd's lock and election servers return these as plain errors,
        // which gRPC answers with code Unknown and the error's text.
        e @ (Error::SessionExpired | Error::NotLeader | Error::NoLeader) => Status::new(Code::Unknown, e.to_string()),
        e @ Error::Changed { .. } => Status::new(Code::Aborted, format!("gitcd: {e}")),
        Error::Storage(e) => {
            let text = crate::error::chain(&*e).to_string();
            tracing::error!(error = %text, "storage error");
            Status::new(Code::Internal, format!("gitcd: {text}"))
        }
    }
}

/// etcd's status for an auth condition (its `toGRPCErrorMap`); the one
/// etcd has no entry for answers Unknown with the auth package's text.
pub fn auth_status(e: AuthError) -> Status {
    let (code, text) = match e {
        AuthError::RootUserNotExist => (Code::FailedPrecondition, "etcdserver: root user does not exist"),
        AuthError::RootRoleNotExist => (
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role",
        ),
        AuthError::UserAlreadyExist => (Code::FailedPrecondition, "etcdserver: user name already exists"),
        AuthError::UserEmpty => (Code::InvalidArgument, "etcdserver: user name is empty"),
        AuthError::UserNotFound => (Code::FailedPrecondition, "etcdserver: user name not found"),
        AuthError::RoleAlreadyExist => (Code::FailedPrecondition, "etcdserver: role name already exists"),
        AuthError::RoleNotFound => (Code::FailedPrecondition, "etcdserver: role name not found"),
        AuthError::RoleEmpty => (Code::InvalidArgument, "etcdserver: role name is empty"),
        AuthError::AuthFailed => (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password",
        ),
        AuthError::PermissionNotGiven => (Code::InvalidArgument, "etcdserver: permission not given"),
        AuthError::PermissionDenied => (Code::PermissionDenied, "etcdserver: permission denied"),
        AuthError::RoleNotGranted => (Code::FailedPrecondition, "etcdserver: role is not granted to the user"),
        AuthError::PermissionNotGranted => (
            Code::FailedPrecondition,
            "etcdserver: permission is not granted to the role",
        ),
        AuthError::AuthNotEnabled => (Code::FailedPrecondition, "etcdserver: authentication is not enabled"),
        AuthError::AuthOldRevision => (Code::InvalidArgument, "etcdserver: revision of auth store is old"),
        AuthError::InvalidAuthToken => (Code::Unauthenticated, "etcdserver: invalid auth token"),
        AuthError::InvalidAuthMgmt => (Code::InvalidArgument, "etcdserver: invalid auth management"),
        e @ AuthError::NoPasswordUser => return Status::new(Code::Unknown, e.to_string()),
    };
    Status::new(code, text)
}

/// What etcd's Maintenance server answers when its admin check fails: the
/// auth condition as it is, which gRPC sends with code Unknown and the auth
/// package's text (`auth: permission denied`).
pub fn raw_auth_status(e: AuthError) -> Status {
    Status::new(Code::Unknown, e.to_string())
}
