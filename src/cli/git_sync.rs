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

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory as _, FromArgMatches as _, Parser};
use common::sync::Config;
use common::sync::credentials;

mod goflag;
mod services;
mod validate;

pub use goflag::{GoDuration, parse_bool, parse_duration, parse_float, parse_int, parse_signal};
pub use services::ServicesArgs;

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

    /// The services mode (`--services`).
    #[command(flatten)]
    pub services: ServicesArgs,

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
    /// Run the services mode (`--services`) with this config.
    Services(Box<common::gitopper::Config>, Log),
}

/// Every flag's variables: git-sync's, then the services mode's.
fn env_table() -> impl Iterator<Item = &'static (&'static str, &'static str, &'static [&'static str])> {
    ENV.iter().chain(services::ENV.iter())
}

/// The logger the binary uses: verbosity and error file.
pub type Log = common::sync::log::Log;

/// The usage text (`--help`).
pub fn usage() -> String {
    let mut cmd = GitSyncArgs::command();
    let mut out = cmd.render_help().to_string();
    out.push_str("\nENVIRONMENT VARIABLES (each stands in for its flag when the flag is not given):\n");
    let width = env_table().map(|(_, e, _)| e.len()).max().unwrap_or(0);
    let mut rows: Vec<(String, String)> = env_table()
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
    for (id, primary, aliases) in env_table() {
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
    let was_set = |id: &str| matches!(matches.value_source(id), Some(ValueSource::CommandLine));
    let verbosity = if args.v_deprecated >= 0 {
        args.v_deprecated
    } else {
        args.verbose
    };
    if !args.services.services.is_empty() {
        let log = Log::new(verbosity.clamp(0, 255) as u8, None);
        let flags_for_log = flags_for_log(&cmd, &matches, &first, &args);
        return match services::validate(&args, &was_set, &log, flags_for_log) {
            Ok(config) => Parsed::Services(Box::new(config), log),
            Err(msg) => Parsed::Invalid(msg, log),
        };
    }
    if let Err(msg) = services::refuse_without_services(&was_set) {
        return Parsed::Invalid(msg, Log::new(verbosity.clamp(0, 255) as u8, None));
    }
    if args.root.is_empty() {
        return Parsed::Usage("required flag: --root must be specified".into(), 1);
    }
    let abs_root = match common::sync::absolute_root(std::path::Path::new(&args.root)) {
        Ok(r) => r,
        Err(e) => return Parsed::Fatal(format!("FATAL: can't absolutize --root: {e}")),
    };
    let error_file = (!args.error_file.is_empty()).then(|| abs_root.join(&args.error_file));
    let log = Log::new(verbosity.clamp(0, 255) as u8, error_file);
    let flags_for_log = flags_for_log(&cmd, &matches, &first, &args);
    match validate::validate(args, was_set, &log, flags_for_log) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use common::sync::credentials::Secret;
    use common::sync::{GitGc, Submodules};
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::time::Duration;

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
            Parsed::Services(..) => panic!("{args:?}: services mode"),
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

    fn services(args: &[&str], env: &[(&str, &str)]) -> Result<common::gitopper::Config, String> {
        let args: Vec<&str> = ["--services=/s.toml", "--hostname=h"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        match run(&args, env).0 {
            Parsed::Services(c, _) => Ok(*c),
            Parsed::Invalid(e, _) | Parsed::Usage(e, _) | Parsed::Fatal(e) => Err(e),
            other => panic!("{args:?}: {}", matches!(other, Parsed::Run(..))),
        }
    }

    #[test]
    fn services_mode_credentials() -> Result<(), String> {
        let c = services(&[], &[])?;
        assert!(c.credentials.is_empty());
        assert_eq!(c.ssh_command, None, "ssh as each service's user finds its own keys");
        let c = services(
            &[
                "--username=alice",
                "--password-file=/p",
                r#"--credential={"url":"https://h/r","username":"bob","password":"s3cret"}"#,
                "--ssh-key-file=/k/it's",
                "--ssh-known-hosts-file=/kh",
            ],
            &[],
        )?;
        assert_eq!(c.credentials.len(), 2);
        assert_eq!(
            (c.credentials[0].url.as_str(), c.credentials[0].username.as_str()),
            ("", "alice"),
            "--username serves every upstream"
        );
        assert_eq!(c.credentials[0].password_file, Some(PathBuf::from("/p")));
        assert_eq!(c.credentials[1].url, "https://h/r");
        assert_eq!(c.credentials[1].password, Some(Secret::new("s3cret")));
        assert_eq!(
            c.ssh_command.as_deref(),
            Some("ssh -o BatchMode=yes -i '/k/it'\\''s' -o StrictHostKeyChecking=yes -o UserKnownHostsFile='/kh'")
        );
        assert!(
            !c.flags_for_log.iter().any(|f| f.contains("s3cret")),
            "{:?}",
            c.flags_for_log
        );
        let c = services(&["--username=alice"], &[("GITSYNC_PASSWORD", "pw")])?;
        assert_eq!(c.credentials[0].password, Some(Secret::new("pw")));
        for (args, env, needle) in [
            (&["--username=alice"][..], &[][..], "must be specified when --username"),
            (
                &["--password-file=/p"][..],
                &[][..],
                "only be specified when --username",
            ),
            (
                &["--username=a", "--password-file=/p"][..],
                &[("GITSYNC_PASSWORD", "pw")][..],
                "only one of",
            ),
            (&[r#"--credential={"url":"https://h"}"#][..], &[][..], "username"),
            (&["--askpass-url=http://x"][..], &[][..], "git-sync's own mode's"),
        ] {
            let e = services(args, env).expect_err("refused");
            assert!(e.contains(needle), "{args:?}: {e}");
        }
        Ok(())
    }
}
