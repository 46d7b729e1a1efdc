//! Logging: `RUST_LOG` picks levels (default `info`), `LOG_FORMAT=json`
//! switches from plain text to JSON lines. Logs go to stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(log_format: Option<&str>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log_format == Some("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
