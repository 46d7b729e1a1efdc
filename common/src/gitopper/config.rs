//! The services file: Gitopper's TOML, read the way Gitopper reads it, so
//! that an existing Gitopper config works unchanged.
//!
//! Gitopper decodes with go-toml v2 in strict mode: any key it does not know
//! is an error, and keys match its field names exactly or, failing that,
//! case-insensitively (`Machine` is `machine`). `[global]` takes every key a
//! service takes plus `keys`, but only `upstream`, `mount` and `branch` are
//! inherited by the services; `branch` defaults to `main`.
//!
//! Beyond Gitopper, a service may name its action as a command (`command`,
//! an argument vector) or as a signal to a pid file (`pidfile`, `signal`),
//! instead of a systemctl verb (`action`). `keys` (Gitopper's SSH keys for
//! its API) are accepted and not used: our API authenticates with a bearer
//! token or a client certificate.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// The branch a service tracks when nothing says otherwise (Gitopper's).
pub const DEFAULT_BRANCH: &str = "main";

/// The file as written: `[global]` and `[[services]]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Defaults for the services (only upstream, mount, branch inherit).
    #[serde(default)]
    pub global: Entry,
    /// Every service, for every machine.
    #[serde(default)]
    pub services: Vec<Entry>,
}

/// One `[[services]]` entry, or `[global]` (which alone may hold `keys`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The repository URL.
    #[serde(default)]
    pub upstream: String,
    /// The branch to track.
    #[serde(default)]
    pub branch: String,
    /// The service's name: its systemd unit, and its checkout's directory.
    #[serde(default)]
    pub service: String,
    /// The machine (hostname or alias) the service runs on.
    #[serde(default)]
    pub machine: String,
    /// A package to install (apt-get or pacman) before the first checkout.
    #[serde(default)]
    pub package: String,
    /// Who owns the checkout; git runs as this user.
    #[serde(default)]
    pub user: String,
    /// `systemctl <action> <service>` after a change; empty for none.
    #[serde(default)]
    pub action: String,
    /// The checkout is `<mount>/<service>`.
    #[serde(default)]
    pub mount: String,
    /// What of the repository is linked where.
    #[serde(default)]
    pub dirs: Vec<Dir>,
    /// Gitopper's SSH public keys (accepted in `[global]`, not used).
    #[serde(default)]
    pub keys: Option<Vec<Key>>,
    /// Ours: the action as a command, `["/usr/bin/prog", "arg", ...]`.
    #[serde(default)]
    pub command: Vec<String>,
    /// Ours: the action as a signal to the process in this pid file.
    #[serde(default)]
    pub pidfile: String,
    /// Ours: the signal for `pidfile` (default `HUP`).
    #[serde(default)]
    pub signal: String,
}

/// One `dirs` entry: `link` in the repository appears at `local`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Dir {
    /// The path on this machine; empty: only checked out, not linked.
    #[serde(default)]
    pub local: String,
    /// The path in the repository, relative to its top.
    #[serde(default)]
    pub link: String,
    /// `local` and `link` are files, not directories.
    #[serde(default)]
    pub file: bool,
}

/// One of Gitopper's `keys`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// Path of an SSH public key.
    #[serde(default)]
    pub path: String,
    /// Read-only key.
    #[serde(default)]
    pub ro: bool,
}

/// What a service does when its linked files change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Gitopper's: `systemctl daemon-reload`, then `systemctl <verb>
    /// <service>` after a change (nothing more when the verb is empty) and
    /// `systemctl start <service>` when its links were just made.
    Systemctl {
        /// `reload`, `restart`, ...; may be empty.
        verb: String,
    },
    /// Send `signal` to the pid in `pidfile`.
    Signal {
        /// The pid file.
        pidfile: PathBuf,
        /// The signal number.
        signal: i32,
        /// Its name, for logs.
        name: String,
    },
    /// Run this argument vector (no shell).
    Command(Vec<String>),
    /// Nothing at all (git-sync's own bootstrap service).
    Nothing,
}

/// A service of this machine, with `[global]` merged in and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// The machine name that selected it.
    pub machine: String,
    /// Repository URL.
    pub upstream: String,
    /// Branch.
    pub branch: String,
    /// Owner of the checkout; `None`: whoever runs git-sync.
    pub user: Option<String>,
    /// Package to install first.
    pub package: Option<String>,
    /// The checkout, `<mount>/<service>`.
    pub checkout: PathBuf,
    /// Links, in file order.
    pub dirs: Vec<Link>,
    /// The action.
    pub action: Action,
}

/// One checked link: `link` (clean, relative) shown at `local` (absolute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Absolute path on this machine, or `None` to only check it out.
    pub local: Option<PathBuf>,
    /// Relative path in the repository, without `.`, `..` or a trailing `/`.
    pub link: String,
    /// Both are files.
    pub file: bool,
}

/// Why a services file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not TOML, or not Gitopper's keys.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's report (with the line).
        message: String,
    },
    /// A service lacks something or has something wrong.
    #[error("validating {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Reads and checks the services file at `path`.
pub fn read(path: &Path) -> Result<File, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file = parse(&text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })?;
    file.validate().map_err(|message| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    })?;
    Ok(file)
}

/// Parses the text of a services file: strictly first (so that errors name
/// the line), then with keys folded to lower case, as go-toml matches them.
pub fn parse(text: &str) -> Result<File, String> {
    let strict = match toml::from_str::<File>(text) {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    let table: toml::Table = toml::from_str(text).map_err(|_| strict.to_string())?;
    let folded = fold(toml::Value::Table(table))?;
    match folded.try_into::<File>() {
        Ok(f) => Ok(f),
        Err(_) => Err(strict.to_string()),
    }
}

/// Lower-cases every key of every table; two keys that then collide are an
/// error (go-toml would silently let one win).
fn fold(value: toml::Value) -> Result<toml::Value, String> {
    match value {
        toml::Value::Table(t) => {
            let mut out = toml::Table::new();
            for (k, v) in t {
                let lower = k.to_lowercase();
                if out.contains_key(&lower) {
                    return Err(format!("key {k:?} is given twice (keys match case-insensitively)"));
                }
                out.insert(lower, fold(v)?);
            }
            Ok(toml::Value::Table(out))
        }
        toml::Value::Array(a) => Ok(toml::Value::Array(a.into_iter().map(fold).collect::<Result<_, _>>()?)),
        other => Ok(other),
    }
}

impl File {
    /// Gitopper's checks of every entry (whichever machine it is for), and
    /// ours: links are relative paths inside the repository, and at most
    /// one kind of action per service.
    pub fn validate(&self) -> Result<(), String> {
        for (i, entry) in self.services.iter().enumerate() {
            let e = self.merged(entry);
            if e.machine.is_empty() {
                return Err(format!("service #{i} has an empty machine name"));
            }
            let what = format!("service #{i} ({:?} on {:?})", e.service, e.machine);
            if e.upstream.is_empty() {
                return Err(format!("{what} has an empty upstream"));
            }
            if e.mount.is_empty() {
                return Err(format!("{what} has an empty mount"));
            }
            if e.service.is_empty() {
                return Err(format!("{what} has an empty service"));
            }
            if entry.keys.is_some() {
                return Err(format!("{what}: keys belong in [global]"));
            }
            if e.service.contains('/') || e.service == "." || e.service == ".." {
                return Err(format!("{what}: a service name is a directory name, without '/'"));
            }
            action_of(&e).map_err(|m| format!("{what}: {m}"))?;
            for d in &e.dirs {
                clean_link(&d.link).map_err(|m| format!("{what}: {m}"))?;
            }
        }
        Ok(())
    }

    /// `entry` with `[global]`'s upstream, mount and branch where it has
    /// none, and `main` as the branch when neither names one.
    pub fn merged(&self, entry: &Entry) -> Entry {
        let mut e = entry.clone();
        let or = |v: &mut String, g: &str| {
            if v.is_empty() {
                *v = g.to_string();
            }
        };
        or(&mut e.upstream, &self.global.upstream);
        or(&mut e.mount, &self.global.mount);
        or(&mut e.branch, &self.global.branch);
        or(&mut e.branch, DEFAULT_BRANCH);
        e
    }

    /// Keys set in `[global]` that Gitopper accepts there but does not
    /// inherit (they do nothing): for a warning.
    pub fn ignored_global_keys(&self) -> Vec<&'static str> {
        let g = &self.global;
        let set = [
            ("service", !g.service.is_empty()),
            ("machine", !g.machine.is_empty()),
            ("package", !g.package.is_empty()),
            ("user", !g.user.is_empty()),
            ("action", !g.action.is_empty()),
            ("dirs", !g.dirs.is_empty()),
            ("command", !g.command.is_empty()),
            ("pidfile", !g.pidfile.is_empty()),
            ("signal", !g.signal.is_empty()),
        ];
        set.into_iter().filter(|(_, s)| *s).map(|(k, _)| k).collect()
    }

    /// The services whose machine is one of `hostnames`, merged and
    /// checked; a service name twice for this machine is an error.
    /// Relative `local` paths are taken relative to `cwd` (as Gitopper
    /// does, through the process's directory).
    pub fn for_machine(&self, hostnames: &[String], cwd: &Path) -> Result<Vec<Service>, String> {
        let mut out: Vec<Service> = Vec::new();
        let mut seen = BTreeMap::new();
        for entry in &self.services {
            if !hostnames.contains(&entry.machine) {
                continue;
            }
            let e = self.merged(entry);
            if seen.insert(e.service.clone(), ()).is_some() {
                return Err(format!(
                    "service {:?} is listed twice for this machine ({})",
                    e.service,
                    hostnames.join(", ")
                ));
            }
            out.push(service_of(&e, cwd)?);
        }
        Ok(out)
    }

    /// Every machine of every service entry, as Gitopper's `/list/machine`
    /// lists them (one per entry, in file order).
    pub fn machines(&self) -> Vec<String> {
        self.services.iter().map(|e| e.machine.clone()).collect()
    }
}

fn service_of(e: &Entry, cwd: &Path) -> Result<Service, String> {
    let mut dirs = Vec::new();
    for d in &e.dirs {
        let link = clean_link(&d.link)?;
        let local = if d.local.is_empty() {
            None
        } else {
            let p = Path::new(&d.local);
            Some(if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) })
        };
        dirs.push(Link {
            local,
            link,
            file: d.file,
        });
    }
    Ok(Service {
        name: e.service.clone(),
        machine: e.machine.clone(),
        upstream: e.upstream.clone(),
        branch: e.branch.clone(),
        user: (!e.user.is_empty()).then(|| e.user.clone()),
        package: (!e.package.is_empty()).then(|| e.package.clone()),
        checkout: Path::new(&e.mount).join(&e.service),
        dirs,
        action: action_of(e)?,
    })
}

fn action_of(e: &Entry) -> Result<Action, String> {
    let kinds = [!e.action.is_empty(), !e.command.is_empty(), !e.pidfile.is_empty()];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err("give one of action, command and pidfile".into());
    }
    if !e.signal.is_empty() && e.pidfile.is_empty() {
        return Err("signal needs a pidfile".into());
    }
    if !e.command.is_empty() {
        if e.command[0].is_empty() {
            return Err("command's first element is the program, and is empty".into());
        }
        return Ok(Action::Command(e.command.clone()));
    }
    if !e.pidfile.is_empty() {
        let name = if e.signal.is_empty() { "HUP" } else { e.signal.as_str() };
        let signal = crate::sync::signal_number(name)
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("signal {name:?} is not a signal name (HUP, SIGUSR1) or number"))?;
        return Ok(Action::Signal {
            pidfile: PathBuf::from(&e.pidfile),
            signal,
            name: name.to_string(),
        });
    }
    if e.action.contains(char::is_whitespace) {
        return Err(format!(
            "action {:?} is one systemctl verb (reload, restart); use command for a command line",
            e.action
        ));
    }
    Ok(Action::Systemctl { verb: e.action.clone() })
}

/// A link path as a clean relative path: `./a/b/` is `a/b`; empty, absolute
/// and `..` are refused (a link must stay inside the repository).
pub fn clean_link(link: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in Path::new(link).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!("link {link:?} must be a path inside the repository"));
            }
        }
    }
    if parts.is_empty() {
        return Err(format!("link {link:?} names no path in the repository"));
    }
    if parts.iter().any(|p| p == ".git") {
        return Err(format!("link {link:?} may not name .git"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gitopper's own example config (its README and config.toml), keys and
    /// packages included: it must parse unchanged.
    const GITOPPER: &str = r#"
[global]
upstream = "https://github.com/miekg/gitopper-config"
branch = "main"
mount = "/tmp/gitopper"
keys = [
	{ path = "keys/miek_id_ed25519_gitopper.pub", ro = true },
	{ path = "/local/home/miek/.ssh/id_ed25519_gitopper.pub"},
]

[[services]]
machine = "localhost"
service = "prometheus"
user = "prometheus"
package = "prometheus"
action = "reload"
dirs = [
	{ local = "/etc/prometheus", link = "prometheus/etc" },
]

# docker compose needs to work with systemd template files
[[services]]
machine = "docker-test"
service = "docker-compose@caddy"
user = "docker"
#package = "docker-compose"
action = "reload"
dirs = [
	{ local = "/tmp/docker-compose.yml", link = "docker-compose/caddy/docker-compose.yml", file = true },
]
"#;

    #[test]
    fn gitoppers_example_parses_and_merges() -> Result<(), String> {
        let f = parse(GITOPPER)?;
        f.validate()?;
        assert_eq!(f.global.keys.as_ref().map(Vec::len), Some(2));
        assert_eq!(f.machines(), ["localhost", "docker-test"]);
        let here = f.for_machine(&["localhost".into()], Path::new("/"))?;
        assert_eq!(here.len(), 1);
        let s = &here[0];
        assert_eq!(s.name, "prometheus");
        assert_eq!(s.upstream, "https://github.com/miekg/gitopper-config");
        assert_eq!(s.branch, "main");
        assert_eq!(s.checkout, Path::new("/tmp/gitopper/prometheus"));
        assert_eq!(s.user.as_deref(), Some("prometheus"));
        assert_eq!(s.package.as_deref(), Some("prometheus"));
        assert_eq!(s.action, Action::Systemctl { verb: "reload".into() });
        assert_eq!(
            s.dirs,
            [Link {
                local: Some("/etc/prometheus".into()),
                link: "prometheus/etc".into(),
                file: false
            }]
        );
        let docker = f.for_machine(&["docker-test".into()], Path::new("/"))?;
        assert!(docker[0].dirs[0].file);
        assert!(f.for_machine(&["elsewhere".into()], Path::new("/"))?.is_empty());
        Ok(())
    }

    #[test]
    fn unknown_keys_are_errors_with_the_line() {
        // Gitopper's own test of an invalid config.
        let bad = "[global]\nupstream = \"u\"\nmount = \"/tmp\"\n\n[[services]]\nmachine = \"localhost\"\nbrokenbranch = \"main\"\nservice = \"prometheus\"\n";
        let e = parse(bad).expect_err("unknown key");
        assert!(e.contains("brokenbranch") && e.contains("line 7"), "{e}");
        for bad in [
            "[global]\nkeyz = []\n",
            "[[services]]\ndirs = [{ local = \"/a\", link = \"b\", files = true }]\n",
            "[global]\nkeys = [{ path = \"k\", rw = true }]\n",
            "[other]\n",
            "[[services]]\nmachine = 3\n",
            "[[services]]\ndirs = [{ link = \"b\", file = \"yes\" }]\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_match_case_insensitively_as_in_go_toml() -> Result<(), String> {
        let f = parse(
            "[Global]\nUpstream = \"u\"\nMOUNT = \"/m\"\n[[Services]]\nMachine = \"h\"\nService = \"s\"\nDirs = [{ Local = \"/l\", Link = \"x\", File = true }]\n",
        )?;
        f.validate()?;
        let s = f.for_machine(&["h".into()], Path::new("/"))?;
        assert_eq!(s[0].checkout, Path::new("/m/s"));
        assert!(s[0].dirs[0].file);
        let e = parse("[[services]]\nmachine = \"a\"\nMachine = \"b\"\n").expect_err("twice");
        assert!(e.contains("twice"), "{e}");
        Ok(())
    }

    #[test]
    fn gitoppers_validation_and_ours() {
        let base = "[global]\nupstream = \"u\"\nmount = \"/m\"\n";
        let cases = [
            ("[[services]]\nservice = \"s\"\n", "empty machine"),
            ("[[services]]\nmachine = \"h\"\n", "empty service"),
            ("[[services]]\nmachine = \"h\"\nservice = \"a/b\"\n", "directory name"),
            (
                "[[services]]\nmachine = \"h\"\nservice = \"s\"\nkeys = []\n",
                "keys belong in [global]",
            ),
            (
                "[[services]]\nmachine = \"h\"\nservice = \"s\"\naction = \"reload\"\ncommand = [\"x\"]\n",
                "one of action",
            ),
            (
                "[[services]]\nmachine = \"h\"\nservice = \"s\"\nsignal = \"HUP\"\n",
                "needs a pidfile",
            ),
            (
                "[[services]]\nmachine = \"h\"\nservice = \"s\"\npidfile = \"/p\"\nsignal = \"NOPE\"\n",
                "not a signal",
            ),
            (
                "[[services]]\nmachine = \"h\"\nservice = \"s\"\naction = \"kill -HUP 1\"\n",
                "one systemctl verb",
            ),
            (
                "[[services]]\nmachine = \"h\"\nservice = \"s\"\ndirs = [{ link = \"../x\" }]\n",
                "inside the repository",
            ),
            (
                "[[services]]\nmachine = \"h\"\nservice = \"s\"\ndirs = [{ link = \"/abs\" }]\n",
                "inside the repository",
            ),
            (
                "[[services]]\nmachine = \"h\"\nservice = \"s\"\ndirs = [{ link = \"\" }]\n",
                "names no path",
            ),
        ];
        for (svc, want) in cases {
            let text = format!("{base}{svc}");
            let e = parse(&text).and_then(|f| f.validate()).expect_err(svc);
            assert!(e.contains(want), "{svc}: {e}");
        }
        let no_upstream = parse("[[services]]\nmachine = \"h\"\nservice = \"s\"\nmount = \"/m\"\n")
            .and_then(|f| f.validate())
            .expect_err("upstream");
        assert!(no_upstream.contains("empty upstream"), "{no_upstream}");
    }

    #[test]
    fn our_actions_and_overrides() -> Result<(), String> {
        let f = parse(
            r#"
[global]
upstream = "u"
mount = "/m"
branch = "stable"
action = "ignored"
[[services]]
machine = "h"
service = "a"
command = ["/bin/sh", "-c", "echo hi"]
dirs = [{ local = "rel/x", link = "./a/etc/" }]
[[services]]
machine = "h"
service = "b"
branch = "canary"
mount = "/other"
upstream = "v"
pidfile = "/run/b.pid"
signal = "USR1"
[[services]]
machine = "h"
service = "c"
pidfile = "/run/c.pid"
"#,
        )?;
        f.validate()?;
        assert_eq!(f.ignored_global_keys(), ["action"]);
        let s = f.for_machine(&["h".into()], Path::new("/cwd"))?;
        assert_eq!(
            s[0].action,
            Action::Command(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(s[0].branch, "stable");
        assert_eq!(s[0].dirs[0].link, "a/etc");
        assert_eq!(s[0].dirs[0].local.as_deref(), Some(Path::new("/cwd/rel/x")));
        assert_eq!((s[1].branch.as_str(), s[1].upstream.as_str()), ("canary", "v"));
        assert_eq!(s[1].checkout, Path::new("/other/b"));
        assert_eq!(
            s[1].action,
            Action::Signal {
                pidfile: "/run/b.pid".into(),
                signal: nix::sys::signal::Signal::SIGUSR1 as i32,
                name: "USR1".into()
            }
        );
        assert!(matches!(&s[2].action, Action::Signal { signal: 1, .. }));
        Ok(())
    }

    #[test]
    fn a_service_twice_on_one_machine_is_refused() -> Result<(), String> {
        let f = parse(
            "[global]\nupstream = \"u\"\nmount = \"/m\"\n[[services]]\nmachine = \"a\"\nservice = \"s\"\n[[services]]\nmachine = \"b\"\nservice = \"s\"\n",
        )?;
        f.validate()?;
        assert_eq!(f.for_machine(&["a".into()], Path::new("/"))?.len(), 1);
        let e = f
            .for_machine(&["a".into(), "b".into()], Path::new("/"))
            .expect_err("twice");
        assert!(e.contains("twice"), "{e}");
        Ok(())
    }

    #[test]
    fn branch_defaults_to_main() -> Result<(), String> {
        let f = parse("[global]\nupstream = \"u\"\nmount = \"/m\"\n[[services]]\nmachine = \"h\"\nservice = \"s\"\n")?;
        assert_eq!(f.for_machine(&["h".into()], Path::new("/"))?[0].branch, "main");
        Ok(())
    }

    #[test]
    fn links_are_cleaned() {
        assert_eq!(clean_link("a/b/").as_deref(), Ok("a/b"));
        assert_eq!(clean_link("./a//b").as_deref(), Ok("a/b"));
        assert!(clean_link("a/../b").is_err());
        assert!(clean_link(".git/config").is_err());
    }
}
