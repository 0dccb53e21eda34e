use actix_web::{post, web, HttpRequest, HttpResponse};
use chrono::Utc;
use safehold_domain::access::UserKind;
use safehold_domain::settings::TenantSettings;
use safehold_domain::tenant::TenantCommand;
use safehold_domain::user::{ResourceLimits, UserCommand};
use safehold_domain::{CommandMetadata, TenantId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::passwords;
use crate::body::Json;
use crate::error::{ApiError, ApiResult};
use crate::middleware::RequestId;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// Organisation slug used at sign-in: 3-40 characters of a-z, 0-9 and inner hyphens.
    pub organisation: String,
    /// Display name of the organisation.
    pub name: String,
    /// IANA time zone (default UTC).
    pub time_zone: Option<String>,
    /// Username of the root user.
    pub username: String,
    pub email: Option<String>,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignupResponse {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
}

/// Creates an organisation and its root user.
#[utoipa::path(post, path = "/v1/signup", tag = "organisation", request_body = SignupRequest,
    responses(
        (status = 201, body = SignupResponse),
        (status = 409, description = "organisation exists", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid field", body = crate::error::Problem, content_type = "application/problem+json")))]
#[post("/v1/signup")]
pub async fn signup(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<SignupRequest>,
) -> ApiResult<HttpResponse> {
    let request_id = RequestId::of(&req);
    let created = sign_up(&state, body.0, request_id).await?;
    Ok(HttpResponse::Created().json(created))
}

/// Creates the organisation and its root user (also used by `safehold demo`).
pub async fn sign_up(
    state: &AppState,
    body: SignupRequest,
    request_id: String,
) -> ApiResult<SignupResponse> {
    let slug = body.organisation.trim().to_string();
    if !safehold_domain::ids::valid_slug(&slug) {
        return Err(ApiError::invalid_field(
            "organisation",
            "invalid_value",
            "3-40 characters of a-z, 0-9 and inner hyphens",
        ));
    }
    if !safehold_domain::ids::valid_username(&body.username) {
        return Err(ApiError::invalid_field(
            "username",
            "invalid_value",
            "1-64 characters of letters, digits and . _ @ -",
        ));
    }
    let tenant_id = TenantId::for_slug(&slug);
    let user_id = UserId::for_username(tenant_id, &body.username);
    let settings = TenantSettings {
        time_zone: body.time_zone.unwrap_or_else(|| "UTC".into()),
        ..Default::default()
    };
    if let Some(error) = settings.validate().into_iter().next() {
        return Err(ApiError::invalid(vec![error.into()]));
    }
    if state.commands.load_tenant(tenant_id).await?.is_some() {
        return Err(ApiError::conflict(
            "organisation_exists",
            format!("an organisation named {slug} already exists"),
        ));
    }
    let inputs = [body.username.as_str(), slug.as_str()];
    passwords::accept(
        &settings.password_policy,
        "password",
        &body.password,
        &inputs,
        None,
    )
    .await?;

    let meta = CommandMetadata {
        tenant_id,
        user_id: Some(user_id),
        delegate_id: None,
        request_id,
        occurred_at: Utc::now(),
    };
    // The credential goes first: once the user exists it can sign in.
    let hash = passwords::hash(&body.password).await?;
    passwords::store(&state.pool, tenant_id, user_id, &hash, false).await?;
    state
        .commands
        .tenant(
            &meta,
            TenantCommand::SignUp {
                id: tenant_id,
                slug,
                name: body.name,
                root_user_id: user_id,
                settings,
            },
        )
        .await?;
    state
        .commands
        .user(
            &meta,
            user_id,
            UserCommand::Create {
                id: user_id,
                tenant_id,
                username: body.username,
                email: body.email,
                kind: UserKind::Root,
                limits: ResourceLimits::default(),
                must_change_password: false,
            },
        )
        .await?;
    Ok(SignupResponse {
        tenant_id: tenant_id.0,
        user_id: user_id.0,
    })
}
