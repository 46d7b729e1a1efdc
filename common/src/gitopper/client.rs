//! `git-sync gitopperctl`: Gitopper's `gitopperctl` for our API. The same
//! commands (`list machines @host`, `list service @host [service]`, `do
//! freeze|unfreeze|pull @host service`, `do rollback @host service hash`)
//! and tables; over HTTPS (or HTTP when `@` names an `http://` URL) with a
//! bearer token read from a file at use, or a client certificate.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The client's settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// A file holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM) ...
    pub cert_file: Option<PathBuf>,
    /// ... and its key (PEM).
    pub key_file: Option<PathBuf>,
    /// The CA that signed the server's certificate (else the system's).
    pub ca_file: Option<PathBuf>,
    /// The port when `@host` names none.
    pub port: u16,
    /// Print the JSON as received (Gitopper's `-m`).
    pub json: bool,
    /// How long one call may take.
    pub timeout: Duration,
}

/// One call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Every service entry's machine.
    ListMachines,
    /// This machine's services, or one.
    ListService(Option<String>),
    /// Hold a service.
    Freeze(String),
    /// Track again.
    Unfreeze(String),
    /// Pin to a commit.
    Rollback(String, String),
    /// Step now.
    Pull(String),
}

/// A call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `@host` is not a host, `host:port` or URL.
    #[error("expected @<machine>, @<machine>:<port> or @https://<machine>:<port>, not {0:?}")]
    Target(String),
    /// A credential file could not be read.
    #[error("reading {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS material is not usable.
    #[error("TLS settings: {0}")]
    Tls(String),
    /// The request did not get an answer.
    #[error("calling {url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// Why (with its causes).
        reason: String,
    },
    /// The server answered with an error.
    #[error("{status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's `error`.
        message: String,
    },
    /// The answer is not the API's JSON.
    #[error("unexpected answer: {0}")]
    Answer(String),
    /// Writing the output failed.
    #[error("writing the output")]
    Output(#[source] std::io::Error),
}

/// The base URL `target` (without its `@`) names.
pub fn base_url(target: &str, port: u16) -> Result<String, ClientError> {
    let bad = || ClientError::Target(target.to_string());
    if target.starts_with("http://") || target.starts_with("https://") {
        return Ok(target.trim_end_matches('/').to_string());
    }
    if target.is_empty() || target.contains('/') {
        return Err(bad());
    }
    let has_port = if target.starts_with('[') {
        target.contains("]:")
    } else {
        target.matches(':').count() == 1
    };
    if !has_port && target.contains(':') && !target.starts_with('[') {
        // A bare IPv6 address.
        return Ok(format!("https://[{target}]:{port}"));
    }
    Ok(if has_port {
        format!("https://{target}")
    } else {
        format!("https://{target}:{port}")
    })
}

#[derive(Deserialize)]
struct Machines {
    machines: Vec<Machine>,
}

#[derive(Deserialize)]
struct Machine {
    machine: String,
    actual: String,
}

#[derive(Deserialize)]
struct Services {
    services: Vec<Service>,
}

#[derive(Deserialize)]
struct Service {
    service: String,
    hash: String,
    state: String,
    stateinfo: String,
    change: String,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::File {
        path: path.clone(),
        source,
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    crate::sync::log::error_chain(e)
}

/// Calls `command` on the machine `target` names and prints the answer to
/// `out` (a table, or the JSON with `json`).
pub async fn run(
    config: &ClientConfig,
    target: &str,
    command: &Command,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let base = base_url(target, config.port)?;
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &config.ca_file {
        let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?).map_err(|e| ClientError::Tls(chain(&e)))?;
        builder = builder.tls_certs_only(certs);
    }
    match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| ClientError::Tls(chain(&e)))?;
            builder = builder.identity(id);
        }
        (None, None) => {}
        _ => {
            return Err(ClientError::Tls(
                "a client certificate needs both --cert-file and --key-file".into(),
            ));
        }
    }
    let client = builder.build().map_err(|e| ClientError::Tls(chain(&e)))?;
    let seg = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let (post, path) = match command {
        Command::ListMachines => (false, "/list/machine".to_string()),
        Command::ListService(None) => (false, "/list/service".to_string()),
        Command::ListService(Some(s)) => (false, format!("/list/service/{}", seg(s))),
        Command::Freeze(s) => (true, format!("/do/freeze/{}", seg(s))),
        Command::Unfreeze(s) => (true, format!("/do/unfreeze/{}", seg(s))),
        Command::Pull(s) => (true, format!("/do/pull/{}", seg(s))),
        Command::Rollback(s, h) => (true, format!("/do/rollback/{}/{}", seg(s), seg(h))),
    };
    let url = format!("{base}{path}");
    let mut req = if post { client.post(&url) } else { client.get(&url) };
    if let Some(file) = &config.token_file {
        let token = read(file)?;
        let token = String::from_utf8_lossy(&token).trim().to_string();
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.map_err(|e| ClientError::Transport {
        url: url.clone(),
        reason: chain(&e),
    })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| ClientError::Transport {
        url: url.clone(),
        reason: chain(&e),
    })?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    let w = |out: &mut dyn Write, s: &str| out.write_all(s.as_bytes()).map_err(ClientError::Output);
    if config.json {
        return w(out, &String::from_utf8_lossy(&body));
    }
    let rows: Vec<Vec<String>> = match command {
        Command::ListMachines => {
            let m: Machines = serde_json::from_slice(&body).map_err(|e| ClientError::Answer(e.to_string()))?;
            std::iter::once(vec!["#".into(), "MACHINE".into(), "ACTUAL".into()])
                .chain(
                    m.machines
                        .into_iter()
                        .enumerate()
                        .map(|(i, m)| vec![i.to_string(), m.machine, m.actual]),
                )
                .collect()
        }
        Command::ListService(_) => {
            let s: Services = serde_json::from_slice(&body).map_err(|e| ClientError::Answer(e.to_string()))?;
            std::iter::once(
                ["#", "SERVICE", "HASH", "STATE", "INFO", "SINCE"]
                    .map(String::from)
                    .to_vec(),
            )
            .chain(s.services.into_iter().enumerate().map(|(i, s)| {
                let short: String = s.hash.chars().take(8).collect();
                vec![i.to_string(), s.service, short, s.state, s.stateinfo, s.change]
            }))
            .collect()
        }
        _ => return w(out, "OK\n"),
    };
    w(out, &table(&rows))
}

/// Rows as columns aligned with at least one space, like Go's tabwriter.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 1));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() -> Result<(), ClientError> {
        assert_eq!(base_url("web1", 2222)?, "https://web1:2222");
        assert_eq!(base_url("web1:9000", 2222)?, "https://web1:9000");
        assert_eq!(base_url("http://127.0.0.1:5/", 2222)?, "http://127.0.0.1:5");
        assert_eq!(base_url("[::1]:7", 2222)?, "https://[::1]:7");
        assert_eq!(base_url("::1", 2222)?, "https://[::1]:2222");
        assert!(base_url("", 1).is_err());
        assert!(base_url("a/b", 1).is_err());
        Ok(())
    }

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["#".into(), "SERVICE".into(), "STATE".into(), "INFO".into()],
            vec!["0".into(), "prometheus".into(), "OK".into(), "".into()],
        ];
        assert_eq!(table(&rows), "# SERVICE    STATE INFO\n0 prometheus OK\n");
    }
}
