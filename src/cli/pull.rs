//! `gitcd-pull` (= `gitcd pull`): the automerge's flags.

use std::time::Duration;

use clap::Args;

use super::merge::MergeArgs;
use super::parse_duration;
use super::remote::RemoteArgs;
use super::store::StoreArgs;

#[derive(Args, Clone, Debug)]
pub struct PullArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// A branch of --remote to merge into --data-ref (repeatable).
    #[arg(long = "merge-ref", env = "GITCD_MERGE_REF", value_delimiter = ',', required = true)]
    pub merge_refs: Vec<String>,
    /// Push the branch pair after merging.
    #[arg(long, env = "GITCD_PUSH")]
    pub push: bool,
    /// Time between passes; 0 runs one pass and exits (0 when all merged and pushed).
    #[arg(long, env = "GITCD_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Comma-separated http://IP:PORT URLs for /livez, /readyz and /metrics (etcd's flag name).
    #[arg(long, env = "GITCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub merge: MergeArgs,
}

impl PullArgs {
    pub fn to_config(&self) -> Result<common::pull::DaemonConfig, String> {
        let store = self.store.to_config()?;
        for r in &self.merge_refs {
            if !r.starts_with("refs/") {
                return Err(format!(
                    "--merge-ref {r:?}: must be a full ref name starting with refs/"
                ));
            }
        }
        let (remote, credentials) = self.remote.resolve(&store.repo)?;
        // Someone else may move the branch on the remote too: it is merged
        // first, then every participant's.
        let mut merge_refs = vec![store.data_ref.clone()];
        merge_refs.extend(self.merge_refs.iter().filter(|r| **r != store.data_ref).cloned());
        let listen_metrics =
            common::http::parse_urls(&self.listen_metrics_urls).map_err(|e| format!("--listen-metrics-urls: {e}"))?;
        if listen_metrics.iter().any(|u| u.tls) {
            return Err("--listen-metrics-urls: gitcd-pull serves http:// only".into());
        }
        let listen_metrics = listen_metrics.into_iter().map(|u| u.addr).collect();
        Ok(common::pull::DaemonConfig {
            store,
            pull: common::pull::PullConfig {
                remote,
                credentials,
                merge_refs,
                push: self.push,
                interval: self.interval,
                policy: self.merge.to_policy()?,
                timeout: self.remote.remote_timeout,
            },
            listen_metrics,
        })
    }
}

/// Runs the automerge: exit 0 when stopped (or, with --interval 0, when
/// the pass merged and pushed), 1 when it failed.
pub fn run(args: &PullArgs) -> std::process::ExitCode {
    let config = args.to_config().unwrap_or_else(|e| super::usage_error(&e));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(super::EXIT_FAILURE);
        }
    };
    match runtime.block_on(common::pull::run_daemon(config, common::signal::shutdown())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", common::error::chain(&e));
            std::process::ExitCode::from(super::EXIT_FAILURE)
        }
    }
}
