use actix_web::{delete, get, patch, post, put, web, HttpResponse};
use chrono::{DateTime, Utc};
use safehold_domain::access::{Action, Actor, DelegatePermissions, UserKind};
use safehold_domain::user::{ResourceLimits, UserCommand};
use safehold_domain::UserId;
use safehold_projections::users::{self as read, UserRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{api_keys, passwords, sessions, Authenticated};
use crate::body::Json;
use crate::error::{ApiError, ApiResult};
use crate::pagination::{self, Page, PageQuery};
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserKindName {
    Root,
    Independent,
    Managed,
    Delegate,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub kind: UserKindName,
    /// For managed users: the independent user managing it (absent: root).
    pub manager_id: Option<Uuid>,
    /// For delegates: the user it acts for.
    pub delegate_of: Option<Uuid>,
    /// For delegates only.
    pub permissions: Option<DelegatePermissions>,
    pub limits: ResourceLimits,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<UserRow> for UserView {
    fn from(r: UserRow) -> Self {
        let kind = match r.kind.as_str() {
            "root" => UserKindName::Root,
            "independent" => UserKindName::Independent,
            "managed" => UserKindName::Managed,
            _ => UserKindName::Delegate,
        };
        let limits = r.limits();
        Self {
            id: r.user_id,
            permissions: (kind == UserKindName::Delegate).then_some(DelegatePermissions {
                allow_recovery: r.allow_recovery,
                allow_account_changes: r.allow_account_changes,
                allow_backup_changes: r.allow_backup_changes,
            }),
            username: r.username,
            email: r.email,
            kind,
            manager_id: r.manager_id,
            delegate_of: r.delegate_of,
            limits,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Loads a user the actor may see; anything else is "not found", so ids of
/// other tenants and hidden users reveal nothing.
async fn visible_user(state: &AppState, actor: &Actor, id: Uuid) -> ApiResult<UserRow> {
    let row = read::find_user(&state.pool, actor.tenant_id, UserId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    if sees(state, actor, &row).await? {
        Ok(row)
    } else {
        Err(ApiError::not_found("user"))
    }
}

/// Root sees every user; others see themselves, the managed users they
/// manage, and the delegates of those.
async fn sees(state: &AppState, actor: &Actor, row: &UserRow) -> ApiResult<bool> {
    if actor.is_root() && actor.delegate.is_none() {
        return Ok(true);
    }
    if let Some(kind) = row.principal_kind() {
        return Ok(actor.can_see_owner(UserId(row.user_id), kind));
    }
    let Some(principal) = row.delegate_of else {
        return Ok(false);
    };
    if principal == actor.user_id.0 {
        return Ok(true);
    }
    Ok(
        read::find_user(&state.pool, actor.tenant_id, UserId(principal))
            .await?
            .and_then(|p| p.principal_kind())
            .is_some_and(|kind| actor.can_see_owner(UserId(principal), kind)),
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Cannot be changed later.
    pub username: String,
    pub email: Option<String>,
    /// Initial password; the user must change it at first sign-in.
    pub password: String,
    pub kind: UserKindName,
    /// Managed users: the independent user that manages it (absent: root).
    pub manager_id: Option<Uuid>,
    /// Delegates: the user it acts for (absent: the caller).
    pub delegate_of: Option<Uuid>,
    /// Delegates: permissions beyond viewing (all denied by default).
    pub permissions: Option<DelegatePermissions>,
    /// Independent and managed users: resource limits (absent fields: unlimited).
    pub limits: Option<ResourceLimits>,
}

async fn check_manager(state: &AppState, actor: &Actor, manager: Option<Uuid>) -> ApiResult<()> {
    let Some(manager) = manager else {
        return Ok(());
    };
    let row = read::find_user(&state.pool, actor.tenant_id, UserId(manager)).await?;
    match row.map(|r| r.kind) {
        Some(kind) if kind == "independent" => Ok(()),
        _ => Err(ApiError::invalid_field(
            "manager_id",
            "invalid_manager",
            "must be the id of an independent user",
        )),
    }
}

/// Creates an independent, managed (root only) or delegate user.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateUserRequest,
    responses((status = 201, body = UserView),
              (status = 403, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/users")]
pub async fn create_user(
    state: web::Data<AppState>,
    auth: Authenticated,
    body: Json<CreateUserRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.0;
    let actor = &auth.actor;
    let kind = match body.kind {
        UserKindName::Root => {
            return Err(ApiError::invalid_field(
                "kind",
                "invalid_value",
                "an organisation has exactly one root user",
            ))
        }
        UserKindName::Independent => {
            actor.authorize(Action::ManageUsers)?;
            UserKind::Independent
        }
        UserKindName::Managed => {
            actor.authorize(Action::ManageUsers)?;
            check_manager(&state, actor, body.manager_id).await?;
            UserKind::Managed {
                manager_id: body.manager_id.map(UserId),
            }
        }
        UserKindName::Delegate => {
            // Root adds delegates to anyone; others only to themselves.
            let of = body.delegate_of.map(UserId).unwrap_or(actor.user_id);
            if of != actor.user_id {
                actor.authorize(Action::ManageUsers)?;
            }
            if actor.delegate.is_some() {
                return Err(ApiError::forbidden(
                    "forbidden",
                    "delegates may not create delegates",
                ));
            }
            let principal = read::find_user(&state.pool, actor.tenant_id, of).await?;
            if principal
                .as_ref()
                .and_then(|p| p.principal_kind())
                .is_none()
            {
                return Err(ApiError::invalid_field(
                    "delegate_of",
                    "invalid_principal",
                    "must be the id of a root, independent or managed user",
                ));
            }
            UserKind::Delegate {
                of,
                permissions: body.permissions.unwrap_or_default(),
            }
        }
    };
    if body.kind != UserKindName::Delegate && body.permissions.is_some() {
        return Err(ApiError::invalid_field(
            "permissions",
            "not_applicable",
            "only delegates have permissions",
        ));
    }
    let tenant = actor.tenant_id;
    let user = UserId::for_username(tenant, &body.username);
    if state.commands.load_user(tenant, user).await?.is_some() {
        return Err(ApiError::conflict(
            "username_taken",
            format!("the username {} is already taken", body.username),
        ));
    }
    let settings = super::tenant_settings(&state, tenant).await?;
    let inputs = [body.username.as_str()];
    passwords::accept(
        &settings.password_policy,
        "password",
        &body.password,
        &inputs,
        None,
    )
    .await?;
    let hash = passwords::hash(&body.password).await?;
    passwords::store(&state.pool, tenant, user, &hash, true).await?;
    state
        .commands
        .user(
            &auth.metadata(),
            user,
            UserCommand::Create {
                id: user,
                tenant_id: tenant,
                username: body.username,
                email: body.email,
                kind,
                limits: body.limits.unwrap_or_default(),
                must_change_password: true,
            },
        )
        .await?;
    let row = visible_user(&state, actor, user.0).await?;
    Ok(HttpResponse::Created().json(UserView::from(row)))
}

/// Lists the users the caller may see, by username.
#[utoipa::path(get, path = "/v1/users", tag = "users", params(PageQuery),
    responses((status = 200, body = Page<UserView>)), security(("bearer" = [])))]
#[get("/v1/users")]
pub async fn list_users(
    state: web::Data<AppState>,
    auth: Authenticated,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let limit = pagination::limit(query.limit)?;
    let mut after: Option<String> = query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?;
    // Visibility is decided per row, so keep reading until the page is full.
    let mut visible = Vec::new();
    loop {
        let rows = read::list_users(
            &state.pool,
            auth.actor.tenant_id,
            after.as_deref(),
            limit + 1,
        )
        .await?;
        let exhausted = rows.len() as i64 <= limit;
        for row in rows {
            after = Some(row.username.to_lowercase());
            if sees(&state, &auth.actor, &row).await? {
                visible.push(row);
                if visible.len() as i64 > limit {
                    break;
                }
            }
        }
        if exhausted || visible.len() as i64 > limit {
            break;
        }
    }
    let page = pagination::page(
        visible,
        limit,
        |r| r.username.to_lowercase(),
        UserView::from,
    );
    Ok(HttpResponse::Ok().json(page))
}

/// One user.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 200, body = UserView), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/v1/users/{id}")]
pub async fn get_user(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let row = visible_user(&state, &auth.actor, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(UserView::from(row)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// `null` clears the address.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    pub limits: Option<ResourceLimits>,
    /// Between `independent` and `managed` only.
    pub kind: Option<UserKindName>,
    /// With kind `managed`: the managing independent user (absent: root).
    pub manager_id: Option<Uuid>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// Edits a user's e-mail, limits or kind (root only). Usernames never change.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)), request_body = UpdateUserRequest,
    responses((status = 200, body = UserView), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[patch("/v1/users/{id}")]
pub async fn update_user(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: Json<UpdateUserRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_user(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ManageUsers)?;
    let body = body.0;
    let kind =
        match body.kind {
            None if body.manager_id.is_some() => {
                return Err(ApiError::invalid_field(
                    "manager_id",
                    "requires_kind",
                    "send kind `managed` with manager_id",
                ))
            }
            None => None,
            Some(UserKindName::Independent) => Some(UserKind::Independent),
            Some(UserKindName::Managed) => {
                check_manager(&state, actor, body.manager_id).await?;
                if body.manager_id == Some(row.user_id) {
                    return Err(ApiError::invalid_field(
                        "manager_id",
                        "invalid_manager",
                        "a user cannot manage itself",
                    ));
                }
                Some(UserKind::Managed {
                    manager_id: body.manager_id.map(UserId),
                })
            }
            Some(_) => return Err(ApiError::invalid_field(
                "kind",
                "kind_change_not_allowed",
                "only independent and managed users can change kind, and only between these two",
            )),
        };
    state
        .commands
        .user(
            &auth.metadata(),
            UserId(row.user_id),
            UserCommand::Update {
                email: body.email,
                limits: body.limits,
                kind,
            },
        )
        .await?;
    let row = visible_user(&state, actor, row.user_id).await?;
    Ok(HttpResponse::Ok().json(UserView::from(row)))
}

/// Sets a delegate's permissions (root, or the user the delegate acts for).
#[utoipa::path(put, path = "/v1/users/{id}/permissions", tag = "users", params(("id" = Uuid, Path)), request_body = DelegatePermissions,
    responses((status = 200, body = UserView), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[put("/v1/users/{id}/permissions")]
pub async fn set_permissions(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: Json<DelegatePermissions>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_user(&state, actor, path.into_inner()).await?;
    if actor.delegate.is_some() {
        return Err(ApiError::forbidden(
            "forbidden",
            "delegates may not change delegates",
        ));
    }
    if row.delegate_of != Some(actor.user_id.0) {
        actor.authorize(Action::ManageUsers)?;
    }
    state
        .commands
        .user(
            &auth.metadata(),
            UserId(row.user_id),
            UserCommand::SetDelegatePermissions {
                permissions: body.0,
            },
        )
        .await?;
    let row = visible_user(&state, actor, row.user_id).await?;
    Ok(HttpResponse::Ok().json(UserView::from(row)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    pub new_password: String,
}

/// Root sets a new password for a user, who must change it at next sign-in.
/// The user's sessions end.
#[utoipa::path(post, path = "/v1/users/{id}/password", tag = "users", params(("id" = Uuid, Path)), request_body = ResetPasswordRequest,
    responses((status = 204), (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/users/{id}/password")]
pub async fn reset_password(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: Json<ResetPasswordRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_user(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ManageUsers)?;
    let (tenant, user) = (actor.tenant_id, UserId(row.user_id));
    let settings = super::tenant_settings(&state, tenant).await?;
    let current = passwords::load(&state.pool, tenant, user).await?;
    let inputs = [row.username.as_str()];
    passwords::accept(
        &settings.password_policy,
        "new_password",
        &body.0.new_password,
        &inputs,
        current.as_ref(),
    )
    .await?;
    let hash = passwords::hash(&body.0.new_password).await?;
    passwords::store(&state.pool, tenant, user, &hash, true).await?;
    sessions::revoke_all(&state.pool, tenant, user).await?;
    state
        .commands
        .user(
            &auth.metadata(),
            user,
            UserCommand::RecordPasswordChange {
                by_someone_else: true,
            },
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Deletes a user and its delegates (root only; not the root user, not an
/// independent user that still manages users).
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 409, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[delete("/v1/users/{id}")]
pub async fn delete_user(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_user(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ManageUsers)?;
    let tenant = actor.tenant_id;
    let dependants: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT user_id, kind FROM users WHERE tenant_id = $1 AND (manager_id = $2 OR delegate_of = $2)",
    )
    .bind(tenant.0)
    .bind(row.user_id)
    .fetch_all(&state.pool)
    .await?;
    if dependants.iter().any(|(_, kind)| kind == "managed") {
        return Err(ApiError::conflict(
            "user_manages_users",
            "assign this user's managed users to another manager first",
        ));
    }
    let meta = auth.metadata();
    let delegates = dependants.into_iter().map(|(id, _)| UserId(id));
    for user in delegates.chain(std::iter::once(UserId(row.user_id))) {
        state
            .commands
            .user(&meta, user, UserCommand::Delete)
            .await?;
        sessions::revoke_all(&state.pool, tenant, user).await?;
        api_keys::delete_all(&state.pool, tenant, user).await?;
        passwords::delete(&state.pool, tenant, user).await?;
    }
    Ok(HttpResponse::NoContent().finish())
}
