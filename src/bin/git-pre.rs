//! git-pre: prepare a participant's repository (an init container): a new
//! bare repository, or a clone of the upstream with the remote configured
//! and the local branch pair created (restored from the remote's own pair
//! when there is one). Idempotent.

use std::process::ExitCode;

use clap::Parser;
use trishanku::cli::prepare::PrepareArgs;
use trishanku::cli::{self, EXIT_FAILURE, LogArgs};

#[derive(Parser)]
#[command(name = "git-pre", version, about = "Prepare a repository for gitcd")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    prepare: PrepareArgs,
}

fn main() -> ExitCode {
    let cli: Cli = cli::parse();
    cli.log.init();
    let config = cli.prepare.to_config().unwrap_or_else(|e| cli::usage_error(&e));
    match common::prepare::prepare(&config) {
        Ok(outcome) => {
            println!("{}: {} {outcome:?}", config.repo.display(), config.data_ref);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {}", config.repo.display(), common::error::chain(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
