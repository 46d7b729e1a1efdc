//! Credentials for remotes, and how each transport gets them without the
//! secret leaving the password file: gix asks a callback, which reads the
//! file; `git push` runs with a credential helper (configured through the
//! environment, not argv) that reads it; ssh gets key *paths* in its
//! command line, never key material.

use std::ffi::OsString;
use std::path::PathBuf;

use super::RemoteError;

/// Who we are to remotes.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// HTTPS basic auth user (with `password_file`).
    pub username: Option<String>,
    /// A file holding the password or token; read at each use.
    pub password_file: Option<PathBuf>,
    /// SSH private keys, tried in order.
    pub ssh_key_files: Vec<PathBuf>,
    /// Strict host key checking against `ssh_known_hosts_file`.
    pub ssh_known_hosts: bool,
    pub ssh_known_hosts_file: PathBuf,
}

impl Credentials {
    /// The password, read now; `None` without a password file.
    pub fn password(&self) -> Result<Option<String>, RemoteError> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| RemoteError::PasswordFile {
            path: path.clone(),
            source,
        })?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
    }

    /// The ssh command for `core.sshCommand` / `GIT_SSH_COMMAND`: the keys,
    /// the known hosts policy, and timeouts so a dead host fails instead of
    /// hanging. Paths are shell-quoted (git runs it through `sh`).
    pub fn ssh_command(&self) -> String {
        let mut cmd = String::from(
            "ssh -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=10 -o ServerAliveCountMax=3",
        );
        if !self.ssh_key_files.is_empty() {
            cmd.push_str(" -o IdentitiesOnly=yes");
        }
        for key in &self.ssh_key_files {
            cmd.push_str(" -i ");
            cmd.push_str(&shell_quote(&key.to_string_lossy()));
        }
        if self.ssh_known_hosts {
            cmd.push_str(" -o StrictHostKeyChecking=yes -o UserKnownHostsFile=");
            cmd.push_str(&shell_quote(&self.ssh_known_hosts_file.to_string_lossy()));
        } else {
            cmd.push_str(" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR");
        }
        cmd
    }

    /// Refuses an ssh URL whose host key cannot be checked, and warns (once
    /// per process) when a password is about to go over plain http.
    pub fn check_for(&self, url: &str) -> Result<(), RemoteError> {
        static WARNED: std::sync::Once = std::sync::Once::new();
        if url.starts_with("http://") && self.password_file.is_some() {
            WARNED.call_once(|| {
                tracing::warn!(url = %super::redact(url), "sending credentials over plain http: use https");
            });
        }
        if is_ssh(url) && self.ssh_known_hosts && !self.ssh_known_hosts_file.exists() {
            return Err(RemoteError::NoKnownHosts {
                url: super::redact(url),
                path: self.ssh_known_hosts_file.clone(),
            });
        }
        Ok(())
    }

    /// The environment of a `git` child that talks to remotes: the ssh
    /// command, no prompts, and a credential helper (set through
    /// `GIT_CONFIG_*`, which replaces any configured helper) that prints the
    /// username and the password file's content when git asks.
    pub fn git_env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = vec![
            ("GIT_SSH_COMMAND".into(), self.ssh_command().into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("GIT_ASKPASS".into(), "".into()),
            ("SSH_ASKPASS".into(), "".into()),
        ];
        let mut config: Vec<(&str, String)> = vec![("credential.helper", String::new())];
        if let (Some(user), Some(file)) = (&self.username, &self.password_file) {
            config.push((
                "credential.helper",
                "!f() { test \"$1\" = get || exit 0; echo \"username=$TRISHANKU_GIT_USERNAME\"; \
                 printf 'password=%s\\n' \"$(cat \"$TRISHANKU_GIT_PASSWORD_FILE\")\"; }; f"
                    .into(),
            ));
            env.push(("TRISHANKU_GIT_USERNAME".into(), user.into()));
            env.push(("TRISHANKU_GIT_PASSWORD_FILE".into(), file.into()));
        }
        env.push(("GIT_CONFIG_COUNT".into(), config.len().to_string().into()));
        for (i, (key, value)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}").into(), key.into()));
            env.push((format!("GIT_CONFIG_VALUE_{i}").into(), value.into()));
        }
        env
    }
}

/// Whether `url` is reached over ssh (`ssh://…` or scp-like `user@host:path`).
pub fn is_ssh(url: &str) -> bool {
    if url.starts_with("ssh://") || url.starts_with("git+ssh://") || url.starts_with("ssh+git://") {
        return true;
    }
    !url.contains("://")
        && url
            .split_once(':')
            .is_some_and(|(host, _)| !host.contains('/') && host.len() > 1)
}

/// `s` in single quotes for `sh`.
pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_commands_and_urls() {
        let c = Credentials {
            ssh_key_files: vec!["/etc/git-secret/ssh".into(), "/k/it's".into()],
            ssh_known_hosts: true,
            ssh_known_hosts_file: "/etc/git-secret/known_hosts".into(),
            ..Default::default()
        };
        let cmd = c.ssh_command();
        assert!(cmd.contains("-i '/etc/git-secret/ssh' -i '/k/it'\\''s'"), "{cmd}");
        assert!(cmd.contains("StrictHostKeyChecking=yes -o UserKnownHostsFile='/etc/git-secret/known_hosts'"));
        assert!(is_ssh("git@github.com:org/repo.git"));
        assert!(is_ssh("ssh://git@127.0.0.1:2222/srv/repo.git"));
        assert!(!is_ssh("https://h/r.git"));
        assert!(!is_ssh("/srv/repo.git"));
        assert!(!is_ssh("file:///srv/repo.git"));
    }

    /// The password is in no argument and no config value: only the path of
    /// the file that holds it is in the environment.
    #[test]
    fn git_env_carries_no_secret() -> Result<(), RemoteError> {
        let dir = tempfile::tempdir().map_err(|source| RemoteError::PasswordFile {
            path: "tempdir".into(),
            source,
        })?;
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").map_err(|source| RemoteError::PasswordFile {
            path: file.clone(),
            source,
        })?;
        let c = Credentials {
            username: Some("alice".into()),
            password_file: Some(file.clone()),
            ..Default::default()
        };
        assert_eq!(c.password()?.as_deref(), Some("s3cret"));
        let env = c.git_env();
        assert!(
            env.iter()
                .all(|(k, v)| !k.to_string_lossy().contains("s3cret") && !v.to_string_lossy().contains("s3cret"))
        );
        Ok(())
    }
}
