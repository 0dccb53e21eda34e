//! Connecting to Postgres and owning the schema.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool};

pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    // Name sessions after the process so operators (and pg_stat_activity)
    // can tell which Safehold process holds what, e.g. the scheduler lock.
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()?
        .application_name(&format!("safehold/{}", std::process::id()));
    let pool = pool_options()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// How long a pooled connection may sit idle before it is checked on its
/// way out of the pool.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(30);

/// Pool settings shared by every pool Safehold opens. A connection is
/// pinged before use only after sitting idle (when a server restart or a
/// firewall may have dropped it), not before every query: that would
/// double the round trips of a busy service.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > CHECK_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Applies Safehold's migrations. Other migrators (the job queue's) share the
/// `_sqlx_migrations` table, so versions unknown to this one are ignored.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // The job queue's schema first: the backup dispatcher writes into it.
    let mut queue = apalis_sql::postgres::PostgresStorage::migrations();
    queue.set_ignore_missing(true);
    queue.run(pool).await?;
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// Creates an empty database next to the one `admin_url` points at and
/// returns its URL: tests and benchmarks each get their own.
pub async fn create_scratch_database(admin_url: &str, prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(admin_url).await?;
    admin
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await?;
    let options: PgConnectOptions = admin_url.parse()?;
    Ok(options.database(&name).to_url_lossy().to_string())
}

/// Drops a database made by `create_scratch_database`, closing its sessions.
pub async fn drop_database(admin_url: &str, url: &str) -> anyhow::Result<()> {
    let options: PgConnectOptions = url.parse()?;
    let Some(name) = options.get_database() else {
        return Ok(());
    };
    let mut admin = PgConnection::connect(admin_url).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
        .await?;
    Ok(())
}
