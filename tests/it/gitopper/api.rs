//! The API's authentication (bearer token, mTLS with certificates made by
//! openssl) and the `gitopperctl` client end to end.

use super::*;

#[test]
fn the_api_refuses_without_a_token() -> Result<()> {
    let f = Fixture::new()?;
    let services = f.write_services(&format!("{}{}", f.global(), f.recording_service("a", "")))?;
    let m = Start::new(&services).arg("--services-links=symlink").run(&f, 0)?;
    m.wait_record(&f, &format!("a start {}", f.head()?))?;
    for (token, want) in [(None, 401), (Some("wrong"), 401), (Some("s3cret x"), 401)] {
        let (status, body) = m.call("POST", "/do/freeze/a", token)?;
        assert_eq!(status, want, "{token:?}: {body}");
        assert!(body["error"].is_string());
    }
    assert_eq!(m.service("a")?["state"], "OK", "refused calls change nothing");
    assert!(
        !std::fs::read_to_string(m.log.clone())?.contains("s3cret"),
        "the token is never logged"
    );
    let (status, _) = m.call("GET", "/do/freeze/a", Some("s3cret"))?;
    assert_eq!(status, 405);
    let (status, _) = m.call("GET", "/nothing", None)?;
    assert_eq!(status, 404);
    // The token file is read at each call: rotation needs no restart.
    std::fs::write(&f.token, "rotated\n")?;
    assert_eq!(m.call("POST", "/do/freeze/a", Some("s3cret"))?.0, 401);
    assert_eq!(m.call("POST", "/do/freeze/a", Some("rotated"))?.0, 200);
    drop(m);

    // With no way to authenticate configured, the API is read-only.
    let m = Start {
        api_token: false,
        ..Start::new(&services).arg("--services-links=symlink")
    }
    .run(&f, 1)?;
    let (status, body) = m.call("POST", "/do/unfreeze/a", Some("rotated"))?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(m.service("a")?["state"], "FREEZE");
    drop(m);

    // --api-auth-reads: the lists need the token too.
    let m = Start::new(&services)
        .arg("--services-links=symlink")
        .arg("--api-auth-reads")
        .run(&f, 2)?;
    assert_eq!(m.call("GET", "/list/service", None)?.0, 401);
    assert_eq!(m.call("GET", "/list/service", Some("rotated"))?.0, 200);
    Ok(())
}

/// A CA and the certificates it signs, made by openssl.
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").current_dir(dir).args(args).output()?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Result<Self> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        )?;
        Ok(Self { dir })
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn issue(&self, cn: &str, server: bool) -> Result<(PathBuf, PathBuf)> {
        let ext = self.dir.join(format!("{cn}.ext"));
        std::fs::write(
            &ext,
            if server {
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
            } else {
                "extendedKeyUsage=clientAuth\n"
            },
        )?;
        let (key, csr, crt) = (format!("{cn}.key"), format!("{cn}.csr"), format!("{cn}.crt"));
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        )?;
        let ext = ext.to_string_lossy().into_owned();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        )?;
        Ok((self.dir.join(crt), self.dir.join(key)))
    }
}

/// `git-sync gitopperctl <args>`.
fn ctl(args: &[String]) -> Result<Output> {
    Ok(Command::new(BIN).arg("gitopperctl").args(args).output()?)
}

#[test]
fn mtls_and_the_client_subcommand() -> Result<()> {
    let f = Fixture::new()?;
    let ours = Pki::new(f.dir.path(), "ours")?;
    let foreign = Pki::new(f.dir.path(), "foreign")?;
    let (server_crt, server_key) = ours.issue("server", true)?;
    let (client_crt, client_key) = ours.issue("operator", false)?;
    let (bad_crt, bad_key) = foreign.issue("intruder", false)?;
    let services = f.write_services(&format!(
        "{}{}{}",
        f.global(),
        f.recording_service("a", ""),
        f.recording_service("b", "")
    ))?;
    let first = f.head()?;
    let m = Start::new(&services)
        .arg("--services-links=symlink")
        .arg(format!("--api-tls-cert-file={}", server_crt.display()))
        .arg(format!("--api-tls-key-file={}", server_key.display()))
        .arg(format!("--api-client-ca-file={}", ours.ca().display()))
        .run(&f, 0)?;
    m.wait_record(&f, &format!("a start {first}"))?;
    m.wait_record(&f, &format!("b start {first}"))?;
    let at = format!("@https://{}", m.api);
    let ca = format!("--ca-file={}", ours.ca().display());
    let with = |extra: &[String], cmd: &[&str]| -> Result<Output> {
        let mut a = vec![ca.clone()];
        a.extend_from_slice(extra);
        a.extend(cmd.iter().map(|s| s.to_string()));
        ctl(&a)
    };
    let cert = [
        format!("--cert-file={}", client_crt.display()),
        format!("--key-file={}", client_key.display()),
    ];
    let bad_cert = [
        format!("--cert-file={}", bad_crt.display()),
        format!("--key-file={}", bad_key.display()),
    ];
    let wrong_token = f.path("wrong-token");
    std::fs::write(&wrong_token, "nope\n")?;
    let token = [format!("--token-file={}", f.token.display())];

    // Reads need nothing; the tables are Gitopper's.
    let o = with(&[], &["list", "service", &at])?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["#", "SERVICE", "HASH", "STATE", "INFO", "SINCE"]);
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..4], ["0", "a", &first[..8], "OK"], "{table}");
    let o = with(&[], &["ls", "m", &at])?;
    assert!(
        text(&o.stdout).contains(&format!("0 {MACHINE} {MACHINE}")),
        "{}",
        text(&o.stdout)
    );
    let o = with(&[], &["-m", "list", "s", &at, "b"])?;
    let v: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["services"][0]["hash"], first.as_str());

    // Refused: no credentials, a wrong token, a foreign certificate.
    for (extra, why) in [
        (&[][..], "401"),
        (&[format!("--token-file={}", wrong_token.display())][..], "401"),
        (&bad_cert[..], "calling"),
    ] {
        let o = with(extra, &["do", "freeze", &at, "a"])?;
        assert_eq!(o.status.code(), Some(1), "{extra:?}");
        assert!(text(&o.stderr).contains(why), "{extra:?}: {}", text(&o.stderr));
    }
    let o = with(&bad_cert, &["list", "service", &at])?;
    assert!(
        !o.status.success(),
        "a foreign certificate fails the handshake, for reads too"
    );
    assert_eq!(m.service_tls(&ours.ca(), "a")?["state"], "OK", "nothing changed");

    // Our certificate freezes; the token unfreezes; rollback by either.
    let o = with(&cert, &["do", "freeze", &at, "a"])?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "OK\n");
    assert_eq!(m.service_tls(&ours.ca(), "a")?["state"], "FREEZE");
    let second = f.commit(&[("a/etc/conf", "a2"), ("b/etc/conf", "b2")])?;
    m.wait_record(&f, &format!("b change {second}"))?;
    assert_eq!(f.target("a")?, "a1");
    let o = with(&token, &["unfreeze", &at, "a"])?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    m.wait_record(&f, &format!("a change {second}"))?;
    let o = with(&cert, &["do", "rollback", &at, "a", &first])?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    m.wait_record(&f, &format!("a rollback {first}"))?;
    let o = with(&token, &["rollback", &at, "a", "zz"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("406"), "{}", text(&o.stderr));
    let o = with(&token, &["do", "pull", &at, "b"])?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Called through a symlink named gitopperctl, as Gitopper's client is.
    let link = f.path("gitopperctl");
    std::os::unix::fs::symlink(BIN, &link)?;
    let o = Command::new(&link).args([&ca, "-m", "list", "s", &at, "b"]).output()?;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["services"][0]["service"], "b");
    // Usage errors exit 64.
    assert_eq!(
        ctl(&["list".into(), "service".into(), "nohost".into()])?.status.code(),
        Some(64)
    );
    Ok(())
}

impl Machine {
    /// `GET /list/service/<name>` over HTTPS (curl, trusting `ca`).
    fn service_tls(&self, ca: &Path, name: &str) -> Result<Value> {
        let o = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(ca)
            .arg(format!("https://{}/list/service/{name}", self.api))
            .output()?;
        ensure!(o.status.success(), "curl: {}", text(&o.stderr));
        Ok(serde_json::from_slice::<Value>(&o.stdout)?["services"][0].clone())
    }
}
