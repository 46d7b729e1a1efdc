//! The admin HTTP endpoints a Kubernetes probe or a Prometheus scrape
//! reads: `/livez` (the process serves), `/readyz` (a readiness latch: true
//! only when the component can do its job), `/metrics` (Prometheus text,
//! with the `process_*` family). HTTP/1.1 and HTTP/2 on one listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

/// What the endpoints answer from.
#[derive(Clone)]
pub struct Admin {
    /// Whether the component is ready (checked at each `/readyz`).
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    pub registry: prometheus::Registry,
}

impl Admin {
    /// An admin surface with the process metrics registered.
    pub fn new(ready: Arc<dyn Fn() -> bool + Send + Sync>) -> Self {
        let registry = prometheus::Registry::new();
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        }
        Self { ready, registry }
    }

    /// Answers one request.
    pub fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from(body)))
                .expect("a static response is valid")
        };
        match path {
            "/livez" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                if (self.ready)() {
                    text(StatusCode::OK, "ok\n".into())
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
                }
            }
            "/metrics" => {
                let mut out = String::new();
                match prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
                    Ok(()) => Response::builder()
                        .header("content-type", prometheus::TEXT_FORMAT)
                        .body(Full::new(Bytes::from(out)))
                        .expect("a static response is valid"),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

/// Parses `--listen-metrics-urls`: comma-separated `http://IP:PORT`.
pub fn parse_urls(urls: &str) -> Result<Vec<SocketAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            url.strip_prefix("http://")
                .map(|r| r.trim_end_matches('/'))
                .and_then(|r| r.parse().ok())
                .ok_or_else(|| format!("{url:?}: expected http://IP:PORT, for example http://127.0.0.1:2381"))
        })
        .collect()
}

/// Completes when `stop` turns true (or its sender goes).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `admin` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, admin: Admin, mut stop: tokio::sync::watch::Receiver<bool>) {
    let admin = Arc::new(admin);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stopped(&mut stop) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.answer(req.uri().path())) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
