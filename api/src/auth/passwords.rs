//! Password hashes (argon2id) and their history, kept outside the event log.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use safehold_domain::{TenantId, UserId};
use sqlx::PgPool;

use crate::error::ApiError;

/// Hashing is CPU-bound; keep it off the async workers.
pub async fn hash(password: &str) -> Result<String, ApiError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)
}

pub async fn verify(hash: &str, password: &str) -> bool {
    let (hash, password) = (hash.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Burns the same time as a real check, so unknown usernames cannot be told
/// apart from wrong passwords by timing.
pub async fn verify_dummy(password: &str) {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    if let Ok(hash) = DUMMY
        .get_or_try_init(|| hash("unused dummy password"))
        .await
    {
        let _ = verify(hash, password).await;
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Credential {
    pub hash: String,
    pub history: Vec<String>,
    pub changed_at: DateTime<Utc>,
    pub must_change: bool,
}

pub async fn load(
    pool: &PgPool,
    tenant: TenantId,
    user: UserId,
) -> Result<Option<Credential>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT hash, history, changed_at, must_change FROM password_credentials
          WHERE tenant_id = $1 AND user_id = $2",
    )
    .bind(tenant.0)
    .bind(user.0)
    .fetch_optional(pool)
    .await?)
}

/// True when `candidate` matches the current password or one of the
/// `keep - 1` before it.
pub async fn reused(current: &Credential, candidate: &str, keep: u32) -> bool {
    let earlier = current.history.iter().take(keep.saturating_sub(1) as usize);
    for hash in std::iter::once(&current.hash).chain(earlier) {
        if verify(hash, candidate).await {
            return true;
        }
    }
    false
}

/// Stores a new hash, moving the current one into the history (at most ten
/// kept, the policy's maximum).
pub async fn store(
    pool: &PgPool,
    tenant: TenantId,
    user: UserId,
    hash: &str,
    must_change: bool,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO password_credentials (tenant_id, user_id, hash, history, changed_at, must_change)
         VALUES ($1, $2, $3, '{}', now(), $4)
         ON CONFLICT (tenant_id, user_id) DO UPDATE
            SET history = (ARRAY[password_credentials.hash] || password_credentials.history)[1:10],
                hash = EXCLUDED.hash, changed_at = now(), must_change = EXCLUDED.must_change",
    )
    .bind(tenant.0)
    .bind(user.0)
    .bind(hash)
    .bind(must_change)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn delete(pool: &PgPool, tenant: TenantId, user: UserId) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM password_credentials WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant.0)
        .bind(user.0)
        .execute(pool)
        .await?;
    Ok(())
}

/// Checks a new password against the tenant's policy and, when the user
/// already has one, against its history. Errors name each broken rule.
pub async fn accept(
    policy: &safehold_domain::settings::PasswordPolicy,
    field: &str,
    password: &str,
    user_inputs: &[&str],
    current: Option<&Credential>,
) -> Result<(), ApiError> {
    let mut errors: Vec<crate::error::FieldProblem> =
        safehold_domain::password::check_password(policy, password, user_inputs)
            .into_iter()
            .map(|v| crate::error::FieldProblem {
                field: field.into(),
                code: v.rule.into(),
                detail: v.detail,
            })
            .collect();
    if errors.is_empty() && policy.expiry_enabled {
        if let Some(current) = current {
            if reused(current, password, policy.history).await {
                errors.push(crate::error::FieldProblem {
                    field: field.into(),
                    code: "reused".into(),
                    detail: format!("must differ from the last {} passwords", policy.history),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// Whether a password set at `changed_at` has expired under the policy.
pub fn expired(
    policy: &safehold_domain::settings::PasswordPolicy,
    changed_at: DateTime<Utc>,
) -> bool {
    policy.expiry_enabled
        && changed_at + chrono::Duration::days(policy.expiry_days as i64) < Utc::now()
}
