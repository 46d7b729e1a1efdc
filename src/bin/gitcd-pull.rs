//! gitcd-pull: the automerge. Fetches every participant's branch, merges
//! them into its own branch (data and metadata together, so the branch can
//! be served by gitcd as it is), pushes; once or in a loop.

use std::process::ExitCode;

use clap::Parser;
use trishanku::cli::pull::PullArgs;
use trishanku::cli::{self, LogArgs};

#[derive(Parser)]
#[command(
    name = "gitcd-pull",
    version,
    about = "Merge participants' branches into one branch and push it"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    pull: PullArgs,
}

fn main() -> ExitCode {
    common::memory::return_large_buffers();
    let cli: Cli = cli::parse();
    cli.log.init();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "gitcd-pull starting");
    trishanku::cli::pull::run(&cli.pull)
}
