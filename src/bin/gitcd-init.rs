//! gitcd-init: build or catch up gitcd's metadata for the history of the
//! data ref (the same as `gitcd init`). Idempotent.

use std::process::ExitCode;

use clap::Parser;
use trishanku::cli::store::StoreArgs;
use trishanku::cli::{self, LogArgs};

#[derive(Parser)]
#[command(
    name = "gitcd-init",
    version,
    about = "Build or catch up gitcd metadata for existing history"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    store: StoreArgs,
}

fn main() -> ExitCode {
    let cli: Cli = cli::parse();
    cli.log.init();
    trishanku::cli::store::run_init(&cli.store)
}
