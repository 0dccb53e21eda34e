//! The audit log: one row per recorded event, saying who did what and when.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use safehold_domain::account::{Account, AccountEvent};
use safehold_domain::backup::{Backup, BackupEvent};
use safehold_domain::policy::{Policy, PolicyEvent};
use safehold_domain::recovery::{Recovery, RecoveryEvent};
use safehold_domain::schedule::{Schedule, ScheduleEvent};
use safehold_domain::tenant::{Tenant, TenantEvent};
use safehold_domain::user::{User, UserEvent};
use safehold_domain::TenantId;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{Projection, StoredEvent};

pub struct AuditProjection;

async fn name_of(
    tx: &mut PgConnection,
    tenant: Uuid,
    entity: Option<Uuid>,
) -> anyhow::Result<Option<String>> {
    let Some(entity) = entity else {
        return Ok(None);
    };
    Ok(
        sqlx::query_scalar("SELECT name FROM audit_names WHERE tenant_id = $1 AND entity_id = $2")
            .bind(tenant)
            .bind(entity)
            .fetch_optional(&mut *tx)
            .await?,
    )
}

async fn remember_name(
    tx: &mut PgConnection,
    tenant: Uuid,
    entity: Option<Uuid>,
    name: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO audit_names (tenant_id, entity_id, name) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, entity_id) DO UPDATE SET name = EXCLUDED.name",
    )
    .bind(tenant)
    .bind(entity)
    .bind(name)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_log", "audit_names"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let tenant = event.metadata.tenant_id.0;
        let description = if event.aggregate_type == User::TYPE {
            let decoded: UserEvent = event.decode()?;
            let subject = event.entity_id();
            if let UserEvent::UserCreated { username, .. } = &decoded {
                remember_name(tx, tenant, subject, username).await?;
            }
            let name = name_of(tx, tenant, subject).await?.unwrap_or_default();
            decoded.describe(&name)
        } else if event.aggregate_type == Account::TYPE {
            let decoded: AccountEvent = event.decode()?;
            let subject = event.entity_id();
            match &decoded {
                AccountEvent::AccountRegistered { name, .. }
                | AccountEvent::AccountUpdated { name, .. } => {
                    remember_name(tx, tenant, subject, name).await?;
                }
                _ => {}
            }
            let name = name_of(tx, tenant, subject).await?.unwrap_or_default();
            decoded.describe(&name)
        } else if event.aggregate_type == Policy::TYPE {
            let decoded: PolicyEvent = event.decode()?;
            let subject = event.entity_id();
            match &decoded {
                PolicyEvent::PolicyCreated { name, .. }
                | PolicyEvent::PolicyUpdated { name, .. } => {
                    remember_name(tx, tenant, subject, name).await?;
                }
                _ => {}
            }
            let name = name_of(tx, tenant, subject).await?.unwrap_or_default();
            decoded.describe(&name)
        } else if event.aggregate_type == Schedule::TYPE {
            let decoded: ScheduleEvent = event.decode()?;
            let subject = event.entity_id();
            match &decoded {
                ScheduleEvent::ScheduleCreated { name, .. }
                | ScheduleEvent::ScheduleUpdated { name, .. } => {
                    remember_name(tx, tenant, subject, name).await?;
                }
                _ => {}
            }
            let name = name_of(tx, tenant, subject).await?.unwrap_or_default();
            decoded.describe(&name)
        } else if event.aggregate_type == Tenant::TYPE {
            event.decode::<TenantEvent>()?.describe()
        } else if event.aggregate_type == Backup::TYPE {
            event.decode::<BackupEvent>()?.describe()
        } else if event.aggregate_type == Recovery::TYPE {
            event.decode::<RecoveryEvent>()?.describe()
        } else {
            format!("{} on {}", event.event_type, event.aggregate_type)
        };
        let user_id = event.metadata.user_id.map(|u| u.0);
        let delegate_id = event.metadata.delegate_id.map(|u| u.0);
        // The user's and delegate's names are looked up in the insert itself:
        // one round trip per event instead of three.
        sqlx::query(
            "INSERT INTO audit_log (tenant_id, position, occurred_at, event_type, aggregate_type,
                    aggregate_id, description, user_id, username, delegate_id, delegate_username,
                    request_id)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,
                     (SELECT name FROM audit_names WHERE tenant_id = $1 AND entity_id = $8),
                     $9,
                     (SELECT name FROM audit_names WHERE tenant_id = $1 AND entity_id = $9),
                     $10)",
        )
        .bind(tenant)
        .bind(event.position)
        .bind(event.metadata.occurred_at)
        .bind(&event.event_type)
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(description)
        .bind(user_id)
        .bind(delegate_id)
        .bind(&event.metadata.request_id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    pub event_type: String,
    pub aggregate_type: String,
    pub description: String,
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub delegate_id: Option<Uuid>,
    pub delegate_username: Option<String>,
    pub request_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Rows where this user acted, directly or as the delegate.
    pub user_id: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Newest first: rows with a position below this one.
    pub before_position: Option<i64>,
}

/// Newest first.
pub async fn list(
    pool: &PgPool,
    tenant: TenantId,
    filter: &AuditFilter,
    limit: i64,
) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as(
        "SELECT position, occurred_at, event_type, aggregate_type, description, user_id, username,
                delegate_id, delegate_username, request_id
           FROM audit_log
          WHERE tenant_id = $1
            AND ($2::uuid IS NULL OR user_id = $2 OR delegate_id = $2)
            AND ($3::timestamptz IS NULL OR occurred_at >= $3)
            AND ($4::timestamptz IS NULL OR occurred_at < $4)
            AND ($5::bigint IS NULL OR position < $5)
          ORDER BY position DESC
          LIMIT $6",
    )
    .bind(tenant.0)
    .bind(filter.user_id)
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.before_position)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Drops rows older than each tenant's audit retention. Returns rows removed.
pub async fn purge_expired(pool: &PgPool) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM audit_log a USING tenants t
          WHERE a.tenant_id = t.tenant_id
            AND a.occurred_at < now() - make_interval(days => t.audit_retention_days)",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
