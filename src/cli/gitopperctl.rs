//! `git-sync gitopperctl`: the client of the services mode's API, with
//! Gitopper's `gitopperctl` commands (`list machines @host`, `list service
//! @host [service]`, `do freeze|unfreeze|pull @host service`, `do rollback
//! @host service hash`, and the same `do` commands without `do`). Each flag
//! has a `GITOPPERCTL_*` twin.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use common::gitopper::client::{ClientConfig, Command};

/// The client's flags and command.
#[derive(Parser, Debug)]
#[command(
    name = "git-sync gitopperctl",
    about = "Query and steer the services of a machine running git-sync --services"
)]
pub struct CtlArgs {
    /// A file holding the API's bearer token (read at each call).
    #[arg(long, env = "GITOPPERCTL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A client certificate (PEM) for mTLS, with --key-file.
    #[arg(long, env = "GITOPPERCTL_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "GITOPPERCTL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The CA (PEM) that signed the API's certificate (default: the system's).
    #[arg(long, env = "GITOPPERCTL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The API's port when @machine names none.
    #[arg(long, env = "GITOPPERCTL_PORT", default_value = "2222")]
    pub port: u16,
    /// Print the JSON answer as it came (Gitopper's -m).
    #[arg(short = 'm', long = "machine-readable", env = "GITOPPERCTL_MACHINE_READABLE")]
    pub json: bool,
    /// How long one call may take (500ms, 30s, 2m).
    #[arg(long, env = "GITOPPERCTL_TIMEOUT", default_value = "150s", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: Top,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Top {
    /// List machines, services or one service.
    #[command(visible_aliases = ["ls", "l"])]
    List {
        /// What to list.
        #[command(subcommand)]
        what: ListWhat,
    },
    /// Change a service's state on a machine.
    #[command(visible_alias = "d")]
    Do {
        /// The change.
        #[command(subcommand)]
        what: DoWhat,
    },
    /// Same as `do freeze`.
    Freeze(OnService),
    /// Same as `do unfreeze`.
    Unfreeze(OnService),
    /// Same as `do rollback`.
    Rollback(OnCommit),
    /// Same as `do pull`.
    Pull(OnService),
}

/// `list` what.
#[derive(Subcommand, Debug)]
pub enum ListWhat {
    /// Every machine of the services file: list machines @machine
    #[command(visible_aliases = ["m", "machine"])]
    Machines {
        /// @machine, @machine:port or @https://machine:port
        at: String,
    },
    /// The machine's services, or one: list service @machine [service]
    #[command(visible_aliases = ["s", "services"])]
    Service {
        /// @machine, @machine:port or @https://machine:port
        at: String,
        /// One service.
        service: Option<String>,
    },
}

/// `do` what.
#[derive(Subcommand, Debug)]
pub enum DoWhat {
    /// Hold the service at its commit: do freeze @machine service
    #[command(visible_alias = "f")]
    Freeze(OnService),
    /// Track its branch again: do unfreeze @machine service
    #[command(visible_alias = "u")]
    Unfreeze(OnService),
    /// Pin it to a commit, then hold it: do rollback @machine service hash
    #[command(visible_alias = "r")]
    Rollback(OnCommit),
    /// Pull now: do pull @machine service
    #[command(visible_alias = "p")]
    Pull(OnService),
}

/// @machine service
#[derive(clap::Args, Debug)]
pub struct OnService {
    /// @machine, @machine:port or @https://machine:port
    pub at: String,
    /// The service.
    pub service: String,
}

/// @machine service hash
#[derive(clap::Args, Debug)]
pub struct OnCommit {
    /// @machine, @machine:port or @https://machine:port
    pub at: String,
    /// The service.
    pub service: String,
    /// The commit (4 to 40 hex digits).
    pub hash: String,
}

/// Whether `argv` asks for the client: `git-sync gitopperctl ...`, or the
/// binary run under the name `gitopperctl` (a symlink).
pub fn wanted(argv: &[std::ffi::OsString]) -> bool {
    let called = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "gitopperctl");
    called || argv.get(1).is_some_and(|a| a == "gitopperctl")
}

/// The client's config, the machine (without its `@`) and the command.
pub fn parse(argv: &[std::ffi::OsString]) -> Result<(ClientConfig, String, Command), clap::Error> {
    let called = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "gitopperctl");
    let rest = if called {
        &argv[1..]
    } else {
        argv.get(2..).unwrap_or_default()
    };
    let args = CtlArgs::try_parse_from(std::iter::once("gitopperctl".into()).chain(rest.iter().cloned()))?;
    let (at, command) = match args.command {
        Top::List {
            what: ListWhat::Machines { at },
        } => (at, Command::ListMachines),
        Top::List {
            what: ListWhat::Service { at, service },
        } => (at, Command::ListService(service)),
        Top::Do {
            what: DoWhat::Freeze(s),
        }
        | Top::Freeze(s) => (s.at, Command::Freeze(s.service)),
        Top::Do {
            what: DoWhat::Unfreeze(s),
        }
        | Top::Unfreeze(s) => (s.at, Command::Unfreeze(s.service)),
        Top::Do { what: DoWhat::Pull(s) } | Top::Pull(s) => (s.at, Command::Pull(s.service)),
        Top::Do {
            what: DoWhat::Rollback(c),
        }
        | Top::Rollback(c) => (c.at, Command::Rollback(c.service, c.hash)),
    };
    let Some(machine) = at.strip_prefix('@') else {
        return Err(CtlArgs::command_for_error().error(
            clap::error::ErrorKind::InvalidValue,
            format!("expected @<machine>, not {at:?}"),
        ));
    };
    let config = ClientConfig {
        token_file: args.token_file,
        cert_file: args.cert_file,
        key_file: args.key_file,
        ca_file: args.ca_file,
        port: args.port,
        json: args.json,
        timeout: args.timeout,
    };
    Ok((config, machine.to_string(), command))
}

impl CtlArgs {
    fn command_for_error() -> clap::Command {
        <Self as clap::CommandFactory>::command()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<(ClientConfig, String, Command), clap::Error> {
        let argv: Vec<std::ffi::OsString> = ["git-sync", "gitopperctl"]
            .iter()
            .chain(args)
            .map(|s| s.into())
            .collect();
        parse(&argv)
    }

    #[test]
    fn gitoppers_grammar_and_shortcuts() -> Result<(), clap::Error> {
        let cases: &[(&[&str], &str, Command)] = &[
            (&["list", "machines", "@h"], "h", Command::ListMachines),
            (&["ls", "m", "@h"], "h", Command::ListMachines),
            (&["l", "service", "@h:1"], "h:1", Command::ListService(None)),
            (
                &["list", "s", "@h", "web"],
                "h",
                Command::ListService(Some("web".into())),
            ),
            (&["do", "freeze", "@h", "web"], "h", Command::Freeze("web".into())),
            (&["d", "u", "@h", "web"], "h", Command::Unfreeze("web".into())),
            (
                &["do", "r", "@h", "web", "abcd"],
                "h",
                Command::Rollback("web".into(), "abcd".into()),
            ),
            (&["do", "p", "@h", "web"], "h", Command::Pull("web".into())),
            (&["freeze", "@h", "web"], "h", Command::Freeze("web".into())),
            (
                &["rollback", "@http://127.0.0.1:9", "web", "abcd"],
                "http://127.0.0.1:9",
                Command::Rollback("web".into(), "abcd".into()),
            ),
        ];
        for (args, machine, want) in cases {
            let (_, m, c) = p(args)?;
            assert_eq!((m.as_str(), &c), (*machine, want), "{args:?}");
        }
        let (c, _, _) = p(&["-m", "--port", "9", "--timeout", "2s", "list", "m", "@h"])?;
        assert!(c.json);
        assert_eq!((c.port, c.timeout), (9, Duration::from_secs(2)));
        assert!(p(&["list", "m", "h"]).is_err(), "the machine needs its @");
        assert!(p(&["do", "rollback", "@h", "web"]).is_err(), "rollback needs a hash");
        assert!(wanted(&["/usr/bin/gitopperctl".into()]));
        assert!(wanted(&["git-sync".into(), "gitopperctl".into()]));
        assert!(!wanted(&["git-sync".into(), "--repo=x".into()]));
        Ok(())
    }
}
