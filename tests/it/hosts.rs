//! Git hosts for tests, on loopback ports: `git daemon` (git://), `git
//! http-backend` behind basic auth (e2e/support/git-http-server.py), and
//! `sshd` (Debian's openssh-server) with a generated host key and client
//! key. Each serves the bare repositories below its root and stops when
//! dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::support::free_port;

/// A server process; killed when dropped.
pub struct Host {
    child: Child,
    pub port: u16,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts on `port`.
fn wait_listening(port: u16, child: &mut Child, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "server exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listens on {port}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn spawn(mut cmd: Command, port: u16, log: PathBuf) -> Result<Host> {
    let out = std::fs::File::create(&log)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    wait_listening(port, &mut child, &log)?;
    Ok(Host { child, port })
}

/// `git daemon` serving `root` (fetch and push) at `git://127.0.0.1:PORT/`.
pub fn git_daemon(root: &Path, port: Option<u16>) -> Result<Host> {
    let port = match port {
        Some(p) => p,
        None => free_port()?,
    };
    // `git daemon` would run `git-daemon` as its child, which a kill of
    // the `git` process leaves running: start the daemon itself.
    let exec_path = Command::new("git").arg("--exec-path").output()?;
    anyhow::ensure!(exec_path.status.success(), "git --exec-path failed");
    let exec_path = PathBuf::from(String::from_utf8(exec_path.stdout)?.trim());
    let mut cmd = Command::new(exec_path.join("git-daemon"));
    cmd.arg("--reuseaddr")
        .arg(format!("--base-path={}", root.display()))
        .args(["--export-all", "--enable=receive-pack", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(root);
    spawn(cmd, port, root.with_extension("daemon.log"))
}

/// Smart HTTP for `root`, behind basic auth for `user` with the password in
/// `password_file`, at `http://127.0.0.1:PORT/`.
pub fn git_http(root: &Path, user: &str, password_file: &Path, port: Option<u16>) -> Result<Host> {
    let port = match port {
        Some(p) => p,
        None => free_port()?,
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/support/git-http-server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg("--root")
        .arg(root)
        .arg(format!("--port={port}"))
        .arg(format!("--user={user}"))
        .arg("--password-file")
        .arg(password_file);
    spawn(cmd, port, root.with_extension("http.log"))
}

/// An sshd on a loopback port that lets the holder of `client_key` in as
/// the current user; `known_hosts` has its host key. It accepts
/// `GIT_PROTOCOL` (as git's documentation asks of servers), so git speaks
/// protocol v2 over it, which partial clones need to fetch blobs by id.
pub struct Ssh {
    pub host: Host,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    pub user: String,
}

pub fn sshd(dir: &Path) -> Result<Ssh> {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("sshd not found (Debian package openssh-server; `make deps` installs it)")?;
    std::fs::create_dir_all(dir)?;
    // sshd insists on its privilege separation directory.
    std::fs::create_dir_all("/run/sshd")?;
    let keygen = |path: &Path| -> Result<()> {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let host_key = dir.join("host_ed25519");
    let client_key = dir.join("id_ed25519");
    keygen(&host_key)?;
    keygen(&client_key)?;
    std::fs::copy(client_key.with_extension("pub"), dir.join("authorized_keys"))?;
    let port = free_port()?;
    let known_hosts = dir.join("known_hosts");
    let host_pub = std::fs::read_to_string(host_key.with_extension("pub"))?;
    let mut fields = host_pub.split_whitespace();
    let (kind, key) = (fields.next().context("key type")?, fields.next().context("key")?);
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {key}\n"))?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PermitRootLogin prohibit-password\nPidFile {}\nLogLevel VERBOSE\n\
             AcceptEnv GIT_PROTOCOL\n",
            host_key.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display()
        ),
    )?;
    let mut cmd = Command::new(sshd);
    cmd.arg("-D").arg("-e").arg("-f").arg(&config);
    let host = spawn(cmd, port, dir.join("sshd.log"))?;
    let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
        .trim()
        .to_owned();
    Ok(Ssh {
        host,
        client_key,
        known_hosts,
        user,
    })
}
