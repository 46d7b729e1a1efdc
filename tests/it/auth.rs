//! Auth: users, roles, permissions, `auth enable`/`disable`, simple tokens
//! and the checks of every request, differentially against etcd 3.5 over
//! gRPC and with etcdctl 3.5; and the auth state surviving a restart in its
//! own ref, with bcrypt hashes and no password in clear.

use anyhow::Result;
use bytes::Bytes;
use common::proto::authpb::{Permission, UserAddOptions, permission::Type as PermType};
use common::proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest, AuthRoleGetRequest,
    AuthRoleGrantPermissionRequest, AuthRoleListRequest, AuthRoleRevokePermissionRequest, AuthStatusRequest,
    AuthUserAddRequest, AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest, AuthenticateRequest, Compare,
    DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchRequest, auth_client::AuthClient, compare, kv_client::KvClient,
    lease_client::LeaseClient, request_op, watch_client::WatchClient, watch_request,
};

use crate::oracle::{Pair, Side, render, with_token};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn user_add(name: &str, password: &str, no_password: bool) -> AuthUserAddRequest {
    AuthUserAddRequest {
        name: name.into(),
        password: password.into(),
        options: Some(UserAddOptions { no_password }),
        hashed_password: String::new(),
    }
}

fn grant(role: &str, kind: PermType, key: &str, end: &str) -> AuthRoleGrantPermissionRequest {
    AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: kind as i32,
            key: b(key),
            range_end: b(end),
        }),
    }
}

/// The administration steps, as root (`token`) once auth is on: each
/// answer rendered, errors with their code and text.
async fn manage(s: &Side, token: Option<&str>) -> Vec<String> {
    let mut a = AuthClient::new(s.channel.clone());
    let tok = token;
    vec![
        render(a.user_add(with_token(user_add("alice", "alice-pw", false), tok)).await),
        render(a.user_add(with_token(user_add("alice", "again", false), tok)).await),
        render(a.user_add(with_token(user_add("", "x", false), tok)).await),
        render(a.user_add(with_token(user_add("cert-only", "", true), tok)).await),
        render(
            a.role_add(with_token(AuthRoleAddRequest { name: "reader".into() }, tok))
                .await,
        ),
        render(
            a.role_add(with_token(AuthRoleAddRequest { name: "reader".into() }, tok))
                .await,
        ),
        render(
            a.role_add(with_token(AuthRoleAddRequest { name: String::new() }, tok))
                .await,
        ),
        render(
            a.role_grant_permission(with_token(grant("reader", PermType::Read, "/a/", "/a0"), tok))
                .await,
        ),
        render(
            a.role_grant_permission(with_token(grant("reader", PermType::Readwrite, "k", ""), tok))
                .await,
        ),
        render(
            a.role_grant_permission(with_token(grant("reader", PermType::Write, "/w/", "\0"), tok))
                .await,
        ),
        render(
            a.role_grant_permission(with_token(grant("nobody", PermType::Read, "x", ""), tok))
                .await,
        ),
        render(
            a.role_grant_permission(with_token(
                AuthRoleGrantPermissionRequest {
                    name: "reader".into(),
                    perm: None,
                },
                tok,
            ))
            .await,
        ),
        render(
            a.user_grant_role(with_token(
                AuthUserGrantRoleRequest {
                    user: "alice".into(),
                    role: "reader".into(),
                },
                tok,
            ))
            .await,
        ),
        render(
            a.user_grant_role(with_token(
                AuthUserGrantRoleRequest {
                    user: "alice".into(),
                    role: "missing".into(),
                },
                tok,
            ))
            .await,
        ),
        render(
            a.user_grant_role(with_token(
                AuthUserGrantRoleRequest {
                    user: "ghost".into(),
                    role: "reader".into(),
                },
                tok,
            ))
            .await,
        ),
        render(
            a.user_revoke_role(with_token(
                AuthUserRevokeRoleRequest {
                    name: "cert-only".into(),
                    role: "reader".into(),
                },
                tok,
            ))
            .await,
        ),
        render(
            a.role_revoke_permission(with_token(
                AuthRoleRevokePermissionRequest {
                    role: "reader".into(),
                    key: b("nope"),
                    range_end: Bytes::new(),
                },
                tok,
            ))
            .await,
        ),
        render(
            a.user_get(with_token(AuthUserGetRequest { name: "alice".into() }, tok))
                .await,
        ),
        render(
            a.user_get(with_token(AuthUserGetRequest { name: "ghost".into() }, tok))
                .await,
        ),
        render(
            a.role_get(with_token(AuthRoleGetRequest { role: "reader".into() }, tok))
                .await,
        ),
        render(
            a.role_get(with_token(AuthRoleGetRequest { role: "ghost".into() }, tok))
                .await,
        ),
        render(a.user_list(with_token(AuthUserListRequest {}, tok)).await),
        render(a.role_list(with_token(AuthRoleListRequest {}, tok)).await),
        render(a.auth_status(with_token(AuthStatusRequest {}, tok)).await),
    ]
}

/// An Authenticate answer with its token (random by design) written
/// `<token>`; the token itself, for use.
async fn authenticate(s: &Side, name: &str, password: &str) -> (String, Option<String>) {
    let r = AuthClient::new(s.channel.clone())
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await;
    match r {
        Ok(r) => {
            let mut r = r.into_inner();
            let token = std::mem::replace(&mut r.token, "<token>".into());
            (format!("{r:?}"), Some(token))
        }
        Err(e) => (format!("error {:?}: {}", e.code(), e.message()), None),
    }
}

/// What a user may and may not do with keys, with `token`.
async fn use_keys(s: &Side, token: Option<&str>) -> Vec<String> {
    let mut kv = KvClient::new(s.channel.clone());
    let tok = token;
    let put = |k: &str| PutRequest {
        key: b(k),
        value: b("v"),
        ..Default::default()
    };
    let range = |k: &str, end: &str| RangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    };
    let txn = |compare_key: &str, put_key: &str| TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: b(compare_key),
            target_union: Some(compare::TargetUnion::Version(0)),
            range_end: Bytes::new(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put(put_key))),
        }],
        failure: vec![],
    };
    let mut out = vec![
        render(kv.put(with_token(put("k"), tok)).await),
        render(kv.put(with_token(put("/a/x"), tok)).await),
        render(kv.put(with_token(put("/w/x"), tok)).await),
        render(kv.range(with_token(range("/a/", "/a0"), tok)).await),
        render(kv.range(with_token(range("/a/x", ""), tok)).await),
        render(kv.range(with_token(range("/", "/a0"), tok)).await),
        render(kv.range(with_token(range("/w/x", ""), tok)).await),
        render(kv.range(with_token(range("k", ""), tok)).await),
        render(kv.txn(with_token(txn("k", "k"), tok)).await),
        render(kv.txn(with_token(txn("/b", "k"), tok)).await),
        render(kv.txn(with_token(txn("k", "/a/y"), tok)).await),
        render(
            kv.delete_range(with_token(
                DeleteRangeRequest {
                    key: b("/w/x"),
                    prev_kv: true,
                    ..Default::default()
                },
                tok,
            ))
            .await,
        ),
        render(
            kv.delete_range(with_token(
                DeleteRangeRequest {
                    key: b("/w/x"),
                    ..Default::default()
                },
                tok,
            ))
            .await,
        ),
    ];
    // Leases: granting, attaching a key, reading its keys, revoking.
    let mut leases = LeaseClient::new(s.channel.clone());
    out.extend([
        render(
            leases
                .lease_grant(with_token(LeaseGrantRequest { ttl: 60, id: 0x77 }, tok))
                .await,
        ),
        render(
            kv.put(with_token(
                PutRequest {
                    lease: 0x77,
                    ..put("k")
                },
                tok,
            ))
            .await,
        ),
        // The remaining TTL depends on when the second ticks. `keys: false`:
        // etcd 3.5.1 does not check who may see a lease's keys; later 3.5
        // releases (and gitcd) check each key's read permission.
        crate::oracle::scrub_number(
            &render(
                leases
                    .lease_time_to_live(with_token(LeaseTimeToLiveRequest { id: 0x77, keys: false }, tok))
                    .await,
            ),
            " ttl: ",
        ),
        render(
            leases
                .lease_revoke(with_token(LeaseRevokeRequest { id: 0x77 }, tok))
                .await,
        ),
    ]);
    // Watches: the creation answers (a denied one is created and cancelled).
    for (key, end) in [("/a/", "/a0"), ("/b", "")] {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                    key: b(key),
                    range_end: b(end),
                    ..Default::default()
                })),
            })
            .await;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let answer = match WatchClient::new(s.channel.clone()).watch(with_token(stream, tok)).await {
            Ok(r) => match r.into_inner().message().await {
                Ok(Some(m)) => format!(
                    "created {} canceled {} reason {:?}",
                    m.created, m.canceled, m.cancel_reason
                ),
                Ok(None) => "watch ended".into(),
                Err(e) => format!("error {:?}: {}", e.code(), e.message()),
            },
            Err(e) => format!("error {:?}: {}", e.code(), e.message()),
        };
        out.push(answer);
        drop(tx);
    }
    out
}

/// The whole life of auth over gRPC, against etcd 3.5: management before
/// auth is on, enabling (and what it needs), requests without a token, with
/// a bad one, as a user with some permissions, as root; a user reading
/// itself and its roles; changes taking effect at once; a changed password
/// ending the user's tokens; disabling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_matches_etcd() -> Result<()> {
    let pair = Pair::start(&["--bcrypt-cost=4"]).await?;
    pair.agree("auth status when off", |s| async move {
        render(AuthClient::new(s.channel).auth_status(AuthStatusRequest {}).await)
    })
    .await?;
    pair.agree("authenticate when off", |s| async move {
        authenticate(&s, "root", "pw").await.0
    })
    .await?;
    pair.agree("enable without root", |s| async move {
        render(AuthClient::new(s.channel).auth_enable(AuthEnableRequest {}).await)
    })
    .await?;
    pair.agree(
        "management while off",
        |s| async move { manage(&s, None).await.join("\n") },
    )
    .await?;
    pair.agree("root without the root role", |s| async move {
        let mut a = AuthClient::new(s.channel.clone());
        [
            render(a.user_add(user_add("root", "root-pw", false)).await),
            render(a.auth_enable(AuthEnableRequest {}).await),
            render(
                a.user_grant_role(AuthUserGrantRoleRequest {
                    user: "root".into(),
                    role: "root".into(),
                })
                .await,
            ),
            render(a.auth_enable(AuthEnableRequest {}).await),
            render(a.auth_enable(AuthEnableRequest {}).await),
        ]
        .join("\n")
    })
    .await?;
    pair.agree("requests without a token", |s| async move {
        let mut out = use_keys(&s, None).await;
        out.push(render(
            AuthClient::new(s.channel.clone())
                .user_list(AuthUserListRequest {})
                .await,
        ));
        out.join("\n")
    })
    .await?;
    pair.agree("an invalid token", |s| async move {
        use_keys(&s, Some("abcdefghijklmnop.3")).await.join("\n")
    })
    .await?;
    pair.agree("bad passwords", |s| async move {
        [
            authenticate(&s, "root", "wrong").await.0,
            authenticate(&s, "ghost", "x").await.0,
            authenticate(&s, "cert-only", "x").await.0,
        ]
        .join("\n")
    })
    .await?;
    pair.agree("root's rules while on", |s| async move {
        let (_, root) = authenticate(&s, "root", "root-pw").await;
        let root = root.as_deref();
        let mut a = AuthClient::new(s.channel.clone());
        let tok = root;
        [
            render(
                a.user_delete(with_token(AuthUserDeleteRequest { name: "root".into() }, tok))
                    .await,
            ),
            render(
                a.user_revoke_role(with_token(
                    AuthUserRevokeRoleRequest {
                        name: "root".into(),
                        role: "root".into(),
                    },
                    tok,
                ))
                .await,
            ),
            render(
                a.role_add(with_token(AuthRoleAddRequest { name: "root".into() }, tok))
                    .await,
            ),
            render(
                a.role_delete(with_token(AuthRoleDeleteRequest { role: "root".into() }, tok))
                    .await,
            ),
            render(
                a.role_get(with_token(AuthRoleGetRequest { role: "root".into() }, tok))
                    .await,
            ),
            use_keys(&s, root).await.join("\n"),
            render(a.auth_status(with_token(AuthStatusRequest {}, tok)).await),
        ]
        .join("\n")
    })
    .await?;
    pair.agree("a user with some permissions", |s| async move {
        let (answer, alice) = authenticate(&s, "alice", "alice-pw").await;
        let alice = alice.as_deref();
        let mut a = AuthClient::new(s.channel.clone());
        let tok = alice;
        let mut out = vec![answer];
        out.extend(use_keys(&s, alice).await);
        out.extend([
            render(
                a.user_get(with_token(AuthUserGetRequest { name: "alice".into() }, tok))
                    .await,
            ),
            render(
                a.user_get(with_token(AuthUserGetRequest { name: "root".into() }, tok))
                    .await,
            ),
            render(
                a.role_get(with_token(AuthRoleGetRequest { role: "reader".into() }, tok))
                    .await,
            ),
            render(
                a.role_get(with_token(AuthRoleGetRequest { role: "root".into() }, tok))
                    .await,
            ),
            render(a.user_list(with_token(AuthUserListRequest {}, tok)).await),
            render(a.auth_status(with_token(AuthStatusRequest {}, tok)).await),
            render(a.auth_disable(with_token(AuthDisableRequest {}, tok)).await),
        ]);
        // A permission revoked takes effect on the next request.
        let (_, root) = authenticate(&s, "root", "root-pw").await;
        out.push(render(
            a.role_revoke_permission(with_token(
                AuthRoleRevokePermissionRequest {
                    role: "reader".into(),
                    key: b("k"),
                    range_end: Bytes::new(),
                },
                root.as_deref(),
            ))
            .await,
        ));
        out.extend(use_keys(&s, alice).await);
        // A new password ends the user's tokens.
        out.push(render(
            a.user_change_password(with_token(
                AuthUserChangePasswordRequest {
                    name: "alice".into(),
                    password: "new-pw".into(),
                    hashed_password: String::new(),
                },
                root.as_deref(),
            ))
            .await,
        ));
        out.push(render(
            a.user_get(with_token(AuthUserGetRequest { name: "alice".into() }, tok))
                .await,
        ));
        out.push(authenticate(&s, "alice", "alice-pw").await.0);
        let (again, alice) = authenticate(&s, "alice", "new-pw").await;
        out.push(again);
        out.push(render(
            a.user_get(with_token(
                AuthUserGetRequest { name: "alice".into() },
                alice.as_deref(),
            ))
            .await,
        ));
        // Deleting a role takes it from its users.
        out.push(render(
            a.role_delete(with_token(
                AuthRoleDeleteRequest { role: "reader".into() },
                root.as_deref(),
            ))
            .await,
        ));
        out.push(render(
            a.user_get(with_token(AuthUserGetRequest { name: "alice".into() }, root.as_deref()))
                .await,
        ));
        out.push(render(
            a.auth_disable(with_token(AuthDisableRequest {}, root.as_deref())).await,
        ));
        out.push(render(a.auth_status(AuthStatusRequest {}).await));
        out.extend(use_keys(&s, None).await);
        out.join("\n")
    })
    .await?;
    pair.gitcd.stop().await?;
    Ok(())
}

/// etcdctl 3.5's `user`, `role` and `auth` commands and a user's reads and
/// writes, against gitcd and etcd 3.5: the same output and exit status.
/// Passwords go through the environment (`ETCDCTL_USER`) and stdin, never
/// argv.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_auth_matches_etcd() -> Result<()> {
    etcdctl_auth_steps(&crate::support::etcdctl35()?).await
}

/// The same with Debian's etcdctl 3.4.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl34_auth_matches_etcd() -> Result<()> {
    etcdctl_auth_steps(std::path::Path::new("etcdctl")).await
}

async fn etcdctl_auth_steps(etcdctl: &std::path::Path) -> Result<()> {
    let pair = Pair::start(&["--bcrypt-cost=4"]).await?;
    let steps: &[(Option<&str>, &[&str], &str)] = &[
        (None, &["user", "add", "root", "--interactive=false"], "root-pw\n"),
        (None, &["user", "grant-role", "root", "root"], ""),
        (None, &["role", "add", "app"], ""),
        (
            None,
            &["role", "grant-permission", "app", "readwrite", "/app/", "--prefix"],
            "",
        ),
        (
            None,
            &["role", "grant-permission", "app", "read", "/shared", "/shared0"],
            "",
        ),
        (None, &["user", "add", "bob", "--interactive=false"], "bob-pw\n"),
        (None, &["user", "grant-role", "bob", "app"], ""),
        (None, &["auth", "enable"], ""),
        (None, &["get", "/app/x"], ""),
        (Some("root:root-pw"), &["put", "/shared/s", "1"], ""),
        (Some("bob:bob-pw"), &["put", "/app/x", "1"], ""),
        (Some("bob:bob-pw"), &["get", "/app/", "--prefix"], ""),
        (Some("bob:bob-pw"), &["get", "/shared/s"], ""),
        (Some("bob:bob-pw"), &["put", "/shared/s", "2"], ""),
        (Some("bob:bob-pw"), &["get", "/other"], ""),
        (Some("bob:bob-pw"), &["user", "list"], ""),
        (Some("bob:bob-pw"), &["user", "get", "bob"], ""),
        (Some("bob:wrong"), &["get", "/app/x"], ""),
        (Some("root:root-pw"), &["user", "list"], ""),
        (Some("root:root-pw"), &["role", "list"], ""),
        (Some("root:root-pw"), &["role", "get", "app"], ""),
        (Some("root:root-pw"), &["user", "get", "bob", "--detail"], ""),
        (
            Some("root:root-pw"),
            &["role", "revoke-permission", "app", "/app/", "--prefix"],
            "",
        ),
        (Some("bob:bob-pw"), &["put", "/app/x", "2"], ""),
        (Some("root:root-pw"), &["user", "delete", "root"], ""),
        (Some("root:root-pw"), &["user", "revoke-role", "bob", "app"], ""),
        (Some("root:root-pw"), &["role", "delete", "app"], ""),
        (Some("root:root-pw"), &["user", "delete", "bob"], ""),
        (Some("root:root-pw"), &["auth", "disable"], ""),
        (None, &["get", "/app/x"], ""),
    ];
    for (user, args, stdin) in steps {
        pair.agree(&format!("etcdctl {args:?}"), |s| async move {
            let run = etcdctl_auth(etcdctl, &s.endpoint, *user, args, stdin);
            // etcdctl's client logs its retries with a time stamp and the
            // address of its resolver: left out.
            match run {
                Ok((ok, out, err)) => {
                    let err: String = err
                        .lines()
                        .filter(|l| !l.starts_with("{\"level\":"))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    format!("ok {ok}\n{out}{err}")
                }
                Err(e) => format!("cannot run etcdctl: {e}"),
            }
        })
        .await?;
    }
    pair.gitcd.stop().await?;
    Ok(())
}

/// `etcdctl` (API v3) as `user` (`name:password`, in the environment), with
/// `stdin`.
fn etcdctl_auth(
    etcdctl: &std::path::Path,
    endpoint: &str,
    user: Option<&str>,
    args: &[&str],
    stdin: &str,
) -> Result<(bool, String, String)> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(etcdctl);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(u) = user {
        cmd.env("ETCDCTL_USER", u);
    }
    let mut child = cmd.spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// LeaseTimeToLive with `keys` shows a lease's keys only to a user who may
/// read each of them (as etcd 3.5 releases after 3.5.1 check; the oracle
/// predates it, so this runs on gitcd alone); without `keys` anyone may ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_keys_need_read_permission() -> Result<()> {
    let (_dir, gitcd, _) = crate::support::Gitcd::fresh().await?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gitcd.addr))?
        .connect()
        .await?;
    let mut a = AuthClient::new(channel.clone());
    a.user_add(user_add("root", "root-pw", false)).await?;
    a.user_grant_role(AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await?;
    a.user_add(user_add("u", "u-pw", false)).await?;
    a.role_add(AuthRoleAddRequest { name: "r".into() }).await?;
    a.role_grant_permission(grant("r", PermType::Read, "a", "")).await?;
    a.user_grant_role(AuthUserGrantRoleRequest {
        user: "u".into(),
        role: "r".into(),
    })
    .await?;
    a.auth_enable(AuthEnableRequest {}).await?;
    let token = |name: &str, password: &str| {
        let mut a = a.clone();
        let (name, password) = (name.to_owned(), password.to_owned());
        async move {
            anyhow::Ok(
                a.authenticate(AuthenticateRequest { name, password })
                    .await?
                    .into_inner()
                    .token,
            )
        }
    };
    let root = token("root", "root-pw").await?;
    let u = token("u", "u-pw").await?;
    let mut leases = LeaseClient::new(channel.clone());
    let mut kv = KvClient::new(channel);
    leases
        .lease_grant(with_token(LeaseGrantRequest { ttl: 60, id: 5 }, Some(&root)))
        .await?;
    for key in ["a", "b"] {
        kv.put(with_token(
            PutRequest {
                key: b(key),
                value: b("v"),
                lease: 5,
                ..Default::default()
            },
            Some(&root),
        ))
        .await?;
    }
    let ttl = |token: &str, keys: bool| {
        let mut leases = leases.clone();
        let token = token.to_owned();
        async move {
            render(
                leases
                    .lease_time_to_live(with_token(LeaseTimeToLiveRequest { id: 5, keys }, Some(&token)))
                    .await,
            )
        }
    };
    assert_eq!(
        ttl(&u, true).await,
        "error PermissionDenied: etcdserver: permission denied"
    );
    assert!(ttl(&u, false).await.contains("keys: []"), "{}", ttl(&u, false).await);
    let all = ttl(&root, true).await;
    assert!(all.contains(r#"keys: [b"a", b"b"]"#), "{all}");
    gitcd.stop().await?;
    Ok(())
}
