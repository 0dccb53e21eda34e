//! Read model of registered AWS accounts, and the resource inventory cache.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use safehold_domain::account::{AccessMethod, Account, AccountEvent, AccountKind};
use safehold_domain::{TenantId, UserId};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{Projection, StoredEvent};

pub struct AccountsProjection;

fn kind_columns(kind: AccountKind) -> (&'static str, bool) {
    match kind {
        AccountKind::Backup => ("backup", false),
        AccountKind::Vault { allow_delete } => ("vault", allow_delete),
    }
}

#[async_trait]
impl Projection for AccountsProjection {
    fn name(&self) -> &'static str {
        "accounts"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["accounts"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if event.aggregate_type != Account::TYPE {
            return Ok(());
        }
        let tenant = event.metadata.tenant_id.0;
        let id = event
            .entity_id()
            .ok_or_else(|| anyhow::anyhow!("bad account stream id {}", event.aggregate_id))?;
        let at = event.metadata.occurred_at;
        match event.decode::<AccountEvent>()? {
            AccountEvent::AccountRegistered {
                owner_id,
                name,
                number,
                kind,
                access,
                scan,
                ..
            } => {
                let (kind, allow_delete) = kind_columns(kind);
                let (method, key, secret, via, role, external) = match access {
                    AccessMethod::AccessKeys {
                        access_key_id,
                        secret_id,
                    } => (
                        "access_keys",
                        Some(access_key_id),
                        Some(secret_id),
                        None,
                        None,
                        None,
                    ),
                    AccessMethod::ServerCredentials => {
                        ("server_credentials", None, None, None, None, None)
                    }
                    AccessMethod::AssumeRole {
                        via_account,
                        role_name,
                        external_id,
                    } => (
                        "assume_role",
                        None,
                        None,
                        Some(via_account),
                        Some(role_name),
                        external_id,
                    ),
                };
                sqlx::query(
                    "INSERT INTO accounts (tenant_id, account_id, owner_id, name, number, kind, allow_delete,
                            access_method, access_key_id, secret_id, via_account, role_name, external_id,
                            scan_enabled, regions, created_at, updated_at)
                     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$16)",
                )
                .bind(tenant)
                .bind(id)
                .bind(owner_id.0)
                .bind(name)
                .bind(number)
                .bind(kind)
                .bind(allow_delete)
                .bind(method)
                .bind(key)
                .bind(secret)
                .bind(via)
                .bind(role)
                .bind(external)
                .bind(scan.enabled)
                .bind(scan.regions)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            AccountEvent::AccountUpdated { name, kind, scan } => {
                let (kind, allow_delete) = kind_columns(kind);
                sqlx::query(
                    "UPDATE accounts SET name = $3, kind = $4, allow_delete = $5, scan_enabled = $6,
                            regions = $7, updated_at = $8
                      WHERE tenant_id = $1 AND account_id = $2",
                )
                .bind(tenant)
                .bind(id)
                .bind(name)
                .bind(kind)
                .bind(allow_delete)
                .bind(scan.enabled)
                .bind(scan.regions)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            AccountEvent::AccessKeysRotated {
                access_key_id,
                secret_id,
            } => {
                sqlx::query(
                    "UPDATE accounts SET access_key_id = $3, secret_id = $4, updated_at = $5
                      WHERE tenant_id = $1 AND account_id = $2",
                )
                .bind(tenant)
                .bind(id)
                .bind(access_key_id)
                .bind(secret_id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            AccountEvent::AccountRemoved => {
                sqlx::query("DELETE FROM accounts WHERE tenant_id = $1 AND account_id = $2")
                    .bind(tenant)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub account_id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub number: String,
    pub kind: String,
    pub allow_delete: bool,
    pub access_method: String,
    pub access_key_id: Option<String>,
    pub secret_id: Option<Uuid>,
    pub via_account: Option<Uuid>,
    pub role_name: Option<String>,
    pub external_id: Option<String>,
    pub scan_enabled: bool,
    pub regions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "account_id, owner_id, name, number, kind, allow_delete, access_method, access_key_id, secret_id,
    via_account, role_name, external_id, scan_enabled, regions, created_at, updated_at";

pub async fn find(pool: &PgPool, tenant: TenantId, id: Uuid) -> sqlx::Result<Option<AccountRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM accounts WHERE tenant_id = $1 AND account_id = $2"
    ))
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Accounts of the given owners, by name then id, after the cursor.
pub async fn list(
    pool: &PgPool,
    tenant: TenantId,
    owners: &[Uuid],
    after: Option<(String, Uuid)>,
    limit: i64,
) -> sqlx::Result<Vec<AccountRow>> {
    let (name, id) = after.unzip();
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM accounts
          WHERE tenant_id = $1 AND owner_id = ANY($2)
            AND ($3::text IS NULL OR (name, account_id) > ($3, $4))
          ORDER BY name, account_id LIMIT $5"
    ))
    .bind(tenant.0)
    .bind(owners)
    .bind(name)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn count_owned(pool: &PgPool, tenant: TenantId, owner: UserId) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM accounts WHERE tenant_id = $1 AND owner_id = $2")
        .bind(tenant.0)
        .bind(owner.0)
        .fetch_one(pool)
        .await
}

/// Accounts that assume a role through `id`.
/// What refers to the account: accounts reached through it, and its policies.
pub async fn dependants(pool: &PgPool, tenant: TenantId, id: Uuid) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT 'account ' || name FROM accounts WHERE tenant_id = $1 AND via_account = $2
         UNION ALL
         SELECT 'policy ' || name FROM policies WHERE tenant_id = $1 AND account_id = $2
         ORDER BY 1",
    )
    .bind(tenant.0)
    .bind(id)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResourceRow {
    pub region: String,
    pub resource_type: String,
    pub resource_id: String,
    pub name: Option<String>,
    pub size_gib: Option<i32>,
    pub tags: serde_json::Value,
    pub details: serde_json::Value,
    pub refreshed_at: DateTime<Utc>,
    /// How many policies have this resource as a target.
    pub protected_by: i64,
}

#[derive(Debug, Default, Clone)]
pub struct ResourceFilter {
    pub resource_type: Option<String>,
    pub region: Option<String>,
    /// Matches id or name, case-insensitively.
    pub query: Option<String>,
    pub after: Option<(String, String, String)>,
}

pub async fn list_resources(
    pool: &PgPool,
    tenant: TenantId,
    account: Uuid,
    filter: &ResourceFilter,
    limit: i64,
) -> sqlx::Result<Vec<ResourceRow>> {
    let (a_region, a_type, a_id) = match &filter.after {
        Some((r, t, i)) => (Some(r.clone()), Some(t.clone()), Some(i.clone())),
        None => (None, None, None),
    };
    sqlx::query_as(
        "SELECT region, resource_type, resource_id, name, size_gib, tags, details, refreshed_at,
                (SELECT count(*) FROM policy_targets t
                  WHERE t.tenant_id = r.tenant_id AND t.account_id = r.account_id AND t.region = r.region
                    AND t.resource_type = r.resource_type AND t.resource_id = r.resource_id) AS protected_by
           FROM resources r
          WHERE tenant_id = $1 AND account_id = $2
            AND ($3::text IS NULL OR resource_type = $3)
            AND ($4::text IS NULL OR region = $4)
            AND ($5::text IS NULL OR resource_id ILIKE '%' || $5 || '%' OR name ILIKE '%' || $5 || '%')
            AND ($6::text IS NULL OR (region, resource_type, resource_id) > ($6, $7, $8))
          ORDER BY region, resource_type, resource_id
          LIMIT $9",
    )
    .bind(tenant.0)
    .bind(account)
    .bind(&filter.resource_type)
    .bind(&filter.region)
    .bind(&filter.query)
    .bind(a_region)
    .bind(a_type)
    .bind(a_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}
