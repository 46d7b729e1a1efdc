//! git-sync's flags, as kubernetes/git-sync v4 takes them: the same names,
//! defaults, `GITSYNC_*` environment twins and deprecated v3 aliases, and
//! pflag's syntax (`--flag=value`, `-v=6`, booleans as `--flag` or
//! `--flag=false`, a repeated single-valued flag's last value wins).
//!
//! An environment variable stands in for a flag that is not on the command
//! line (it acts as the flag's default, as in git-sync). Where several
//! names of one variable are set, the last of the list wins, deprecated
//! names with a warning. [`parse`] turns it all into a
//! [`common::sync::Config`] or says why not.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory as _, FromArgMatches as _, Parser};
use common::sync::credentials::{self, Credential, Secret};
use common::sync::github::{AppId, GithubApp, PrivateKey};
use common::sync::hook::{ExecHookConfig, WebhookConfig};
use common::sync::{Config, GitGc, Submodules};

/// Flag parsing failed: pflag's exit code.
pub const EXIT_PARSE: i32 = 2;

/// git-sync's flags.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "git-sync",
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true,
    override_usage = "git-sync [FLAGS...]",
    about = "Sync a remote git repository to a local directory, published atomically through a symlink"
)]
pub struct GitSyncArgs {
    /// the git repository to sync (required)
    #[arg(long, default_value = "")]
    pub repo: String,
    /// the git revision (branch, tag, or hash) to sync
    #[arg(long = "ref", default_value = "HEAD")]
    pub git_ref: String,
    /// create a shallow clone with history truncated to the specified number of commits (0: full history)
    #[arg(long, default_value = "1", value_parser = parse_int, allow_hyphen_values = true)]
    pub depth: i64,
    /// use partial clone with the specified filter (e.g. 'blob:none', 'tree:0')
    #[arg(long, default_value = "")]
    pub filter: String,
    /// git submodule behavior: one of 'recursive', 'shallow', or 'off'
    #[arg(long, default_value = "recursive")]
    pub submodules: String,
    /// the path to a sparse-checkout file
    #[arg(long, default_value = "")]
    pub sparse_checkout_file: String,
    /// the root directory for git-sync operations (required)
    #[arg(long, default_value = "")]
    pub root: String,
    /// the path (absolute or relative to --root) at which to create a symlink to the checked-out files (default: the leaf dir of --repo)
    #[arg(long, default_value = "")]
    pub link: String,
    /// the path (absolute or relative to --root) to an optional file into which errors will be written
    #[arg(long, default_value = "")]
    pub error_file: String,
    /// how long to wait between sync attempts until the first success, >= 10ms if set (default: --period)
    #[arg(long, default_value = "0", value_parser = parse_duration, allow_hyphen_values = true)]
    pub init_period: GoDuration,
    /// how long to wait between syncs, must be >= 10ms; --wait overrides this
    #[arg(long, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub period: GoDuration,
    /// the total time allowed for one complete sync, must be >= 10ms; --timeout overrides this
    #[arg(long, default_value = "2m0s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub sync_timeout: GoDuration,
    /// exit after the first sync
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub one_time: bool,
    /// sync on receipt of the specified signal (e.g. SIGHUP, HUP or 1)
    #[arg(long, default_value = "")]
    pub sync_on_signal: String,
    /// the number of consecutive failures allowed before aborting (-1 retries forever)
    #[arg(long, default_value = "0", value_parser = parse_int, allow_hyphen_values = true)]
    pub max_failures: i64,
    /// the number of consecutive failures allowed before aborting during the initial sync phase; negative retries forever (default: --max-failures)
    #[arg(long, value_parser = parse_int, allow_hyphen_values = true)]
    pub init_max_failures: Option<i64>,
    /// the path (absolute or relative to --root) to an optional file which will be touched whenever a sync completes
    #[arg(long, default_value = "")]
    pub touch_file: String,
    /// add a record to /etc/passwd for the current UID/GID (needed to use SSH with an arbitrary UID)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub add_user: bool,
    /// ensure that all data (repo, worktrees, etc.) is group writable
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub group_write: bool,
    /// how long to retain non-current worktrees
    #[arg(long, default_value = "0", value_parser = parse_duration, allow_hyphen_values = true)]
    pub stale_worktree_timeout: GoDuration,
    /// an optional command to be run when syncs complete (must be idempotent)
    #[arg(long, default_value = "")]
    pub exechook_command: String,
    /// the timeout for the exechook
    #[arg(long, default_value = "30s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub exechook_timeout: GoDuration,
    /// the time to wait before retrying a failed exechook
    #[arg(long, default_value = "3s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub exechook_backoff: GoDuration,
    /// an optional command to be run before syncs complete (must be idempotent)
    #[arg(long, default_value = "")]
    pub pre_publish_exechook_command: String,
    /// the timeout for the pre-publish-exechook
    #[arg(long, default_value = "30s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub pre_publish_exechook_timeout: GoDuration,
    /// the time to wait before retrying a failed pre-publish-exechook
    #[arg(long, default_value = "3s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub pre_publish_exechook_backoff: GoDuration,
    /// a URL for optional webhook notifications when syncs complete (must be idempotent)
    #[arg(long, default_value = "")]
    pub webhook_url: String,
    /// the HTTP method for the webhook
    #[arg(long, default_value = "POST")]
    pub webhook_method: String,
    /// the HTTP status code indicating a successful webhook (0 disables success checks)
    #[arg(long, default_value = "200", value_parser = parse_int, allow_hyphen_values = true)]
    pub webhook_success_status: i64,
    /// the timeout for the webhook
    #[arg(long, default_value = "1s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub webhook_timeout: GoDuration,
    /// the time to wait before retrying a failed webhook
    #[arg(long, default_value = "3s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub webhook_backoff: GoDuration,
    /// the username to use for git auth
    #[arg(long, default_value = "")]
    pub username: String,
    /// DO NOT SET THIS FLAG EXCEPT IN TESTS; use $GITSYNC_PASSWORD
    #[arg(long = "__env__GITSYNC_PASSWORD", default_value = "", hide = true)]
    pub password_env: String,
    /// the file from which the password or personal access token for git auth will be sourced
    #[arg(long, default_value = "")]
    pub password_file: String,
    /// one or more credentials (JSON: {"url","username","password"|"password-file"} or a list of them)
    #[arg(long, action = ArgAction::Append)]
    pub credential: Vec<String>,
    /// the SSH key(s) to use
    #[arg(long, action = ArgAction::Append)]
    pub ssh_key_file: Vec<String>,
    /// enable SSH known_hosts verification
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true", value_parser = parse_bool)]
    pub ssh_known_hosts: bool,
    /// the known_hosts file to use
    #[arg(long, default_value = "/etc/git-secret/known_hosts")]
    pub ssh_known_hosts_file: String,
    /// use a git cookiefile (/etc/git-secret/cookie_file) for authentication
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub cookie_file: bool,
    /// a URL to query for git credentials (username=<value> and password=<value>)
    #[arg(long, default_value = "")]
    pub askpass_url: String,
    /// the GitHub base URL to use when making requests to GitHub when using GitHub app auth
    #[arg(long, default_value = "https://api.github.com/")]
    pub github_base_url: String,
    /// DO NOT SET THIS FLAG EXCEPT IN TESTS; use $GITSYNC_GITHUB_APP_PRIVATE_KEY
    #[arg(long = "__env__GITSYNC_GITHUB_APP_PRIVATE_KEY", default_value = "", hide = true)]
    pub github_app_private_key_env: String,
    /// the file from which the private key for GitHub app auth will be sourced
    #[arg(long, default_value = "")]
    pub github_app_private_key_file: String,
    /// the GitHub app client ID to use for GitHub app auth
    #[arg(long, default_value = "")]
    pub github_app_client_id: String,
    /// the GitHub app application ID to use for GitHub app auth
    #[arg(long, default_value = "0", value_parser = parse_int, allow_hyphen_values = true)]
    pub github_app_application_id: i64,
    /// the GitHub app installation ID to use for GitHub app auth
    #[arg(long, default_value = "0", value_parser = parse_int, allow_hyphen_values = true)]
    pub github_app_installation_id: i64,
    /// the git command to run (subject to PATH search, mostly for testing)
    #[arg(long, default_value = "git")]
    pub git: String,
    /// additional git config options in 'section.var1:val1,"section.sub.var2":"val2"' format
    #[arg(long, default_value = "")]
    pub git_config: String,
    /// add one additional git config option in 'section.var1:val1' format; can be repeated
    #[arg(long, action = ArgAction::Append)]
    pub git_config_add: Vec<String>,
    /// git garbage collection behavior: one of 'auto', 'always', 'aggressive', or 'off'
    #[arg(long, default_value = "always")]
    pub git_gc: String,
    /// the bind address (including port) for git-sync's HTTP endpoint
    #[arg(long, default_value = "")]
    pub http_bind: String,
    /// enable metrics on git-sync's HTTP endpoint
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub http_metrics: bool,
    /// enable the pprof debug endpoints on git-sync's HTTP endpoint
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub http_pprof: bool,
    /// logs at this V level and lower will be printed
    #[arg(short = 'v', long, default_value = "0", value_parser = parse_int, allow_hyphen_values = true)]
    pub verbose: i64,
    /// print the version and exit
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub version: bool,
    /// print help text and exit
    #[arg(short = 'h', long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub help: bool,
    /// print help text and exit
    #[arg(short = '?', long = "__?", hide = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub help_alias: bool,
    /// print the full manual and exit
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub man: bool,

    // Deprecated v3 flags, still accepted.
    /// DEPRECATED: use --ref instead
    #[arg(long, default_value = "", hide = true)]
    pub branch: String,
    /// DEPRECATED: use --group-write instead
    #[arg(long, default_value = "0", hide = true, value_parser = parse_int, allow_hyphen_values = true)]
    pub change_permissions: i64,
    /// DEPRECATED: use --link instead
    #[arg(long, default_value = "", hide = true)]
    pub dest: String,
    /// DEPRECATED: use --max-failures instead
    #[arg(long, default_value = "0", hide = true, value_parser = parse_int, allow_hyphen_values = true)]
    pub max_sync_failures: i64,
    /// DEPRECATED: use --password-file or $GITSYNC_PASSWORD instead
    #[arg(long, default_value = "", hide = true)]
    pub password: String,
    /// DEPRECATED: use --ref instead
    #[arg(long, default_value = "", hide = true)]
    pub rev: String,
    /// DEPRECATED: this flag is no longer necessary
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub ssh: bool,
    /// DEPRECATED: use --exechook-command instead
    #[arg(long, default_value = "", hide = true)]
    pub sync_hook_command: String,
    /// DEPRECATED: use --sync-timeout instead
    #[arg(long, default_value = "0", hide = true, value_parser = parse_int, allow_hyphen_values = true)]
    pub timeout: i64,
    /// DEPRECATED: use -v or --verbose instead
    #[arg(long = "v", default_value = "-1", hide = true, value_parser = parse_int, allow_hyphen_values = true)]
    pub v_deprecated: i64,
    /// DEPRECATED: use --period instead
    #[arg(long, default_value = "0", hide = true, value_parser = parse_float, allow_hyphen_values = true)]
    pub wait: f64,

    /// Arguments that are not flags (ignored, as git-sync does).
    #[arg(hide = true, trailing_var_arg = false)]
    pub rest: Vec<String>,
}

/// Flag id, its primary variable, then its older names (last one set wins).
pub const ENV: &[(&str, &str, &[&str])] = &[
    ("verbose", "GITSYNC_VERBOSE", &[]),
    ("repo", "GITSYNC_REPO", &["GIT_SYNC_REPO"]),
    ("git_ref", "GITSYNC_REF", &[]),
    ("depth", "GITSYNC_DEPTH", &["GIT_SYNC_DEPTH"]),
    ("filter", "GITSYNC_FILTER", &[]),
    ("submodules", "GITSYNC_SUBMODULES", &["GIT_SYNC_SUBMODULES"]),
    (
        "sparse_checkout_file",
        "GITSYNC_SPARSE_CHECKOUT_FILE",
        &["GIT_SYNC_SPARSE_CHECKOUT_FILE"],
    ),
    ("root", "GITSYNC_ROOT", &["GIT_SYNC_ROOT"]),
    ("link", "GITSYNC_LINK", &["GIT_SYNC_LINK"]),
    ("error_file", "GITSYNC_ERROR_FILE", &["GIT_SYNC_ERROR_FILE"]),
    ("init_period", "GITSYNC_INIT_PERIOD", &[]),
    ("period", "GITSYNC_PERIOD", &["GIT_SYNC_PERIOD"]),
    ("sync_timeout", "GITSYNC_SYNC_TIMEOUT", &["GIT_SYNC_SYNC_TIMEOUT"]),
    ("one_time", "GITSYNC_ONE_TIME", &["GIT_SYNC_ONE_TIME"]),
    ("sync_on_signal", "GITSYNC_SYNC_ON_SIGNAL", &["GIT_SYNC_SYNC_ON_SIGNAL"]),
    ("max_failures", "GITSYNC_MAX_FAILURES", &["GIT_SYNC_MAX_FAILURES"]),
    ("init_max_failures", "GITSYNC_INIT_MAX_FAILURES", &[]),
    ("touch_file", "GITSYNC_TOUCH_FILE", &["GIT_SYNC_TOUCH_FILE"]),
    ("add_user", "GITSYNC_ADD_USER", &["GIT_SYNC_ADD_USER"]),
    ("group_write", "GITSYNC_GROUP_WRITE", &["GIT_SYNC_GROUP_WRITE"]),
    ("stale_worktree_timeout", "GITSYNC_STALE_WORKTREE_TIMEOUT", &[]),
    (
        "exechook_command",
        "GITSYNC_EXECHOOK_COMMAND",
        &["GIT_SYNC_EXECHOOK_COMMAND"],
    ),
    (
        "exechook_timeout",
        "GITSYNC_EXECHOOK_TIMEOUT",
        &["GIT_SYNC_EXECHOOK_TIMEOUT"],
    ),
    (
        "exechook_backoff",
        "GITSYNC_EXECHOOK_BACKOFF",
        &["GIT_SYNC_EXECHOOK_BACKOFF"],
    ),
    (
        "pre_publish_exechook_command",
        "GITSYNC_PRE_PUBLISH_EXECHOOK_COMMAND",
        &[],
    ),
    (
        "pre_publish_exechook_timeout",
        "GITSYNC_PRE_PUBLISH_EXECHOOK_TIMEOUT",
        &[],
    ),
    (
        "pre_publish_exechook_backoff",
        "GITSYNC_PRE_PUBLISH_EXECHOOK_BACKOFF",
        &[],
    ),
    ("webhook_url", "GITSYNC_WEBHOOK_URL", &["GIT_SYNC_WEBHOOK_URL"]),
    ("webhook_method", "GITSYNC_WEBHOOK_METHOD", &["GIT_SYNC_WEBHOOK_METHOD"]),
    (
        "webhook_success_status",
        "GITSYNC_WEBHOOK_SUCCESS_STATUS",
        &["GIT_SYNC_WEBHOOK_SUCCESS_STATUS"],
    ),
    (
        "webhook_timeout",
        "GITSYNC_WEBHOOK_TIMEOUT",
        &["GIT_SYNC_WEBHOOK_TIMEOUT"],
    ),
    (
        "webhook_backoff",
        "GITSYNC_WEBHOOK_BACKOFF",
        &["GIT_SYNC_WEBHOOK_BACKOFF"],
    ),
    ("username", "GITSYNC_USERNAME", &["GIT_SYNC_USERNAME"]),
    ("password_env", "GITSYNC_PASSWORD", &["GIT_SYNC_PASSWORD"]),
    ("password_file", "GITSYNC_PASSWORD_FILE", &["GIT_SYNC_PASSWORD_FILE"]),
    ("credential", "GITSYNC_CREDENTIAL", &[]),
    (
        "ssh_key_file",
        "GITSYNC_SSH_KEY_FILE",
        &["GIT_SYNC_SSH_KEY_FILE", "GIT_SSH_KEY_FILE"],
    ),
    (
        "ssh_known_hosts",
        "GITSYNC_SSH_KNOWN_HOSTS",
        &["GIT_SYNC_KNOWN_HOSTS", "GIT_KNOWN_HOSTS"],
    ),
    (
        "ssh_known_hosts_file",
        "GITSYNC_SSH_KNOWN_HOSTS_FILE",
        &["GIT_SYNC_SSH_KNOWN_HOSTS_FILE", "GIT_SSH_KNOWN_HOSTS_FILE"],
    ),
    (
        "cookie_file",
        "GITSYNC_COOKIE_FILE",
        &["GIT_SYNC_COOKIE_FILE", "GIT_COOKIE_FILE"],
    ),
    (
        "askpass_url",
        "GITSYNC_ASKPASS_URL",
        &["GIT_SYNC_ASKPASS_URL", "GIT_ASKPASS_URL"],
    ),
    ("github_base_url", "GITSYNC_GITHUB_BASE_URL", &[]),
    ("github_app_private_key_env", "GITSYNC_GITHUB_APP_PRIVATE_KEY", &[]),
    (
        "github_app_private_key_file",
        "GITSYNC_GITHUB_APP_PRIVATE_KEY_FILE",
        &[],
    ),
    ("github_app_client_id", "GITSYNC_GITHUB_APP_CLIENT_ID", &[]),
    ("github_app_application_id", "GITSYNC_GITHUB_APP_APPLICATION_ID", &[]),
    ("github_app_installation_id", "GITSYNC_GITHUB_APP_INSTALLATION_ID", &[]),
    ("git", "GITSYNC_GIT", &["GIT_SYNC_GIT"]),
    ("git_config", "GITSYNC_GIT_CONFIG", &["GIT_SYNC_GIT_CONFIG"]),
    ("git_gc", "GITSYNC_GIT_GC", &["GIT_SYNC_GIT_GC"]),
    ("http_bind", "GITSYNC_HTTP_BIND", &["GIT_SYNC_HTTP_BIND"]),
    ("http_metrics", "GITSYNC_HTTP_METRICS", &["GIT_SYNC_HTTP_METRICS"]),
    ("http_pprof", "GITSYNC_HTTP_PPROF", &["GIT_SYNC_HTTP_PPROF"]),
    // Deprecated flags keep their v3 variables.
    ("branch", "GIT_SYNC_BRANCH", &[]),
    ("change_permissions", "GIT_SYNC_PERMISSIONS", &[]),
    ("dest", "GIT_SYNC_DEST", &[]),
    ("max_sync_failures", "GIT_SYNC_MAX_SYNC_FAILURES", &[]),
    ("rev", "GIT_SYNC_REV", &[]),
    ("sync_hook_command", "GIT_SYNC_HOOK_COMMAND", &[]),
    ("timeout", "GIT_SYNC_TIMEOUT", &[]),
    ("wait", "GIT_SYNC_WAIT", &[]),
];

/// The deprecated flags and what replaces them.
const DEPRECATED: &[(&str, &str)] = &[
    ("branch", "use --ref instead"),
    ("change-permissions", "use --group-write instead"),
    ("dest", "use --link instead"),
    ("max-sync-failures", "use --max-failures instead"),
    ("password", "use --password-file or $GITSYNC_PASSWORD instead"),
    ("rev", "use --ref instead"),
    ("ssh", "no longer necessary"),
    ("sync-hook-command", "use --exechook-command instead"),
    ("timeout", "use --sync-timeout instead"),
    ("v", "use -v or --verbose instead"),
    ("wait", "use --period instead"),
];

/// A Go `time.Duration`: signed nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration(pub i64);

impl GoDuration {
    /// As a std duration (negative is zero).
    pub fn std(self) -> Duration {
        Duration::from_nanos(u64::try_from(self.0).unwrap_or(0))
    }

    fn ms(ms: i64) -> Self {
        Self(ms.saturating_mul(1_000_000))
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {s:?}: invalid syntax")),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: sign, then `0x`, `0o`, `0b` or a
/// leading `0` (octal) prefix; `_` between digits with a prefix.
pub fn parse_int(s: &str) -> Result<i64, String> {
    let bad = || format!("strconv.ParseInt: parsing {s:?}: invalid syntax");
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower.clone(), false)
    };
    let digits = if prefixed {
        if digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
            return Err(bad());
        }
        digits.replace('_', "")
    } else {
        digits
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    let v = i128::from_str_radix(&digits, radix).map_err(|_| bad())?;
    let v = if neg { -v } else { v };
    i64::try_from(v).map_err(|_| format!("strconv.ParseInt: parsing {s:?}: value out of range"))
}

/// Go's `strconv.ParseFloat(s, 64)` for the decimal forms people write.
pub fn parse_float(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .map_err(|_| format!("strconv.ParseFloat: parsing {s:?}: invalid syntax"))
}

/// Go's `time.ParseDuration`: `300ms`, `-1.5h`, `2h45m`, `0`; units ns, us
/// (µs), ms, s, m, h.
pub fn parse_duration(s: &str) -> Result<GoDuration, String> {
    let bad = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(GoDuration(0));
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    let mut exact: i128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        match num.split_once('.') {
            None => exact += num.parse::<i128>().map_err(|_| bad())? * scale,
            Some((whole, frac)) => {
                let w: i128 = if whole.is_empty() {
                    0
                } else {
                    whole.parse().map_err(|_| bad())?
                };
                exact += w * scale;
                if !frac.is_empty() {
                    let f: f64 = format!("0.{frac}").parse().map_err(|_| bad())?;
                    total += f * scale as f64;
                }
            }
        }
        rest = tail;
    }
    let ns = exact + total as i128;
    let ns = if neg { -ns } else { ns };
    i64::try_from(ns)
        .map(GoDuration)
        .map_err(|_| format!("time: invalid duration {s:?}"))
}

/// A signal name (`SIGHUP`, `HUP`) or number to its number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = parse_int(s) {
        return i32::try_from(n).ok().filter(|n| *n > 0);
    }
    common::sync::signal_number(s)
}

/// What [`parse`] decided.
pub enum Parsed {
    /// Print this to stdout and exit 0 (help, version, manual).
    Print(String),
    /// Run with this config; `warnings` were already printed.
    Run(Box<Config>, Log),
    /// A flag could not be parsed (exit 2), or `--root` is missing (exit
    /// 1): message and usage on stderr.
    Usage(String, i32),
    /// Something in the environment is malformed: exit 1.
    Fatal(String),
    /// The flags are inconsistent: message and usage on stderr, the
    /// message in the error file, exit 1.
    Invalid(String, Log),
}

/// The logger the binary uses: verbosity and error file.
pub type Log = common::sync::log::Log;

/// The usage text (`--help`).
pub fn usage() -> String {
    let mut cmd = GitSyncArgs::command();
    let mut out = cmd.render_help().to_string();
    out.push_str("\nENVIRONMENT VARIABLES (each stands in for its flag when the flag is not given):\n");
    let width = ENV.iter().map(|(_, e, _)| e.len()).max().unwrap_or(0);
    let mut rows: Vec<(String, String)> = ENV
        .iter()
        .filter_map(|(id, primary, aliases)| {
            let arg = cmd.get_arguments().find(|a| a.get_id() == *id)?;
            let flag = match *id {
                "password_env" => "(password: no flag)".to_string(),
                "github_app_private_key_env" => "(GitHub app private key: no flag)".to_string(),
                _ => format!("--{}", arg.get_long().unwrap_or(id)),
            };
            let old = if aliases.is_empty() {
                String::new()
            } else {
                format!(" (deprecated: ${})", aliases.join(", $"))
            };
            Some((primary.to_string(), format!("{flag}{old}")))
        })
        .collect();
    rows.sort();
    for (env, what) in rows {
        out.push_str(&format!("  {env:width$}  {what}\n"));
    }
    out
}

/// The manual (`--man`).
pub fn manual() -> String {
    let mut out = String::from(MANUAL_HEAD);
    out.push_str("\nOPTIONS\n\n");
    let mut cmd = GitSyncArgs::command();
    out.push_str(&cmd.render_long_help().to_string());
    out.push_str(MANUAL_TAIL);
    out
}

const MANUAL_HEAD: &str = "GIT-SYNC(1)

NAME
    git-sync - keep a local checkout of a remote git repository up to date

SYNOPSIS
    git-sync --repo=<url> --root=<dir> [FLAGS...]

DESCRIPTION
    git-sync fetches one ref (a branch, a tag, a full commit hash, or HEAD,
    the remote's default branch) of a remote repository, checks it out into
    a worktree of its own under --root, and publishes that worktree by
    swapping a symlink (--link) atomically. It then polls the remote every
    --period and publishes each new commit the same way, or, with
    --one-time, stops after the first sync. A commit hash as --ref is
    synced once and never polled again.

    Consumers read through the link. The link's target is relative (the
    volume may be mounted elsewhere) and its last path component is the
    full hash of the published commit: basename \"$(readlink <link>)\".
    Everything else under --root is git-sync's own and may change.

    git does the work: git-sync runs the program named by --git for every
    step (fetch, worktree, reset, submodules, sparse checkout, gc), with a
    private global git config, so what git supports (http, https, ssh,
    file, partial clone, submodules) works.
";

const MANUAL_TAIL: &str = "
AUTHENTICATION
    --username with $GITSYNC_PASSWORD or --password-file (re-read before
    every sync), credentials in an http(s) URL, --credential (JSON, one per
    URL), --askpass-url (GET before every sync; the answer has lines
    username=... and password=...), and GitHub App authentication are all
    handed to git's credential cache with 'git credential approve' before
    each sync. SSH uses --ssh-key-file (repeatable) and known hosts from
    --ssh-known-hosts-file. Credentials are never logged.

HOOKS
    --exechook-command runs a command (no arguments) in the new worktree
    after each publish, with GITSYNC_HASH set; --webhook-url sends a request
    with a Gitsync-Hash header; --pre-publish-exechook-command runs before
    the link moves but does not hold it back. Each runs at least once per
    hash (also after a restart) and is retried with its backoff; with
    --one-time it is waited for, run once, and a failure makes the exit
    code 1. Hooks must be idempotent.

HTTP
    With --http-bind, / answers 503 until the first successful sync and
    200 after; --http-metrics adds /metrics, --http-pprof /debug/pprof/.

EXIT STATUS
    0 after --one-time with every hook successful, after --help, --version
    or --man, and on SIGINT when parked on a commit hash. 1 for invalid
    flags (2 when a flag cannot be parsed), when --max-failures consecutive
    syncs failed (0 means the first failure), or when a --one-time hook
    failed. As PID 1, the child's code, or 128+N when signal N killed it.

EXAMPLE
    git-sync --repo=https://github.com/kubernetes/git-sync --root=/git \\
        --link=current --period=30s
";

fn deprecated_warning(long: &str) -> Option<String> {
    DEPRECATED
        .iter()
        .find(|(n, _)| *n == long)
        .map(|(n, why)| format!("Flag --{n} has been deprecated, {why}"))
}

/// Looks a variable up in `env` (the process environment in the binary).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Parses `argv` (with the program name first) and the environment.
/// Warnings (deprecated flags and variables) go to `warn`.
pub fn parse(argv: &[OsString], env: EnvLookup<'_>, warn: &mut dyn FnMut(String)) -> Parsed {
    let cmd = GitSyncArgs::command();
    let first = match cmd.clone().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => return Parsed::Usage(e.to_string(), EXIT_PARSE),
    };
    // Environment variables become flags placed before the command line's,
    // for the flags the command line does not set.
    let mut extra: Vec<OsString> = Vec::new();
    for (id, primary, aliases) in ENV {
        if first.value_source(id) == Some(ValueSource::CommandLine) {
            continue;
        }
        let mut found: Option<(&str, String)> = None;
        let mut count = 0;
        if let Some(v) = env(primary) {
            found = Some((primary, v));
            count += 1;
        }
        for alias in *aliases {
            if let Some(v) = env(alias) {
                warn(format!("env ${alias} has been deprecated, use ${primary} instead"));
                found = Some((alias, v));
                count += 1;
            }
        }
        let Some((name, value)) = found else { continue };
        if count > 1 {
            warn(format!("env ${primary} was overridden by ${name}"));
        }
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == *id) else {
            continue;
        };
        let long = arg.get_long().unwrap_or(id);
        if *id == "ssh_key_file" {
            for part in value.split(':') {
                extra.push(format!("--{long}={part}").into());
            }
        } else {
            extra.push(format!("--{long}={value}").into());
        }
    }
    let mut full: Vec<OsString> = argv.iter().take(1).cloned().collect();
    full.extend(extra);
    full.extend(argv.iter().skip(1).cloned());
    let matches = match cmd.clone().try_get_matches_from(&full) {
        Ok(m) => m,
        Err(e) => return Parsed::Fatal(format!("FATAL: invalid environment variable: {e}")),
    };
    let mut args = match GitSyncArgs::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => return Parsed::Fatal(format!("FATAL: {e}")),
    };
    for a in cmd.get_arguments() {
        if first.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
            && let Some(w) = a.get_long().and_then(deprecated_warning)
        {
            warn(w);
        }
    }
    if args.ssh_key_file.is_empty() {
        args.ssh_key_file.push("/etc/git-secret/ssh".into());
    }
    if args.version {
        return Parsed::Print(format!("{}\n", env!("CARGO_PKG_VERSION")));
    }
    if args.help || args.help_alias {
        return Parsed::Print(usage());
    }
    if args.man {
        return Parsed::Print(manual());
    }
    if args.root.is_empty() {
        return Parsed::Usage("required flag: --root must be specified".into(), 1);
    }
    let abs_root = match common::sync::absolute_root(std::path::Path::new(&args.root)) {
        Ok(r) => r,
        Err(e) => return Parsed::Fatal(format!("FATAL: can't absolutize --root: {e}")),
    };
    let verbosity = if args.v_deprecated >= 0 {
        args.v_deprecated
    } else {
        args.verbose
    };
    let error_file = (!args.error_file.is_empty()).then(|| abs_root.join(&args.error_file));
    let log = Log::new(verbosity.clamp(0, 255) as u8, error_file);
    let was_set = |id: &str| matches!(matches.value_source(id), Some(ValueSource::CommandLine));
    let flags_for_log = flags_for_log(&cmd, &matches, &first, &args);
    match validate(args, was_set, &log, flags_for_log) {
        Ok(config) => Parsed::Run(Box::new(config), log),
        Err(msg) => Parsed::Invalid(msg, log),
    }
}

/// The flags given (command line or environment), `--name=value`, with
/// secrets redacted: for the "starting up" log line.
fn flags_for_log(
    cmd: &clap::Command,
    matches: &clap::ArgMatches,
    _first: &clap::ArgMatches,
    args: &GitSyncArgs,
) -> Vec<String> {
    let mut out = Vec::new();
    for a in cmd.get_arguments() {
        let id = a.get_id().as_str();
        if a.is_hide_set() && !DEPRECATED.iter().any(|(n, _)| Some(*n) == a.get_long()) {
            continue;
        }
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let Some(long) = a.get_long() else { continue };
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let value = match id {
            "password" => "REDACTED".to_string(),
            "repo" => credentials::redact_url(&args.repo),
            "credential" => {
                let creds: Vec<String> = values
                    .iter()
                    .flat_map(|v| credentials::parse_credentials(v).unwrap_or_default())
                    .map(|c| c.redacted().to_string())
                    .collect();
                format!("[{}]", creds.join(","))
            }
            _ => values.join(","),
        };
        out.push(format!("--{long}={value}"));
    }
    out
}

fn validate(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(args: &[&str], env: &[(&str, &str)]) -> (Parsed, Vec<String>) {
        let argv: Vec<OsString> = std::iter::once("git-sync")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |k: &str| env.get(k).cloned();
        let mut warnings = Vec::new();
        let p = parse(&argv, &lookup, &mut |w| warnings.push(w));
        (p, warnings)
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env).0 {
            Parsed::Run(c, _) => *c,
            Parsed::Usage(e, _) | Parsed::Fatal(e) | Parsed::Invalid(e, _) => panic!("{args:?}: {e}"),
            Parsed::Print(_) => panic!("{args:?}: printed"),
        }
    }

    fn invalid(args: &[&str], env: &[(&str, &str)]) -> String {
        match run(args, env).0 {
            Parsed::Invalid(e, _) | Parsed::Usage(e, _) | Parsed::Fatal(e) => e,
            _ => panic!("{args:?} should be refused"),
        }
    }

    const BASE: [&str; 2] = ["--repo=file:///r/repo", "--root=/tmp/gs-root"];

    fn with(extra: &[&'static str]) -> Vec<&'static str> {
        BASE.iter().copied().chain(extra.iter().copied()).collect()
    }

    #[test]
    fn defaults_are_v4s() {
        let c = config(&BASE, &[]);
        assert_eq!(c.git_ref, "HEAD");
        assert_eq!(c.depth, 1);
        assert_eq!(c.period, Duration::from_secs(10));
        assert_eq!(c.init_period, Duration::from_secs(10));
        assert_eq!(c.sync_timeout, Duration::from_secs(120));
        assert_eq!(c.git_gc, GitGc::Always);
        assert_eq!(c.submodules, Submodules::Recursive);
        assert_eq!(c.link, PathBuf::from("repo"));
        assert_eq!(c.max_failures, 0);
        assert_eq!(c.init_max_failures, None);
        assert_eq!(c.ssh_key_files, [PathBuf::from("/etc/git-secret/ssh")]);
        assert!(c.ssh_known_hosts);
        assert_eq!(c.git, "git");
    }

    #[test]
    fn pflag_syntax() {
        let c = config(
            &with(&[
                "-v=6",
                "--depth",
                "3",
                "--one-time",
                "--ref=v1",
                "--ref=v2",
                "--period=100ms",
            ]),
            &[],
        );
        assert_eq!(c.verbosity, 6);
        assert_eq!(c.depth, 3);
        assert!(c.one_time);
        assert_eq!(c.git_ref, "v2", "the last of a repeated flag wins");
        assert_eq!(c.period, Duration::from_millis(100));
        let c = config(&with(&["-v", "5", "--one-time=false", "--ssh-known-hosts=false"]), &[]);
        assert_eq!(c.verbosity, 5);
        assert!(!c.one_time);
        assert!(!c.ssh_known_hosts);
        assert_eq!(config(&with(&["-v3"]), &[]).verbosity, 3);
        assert_eq!(config(&with(&["--v=2"]), &[]).verbosity, 2, "deprecated --v");
        let c = config(
            &with(&[
                "--git-config-add=a.b:c",
                "--git-config-add",
                "d.e:f",
                "--git-config=x.y:z",
            ]),
            &[],
        );
        assert_eq!(
            c.git_config,
            [
                ("x.y".into(), "z".into()),
                ("a.b".into(), "c".into()),
                ("d.e".into(), "f".into())
            ]
        );
        assert!(matches!(run(&with(&["--no-such-flag"]), &[]).0, Parsed::Usage(_, 2)));
        assert!(matches!(run(&["--repo=x"], &[]).0, Parsed::Usage(_, 1)));
    }

    #[test]
    fn env_twins_and_precedence() {
        let (p, warnings) = run(
            &["--root=/tmp/x"],
            &[
                ("GITSYNC_REPO", "file:///new"),
                ("GIT_SYNC_REPO", "file:///old"),
                ("GITSYNC_ONE_TIME", "true"),
            ],
        );
        let Parsed::Run(c, _) = p else { panic!("should run") };
        assert_eq!(c.repo, "file:///old", "the older name, set last, wins (as in git-sync)");
        assert!(c.one_time);
        assert!(
            warnings.iter().any(|w| w.contains("GIT_SYNC_REPO has been deprecated")),
            "{warnings:?}"
        );
        let c = config(&with(&["--depth=4"]), &[("GITSYNC_DEPTH", "9")]);
        assert_eq!(c.depth, 4, "the command line beats the environment");
        let c = config(&BASE, &[("GITSYNC_SSH_KEY_FILE", "/a:/b")]);
        assert_eq!(c.ssh_key_files, [PathBuf::from("/a"), PathBuf::from("/b")]);
        let c = config(&with(&["--ssh-key-file=/c"]), &[("GITSYNC_SSH_KEY_FILE", "/a:/b")]);
        assert_eq!(c.ssh_key_files, [PathBuf::from("/c")]);
        assert!(matches!(run(&BASE, &[("GITSYNC_DEPTH", "x")]).0, Parsed::Fatal(_)));
        let c = config(&BASE, &[("GITSYNC_INIT_MAX_FAILURES", "3")]);
        assert_eq!(c.init_max_failures, Some(3));
    }

    #[test]
    fn credentials_from_url_user_and_flags() {
        let c = config(&["--repo=http://me:s3cret@127.0.0.1:1/repo", "--root=/tmp/x"], &[]);
        assert_eq!(c.repo, "http://127.0.0.1:1/repo");
        assert_eq!(c.credentials.len(), 1);
        assert_eq!(c.credentials[0].username, "me");
        assert_eq!(c.credentials[0].password, Some(Secret::new("s3cret")));
        assert!(
            c.flags_for_log.iter().all(|f| !f.contains("s3cret")),
            "{:?}",
            c.flags_for_log
        );
        let c = config(&with(&["--username=u"]), &[("GITSYNC_PASSWORD", "pw")]);
        assert_eq!(c.credentials[0].password, Some(Secret::new("pw")));
        let c = config(
            &with(&["--credential", r#"{"url":"http://a","username":"u","password":"p"}"#]),
            &[],
        );
        assert_eq!(c.credentials.len(), 1);
        assert!(invalid(&with(&["--username=u"]), &[]).contains("--password-file"));
        assert!(invalid(&with(&["--password-file=/f"]), &[]).contains("--username"));
        assert!(
            invalid(
                &[
                    "--repo=http://a:b@h/r",
                    "--root=/x",
                    "--username=u",
                    "--password-file=/f"
                ],
                &[]
            )
            .contains("credentials may not")
        );
    }

    #[test]
    fn refusals() {
        assert!(invalid(&["--repo=x"], &[]).contains("--root"));
        assert!(invalid(&["--root=/x"], &[]).contains("--repo"));
        assert!(invalid(&with(&["--ref="]), &[]).contains("--ref"));
        assert!(invalid(&with(&["--depth=-1"]), &[]).contains("--depth"));
        assert!(invalid(&with(&["--period=1ms"]), &[]).contains("--period"));
        assert!(invalid(&with(&["--git-gc=sometimes"]), &[]).contains("--git-gc"));
        assert!(invalid(&with(&["--submodules=all"]), &[]).contains("--submodules"));
        assert!(invalid(&with(&["--http-metrics"]), &[]).contains("--http-bind"));
        assert!(invalid(&with(&["--sync-on-signal=SIGNOPE"]), &[]).contains("--sync-on-signal"));
        assert!(invalid(&with(&["--change-permissions=0775"]), &[]).contains("--change-permissions"));
        assert!(invalid(&with(&["--branch=a", "--rev=b"]), &[]).contains("--branch"));
        assert!(
            invalid(&with(&["--exechook-command=/x", "--exechook-timeout=10ms"]), &[]).contains("exechook-timeout")
        );
        assert!(invalid(&with(&["--github-app-application-id=1"]), &[]).contains("installation-id"));
        assert!(invalid(&with(&["--credential={\"url\":\"a\"}"]), &[]).contains("username"));
    }

    #[test]
    fn deprecated_aliases() {
        let (p, warnings) = run(
            &with(&[
                "--branch=dev",
                "--wait=0.5",
                "--timeout=7",
                "--dest=out",
                "--max-sync-failures=3",
            ]),
            &[],
        );
        let Parsed::Run(c, _) = p else { panic!("should run") };
        assert_eq!(c.git_ref, "dev");
        assert_eq!(c.period, Duration::from_millis(500));
        assert_eq!(c.sync_timeout, Duration::from_secs(7));
        assert_eq!(c.link, PathBuf::from("out"));
        assert_eq!(c.max_failures, 3);
        assert!(
            warnings
                .iter()
                .any(|w| w == "Flag --branch has been deprecated, use --ref instead"),
            "{warnings:?}"
        );
        assert_eq!(config(&with(&["--rev=abc"]), &[]).git_ref, "abc");
        assert_eq!(
            config(&with(&["--sync-hook-command=/h"]), &[])
                .exechook
                .map(|h| h.command),
            Some("/h".into())
        );
    }

    #[test]
    fn print_and_exit() {
        for flag in ["--help", "-h", "-?", "--version", "--man"] {
            assert!(matches!(run(&[flag], &[]).0, Parsed::Print(_)), "{flag}");
        }
        let Parsed::Print(help) = run(&["--help"], &[]).0 else {
            panic!()
        };
        assert!(help.contains("GITSYNC_REPO") && help.contains("--repo"));
    }

    #[test]
    fn go_values() {
        assert_eq!(parse_duration("1m30s"), Ok(GoDuration(90_000_000_000)));
        assert_eq!(parse_duration("100ms"), Ok(GoDuration::ms(100)));
        assert_eq!(parse_duration("1.5h"), Ok(GoDuration(5_400_000_000_000)));
        assert_eq!(parse_duration("-2s"), Ok(GoDuration(-2_000_000_000)));
        assert_eq!(parse_duration("0"), Ok(GoDuration(0)));
        assert_eq!(parse_duration("10µs"), Ok(GoDuration(10_000)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1d").is_err());
        assert_eq!(parse_int("0x10"), Ok(16));
        assert_eq!(parse_int("010"), Ok(8));
        assert_eq!(parse_int("-1"), Ok(-1));
        assert_eq!(
            parse_int("1_000"),
            Err("strconv.ParseInt: parsing \"1_000\": invalid syntax".into())
        );
        assert!(parse_int("").is_err());
        assert_eq!(parse_bool("T"), Ok(true));
        assert!(parse_bool("yes").is_err());
        assert_eq!(parse_signal("SIGHUP"), Some(1));
        assert_eq!(parse_signal("HUP"), Some(1));
        assert_eq!(parse_signal("1"), Some(1));
        assert_eq!(parse_signal("NOPE"), None);
    }
}
