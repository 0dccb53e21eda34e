//! The audit log: one row per recorded event, saying who did what and when.

use std::collections::{HashMap, HashSet};

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

/// A name as the audit log knows it: (tenant, entity) → name.
type Names = HashMap<(Uuid, Uuid), String>;

/// The entities whose names a batch's rows may show: each event's user,
/// delegate and, for the aggregates that have names, the subject.
fn named_entities(events: &[StoredEvent]) -> HashSet<(Uuid, Uuid)> {
    let mut keys = HashSet::new();
    for event in events {
        let tenant = event.metadata.tenant_id.0;
        let subject = has_name(&event.aggregate_type)
            .then(|| event.entity_id())
            .flatten();
        let ids = [
            subject,
            event.metadata.user_id.map(|u| u.0),
            event.metadata.delegate_id.map(|u| u.0),
        ];
        keys.extend(ids.into_iter().flatten().map(|id| (tenant, id)));
    }
    keys
}

fn has_name(aggregate_type: &str) -> bool {
    [User::TYPE, Account::TYPE, Policy::TYPE, Schedule::TYPE].contains(&aggregate_type)
}

async fn load_names(tx: &mut PgConnection, keys: HashSet<(Uuid, Uuid)>) -> anyhow::Result<Names> {
    if keys.is_empty() {
        return Ok(Names::new());
    }
    let (tenants, entities): (Vec<Uuid>, Vec<Uuid>) = keys.into_iter().unzip();
    let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT tenant_id, entity_id, n.name
           FROM unnest($1::uuid[], $2::uuid[]) AS k (tenant_id, entity_id)
           JOIN audit_names n USING (tenant_id, entity_id)",
    )
    .bind(tenants)
    .bind(entities)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, entity, name)| ((tenant, entity), name))
        .collect())
}

/// The names a batch gives or changes, as of its end.
async fn save_names(tx: &mut PgConnection, renamed: Names) -> anyhow::Result<()> {
    if renamed.is_empty() {
        return Ok(());
    }
    let mut columns: (Vec<Uuid>, Vec<Uuid>, Vec<String>) = Default::default();
    for ((tenant, entity), name) in renamed {
        columns.0.push(tenant);
        columns.1.push(entity);
        columns.2.push(name);
    }
    sqlx::query(
        "INSERT INTO audit_names (tenant_id, entity_id, name)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[])
         ON CONFLICT (tenant_id, entity_id) DO UPDATE SET name = EXCLUDED.name",
    )
    .bind(columns.0)
    .bind(columns.1)
    .bind(columns.2)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The names known while a batch is described, event by event.
struct NameBook {
    names: Names,
    renamed: Names,
}

impl NameBook {
    fn get(&self, tenant: Uuid, entity: Option<Uuid>) -> Option<String> {
        entity.and_then(|id| self.names.get(&(tenant, id)).cloned())
    }

    fn set(&mut self, tenant: Uuid, entity: Option<Uuid>, name: &str) {
        if let Some(id) = entity {
            self.names.insert((tenant, id), name.to_string());
            self.renamed.insert((tenant, id), name.to_string());
        }
    }

    /// What the audit log says an event did, naming its subject as known
    /// once the event is applied.
    fn describe(&mut self, event: &StoredEvent) -> anyhow::Result<String> {
        let tenant = event.metadata.tenant_id.0;
        let subject = event.entity_id();
        Ok(if event.aggregate_type == User::TYPE {
            let decoded: UserEvent = event.decode()?;
            if let UserEvent::UserCreated { username, .. } = &decoded {
                self.set(tenant, subject, username);
            }
            decoded.describe(&self.get(tenant, subject).unwrap_or_default())
        } else if event.aggregate_type == Account::TYPE {
            let decoded: AccountEvent = event.decode()?;
            if let AccountEvent::AccountRegistered { name, .. }
            | AccountEvent::AccountUpdated { name, .. } = &decoded
            {
                self.set(tenant, subject, name);
            }
            decoded.describe(&self.get(tenant, subject).unwrap_or_default())
        } else if event.aggregate_type == Policy::TYPE {
            let decoded: PolicyEvent = event.decode()?;
            if let PolicyEvent::PolicyCreated { name, .. }
            | PolicyEvent::PolicyUpdated { name, .. } = &decoded
            {
                self.set(tenant, subject, name);
            }
            decoded.describe(&self.get(tenant, subject).unwrap_or_default())
        } else if event.aggregate_type == Schedule::TYPE {
            let decoded: ScheduleEvent = event.decode()?;
            if let ScheduleEvent::ScheduleCreated { name, .. }
            | ScheduleEvent::ScheduleUpdated { name, .. } = &decoded
            {
                self.set(tenant, subject, name);
            }
            decoded.describe(&self.get(tenant, subject).unwrap_or_default())
        } else if event.aggregate_type == Tenant::TYPE {
            event.decode::<TenantEvent>()?.describe()
        } else if event.aggregate_type == Backup::TYPE {
            event.decode::<BackupEvent>()?.describe()
        } else if event.aggregate_type == Recovery::TYPE {
            event.decode::<RecoveryEvent>()?.describe()
        } else {
            format!("{} on {}", event.event_type, event.aggregate_type)
        })
    }
}

/// The audit rows of a batch, column by column.
#[derive(Default)]
struct Rows {
    tenant_id: Vec<Uuid>,
    position: Vec<i64>,
    occurred_at: Vec<DateTime<Utc>>,
    event_type: Vec<String>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    description: Vec<String>,
    user_id: Vec<Option<Uuid>>,
    username: Vec<Option<String>>,
    delegate_id: Vec<Option<Uuid>>,
    delegate_username: Vec<Option<String>>,
    request_id: Vec<String>,
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
        self.apply_batch(tx, std::slice::from_ref(event)).await
    }

    /// Every event is audited: a batch is three statements (read the names
    /// it needs, save the names it gives, insert its rows) whatever its size.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut book = NameBook {
            names: load_names(tx, named_entities(events)).await?,
            renamed: Names::new(),
        };
        let mut rows = Rows::default();
        for event in events {
            let description = book.describe(event).map_err(|e| {
                e.context(format!("event {} ({})", event.position, event.event_type))
            })?;
            let tenant = event.metadata.tenant_id.0;
            let user_id = event.metadata.user_id.map(|u| u.0);
            let delegate_id = event.metadata.delegate_id.map(|u| u.0);
            rows.tenant_id.push(tenant);
            rows.position.push(event.position);
            rows.occurred_at.push(event.metadata.occurred_at);
            rows.event_type.push(event.event_type.clone());
            rows.aggregate_type.push(event.aggregate_type.clone());
            rows.aggregate_id.push(event.aggregate_id.clone());
            rows.description.push(description);
            rows.user_id.push(user_id);
            rows.username.push(book.get(tenant, user_id));
            rows.delegate_id.push(delegate_id);
            rows.delegate_username.push(book.get(tenant, delegate_id));
            rows.request_id.push(event.metadata.request_id.clone());
        }
        save_names(tx, book.renamed).await?;
        sqlx::query(
            "INSERT INTO audit_log (tenant_id, position, occurred_at, event_type, aggregate_type,
                    aggregate_id, description, user_id, username, delegate_id, delegate_username,
                    request_id)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::text[],
                    $5::text[], $6::text[], $7::text[], $8::uuid[], $9::text[], $10::uuid[],
                    $11::text[], $12::text[])",
        )
        .bind(rows.tenant_id)
        .bind(rows.position)
        .bind(rows.occurred_at)
        .bind(rows.event_type)
        .bind(rows.aggregate_type)
        .bind(rows.aggregate_id)
        .bind(rows.description)
        .bind(rows.user_id)
        .bind(rows.username)
        .bind(rows.delegate_id)
        .bind(rows.delegate_username)
        .bind(rows.request_id)
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
