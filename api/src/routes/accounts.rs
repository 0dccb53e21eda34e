use actix_web::{delete, get, patch, post, put, web, HttpResponse};
use chrono::{DateTime, Utc};
use safehold_cloud::access::{caller_identity, role_arn, sdk_config, AccessSpec};
use safehold_cloud::secrets::Secret;
use safehold_domain::access::{Action, Actor, PrincipalKind};
use safehold_domain::account::{
    check_identity, AccessMethod, AccountCommand, AccountKind, ScanSettings,
};
use safehold_domain::UserId;
use safehold_projections::accounts::{self as read, AccountRow, ResourceFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::body::Json;
use crate::error::{ApiError, ApiResult};
use crate::pagination::{self, Page, PageQuery};
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountType {
    Backup,
    Vault,
}

/// How Safehold reaches the account. Secrets are write-only.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum AccessRequest {
    AccessKeys {
        access_key_id: String,
        secret_access_key: String,
    },
    /// The server's own credentials; root user only.
    ServerCredentials,
    /// Assume `role_name` (a name, not an ARN) with the credentials of another registered account.
    AssumeRole {
        via_account_id: Uuid,
        role_name: String,
        external_id: Option<String>,
    },
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAccountRequest {
    pub name: String,
    /// 12-digit AWS account number.
    pub number: String,
    #[serde(rename = "type")]
    pub account_type: AccountType,
    /// Vaults only: whether Safehold may delete expired copies there (default false: it tags them instead).
    pub allow_delete: Option<bool>,
    pub access: AccessRequest,
    pub scan: ScanSettings,
    /// Root or a managing user may register the account for a managed user.
    pub owner_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessView {
    pub method: String,
    pub access_key_id: Option<String>,
    pub via_account_id: Option<Uuid>,
    pub role_name: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub number: String,
    #[serde(rename = "type")]
    pub account_type: AccountType,
    pub allow_delete: bool,
    pub access: AccessView,
    pub scan: ScanSettings,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<AccountRow> for AccountView {
    fn from(r: AccountRow) -> Self {
        Self {
            id: r.account_id,
            owner_id: r.owner_id,
            account_type: if r.kind == "vault" {
                AccountType::Vault
            } else {
                AccountType::Backup
            },
            allow_delete: r.allow_delete,
            access: AccessView {
                role_arn: r.role_name.as_deref().map(|role| role_arn(&r.number, role)),
                method: r.access_method,
                access_key_id: r.access_key_id,
                via_account_id: r.via_account,
                role_name: r.role_name,
                external_id: r.external_id,
            },
            scan: ScanSettings {
                enabled: r.scan_enabled,
                regions: r.regions,
            },
            name: r.name,
            number: r.number,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Owners whose accounts the actor sees: itself, and the managed users it manages.
pub(crate) async fn visible_owners(state: &AppState, actor: &Actor) -> ApiResult<Vec<Uuid>> {
    let managed: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT user_id, manager_id FROM users WHERE tenant_id = $1 AND kind = 'managed'",
    )
    .bind(actor.tenant_id.0)
    .fetch_all(&state.pool)
    .await?;
    let mut owners = vec![actor.user_id.0];
    owners.extend(
        managed
            .into_iter()
            .filter(|(id, manager)| {
                actor.can_see_owner(
                    UserId(*id),
                    PrincipalKind::Managed {
                        manager_id: manager.map(UserId),
                    },
                )
            })
            .map(|(id, _)| id),
    );
    Ok(owners)
}

/// An account the actor may see; anything else is "not found".
pub(crate) async fn visible_account(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> ApiResult<AccountRow> {
    let row = read::find(&state.pool, actor.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("account"))?;
    if visible_owners(state, actor).await?.contains(&row.owner_id) {
        Ok(row)
    } else {
        Err(ApiError::not_found("account"))
    }
}

fn first_region(scan: &ScanSettings) -> ApiResult<&str> {
    scan.regions.first().map(String::as_str).ok_or_else(|| {
        ApiError::invalid_field("scan.regions", "invalid_value", "list 1-40 regions")
    })
}

/// Asks STS who the credentials are and checks they fit the declared account.
async fn verify_identity(
    state: &AppState,
    spec: &AccessSpec,
    number: &str,
    region: &str,
) -> ApiResult<()> {
    let config = sdk_config(&state.cloud.endpoint, spec, region).await;
    let identity = caller_identity(&config).await.map_err(|e| {
        ApiError::invalid_field(
            "access",
            "credentials_rejected",
            format!("AWS did not accept the credentials ({e})"),
        )
    })?;
    check_identity(number, &identity.account, &identity.arn)?;
    Ok(())
}

fn check_number(number: &str) -> ApiResult<()> {
    if safehold_domain::account::valid_account_number(number) {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "number",
            "invalid_value",
            "must be a 12-digit AWS account number",
        ))
    }
}

/// Registers an AWS account after checking with STS that the credentials work and belong to it.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = RegisterAccountRequest,
    responses((status = 201, body = AccountView),
              (status = 403, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/accounts")]
pub async fn register_account(
    state: web::Data<AppState>,
    auth: Authenticated,
    body: Json<RegisterAccountRequest>,
) -> ApiResult<HttpResponse> {
    let row = register(&state, &auth.actor, auth.metadata(), body.0).await?;
    Ok(HttpResponse::Created().json(AccountView::from(row)))
}

/// Registers an account for `actor` (also used to seed the demo).
pub async fn register(
    state: &AppState,
    actor: &Actor,
    meta: safehold_domain::CommandMetadata,
    body: RegisterAccountRequest,
) -> ApiResult<AccountRow> {
    actor.authorize(Action::ChangeAccounts)?;
    let tenant = actor.tenant_id;
    let owner = body.owner_id.unwrap_or(actor.user_id.0);
    if !visible_owners(state, actor).await?.contains(&owner) {
        return Err(ApiError::invalid_field(
            "owner_id",
            "invalid_owner",
            "must be you or a user you manage",
        ));
    }
    check_number(&body.number)?;
    let region = first_region(&body.scan)?.to_string();
    let kind = match (body.account_type, body.allow_delete) {
        (AccountType::Backup, Some(_)) => {
            return Err(ApiError::invalid_field(
                "allow_delete",
                "not_applicable",
                "only vault accounts have allow_delete",
            ))
        }
        (AccountType::Backup, None) => AccountKind::Backup,
        (AccountType::Vault, allow) => AccountKind::Vault {
            allow_delete: allow.unwrap_or(false),
        },
    };
    let owner_row = safehold_projections::users::find_user(&state.pool, tenant, UserId(owner))
        .await?
        .ok_or_else(|| ApiError::invalid_field("owner_id", "invalid_owner", "no such user"))?;
    if let Some(max) = owner_row.max_accounts {
        if read::count_owned(&state.pool, tenant, UserId(owner)).await? >= max as i64 {
            return Err(ApiError::conflict(
                "limit_reached",
                format!("{} may register at most {max} accounts", owner_row.username),
            ));
        }
    }
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM accounts WHERE tenant_id = $1 AND owner_id = $2 AND number = $3)",
    )
    .bind(tenant.0)
    .bind(owner)
    .bind(&body.number)
    .fetch_one(&state.pool)
    .await?;
    if taken {
        return Err(ApiError::conflict(
            "account_already_registered",
            format!("account {} is already registered", body.number),
        ));
    }

    let (access, secret) = match body.access {
        AccessRequest::AccessKeys {
            access_key_id,
            secret_access_key,
        } => {
            let secret = Secret::new(secret_access_key);
            let spec = AccessSpec::Keys {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret.clone(),
            };
            verify_identity(state, &spec, &body.number, &region).await?;
            let secret_id = state.cloud.store_secret(tenant, &secret).await?;
            (
                AccessMethod::AccessKeys {
                    access_key_id,
                    secret_id,
                },
                Some(secret_id),
            )
        }
        AccessRequest::ServerCredentials => {
            if !actor.is_root() || actor.delegate.is_some() {
                return Err(ApiError::forbidden(
                    "forbidden",
                    "only the root user may use the server's own credentials",
                ));
            }
            verify_identity(state, &AccessSpec::ServerCredentials, &body.number, &region).await?;
            (AccessMethod::ServerCredentials, None)
        }
        AccessRequest::AssumeRole {
            via_account_id,
            role_name,
            external_id,
        } => {
            let via = visible_account(state, actor, via_account_id)
                .await
                .map_err(|_| {
                    ApiError::invalid_field(
                        "access.via_account_id",
                        "unknown_account",
                        "no such registered account",
                    )
                })?;
            if !safehold_domain::account::valid_role_name(&role_name) {
                return Err(ApiError::invalid_field(
                    "access.role_name",
                    "invalid_value",
                    "a role name (not an ARN): 1-64 of letters, digits and +=,.@_-",
                ));
            }
            let source = state
                .cloud
                .access_of(tenant, &via)
                .await
                .map_err(ApiError::internal)?;
            let spec = AccessSpec::AssumeRole {
                source: Box::new(source),
                role_arn: role_arn(&body.number, &role_name),
                external_id: external_id.clone(),
            };
            verify_identity(state, &spec, &body.number, &region).await?;
            (
                AccessMethod::AssumeRole {
                    via_account: via_account_id,
                    role_name,
                    external_id,
                },
                None,
            )
        }
    };
    let id = Uuid::new_v4();
    let command = AccountCommand::Register {
        id,
        tenant_id: tenant,
        owner_id: UserId(owner),
        name: body.name,
        number: body.number,
        kind,
        access,
        scan: body.scan,
    };
    if let Err(e) = state.commands.account(&meta, id, command).await {
        if let Some(secret_id) = secret {
            let _ = safehold_cloud::secrets::delete(&state.pool, tenant.0, secret_id).await;
        }
        return Err(e);
    }
    visible_account(state, actor, id).await
}

/// Accounts the caller sees (its own and its managed users'), by name.
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", params(PageQuery),
    responses((status = 200, body = Page<AccountView>)), security(("bearer" = [])))]
#[get("/v1/accounts")]
pub async fn list_accounts(
    state: web::Data<AppState>,
    auth: Authenticated,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let limit = pagination::limit(query.limit)?;
    let after: Option<(String, Uuid)> = query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?;
    let owners = visible_owners(&state, &auth.actor).await?;
    let rows = read::list(&state.pool, auth.actor.tenant_id, &owners, after, limit + 1).await?;
    let page = pagination::page(
        rows,
        limit,
        |r| (r.name.clone(), r.account_id),
        AccountView::from,
    );
    Ok(HttpResponse::Ok().json(page))
}

/// One account.
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = Uuid, Path)),
    responses((status = 200, body = AccountView), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/v1/accounts/{id}")]
pub async fn get_account(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let row = visible_account(&state, &auth.actor, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(AccountView::from(row)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccountRequest {
    pub name: Option<String>,
    /// Vaults only.
    pub allow_delete: Option<bool>,
    pub scan: Option<ScanSettings>,
}

/// Renames an account, changes its regions and scanning, or a vault's allow_delete.
#[utoipa::path(patch, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = Uuid, Path)), request_body = UpdateAccountRequest,
    responses((status = 200, body = AccountView), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[patch("/v1/accounts/{id}")]
pub async fn update_account(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: Json<UpdateAccountRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_account(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ChangeAccounts)?;
    let body = body.0;
    let kind = match (row.kind.as_str(), body.allow_delete) {
        (_, None) => None,
        ("vault", Some(allow_delete)) => Some(AccountKind::Vault { allow_delete }),
        _ => {
            return Err(ApiError::invalid_field(
                "allow_delete",
                "not_applicable",
                "only vault accounts have allow_delete",
            ))
        }
    };
    let command = AccountCommand::Update {
        name: body.name,
        kind,
        scan: body.scan,
    };
    state
        .commands
        .account(&auth.metadata(), row.account_id, command)
        .await?;
    state.cloud.configs.forget_all().await;
    let row = visible_account(&state, actor, row.account_id).await?;
    Ok(HttpResponse::Ok().json(AccountView::from(row)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeysRequest {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Replaces an account's access key after checking the new one with STS.
#[utoipa::path(put, path = "/v1/accounts/{id}/keys", tag = "accounts", params(("id" = Uuid, Path)), request_body = RotateKeysRequest,
    responses((status = 200, body = AccountView), (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[put("/v1/accounts/{id}/keys")]
pub async fn rotate_keys(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: Json<RotateKeysRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_account(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ChangeAccounts)?;
    if row.access_method != "access_keys" {
        return Err(ApiError::conflict(
            "not_key_based",
            "this account is not reached with access keys",
        ));
    }
    let body = body.0;
    let secret = Secret::new(body.secret_access_key);
    let spec = AccessSpec::Keys {
        access_key_id: body.access_key_id.clone(),
        secret_access_key: secret.clone(),
    };
    let region = row
        .regions
        .first()
        .cloned()
        .unwrap_or_else(|| "us-east-1".into());
    verify_identity(&state, &spec, &row.number, &region).await?;
    let secret_id = state.cloud.store_secret(actor.tenant_id, &secret).await?;
    let command = AccountCommand::RotateKeys {
        access_key_id: body.access_key_id,
        secret_id,
    };
    if let Err(e) = state
        .commands
        .account(&auth.metadata(), row.account_id, command)
        .await
    {
        let _ = safehold_cloud::secrets::delete(&state.pool, actor.tenant_id.0, secret_id).await;
        return Err(e);
    }
    if let Some(old) = row.secret_id {
        safehold_cloud::secrets::delete(&state.pool, actor.tenant_id.0, old).await?;
    }
    state.cloud.configs.forget_all().await;
    let row = visible_account(&state, actor, row.account_id).await?;
    Ok(HttpResponse::Ok().json(AccountView::from(row)))
}

/// Removes an account (not while other accounts assume roles through it).
#[utoipa::path(delete, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 409, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[delete("/v1/accounts/{id}")]
pub async fn remove_account(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_account(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ChangeAccounts)?;
    let dependants = read::dependants(&state.pool, actor.tenant_id, row.account_id).await?;
    if !dependants.is_empty() {
        return Err(ApiError::conflict(
            "account_in_use",
            format!("remove what depends on it first: {}", dependants.join(", ")),
        ));
    }
    state
        .commands
        .account(&auth.metadata(), row.account_id, AccountCommand::Remove)
        .await?;
    if let Some(secret) = row.secret_id {
        safehold_cloud::secrets::delete(&state.pool, actor.tenant_id.0, secret).await?;
    }
    sqlx::query("DELETE FROM resources WHERE tenant_id = $1 AND account_id = $2")
        .bind(actor.tenant_id.0)
        .bind(row.account_id)
        .execute(&state.pool)
        .await?;
    state.cloud.configs.forget_all().await;
    Ok(HttpResponse::NoContent().finish())
}

/// Scans the account's regions now and refreshes its resource inventory.
#[utoipa::path(post, path = "/v1/accounts/{id}/discover", tag = "accounts", params(("id" = Uuid, Path)),
    responses((status = 200, description = "per-region outcome: region, resources found, error")),
    security(("bearer" = [])))]
#[post("/v1/accounts/{id}/discover")]
pub async fn discover(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let row = visible_account(&state, &auth.actor, path.into_inner()).await?;
    let outcomes =
        safehold_jobs::discovery::refresh_account(&state.cloud, auth.actor.tenant_id, &row).await;
    Ok(HttpResponse::Ok().json(outcomes))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ResourceQuery {
    /// ec2_instance, ebs_volume, rds_instance, aurora_cluster, redshift_cluster or dynamodb_table.
    #[serde(rename = "type")]
    pub resource_type: Option<String>,
    pub region: Option<String>,
    /// Part of the id or name.
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceView {
    pub region: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    pub id: String,
    pub name: Option<String>,
    pub size_gib: Option<i32>,
    pub tags: serde_json::Value,
    pub details: serde_json::Value,
    pub refreshed_at: DateTime<Utc>,
    /// How many policies back this resource up.
    pub protected_by_policies: i64,
}

const RESOURCE_TYPES: [&str; 6] = [
    "ec2_instance",
    "ebs_volume",
    "rds_instance",
    "aurora_cluster",
    "redshift_cluster",
    "dynamodb_table",
];

/// The account's cached resource inventory (refreshed by discovery).
#[utoipa::path(get, path = "/v1/accounts/{id}/resources", tag = "accounts", params(("id" = Uuid, Path), ResourceQuery),
    responses((status = 200, body = Page<ResourceView>)), security(("bearer" = [])))]
#[get("/v1/accounts/{id}/resources")]
pub async fn list_resources(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    query: web::Query<ResourceQuery>,
) -> ApiResult<HttpResponse> {
    let row = visible_account(&state, &auth.actor, path.into_inner()).await?;
    let query = query.into_inner();
    if let Some(t) = &query.resource_type {
        if !RESOURCE_TYPES.contains(&t.as_str()) {
            return Err(ApiError::invalid_field(
                "type",
                "invalid_value",
                format!("one of {}", RESOURCE_TYPES.join(", ")),
            ));
        }
    }
    let limit = pagination::limit(query.limit)?;
    let filter = ResourceFilter {
        resource_type: query.resource_type,
        region: query.region,
        query: query.q,
        after: query
            .cursor
            .as_deref()
            .map(pagination::decode)
            .transpose()?,
    };
    let rows = read::list_resources(
        &state.pool,
        auth.actor.tenant_id,
        row.account_id,
        &filter,
        limit + 1,
    )
    .await?;
    let page = pagination::page(
        rows,
        limit,
        |r| {
            (
                r.region.clone(),
                r.resource_type.clone(),
                r.resource_id.clone(),
            )
        },
        |r| ResourceView {
            region: r.region,
            resource_type: r.resource_type,
            id: r.resource_id,
            name: r.name,
            size_gib: r.size_gib,
            tags: r.tags,
            details: r.details,
            refreshed_at: r.refreshed_at,
            protected_by_policies: r.protected_by,
        },
    );
    Ok(HttpResponse::Ok().json(page))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PermissionCheckView {
    pub region: String,
    /// `backup`, `dr_copy` or `recovery`.
    pub capability: String,
    /// The AWS action tried (with DryRun where the service has it).
    pub action: String,
    /// `allowed`, `denied` or `unknown`.
    pub outcome: String,
    pub detail: String,
}

/// Asks AWS, without changing anything, whether Safehold may back up, copy
/// for DR and recover in each of the account's regions.
#[utoipa::path(post, path = "/v1/accounts/{id}/permission-check", tag = "accounts", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<PermissionCheckView>)), security(("bearer" = [])))]
#[post("/v1/accounts/{id}/permission-check")]
pub async fn permission_check(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let row = visible_account(&state, &auth.actor, path.into_inner()).await?;
    let tenant = auth.actor.tenant_id;
    let mut views = Vec::new();
    for region in &row.regions {
        let sample = |kind: &'static str| {
            let pool = state.pool.clone();
            let region = region.clone();
            async move {
                sqlx::query_scalar::<_, String>(
                    "SELECT resource_id FROM resources WHERE tenant_id = $1 AND account_id = $2
                        AND region = $3 AND resource_type = $4 ORDER BY resource_id LIMIT 1",
                )
                .bind(tenant.0)
                .bind(row.account_id)
                .bind(region)
                .bind(kind)
                .fetch_optional(&pool)
                .await
            }
        };
        let samples = safehold_cloud::permissions::Samples {
            volume_id: sample("ebs_volume")
                .await?
                .unwrap_or_else(|| "vol-0123456789abcdef0".into()),
            instance_id: sample("ec2_instance")
                .await?
                .unwrap_or_else(|| "i-0123456789abcdef0".into()),
            snapshot_id: "snap-0123456789abcdef0".into(),
            availability_zone: format!("{region}a"),
        };
        let config = state
            .cloud
            .config(tenant, &row, region)
            .await
            .map_err(ApiError::internal)?;
        for check in safehold_cloud::permissions::check(&config, &samples).await {
            views.push(PermissionCheckView {
                region: region.clone(),
                capability: check.capability.into(),
                action: check.action.into(),
                outcome: serde_json::to_value(check.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                detail: check.detail,
            });
        }
    }
    Ok(HttpResponse::Ok().json(views))
}
