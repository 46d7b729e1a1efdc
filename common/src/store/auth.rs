//! Changes of users, roles and permissions as writer jobs: each applies
//! etcd's rule to the working state's [`crate::auth::AuthState`], and the
//! batch's changes become one commit of the auth ref, made durable with the
//! batch. Passwords arrive hashed (the gRPC layer hashes them off the
//! writer, as etcd hashes them before proposing).
//!
//! Also [`Guarded`]: a write checked against the auth revision its
//! permissions were checked at, so that a permission revoked meanwhile
//! refuses it (etcd's `ErrAuthOldRevision`).

use std::sync::Arc;

use base64::Engine as _;

use super::apply::Apply;
use super::job::Operation;
use super::{Error, Store};
use crate::auth::{AuthError, PermKind, Permission};
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse, AuthRoleAddRequest,
    AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse,
    AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, ResponseHeader,
};

fn header(a: &Apply<'_>) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: a.begin,
        ..Default::default()
    })
}

impl Apply<'_> {
    /// Runs `change` on a copy of the auth state and keeps it (with its note)
    /// when it changed something.
    fn auth<T>(
        &mut self,
        change: impl FnOnce(&mut crate::auth::AuthState) -> Result<(T, Option<String>), AuthError>,
    ) -> Result<T, Error> {
        let mut state = (*self.state.auth).clone();
        let (out, note) = change(&mut state)?;
        if let Some(note) = note {
            self.state.auth = Arc::new(state);
            self.auth_notes.push(note);
        }
        Ok(out)
    }
}

/// A password hash as etcd's raft request carries it: base64 of the bcrypt
/// hash.
fn decode_hash(hashed: &str) -> Result<Vec<u8>, AuthError> {
    base64::engine::general_purpose::STANDARD
        .decode(hashed)
        .map_err(|_| AuthError::NoPasswordUser)
}

macro_rules! auth_job {
    ($req:ty => $resp:ident, |$a:ident, $r:ident| $body:expr) => {
        impl Operation for $req {
            type Output = $resp;
            fn apply(&self, $a: &mut Apply<'_>) -> Result<$resp, Error> {
                let $r = self;
                $body?;
                Ok($resp { header: header($a) })
            }
        }
    };
}

auth_job!(AuthEnableRequest => AuthEnableResponse, |a, _r| a.auth(|s| s.enable().map(|n| ((), n))));
auth_job!(AuthDisableRequest => AuthDisableResponse, |a, _r| a.auth(|s| Ok(((), s.disable()))));
auth_job!(AuthUserAddRequest => AuthUserAddResponse, |a, r| {
    let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
    let hash = if no_password { None } else { Some(decode_hash(&r.hashed_password)) };
    a.auth(|s| {
        if r.name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if s.users.contains_key(&r.name) {
            return Err(AuthError::UserAlreadyExist);
        }
        let hash = hash.transpose()?;
        s.user_add(&r.name, hash).map(|n| ((), Some(n)))
    })
});
auth_job!(AuthUserDeleteRequest => AuthUserDeleteResponse, |a, r| a.auth(|s| s.user_delete(&r.name).map(|n| ((), Some(n)))));
auth_job!(AuthUserChangePasswordRequest => AuthUserChangePasswordResponse, |a, r| a.auth(|s| {
    let no_password = s.users.get(&r.name).ok_or(AuthError::UserNotFound)?.no_password;
    let hash = if no_password { Vec::new() } else { decode_hash(&r.hashed_password)? };
    s.user_change_password(&r.name, hash).map(|n| ((), Some(n)))
}));
auth_job!(AuthUserGrantRoleRequest => AuthUserGrantRoleResponse, |a, r| a.auth(|s| s.user_grant_role(&r.user, &r.role).map(|n| ((), n))));
auth_job!(AuthUserRevokeRoleRequest => AuthUserRevokeRoleResponse, |a, r| a.auth(|s| s.user_revoke_role(&r.name, &r.role).map(|n| ((), Some(n)))));
auth_job!(AuthRoleAddRequest => AuthRoleAddResponse, |a, r| a.auth(|s| s.role_add(&r.name).map(|n| ((), Some(n)))));
auth_job!(AuthRoleDeleteRequest => AuthRoleDeleteResponse, |a, r| a.auth(|s| s.role_delete(&r.role).map(|n| ((), Some(n)))));
auth_job!(AuthRoleGrantPermissionRequest => AuthRoleGrantPermissionResponse, |a, r| a.auth(|s| {
    let perm = r.perm.as_ref().map(|p| Permission {
        kind: PermKind::from_i32(p.perm_type).unwrap_or(PermKind::Read),
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    });
    s.role_grant_permission(&r.name, perm).map(|n| ((), Some(n)))
}));
auth_job!(AuthRoleRevokePermissionRequest => AuthRoleRevokePermissionResponse, |a, r| a.auth(|s| s.role_revoke_permission(&r.role, &r.key, &r.range_end).map(|n| ((), Some(n)))));

/// A write whose permissions were checked at auth revision
/// `auth_revision`: refused if users or roles changed since, while auth is
/// on.
pub(crate) struct Guarded<O> {
    pub op: O,
    pub auth_revision: u64,
}

impl<O: Operation> Operation for Guarded<O> {
    type Output = O::Output;
    fn apply(&self, a: &mut Apply<'_>) -> Result<O::Output, Error> {
        if a.state.auth.enabled && a.state.auth.revision != self.auth_revision {
            return Err(AuthError::AuthOldRevision.into());
        }
        self.op.apply(a)
    }
    fn reads_history(&self) -> bool {
        self.op.reads_history()
    }
    fn own_commit(&self) -> bool {
        self.op.own_commit()
    }
}

macro_rules! store_methods {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        impl Store {
            $(
                /// Applies this change of users, roles or permissions with
                /// etcd's rules (a password already hashed into
                /// `hashed_password`) and waits until the auth ref records it.
                pub async fn $name(&self, req: $req) -> Result<$resp, Error> {
                    self.submit(req).await
                }
            )*
        }
    };
}

store_methods! {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}
