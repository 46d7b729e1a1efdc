//! `git-post`: publishing the prepared branch pair.

use std::time::Duration;

use clap::Args;

use super::parse_duration;
use super::remote::RemoteArgs;
use super::store::BranchArgs;

#[derive(Args, Clone, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    pub branch: BranchArgs,
    /// Attempts in all before giving up.
    #[arg(long, env = "GITCD_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Time after which no new attempt starts.
    #[arg(long, env = "GITCD_MAX_ELAPSED", default_value = "2m", value_parser = parse_duration)]
    pub max_elapsed: Duration,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

impl PublishArgs {
    pub fn to_config(&self) -> Result<common::publish::PublishConfig, String> {
        let store = self.branch.to_branch()?;
        let (remote, credentials) = self.remote.resolve(&store.repo)?;
        Ok(common::publish::PublishConfig {
            repo: store.repo,
            data_ref: store.data_ref,
            metadata_ref: store.metadata_ref,
            remote,
            credentials,
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            timeout: self.remote.remote_timeout,
        })
    }
}
