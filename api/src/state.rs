use safehold_cloud::resolve::Cloud;
use sqlx::PgPool;

use crate::commands::Commands;
use crate::config::Config;

/// Shared by every handler.
pub struct AppState {
    pub pool: PgPool,
    pub config: Config,
    pub commands: Commands,
    pub cloud: Cloud,
}

impl AppState {
    pub fn new(pool: PgPool, config: Config) -> Self {
        let cloud = Cloud::new(
            pool.clone(),
            config.aws_endpoint.clone(),
            config.keyring.clone(),
        );
        Self {
            commands: Commands::new(pool.clone()),
            pool,
            config,
            cloud,
        }
    }
}
