//! What a service is told when its files change, and what it needs before
//! its first checkout.
//!
//! The action is Gitopper's `systemctl` (`systemctl daemon-reload`, then
//! `systemctl <action> <service>`; when the service's links were just made,
//! `systemctl start <service>` instead), or ours: a signal to the process
//! whose pid a file holds, or a command (an argument vector, no shell, run
//! in the checkout with `GITSYNC_SERVICE`, `GITSYNC_HASH` and
//! `GITSYNC_PHASE` = `start`, `change` or `rollback` in its environment).
//! Actions run as git-sync's own user (root, as Gitopper runs systemctl):
//! the services file is trusted as a root-owned configuration is.
//!
//! `package` is installed with the machine's package manager (apt-get on
//! Debian and its derivatives, pacman on Arch, by `/etc/os-release`), as
//! Gitopper does; on other systems it is not installed, with a warning.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokio::time::Instant;

use super::config::Action;
use crate::sync::git::{CmdError, Spec};
use crate::sync::log::Log;

/// Why the action runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The service's links were just made.
    Start,
    /// Its linked files changed.
    Change,
    /// It was rolled back.
    Rollback,
}

impl Phase {
    /// `start`, `change`, `rollback`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Change => "change",
            Self::Rollback => "rollback",
        }
    }
}

/// The action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// A command (systemctl, the package manager, the service's) failed.
    #[error(transparent)]
    Command(#[from] CmdError),
    /// The pid file could not be used.
    #[error("signal {signal} to the pid in {pidfile}: {reason}")]
    Signal {
        /// The pid file.
        pidfile: PathBuf,
        /// The signal's name.
        signal: String,
        /// What went wrong.
        reason: String,
    },
    /// Installing a package needs root.
    #[error("installing package {0:?} needs root")]
    NotRoot(String),
}

/// Where and how actions run.
pub struct Runner {
    /// The `systemctl` program.
    pub systemctl: String,
    /// Logged through.
    pub log: Log,
}

impl Runner {
    async fn command(
        &self,
        program: &str,
        args: &[&str],
        cwd: Option<&Path>,
        env: &[(OsString, OsString)],
        deadline: Instant,
    ) -> Result<(), CmdError> {
        crate::sync::git::run(
            &self.log,
            Spec {
                program,
                args,
                cwd,
                env,
                stdin: None,
                deadline,
            },
        )
        .await
        .map(|_| ())
    }

    /// Runs `action` for `service` (checked out at `checkout`, at `hash`).
    pub async fn run(
        &self,
        action: &Action,
        service: &str,
        checkout: &Path,
        hash: &str,
        phase: Phase,
        deadline: Instant,
    ) -> Result<(), ActionError> {
        match action {
            Action::Nothing => Ok(()),
            Action::Systemctl { verb } => {
                self.command(&self.systemctl, &["daemon-reload"], None, &[], deadline)
                    .await?;
                let verb = if phase == Phase::Start { "start" } else { verb.as_str() };
                if !verb.is_empty() {
                    self.command(&self.systemctl, &[verb, service], None, &[], deadline)
                        .await?;
                }
                Ok(())
            }
            Action::Signal { pidfile, signal, name } => {
                let fail = |reason: String| ActionError::Signal {
                    pidfile: pidfile.clone(),
                    signal: name.clone(),
                    reason,
                };
                let text = std::fs::read_to_string(pidfile).map_err(|e| fail(e.to_string()))?;
                let pid: i32 = text
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse().ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| fail(format!("{:?} is not a pid", text.trim())))?;
                let sig = nix::sys::signal::Signal::try_from(*signal).map_err(|e| fail(e.to_string()))?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|e| fail(e.to_string()))?;
                self.log.info(
                    1,
                    "signalled",
                    &[
                        ("service", service.into()),
                        ("pid", pid.into()),
                        ("signal", name.clone().into()),
                    ],
                );
                Ok(())
            }
            Action::Command(argv) => {
                let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
                let env: Vec<(OsString, OsString)> = vec![
                    ("GITSYNC_SERVICE".into(), service.into()),
                    ("GITSYNC_HASH".into(), hash.into()),
                    ("GITSYNC_PHASE".into(), phase.as_str().into()),
                ];
                Ok(self.command(&argv[0], &args, Some(checkout), &env, deadline).await?)
            }
        }
    }

    /// `systemctl enable <service>`, for a template unit (`name@instance`)
    /// that systemctl is to drive (Gitopper's).
    pub async fn enable_template(&self, action: &Action, service: &str, deadline: Instant) -> Result<(), ActionError> {
        if matches!(action, Action::Systemctl { .. }) && service.contains('@') {
            self.command(&self.systemctl, &["enable", service], None, &[], deadline)
                .await?;
        }
        Ok(())
    }

    /// Installs `package` with the package manager `os_release` (the text
    /// of `/etc/os-release`) implies; `Ok(false)` when none is known.
    pub async fn install(&self, package: &str, os_release: &str, deadline: Instant) -> Result<bool, ActionError> {
        let Some(manager) = package_manager(os_release) else {
            return Ok(false);
        };
        if !nix::unistd::geteuid().is_root() {
            return Err(ActionError::NotRoot(package.to_string()));
        }
        let (program, args): (&str, Vec<&str>) = match manager {
            Manager::Apt => (
                "apt-get",
                vec!["install", "-qq", "--assume-yes", "--no-install-recommends", package],
            ),
            Manager::Pacman => ("pacman", vec!["-S", "--noconfirm", package]),
        };
        let env = [("DEBIAN_FRONTEND".into(), "noninteractive".into())];
        self.command(program, &args, None, &env, deadline).await?;
        Ok(true)
    }
}

/// A package manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    /// apt-get.
    Apt,
    /// pacman.
    Pacman,
}

/// The package manager of the system `/etc/os-release` describes, by `ID`
/// and then `ID_LIKE`.
pub fn package_manager(os_release: &str) -> Option<Manager> {
    let field = |name: &str| {
        os_release.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    };
    let ids = field("ID").into_iter().chain(
        field("ID_LIKE")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    for id in ids {
        match id.as_str() {
            "debian" | "ubuntu" => return Some(Manager::Apt),
            "arch" => return Some(Manager::Pacman),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runner(systemctl: &str) -> Runner {
        Runner {
            systemctl: systemctl.into(),
            log: Log::new(0, None),
        }
    }

    fn deadline() -> Instant {
        crate::sync::git::deadline_in(Duration::from_secs(30))
    }

    #[test]
    fn package_managers_by_os_release() {
        let cases = [
            ("ID=debian\n", Some(Manager::Apt)),
            ("NAME=\"Ubuntu\"\nID=ubuntu\n", Some(Manager::Apt)),
            ("ID=raspbian\nID_LIKE=debian\n", Some(Manager::Apt)),
            ("ID=\"arch\"\n", Some(Manager::Pacman)),
            ("ID=fedora\nID_LIKE=\"rhel centos\"\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(package_manager(text), want, "{text}");
        }
    }

    #[tokio::test]
    async fn systemctl_command_and_signal() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("calls");
        let fake = dir.path().join("systemctl");
        std::fs::write(&fake, format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display()))?;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
        let r = runner(&fake.to_string_lossy());
        let reload = Action::Systemctl { verb: "reload".into() };
        r.run(&reload, "web", dir.path(), "h", Phase::Change, deadline())
            .await?;
        r.run(&reload, "web", dir.path(), "h", Phase::Start, deadline()).await?;
        let none = Action::Systemctl { verb: String::new() };
        r.run(&none, "web", dir.path(), "h", Phase::Change, deadline()).await?;
        r.enable_template(&reload, "compose@caddy", deadline()).await?;
        r.enable_template(&reload, "plain", deadline()).await?;
        assert_eq!(
            std::fs::read_to_string(&log)?,
            "daemon-reload\nreload web\ndaemon-reload\nstart web\ndaemon-reload\nenable compose@caddy\n"
        );

        let out = dir.path().join("out");
        let cmd = Action::Command(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo \"$GITSYNC_SERVICE $GITSYNC_HASH $GITSYNC_PHASE $(pwd)\" >> {}",
                out.display()
            ),
        ]);
        r.run(&cmd, "api", dir.path(), "abc", Phase::Rollback, deadline())
            .await?;
        assert_eq!(
            std::fs::read_to_string(&out)?,
            format!("api abc rollback {}\n", dir.path().canonicalize()?.display())
        );
        let failing = Action::Command(vec!["sh".into(), "-c".into(), "echo bad >&2; exit 3".into()]);
        let e = r
            .run(&failing, "api", dir.path(), "abc", Phase::Change, deadline())
            .await;
        assert!(e.is_err_and(|e| e.to_string().contains("bad")));

        let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
        let pidfile = dir.path().join("pid");
        std::fs::write(&pidfile, format!("{}\n", child.id()))?;
        let term = Action::Signal {
            pidfile: pidfile.clone(),
            signal: nix::sys::signal::Signal::SIGTERM as i32,
            name: "TERM".into(),
        };
        r.run(&term, "s", dir.path(), "h", Phase::Change, deadline()).await?;
        let status = child.wait()?;
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(nix::sys::signal::Signal::SIGTERM as i32));
        std::fs::write(&pidfile, "garbage")?;
        let e = r.run(&term, "s", dir.path(), "h", Phase::Change, deadline()).await;
        assert!(e.is_err_and(|e| e.to_string().contains("not a pid")));
        Ok(())
    }
}
