//! The backup monitor and the freezer: each backup's outcome, what it created
//! in AWS and its own log, from the Backup aggregate's events.
//!
//! The `backups` row itself belongs to the policies projection (it creates it
//! when the policy starts the backup and empties the table on a rebuild);
//! this projection fills in the columns the Backup aggregate decides. Both
//! run independently, so whichever sees its event first creates the row.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use safehold_domain::backup::{Backup, BackupEvent, BackupStatus, DrStatus};
use safehold_domain::policy::{Policy, PolicyEvent, Trigger};
use safehold_domain::TenantId;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{Projection, StoredEvent};

pub struct BackupsProjection;

#[async_trait]
impl Projection for BackupsProjection {
    fn name(&self) -> &'static str {
        "backups"
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "backups",
            "backup_snapshots",
            "backup_log",
            "backup_policy_owners",
            "backup_dr_copies",
        ]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let tenant = event.metadata.tenant_id.0;
        let Some(id) = event.entity_id() else {
            return Ok(());
        };
        if event.aggregate_type == Backup::TYPE {
            apply_backup(tx, tenant, id, event, event.decode()?).await
        } else if event.aggregate_type == Policy::TYPE && event.event_type == "BackupStarted" {
            if let PolicyEvent::BackupStarted { backup_id, trigger } = event.decode()? {
                let (kind, schedule, occurrence, retry_of, attempt) = trigger_columns(&trigger);
                // The policy's start comes first; the backup's own events fill in the rest.
                sqlx::query(
                    "INSERT INTO backups (tenant_id, backup_id, policy_id, trigger, schedule_id, occurrence,
                            status, started_at, owner_id, retry_of, attempt)
                     VALUES ($1,$2,$3,$4,$5,$6,'in_progress',$7,
                             (SELECT owner_id FROM backup_policy_owners WHERE tenant_id = $1 AND policy_id = $3),
                             $8,$9)
                     ON CONFLICT (tenant_id, backup_id) DO NOTHING",
                )
                .bind(tenant)
                .bind(backup_id)
                .bind(id)
                .bind(kind)
                .bind(schedule)
                .bind(occurrence)
                .bind(event.metadata.occurred_at)
                .bind(retry_of)
                .bind(attempt)
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        } else if event.aggregate_type == Policy::TYPE && event.event_type == "PolicyCreated" {
            if let PolicyEvent::PolicyCreated { owner_id, .. } = event.decode()? {
                sqlx::query(
                    "INSERT INTO backup_policy_owners (tenant_id, policy_id, owner_id) VALUES ($1,$2,$3)
                     ON CONFLICT (tenant_id, policy_id) DO UPDATE SET owner_id = EXCLUDED.owner_id",
                )
                .bind(tenant)
                .bind(id)
                .bind(owner_id.0)
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        } else {
            Ok(())
        }
    }
}

/// The `trigger`, `schedule_id`, `occurrence`, `retry_of` and `attempt` columns.
fn trigger_columns(
    trigger: &Trigger,
) -> (
    &'static str,
    Option<Uuid>,
    Option<DateTime<Utc>>,
    Option<Uuid>,
    i32,
) {
    match trigger {
        Trigger::Scheduled {
            schedule_id,
            occurrence,
        } => ("scheduled", Some(*schedule_id), Some(*occurrence), None, 0),
        Trigger::AdHoc => ("ad_hoc", None, None, None, 0),
        Trigger::Retry { of, attempt } => ("retry", None, None, Some(*of), *attempt as i32),
    }
}

fn level(event: &BackupEvent) -> &'static str {
    match event {
        BackupEvent::TargetVanished { .. }
        | BackupEvent::BackupCompleted {
            status: BackupStatus::PartiallySuccessful,
        }
        | BackupEvent::DrSnapshotNotCopied { .. } => "warning",
        BackupEvent::DrCopyFailed { .. }
        | BackupEvent::DrFinished {
            status: DrStatus::Failed,
        } => "error",
        BackupEvent::TargetFailed { .. }
        | BackupEvent::SnapshotFailed { .. }
        | BackupEvent::BackupCompleted {
            status: BackupStatus::Failed,
        } => "error",
        _ => "info",
    }
}

async fn set_snapshot_state(
    tx: &mut PgConnection,
    tenant: Uuid,
    backup: Uuid,
    snapshot: &str,
    state: &str,
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE backup_snapshots SET state = $4, completed_at = $5
          WHERE tenant_id = $1 AND backup_id = $2 AND snapshot_id = $3",
    )
    .bind(tenant)
    .bind(backup)
    .bind(snapshot)
    .bind(state)
    .bind(at)
    .execute(tx)
    .await?;
    Ok(())
}

async fn set_dr_status(
    tx: &mut PgConnection,
    tenant: Uuid,
    backup: Uuid,
    status: DrStatus,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE backups SET dr_status = $3 WHERE tenant_id = $1 AND backup_id = $2")
        .bind(tenant)
        .bind(backup)
        .bind(status.as_str())
        .execute(tx)
        .await?;
    Ok(())
}

async fn apply_backup(
    tx: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    stored: &StoredEvent,
    event: BackupEvent,
) -> anyhow::Result<()> {
    let at = stored.metadata.occurred_at;
    sqlx::query(
        "INSERT INTO backup_log (tenant_id, backup_id, position, occurred_at, level, message)
         VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(id)
    .bind(stored.position)
    .bind(at)
    .bind(level(&event))
    .bind(event.describe())
    .execute(&mut *tx)
    .await?;
    match event {
        BackupEvent::BackupBegun {
            policy_id,
            policy_name,
            account_id,
            trigger,
            ..
        } => {
            let (kind, schedule, occurrence, retry_of, attempt) = trigger_columns(&trigger);
            sqlx::query(
                "INSERT INTO backups (tenant_id, backup_id, policy_id, trigger, schedule_id, occurrence,
                        status, started_at, owner_id, account_id, policy_name, retry_of, attempt)
                 VALUES ($1,$2,$3,$4,$5,$6,'in_progress',$7,
                         (SELECT owner_id FROM backup_policy_owners WHERE tenant_id = $1 AND policy_id = $3),
                         $8,$9,$10,$11)
                 ON CONFLICT (tenant_id, backup_id) DO UPDATE
                    SET owner_id = EXCLUDED.owner_id, account_id = EXCLUDED.account_id,
                        policy_name = EXCLUDED.policy_name, retry_of = EXCLUDED.retry_of,
                        attempt = EXCLUDED.attempt",
            )
            .bind(tenant)
            .bind(id)
            .bind(policy_id)
            .bind(kind)
            .bind(schedule)
            .bind(occurrence)
            .bind(at)
            .bind(account_id)
            .bind(policy_name)
            .bind(retry_of)
            .bind(attempt)
            .execute(&mut *tx)
            .await?;
        }
        BackupEvent::SnapshotsTaken { target, snapshots } => {
            for s in snapshots {
                sqlx::query(
                    "INSERT INTO backup_snapshots (tenant_id, backup_id, snapshot_id, kind, region,
                            account_id, target_type, target_region, target_id, source, device,
                            size_gib, state, created_at)
                     VALUES ($1,$2,$3,$4,$5,
                             (SELECT account_id FROM backups WHERE tenant_id = $1 AND backup_id = $2),
                             $6,$7,$8,$9,$10,$11,'pending',$12)
                     ON CONFLICT DO NOTHING",
                )
                .bind(tenant)
                .bind(id)
                .bind(&s.id)
                .bind(&s.kind)
                .bind(&s.region)
                .bind(target.kind.as_str())
                .bind(&target.region)
                .bind(&target.resource_id)
                .bind(&s.source)
                .bind(&s.device)
                .bind(s.size_gib)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE backups SET snapshot_count =
                        (SELECT count(*) FROM backup_snapshots s
                          WHERE s.tenant_id = $1 AND s.backup_id = $2)
                  WHERE tenant_id = $1 AND backup_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        BackupEvent::TargetFailed { .. }
        | BackupEvent::TargetVanished { .. }
        | BackupEvent::TakingStarted
        | BackupEvent::SourcesRecorded { .. } => {}
        BackupEvent::SnapshotCompleted { id: snapshot } => {
            set_snapshot_state(tx, tenant, id, &snapshot, "completed", at).await?;
        }
        BackupEvent::SnapshotFailed { id: snapshot, .. } => {
            set_snapshot_state(tx, tenant, id, &snapshot, "failed", at).await?;
        }
        BackupEvent::BackupCompleted { status } => {
            sqlx::query(
                "UPDATE backups SET status = $3, finished_at = $4 WHERE tenant_id = $1 AND backup_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(status.as_str())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        BackupEvent::BackupFrozen(entry) => {
            // The API refuses a name in use, but two requests can race past
            // that check; the read model must still take the event rather
            // than stop on the unique index, so a clash keeps the backup's id.
            sqlx::query(
                "UPDATE backups b SET frozen = true, frozen_at = $5, freezer_description = $4,
                        freezer_name = CASE WHEN EXISTS (
                            SELECT 1 FROM backups o WHERE o.tenant_id = $1 AND o.frozen
                               AND o.freezer_name = $3 AND o.backup_id <> $2)
                          THEN $3 || ' (' || $2::text || ')' ELSE $3 END
                  WHERE b.tenant_id = $1 AND b.backup_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(entry.name)
            .bind(entry.description)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        BackupEvent::BackupDeleted {
            marked_only,
            at: deleted_at,
        } => {
            let at = deleted_at.unwrap_or(at);
            sqlx::query(
                "UPDATE backups SET deleted_at = $3, deletion_marked_only = $4
                  WHERE tenant_id = $1 AND backup_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(at)
            .bind(marked_only)
            .execute(&mut *tx)
            .await?;
            // Kept initial AMIs stay until a newer one replaces them.
            sqlx::query(
                "UPDATE backup_snapshots SET deleted_at = $3
                  WHERE tenant_id = $1 AND backup_id = $2 AND deleted_at IS NULL AND NOT kept",
            )
            .bind(tenant)
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        BackupEvent::InitialAmiKept { id: ami } => {
            sqlx::query(
                "UPDATE backup_snapshots SET kept = true
                  WHERE tenant_id = $1 AND backup_id = $2 AND snapshot_id = $3",
            )
            .bind(tenant)
            .bind(id)
            .bind(ami)
            .execute(&mut *tx)
            .await?;
        }
        BackupEvent::InitialAmiDeleted { id: ami, at, .. } => {
            sqlx::query(
                "UPDATE backup_snapshots SET kept = false, deleted_at = $4
                  WHERE tenant_id = $1 AND backup_id = $2 AND snapshot_id = $3",
            )
            .bind(tenant)
            .bind(id)
            .bind(ami)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        BackupEvent::RecordPurged { .. } => {
            // The record goes from every read model of backups; the audit
            // log keeps its own entries.
            for table in [
                "backup_snapshots",
                "backup_log",
                "backup_dr_copies",
                "backups",
            ] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE tenant_id = $1 AND backup_id = $2"
                ))
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        BackupEvent::DrSkipped { .. }
        | BackupEvent::DrPlanned { .. }
        | BackupEvent::DrFinished { .. } => {
            let status = match &event {
                BackupEvent::DrSkipped { .. } => DrStatus::Skipped,
                BackupEvent::DrFinished { status } => *status,
                _ => DrStatus::Pending,
            };
            set_dr_status(tx, tenant, id, status).await?;
        }
        BackupEvent::DrSnapshotNotCopied { .. } => {}
        BackupEvent::DrCopyStarted(copy) => {
            sqlx::query(
                "INSERT INTO backup_dr_copies (tenant_id, backup_id, original_id, region, account_id,
                        copy_id, kind, source_region, state, created_at)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,'pending',$9) ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(id)
            .bind(&copy.original_id)
            .bind(&copy.region)
            .bind(copy.account_id)
            .bind(&copy.copy_id)
            .bind(&copy.kind)
            .bind(&copy.source_region)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            set_dr_status(tx, tenant, id, DrStatus::InProgress).await?;
        }
        BackupEvent::DrCopyCompleted { copy_id, region } => {
            sqlx::query(
                "UPDATE backup_dr_copies SET state = 'completed', completed_at = $5
                  WHERE tenant_id = $1 AND backup_id = $2 AND copy_id = $3 AND region = $4",
            )
            .bind(tenant)
            .bind(id)
            .bind(copy_id)
            .bind(region)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        BackupEvent::DrCopyFailed {
            original_id,
            region,
            ..
        } => {
            sqlx::query(
                "UPDATE backup_dr_copies SET state = 'failed', completed_at = $5
                  WHERE tenant_id = $1 AND backup_id = $2 AND original_id = $3 AND region = $4",
            )
            .bind(tenant)
            .bind(id)
            .bind(original_id)
            .bind(region)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            set_dr_status(tx, tenant, id, DrStatus::InProgress).await?;
        }
        BackupEvent::DrOriginalsDeleted { ids } => {
            sqlx::query(
                "UPDATE backup_snapshots SET deleted_at = $4
                  WHERE tenant_id = $1 AND backup_id = $2 AND snapshot_id = ANY($3)
                    AND deleted_at IS NULL",
            )
            .bind(tenant)
            .bind(id)
            .bind(&ids)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        BackupEvent::DrCopiesDeleted { .. } => {
            sqlx::query(
                "UPDATE backup_dr_copies SET deleted_at = $3
                  WHERE tenant_id = $1 AND backup_id = $2 AND deleted_at IS NULL",
            )
            .bind(tenant)
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BackupRow {
    pub backup_id: Uuid,
    pub policy_id: Uuid,
    /// The policy's name when the backup began (its current name before that).
    pub policy_name: Option<String>,
    pub account_id: Option<Uuid>,
    /// Whose backup it is; absent only while neither projection knows yet.
    pub owner_id: Option<Uuid>,
    pub trigger: String,
    pub schedule_id: Option<Uuid>,
    pub occurrence: Option<DateTime<Utc>>,
    pub retry_of: Option<Uuid>,
    pub attempt: i32,
    pub status: String,
    pub dr_status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub frozen: bool,
    pub freezer_name: Option<String>,
    pub freezer_description: Option<String>,
    pub frozen_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub deletion_marked_only: Option<bool>,
    pub snapshot_count: i32,
}

impl BackupRow {
    pub fn status(&self) -> BackupStatus {
        match self.status.as_str() {
            "successful" => BackupStatus::Successful,
            "partially_successful" => BackupStatus::PartiallySuccessful,
            "failed" => BackupStatus::Failed,
            _ => BackupStatus::InProgress,
        }
    }
}

// Until the Backup aggregate's first event is projected, the owner, name and
// account come from the policy.
const BACKUP_FROM: &str =
    "SELECT b.backup_id, b.policy_id, coalesce(b.policy_name, p.name) AS policy_name,
        coalesce(b.account_id, p.account_id) AS account_id,
        coalesce(b.owner_id, p.owner_id) AS owner_id, b.trigger, b.schedule_id, b.occurrence,
        b.retry_of, b.attempt, b.status, b.dr_status, b.started_at, b.finished_at, b.frozen,
        b.freezer_name, b.freezer_description, b.frozen_at, b.deleted_at, b.deletion_marked_only,
        b.snapshot_count
   FROM backups b
   LEFT JOIN policies p ON p.tenant_id = b.tenant_id AND p.policy_id = b.policy_id";

pub async fn find_backup(
    pool: &PgPool,
    tenant: TenantId,
    id: Uuid,
) -> sqlx::Result<Option<BackupRow>> {
    sqlx::query_as(&format!(
        "{BACKUP_FROM} WHERE b.tenant_id = $1 AND b.backup_id = $2"
    ))
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Default, Clone)]
pub struct BackupFilter {
    pub policy_id: Option<Uuid>,
    pub status: Option<BackupStatus>,
    /// Started at or after.
    pub from: Option<DateTime<Utc>>,
    /// Started before.
    pub to: Option<DateTime<Utc>>,
    pub frozen: Option<bool>,
    /// Part of the freezer name or description, case-insensitive.
    pub q: Option<String>,
    /// Newest first: backups before this (started_at, backup_id).
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// `text` as a literal ILIKE pattern matching it anywhere.
fn contains_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// The owners' backups, newest first.
pub async fn list_backups(
    pool: &PgPool,
    tenant: TenantId,
    owners: &[Uuid],
    filter: &BackupFilter,
    limit: i64,
) -> sqlx::Result<Vec<BackupRow>> {
    let (after_start, after_id) = filter.after.unzip();
    sqlx::query_as(&format!(
        "{BACKUP_FROM}
          WHERE b.tenant_id = $1 AND coalesce(b.owner_id, p.owner_id) = ANY($2)
            AND ($3::uuid IS NULL OR b.policy_id = $3)
            AND ($4::text IS NULL OR b.status = $4)
            AND ($5::timestamptz IS NULL OR b.started_at >= $5)
            AND ($6::timestamptz IS NULL OR b.started_at < $6)
            AND ($7::boolean IS NULL OR b.frozen = $7)
            AND ($8::text IS NULL OR b.freezer_name ILIKE $8 OR b.freezer_description ILIKE $8)
            AND ($9::timestamptz IS NULL OR (b.started_at, b.backup_id) < ($9, $10))
          ORDER BY b.started_at DESC, b.backup_id DESC LIMIT $11"
    ))
    .bind(tenant.0)
    .bind(owners)
    .bind(filter.policy_id)
    .bind(filter.status.map(BackupStatus::as_str))
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.frozen)
    .bind(filter.q.as_deref().map(contains_pattern))
    .bind(after_start)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The owners' frozen backups by freezer name, optionally those whose name or
/// description contains `q`.
pub async fn list_freezer(
    pool: &PgPool,
    tenant: TenantId,
    owners: &[Uuid],
    q: Option<&str>,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<BackupRow>> {
    let (after_name, after_id) = after.unzip();
    sqlx::query_as(&format!(
        "{BACKUP_FROM}
          WHERE b.tenant_id = $1 AND b.frozen AND coalesce(b.owner_id, p.owner_id) = ANY($2)
            AND ($3::text IS NULL OR b.freezer_name ILIKE $3 OR b.freezer_description ILIKE $3)
            AND ($4::text IS NULL OR (b.freezer_name, b.backup_id) > ($4, $5))
          ORDER BY b.freezer_name, b.backup_id LIMIT $6"
    ))
    .bind(tenant.0)
    .bind(owners)
    .bind(q.map(contains_pattern))
    .bind(after_name)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Whether another backup of the organisation is in the freezer as `name`.
pub async fn freezer_name_taken(
    conn: &mut PgConnection,
    tenant: TenantId,
    name: &str,
    except: Uuid,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM backups WHERE tenant_id = $1 AND frozen AND freezer_name = $2
                          AND backup_id <> $3)",
    )
    .bind(tenant.0)
    .bind(name)
    .bind(except)
    .fetch_one(conn)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SnapshotRow {
    pub snapshot_id: String,
    pub kind: String,
    pub region: String,
    pub account_id: Option<Uuid>,
    pub target_type: String,
    pub target_region: String,
    pub target_id: String,
    pub source: String,
    pub device: Option<String>,
    pub size_gib: Option<i32>,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

pub async fn snapshots_of(
    pool: &PgPool,
    tenant: TenantId,
    backup: Uuid,
) -> sqlx::Result<Vec<SnapshotRow>> {
    sqlx::query_as(
        "SELECT snapshot_id, kind, region, account_id, target_type, target_region, target_id, source,
                device, size_gib, state, created_at, completed_at, deleted_at
           FROM backup_snapshots WHERE tenant_id = $1 AND backup_id = $2
          ORDER BY created_at, target_type, target_region, target_id, snapshot_id",
    )
    .bind(tenant.0)
    .bind(backup)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogRow {
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    pub level: String,
    pub message: String,
}

/// The backup's log, oldest first.
pub async fn log_of(pool: &PgPool, tenant: TenantId, backup: Uuid) -> sqlx::Result<Vec<LogRow>> {
    sqlx::query_as(
        "SELECT position, occurred_at, level, message FROM backup_log
          WHERE tenant_id = $1 AND backup_id = $2 ORDER BY position",
    )
    .bind(tenant.0)
    .bind(backup)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DrCopyRow {
    pub original_id: String,
    pub kind: String,
    pub source_region: String,
    pub region: String,
    pub account_id: Uuid,
    pub copy_id: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The disaster-recovery copies of a backup.
pub async fn dr_copies_of(
    pool: &PgPool,
    tenant: TenantId,
    backup: Uuid,
) -> sqlx::Result<Vec<DrCopyRow>> {
    sqlx::query_as(
        "SELECT original_id, kind, source_region, region, account_id, copy_id, state, created_at,
                completed_at, deleted_at
           FROM backup_dr_copies WHERE tenant_id = $1 AND backup_id = $2
          ORDER BY created_at, original_id, region",
    )
    .bind(tenant.0)
    .bind(backup)
    .fetch_all(pool)
    .await
}
