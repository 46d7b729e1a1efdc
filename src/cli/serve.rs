//! How `gitcd serve` serves: listeners, identity, limits.

use clap::Args;

use super::parse_duration;
use super::store::StoreArgs;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Comma-separated URLs to serve on; 0.0.0.0 must be asked for.
    #[arg(long, env = "GITCD_LISTEN_URLS", default_value = "http://127.0.0.1:2379")]
    pub listen_urls: String,
    /// Comma-separated URLs clients should use (MemberList) [default: the listen URLs].
    #[arg(long, env = "GITCD_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// Member name reported by MemberList.
    #[arg(long, env = "GITCD_NAME", default_value = "default")]
    pub name: String,
    /// Largest write request accepted, in bytes (etcd's --max-request-bytes).
    #[arg(long, env = "GITCD_MAX_REQUEST_BYTES", default_value_t = common::etcd::DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Interval of progress notifications to watchers that ask for them.
    #[arg(long, env = "GITCD_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub watch_progress_notify_interval: std::time::Duration,
}

impl ServeArgs {
    /// The server config, or a usage error.
    pub fn to_config(&self) -> Result<common::server::ServeConfig, String> {
        let store = self.store.to_config()?;
        let listen = common::server::parse_listen_urls(&self.listen_urls).map_err(|e| format!("--listen-urls: {e}"))?;
        let advertise = self.advertise_client_urls.as_deref().unwrap_or(&self.listen_urls);
        Ok(common::server::ServeConfig {
            store,
            listen,
            advertise_client_urls: advertise
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            name: self.name.clone(),
            max_request_bytes: self.max_request_bytes,
            watch_progress_interval: self.watch_progress_notify_interval,
        })
    }
}
