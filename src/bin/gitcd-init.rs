//! gitcd-init: build or catch up gitcd's metadata for the history of the
//! data ref (the same as `gitcd init`). Idempotent.

use std::process::ExitCode;

use clap::Parser;
use trishanku::cli::{self, StoreArgs};

#[derive(Parser)]
#[command(
    name = "gitcd-init",
    version,
    about = "Build or catch up gitcd metadata for existing history"
)]
struct Cli {
    /// Log format: plain or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "plain", value_parser = ["plain", "json"])]
    log_format: String,
    #[command(flatten)]
    store: StoreArgs,
}

fn main() -> ExitCode {
    let cli: Cli = cli::parse();
    common::telemetry::init(Some(&cli.log_format));
    cli::run_init(&cli.store)
}
