use sqlx::PgPool;

use crate::commands::Commands;
use crate::config::Config;

/// Shared by every handler.
pub struct AppState {
    pub pool: PgPool,
    pub config: Config,
    pub commands: Commands,
}

impl AppState {
    pub fn new(pool: PgPool, config: Config) -> Self {
        Self {
            commands: Commands::new(pool.clone()),
            pool,
            config,
        }
    }
}
