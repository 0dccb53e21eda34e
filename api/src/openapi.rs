//! The OpenAPI 3.1 document, generated from the handlers and types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    accounts, audit, auth, backups, health, me, policies, recoveries, schedules, settings, signup,
    users,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "An access token from POST /v1/auth/login, or an API key (shk_…)",
                        ))
                        .build(),
                ),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Safehold API",
        description = "Backup and disaster recovery for AWS workloads. Errors are RFC 9457 problem documents (application/problem+json) with a stable `code`.",
        version = "1.0.0"
    ),
    paths(
        health::healthz, health::readyz, health::metrics,
        signup::signup,
        auth::login, auth::refresh, auth::logout,
        me::me, me::change_password, me::create_api_key, me::list_api_keys, me::revoke_api_key,
        users::create_user, users::list_users, users::get_user, users::update_user,
        users::set_permissions, users::reset_password, users::delete_user,
        settings::get_settings, settings::put_settings,
        audit::list_audit,
        accounts::register_account, accounts::list_accounts, accounts::get_account,
        accounts::update_account, accounts::rotate_keys, accounts::remove_account,
        accounts::discover, accounts::list_resources, accounts::permission_check,
        schedules::create_schedule, schedules::list_schedules, schedules::get_schedule,
        schedules::upcoming_runs, schedules::update_schedule, schedules::delete_schedule,
        policies::create_policy, policies::list_policies, policies::get_policy,
        policies::update_policy, policies::delete_policy, policies::put_target,
        policies::remove_target, policies::attach_schedule, policies::detach_schedule,
        policies::run_policy,
        backups::list_backups, backups::get_backup, backups::freeze_backup, backups::list_freezer,
        recoveries::recovery_panel, recoveries::start_recovery, recoveries::list_recoveries,
        recoveries::get_recovery,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "organisation", description = "Sign-up and general settings"),
        (name = "authentication", description = "Sessions and tokens"),
        (name = "me", description = "The signed-in user's own password and API keys"),
        (name = "users", description = "Root, independent, managed and delegate users"),
        (name = "audit", description = "Who did what, and when"),
        (name = "accounts", description = "AWS accounts, how they are reached, and their resources"),
        (name = "schedules", description = "When policies run, in the organisation's time zone"),
        (name = "policies", description = "What is backed up, how often and how long it is kept"),
        (name = "backups", description = "The backup monitor, each backup's snapshots and log, and the freezer"),
        (name = "recoveries", description = "Recovering from backups and DR copies, and the recovery monitor"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

/// The document as committed in `openapi/openapi.json`.
pub fn document_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}
