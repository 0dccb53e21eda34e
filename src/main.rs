//! The `safehold` binary: API server, workers, migrations, demo.

mod embedded;

use std::net::TcpListener;
use std::path::PathBuf;

use actix_web::web;
use anyhow::Context;
use clap::{Parser, Subcommand};
use safehold_api::{AppState, Config};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "safehold",
    version,
    about = "Backup and disaster recovery for AWS"
)]
struct Cli {
    /// Postgres URL; when absent, a private cluster is started in --data-dir.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Where the embedded Postgres keeps its data.
    #[arg(
        long,
        env = "SAFEHOLD_DATA_DIR",
        default_value = ".safehold",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// API, projections and background jobs in one process.
    Serve,
    /// Projections and background jobs only.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Serve with a demo organisation and sample AWS resources in the emulator.
    Demo,
    /// Read-model maintenance.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Empty a projection's tables and replay the whole event log into them.
    Rebuild {
        /// Projection name (tenants, users, audit) or `all`.
        name: String,
    },
    /// List projections.
    List,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_env("SAFEHOLD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_current_span(true)
        .init();
}

/// The database to use, starting the embedded one when none is configured.
async fn database(cli: &Cli) -> anyhow::Result<(String, Option<embedded::EmbeddedPostgres>)> {
    match &cli.database_url {
        Some(url) => Ok((url.clone(), None)),
        None => {
            tracing::info!(dir = %cli.data_dir.display(), "DATABASE_URL not set: starting embedded PostgreSQL");
            let pg = embedded::EmbeddedPostgres::start(&cli.data_dir.join("postgres")).await?;
            Ok((pg.url.clone(), Some(pg)))
        }
    }
}

async fn background(pool: sqlx::PgPool, stop: watch::Receiver<bool>) {
    let projector = safehold_projections::Projector::new(pool.clone());
    tokio::join!(
        projector.run(stop.clone()),
        safehold_jobs::housekeeping(pool, stop)
    );
}

async fn serve(url: String, demo_endpoint: Option<String>) -> anyhow::Result<()> {
    let pool = safehold_projections::db::connect(&url, 20).await?;
    safehold_projections::db::migrate(&pool).await?;
    let config = Config::from_env(url)?;
    let state = web::Data::new(AppState::new(pool.clone(), config.clone()));
    if let Some(endpoint) = demo_endpoint {
        seed_demo(&state, &endpoint).await?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = tokio::spawn(background(pool, stop_rx));
    let listener =
        TcpListener::bind(config.bind).with_context(|| format!("bind {}", config.bind))?;
    tracing::info!(address = %listener.local_addr()?, "serving the Safehold API (docs at /docs/)");
    safehold_api::server::serve(state, listener)?.await?;
    let _ = stop_tx.send(true);
    let _ = workers.await;
    Ok(())
}

const DEMO_ORG: &str = "demo";
const DEMO_USER: &str = "demo-admin";
const DEMO_PASSWORD: &str = "Safehold-Demo-2026!";

async fn seed_demo(state: &AppState, endpoint: &str) -> anyhow::Result<()> {
    let tenant = safehold_domain::TenantId::for_slug(DEMO_ORG);
    if state
        .commands
        .load_tenant(tenant)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .is_none()
    {
        let request = safehold_api::routes::signup::SignupRequest {
            organisation: DEMO_ORG.into(),
            name: "Demo Organisation".into(),
            time_zone: Some("UTC".into()),
            username: DEMO_USER.into(),
            email: Some("demo@example.com".into()),
            password: DEMO_PASSWORD.into(),
        };
        safehold_api::routes::signup::sign_up(state, request, "demo-seed".into())
            .await
            .map_err(|e| anyhow::anyhow!("seeding the demo organisation: {e}"))?;
    }
    for region in ["us-east-1", "eu-west-1"] {
        let target = safehold_cloud::Target {
            endpoint: Some(endpoint.to_string()),
            region: region.into(),
        };
        let created = safehold_cloud::seed_demo_resources(&target).await?;
        tracing::info!(region, resources = ?created, "seeded sample AWS resources in the emulator");
    }
    tracing::info!(
        organisation = DEMO_ORG,
        username = DEMO_USER,
        password = DEMO_PASSWORD,
        aws_endpoint = endpoint,
        "demo ready: POST /v1/auth/login with these credentials"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match &cli.command {
        Command::Openapi => {
            println!("{}", safehold_api::openapi::document_json());
        }
        Command::Migrate => {
            let (url, _pg) = database(&cli).await?;
            let pool = safehold_projections::db::connect(&url, 2).await?;
            safehold_projections::db::migrate(&pool).await?;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            let (url, pg) = database(&cli).await?;
            let result = serve(url, None).await;
            if let Some(pg) = pg {
                pg.stop().await;
            }
            result?;
        }
        Command::Demo => {
            let (url, pg) = database(&cli).await?;
            let emulator = match std::env::var("SAFEHOLD_AWS_ENDPOINT") {
                Ok(endpoint) => (endpoint, None),
                Err(_) => {
                    let emulator = embedded::Emulator::start(None).await?;
                    (emulator.endpoint.clone(), Some(emulator))
                }
            };
            let result = serve(url, Some(emulator.0)).await;
            drop(emulator.1);
            if let Some(pg) = pg {
                pg.stop().await;
            }
            result?;
        }
        Command::Worker => {
            let (url, _pg) = database(&cli).await?;
            let pool = safehold_projections::db::connect(&url, 5).await?;
            safehold_projections::db::migrate(&pool).await?;
            let (stop_tx, stop_rx) = watch::channel(false);
            let workers = tokio::spawn(background(pool, stop_rx));
            tokio::signal::ctrl_c().await?;
            let _ = stop_tx.send(true);
            let _ = workers.await;
        }
        Command::Projections { command } => {
            let (url, _pg) = database(&cli).await?;
            let pool = safehold_projections::db::connect(&url, 2).await?;
            safehold_projections::db::migrate(&pool).await?;
            let all = safehold_projections::all_projections();
            match command {
                ProjectionsCommand::List => {
                    for p in &all {
                        println!("{}", p.name());
                    }
                }
                ProjectionsCommand::Rebuild { name } => {
                    let chosen: Vec<_> = all
                        .iter()
                        .filter(|p| name == "all" || p.name() == name)
                        .collect();
                    anyhow::ensure!(!chosen.is_empty(), "no projection named {name}");
                    for p in chosen {
                        let n = safehold_projections::runtime::rebuild(&pool, p.as_ref()).await?;
                        println!("{}: replayed {n} events", p.name());
                    }
                    safehold_projections::audit::purge_expired(&pool).await?;
                }
            }
        }
    }
    Ok(())
}
