//! gitcd: an etcd v3 server whose storage is a Git repository.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trishanku::cli::{self, EXIT_FAILURE, StoreArgs};

#[derive(Parser)]
#[command(
    name = "gitcd",
    version,
    about = "An etcd v3 server whose storage is a Git repository"
)]
struct Cli {
    /// Log format: plain or json.
    #[arg(long, env = "LOG_FORMAT", global = true, default_value = "plain", value_parser = ["plain", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the etcd v3 API from the repository.
    Serve(ServeArgs),
    /// Build or catch up metadata for the data ref's history (same as gitcd-init).
    Init(InitArgs),
    /// Print gitcd's version and the etcd version it reports.
    Version,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Comma-separated URLs to serve on; 0.0.0.0 must be asked for.
    #[arg(long, env = "GITCD_LISTEN_URLS", default_value = "http://127.0.0.1:2379")]
    listen_urls: String,
    /// Comma-separated URLs clients should use (MemberList) [default: the listen URLs].
    #[arg(long, env = "GITCD_ADVERTISE_CLIENT_URLS")]
    advertise_client_urls: Option<String>,
    /// Member name reported by MemberList.
    #[arg(long, env = "GITCD_NAME", default_value = "default")]
    name: String,
    /// Largest write request accepted, in bytes (etcd's --max-request-bytes).
    #[arg(long, env = "GITCD_MAX_REQUEST_BYTES", default_value_t = common::etcd::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Interval of progress notifications to watchers that ask for them.
    #[arg(long, env = "GITCD_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "5s", value_parser = cli::parse_duration)]
    watch_progress_notify_interval: std::time::Duration,
}

#[derive(clap::Args)]
struct InitArgs {
    #[command(flatten)]
    store: StoreArgs,
}

fn main() -> ExitCode {
    let cli: Cli = cli::parse();
    common::telemetry::init(Some(&cli.log_format));
    match cli.command {
        Command::Version => {
            println!("gitcd {}", env!("CARGO_PKG_VERSION"));
            println!("etcd API {}", common::etcd::ETCD_VERSION);
            ExitCode::SUCCESS
        }
        Command::Init(args) => cli::run_init(&args.store),
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let store = args.store.to_config().unwrap_or_else(|e| cli::usage_error(&e));
    let listen = common::server::parse_listen_urls(&args.listen_urls)
        .unwrap_or_else(|e| cli::usage_error(&format!("--listen-urls: {e}")));
    let advertise = args.advertise_client_urls.unwrap_or_else(|| args.listen_urls.clone());
    let config = common::server::ServeConfig {
        store,
        listen,
        advertise_client_urls: advertise
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        name: args.name,
        max_request_bytes: args.max_request_bytes,
        watch_progress_interval: args.watch_progress_notify_interval,
    };
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
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
