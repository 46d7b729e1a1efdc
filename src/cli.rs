//! Flag definitions and their conversion into `common` config structs.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use common::repo::Signature;
use common::store::StoreConfig;

/// Exit code for invalid flags (sysexits' EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for runtime failures.
pub const EXIT_FAILURE: u8 = 1;

/// Where the store lives and who commits to it.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// Git repository to serve (bare or not); created bare when missing.
    #[arg(long, env = "GITCD_REPO", default_value = "/tmp/trishanku/gitcd")]
    pub repo: PathBuf,
    /// The data ref: one file per key.
    #[arg(long, env = "GITCD_DATA_REF", default_value = "refs/heads/main")]
    pub data_ref: String,
    /// The metadata ref [default: refs/gitcd/metadata/<data-ref>].
    #[arg(long, env = "GITCD_METADATA_REF")]
    pub metadata_ref: Option<String>,
    /// Author and committer name of gitcd's commits.
    #[arg(long, env = "GITCD_COMMITTER_NAME", default_value = "trishanku")]
    pub committer_name: String,
    /// Author and committer email of gitcd's commits.
    #[arg(long, env = "GITCD_COMMITTER_EMAIL", default_value = "trishanku@heaven.com")]
    pub committer_email: String,
    /// Revision given to the oldest data commit when metadata is first built.
    #[arg(long, env = "GITCD_START_REVISION", default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
    pub start_revision: i64,
    /// Recent revisions whose events stay in memory for watchers; older ones are read from Git.
    #[arg(long, env = "GITCD_HISTORY_WINDOW", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub history_window: u32,
    /// How often the data ref is checked for commits made outside gitcd, and leases for expiry.
    #[arg(long, env = "GITCD_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Most revisions one commit may group when writes arrive faster than commits are made; 1 makes every revision its own commit.
    #[arg(long, env = "GITCD_MAX_COMMIT_REVISIONS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_commit_revisions: u32,
}

impl StoreArgs {
    /// The store config, or a usage error.
    pub fn to_config(&self) -> Result<StoreConfig, String> {
        let metadata_ref = self
            .metadata_ref
            .clone()
            .unwrap_or_else(|| format!("refs/gitcd/metadata/{}", self.data_ref));
        for (flag, name) in [("--data-ref", &self.data_ref), ("--metadata-ref", &metadata_ref)] {
            if !name.starts_with("refs/") {
                return Err(format!("{flag} {name:?}: must be a full ref name starting with refs/"));
            }
        }
        if self.data_ref == metadata_ref {
            return Err("--data-ref and --metadata-ref must differ".into());
        }
        Ok(StoreConfig {
            repo: self.repo.clone(),
            data_ref: self.data_ref.clone(),
            metadata_ref,
            committer: Signature {
                name: self.committer_name.clone(),
                email: self.committer_email.clone(),
            },
            start_revision: self.start_revision,
            history_window: self.history_window as usize,
            poll_interval: self.poll_interval,
            max_commit_revisions: self.max_commit_revisions as usize,
        })
    }
}

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

/// `gitcd init` / `gitcd-init`: builds or catches up the metadata and
/// prints the revision reached.
pub fn run_init(args: &StoreArgs) -> std::process::ExitCode {
    let config = args.to_config().unwrap_or_else(|e| usage_error(&e));
    match common::store::Store::init(&config) {
        Ok(revision) => {
            println!(
                "{}: {} at revision {revision}",
                config.repo.display(),
                config.metadata_ref
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", config.repo.display());
            std::process::ExitCode::from(EXIT_FAILURE)
        }
    }
}
pub mod git_sync;
