//! The recovery monitor: every recovery with where it went, what it created,
//! its log, and per policy the time of its last recovery (for drills).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use safehold_domain::recovery::{Recovery, RecoveryEvent, RecoveryStatus};
use safehold_domain::TenantId;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{Projection, StoredEvent};

pub struct RecoveriesProjection;

#[async_trait]
impl Projection for RecoveriesProjection {
    fn name(&self) -> &'static str {
        "recoveries"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["recoveries", "recovery_resources", "recovery_log"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if event.aggregate_type != Recovery::TYPE {
            return Ok(());
        }
        let tenant = event.metadata.tenant_id.0;
        let id = event
            .entity_id()
            .ok_or_else(|| anyhow::anyhow!("bad recovery stream id {}", event.aggregate_id))?;
        let at = event.metadata.occurred_at;
        let decoded: RecoveryEvent = event.decode()?;
        sqlx::query(
            "INSERT INTO recovery_log (tenant_id, recovery_id, position, occurred_at, message)
             VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(id)
        .bind(event.position)
        .bind(at)
        .bind(decoded.describe())
        .execute(&mut *tx)
        .await?;
        match decoded {
            RecoveryEvent::RecoveryRequested {
                backup_id,
                policy_id,
                source,
                target,
                plan,
                one_off_credentials,
                at: requested_at,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO recoveries (tenant_id, recovery_id, backup_id, policy_id, kind, what,
                        source_account_id, source_region, target_account_id, target_region,
                        one_off_credentials, status, requested_by, delegate_id, requested_at)
                     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,'in_progress',$12,$13,$14)
                     ON CONFLICT DO NOTHING",
                )
                .bind(tenant)
                .bind(id)
                .bind(backup_id)
                .bind(policy_id)
                .bind(plan.kind())
                .bind(plan.what())
                .bind(source.account_id)
                .bind(&source.region)
                .bind(target.account_id)
                .bind(&target.region)
                .bind(one_off_credentials)
                .bind(event.metadata.user_id.map(|u| u.0))
                .bind(event.metadata.delegate_id.map(|u| u.0))
                .bind(requested_at)
                .execute(&mut *tx)
                .await?;
            }
            RecoveryEvent::ResourcesCreated { created } => {
                for resource in created {
                    sqlx::query(
                        "INSERT INTO recovery_resources (tenant_id, recovery_id, kind, resource_id, position)
                         VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING",
                    )
                    .bind(tenant)
                    .bind(id)
                    .bind(&resource.kind)
                    .bind(&resource.id)
                    .bind(event.position)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            RecoveryEvent::RecoveryNoted { .. } => {}
            RecoveryEvent::RecoveryFinished { status, message } => {
                sqlx::query(
                    "UPDATE recoveries SET status = $3, message = $4, finished_at = $5
                     WHERE tenant_id = $1 AND recovery_id = $2",
                )
                .bind(tenant)
                .bind(id)
                .bind(status.as_str())
                .bind(message)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecoveryRow {
    pub recovery_id: Uuid,
    pub backup_id: Uuid,
    pub policy_id: Uuid,
    pub kind: String,
    pub what: String,
    pub source_account_id: Uuid,
    pub source_region: String,
    pub target_account_id: Uuid,
    pub target_region: String,
    pub one_off_credentials: bool,
    pub status: String,
    pub message: Option<String>,
    pub requested_by: Option<Uuid>,
    pub delegate_id: Option<Uuid>,
    pub requested_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The owner of the backup's policy (whose users may see it).
    pub owner_id: Option<Uuid>,
}

impl RecoveryRow {
    pub fn status(&self) -> RecoveryStatus {
        RecoveryStatus::parse(&self.status).unwrap_or(RecoveryStatus::InProgress)
    }
}

const SELECT: &str = "SELECT r.recovery_id, r.backup_id, r.policy_id, r.kind, r.what,
        r.source_account_id, r.source_region, r.target_account_id, r.target_region,
        r.one_off_credentials, r.status, r.message, r.requested_by, r.delegate_id,
        r.requested_at, r.finished_at, p.owner_id
    FROM recoveries r
    LEFT JOIN policies p ON p.tenant_id = r.tenant_id AND p.policy_id = r.policy_id";

pub async fn find(pool: &PgPool, tenant: TenantId, id: Uuid) -> sqlx::Result<Option<RecoveryRow>> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE r.tenant_id = $1 AND r.recovery_id = $2"
    ))
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Default, Clone)]
pub struct RecoveryFilter {
    pub owners: Vec<Uuid>,
    pub backup_id: Option<Uuid>,
    pub policy_id: Option<Uuid>,
    pub status: Option<String>,
    /// Keyset: strictly older than this (time, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Newest first, among recoveries of policies owned by `owners`.
pub async fn list(
    pool: &PgPool,
    tenant: TenantId,
    filter: &RecoveryFilter,
) -> sqlx::Result<Vec<RecoveryRow>> {
    let (before_at, before_id) = filter.before.unzip();
    sqlx::query_as(&format!(
        "{SELECT} WHERE r.tenant_id = $1 AND p.owner_id = ANY($2)
           AND ($3::uuid IS NULL OR r.backup_id = $3)
           AND ($4::uuid IS NULL OR r.policy_id = $4)
           AND ($5::text IS NULL OR r.status = $5)
           AND ($6::timestamptz IS NULL OR (r.requested_at, r.recovery_id) < ($6, $7))
         ORDER BY r.requested_at DESC, r.recovery_id DESC
         LIMIT $8"
    ))
    .bind(tenant.0)
    .bind(&filter.owners)
    .bind(filter.backup_id)
    .bind(filter.policy_id)
    .bind(&filter.status)
    .bind(before_at)
    .bind(before_id)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResourceRow {
    pub kind: String,
    pub resource_id: String,
}

pub async fn resources_of(
    pool: &PgPool,
    tenant: TenantId,
    id: Uuid,
) -> sqlx::Result<Vec<ResourceRow>> {
    sqlx::query_as(
        "SELECT kind, resource_id FROM recovery_resources
         WHERE tenant_id = $1 AND recovery_id = $2 ORDER BY position, kind, resource_id",
    )
    .bind(tenant.0)
    .bind(id)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogRow {
    pub occurred_at: DateTime<Utc>,
    pub message: String,
}

pub async fn log_of(pool: &PgPool, tenant: TenantId, id: Uuid) -> sqlx::Result<Vec<LogRow>> {
    sqlx::query_as(
        "SELECT occurred_at, message FROM recovery_log
         WHERE tenant_id = $1 AND recovery_id = $2 ORDER BY position",
    )
    .bind(tenant.0)
    .bind(id)
    .fetch_all(pool)
    .await
}

/// When a recovery from one of the policy's backups was last requested.
pub async fn last_recovery_of(
    pool: &PgPool,
    tenant: TenantId,
    policy: Uuid,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT max(requested_at) FROM recoveries WHERE tenant_id = $1 AND policy_id = $2",
    )
    .bind(tenant.0)
    .bind(policy)
    .fetch_one(pool)
    .await
}
