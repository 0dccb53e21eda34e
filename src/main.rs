//! The `safehold` binary: API server, workers, migrations, demo.

mod embedded;

use std::net::TcpListener;
use std::path::PathBuf;

use actix_web::web;
use anyhow::Context;
use clap::{Parser, Subcommand};
use safehold_api::{AppState, Config};
use safehold_cloud::secrets::Keyring;
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
    /// Re-encrypt every stored secret under the first master key (after adding a key).
    ReencryptSecrets,
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

/// Master keys for secrets at rest: `SAFEHOLD_MASTER_KEYS`, else a key
/// generated once and kept (mode 0600) in the data directory.
fn keyring(data_dir: &std::path::Path) -> anyhow::Result<Keyring> {
    if let Ok(spec) = std::env::var("SAFEHOLD_MASTER_KEYS") {
        return Keyring::parse(&spec).context("SAFEHOLD_MASTER_KEYS");
    }
    let path = data_dir.join("master-keys");
    if let Ok(spec) = std::fs::read_to_string(&path) {
        return Keyring::parse(spec.trim()).with_context(|| format!("{}", path.display()));
    }
    tracing::warn!(path = %path.display(), "SAFEHOLD_MASTER_KEYS is not set: generating a master key");
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)?;
    let ring = Keyring::generate("k1");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut file, ring.to_spec().as_bytes())?;
    Ok(ring)
}

async fn background(cloud: safehold_cloud::resolve::Cloud, stop: watch::Receiver<bool>) {
    let projector = safehold_projections::Projector::new(cloud.pool.clone());
    let backups = safehold_jobs::backup::BackupContext {
        cloud: cloud.clone(),
        settings: safehold_jobs::backup::BackupSettings::from_env(),
    };
    let dr = safehold_jobs::dr::DrContext {
        cloud: cloud.clone(),
        settings: safehold_jobs::dr::DrWorkerSettings::from_env(),
    };
    let recoveries = safehold_jobs::recovery::RecoveryContext {
        cloud: cloud.clone(),
        settings: safehold_jobs::recovery::RecoverySettings::from_env(),
    };
    tokio::join!(
        projector.run(stop.clone()),
        safehold_jobs::dr::run_workers(dr, stop.clone()),
        safehold_jobs::recovery::run_workers(recoveries, stop.clone()),
        safehold_jobs::scheduler::run(cloud.pool.clone(), stop.clone()),
        safehold_jobs::cleanup::run(backups.clone(), stop.clone()),
        safehold_jobs::backup::run_workers(backups, stop.clone()),
        safehold_jobs::housekeeping(cloud, stop)
    );
}

async fn serve(url: String, keys: Keyring, demo_endpoint: Option<String>) -> anyhow::Result<()> {
    let pool = safehold_projections::db::connect(&url, 20).await?;
    safehold_projections::db::migrate(&pool).await?;
    let mut config = Config::from_env(url, keys)?;
    if let Some(endpoint) = &demo_endpoint {
        config.aws_endpoint = safehold_cloud::access::Endpoint(Some(endpoint.clone()));
    }
    let state = web::Data::new(AppState::new(pool.clone(), config.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = tokio::spawn(background(state.cloud.clone(), stop_rx));
    if let Some(endpoint) = demo_endpoint {
        seed_demo(&state, &endpoint).await?;
    }
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
    use safehold_api::routes::accounts::{
        self, AccessRequest, AccountType, RegisterAccountRequest,
    };
    use safehold_domain::access::{Actor, PrincipalKind};

    // The emulator starts empty each time: give it resources first.
    for region in ["us-east-1", "eu-west-1"] {
        let target = safehold_cloud::Target {
            endpoint: Some(endpoint.to_string()),
            region: region.into(),
        };
        let created = safehold_cloud::seed_demo_resources(&target).await?;
        tracing::info!(region, resources = ?created, "seeded sample AWS resources in the emulator");
    }
    let tenant = safehold_domain::TenantId::for_slug(DEMO_ORG);
    let fail = |what: &str, e: safehold_api::error::ApiError| anyhow::anyhow!("{what}: {e}");
    if state
        .commands
        .load_tenant(tenant)
        .await
        .map_err(|e| fail("loading the demo organisation", e))?
        .is_some()
    {
        tracing::info!(organisation = DEMO_ORG, "demo organisation exists already");
        safehold_jobs::discovery::refresh_all(&state.cloud).await?;
        return Ok(());
    }
    let request = safehold_api::routes::signup::SignupRequest {
        organisation: DEMO_ORG.into(),
        name: "Demo Organisation".into(),
        time_zone: Some("UTC".into()),
        username: DEMO_USER.into(),
        email: Some("demo@example.com".into()),
        password: DEMO_PASSWORD.into(),
    };
    let created = safehold_api::routes::signup::sign_up(state, request, "demo-seed".into())
        .await
        .map_err(|e| fail("seeding the demo organisation", e))?;
    let root = Actor {
        tenant_id: tenant,
        user_id: safehold_domain::UserId(created.user_id),
        kind: PrincipalKind::Root,
        delegate: None,
    };
    let meta = safehold_domain::CommandMetadata {
        tenant_id: tenant,
        user_id: Some(root.user_id),
        delegate_id: None,
        request_id: "demo-seed".into(),
        occurred_at: chrono::Utc::now(),
    };
    let account = RegisterAccountRequest {
        name: "demo-production".into(),
        number: "123456789012".into(),
        account_type: AccountType::Backup,
        allow_delete: None,
        access: AccessRequest::AccessKeys {
            access_key_id: "AKIADEMOACCOUNTKEY01".into(),
            secret_access_key: "demo-secret-access-key".into(),
        },
        scan: safehold_domain::account::ScanSettings {
            enabled: true,
            regions: vec!["us-east-1".into(), "eu-west-1".into()],
        },
        owner_id: None,
    };
    let row = accounts::register(state, &root, meta.clone(), account)
        .await
        .map_err(|e| fail("registering the demo account", e))?;
    safehold_jobs::discovery::refresh_account(&state.cloud, tenant, &row).await;
    seed_demo_policy(state, tenant, &meta, row.account_id)
        .await
        .map_err(|e| fail("seeding the demo policy", e))?;
    tracing::info!(
        organisation = DEMO_ORG,
        username = DEMO_USER,
        password = DEMO_PASSWORD,
        aws_endpoint = endpoint,
        "demo ready: POST /v1/auth/login with these credentials"
    );
    Ok(())
}

/// A nightly schedule and a policy protecting the sample instance and
/// volume in us-east-1, with a first backup started at once.
async fn seed_demo_policy(
    state: &AppState,
    tenant: safehold_domain::TenantId,
    meta: &safehold_domain::CommandMetadata,
    account: uuid::Uuid,
) -> Result<(), safehold_api::error::ApiError> {
    use safehold_domain::policy::{
        InstanceMode, InstanceOptions, PolicyCommand, PolicySettings, ResourceKind, Target,
        TargetKey, Trigger, VolumeSelection,
    };
    use safehold_domain::schedule::{Day, Recurrence, RepeatUnit, ScheduleCommand};
    let owner = meta.user_id.expect("the demo root user");
    let schedule = uuid::Uuid::new_v4();
    let tonight = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(22, 0, 0)
        .expect("22:00");
    let recurrence = Recurrence {
        start: tonight.and_utc(),
        end: None,
        every: 1,
        unit: RepeatUnit::Days,
        weekdays: vec![
            Day::Mon,
            Day::Tue,
            Day::Wed,
            Day::Thu,
            Day::Fri,
            Day::Sat,
            Day::Sun,
        ],
        disabled_windows: vec![],
    };
    state
        .commands
        .schedule(
            meta,
            schedule,
            ScheduleCommand::Create {
                id: schedule,
                tenant_id: tenant,
                owner_id: owner,
                name: "every-night".into(),
                description: "Every night at 22:00".into(),
                recurrence,
            },
        )
        .await?;
    let policy = uuid::Uuid::new_v4();
    let mut commands = vec![
        PolicyCommand::Create {
            id: policy,
            tenant_id: tenant,
            owner_id: owner,
            account_id: account,
            name: "demo-nightly".into(),
            settings: PolicySettings {
                description: "The sample web server and shared data volume".into(),
                generations: 7,
                ..PolicySettings::default()
            },
            enabled: true,
            from_tag_scan: false,
        },
        PolicyCommand::AttachSchedule(schedule),
    ];
    let resources: Vec<(String, String)> = sqlx::query_as(
        "SELECT resource_type, resource_id FROM resources
          WHERE tenant_id = $1 AND account_id = $2 AND region = 'us-east-1'
            AND name IN ('web-1', 'shared-data')",
    )
    .bind(tenant.0)
    .bind(account)
    .fetch_all(&state.pool)
    .await?;
    for (kind, id) in resources {
        let Some(kind) = ResourceKind::parse(&kind) else {
            continue;
        };
        commands.push(PolicyCommand::PutTarget(Target {
            instance: (kind == ResourceKind::Ec2Instance).then_some(InstanceOptions {
                mode: InstanceMode::Snapshots,
                volumes: VolumeSelection::All,
            }),
            key: TargetKey {
                kind,
                region: "us-east-1".into(),
                resource_id: id,
            },
        }));
    }
    commands.push(PolicyCommand::StartBackup {
        backup_id: uuid::Uuid::new_v4(),
        trigger: Trigger::AdHoc,
    });
    for command in commands {
        state.commands.policy(meta, policy, command).await?;
    }
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
            let result = serve(url, keyring(&cli.data_dir)?, None).await;
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
                    let emulator = safehold_cloud::emulator::Emulator::start(None).await?;
                    (emulator.endpoint.clone(), Some(emulator))
                }
            };
            let result = serve(url, keyring(&cli.data_dir)?, Some(emulator.0)).await;
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
            let endpoint =
                safehold_cloud::access::Endpoint(std::env::var("SAFEHOLD_AWS_ENDPOINT").ok());
            let cloud =
                safehold_cloud::resolve::Cloud::new(pool, endpoint, keyring(&cli.data_dir)?);
            let (stop_tx, stop_rx) = watch::channel(false);
            let workers = tokio::spawn(background(cloud, stop_rx));
            tokio::signal::ctrl_c().await?;
            let _ = stop_tx.send(true);
            let _ = workers.await;
        }
        Command::ReencryptSecrets => {
            let (url, _pg) = database(&cli).await?;
            let pool = safehold_projections::db::connect(&url, 2).await?;
            safehold_projections::db::migrate(&pool).await?;
            let n = safehold_cloud::secrets::reencrypt_all(&pool, &keyring(&cli.data_dir)?).await?;
            println!("re-encrypted {n} secrets");
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
