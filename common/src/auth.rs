//! etcd's authentication and role-based access control, as a value: users
//! (with bcrypt password hashes), roles (with permissions on key ranges),
//! whether auth is on, and the auth revision that every change bumps. The
//! rules are etcd 3.5's (`server/auth/store.go`): the `root` user and role,
//! which requests need the root role, how a key range is covered by
//! permissions. The store keeps an [`AuthState`] in its snapshot and writes it
//! to its own ref (see `docs/format.md`); the gRPC layer checks each request
//! against it. Nothing here knows gRPC.
//!
//! Topics: `perms` (permission intervals and coverage), `codec` (the ref's
//! tree), `token` (simple tokens and password hashing).

mod codec;
mod perms;
mod token;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

pub use codec::{AUTH_FORMAT, decode, encode};
pub use perms::{Access, is_valid_range};
pub use token::{DEFAULT_BCRYPT_COST, DEFAULT_TOKEN_TTL, Tokens, hash_password, verify_password};

/// The user and the role that may do everything.
pub const ROOT: &str = "root";

/// etcd's auth conditions. The texts are those of etcd's auth package
/// (`auth: …`); the gRPC layer turns each into etcd's status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth: root user does not exist")]
    RootUserNotExist,
    #[error("auth: root user does not have root role")]
    RootRoleNotExist,
    #[error("auth: user already exists")]
    UserAlreadyExist,
    #[error("auth: user name is empty")]
    UserEmpty,
    #[error("auth: user not found")]
    UserNotFound,
    #[error("auth: role already exists")]
    RoleAlreadyExist,
    #[error("auth: role not found")]
    RoleNotFound,
    #[error("auth: role name is empty")]
    RoleEmpty,
    #[error("auth: permission not given")]
    PermissionNotGiven,
    #[error("auth: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    #[error("auth: permission denied")]
    PermissionDenied,
    #[error("auth: role is not granted to the user")]
    RoleNotGranted,
    #[error("auth: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("auth: authentication is not enabled")]
    AuthNotEnabled,
    #[error("auth: revision in header is old")]
    AuthOldRevision,
    #[error("auth: invalid auth token")]
    InvalidAuthToken,
    #[error("auth: invalid auth management")]
    InvalidAuthMgmt,
}

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    /// From etcd's `authpb.Permission.Type` number.
    pub fn from_i32(n: i32) -> Option<Self> {
        match n {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    pub fn as_i32(self) -> i32 {
        match self {
            PermKind::Read => 0,
            PermKind::Write => 1,
            PermKind::ReadWrite => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PermKind::Read => "READ",
            PermKind::Write => "WRITE",
            PermKind::ReadWrite => "READWRITE",
        }
    }

    fn reads(self) -> bool {
        matches!(self, PermKind::Read | PermKind::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, PermKind::Write | PermKind::ReadWrite)
    }
}

/// A permission on a key (`range_end` empty), a range `[key, range_end)`, or
/// every key from `key` on (`range_end` = `"\0"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub kind: PermKind,
    pub key: Bytes,
    pub range_end: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The bcrypt hash (empty for a user without a password).
    pub password: Vec<u8>,
    /// Created with `--no-password`: it can only be used through a TLS
    /// client certificate's common name.
    pub no_password: bool,
    /// Sorted, no duplicates.
    pub roles: Vec<String>,
}

impl User {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.binary_search_by(|r| r.as_str().cmp(role)).is_ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    /// Sorted by key (etcd's order); one per (key, range_end).
    pub permissions: Vec<Permission>,
}

/// Who a request comes from, and the auth revision its credentials were
/// checked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

/// Users, roles, and whether auth is on. Cheap to clone behind an `Arc`;
/// each change makes a new value.
#[derive(Clone, Debug)]
pub struct AuthState {
    pub enabled: bool,
    /// Bumped by every change of users, roles, permissions, and by
    /// disabling (etcd's `authRevision`; 1 in a new store).
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// Each user's permissions merged over their roles.
    access: BTreeMap<String, Arc<Access>>,
}

impl Default for AuthState {
    fn default() -> Self {
        Self {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            access: BTreeMap::new(),
        }
    }
}

impl PartialEq for AuthState {
    fn eq(&self, other: &Self) -> bool {
        self.enabled == other.enabled
            && self.revision == other.revision
            && self.users == other.users
            && self.roles == other.roles
    }
}

impl AuthState {
    /// A state from its parts (as loaded), with its permission cache.
    pub fn new(enabled: bool, revision: u64, users: Vec<User>, roles: Vec<Role>) -> Self {
        let mut s = Self {
            enabled,
            revision,
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            roles: roles.into_iter().map(|r| (r.name.clone(), r)).collect(),
            access: BTreeMap::new(),
        };
        s.refresh();
        s
    }

    /// Rebuilds every user's merged permissions (etcd's
    /// `refreshRangePermCache`).
    fn refresh(&mut self) {
        self.access = self
            .users
            .values()
            .map(|u| {
                let perms = u
                    .roles
                    .iter()
                    .filter_map(|r| self.roles.get(r))
                    .flat_map(|r| r.permissions.iter());
                (u.name.clone(), Arc::new(Access::new(perms)))
            })
            .collect();
    }

    /// A change: the revision moves on and the caches follow.
    fn changed(&mut self) {
        self.revision += 1;
        self.refresh();
    }

    // Changes, as etcd applies them. Each returns what it did, for the
    // commit message of the auth ref.

    pub fn enable(&mut self) -> Result<Option<String>, AuthError> {
        if self.enabled {
            return Ok(None);
        }
        let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
        if !root.has_role(ROOT) {
            return Err(AuthError::RootRoleNotExist);
        }
        // etcd does not bump the revision when enabling.
        self.enabled = true;
        Ok(Some("auth enable".into()))
    }

    pub fn disable(&mut self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        self.enabled = false;
        self.changed();
        Some("auth disable".into())
    }

    /// Adds a user with a password hash already made (`None`: a user without
    /// a password).
    pub fn user_add(&mut self, name: &str, password: Option<Vec<u8>>) -> Result<String, AuthError> {
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(AuthError::UserAlreadyExist);
        }
        let no_password = password.is_none();
        self.users.insert(
            name.to_owned(),
            User {
                name: name.to_owned(),
                password: password.unwrap_or_default(),
                no_password,
                roles: Vec::new(),
            },
        );
        self.changed();
        Ok(format!("user add {name}"))
    }

    pub fn user_delete(&mut self, name: &str) -> Result<String, AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(AuthError::UserNotFound)?;
        self.changed();
        Ok(format!("user delete {name}"))
    }

    /// Sets a user's password hash (ignored for a user without a password).
    pub fn user_change_password(&mut self, name: &str, password: Vec<u8>) -> Result<String, AuthError> {
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        if !user.no_password {
            user.password = password;
        }
        self.changed();
        Ok(format!("user change password {name}"))
    }

    /// Grants `role` to `user`; the `root` role need not exist as a role.
    /// Granting a role twice changes nothing.
    pub fn user_grant_role(&mut self, user: &str, role: &str) -> Result<Option<String>, AuthError> {
        if !self.users.contains_key(user) {
            return Err(AuthError::UserNotFound);
        }
        if role != ROOT && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
        match u.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            Ok(_) => Ok(None),
            Err(at) => {
                u.roles.insert(at, role.to_owned());
                self.changed();
                Ok(Some(format!("user grant role {user} {role}")))
            }
        }
    }

    pub fn user_revoke_role(&mut self, user: &str, role: &str) -> Result<String, AuthError> {
        if self.enabled && user == ROOT && role == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
        let at = u
            .roles
            .binary_search_by(|r| r.as_str().cmp(role))
            .map_err(|_| AuthError::RoleNotGranted)?;
        u.roles.remove(at);
        self.changed();
        Ok(format!("user revoke role {user} {role}"))
    }

    pub fn role_add(&mut self, name: &str) -> Result<String, AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        self.roles.insert(
            name.to_owned(),
            Role {
                name: name.to_owned(),
                permissions: Vec::new(),
            },
        );
        self.changed();
        Ok(format!("role add {name}"))
    }

    /// Deletes a role and takes it from every user that has it.
    pub fn role_delete(&mut self, name: &str) -> Result<String, AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
        for u in self.users.values_mut() {
            u.roles.retain(|r| r != name);
        }
        self.changed();
        Ok(format!("role delete {name}"))
    }

    /// Grants a permission, or changes the kind of the one on the same key
    /// range.
    pub fn role_grant_permission(&mut self, role: &str, perm: Option<Permission>) -> Result<String, AuthError> {
        let perm = perm.ok_or(AuthError::PermissionNotGiven)?;
        if !is_valid_range(&perm.key, &perm.range_end) {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
        let at = r.permissions.partition_point(|p| p.key < perm.key);
        let note = format!(
            "role grant permission {role} {} {}",
            perm.kind.name(),
            crate::keys::escape(&perm.key)
        );
        match r.permissions.get_mut(at) {
            Some(p) if p.key == perm.key && p.range_end == perm.range_end => p.kind = perm.kind,
            _ => {
                r.permissions.push(perm);
                r.permissions.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.changed();
        Ok(note)
    }

    pub fn role_revoke_permission(&mut self, role: &str, key: &[u8], range_end: &[u8]) -> Result<String, AuthError> {
        let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
        let before = r.permissions.len();
        r.permissions
            .retain(|p| p.key.as_ref() != key || p.range_end.as_ref() != range_end);
        if r.permissions.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        self.changed();
        Ok(format!("role revoke permission {role} {}", crate::keys::escape(key)))
    }

    // Checks, as etcd makes them for each request.

    /// etcd's `isOpPermitted`: with auth on, a request needs a user; a user
    /// with the root role may do anything; others need a permission of the
    /// kind covering the whole range (`range_end` empty: the key `key`).
    fn permitted(&self, who: Option<&AuthInfo>, key: &[u8], range_end: &[u8], write: bool) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let who = who.ok_or(AuthError::UserEmpty)?;
        if who.revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let user = self.users.get(&who.user).ok_or(AuthError::PermissionDenied)?;
        if user.has_role(ROOT) {
            return Ok(());
        }
        let allowed = self
            .access
            .get(&who.user)
            .is_some_and(|a| a.allows(key, range_end, write));
        if allowed {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// May `who` read `[key, range_end)`?
    pub fn check_read(&self, who: Option<&AuthInfo>, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        self.permitted(who, key, range_end, false)
    }

    /// May `who` write (put or delete) `[key, range_end)`?
    pub fn check_write(&self, who: Option<&AuthInfo>, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        self.permitted(who, key, range_end, true)
    }

    /// etcd's `IsAdminPermitted`: with auth on, only a user with the root
    /// role.
    pub fn check_admin(&self, who: Option<&AuthInfo>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let who = who.filter(|w| !w.user.is_empty()).ok_or(AuthError::UserEmpty)?;
        let user = self.users.get(&who.user).ok_or(AuthError::UserNotFound)?;
        if !user.has_role(ROOT) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// Whether `user` has `role` (who may read a role's permissions).
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.has_role(role))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn perm(kind: PermKind, key: &str, end: &str) -> Option<Permission> {
        Some(Permission {
            kind,
            key: b(key),
            range_end: b(end),
        })
    }

    fn who(user: &str, s: &AuthState) -> AuthInfo {
        AuthInfo {
            user: user.into(),
            revision: s.revision,
        }
    }

    /// The root rules: enabling needs the root user with the root role
    /// (which need not exist as a role); while on, root cannot be deleted nor
    /// lose the root role.
    #[test]
    fn root_rules() -> Result<(), AuthError> {
        let mut s = AuthState::default();
        assert_eq!(s.revision, 1);
        assert_eq!(s.enable(), Err(AuthError::RootUserNotExist));
        s.user_add(ROOT, Some(b"hash".to_vec()))?;
        assert_eq!(s.enable(), Err(AuthError::RootRoleNotExist));
        assert_eq!(s.user_grant_role(ROOT, "other"), Err(AuthError::RoleNotFound));
        s.user_grant_role(ROOT, ROOT)?;
        assert_eq!(s.user_grant_role(ROOT, ROOT)?, None, "granting twice changes nothing");
        let before = s.revision;
        assert!(s.enable()?.is_some());
        assert_eq!(s.revision, before, "enabling keeps the revision");
        assert_eq!(s.enable()?, None);
        assert_eq!(s.user_delete(ROOT), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(s.user_revoke_role(ROOT, ROOT), Err(AuthError::InvalidAuthMgmt));
        s.role_add(ROOT)?;
        assert_eq!(s.role_delete(ROOT), Err(AuthError::InvalidAuthMgmt));
        assert!(s.disable().is_some());
        assert_eq!(s.revision, before + 2);
        s.user_revoke_role(ROOT, ROOT)?;
        assert_eq!(s.user_revoke_role(ROOT, ROOT), Err(AuthError::RoleNotGranted));
        s.user_delete(ROOT)?;
        Ok(())
    }

    /// Checks: a point needs a permission containing it, a range needs
    /// permissions covering it without a gap; root may do anything; with
    /// auth off everything is allowed; without a user nothing is.
    #[test]
    fn permission_checks() -> Result<(), AuthError> {
        let mut s = AuthState::default();
        s.user_add(ROOT, None)?;
        s.user_grant_role(ROOT, ROOT)?;
        s.user_add("u", None)?;
        s.role_add("r")?;
        s.role_grant_permission("r", perm(PermKind::Read, "/a/", "/a0"))?;
        s.role_grant_permission("r", perm(PermKind::Read, "/a0", "/b"))?;
        s.role_grant_permission("r", perm(PermKind::ReadWrite, "k", ""))?;
        s.role_grant_permission("r", perm(PermKind::Write, "/w/", "\0"))?;
        s.user_grant_role("u", "r")?;
        assert!(s.check_read(None, b"/x", b"").is_ok(), "auth off");
        s.enable()?;
        let u = who("u", &s);
        let root = who(ROOT, &s);
        assert_eq!(s.check_read(None, b"/x", b""), Err(AuthError::UserEmpty));
        assert!(s.check_read(Some(&root), b"\0", b"\0").is_ok());
        let cases: &[(&str, &str, bool, bool)] = &[
            ("/a/1", "", false, true),
            ("/a/", "/a0", false, true),
            ("/a/", "/b", false, true),
            ("/a/", "/c", false, false),
            ("/", "/a0", false, false),
            ("k", "", false, true),
            ("k", "", true, true),
            ("k", "k\0", false, true),
            ("k", "l", false, false),
            ("/a/1", "", true, false),
            ("/w/x", "", true, true),
            ("/w/", "\0", true, true),
            ("/w/", "\0", false, false),
            ("/v", "\0", true, false),
        ];
        for (key, end, write, ok) in cases {
            let got = if *write {
                s.check_write(Some(&u), key.as_bytes(), end.as_bytes())
            } else {
                s.check_read(Some(&u), key.as_bytes(), end.as_bytes())
            };
            assert_eq!(got.is_ok(), *ok, "{key:?}..{end:?} write={write}");
        }
        let stale = AuthInfo {
            user: "u".into(),
            revision: s.revision - 1,
        };
        assert_eq!(s.check_read(Some(&stale), b"k", b""), Err(AuthError::AuthOldRevision));
        assert_eq!(s.check_admin(Some(&u)), Err(AuthError::PermissionDenied));
        assert!(s.check_admin(Some(&root)).is_ok());
        assert_eq!(s.check_admin(Some(&who("nobody", &s))), Err(AuthError::UserNotFound));
        Ok(())
    }

    /// Permissions stay sorted by key; granting the same range again
    /// changes its kind; invalid ranges and missing permissions are refused.
    #[test]
    fn permission_management() -> Result<(), AuthError> {
        let mut s = AuthState::default();
        s.role_add("r")?;
        s.role_grant_permission("r", perm(PermKind::Read, "b", ""))?;
        s.role_grant_permission("r", perm(PermKind::Read, "a", "c"))?;
        s.role_grant_permission("r", perm(PermKind::Write, "b", ""))?;
        let keys: Vec<(Bytes, PermKind)> = s.roles["r"]
            .permissions
            .iter()
            .map(|p| (p.key.clone(), p.kind))
            .collect();
        assert_eq!(keys, vec![(b("a"), PermKind::Read), (b("b"), PermKind::Write)]);
        assert_eq!(s.role_grant_permission("r", None), Err(AuthError::PermissionNotGiven));
        assert_eq!(
            s.role_grant_permission("r", perm(PermKind::Read, "c", "a")),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.role_grant_permission("r", perm(PermKind::Read, "", "")),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.role_revoke_permission("r", b"a", b""),
            Err(AuthError::PermissionNotGranted)
        );
        s.role_revoke_permission("r", b"a", b"c")?;
        s.user_add("u", None)?;
        s.user_grant_role("u", "r")?;
        s.role_delete("r")?;
        assert!(s.users["u"].roles.is_empty(), "a deleted role leaves its users");
        Ok(())
    }
}
