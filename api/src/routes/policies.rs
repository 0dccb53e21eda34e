//! Backup policies: settings, targets, schedules, enable/disable and run now.

use actix_web::{delete, get, patch, post, put, web, HttpResponse};
use chrono::{DateTime, Utc};
use safehold_domain::access::{Action, Actor};
use safehold_domain::policy::{
    AutoTargetRemoval, DrSettings, InstanceMode, InstanceOptions, PolicyCommand, PolicySettings,
    ProtectedUsage, ResourceKind, SuccessCriterion, Target, TargetKey, Trigger, VolumeSelection,
};
use safehold_domain::UserId;
use safehold_projections::policies::{self as read, PolicyFilter, PolicyRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::body::Json;
use crate::error::{ApiError, ApiResult};
use crate::pagination::{self, Page};
use crate::routes::accounts::{visible_account, visible_owners};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicyRequest {
    /// Unique among the owner's policies.
    pub name: String,
    /// The account whose resources the policy backs up; cannot change later.
    pub account_id: Uuid,
    pub description: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Successful backups to keep (default 30).
    pub generations: Option<u32>,
    pub auto_target_removal: Option<AutoTargetRemoval>,
    pub success_criterion: Option<SuccessCriterion>,
    /// Default 3.
    pub retries: Option<u32>,
    /// Default 30.
    pub retry_wait_minutes: Option<u32>,
    /// Default 1.
    pub failures_before_alert: Option<u32>,
    /// Schedules that start the policy.
    #[serde(default)]
    pub schedule_ids: Vec<Uuid>,
    /// Disaster recovery (default: off).
    pub dr: Option<DrRequest>,
}

/// Disaster-recovery settings to change; omitted fields keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrRequest {
    pub enabled: Option<bool>,
    /// Copy every N-th successful backup (default 1: each); the others are skipped.
    pub every: Option<u32>,
    /// Regions the copies go to (required when enabled).
    pub regions: Option<Vec<String>>,
    /// Copies not completed after this many hours fail (default 24).
    pub timeout_hours: Option<u32>,
    /// A vault account of the organisation that receives the copies; `null`:
    /// the policy's own account.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub vault_account_id: Option<Option<Uuid>>,
    /// Keep the original snapshots once copied (default true).
    pub keep_originals: Option<bool>,
}

/// Tells an explicit `null` (Some(None)) from an absent field (None).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The DR settings a request asks for over `current`: checked in full (the
/// vault must be a vault account the caller sees) before anything changes.
async fn requested_dr(
    state: &AppState,
    actor: &Actor,
    current: DrSettings,
    request: DrRequest,
) -> ApiResult<DrSettings> {
    let dr = DrSettings {
        enabled: request.enabled.unwrap_or(current.enabled),
        every: request.every.unwrap_or(current.every),
        regions: request.regions.unwrap_or(current.regions),
        timeout_hours: request.timeout_hours.unwrap_or(current.timeout_hours),
        vault_account_id: request.vault_account_id.unwrap_or(current.vault_account_id),
        keep_originals: request.keep_originals.unwrap_or(current.keep_originals),
    };
    let errors = dr.validate();
    if !errors.is_empty() {
        return Err(safehold_domain::DomainError::Invalid(errors).into());
    }
    if let Some(vault) = dr.vault_account_id {
        let account = visible_account(state, actor, vault).await.map_err(|_| {
            ApiError::invalid_field("dr.vault_account_id", "unknown_account", "no such account")
        })?;
        if account.kind != "vault" {
            return Err(ApiError::invalid_field(
                "dr.vault_account_id",
                "not_a_vault",
                "copies go to a vault account; this is a backup account",
            ));
        }
    }
    Ok(dr)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicyRequest {
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub generations: Option<u32>,
    pub auto_target_removal: Option<AutoTargetRemoval>,
    pub success_criterion: Option<SuccessCriterion>,
    pub retries: Option<u32>,
    pub retry_wait_minutes: Option<u32>,
    pub failures_before_alert: Option<u32>,
    /// Disaster recovery; omitted fields keep their value.
    pub dr: Option<DrRequest>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetView {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub region: String,
    pub resource_id: String,
    /// From the inventory; absent when the resource is no longer there.
    pub name: Option<String>,
    pub size_gib: Option<i32>,
    /// EC2 instances only.
    pub instance: Option<InstanceOptions>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub account_id: Uuid,
    pub name: String,
    pub enabled: bool,
    #[serde(flatten)]
    pub settings: PolicySettings,
    /// Created by a tag scan rather than by a user.
    pub from_tag_scan: bool,
    /// Disaster recovery.
    pub dr: DrSettings,
    pub running_backup_id: Option<Uuid>,
    pub last_backup_at: Option<DateTime<Utc>>,
    /// When a recovery from one of its backups was last started: how recent its drills are.
    pub last_recovery_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Only in single-policy responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<TargetView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_ids: Option<Vec<Uuid>>,
}

impl PolicyView {
    fn summary(r: PolicyRow) -> Self {
        Self {
            settings: r.settings(),
            dr: r.dr(),
            id: r.policy_id,
            owner_id: r.owner_id,
            account_id: r.account_id,
            name: r.name,
            enabled: r.enabled,
            from_tag_scan: r.from_tag_scan,
            running_backup_id: r.running_backup_id,
            last_backup_at: r.last_backup_at,
            last_recovery_at: r.last_recovery_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            targets: None,
            schedule_ids: None,
        }
    }
}

async fn detailed(state: &AppState, actor: &Actor, row: PolicyRow) -> ApiResult<PolicyView> {
    let id = row.policy_id;
    let targets = read::targets(&state.pool, actor.tenant_id, id)
        .await?
        .into_iter()
        .map(|t| TargetView {
            instance: t.instance_mode.as_deref().and_then(|mode| {
                Some(InstanceOptions {
                    mode: serde_json::from_value(serde_json::Value::String(mode.into())).ok()?,
                    volumes: serde_json::from_value(t.volumes.clone()?).ok()?,
                })
            }),
            resource_type: t.resource_type,
            region: t.region,
            resource_id: t.resource_id,
            name: t.name,
            size_gib: t.size_gib,
        })
        .collect();
    let schedules = read::schedule_ids(&state.pool, actor.tenant_id, id).await?;
    let mut view = PolicyView::summary(row);
    view.targets = Some(targets);
    view.schedule_ids = Some(schedules);
    Ok(view)
}

/// A policy the actor may see; anything else is "not found".
pub(crate) async fn visible_policy(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> ApiResult<PolicyRow> {
    let row = read::find_policy(&state.pool, actor.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("policy"))?;
    if visible_owners(state, actor).await?.contains(&row.owner_id) {
        Ok(row)
    } else {
        Err(ApiError::not_found("policy"))
    }
}

/// Schedules must be the policy owner's and visible to the actor.
async fn check_schedules(
    state: &AppState,
    actor: &Actor,
    owner: Uuid,
    ids: &[Uuid],
    field: &str,
) -> ApiResult<()> {
    for id in ids {
        let schedule =
            safehold_projections::policies::find_schedule(&state.pool, actor.tenant_id, *id)
                .await?
                .filter(|s| s.owner_id == owner);
        if schedule.is_none() {
            return Err(ApiError::invalid_field(
                field,
                "unknown_schedule",
                format!("no schedule {id} of the policy's owner"),
            ));
        }
    }
    Ok(())
}

async fn check_name_free(
    state: &AppState,
    actor: &Actor,
    owner: Uuid,
    name: &str,
    except: Option<Uuid>,
) -> ApiResult<()> {
    if read::name_taken(&state.pool, actor.tenant_id, owner, name.trim(), except).await? {
        return Err(ApiError::conflict(
            "name_taken",
            format!("a policy named {} exists", name.trim()),
        ));
    }
    Ok(())
}

/// Creates a policy for the owner of its account.
#[utoipa::path(post, path = "/v1/policies", tag = "policies", request_body = CreatePolicyRequest,
    responses((status = 201, body = PolicyView),
              (status = 403, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/policies")]
pub async fn create_policy(
    state: web::Data<AppState>,
    auth: Authenticated,
    body: Json<CreatePolicyRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    actor.authorize(Action::ChangeBackup)?;
    let body = body.0;
    let account = visible_account(&state, actor, body.account_id)
        .await
        .map_err(|_| ApiError::invalid_field("account_id", "unknown_account", "no such account"))?;
    if account.kind != "backup" {
        return Err(ApiError::invalid_field(
            "account_id",
            "vault_account",
            "a vault account receives copies; policies back up backup accounts",
        ));
    }
    let owner = account.owner_id;
    check_name_free(&state, actor, owner, &body.name, None).await?;
    check_schedules(&state, actor, owner, &body.schedule_ids, "schedule_ids").await?;
    let dr = match body.dr {
        Some(request) => Some(requested_dr(&state, actor, DrSettings::default(), request).await?),
        None => None,
    };
    let defaults = PolicySettings::default();
    let settings = PolicySettings {
        description: body.description.unwrap_or_default(),
        generations: body.generations.unwrap_or(defaults.generations),
        auto_target_removal: body
            .auto_target_removal
            .unwrap_or(defaults.auto_target_removal),
        success_criterion: body.success_criterion.unwrap_or(defaults.success_criterion),
        retries: body.retries.unwrap_or(defaults.retries),
        retry_wait_minutes: body
            .retry_wait_minutes
            .unwrap_or(defaults.retry_wait_minutes),
        failures_before_alert: body
            .failures_before_alert
            .unwrap_or(defaults.failures_before_alert),
    };
    let id = Uuid::new_v4();
    let meta = auth.metadata();
    state
        .commands
        .policy(
            &meta,
            id,
            PolicyCommand::Create {
                id,
                tenant_id: actor.tenant_id,
                owner_id: UserId(owner),
                account_id: account.account_id,
                name: body.name,
                settings,
                enabled: body.enabled.unwrap_or(true),
                from_tag_scan: false,
            },
        )
        .await?;
    for schedule in body.schedule_ids {
        state
            .commands
            .policy(&meta, id, PolicyCommand::AttachSchedule(schedule))
            .await?;
    }
    if let Some(dr) = dr {
        state
            .commands
            .policy(&meta, id, PolicyCommand::SetDr(dr))
            .await?;
    }
    let row = visible_policy(&state, actor, id).await?;
    Ok(HttpResponse::Created().json(detailed(&state, actor, row).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PolicyQuery {
    pub account_id: Option<Uuid>,
    pub enabled: Option<bool>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Policies the caller sees, by name.
#[utoipa::path(get, path = "/v1/policies", tag = "policies", params(PolicyQuery),
    responses((status = 200, body = Page<PolicyView>)), security(("bearer" = [])))]
#[get("/v1/policies")]
pub async fn list_policies(
    state: web::Data<AppState>,
    auth: Authenticated,
    query: web::Query<PolicyQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let limit = pagination::limit(query.limit)?;
    let filter = PolicyFilter {
        account_id: query.account_id,
        enabled: query.enabled,
        after: query
            .cursor
            .as_deref()
            .map(pagination::decode)
            .transpose()?,
    };
    let owners = visible_owners(&state, &auth.actor).await?;
    let rows = read::list_policies(
        &state.pool,
        auth.actor.tenant_id,
        &owners,
        &filter,
        limit + 1,
    )
    .await?;
    let page = pagination::page(
        rows,
        limit,
        |r| (r.name.clone(), r.policy_id),
        PolicyView::summary,
    );
    Ok(HttpResponse::Ok().json(page))
}

/// One policy with its targets and schedules.
#[utoipa::path(get, path = "/v1/policies/{id}", tag = "policies", params(("id" = Uuid, Path)),
    responses((status = 200, body = PolicyView), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/v1/policies/{id}")]
pub async fn get_policy(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let row = visible_policy(&state, &auth.actor, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(detailed(&state, &auth.actor, row).await?))
}

/// Changes a policy's name, settings or disaster recovery, or enables/disables it. The account cannot change.
#[utoipa::path(patch, path = "/v1/policies/{id}", tag = "policies", params(("id" = Uuid, Path)), request_body = UpdatePolicyRequest,
    responses((status = 200, body = PolicyView),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[patch("/v1/policies/{id}")]
pub async fn update_policy(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: Json<UpdatePolicyRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_policy(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ChangeBackup)?;
    let body = body.0;
    if let Some(name) = &body.name {
        check_name_free(&state, actor, row.owner_id, name, Some(row.policy_id)).await?;
    }
    let current = row.settings();
    let settings = PolicySettings {
        description: body.description.unwrap_or(current.description),
        generations: body.generations.unwrap_or(current.generations),
        auto_target_removal: body
            .auto_target_removal
            .unwrap_or(current.auto_target_removal),
        success_criterion: body.success_criterion.unwrap_or(current.success_criterion),
        retries: body.retries.unwrap_or(current.retries),
        retry_wait_minutes: body
            .retry_wait_minutes
            .unwrap_or(current.retry_wait_minutes),
        failures_before_alert: body
            .failures_before_alert
            .unwrap_or(current.failures_before_alert),
    };
    let meta = auth.metadata();
    // Validate everything before changing anything.
    let mut errors: Vec<_> = body
        .name
        .as_deref()
        .and_then(safehold_domain::policy::validate_name)
        .into_iter()
        .collect();
    errors.extend(settings.validate());
    if !errors.is_empty() {
        return Err(safehold_domain::DomainError::Invalid(errors).into());
    }
    let dr = match body.dr {
        Some(request) => Some(requested_dr(&state, actor, row.dr(), request).await?),
        None => None,
    };
    state
        .commands
        .policy(
            &meta,
            row.policy_id,
            PolicyCommand::Update {
                name: body.name,
                settings: Some(settings),
            },
        )
        .await?;
    if let Some(enabled) = body.enabled {
        state
            .commands
            .policy(&meta, row.policy_id, PolicyCommand::SetEnabled(enabled))
            .await?;
    }
    if let Some(dr) = dr {
        state
            .commands
            .policy(&meta, row.policy_id, PolicyCommand::SetDr(dr))
            .await?;
    }
    let row = visible_policy(&state, actor, row.policy_id).await?;
    Ok(HttpResponse::Ok().json(detailed(&state, actor, row).await?))
}

/// Deletes a policy. Its backups in the freezer are kept.
#[utoipa::path(delete, path = "/v1/policies/{id}", tag = "policies", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[delete("/v1/policies/{id}")]
pub async fn delete_policy(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let row = visible_policy(&state, &auth.actor, path.into_inner()).await?;
    auth.actor.authorize(Action::ChangeBackup)?;
    state
        .commands
        .policy(&auth.metadata(), row.policy_id, PolicyCommand::Remove)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Instance options as a client sends them; omitted parts take defaults from the instance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceOptionsRequest {
    /// Default: snapshots plus an initial AMI for Windows, snapshots for others.
    pub mode: Option<InstanceMode>,
    /// Default: all volumes.
    pub volumes: Option<VolumeSelection>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutTargetRequest {
    #[serde(rename = "type")]
    pub resource_type: ResourceKind,
    pub region: String,
    pub resource_id: String,
    /// EC2 instances only.
    pub instance: Option<InstanceOptionsRequest>,
}

/// The owner's protected resources with this target added must stay within its limits.
async fn check_limits(
    state: &AppState,
    actor: &Actor,
    policy: &PolicyRow,
    adding: (&TargetKey, Option<i32>),
) -> ApiResult<()> {
    let owner = safehold_projections::users::find_user(
        &state.pool,
        actor.tenant_id,
        UserId(policy.owner_id),
    )
    .await?
    .ok_or_else(|| ApiError::not_found("policy owner"))?;
    let limits = owner.limits();
    let mut protected =
        read::protected_by_owner(&state.pool, actor.tenant_id, policy.owner_id, None).await?;
    let key = (
        policy.account_id.to_string(),
        adding.0.kind.as_str().to_string(),
        adding.0.region.clone(),
        adding.0.resource_id.clone(),
    );
    if !protected
        .iter()
        .any(|(a, t, r, i, _)| (a, t, r, i) == (&key.0, &key.1, &key.2, &key.3))
    {
        protected.push((key.0, key.1, key.2, key.3, adding.1));
    }
    let mut usage = ProtectedUsage::default();
    for (_, kind, _, _, size) in protected {
        if let Some(kind) = ResourceKind::parse(&kind) {
            usage.add(kind, size.unwrap_or(0).max(0) as u64);
        }
    }
    let exceeded = usage.exceeded(&limits);
    if exceeded.is_empty() {
        Ok(())
    } else {
        Err(ApiError::conflict(
            "limit_reached",
            exceeded
                .iter()
                .map(|e| format!("{}: {}", e.field, e.detail))
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }
}

/// Adds a target to the policy, or replaces its options. The resource must be in the account's inventory.
#[utoipa::path(post, path = "/v1/policies/{id}/targets", tag = "policies", params(("id" = Uuid, Path)), request_body = PutTargetRequest,
    responses((status = 200, body = PolicyView),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/policies/{id}/targets")]
pub async fn put_target(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: Json<PutTargetRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let policy = visible_policy(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ChangeBackup)?;
    let body = body.0;
    let key = TargetKey {
        kind: body.resource_type,
        region: body.region,
        resource_id: body.resource_id,
    };
    if key.kind != ResourceKind::Ec2Instance && body.instance.is_some() {
        return Err(ApiError::invalid_field(
            "instance",
            "not_applicable",
            "only EC2 instance targets take instance options",
        ));
    }
    let resource: Option<(Option<i32>, serde_json::Value)> = sqlx::query_as(
        "SELECT size_gib, details FROM resources
          WHERE tenant_id = $1 AND account_id = $2 AND region = $3 AND resource_type = $4 AND resource_id = $5",
    )
    .bind(actor.tenant_id.0)
    .bind(policy.account_id)
    .bind(&key.region)
    .bind(key.kind.as_str())
    .bind(&key.resource_id)
    .fetch_optional(&state.pool)
    .await?;
    let Some((size, details)) = resource else {
        return Err(ApiError::invalid_field(
            "resource_id",
            "unknown_resource",
            format!(
                "no {} {} in {} of this account's inventory (refresh discovery if it is new)",
                key.kind.as_str(),
                key.resource_id,
                key.region
            ),
        ));
    };
    let instance = match (key.kind, body.instance) {
        (ResourceKind::Ec2Instance, options) => {
            let options = options.unwrap_or(InstanceOptionsRequest {
                mode: None,
                volumes: None,
            });
            let platform = details["platform"].as_str().unwrap_or("Linux/UNIX");
            let volumes = options.volumes.unwrap_or(VolumeSelection::All);
            if let VolumeSelection::Include { devices } | VolumeSelection::Exclude { devices } =
                &volumes
            {
                let known: Vec<&str> = details["volumes"]
                    .as_array()
                    .map(|v| v.iter().filter_map(|d| d["device"].as_str()).collect())
                    .unwrap_or_default();
                if let Some(unknown) = devices.iter().find(|d| !known.contains(&d.as_str())) {
                    return Err(ApiError::invalid_field(
                        "instance.volumes.devices",
                        "unknown_device",
                        format!(
                            "the instance has no device {unknown} (it has {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
            Some(InstanceOptions {
                mode: options
                    .mode
                    .unwrap_or_else(|| InstanceMode::default_for_platform(platform)),
                volumes,
            })
        }
        _ => None,
    };
    check_limits(&state, actor, &policy, (&key, size)).await?;
    state
        .commands
        .policy(
            &auth.metadata(),
            policy.policy_id,
            PolicyCommand::PutTarget(Target { key, instance }),
        )
        .await?;
    Ok(HttpResponse::Ok().json(detailed(&state, actor, policy).await?))
}

/// Removes a target from the policy.
#[utoipa::path(delete, path = "/v1/policies/{id}/targets/{type}/{region}/{resource_id}", tag = "policies",
    params(("id" = Uuid, Path), ("type" = ResourceKind, Path), ("region" = String, Path), ("resource_id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[delete("/v1/policies/{id}/targets/{type}/{region}/{resource_id}")]
pub async fn remove_target(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<(Uuid, String, String, String)>,
) -> ApiResult<HttpResponse> {
    let (id, kind, region, resource_id) = path.into_inner();
    let policy = visible_policy(&state, &auth.actor, id).await?;
    auth.actor.authorize(Action::ChangeBackup)?;
    let kind = ResourceKind::parse(&kind).ok_or_else(|| ApiError::not_found("target"))?;
    state
        .commands
        .policy(
            &auth.metadata(),
            policy.policy_id,
            PolicyCommand::RemoveTarget {
                key: TargetKey {
                    kind,
                    region,
                    resource_id,
                },
                vanished: false,
            },
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Attaches a schedule to the policy.
#[utoipa::path(put, path = "/v1/policies/{id}/schedules/{schedule_id}", tag = "policies",
    params(("id" = Uuid, Path), ("schedule_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[put("/v1/policies/{id}/schedules/{schedule_id}")]
pub async fn attach_schedule(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> ApiResult<HttpResponse> {
    let (id, schedule) = path.into_inner();
    let policy = visible_policy(&state, &auth.actor, id).await?;
    auth.actor.authorize(Action::ChangeBackup)?;
    check_schedules(
        &state,
        &auth.actor,
        policy.owner_id,
        &[schedule],
        "schedule_id",
    )
    .await?;
    state
        .commands
        .policy(
            &auth.metadata(),
            policy.policy_id,
            PolicyCommand::AttachSchedule(schedule),
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Detaches a schedule from the policy.
#[utoipa::path(delete, path = "/v1/policies/{id}/schedules/{schedule_id}", tag = "policies",
    params(("id" = Uuid, Path), ("schedule_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[delete("/v1/policies/{id}/schedules/{schedule_id}")]
pub async fn detach_schedule(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<(Uuid, Uuid)>,
) -> ApiResult<HttpResponse> {
    let (id, schedule) = path.into_inner();
    let policy = visible_policy(&state, &auth.actor, id).await?;
    auth.actor.authorize(Action::ChangeBackup)?;
    state
        .commands
        .policy(
            &auth.metadata(),
            policy.policy_id,
            PolicyCommand::DetachSchedule(schedule),
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BackupStartedView {
    pub backup_id: Uuid,
}

/// Starts a backup of the policy now (refused while one is running).
#[utoipa::path(post, path = "/v1/policies/{id}/run", tag = "policies", params(("id" = Uuid, Path)),
    responses((status = 202, body = BackupStartedView),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/policies/{id}/run")]
pub async fn run_policy(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let policy = visible_policy(&state, &auth.actor, path.into_inner()).await?;
    auth.actor.authorize(Action::ChangeBackup)?;
    let backup_id = Uuid::new_v4();
    state
        .commands
        .policy(
            &auth.metadata(),
            policy.policy_id,
            PolicyCommand::StartBackup {
                backup_id,
                trigger: Trigger::AdHoc,
            },
        )
        .await?;
    Ok(HttpResponse::Accepted().json(BackupStartedView { backup_id }))
}
