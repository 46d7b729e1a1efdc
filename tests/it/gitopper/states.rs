//! Services tracking their branch: only a change of a service's own paths
//! tells it; freeze, rollback, unfreeze; BROKEN; the state across restarts.

use super::*;

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
    // The pid file says the trap is set: written after it, so that a HUP
    // that comes at once is caught, not fatal to the shell.
    let trap = format!(
        "trap 'echo hup >> {hups}' HUP; echo $$ > {pid}; while :; do sleep 0.05; done",
        pid = pidfile.display(),
        hups = hups.display()
    );
    // A shell cannot trap a signal ignored when it started (under nohup,
    // HUP is): env gives it HUP's default disposition first.
    let mut trapper = Command::new("env")
        .args(["--default-signal=HUP", "sh", "-c", &trap])
        .spawn()?;
    let _reap = KillOnDrop(&mut trapper);
    // Written, not only created: gitopper reads it once it starts.
    poll("the pid file", WAIT, || {
        let pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
        Ok(pid.trim().parse::<u32>().ok())
    })?;
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
        let got = std::fs::read_to_string(&hups).unwrap_or_default();
        if got.len() > "hup\n".len() {
            bail!("c was sent more than one HUP: {got:?}");
        }
        Ok((got == "hup\n").then_some(()))
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
