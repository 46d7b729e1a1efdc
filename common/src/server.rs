//! `gitcd serve`, the composition root: binds the listeners, opens the
//! store, starts the gRPC servers (one per listener), and on shutdown stops
//! accepting, gives open requests a grace period, and closes the store
//! (which finishes the writes queued and joins the writer thread).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::etcd::{self, Context, Identity};
use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::store::{StorageError, Store, StoreConfig};

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
    /// Merging an upstream branch in and pushing, when asked for.
    pub pull: Option<crate::pull::PullConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store")]
    Store(#[from] StorageError),
    #[error("gRPC server on {addr} failed: {source}")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{0} panicked")]
    Panicked(&'static str),
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
    let store = open_store(config.store.clone()).await?;
    let identity = Arc::new(Identity::new(
        &config.name,
        &config.store.data_ref,
        config.advertise_client_urls.clone(),
        config.max_request_bytes,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let ctx = Context {
        store: store.clone(),
        identity,
        stopping: stop_rx.clone(),
    };
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        tracing::info!(%addr, "serving etcd v3 gRPC");
        let router = routes(&ctx, &config);
        let mut stop = stop_rx.clone();
        servers.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(|source| ServeError::Transport { addr, source })
        });
    }
    let puller = config.pull.clone().map(|pull| {
        tracing::info!(
            remote = %crate::remote::redact(&pull.remote.url),
            merge = ?pull.merge_refs,
            push = pull.push,
            interval = ?pull.interval,
            "pulling from upstream"
        );
        tokio::spawn(crate::pull::run(store.clone(), pull, Arc::default(), stop_rx.clone()))
    });
    let served = drain(servers, stop_rx).await;
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
    served
}

/// Opens the store on a blocking thread and logs what it holds.
async fn open_store(config: StoreConfig) -> Result<Store, ServeError> {
    let store = tokio::task::spawn_blocking(move || Store::open(config))
        .await
        .map_err(|_| ServeError::Panicked("opening the store"))??;
    let snap = store.snapshot();
    tracing::info!(
        git_dir = %store.git_dir().display(),
        revision = snap.revision,
        keys = snap.kvs.len(),
        "store ready"
    );
    Ok(store)
}

/// Waits for the servers to end: on their own (an error), or after
/// shutdown, within the grace period.
async fn drain(
    mut servers: tokio::task::JoinSet<Result<(), ServeError>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let grace = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        tokio::select! {
            done = servers.join_next() => match done {
                Some(done) => done.map_err(|_| ServeError::Panicked("a gRPC server"))??,
                None => return Ok(()),
            },
            () = &mut grace => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period: closing them");
                servers.abort_all();
                return Ok(());
            }
        }
    }
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
