use actix_web::http::StatusCode;
use actix_web::{post, web, HttpRequest, HttpResponse};
use chrono::Utc;
use safehold_domain::user::UserCommand;
use safehold_domain::{CommandMetadata, TenantId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::actor::Credential;
use crate::auth::{lockout, passwords, sessions, tokens, AuthenticatedForPasswordChange};
use crate::body::Json;
use crate::error::{ApiError, ApiResult};
use crate::middleware::RequestId;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub organisation: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires; refresh before then.
    pub expires_in: i64,
    /// When true every endpoint but `POST /v1/me/password` answers 403
    /// `password_change_required` until the password is changed.
    pub password_change_required: bool,
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("the organisation, username or password is wrong")
        .with_code("invalid_credentials")
}

fn locked(secs: i64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failed_sign_ins",
        format!("too many failed sign-ins; try again in {secs} s"),
    );
    e.retry_after_secs = Some(secs as u64);
    e
}

/// Signs in with a password and starts a session.
#[utoipa::path(post, path = "/v1/auth/login", tag = "authentication", request_body = LoginRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "wrong credentials", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "locked after repeated failures", body = crate::error::Problem, content_type = "application/problem+json")))]
#[post("/v1/auth/login")]
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<LoginRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.0;
    let tenant = TenantId::for_slug(body.organisation.trim());
    let user = UserId::for_username(tenant, &body.username);
    if let Some(secs) = lockout::locked_for(&state.pool, tenant, &body.username).await? {
        return Err(locked(secs));
    }
    let credential = passwords::load(&state.pool, tenant, user).await?;
    let live_user = match &credential {
        Some(_) => state.commands.load_user(tenant, user).await?,
        None => None,
    };
    let verified = match (&credential, &live_user) {
        (Some(c), Some(_)) => passwords::verify(&c.hash, &body.password).await,
        _ => {
            passwords::verify_dummy(&body.password).await;
            false
        }
    };
    let (Some(credential), true) = (credential, verified) else {
        return match lockout::record_failure(&state.pool, tenant, &body.username).await? {
            Some(lock) => Err(locked(lock.num_seconds())),
            None => Err(invalid_credentials()),
        };
    };
    lockout::record_success(&state.pool, tenant, &body.username).await?;
    let settings = super::tenant_settings(&state, tenant).await?;
    let must_change = credential.must_change
        || passwords::expired(&settings.password_policy, credential.changed_at);
    let session = sessions::create(
        &state.pool,
        tenant,
        user,
        settings.session_idle_minutes,
        must_change,
    )
    .await?;
    let user_state = live_user.ok_or_else(invalid_credentials)?;
    let (acting_user, delegate) = match user_state.kind {
        safehold_domain::access::UserKind::Delegate { of, .. } => (of, Some(user)),
        _ => (user, None),
    };
    let meta = CommandMetadata {
        tenant_id: tenant,
        user_id: Some(acting_user),
        delegate_id: delegate,
        request_id: RequestId::of(&req),
        occurred_at: Utc::now(),
    };
    state
        .commands
        .user(
            &meta,
            user,
            UserCommand::RecordSignIn {
                session_id: session,
                method: "password".into(),
            },
        )
        .await?;
    token_response(&state, tenant, user, session, must_change)
}

fn token_response(
    state: &AppState,
    tenant: TenantId,
    user: UserId,
    session: uuid::Uuid,
    must_change: bool,
) -> ApiResult<HttpResponse> {
    let minutes = state.config.access_token_minutes;
    let token = tokens::issue(
        &state.config.jwt_secret,
        (user.0, tenant.0, session),
        minutes,
    )?;
    Ok(HttpResponse::Ok().json(TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: minutes * 60,
        password_change_required: must_change,
    }))
}

/// Issues a fresh access token for a live session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "authentication",
    responses((status = 200, body = TokenResponse),
              (status = 401, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/auth/refresh")]
pub async fn refresh(
    state: web::Data<AppState>,
    auth: AuthenticatedForPasswordChange,
) -> ApiResult<HttpResponse> {
    let auth = auth.0;
    let Credential::Session(session) = auth.credential else {
        return Err(ApiError::bad_request(
            "not_a_session",
            "API keys do not expire and need no refresh",
        ));
    };
    let must_change = passwords::load(
        &state.pool,
        auth.actor.tenant_id,
        auth.actor.signed_in_user(),
    )
    .await?
    .map(|c| c.must_change)
    .unwrap_or(false);
    token_response(
        &state,
        auth.actor.tenant_id,
        auth.actor.signed_in_user(),
        session,
        must_change,
    )
}

/// Ends the current session.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "authentication",
    responses((status = 204), (status = 401, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/auth/logout")]
pub async fn logout(
    state: web::Data<AppState>,
    auth: AuthenticatedForPasswordChange,
) -> ApiResult<HttpResponse> {
    let auth = auth.0;
    let Credential::Session(session) = auth.credential else {
        return Err(ApiError::bad_request(
            "not_a_session",
            "API keys are revoked with DELETE /v1/me/api-keys/{key_id}",
        ));
    };
    sessions::revoke(&state.pool, auth.actor.tenant_id, session).await?;
    state
        .commands
        .user(
            &auth.metadata(),
            auth.actor.signed_in_user(),
            UserCommand::RecordSignOut {
                session_id: session,
            },
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
