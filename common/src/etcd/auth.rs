//! `etcdserverpb.Auth`: users, roles, permissions, `auth enable`/`disable`
//! and simple tokens, with etcd 3.5's rules: while auth is on every call but
//! Authenticate needs the root role, except that a user may read itself
//! (UserGet) and the roles it has (RoleGet). Passwords are hashed with bcrypt
//! here, off the writer and the async threads, before the store records them
//! (etcd hashes before proposing, too); they are never stored in clear.

use base64::Engine as _;
use tonic::{Request, Response, Status};

use super::{Context, auth_status, status};
use crate::auth::AuthError;
use crate::proto::authpb;
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse, AuthRoleAddRequest,
    AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest, AuthStatusResponse,
    AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, ResponseHeader, auth_server,
};

pub struct AuthService(pub Context);

impl AuthService {
    fn header(&self) -> Option<ResponseHeader> {
        self.0.header(self.0.store.snapshot().revision)
    }

    /// bcrypt of `password` at the configured cost, base64 as etcd's raft
    /// request carries it; on a blocking thread.
    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.0.authn.bcrypt_cost;
        let hash = tokio::task::spawn_blocking(move || crate::auth::hash_password(&password, cost))
            .await
            .map_err(|_| status(crate::store::Error::Stopped))?
            .map_err(|e| Status::unknown(e.to_string()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(hash))
    }
}

/// Fills a header the store made with the member's identity.
fn filled(ctx: &Context, mut header: Option<ResponseHeader>) -> Option<ResponseHeader> {
    ctx.fill(&mut header);
    header
}

#[tonic::async_trait]
impl auth_server::Auth for AuthService {
    async fn auth_enable(&self, request: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        self.0.admin(&request)?;
        let resp = self.0.store.auth_enable(request.into_inner()).await.map_err(status)?;
        Ok(Response::new(AuthEnableResponse {
            header: filled(&self.0, resp.header),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.0.admin(&request)?;
        let resp = self.0.store.auth_disable(request.into_inner()).await.map_err(status)?;
        self.0.authn.tokens.clear();
        Ok(Response::new(AuthDisableResponse {
            header: filled(&self.0, resp.header),
        }))
    }

    async fn auth_status(&self, request: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        self.0.admin(&request)?;
        let auth = self.0.store.snapshot().auth.clone();
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: auth.enabled,
            auth_revision: auth.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        let snap = self.0.store.snapshot();
        if !snap.auth.enabled {
            return Err(auth_status(AuthError::AuthNotEnabled));
        }
        let user = snap
            .auth
            .users
            .get(&req.name)
            .cloned()
            .ok_or_else(|| auth_status(AuthError::AuthFailed))?;
        if user.no_password {
            return Err(auth_status(AuthError::NoPasswordUser));
        }
        let password = req.password;
        let matches = tokio::task::spawn_blocking(move || crate::auth::verify_password(&password, &user.password))
            .await
            .map_err(|_| status(crate::store::Error::Stopped))?;
        if !matches {
            tracing::info!(user = %req.name, "invalid password");
            return Err(auth_status(AuthError::AuthFailed));
        }
        let index = u64::try_from(snap.revision).unwrap_or(0);
        let token = self.0.authn.tokens.assign(&req.name, index);
        Ok(Response::new(AuthenticateResponse {
            header: self.header(),
            token,
        }))
    }

    async fn user_add(&self, request: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        self.0.admin(&request)?;
        let mut req = request.into_inner();
        if !req.options.as_ref().is_some_and(|o| o.no_password) {
            req.hashed_password = self.hash(std::mem::take(&mut req.password)).await?;
        }
        req.password.clear();
        let resp = self.0.store.user_add(req).await.map_err(status)?;
        Ok(Response::new(AuthUserAddResponse {
            header: filled(&self.0, resp.header),
        }))
    }

    async fn user_get(&self, request: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        let who = self.0.who(&request)?;
        let req = request.into_inner();
        let auth = self.0.store.snapshot().auth.clone();
        if let Err(e) = auth.check_admin(who.as_ref())
            && who.as_ref().is_none_or(|w| w.user != req.name)
        {
            return Err(auth_status(e));
        }
        let user = auth
            .users
            .get(&req.name)
            .ok_or_else(|| auth_status(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(&self, request: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        self.0.admin(&request)?;
        let auth = self.0.store.snapshot().auth.clone();
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users: auth.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.0.admin(&request)?;
        let req = request.into_inner();
        let name = req.name.clone();
        let resp = self.0.store.user_delete(req).await.map_err(status)?;
        self.0.authn.tokens.invalidate_user(&name);
        Ok(Response::new(AuthUserDeleteResponse {
            header: filled(&self.0, resp.header),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.0.admin(&request)?;
        let mut req = request.into_inner();
        if !req.password.is_empty() {
            req.hashed_password = self.hash(std::mem::take(&mut req.password)).await?;
        }
        let name = req.name.clone();
        let resp = self.0.store.user_change_password(req).await.map_err(status)?;
        self.0.authn.tokens.invalidate_user(&name);
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: filled(&self.0, resp.header),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.0.admin(&request)?;
        let resp = self
            .0
            .store
            .user_grant_role(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: filled(&self.0, resp.header),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.0.admin(&request)?;
        let resp = self
            .0
            .store
            .user_revoke_role(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: filled(&self.0, resp.header),
        }))
    }

    async fn role_add(&self, request: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.0.admin(&request)?;
        let resp = self.0.store.role_add(request.into_inner()).await.map_err(status)?;
        Ok(Response::new(AuthRoleAddResponse {
            header: filled(&self.0, resp.header),
        }))
    }

    async fn role_get(&self, request: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        let who = self.0.who(&request)?;
        let req = request.into_inner();
        let auth = self.0.store.snapshot().auth.clone();
        if let Err(e) = auth.check_admin(who.as_ref())
            && !who.as_ref().is_some_and(|w| auth.has_role(&w.user, &req.role))
        {
            return Err(auth_status(e));
        }
        let role = auth
            .roles
            .get(&req.role)
            .ok_or_else(|| auth_status(AuthError::RoleNotFound))?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm: role
                .permissions
                .iter()
                .map(|p| authpb::Permission {
                    perm_type: p.kind.as_i32(),
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                })
                .collect(),
        }))
    }

    async fn role_list(&self, request: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        self.0.admin(&request)?;
        let auth = self.0.store.snapshot().auth.clone();
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles: auth.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.0.admin(&request)?;
        let resp = self.0.store.role_delete(request.into_inner()).await.map_err(status)?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: filled(&self.0, resp.header),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.0.admin(&request)?;
        let resp = self
            .0
            .store
            .role_grant_permission(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: filled(&self.0, resp.header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.0.admin(&request)?;
        let resp = self
            .0
            .store
            .role_revoke_permission(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: filled(&self.0, resp.header),
        }))
    }
}
