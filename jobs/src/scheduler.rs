//! The scheduler: one leader at a time turns due schedule occurrences into
//! backups of the policies attached to them.
//!
//! Leadership is a Postgres advisory lock held on a dedicated connection:
//! when the leader's process dies, its connection closes, the lock is
//! released, and a follower polling every second takes over.
//!
//! The scheduler keeps, per schedule, the instant it is next due
//! (`scheduler_due`). Each tick it first follows schedule changes (by event
//! position), then fires what is due. Firing is at-least-once and the Policy
//! aggregate makes it exactly-once: it ignores an occurrence it has already
//! handled, skips (and records) one that comes while a backup runs, and the
//! backup id of an occurrence is derived from it. After downtime only the
//! latest missed occurrence of each schedule is fired.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use safehold_domain::policy::{scheduled_backup_id, Policy, PolicyCommand, Trigger};
use safehold_domain::schedule::Recurrence;
use safehold_domain::TenantId;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::commands::{execute, system_metadata};

/// Advisory lock key of the scheduler leader ("safehold" in ASCII, truncated).
const LEADER_LOCK: i64 = 0x7361_6665_686f_6c64;
const TICK: Duration = Duration::from_secs(1);
/// Rows handled per query, so one tick's memory stays bounded.
const BATCH: i64 = 2000;
/// Policy commands in flight at once while firing.
const FIRE_CONCURRENCY: usize = 16;

/// What one tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    /// Schedules whose next due time was (re)computed after a change.
    pub synced: usize,
    /// Due schedules handled.
    pub fired: usize,
    /// Policy start commands issued.
    pub starts: usize,
}

/// Runs until `stop`: waits for leadership, then ticks every second while it
/// holds it.
pub async fn run(pool: PgPool, mut stop: watch::Receiver<bool>) {
    loop {
        match PgConnection::connect_with(&pool.connect_options()).await {
            Ok(mut lock_conn) => {
                if let Err(e) = follow_or_lead(&pool, &mut lock_conn, &mut stop).await {
                    tracing::warn!(error = %e, "scheduler lost its database connection");
                }
            }
            Err(e) => tracing::warn!(error = %e, "scheduler cannot connect"),
        }
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn follow_or_lead(
    pool: &PgPool,
    lock_conn: &mut PgConnection,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut leading = false;
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        if *stop.borrow() {
            return Ok(());
        }
        if !leading {
            leading = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut *lock_conn)
                .await?;
            if !leading {
                continue;
            }
            tracing::info!("this process now leads the scheduler");
        } else {
            // A leader whose lock connection is gone is no longer the leader.
            sqlx::query("SELECT 1").execute(&mut *lock_conn).await?;
        }
        if let Err(e) = tick(pool, Utc::now()).await {
            tracing::warn!(error = %e, "scheduler tick failed");
        }
    }
}

/// One scheduler pass at `now`.
pub async fn tick(pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<TickReport> {
    let mut report = TickReport::default();
    loop {
        let n = sync_changes(pool, now).await?;
        report.synced += n;
        if n < BATCH as usize {
            break;
        }
    }
    loop {
        let (fired, starts) = fire_due(pool, now).await?;
        report.fired += fired;
        report.starts += starts;
        if fired < BATCH as usize {
            break;
        }
    }
    Ok(report)
}

fn zone(name: &str) -> Tz {
    name.parse().unwrap_or(Tz::UTC)
}

/// Recomputes the next due time of schedules created or changed since the
/// last pass.
async fn sync_changes(pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let seen: i64 = sqlx::query_scalar("SELECT seen_position FROM scheduler_cursor")
        .fetch_optional(pool)
        .await?
        .unwrap_or(0);
    let rows: Vec<(Uuid, Uuid, serde_json::Value, i64, String)> = sqlx::query_as(
        "SELECT s.tenant_id, s.schedule_id, s.recurrence, s.changed_position, coalesce(t.time_zone, 'UTC')
           FROM schedules s LEFT JOIN tenants t ON t.tenant_id = s.tenant_id
          WHERE s.changed_position > $1
          ORDER BY s.changed_position
          LIMIT $2",
    )
    .bind(seen)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let Some(last) = rows.last().map(|r| r.3) else {
        return Ok(0);
    };
    let mut tenants = Vec::with_capacity(rows.len());
    let mut schedules = Vec::with_capacity(rows.len());
    let mut due = Vec::with_capacity(rows.len());
    for (tenant, schedule, recurrence, _, tz) in &rows {
        let next = serde_json::from_value::<Recurrence>(recurrence.clone())
            .ok()
            .and_then(|r| r.next_after(zone(tz), now - chrono::Duration::seconds(1)));
        tenants.push(*tenant);
        schedules.push(*schedule);
        due.push(next);
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO scheduler_due (tenant_id, schedule_id, next_due)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[])
         ON CONFLICT (tenant_id, schedule_id) DO UPDATE SET next_due = EXCLUDED.next_due",
    )
    .bind(&tenants)
    .bind(&schedules)
    .bind(&due)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO scheduler_cursor (singleton, seen_position) VALUES (true, $1)
         ON CONFLICT (singleton) DO UPDATE SET seen_position = EXCLUDED.seen_position",
    )
    .bind(last)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows.len())
}

struct Due {
    tenant: Uuid,
    schedule: Uuid,
    next_due: DateTime<Utc>,
    recurrence: Option<serde_json::Value>,
    tz: String,
    policies: Vec<Uuid>,
}

/// Fires schedules due at `now` and moves each to its next occurrence.
/// Returns (schedules handled, start commands issued).
async fn fire_due(pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<(usize, usize)> {
    type Row = (
        Uuid,
        Uuid,
        DateTime<Utc>,
        Option<serde_json::Value>,
        Option<String>,
        Vec<Uuid>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT d.tenant_id, d.schedule_id, d.next_due, s.recurrence, t.time_zone,
                coalesce(array_agg(p.policy_id) FILTER (WHERE p.policy_id IS NOT NULL), '{}')
           FROM scheduler_due d
           LEFT JOIN schedules s ON s.tenant_id = d.tenant_id AND s.schedule_id = d.schedule_id
           LEFT JOIN tenants t ON t.tenant_id = d.tenant_id
           LEFT JOIN policy_schedules ps ON ps.tenant_id = d.tenant_id AND ps.schedule_id = d.schedule_id
           LEFT JOIN policies p ON p.tenant_id = ps.tenant_id AND p.policy_id = ps.policy_id AND p.enabled
          WHERE d.next_due <= $1
          GROUP BY d.tenant_id, d.schedule_id, d.next_due, s.recurrence, t.time_zone
          ORDER BY d.next_due
          LIMIT $2",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let fired = rows.len();
    let due: Vec<Due> = rows
        .into_iter()
        .map(
            |(tenant, schedule, next_due, recurrence, tz, policies)| Due {
                tenant,
                schedule,
                next_due,
                recurrence,
                tz: tz.unwrap_or_else(|| "UTC".into()),
                policies,
            },
        )
        .collect();

    let mut starts = Vec::new();
    let mut forget = Vec::new();
    let mut moves = Vec::with_capacity(due.len());
    for d in &due {
        let recurrence = d
            .recurrence
            .clone()
            .and_then(|r| serde_json::from_value::<Recurrence>(r).ok());
        let Some(recurrence) = recurrence else {
            // The schedule was deleted: forget it.
            forget.push((d.tenant, d.schedule));
            continue;
        };
        let tz = zone(&d.tz);
        // After downtime only the latest missed occurrence runs.
        let occurrence = recurrence
            .latest_at_or_before(tz, now)
            .filter(|o| *o >= d.next_due)
            .unwrap_or(d.next_due);
        for policy in &d.policies {
            starts.push((d.tenant, *policy, d.schedule, occurrence));
        }
        moves.push((d.tenant, d.schedule, recurrence.next_after(tz, now)));
    }

    let issued = starts.len();
    let failures: Vec<_> = futures::stream::iter(starts)
        .map(|(tenant, policy, schedule, occurrence)| async move {
            let meta = system_metadata(TenantId(tenant), "scheduler");
            let command = PolicyCommand::StartBackup {
                backup_id: scheduled_backup_id(policy, occurrence),
                trigger: Trigger::Scheduled {
                    schedule_id: schedule,
                    occurrence,
                },
            };
            let outcome = execute::<Policy>(pool, &meta, policy, command).await;
            (tenant, schedule, policy, outcome)
        })
        .buffer_unordered(FIRE_CONCURRENCY)
        .filter_map(|(tenant, schedule, policy, outcome)| async move {
            match outcome {
                Ok(()) => None,
                // The policy was deleted meanwhile: nothing to start.
                Err(cqrs_es::AggregateError::UserError(
                    safehold_domain::DomainError::NotFound(_),
                )) => None,
                Err(e) => {
                    tracing::warn!(%policy, error = %e, "could not start a scheduled backup");
                    Some((tenant, schedule))
                }
            }
        })
        .collect()
        .await;
    if issued > 0 {
        safehold_projections::runtime::notify_committed(pool).await;
    }

    // A schedule whose start failed stays due and is fired again next tick;
    // policies that already started it ignore the repeat.
    let moves: Vec<_> = moves
        .into_iter()
        .filter(|(t, s, _)| !failures.contains(&(*t, *s)))
        .collect();
    let (gone_tenants, gone_ids): (Vec<Uuid>, Vec<Uuid>) = forget.into_iter().unzip();
    sqlx::query(
        "DELETE FROM scheduler_due d USING UNNEST($1::uuid[], $2::uuid[]) AS g(tenant_id, schedule_id)
          WHERE d.tenant_id = g.tenant_id AND d.schedule_id = g.schedule_id",
    )
    .bind(&gone_tenants)
    .bind(&gone_ids)
    .execute(pool)
    .await?;
    let tenants: Vec<Uuid> = moves.iter().map(|m| m.0).collect();
    let ids: Vec<Uuid> = moves.iter().map(|m| m.1).collect();
    let next: Vec<Option<DateTime<Utc>>> = moves.iter().map(|m| m.2).collect();
    sqlx::query(
        "UPDATE scheduler_due d SET next_due = n.next_due
           FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[]) AS n(tenant_id, schedule_id, next_due)
          WHERE d.tenant_id = n.tenant_id AND d.schedule_id = n.schedule_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .bind(&next)
    .execute(pool)
    .await?;
    Ok((fired, issued))
}
