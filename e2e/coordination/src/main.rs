//! e2e-coordination: the circle of coordination with the real binaries,
//! started as the manifests will start them, on one machine.
//!
//! An upstream `U` (a bare repository behind `git http-backend` with basic
//! auth), two participants `a` and `b` (each: git-pre -> gitcd-init ->
//! git-post, then `gitcd serve` merging `U`'s `main` in and pushing its
//! own pair), and an automerge (`gitcd-pull` merging `a` and `b` into
//! `main`). Then: a key put on A is read and watched on B; 1,000 keys
//! written on each side concurrently all reach both; a conflicting edit
//! converges by the policy; JSON and YAML values edited in different fields
//! keep both edits; an excluded prefix never leaves its side; `kill -9` of
//! each of the three during writes loses no acknowledged write; a
//! participant restarted from an empty directory comes back with every key,
//! its revisions going up; the upstream down for 10 s, then back: all
//! converges. Convergence times are printed; every log is printed on
//! failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use common::proto::etcdserverpb::{
    PutRequest, RangeRequest, StatusRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient, watch_request,
};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// Where git-pre, gitcd-init, git-post, gitcd and gitcd-pull are.
    #[arg(long, default_value = "target/release")]
    bin: PathBuf,
    /// The Git host script (git http-backend behind basic auth).
    #[arg(long, default_value = "e2e/support/git-http-server.py")]
    git_host: PathBuf,
}

/// How long any step may take to converge.
const CONVERGE: Duration = Duration::from_secs(90);
const USER: &str = "alice";

struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Env {
    args: Args,
    work: PathBuf,
    password_file: PathBuf,
    up_root: PathBuf,
    http_port: u16,
    http: Option<Proc>,
    logs: Vec<PathBuf>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Env {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/up.git", self.http_port)
    }

    fn log(&mut self, name: &str) -> Result<(PathBuf, std::fs::File)> {
        let path = self.work.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        if !self.logs.contains(&path) {
            self.logs.push(path.clone());
        }
        Ok((path, file))
    }

    fn spawn(&mut self, name: &str, program: &str, args: &[String]) -> Result<Proc> {
        let (_, log) = self.log(name)?;
        let child = Command::new(self.args.bin.join(program))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {program} (make e2e-coordination builds it)"))?;
        Ok(Proc {
            name: name.into(),
            child,
        })
    }

    /// Runs an init container's binary to completion.
    fn run(&mut self, name: &str, program: &str, args: &[String]) -> Result<()> {
        let mut p = self.spawn(name, program, args)?;
        let status = p.child.wait()?;
        ensure!(status.success(), "{program} {args:?} failed ({status}); see {name}.log");
        Ok(())
    }

    fn start_upstream(&mut self) -> Result<()> {
        let (_, log) = self.log("upstream")?;
        let child = Command::new("python3")
            .arg(&self.args.git_host)
            .arg("--root")
            .arg(&self.up_root)
            .arg(format!("--port={}", self.http_port))
            .arg(format!("--user={USER}"))
            .arg("--password-file")
            .arg(&self.password_file)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.http = Some(Proc {
            name: "upstream".into(),
            child,
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_err() {
            ensure!(Instant::now() < deadline, "the upstream does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn credentials(&self) -> Vec<String> {
        vec![
            format!("--username={USER}"),
            format!("--password-file={}", self.password_file.display()),
        ]
    }

    fn print_logs(&self) {
        for l in &self.logs {
            let text = std::fs::read_to_string(l).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("===== {} (last 40 lines) =====", l.display());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A participant: its repository, its gitcd.
struct Participant {
    name: String,
    dir: PathBuf,
    port: u16,
    proc: Option<Proc>,
}

impl Participant {
    fn store_flags(&self) -> Vec<String> {
        vec![
            format!("--repo={}", self.dir.display()),
            format!("--data-ref=refs/heads/{}", self.name),
            format!("--committer-name={}", self.name),
        ]
    }

    /// git-pre -> gitcd-init -> git-post, as the pod's init containers.
    fn prepare(&self, env: &mut Env) -> Result<()> {
        let mut pre = self.store_flags();
        pre.extend([
            format!("--remote-url={}", env.url()),
            "--upstream-ref=refs/heads/main".into(),
        ]);
        pre.extend(env.credentials());
        env.run(&format!("{}-git-pre", self.name), "git-pre", &pre)?;
        env.run(&format!("{}-gitcd-init", self.name), "gitcd-init", &self.store_flags())?;
        let mut post = self.store_flags();
        post.extend(env.credentials());
        env.run(&format!("{}-git-post", self.name), "git-post", &post)
    }

    fn serve(&mut self, env: &mut Env) -> Result<()> {
        let mut args = vec!["serve".to_owned()];
        args.extend(self.store_flags());
        args.extend([
            format!("--listen-urls=http://127.0.0.1:{}", self.port),
            "--upstream-ref=refs/heads/main".into(),
            "--pull-interval=1s".into(),
            "--push".into(),
            "--exclude=/private/**".into(),
        ]);
        args.extend(env.credentials());
        self.proc = Some(env.spawn(&self.name, "gitcd", &args)?);
        Ok(())
    }

    async fn client(&self) -> Result<KvClient<Channel>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = async {
                let ch = Channel::from_shared(format!("http://127.0.0.1:{}", self.port))?
                    .connect()
                    .await?;
                MaintenanceClient::new(ch.clone()).status(StatusRequest {}).await?;
                anyhow::Ok(KvClient::new(ch))
            };
            match attempt.await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() > deadline => bail!("{} does not answer: {e:#}", self.name),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

async fn put(c: &mut KvClient<Channel>, key: &str, value: &str) -> Result<i64> {
    Ok(c.put(PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    })
    .await?
    .into_inner()
    .header
    .map_or(0, |h| h.revision))
}

async fn get(c: &mut KvClient<Channel>, key: &str) -> Result<Option<String>> {
    let r = c
        .range(RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// Every key below `prefix`, with its value.
async fn prefix(c: &mut KvClient<Channel>, prefix: &str) -> Result<BTreeMap<String, String>> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let r = c
        .range(RangeRequest {
            key: Bytes::copy_from_slice(prefix.as_bytes()),
            range_end: Bytes::from(end),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect())
}

async fn revision(c: &mut KvClient<Channel>) -> Result<i64> {
    Ok(c.range(RangeRequest {
        key: Bytes::from_static(b"/"),
        count_only: true,
        ..Default::default()
    })
    .await?
    .into_inner()
    .header
    .map_or(0, |h| h.revision))
}

/// Waits until `check` holds; returns how long it took.
async fn converge<F, Fut>(what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        match check().await {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => {}
            Err(e) => last = Some(format!("{e:#}")),
        }
        if start.elapsed() > CONVERGE {
            bail!("{what}: not converged after {CONVERGE:?} (last error: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain HTTP/1.1 GET on loopback: the status line, headers and body.
fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn step(what: &str) {
    eprintln!("\x1b[1m[e2e coordination]\x1b[0m {what}");
}

fn report(what: &str, took: Duration) {
    eprintln!("\x1b[1m[e2e coordination]\x1b[0m   {what}: {:.2} s", took.as_secs_f64());
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let work = std::env::temp_dir().join(format!("trishanku-e2e-coordination-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut env = Env {
        password_file: work.join("password"),
        up_root: work.join("upstream"),
        http_port: free_port()?,
        http: None,
        logs: Vec::new(),
        work: work.clone(),
        args,
    };
    let result = scenario(&mut env).await;
    match &result {
        Ok(()) => {
            step("passed");
            let _ = std::fs::remove_dir_all(&work);
        }
        Err(e) => {
            eprintln!("\x1b[1m[e2e coordination]\x1b[0m FAILED: {e:#}");
            env.print_logs();
        }
    }
    result
}

async fn scenario(env: &mut Env) -> Result<()> {
    std::fs::write(&env.password_file, "s3cret-token\n")?;
    std::fs::create_dir_all(&env.up_root)?;
    let up = env.up_root.join("up.git");
    let out = Command::new("git").args(["init", "-q", "--bare"]).arg(&up).output()?;
    ensure!(out.status.success(), "git init --bare");
    env.start_upstream()?;

    step("the upstream's main, as a first automerge leaves it (git-pre, gitcd-init, git-post)");
    let automerge_dir = env.work.join("automerge.git");
    let main_flags = vec![
        format!("--repo={}", automerge_dir.display()),
        "--data-ref=refs/heads/main".into(),
        "--committer-name=automerge".into(),
    ];
    let mut pre = main_flags.clone();
    pre.push(format!("--remote-url={}", env.url()));
    pre.extend(env.credentials());
    env.run("automerge-git-pre", "git-pre", &pre)?;
    env.run("automerge-gitcd-init", "gitcd-init", &main_flags)?;
    let mut post = main_flags.clone();
    post.extend(env.credentials());
    env.run("automerge-git-post", "git-post", &post)?;

    step("participants a and b: git-pre, gitcd-init, git-post, gitcd serve pulling main and pushing");
    let mut a = Participant {
        name: "a".into(),
        dir: env.work.join("a.git"),
        port: free_port()?,
        proc: None,
    };
    let mut b = Participant {
        name: "b".into(),
        dir: env.work.join("b.git"),
        port: free_port()?,
        proc: None,
    };
    for p in [&mut a, &mut b] {
        p.prepare(env)?;
        p.serve(env)?;
    }
    let metrics_port = free_port()?;
    let automerge_args = |env: &Env| {
        let mut args = main_flags.clone();
        args.extend([
            "--merge-ref=refs/heads/a".into(),
            "--merge-ref=refs/heads/b".into(),
            "--push".into(),
            "--interval=1s".into(),
            "--exclude=/private/**".into(),
            format!("--listen-metrics-urls=http://127.0.0.1:{metrics_port}"),
        ]);
        args.extend(env.credentials());
        args
    };
    let args = automerge_args(env);
    let mut automerge = env.spawn("automerge", "gitcd-pull", &args)?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);

    step("a key put on A is read and watched on B");
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", b.port))?
        .connect()
        .await?;
    let (watch_tx, watch_rx) = tokio::sync::mpsc::channel(4);
    watch_tx
        .send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: Bytes::from_static(b"/registry/x"),
                ..Default::default()
            })),
        })
        .await?;
    let mut watch = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(watch_rx))
        .await?
        .into_inner();
    let created = watch.message().await?.context("the watch answers")?;
    ensure!(created.created, "the watch is created");
    let start = Instant::now();
    put(&mut ca, "/registry/x", "from a").await?;
    let event = tokio::time::timeout(CONVERGE, async {
        loop {
            let r = watch.message().await?.context("the watch ended")?;
            if let Some(e) = r.events.into_iter().next() {
                return anyhow::Ok(e);
            }
        }
    })
    .await??;
    ensure!(event.kv.is_some_and(|kv| kv.value.as_ref() == b"from a"));
    report("put on A -> watch event on B", start.elapsed());
    ensure!(get(&mut cb, "/registry/x").await?.as_deref() == Some("from a"));

    step("the durability window: an acknowledged write reaches the upstream soon after");
    let mut windows = Vec::new();
    for i in 0..5 {
        let key = format!("window/{i}");
        let start = Instant::now();
        put(&mut ca, &format!("/{key}"), "w").await?;
        let up = env.up_root.join("up.git");
        converge("the write on the upstream's refs/heads/a", || {
            let (up, key) = (up.clone(), key.clone());
            async move {
                let out = Command::new("git")
                    .arg("--git-dir")
                    .arg(&up)
                    .args(["cat-file", "-e", &format!("refs/heads/a:{key}")])
                    .output()?;
                Ok(out.status.success())
            }
        })
        .await?;
        windows.push(start.elapsed());
    }
    windows.sort();
    report("acknowledged -> on the upstream (median of 5)", windows[2]);

    step("1,000 keys written on each side concurrently all reach both sides");
    let start = Instant::now();
    let mut writers = Vec::new();
    for (side, client) in [("a", ca.clone()), ("b", cb.clone())] {
        for w in 0..8 {
            let mut c = client.clone();
            writers.push(tokio::spawn(async move {
                for i in (w..1000).step_by(8) {
                    put(&mut c, &format!("/bulk/{side}/{i:04}"), &format!("{side}{i}")).await?;
                }
                anyhow::Ok(())
            }));
        }
    }
    for w in writers {
        w.await??;
    }
    report("2,000 writes acknowledged", start.elapsed());
    let took =
        converge("2,000 keys on both sides", || {
            let (mut ca, mut cb) = (ca.clone(), cb.clone());
            async move {
                Ok(prefix(&mut ca, "/bulk/").await?.len() == 2000 && prefix(&mut cb, "/bulk/").await?.len() == 2000)
            }
        })
        .await?;
    report("then all on both sides", took);
    ensure!(
        prefix(&mut ca, "/bulk/").await? == prefix(&mut cb, "/bulk/").await?,
        "same values"
    );

    step("a conflicting edit converges to the same value on both sides (newest)");
    put(&mut ca, "/registry/conflict", "a").await?;
    put(&mut cb, "/registry/conflict", "b, written later").await?;
    let took = converge("the conflict", || {
        let (mut ca, mut cb) = (ca.clone(), cb.clone());
        async move {
            Ok(
                get(&mut ca, "/registry/conflict").await?.as_deref() == Some("b, written later")
                    && get(&mut cb, "/registry/conflict").await?.as_deref() == Some("b, written later"),
            )
        }
    })
    .await?;
    report("converged", took);

    step("JSON and YAML values edited in different fields on each side keep both edits");
    let json0 = "{\"spec\":{\"replicas\":1},\"status\":{\"ready\":0}}\n";
    let yaml0 = "spec:\n  nodeName: \"\"\nstatus:\n  phase: Pending\n";
    put(&mut ca, "/registry/json", json0).await?;
    put(&mut ca, "/registry/yaml", yaml0).await?;
    converge("the base values on B", || {
        let mut cb = cb.clone();
        async move {
            Ok(get(&mut cb, "/registry/json").await?.as_deref() == Some(json0)
                && get(&mut cb, "/registry/yaml").await?.as_deref() == Some(yaml0))
        }
    })
    .await?;
    // Let both participants and the automerge hold the base before the edits.
    converge("the base values upstream", || {
        let up = env.up_root.join("up.git");
        async move {
            let out = Command::new("git")
                .arg("--git-dir")
                .arg(&up)
                .args(["show", "refs/heads/main:registry/yaml"])
                .output()?;
            Ok(out.status.success() && out.stdout == yaml0.as_bytes())
        }
    })
    .await?;
    put(
        &mut ca,
        "/registry/json",
        "{\"spec\":{\"replicas\":3},\"status\":{\"ready\":0}}\n",
    )
    .await?;
    put(
        &mut cb,
        "/registry/json",
        "{\"spec\":{\"replicas\":1},\"status\":{\"ready\":1}}\n",
    )
    .await?;
    put(
        &mut ca,
        "/registry/yaml",
        "spec:\n  nodeName: node-1\nstatus:\n  phase: Pending\n",
    )
    .await?;
    put(
        &mut cb,
        "/registry/yaml",
        "spec:\n  nodeName: \"\"\nstatus:\n  phase: Running\n",
    )
    .await?;
    let json = "{\"spec\":{\"replicas\":3},\"status\":{\"ready\":1}}\n";
    let yaml = "spec:\n  nodeName: node-1\nstatus:\n  phase: Running\n";
    let took = converge("both edits on both sides", || {
        let (mut ca, mut cb) = (ca.clone(), cb.clone());
        async move {
            for c in [&mut ca, &mut cb] {
                if get(c, "/registry/json").await?.as_deref() != Some(json)
                    || get(c, "/registry/yaml").await?.as_deref() != Some(yaml)
                {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await?;
    report("structural merges converged", took);

    step("an excluded prefix never leaves its side");
    put(&mut ca, "/private/a-only", "secret of a").await?;
    put(&mut ca, "/registry/after-private", "marker").await?;
    converge("the marker on B", || {
        let mut cb = cb.clone();
        async move { Ok(get(&mut cb, "/registry/after-private").await?.is_some()) }
    })
    .await?;
    // The marker was written after the private key: the merges that
    // brought it (into main, then into B) saw the private key and left it.
    ensure!(
        get(&mut cb, "/private/a-only").await?.is_none(),
        "excluded key reached B"
    );
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(env.up_root.join("up.git"))
        .args(["cat-file", "-e", "refs/heads/main:private/a-only"])
        .output()?;
    ensure!(!out.status.success(), "excluded key reached main");

    step("kill -9 of A, B and the automerge during writes loses no acknowledged write");
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    for (round, victim) in ["a", "b", "automerge"].into_iter().enumerate() {
        let writers: Vec<_> = [("a", a.port), ("b", b.port)]
            .into_iter()
            .map(|(side, port)| {
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
                        .connect()
                        .await
                    else {
                        return anyhow::Ok(done);
                    };
                    let mut c = KvClient::new(ch);
                    for i in 0..150 {
                        let (k, v) = (format!("/kill/{round}/{side}/{i:03}"), format!("{side}{i}"));
                        if put(&mut c, &k, &v).await.is_ok() {
                            done.push((k, v));
                        }
                    }
                    anyhow::Ok(done)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        match victim {
            "a" => {
                if let Some(p) = a.proc.as_mut() {
                    p.kill9();
                }
                a.serve(env)?;
            }
            "b" => {
                if let Some(p) = b.proc.as_mut() {
                    p.kill9();
                }
                b.serve(env)?;
            }
            _ => {
                automerge.kill9();
                let args = automerge_args(env);
                automerge = env.spawn("automerge", "gitcd-pull", &args)?;
            }
        }
        for w in writers {
            acked.extend(w.await??);
        }
        eprintln!("  killed {victim}; {} acknowledged writes so far", acked.len());
    }
    ca = a.client().await?;
    cb = b.client().await?;
    let took = converge("every acknowledged write on both sides", || {
        let (mut ca, mut cb, acked) = (ca.clone(), cb.clone(), acked.clone());
        async move {
            let (ka, kb) = (prefix(&mut ca, "/kill/").await?, prefix(&mut cb, "/kill/").await?);
            Ok(acked.iter().all(|(k, v)| ka.get(k) == Some(v) && kb.get(k) == Some(v)))
        }
    })
    .await?;
    report("all acknowledged writes on both sides after the kills", took);

    step("a participant restarted from an empty directory comes back whole, its revisions going up");
    let before = revision(&mut cb).await?;
    let b_keys = prefix(&mut cb, "/").await?;
    // What b serves reaches the upstream within the durability window (its
    // pushes are asynchronous): wait until b's branch there is b's own, so
    // that everything read above was pushed, then kill it.
    let up = env.up_root.join("up.git");
    converge("b's branch pushed to the upstream", || {
        let (up, local) = (up.clone(), b.dir.clone());
        async move {
            let head = |dir: &Path| -> Result<Vec<u8>> {
                Ok(Command::new("git")
                    .arg("-C")
                    .arg(dir)
                    .args(["rev-parse", "-q", "--verify", "refs/heads/b"])
                    .output()?
                    .stdout)
            };
            let ours = head(&local)?;
            Ok(!ours.is_empty() && ours == head(&up)?)
        }
    })
    .await?;
    if let Some(mut p) = b.proc.take() {
        p.kill9();
    }
    std::fs::remove_dir_all(&b.dir)?;
    b.prepare(env)?;
    b.serve(env)?;
    cb = b.client().await?;
    let after = revision(&mut cb).await?;
    ensure!(after > before, "revisions went back: {before} -> {after}");
    let mut restored = prefix(&mut cb, "/").await?;
    restored.retain(|k, _| b_keys.contains_key(k));
    ensure!(
        restored.len() == b_keys.len(),
        "{} of {} keys came back",
        restored.len(),
        b_keys.len()
    );
    let next = put(&mut cb, "/registry/after-restore", "x").await?;
    ensure!(next > before, "a new write's revision {next} is above {before}");
    eprintln!("  revision before {before}, after the restore {after}");

    step("the upstream down for 10 s, then back: everything converges");
    if let Some(mut h) = env.http.take() {
        h.kill9();
    }
    put(&mut ca, "/down/a", "written while down").await?;
    put(&mut cb, "/down/b", "written while down").await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    ensure!(
        get(&mut ca, "/down/a").await?.is_some(),
        "A serves while the upstream is down"
    );
    env.start_upstream()?;
    let took = converge("writes made while the upstream was down", || {
        let (mut ca, mut cb) = (ca.clone(), cb.clone());
        async move { Ok(get(&mut ca, "/down/b").await?.is_some() && get(&mut cb, "/down/a").await?.is_some()) }
    })
    .await?;
    report("converged after the upstream came back", took);

    let metrics = http_get(metrics_port, "/metrics")?;
    ensure!(
        metrics.contains("gitcd_pull_operations_total"),
        "automerge metrics: {metrics}"
    );
    ensure!(
        http_get(metrics_port, "/readyz")?.starts_with("HTTP/1.1 200"),
        "the automerge is ready"
    );
    for p in [&mut a, &mut b] {
        if let Some(mut proc) = p.proc.take() {
            eprintln!("  stopping {}", proc.name);
            proc.kill9();
        }
    }
    Ok(())
}
