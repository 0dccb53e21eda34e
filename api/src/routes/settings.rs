use actix_web::{get, put, web, HttpResponse};
use safehold_domain::access::Action;
use safehold_domain::settings::TenantSettings;
use safehold_domain::tenant::TenantCommand;

use crate::auth::Authenticated;
use crate::body::Json;
use crate::error::ApiResult;
use crate::state::AppState;

/// The organisation's general settings.
#[utoipa::path(get, path = "/v1/settings", tag = "organisation",
    responses((status = 200, body = TenantSettings)), security(("bearer" = [])))]
#[get("/v1/settings")]
pub async fn get_settings(
    state: web::Data<AppState>,
    auth: Authenticated,
) -> ApiResult<HttpResponse> {
    let settings = super::tenant_settings(&state, auth.actor.tenant_id).await?;
    Ok(HttpResponse::Ok().json(settings))
}

/// Replaces the general settings (root only).
#[utoipa::path(put, path = "/v1/settings", tag = "organisation", request_body = TenantSettings,
    responses((status = 200, body = TenantSettings),
              (status = 403, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[put("/v1/settings")]
pub async fn put_settings(
    state: web::Data<AppState>,
    auth: Authenticated,
    body: Json<TenantSettings>,
) -> ApiResult<HttpResponse> {
    auth.actor.authorize(Action::ChangeGeneralSettings)?;
    state
        .commands
        .tenant(
            &auth.metadata(),
            TenantCommand::UpdateSettings {
                settings: body.0.clone(),
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(body.0))
}
