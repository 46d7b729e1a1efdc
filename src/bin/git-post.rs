//! git-post: push the prepared branch pair to the remote (an init
//! container), retrying with exponential backoff and jitter; exit 0 once
//! pushed, 1 with one clear line when it gives up.

use std::process::ExitCode;

use clap::Parser;
use trishanku::cli::publish::PublishArgs;
use trishanku::cli::{self, EXIT_FAILURE, LogArgs};

#[derive(Parser)]
#[command(name = "git-post", version, about = "Push a branch pair to its remote")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    publish: PublishArgs,
}

fn main() -> ExitCode {
    let cli: Cli = cli::parse();
    cli.log.init();
    let config = cli.publish.to_config().unwrap_or_else(|e| cli::usage_error(&e));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(common::publish::publish(&config)) {
        Ok(outcome) => {
            println!("{}: {outcome:?}", common::remote::redact(&config.remote.url));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", common::error::chain(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
