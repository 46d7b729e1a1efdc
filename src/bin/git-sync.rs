//! git-sync: a drop-in for kubernetes/git-sync v4. Parses git-sync's flags
//! and environment, runs `common::sync::run`, and exits as git-sync does:
//! 0 on success (and for --help, --version, --man), 1 for invalid flags and
//! runtime failures, 2 when a flag cannot be parsed; as PID 1 it re-runs
//! itself as a child and exits with the child's code (127 if that fails).

use std::io::Write as _;
use std::process::ExitCode;

use common::sync::{self, Finished};
use trishanku::cli::git_sync::{self as flags, Parsed};

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
        Parsed::Run(config, log) => (*config, log),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log.error(Some(&e), "FATAL: can't start the async runtime", &[]);
            return exit(1);
        }
    };
    let result = runtime.block_on(sync::run(config, log));
    // Hook commands still running are not waited for (git-sync exits too).
    runtime.shutdown_background();
    match result {
        Ok(Finished::OneTime { hooks_ok: true }) | Ok(Finished::Interrupted) => ExitCode::SUCCESS,
        Ok(Finished::OneTime { hooks_ok: false }) | Err(_) => exit(1),
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
