//! `git-pre`: preparing a participant's repository.

use clap::Args;

use super::remote::CredentialArgs;
use super::store::BranchArgs;

#[derive(Args, Clone, Debug)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub branch: BranchArgs,
    /// The upstream repository to clone from and push to; without it, a new bare repository.
    #[arg(long, env = "GITCD_REMOTE_URL")]
    pub remote_url: Option<String>,
    /// The remote's name in the repository's config.
    #[arg(long, env = "GITCD_REMOTE", default_value = "origin")]
    pub remote: String,
    /// The branch of the remote a new data branch starts from.
    #[arg(long, env = "GITCD_UPSTREAM_REF")]
    pub upstream_ref: Option<String>,
    /// When the remote lacks the data branch: create it (from --upstream-ref, or empty) or fail.
    #[arg(long, env = "GITCD_ON_MISSING_BRANCH", default_value = "create", value_parser = ["create", "fail"])]
    pub on_missing_branch: String,
    /// Deadline of the fetch.
    #[arg(long, env = "GITCD_REMOTE_TIMEOUT", default_value = "60s", value_parser = super::parse_duration)]
    pub remote_timeout: std::time::Duration,
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

impl PrepareArgs {
    pub fn to_config(&self) -> Result<common::prepare::PrepareConfig, String> {
        let store = self.branch.to_branch()?;
        if self.upstream_ref.is_some() && self.remote_url.is_none() {
            return Err("--upstream-ref needs --remote-url".into());
        }
        if let Some(r) = &self.upstream_ref
            && !r.starts_with("refs/")
        {
            return Err(format!(
                "--upstream-ref {r:?}: must be a full ref name starting with refs/"
            ));
        }
        let remote = match &self.remote_url {
            Some(url) => {
                super::remote::check_url("--remote-url", url)?;
                let remote = common::remote::Remote {
                    name: self.remote.clone(),
                    url: url.clone(),
                };
                Some((remote, self.credentials.to_credentials()?))
            }
            None => None,
        };
        Ok(common::prepare::PrepareConfig {
            repo: store.repo,
            data_ref: store.data_ref,
            metadata_ref: store.metadata_ref,
            committer: store.committer,
            remote,
            upstream_ref: self.upstream_ref.clone(),
            create_missing: self.on_missing_branch == "create",
            timeout: self.remote_timeout,
        })
    }
}
