//! What gitcd does not serve yet answers gRPC Unimplemented, naming the
//! method, so a client sees exactly what is missing.

use tonic::{Request, Response, Status};

use crate::proto::etcdserverpb::*;

/// The status for an unserved method, e.g. `method("Auth/UserAdd")`.
pub fn method(name: &str) -> Status {
    Status::unimplemented(format!("gitcd does not implement etcdserverpb.{name}"))
}

/// `etcdserverpb.Auth`: gitcd has no authentication yet (use TLS in front).
pub struct AuthService;

macro_rules! unimplemented_auth {
    ($($fn:ident($req:ty) -> $resp:ty = $name:literal;)*) => {
        #[tonic::async_trait]
        impl auth_server::Auth for AuthService {
            $(
                async fn $fn(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(method(concat!("Auth/", $name)))
                }
            )*
        }
    };
}

unimplemented_auth! {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse = "AuthEnable";
    auth_disable(AuthDisableRequest) -> AuthDisableResponse = "AuthDisable";
    auth_status(AuthStatusRequest) -> AuthStatusResponse = "AuthStatus";
    authenticate(AuthenticateRequest) -> AuthenticateResponse = "Authenticate";
    user_add(AuthUserAddRequest) -> AuthUserAddResponse = "UserAdd";
    user_get(AuthUserGetRequest) -> AuthUserGetResponse = "UserGet";
    user_list(AuthUserListRequest) -> AuthUserListResponse = "UserList";
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse = "UserDelete";
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse = "UserChangePassword";
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse = "UserGrantRole";
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse = "UserRevokeRole";
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse = "RoleAdd";
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse = "RoleGet";
    role_list(AuthRoleListRequest) -> AuthRoleListResponse = "RoleList";
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse = "RoleDelete";
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse = "RoleGrantPermission";
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse = "RoleRevokePermission";
}
