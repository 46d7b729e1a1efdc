//! How `gitcd serve` serves: listeners, identity, limits.

use clap::Args;

use super::merge::MergeArgs;
use super::parse_duration;
use super::remote::RemoteArgs;
use super::store::StoreArgs;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Comma-separated http(s)://IP:PORT URLs to serve gRPC and the HTTP endpoints on; 0.0.0.0 must be asked for.
    #[arg(long, env = "GITCD_LISTEN_URLS", default_value = "http://127.0.0.1:2379")]
    pub listen_urls: String,
    /// Comma-separated http(s)://IP:PORT URLs to serve only /health, /livez, /readyz, /version and /metrics on.
    #[arg(long, env = "GITCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// The server's certificate (PEM) for https:// URLs; re-read when it changes.
    #[arg(long, env = "GITCD_CERT_FILE")]
    pub cert_file: Option<std::path::PathBuf>,
    /// The server's private key (PEM) for https:// URLs; re-read when it changes.
    #[arg(long, env = "GITCD_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) that sign client certificates.
    #[arg(long, env = "GITCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<std::path::PathBuf>,
    /// Require client certificates signed by --trusted-ca-file on https:// URLs.
    #[arg(long, env = "GITCD_CLIENT_CERT_AUTH")]
    pub client_cert_auth: bool,
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
    /// Merge this branch of --remote into the served branch, every --pull-interval.
    #[arg(long, env = "GITCD_UPSTREAM_REF")]
    pub upstream_ref: Option<String>,
    /// How often the upstream branch is fetched and merged.
    #[arg(long, env = "GITCD_PULL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub pull_interval: std::time::Duration,
    /// Push the served branch pair to --remote after merges and soon after each write.
    #[arg(long, env = "GITCD_PUSH")]
    pub push: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub merge: MergeArgs,
    /// Seconds a simple auth token lives unused (etcd's --auth-token-ttl).
    #[arg(long, env = "GITCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of new password hashes, 4 to 31 (etcd's --bcrypt-cost).
    #[arg(long, env = "GITCD_BCRYPT_COST", default_value_t = common::auth::DEFAULT_BCRYPT_COST)]
    pub bcrypt_cost: u32,
    /// Most bytes of live keys and values before writes are refused with NOSPACE; 0: 2 GiB; negative: no quota.
    #[arg(
        long,
        env = "GITCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,
    /// Confine the clients of --listen-urls to keys under this prefix, which they do not see (etcd grpc-proxy's --namespace).
    #[arg(long, env = "GITCD_NAMESPACE", default_value = "")]
    pub namespace: String,
    /// PREFIX=URL[,URL]: serve another namespace on its own URLs; repeatable (in the environment, separated by ';').
    #[arg(
        long = "namespace-listen-urls",
        env = "GITCD_NAMESPACE_LISTEN_URLS",
        value_delimiter = ';'
    )]
    pub namespace_listen_urls: Vec<String>,
}

impl ServeArgs {
    /// The pull loop's config: `None` unless --upstream-ref or --push asks
    /// for one.
    fn pull_config(&self, repo: &std::path::Path) -> Result<Option<common::pull::PullConfig>, String> {
        if self.upstream_ref.is_none() && !self.push {
            return Ok(None);
        }
        if self.pull_interval.is_zero() {
            return Err("--pull-interval must be more than 0".into());
        }
        if let Some(r) = &self.upstream_ref
            && !r.starts_with("refs/")
        {
            return Err(format!(
                "--upstream-ref {r:?}: must be a full ref name starting with refs/"
            ));
        }
        let (remote, credentials) = self.remote.resolve(repo)?;
        Ok(Some(common::pull::PullConfig {
            remote,
            credentials,
            merge_refs: self.upstream_ref.iter().cloned().collect(),
            push: self.push,
            interval: self.pull_interval,
            policy: self.merge.to_policy()?,
            timeout: self.remote.remote_timeout,
        }))
    }

    /// The server config, or a usage error.
    pub fn to_config(&self) -> Result<common::server::ServeConfig, String> {
        let store = self.store.to_config()?;
        let store_repo = store.repo.clone();
        let listen = common::http::parse_urls(&self.listen_urls).map_err(|e| format!("--listen-urls: {e}"))?;
        if listen.is_empty() {
            return Err("--listen-urls: no URL given".into());
        }
        let listen_metrics =
            common::http::parse_urls(&self.listen_metrics_urls).map_err(|e| format!("--listen-metrics-urls: {e}"))?;
        let tls = match (&self.cert_file, &self.key_file) {
            (Some(cert_file), Some(key_file)) => Some(common::tls::TlsConfig {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                trusted_ca_file: self.trusted_ca_file.clone(),
                client_cert_auth: self.client_cert_auth,
            }),
            (None, None) => None,
            _ => return Err("--cert-file and --key-file go together".into()),
        };
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err("--client-cert-auth needs --trusted-ca-file".into());
        }
        common::server::check_tls(&listen, tls.as_ref())?;
        common::server::check_tls(&listen_metrics, tls.as_ref())?;
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(format!("--bcrypt-cost {}: must be from 4 to 31", self.bcrypt_cost));
        }
        if self.auth_token_ttl == 0 {
            return Err("--auth-token-ttl must be more than 0".into());
        }
        let quota = match self.quota_backend_bytes {
            q if q < 0 => None,
            0 => Some(common::etcd::DEFAULT_QUOTA_BYTES),
            q => Some(q),
        };
        let mut tenants = Vec::new();
        for spec in self.namespace_listen_urls.iter().filter(|s| !s.trim().is_empty()) {
            let (prefix, urls) = spec
                .split_once('=')
                .ok_or_else(|| format!("--namespace-listen-urls {spec:?}: must be PREFIX=URL[,URL]"))?;
            if prefix.is_empty() {
                return Err(format!("--namespace-listen-urls {spec:?}: the prefix is empty"));
            }
            let listen =
                common::http::parse_urls(urls).map_err(|e| format!("--namespace-listen-urls {spec:?}: {e}"))?;
            if listen.is_empty() {
                return Err(format!("--namespace-listen-urls {spec:?}: no URL given"));
            }
            common::server::check_tls(&listen, tls.as_ref())?;
            tenants.push(common::server::Tenant {
                prefix: prefix.as_bytes().to_vec().into(),
                listen,
            });
        }
        let advertise = self.advertise_client_urls.as_deref().unwrap_or(&self.listen_urls);
        Ok(common::server::ServeConfig {
            store,
            listen,
            listen_metrics,
            tls,
            advertise_client_urls: advertise
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            name: self.name.clone(),
            max_request_bytes: self.max_request_bytes,
            watch_progress_interval: self.watch_progress_notify_interval,
            pull: self.pull_config(&store_repo)?,
            auth_token_ttl: std::time::Duration::from_secs(self.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost,
            quota_backend_bytes: quota,
            namespace: self.namespace.as_bytes().to_vec().into(),
            tenants,
        })
    }
}
