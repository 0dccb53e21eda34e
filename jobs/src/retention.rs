//! Retention: after each backup, the policy's backups beyond its generations
//! lose their AWS objects (deleted, or tagged as expired where the account
//! does not allow deletion); their records are kept.

use chrono::Utc;
use safehold_cloud::backup::{self as aws, Artifact, ArtifactKind, ArtifactState};
use safehold_domain::backup::{
    expired, Backup, BackupCommand, BackupState, BackupStatus, RetentionCandidate, Snapshot,
};
use safehold_domain::policy::PolicyState;
use safehold_domain::TenantId;
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

/// Deletes the AWS objects of the policy's backups beyond its generations.
/// `just_finished` is the backup that triggered it: its outcome may not have
/// reached the read model yet.
pub async fn apply_retention(
    ctx: &BackupContext,
    meta: &safehold_domain::CommandMetadata,
    policy: &PolicyState,
    just_finished: &BackupState,
) -> anyhow::Result<()> {
    let pool = &ctx.cloud.pool;
    let rows: Vec<(Uuid, chrono::DateTime<Utc>, String, bool, bool)> = sqlx::query_as(
        "SELECT backup_id, started_at, status, frozen, deleted_at IS NOT NULL
           FROM backups WHERE tenant_id = $1 AND policy_id = $2",
    )
    .bind(policy.tenant_id.0)
    .bind(policy.id)
    .fetch_all(pool)
    .await?;
    let candidates: Vec<RetentionCandidate> = rows
        .into_iter()
        .map(
            |(id, started_at, status, frozen, deleted)| RetentionCandidate {
                id,
                started_at,
                status: if id == just_finished.id {
                    just_finished.status
                } else {
                    match status.as_str() {
                        "successful" => BackupStatus::Successful,
                        "partially_successful" => BackupStatus::PartiallySuccessful,
                        "failed" => BackupStatus::Failed,
                        _ => BackupStatus::InProgress,
                    }
                },
                frozen,
                deleted,
            },
        )
        .collect();
    for id in expired(&candidates, policy.settings.generations) {
        delete_backup(ctx, meta, policy.tenant_id.0, id).await?;
    }
    Ok(())
}

/// Deletes a backup's AWS objects (or tags them where deletion is not
/// allowed) and records it. Frozen backups are deleted only on request.
pub async fn delete_backup(
    ctx: &BackupContext,
    meta: &safehold_domain::CommandMetadata,
    tenant: Uuid,
    backup_id: Uuid,
) -> anyhow::Result<()> {
    let pool = &ctx.cloud.pool;
    let Some(backup) = load::<Backup>(pool, tenant, backup_id).await?.state else {
        return Ok(());
    };
    if backup.deleted {
        return Ok(());
    }
    let account =
        safehold_projections::accounts::find(pool, TenantId(tenant), backup.account_id).await?;
    let mut marked_only = false;
    if let Some(account) = account {
        marked_only = account.kind == "vault" && !account.allow_delete;
        for snapshot in backup.snapshots() {
            let Some(artifact) = artifact_of(snapshot) else {
                continue;
            };
            let config = ctx
                .cloud
                .config(TenantId(tenant), &account, &snapshot.region)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if marked_only && artifact.kind == ArtifactKind::DynamodbBackup {
                // On-demand DynamoDB backups cannot carry tags.
                tracing::warn!(backup = %backup_id, id = %snapshot.id, "cannot mark a DynamoDB backup as expired");
                continue;
            }
            let outcome = if marked_only {
                aws::mark_expired(&config, &artifact, Utc::now()).await
            } else {
                aws::delete(&config, &artifact).await
            };
            outcome.map_err(|e| anyhow::anyhow!("deleting {}: {e}", snapshot.id))?;
        }
    }
    execute::<Backup>(
        pool,
        meta,
        backup_id,
        BackupCommand::RecordDeleted { marked_only },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
}
