//! The auth ref's tree (see `docs/format.md`): small text blobs, one per
//! user and role, so that `git show` explains the state and a diff shows
//! what changed.
//!
//! ```text
//! format          gitcd-auth/1
//! enabled         true | false
//! revision        the auth revision, decimal
//! users/<name>    name <name>, password <bcrypt hash> or no-password, role <name> per role
//! roles/<name>    name <name>, permission <READ|WRITE|READWRITE> key=<key> end=<range end> per permission
//! ```
//!
//! Names, keys and range ends are percent-escaped as in the key codec, with
//! spaces as `%20`; file names also escape `/` and a leading `.`.

use std::fmt::Write as _;

use bytes::Bytes;

use super::{AuthState, PermKind, Permission, Role, User};
use crate::meta::ParseError;

pub const AUTH_FORMAT: &str = "gitcd-auth/1";
pub const FORMAT_ENTRY: &str = "format";
pub const ENABLED_ENTRY: &str = "enabled";
pub const REVISION_ENTRY: &str = "revision";
pub const USERS_DIR: &str = "users";
pub const ROLES_DIR: &str = "roles";

/// Percent-escaped, with no spaces: one field of a line.
fn field(bytes: &[u8]) -> String {
    crate::keys::escape(bytes).replace(' ', "%20")
}

/// A tree entry name for `name`: non-empty, without `/`, not starting with
/// `.`.
fn entry_name(name: &str) -> String {
    let mut out = field(name.as_bytes()).replace('/', "%2F");
    if out.starts_with('.') {
        out.replace_range(..1, "%2E");
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

/// The files of `state`: (path below the root, content).
pub fn encode(state: &AuthState) -> Vec<(Vec<String>, Vec<u8>)> {
    let mut files = vec![
        (vec![FORMAT_ENTRY.to_owned()], format!("{AUTH_FORMAT}\n").into_bytes()),
        (
            vec![ENABLED_ENTRY.to_owned()],
            format!("{}\n", state.enabled).into_bytes(),
        ),
        (
            vec![REVISION_ENTRY.to_owned()],
            format!("{}\n", state.revision).into_bytes(),
        ),
    ];
    for u in state.users.values() {
        let mut text = format!("name {}\n", field(u.name.as_bytes()));
        if u.no_password {
            text.push_str("no-password\n");
        } else {
            let _ = writeln!(text, "password {}", field(&u.password));
        }
        for r in &u.roles {
            let _ = writeln!(text, "role {}", field(r.as_bytes()));
        }
        files.push((vec![USERS_DIR.to_owned(), entry_name(&u.name)], text.into_bytes()));
    }
    for r in state.roles.values() {
        let mut text = format!("name {}\n", field(r.name.as_bytes()));
        for p in &r.permissions {
            let _ = writeln!(
                text,
                "permission {} key={} end={}",
                p.kind.name(),
                field(&p.key),
                field(&p.range_end)
            );
        }
        files.push((vec![ROLES_DIR.to_owned(), entry_name(&r.name)], text.into_bytes()));
    }
    files
}

fn text(bytes: &[u8]) -> Result<String, ParseError> {
    String::from_utf8(crate::keys::unescape(bytes)).map_err(|_| ParseError::new("a name that is not UTF-8"))
}

fn lines(blob: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    blob.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| match l.iter().position(|b| *b == b' ') {
            Some(at) => (&l[..at], &l[at + 1..]),
            None => (l, &l[l.len()..]),
        })
}

fn decode_user(blob: &[u8]) -> Result<User, ParseError> {
    let mut user = User {
        name: String::new(),
        password: Vec::new(),
        no_password: false,
        roles: Vec::new(),
    };
    let mut named = false;
    for (name, value) in lines(blob) {
        match name {
            b"name" => {
                user.name = text(value)?;
                named = true;
            }
            b"password" => user.password = crate::keys::unescape(value),
            b"no-password" => user.no_password = true,
            b"role" => user.roles.push(text(value)?),
            _ => {}
        }
    }
    if !named {
        return Err(ParseError::new("a user without a `name` line"));
    }
    user.roles.sort();
    user.roles.dedup();
    Ok(user)
}

fn decode_role(blob: &[u8]) -> Result<Role, ParseError> {
    let mut role = Role {
        name: String::new(),
        permissions: Vec::new(),
    };
    let mut named = false;
    for (name, value) in lines(blob) {
        match name {
            b"name" => {
                role.name = text(value)?;
                named = true;
            }
            b"permission" => {
                let parts: Vec<&[u8]> = value.split(|b| *b == b' ').collect();
                let [kind, key, end] = parts.as_slice() else {
                    return Err(ParseError::new(format!(
                        "permission line {:?}",
                        String::from_utf8_lossy(value)
                    )));
                };
                let kind = match *kind {
                    b"READ" => PermKind::Read,
                    b"WRITE" => PermKind::Write,
                    b"READWRITE" => PermKind::ReadWrite,
                    other => {
                        return Err(ParseError::new(format!(
                            "permission kind {:?}",
                            String::from_utf8_lossy(other)
                        )));
                    }
                };
                let strip = |part: &[u8], prefix: &[u8]| -> Result<Bytes, ParseError> {
                    part.strip_prefix(prefix)
                        .map(|v| Bytes::from(crate::keys::unescape(v)))
                        .ok_or_else(|| ParseError::new("a permission without key= and end="))
                };
                role.permissions.push(Permission {
                    kind,
                    key: strip(key, b"key=")?,
                    range_end: strip(end, b"end=")?,
                });
            }
            _ => {}
        }
    }
    if !named {
        return Err(ParseError::new("a role without a `name` line"));
    }
    role.permissions.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(role)
}

/// The state from the ref's files (path below the root, content).
pub fn decode(files: impl IntoIterator<Item = (Vec<Vec<u8>>, Vec<u8>)>) -> Result<AuthState, ParseError> {
    let mut format = None;
    let mut enabled = false;
    let mut revision = 1;
    let mut users = Vec::new();
    let mut roles = Vec::new();
    for (path, blob) in files {
        let value = || String::from_utf8_lossy(&blob).trim().to_owned();
        match path.iter().map(Vec::as_slice).collect::<Vec<_>>().as_slice() {
            [name] if *name == FORMAT_ENTRY.as_bytes() => format = Some(value()),
            [name] if *name == ENABLED_ENTRY.as_bytes() => enabled = value() == "true",
            [name] if *name == REVISION_ENTRY.as_bytes() => {
                revision = value()
                    .parse()
                    .map_err(|_| ParseError::new(format!("auth revision {:?}", value())))?
            }
            [dir, _] if *dir == USERS_DIR.as_bytes() => users.push(decode_user(&blob)?),
            [dir, _] if *dir == ROLES_DIR.as_bytes() => roles.push(decode_role(&blob)?),
            _ => {}
        }
    }
    match format.as_deref() {
        Some(AUTH_FORMAT) => Ok(AuthState::new(enabled, revision, users, roles)),
        Some(other) => Err(ParseError::new(format!(
            "auth format {other:?}, not {AUTH_FORMAT:?}, the one this gitcd reads"
        ))),
        None => Err(ParseError::new("no `format` entry")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is written reads back the same, awkward names and keys too.
    #[test]
    fn round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let mut s = AuthState::default();
        s.user_add("root", Some(b"$2a$10$abc".to_vec()))?;
        s.user_grant_role("root", "root")?;
        s.user_add(".odd/name with space%", None)?;
        s.role_add("r w")?;
        s.role_grant_permission(
            "r w",
            Some(Permission {
                kind: PermKind::ReadWrite,
                key: Bytes::from_static(b"/a b/\xff"),
                range_end: Bytes::from_static(b"\0"),
            }),
        )?;
        s.role_grant_permission(
            "r w",
            Some(Permission {
                kind: PermKind::Read,
                key: Bytes::from_static(b"k"),
                range_end: Bytes::new(),
            }),
        )?;
        s.user_grant_role(".odd/name with space%", "r w")?;
        s.enable()?;
        let files = encode(&s);
        for (path, _) in &files {
            for name in path {
                assert!(
                    !name.is_empty() && !name.contains('/') && !name.starts_with('.'),
                    "{name:?}"
                );
            }
        }
        let back = decode(
            files
                .into_iter()
                .map(|(p, c)| (p.into_iter().map(String::into_bytes).collect(), c)),
        )?;
        assert_eq!(back, s);
        assert!(
            back.check_read(
                Some(&super::super::AuthInfo {
                    user: ".odd/name with space%".into(),
                    revision: back.revision
                }),
                b"k",
                b""
            )
            .is_ok()
        );
        Ok(())
    }
}
