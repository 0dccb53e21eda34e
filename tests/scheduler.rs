//! The scheduler against a real Postgres: exactly one backup per policy and
//! occurrence, catch-up after downtime, and leader failover between two
//! processes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use safehold_domain::policy::{
    Policy, PolicyCommand, PolicySettings, ResourceKind, Target, TargetKey,
};
use safehold_domain::schedule::{Day, Recurrence, RepeatUnit, Schedule, ScheduleCommand};
use safehold_domain::{TenantId, UserId};
use safehold_jobs::commands::{execute, system_metadata};
use safehold_jobs::scheduler::tick;
use safehold_projections::policies;
use sqlx::PgPool;
use uuid::Uuid;

const ALL_DAYS: [Day; 7] = [
    Day::Mon,
    Day::Tue,
    Day::Wed,
    Day::Thu,
    Day::Fri,
    Day::Sat,
    Day::Sun,
];

fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 7, h, m, s).unwrap()
}

struct Org {
    pool: PgPool,
    tenant: TenantId,
    owner: UserId,
}

impl Org {
    async fn new(pool: PgPool) -> Self {
        Self {
            pool,
            tenant: TenantId(Uuid::new_v4()),
            owner: UserId(Uuid::new_v4()),
        }
    }

    async fn schedule(&self, start: DateTime<Utc>, every: u32, unit: RepeatUnit) -> Uuid {
        let id = Uuid::new_v4();
        let recurrence = Recurrence {
            start,
            end: None,
            every,
            unit,
            weekdays: ALL_DAYS.to_vec(),
            disabled_windows: vec![],
        };
        let command = ScheduleCommand::Create {
            id,
            tenant_id: self.tenant,
            owner_id: self.owner,
            name: format!("s-{id}"),
            description: String::new(),
            recurrence,
        };
        execute::<Schedule>(&self.pool, &self.meta(), id, command)
            .await
            .unwrap();
        id
    }

    fn meta(&self) -> safehold_domain::CommandMetadata {
        system_metadata(self.tenant, "test")
    }

    async fn policy(&self, schedules: &[Uuid]) -> Uuid {
        let id = Uuid::new_v4();
        let commands = [
            PolicyCommand::Create {
                id,
                tenant_id: self.tenant,
                owner_id: self.owner,
                account_id: Uuid::new_v4(),
                name: format!("p-{id}"),
                settings: PolicySettings::default(),
                enabled: true,
                from_tag_scan: false,
            },
            PolicyCommand::PutTarget(Target {
                key: TargetKey {
                    kind: ResourceKind::EbsVolume,
                    region: "us-east-1".into(),
                    resource_id: "vol-1".into(),
                },
                instance: None,
            }),
        ]
        .into_iter()
        .chain(schedules.iter().map(|s| PolicyCommand::AttachSchedule(*s)));
        for command in commands {
            self.policy_command(id, command).await;
        }
        id
    }

    async fn policy_command(&self, policy: Uuid, command: PolicyCommand) {
        execute::<Policy>(&self.pool, &self.meta(), policy, command)
            .await
            .unwrap();
    }

    async fn project(&self) {
        common::project_everything(&self.pool).await;
    }

    async fn tick(&self, now: DateTime<Utc>) {
        self.project().await;
        tick(&self.pool, now).await.unwrap();
        self.project().await;
    }

    /// Occurrences of the policy's backups, in start order.
    async fn backups(&self, policy: Uuid) -> Vec<Option<DateTime<Utc>>> {
        policies::backups_of_policy(&self.pool, self.tenant, policy)
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.occurrence)
            .collect()
    }

    async fn finish_running(&self, policy: Uuid) {
        let running = policies::find_policy(&self.pool, self.tenant, policy)
            .await
            .unwrap()
            .unwrap()
            .running_backup_id
            .expect("a backup is running");
        self.policy_command(
            policy,
            PolicyCommand::FinishBackup {
                backup_id: running,
                succeeded: true,
            },
        )
        .await;
    }
}

#[tokio::test]
async fn overlapping_schedules_on_one_policy_start_one_backup() {
    let (_, pool) = common::fresh_database().await;
    let org = Org::new(pool).await;
    let hourly = org.schedule(t(1, 0, 0), 1, RepeatUnit::Hours).await;
    let every_half_hour = org.schedule(t(1, 0, 0), 30, RepeatUnit::Minutes).await;
    let policy = org.policy(&[hourly, every_half_hour]).await;

    org.tick(t(0, 59, 0)).await;
    assert!(org.backups(policy).await.is_empty(), "nothing due yet");
    org.tick(t(1, 0, 1)).await;
    org.tick(t(1, 0, 2)).await;
    assert_eq!(org.backups(policy).await, vec![Some(t(1, 0, 0))]);

    // 01:30 belongs to one schedule only, and the 01:00 backup still runs:
    // the occurrence is skipped and recorded, not queued.
    org.tick(t(1, 30, 1)).await;
    assert_eq!(org.backups(policy).await.len(), 1);
    let skipped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE event_type = 'OccurrenceSkipped' AND description LIKE '%still running%'",
    )
    .fetch_one(&org.pool)
    .await
    .unwrap();
    assert_eq!(skipped, 1);

    org.finish_running(policy).await;
    org.tick(t(2, 0, 1)).await;
    assert_eq!(
        org.backups(policy).await,
        vec![Some(t(1, 0, 0)), Some(t(2, 0, 0))]
    );
}

#[tokio::test]
async fn a_missed_run_is_caught_up_once_after_downtime() {
    let (_, pool) = common::fresh_database().await;
    let org = Org::new(pool).await;
    let schedule = org.schedule(t(1, 0, 0), 10, RepeatUnit::Minutes).await;
    let policy = org.policy(&[schedule]).await;
    org.tick(t(0, 50, 0)).await;

    // Down from 00:50 to 03:05: twelve occurrences were missed.
    org.tick(t(3, 5, 0)).await;
    assert_eq!(org.backups(policy).await, vec![Some(t(3, 0, 0))]);
    org.finish_running(policy).await;
    org.tick(t(3, 6, 0)).await;
    assert_eq!(org.backups(policy).await.len(), 1, "caught up only once");
    org.tick(t(3, 10, 0)).await;
    assert_eq!(
        org.backups(policy).await,
        vec![Some(t(3, 0, 0)), Some(t(3, 10, 0))]
    );
}

#[tokio::test]
async fn disabled_policies_and_deleted_schedules_start_nothing() {
    let (_, pool) = common::fresh_database().await;
    let org = Org::new(pool).await;
    let schedule = org.schedule(t(1, 0, 0), 1, RepeatUnit::Hours).await;
    let enabled = org.policy(&[schedule]).await;
    let disabled = org.policy(&[schedule]).await;
    org.policy_command(disabled, PolicyCommand::SetEnabled(false))
        .await;
    org.tick(t(0, 30, 0)).await;
    org.tick(t(1, 0, 1)).await;
    assert_eq!(org.backups(enabled).await.len(), 1);
    assert!(org.backups(disabled).await.is_empty());

    org.finish_running(enabled).await;
    for policy in [enabled, disabled] {
        org.policy_command(policy, PolicyCommand::DetachSchedule(schedule))
            .await;
    }
    execute::<Schedule>(&org.pool, &org.meta(), schedule, ScheduleCommand::Remove)
        .await
        .unwrap();
    org.tick(t(2, 0, 1)).await;
    assert_eq!(org.backups(enabled).await.len(), 1);
    let remembered: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduler_due")
        .fetch_one(&org.pool)
        .await
        .unwrap();
    assert_eq!(remembered, 0, "a deleted schedule is forgotten");
}

fn worker(database_url: &str) -> std::process::Child {
    let data_dir = std::env::temp_dir().join(format!("safehold-worker-{}", Uuid::new_v4()));
    std::process::Command::new(env!("CARGO_BIN_EXE_safehold"))
        .arg("worker")
        .env("DATABASE_URL", database_url)
        .env("SAFEHOLD_DATA_DIR", data_dir)
        .env("SAFEHOLD_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start a worker")
}

/// Occurrences each policy handled (backup started or run skipped), from the event log.
async fn handled_occurrences(pool: &PgPool) -> BTreeMap<String, Vec<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, coalesce(payload->'BackupStarted'->'trigger'->>'occurrence',
                                       payload->'OccurrenceSkipped'->>'occurrence')
           FROM events
          WHERE event_type IN ('BackupStarted', 'OccurrenceSkipped')
          ORDER BY global_position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (policy, occurrence) in rows {
        out.entry(policy).or_default().push(occurrence);
    }
    out
}

async fn leader_pid(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_second_scheduler_takes_over_when_the_leader_dies_losing_and_doubling_nothing() {
    let (url, pool) = common::fresh_database().await;
    let org = Org::new(pool.clone()).await;
    // Twelve policies, each on its own every-minute schedule, staggered by
    // two seconds so that some run is due every other second.
    let first = Utc::now()
        .with_timezone(&Utc)
        .checked_add_signed(chrono::Duration::seconds(8))
        .unwrap();
    let first = first - chrono::Duration::nanoseconds(first.timestamp_subsec_nanos() as i64);
    let mut expected_first_runs = Vec::new();
    for i in 0..12 {
        let start = first + chrono::Duration::seconds(2 * i);
        let schedule = org.schedule(start, 1, RepeatUnit::Minutes).await;
        org.policy(&[schedule]).await;
        expected_first_runs.push(start);
    }
    org.project().await;

    let mut a = worker(&url);
    let mut b = worker(&url);
    // Wait for a leader, then kill it (SIGKILL: no clean shutdown) half-way
    // through the first round of runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = leader_pid(&pool).await.expect("a leader");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let handled_before_kill: usize = handled_occurrences(&pool)
        .await
        .values()
        .map(Vec::len)
        .sum();
    let (leader, follower) = if a_is_leader(&pool, &mut a).await {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    leader.kill().unwrap();
    leader.wait().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let after = loop {
        if let Some(pid) = leader_pid(&pool).await.filter(|p| *p != before) {
            break pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "nobody took over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(before, after);

    // Run until every policy's second occurrence is due and handled.
    let last_second_run = *expected_first_runs.last().unwrap() + chrono::Duration::seconds(60);
    let wait = (last_second_run - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(5);
    tokio::time::sleep(wait).await;
    follower.kill().unwrap();
    follower.wait().unwrap();

    let handled = handled_occurrences(&pool).await;
    assert!(handled_before_kill > 0, "the first leader handled runs");
    assert_eq!(handled.len(), 12, "every policy ran: {handled:?}");
    for (policy, occurrences) in &handled {
        assert_eq!(
            occurrences.len(),
            2,
            "{policy}: its two occurrences, each once: {occurrences:?}"
        );
        assert_ne!(occurrences[0], occurrences[1], "{policy}: no doubles");
    }
}

/// Whether worker `a` holds the leader lock: sessions are named after their process.
async fn a_is_leader(pool: &PgPool, a: &mut std::process::Child) -> bool {
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    holder == Some(format!("safehold/{}", a.id()))
}
