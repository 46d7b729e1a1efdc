//! `gitcd serve`: binds the listeners, opens the store and serves the etcd
//! v3 API until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::etcd::{self, Context, Identity};
use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::store::{Store, StoreConfig, StoreError};

/// Accepted connections, with Nagle's algorithm off: a response written in
/// two parts must not wait for the client's delayed ACK (40 ms).
fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// How long open requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything `gitcd serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub store: StoreConfig,
    /// Addresses to listen on (from `--listen-urls`).
    pub listen: Vec<SocketAddr>,
    /// URLs clients are told to use (MemberList).
    pub advertise_client_urls: Vec<String>,
    pub name: String,
    pub max_request_bytes: usize,
    /// How often watchers that asked for progress notifications get one.
    pub watch_progress_interval: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gRPC server on {addr} failed: {source}")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// Parses `--listen-urls`: comma-separated `http://host:port` URLs with an
/// IP address host (as etcd requires for listening).
pub fn parse_listen_urls(urls: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("listen URL {url:?}: only http:// is supported (TLS and unix sockets are not yet)")
        })?;
        let hostport = rest.trim_end_matches('/');
        let addr = hostport
            .parse::<SocketAddr>()
            .map_err(|_| format!("listen URL {url:?}: expected http://IP:PORT, for example http://127.0.0.1:2379"))?;
        out.push(addr);
    }
    if out.is_empty() {
        return Err("no listen URL given".into());
    }
    Ok(out)
}

/// Binds every listen address; fails on the first that cannot be bound.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ServeError> {
    let mut listeners = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr: *addr, source })?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Binds, opens the store, serves until `shutdown` completes.
pub async fn run(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let listeners = bind(&config.listen).await?;
    serve(config, listeners, shutdown).await
}

/// Serves on already-bound listeners (tests bind `127.0.0.1:0`).
pub async fn serve(
    config: ServeConfig,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .map_err(|e| ServeError::Config(format!("store start-up panicked: {e}")))??;
    let snap = store.snapshot();
    tracing::info!(
        repo = %config.store.repo.display(),
        data_ref = %config.store.data_ref,
        metadata_ref = %config.store.metadata_ref,
        revision = snap.revision,
        keys = snap.kvs.len(),
        "store ready"
    );
    let identity = Arc::new(Identity::new(
        &config.name,
        &config.store.data_ref,
        config.advertise_client_urls.clone(),
        config.max_request_bytes,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = Context {
        store,
        identity,
        stopping: stop_rx.clone(),
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        tracing::info!(%addr, "serving etcd v3 gRPC");
        let router = routes(&ctx, &config);
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(|source| ServeError::Transport { addr, source })
        });
    }
    let mut stopping = stop_rx.clone();
    let grace = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => done.map_err(|e| ServeError::Config(format!("server task panicked: {e}")))??,
                None => break,
            },
            () = &mut grace => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period: closing them");
                tasks.abort_all();
                break;
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

fn routes(ctx: &Context, config: &ServeConfig) -> tonic::transport::server::Router {
    let limit = config.max_request_bytes + etcd::GRPC_OVERHEAD_BYTES;
    macro_rules! svc {
        ($server:ident, $inner:expr) => {
            $server::new($inner)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX)
        };
    }
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(7200)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(svc!(KvServer, etcd::kv::KvService(ctx.clone())))
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
        .add_service(svc!(AuthServer, etcd::unimplemented::AuthService))
}
