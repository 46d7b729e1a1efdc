//! How the binaries reach a remote: its name (and URL), and the credentials,
//! named and defaulted as git-sync's so that one Secret mounted the same
//! way serves every binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use common::remote::{Credentials, Remote};

use super::parse_duration;

/// Where git-sync mounts its Secret.
const SSH_KEY_FILE: &str = "/etc/git-secret/ssh";

#[derive(Args, Clone, Debug)]
pub struct RemoteArgs {
    /// The remote's name in the repository's config.
    #[arg(long, env = "GITCD_REMOTE", default_value = "origin")]
    pub remote: String,
    /// The remote's URL [default: remote.<remote>.url of the repository, as git-pre configures it].
    #[arg(long, env = "GITCD_REMOTE_URL")]
    pub remote_url: Option<String>,
    /// Deadline of each fetch or push.
    #[arg(long, env = "GITCD_REMOTE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub remote_timeout: Duration,
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

#[derive(Args, Clone, Debug)]
pub struct CredentialArgs {
    /// User for HTTPS basic auth (with --password-file).
    #[arg(long, env = "GITCD_USERNAME")]
    pub username: Option<String>,
    /// File holding the password or token for HTTPS; read at each use.
    #[arg(long, env = "GITCD_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// SSH private key (repeatable) [default: /etc/git-secret/ssh, when it exists].
    #[arg(long = "ssh-key-file", env = "GITCD_SSH_KEY_FILE", value_delimiter = ',')]
    pub ssh_key_files: Vec<PathBuf>,
    /// Check the SSH host key against --ssh-known-hosts-file (true or false).
    #[arg(long, env = "GITCD_SSH_KNOWN_HOSTS", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub ssh_known_hosts: bool,
    /// Known hosts for --ssh-known-hosts.
    #[arg(
        long,
        env = "GITCD_SSH_KNOWN_HOSTS_FILE",
        default_value = "/etc/git-secret/known_hosts"
    )]
    pub ssh_known_hosts_file: PathBuf,
}

impl CredentialArgs {
    /// The credentials, or a usage error.
    pub fn to_credentials(&self) -> Result<Credentials, String> {
        if self.password_file.is_some() != self.username.is_some() {
            return Err("--username and --password-file go together".into());
        }
        if let Some(f) = &self.password_file
            && !f.is_file()
        {
            return Err(format!("--password-file {}: no such file", f.display()));
        }
        for k in &self.ssh_key_files {
            if !k.is_file() {
                return Err(format!("--ssh-key-file {}: no such file", k.display()));
            }
        }
        let mut keys = self.ssh_key_files.clone();
        if keys.is_empty() && std::path::Path::new(SSH_KEY_FILE).is_file() {
            keys.push(SSH_KEY_FILE.into());
        }
        Ok(Credentials {
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            ssh_key_files: keys,
            ssh_known_hosts: self.ssh_known_hosts,
            ssh_known_hosts_file: self.ssh_known_hosts_file.clone(),
        })
    }
}

/// Refuses a URL with a password in it: a URL is stored in the
/// repository's config (readable by others) and shown in process lists.
pub fn check_url(flag: &str, url: &str) -> Result<(), String> {
    if common::remote::has_password(url) {
        return Err(format!(
            "{flag} {}: has a password in it; pass --username and --password-file instead",
            common::remote::redact(url)
        ));
    }
    Ok(())
}

impl RemoteArgs {
    /// The remote of repository `repo` and the credentials, or a usage
    /// error (an unknown remote, a missing password file).
    pub fn resolve(&self, repo: &std::path::Path) -> Result<(Remote, Credentials), String> {
        let credentials = self.credentials.to_credentials()?;
        let url = match &self.remote_url {
            Some(url) => {
                check_url("--remote-url", url)?;
                url.clone()
            }
            None => common::remote::configured_url(repo, &self.remote)
                .map_err(|e| common::error::chain(&e).to_string())?
                .ok_or_else(|| {
                    format!(
                        "{}: no remote {:?} (set --remote-url, or run git-pre with --remote-url)",
                        repo.display(),
                        self.remote
                    )
                })?,
        };
        Ok((
            Remote {
                name: self.remote.clone(),
                url,
            },
            credentials,
        ))
    }
}
