//! Scheduler benchmark: the cost of one scheduler tick over 100,000 schedules.
//!
//! Creates a scratch database (next to `SAFEHOLD_BENCH_DATABASE_URL`, default
//! the local Postgres), fills the schedules read model with hourly, daily and
//! every-N-minutes schedules whose start times are spread over an hour, and
//! times the scheduler's passes.

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use safehold_domain::schedule::{Day, DisabledWindow, Recurrence, RepeatUnit};
use safehold_jobs::scheduler::tick;

const SCHEDULES: usize = 100_000;

fn recurrence(rng: &mut impl Rng, base: DateTime<Utc>) -> Recurrence {
    let start = base + Duration::seconds(rng.gen_range(0..3600));
    let (every, unit) = match rng.gen_range(0..3) {
        0 => (1, RepeatUnit::Hours),
        1 => (1, RepeatUnit::Days),
        _ => (rng.gen_range(1..=6) * 10, RepeatUnit::Minutes),
    };
    let all = [
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
        Day::Sun,
    ];
    Recurrence {
        start,
        end: None,
        every,
        unit,
        weekdays: all.to_vec(),
        disabled_windows: if rng.gen_bool(0.3) {
            vec![DisabledWindow {
                day: None,
                from: chrono::NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
                to: chrono::NaiveTime::from_hms_opt(6, 0, 0).unwrap(),
            }]
        } else {
            vec![]
        },
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("SAFEHOLD_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = safehold_projections::db::create_scratch_database(&admin, "sh_bench").await?;
    let pool = safehold_projections::db::connect(&url, 4).await?;
    safehold_projections::db::migrate(&pool).await?;

    let mut rng = rand::thread_rng();
    let base = Utc::now() - Duration::days(1);
    let tenants: Vec<uuid::Uuid> = (0..1000).map(|_| uuid::Uuid::new_v4()).collect();
    for chunk in (0..SCHEDULES).collect::<Vec<_>>().chunks(10_000) {
        let mut tenant_ids = Vec::new();
        let mut ids = Vec::new();
        let mut recurrences = Vec::new();
        let mut positions = Vec::new();
        for i in chunk {
            tenant_ids.push(tenants[i % tenants.len()]);
            ids.push(uuid::Uuid::new_v4());
            recurrences.push(serde_json::to_value(recurrence(&mut rng, base))?);
            positions.push(*i as i64 + 1);
        }
        sqlx::query(
            "INSERT INTO schedules (tenant_id, schedule_id, owner_id, name, description, recurrence,
                    changed_position, created_at, updated_at)
             SELECT t, s, t, s::text, '', r, p, now(), now()
               FROM UNNEST($1::uuid[], $2::uuid[], $3::jsonb[], $4::bigint[]) AS x(t, s, r, p)",
        )
        .bind(&tenant_ids)
        .bind(&ids)
        .bind(&recurrences)
        .bind(&positions)
        .execute(&pool)
        .await?;
    }

    let now = Utc::now();
    let started = Instant::now();
    let first = tick(&pool, now).await?;
    let first_ms = ms(started);

    let mut idle = Vec::new();
    for _ in 1..=20 {
        // Same instant: the first tick already handled everything due.
        let started = Instant::now();
        let report = tick(&pool, now).await?;
        assert_eq!(report.fired, 0);
        idle.push(ms(started));
    }
    idle.sort_by(f64::total_cmp);

    // The steady state: the leader ticks every second.
    let mut steady = Vec::new();
    let mut steady_due = 0;
    for s in 1..=30 {
        let started = Instant::now();
        let report = tick(&pool, now + Duration::seconds(s)).await?;
        steady.push(ms(started));
        steady_due += report.fired;
    }
    steady.sort_by(f64::total_cmp);

    // After a minute without a tick: every schedule due in it fires at once.
    let started = Instant::now();
    let minute = tick(&pool, now + Duration::seconds(90)).await?;
    let minute_ms = ms(started);

    println!(
        "safehold scheduler benchmark ({SCHEDULES} schedules, 2 cores, Postgres on the same host)"
    );
    println!(
        "first tick (computes every schedule's next run): {first_ms:>8.1} ms ({} schedules)",
        first.synced
    );
    println!(
        "tick with nothing due:                           {:>8.1} ms median, {:.1} ms max",
        idle[idle.len() / 2],
        idle[idle.len() - 1]
    );
    println!(
        "tick every second (steady state):                {:>8.1} ms median, {:.1} ms max ({:.0} schedules due per tick)",
        steady[steady.len() / 2],
        steady[steady.len() - 1],
        steady_due as f64 / steady.len() as f64
    );
    println!(
        "tick after a minute without ticks:               {minute_ms:>8.1} ms ({} schedules due)",
        minute.fired
    );
    pool.close().await;
    safehold_projections::db::drop_database(&admin, &url).await?;
    Ok(())
}
