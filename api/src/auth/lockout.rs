//! Sign-in throttling: after five consecutive failures for a username the
//! account is locked for 30 s, doubling with each further failure up to 15 min.

use chrono::{DateTime, Duration, Utc};
use safehold_domain::TenantId;
use sqlx::PgPool;

use crate::error::ApiError;

const FREE_FAILURES: i32 = 5;
const MAX_LOCK_SECS: i64 = 15 * 60;

pub fn lock_duration(failures: i32) -> Option<Duration> {
    if failures < FREE_FAILURES {
        return None;
    }
    let doublings = (failures - FREE_FAILURES).min(10) as u32;
    Some(Duration::seconds((30i64 << doublings).min(MAX_LOCK_SECS)))
}

/// Seconds until the username may try again, if it is locked.
pub async fn locked_for(
    pool: &PgPool,
    tenant: TenantId,
    username: &str,
) -> Result<Option<i64>, ApiError> {
    let until: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "SELECT locked_until FROM login_attempts WHERE tenant_id = $1 AND username = $2",
    )
    .bind(tenant.0)
    .bind(username.to_lowercase())
    .fetch_optional(pool)
    .await?;
    let now = Utc::now();
    Ok(until
        .flatten()
        .filter(|t| *t > now)
        .map(|t| (t - now).num_seconds().max(1)))
}

/// Counts a failure; returns the lock it caused, if any.
pub async fn record_failure(
    pool: &PgPool,
    tenant: TenantId,
    username: &str,
) -> Result<Option<Duration>, ApiError> {
    let failures: i32 = sqlx::query_scalar(
        "INSERT INTO login_attempts (tenant_id, username, failures) VALUES ($1, $2, 1)
         ON CONFLICT (tenant_id, username) DO UPDATE SET failures = login_attempts.failures + 1
         RETURNING failures",
    )
    .bind(tenant.0)
    .bind(username.to_lowercase())
    .fetch_one(pool)
    .await?;
    let lock = lock_duration(failures);
    if let Some(lock) = lock {
        sqlx::query(
            "UPDATE login_attempts SET locked_until = now() + make_interval(secs => $3)
              WHERE tenant_id = $1 AND username = $2",
        )
        .bind(tenant.0)
        .bind(username.to_lowercase())
        .bind(lock.num_seconds() as f64)
        .execute(pool)
        .await?;
    }
    Ok(lock)
}

pub async fn record_success(
    pool: &PgPool,
    tenant: TenantId,
    username: &str,
) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM login_attempts WHERE tenant_id = $1 AND username = $2")
        .bind(tenant.0)
        .bind(username.to_lowercase())
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_start_after_five_failures_and_double_up_to_fifteen_minutes() {
        assert_eq!(lock_duration(4), None);
        assert_eq!(lock_duration(5), Some(Duration::seconds(30)));
        assert_eq!(lock_duration(6), Some(Duration::seconds(60)));
        assert_eq!(lock_duration(40), Some(Duration::seconds(MAX_LOCK_SECS)));
    }
}
