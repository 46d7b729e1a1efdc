//! gitcd-bench: runs the same workloads against a real etcd and gitcd in the
//! same run, on loopback, with their data on the same disk, and prints one
//! table: workload, etcd, gitcd, ratio. See docs/performance.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::Parser;
use common::proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest, WatchCreateRequest, WatchRequest, compare,
    kv_client::KvClient, maintenance_client::MaintenanceClient, request_op, response_op, watch_client::WatchClient,
    watch_request,
};
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Benchmark gitcd against etcd in the same run")]
struct Args {
    /// The gitcd binary.
    #[arg(long, default_value = "target/release/gitcd")]
    gitcd: PathBuf,
    /// The etcd binaries to compare with, comma-separated; ratios are
    /// against the first. `none` runs gitcd alone (to profile it).
    #[arg(long, default_value = "etcd", value_delimiter = ',')]
    etcd: Vec<PathBuf>,
    /// Where both servers keep their data (the same disk for both).
    #[arg(long, default_value = "/tmp/trishanku-bench")]
    dir: PathBuf,
    /// Comma-separated workloads: w1..w8, and w2m (`check perf --load=m`).
    #[arg(long, default_value = "w1,w2,w3,w4,w5,w6,w7,w8")]
    workloads: String,
    /// Runs each workload this many times (rows for each run).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// How long each timed workload runs.
    #[arg(long, default_value = "15")]
    seconds: u64,
    /// Keys loaded for the start-up workload (W6).
    #[arg(long, default_value_t = 100_000)]
    startup_keys: usize,
    /// Commits of the synthetic history for W5.
    #[arg(long, default_value_t = 10_000)]
    history_commits: usize,
}

/// One row of the table.
struct Row {
    workload: &'static str,
    metric: String,
    /// One value per etcd binary, in `--etcd`'s order (empty for gitcd-only rows).
    etcd: Vec<Option<f64>>,
    gitcd: f64,
    /// Whether bigger is better (throughput) or smaller (latency, time).
    higher_is_better: bool,
}

impl Row {
    /// A row of a gitcd-only workload.
    fn gitcd(workload: &'static str, metric: impl Into<String>, gitcd: f64, higher_is_better: bool) -> Self {
        Self {
            workload,
            metric: metric.into(),
            etcd: Vec::new(),
            gitcd,
            higher_is_better,
        }
    }
}

/// The config of branch pair `branch` (`refs/heads/<branch>` and its
/// metadata ref) in `repo`.
fn branch_config(repo: &Path, branch: &str) -> common::store::StoreConfig {
    let mut c = common::store::StoreConfig::with_repo(repo);
    c.data_ref = format!("refs/heads/{branch}");
    c.metadata_ref = format!("refs/gitcd/metadata/refs/heads/{branch}");
    c
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    args.etcd.retain(|e| e != Path::new("none"));
    let args = args;
    let workloads: Vec<&str> = args.workloads.split(',').map(str::trim).collect();
    std::fs::create_dir_all(&args.dir)?;
    let labels: Vec<String> = args.etcd.iter().map(|e| etcd_label(e)).collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for w in workloads.iter().flat_map(|w| std::iter::repeat_n(w, args.repeat)) {
        eprintln!("== {w}");
        let r = match *w {
            "w1" => both(&args, "w1", |addr| w1_kube_writes(addr, args.seconds)).await?,
            "w2" => both(&args, "w2", |addr| w2_check_perf(addr, "s")).await?,
            "w2m" => both(&args, "w2m", |addr| w2_check_perf(addr, "m")).await?,
            "w3" => both(&args, "w3", |addr| w3_reads(addr, args.seconds)).await?,
            "w4" => both(&args, "w4", |addr| w4_watch(addr, args.seconds)).await?,
            "w5" => w5_init(&args).await?,
            "w6" => w6_startup(&args).await?,
            "w7" => w7_merge_cost(&args).await?,
            "w8" => w8_writes_while_merging(&args).await?,
            other => bail!("unknown workload {other}"),
        };
        rows.extend(r);
    }
    print_table(&labels, &rows);
    Ok(())
}

/// "etcd 3.5.1", from the binary's `--version`.
fn etcd_label(etcd: &Path) -> Result<String> {
    let out = Command::new(etcd)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", etcd.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .with_context(|| format!("{} --version printed no version", etcd.display()))?;
    Ok(format!("etcd {}", version.trim()))
}

fn print_table(labels: &[String], rows: &[Row]) {
    let heads: String = labels.iter().map(|l| format!(" {l} |")).collect();
    let aligns: String = labels.iter().map(|_| "---:|").collect();
    let first = labels.first().map_or("etcd", String::as_str);
    println!("| workload | metric |{heads} gitcd | gitcd/{first} |");
    println!("|---|---|{aligns}---:|---:|");
    for r in rows {
        let etcd: String = (0..labels.len())
            .map(|i| format!(" {} |", r.etcd.get(i).copied().flatten().map_or("-".to_owned(), fmt)))
            .collect();
        let ratio = match r.etcd.first().copied().flatten() {
            Some(e) if e > 0.0 => format!("{:.2}", r.gitcd / e),
            _ => "-".to_owned(),
        };
        let better = if r.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        println!(
            "| {} | {} ({better}) |{etcd} {} | {ratio} |",
            r.workload,
            r.metric,
            fmt(r.gitcd)
        );
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A server under test.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn rss_peak_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

impl Server {
    /// Stops the server as an operator would (SIGTERM, then SIGKILL after
    /// 30 s), so that its data directory is measured at rest: not with a
    /// temporary file of whatever it was doing at the instant of a kill.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_etcd(etcd: &Path, data: &Path) -> Result<Server> {
    let (client, peer) = (free_port()?, free_port()?);
    let child = Command::new(etcd)
        .args([
            "--name=bench",
            &format!("--data-dir={}", data.display()),
            &format!("--listen-client-urls=http://127.0.0.1:{client}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-cluster=bench=http://127.0.0.1:{peer}"),
            "--log-level=error",
            // etcd's default quota (2 GiB of database file, history
            // included) is reached by a minute of W1 on a fast machine;
            // gitcd's counts live data only. 8 GiB is etcd's suggested most.
            "--quota-backend-bytes=8589934592",
            "--experimental-watch-progress-notify-interval=5s",
            "--logger=zap",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd")?;
    let mut server = Server {
        child,
        addr: format!("127.0.0.1:{client}").parse()?,
    };
    ready(&mut server).await?;
    Ok(server)
}

async fn start_gitcd(args: &Args, repo: &Path) -> Result<Server> {
    start_gitcd_with(args, repo, &[]).await
}

/// gitcd serve on `repo` with `extra` flags.
async fn start_gitcd_with(args: &Args, repo: &Path, extra: &[String]) -> Result<Server> {
    let port = free_port()?;
    let child = Command::new(&args.gitcd)
        .args(["serve", "--listen-urls", &format!("http://127.0.0.1:{port}")])
        .arg("--repo")
        .arg(repo)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(repo.with_extension("log")).context("creating gitcd's log")?)
        .spawn()
        .context("starting gitcd")?;
    let mut server = Server {
        child,
        addr: format!("127.0.0.1:{port}").parse()?,
    };
    ready(&mut server).await?;
    Ok(server)
}

async fn channel(addr: SocketAddr) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?.connect().await?)
}

/// Waits until the server answers Status; returns how long that took.
async fn ready(server: &mut Server) -> Result<Duration> {
    let addr = server.addr;
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("the server on {addr} exited: {status}");
        }
        if let Ok(ch) = channel(addr).await
            && MaintenanceClient::new(ch).status(StatusRequest {}).await.is_ok()
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("{addr} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a timed workload measured.
struct Measured {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    extra: Vec<(String, f64, bool)>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The servers a comparing workload runs against, in order: each etcd of
/// `--etcd`, then gitcd (last).
enum Which<'a> {
    Etcd(&'a Path),
    Gitcd,
}

fn servers(args: &Args) -> Vec<Which<'_>> {
    args.etcd.iter().map(|e| Which::Etcd(e)).chain([Which::Gitcd]).collect()
}

async fn start(args: &Args, which: &Which<'_>, base: &Path, i: usize) -> Result<(Server, PathBuf)> {
    Ok(match which {
        Which::Etcd(etcd) => {
            let data = base.join(format!("etcd-{i}"));
            (start_etcd(etcd, &data).await?, data)
        }
        Which::Gitcd => {
            let repo = base.join("gitcd.git");
            (start_gitcd(args, &repo).await?, repo)
        }
    })
}

/// Bytes of the files below `dir` (their apparent sizes).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Runs `work` against fresh servers (each etcd, then gitcd) and builds the
/// rows: throughput and latency, the workload's own measures, peak RSS, and
/// how many bytes of data directory each revision left.
async fn both<F, Fut>(args: &Args, name: &'static str, work: F) -> Result<Vec<Row>>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<Measured>>,
{
    let base = args.dir.join(name);
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let mut results = Vec::new();
    for (i, which) in servers(args).iter().enumerate() {
        let (server, data) = start(args, which, &base, i).await?;
        let mut m = work(server.addr).await?;
        if let Some(rss) = server.rss_peak_mib() {
            m.extra.push(("peak RSS MiB".into(), rss, false));
        }
        let revision = MaintenanceClient::new(channel(server.addr).await?)
            .status(StatusRequest {})
            .await?
            .into_inner()
            .header
            .map_or(0, |h| h.revision);
        server.stop();
        if revision > 100 {
            let kib = dir_bytes(&data) as f64 / 1024.0;
            m.extra
                .push(("data directory KiB per revision".into(), kib / revision as f64, false));
        }
        eprintln!(
            "   {}: {} ops in {:.1}s",
            data.display(),
            m.ops,
            m.elapsed.as_secs_f64()
        );
        m.latencies.sort();
        results.push(m);
    }
    let g = results.pop().expect("gitcd ran");
    let etcds = &results;
    let mut rows = Vec::new();
    let row = |metric: String, each: &dyn Fn(&Measured) -> Option<f64>, higher_is_better| Row {
        workload: name,
        metric,
        etcd: etcds.iter().map(each).collect(),
        gitcd: each(&g).unwrap_or(0.0),
        higher_is_better,
    };
    if g.ops > 0 && !g.latencies.is_empty() {
        rows.push(row(
            "ops/s".into(),
            &|m| Some(m.ops as f64 / m.elapsed.as_secs_f64()),
            true,
        ));
        for (label, p) in [("p50 ms", 0.5), ("p90 ms", 0.9), ("p99 ms", 0.99), ("max ms", 1.0)] {
            rows.push(row(label.into(), &|m| Some(percentile(&m.latencies, p)), false));
        }
    }
    for (label, _, higher) in &g.extra {
        let each = |m: &Measured| m.extra.iter().find(|(l, _, _)| l == label).map(|(_, v, _)| *v);
        rows.push(row(label.clone(), &each, *higher));
    }
    Ok(rows)
}

/// Waits for clients that each return their request latencies.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>>>>, start: Instant) -> Result<Measured> {
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Measured {
        ops: latencies.len(),
        elapsed: start.elapsed(),
        latencies,
        extra: Vec::new(),
    })
}

fn mod_equals(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        range_end: Bytes::new(),
    }
}

/// A value shaped like a stored Kubernetes object: JSON with a fixed frame
/// and `len` bytes in all of random field text, so that it compresses about
/// as much as real objects do (to roughly three quarters), not to nothing.
fn kube_value(rng: &mut impl Rng, len: usize) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
    let mut v = br#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"annotations":{"note":""#.to_vec();
    while v.len() + 4 < len {
        v.push(ALPHABET[rng.random_range(0..ALPHABET.len())]);
    }
    v.extend_from_slice(br#""}}}"#);
    Bytes::from(v)
}

/// The keys W1 has written and their last mod revision, to pick one at
/// random in constant time.
#[derive(Default)]
struct Known {
    keys: Vec<(Bytes, i64)>,
    index: HashMap<Bytes, usize>,
}

impl Known {
    fn insert(&mut self, key: Bytes, rev: i64) {
        match self.index.get(&key) {
            Some(&i) => self.keys[i].1 = rev,
            None => {
                self.index.insert(key.clone(), self.keys.len());
                self.keys.push((key, rev));
            }
        }
    }
}

/// W1: kube-apiserver's writes: creates (`MOD(key)=0` txn + put) and
/// updates (`MOD(key)=rev` txn + put, Get in the else branch).
async fn w1_kube_writes(addr: SocketAddr, seconds: u64) -> Result<Measured> {
    let clients = 64;
    let connections = 8;
    let channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..connections {
            v.push(channel(addr).await?);
        }
        v
    };
    let known: Arc<Mutex<Known>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = KvClient::new(channels[c % connections].clone());
        let known = known.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
            let (mut latencies, mut done) = (Vec::new(), Vec::new());
            let mut n = 0usize;
            while Instant::now() < deadline {
                let resource = rng.random_range(0..10);
                let ns = rng.random_range(0..20);
                let update = rng.random_bool(0.7);
                let value = {
                    let len = rng.random_range(1024..4096);
                    kube_value(&mut rng, len)
                };
                let existing = if update {
                    let k = known.lock().await;
                    k.keys.get(rng.random_range(0..k.keys.len().max(1))).cloned()
                } else {
                    None
                };
                let (key, expected) = match existing {
                    Some(e) => e,
                    None => {
                        n += 1;
                        (Bytes::from(format!("/registry/r{resource}/ns{ns}/obj-{c}-{n}")), 0)
                    }
                };
                let req = TxnRequest {
                    compare: vec![mod_equals(&key, expected)],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key.clone(),
                            value,
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: key.clone(),
                            ..Default::default()
                        })),
                    }],
                };
                let t = Instant::now();
                let resp = kv.txn(req).await?.into_inner();
                latencies.push(t.elapsed());
                let rev = if resp.succeeded {
                    resp.header.map_or(0, |h| h.revision)
                } else {
                    match resp.responses.first().and_then(|r| r.response.as_ref()) {
                        Some(response_op::Response::ResponseRange(r)) => r.kvs.first().map_or(0, |kv| kv.mod_revision),
                        _ => 0,
                    }
                };
                known.lock().await.insert(key, rev);
                done.push(start.elapsed());
            }
            anyhow::Ok((latencies, done))
        }));
    }
    let mut latencies = Vec::new();
    let mut done = Vec::new();
    for t in tasks {
        let (l, d) = t.await??;
        latencies.extend(l);
        done.extend(d);
    }
    // Whether the rate holds: the first and last quarters of the run.
    let quarter = seconds as f64 / 4.0;
    let rate =
        |from: f64, to: f64| done.iter().filter(|d| (from..to).contains(&d.as_secs_f64())).count() as f64 / quarter;
    let extra = vec![
        ("ops/s, first quarter".into(), rate(0.0, quarter), true),
        ("ops/s, last quarter".into(), rate(3.0 * quarter, 4.0 * quarter), true),
    ];
    Ok(Measured {
        ops: latencies.len(),
        elapsed: start.elapsed(),
        latencies,
        extra,
    })
}

/// W2: `etcdctl check perf --load=<load>`; reports writes/s and PASS (1)
/// or FAIL (0).
async fn w2_check_perf(addr: SocketAddr, load: &str) -> Result<Measured> {
    let start = Instant::now();
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={addr}"),
            "check",
            "perf",
            &format!("--load={load}"),
        ])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let pass = text.lines().any(|l| l.trim() == "PASS");
    // etcdctl's lines: "PASS: Throughput is 990 writes/s", "FAIL: Throughput too low: 759 writes/s",
    // "PASS: Slowest request took 0.49s", "PASS: Stddev is 0.05s", "FAIL: Stddev too high: 0.13s".
    let number_after = |prefixes: &[&str]| {
        text.lines()
            .find_map(|l| prefixes.iter().find_map(|p| l.split(p).nth(1)))
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.trim_end_matches('s').parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let tput = number_after(&["Throughput is ", "Throughput too low: "]);
    let slowest = number_after(&["Slowest request took too long: ", "Slowest request took "]);
    let stddev = number_after(&["Stddev too high: ", "Stddev is "]);
    Ok(Measured {
        ops: 0,
        elapsed: start.elapsed(),
        latencies: Vec::new(),
        extra: vec![
            (format!("check perf --load={load} writes/s"), tput, true),
            ("check perf slowest s".into(), slowest, false),
            ("check perf stddev s".into(), stddev, false),
            (
                "check perf PASS (1) / FAIL (0)".into(),
                if pass { 1.0 } else { 0.0 },
                true,
            ),
        ],
    })
}

/// W3: reads: single-key gets and paged lists (limit 500) of a 5,000-key prefix.
async fn w3_reads(addr: SocketAddr, seconds: u64) -> Result<Measured> {
    let ch = channel(addr).await?;
    let mut kv = KvClient::new(ch.clone()).max_decoding_message_size(usize::MAX);
    for batch in 0..50 {
        let ops = (0..100)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: Bytes::from(format!("/registry/pods/bench/p-{:05}", batch * 100 + i)),
                    value: Bytes::from(vec![b'v'; 1024]),
                    ..Default::default()
                })),
            })
            .collect();
        kv.txn(TxnRequest {
            compare: vec![],
            success: ops,
            failure: vec![],
        })
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..64 {
        let mut kv = KvClient::new(ch.clone()).max_decoding_message_size(usize::MAX);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let req = if rng.random_bool(0.5) {
                    RangeRequest {
                        key: Bytes::from(format!("/registry/pods/bench/p-{:05}", rng.random_range(0..5000))),
                        ..Default::default()
                    }
                } else {
                    let start = rng.random_range(0..10) * 500;
                    RangeRequest {
                        key: Bytes::from(format!("/registry/pods/bench/p-{start:05}")),
                        range_end: Bytes::from_static(b"/registry/pods/bench0"),
                        limit: 500,
                        ..Default::default()
                    }
                };
                let t = Instant::now();
                kv.range(req).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    gather(tasks, start).await
}

/// W4: 1,000 watchers on a prefix while writes go on at ~100/s; latency
/// from a put's acknowledgement to each watcher's delivery; counts events
/// lost or out of order.
async fn w4_watch(addr: SocketAddr, seconds: u64) -> Result<Measured> {
    let streams = 10;
    let per_stream = 100;
    let acked: Arc<std::sync::Mutex<HashMap<i64, Instant>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut watchers = Vec::new();
    for _ in 0..streams {
        let ch = channel(addr).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        for _ in 0..per_stream {
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                    key: Bytes::from_static(b"/registry/w4/"),
                    range_end: Bytes::from_static(b"/registry/w40"),
                    ..Default::default()
                })),
            })
            .await?;
        }
        let mut stop = stop_rx.clone();
        watchers.push(tokio::spawn(async move {
            let _keep = tx;
            let mut stream = WatchClient::new(ch)
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let mut latencies = Vec::new();
            let mut last: HashMap<i64, i64> = HashMap::new();
            let (mut delivered, mut disorder) = (0usize, 0usize);
            loop {
                let r = tokio::select! {
                    m = stream.message() => match m? {
                        Some(r) => r,
                        None => break,
                    },
                    _ = stop.wait_for(|s| *s) => break,
                };
                let now = Instant::now();
                for e in r.events {
                    let rev = e.kv.map_or(0, |kv| kv.mod_revision);
                    if rev <= last.insert(r.watch_id, rev).unwrap_or(0) {
                        disorder += 1;
                    }
                    delivered += 1;
                    // Matched with the acknowledgement afterwards: a delivery
                    // may come before the writer has seen its ack.
                    latencies.push((rev, now));
                }
            }
            anyhow::Ok((latencies, delivered, disorder))
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut kv = KvClient::new(channel(addr).await?);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut writes = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while Instant::now() < deadline {
        tick.tick().await;
        let r = kv
            .put(PutRequest {
                key: Bytes::from(format!("/registry/w4/obj-{}", writes % 200)),
                value: Bytes::from(vec![b'w'; 1024]),
                ..Default::default()
            })
            .await?
            .into_inner();
        acked
            .lock()
            .expect("lock")
            .insert(r.header.map_or(0, |h| h.revision), Instant::now());
        writes += 1;
    }
    let elapsed = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let (mut latencies, mut delivered, mut disorder) = (Vec::new(), 0usize, 0usize);
    let acks = acked.lock().expect("lock").clone();
    for w in watchers {
        let (seen, d, o) = w.await??;
        // Latency from the acknowledgement; 0 when the event arrived first.
        latencies.extend(
            seen.into_iter()
                .filter_map(|(rev, at): (i64, Instant)| acks.get(&rev).map(|t| at.saturating_duration_since(*t))),
        );
        delivered += d;
        disorder += o;
    }
    let expected = writes * streams * per_stream;
    Ok(Measured {
        ops: writes,
        elapsed,
        latencies,
        extra: vec![
            ("events lost".into(), expected.saturating_sub(delivered) as f64, false),
            ("events out of order".into(), disorder as f64, false),
        ],
    })
}

/// W5: `gitcd init` over a synthetic history (a 5,000-file tree, then one
/// file changed per commit), made with `git fast-import`.
async fn w5_init(args: &Args) -> Result<Vec<Row>> {
    let repo = args.dir.join("w5.git");
    let _ = std::fs::remove_dir_all(&repo);
    let status = Command::new("git").args(["init", "-q", "--bare"]).arg(&repo).status()?;
    if !status.success() {
        bail!("git init failed");
    }
    let mut stream = String::new();
    let files = 5000;
    for c in 0..args.history_commits {
        stream.push_str(&format!(
            "commit refs/heads/main\ncommitter bench <bench@example.com> {} +0000\ndata 1\nx\n",
            1_700_000_000 + c
        ));
        let touched: Vec<usize> = if c == 0 {
            (0..files).collect()
        } else {
            vec![(c * 7919) % files]
        };
        for f in touched {
            let content = format!("file {f} at commit {c}\n");
            stream.push_str(&format!(
                "M 100644 inline registry/things/ns{}/item-{f}\ndata {}\n{content}\n",
                f % 50,
                content.len()
            ));
        }
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write as _;
        child.stdin.take().context("stdin")?.write_all(stream.as_bytes())?;
    }
    if !child.wait()?.success() {
        bail!("git fast-import failed");
    }
    let start = Instant::now();
    let out = Command::new(&args.gitcd)
        .arg("init")
        .arg("--repo")
        .arg(&repo)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .output()?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!("gitcd init failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    eprintln!(
        "   gitcd init: {} commits in {:.1}s",
        args.history_commits,
        elapsed.as_secs_f64()
    );
    Ok(vec![Row::gitcd(
        "w5",
        format!("gitcd init commits/s ({} commits, {files} files)", args.history_commits),
        args.history_commits as f64 / elapsed.as_secs_f64(),
        true,
    )])
}

/// W6: start-up with many keys: load them, stop the server, start it again,
/// time until it answers, and its RSS then.
async fn w6_startup(args: &Args) -> Result<Vec<Row>> {
    let base = args.dir.join("w6");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let mut results = Vec::new();
    for (i, which) in servers(args).iter().enumerate() {
        let start_server = || async { start(args, which, &base, i).await.map(|(s, _)| s) };
        let server = start_server().await?;
        let mut kv = KvClient::new(channel(server.addr).await?);
        let mut n = 0;
        while n < args.startup_keys {
            let ops: Vec<RequestOp> = (n..(n + 128).min(args.startup_keys))
                .map(|i| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: Bytes::from(format!("/registry/r{}/ns{}/obj-{i}", i % 10, i % 20)),
                        value: Bytes::from(vec![b'v'; 1024]),
                        ..Default::default()
                    })),
                })
                .collect();
            n += ops.len();
            kv.txn(TxnRequest {
                compare: vec![],
                success: ops,
                failure: vec![],
            })
            .await?;
        }
        drop(server);
        let t = Instant::now();
        let server = start_server().await?;
        let took = t.elapsed();
        let rss = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
            .map_or(0.0, |kib| kib / 1024.0);
        eprintln!(
            "   {}: ready in {:.2}s with {} keys, RSS {rss:.0} MiB",
            if matches!(which, Which::Gitcd) { "gitcd" } else { "etcd" },
            took.as_secs_f64(),
            args.startup_keys
        );
        results.push((took.as_secs_f64(), rss));
    }
    let (gitcd, etcds) = results.split_last().expect("gitcd ran");
    Ok(vec![
        Row {
            workload: "w6",
            metric: format!("start-up s ({} keys)", args.startup_keys),
            etcd: etcds.iter().map(|r| Some(r.0)).collect(),
            gitcd: gitcd.0,
            higher_is_better: false,
        },
        Row {
            workload: "w6",
            metric: "RSS after start-up MiB".into(),
            etcd: etcds.iter().map(|r| Some(r.1)).collect(),
            gitcd: gitcd.1,
            higher_is_better: false,
        },
    ])
}

/// W7 (gitcd only): the cost of a merge into a store of `startup_keys`
/// keys, for a few keys changed on the other side: planning it (reading
/// Git) and applying it (one revision through the writer). A merge must
/// cost in proportion to what changed, not to the store's size.
async fn w7_merge_cost(args: &Args) -> Result<Vec<Row>> {
    use common::merge::{Incoming, Outcome, Policy};
    use common::store::Store;
    let base = args.dir.join("w7");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let repo = base.join("repo.git");
    let pair = |name: &str| branch_config(&repo, name);
    let a = tokio::task::spawn_blocking({
        let c = pair("a");
        move || Store::open(c)
    })
    .await??;
    let mut n = 0;
    while n < args.startup_keys {
        let ops: Vec<RequestOp> = (n..(n + 128).min(args.startup_keys))
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: Bytes::from(format!("/registry/r{}/ns{}/obj-{i}", i % 10, i % 20)),
                    value: Bytes::from(vec![b'v'; 1024]),
                    ..Default::default()
                })),
            })
            .collect();
        n += ops.len();
        a.txn(TxnRequest {
            compare: vec![],
            success: ops,
            failure: vec![],
        })
        .await?;
    }
    for (from, to) in [("a", "b")] {
        for r in [
            format!("refs/heads/{from}"),
            format!("refs/gitcd/metadata/refs/heads/{from}"),
        ] {
            let id = Command::new("git")
                .arg("--git-dir")
                .arg(&repo)
                .args(["rev-parse", &r])
                .output()?;
            let id = String::from_utf8(id.stdout)?;
            let target = r.replace(from, to);
            let ok = Command::new("git")
                .arg("--git-dir")
                .arg(&repo)
                .args(["update-ref", &target, id.trim()])
                .status()?;
            anyhow::ensure!(ok.success(), "git update-ref {target}");
        }
    }
    let b = tokio::task::spawn_blocking({
        let c = pair("b");
        move || Store::open(c)
    })
    .await??;
    let mut rows = Vec::new();
    for changed in [1usize, 10, 100] {
        let (mut plans, mut applies) = (Vec::new(), Vec::new());
        for round in 0..5 {
            for i in 0..changed {
                let k = (round * 1000 + i * 7) % args.startup_keys;
                b.put(PutRequest {
                    key: Bytes::from(format!("/registry/r{}/ns{}/obj-{k}", k % 10, k % 20)),
                    value: Bytes::from(format!("changed {round}")),
                    ..Default::default()
                })
                .await?;
            }
            let meta = b.repo().ref_target(b.metadata_ref())?.context("b's metadata ref")?;
            let incoming = Incoming {
                commit: b.snapshot().data_commit,
                meta_tree: Some(b.repo().commit(meta)?.tree),
                name: "refs/heads/b".into(),
            };
            let t = Instant::now();
            let outcome = tokio::task::spawn_blocking({
                let a = a.clone();
                move || common::merge::plan(&a.repo(), &a.snapshot(), &incoming, &Policy::default())
            })
            .await??;
            plans.push(t.elapsed());
            let Outcome::Changes(set) = outcome else {
                bail!("a merge of {changed} changed keys changes something")
            };
            let t = Instant::now();
            a.apply(set).await?;
            applies.push(t.elapsed());
        }
        plans.sort();
        applies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "   {changed} keys changed in a {}-key store: plan {:.1} ms, apply {:.1} ms (medians of 5)",
            args.startup_keys,
            ms(plans[2]),
            ms(applies[2])
        );
        for (what, d) in [("plan", plans[2]), ("apply", applies[2])] {
            rows.push(Row::gitcd(
                "w7",
                format!("merge {what} ms, {changed} keys of {}", args.startup_keys),
                ms(d),
                false,
            ));
        }
    }
    a.close();
    b.close();
    Ok(rows)
}

/// W8: W1 on a participant's gitcd (`--upstream-ref`, `--pull-interval
/// 1s`) while its upstream's `main` changes ten keys every second, so that
/// a merge lands in the served branch every second; against the same load
/// on a gitcd that does not pull, and on one that pulls an upstream that
/// does not change. Each phase starts from a fresh participant.
async fn w8_writes_while_merging(args: &Args) -> Result<Vec<Row>> {
    // Later phases run on a busier file system (packs folded and freed):
    // every other run goes in the reverse order.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut phases = ["alone", "pulling", "merging"];
    if RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 == 1 {
        phases.reverse();
    }
    let base = args.dir.join("w8");
    let _ = std::fs::remove_dir_all(&base);
    let mut rows = Vec::new();
    let mut rates = HashMap::new();
    for phase in phases {
        let dir = base.join(phase);
        std::fs::create_dir_all(&dir)?;
        let up = dir.join("up.git");
        participant_repo(&dir.join("seed.git"), "main", &up, false).await?;
        let repo = participant_repo(&dir.join("a.git"), "a", &up, true).await?;
        let metrics_port = free_port()?;
        let mut extra = vec![
            "--data-ref".to_owned(),
            "refs/heads/a".to_owned(),
            "--committer-name".to_owned(),
            "a".to_owned(),
            "--listen-metrics-urls".to_owned(),
            format!("http://127.0.0.1:{metrics_port}"),
        ];
        if phase != "alone" {
            extra.extend(["--upstream-ref", "refs/heads/main", "--pull-interval", "1s"].map(str::to_owned));
        }
        let server = start_gitcd_with(args, &repo, &extra).await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let writer = (phase == "merging").then(|| {
            let up = up.clone();
            tokio::spawn(upstream_writer(up, stopped))
        });
        let mut m = w1_kube_writes(server.addr, args.seconds).await?;
        let _ = stop.send(true);
        if let Some(writer) = writer {
            let (rounds, last) = writer.await??;
            // Every round reaches the served branch: the merges were real.
            let mut kv = KvClient::new(channel(server.addr).await?);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let got = kv
                    .range(RangeRequest {
                        key: last.0.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                if got.kvs.first().is_some_and(|kv| kv.value == last.1) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the upstream's last write did not reach the participant in 30 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let merges = scrape(
                metrics_port,
                "gitcd_pull_operations_total{operation=\"merge\",result=\"success\"}",
            )
            .await?
            .unwrap_or(0.0);
            eprintln!("   {rounds} upstream commits, {merges} merges applied");
            for (metric, v) in [("upstream commits", rounds as f64), ("merges applied", merges)] {
                rows.push(Row::gitcd("w8", metric, v, true));
            }
        }
        server.stop();
        m.latencies.sort();
        let ops = m.ops as f64 / m.elapsed.as_secs_f64();
        eprintln!("   {phase}: {} ops in {:.1}s", m.ops, m.elapsed.as_secs_f64());
        for (metric, v, higher) in [
            ("ops/s", ops, true),
            ("p50 ms", percentile(&m.latencies, 0.5), false),
            ("p99 ms", percentile(&m.latencies, 0.99), false),
        ] {
            rows.push(Row::gitcd("w8", format!("{metric}, {phase}"), v, higher));
        }
        rates.insert(phase, ops);
    }
    for phase in ["pulling", "merging"] {
        rows.push(Row::gitcd(
            "w8",
            format!("ops/s {phase} / alone"),
            rates[phase] / rates["alone"],
            true,
        ));
    }
    Ok(rows)
}

/// A branch pair `branch` in `repo`, published to `upstream` (created bare
/// when missing), as git-pre, gitcd-init and git-post leave it; `from_main`
/// starts it from the upstream's `main`.
async fn participant_repo(repo: &Path, branch: &str, upstream: &Path, from_main: bool) -> Result<PathBuf> {
    use common::remote::{Credentials, Remote};
    if !upstream.exists() {
        let ok = Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(upstream)
            .status()?;
        anyhow::ensure!(ok.success(), "git init --bare {}", upstream.display());
    }
    let remote = Remote {
        name: "origin".into(),
        url: format!("file://{}", upstream.display()),
    };
    let c = branch_config(repo, branch);
    common::prepare::prepare(&common::prepare::PrepareConfig {
        repo: c.repo.clone(),
        data_ref: c.data_ref.clone(),
        metadata_ref: c.metadata_ref.clone(),
        committer: c.committer.clone(),
        remote: Some((remote.clone(), Credentials::default())),
        upstream_ref: from_main.then(|| "refs/heads/main".to_owned()),
        create_missing: true,
        timeout: Duration::from_secs(30),
    })?;
    common::store::Store::init(&c)?;
    common::publish::publish(&common::publish::PublishConfig {
        repo: c.repo.clone(),
        data_ref: c.data_ref,
        metadata_ref: c.metadata_ref,
        remote,
        credentials: Credentials::default(),
        max_attempts: 3,
        max_elapsed: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
    })
    .await?;
    Ok(c.repo)
}

/// Commits ten changed keys to `upstream`'s `main` every second until
/// `stop`; returns how many commits it made and the last key and value.
async fn upstream_writer(
    upstream: PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(usize, (Bytes, Bytes))> {
    let mut c = branch_config(&upstream, "main");
    c.committer.name = "upstream".into();
    let store = tokio::task::spawn_blocking(move || common::store::Store::open(c)).await??;
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let (mut rounds, mut last) = (0usize, (Bytes::new(), Bytes::new()));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let ops = (0..10)
            .map(|i| {
                let key = Bytes::from(format!("/registry/configmaps/upstream/cm-{}", (rounds * 10 + i) % 200));
                let value = kube_value(&mut rng, 2048);
                last = (key.clone(), value.clone());
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key,
                        value,
                        ..Default::default()
                    })),
                }
            })
            .collect();
        store
            .txn(TxnRequest {
                compare: vec![],
                success: ops,
                failure: vec![],
            })
            .await?;
        rounds += 1;
    }
    store.close();
    Ok((rounds, last))
}

/// The value of the Prometheus sample `name` (with its labels, as printed)
/// on `port`'s `/metrics`.
async fn scrape(port: u16, name: &str) -> Result<Option<f64>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok()))
}
