//! Server-side sessions: an access token is only honoured while its session
//! is neither revoked nor idle longer than the tenant allows.

use safehold_domain::{TenantId, UserId};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;

pub async fn create(
    pool: &PgPool,
    tenant: TenantId,
    user: UserId,
    idle_minutes: u32,
    must_change_password: bool,
) -> Result<Uuid, ApiError> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO sessions (tenant_id, session_id, user_id, created_at, last_seen_at,
                idle_minutes, must_change_password)
         VALUES ($1, $2, $3, now(), now(), $4, $5)",
    )
    .bind(tenant.0)
    .bind(id)
    .bind(user.0)
    .bind(idle_minutes as i32)
    .bind(must_change_password)
    .execute(pool)
    .await?;
    Ok(id)
}

pub struct LiveSession {
    pub user_id: Uuid,
    pub must_change_password: bool,
}

/// Returns the session if it is still alive, recording the use. The write
/// happens at most once a minute per session: idle limits are minutes long,
/// and a write per request would cost a disk flush each.
pub async fn touch(
    pool: &PgPool,
    tenant: Uuid,
    session: Uuid,
    user: Uuid,
) -> Result<Option<LiveSession>, ApiError> {
    let row: Option<(Uuid, bool, bool)> = sqlx::query_as(
        "SELECT user_id, must_change_password, last_seen_at < now() - interval '1 minute'
           FROM sessions
          WHERE tenant_id = $1 AND session_id = $2 AND user_id = $3 AND revoked_at IS NULL
            AND last_seen_at > now() - make_interval(mins => idle_minutes)",
    )
    .bind(tenant)
    .bind(session)
    .bind(user)
    .fetch_optional(pool)
    .await?;
    let Some((user_id, must_change_password, stale)) = row else {
        return Ok(None);
    };
    if stale {
        sqlx::query(
            "UPDATE sessions SET last_seen_at = now() WHERE tenant_id = $1 AND session_id = $2",
        )
        .bind(tenant)
        .bind(session)
        .execute(pool)
        .await?;
    }
    Ok(Some(LiveSession {
        user_id,
        must_change_password,
    }))
}

pub async fn revoke(pool: &PgPool, tenant: TenantId, session: Uuid) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE sessions SET revoked_at = now()
          WHERE tenant_id = $1 AND session_id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant.0)
    .bind(session)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends every session of a user (password reset by root, deletion).
pub async fn revoke_all(pool: &PgPool, tenant: TenantId, user: UserId) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE sessions SET revoked_at = now()
          WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant.0)
    .bind(user.0)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn clear_password_change(
    pool: &PgPool,
    tenant: TenantId,
    user: UserId,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE sessions SET must_change_password = false WHERE tenant_id = $1 AND user_id = $2",
    )
    .bind(tenant.0)
    .bind(user.0)
    .execute(pool)
    .await?;
    Ok(())
}
