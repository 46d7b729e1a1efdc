//! The binaries' contract: usage errors exit 64 with a one-line reason,
//! runtime errors exit 1 with a one-line reason, `version` prints both
//! versions.

use std::process::{Command, Output};

use anyhow::Result;

use crate::support::{commit_files, git, new_work_repo};

fn gitcd(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_gitcd")).args(args).output()?)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_prints_gitcd_and_etcd_versions() -> Result<()> {
    let o = gitcd(&["version"])?;
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout)?;
    assert!(out.contains("gitcd 0.") && out.contains("etcd API 3.5.16"), "{out}");
    Ok(())
}

#[test]
fn usage_errors_exit_64() -> Result<()> {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--no-such-flag"], "--no-such-flag"),
        (
            &["serve", "--listen-urls", "https://127.0.0.1:2379"],
            "needs --cert-file",
        ),
        (
            &["serve", "--listen-urls", "unix:///run/x"],
            "only http:// and https://",
        ),
        (&["serve", "--cert-file", "/x"], "go together"),
        (&["serve", "--client-cert-auth"], "needs --trusted-ca-file"),
        (
            &["serve", "--listen-urls", "http://localhost:2379"],
            "expected http(s)://IP:PORT",
        ),
        (&["serve", "--data-ref", "main"], "must be a full ref name"),
        (&["serve", "--start-revision", "0"], "start-revision"),
        (&["serve", "--poll-interval", "soon"], "not a duration"),
        (&["frobnicate"], "frobnicate"),
        (
            &["serve", "--namespace-listen-urls", "http://127.0.0.1:2390"],
            "must be PREFIX=URL[,URL]",
        ),
        (
            &["serve", "--namespace-listen-urls", "=http://127.0.0.1:2390"],
            "the prefix is empty",
        ),
        (&["serve", "--namespace-listen-urls", "/t/="], "no URL given"),
        (&["serve", "--bcrypt-cost", "3"], "--bcrypt-cost 3"),
        (&["serve", "--auth-token-ttl", "0"], "--auth-token-ttl"),
        (&["restore"], "FILE"),
    ];
    for (args, needle) in cases {
        let o = gitcd(args)?;
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    let o = Command::new(env!("CARGO_BIN_EXE_gitcd-init")).arg("--bogus").output()?;
    assert_eq!(o.status.code(), Some(64));
    Ok(())
}

#[test]
fn runtime_errors_exit_1_with_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A file where the repository should be.
    let file = dir.path().join("file");
    std::fs::write(&file, "not a repo")?;
    let o = gitcd(&["init", "--repo", file.to_str().unwrap_or_default()])?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a Git repository"), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).trim().lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{}",
        stderr(&o)
    );

    // A non-empty directory that is not a repository.
    let junk = dir.path().join("junk");
    std::fs::create_dir(&junk)?;
    std::fs::write(junk.join("x"), "x")?;
    let o = gitcd(&["init", "--repo", junk.to_str().unwrap_or_default()])?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a Git repository"), "{}", stderr(&o));

    // A data ref that names a blob, not a commit (Git allows it outside refs/heads).
    let work = dir.path().join("work");
    new_work_repo(&work)?;
    commit_files(&work, &[("a", "1")], "one")?;
    let blob = git(&work, &["rev-parse", "HEAD:a"])?;
    git(&work, &["update-ref", "refs/blobby", blob.trim()])?;
    let o = gitcd(&[
        "init",
        "--repo",
        work.to_str().unwrap_or_default(),
        "--data-ref",
        "refs/blobby",
    ])?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("expected a commit"), "{}", stderr(&o));

    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", taken.local_addr()?);
    let repo = dir.path().join("repo");
    let o = gitcd(&[
        "serve",
        "--repo",
        repo.to_str().unwrap_or_default(),
        "--listen-urls",
        &url,
    ])?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot listen on"), "{}", stderr(&o));
    Ok(())
}

fn bin(name: &str) -> Command {
    let path = match name {
        "git-pre" => env!("CARGO_BIN_EXE_git-pre"),
        "git-post" => env!("CARGO_BIN_EXE_git-post"),
        _ => env!("CARGO_BIN_EXE_gitcd-pull"),
    };
    Command::new(path)
}

/// The coordination binaries: bad flags exit 64 with the reason; a wrong
/// password exits 1 with one line that names the remote (redacted) and
/// shows no secret, in no argument of a child either.
#[test]
fn coordination_binaries_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap_or_default().to_owned();
    let repo = format!("--repo={d}/repo");
    let cases: &[(&str, Vec<&str>, &str)] = &[
        (
            "git-pre",
            vec![&repo, "--upstream-ref=refs/heads/main"],
            "--upstream-ref needs --remote-url",
        ),
        (
            "git-pre",
            vec![&repo, "--remote-url=file:///x", "--upstream-ref=main"],
            "full ref name",
        ),
        (
            "git-pre",
            vec![&repo, "--remote-url=file:///x", "--username=u"],
            "go together",
        ),
        ("git-pre", vec![&repo, "--on-missing-branch=maybe"], "maybe"),
        ("git-post", vec![&repo, "--max-attempts=0"], "max-attempts"),
        ("gitcd-pull", vec![&repo, "--remote-url=file:///x"], "--merge-ref"),
        (
            "gitcd-pull",
            vec![&repo, "--remote-url=file:///x", "--merge-ref=a"],
            "full ref name",
        ),
        (
            "gitcd-pull",
            vec![
                &repo,
                "--remote-url=file:///x",
                "--merge-ref=refs/heads/a",
                "--conflict=mine",
            ],
            "not a conflict policy",
        ),
        (
            "gitcd-pull",
            vec![
                &repo,
                "--remote-url=file:///x",
                "--merge-ref=refs/heads/a",
                "--exclude=/a**",
            ],
            "whole segment",
        ),
        (
            "gitcd-pull",
            vec![
                &repo,
                "--remote-url=file:///x",
                "--merge-ref=refs/heads/a",
                "--ssh-key-file=/no/such",
            ],
            "no such file",
        ),
    ];
    for (name, args, needle) in cases {
        let o = bin(name).args(args).output()?;
        assert_eq!(o.status.code(), Some(64), "{name} {args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{name} {args:?}: {}", stderr(&o));
    }

    // A wrong password against a real Git host.
    let root = dir.path().join("hosted");
    std::fs::create_dir_all(&root)?;
    git(&root, &["init", "-q", "--bare", "up.git"])?;
    let good = dir.path().join("good");
    std::fs::write(&good, "right-s3cret\n")?;
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "wrong-s3cret\n")?;
    let host = crate::hosts::git_http(&root, "alice", &good, None)?;
    let inline = format!("http://alice:inline-pw@127.0.0.1:{}/up.git", host.port);
    let o = bin("git-pre")
        .args([&repo, &format!("--remote-url={inline}")])
        .output()?;
    assert_eq!(
        o.status.code(),
        Some(64),
        "a password in the URL is refused: {}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("inline-pw") && stderr(&o).contains("--password-file"),
        "{}",
        stderr(&o)
    );
    let url = format!("http://127.0.0.1:{}/up.git", host.port);
    let o = bin("git-pre")
        .args([&repo, &format!("--remote-url={url}"), "--username=alice"])
        .arg(format!("--password-file={}", bad.display()))
        .output()?;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    assert!(err.lines().filter(|l| l.starts_with("error:")).count() == 1, "{err}");
    assert!(!err.contains("wrong-s3cret"), "{err}");
    Ok(())
}

/// No silent empty store beside the user's data: without --data-ref the
/// store is the branch HEAD names (master in a repository made by `git
/// init -b master`); with it, that ref, created if missing.
#[test]
fn the_data_ref_defaults_to_head() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    git(&work, &["init", "-q", "-b", "master"])?;
    commit_files(&work, &[("app/config", "x")], "first")?;
    let repo = work.to_str().unwrap_or_default();
    let o = gitcd(&["init", "--repo", repo])?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("serving the branch HEAD names"),
        "logged: {}",
        stderr(&o)
    );
    let out = String::from_utf8(o.stdout)?;
    assert!(
        out.contains("refs/gitcd/metadata/refs/heads/master at revision 1"),
        "{out}"
    );
    let o = gitcd(&["init", "--repo", repo, "--data-ref", "refs/heads/other"])?;
    let out = String::from_utf8(o.stdout)?;
    assert!(
        out.contains("refs/gitcd/metadata/refs/heads/other at revision 1"),
        "{out}"
    );
    // A new repository: HEAD names the data ref.
    let fresh = dir.path().join("fresh");
    let o = gitcd(&[
        "init",
        "--repo",
        fresh.to_str().unwrap_or_default(),
        "--data-ref",
        "refs/heads/store",
    ])?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(fresh.join("HEAD"))?.trim(),
        "ref: refs/heads/store"
    );
    Ok(())
}
