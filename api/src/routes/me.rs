use actix_web::{delete, get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use safehold_domain::access::Action;
use safehold_domain::user::UserCommand;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{api_keys, passwords, sessions, Authenticated, AuthenticatedForPasswordChange};
use crate::body::Json;
use crate::error::{ApiError, ApiResult};
use crate::routes::users::UserView;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct MeResponse {
    /// The signed-in user (the delegate, when a delegate signed in).
    pub user: UserView,
    /// The user whose environment this session acts on.
    pub acting_for: Uuid,
    pub tenant_id: Uuid,
}

/// Who the request acts as.
#[utoipa::path(get, path = "/v1/me", tag = "me", responses((status = 200, body = MeResponse)), security(("bearer" = [])))]
#[get("/v1/me")]
pub async fn me(state: web::Data<AppState>, auth: Authenticated) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = safehold_projections::users::find_user(
        &state.pool,
        actor.tenant_id,
        actor.signed_in_user(),
    )
    .await?
    .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(HttpResponse::Ok().json(MeResponse {
        user: row.into(),
        acting_for: actor.user_id.0,
        tenant_id: actor.tenant_id.0,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

/// Changes the signed-in user's password (also when it has expired or must be changed).
#[utoipa::path(post, path = "/v1/me/password", tag = "me", request_body = ChangePasswordRequest,
    responses((status = 204),
              (status = 403, description = "current password wrong", body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, description = "a password rule is broken", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/me/password")]
pub async fn change_password(
    state: web::Data<AppState>,
    auth: AuthenticatedForPasswordChange,
    body: Json<ChangePasswordRequest>,
) -> ApiResult<HttpResponse> {
    let auth = auth.0;
    auth.actor.authorize(Action::ManageOwnCredentials)?;
    let (tenant, user) = (auth.actor.tenant_id, auth.actor.signed_in_user());
    let current = passwords::load(&state.pool, tenant, user)
        .await?
        .ok_or_else(|| ApiError::not_found("password"))?;
    if !passwords::verify(&current.hash, &body.0.current_password).await {
        return Err(ApiError::forbidden(
            "wrong_password",
            "the current password is wrong",
        ));
    }
    let settings = super::tenant_settings(&state, tenant).await?;
    let state_user = state
        .commands
        .load_user(tenant, user)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let inputs = [state_user.username.as_str()];
    passwords::accept(
        &settings.password_policy,
        "new_password",
        &body.0.new_password,
        &inputs,
        Some(&current),
    )
    .await?;
    let hash = passwords::hash(&body.0.new_password).await?;
    passwords::store(&state.pool, tenant, user, &hash, false).await?;
    sessions::clear_password_change(&state.pool, tenant, user).await?;
    state
        .commands
        .user(
            &auth.metadata(),
            user,
            UserCommand::RecordPasswordChange {
                by_someone_else: false,
            },
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub key_id: Uuid,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub key_id: Uuid,
    pub name: String,
    /// The key itself. It is shown only now: store it safely.
    pub api_key: String,
}

/// Creates an API key acting as the signed-in user.
#[utoipa::path(post, path = "/v1/me/api-keys", tag = "me", request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey)), security(("bearer" = [])))]
#[post("/v1/me/api-keys")]
pub async fn create_api_key(
    state: web::Data<AppState>,
    auth: Authenticated,
    body: Json<CreateApiKeyRequest>,
) -> ApiResult<HttpResponse> {
    auth.actor.authorize(Action::ManageOwnCredentials)?;
    let (tenant, user) = (auth.actor.tenant_id, auth.actor.signed_in_user());
    let key = api_keys::generate();
    state
        .commands
        .user(
            &auth.metadata(),
            user,
            UserCommand::CreateApiKey {
                key_id: key.key_id,
                name: body.0.name.clone(),
                prefix: key.display_prefix.clone(),
            },
        )
        .await?;
    // Stored only after the event: a key the log does not know never works.
    api_keys::store(&state.pool, tenant, user, &key).await?;
    Ok(HttpResponse::Created().json(CreatedApiKey {
        key_id: key.key_id,
        name: body.0.name,
        api_key: key.token,
    }))
}

/// Lists the signed-in user's API keys (never the keys themselves).
#[utoipa::path(get, path = "/v1/me/api-keys", tag = "me",
    responses((status = 200, body = Vec<ApiKeyView>)), security(("bearer" = [])))]
#[get("/v1/me/api-keys")]
pub async fn list_api_keys(
    state: web::Data<AppState>,
    auth: Authenticated,
) -> ApiResult<HttpResponse> {
    let rows = safehold_projections::users::list_api_keys(
        &state.pool,
        auth.actor.tenant_id,
        auth.actor.signed_in_user(),
    )
    .await?;
    let views: Vec<ApiKeyView> = rows
        .into_iter()
        .map(|r| ApiKeyView {
            key_id: r.key_id,
            name: r.name,
            prefix: r.prefix,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

/// Revokes one of the signed-in user's API keys.
#[utoipa::path(delete, path = "/v1/me/api-keys/{key_id}", tag = "me",
    params(("key_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[delete("/v1/me/api-keys/{key_id}")]
pub async fn revoke_api_key(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    auth.actor.authorize(Action::ManageOwnCredentials)?;
    let key_id = path.into_inner();
    let (tenant, user) = (auth.actor.tenant_id, auth.actor.signed_in_user());
    // The secret goes first so the key stops working even if the event fails.
    api_keys::delete(&state.pool, tenant, user, key_id).await?;
    state
        .commands
        .user(&auth.metadata(), user, UserCommand::RevokeApiKey { key_id })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
