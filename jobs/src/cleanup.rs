//! The daily cleanup: once a day, at each organisation's cleanup time (in its
//! time zone), retention runs for every policy of the organisation (deleting
//! what expired, again where an earlier deletion failed), kept initial AMIs
//! replaced by a newer one are deleted, and the records of backups deleted
//! longer ago than the organisation's record retention are purged.
//!
//! Every `serve` and `worker` process plans: each minute it works out, per
//! organisation, the latest cleanup due (see
//! [`safehold_domain::cleanup::CleanupClock`]) and claims its local day in
//! `cleanup_runs`, enqueueing the cleanup job in the same transaction. A day
//! is claimed once whichever processes plan, and the job id is derived from
//! the organisation and day, so each organisation's cleanup runs once a day;
//! after downtime only the latest missed day runs. The job runs on the
//! PostgreSQL job queue, so a worker that dies mid-cleanup leaves it to
//! another.

use std::collections::HashMap;
use std::time::Duration;

use apalis::prelude::*;
use apalis_sql::postgres::PostgresStorage;
use chrono::{DateTime, NaiveDate, Utc};
use safehold_domain::backup::{Backup, BackupCommand};
use safehold_domain::cleanup::{is_unclaimed, CleanupClock};
use safehold_domain::policy::Policy;
use safehold_domain::settings::TenantSettings;
use safehold_domain::tenant::TenantEvent;
use safehold_domain::{DomainError, TenantId};
use safehold_projections::dispatch::enqueue;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::backup::{load, BackupContext};
use crate::commands::{execute, system_metadata};
use crate::retention::{release_replaced_initial_amis, retain_policy, RetentionReport};
use crate::rounds::run_locked;

/// The job queue of daily cleanups.
pub const CLEANUP_QUEUE: &str = "safehold::cleanup";

/// How often each process looks for cleanups due.
const PLAN_EVERY: Duration = Duration::from_secs(60);

/// Records purged per pass at most (the rest go in the next one).
const PURGE_BATCH: i64 = 10_000;

/// One organisation's cleanup of one (local) day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupJob {
    pub tenant_id: Uuid,
    pub day: NaiveDate,
    /// When it was due.
    pub due: DateTime<Utc>,
}

/// The queue key of an organisation's cleanup of `day`: the same whoever
/// enqueues it.
pub fn cleanup_job_key(tenant: Uuid, day: NaiveDate) -> Uuid {
    Uuid::new_v5(&tenant, format!("cleanup-{day}").as_bytes())
}

/// Each organisation's current general settings, from its events (the
/// latest `TenantCreated` or `SettingsUpdated`); one organisation when
/// `tenant` is given.
pub async fn tenant_settings(
    pool: &PgPool,
    tenant: Option<Uuid>,
) -> anyhow::Result<Vec<(Uuid, TenantSettings)>> {
    let rows: Vec<(Uuid, serde_json::Value)> = sqlx::query_as(
        "SELECT DISTINCT ON (aggregate_id) tenant_id, payload::jsonb
           FROM events
          WHERE aggregate_type = 'tenant' AND event_type IN ('TenantCreated', 'SettingsUpdated')
            AND ($1::uuid IS NULL OR tenant_id = $1)
          ORDER BY aggregate_id, sequence DESC",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(
            |(tenant, payload)| match serde_json::from_value::<TenantEvent>(payload) {
                Ok(TenantEvent::TenantCreated { settings, .. })
                | Ok(TenantEvent::SettingsUpdated { settings }) => Some((tenant, settings)),
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "unreadable organisation settings");
                    None
                }
            },
        )
        .collect())
}

/// Claims and enqueues the cleanups due at `now` that no process has
/// claimed yet. Returns the jobs this call enqueued.
pub async fn plan(pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<Vec<CleanupJob>> {
    let claimed: HashMap<Uuid, NaiveDate> =
        sqlx::query_as::<_, (Uuid, NaiveDate)>("SELECT tenant_id, last_day FROM cleanup_runs")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let mut enqueued = Vec::new();
    for (tenant, settings) in tenant_settings(pool, None).await? {
        let Some(clock) = CleanupClock::parse(&settings.time_zone, &settings.cleanup_time) else {
            tracing::warn!(%tenant, "invalid cleanup time or time zone");
            continue;
        };
        let due = clock.latest_at_or_before(now);
        if !is_unclaimed(claimed.get(&tenant).copied(), &due) {
            continue;
        }
        let mut tx = pool.begin().await?;
        // Only the first process to claim the day gets a row back.
        let won: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO cleanup_runs (tenant_id, last_day, last_due, claimed_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id) DO UPDATE
                SET last_day = EXCLUDED.last_day, last_due = EXCLUDED.last_due,
                    claimed_at = EXCLUDED.claimed_at
              WHERE cleanup_runs.last_day < EXCLUDED.last_day
             RETURNING tenant_id",
        )
        .bind(tenant)
        .bind(due.day)
        .bind(due.at)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if won.is_some() {
            let job = CleanupJob {
                tenant_id: tenant,
                day: due.day,
                due: due.at,
            };
            enqueue(
                &mut tx,
                CLEANUP_QUEUE,
                cleanup_job_key(tenant, due.day),
                &job,
                due.at,
            )
            .await?;
            enqueued.push(job);
        }
        tx.commit().await?;
    }
    Ok(enqueued)
}

/// What one organisation's cleanup did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Policies whose retention ran.
    pub policies: usize,
    pub retention: RetentionReport,
    /// Records of deleted backups purged.
    pub purged: usize,
}

/// The cleanup of one organisation at `now`. AWS failures are reported
/// (and retried by the next cleanup); errors are the database's.
pub async fn clean_tenant(
    ctx: &BackupContext,
    tenant: TenantId,
    now: DateTime<Utc>,
) -> anyhow::Result<CleanupReport> {
    let pool = &ctx.cloud.pool;
    let meta = system_metadata(tenant, "cleanup");
    let settings = tenant_settings(pool, Some(tenant.0))
        .await?
        .into_iter()
        .next()
        .map(|(_, s)| s)
        .unwrap_or_default();
    let mut report = CleanupReport::default();

    let policies: Vec<Uuid> = sqlx::query_scalar(
        "SELECT policy_id FROM policies WHERE tenant_id = $1 ORDER BY policy_id",
    )
    .bind(tenant.0)
    .fetch_all(pool)
    .await?;
    for policy_id in policies {
        let Some(policy) = load::<Policy>(pool, tenant.0, policy_id)
            .await?
            .state
            .filter(|p| !p.removed)
        else {
            continue;
        };
        let done = retain_policy(
            ctx,
            &meta,
            tenant.0,
            policy.id,
            policy.settings.generations,
            None,
            now,
        )
        .await?;
        report.policies += 1;
        report.retention.deleted += done.deleted;
        report.retention.failures.extend(done.failures);
    }
    let released = release_replaced_initial_amis(ctx, &meta, tenant.0, now).await?;
    report.retention.replaced_amis += released.replaced_amis;
    report.retention.failures.extend(released.failures);

    report.purged = purge_records(pool, &meta, tenant, &settings, now).await?;
    safehold_projections::runtime::notify_committed(pool).await;
    Ok(report)
}

/// Purges the records of backups whose AWS objects have all been gone for
/// the organisation's record retention (frozen ones never).
async fn purge_records(
    pool: &PgPool,
    meta: &safehold_domain::CommandMetadata,
    tenant: TenantId,
    settings: &TenantSettings,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let days = settings.record_retention_days;
    let cutoff = now - chrono::Duration::days(i64::from(days));
    let candidates: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT b.backup_id, b.deleted_at FROM backups b
          WHERE b.tenant_id = $1 AND b.deleted_at IS NOT NULL AND b.deleted_at <= $2 AND NOT b.frozen
            AND NOT EXISTS (SELECT 1 FROM backup_snapshots s
                             WHERE s.tenant_id = b.tenant_id AND s.backup_id = b.backup_id
                               AND (s.kept OR s.deleted_at IS NULL OR s.deleted_at > $2))
          ORDER BY b.deleted_at
          LIMIT $3",
    )
    .bind(tenant.0)
    .bind(cutoff)
    .bind(PURGE_BATCH)
    .fetch_all(pool)
    .await?;
    let mut purged = 0;
    for (backup, deleted_at) in candidates {
        let command = BackupCommand::Purge {
            now,
            record_retention_days: days,
            recorded_deleted_at: Some(deleted_at),
        };
        match execute::<Backup>(pool, meta, backup, command).await {
            Ok(()) => purged += 1,
            // The read model was behind the backup: not purgeable yet.
            Err(cqrs_es::AggregateError::UserError(
                e @ (DomainError::Conflict { .. } | DomainError::NotFound(_)),
            )) => {
                tracing::debug!(%backup, reason = %e, "record not purged");
            }
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        }
    }
    Ok(purged)
}

fn lock_key(tenant: Uuid) -> i64 {
    let bytes = Uuid::new_v5(&tenant, b"cleanup").into_bytes();
    i64::from_be_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

async fn run_cleanup_job(job: CleanupJob, ctx: Data<BackupContext>) -> Result<(), Error> {
    let pool = &ctx.cloud.pool;
    // One cleanup of an organisation at a time (a job run again after its
    // worker was taken for dead leaves a live one be).
    let cleaning = clean_tenant(&ctx, TenantId(job.tenant_id), Utc::now());
    let Some(report) = run_locked(pool, lock_key(job.tenant_id), cleaning).await? else {
        return Ok(());
    };
    tracing::info!(
        tenant = %job.tenant_id,
        day = %job.day,
        policies = report.policies,
        deleted = report.retention.deleted,
        replaced_amis = report.retention.replaced_amis,
        failures = report.retention.failures.len(),
        purged = report.purged,
        "daily cleanup done"
    );
    Ok(())
}

/// Runs the cleanup workers until `stop`.
pub async fn run_workers(ctx: BackupContext, mut stop: watch::Receiver<bool>) {
    let storage: PostgresStorage<CleanupJob> = PostgresStorage::new_with_config(
        ctx.cloud.pool.clone(),
        apalis_sql::Config::new(CLEANUP_QUEUE)
            .set_poll_interval(Duration::from_secs(5))
            .set_keep_alive(ctx.settings.orphaned_after / 4)
            .set_reenqueue_orphaned_after(ctx.settings.orphaned_after),
    );
    let monitor = Monitor::new().register(
        WorkerBuilder::new(format!("cleanup-{}", Uuid::new_v4()))
            .concurrency(2)
            .data(ctx)
            .backend(storage)
            .build_fn(run_cleanup_job),
    );
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
        Ok(())
    };
    if let Err(e) = monitor.run_with_signal(stopped).await {
        tracing::warn!(error = %e, "cleanup workers stopped");
    }
}

/// Plans cleanups every minute until `stop`.
pub async fn run_planner(pool: PgPool, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(PLAN_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match plan(&pool, Utc::now()).await {
            Ok(jobs) if !jobs.is_empty() => {
                tracing::info!(organisations = jobs.len(), "daily cleanups enqueued")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "planning the daily cleanups failed"),
        }
    }
}

/// The daily cleanup: planner and workers, until `stop`.
pub async fn run(ctx: BackupContext, stop: watch::Receiver<bool>) {
    tokio::join!(
        run_planner(ctx.cloud.pool.clone(), stop.clone()),
        run_workers(ctx, stop)
    );
}
