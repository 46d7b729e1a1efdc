//! git-sync's checks of its flags, in git-sync's order and words, and the
//! config they make.

use std::path::PathBuf;

use common::sync::credentials::{self, Credential, Secret};
use common::sync::github::{AppId, GithubApp, PrivateKey};
use common::sync::hook::{ExecHookConfig, WebhookConfig};
use common::sync::{Config, GitGc, Submodules};

use super::goflag::{GoDuration, parse_signal};
use super::{GitSyncArgs, Log};

pub(super) fn validate(
    a: GitSyncArgs,
    was_set: impl Fn(&str) -> bool,
    log: &Log,
    flags_for_log: Vec<String>,
) -> Result<Config, String> {
    if a.repo.is_empty() {
        return Err("required flag: --repo must be specified".into());
    }
    let mut git_ref = a.git_ref.clone();
    let rev_is_default = a.rev.is_empty() || a.rev == "HEAD";
    if !a.branch.is_empty() && rev_is_default {
        log.info(0, "setting --ref from deprecated --branch", &[]);
        git_ref = a.branch.clone();
    } else if !a.rev.is_empty() && a.branch.is_empty() {
        log.info(0, "setting --ref from deprecated --rev", &[]);
        git_ref = a.rev.clone();
    } else if !a.branch.is_empty() && !a.rev.is_empty() {
        return Err(
            "deprecated flag combo: can't set --ref from deprecated --branch and --rev (one or the other is OK)".into(),
        );
    }
    if git_ref.is_empty() {
        return Err("required flag: --ref must be specified".into());
    }
    if a.depth < 0 {
        return Err("invalid flag: --depth must be greater than or equal to 0".into());
    }
    let submodules = match a.submodules.as_str() {
        "recursive" => Submodules::Recursive,
        "shallow" => Submodules::Shallow,
        "off" => Submodules::Off,
        _ => return Err(r#"invalid flag: --submodules must be one of "recursive", "shallow", or "off""#.into()),
    };
    let git_gc = match a.git_gc.as_str() {
        "auto" => GitGc::Auto,
        "always" => GitGc::Always,
        "aggressive" => GitGc::Aggressive,
        "off" => GitGc::Off,
        _ => {
            return Err(r#"invalid flag: --git-gc must be one of "auto", "always", "aggressive", or "off""#.into());
        }
    };
    let mut link = a.link.clone();
    if !a.dest.is_empty() {
        log.info(0, "setting --link from deprecated --dest", &[]);
        link = a.dest.clone();
    }
    if link.is_empty() {
        link = a
            .repo
            .trim_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
    }
    let mut period = a.period;
    if a.wait != 0.0 {
        log.info(0, "setting --period from deprecated --wait", &[]);
        period = GoDuration::ms((a.wait * 1000.0) as i64);
    }
    if period < GoDuration::ms(10) {
        return Err("invalid flag: --period must be at least 10ms".into());
    }
    let init_period = if a.init_period.0 == 0 {
        period
    } else if a.init_period < GoDuration::ms(10) {
        return Err("invalid flag: --init-period must be at least 10ms".into());
    } else {
        a.init_period
    };
    if a.change_permissions != 0 {
        return Err("deprecated flag: --change-permissions is no longer supported".into());
    }
    let sync_on_signal = if a.sync_on_signal.is_empty() {
        None
    } else {
        Some(
            parse_signal(&a.sync_on_signal)
                .ok_or_else(|| "invalid flag: --sync-on-signal must be a valid signal name or number".to_string())?,
        )
    };
    let mut sync_timeout = a.sync_timeout;
    if a.timeout != 0 {
        log.info(0, "setting --sync-timeout from deprecated --timeout", &[]);
        sync_timeout = GoDuration(a.timeout.saturating_mul(1_000_000_000));
    }
    if sync_timeout < GoDuration::ms(10) {
        return Err("invalid flag: --sync-timeout must be at least 10ms".into());
    }
    let mut max_failures = a.max_failures;
    if a.max_sync_failures != 0 {
        log.info(0, "setting --max-failures from deprecated --max-sync-failures", &[]);
        max_failures = a.max_sync_failures;
    }
    let mut exechook_command = a.exechook_command.clone();
    if !a.sync_hook_command.is_empty() {
        log.info(0, "setting --exechook-command from deprecated --sync-hook-command", &[]);
        exechook_command = a.sync_hook_command.clone();
    }
    let second = GoDuration::ms(1000);
    let exechook = if exechook_command.is_empty() {
        None
    } else {
        if a.exechook_timeout < second {
            return Err("invalid flag: --exechook-timeout must be at least 1s".into());
        }
        if a.exechook_backoff < second {
            return Err("invalid flag: --exechook-backoff must be at least 1s".into());
        }
        Some(ExecHookConfig {
            command: exechook_command,
            timeout: a.exechook_timeout.std(),
            backoff: a.exechook_backoff.std(),
        })
    };
    let pre_publish_exechook = if a.pre_publish_exechook_command.is_empty() {
        None
    } else {
        if a.pre_publish_exechook_timeout < second {
            return Err("invalid flag: --pre-publish-exechook-timeout must be at least 1s".into());
        }
        if a.pre_publish_exechook_backoff < second {
            return Err("invalid flag: --pre-publish-exechook-backoff must be at least 1s".into());
        }
        Some(ExecHookConfig {
            command: a.pre_publish_exechook_command.clone(),
            timeout: a.pre_publish_exechook_timeout.std(),
            backoff: a.pre_publish_exechook_backoff.std(),
        })
    };
    let webhook = if a.webhook_url.is_empty() {
        None
    } else {
        let mut status = a.webhook_success_status;
        if status == -1 {
            status = 0;
        }
        let status = u16::try_from(status)
            .map_err(|_| "invalid flag: --webhook-success-status must be a valid HTTP code or 0".to_string())?;
        if a.webhook_timeout < second {
            return Err("invalid flag: --webhook-timeout must be at least 1s".into());
        }
        if a.webhook_backoff < second {
            return Err("invalid flag: --webhook-backoff must be at least 1s".into());
        }
        Some(WebhookConfig {
            url: a.webhook_url.clone(),
            method: a.webhook_method.clone(),
            success_status: status,
            timeout: a.webhook_timeout.std(),
            backoff: a.webhook_backoff.std(),
        })
    };
    let mut password = a.password_env.clone();
    if !a.password.is_empty() {
        log.info(0, "setting $GITSYNC_PASSWORD from deprecated --password", &[]);
        password = a.password.clone();
    }
    let repo_has_userinfo = a
        .repo
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or("").contains('@'))
        .unwrap_or(false);
    let mut username = a.username.clone();
    if !username.is_empty() {
        if password.is_empty() && a.password_file.is_empty() {
            return Err(
                "required flag: $GITSYNC_PASSWORD or --password-file must be specified when --username is specified"
                    .into(),
            );
        }
        if !password.is_empty() && !a.password_file.is_empty() {
            return Err("invalid flag: only one of $GITSYNC_PASSWORD and --password-file may be specified".into());
        }
        if repo_has_userinfo {
            return Err("invalid flag: credentials may not be specified in --repo when --username is specified".into());
        }
    } else {
        if !password.is_empty() {
            return Err("invalid flag: $GITSYNC_PASSWORD may only be specified when --username is specified".into());
        }
        if !a.password_file.is_empty() {
            return Err("invalid flag: --password-file may only be specified when --username is specified".into());
        }
    }
    let app_key_inline = a.github_app_private_key_env.clone();
    let github_app = if a.github_app_application_id != 0 || !a.github_app_client_id.is_empty() {
        if a.github_app_application_id != 0 && !a.github_app_client_id.is_empty() {
            return Err(
                "invalid flag: only one of --github-app-application-id or --github-app-client-id may be specified"
                    .into(),
            );
        }
        if a.github_app_installation_id == 0 {
            return Err("invalid flag: --github-app-installation-id must be specified when --github-app-application-id or --github-app-client-id are specified".into());
        }
        if app_key_inline.is_empty() && a.github_app_private_key_file.is_empty() {
            return Err("invalid flag: $GITSYNC_GITHUB_APP_PRIVATE_KEY or --github-app-private-key-file must be specified when --github-app-application-id or --github-app-client-id are specified".into());
        }
        if !app_key_inline.is_empty() && !a.github_app_private_key_file.is_empty() {
            return Err("invalid flag: only one of $GITSYNC_GITHUB_APP_PRIVATE_KEY or --github-app-private-key-file may be specified".into());
        }
        if !username.is_empty() {
            return Err(
                "invalid flag: --username may not be specified when --github-app-private-key-file is specified".into(),
            );
        }
        if !password.is_empty() {
            return Err(
                "invalid flag: --password may not be specified when --github-app-private-key-file is specified".into(),
            );
        }
        if !a.password_file.is_empty() {
            return Err(
                "invalid flag: --password-file may not be specified when --github-app-private-key-file is specified"
                    .into(),
            );
        }
        Some(GithubApp {
            base_url: a.github_base_url.clone(),
            app: if a.github_app_application_id != 0 {
                AppId::Application(
                    u64::try_from(a.github_app_application_id)
                        .map_err(|_| "invalid flag: --github-app-application-id must be positive".to_string())?,
                )
            } else {
                AppId::Client(a.github_app_client_id.clone())
            },
            installation_id: u64::try_from(a.github_app_installation_id)
                .map_err(|_| "invalid flag: --github-app-installation-id must be positive".to_string())?,
            private_key: if app_key_inline.is_empty() {
                PrivateKey::File(PathBuf::from(&a.github_app_private_key_file))
            } else {
                PrivateKey::Inline(Secret::new(app_key_inline))
            },
        })
    } else {
        if a.github_app_application_id != 0 {
            return Err("invalid flag: --github-app-application-id may only be specified when --github-app-private-key-file is specified".into());
        }
        if a.github_app_installation_id != 0 {
            return Err("invalid flag: --github-app-installation-id may only be specified when --github-app-private-key-file is specified".into());
        }
        None
    };
    let mut creds: Vec<Credential> = Vec::new();
    for c in &a.credential {
        let parsed = credentials::parse_credentials(c)
            .map_err(|e| format!("invalid argument {c:?} for \"--credential\" flag: {e}"))?;
        for cred in &parsed {
            cred.validate().map_err(str::to_string)?;
        }
        creds.extend(parsed);
    }
    if a.http_bind.is_empty() {
        if a.http_metrics {
            return Err("required flag: --http-bind must be specified when --http-metrics is set".into());
        }
        if a.http_pprof {
            return Err("required flag: --http-bind must be specified when --http-pprof is set".into());
        }
    }
    let mut git_config =
        common::sync::gitconfig::parse(&a.git_config).map_err(|e| format!("can't parse --git-config flag: {e}"))?;
    if !a.git_config_add.is_empty() {
        let joined = a.git_config_add.join(",");
        git_config.extend(
            common::sync::gitconfig::parse(&joined).map_err(|e| format!("can't parse --git-config-add flag: {e}"))?,
        );
    }

    // Credentials in an http(s) URL become the first credential.
    let mut repo = a.repo.clone();
    if username.is_empty()
        && let Some((stripped, user, pass)) = credentials::split_userinfo(&a.repo)
    {
        repo = stripped;
        username = user;
        if let Some(p) = pass {
            password = p;
        }
    }
    if !username.is_empty() {
        creds.insert(
            0,
            Credential {
                url: repo.clone(),
                username,
                password: (!password.is_empty()).then(|| Secret::new(password)),
                password_file: (!a.password_file.is_empty()).then(|| PathBuf::from(&a.password_file)),
            },
        );
    }
    let opt_path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    Ok(Config {
        repo,
        git_ref,
        root: PathBuf::from(&a.root),
        link: PathBuf::from(link),
        depth: u32::try_from(a.depth).unwrap_or(u32::MAX),
        filter: (!a.filter.is_empty()).then(|| a.filter.clone()),
        submodules,
        sparse_checkout_file: opt_path(&a.sparse_checkout_file),
        git: a.git.clone(),
        git_config,
        git_gc,
        period: period.std(),
        init_period: init_period.std(),
        sync_timeout: sync_timeout.std(),
        one_time: a.one_time,
        max_failures,
        init_max_failures: was_set("init_max_failures").then_some(a.init_max_failures).flatten(),
        error_file: opt_path(&a.error_file),
        touch_file: opt_path(&a.touch_file),
        stale_worktree_timeout: a.stale_worktree_timeout.std(),
        sync_on_signal,
        add_user: a.add_user,
        group_write: a.group_write,
        exechook,
        pre_publish_exechook,
        webhook,
        http_bind: (!a.http_bind.is_empty()).then(|| a.http_bind.clone()),
        http_metrics: a.http_metrics,
        http_pprof: a.http_pprof,
        credentials: creds,
        askpass_url: (!a.askpass_url.is_empty()).then(|| a.askpass_url.clone()),
        cookie_file: a.cookie_file,
        ssh_key_files: a.ssh_key_file.iter().map(PathBuf::from).collect(),
        ssh_known_hosts: a.ssh_known_hosts,
        ssh_known_hosts_file: PathBuf::from(&a.ssh_known_hosts_file),
        github_app,
        verbosity: log.verbosity(),
        flags_for_log,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}
