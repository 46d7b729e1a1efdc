//! gitcd: an etcd v3 server whose storage is a Git repository.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trishanku::cli::serve::ServeArgs;
use trishanku::cli::store::StoreArgs;
use trishanku::cli::{self, EXIT_FAILURE, LogArgs};

#[derive(Parser)]
#[command(
    name = "gitcd",
    version,
    about = "An etcd v3 server whose storage is a Git repository"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the etcd v3 API from the repository.
    Serve(Box<ServeArgs>),
    /// Build or catch up metadata for the data ref's history (same as gitcd-init).
    Init(InitArgs),
    /// Merge participants' branches into one branch and push it (same as gitcd-pull).
    Pull(Box<trishanku::cli::pull::PullArgs>),
    /// Make a new repository from a snapshot (`etcdctl snapshot save`'s file, or the Git bundle it holds).
    Restore(RestoreArgs),
    /// Print gitcd's version and the etcd version it reports.
    Version,
}

#[derive(clap::Args)]
struct InitArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The snapshot file.
    file: std::path::PathBuf,
    /// The repository to make: a missing or empty directory.
    #[arg(long, env = "GITCD_REPO")]
    repo: std::path::PathBuf,
    /// Author and committer name of the refs' log entries.
    #[arg(long, env = "GITCD_COMMITTER_NAME", default_value = "trishanku")]
    committer_name: String,
    /// Author and committer email of the refs' log entries.
    #[arg(long, env = "GITCD_COMMITTER_EMAIL", default_value = "trishanku@heaven.com")]
    committer_email: String,
}

fn main() -> ExitCode {
    common::memory::return_large_buffers();
    let cli: Cli = cli::parse();
    cli.log.init();
    match cli.command {
        Command::Version => {
            println!("gitcd {}", env!("CARGO_PKG_VERSION"));
            println!("etcd API {}", common::etcd::ETCD_VERSION);
            ExitCode::SUCCESS
        }
        Command::Init(args) => trishanku::cli::store::run_init(&args.store),
        Command::Pull(args) => trishanku::cli::pull::run(&args),
        Command::Serve(args) => serve(*args),
        Command::Restore(args) => restore(args),
    }
}

fn restore(args: RestoreArgs) -> ExitCode {
    let committer = common::repo::Signature {
        name: args.committer_name,
        email: args.committer_email,
    };
    match common::store::restore(&args.file, &args.repo, committer) {
        Ok(r) => {
            println!(
                "{}: {} and {} at revision {}",
                args.repo.display(),
                r.data_ref,
                r.metadata_ref,
                r.revision
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", common::error::chain(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = args.to_config().unwrap_or_else(|e| cli::usage_error(&e));
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "gitcd starting");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(common::server::run(config, common::signal::shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", common::error::chain(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
