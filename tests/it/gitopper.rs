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

#[test]
fn a_change_reloads_only_its_service() -> Result<()> {
    let f = Fixture::new()?;
    let first = f.head()?;
    // a: a command; b: Gitopper's systemctl (a fake one on PATH records
    // its calls); c: a signal to the pid in a pid file.
    let bin = f.path("bin");
    std::fs::create_dir(&bin)?;
    let systemctl_log = f.path("systemctl.log");
    write_script(
        &bin.join("systemctl"),
        &format!("echo \"$*\" >> {}\n", systemctl_log.display()),
    )?;
    let hups = f.path("hups");
    let pidfile = f.path("c.pid");
    let trap = format!(
        "echo $$ > {pid}; trap 'echo hup >> {hups}' HUP; while :; do sleep 0.05; done",
        pid = pidfile.display(),
        hups = hups.display()
    );
    let mut trapper = Command::new("sh").arg("-c").arg(&trap).spawn()?;
    let _reap = KillOnDrop(&mut trapper);
    poll("the pid file", WAIT, || Ok(pidfile.exists().then_some(())))?;
    f.commit(&[("c/etc/conf", "c1")])?;
    let first_c = f.head()?;
    let services = f.write_services(&format!(
        "{}{}[[services]]\nmachine = \"{MACHINE}\"\nservice = \"b\"\naction = \"reload\"\ndirs = [ {{ local = \"{}\", link = \"b/etc\" }} ]\n\
         [[services]]\nmachine = \"{MACHINE}\"\nservice = \"c\"\npidfile = \"{}\"\ndirs = [ {{ local = \"{}\", link = \"c/etc\" }} ]\n\
         [[services]]\nmachine = \"elsewhere\"\nservice = \"z\"\n",
        f.global(),
        f.recording_service("a", ""),
        f.path("targets/b").display(),
        pidfile.display(),
        f.path("targets/c").display(),
    ))?;
    let m = Start {
        path_dir: Some(bin),
        ..Start::new(&services).arg("--services-links=symlink")
    }
    .run(&f, 0)?;
    m.wait_record(&f, &format!("a start {first_c}"))?;
    poll("b's start", WAIT, || {
        Ok((std::fs::read_to_string(&systemctl_log).unwrap_or_default() == "daemon-reload\nstart b\n").then_some(()))
    })?;
    poll("c's first HUP", WAIT, || {
        Ok((std::fs::read_to_string(&hups).unwrap_or_default() == "hup\n").then_some(()))
    })?;
    assert_eq!(f.target("a")?, "a1");
    assert_eq!(f.target("b")?, "b1");
    assert_eq!(f.target("c")?, "c1");
    // Sparse: only the linked paths are checked out.
    let co_a = f.path("mount/a");
    assert!(co_a.join("a/etc/conf").exists());
    for absent in ["b", "c", "other"] {
        assert!(!co_a.join(absent).exists(), "{absent} is not a's");
    }
    let _ = first;

    let second = f.commit(&[("a/etc/conf", "a2")])?;
    m.wait_record(&f, &format!("a change {second}"))?;
    assert_eq!(f.target("a")?, "a2");
    for s in ["b", "c"] {
        m.wait_service(s, "at the new commit", |v| hash_of(v) == second)?;
    }
    let unrelated = f.commit(&[("other/readme", "r2")])?;
    for s in ["a", "b", "c"] {
        m.wait_service(s, "at the unrelated commit", |v| hash_of(v) == unrelated)?;
    }
    assert_eq!(f.records().len(), 2, "only a's start and a's change: {:?}", f.records());
    assert_eq!(std::fs::read_to_string(&systemctl_log)?, "daemon-reload\nstart b\n");
    assert_eq!(std::fs::read_to_string(&hups)?, "hup\n");

    let third = f.commit(&[("b/etc/conf", "b2"), ("c/etc/conf", "c2")])?;
    poll("b's reload", WAIT, || {
        Ok(
            (std::fs::read_to_string(&systemctl_log)? == "daemon-reload\nstart b\ndaemon-reload\nreload b\n")
                .then_some(()),
        )
    })?;
    poll("c's second HUP", WAIT, || {
        Ok((std::fs::read_to_string(&hups)? == "hup\nhup\n").then_some(()))
    })?;
    m.wait_service("a", "at the third commit", |v| hash_of(v) == third)?;
    assert_eq!(f.records().len(), 2, "a is not told of b's and c's changes");
    assert_eq!((f.target("b")?, f.target("c")?), ("b2".into(), "c2".into()));

    let (status, list) = m.call("GET", "/list/service", None)?;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["services"]
        .as_array()
        .context("services")?
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "z is another machine's");
    let (_, machines) = m.call("GET", "/list/machine", None)?;
    assert_eq!(machines["machines"].as_array().map(Vec::len), Some(4));
    assert_eq!(machines["machines"][3]["machine"], "elsewhere");
    assert_eq!(machines["machines"][3]["actual"], MACHINE);
    let a = m.service("a")?;
    assert_eq!(a["links"][0]["how"], "symlink");
    assert_eq!(a["state"], "OK");
    assert!(a["change"].as_str().is_some_and(|c| c.ends_with(" UTC")), "{a}");
    let metrics = m.metrics()?;
    assert!(metrics.contains("gitopper_service_state{service=\"a\"} 0"), "{metrics}");
    assert!(metrics.contains("gitopper_machine_git_ops_total"), "{metrics}");
    Ok(())
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

#[test]
fn freeze_rollback_unfreeze() -> Result<()> {
    let f = Fixture::new()?;
    let first = f.head()?;
    let services = f.write_services(&format!(
        "{}{}{}",
        f.global(),
        f.recording_service("a", ""),
        f.recording_service("b", "")
    ))?;
    let m = Start::new(&services).arg("--services-links=symlink").run(&f, 0)?;
    m.wait_record(&f, &format!("a start {first}"))?;
    let second = f.commit(&[("a/etc/conf", "a2")])?;
    m.wait_record(&f, &format!("a change {second}"))?;

    let (status, frozen) = m.call("POST", "/do/freeze/a", Some("s3cret"))?;
    assert_eq!(status, 200, "{frozen}");
    assert_eq!(frozen["services"][0]["state"], "FREEZE");
    // Upstream moves; b follows, a does not.
    let third = f.commit(&[("a/etc/conf", "a3"), ("b/etc/conf", "b3")])?;
    m.wait_record(&f, &format!("b change {third}"))?;
    let a = m.service("a")?;
    assert_eq!((a["state"].as_str(), hash_of(&a)), (Some("FREEZE"), second.as_str()));
    assert_eq!(f.target("a")?, "a2");
    assert!(!f.records().contains(&format!("a change {third}")));

    // Roll back to the first commit, by an abbreviated hash.
    let (status, body) = m.call("POST", &format!("/do/rollback/a/{}", &first[..10]), Some("s3cret"))?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["services"][0]["state"], "ROLLBACK");
    let a = m.wait_service("a", "rolled back", |v| v["state"] == "FREEZE")?;
    assert_eq!(a["stateinfo"], format!("ROLLBACK: {first}"));
    assert_eq!(hash_of(&a), first);
    assert_eq!(f.target("a")?, "a1");
    m.wait_record(&f, &format!("a rollback {first}"))?;
    let metrics = m.metrics()?;
    assert_eq!(
        info_metric(&metrics, "a"),
        Some((first.clone(), "FREEZE".into())),
        "{metrics}"
    );
    assert!(metrics.contains("gitopper_service_state{service=\"a\"} 1"), "{metrics}");
    assert_eq!(info_metric(&metrics, "b"), Some((third.clone(), "OK".into())));
    // A hash that is not a commit is refused and changes nothing.
    let (status, body) = m.call("POST", "/do/rollback/a/abcdef12", Some("s3cret"))?;
    assert_eq!(status, 406, "{body}");
    let (status, body) = m.call("POST", "/do/rollback/a/not-hex", Some("s3cret"))?;
    assert_eq!(status, 406, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("hexadecimal")),
        "{body}"
    );
    assert_eq!(m.service("a")?["stateinfo"], format!("ROLLBACK: {first}"));

    // Unfreeze: a catches up with its branch.
    let (status, _) = m.call("POST", "/do/unfreeze/a", Some("s3cret"))?;
    assert_eq!(status, 200);
    let a = m.wait_service("a", "caught up", |v| hash_of(v) == third && v["state"] == "OK")?;
    assert_eq!(a["stateinfo"], "");
    assert_eq!(f.target("a")?, "a3");
    m.wait_record(&f, &format!("a change {third}"))?;
    // An unfreeze of a service that is not held changes nothing.
    let (status, body) = m.call("POST", "/do/unfreeze/b", Some("s3cret"))?;
    assert_eq!((status, &body["services"][0]["state"]), (200, &Value::from("OK")));
    let (status, _) = m.call("POST", "/do/pull/b", Some("s3cret"))?;
    assert_eq!(status, 200);
    let (status, _) = m.call("POST", "/do/freeze/nope", Some("s3cret"))?;
    assert_eq!(status, 404);
    Ok(())
}

#[test]
fn broken_when_the_action_fails() -> Result<()> {
    let f = Fixture::new()?;
    let services = f.write_services(&format!(
        "{}[[services]]\nmachine = \"{MACHINE}\"\nservice = \"a\"\n\
         command = [\"sh\", \"-c\", \"if test -e fail; then echo refusing >&2; exit 3; fi; echo \\\"a $GITSYNC_PHASE $GITSYNC_HASH\\\" >> {rec}\"]\n\
         dirs = [ {{ local = \"{t}\", link = \"a/etc\" }} ]\n",
        f.global(),
        rec = f.path("rec").display(),
        t = f.path("targets/a").display(),
    ))?;
    // The command runs in the checkout: `fail` at its top breaks it.
    let m = Start::new(&services).arg("--services-links=symlink").run(&f, 0)?;
    m.wait_record(&f, &format!("a start {}", f.head()?))?;
    std::fs::write(f.path("mount/a/fail"), "")?;
    let bad = f.commit(&[("a/etc/conf", "a2")])?;
    let a = m.wait_service("a", "BROKEN", |v| v["state"] == "BROKEN")?;
    assert!(a["stateinfo"].as_str().is_some_and(|i| i.contains("refusing")), "{a}");
    assert_eq!(hash_of(&a), bad, "the files moved; the service refused them");
    let metrics = m.metrics()?;
    assert!(metrics.contains("gitopper_service_state{service=\"a\"} 3"), "{metrics}");
    // Not retried at the same commit; a later change that it accepts is OK.
    std::fs::remove_file(f.path("mount/a/fail"))?;
    let good = f.commit(&[("a/etc/conf", "a3")])?;
    m.wait_record(&f, &format!("a change {good}"))?;
    m.wait_service("a", "OK again", |v| v["state"] == "OK")?;
    assert!(!f.records().contains(&format!("a change {bad}")));
    Ok(())
}

#[test]
fn a_restart_keeps_freeze_and_sighup_exits_2() -> Result<()> {
    let f = Fixture::new()?;
    let first = f.head()?;
    let services = f.write_services(&format!(
        "{}{}{}",
        f.global(),
        f.recording_service("a", ""),
        f.recording_service("b", "")
    ))?;
    let m = Start::new(&services).arg("--services-links=symlink").run(&f, 0)?;
    m.wait_record(&f, &format!("a start {first}"))?;
    m.wait_record(&f, &format!("b start {first}"))?;
    let (status, _) = m.call("POST", "/do/freeze/a", Some("s3cret"))?;
    assert_eq!(status, 200);
    assert_eq!(m.stop(nix::sys::signal::Signal::SIGTERM)?, Some(0));

    let second = f.commit(&[("a/etc/conf", "a2"), ("b/etc/conf", "b2")])?;
    let m = Start::new(&services).arg("--services-links=symlink").run(&f, 1)?;
    m.wait_record(&f, &format!("b change {second}"))?;
    let a = m.service("a")?;
    assert_eq!(
        (a["state"].as_str(), hash_of(&a)),
        (Some("FREEZE"), first.as_str()),
        "{a}"
    );
    assert_eq!(f.target("a")?, "a1");
    assert_eq!(
        f.records().iter().filter(|l| l.starts_with("a ")).count(),
        1,
        "a was not told anything new: {:?}",
        f.records()
    );
    let saved = std::fs::read_to_string(f.path("mount/a/.git/gitopper/state.json"))?;
    assert!(saved.contains("FREEZE"), "{saved}");
    // A pending rollback survives a restart too, and is then applied.
    let (status, _) = m.call("POST", &format!("/do/rollback/a/{second}"), Some("s3cret"))?;
    assert_eq!(status, 200);
    m.wait_service("a", "rolled forward", |v| {
        v["stateinfo"] == format!("ROLLBACK: {second}")
    })?;
    assert_eq!(
        m.stop(nix::sys::signal::Signal::SIGHUP)?,
        Some(2),
        "Gitopper's exit code"
    );
    let m = Start::new(&services).arg("--services-links=symlink").run(&f, 2)?;
    let a = m.service("a")?;
    assert_eq!(a["state"], "FREEZE");
    assert_eq!(a["stateinfo"], format!("ROLLBACK: {second}"));
    let (status, _) = m.call("POST", "/do/unfreeze/a", Some("s3cret"))?;
    assert_eq!(status, 200);
    m.wait_service("a", "tracking", |v| v["state"] == "OK")?;
    Ok(())
}

#[test]
fn the_api_refuses_without_a_token() -> Result<()> {
    let f = Fixture::new()?;
    let services = f.write_services(&format!("{}{}", f.global(), f.recording_service("a", "")))?;
    let m = Start::new(&services).arg("--services-links=symlink").run(&f, 0)?;
    m.wait_record(&f, &format!("a start {}", f.head()?))?;
    for (token, want) in [(None, 401), (Some("wrong"), 401), (Some("s3cret x"), 401)] {
        let (status, body) = m.call("POST", "/do/freeze/a", token)?;
        assert_eq!(status, want, "{token:?}: {body}");
        assert!(body["error"].is_string());
    }
    assert_eq!(m.service("a")?["state"], "OK", "refused calls change nothing");
    assert!(
        !std::fs::read_to_string(m.log.clone())?.contains("s3cret"),
        "the token is never logged"
    );
    let (status, _) = m.call("GET", "/do/freeze/a", Some("s3cret"))?;
    assert_eq!(status, 405);
    let (status, _) = m.call("GET", "/nothing", None)?;
    assert_eq!(status, 404);
    // The token file is read at each call: rotation needs no restart.
    std::fs::write(&f.token, "rotated\n")?;
    assert_eq!(m.call("POST", "/do/freeze/a", Some("s3cret"))?.0, 401);
    assert_eq!(m.call("POST", "/do/freeze/a", Some("rotated"))?.0, 200);
    drop(m);

    // With no way to authenticate configured, the API is read-only.
    let m = Start {
        api_token: false,
        ..Start::new(&services).arg("--services-links=symlink")
    }
    .run(&f, 1)?;
    let (status, body) = m.call("POST", "/do/unfreeze/a", Some("rotated"))?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(m.service("a")?["state"], "FREEZE");
    drop(m);

    // --api-auth-reads: the lists need the token too.
    let m = Start::new(&services)
        .arg("--services-links=symlink")
        .arg("--api-auth-reads")
        .run(&f, 2)?;
    assert_eq!(m.call("GET", "/list/service", None)?.0, 401);
    assert_eq!(m.call("GET", "/list/service", Some("rotated"))?.0, 200);
    Ok(())
}

/// A CA and the certificates it signs, made by openssl.
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").current_dir(dir).args(args).output()?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
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
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
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

    fn issue(&self, cn: &str, server: bool) -> Result<(PathBuf, PathBuf)> {
        let ext = self.dir.join(format!("{cn}.ext"));
        std::fs::write(
            &ext,
            if server {
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
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
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        )?;
        let ext = ext.to_string_lossy().into_owned();
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
                &ext,
                "-out",
                &crt,
            ],
        )?;
        Ok((self.dir.join(crt), self.dir.join(key)))
    }
}

/// `git-sync gitopperctl <args>`.
fn ctl(args: &[String]) -> Result<Output> {
    Ok(Command::new(BIN).arg("gitopperctl").args(args).output()?)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn mtls_and_the_client_subcommand() -> Result<()> {
    let f = Fixture::new()?;
    let ours = Pki::new(f.dir.path(), "ours")?;
    let foreign = Pki::new(f.dir.path(), "foreign")?;
    let (server_crt, server_key) = ours.issue("server", true)?;
    let (client_crt, client_key) = ours.issue("operator", false)?;
    let (bad_crt, bad_key) = foreign.issue("intruder", false)?;
    let services = f.write_services(&format!(
        "{}{}{}",
        f.global(),
        f.recording_service("a", ""),
        f.recording_service("b", "")
    ))?;
    let first = f.head()?;
    let m = Start::new(&services)
        .arg("--services-links=symlink")
        .arg(format!("--api-tls-cert-file={}", server_crt.display()))
        .arg(format!("--api-tls-key-file={}", server_key.display()))
        .arg(format!("--api-client-ca-file={}", ours.ca().display()))
        .run(&f, 0)?;
    m.wait_record(&f, &format!("a start {first}"))?;
    m.wait_record(&f, &format!("b start {first}"))?;
    let at = format!("@https://{}", m.api);
    let ca = format!("--ca-file={}", ours.ca().display());
    let with = |extra: &[String], cmd: &[&str]| -> Result<Output> {
        let mut a = vec![ca.clone()];
        a.extend_from_slice(extra);
        a.extend(cmd.iter().map(|s| s.to_string()));
        ctl(&a)
    };
    let cert = [
        format!("--cert-file={}", client_crt.display()),
        format!("--key-file={}", client_key.display()),
    ];
    let bad_cert = [
        format!("--cert-file={}", bad_crt.display()),
        format!("--key-file={}", bad_key.display()),
    ];
    let wrong_token = f.path("wrong-token");
    std::fs::write(&wrong_token, "nope\n")?;
    let token = [format!("--token-file={}", f.token.display())];

    // Reads need nothing; the tables are Gitopper's.
    let o = with(&[], &["list", "service", &at])?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["#", "SERVICE", "HASH", "STATE", "INFO", "SINCE"]);
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..4], ["0", "a", &first[..8], "OK"], "{table}");
    let o = with(&[], &["ls", "m", &at])?;
    assert!(
        text(&o.stdout).contains(&format!("0 {MACHINE} {MACHINE}")),
        "{}",
        text(&o.stdout)
    );
    let o = with(&[], &["-m", "list", "s", &at, "b"])?;
    let v: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["services"][0]["hash"], first.as_str());

    // Refused: no credentials, a wrong token, a foreign certificate.
    for (extra, why) in [
        (&[][..], "401"),
        (&[format!("--token-file={}", wrong_token.display())][..], "401"),
        (&bad_cert[..], "calling"),
    ] {
        let o = with(extra, &["do", "freeze", &at, "a"])?;
        assert_eq!(o.status.code(), Some(1), "{extra:?}");
        assert!(text(&o.stderr).contains(why), "{extra:?}: {}", text(&o.stderr));
    }
    let o = with(&bad_cert, &["list", "service", &at])?;
    assert!(
        !o.status.success(),
        "a foreign certificate fails the handshake, for reads too"
    );
    assert_eq!(m.service_tls(&ours.ca(), "a")?["state"], "OK", "nothing changed");

    // Our certificate freezes; the token unfreezes; rollback by either.
    let o = with(&cert, &["do", "freeze", &at, "a"])?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "OK\n");
    assert_eq!(m.service_tls(&ours.ca(), "a")?["state"], "FREEZE");
    let second = f.commit(&[("a/etc/conf", "a2"), ("b/etc/conf", "b2")])?;
    m.wait_record(&f, &format!("b change {second}"))?;
    assert_eq!(f.target("a")?, "a1");
    let o = with(&token, &["unfreeze", &at, "a"])?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    m.wait_record(&f, &format!("a change {second}"))?;
    let o = with(&cert, &["do", "rollback", &at, "a", &first])?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    m.wait_record(&f, &format!("a rollback {first}"))?;
    let o = with(&token, &["rollback", &at, "a", "zz"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("406"), "{}", text(&o.stderr));
    let o = with(&token, &["do", "pull", &at, "b"])?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Called through a symlink named gitopperctl, as Gitopper's client is.
    let link = f.path("gitopperctl");
    std::os::unix::fs::symlink(BIN, &link)?;
    let o = Command::new(&link).args([&ca, "-m", "list", "s", &at, "b"]).output()?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["services"][0]["service"], "b");
    // Usage errors exit 64.
    assert_eq!(
        ctl(&["list".into(), "service".into(), "nohost".into()])?.status.code(),
        Some(64)
    );
    Ok(())
}

impl Machine {
    /// `GET /list/service/<name>` over HTTPS (curl, trusting `ca`).
    fn service_tls(&self, ca: &Path, name: &str) -> Result<Value> {
        let o = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(ca)
            .arg(format!("https://{}/list/service/{name}", self.api))
            .output()?;
        ensure!(o.status.success(), "curl: {}", text(&o.stderr));
        Ok(serde_json::from_slice::<Value>(&o.stdout)?["services"][0].clone())
    }
}

/// Whether this process may make a mount namespace of its own.
fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn bind_mounts_where_permitted_symlinks_otherwise() -> Result<()> {
    let f = Fixture::new()?;
    f.commit(&[("files/Caddyfile", "c1"), ("files/sibling", "s")])?;
    let caddy = f.path("targets/Caddyfile");
    let services = f.write_services(&format!(
        "{}{}",
        f.global(),
        f.recording_service(
            "a",
            &format!(
                "[[services]]\nmachine = \"{MACHINE}\"\nservice = \"f\"\ncommand = [\"true\"]\n\
                 dirs = [ {{ local = \"{}\", link = \"files/Caddyfile\", file = true }} ]\n",
                caddy.display()
            )
        )
    ))?;
    let co_f = f.path("mount/f");
    if !(root() && can_unshare()) {
        // No privileges to mount: auto falls back to symlinks.
        let m = Start::new(&services).run(&f, 0)?;
        let a = m.wait_service("a", "linked", |v| v["links"][0]["how"] != "")?;
        assert_eq!(a["links"][0]["how"], "symlink");
        assert_eq!(std::fs::read_link(f.path("targets/a"))?, f.path("mount/a/a/etc"));
        return Ok(());
    }
    // In a mount namespace of its own (gone with the process): bind mounts.
    let wrapper: Vec<String> = ["unshare", "--mount", "--propagation", "private"]
        .map(String::from)
        .to_vec();
    let m = Start {
        wrapper: wrapper.clone(),
        ..Start::new(&services)
    }
    .run(&f, 0)?;
    let a = m.wait_service("a", "linked", |v| v["links"][0]["how"] != "")?;
    assert_eq!(a["links"][0]["how"], "bind");
    let fsvc = m.wait_service("f", "linked", |v| v["links"][0]["how"] != "")?;
    assert_eq!(fsvc["links"][0]["how"], "bind");
    // The mounts are in git-sync's namespace only (unshare execs it, so
    // the child is git-sync): read through its root.
    let pid = m.child.as_ref().context("running")?.id();
    let inside_ns = |p: &Path| PathBuf::from(format!("/proc/{pid}/root{}", p.display()));
    assert_eq!(std::fs::read_to_string(inside_ns(&f.path("targets/a/conf")))?, "a1");
    assert_eq!(std::fs::read_to_string(inside_ns(&caddy))?, "c1");
    assert!(caddy.is_file(), "the mount point was made, an empty file");
    assert_eq!(std::fs::read_to_string(&caddy)?, "", "outside the namespace: no mount");
    assert!(
        !co_f.join("files/sibling").exists(),
        "a file link checks out that file only"
    );
    // git replaces the file (a new inode): the mount follows.
    f.commit(&[("files/Caddyfile", "c2")])?;
    poll("the file mount to follow", WAIT, || {
        Ok((std::fs::read_to_string(inside_ns(&caddy))? == "c2").then_some(()))
    })
    .with_context(|| m.log_tail())?;
    drop(m);

    // Root without CAP_SYS_ADMIN may not mount: symlinks.
    for p in [f.path("targets/a"), caddy.clone()] {
        if p.is_dir() {
            std::fs::remove_dir(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    let m = Start {
        wrapper: ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"]
            .map(String::from)
            .to_vec(),
        ..Start::new(&services)
    }
    .run(&f, 1)?;
    let a = m.wait_service("a", "linked", |v| v["links"][0]["how"] != "")?;
    assert_eq!(a["links"][0]["how"], "symlink");
    assert_eq!(std::fs::read_to_string(f.path("targets/a/conf"))?, "a1");
    assert_eq!(std::fs::read_to_string(&caddy)?, "c2");
    Ok(())
}

#[test]
fn checkouts_belong_to_the_services_user() -> Result<()> {
    let f = Fixture::new()?;
    let services = f.write_services(&format!(
        "{}{}",
        f.global(),
        f.recording_service("a", "user = \"nobody\"\npackage = \"fake-pkg\"\n")
    ))?;
    let bin = f.path("bin");
    std::fs::create_dir(&bin)?;
    let installs = f.path("installs");
    write_script(
        &bin.join("apt-get"),
        &format!("echo \"$DEBIAN_FRONTEND $*\" >> {}\n", installs.display()),
    )?;
    write_script(
        &bin.join("pacman"),
        &format!("echo \"pacman $*\" >> {}\n", installs.display()),
    )?;
    // The upstream is a local repository of root's: git as nobody needs
    // safe.directory for it (a remote upstream would not).
    let m = Start {
        path_dir: Some(bin),
        ..Start::new(&services)
            .arg("--services-links=symlink")
            .arg("--git-config-add=safe.directory:*")
    }
    .run(&f, 0)?;
    if !root() {
        let a = m.wait_service("a", "refused", |v| v["state"] != "OK")?;
        assert_eq!(a["state"], "DIFF");
        assert!(a["stateinfo"].as_str().is_some_and(|i| i.contains("only root")), "{a}");
        return Ok(());
    }
    m.wait_record(&f, &format!("a start {}", f.head()?))?;
    use std::os::unix::fs::MetadataExt as _;
    let nobody = nix::unistd::User::from_name("nobody")?.context("nobody")?;
    for p in ["mount/a", "mount/a/.git", "mount/a/a/etc/conf", "mount/a/.git/HEAD"] {
        assert_eq!(std::fs::metadata(f.path(p))?.uid(), nobody.uid.as_raw(), "{p}");
    }
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let installed = std::fs::read_to_string(&installs).unwrap_or_default();
    match common::gitopper::action::package_manager(&os) {
        Some(common::gitopper::action::Manager::Apt) => assert_eq!(
            installed,
            "noninteractive install -qq --assume-yes --no-install-recommends fake-pkg\n"
        ),
        Some(common::gitopper::action::Manager::Pacman) => {
            assert_eq!(installed, "pacman -S --noconfirm fake-pkg\n")
        }
        None => assert_eq!(installed, "", "no package manager known: nothing installed"),
    }
    // A change is pulled by nobody too.
    let second = f.commit(&[("a/etc/conf", "a2")])?;
    m.wait_record(&f, &format!("a change {second}"))?;
    assert_eq!(
        std::fs::metadata(f.path("mount/a/a/etc/conf"))?.uid(),
        nobody.uid.as_raw()
    );
    Ok(())
}

#[test]
fn bootstrapping_from_the_repository() -> Result<()> {
    let f = Fixture::new()?;
    let services = format!("{}{}", f.global(), f.recording_service("a", ""));
    f.commit(&[("gitopper/config.toml", &services)])?;
    let boot = f.path("boot");
    let m = Start::new(Path::new("config.toml"))
        .arg("--services-links=symlink")
        .arg(format!("--bootstrap-upstream=file://{}", f.up.display()))
        .arg(format!("--bootstrap-mount={}", boot.display()))
        .arg("--services-restart")
        .run(&f, 0)?;
    m.wait_record(&f, &format!("a start {}", f.head()?))?;
    let me = m.service("gitopper")?;
    assert_eq!((me["state"].as_str(), hash_of(&me)), (Some("OK"), f.head()?.as_str()));
    assert!(boot.join("gitopper/gitopper/config.toml").is_file());
    assert!(!boot.join("gitopper/a").exists(), "git-sync's checkout is sparse too");
    // A change of the services file in the repository: exit 2, to be
    // restarted with it.
    let mut child = {
        let mut m = m;
        m.child.take().context("running")?
    };
    f.commit(&[("gitopper/config.toml", &format!("{services}\n# changed\n"))])?;
    let status = poll("git-sync to exit", WAIT, || Ok(child.try_wait()?))?;
    assert_eq!(status.code(), Some(2));
    Ok(())
}

#[test]
fn flags_and_services_files_refused() -> Result<()> {
    let f = Fixture::new()?;
    let run = |args: &[&str]| -> Result<Output> {
        Ok(Command::new(BIN)
            .args(args)
            .current_dir(f.dir.path())
            .env("HOME", f.dir.path())
            .output()?)
    };
    let bad = f.write_services(&format!(
        "{}[[services]]\nmachine = \"x\"\nservise = \"typo\"\n",
        f.global()
    ))?;
    let bad = bad.display().to_string();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--services", &bad, "--hostname=x"], 1, "servise"),
        (
            &["--services", &bad, "--repo=file:///r"],
            1,
            "--repo is git-sync's own mode's",
        ),
        (
            &["--api-token-file=/t", "--repo=file:///r", "--root=/tmp/x"],
            1,
            "--api-token-file needs --services",
        ),
        (&["--services", &bad, "--services-links=copy"], 1, "--services-links"),
        (&["--services", &bad, "--api-token-file=/t"], 1, "--api-bind"),
        (&["--services", &bad, "--bootstrap-mount=/m"], 1, "go together"),
        (&["--services", "/no/such/file", "--hostname=x"], 1, "/no/such/file"),
    ];
    for (args, code, needle) in cases {
        let o = run(args)?;
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(needle), "{args:?}: {}", text(&o.stderr));
    }
    // A machine with no services exits 0, as Gitopper does.
    let other = f.write_services(&format!("{}{}", f.global(), f.recording_service("a", "")))?;
    let o = Command::new(BIN)
        .env("GITSYNC_SERVICES", &other)
        .env("GITSYNC_HOSTNAME", "nobody-here")
        .output()?;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("no services for this machine"));
    let o = run(&["--help"])?;
    assert!(text(&o.stdout).contains("GITSYNC_SERVICES") && text(&o.stdout).contains("--api-token-file"));
    Ok(())
}

/// Services whose upstreams are real hosts on loopback: `git daemon`,
/// smart HTTP behind basic auth (a credential for its URL, and
/// `--username` with `--password-file` for every upstream), and sshd with a
/// key and a known host. A wrong password is DIFF, says so, and shows no
/// secret; the password file is read again, so fixing it is enough.
#[test]
fn services_from_real_remotes_with_credentials() -> Result<()> {
    let f = Fixture::new()?;
    f.commit(&[("c/etc/conf", "c1"), ("d/etc/conf", "d1"), ("e/etc/conf", "e1")])?;
    // Two names for the upstream: credentials are matched by URL.
    let repos = f.path("repos");
    std::fs::create_dir(&repos)?;
    for name in ["up", "up2"] {
        std::os::unix::fs::symlink(&f.up, repos.join(name))?;
    }
    let daemon = hosts::git_daemon(&repos, None)?;
    let served = f.path("served-password");
    std::fs::write(&served, "t0ken-s3cret\n")?;
    let http = hosts::git_http(&repos, "alice", &served, None)?;
    let ssh = hosts::sshd(&f.path("ssh"))?;
    let right = f.path("right-password");
    std::fs::write(&right, "t0ken-s3cret\n")?;
    let wrong = f.path("password");
    std::fs::write(&wrong, "n0t-the-passw0rd\n")?;

    let up = |u: String| format!("upstream = \"{u}\"\n");
    let services = f.write_services(&format!(
        "{}{}{}{}{}{}",
        f.global(),
        f.recording_service("a", &up(format!("git://127.0.0.1:{}/up", daemon.port))),
        f.recording_service("b", &up(format!("http://127.0.0.1:{}/up", http.port))),
        f.recording_service(
            "c",
            &up(format!(
                "ssh://{}@127.0.0.1:{}{}",
                ssh.user,
                ssh.host.port,
                f.up.display()
            ))
        ),
        f.recording_service("d", &up(format!("http://127.0.0.1:{}/up2", http.port))),
        // A password in the URL works as git takes it, and is not logged.
        f.recording_service(
            "e",
            &up(format!("http://alice:t0ken-s3cret@127.0.0.1:{}/up", http.port))
        ),
    ))?;
    let credential = format!(
        r#"{{"url":"http://127.0.0.1:{}/up","username":"alice","password-file":"{}"}}"#,
        http.port,
        right.display()
    );
    let m = Start::new(&services)
        .arg("--services-links=symlink")
        .arg(format!("--credential={credential}"))
        .arg("--username=alice")
        .arg(format!("--password-file={}", wrong.display()))
        .arg(format!("--ssh-key-file={}", ssh.client_key.display()))
        .arg(format!("--ssh-known-hosts-file={}", ssh.known_hosts.display()))
        .arg("-v=6")
        .run(&f, 0)?;
    let first = f.head()?;
    for s in ["a", "b", "c", "e"] {
        m.wait_record(&f, &format!("{s} start {first}"))?;
        assert_eq!(f.target(s)?, format!("{s}1"));
    }
    // d's password (the one for every upstream) is wrong.
    let d = m.wait_service("d", "refused by the host", |v| v["state"] == "DIFF")?;
    let info = d["stateinfo"].as_str().unwrap_or_default();
    assert!(info.contains("Authentication failed"), "{d}");
    assert!(!info.contains("n0t-the") && !info.contains("t0ken"), "{d}");
    assert!(!f.path("mount/d/d").exists());
    std::fs::write(&wrong, "t0ken-s3cret\n")?;
    m.wait_record(&f, &format!("d start {first}"))?;
    m.wait_service("d", "OK once the password is right", |v| v["state"] == "OK")?;
    // The partial clones fetch their blobs from the same hosts.
    let second = f.commit(&[
        ("a/etc/conf", "a2"),
        ("b/etc/conf", "b2"),
        ("c/etc/conf", "c2"),
        ("d/etc/conf", "d2"),
        ("e/etc/conf", "e2"),
    ])?;
    for s in ["a", "b", "c", "d", "e"] {
        m.wait_record(&f, &format!("{s} change {second}"))?;
        assert_eq!(f.target(s)?, format!("{s}2"));
    }
    let log = std::fs::read_to_string(&m.log)?;
    assert!(log.contains("Authentication failed"), "the refusal is logged");
    assert!(
        !log.contains("t0ken-s3cret") && !log.contains("n0t-the-passw0rd"),
        "no password in the log"
    );
    for entry in std::fs::read_dir(std::env::temp_dir())? {
        let p = entry?.path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("git-sync-gitopper."))
        {
            for file in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(file.path()).unwrap_or_default();
                assert!(!text.contains("t0ken-s3cret"), "no password in git's config");
            }
        }
    }
    Ok(())
}
