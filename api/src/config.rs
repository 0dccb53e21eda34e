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
    /// AWS endpoint override (the emulator); `None` for real AWS.
    pub aws_endpoint: safehold_cloud::access::Endpoint,
    /// Master keys for secrets at rest.
    pub keyring: safehold_cloud::secrets::Keyring,
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
    /// (random per process when unset), `SAFEHOLD_ACCESS_TOKEN_MINUTES`
    /// (default 15) and `SAFEHOLD_AWS_ENDPOINT`; the keyring comes from the caller.
    pub fn from_env(
        database_url: String,
        keyring: safehold_cloud::secrets::Keyring,
    ) -> anyhow::Result<Self> {
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
        let aws_endpoint =
            safehold_cloud::access::Endpoint(std::env::var("SAFEHOLD_AWS_ENDPOINT").ok());
        Ok(Self {
            database_url,
            bind,
            jwt_secret,
            access_token_minutes,
            aws_endpoint,
            keyring,
        })
    }

    /// A configuration for tests and tools: random port, secret and master
    /// key, AWS at `aws_endpoint`.
    pub fn ephemeral(database_url: String, aws_endpoint: Option<String>) -> Self {
        Self {
            database_url,
            bind: "127.0.0.1:0".parse().expect("valid address"),
            jwt_secret: random_secret(),
            access_token_minutes: 15,
            aws_endpoint: safehold_cloud::access::Endpoint(aws_endpoint),
            keyring: safehold_cloud::secrets::Keyring::generate("test"),
        }
    }
}

fn random_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    secret
}
