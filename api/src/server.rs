//! Builds and runs the HTTP server.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::body;
use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::routes::{
    accounts, audit, auth, backups, health, me, policies, recoveries, schedules, settings, signup,
    users,
};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PathConfig::default().error_handler(body::path_error))
        .app_data(web::QueryConfig::default().error_handler(body::query_error))
        .app_data(body::payload_config())
        .service(health::healthz)
        .service(health::readyz)
        .service(health::metrics)
        .service(signup::signup)
        .service(auth::login)
        .service(auth::refresh)
        .service(auth::logout)
        .service(me::me)
        .service(me::change_password)
        .service(me::create_api_key)
        .service(me::list_api_keys)
        .service(me::revoke_api_key)
        .service(users::create_user)
        .service(users::list_users)
        .service(users::get_user)
        .service(users::update_user)
        .service(users::set_permissions)
        .service(users::reset_password)
        .service(users::delete_user)
        .service(settings::get_settings)
        .service(settings::put_settings)
        .service(audit::list_audit)
        .service(accounts::register_account)
        .service(accounts::list_accounts)
        .service(accounts::get_account)
        .service(accounts::update_account)
        .service(accounts::rotate_keys)
        .service(accounts::remove_account)
        .service(accounts::discover)
        .service(accounts::list_resources)
        .service(accounts::permission_check)
        .service(schedules::create_schedule)
        .service(schedules::list_schedules)
        .service(schedules::get_schedule)
        .service(schedules::upcoming_runs)
        .service(schedules::update_schedule)
        .service(schedules::delete_schedule)
        .service(policies::create_policy)
        .service(policies::list_policies)
        .service(policies::get_policy)
        .service(policies::update_policy)
        .service(policies::delete_policy)
        .service(policies::put_target)
        .service(policies::remove_target)
        .service(policies::attach_schedule)
        .service(policies::detach_schedule)
        .service(policies::run_policy)
        .service(backups::list_backups)
        .service(backups::get_backup)
        .service(backups::freeze_backup)
        .service(backups::list_freezer)
        .service(recoveries::recovery_panel)
        .service(recoveries::start_recovery)
        .service(recoveries::list_recoveries)
        .service(recoveries::get_recovery)
        .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi()));
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found("resource"))
}

/// Starts serving on `listener`; the returned server runs until stopped.
pub fn serve(state: web::Data<AppState>, listener: TcpListener) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(middleware::from_fn(crate::middleware::observe))
            .configure(configure)
            .default_service(web::to(not_found))
    })
    .listen(listener)?
    .shutdown_timeout(10)
    .run();
    Ok(server)
}
