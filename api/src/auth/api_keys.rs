//! API keys for machine clients: `shk_<key id>_<secret>`. Only a SHA-256 of
//! the secret is stored; the full key is shown once, at creation.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use safehold_domain::{TenantId, UserId};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;

pub const PREFIX: &str = "shk_";

pub struct NewKey {
    pub key_id: Uuid,
    /// The full key, returned to the client once.
    pub token: String,
    /// Enough of the key to recognise it in lists.
    pub display_prefix: String,
    hash: Vec<u8>,
}

pub fn generate() -> NewKey {
    let key_id = Uuid::new_v4();
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let token = format!("{PREFIX}{}_{secret}", key_id.simple());
    NewKey {
        key_id,
        display_prefix: token[..12].to_string(),
        hash: Sha256::digest(secret.as_bytes()).to_vec(),
        token,
    }
}

fn split(token: &str) -> Option<(Uuid, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    Some((Uuid::parse_str(id).ok()?, secret))
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn store(
    pool: &PgPool,
    tenant: TenantId,
    user: UserId,
    key: &NewKey,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO api_key_secrets (tenant_id, key_id, user_id, hash) VALUES ($1, $2, $3, $4)",
    )
    .bind(tenant.0)
    .bind(key.key_id)
    .bind(user.0)
    .bind(&key.hash)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn delete(
    pool: &PgPool,
    tenant: TenantId,
    user: UserId,
    key_id: Uuid,
) -> Result<(), ApiError> {
    sqlx::query(
        "DELETE FROM api_key_secrets WHERE tenant_id = $1 AND user_id = $2 AND key_id = $3",
    )
    .bind(tenant.0)
    .bind(user.0)
    .bind(key_id)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn delete_all(pool: &PgPool, tenant: TenantId, user: UserId) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM api_key_secrets WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant.0)
        .bind(user.0)
        .execute(pool)
        .await?;
    Ok(())
}

/// The (tenant, user) a key belongs to, if the key is valid.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<(Uuid, Uuid)>, ApiError> {
    let Some((key_id, secret)) = split(token) else {
        return Ok(None);
    };
    let row: Option<(Uuid, Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT tenant_id, user_id, hash FROM api_key_secrets WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(pool)
            .await?;
    let presented = Sha256::digest(secret.as_bytes());
    Ok(row
        .filter(|(_, _, hash)| same(hash, &presented))
        .map(|(tenant, user, _)| (tenant, user)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_hash_their_secret() {
        let key = generate();
        let (id, secret) = split(&key.token).expect("well-formed");
        assert_eq!(id, key.key_id);
        assert!(same(&key.hash, &Sha256::digest(secret.as_bytes())));
        assert!(key.token.starts_with(&key.display_prefix));
        assert!(split("shk_nonsense").is_none());
    }
}
