//! Backup benchmark: one policy of many instances with two volumes each,
//! backed up against the AWS emulator. Prints the figures it measures.
//!
//!   cargo build --profile bench-quick --bin backup-bench
//!   target/bench-quick/backup-bench [--instances 1000] [--pending-polls 2]
//!
//! Uses the Postgres at SAFEHOLD_BENCH_DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres) for a scratch database,
//! dropped at the end, and starts its own emulator.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::web;
use safehold_api::{AppState, Config};
use safehold_cloud::emulator::Emulator;
use safehold_jobs::backup::{BackupContext, BackupSettings, CREATE_CONCURRENCY};
use serde_json::{json, Value};
use uuid::Uuid;

const PASSWORD: &str = "Bench-Marking-42!";
const REGION: &str = "us-east-1";
const VOLUMES_PER_INSTANCE: usize = 2;

struct Args {
    instances: usize,
    pending_polls: u32,
}

fn args() -> Args {
    let mut a = Args {
        instances: 1000,
        pending_polls: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<usize>().ok());
        match (flag.as_str(), value) {
            ("--instances", Some(v)) if v > 0 => a.instances = v,
            ("--pending-polls", Some(v)) => a.pending_polls = v as u32,
            _ => {
                eprintln!("usage: backup-bench [--instances N] [--pending-polls N]");
                std::process::exit(2);
            }
        }
    }
    a
}

/// Peak resident memory of this process so far (VmHWM), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {body}");
        Ok(body)
    }
}

fn total(calls: &std::collections::BTreeMap<String, u64>) -> u64 {
    calls.values().sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SAFEHOLD_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let admin = std::env::var("SAFEHOLD_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = safehold_projections::db::create_scratch_database(&admin, "sh_bench").await?;
    let pool = safehold_projections::db::connect(&url, 30).await?;
    safehold_projections::db::migrate(&pool).await?;
    let emulator = Emulator::start(None).await?;
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let volumes = a.instances * VOLUMES_PER_INSTANCE;
    println!(
        "safehold backup benchmark ({build} build, {} instances x {VOLUMES_PER_INSTANCE} volumes = {volumes} volumes, \
         snapshots pending for {} polls, {} cores, emulator and Postgres on the same host)",
        a.instances,
        a.pending_polls,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let state = web::Data::new(AppState::new(
        pool.clone(),
        Config::ephemeral(url.clone(), Some(emulator.endpoint.clone())),
    ));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(safehold_api::server::serve(state.clone(), listener)?);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(safehold_projections::Projector::new(pool.clone()).run(stop_rx.clone()));

    let signup = safehold_api::routes::signup::SignupRequest {
        organisation: "bench".into(),
        name: "Bench".into(),
        time_zone: None,
        username: "root".into(),
        email: None,
        password: PASSWORD.into(),
    };
    safehold_api::routes::signup::sign_up(&state, signup, "setup".into())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"organisation": "bench", "username": "root", "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let api = Api {
        http,
        base,
        token: login["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };

    // The estate, the account, and a policy over every instance.
    let setup = Instant::now();
    let target = safehold_cloud::Target {
        endpoint: Some(emulator.endpoint.clone()),
        region: REGION.into(),
    };
    let instances =
        safehold_cloud::fleet::launch(&target, a.instances, VOLUMES_PER_INSTANCE - 1).await?;
    let account = api
        .post(
            "/v1/accounts",
            json!({"name": "fleet", "number": "123456789012", "type": "backup",
                   "access": {"method": "access_keys", "access_key_id": "AKIAEMULATORKEY00001",
                              "secret_access_key": "bench-secret"},
                   "scan": {"enabled": true, "regions": [REGION]}}),
        )
        .await?;
    let account = account["id"].as_str().unwrap_or_default().to_string();
    api.post(&format!("/v1/accounts/{account}/discover"), json!({}))
        .await?;
    let policy = api
        .post(
            "/v1/policies",
            json!({"name": "fleet", "account_id": account, "generations": 2}),
        )
        .await?;
    let policy = policy["id"].as_str().unwrap_or_default().to_string();
    for instance in &instances {
        api.post(
            &format!("/v1/policies/{policy}/targets"),
            json!({"type": "ec2_instance", "region": REGION, "resource_id": instance}),
        )
        .await?;
    }
    println!(
        "setup (instances, account, discovery, policy of {} targets): {:.1} s",
        instances.len(),
        setup.elapsed().as_secs_f64()
    );

    // The emulator's own floor: one CreateSnapshots per instance, issued as
    // many at a time as a backup round does.
    emulator.reset_calls().await?;
    let floor =
        safehold_cloud::fleet::create_snapshots_floor(&target, &instances, CREATE_CONCURRENCY)
            .await?;
    let floor_calls = total(&emulator.calls().await?);
    println!(
        "emulator floor: {floor_calls} CreateSnapshots calls, {CREATE_CONCURRENCY} at a time: {:.2} s",
        floor.as_secs_f64()
    );

    // The backup, driven by the real workers.
    emulator
        .configure(&format!(r#"{{"pending_polls": {}}}"#, a.pending_polls))
        .await?;
    let rss_before = peak_rss_mb();
    tokio::spawn(safehold_jobs::backup::run_workers(
        BackupContext {
            cloud: state.cloud.clone(),
            settings: BackupSettings {
                poll_every: Duration::from_millis(200),
                ..BackupSettings::default()
            },
        },
        stop_rx,
    ));
    emulator.reset_calls().await?;
    let started = Instant::now();
    let run = api
        .post(&format!("/v1/policies/{policy}/run"), json!({}))
        .await?;
    let backup_id: Uuid = run["backup_id"].as_str().unwrap_or_default().parse()?;
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM tenants LIMIT 1")
        .fetch_one(&pool)
        .await?;
    let stream = format!("{tenant}:{backup_id}");
    // The event log is the record: a target's snapshots are taken once its
    // SnapshotsTaken event is appended, the backup is done at BackupCompleted.
    // The monitor (a read model) follows the log a little later.
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut all_taken: Option<Duration> = None;
    let mut finished: Option<(Duration, String)> = None;
    let shown = loop {
        if all_taken.is_none() {
            let recorded: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events WHERE aggregate_type = 'backup' AND aggregate_id = $1
                    AND event_type = 'SnapshotsTaken'",
            )
            .bind(&stream)
            .fetch_one(&pool)
            .await?;
            if recorded as usize >= instances.len() {
                all_taken = Some(started.elapsed());
            }
        }
        if finished.is_none() {
            let status: Option<String> = sqlx::query_scalar(
                "SELECT payload->'BackupCompleted'->>'status' FROM events
                  WHERE aggregate_type = 'backup' AND aggregate_id = $1
                    AND event_type = 'BackupCompleted'",
            )
            .bind(&stream)
            .fetch_optional(&pool)
            .await?;
            finished = status.map(|s| (started.elapsed(), s));
        }
        let in_monitor: Option<String> = sqlx::query_scalar(
            "SELECT status FROM backups WHERE backup_id = $1 AND status <> 'in_progress'",
        )
        .bind(backup_id)
        .fetch_optional(&pool)
        .await?;
        if finished.is_some() && in_monitor.is_some() {
            break started.elapsed();
        }
        anyhow::ensure!(Instant::now() < deadline, "the backup did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let snapshots: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM backup_snapshots WHERE backup_id = $1 AND state = 'completed'",
    )
    .bind(backup_id)
    .fetch_one(&pool)
    .await?;
    let (done, status) = finished.unwrap_or((shown, "unknown".into()));
    let taken = all_taken.unwrap_or(done);
    println!(
        "all {volumes} snapshots taken (recorded in the event log) {:.2} s after the run request: {:.2}x the floor",
        taken.as_secs_f64(),
        taken.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "backup {status} {:.2} s after the run request (completion polled every 200 ms); \
         shown in the monitor with {snapshots} completed snapshots after {:.2} s",
        done.as_secs_f64(),
        shown.as_secs_f64()
    );
    let calls = emulator.calls().await?;
    let aws_calls = total(&calls);
    // The emulator slows as its store grows: the floor again, now that it
    // holds the backup's snapshots too.
    let floor_after =
        safehold_cloud::fleet::create_snapshots_floor(&target, &instances, CREATE_CONCURRENCY)
            .await?;
    // The backup ran while the store grew from the first floor's size to
    // the second's: its floor lies between them.
    let floor_same_store = (floor + floor_after) / 2;
    println!(
        "emulator floor again after the backup: {:.2} s; at the backup's store size (mean of both): {:.2} s, \
         taking took {:.2}x that",
        floor_after.as_secs_f64(),
        floor_same_store.as_secs_f64(),
        taken.as_secs_f64() / floor_same_store.as_secs_f64()
    );
    println!(
        "AWS calls: {aws_calls} ({:.3} per volume): {}",
        aws_calls as f64 / volumes as f64,
        calls
            .iter()
            .map(|(action, n)| format!("{action} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match (rss_before, peak_rss_mb()) {
        (Some(before), Some(peak)) => println!(
            "peak RSS of the process (server, workers and this client): {peak:.1} MB ({before:.1} MB before the backup)"
        ),
        _ => println!("peak RSS: not measured (no /proc)"),
    }

    let _ = stop.send(true);
    drop(emulator);
    pool.close().await;
    safehold_projections::db::drop_database(&admin, &url).await?;
    Ok(())
}
