//! Platform benchmark: prints the figures it measures.
//!
//!   cargo run --release --bin safehold-bench -- [--seconds 5] [--concurrency 16]
//!
//! Uses the Postgres at SAFEHOLD_BENCH_DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres) to create a scratch database,
//! dropped at the end.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web;
use safehold_api::{AppState, Config};
use safehold_domain::access::{DelegatePermissions, UserKind};
use safehold_domain::ids::stream_id;
use safehold_domain::user::{ResourceLimits, User, UserCommand};
use safehold_domain::{CommandMetadata, TenantId, UserId};
use serde_json::json;
use sqlx::{Executor, PgPool};
use uuid::Uuid;

const PASSWORD: &str = "Bench-Marking-42!";

struct Args {
    seconds: u64,
    concurrency: usize,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 5,
        concurrency: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), value) {
            ("--seconds", Some(v)) => a.seconds = v,
            ("--concurrency", Some(v)) => a.concurrency = v as usize,
            _ => {
                eprintln!("usage: safehold-bench [--seconds N] [--concurrency N]");
                std::process::exit(2);
            }
        }
    }
    a
}

fn meta(tenant: TenantId, user: Option<UserId>, request_id: String) -> CommandMetadata {
    CommandMetadata {
        tenant_id: tenant,
        user_id: user,
        delegate_id: None,
        request_id,
        occurred_at: chrono::Utc::now(),
    }
}

/// Runs `work` on `concurrency` tasks until the time is up; returns ops/s.
async fn rate<F, Fut>(concurrency: usize, seconds: u64, work: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let work = Arc::new(work);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (work, done) = (work.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < deadline {
                    work(task, n).await;
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("benchmark task");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn insert_baseline(pool: &PgPool, a: &Args) -> f64 {
    pool.execute(
        "CREATE TABLE bench_inserts (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY,
                                     payload json NOT NULL, PRIMARY KEY (tenant_id, id))",
    )
    .await
    .expect("create bench table");
    let pool = pool.clone();
    let tenant = Uuid::new_v4();
    rate(a.concurrency, a.seconds, move |_, _| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO bench_inserts (tenant_id, payload) VALUES ($1, $2)")
                .bind(tenant)
                .bind(json!({"allow_recovery": true}))
                .execute(&pool)
                .await
                .expect("insert");
        }
    })
    .await
}

/// Creates `n` delegate users directly through the command layer.
async fn delegates(
    pool: &PgPool,
    tenant: TenantId,
    of: UserId,
    prefix: &str,
    n: usize,
) -> Vec<UserId> {
    let cqrs = safehold_api::commands::Runner::<User>::new(pool);
    let mut ids = Vec::new();
    for i in 0..n {
        let id = UserId::for_username(tenant, &format!("{prefix}{i}"));
        let create = UserCommand::Create {
            id,
            tenant_id: tenant,
            username: format!("{prefix}{i}"),
            email: None,
            kind: UserKind::Delegate {
                of,
                permissions: DelegatePermissions::default(),
            },
            limits: ResourceLimits::default(),
            must_change_password: false,
        };
        cqrs.execute_with_metadata(
            &stream_id(tenant, id.0),
            create,
            meta(tenant, Some(of), "setup".into()).to_map(),
        )
        .await
        .expect("create delegate");
        ids.push(id);
    }
    ids
}

fn toggle(n: u64) -> serde_json::Value {
    json!({"allow_recovery": n.is_multiple_of(2), "allow_account_changes": false, "allow_backup_changes": false})
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Issues commands at `per_second` for `seconds` and measures how long each
/// takes to show in the audit read model.
async fn projection_lag(
    pool: &PgPool,
    tenant: TenantId,
    users: &[UserId],
    per_second: u64,
    seconds: u64,
) -> (Vec<f64>, Vec<f64>) {
    let issued: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let cqrs = Arc::new(safehold_api::commands::Runner::<User>::new(pool));
    let total = per_second * seconds;
    let watcher = {
        let (pool, issued) = (pool.clone(), issued.clone());
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut lags = Vec::new();
            // The audit projection commits its rows and its checkpoint
            // together: each poll reads only the rows of the events the
            // checkpoint passed since the previous poll (re-reading a window
            // of recent rows instead costs the 2 shared cores more than the
            // projector does).
            let checkpoint = || async {
                sqlx::query_as::<_, (i64, i64)>(
                    "SELECT tx_id, position FROM projection_checkpoints WHERE name = 'audit'",
                )
                .fetch_optional(&pool)
                .await
                .expect("audit checkpoint")
                .unwrap_or((0, 0))
            };
            // Woken by each commit of the projector (it runs in this
            // process), else every 2 ms.
            let mut progress = safehold_projections::runtime::projected_updates(&pool);
            let mut covered = checkpoint().await;
            let give_up = Instant::now() + Duration::from_secs(seconds + 30);
            while (seen.len() as u64) < total && Instant::now() < give_up {
                let now_covered = checkpoint().await;
                let rows: Vec<String> = if now_covered > covered {
                    sqlx::query_scalar(
                        "SELECT a.request_id FROM events e
                           JOIN audit_log a ON a.tenant_id = $1 AND a.position = e.global_position
                          WHERE (e.tx_id, e.global_position) > ($2::text::xid8, $3)
                            AND (e.tx_id, e.global_position) <= ($4::text::xid8, $5)
                            AND a.request_id LIKE 'lag-%'",
                    )
                    .bind(tenant.0)
                    .bind(covered.0.to_string())
                    .bind(covered.1)
                    .bind(now_covered.0.to_string())
                    .bind(now_covered.1)
                    .fetch_all(&pool)
                    .await
                    .expect("poll audit")
                } else {
                    Vec::new()
                };
                covered = covered.max(now_covered);
                let now = Instant::now();
                for request_id in rows {
                    if seen.insert(request_id.clone()) {
                        if let Some(at) = issued.lock().expect("lock").get(&request_id) {
                            lags.push((now - *at).as_secs_f64() * 1000.0);
                        }
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(2), progress.changed()).await;
            }
            lags
        })
    };
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    let mut inflight = Vec::new();
    let rounds = users.len() as u64;
    for n in 0..total {
        ticker.tick().await;
        let user = users[n as usize % users.len()];
        let request_id = format!("lag-{n}");
        issued
            .lock()
            .expect("lock")
            .insert(request_id.clone(), Instant::now());
        let (cqrs, pool) = (cqrs.clone(), pool.clone());
        let issued_at = Instant::now();
        inflight.push(tokio::spawn(async move {
            // Alternate per visit of a delegate (starting from the default,
            // denied), so every command records an event.
            let command = UserCommand::SetDelegatePermissions {
                permissions: DelegatePermissions {
                    allow_recovery: (n / rounds).is_multiple_of(2),
                    ..Default::default()
                },
            };
            // Conflicts on the same delegate are retried like the API does.
            loop {
                match cqrs
                    .execute_with_metadata(
                        &stream_id(tenant, user.0),
                        command.clone(),
                        meta(tenant, None, request_id.clone()).to_map(),
                    )
                    .await
                {
                    Err(cqrs_es::AggregateError::AggregateConflict) => continue,
                    other => break other.expect("command"),
                }
            }
            let appended = issued_at.elapsed().as_secs_f64() * 1000.0;
            // As the API does after every command.
            safehold_projections::runtime::notify_committed(&pool).await;
            appended
        }));
    }
    let mut appends = Vec::new();
    for t in inflight {
        appends.push(t.await.expect("command task"));
    }
    let mut lags = watcher.await.expect("watcher");
    lags.sort_by(|a, b| a.total_cmp(b));
    appends.sort_by(|a, b| a.total_cmp(b));
    (lags, appends)
}

/// Waits until every projection has applied the whole log; returns how
/// many events the audit projection had left and how many seconds that took.
async fn projections_caught_up(pool: &PgPool) -> (i64, f64) {
    let started = Instant::now();
    let backlog: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e, projection_checkpoints c
          WHERE c.name = 'audit' AND (e.tx_id::text::bigint, e.global_position) > (c.tx_id, c.position)",
    )
    .fetch_one(pool)
    .await
    .expect("backlog");
    loop {
        let behind: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM projection_checkpoints c,
                    (SELECT tx_id::text::bigint AS tx, global_position FROM events
                      ORDER BY tx_id DESC, global_position DESC LIMIT 1) e
              WHERE (c.tx_id, c.position) < (e.tx, e.global_position))",
        )
        .fetch_one(pool)
        .await
        .expect("checkpoints");
        if !behind {
            return (backlog, started.elapsed().as_secs_f64());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the projections did not catch up in 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn idle_rss(database_url: &str) -> Option<f64> {
    let exe = std::env::current_exe().ok()?.with_file_name("safehold");
    let mut child = tokio::process::Command::new(exe)
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("SAFEHOLD_BIND", "127.0.0.1:0")
        .env("SAFEHOLD_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = rss_mb(child.id()?);
    let _ = child.kill().await;
    rss
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let admin = std::env::var("SAFEHOLD_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = safehold_projections::db::create_scratch_database(&admin, "sh_bench").await?;
    let pool = safehold_projections::db::connect(&url, (a.concurrency as u32 + 8).max(20)).await?;
    safehold_projections::db::migrate(&pool).await?;
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "safehold platform benchmark ({build} build, {} concurrent clients, {} s per phase, {} cores)",
        a.concurrency,
        a.seconds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    // The real server: HTTP, auth, command, read-your-writes wait.
    let state = web::Data::new(AppState::new(
        pool.clone(),
        Config::ephemeral(url.clone(), None),
    ));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(safehold_api::server::serve(state.clone(), listener)?);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(safehold_projections::Projector::new(pool.clone()).run(stop_rx));

    let signup = safehold_api::routes::signup::SignupRequest {
        organisation: "bench".into(),
        name: "Bench".into(),
        time_zone: None,
        username: "root".into(),
        email: None,
        password: PASSWORD.into(),
    };
    let created = safehold_api::routes::signup::sign_up(&state, signup, "setup".into())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tenant = TenantId(created.tenant_id);
    let root = UserId(created.user_id);
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"organisation": "bench", "username": "root", "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let users = delegates(&pool, tenant, root, "rate", a.concurrency * 4).await;

    let inserts = insert_baseline(&pool, &a).await;
    println!("plain single-row INSERT loop:      {inserts:>8.0} rows/s");

    let api = {
        let (users, http, base, token) = (users.clone(), http.clone(), base.clone(), token.clone());
        rate(a.concurrency, a.seconds, move |task, n| {
            let user = users[task * 4 + (n as usize % 4)];
            let request = http
                .put(format!("{base}/v1/users/{}/permissions", user.0))
                .bearer_auth(&token)
                .json(&toggle(n / 4));
            async move {
                let resp = request.send().await.expect("request");
                assert!(resp.status().is_success(), "{}", resp.status());
            }
        })
        .await
    };
    println!(
        "commands through the HTTP API:    {api:>8.0} commands/s  ({:.0}% of INSERT; auth, validation, append, read-your-writes wait)",
        100.0 * api / inserts
    );

    let appended = {
        let (users, pool) = (users.clone(), pool.clone());
        let cqrs = Arc::new(safehold_api::commands::Runner::<User>::new(&pool));
        rate(a.concurrency, a.seconds, move |task, n| {
            let user = users[task * 4 + (n as usize % 4)];
            let (cqrs, pool) = (cqrs.clone(), pool.clone());
            async move {
                let command = UserCommand::SetDelegatePermissions {
                    permissions: DelegatePermissions {
                        allow_recovery: !(n / 4).is_multiple_of(2),
                        ..Default::default()
                    },
                };
                cqrs.execute_with_metadata(
                    &stream_id(tenant, user.0),
                    command,
                    meta(tenant, None, "rate".into()).to_map(),
                )
                .await
                .expect("command");
                safehold_projections::runtime::notify_committed(&pool).await;
            }
        })
        .await
    };
    println!(
        "commands through the command layer:{appended:>8.0} commands/s  ({:.0}% of INSERT; load aggregate, decide, append, notify)",
        100.0 * appended / inserts
    );

    // Fresh delegates: each one's first command changes its permissions.
    let lag_users = delegates(&pool, tenant, root, "lag", 256).await;

    // The lag is measured from an idle projector: whatever the phases above
    // left is applied first.
    let (backlog, took) = projections_caught_up(&pool).await;
    println!("events left for the projector:    {backlog:>8} (all applied {took:.2} s later)");

    let (lags, appends) = projection_lag(&pool, tenant, &lag_users, 1000, a.seconds).await;
    println!(
        "projection lag at 1000 commands/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} commands",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN),
        lags.len()
    );
    println!(
        "  of which issue to append done:  p50 {:.1} ms, p99 {:.1} ms",
        percentile(&appends, 0.5),
        percentile(&appends, 0.99),
    );
    let _ = stop.send(true);

    match idle_rss(&url).await {
        Some(mb) => println!("idle RSS of `safehold serve`:      {mb:>8.1} MB"),
        None => println!(
            "idle RSS of `safehold serve`:      not measured (build the safehold binary first)"
        ),
    }

    pool.close().await;
    safehold_projections::db::drop_database(&admin, &url).await?;
    Ok(())
}
