//! Retention: after each backup and in the daily cleanup, the policy's
//! backups beyond its generations lose their AWS objects (deleted, or tagged
//! as expired where the account does not allow deletion); their records are
//! kept (the cleanup purges them after the organisation's record retention).
//!
//! An initial AMI (mode "snapshots + initial AMI") outlives its backup while
//! it is the newest initial AMI of its instance, so the instance keeps one
//! image; once a newer one has completed, the old one is deleted too.
//! A deletion that fails leaves the backup undeleted: the next retention or
//! cleanup tries it again.

use chrono::{DateTime, Utc};
use safehold_cloud::backup::{self as aws, Artifact, ArtifactKind, ArtifactState};
use safehold_domain::backup::{
    expired, Backup, BackupCommand, BackupState, BackupStatus, RetentionCandidate, Snapshot,
};
use safehold_domain::policy::PolicyState;
use safehold_domain::{CommandMetadata, TenantId};
use safehold_projections::accounts::AccountRow;
use uuid::Uuid;

use crate::backup::{load, BackupContext};
use crate::commands::execute;

pub(crate) fn artifact_of(snapshot: &Snapshot) -> Option<Artifact> {
    Some(Artifact {
        kind: serde_json::from_value(serde_json::Value::String(snapshot.kind.clone())).ok()?,
        id: snapshot.id.clone(),
        source: snapshot.source.clone(),
        device: snapshot.device.clone(),
        size_gib: snapshot.size_gib,
        state: ArtifactState::Pending,
    })
}

/// What a retention pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    /// Backups whose AWS objects were deleted (or marked expired).
    pub deleted: usize,
    /// Kept initial AMIs deleted because a newer one replaced them.
    pub replaced_amis: usize,
    /// Deletions that failed; they are tried again next time.
    pub failures: Vec<String>,
}

impl RetentionReport {
    fn add(&mut self, other: RetentionReport) {
        self.deleted += other.deleted;
        self.replaced_amis += other.replaced_amis;
        self.failures.extend(other.failures);
    }

    fn into_result(self) -> anyhow::Result<RetentionReport> {
        if self.failures.is_empty() {
            Ok(self)
        } else {
            Err(anyhow::anyhow!("{}", self.failures.join("; ")))
        }
    }
}

/// Deletes the AWS objects of the policy's backups beyond its generations.
/// `just_finished` is the backup that triggered it: its outcome may not have
/// reached the read model yet.
pub async fn apply_retention(
    ctx: &BackupContext,
    meta: &CommandMetadata,
    policy: &PolicyState,
    just_finished: &BackupState,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let mut report = retain_policy(
        ctx,
        meta,
        policy.tenant_id.0,
        policy.id,
        policy.settings.generations,
        Some(just_finished),
        now,
    )
    .await?;
    report.add(release_replaced_initial_amis(ctx, meta, policy.tenant_id.0, now).await?);
    report.into_result().map(|_| ())
}

/// One policy's retention at `now`: every expired backup not yet deleted
/// (including those whose deletion failed before) is deleted. Failures are
/// reported, not returned as errors; errors are the database's.
pub async fn retain_policy(
    ctx: &BackupContext,
    meta: &CommandMetadata,
    tenant: Uuid,
    policy_id: Uuid,
    generations: u32,
    just_finished: Option<&BackupState>,
    now: DateTime<Utc>,
) -> anyhow::Result<RetentionReport> {
    let pool = &ctx.cloud.pool;
    let rows: Vec<(Uuid, DateTime<Utc>, String, bool, bool)> = sqlx::query_as(
        "SELECT backup_id, started_at, status, frozen, deleted_at IS NOT NULL
           FROM backups WHERE tenant_id = $1 AND policy_id = $2",
    )
    .bind(tenant)
    .bind(policy_id)
    .fetch_all(pool)
    .await?;
    let candidates: Vec<RetentionCandidate> = rows
        .into_iter()
        .map(
            |(id, started_at, status, frozen, deleted)| RetentionCandidate {
                id,
                started_at,
                status: match just_finished.filter(|b| b.id == id) {
                    Some(b) => b.status,
                    None => match status.as_str() {
                        "successful" => BackupStatus::Successful,
                        "partially_successful" => BackupStatus::PartiallySuccessful,
                        "failed" => BackupStatus::Failed,
                        _ => BackupStatus::InProgress,
                    },
                },
                frozen,
                deleted,
            },
        )
        .collect();
    let mut report = RetentionReport::default();
    for id in expired(&candidates, generations) {
        match delete_backup_at(ctx, meta, tenant, id, now).await {
            Ok(true) => report.deleted += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(backup = %id, error = %e, "deleting an expired backup failed; it is tried again later");
                report.failures.push(format!("backup {id}: {e:#}"));
            }
        }
    }
    Ok(report)
}

/// Deletes a backup's AWS objects (or tags them where deletion is not
/// allowed) and records it. Frozen backups are deleted only on request.
pub async fn delete_backup(
    ctx: &BackupContext,
    meta: &CommandMetadata,
    tenant: Uuid,
    backup_id: Uuid,
) -> anyhow::Result<()> {
    delete_backup_at(ctx, meta, tenant, backup_id, Utc::now())
        .await
        .map(|_| ())
}

/// [`delete_backup`] at `now`. The backup's initial AMIs that are still
/// their instance's newest are kept. Returns whether it deleted anything;
/// on a failure nothing is recorded, so the deletion is tried again later.
pub async fn delete_backup_at(
    ctx: &BackupContext,
    meta: &CommandMetadata,
    tenant: Uuid,
    backup_id: Uuid,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let pool = &ctx.cloud.pool;
    let Some(backup) = load::<Backup>(pool, tenant, backup_id).await?.state else {
        return Ok(false);
    };
    if backup.deleted || backup.status == BackupStatus::InProgress || backup.dr_running() {
        return Ok(false);
    }
    let account =
        safehold_projections::accounts::find(pool, TenantId(tenant), backup.account_id).await?;
    let mut marked_only = false;
    let mut kept = Vec::new();
    if let Some(account) = account {
        marked_only = account.kind == "vault" && !account.allow_delete;
        let mut replaced = Vec::new();
        for (ami, _) in backup.initial_amis() {
            if newer_initial_ami_exists(ctx, tenant, backup.id, &ami.id).await? {
                replaced.push(ami.id.clone());
            }
        }
        kept = backup.initial_amis_to_keep(|ami| replaced.contains(&ami.id));
        let mut failures = Vec::new();
        for snapshot in backup.snapshots().filter(|s| !kept.contains(&s.id)) {
            if let Err(e) = remove_object(ctx, tenant, &account, snapshot, marked_only, now).await {
                failures.push(format!("{}: {e:#}", snapshot.id));
            }
        }
        if !failures.is_empty() {
            anyhow::bail!("deleting {}", failures.join(", "));
        }
    }
    crate::dr::delete_copies(&ctx.cloud, meta, tenant, backup_id).await?;
    execute::<Backup>(
        pool,
        meta,
        backup_id,
        BackupCommand::RecordDeleted {
            marked_only,
            kept,
            at: now,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(true)
}

/// Deletes one AWS object of a backup, or tags it as expired.
async fn remove_object(
    ctx: &BackupContext,
    tenant: Uuid,
    account: &AccountRow,
    snapshot: &Snapshot,
    marked_only: bool,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let Some(artifact) = artifact_of(snapshot) else {
        return Ok(());
    };
    let config = ctx
        .cloud
        .config(TenantId(tenant), account, &snapshot.region)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if marked_only && artifact.kind == ArtifactKind::DynamodbBackup {
        // On-demand DynamoDB backups cannot carry tags.
        tracing::warn!(id = %snapshot.id, "cannot mark a DynamoDB backup as expired");
        return Ok(());
    }
    let outcome = if marked_only {
        aws::mark_expired(&config, &artifact, now).await
    } else {
        aws::delete(&config, &artifact).await
    };
    outcome.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Whether a newer initial AMI of the same instance (same account and
/// region) has completed and still exists, so that `ami` of `backup` is no
/// longer its instance's newest.
async fn newer_initial_ami_exists(
    ctx: &BackupContext,
    tenant: Uuid,
    backup: Uuid,
    ami: &str,
) -> anyhow::Result<bool> {
    let pool = &ctx.cloud.pool;
    // Newer completed AMIs of the instance, newest first; each is then
    // checked against its backup to be an initial AMI (not one of an AMI
    // mode, which retention deletes with its backup).
    let newer: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT s.backup_id, s.snapshot_id
           FROM backup_snapshots me
           JOIN backup_snapshots s
             ON s.tenant_id = me.tenant_id AND s.account_id = me.account_id
            AND s.region = me.region AND s.source = me.source
          WHERE me.tenant_id = $1 AND me.backup_id = $2 AND me.snapshot_id = $3
            AND s.kind = 'ami' AND s.state = 'completed' AND s.deleted_at IS NULL
            AND (s.created_at, s.backup_id) > (me.created_at, me.backup_id)
          ORDER BY s.created_at DESC",
    )
    .bind(tenant)
    .bind(backup)
    .bind(ami)
    .fetch_all(pool)
    .await?;
    for (other, id) in newer {
        let state = load::<Backup>(pool, tenant, other).await?.state;
        if state.is_some_and(|b| b.is_initial_ami(&id)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes the organisation's kept initial AMIs that a newer completed
/// initial AMI of their instance has replaced.
pub async fn release_replaced_initial_amis(
    ctx: &BackupContext,
    meta: &CommandMetadata,
    tenant: Uuid,
    now: DateTime<Utc>,
) -> anyhow::Result<RetentionReport> {
    let pool = &ctx.cloud.pool;
    let kept: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT backup_id, snapshot_id FROM backup_snapshots
          WHERE tenant_id = $1 AND kept AND deleted_at IS NULL
          ORDER BY created_at",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let mut report = RetentionReport::default();
    for (backup_id, ami) in kept {
        if !newer_initial_ami_exists(ctx, tenant, backup_id, &ami).await? {
            continue;
        }
        let Some(backup) = load::<Backup>(pool, tenant, backup_id).await?.state else {
            continue;
        };
        if !backup.kept.contains(&ami) {
            continue;
        }
        let Some(snapshot) = backup.snapshots().find(|s| s.id == ami).cloned() else {
            continue;
        };
        let account =
            safehold_projections::accounts::find(pool, TenantId(tenant), backup.account_id).await?;
        let mut marked_only = false;
        if let Some(account) = account {
            marked_only = account.kind == "vault" && !account.allow_delete;
            if let Err(e) = remove_object(ctx, tenant, &account, &snapshot, marked_only, now).await
            {
                tracing::warn!(backup = %backup_id, %ami, error = %e, "deleting a replaced initial AMI failed; it is tried again later");
                report.failures.push(format!("{ami}: {e:#}"));
                continue;
            }
        }
        execute::<Backup>(
            pool,
            meta,
            backup_id,
            BackupCommand::RecordInitialAmiDeleted {
                id: ami,
                marked_only,
                at: now,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        report.replaced_amis += 1;
    }
    Ok(report)
}
