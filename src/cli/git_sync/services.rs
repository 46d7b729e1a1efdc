//! git-sync's services mode (`--services FILE`): Gitopper's per-service
//! GitOps. Its flags, their `GITSYNC_*` twins, which of git-sync's own flags
//! it takes, and the [`common::gitopper::Config`] they make.
//!
//! Long flags only: `-h` is git-sync's help, so Gitopper's `-h` is
//! `--hostname`, its `-c` is `--services`, `-s` `--api-bind`, `-m`
//! `--http-bind` with `--http-metrics`, `-t` `--period`, `-r`
//! `--services-restart`, and `-U -D -B -M -P` are `--bootstrap-*`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, CommandFactory as _};
use common::gitopper::{ApiConfig, Bootstrap, Config, api::Auth, links::Mode};
use common::sync::credentials::{self, Credential, Secret};
use common::tls::TlsConfig;

use super::goflag::parse_bool;
use super::{GitSyncArgs, Log};

/// The services mode's flags.
#[derive(Args, Debug, Clone)]
pub struct ServicesArgs {
    /// run Gitopper's per-service GitOps for this machine from this services file (TOML); enables the services mode
    #[arg(long, default_value = "")]
    pub services: String,
    /// the names (comma-separated or repeated) this machine answers to in the services file's machine keys (default: the hostname)
    #[arg(long, action = ArgAction::Append)]
    pub hostname: Vec<String>,
    /// how a service's dirs appear at their local paths: 'auto' (bind mounts where permitted, else symlinks), 'bind' or 'symlink'
    #[arg(long, default_value = "auto")]
    pub services_links: String,
    /// exit with code 2 when the services file changes (for systemd to restart git-sync with it)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub services_restart: bool,
    /// the bind address (including port) of the services API (JSON over HTTP, HTTPS with --api-tls-cert-file)
    #[arg(long, default_value = "")]
    pub api_bind: String,
    /// a file holding the bearer token that authenticates API calls (read at each call)
    #[arg(long, default_value = "")]
    pub api_token_file: String,
    /// the API's TLS certificate (PEM); with --api-tls-key-file the API is HTTPS
    #[arg(long, default_value = "")]
    pub api_tls_cert_file: String,
    /// the API's TLS private key (PEM)
    #[arg(long, default_value = "")]
    pub api_tls_key_file: String,
    /// a CA (PEM): API clients presenting a certificate it signed are authenticated (mTLS)
    #[arg(long, default_value = "")]
    pub api_client_ca_file: String,
    /// require authentication for the API's /list calls too
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub api_auth_reads: bool,
    /// bootstrap: the repository holding the services file (with --bootstrap-mount)
    #[arg(long, default_value = "")]
    pub bootstrap_upstream: String,
    /// bootstrap: the repository's directory holding the services file; --services is relative to it
    #[arg(long, default_value = "gitopper")]
    pub bootstrap_directory: String,
    /// bootstrap: the branch to check out
    #[arg(long, default_value = "main")]
    pub bootstrap_branch: String,
    /// bootstrap: check out into <this directory>/gitopper
    #[arg(long, default_value = "")]
    pub bootstrap_mount: String,
    /// bootstrap: pull the checkout before reading the services file
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub bootstrap_pull: bool,
}

/// Flag id, its variable (no older names).
pub const ENV: &[(&str, &str, &[&str])] = &[
    ("services", "GITSYNC_SERVICES", &[]),
    ("hostname", "GITSYNC_HOSTNAME", &[]),
    ("services_links", "GITSYNC_SERVICES_LINKS", &[]),
    ("services_restart", "GITSYNC_SERVICES_RESTART", &[]),
    ("api_bind", "GITSYNC_API_BIND", &[]),
    ("api_token_file", "GITSYNC_API_TOKEN_FILE", &[]),
    ("api_tls_cert_file", "GITSYNC_API_TLS_CERT_FILE", &[]),
    ("api_tls_key_file", "GITSYNC_API_TLS_KEY_FILE", &[]),
    ("api_client_ca_file", "GITSYNC_API_CLIENT_CA_FILE", &[]),
    ("api_auth_reads", "GITSYNC_API_AUTH_READS", &[]),
    ("bootstrap_upstream", "GITSYNC_BOOTSTRAP_UPSTREAM", &[]),
    ("bootstrap_directory", "GITSYNC_BOOTSTRAP_DIRECTORY", &[]),
    ("bootstrap_branch", "GITSYNC_BOOTSTRAP_BRANCH", &[]),
    ("bootstrap_mount", "GITSYNC_BOOTSTRAP_MOUNT", &[]),
    ("bootstrap_pull", "GITSYNC_BOOTSTRAP_PULL", &[]),
];

/// git-sync's own flags that the services mode takes.
const SHARED: &[&str] = &[
    "period",
    "sync_timeout",
    "git",
    "git_config",
    "git_config_add",
    "username",
    "password_env",
    "password_file",
    "credential",
    "ssh_key_file",
    "ssh_known_hosts",
    "ssh_known_hosts_file",
    "http_bind",
    "http_metrics",
    "verbose",
    "v_deprecated",
];

/// Gitopper's pull period (`-t`), the services mode's `--period` default.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(300);

fn long_of(id: &str) -> String {
    GitSyncArgs::command()
        .get_arguments()
        .find(|a| a.get_id() == id)
        .and_then(|a| a.get_long().map(str::to_string))
        .unwrap_or_else(|| id.to_string())
}

/// Without `--services`, its flags are an error rather than ignored.
pub(super) fn refuse_without_services(was_set: &dyn Fn(&str) -> bool) -> Result<(), String> {
    for (id, _, _) in ENV.iter().filter(|(id, _, _)| *id != "services") {
        if was_set(id) {
            return Err(format!("invalid flag: --{} needs --services", long_of(id)));
        }
    }
    Ok(())
}

/// The HTTP(S) credentials: `--username` with `$GITSYNC_PASSWORD` or
/// `--password-file` for every upstream (a credential without a URL), then
/// each `--credential` for the upstreams under its URL. Credentials in an
/// upstream's URL are git's own business (git uses them as given).
fn http_credentials(a: &GitSyncArgs) -> Result<Vec<Credential>, String> {
    let mut creds = Vec::new();
    let (user, password, file) = (&a.username, &a.password_env, &a.password_file);
    match (user.is_empty(), password.is_empty(), file.is_empty()) {
        (true, true, true) => {}
        (true, _, _) => {
            return Err(
                "invalid flag: $GITSYNC_PASSWORD and --password-file may only be specified when --username is specified"
                    .into(),
            );
        }
        (false, true, true) => {
            return Err(
                "required flag: $GITSYNC_PASSWORD or --password-file must be specified when --username is specified"
                    .into(),
            );
        }
        (false, false, false) => {
            return Err("invalid flag: only one of $GITSYNC_PASSWORD and --password-file may be specified".into());
        }
        (false, _, _) => creds.push(Credential {
            url: String::new(),
            username: user.clone(),
            password: (!password.is_empty()).then(|| Secret::new(password.clone())),
            password_file: (!file.is_empty()).then(|| PathBuf::from(file)),
        }),
    }
    for c in &a.credential {
        let parsed = credentials::parse_credentials(c)
            .map_err(|e| format!("invalid argument {c:?} for \"--credential\" flag: {e}"))?;
        for cred in &parsed {
            cred.validate().map_err(str::to_string)?;
        }
        creds.extend(parsed);
    }
    Ok(creds)
}

/// The services mode's config, or why the flags do not make one.
pub(super) fn validate(
    a: &GitSyncArgs,
    was_set: &dyn Fn(&str) -> bool,
    log: &Log,
    flags_for_log: Vec<String>,
) -> Result<Config, String> {
    let own: Vec<&str> = ENV.iter().map(|(id, _, _)| *id).collect();
    for arg in GitSyncArgs::command().get_arguments() {
        let id = arg.get_id().as_str();
        if own.contains(&id) || SHARED.contains(&id) || matches!(id, "help" | "help_alias" | "version" | "man" | "rest")
        {
            continue;
        }
        if was_set(id) {
            return Err(format!(
                "invalid flag: --{} is git-sync's own mode's, not the services mode's (--services)",
                arg.get_long().unwrap_or(id)
            ));
        }
    }
    let s = &a.services;
    let period = if was_set("period") {
        a.period.std()
    } else {
        DEFAULT_PERIOD
    };
    if period < Duration::from_millis(10) {
        return Err("invalid flag: --period must be at least 10ms".into());
    }
    let step_timeout = a.sync_timeout.std();
    if step_timeout < Duration::from_millis(10) {
        return Err("invalid flag: --sync-timeout must be at least 10ms".into());
    }
    let hostnames: Vec<String> = s
        .hostname
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    let hostnames = if hostnames.is_empty() {
        let h = common::gitopper::hostname();
        if h.is_empty() {
            return Err("can't find this machine's hostname: give --hostname".into());
        }
        vec![h]
    } else {
        hostnames
    };
    let link_mode = match s.services_links.as_str() {
        "auto" => Mode::Auto,
        "bind" => Mode::Bind,
        "symlink" => Mode::Symlink,
        _ => return Err(r#"invalid flag: --services-links must be one of "auto", "bind", or "symlink""#.into()),
    };
    if a.http_metrics && a.http_bind.is_empty() {
        return Err("required flag: --http-bind must be specified when --http-metrics is set".into());
    }
    let opt = |v: &str| (!v.is_empty()).then(|| PathBuf::from(v));
    let api_only = [
        ("api_token_file", !s.api_token_file.is_empty()),
        ("api_tls_cert_file", !s.api_tls_cert_file.is_empty()),
        ("api_tls_key_file", !s.api_tls_key_file.is_empty()),
        ("api_client_ca_file", !s.api_client_ca_file.is_empty()),
        ("api_auth_reads", s.api_auth_reads),
    ];
    let api = if s.api_bind.is_empty() {
        if let Some((id, _)) = api_only.iter().find(|(_, set)| *set) {
            return Err(format!(
                "required flag: --api-bind must be specified when --{} is set",
                long_of(id)
            ));
        }
        None
    } else {
        let tls = match (opt(&s.api_tls_cert_file), opt(&s.api_tls_key_file)) {
            (Some(cert_file), Some(key_file)) => Some(TlsConfig {
                cert_file,
                key_file,
                trusted_ca_file: opt(&s.api_client_ca_file),
                client_cert_auth: false,
            }),
            (None, None) => None,
            _ => return Err("invalid flag: --api-tls-cert-file and --api-tls-key-file go together".into()),
        };
        if tls.is_none() && !s.api_client_ca_file.is_empty() {
            return Err("invalid flag: --api-client-ca-file needs --api-tls-cert-file and --api-tls-key-file".into());
        }
        Some(ApiConfig {
            bind: s.api_bind.clone(),
            tls,
            auth: Auth {
                token_file: opt(&s.api_token_file),
                client_certs: !s.api_client_ca_file.is_empty(),
                reads: s.api_auth_reads,
            },
        })
    };
    let bootstrap = match (s.bootstrap_upstream.is_empty(), s.bootstrap_mount.is_empty()) {
        (true, true) => {
            if s.bootstrap_pull {
                return Err("invalid flag: --bootstrap-pull needs --bootstrap-upstream and --bootstrap-mount".into());
            }
            None
        }
        (false, false) => {
            let directory = common::gitopper::config::clean_link(&s.bootstrap_directory)
                .map_err(|e| format!("invalid flag: --bootstrap-directory: {e}"))?;
            if s.bootstrap_branch.is_empty() {
                return Err("invalid flag: --bootstrap-branch must not be empty".into());
            }
            let mount = common::sync::absolute_root(std::path::Path::new(&s.bootstrap_mount))
                .map_err(|e| format!("can't absolutize --bootstrap-mount: {e}"))?;
            Some(Bootstrap {
                upstream: s.bootstrap_upstream.clone(),
                directory,
                branch: s.bootstrap_branch.clone(),
                mount,
                pull: s.bootstrap_pull,
            })
        }
        _ => return Err("invalid flag: --bootstrap-upstream and --bootstrap-mount go together".into()),
    };
    let mut git_config =
        common::sync::gitconfig::parse(&a.git_config).map_err(|e| format!("can't parse --git-config flag: {e}"))?;
    if !a.git_config_add.is_empty() {
        git_config.extend(
            common::sync::gitconfig::parse(&a.git_config_add.join(","))
                .map_err(|e| format!("can't parse --git-config-add flag: {e}"))?,
        );
    }
    let credentials = http_credentials(a)?;
    // ssh as each service's user finds its own keys, as Gitopper's git
    // does, unless an ssh flag says otherwise.
    let ssh_command =
        (was_set("ssh_key_file") || was_set("ssh_known_hosts") || was_set("ssh_known_hosts_file")).then(|| {
            // git runs it through sh: paths are quoted; never a prompt.
            let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
            let mut cmd = String::from("ssh -o BatchMode=yes");
            for k in &a.ssh_key_file {
                cmd.push_str(&format!(" -i {}", quote(k)));
            }
            if a.ssh_known_hosts {
                cmd.push_str(&format!(
                    " -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
                    quote(&a.ssh_known_hosts_file)
                ));
            } else {
                cmd.push_str(" -o StrictHostKeyChecking=no");
            }
            cmd
        });
    if let Some(api) = &api
        && api.tls.is_none()
        && api.auth.token_file.is_some()
        && !api.bind.starts_with("127.")
        && !api.bind.starts_with("localhost:")
        && !api.bind.starts_with("[::1]:")
    {
        log.info(
            0,
            "warning: the API is plain HTTP and not on loopback: bearer tokens travel in clear (give --api-tls-cert-file)",
            &[],
        );
    }
    Ok(Config {
        services_file: PathBuf::from(&s.services),
        hostnames,
        period,
        step_timeout,
        git: a.git.clone(),
        git_config,
        ssh_command,
        credentials,
        link_mode,
        systemctl: "systemctl".into(),
        http_bind: opt(&a.http_bind).map(|p| p.display().to_string()),
        http_metrics: a.http_metrics,
        api,
        restart_on_change: s.services_restart,
        bootstrap,
        flags_for_log,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}
