//! Safehold's HTTP API: actix-web routes, authentication, authorisation and
//! problem+json errors. Handlers stay thin: rules live in `safehold-domain`,
//! reads in `safehold-projections`.

mod append_queue;
pub mod auth;
pub mod body;
pub mod commands;
pub mod config;
pub mod error;
pub mod middleware;
pub mod openapi;
pub mod pagination;
pub mod routes;
pub mod server;
pub mod state;

pub use config::Config;
pub use state::AppState;
