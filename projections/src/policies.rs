//! Read models of schedules and policies (with targets and schedule links).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use safehold_domain::policy::{
    AutoTargetRemoval, DrSettings, Policy, PolicyEvent, PolicySettings, SuccessCriterion, Target,
};
use safehold_domain::schedule::{Schedule, ScheduleEvent};
use safehold_domain::TenantId;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{Projection, StoredEvent};

pub struct PoliciesProjection;

fn enum_text<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[async_trait]
impl Projection for PoliciesProjection {
    fn name(&self) -> &'static str {
        "policies"
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "schedules",
            "policies",
            "policy_targets",
            "policy_schedules",
        ]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let tenant = event.metadata.tenant_id.0;
        let Some(id) = event.entity_id() else {
            return Ok(());
        };
        let at = event.metadata.occurred_at;
        if event.aggregate_type == Schedule::TYPE {
            apply_schedule(tx, tenant, id, at, event.position, event.decode()?).await
        } else if event.aggregate_type == Policy::TYPE {
            apply_policy(tx, tenant, id, at, event.decode()?).await
        } else {
            Ok(())
        }
    }
}

async fn apply_schedule(
    tx: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    at: DateTime<Utc>,
    position: i64,
    event: ScheduleEvent,
) -> anyhow::Result<()> {
    match event {
        ScheduleEvent::ScheduleCreated {
            owner_id,
            name,
            description,
            recurrence,
            ..
        } => {
            sqlx::query(
                "INSERT INTO schedules (tenant_id, schedule_id, owner_id, name, description, recurrence,
                        changed_position, created_at, updated_at)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$8)",
            )
            .bind(tenant)
            .bind(id)
            .bind(owner_id.0)
            .bind(name)
            .bind(description)
            .bind(serde_json::to_value(recurrence)?)
            .bind(position)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        ScheduleEvent::ScheduleUpdated {
            name,
            description,
            recurrence,
        } => {
            sqlx::query(
                "UPDATE schedules SET name = $3, description = $4, recurrence = $5,
                        changed_position = $6, updated_at = $7
                  WHERE tenant_id = $1 AND schedule_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(name)
            .bind(description)
            .bind(serde_json::to_value(recurrence)?)
            .bind(position)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        ScheduleEvent::ScheduleRemoved => {
            sqlx::query("DELETE FROM schedules WHERE tenant_id = $1 AND schedule_id = $2")
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM policy_schedules WHERE tenant_id = $1 AND schedule_id = $2")
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

async fn write_settings(
    tx: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    name: &str,
    s: &PolicySettings,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE policies SET name = $3, description = $4, generations = $5, auto_target_removal = $6,
                success_criterion = $7, retries = $8, retry_wait_minutes = $9,
                failures_before_alert = $10, updated_at = $11
          WHERE tenant_id = $1 AND policy_id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(name)
    .bind(&s.description)
    .bind(s.generations as i32)
    .bind(enum_text(&s.auto_target_removal))
    .bind(enum_text(&s.success_criterion))
    .bind(s.retries as i32)
    .bind(s.retry_wait_minutes as i32)
    .bind(s.failures_before_alert as i32)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn touch(
    tx: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE policies SET updated_at = $3 WHERE tenant_id = $1 AND policy_id = $2")
        .bind(tenant)
        .bind(id)
        .bind(at)
        .execute(tx)
        .await?;
    Ok(())
}

async fn apply_policy(
    tx: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    at: DateTime<Utc>,
    event: PolicyEvent,
) -> anyhow::Result<()> {
    match event {
        PolicyEvent::PolicyCreated {
            owner_id,
            account_id,
            name,
            settings,
            enabled,
            from_tag_scan,
            ..
        } => {
            sqlx::query(
                "INSERT INTO policies (tenant_id, policy_id, owner_id, account_id, name, description,
                        enabled, generations, auto_target_removal, success_criterion, retries,
                        retry_wait_minutes, failures_before_alert, from_tag_scan, created_at, updated_at)
                 VALUES ($1,$2,$3,$4,$5,'',$6,0,'','',0,0,0,$7,$8,$8)",
            )
            .bind(tenant)
            .bind(id)
            .bind(owner_id.0)
            .bind(account_id)
            .bind(&name)
            .bind(enabled)
            .bind(from_tag_scan)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            write_settings(tx, tenant, id, &name, &settings, at).await?;
        }
        PolicyEvent::PolicyUpdated { name, settings } => {
            write_settings(tx, tenant, id, &name, &settings, at).await?;
        }
        PolicyEvent::PolicyEnabled | PolicyEvent::PolicyDisabled => {
            let enabled = matches!(event, PolicyEvent::PolicyEnabled);
            sqlx::query(
                "UPDATE policies SET enabled = $3, updated_at = $4 WHERE tenant_id = $1 AND policy_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(enabled)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        PolicyEvent::TargetPut(Target { key, instance }) => {
            sqlx::query(
                "INSERT INTO policy_targets (tenant_id, policy_id, account_id, resource_type, region,
                        resource_id, instance_mode, volumes)
                 SELECT $1, $2, account_id, $3, $4, $5, $6, $7 FROM policies
                  WHERE tenant_id = $1 AND policy_id = $2
                 ON CONFLICT (tenant_id, policy_id, resource_type, region, resource_id)
                 DO UPDATE SET instance_mode = EXCLUDED.instance_mode, volumes = EXCLUDED.volumes",
            )
            .bind(tenant)
            .bind(id)
            .bind(key.kind.as_str())
            .bind(&key.region)
            .bind(&key.resource_id)
            .bind(instance.as_ref().map(|o| enum_text(&o.mode)))
            .bind(instance.map(|o| serde_json::to_value(o.volumes)).transpose()?)
            .execute(&mut *tx)
            .await?;
            touch(tx, tenant, id, at).await?;
        }
        PolicyEvent::TargetRemoved { key, .. } => {
            sqlx::query(
                "DELETE FROM policy_targets WHERE tenant_id = $1 AND policy_id = $2
                    AND resource_type = $3 AND region = $4 AND resource_id = $5",
            )
            .bind(tenant)
            .bind(id)
            .bind(key.kind.as_str())
            .bind(&key.region)
            .bind(&key.resource_id)
            .execute(&mut *tx)
            .await?;
            touch(tx, tenant, id, at).await?;
        }
        PolicyEvent::ScheduleAttached { schedule_id } => {
            sqlx::query(
                "INSERT INTO policy_schedules (tenant_id, policy_id, schedule_id) VALUES ($1,$2,$3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(id)
            .bind(schedule_id)
            .execute(&mut *tx)
            .await?;
            touch(tx, tenant, id, at).await?;
        }
        PolicyEvent::ScheduleDetached { schedule_id } => {
            sqlx::query(
                "DELETE FROM policy_schedules WHERE tenant_id = $1 AND policy_id = $2 AND schedule_id = $3",
            )
            .bind(tenant)
            .bind(id)
            .bind(schedule_id)
            .execute(&mut *tx)
            .await?;
            touch(tx, tenant, id, at).await?;
        }
        PolicyEvent::BackupStarted { backup_id, .. } => {
            sqlx::query(
                "UPDATE policies SET running_backup_id = $3, last_backup_at = $4
                  WHERE tenant_id = $1 AND policy_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(backup_id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        PolicyEvent::BackupFinished { .. } => {
            sqlx::query(
                "UPDATE policies SET running_backup_id = NULL WHERE tenant_id = $1 AND policy_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        PolicyEvent::OccurrenceSkipped { .. } | PolicyEvent::FailureAlertRaised { .. } => {}
        PolicyEvent::DrSettingsChanged(dr) => {
            sqlx::query(
                "UPDATE policies SET dr_enabled = $3, dr_every = $4, dr_regions = $5,
                        dr_timeout_hours = $6, dr_vault_account_id = $7, dr_keep_originals = $8,
                        updated_at = $9
                  WHERE tenant_id = $1 AND policy_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(dr.enabled)
            .bind(dr.every as i32)
            .bind(&dr.regions)
            .bind(dr.timeout_hours as i32)
            .bind(dr.vault_account_id)
            .bind(dr.keep_originals)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        PolicyEvent::PolicyRemoved => {
            for table in ["policy_targets", "policy_schedules", "policies"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE tenant_id = $1 AND policy_id = $2"
                ))
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleRow {
    pub schedule_id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub description: String,
    pub recurrence: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const SCHEDULE_COLUMNS: &str =
    "schedule_id, owner_id, name, description, recurrence, created_at, updated_at";

pub async fn find_schedule(
    pool: &PgPool,
    tenant: TenantId,
    id: Uuid,
) -> sqlx::Result<Option<ScheduleRow>> {
    sqlx::query_as(&format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE tenant_id = $1 AND schedule_id = $2"
    ))
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Schedules of the given owners, by name then id, after the cursor.
pub async fn list_schedules(
    pool: &PgPool,
    tenant: TenantId,
    owners: &[Uuid],
    after: Option<(String, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<ScheduleRow>> {
    let (name, id) = after.unzip();
    sqlx::query_as(&format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules
          WHERE tenant_id = $1 AND owner_id = ANY($2)
            AND ($3::text IS NULL OR (name, schedule_id) > ($3, $4))
          ORDER BY name, schedule_id LIMIT $5"
    ))
    .bind(tenant.0)
    .bind(owners)
    .bind(name)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicyRow {
    pub policy_id: Uuid,
    pub owner_id: Uuid,
    pub account_id: Uuid,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub generations: i32,
    pub auto_target_removal: String,
    pub success_criterion: String,
    pub retries: i32,
    pub retry_wait_minutes: i32,
    pub failures_before_alert: i32,
    pub from_tag_scan: bool,
    pub running_backup_id: Option<Uuid>,
    pub last_backup_at: Option<DateTime<Utc>>,
    /// When a recovery from one of its backups was last started (drills).
    pub last_recovery_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub dr_enabled: bool,
    pub dr_every: i32,
    pub dr_regions: Vec<String>,
    pub dr_timeout_hours: i32,
    pub dr_vault_account_id: Option<Uuid>,
    pub dr_keep_originals: bool,
}

impl PolicyRow {
    pub fn dr(&self) -> DrSettings {
        DrSettings {
            enabled: self.dr_enabled,
            every: self.dr_every.max(1) as u32,
            regions: self.dr_regions.clone(),
            timeout_hours: self.dr_timeout_hours.max(1) as u32,
            vault_account_id: self.dr_vault_account_id,
            keep_originals: self.dr_keep_originals,
        }
    }

    pub fn settings(&self) -> PolicySettings {
        let parse = |s: &str| serde_json::Value::String(s.to_string());
        PolicySettings {
            description: self.description.clone(),
            generations: self.generations as u32,
            auto_target_removal: serde_json::from_value(parse(&self.auto_target_removal))
                .unwrap_or(AutoTargetRemoval::No),
            success_criterion: serde_json::from_value(parse(&self.success_criterion))
                .unwrap_or(SuccessCriterion::AllSucceed),
            retries: self.retries as u32,
            retry_wait_minutes: self.retry_wait_minutes as u32,
            failures_before_alert: self.failures_before_alert as u32,
        }
    }
}

const POLICY_COLUMNS: &str =
    "policy_id, owner_id, account_id, name, description, enabled, generations,
    auto_target_removal, success_criterion, retries, retry_wait_minutes, failures_before_alert,
    from_tag_scan, running_backup_id, last_backup_at, created_at, updated_at,
    dr_enabled, dr_every, dr_regions, dr_timeout_hours, dr_vault_account_id, dr_keep_originals,
    (SELECT max(r.requested_at) FROM recoveries r
      WHERE r.tenant_id = policies.tenant_id AND r.policy_id = policies.policy_id)
      AS last_recovery_at";

pub async fn find_policy(
    pool: &PgPool,
    tenant: TenantId,
    id: Uuid,
) -> sqlx::Result<Option<PolicyRow>> {
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM policies WHERE tenant_id = $1 AND policy_id = $2"
    ))
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Default, Clone)]
pub struct PolicyFilter {
    pub account_id: Option<Uuid>,
    pub enabled: Option<bool>,
    pub after: Option<(String, Uuid)>,
}

pub async fn list_policies(
    pool: &PgPool,
    tenant: TenantId,
    owners: &[Uuid],
    filter: &PolicyFilter,
    limit: i64,
) -> sqlx::Result<Vec<PolicyRow>> {
    let (name, id) = filter.after.clone().unzip();
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM policies
          WHERE tenant_id = $1 AND owner_id = ANY($2)
            AND ($3::uuid IS NULL OR account_id = $3)
            AND ($4::boolean IS NULL OR enabled = $4)
            AND ($5::text IS NULL OR (name, policy_id) > ($5, $6))
          ORDER BY name, policy_id LIMIT $7"
    ))
    .bind(tenant.0)
    .bind(owners)
    .bind(filter.account_id)
    .bind(filter.enabled)
    .bind(name)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TargetRow {
    pub resource_type: String,
    pub region: String,
    pub resource_id: String,
    pub instance_mode: Option<String>,
    pub volumes: Option<serde_json::Value>,
    /// From the inventory, when the resource is (still) known there.
    pub name: Option<String>,
    pub size_gib: Option<i32>,
}

pub async fn targets(
    pool: &PgPool,
    tenant: TenantId,
    policy: Uuid,
) -> sqlx::Result<Vec<TargetRow>> {
    sqlx::query_as(
        "SELECT t.resource_type, t.region, t.resource_id, t.instance_mode, t.volumes, r.name, r.size_gib
           FROM policy_targets t
           LEFT JOIN resources r ON r.tenant_id = t.tenant_id AND r.account_id = t.account_id
                AND r.region = t.region AND r.resource_type = t.resource_type
                AND r.resource_id = t.resource_id
          WHERE t.tenant_id = $1 AND t.policy_id = $2
          ORDER BY t.resource_type, t.region, t.resource_id",
    )
    .bind(tenant.0)
    .bind(policy)
    .fetch_all(pool)
    .await
}

pub async fn schedule_ids(
    pool: &PgPool,
    tenant: TenantId,
    policy: Uuid,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT schedule_id FROM policy_schedules WHERE tenant_id = $1 AND policy_id = $2 ORDER BY schedule_id",
    )
    .bind(tenant.0)
    .bind(policy)
    .fetch_all(pool)
    .await
}

/// Distinct resources protected by an owner's policies, with their sizes,
/// optionally leaving one policy out (the one being changed).
pub async fn protected_by_owner(
    pool: &PgPool,
    tenant: TenantId,
    owner: Uuid,
    except_policy: Option<Uuid>,
) -> sqlx::Result<Vec<(String, String, String, String, Option<i32>)>> {
    sqlx::query_as(
        "SELECT DISTINCT t.account_id::text, t.resource_type, t.region, t.resource_id, r.size_gib
           FROM policy_targets t
           JOIN policies p ON p.tenant_id = t.tenant_id AND p.policy_id = t.policy_id
           LEFT JOIN resources r ON r.tenant_id = t.tenant_id AND r.account_id = t.account_id
                AND r.region = t.region AND r.resource_type = t.resource_type
                AND r.resource_id = t.resource_id
          WHERE t.tenant_id = $1 AND p.owner_id = $2 AND ($3::uuid IS NULL OR t.policy_id <> $3)",
    )
    .bind(tenant.0)
    .bind(owner)
    .bind(except_policy)
    .fetch_all(pool)
    .await
}

/// Whether a policy with this name exists for the owner (other than `except`).
pub async fn name_taken(
    pool: &PgPool,
    tenant: TenantId,
    owner: Uuid,
    name: &str,
    except: Option<Uuid>,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM policies WHERE tenant_id = $1 AND owner_id = $2 AND name = $3
                          AND ($4::uuid IS NULL OR policy_id <> $4))",
    )
    .bind(tenant.0)
    .bind(owner)
    .bind(name)
    .bind(except)
    .fetch_one(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BackupRow {
    pub backup_id: Uuid,
    pub policy_id: Uuid,
    pub trigger: String,
    pub schedule_id: Option<Uuid>,
    pub occurrence: Option<DateTime<Utc>>,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn backups_of_policy(
    pool: &PgPool,
    tenant: TenantId,
    policy: Uuid,
) -> sqlx::Result<Vec<BackupRow>> {
    sqlx::query_as(
        "SELECT backup_id, policy_id, trigger, schedule_id, occurrence, status, started_at, finished_at
           FROM backups WHERE tenant_id = $1 AND policy_id = $2 ORDER BY started_at, backup_id",
    )
    .bind(tenant.0)
    .bind(policy)
    .fetch_all(pool)
    .await
}
