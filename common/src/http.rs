//! HTTP: the endpoints probes and scrapes read (`/livez`, `/readyz`,
//! `/metrics`, and gitcd's `/health` and `/version`), and the connection
//! loop every listener uses: optional TLS, then HTTP/1.1 or HTTP/2 (the
//! first bytes decide), TCP_NODELAY, and a graceful shutdown that stops
//! accepting, lets open requests finish, and tells HTTP/2 clients to go
//! (GOAWAY).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;

/// A response to one of the fixed endpoints.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn json(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        Response::builder()
            .status(self.status)
            .header("content-type", self.content_type)
            .body(Full::new(Bytes::from(self.body)))
            .expect("a response of a status, one header and a body is valid")
    }
}

type Handler = Arc<dyn Fn() -> Answer + Send + Sync>;

/// The fixed endpoints of a component: `/livez` always, `/readyz` from a
/// readiness latch, `/metrics` from a registry (refreshed just before each
/// scrape), and whatever else it adds.
#[derive(Clone)]
pub struct Admin {
    pub registry: prometheus::Registry,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    refresh: Arc<dyn Fn() + Send + Sync>,
    extra: Vec<(&'static str, Handler)>,
}

impl Admin {
    /// Endpoints with the process metrics registered; ready when `ready` says.
    pub fn new(ready: Arc<dyn Fn() -> bool + Send + Sync>) -> Self {
        let registry = prometheus::Registry::new();
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        }
        Self {
            registry,
            ready,
            refresh: Arc::new(|| {}),
            extra: Vec::new(),
        }
    }

    /// Calls `refresh` before each scrape (to set gauges read from state).
    pub fn on_scrape(mut self, refresh: Arc<dyn Fn() + Send + Sync>) -> Self {
        self.refresh = refresh;
        self
    }

    /// Adds an endpoint at `path`.
    pub fn route(mut self, path: &'static str, handler: Handler) -> Self {
        self.extra.push((path, handler));
        self
    }

    /// Whether `path` is one of these endpoints.
    pub fn serves(&self, path: &str) -> bool {
        matches!(path, "/livez" | "/readyz" | "/metrics") || self.extra.iter().any(|(p, _)| *p == path)
    }

    /// Answers a request for `path`.
    pub fn answer(&self, path: &str) -> Answer {
        if let Some((_, h)) = self.extra.iter().find(|(p, _)| *p == path) {
            return h();
        }
        match path {
            "/livez" => Answer::text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if (self.ready)() {
                    Answer::text(StatusCode::OK, "ok\n")
                } else {
                    Answer::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            "/metrics" => {
                (self.refresh)();
                let mut out = String::new();
                match prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
                    Ok(()) => Answer {
                        status: StatusCode::OK,
                        content_type: prometheus::TEXT_FORMAT,
                        body: out,
                    },
                    Err(e) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
            _ => Answer::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// A listen URL: `http://IP:PORT` or `https://IP:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenUrl {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl ListenUrl {
    /// The URL again, `http://IP:PORT` or `https://IP:PORT`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }
}

/// Parses comma-separated `http(s)://IP:PORT` URLs (an IP address, as etcd
/// requires for listening).
pub fn parse_urls(urls: &str) -> Result<Vec<ListenUrl>, String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
                (true, r)
            } else if let Some(r) = url.strip_prefix("http://") {
                (false, r)
            } else {
                return Err(format!(
                    "{url:?}: only http:// and https:// are supported (not unix sockets)"
                ));
            };
            rest.trim_end_matches('/')
                .parse()
                .map(|addr| ListenUrl { addr, tls })
                .map_err(|_| format!("{url:?}: expected http(s)://IP:PORT, for example http://127.0.0.1:2379"))
        })
        .collect()
}

/// HTTP/2 settings of etcd's server (keepalive as its embed defaults).
fn builder() -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(7200)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(u32::MAX);
    b
}

/// Serves `service` on `listener` (through `tls` when given) until `stop`
/// turns true; then stops accepting and waits, at most `grace`, for open
/// connections to finish their requests.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_per_connection(listener, tls, move |_: &Peer| service.clone(), stop, grace).await;
}

/// What the connection loop knows of a connection, for a service that
/// decides by it.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The client presented a certificate that the acceptor's trusted CA
    /// verified (a certificate that does not verify fails the handshake).
    pub verified_client_cert: bool,
}

/// [`serve`], with the service made for each connection by `make` from
/// what is known of its peer.
pub async fn serve_per_connection<M, S, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    make: M,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) where
    M: Fn(&Peer) -> S + Clone + Send + 'static,
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Arc::new(builder());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stopped(&mut stop) => break,
        };
        let Ok((stream, addr)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let (make, builder, tls) = (make.clone(), builder.clone(), tls.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match tls {
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        let certificates = stream.get_ref().1.peer_certificates();
                        let verified_client_cert = certificates.is_some_and(|c| !c.is_empty());
                        let common_name = certificates
                            .and_then(|chain| chain.first())
                            .and_then(|cert| crate::tls::common_name(cert))
                            .map(crate::tls::ClientCommonName);
                        let service = WithPeer {
                            inner: make(&Peer {
                                addr,
                                verified_client_cert,
                            }),
                            common_name,
                        };
                        let conn =
                            builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                    Err(e) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                },
                None => {
                    let service = make(&Peer {
                        addr,
                        verified_client_cert: false,
                    });
                    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "connections still open after the grace period: closing them");
    }
}

/// A connection's service that tells each request who the TLS peer is (the
/// verified client certificate's common name).
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    common_name: Option<crate::tls::ClientCommonName>,
}

impl<S> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for WithPeer<S>
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        if let Some(cn) = &self.common_name {
            req.extensions_mut().insert(cn.clone());
        }
        self.inner.call(req)
    }
}

/// Completes when `stop` turns true (or its sender goes).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves only `admin`'s endpoints (a `--listen-metrics-urls` listener).
pub async fn serve_admin(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    admin: Admin,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let admin = Arc::new(admin);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.answer(req.uri().path()).into_response()) }
    });
    serve(listener, tls, service, stop, Duration::from_secs(5)).await;
}
