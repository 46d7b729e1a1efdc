//! git-sync's services mode (Gitopper's per-service GitOps), the binary
//! against real repositories made by git, on 127.0.0.1: services with
//! disjoint sparse paths from one repository, the actions (command,
//! systemctl, signal to a pid file) recorded by the tests, freeze, rollback,
//! unfreeze, BROKEN, a restart keeping FREEZE, the API's authentication
//! (bearer token, mTLS with certificates made by openssl), the
//! `gitopperctl` subcommand end to end, bind mounts in a mount namespace of
//! the test's own (or symlinks where mounting is not permitted), and
//! bootstrapping.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::hosts;
use crate::support::{free_port, git};

const BIN: &str = env!("CARGO_BIN_EXE_git-sync");
const MACHINE: &str = "test-machine";

mod api;
mod host;
mod states;

fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(t)) => return Ok(t),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            match last_err {
                Some(e) => bail!("timed out waiting for {what}: last error: {e:#}"),
                None => bail!("timed out waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

const WAIT: Duration = Duration::from_secs(30);

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A temp dir others can pass through (git may run as another user).
fn tempdir() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    let d = tempfile::tempdir()?;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(d)
}

/// The repository, the services file and the files the actions write.
struct Fixture {
    dir: tempfile::TempDir,
    up: PathBuf,
    token: PathBuf,
}

impl Fixture {
    /// An upstream with `a/etc/conf`, `b/etc/conf`, `other/readme` (blobs
    /// fetched on demand: the filter is allowed).
    fn new() -> Result<Self> {
        let dir = tempdir()?;
        let up = dir.path().join("up");
        std::fs::create_dir(&up)?;
        git(&up, &["init", "-q", "-b", "main"])?;
        git(&up, &["config", "uploadpack.allowFilter", "true"])?;
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n")?;
        let f = Self { dir, up, token };
        f.commit(&[("a/etc/conf", "a1"), ("b/etc/conf", "b1"), ("other/readme", "r1")])?;
        Ok(f)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn commit(&self, files: &[(&str, &str)]) -> Result<String> {
        for (p, c) in files {
            let p = self.up.join(p);
            std::fs::create_dir_all(p.parent().context("parent")?)?;
            std::fs::write(p, c)?;
        }
        git(&self.up, &["add", "-A"])?;
        git(&self.up, &["commit", "-qm", "change"])?;
        Ok(git(&self.up, &["rev-parse", "HEAD"])?.trim().to_string())
    }

    fn head(&self) -> Result<String> {
        Ok(git(&self.up, &["rev-parse", "HEAD"])?.trim().to_string())
    }

    /// `[global]` for this fixture.
    fn global(&self) -> String {
        format!(
            "[global]\nupstream = \"file://{}\"\nmount = \"{}\"\nkeys = [ {{ path = \"keys/k.pub\", ro = true }} ]\n",
            self.up.display(),
            self.path("mount").display()
        )
    }

    /// A service recording its actions as `<service> <phase> <hash>` lines
    /// in `rec`, linking `<name>/etc` at `targets/<name>`.
    fn recording_service(&self, name: &str, extra: &str) -> String {
        format!(
            "[[services]]\nmachine = \"{MACHINE}\"\nservice = \"{name}\"\n\
             command = [\"sh\", \"-c\", \"echo \\\"$GITSYNC_SERVICE $GITSYNC_PHASE $GITSYNC_HASH\\\" >> {rec}\"]\n\
             dirs = [ {{ local = \"{target}\", link = \"{name}/etc\" }} ]\n{extra}",
            rec = self.path("rec").display(),
            target = self.path(&format!("targets/{name}")).display(),
        )
    }

    fn write_services(&self, text: &str) -> Result<PathBuf> {
        let p = self.path("services.toml");
        std::fs::write(&p, text)?;
        Ok(p)
    }

    /// The action lines recorded so far.
    fn records(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("rec"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn target(&self, name: &str) -> Result<String> {
        Ok(std::fs::read_to_string(self.path(&format!("targets/{name}/conf")))?)
    }
}

/// A running `git-sync --services`: killed when dropped.
struct Machine {
    child: Option<Child>,
    api: String,
    http: String,
    log: PathBuf,
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How to start git-sync.
struct Start<'a> {
    services: &'a Path,
    extra: Vec<String>,
    /// Run through these first (unshare, setpriv).
    wrapper: Vec<String>,
    /// Prepended to PATH (fake systemctl, apt-get).
    path_dir: Option<PathBuf>,
    api_token: bool,
}

impl<'a> Start<'a> {
    fn new(services: &'a Path) -> Self {
        Self {
            services,
            extra: vec![],
            wrapper: vec![],
            path_dir: None,
            api_token: true,
        }
    }

    fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra.push(a.into());
        self
    }

    fn run(self, f: &Fixture, n: usize) -> Result<Machine> {
        let api = format!("127.0.0.1:{}", free_port()?);
        let http = format!("127.0.0.1:{}", free_port()?);
        let log = f.path(&format!("git-sync-{n}.log"));
        let mut args: Vec<String> = vec![
            format!("--services={}", self.services.display()),
            format!("--hostname={MACHINE}"),
            "--period=100ms".into(),
            format!("--api-bind={api}"),
            format!("--http-bind={http}"),
            "--http-metrics".into(),
            "-v=2".into(),
        ];
        if self.api_token {
            args.push(format!("--api-token-file={}", f.token.display()));
        }
        args.extend(self.extra);
        let mut cmd = match self.wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(&args)
            .current_dir(f.dir.path())
            .env("HOME", f.dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        if let Some(d) = &self.path_dir {
            cmd.env(
                "PATH",
                format!("{}:{}", d.display(), std::env::var("PATH").unwrap_or_default()),
            );
        }
        let child = cmd.spawn()?;
        let m = Machine {
            child: Some(child),
            api,
            http,
            log,
        };
        poll("the HTTP endpoint to be ready", WAIT, || {
            Ok(http_call(&m.http, "GET", "/", None)
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        })
        .with_context(|| m.log_tail())?;
        Ok(m)
    }
}

impl Machine {
    fn wait_record(&self, f: &Fixture, line: &str) -> Result<()> {
        poll(&format!("the action record {line:?}"), WAIT, || {
            Ok(f.records().iter().any(|l| l == line).then_some(()))
        })
        .with_context(|| self.log_tail())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        // The state changes (with their errors), then the end of the log.
        let states: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("\"service state\""))
            .take(20)
            .collect();
        format!(
            "{}\n...\n{}",
            states.join("\n"),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    fn service(&self, name: &str) -> Result<Value> {
        let (status, body) = http_call(&self.api, "GET", &format!("/list/service/{name}"), None)?;
        ensure!(status == 200, "{status}: {body}");
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["services"][0].clone())
    }

    fn wait_service(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        poll(&format!("{name}: {what}"), WAIT, || {
            let s = self.service(name)?;
            Ok(pred(&s).then_some(s))
        })
        .with_context(|| self.log_tail())
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>) -> Result<(u16, Value)> {
        let (status, body) = http_call(&self.api, method, path, token)?;
        Ok((status, serde_json::from_str(&body).with_context(|| body.clone())?))
    }

    fn metrics(&self) -> Result<String> {
        let (status, body) = http_call(&self.http, "GET", "/metrics", None)?;
        ensure!(status == 200);
        Ok(body)
    }

    /// Sends `sig` and waits for the exit code.
    fn stop(mut self, sig: nix::sys::signal::Signal) -> Result<Option<i32>> {
        let mut child = self.child.take().context("running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)?;
        let status = poll("git-sync to exit", WAIT, || Ok(child.try_wait()?))?;
        Ok(status.code())
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http_call(addr: &str, method: &str, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(150)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).context("no status")?.parse()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn hash_of(v: &Value) -> &str {
    v["hash"].as_str().unwrap_or_default()
}

struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_script(path: &Path, body: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("#!/bin/sh\n{body}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn info_metric(metrics: &str, service: &str) -> Option<(String, String)> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix("gitopper_service_info{")?;
        let labels = rest.split('}').next()?;
        let get = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
        };
        (get("service")? == service).then(|| Some((get("hash")?, get("state")?)))?
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
