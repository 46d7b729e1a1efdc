//! git-sync: a drop-in for kubernetes/git-sync v4. Parses git-sync's flags
//! and environment, runs `common::sync::run`, and exits as git-sync does:
//! 0 on success (and for --help, --version, --man), 1 for invalid flags and
//! runtime failures, 2 when a flag cannot be parsed; as PID 1 it re-runs
//! itself as a child and exits with the child's code (127 if that fails).
//!
//! With `--services FILE` it runs Gitopper's per-service GitOps instead
//! (`common::gitopper::run`): exit 0 on SIGINT/SIGTERM or with no service
//! for this machine, 2 on SIGHUP (Gitopper's), 1 on errors.
//! `git-sync gitopperctl ...` is that mode's API client (usage errors 64,
//! refused or failed calls 1).

use std::io::Write as _;
use std::process::ExitCode;

use common::sync::{self, Finished};
use trishanku::cli::git_sync::{self as flags, Parsed};
use trishanku::cli::gitopperctl;

fn main() -> ExitCode {
    if sync::reap::is_pid1() {
        eprintln!("INFO: detected pid 1, running init handler");
        return match sync::reap::rerun_as_child() {
            Ok(code) => exit(code),
            Err(e) => {
                eprintln!("FATAL: unhandled pid1 error: {e}");
                exit(127)
            }
        };
    }
    let argv: Vec<_> = std::env::args_os().collect();
    if gitopperctl::wanted(&argv) {
        return ctl(&argv);
    }
    let lookup = |name: &str| std::env::var(name).ok();
    let parsed = flags::parse(&argv, &lookup, &mut |w| eprintln!("{w}"));
    let (config, log) = match parsed {
        Parsed::Print(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Parsed::Usage(msg, code) => {
            eprintln!("{msg}");
            eprint!("{}", flags::usage());
            eprintln!("{msg}");
            return exit(code);
        }
        Parsed::Fatal(msg) => {
            eprintln!("{msg}");
            return exit(1);
        }
        Parsed::Invalid(msg, log) => {
            eprintln!("{msg}");
            eprint!("{}", flags::usage());
            eprintln!("{msg}");
            log.export_error(&msg);
            return exit(1);
        }
        Parsed::Services(config, log) => {
            let Some(runtime) = runtime(&log) else { return exit(1) };
            let result = runtime.block_on(common::gitopper::run(*config, log));
            runtime.shutdown_background();
            return exit(result.map_or(1, |f| i32::from(f.code())));
        }
        Parsed::Run(config, log) => (*config, log),
    };
    let Some(runtime) = runtime(&log) else { return exit(1) };
    let result = runtime.block_on(sync::run(config, log));
    // Hook commands still running are not waited for (git-sync exits too).
    runtime.shutdown_background();
    match result {
        Ok(Finished::OneTime { hooks_ok: true }) | Ok(Finished::Interrupted) => ExitCode::SUCCESS,
        Ok(Finished::OneTime { hooks_ok: false }) | Err(_) => exit(1),
    }
}

fn runtime(log: &flags::Log) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            log.error(Some(&e), "FATAL: can't start the async runtime", &[]);
            None
        }
    }
}

/// `git-sync gitopperctl`: one call, its answer on stdout.
fn ctl(argv: &[std::ffi::OsString]) -> ExitCode {
    let (config, machine, command) = match gitopperctl::parse(argv) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { exit(64) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: can't start the async runtime: {e}");
            return exit(1);
        }
    };
    let mut out = std::io::stdout();
    match runtime.block_on(common::gitopper::client::run(&config, &machine, &command, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", sync::log::error_chain(&e));
            exit(1)
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
