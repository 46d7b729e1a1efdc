//! Where a store lives and who commits to it: the flags every binary that
//! opens a store takes.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use common::repo::Signature;
use common::store::StoreConfig;

use super::{EXIT_FAILURE, parse_duration, usage_error};

/// The branch pair a binary works on, and who commits to it.
#[derive(Args, Clone, Debug)]
pub struct BranchArgs {
    /// Git repository (bare or not); created bare when missing.
    #[arg(long, env = "GITCD_REPO", default_value = "/tmp/trishanku/gitcd")]
    pub repo: PathBuf,
    /// The data ref: one file per key [default: the branch HEAD names; refs/heads/main in a new repository].
    #[arg(long, env = "GITCD_DATA_REF")]
    pub data_ref: Option<String>,
    /// The metadata ref [default: refs/gitcd/metadata/<data-ref>].
    #[arg(long, env = "GITCD_METADATA_REF")]
    pub metadata_ref: Option<String>,
    /// Author and committer name of the commits made.
    #[arg(long, env = "GITCD_COMMITTER_NAME", default_value = "trishanku")]
    pub committer_name: String,
    /// Author and committer email of the commits made.
    #[arg(long, env = "GITCD_COMMITTER_EMAIL", default_value = "trishanku@heaven.com")]
    pub committer_email: String,
}

/// A branch pair, checked.
pub struct Branch {
    pub repo: PathBuf,
    pub data_ref: String,
    pub metadata_ref: String,
    pub committer: Signature,
}

impl BranchArgs {
    /// The branch pair, or a usage error.
    pub fn to_branch(&self) -> Result<Branch, String> {
        let data_ref = match &self.data_ref {
            Some(r) => r.clone(),
            None => {
                let head = common::repo::default_data_ref(&self.repo);
                tracing::info!(repo = %self.repo.display(), data_ref = %head, "no --data-ref: serving the branch HEAD names");
                head
            }
        };
        let metadata_ref = self
            .metadata_ref
            .clone()
            .unwrap_or_else(|| format!("refs/gitcd/metadata/{data_ref}"));
        for (flag, name) in [("--data-ref", &data_ref), ("--metadata-ref", &metadata_ref)] {
            if !name.starts_with("refs/") {
                return Err(format!("{flag} {name:?}: must be a full ref name starting with refs/"));
            }
        }
        if data_ref == metadata_ref {
            return Err("--data-ref and --metadata-ref must differ".into());
        }
        Ok(Branch {
            repo: self.repo.clone(),
            data_ref,
            metadata_ref,
            committer: Signature {
                name: self.committer_name.clone(),
                email: self.committer_email.clone(),
            },
        })
    }
}

/// Where the store lives, who commits to it, and how it keeps its state.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    #[command(flatten)]
    pub branch: BranchArgs,
    /// Revision given to the oldest data commit when metadata is first built.
    #[arg(long, env = "GITCD_START_REVISION", default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
    pub start_revision: i64,
    /// Recent revisions whose events stay in memory for watchers; older ones are read from Git.
    #[arg(long, env = "GITCD_HISTORY_WINDOW", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub history_window: u32,
    /// How often the data ref is read for commits made outside gitcd when no change notification (inotify) came.
    #[arg(long, env = "GITCD_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Whether gitcd folds and consolidates the repository's packs: auto (if no other process does) or off (git gc or a person does).
    #[arg(long, env = "GITCD_PACK_MAINTENANCE", default_value = "auto", value_parser = ["auto", "off"])]
    pub pack_maintenance: String,
    /// Most revisions one commit may group when writes arrive faster than commits are made; 1 makes every revision its own commit.
    #[arg(long, env = "GITCD_MAX_COMMIT_REVISIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_commit_revisions: u32,
    /// Under load, how long acknowledged writes may wait in the journal for their commit (and Git's refs for them); 0 commits every batch.
    #[arg(long, env = "GITCD_COMMIT_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub commit_interval: Duration,
}

impl StoreArgs {
    /// The store config, or a usage error.
    pub fn to_config(&self) -> Result<StoreConfig, String> {
        let b = self.branch.to_branch()?;
        Ok(StoreConfig {
            repo: b.repo,
            data_ref: b.data_ref,
            metadata_ref: b.metadata_ref,
            committer: b.committer,
            start_revision: self.start_revision,
            history_window: self.history_window as usize,
            poll_interval: self.poll_interval,
            max_commit_revisions: self.max_commit_revisions as usize,
            commit_interval: self.commit_interval,
            maintenance: match self.pack_maintenance.as_str() {
                "off" => common::repo::Maintenance::Off,
                _ => common::repo::Maintenance::Auto,
            },
            // Set by the server from its member's identity.
            member_id: 0,
        })
    }
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
            eprintln!("error: {}: {}", config.repo.display(), common::error::chain(&e));
            std::process::ExitCode::from(EXIT_FAILURE)
        }
    }
}
