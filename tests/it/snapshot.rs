//! Snapshot and restore, and the auth state at rest: `etcdctl snapshot
//! save` (3.4 and 3.5) stores gitcd's Git bundle, real `git` verifies it,
//! `gitcd restore` makes a repository of it that serves the same keys at the
//! same revision; users and roles survive a restart in their own ref, with
//! bcrypt hashes and no password in clear.

use std::process::Command;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use common::proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthStatusRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    AuthenticateRequest, PutRequest, auth_client::AuthClient,
};
use common::store::StoreConfig;

use crate::support::{Gitcd, all_kvs, etcdctl_ok, etcdctl35_run, git};

fn range_all() -> common::proto::etcdserverpb::RangeRequest {
    common::proto::etcdserverpb::RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        count_only: true,
        ..Default::default()
    }
}

/// Both etcdctls save gitcd's snapshot; the file is a Git bundle (with
/// etcdctl's SHA-256 after it) of the branch pair; `gitcd restore` makes a
/// sound repository of it that serves the same keys at the same revision,
/// and refuses to restore over one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_save_and_restore() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let gitcd = Gitcd::start(&dir.path().join("repo")).await?;
    let mut c = gitcd.client().await?;
    for i in 0..20 {
        c.kv.put(PutRequest {
            key: Bytes::from(format!("/snap/{i}")),
            value: Bytes::from(format!("value {i}")),
            ..Default::default()
        })
        .await?;
    }
    c.kv.put(PutRequest {
        key: Bytes::from_static(b"/snap/0"),
        value: Bytes::from_static(b"again"),
        ..Default::default()
    })
    .await?;
    let want = all_kvs(&mut c, 0).await?;
    let revision = c.kv.range(range_all()).await?.into_inner();
    let revision = revision.header.map_or(0, |h| h.revision);

    let saved34 = dir.path().join("snap34.db");
    let out = etcdctl_ok(gitcd.addr, &["snapshot", "save", saved34.to_str().unwrap_or_default()])?;
    assert!(out.contains("Snapshot saved at"), "{out}");
    let saved35 = dir.path().join("snap35.db");
    let (ok, out, err) = etcdctl35_run(
        &gitcd.addr.to_string(),
        &["snapshot", "save", saved35.to_str().unwrap_or_default()],
        &[],
        "",
    )?;
    assert!(ok, "etcdctl 3.5 snapshot save: {out}{err}");
    gitcd.stop().await?;

    for saved in [&saved34, &saved35] {
        // The file is the bundle and the SHA-256 etcdctl appends: git reads
        // the bundle part.
        let bytes = std::fs::read(saved)?;
        let bundle = dir.path().join("plain.bundle");
        std::fs::write(&bundle, &bytes[..bytes.len() - 32])?;
        let verified = git(
            dir.path(),
            &["bundle", "list-heads", bundle.to_str().unwrap_or_default()],
        )?;
        assert!(verified.contains("refs/heads/main"), "{verified}");
        assert!(verified.contains("refs/gitcd/metadata/refs/heads/main"), "{verified}");

        let restored = tempfile::tempdir()?;
        let repo = restored.path().join("repo");
        let out = Command::new(env!("CARGO_BIN_EXE_gitcd"))
            .args(["restore", saved.to_str().unwrap_or_default(), "--repo"])
            .arg(&repo)
            .output()?;
        assert!(
            out.status.success(),
            "gitcd restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("at revision {revision}")),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        git(&repo, &["fsck", "--no-dangling"]).context("the restored repository is sound")?;
        // Restoring over a repository is refused.
        let again = Command::new(env!("CARGO_BIN_EXE_gitcd"))
            .args(["restore", saved.to_str().unwrap_or_default(), "--repo"])
            .arg(&repo)
            .output()?;
        assert!(!again.status.success(), "restore into a non-empty directory must fail");

        let served = Gitcd::start(&repo).await?;
        let mut c = served.client().await?;
        assert_eq!(
            all_kvs(&mut c, 0).await?,
            want,
            "the restored store serves the same keys"
        );
        let now = c.kv.range(range_all()).await?.into_inner();
        assert_eq!(now.header.map_or(0, |h| h.revision), revision);
        served.stop().await?;
    }
    Ok(())
}

/// Users and roles survive a restart; the auth ref holds bcrypt hashes and
/// its history no password in clear; it is neither the data nor the
/// metadata ref, which are what gets pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_survives_a_restart_in_its_own_ref() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let password = "correct horse battery staple";
    let gitcd = Gitcd::start(&repo).await?;
    let mut auth = AuthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", gitcd.addr))?
            .connect()
            .await?,
    );
    auth.user_add(AuthUserAddRequest {
        name: "root".into(),
        password: password.into(),
        ..Default::default()
    })
    .await?;
    auth.role_add(AuthRoleAddRequest { name: "ops".into() }).await?;
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await?;
    auth.auth_enable(AuthEnableRequest {}).await?;
    gitcd.stop().await?;

    let gitcd = Gitcd::start_with(StoreConfig::with_repo(&repo)).await?;
    let mut auth = AuthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", gitcd.addr))?
            .connect()
            .await?,
    );
    let token = auth
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: password.into(),
        })
        .await?
        .into_inner()
        .token;
    let mut status = tonic::Request::new(AuthStatusRequest {});
    status.metadata_mut().insert("token", token.parse()?);
    assert!(auth.auth_status(status).await?.into_inner().enabled);
    gitcd.stop().await?;

    let auth_ref = "refs/gitcd/auth/refs/heads/main";
    let root = git(&repo, &["show", &format!("{auth_ref}:users/root")])?;
    assert!(root.contains("password $2a$04$"), "a bcrypt hash: {root}");
    let history = git(&repo, &["log", "-p", "--format=%B", auth_ref])?;
    assert!(
        !history.contains(password),
        "no password in clear in the auth ref's history"
    );
    assert!(history.contains("role add ops"), "{history}");
    let roles = git(&repo, &["show", &format!("{auth_ref}:roles/ops")])?;
    assert!(roles.contains("name ops"), "{roles}");
    // The pushed refs hold no auth state.
    for pushed in ["refs/heads/main", "refs/gitcd/metadata/refs/heads/main"] {
        let files = git(&repo, &["ls-tree", "-r", "--name-only", pushed])?;
        assert!(!files.contains("users/root"), "{pushed}: {files}");
    }
    Ok(())
}
