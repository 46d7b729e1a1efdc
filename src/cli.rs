//! Flag definitions and their conversion into `common` config structs, by
//! concern: where the store is (`store`), how gitcd serves (`serve`). What
//! every binary shares (exit codes, parsing, durations, logging) is here.

pub mod merge;
pub mod prepare;
pub mod publish;
pub mod pull;
pub mod remote;
#[cfg(feature = "grpc")]
pub mod serve;
pub mod store;

use std::time::Duration;

use clap::Args;

/// Exit code for invalid flags (sysexits' EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for runtime failures.
pub const EXIT_FAILURE: u8 = 1;

/// Parses durations such as `500ms`, `2s`, `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 2s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration like 500ms, 2s or 1m")),
    }
}

/// Parses flags; prints help or version and exits 0, or prints the error
/// and exits 64.
pub fn parse<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(t) => t,
        Err(e) => {
            let code = if e.use_stderr() { i32::from(EXIT_USAGE) } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// Reports a usage error and exits 64.
pub fn usage_error(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(i32::from(EXIT_USAGE));
}

/// The logging flag every binary takes.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log format: plain or json.
    #[arg(long, env = "LOG_FORMAT", global = true, default_value = "plain", value_parser = ["plain", "json"])]
    pub log_format: String,
}

impl LogArgs {
    /// Installs the logger.
    pub fn init(&self) {
        common::telemetry::init(Some(&self.log_format));
    }
}
pub mod git_sync;
pub mod gitopperctl;
