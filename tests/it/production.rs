//! gitcd in production: TLS and mTLS with real clients (etcdctl, curl),
//! certificates re-read when a Secret volume swaps them, the HTTP
//! endpoints (etcd's JSON, Prometheus text read by a parser), health while
//! the store cannot write, and a clean drain on SIGTERM under load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use common::proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op};
use common::store::StoreConfig;

use crate::support::{Client, etcdctl_ok, eventually, free_port};

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").current_dir(dir).args(args).output()?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A CA, and certificates it signs.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Result<Self> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name} CA"),
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        )?;
        Ok(Self { dir })
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A certificate for `cn` (a server for 127.0.0.1 when `server`):
    /// (cert, key) paths.
    fn issue(&self, cn: &str, server: bool) -> Result<(PathBuf, PathBuf)> {
        let ext = self.dir.join(format!("{cn}.ext"));
        std::fs::write(
            &ext,
            if server {
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
            } else {
                "extendedKeyUsage=clientAuth\n"
            },
        )?;
        let (key, csr, crt) = (format!("{cn}.key"), format!("{cn}.csr"), format!("{cn}.crt"));
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        )?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap_or_default(),
                "-out",
                &crt,
            ],
        )?;
        Ok((self.dir.join(crt), self.dir.join(key)))
    }
}

/// A gitcd served in this process with `listen` (and metrics) URLs.
struct Server {
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), common::server::ServeError>>,
}

impl Server {
    async fn start(repo: &Path, tls: Option<common::tls::TlsConfig>, metrics: bool) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let https = tls.is_some();
        let metrics_listener = match metrics {
            true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
            false => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let mut store = StoreConfig::with_repo(repo);
        store.poll_interval = Duration::from_millis(50);
        let config = common::server::ServeConfig {
            store,
            listen: vec![common::http::ListenUrl { addr, tls: https }],
            listen_metrics: metrics_addr
                .map(|addr| common::http::ListenUrl { addr, tls: false })
                .into_iter()
                .collect(),
            tls,
            advertise_client_urls: vec![format!("http://{addr}")],
            name: "prod".into(),
            max_request_bytes: common::etcd::DEFAULT_MAX_REQUEST_BYTES,
            watch_progress_interval: Duration::from_secs(5),
            pull: None,
            ..common::server::ServeConfig::new(StoreConfig::with_repo(repo), Vec::new())
        };
        let listeners = common::server::Listeners {
            client: vec![(listener, https)],
            metrics: metrics_listener.map(|l| (l, false)).into_iter().collect(),
            tenants: Vec::new(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(common::server::serve(config, listeners, async move {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            metrics: metrics_addr,
            stop: Some(tx),
            task,
        })
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

/// etcdctl (Debian's 3.4) over TLS with `extra` flags.
fn etcdctl_tls(addr: SocketAddr, ca: &Path, extra: &[String], args: &[&str]) -> Result<std::process::Output> {
    etcdctl_tls_with(Path::new("etcdctl"), addr, ca, extra, args)
}

fn etcdctl_tls_with(
    etcdctl: &Path,
    addr: SocketAddr,
    ca: &Path,
    extra: &[String],
    args: &[&str],
) -> Result<std::process::Output> {
    Ok(Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={addr}"))
        .arg(format!("--cacert={}", ca.display()))
        .arg("--dial-timeout=3s")
        .args(extra)
        .args(args)
        .output()?)
}

fn curl(args: &[&str]) -> Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').context("curl wrote its status code")?;
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

/// https:// with --client-cert-auth: etcdctl with a certificate from the
/// trusted CA works, without one or with one from another CA it is
/// refused; curl reads /health over HTTP/1.1 with TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_client_certificates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path(), "trusted")?;
    let other = Pki::new(dir.path(), "other")?;
    let (cert, key) = pki.issue("gitcd", true)?;
    let (client_cert, client_key) = pki.issue("client", false)?;
    let (stranger_cert, stranger_key) = other.issue("stranger", false)?;
    let tls = common::tls::TlsConfig {
        cert_file: cert,
        key_file: key,
        trusted_ca_file: Some(pki.ca()),
        client_cert_auth: true,
    };
    let server = Server::start(&dir.path().join("repo"), Some(tls), false).await?;
    let addr = server.addr;
    let good = [
        format!("--cert={}", client_cert.display()),
        format!("--key={}", client_key.display()),
    ];
    eventually("gitcd over TLS", Duration::from_secs(30), || {
        let good = good.clone();
        let ca = pki.ca();
        async move {
            Ok(etcdctl_tls(addr, &ca, &good, &["endpoint", "health"])?
                .status
                .success()
                .then_some(()))
        }
    })
    .await?;
    let put = etcdctl_tls(addr, &pki.ca(), &good, &["put", "/tls", "yes"])?;
    ensure!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let get = etcdctl_tls(addr, &pki.ca(), &good, &["get", "/tls", "--print-value-only"])?;
    ensure!(String::from_utf8(get.stdout)?.trim() == "yes");
    let none = etcdctl_tls(addr, &pki.ca(), &[], &["get", "/tls"])?;
    ensure!(!none.status.success(), "a client without a certificate is refused");
    // etcdctl 3.5, with a scheme in its endpoint too.
    let v35 = crate::support::etcdctl35()?;
    let mut scheme = good.to_vec();
    scheme.push(format!("--endpoints=https://{addr}"));
    let got = etcdctl_tls_with(&v35, addr, &pki.ca(), &scheme, &["get", "/tls", "--print-value-only"])?;
    ensure!(
        String::from_utf8(got.stdout)?.trim() == "yes",
        "etcdctl 3.5: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    let status = etcdctl_tls_with(&v35, addr, &pki.ca(), &scheme, &["endpoint", "status"])?;
    ensure!(
        status.status.success(),
        "etcdctl 3.5 endpoint status: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    ensure!(
        !etcdctl_tls_with(&v35, addr, &pki.ca(), &[], &["get", "/tls"])?
            .status
            .success()
    );
    let stranger = [
        format!("--cert={}", stranger_cert.display()),
        format!("--key={}", stranger_key.display()),
    ];
    let refused = etcdctl_tls(addr, &pki.ca(), &stranger, &["get", "/tls"])?;
    ensure!(!refused.status.success(), "a certificate from another CA is refused");
    let url = format!("https://{addr}/health");
    let ca = pki.ca();
    let (code, body) = curl(&[
        "--cacert",
        ca.to_str().unwrap_or_default(),
        "--cert",
        client_cert.to_str().unwrap_or_default(),
        "--key",
        client_key.to_str().unwrap_or_default(),
        "--http1.1",
        &url,
    ])?;
    ensure!(
        code == 200 && body == "{\"health\":\"true\",\"reason\":\"\"}",
        "{code} {body}"
    );
    server.stop().await
}

/// Auth with --client-cert-auth, as etcd combines them: a request without a
/// token is the user its client certificate names (its common name), users
/// without a password included; permissions then apply to it as to a
/// token's user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_names_the_user() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path(), "trusted")?;
    let (cert, key) = pki.issue("gitcd", true)?;
    let (root_cert, root_key) = pki.issue("root", false)?;
    let (app_cert, app_key) = pki.issue("app-client", false)?;
    let tls = common::tls::TlsConfig {
        cert_file: cert,
        key_file: key,
        trusted_ca_file: Some(pki.ca()),
        client_cert_auth: true,
    };
    let server = Server::start(&dir.path().join("repo"), Some(tls), false).await?;
    let addr = server.addr;
    let v35 = crate::support::etcdctl35()?;
    let as_cert = |cert: &Path, key: &Path| {
        vec![
            format!("--cert={}", cert.display()),
            format!("--key={}", key.display()),
            format!("--endpoints=https://{addr}"),
        ]
    };
    let root = as_cert(&root_cert, &root_key);
    let app = as_cert(&app_cert, &app_key);
    eventually("gitcd over TLS", Duration::from_secs(30), || {
        let (v35, root, ca) = (v35.clone(), root.clone(), pki.ca());
        async move {
            Ok(etcdctl_tls_with(&v35, addr, &ca, &root, &["endpoint", "health"])?
                .status
                .success()
                .then_some(()))
        }
    })
    .await?;
    let run = |who: &[String], args: &[&str]| -> Result<(bool, String)> {
        let o = etcdctl_tls_with(&v35, addr, &pki.ca(), who, args)?;
        Ok((
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ))
    };
    for args in [
        &["user", "add", "root", "--no-password"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "app"],
        &["role", "grant-permission", "app", "readwrite", "/app/", "--prefix"],
        &["user", "add", "app-client", "--no-password"],
        &["user", "grant-role", "app-client", "app"],
        &["auth", "enable"],
    ] {
        let (ok, out) = run(&root, args)?;
        ensure!(ok, "{args:?}: {out}");
    }
    let (ok, out) = run(&app, &["put", "/app/x", "1"])?;
    ensure!(ok, "the certificate's user may write its prefix: {out}");
    let (ok, out) = run(&app, &["put", "/other", "1"])?;
    ensure!(!ok && out.contains("Error: etcdserver: permission denied"), "{out}");
    let (ok, out) = run(&app, &["user", "list"])?;
    ensure!(!ok && out.contains("permission denied"), "{out}");
    let (ok, out) = run(&root, &["user", "list"])?;
    ensure!(ok && out.contains("app-client") && out.contains("root"), "{out}");
    let (ok, out) = run(&root, &["get", "/app/x", "--print-value-only"])?;
    ensure!(ok && out.trim() == "1", "{out}");
    let (ok, out) = run(&root, &["auth", "disable"])?;
    ensure!(ok, "{out}");
    server.stop().await
}

/// The subject of the certificate a TLS server at `addr` presents now.
fn presented(addr: SocketAddr) -> Result<String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    drop(child.stdin.take());
    let out = String::from_utf8(child.wait_with_output()?.stdout)?;
    Ok(out
        .lines()
        .find(|l| l.starts_with("subject="))
        .map(|l| l.replace(' ', ""))
        .unwrap_or_default())
}

/// A Secret-style rotation (the files are symlinks through `..data`, which
/// is swapped to a new directory) reaches new connections without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path(), "ca")?;
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(&secret)?;
    let install = |version: &str, cn: &str| -> Result<()> {
        let (cert, key) = pki.issue(cn, true)?;
        let data = secret.join(format!("..{version}"));
        std::fs::create_dir_all(&data)?;
        std::fs::copy(cert, data.join("tls.crt"))?;
        std::fs::copy(key, data.join("tls.key"))?;
        let tmp = secret.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("..{version}"), &tmp)?;
        std::fs::rename(&tmp, secret.join("..data"))?;
        for f in ["tls.crt", "tls.key"] {
            if !secret.join(f).exists() {
                std::os::unix::fs::symlink(format!("..data/{f}"), secret.join(f))?;
            }
        }
        Ok(())
    };
    install("v1", "first")?;
    let tls = common::tls::TlsConfig {
        cert_file: secret.join("tls.crt"),
        key_file: secret.join("tls.key"),
        trusted_ca_file: None,
        client_cert_auth: false,
    };
    let server = Server::start(&dir.path().join("repo"), Some(tls), false).await?;
    let addr = server.addr;
    eventually("the first certificate", Duration::from_secs(30), || {
        let s = presented(addr);
        async move { Ok(s?.contains("CN=first").then_some(())) }
    })
    .await?;
    install("v2", "second")?;
    eventually("the rotated certificate", Duration::from_secs(30), || {
        let s = presented(addr);
        async move { Ok(s?.contains("CN=second").then_some(())) }
    })
    .await?;
    server.stop().await
}

/// The HTTP endpoints, on the client URL (HTTP/1.1) and on the metrics
/// URL: etcd's /health and /version JSON, /livez, /readyz, and /metrics in
/// Prometheus text with etcd's names, read by a parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_metrics() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("repo"), None, true).await?;
    let mut c = Client::ready(server.addr).await?;
    for i in 0..5 {
        c.kv.put(PutRequest {
            key: Bytes::from(format!("/m/{i}")),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        })
        .await?;
    }
    // A watch stream open while the metrics are read.
    let (watch_tx, watch_rx) = tokio::sync::mpsc::channel(1);
    watch_tx
        .send(common::proto::etcdserverpb::WatchRequest {
            request_union: Some(common::proto::etcdserverpb::watch_request::RequestUnion::CreateRequest(
                common::proto::etcdserverpb::WatchCreateRequest {
                    key: Bytes::from_static(b"/m/"),
                    range_end: Bytes::from_static(b"/m0"),
                    ..Default::default()
                },
            )),
        })
        .await?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await?;
    let mut watch = common::proto::etcdserverpb::watch_client::WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(watch_rx))
        .await?
        .into_inner();
    ensure!(watch.message().await?.is_some_and(|r| r.created));
    etcdctl_ok(server.addr, &["get", "/m/0"])?;

    for base in [server.addr, server.metrics.context("a metrics listener")?] {
        let url = |p: &str| format!("http://{base}{p}");
        let (code, body) = curl(&["--http1.1", &url("/health")])?;
        ensure!(
            code == 200 && body == "{\"health\":\"true\",\"reason\":\"\"}",
            "/health: {code} {body}"
        );
        let (code, body) = curl(&[&url("/version")])?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        ensure!(
            code == 200 && v["etcdserver"] == "3.5.16" && v["etcdcluster"] == "3.5.0" && v["gitcd"].is_string(),
            "{body}"
        );
        ensure!(curl(&[&url("/livez")])?.0 == 200);
        ensure!(curl(&[&url("/readyz")])?.0 == 200);
        ensure!(curl(&[&url("/nope")])?.0 == 404);
        let (code, text) = curl(&[&url("/metrics")])?;
        ensure!(code == 200);
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
        let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
        };
        ensure!(value("etcd_server_has_leader", &[]) == Some(1.0));
        ensure!(value("etcd_mvcc_db_total_size_in_bytes", &[]).is_some_and(|v| v > 0.0));
        ensure!(value("etcd_debugging_mvcc_keys_total", &[]) == Some(5.0));
        ensure!(value("etcd_debugging_mvcc_watch_stream_total", &[]) == Some(1.0));
        ensure!(value("etcd_debugging_mvcc_watcher_total", &[]) == Some(1.0));
        let put = [
            ("grpc_service", "etcdserverpb.KV"),
            ("grpc_method", "Put"),
            ("grpc_type", "unary"),
        ];
        ensure!(value("grpc_server_started_total", &put).is_some_and(|v| v >= 5.0));
        ensure!(value("grpc_server_handled_total", &[put[0], put[1], ("grpc_code", "OK")]).is_some_and(|v| v >= 5.0));
        ensure!(value("gitcd_commits_total", &[]).is_some_and(|v| v >= 5.0));
        ensure!(value("process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
        ensure!(
            text.contains("etcd_disk_backend_commit_duration_seconds_bucket"),
            "commit durations"
        );
    }
    server.stop().await
}

/// /health says false, with the reason, while the store cannot write (its
/// pack directory replaced by a file), and true again once a write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_ability_to_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let server = Server::start(&repo, None, false).await?;
    let mut c = Client::ready(server.addr).await?;
    let put = |v: &'static str| PutRequest {
        key: Bytes::from_static(b"/h"),
        value: Bytes::from_static(v.as_bytes()),
        ..Default::default()
    };
    c.kv.put(put("1")).await?;
    let packs = repo.join("objects/pack");
    let aside = repo.join("objects/pack.aside");
    std::fs::rename(&packs, &aside)?;
    std::fs::write(&packs, "not a directory")?;
    ensure!(c.kv.put(put("2")).await.is_err(), "a write must fail now");
    let (code, body) = curl(&[&format!("http://{}/health", server.addr)])?;
    ensure!(code == 503 && body.contains("\"health\":\"false\""), "{code} {body}");
    ensure!(curl(&[&format!("http://{}/readyz", server.addr)])?.0 == 503);
    std::fs::remove_file(&packs)?;
    std::fs::rename(&aside, &packs)?;
    c.kv.put(put("3")).await?;
    let (code, _) = curl(&[&format!("http://{}/health", server.addr)])?;
    ensure!(code == 200);
    server.stop().await
}

/// SIGTERM under load: gitcd stops accepting, finishes what was queued,
/// exits 0 within the grace period; every acknowledged write is there
/// after a restart, and every txn landed whole or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_under_load() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let port = free_port()?;
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_gitcd"))
            .args(["serve", "--repo", repo.to_str().unwrap_or_default()])
            .arg(format!("--listen-urls=http://127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let mut child = spawn()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    Client::ready(addr).await?;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let Ok(mut c) = Client::connect(addr).await else {
                    return acked;
                };
                for i in 0.. {
                    let value = Bytes::from(format!("{w}-{i}"));
                    let put = |k: String| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: Bytes::from(k),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    };
                    let txn = TxnRequest {
                        success: vec![put(format!("/d/{w}/{i}/a")), put(format!("/d/{w}/{i}/b"))],
                        ..Default::default()
                    };
                    match c.kv.txn(txn).await {
                        Ok(_) => acked.push((w, i)),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    // Let the load build, then SIGTERM.
    eventually("writes under way", Duration::from_secs(30), || async move {
        let mut c = Client::connect(addr).await?;
        Ok((crate::support::all_kvs(&mut c, 0).await?.len() > 200).then_some(()))
    })
    .await?;
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    ensure!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > common::server::SHUTDOWN_GRACE + Duration::from_secs(5) {
            let _ = child.kill();
            bail!("gitcd did not exit within the grace period");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(status.success(), "SIGTERM exits 0, not {status}");
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await?);
    }
    ensure!(!acked.is_empty());

    let mut child = spawn()?;
    let mut c = Client::ready(addr).await?;
    let kvs: std::collections::BTreeMap<String, String> = crate::support::all_kvs(&mut c, 0)
        .await?
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    for (w, i) in &acked {
        let want = format!("{w}-{i}");
        ensure!(
            kvs.get(&format!("/d/{w}/{i}/a")) == Some(&want),
            "acknowledged txn {w}-{i} lost"
        );
    }
    for k in kvs.keys().filter(|k| k.ends_with("/a")) {
        let b = format!("{}b", &k[..k.len() - 1]);
        ensure!(kvs.get(&b) == kvs.get(k), "txn half-applied: {k}");
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// The size of every file below `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Status.dbSize (and the metric) is the objects' real size on disk, and
/// follows what others add: a push of another history, a git gc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_size_is_the_size_on_disk() -> Result<()> {
    use common::proto::etcdserverpb::StatusRequest;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let server = Server::start(&repo, None, false).await?;
    let mut c = Client::ready(server.addr).await?;
    for i in 0..50 {
        c.kv.put(PutRequest {
            key: Bytes::from(format!("/s/{i}")),
            value: Bytes::from(vec![b'x'; 4096]),
            ..Default::default()
        })
        .await?;
    }
    let work = dir.path().join("work");
    crate::support::new_work_repo(&work)?;
    for i in 0..5 {
        crate::support::commit_files(&work, &[(&format!("f{i}"), &"y".repeat(20_000 + i))], &format!("c{i}"))?;
    }
    // No automatic gc after the push: receive-pack would start one in the
    // background, racing the explicit one below. It must be the served
    // repository's own config: git clears GIT_CONFIG_* and -c for the
    // receive-pack of a local push.
    crate::support::git(&repo, &["config", "receive.autogc", "false"])?;
    crate::support::git(
        &work,
        &[
            "push",
            "-q",
            repo.to_str().unwrap_or_default(),
            "main:refs/heads/pushed",
        ],
    )?;
    crate::support::git(&repo, &["gc", "-q"])?;
    let objects = repo.join("objects");
    eventually("dbSize to be the objects' size", Duration::from_secs(30), || {
        let mut c = c.clone();
        let objects = objects.clone();
        async move {
            let size = c.maintenance.status(StatusRequest {}).await?.into_inner().db_size;
            let disk = du(&objects);
            if size as u64 != disk {
                anyhow::bail!("dbSize {size}, on disk {disk}");
            }
            Ok(Some(()))
        }
    })
    .await?;
    server.stop().await
}
