//! The machine's side: bind mounts or symlinks, checkouts owned by the
//! service's user, bootstrapping, refused flags and files, and upstreams on
//! real hosts with credentials.

use super::*;

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
    // The refused fetches count as git errors; d's state change has a time.
    let metrics = m.metrics()?;
    let value = |prefix: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
    };
    let errors = value("gitopper_machine_git_errors_total ").context("git errors")?;
    let ops = value("gitopper_machine_git_ops_total ").context("git ops")?;
    assert!(errors >= 1.0 && ops > errors, "{metrics}");
    let changed = value("gitopper_service_change_time_seconds{service=\"d\"} ").context("d's change time")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    assert!((now - 120.0..=now + 1.0).contains(&changed), "{changed} vs {now}");
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
