pub mod accounts;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod health;
pub mod me;
pub mod policies;
pub mod recoveries;
pub mod schedules;
pub mod settings;
pub mod signup;
pub mod users;

use safehold_domain::TenantId;

use crate::error::ApiError;
use crate::state::AppState;

/// The tenant's settings, which every rule about passwords and sessions needs.
pub(crate) async fn tenant_settings(
    state: &AppState,
    tenant: TenantId,
) -> Result<safehold_domain::settings::TenantSettings, ApiError> {
    Ok(state
        .commands
        .load_tenant(tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?
        .settings)
}
