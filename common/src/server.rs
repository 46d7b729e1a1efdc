//! `gitcd serve`, the composition root: binds the listeners, opens the
//! store, serves the etcd v3 gRPC API and the HTTP endpoints (`/health`,
//! `/livez`, `/readyz`, `/version`, `/metrics`) on the client URLs (HTTP/2
//! and HTTP/1.1, plain or TLS), the HTTP endpoints on `--listen-metrics-urls`,
//! and the pull loop when asked for. On shutdown (SIGTERM) it drains: stops
//! accepting, reports not ready, ends watch streams, lets open requests
//! finish within a grace period, then closes the store (the writes queued
//! are applied or fail, none half-applied) and exits.

mod endpoints;
mod metrics;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::etcd::{self, Context, Identity};
use crate::http::ListenUrl;
use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::store::{StorageError, Store, StoreConfig};
use crate::tls::{TlsConfig, TlsError};

/// How long open requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything `gitcd serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub store: StoreConfig,
    /// Client URLs (`--listen-urls`): gRPC and the HTTP endpoints.
    pub listen: Vec<ListenUrl>,
    /// `--listen-metrics-urls`: the HTTP endpoints only.
    pub listen_metrics: Vec<ListenUrl>,
    /// Certificates for `https://` listeners.
    pub tls: Option<TlsConfig>,
    /// URLs clients are told to use (MemberList).
    pub advertise_client_urls: Vec<String>,
    pub name: String,
    pub max_request_bytes: usize,
    /// How often watchers that asked for progress notifications get one.
    pub watch_progress_interval: Duration,
    /// Merging an upstream branch in and pushing, when asked for.
    pub pull: Option<crate::pull::PullConfig>,
    /// How long a simple auth token lives unused (etcd's `--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// bcrypt's cost for new password hashes (etcd's `--bcrypt-cost`).
    pub bcrypt_cost: u32,
    /// Most bytes of live keys and values (etcd's `--quota-backend-bytes`);
    /// `None`: no quota.
    pub quota_backend_bytes: Option<i64>,
    /// The key prefix clients of `listen` are confined to (`--namespace`;
    /// empty: none).
    pub namespace: bytes::Bytes,
    /// More listeners, each confined to its own prefix
    /// (`--namespace-listen-urls PREFIX=URL[,URL]`).
    pub tenants: Vec<Tenant>,
}

/// A namespace served on its own listeners.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub prefix: bytes::Bytes,
    pub listen: Vec<ListenUrl>,
}

impl ServeConfig {
    /// A config serving `store` on `listen` with every other setting at its
    /// default (etcd's, where etcd has one).
    pub fn new(store: StoreConfig, listen: Vec<ListenUrl>) -> Self {
        Self {
            store,
            advertise_client_urls: listen.iter().map(|u| u.url()).collect(),
            listen,
            listen_metrics: Vec::new(),
            tls: None,
            name: "default".into(),
            max_request_bytes: etcd::DEFAULT_MAX_REQUEST_BYTES,
            watch_progress_interval: Duration::from_secs(5),
            pull: None,
            auth_token_ttl: crate::auth::DEFAULT_TOKEN_TTL,
            bcrypt_cost: crate::auth::DEFAULT_BCRYPT_COST,
            quota_backend_bytes: Some(etcd::DEFAULT_QUOTA_BYTES),
            namespace: bytes::Bytes::new(),
            tenants: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store")]
    Store(#[from] StorageError),
    #[error("TLS")]
    Tls(#[from] TlsError),
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("{0} panicked")]
    Panicked(&'static str),
}

/// Checks URLs against the TLS settings: an `https://` listener needs a
/// certificate pair.
pub fn check_tls(urls: &[ListenUrl], tls: Option<&TlsConfig>) -> Result<(), String> {
    if urls.iter().any(|u| u.tls) && tls.is_none() {
        return Err("an https:// listen URL needs --cert-file and --key-file".into());
    }
    Ok(())
}

/// The listeners of a config, bound (tests bind `127.0.0.1:0` themselves).
pub struct Listeners {
    pub client: Vec<(TcpListener, bool)>,
    pub metrics: Vec<(TcpListener, bool)>,
    /// Each tenant's prefix and listeners, in the config's order.
    pub tenants: Vec<(bytes::Bytes, Vec<(TcpListener, bool)>)>,
}

/// Binds every listen address; fails on the first that cannot be bound.
pub async fn bind(config: &ServeConfig) -> Result<Listeners, ServeError> {
    async fn all(urls: &[ListenUrl]) -> Result<Vec<(TcpListener, bool)>, ServeError> {
        let mut out = Vec::new();
        for u in urls {
            let l = TcpListener::bind(u.addr)
                .await
                .map_err(|source| ServeError::Bind { addr: u.addr, source })?;
            out.push((l, u.tls));
        }
        Ok(out)
    }
    let mut tenants = Vec::new();
    for t in &config.tenants {
        tenants.push((t.prefix.clone(), all(&t.listen).await?));
    }
    Ok(Listeners {
        client: all(&config.listen).await?,
        metrics: all(&config.listen_metrics).await?,
        tenants,
    })
}

/// Binds, opens the store, serves until `shutdown` completes.
pub async fn run(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let listeners = bind(&config).await?;
    serve(config, listeners, shutdown).await
}

/// Serves on already-bound listeners.
pub async fn serve(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
    let identity = Arc::new(Identity::new(
        &config.name,
        &config.store.data_ref,
        config.advertise_client_urls.clone(),
        config.max_request_bytes,
    ));
    let mut store_config = config.store.clone();
    store_config.member_id = identity.member_id;
    let store = open_store(store_config).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    {
        let draining = draining.clone();
        tokio::spawn(async move {
            shutdown.await;
            draining.store(true, Ordering::Release);
            tracing::info!(grace = ?SHUTDOWN_GRACE, "draining: no new connections, watch streams end, open requests finish");
            let _ = stop_tx.send(true);
        });
    }
    let registry = prometheus::Registry::new();
    let server_metrics = metrics::Server::new(&registry)?;
    store.register_metrics(&registry)?;
    let pull_stats = Arc::new(match &config.pull {
        Some(_) => crate::pull::Stats::with_metrics(&registry)?,
        None => crate::pull::Stats::default(),
    });
    let ctx = Context {
        store: store.clone(),
        identity,
        stopping: stop_rx.clone(),
        watch_gauges: server_metrics.watch_gauges(),
        members: Default::default(),
        authn: Arc::new(etcd::Authn::new(
            config.auth_token_ttl,
            config.bcrypt_cost,
            config.tls.as_ref().is_some_and(|t| t.client_cert_auth),
        )),
        quota_bytes: config.quota_backend_bytes,
        namespace: etcd::namespace::Namespace::new(config.namespace.clone()),
    };
    let admin = endpoints::admin(&store, registry, server_metrics.clone(), draining.clone());
    let grpc = metrics::Instrumented::new(routes(&ctx, &config), server_metrics.clone());
    let mut client_listeners: Vec<_> = listeners
        .client
        .into_iter()
        .map(|(l, https)| (l, https, grpc.clone(), config.namespace.clone()))
        .collect();
    for (prefix, tenant) in listeners.tenants {
        let ctx = Context {
            namespace: etcd::namespace::Namespace::new(prefix.clone()),
            ..ctx.clone()
        };
        let grpc = metrics::Instrumented::new(routes(&ctx, &config), server_metrics.clone());
        client_listeners.extend(
            tenant
                .into_iter()
                .map(|(l, https)| (l, https, grpc.clone(), prefix.clone())),
        );
    }
    let mut servers = tokio::task::JoinSet::new();
    for (listener, https, grpc, namespace) in client_listeners {
        let addr = local(&listener)?;
        let namespace = crate::keys::escape(&namespace);
        tracing::info!(%addr, tls = https, %namespace, "serving etcd v3 gRPC and /health, /livez, /readyz, /version, /metrics");
        let service = ClientService {
            grpc: grpc.clone(),
            admin: Arc::new(admin.clone()),
        };
        let tls = if https { tls.clone() } else { None };
        servers.spawn(crate::http::serve(
            listener,
            tls,
            service,
            stop_rx.clone(),
            SHUTDOWN_GRACE,
        ));
    }
    for (listener, https) in listeners.metrics {
        let addr = local(&listener)?;
        tracing::info!(%addr, tls = https, "serving /health, /livez, /readyz, /version, /metrics");
        let tls = if https { tls.clone() } else { None };
        servers.spawn(crate::http::serve_admin(listener, tls, admin.clone(), stop_rx.clone()));
    }
    let puller = config.pull.clone().map(|pull| {
        tracing::info!(
            remote = %crate::remote::redact(&pull.remote.url),
            merge = ?pull.merge_refs,
            push = pull.push,
            interval = ?pull.interval,
            "pulling from upstream"
        );
        tokio::spawn(crate::pull::run(store.clone(), pull, pull_stats, stop_rx.clone()))
    });
    while let Some(done) = servers.join_next().await {
        done.map_err(|_| ServeError::Panicked("a listener"))?;
    }
    if let Some(puller) = puller {
        match puller.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %crate::error::chain(&e), "the pull loop ended"),
            Err(_) => return Err(ServeError::Panicked("the pull loop")),
        }
    }
    // The writes already queued finish (or fail) before the writer stops.
    tokio::task::spawn_blocking(move || store.close())
        .await
        .map_err(|_| ServeError::Panicked("closing the store"))?;
    tracing::info!("stopped");
    Ok(())
}

fn local(l: &TcpListener) -> Result<SocketAddr, ServeError> {
    l.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// Opens the store on a blocking thread and logs what it holds.
async fn open_store(config: StoreConfig) -> Result<Store, ServeError> {
    let store = tokio::task::spawn_blocking(move || Store::open(config))
        .await
        .map_err(|_| ServeError::Panicked("opening the store"))??;
    let snap = store.snapshot();
    tracing::info!(
        git_dir = %store.git_dir().display(),
        data_ref = %store.data_ref(),
        revision = snap.revision,
        keys = snap.kvs.len(),
        "store ready"
    );
    Ok(store)
}

/// A client URL's service: gRPC requests to the etcd services, the rest to
/// the HTTP endpoints (HTTP/1.1 too, as etcd serves them).
#[derive(Clone)]
struct ClientService {
    grpc: metrics::Instrumented,
    admin: Arc<crate::http::Admin>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ClientService {
    type Response = hyper::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let grpc = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            let grpc = self.grpc.clone();
            return Box::pin(async move { Ok(grpc.call(req).await) });
        }
        let answer = self.admin.answer(req.uri().path()).into_response();
        Box::pin(async move { Ok(answer.map(tonic::body::Body::new)) })
    }
}

fn routes(ctx: &Context, config: &ServeConfig) -> tonic::service::Routes {
    let limit = config.max_request_bytes + etcd::GRPC_OVERHEAD_BYTES;
    macro_rules! svc {
        ($server:ident, $inner:expr) => {
            $server::new($inner)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX)
        };
    }
    tonic::service::Routes::new(svc!(KvServer, etcd::kv::KvService(ctx.clone())))
        .add_service(svc!(
            WatchServer,
            etcd::watch::WatchService {
                ctx: ctx.clone(),
                progress_interval: config.watch_progress_interval,
            }
        ))
        .add_service(svc!(LeaseServer, etcd::lease::LeaseService(ctx.clone())))
        .add_service(svc!(ClusterServer, etcd::cluster::ClusterService(ctx.clone())))
        .add_service(svc!(
            MaintenanceServer,
            etcd::maintenance::MaintenanceService(ctx.clone())
        ))
        .add_service(svc!(AuthServer, etcd::auth::AuthService(ctx.clone())))
        .add_service(svc!(LockServer, etcd::lock::LockService(ctx.clone())))
        .add_service(svc!(ElectionServer, etcd::lock::ElectionService(ctx.clone())))
        .prepare()
}
