//! The circle of coordination, in one process: an upstream repository,
//! participants prepared by git-pre and published by git-post, each served
//! by a gitcd that merges the upstream branch in and pushes its own, and an
//! automerge (gitcd-pull) merging every participant into `main`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use bytes::Bytes;
use common::merge::Policy;
use common::prepare::{PrepareConfig, Prepared};
use common::proto::etcdserverpb::{PutRequest, RangeRequest};
use common::pull::PullConfig;
use common::remote::{Credentials, Remote};
use common::store::StoreConfig;

use crate::support::{Client, Gitcd, eventually, git};

fn store_config(repo: &Path, branch: &str) -> StoreConfig {
    let mut c = StoreConfig::with_repo(repo);
    c.data_ref = format!("refs/heads/{branch}");
    c.metadata_ref = format!("refs/gitcd/metadata/refs/heads/{branch}");
    c.poll_interval = Duration::from_millis(50);
    c
}

fn remote(upstream: &Path) -> Remote {
    Remote {
        name: "origin".into(),
        url: format!("file://{}", upstream.display()),
    }
}

/// git-pre for `branch` in `repo`, from `upstream`'s `main`.
fn git_pre(repo: &Path, branch: &str, upstream: &Path) -> Result<Prepared> {
    let c = store_config(repo, branch);
    Ok(common::prepare::prepare(&PrepareConfig {
        repo: c.repo,
        data_ref: c.data_ref,
        metadata_ref: c.metadata_ref,
        committer: c.committer,
        remote: Some((remote(upstream), Credentials::default())),
        upstream_ref: Some("refs/heads/main".into()),
        create_missing: true,
        timeout: Duration::from_secs(30),
    })?)
}

async fn git_post(repo: &Path, branch: &str, upstream: &Path) -> Result<()> {
    let c = store_config(repo, branch);
    common::publish::publish(&common::publish::PublishConfig {
        repo: c.repo,
        data_ref: c.data_ref,
        metadata_ref: c.metadata_ref,
        remote: remote(upstream),
        credentials: Credentials::default(),
        max_attempts: 3,
        max_elapsed: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
    })
    .await?;
    Ok(())
}

fn pull_config(upstream: &Path, merge_refs: &[&str]) -> PullConfig {
    PullConfig {
        remote: remote(upstream),
        credentials: Credentials::default(),
        merge_refs: merge_refs.iter().map(|s| (*s).to_owned()).collect(),
        push: true,
        interval: Duration::from_millis(200),
        policy: Policy::default(),
        timeout: Duration::from_secs(30),
    }
}

/// A participant: git-pre, gitcd-init, git-post, then gitcd serve pulling
/// `main` and pushing.
async fn participant(dir: &Path, branch: &str, upstream: &Path) -> Result<(PathBuf, Gitcd)> {
    let repo = dir.join(format!("{branch}.git"));
    git_pre(&repo, branch, upstream)?;
    common::store::Store::init(&store_config(&repo, branch))?;
    git_post(&repo, branch, upstream).await?;
    let gitcd = Gitcd::start_pulling(store_config(&repo, branch), pull_config(upstream, &["refs/heads/main"])).await?;
    Ok((repo, gitcd))
}

async fn put(c: &mut Client, key: &str, value: &str) -> Result<i64> {
    Ok(c.kv
        .put(PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            ..Default::default()
        })
        .await?
        .into_inner()
        .header
        .map_or(0, |h| h.revision))
}

async fn get(c: &mut Client, key: &str) -> Result<Option<String>> {
    let r =
        c.kv.range(RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// Waits until `key` reads `want` on `c`.
async fn until(c: &Client, key: &str, want: Option<&str>) -> Result<()> {
    eventually(&format!("{key} to be {want:?}"), Duration::from_secs(60), || {
        let mut c = c.clone();
        let (key, want) = (key.to_owned(), want.map(str::to_owned));
        async move { Ok((get(&mut c, &key).await? == want).then_some(())) }
    })
    .await
}

/// An upstream with an empty `main` pair, as a first gitcd-pull leaves it.
async fn upstream(dir: &Path) -> Result<PathBuf> {
    let up = dir.join("up.git");
    git(dir, &["init", "-q", "--bare", up.to_str().context("UTF-8")?])?;
    let seed = dir.join("seed.git");
    let c = store_config(&seed, "main");
    common::prepare::prepare(&PrepareConfig {
        repo: c.repo.clone(),
        data_ref: c.data_ref.clone(),
        metadata_ref: c.metadata_ref.clone(),
        committer: c.committer.clone(),
        remote: Some((remote(&up), Credentials::default())),
        upstream_ref: None,
        create_missing: true,
        timeout: Duration::from_secs(30),
    })?;
    common::store::Store::init(&c)?;
    git_post(&seed, "main", &up).await?;
    Ok(up)
}

/// A key put on A is read and watched on B; a conflicting edit converges
/// to the same value on both; an excluded key never leaves its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_circle_in_one_process() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let up = upstream(dir.path()).await?;
    let (_a_repo, a) = participant(dir.path(), "a", &up).await?;
    let (_b_repo, b) = participant(dir.path(), "b", &up).await?;
    let automerge_repo = dir.path().join("automerge.git");
    git_pre(&automerge_repo, "main", &up)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let automerge = tokio::spawn(common::pull::run_daemon(
        common::pull::DaemonConfig {
            store: store_config(&automerge_repo, "main"),
            pull: pull_config(&up, &["refs/heads/main", "refs/heads/a", "refs/heads/b"]),
            listen_metrics: Vec::new(),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);

    let before = put(&mut ca, "/registry/x", "from a").await?;
    until(&cb, "/registry/x", Some("from a")).await?;
    let mut cb2 = cb.clone();
    let rev_b = cb2.kv.range(RangeRequest {
        key: Bytes::from_static(b"/registry/x"),
        ..Default::default()
    });
    ensure!(rev_b.await?.into_inner().header.is_some_and(|h| h.revision > 1));
    ensure!(before > 1);

    // A conflict: both sides write the same key; the later write wins on both.
    put(&mut ca, "/registry/c", "a's").await?;
    put(&mut cb, "/registry/c", "b's, later").await?;
    until(&ca, "/registry/c", Some("b's, later")).await?;
    until(&cb, "/registry/c", Some("b's, later")).await?;

    let _ = stop.send(());
    automerge.await??;
    a.stop().await?;
    b.stop().await?;
    ensure!(git(&up, &["show", "refs/heads/main:registry/x"])? == "from a");
    ensure!(git(&up, &["show", "refs/heads/main:registry/c"])? == "b's, later");
    // b's work reached main: merged, or fast-forwarded to when b already
    // held main (which one depends on timing).
    let log = git(&up, &["log", "--format=%B", "refs/heads/main"])?;
    let fast_forwarded = std::process::Command::new("git")
        .args([
            "--git-dir",
            &up.to_string_lossy(),
            "merge-base",
            "--is-ancestor",
            "refs/heads/b",
            "refs/heads/main",
        ])
        .status()?
        .success();
    ensure!(
        log.contains("merge refs/heads/b") || fast_forwarded,
        "main has a merge of b, or b: {log}"
    );
    Ok(())
}

/// git-pre is idempotent; a participant restarted from an empty directory
/// gets its pair back from the upstream, with every key it pushed, and its
/// revisions jump past any it could have acknowledged (compacted below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_participant_goes_on_upward() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let up = upstream(dir.path()).await?;
    let repo = dir.path().join("a.git");
    ensure!(git_pre(&repo, "a", &up)? == Prepared::FromUpstream);
    ensure!(git_pre(&repo, "a", &up)? == Prepared::Existing, "idempotent");
    common::store::Store::init(&store_config(&repo, "a"))?;
    git_post(&repo, "a", &up).await?;
    let a = Gitcd::start_pulling(store_config(&repo, "a"), pull_config(&up, &["refs/heads/main"])).await?;
    let mut c = a.client().await?;
    let last = put(&mut c, "/k", "kept").await?;
    // Pushed soon after the write.
    eventually("the write to reach the upstream", Duration::from_secs(30), || {
        let out = git(&up, &["show", "refs/heads/a:k"]);
        async move { Ok(out.ok().filter(|v| v == "kept").map(|_| ())) }
    })
    .await?;
    a.stop().await?;

    // The volume is lost: an empty directory, git-pre again.
    std::fs::remove_dir_all(&repo)?;
    ensure!(git_pre(&repo, "a", &up)? == Prepared::Restored);
    let a = Gitcd::start_with(store_config(&repo, "a")).await?;
    let mut c = a.client().await?;
    ensure!(get(&mut c, "/k").await?.as_deref() == Some("kept"));
    let next = put(&mut c, "/k2", "after").await?;
    ensure!(next > last + 1_000_000 - 1, "revisions jump: {last} then {next}");
    let old =
        c.kv.range(RangeRequest {
            key: Bytes::from_static(b"/k"),
            revision: last,
            ..Default::default()
        })
        .await;
    ensure!(
        old.is_err_and(|e| e.message().contains("compacted")),
        "below the jump is compacted"
    );
    a.stop().await?;
    // The marker is gone: a second start does not jump again.
    let a = Gitcd::start_with(store_config(&repo, "a")).await?;
    let mut c = a.client().await?;
    let again = put(&mut c, "/k3", "x").await?;
    ensure!(again == next + 1, "{next} then {again}");
    a.stop().await?;
    Ok(())
}

/// The auth ref stays home: a participant serving with --push and auth
/// users pushes its branch pair (a key written after the users reaches the
/// upstream), git-post pushes the pair again, and the upstream never gets
/// `refs/gitcd/auth/…`, so password hashes do not reach a Git host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_ref_is_never_pushed() -> Result<()> {
    use common::proto::etcdserverpb::{AuthRoleAddRequest, AuthUserAddRequest, auth_client::AuthClient};
    let dir = tempfile::tempdir()?;
    let up = upstream(dir.path()).await?;
    let (repo, gitcd) = participant(dir.path(), "a", &up).await?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gitcd.addr))?
        .connect()
        .await?;
    let mut auth = AuthClient::new(channel);
    auth.user_add(AuthUserAddRequest {
        name: "alice".into(),
        password: "a secret".into(),
        ..Default::default()
    })
    .await?;
    auth.role_add(AuthRoleAddRequest { name: "ops".into() }).await?;
    let mut c = gitcd.client().await?;
    put(&mut c, "/registry/after-auth", "pushed").await?;
    eventually("the key to reach the upstream", Duration::from_secs(60), || {
        let up = up.clone();
        async move {
            Ok(git(&up, &["show", "refs/heads/a:registry/after-auth"])
                .ok()
                .filter(|v| v == "pushed")
                .map(|_| ()))
        }
    })
    .await?;
    gitcd.stop().await?;
    ensure!(
        !git(&repo, &["for-each-ref", "refs/gitcd/auth/"])?.is_empty(),
        "the participant has its auth ref"
    );
    git_post(&repo, "a", &up).await?;
    let refs = git(&up, &["for-each-ref", "--format=%(refname)"])?;
    ensure!(refs.contains("refs/heads/a"), "{refs}");
    ensure!(
        !refs.contains("refs/gitcd/auth"),
        "the upstream has no auth ref: {refs}"
    );
    Ok(())
}
