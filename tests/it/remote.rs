//! Fetching (gix) and pushing (git CLI) over every transport the circle of
//! coordination uses, against real hosts on loopback: file://, git daemon,
//! git http-backend behind basic auth, sshd with a key. Wrong credentials
//! and unknown host keys give clear errors that show no secret.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::remote::{self, Credentials, FetchSpec, PushOutcome, PushSpec, Remote, RemoteError};

use crate::hosts;
use crate::support::{commit_files, git, new_work_repo};

const TIMEOUT: Duration = Duration::from_secs(30);

/// An upstream `root/up.git` whose `main` has two commits; returns its head.
fn upstream(root: &Path) -> Result<String> {
    let work = root.join("work");
    new_work_repo(&work)?;
    commit_files(&work, &[("registry/a", "1")], "one")?;
    let head = commit_files(&work, &[("registry/b", "2")], "two")?;
    git(root, &["init", "-q", "--bare", "up.git"])?;
    git(
        &work,
        &["push", "-q", root.join("up.git").to_str().unwrap_or_default(), "main"],
    )?;
    Ok(head)
}

/// Fetch main (and a ref the remote lacks) into `local`, then push a new
/// commit on top to `refs/heads/a`, again (up to date), and a diverged one
/// (rejected).
async fn round_trip(root: &Path, url: &str, credentials: &Credentials) -> Result<()> {
    let head = upstream(root)?;
    let local = root.join("local.git");
    git(root, &["init", "-q", "--bare", "local.git"])?;
    let remote = Remote {
        name: "origin".into(),
        url: url.into(),
    };
    let specs = [
        FetchSpec {
            remote_ref: "refs/heads/main".into(),
            local_ref: remote::tracking_ref("origin", "refs/heads/main"),
        },
        FetchSpec {
            remote_ref: "refs/heads/missing".into(),
            local_ref: remote::tracking_ref("origin", "refs/heads/missing"),
        },
    ];
    let fetched = {
        let (local, remote, credentials) = (local.clone(), remote.clone(), credentials.clone());
        tokio::task::spawn_blocking(move || remote::fetch(&local, &remote, &credentials, &specs, TIMEOUT)).await??
    };
    ensure!(fetched.refs.len() == 1, "only main exists: {fetched:?}");
    ensure!(fetched.refs["refs/heads/main"].to_string() == head);
    ensure!(git(&local, &["rev-parse", "refs/remotes/origin/main"])?.trim() == head);
    git(&local, &["cat-file", "-e", &format!("{head}:registry/a")])?;

    let tree = git(&local, &["rev-parse", &format!("{head}^{{tree}}")])?;
    let ours = git(&local, &["commit-tree", tree.trim(), "-p", &head, "-m", "ours"])?;
    git(&local, &["update-ref", "refs/heads/a", ours.trim()])?;
    let spec = [PushSpec {
        local: "refs/heads/a".into(),
        remote_ref: "refs/heads/a".into(),
    }];
    ensure!(remote::push(&local, &remote, credentials, &spec, TIMEOUT).await? == PushOutcome::Pushed);
    ensure!(remote::push(&local, &remote, credentials, &spec, TIMEOUT).await? == PushOutcome::UpToDate);
    let other = git(&local, &["commit-tree", tree.trim(), "-p", &head, "-m", "diverged"])?;
    git(&local, &["update-ref", "refs/heads/a", other.trim()])?;
    match remote::push(&local, &remote, credentials, &spec, TIMEOUT).await {
        Err(RemoteError::Rejected { reason, .. }) => ensure!(reason.contains("refs/heads/a"), "{reason}"),
        other => anyhow::bail!("a diverged push is rejected, not {other:?}"),
    }
    ensure!(git(&root.join("up.git"), &["rev-parse", "refs/heads/a"])?.trim() == ours.trim());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_file_urls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("file://{}", dir.path().join("up.git").display());
    round_trip(dir.path(), &url, &Credentials::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_git_daemon() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = hosts::git_daemon(dir.path(), None)?;
    let url = format!("git://127.0.0.1:{}/up.git", daemon.port);
    round_trip(dir.path(), &url, &Credentials::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_basic_auth() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let password = dir.path().join("password");
    std::fs::write(&password, "t0ken-s3cret\n")?;
    let http = hosts::git_http(dir.path(), "alice", &password, None)?;
    let url = format!("http://127.0.0.1:{}/up.git", http.port);
    let good = Credentials {
        username: Some("alice".into()),
        password_file: Some(password.clone()),
        ..Default::default()
    };
    round_trip(dir.path(), &url, &good).await?;

    // A wrong password: fetch and push both say so, and show no secret.
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "not-it\n")?;
    let wrong = Credentials {
        password_file: Some(wrong_file),
        ..good.clone()
    };
    let remote = Remote {
        name: "origin".into(),
        url,
    };
    let local = dir.path().join("local.git");
    let specs = [FetchSpec {
        remote_ref: "refs/heads/main".into(),
        local_ref: "refs/remotes/origin/main".into(),
    }];
    let err = {
        let (local, remote, wrong) = (local.clone(), remote.clone(), wrong.clone());
        tokio::task::spawn_blocking(move || remote::fetch(&local, &remote, &wrong, &specs, TIMEOUT)).await?
    };
    match err {
        Err(e @ RemoteError::Auth { .. }) => {
            let text = common::error::chain(&e).to_string();
            ensure!(text.contains("authentication failed"), "{text}");
            ensure!(!text.contains("not-it") && !text.contains("t0ken"), "{text}");
        }
        other => anyhow::bail!("a wrong password is an auth error, not {other:?}"),
    }
    let spec = [PushSpec {
        local: "refs/remotes/origin/main".into(),
        remote_ref: "refs/heads/z".into(),
    }];
    match remote::push(&local, &remote, &wrong, &spec, TIMEOUT).await {
        Err(e @ RemoteError::Auth { .. }) => ensure!(!e.to_string().contains("not-it")),
        other => anyhow::bail!("a wrong password is an auth error, not {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_ssh_with_a_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ssh = hosts::sshd(&dir.path().join("ssh"))?;
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        ssh.user,
        ssh.host.port,
        dir.path().join("up.git").display()
    );
    let good = Credentials {
        ssh_key_files: vec![ssh.client_key.clone()],
        ssh_known_hosts: true,
        ssh_known_hosts_file: ssh.known_hosts.clone(),
        ..Default::default()
    };
    round_trip(dir.path(), &url, &good).await?;

    let remote = Remote {
        name: "origin".into(),
        url,
    };
    let local = dir.path().join("local.git");
    let fetch = |credentials: Credentials| {
        let (local, remote) = (local.clone(), remote.clone());
        let specs = [FetchSpec {
            remote_ref: "refs/heads/main".into(),
            local_ref: "refs/remotes/origin/main".into(),
        }];
        tokio::task::spawn_blocking(move || remote::fetch(&local, &remote, &credentials, &specs, TIMEOUT))
    };
    // Another key: refused.
    let stranger = dir.path().join("stranger");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .output()?;
    ensure!(out.status.success());
    let result = fetch(Credentials {
        ssh_key_files: vec![stranger],
        ..good.clone()
    })
    .await?;
    ensure!(matches!(result, Err(RemoteError::Auth { .. })), "{result:?}");
    // An unknown host key: refused, and said so.
    let empty = dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "")?;
    let result = fetch(Credentials {
        ssh_known_hosts_file: empty,
        ..good.clone()
    })
    .await?;
    ensure!(matches!(result, Err(RemoteError::HostKey { .. })), "{result:?}");
    // No known hosts file at all: refused before connecting.
    let result = fetch(Credentials {
        ssh_known_hosts_file: dir.path().join("none"),
        ..good
    })
    .await?;
    ensure!(matches!(result, Err(RemoteError::NoKnownHosts { .. })), "{result:?}");
    Ok(())
}
