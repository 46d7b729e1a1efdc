//! The seed's walkthrough, replayed with the real `etcdctl` against gitcd
//! and against a real etcd: the outputs must agree.

use anyhow::Result;

use crate::support::{Etcd, Gitcd, etcdctl, etcdctl_ok, etcdctl_stdin, git};

/// etcdctl steps; each is (args, stdin).
fn steps() -> Vec<(Vec<&'static str>, &'static str)> {
    vec![
        (vec!["put", "/a", "1"], ""),
        (vec!["get", "--prefix", "/"], ""),
        (vec!["get", "/a", "-w", "fields"], ""),
        (
            vec!["txn", "-w", "fields"],
            "value(\"/a\") = \"1\"\n\nput /1 2\nput /2 2\n\nput /never here\n\n",
        ),
        (
            vec!["txn", "-w", "fields"],
            "value(\"/1\") = \"1\"\n\nput /never here\n\ndel /2\nput /3/3 3\n\n",
        ),
        (vec!["get", "--prefix", "/", "--rev=1"], ""),
        (vec!["get", "--prefix", "/", "--rev=2"], ""),
        (vec!["get", "--prefix", "/", "--rev=3"], ""),
        (vec!["get", "--prefix", "/", "--rev=4", "-w", "fields"], ""),
        (vec!["get", "--prefix", "/"], ""),
        (vec!["del", "/nothing"], ""),
        (vec!["get", "--prefix", "/", "--rev=5"], ""),
    ]
}

/// Drops the lines that name the cluster, the member or raft.
fn comparable(output: &str) -> String {
    output
        .lines()
        .filter(|l| !l.contains("ClusterID") && !l.contains("MemberID") && !l.contains("RaftTerm"))
        .filter(|l| !l.starts_with("{\"level\""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn run(addr: std::net::SocketAddr) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (args, stdin) in steps() {
        let o = etcdctl_stdin(addr, &args, stdin)?;
        let text = format!(
            "$ etcdctl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        out.push(comparable(&text));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_walkthrough_matches_etcd() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let gitcd = Gitcd::start(&repo).await?;
    let etcd = Etcd::start().await?;
    let (ours, theirs) = (gitcd.addr, etcd.addr);
    let ours = tokio::task::spawn_blocking(move || run(ours)).await??;
    let theirs = tokio::task::spawn_blocking(move || run(theirs)).await??;
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o, t, "gitcd and etcd disagree");
    }

    // The revisions hold what the walkthrough wrote.
    let a = gitcd.addr;
    assert_eq!(etcdctl_ok(a, &["get", "--prefix", "/", "--rev=1"])?, "");
    assert_eq!(etcdctl_ok(a, &["get", "--prefix", "/", "--rev=2"])?, "/a\n1\n");
    assert_eq!(
        etcdctl_ok(a, &["get", "--prefix", "/", "--rev=3"])?,
        "/1\n2\n/2\n2\n/a\n1\n"
    );
    assert_eq!(
        etcdctl_ok(a, &["get", "--prefix", "/", "--rev=4"])?,
        "/1\n2\n/3/3\n3\n/a\n1\n"
    );

    // One commit per revision, the revision as message, keys as files.
    let log = git(&repo, &["log", "--format=%s", "refs/heads/main"])?;
    assert_eq!(log, "4\n3\n2\n1\n");
    let meta_log = git(
        &repo,
        &[
            "log",
            "--first-parent",
            "--format=%s",
            "refs/gitcd/metadata/refs/heads/main",
        ],
    )?;
    // Revisions 3 and 4 change several keys: their metadata has a `log`.
    assert_eq!(meta_log, "4-4\n3-3\n2\n1\n");
    let show = git(&repo, &["show", "--format=%s", "--name-status", "refs/heads/main"])?;
    assert_eq!(show, "4\n\nD\t2\nA\t3/3\n");
    assert_eq!(git(&repo, &["show", "refs/heads/main:3/3"])?, "3");
    assert_eq!(git(&repo, &["show", "refs/heads/main:a"])?, "1");
    let meta = git(
        &repo,
        &["cat-file", "-p", "refs/gitcd/metadata/refs/heads/main:revision"],
    )?;
    assert_eq!(meta, "4\n");

    // Status and member list.
    let status = etcdctl_ok(a, &["endpoint", "status", "-w", "table"])?;
    assert!(status.contains("3.5.16") && status.contains(&a.to_string()), "{status}");
    let members = etcdctl_ok(a, &["member", "list", "-w", "table"])?;
    assert!(
        members.contains(&format!("http://{a}")) && members.contains("started"),
        "{members}"
    );
    let health = etcdctl(a, &["endpoint", "health"])?;
    let text = String::from_utf8_lossy(&health.stderr).to_string() + &String::from_utf8_lossy(&health.stdout);
    assert!(health.status.success() && text.contains("is healthy"), "{text}");
    gitcd.stop().await?;
    Ok(())
}
