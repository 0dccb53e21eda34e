//! Refreshes the inventory cache of an account, one region at a time.

use chrono::Utc;
use safehold_cloud::inventory::{self, Resource};
use safehold_cloud::resolve::Cloud;
use safehold_domain::TenantId;
use safehold_projections::accounts::AccountRow;
use sqlx::PgPool;

/// What one region's scan found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionOutcome {
    pub region: String,
    pub resources: usize,
    pub error: Option<String>,
}

/// Scans every region of the account concurrently and replaces its cached
/// inventory region by region (a failed region keeps its previous rows).
pub async fn refresh_account(
    cloud: &Cloud,
    tenant: TenantId,
    account: &AccountRow,
) -> Vec<RegionOutcome> {
    let scans = account.regions.iter().map(|region| async move {
        let found = scan_region(cloud, tenant, account, region).await;
        let outcome = match found {
            Ok(resources) => {
                match replace(&cloud.pool, tenant, account, region, &resources).await {
                    Ok(()) => RegionOutcome {
                        region: region.clone(),
                        resources: resources.len(),
                        error: None,
                    },
                    Err(e) => RegionOutcome {
                        region: region.clone(),
                        resources: 0,
                        error: Some(format!("saving the inventory failed: {e}")),
                    },
                }
            }
            Err(error) => RegionOutcome {
                region: region.clone(),
                resources: 0,
                error: Some(error),
            },
        };
        if let Some(error) = &outcome.error {
            tracing::warn!(account = %account.account_id, region, error, "discovery failed");
        }
        record(&cloud.pool, tenant, account, &outcome).await;
        outcome
    });
    futures::future::join_all(scans).await
}

/// The SDK already retries each call; when AWS keeps throttling past that,
/// the whole region is scanned again a few times before giving up.
async fn scan_region(
    cloud: &Cloud,
    tenant: TenantId,
    account: &AccountRow,
    region: &str,
) -> Result<Vec<Resource>, String> {
    let config = cloud
        .config(tenant, account, region)
        .await
        .map_err(|e| e.to_string())?;
    let mut pause = std::time::Duration::from_secs(1);
    for attempt in 1.. {
        match inventory::discover(&config).await {
            Ok(resources) => return Ok(resources),
            Err(e) if e.is_transient() && attempt < REGION_ATTEMPTS => {
                tracing::info!(region, attempt, error = %e, "discovery throttled; scanning the region again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    unreachable!("the loop returns on its last attempt")
}

const REGION_ATTEMPTS: u32 = 4;

async fn replace(
    pool: &PgPool,
    tenant: TenantId,
    account: &AccountRow,
    region: &str,
    resources: &[Resource],
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM resources WHERE tenant_id = $1 AND account_id = $2 AND region = $3")
        .bind(tenant.0)
        .bind(account.account_id)
        .bind(region)
        .execute(&mut *tx)
        .await?;
    let now = Utc::now();
    for r in resources {
        sqlx::query(
            "INSERT INTO resources (tenant_id, account_id, region, resource_type, resource_id, name,
                    size_gib, tags, details, refreshed_at)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
        )
        .bind(tenant.0)
        .bind(account.account_id)
        .bind(region)
        .bind(r.resource_type)
        .bind(&r.id)
        .bind(&r.name)
        .bind(r.size_gib)
        .bind(serde_json::to_value(&r.tags)?)
        .bind(&r.details)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn record(pool: &PgPool, tenant: TenantId, account: &AccountRow, outcome: &RegionOutcome) {
    let result = sqlx::query(
        "INSERT INTO discovery_runs (tenant_id, account_id, region, finished_at, resources, error)
         VALUES ($1, $2, $3, now(), $4, $5)
         ON CONFLICT (tenant_id, account_id, region) DO UPDATE
            SET finished_at = now(), resources = EXCLUDED.resources, error = EXCLUDED.error",
    )
    .bind(tenant.0)
    .bind(account.account_id)
    .bind(&outcome.region)
    .bind(outcome.resources as i32)
    .bind(&outcome.error)
    .execute(pool)
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot record a discovery run");
    }
}

/// Refreshes every account with scanning enabled.
pub async fn refresh_all(cloud: &Cloud) -> anyhow::Result<()> {
    let accounts: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("SELECT tenant_id, account_id FROM accounts WHERE scan_enabled")
            .fetch_all(&cloud.pool)
            .await?;
    for (tenant, id) in accounts {
        let tenant = TenantId(tenant);
        if let Some(account) = safehold_projections::accounts::find(&cloud.pool, tenant, id).await?
        {
            refresh_account(cloud, tenant, &account).await;
        }
    }
    Ok(())
}
