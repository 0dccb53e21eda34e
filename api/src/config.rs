//! Server configuration from the environment.

use std::net::SocketAddr;

use rand::RngCore;

#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub bind: SocketAddr,
    /// Key for signing access tokens (HS256). Every process of one deployment
    /// must share it.
    pub jwt_secret: Vec<u8>,
    pub access_token_minutes: i64,
}

impl std::fmt::Debug for Config {
    // Never print secrets: the database URL may carry a password too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("bind", &self.bind)
            .field("access_token_minutes", &self.access_token_minutes)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads `SAFEHOLD_BIND` (default 127.0.0.1:8080), `SAFEHOLD_JWT_SECRET`
    /// (random per process when unset) and `SAFEHOLD_ACCESS_TOKEN_MINUTES`
    /// (default 15).
    pub fn from_env(database_url: String) -> anyhow::Result<Self> {
        let bind = std::env::var("SAFEHOLD_BIND")
            .unwrap_or_else(|_| "127.0.0.1:8080".into())
            .parse()
            .map_err(|e| anyhow::anyhow!("SAFEHOLD_BIND: {e}"))?;
        let jwt_secret = match std::env::var("SAFEHOLD_JWT_SECRET") {
            Ok(s) if s.len() >= 32 => s.into_bytes(),
            Ok(_) => anyhow::bail!("SAFEHOLD_JWT_SECRET must be at least 32 characters"),
            Err(_) => {
                tracing::warn!("SAFEHOLD_JWT_SECRET is not set: tokens will not survive a restart");
                random_secret()
            }
        };
        let access_token_minutes = match std::env::var("SAFEHOLD_ACCESS_TOKEN_MINUTES") {
            Ok(v) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("SAFEHOLD_ACCESS_TOKEN_MINUTES: {e}"))?,
            Err(_) => 15,
        };
        Ok(Self {
            database_url,
            bind,
            jwt_secret,
            access_token_minutes,
        })
    }

    /// A configuration for tests and tools: random port and secret.
    pub fn ephemeral(database_url: String) -> Self {
        Self {
            database_url,
            bind: "127.0.0.1:0".parse().expect("valid address"),
            jwt_secret: random_secret(),
            access_token_minutes: 15,
        }
    }
}

fn random_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    secret
}
