//! The remote API, JSON over HTTP(S): Gitopper's commands as paths, with its
//! JSON shapes, and real authentication.
//!
//! | request | does | answers |
//! |---|---|---|
//! | `GET /list/machine` | every service entry's machine (all machines) | `{"machines":[{"machine","actual"}]}` |
//! | `GET /list/service` | this machine's services | `{"services":[...]}` |
//! | `GET /list/service/<name>` | one service | `{"services":[...]}`, 404 if unknown |
//! | `POST /do/freeze/<name>` | hold it at its commit | the service |
//! | `POST /do/unfreeze/<name>` | track its branch again | the service |
//! | `POST /do/rollback/<name>/<hash>` | pin it to a commit, then hold it | the service (ROLLBACK); 406 for a hash that is not a commit |
//! | `POST /do/pull/<name>` | a step now | the service |
//!
//! A service is `{"service","hash","state","stateinfo","change"}` as
//! Gitopper's (`change` in RFC 1123, UTC), with the full 40-hex hash, plus
//! `machine`, `branch` and `links` (`{"local","link","how"}`, `how` being
//! `bind` or `symlink`).
//!
//! Every `/do/` call needs authentication, and so do the `/list/` calls with
//! `--api-auth-reads`: a client certificate that `--api-client-ca-file`'s CA
//! signed (checked in the TLS handshake: a certificate from another CA
//! fails the handshake), or `Authorization: Bearer <token>` with the token
//! in `--api-token-file` (read at each request, so it can be rotated;
//! compared in constant time; never logged). No credentials, or a wrong
//! token: 401. No way to authenticate configured at all: 403 for every
//! call that needs it. A refused call changes nothing. Errors are
//! `{"error":"..."}`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::state::Status;
use super::tracker::{Change, ChangeError, Ctx, Tracked};
use crate::http::Peer;
use crate::sync::log::error_chain;

/// Who may call.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// `--api-token-file`.
    pub token_file: Option<PathBuf>,
    /// Client certificates are verified (`--api-client-ca-file`).
    pub client_certs: bool,
    /// `--api-auth-reads`: `/list/` needs authentication too.
    pub reads: bool,
}

/// Why a call was refused before it did anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no credentials, or wrong ones.
    Unauthenticated(&'static str),
    /// 403: nothing can authenticate.
    Forbidden,
    /// 500: the token file cannot be read.
    TokenFile(String),
}

impl Auth {
    /// Decides a call that needs authentication: `bearer` is the request's
    /// `Authorization` header, `verified_cert` whether its connection
    /// presented a verified client certificate, `read_token` reads the
    /// token file.
    pub fn check(
        &self,
        bearer: Option<&[u8]>,
        verified_cert: bool,
        read_token: impl FnOnce(&std::path::Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<(), Refusal> {
        if self.client_certs && verified_cert {
            return Ok(());
        }
        let Some(file) = &self.token_file else {
            return if self.client_certs {
                Err(Refusal::Unauthenticated("a client certificate is required"))
            } else {
                Err(Refusal::Forbidden)
            };
        };
        let Some(given) = bearer.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return Err(Refusal::Unauthenticated(
                "a bearer token (or a client certificate) is required",
            ));
        };
        let token = read_token(file).map_err(|e| Refusal::TokenFile(format!("{}: {e}", file.display())))?;
        let token = token.strip_suffix(b"\n").unwrap_or(&token);
        let token = token.strip_suffix(b"\r").unwrap_or(token);
        if token.is_empty() {
            return Err(Refusal::TokenFile(format!("{} is empty", file.display())));
        }
        if constant_time_eq(given.trim_ascii(), token) {
            Ok(())
        } else {
            Err(Refusal::Unauthenticated("the bearer token is not valid"))
        }
    }
}

/// Equal without an early exit (the length is not a secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API's view of this machine.
pub struct Api {
    /// This machine's services.
    pub services: Vec<Arc<Tracked>>,
    /// Every service entry's machine, in file order.
    pub machines: Vec<String>,
    /// This machine's name (Gitopper's `actual`).
    pub actual: String,
    /// Who may call.
    pub auth: Auth,
    /// The trackers' context.
    pub ctx: Arc<Ctx>,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    reply(status, json!({ "error": message.into() }))
}

/// Gitopper's time format: RFC 1123 in UTC (`Fri, 18 Nov 2022 09:14:52 UTC`).
pub fn rfc1123(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::sync::log::civil_from_days(days);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} UTC",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m as usize).saturating_sub(1) % 12],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One service as the API shows it.
pub fn record(t: &Tracked, status: &Status) -> Value {
    let links: Vec<Value> = t
        .spec
        .dirs
        .iter()
        .filter_map(|d| {
            let local = d.local.as_ref()?;
            let how = t
                .links()
                .into_iter()
                .find(|(p, _)| p == local)
                .map(|(_, h)| h.as_str())
                .unwrap_or("");
            Some(json!({ "local": local.display().to_string(), "link": d.link, "how": how }))
        })
        .collect();
    json!({
        "service": t.spec.name,
        "hash": status.hash.clone().unwrap_or_default(),
        "state": status.state.as_str(),
        "stateinfo": status.info,
        "change": rfc1123(status.since),
        "machine": t.spec.machine,
        "branch": t.spec.branch,
        "links": links,
    })
}

impl Api {
    fn find(&self, name: &str) -> Option<&Arc<Tracked>> {
        self.services.iter().find(|t| t.spec.name == name)
    }

    /// Answers one request from `peer`.
    pub async fn handle(&self, peer: &Peer, req: Request<hyper::body::Incoming>) -> Result<Reply, Infallible> {
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
        let mutating = parts.first() == Some(&"do");
        let known = matches!(parts.first(), Some(&"do") | Some(&"list"));
        if !known {
            return Ok(error(StatusCode::NOT_FOUND, format!("no such path: {path}")));
        }
        let want = if mutating { Method::POST } else { Method::GET };
        if req.method() != want {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes {want}, not {}", req.method()),
            );
            if let Ok(v) = hyper::header::HeaderValue::from_str(want.as_str()) {
                r.headers_mut().insert(hyper::header::ALLOW, v);
            }
            return Ok(r);
        }
        if mutating || self.auth.reads {
            let bearer = req.headers().get(hyper::header::AUTHORIZATION).map(|v| v.as_bytes());
            if let Err(refusal) = self.auth.check(bearer, peer.verified_client_cert, |p| std::fs::read(p)) {
                let log = &self.ctx.log;
                let (status, msg) = match refusal {
                    Refusal::Unauthenticated(why) => (StatusCode::UNAUTHORIZED, why.to_string()),
                    Refusal::Forbidden => (
                        StatusCode::FORBIDDEN,
                        "no authentication is configured (--api-token-file, --api-client-ca-file): this call is disabled"
                            .to_string(),
                    ),
                    Refusal::TokenFile(e) => {
                        log.error(None, "can't read the API token file", &[("error", e.clone().into())]);
                        (StatusCode::INTERNAL_SERVER_ERROR, "the token file cannot be read".to_string())
                    }
                };
                log.info(
                    0,
                    "API call refused",
                    &[
                        ("path", path.clone().into()),
                        ("peer", peer.addr.to_string().into()),
                        ("status", status.as_u16().into()),
                    ],
                );
                let mut r = error(status, msg);
                if status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        hyper::header::WWW_AUTHENTICATE,
                        hyper::header::HeaderValue::from_static("Bearer"),
                    );
                }
                return Ok(r);
            }
        }
        Ok(match parts.as_slice() {
            ["list", "machine"] | ["list", "machines"] => {
                let machines: Vec<Value> = self
                    .machines
                    .iter()
                    .map(|m| json!({ "machine": m, "actual": self.actual }))
                    .collect();
                reply(StatusCode::OK, json!({ "machines": machines }))
            }
            ["list", "service"] | ["list", "services"] => {
                let all: Vec<Value> = self.services.iter().map(|t| record(t, &t.status())).collect();
                reply(StatusCode::OK, json!({ "services": all }))
            }
            ["list", "service", name] => match self.find(name) {
                Some(t) => reply(StatusCode::OK, json!({ "services": [record(t, &t.status())] })),
                None => error(StatusCode::NOT_FOUND, format!("no service {name:?} on this machine")),
            },
            ["do", verb @ ("freeze" | "unfreeze" | "pull"), name] => self.change(peer, verb, name, None).await,
            ["do", "rollback", name, hash] => self.change(peer, "rollback", name, Some(hash)).await,
            ["do", "rollback", _] => error(StatusCode::NOT_ACCEPTABLE, "rollback needs a service and a hash"),
            ["do", _] | ["do"] => error(StatusCode::NOT_ACCEPTABLE, "which service?"),
            _ => error(StatusCode::NOT_FOUND, format!("no such path: {path}")),
        })
    }

    async fn change(&self, peer: &Peer, verb: &str, name: &str, hash: Option<&str>) -> Reply {
        let Some(t) = self.find(name) else {
            return error(StatusCode::NOT_FOUND, format!("no service {name:?} on this machine"));
        };
        let change = match (verb, hash) {
            ("freeze", _) => Change::Freeze,
            ("unfreeze", _) => Change::Unfreeze,
            ("rollback", Some(h)) => Change::Rollback(h.to_string()),
            _ => {
                t.wake.notify_one();
                return reply(StatusCode::OK, json!({ "services": [record(t, &t.status())] }));
            }
        };
        self.ctx.log.info(
            0,
            "API call",
            &[
                ("service", name.into()),
                ("call", verb.into()),
                ("hash", hash.unwrap_or_default().into()),
                ("peer", peer.addr.to_string().into()),
            ],
        );
        match t.change(&self.ctx, &change).await {
            Ok(status) => reply(StatusCode::OK, json!({ "services": [record(t, &status)] })),
            Err(e @ ChangeError::Hash(_)) => error(StatusCode::NOT_ACCEPTABLE, error_chain(&e)),
            Err(e @ ChangeError::NoCheckout(_)) => error(StatusCode::CONFLICT, error_chain(&e)),
            Err(e @ ChangeError::Save(_)) => {
                self.ctx.log.error(Some(&e), "can't save the service's state", &[]);
                error(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn authentication_decisions() {
        let token = |t: &'static [u8]| move |_: &std::path::Path| Ok(t.to_vec());
        let unreadable = |_: &std::path::Path| Err(std::io::Error::other("gone"));
        let with_token = Auth {
            token_file: Some("/t".into()),
            ..Auth::default()
        };
        let with_certs = Auth {
            client_certs: true,
            ..Auth::default()
        };
        let both = Auth {
            token_file: Some("/t".into()),
            client_certs: true,
            reads: false,
        };
        let none = Auth::default();
        // (auth, Authorization header, verified certificate, decision)
        type Case<'a> = (&'a Auth, Option<&'a [u8]>, bool, Result<(), Refusal>);
        let cases: Vec<Case> = vec![
            (&with_token, Some(b"Bearer s3cret"), false, Ok(())),
            (&with_token, Some(b"Bearer s3cret "), false, Ok(())),
            (
                &with_token,
                None,
                false,
                Err(Refusal::Unauthenticated(
                    "a bearer token (or a client certificate) is required",
                )),
            ),
            (
                &with_token,
                Some(b"Bearer wrong"),
                false,
                Err(Refusal::Unauthenticated("the bearer token is not valid")),
            ),
            (
                &with_token,
                Some(b"Basic czNjcmV0"),
                false,
                Err(Refusal::Unauthenticated(
                    "a bearer token (or a client certificate) is required",
                )),
            ),
            (
                &with_token,
                None,
                true,
                Err(Refusal::Unauthenticated(
                    "a bearer token (or a client certificate) is required",
                )),
            ),
            (&with_certs, None, true, Ok(())),
            (
                &with_certs,
                None,
                false,
                Err(Refusal::Unauthenticated("a client certificate is required")),
            ),
            (
                &with_certs,
                Some(b"Bearer s3cret"),
                false,
                Err(Refusal::Unauthenticated("a client certificate is required")),
            ),
            (&both, None, true, Ok(())),
            (&both, Some(b"Bearer s3cret"), false, Ok(())),
            (&none, Some(b"Bearer s3cret"), true, Err(Refusal::Forbidden)),
        ];
        for (auth, header, cert, want) in cases {
            assert_eq!(
                auth.check(header, cert, token(b"s3cret\n")),
                want,
                "{auth:?} {header:?} {cert}"
            );
        }
        assert!(matches!(
            with_token.check(Some(b"Bearer x"), false, unreadable),
            Err(Refusal::TokenFile(_))
        ));
        assert!(
            matches!(
                with_token.check(Some(b"Bearer "), false, token(b"\n")),
                Err(Refusal::TokenFile(_))
            ),
            "an empty token file lets nobody in"
        );
    }

    #[test]
    fn gitoppers_time_format() {
        // Gitopper's README example.
        let t = UNIX_EPOCH + Duration::from_secs(1_668_762_892);
        assert_eq!(rfc1123(t), "Fri, 18 Nov 2022 09:14:52 UTC");
        assert_eq!(rfc1123(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 UTC");
    }
}
