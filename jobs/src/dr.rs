//! Disaster recovery. After a successful backup the Backup aggregate decides
//! whether it is copied (every N-th) and where; a `DrJob` then does one round
//! at a time: starts the copies not started yet (each after taking a slot of
//! the copy scheduler), polls those in flight with one call per region and
//! kind, records every outcome, and re-enqueues itself until all is done or
//! the DR timeout has passed. Once every copy completed, a policy that keeps
//! no originals has the copied originals deleted.
//!
//! An encrypted original is copied with the destination's key of the same
//! alias; when there is none (or its AWS-managed key cannot leave its
//! account) the copy fails before anything is shared or copied.
//!
//! Every step is safe to repeat: copies are looked up (by tags or
//! deterministic names) before one is made, and the aggregate ignores a
//! second report. A per-backup advisory lock keeps two rounds apart.
//!
//! Copy scheduler: AWS limits copies in flight per account, destination
//! region and service. A copy takes a slot (`dr_copy_slots`) before it starts
//! and gives it back when it completes or fails; with no slot free it waits
//! for a later round (it does not fail). While several tenants wait for one
//! destination, none takes more than its share of the limit.

use std::collections::BTreeMap;
use std::time::Duration;

use apalis::prelude::*;
use apalis_sql::postgres::PostgresStorage;
use chrono::Utc;
use safehold_cloud::backup::{self as aws, Artifact, ArtifactKind, ArtifactState};
use safehold_cloud::dr::{self as aws_dr, CopyOrder};
use safehold_cloud::resolve::Cloud;
use safehold_domain::backup::{
    Backup, BackupCommand, BackupState, BackupStatus, DrCopy, DrStatus, Snapshot, SnapshotState,
};
use safehold_domain::policy::PolicyState;
use safehold_domain::{CommandMetadata, DomainError, TenantId};
use safehold_projections::accounts::AccountRow;
use safehold_projections::dispatch::enqueue;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::backup::load;
use crate::commands::{execute, system_metadata};
use crate::rounds::{next_round, run_locked};

/// The job queue of DR rounds.
pub const DR_QUEUE: &str = "safehold::dr";

/// Drives the disaster recovery of one backup, one round per run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrJob {
    pub tenant_id: Uuid,
    pub backup_id: Uuid,
}

/// How DR is driven; tests shorten the waits and the limit.
#[derive(Debug, Clone)]
pub struct DrWorkerSettings {
    /// Time between rounds while copies are in flight or waiting.
    pub poll_every: Duration,
    /// Copies in flight per AWS account, destination region and service.
    pub copy_limit: i64,
    /// DR runs worked on at once by one process.
    pub concurrency: usize,
    /// A job held by a worker not seen for this long (it died) runs again.
    pub orphaned_after: Duration,
}

impl Default for DrWorkerSettings {
    fn default() -> Self {
        Self {
            poll_every: Duration::from_secs(60),
            copy_limit: 20,
            concurrency: 8,
            orphaned_after: Duration::from_secs(120),
        }
    }
}

impl DrWorkerSettings {
    /// Defaults, with `SAFEHOLD_DR_POLL_MS`, `SAFEHOLD_DR_COPY_LIMIT` and
    /// `SAFEHOLD_JOB_ORPHANED_AFTER_MS` when set.
    pub fn from_env() -> Self {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let defaults = Self::default();
        Self {
            poll_every: number("SAFEHOLD_DR_POLL_MS")
                .map(Duration::from_millis)
                .unwrap_or(defaults.poll_every),
            copy_limit: number("SAFEHOLD_DR_COPY_LIMIT")
                .filter(|n| *n > 0)
                .map(|n| n as i64)
                .unwrap_or(defaults.copy_limit),
            orphaned_after: number("SAFEHOLD_JOB_ORPHANED_AFTER_MS")
                .map(Duration::from_millis)
                .unwrap_or(defaults.orphaned_after),
            ..defaults
        }
    }
}

#[derive(Clone)]
pub struct DrContext {
    pub cloud: Cloud,
    pub settings: DrWorkerSettings,
}

fn kind_of(snapshot_kind: &str) -> Option<ArtifactKind> {
    serde_json::from_value(serde_json::Value::String(snapshot_kind.to_string())).ok()
}

/// The AWS service whose copy quota a kind uses.
fn service_of(kind: &ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::EbsSnapshot | ArtifactKind::Ami => "ebs",
        ArtifactKind::RdsSnapshot | ArtifactKind::AuroraSnapshot => "rds",
        ArtifactKind::RedshiftSnapshot => "redshift",
        ArtifactKind::DynamodbBackup => "dynamodb",
    }
}

fn job_key(backup: Uuid) -> Uuid {
    Uuid::new_v5(&backup, b"dr")
}

/// After a backup finished: decides its DR (a policy without DR leaves it
/// alone) and enqueues the DR job when there is copying to do. Repeating it
/// changes nothing.
pub async fn after_backup(
    cloud: &Cloud,
    meta: &CommandMetadata,
    backup: &BackupState,
    policy: &PolicyState,
) -> anyhow::Result<()> {
    if backup.status != BackupStatus::Successful || !policy.dr.enabled {
        return Ok(());
    }
    let pool = &cloud.pool;
    ignore_refused(
        execute::<Backup>(
            pool,
            meta,
            backup.id,
            BackupCommand::DecideDr {
                settings: policy.dr.clone(),
                successful_before: policy.successful_backups,
                now: Utc::now(),
            },
        )
        .await,
    )?;
    let decided = load::<Backup>(pool, backup.tenant_id.0, backup.id)
        .await?
        .state;
    let active = decided
        .and_then(|b| b.dr)
        .is_some_and(|dr| matches!(dr.status, DrStatus::Pending | DrStatus::InProgress));
    if active {
        let job = DrJob {
            tenant_id: backup.tenant_id.0,
            backup_id: backup.id,
        };
        let mut conn = pool.acquire().await?;
        enqueue(&mut conn, DR_QUEUE, job_key(backup.id), &job, Utc::now()).await?;
    }
    Ok(())
}

/// A report the aggregate refuses (DR finished meanwhile, the backup was
/// deleted) is not an error of the job.
fn ignore_refused(result: Result<(), cqrs_es::AggregateError<DomainError>>) -> anyhow::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(cqrs_es::AggregateError::UserError(e)) => {
            tracing::info!(reason = %e, "DR report not recorded");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// What a round leaves to do.
#[derive(Debug, PartialEq, Eq)]
pub enum DrRound {
    Finished,
    Again,
}

/// The registered accounts a DR run reads from and writes to.
struct Accounts {
    source: AccountRow,
    dest: AccountRow,
}

async fn accounts(
    pool: &PgPool,
    backup: &BackupState,
    dest: Uuid,
) -> anyhow::Result<Option<Accounts>> {
    let tenant = backup.tenant_id;
    let source = safehold_projections::accounts::find(pool, tenant, backup.account_id).await?;
    let dest = safehold_projections::accounts::find(pool, tenant, dest).await?;
    Ok(source
        .zip(dest)
        .map(|(source, dest)| Accounts { source, dest }))
}

/// One round of a backup's disaster recovery.
pub async fn run_round(ctx: &DrContext, job: &DrJob) -> anyhow::Result<DrRound> {
    let pool = &ctx.cloud.pool;
    let meta = system_metadata(TenantId(job.tenant_id), &format!("dr:{}", job.backup_id));
    let Some(backup) = load::<Backup>(pool, job.tenant_id, job.backup_id)
        .await?
        .state
    else {
        return Ok(DrRound::Finished);
    };
    let Some(dr) = backup.dr.clone() else {
        return Ok(DrRound::Finished);
    };
    if backup.deleted {
        release_backup(pool, &backup).await?;
        return Ok(DrRound::Finished);
    }
    if matches!(dr.status, DrStatus::Pending | DrStatus::InProgress) {
        match accounts(pool, &backup, dr.account_id).await? {
            None => {
                for (snapshot, region) in backup.dr_to_start() {
                    ignore_refused(
                        execute::<Backup>(
                            pool,
                            &meta,
                            backup.id,
                            BackupCommand::RecordDrCopyFailed {
                                original_id: snapshot.id.clone(),
                                region: region.to_string(),
                                reason: "the source or destination account has been removed".into(),
                            },
                        )
                        .await,
                    )?;
                }
            }
            Some(accounts) => {
                start_copies(ctx, &meta, &backup, &accounts).await?;
                let backup = load::<Backup>(pool, job.tenant_id, job.backup_id)
                    .await?
                    .state
                    .expect("begun");
                poll_copies(ctx, &meta, &backup, &accounts).await?;
            }
        }
        ignore_refused(
            execute::<Backup>(
                pool,
                &meta,
                backup.id,
                BackupCommand::DrTimeOut { now: Utc::now() },
            )
            .await,
        )?;
    }
    let backup = load::<Backup>(pool, job.tenant_id, job.backup_id)
        .await?
        .state
        .expect("begun");
    let status = backup.dr.as_ref().map(|d| d.status);
    if matches!(status, Some(DrStatus::Pending | DrStatus::InProgress)) {
        return Ok(DrRound::Again);
    }
    release_backup(pool, &backup).await?;
    delete_originals(ctx, &meta, &backup).await?;
    Ok(DrRound::Finished)
}

/// Starts the copies not started yet, as far as the copy scheduler allows.
async fn start_copies(
    ctx: &DrContext,
    meta: &CommandMetadata,
    backup: &BackupState,
    accounts: &Accounts,
) -> anyhow::Result<()> {
    let pool = &ctx.cloud.pool;
    let dr = backup.dr.as_ref().expect("DR decided");
    let tenant = backup.tenant_id;
    for (snapshot, region) in backup.dr_to_start() {
        let Some(kind) = kind_of(&snapshot.kind) else {
            continue;
        };
        let service = service_of(&kind);
        let to = Destination {
            aws_account: accounts.dest.number.clone(),
            region: region.to_string(),
            service: service.to_string(),
        };
        let taken = take_slot(
            pool,
            &to,
            tenant.0,
            backup.id,
            &snapshot.id,
            ctx.settings.copy_limit,
        )
        .await?;
        if !taken {
            tracing::info!(backup = %backup.id, region, service, "DR copy waits for a slot");
            continue;
        }
        let source = ctx
            .cloud
            .config(tenant, &accounts.source, &snapshot.region)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let dest = ctx
            .cloud
            .config(tenant, &accounts.dest, region)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let order = CopyOrder {
            kind: kind.clone(),
            original_id: snapshot.id.clone(),
            source_region: snapshot.region.clone(),
            backup_id: backup.id,
        };
        // The copy's key first: an encrypted original without a key for
        // its copy fails here, before it is shared or copied.
        let mut outcome = aws_dr::copy_key(&source, &dest, &order).await;
        if dr.cross_account && outcome.is_ok() {
            if let Err(e) = aws_dr::share(&source, &kind, &snapshot.id, &accounts.dest.number).await
            {
                outcome = Err(e);
            }
        }
        let copied = match outcome {
            Ok(key) => aws_dr::copy_with_key(&source, &dest, &order, &key).await,
            Err(e) => Err(e),
        };
        match copied {
            Ok(copy) => {
                ignore_refused(
                    execute::<Backup>(
                        pool,
                        meta,
                        backup.id,
                        BackupCommand::RecordDrCopy(DrCopy {
                            original_id: snapshot.id.clone(),
                            kind: snapshot.kind.clone(),
                            source_region: snapshot.region.clone(),
                            region: region.to_string(),
                            account_id: accounts.dest.account_id,
                            copy_id: copy.id,
                        }),
                    )
                    .await,
                )?;
            }
            // Throttling and AWS-side errors: the copy waits for the next round.
            Err(e) if e.is_transient() => {
                release_slot(pool, tenant.0, backup.id, &snapshot.id, region).await?;
                tracing::info!(backup = %backup.id, error = %e, "will retry a DR copy");
            }
            Err(e) => {
                release_slot(pool, tenant.0, backup.id, &snapshot.id, region).await?;
                ignore_refused(
                    execute::<Backup>(
                        pool,
                        meta,
                        backup.id,
                        BackupCommand::RecordDrCopyFailed {
                            original_id: snapshot.id.clone(),
                            region: region.to_string(),
                            reason: e.to_string(),
                        },
                    )
                    .await,
                )?;
            }
        }
    }
    Ok(())
}

/// Asks AWS about every copy in flight: one call per region and kind, in
/// the destination account.
async fn poll_copies(
    ctx: &DrContext,
    meta: &CommandMetadata,
    backup: &BackupState,
    accounts: &Accounts,
) -> anyhow::Result<()> {
    let Some(dr) = &backup.dr else { return Ok(()) };
    let mut groups: BTreeMap<(String, String), Vec<&DrCopy>> = BTreeMap::new();
    for copy in dr.pending() {
        groups
            .entry((copy.region.clone(), copy.kind.clone()))
            .or_default()
            .push(copy);
    }
    let mut states = Vec::new();
    for ((region, kind), copies) in groups {
        let Some(kind) = kind_of(&kind) else { continue };
        let dest = ctx
            .cloud
            .config(backup.tenant_id, &accounts.dest, &region)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let ids: Vec<String> = copies.iter().map(|c| c.copy_id.clone()).collect();
        match aws::poll(&dest, kind, &ids).await {
            Ok(found) => {
                for copy in copies {
                    let state = match found.get(&copy.copy_id) {
                        Some(ArtifactState::Available) => SnapshotState::Completed,
                        Some(ArtifactState::Failed) | None => SnapshotState::Failed,
                        Some(ArtifactState::Pending) => continue,
                    };
                    release_slot(
                        &ctx.cloud.pool,
                        backup.tenant_id.0,
                        backup.id,
                        &copy.original_id,
                        &region,
                    )
                    .await?;
                    states.push((copy.copy_id.clone(), region.clone(), state));
                }
            }
            Err(e) => tracing::info!(backup = %backup.id, error = %e, "DR poll failed; next round"),
        }
    }
    if !states.is_empty() {
        ignore_refused(
            execute::<Backup>(
                &ctx.cloud.pool,
                meta,
                backup.id,
                BackupCommand::RecordDrCopyStates { states },
            )
            .await,
        )?;
    }
    Ok(())
}

fn artifact_of(kind: ArtifactKind, id: &str, source: &str) -> Artifact {
    Artifact {
        kind,
        id: id.to_string(),
        source: source.to_string(),
        device: None,
        size_gib: None,
        state: ArtifactState::Pending,
    }
}

/// Once every copy completed, deletes the copied originals of a policy that
/// keeps none.
async fn delete_originals(
    ctx: &DrContext,
    meta: &CommandMetadata,
    backup: &BackupState,
) -> anyhow::Result<()> {
    let originals: Vec<&Snapshot> = backup.dr_originals_to_delete();
    if originals.is_empty() {
        return Ok(());
    }
    let pool = &ctx.cloud.pool;
    let Some(source) =
        safehold_projections::accounts::find(pool, backup.tenant_id, backup.account_id).await?
    else {
        return Ok(());
    };
    let mut deleted = Vec::new();
    for snapshot in originals {
        let Some(kind) = kind_of(&snapshot.kind) else {
            continue;
        };
        let config = ctx
            .cloud
            .config(backup.tenant_id, &source, &snapshot.region)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        aws::delete(&config, &artifact_of(kind, &snapshot.id, &snapshot.source))
            .await
            .map_err(|e| anyhow::anyhow!("deleting original {}: {e}", snapshot.id))?;
        deleted.push(snapshot.id.clone());
    }
    ignore_refused(
        execute::<Backup>(
            pool,
            meta,
            backup.id,
            BackupCommand::RecordDrOriginalsDeleted { ids: deleted },
        )
        .await,
    )
}

/// Deletes a backup's DR copies (or, in a vault account without permission
/// to delete, tags them `safehold:expired-at`) and records it. Retention
/// calls it for each backup it deletes; a backup without copies, or whose
/// copies are already gone, is left as it is.
pub async fn delete_copies(
    cloud: &Cloud,
    meta: &CommandMetadata,
    tenant: Uuid,
    backup_id: Uuid,
) -> anyhow::Result<()> {
    let pool = &cloud.pool;
    let Some(backup) = load::<Backup>(pool, tenant, backup_id).await?.state else {
        return Ok(());
    };
    let Some(dr) = &backup.dr else { return Ok(()) };
    if dr.copies_deleted || dr.copies.is_empty() {
        return Ok(());
    }
    release_backup(pool, &backup).await?;
    let Some(account) =
        safehold_projections::accounts::find(pool, TenantId(tenant), dr.account_id).await?
    else {
        tracing::warn!(backup = %backup_id, "the DR account is gone; its copies are left");
        return Ok(());
    };
    let marked_only = account.kind == "vault" && !account.allow_delete;
    for run in &dr.copies {
        let copy = &run.copy;
        let Some(kind) = kind_of(&copy.kind) else {
            continue;
        };
        let config = cloud
            .config(TenantId(tenant), &account, &copy.region)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let artifact = artifact_of(kind, &copy.copy_id, &copy.original_id);
        let outcome = if marked_only {
            aws::mark_expired(&config, &artifact, Utc::now()).await
        } else {
            aws::delete(&config, &artifact).await
        };
        outcome.map_err(|e| anyhow::anyhow!("deleting DR copy {}: {e}", copy.copy_id))?;
    }
    ignore_refused(
        execute::<Backup>(
            pool,
            meta,
            backup_id,
            BackupCommand::RecordDrCopiesDeleted { marked_only },
        )
        .await,
    )
}

fn lock_key(text: &str) -> i64 {
    let digest = Uuid::new_v5(&Uuid::NAMESPACE_OID, text.as_bytes());
    let b = digest.as_bytes();
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Where a copy goes, as AWS counts copies in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The 12-digit AWS account number.
    pub aws_account: String,
    pub region: String,
    /// `ebs` (EBS snapshots and AMIs) or `rds` (RDS and Aurora snapshots).
    pub service: String,
}

/// Takes a copy slot at `to` for the copy of `original` made by `backup`,
/// unless `limit` copies are in flight there, or other tenants wait for it
/// and this one already holds its share (the limit divided among the
/// waiting tenants and itself). A copy that holds a slot keeps it; a refused
/// tenant is recorded as waiting. Returns whether the copy may start.
pub async fn take_slot(
    pool: &PgPool,
    to: &Destination,
    tenant: Uuid,
    backup: Uuid,
    original: &str,
    limit: i64,
) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key(&format!(
            "dr-slots:{}:{}:{}",
            to.aws_account, to.region, to.service
        )))
        .execute(&mut *tx)
        .await?;
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM dr_copy_slots
                         WHERE tenant_id = $1 AND backup_id = $2 AND original_id = $3 AND region = $4)",
    )
    .bind(tenant)
    .bind(backup)
    .bind(original)
    .bind(&to.region)
    .fetch_one(&mut *tx)
    .await?;
    if held {
        tx.commit().await?;
        return Ok(true);
    }
    // Waiters not seen for a while have stopped waiting.
    sqlx::query(
        "DELETE FROM dr_copy_waiters
          WHERE aws_account = $1 AND region = $2 AND service = $3
            AND seen_at < now() - interval '10 minutes'",
    )
    .bind(&to.aws_account)
    .bind(&to.region)
    .bind(&to.service)
    .execute(&mut *tx)
    .await?;
    let (total, mine, others_waiting): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM dr_copy_slots
                  WHERE aws_account = $1 AND region = $2 AND service = $3),
                (SELECT count(*) FROM dr_copy_slots
                  WHERE aws_account = $1 AND region = $2 AND service = $3 AND tenant_id = $4),
                (SELECT count(*) FROM dr_copy_waiters
                  WHERE aws_account = $1 AND region = $2 AND service = $3 AND tenant_id <> $4)",
    )
    .bind(&to.aws_account)
    .bind(&to.region)
    .bind(&to.service)
    .bind(tenant)
    .fetch_one(&mut *tx)
    .await?;
    let competing = others_waiting + 1;
    let share = ((limit + competing - 1) / competing).max(1);
    let granted = total < limit && (others_waiting == 0 || mine < share);
    if granted {
        sqlx::query(
            "INSERT INTO dr_copy_slots (aws_account, region, service, tenant_id, backup_id, original_id)
             VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING",
        )
        .bind(&to.aws_account)
        .bind(&to.region)
        .bind(&to.service)
        .bind(tenant)
        .bind(backup)
        .bind(original)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM dr_copy_waiters
              WHERE aws_account = $1 AND region = $2 AND service = $3 AND tenant_id = $4",
        )
        .bind(&to.aws_account)
        .bind(&to.region)
        .bind(&to.service)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query(
            "INSERT INTO dr_copy_waiters (aws_account, region, service, tenant_id, seen_at)
             VALUES ($1,$2,$3,$4,now())
             ON CONFLICT (aws_account, region, service, tenant_id) DO UPDATE SET seen_at = now()",
        )
        .bind(&to.aws_account)
        .bind(&to.region)
        .bind(&to.service)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(granted)
}

/// Gives back the slot of one copy (it completed, failed or was not made).
pub async fn release_slot(
    pool: &PgPool,
    tenant: Uuid,
    backup: Uuid,
    original: &str,
    region: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "DELETE FROM dr_copy_slots
          WHERE tenant_id = $1 AND backup_id = $2 AND original_id = $3 AND region = $4",
    )
    .bind(tenant)
    .bind(backup)
    .bind(original)
    .bind(region)
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives back every slot of a backup whose DR is over.
async fn release_backup(pool: &PgPool, backup: &BackupState) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM dr_copy_slots WHERE tenant_id = $1 AND backup_id = $2")
        .bind(backup.tenant_id.0)
        .bind(backup.id)
        .execute(pool)
        .await?;
    Ok(())
}

async fn run_dr_job(job: DrJob, ctx: Data<DrContext>) -> Result<(), Error> {
    let pool = &ctx.cloud.pool;
    // One round per backup at a time; a second one (after a crash) leaves it be.
    let key = lock_key(&format!("dr:{}", job.backup_id));
    match run_locked(pool, key, run_round(&ctx, &job)).await? {
        None => {}
        Some(DrRound::Finished) => {
            tracing::info!(backup = %job.backup_id, "disaster recovery finished");
            safehold_projections::runtime::notify_committed(pool).await;
        }
        Some(DrRound::Again) => {
            next_round(pool, DR_QUEUE, &job, ctx.settings.poll_every).await?;
        }
    }
    Ok(())
}

/// Runs DR jobs until `stop`.
pub async fn run_workers(ctx: DrContext, mut stop: watch::Receiver<bool>) {
    let config = apalis_sql::Config::new(DR_QUEUE)
        .set_poll_interval(Duration::from_millis(500))
        .set_keep_alive(ctx.settings.orphaned_after / 4)
        .set_reenqueue_orphaned_after(ctx.settings.orphaned_after);
    let jobs: PostgresStorage<DrJob> =
        PostgresStorage::new_with_config(ctx.cloud.pool.clone(), config);
    let concurrency = ctx.settings.concurrency;
    let monitor = Monitor::new().register(
        WorkerBuilder::new(format!("dr-{}", Uuid::new_v4()))
            .concurrency(concurrency)
            .data(ctx)
            .backend(jobs)
            .build_fn(run_dr_job),
    );
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
        Ok(())
    };
    if let Err(e) = monitor.run_with_signal(stopped).await {
        tracing::warn!(error = %e, "DR workers stopped");
    }
}
