//! The real `etcdctl` as a black-box client of watch and lease commands.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::support::{Gitcd, etcdctl_ok};

/// A long-running etcdctl whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(addr: SocketAddr, args: &[&str]) -> Result<Self> {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={addr}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    fn input(&mut self, line: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().context("stdin")?;
        writeln!(stdin, "{line}")?;
        Ok(())
    }

    /// Lines up to and including the first that contains `needle`.
    fn until(&self, needle: &str, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    seen.push(line);
                    if done {
                        return Ok(seen);
                    }
                }
                Err(_) => bail!("no line with {needle:?} within {timeout:?}; saw {seen:?}"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_watch_and_lease_commands() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gitcd = Gitcd::start(&dir.path().join("repo")).await?;
    let a = gitcd.addr;
    tokio::task::spawn_blocking(move || -> Result<()> {
        let t = Duration::from_secs(10);
        // watch --prefix --prev-kv sees puts and deletes as they happen.
        let watch = Running::start(a, &["watch", "--prefix", "/w/", "--prev-kv"])?;
        std::thread::sleep(Duration::from_millis(300));
        etcdctl_ok(a, &["put", "/w/a", "1"])?;
        etcdctl_ok(a, &["put", "/w/a", "2"])?;
        etcdctl_ok(a, &["del", "/w/a"])?;
        let mut lines = watch.until("DELETE", t)?;
        lines.extend(watch.until("2", t)?);
        // Each event prints its type, the previous key and value, then the new ones.
        assert_eq!(
            lines,
            [
                "PUT", "/w/a", "1", "PUT", "/w/a", "1", "/w/a", "2", "DELETE", "/w/a", "2"
            ]
        );

        // watch --rev replays history.
        let replay = Running::start(a, &["watch", "--rev=2", "/w/a"])?;
        assert_eq!(
            replay.until("DELETE", t)?,
            ["PUT", "/w/a", "1", "PUT", "/w/a", "2", "DELETE"]
        );

        // Interactive watch with progress requests.
        let mut interactive = Running::start(a, &["watch", "-i"])?;
        interactive.input("watch /w/b")?;
        interactive.input("progress")?;
        let lines = interactive.until("progress notify", t)?;
        assert!(lines.last().is_some_and(|l| l.ends_with(": 4")), "{lines:?}");
        etcdctl_ok(a, &["put", "/w/b", "value-b"])?;
        assert_eq!(interactive.until("value-b", t)?, ["PUT", "/w/b", "value-b"]);

        // Leases.
        let granted = etcdctl_ok(a, &["lease", "grant", "100"])?;
        let id = granted.split_whitespace().nth(1).context("lease id")?.to_owned();
        assert!(granted.contains("granted with TTL(100s)"), "{granted}");
        etcdctl_ok(a, &["put", "--lease", &id, "/leased", "x"])?;
        let ttl = etcdctl_ok(a, &["lease", "timetolive", "--keys", &id])?;
        assert!(
            ttl.contains("granted with TTL(100s)") && ttl.contains("attached keys([/leased])"),
            "{ttl}"
        );
        let kept = etcdctl_ok(a, &["lease", "keep-alive", "--once", &id])?;
        assert!(kept.contains("keepalived with TTL(100)"), "{kept}");
        let list = etcdctl_ok(a, &["lease", "list"])?;
        assert!(list.contains("found 1 leases") && list.contains(&id), "{list}");
        let revoked = etcdctl_ok(a, &["lease", "revoke", &id])?;
        assert!(revoked.contains("revoked"), "{revoked}");
        assert_eq!(etcdctl_ok(a, &["get", "/leased"])?, "");
        let gone = etcdctl_ok(a, &["lease", "timetolive", &id])?;
        assert!(gone.contains("already expired"), "{gone}");
        Ok(())
    })
    .await??;
    gitcd.stop().await?;
    Ok(())
}
