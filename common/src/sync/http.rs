//! git-sync's HTTP endpoint: `/` (and every path not served otherwise)
//! answers 503 "repo is not ready" until the first successful sync and 200
//! after; `/metrics` with `--http-metrics`; `/debug/pprof/` with
//! `--http-pprof`: an index, `cmdline` (secrets redacted), and `profile`, a
//! CPU profile in pprof's protobuf format (gzipped, as Go serves it).

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::State;

/// What the endpoint serves beyond readiness.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// `/metrics`.
    pub metrics: bool,
    /// `/debug/pprof/`.
    pub pprof: bool,
}

/// Binds `addr` as Go's `net.Listen` takes it: `:PORT` is every interface.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    match addr.strip_prefix(':') {
        Some(port) => match TcpListener::bind(format!("[::]:{port}")).await {
            Ok(l) => Ok(l),
            Err(_) => TcpListener::bind(format!("0.0.0.0:{port}")).await,
        },
        None => TcpListener::bind(addr).await,
    }
}

/// Serves connections until accepting fails.
pub async fn serve(listener: TcpListener, state: Arc<State>, opts: Options) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state, opts).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(req: Request<Incoming>, state: &State, opts: Options) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if opts.metrics && path == "/metrics" {
        return match state.metrics.render() {
            Ok(body) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        };
    }
    if opts.pprof
        && let Some(name) = path.strip_prefix("/debug/pprof/")
    {
        return pprof(name, req.uri().query().unwrap_or("")).await;
    }
    if state.ready.load(Ordering::SeqCst) {
        text(StatusCode::OK, "")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "repo is not ready\n")
    }
}

const INDEX: &str = "<html>\n<head><title>/debug/pprof/</title></head>\n<body>\n/debug/pprof/<br>\n<br>\n\
Types of profiles available:\n<table>\n\
<tr><td><a href=\"profile\">profile</a></td><td>CPU profile in pprof's protobuf format; \
?seconds=N (default 30)</td></tr>\n\
<tr><td><a href=\"cmdline\">cmdline</a></td><td>the command line, NUL-separated, secrets redacted</td></tr>\n\
</table>\n</body>\n</html>\n";

async fn pprof(name: &str, query: &str) -> Response<Full<Bytes>> {
    match name {
        "" => {
            let mut r = text(StatusCode::OK, INDEX);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "cmdline" => text(StatusCode::OK, redacted_cmdline().join("\0")),
        "symbol" => text(StatusCode::OK, "num_symbols: 0\n"),
        "profile" => {
            let seconds = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("seconds="))
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|s| *s > 0)
                .unwrap_or(30);
            match cpu_profile(Duration::from_secs(seconds)).await {
                Ok(body) => {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    let h = r.headers_mut();
                    h.insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/octet-stream"),
                    );
                    h.insert(
                        hyper::header::CONTENT_DISPOSITION,
                        hyper::header::HeaderValue::from_static("attachment; filename=\"profile\""),
                    );
                    r
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Could not enable CPU profiling: {e}\n"),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "Unknown profile\n"),
    }
}

/// Samples every thread at 100 Hz for `d`; the result is a gzipped
/// `perftools.profiles.Profile`, what `go tool pprof` reads.
async fn cpu_profile(d: Duration) -> Result<Vec<u8>, String> {
    use pprof::protos::Message as _;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(100)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(d).await;
    let profile = guard
        .report()
        .build()
        .and_then(|r| r.pprof())
        .map_err(|e| e.to_string())?;
    let raw = profile.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).map_err(|e| e.to_string())?;
    gz.finish().map_err(|e| e.to_string())
}

/// argv with the values of `--password`, `--credential` and the hidden
/// secret flags, and the password in a URL, replaced.
fn redacted_cmdline() -> Vec<String> {
    let mut out = Vec::new();
    let mut hide_next = false;
    for a in std::env::args() {
        if hide_next {
            out.push("REDACTED".to_string());
            hide_next = false;
            continue;
        }
        if a.starts_with("--credential=") {
            out.push("--credential=REDACTED".to_string());
        } else if a == "--password"
            || a == "--credential"
            || a == "--__env__GITSYNC_PASSWORD"
            || a == "--__env__GITSYNC_GITHUB_APP_PRIVATE_KEY"
        {
            hide_next = true;
            out.push(a);
        } else if let Some((flag, _)) = a.split_once('=').filter(|(f, _)| {
            matches!(
                *f,
                "--password" | "--__env__GITSYNC_PASSWORD" | "--__env__GITSYNC_GITHUB_APP_PRIVATE_KEY"
            )
        }) {
            out.push(format!("{flag}=REDACTED"));
        } else {
            out.push(super::credentials::redact_url(&a));
        }
    }
    out
}
