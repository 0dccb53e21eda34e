//! Recovery: the panel of what a backup can recover, from where and into
//! which accounts; starting a recovery; and the recovery monitor.

use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use safehold_cloud::access::{caller_identity, sdk_config, AccessSpec};
use safehold_cloud::secrets::Secret;
use safehold_domain::access::{Action, Actor};
use safehold_domain::backup::{BackupState, SnapshotState};
use safehold_domain::recovery::{
    self as rules, AuroraRequest, InstanceRequest, Location, RdsRequest, RecoveryCommand,
    RecoveryPlan, RecoveryStatus, RedshiftRequest, TableRequest, VolumesRequest,
};
use safehold_domain::source::{InstanceRecord, SourceRecord};
use safehold_projections::accounts::{self as accounts_read, AccountRow};
use safehold_projections::recoveries::{self as read, RecoveryFilter, RecoveryRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::body::Json;
use crate::error::{ApiError, ApiResult};
use crate::pagination::{self, Page};
use crate::routes::accounts::visible_owners;
use crate::routes::backups;
use crate::state::AppState;

fn aws_unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::BAD_GATEWAY,
        "aws_unavailable",
        format!("AWS could not be asked: {e}"),
    )
}

/// The backup and its state, if the actor may see it.
async fn visible_backup(state: &AppState, actor: &Actor, id: Uuid) -> ApiResult<BackupState> {
    backups::visible_backup(state, actor, id).await?;
    state
        .commands
        .load_backup(actor.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("backup"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PanelAccount {
    pub account_id: Uuid,
    pub name: String,
    pub number: String,
    /// `backup` or `vault`.
    pub kind: String,
}

/// Where the backup can be recovered from.
#[derive(Debug, Serialize, ToSchema)]
pub struct PanelSource {
    pub account_id: Uuid,
    pub region: String,
    /// `backup` (the backup's own snapshots) or `dr_copy`.
    pub origin: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PanelVolume {
    pub volume_id: String,
    pub device: Option<String>,
    pub size_gib: Option<i32>,
    pub snapshot_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PanelInstance {
    pub instance_id: String,
    pub region: String,
    /// The instance as it was at backup time (defaults of its recovery).
    pub record: Option<InstanceRecord>,
    pub volumes: Vec<PanelVolume>,
    /// The backup's initial AMI of the instance, if it has one.
    pub initial_ami: Option<String>,
    /// Whether the backup holds the boot volume's snapshot.
    pub can_launch_from_snapshot: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PanelDatabase {
    /// `rds_snapshot`, `aurora_snapshot`, `redshift_snapshot` or `dynamodb_backup`.
    pub kind: String,
    /// The DB instance, cluster or table.
    pub source: String,
    pub region: String,
    pub snapshot_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryPanelView {
    pub backup_id: Uuid,
    pub policy_id: Uuid,
    pub account_id: Uuid,
    pub sources: Vec<PanelSource>,
    /// The organisation's accounts a recovery may create resources in.
    pub target_accounts: Vec<PanelAccount>,
    pub instances: Vec<PanelInstance>,
    pub independent_volumes: Vec<PanelVolume>,
    pub databases: Vec<PanelDatabase>,
    /// When a recovery from this policy's backups was last started.
    pub last_recovery_at: Option<DateTime<Utc>>,
}

async fn tenant_accounts(state: &AppState, actor: &Actor) -> ApiResult<Vec<AccountRow>> {
    let owners = visible_owners(state, actor).await?;
    Ok(accounts_read::list(&state.pool, actor.tenant_id, &owners, None, 1000).await?)
}

/// What a backup can recover, from which regions and accounts, and into which accounts.
#[utoipa::path(get, path = "/v1/backups/{id}/recovery-panel", tag = "recoveries", params(("id" = Uuid, Path)),
    responses((status = 200, body = RecoveryPanelView),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/v1/backups/{id}/recovery-panel")]
pub async fn recovery_panel(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let backup = visible_backup(&state, actor, path.into_inner()).await?;
    let sources = rules::recovery_sources(&backup)
        .into_iter()
        .map(|l| PanelSource {
            origin: if l.account_id == backup.account_id
                && backup
                    .targets
                    .iter()
                    .any(|t| t.target.key.region == l.region)
            {
                "backup".into()
            } else {
                "dr_copy".into()
            },
            account_id: l.account_id,
            region: l.region,
        })
        .collect();
    let mut instances = Vec::new();
    let mut independent_volumes = Vec::new();
    let mut databases = Vec::new();
    for run in &backup.targets {
        let completed: Vec<_> = run
            .snapshots
            .values()
            .filter(|(_, s)| *s == SnapshotState::Completed)
            .map(|(snapshot, _)| snapshot)
            .collect();
        let volume = |s: &&safehold_domain::backup::Snapshot| PanelVolume {
            volume_id: s.source.clone(),
            device: s.device.clone(),
            size_gib: s.size_gib,
            snapshot_id: s.id.clone(),
        };
        match run.target.key.kind.as_str() {
            "ec2_instance" => {
                let record = match &run.source {
                    Some(SourceRecord::Instance(r)) => Some((**r).clone()),
                    _ => None,
                };
                let root = record.as_ref().and_then(|r| r.root_device_name.clone());
                instances.push(PanelInstance {
                    instance_id: run.target.key.resource_id.clone(),
                    region: run.target.key.region.clone(),
                    can_launch_from_snapshot: completed.iter().any(|s| {
                        s.kind == "ebs_snapshot" && s.device.is_some() && s.device == root
                    }),
                    initial_ami: completed
                        .iter()
                        .find(|s| s.kind == "ami")
                        .map(|s| s.id.clone()),
                    volumes: completed
                        .iter()
                        .filter(|s| s.kind == "ebs_snapshot")
                        .map(volume)
                        .collect(),
                    record,
                });
            }
            "ebs_volume" => independent_volumes.extend(completed.iter().map(volume)),
            _ => databases.extend(completed.iter().map(|s| PanelDatabase {
                kind: s.kind.clone(),
                source: s.source.clone(),
                region: s.region.clone(),
                snapshot_id: s.id.clone(),
            })),
        }
    }
    let target_accounts = tenant_accounts(&state, actor)
        .await?
        .into_iter()
        .map(|a| PanelAccount {
            account_id: a.account_id,
            name: a.name,
            number: a.number,
            kind: a.kind,
        })
        .collect();
    Ok(HttpResponse::Ok().json(RecoveryPanelView {
        backup_id: backup.id,
        policy_id: backup.policy_id,
        account_id: backup.account_id,
        sources,
        target_accounts,
        instances,
        independent_volumes,
        databases,
        last_recovery_at: read::last_recovery_of(&state.pool, actor.tenant_id, backup.policy_id)
            .await?,
    }))
}

/// AWS keys used for this recovery only, instead of the target account's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OneOffCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// One recovery: exactly one of `instance`, `volumes`, `rds`, `aurora`,
/// `redshift` and `dynamodb`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryRequest {
    /// The account holding the snapshots: default the backup's; a vault account holding DR copies.
    pub source_account_id: Option<Uuid>,
    /// The region to recover from (and in): default the resource's own; a DR region holding copies.
    pub source_region: Option<String>,
    /// The account to create resources in: default the source account.
    pub target_account_id: Option<Uuid>,
    /// Keys for this recovery only; they must belong to the target account.
    pub credentials: Option<OneOffCredentials>,
    pub instance: Option<InstanceRequest>,
    pub volumes: Option<VolumesRequest>,
    pub rds: Option<RdsRequest>,
    pub aurora: Option<AuroraRequest>,
    pub redshift: Option<RedshiftRequest>,
    pub dynamodb: Option<TableRequest>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveredView {
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryView {
    pub id: Uuid,
    pub backup_id: Uuid,
    pub policy_id: Uuid,
    /// `instance`, `volumes`, `rds`, `aurora`, `redshift` or `dynamodb`.
    pub kind: String,
    /// The backed-up resource(s).
    pub what: String,
    pub source: Location,
    pub target: Location,
    pub one_off_credentials: bool,
    pub status: RecoveryStatus,
    pub message: Option<String>,
    pub requested_by: Option<Uuid>,
    pub delegate_id: Option<Uuid>,
    pub requested_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<RecoveryRow> for RecoveryView {
    fn from(r: RecoveryRow) -> Self {
        Self {
            status: r.status(),
            id: r.recovery_id,
            backup_id: r.backup_id,
            policy_id: r.policy_id,
            kind: r.kind,
            what: r.what,
            source: Location {
                account_id: r.source_account_id,
                region: r.source_region,
            },
            target: Location {
                account_id: r.target_account_id,
                region: r.target_region,
            },
            one_off_credentials: r.one_off_credentials,
            message: r.message,
            requested_by: r.requested_by,
            delegate_id: r.delegate_id,
            requested_at: r.requested_at,
            finished_at: r.finished_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryLogEntry {
    pub time: DateTime<Utc>,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryDetailView {
    #[serde(flatten)]
    pub recovery: RecoveryView,
    /// What it created in AWS.
    pub resources: Vec<RecoveredView>,
    /// Oldest first.
    pub log: Vec<RecoveryLogEntry>,
}

async fn detailed(
    state: &AppState,
    actor: &Actor,
    row: RecoveryRow,
) -> ApiResult<RecoveryDetailView> {
    let id = row.recovery_id;
    let resources = read::resources_of(&state.pool, actor.tenant_id, id)
        .await?
        .into_iter()
        .map(|r| RecoveredView {
            kind: r.kind,
            id: r.resource_id,
        })
        .collect();
    let log = read::log_of(&state.pool, actor.tenant_id, id)
        .await?
        .into_iter()
        .map(|l| RecoveryLogEntry {
            time: l.occurred_at,
            message: l.message,
        })
        .collect();
    Ok(RecoveryDetailView {
        recovery: row.into(),
        resources,
        log,
    })
}

/// The instance being recovered, when it still runs where it is recovered
/// to (its private IP is then taken).
async fn live_instance(
    state: &AppState,
    actor: &Actor,
    instance: &str,
    account: &AccountRow,
    target: &Location,
) -> ApiResult<bool> {
    let config = state
        .cloud
        .config(actor.tenant_id, account, &target.region)
        .await
        .map_err(aws_unavailable)?;
    let ids = [instance.to_string()];
    let live = safehold_cloud::backup::describe_live_instances(&config, &ids)
        .await
        .map_err(aws_unavailable)?;
    Ok(live.contains_key(instance))
}

/// The backed-up resource a volume recovery is about: the instance, or the
/// first independent volume.
fn volumes_resource(request: &VolumesRequest) -> Option<String> {
    request
        .instance_id
        .clone()
        .or_else(|| request.volumes.iter().find_map(|v| v.volume_id.clone()))
}

/// The backed-up resource a request recovers.
fn resource_of(request: &RecoveryRequest) -> Option<String> {
    request
        .instance
        .as_ref()
        .map(|r| r.instance_id.clone())
        .or(request.volumes.as_ref().and_then(volumes_resource))
        .or(request.rds.as_ref().map(|r| r.db_instance_id.clone()))
        .or(request.aurora.as_ref().map(|r| r.cluster_id.clone()))
        .or(request.redshift.as_ref().map(|r| r.cluster_id.clone()))
        .or(request.dynamodb.as_ref().map(|r| r.table_name.clone()))
}

/// The plan the request asks for.
fn plan(
    request: &mut RecoveryRequest,
    backup: &BackupState,
    source: &Location,
    target: &Location,
    live_instance: Option<String>,
) -> ApiResult<RecoveryPlan> {
    let context = |resource: &str| {
        let home = rules::home_region(backup, resource).unwrap_or(&source.region);
        let mut ctx = rules::plan_context(backup, source, target, home);
        ctx.live_instances.extend(live_instance.clone());
        ctx
    };
    let chosen = [
        request.instance.is_some(),
        request.volumes.is_some(),
        request.rds.is_some(),
        request.aurora.is_some(),
        request.redshift.is_some(),
        request.dynamodb.is_some(),
    ]
    .iter()
    .filter(|c| **c)
    .count();
    if chosen != 1 {
        return Err(ApiError::invalid_field(
            "instance",
            "one_kind_required",
            "give exactly one of instance, volumes, rds, aurora, redshift and dynamodb",
        ));
    }
    // Problems name fields from the request's top: `instance.count`.
    let under = |kind: &str| {
        let kind = kind.to_string();
        move |e: safehold_domain::DomainError| match e {
            safehold_domain::DomainError::Invalid(errors) => safehold_domain::DomainError::Invalid(
                errors
                    .into_iter()
                    .map(|mut f| {
                        f.field = format!("{kind}.{}", f.field);
                        f
                    })
                    .collect(),
            ),
            other => other,
        }
    };
    let plan = if let Some(r) = request.instance.take() {
        let ctx = context(&r.instance_id);
        RecoveryPlan::Instance(Box::new(
            rules::plan_instance(r, &ctx).map_err(under("instance"))?,
        ))
    } else if let Some(r) = request.volumes.take() {
        let ctx = context(&volumes_resource(&r).unwrap_or_default());
        RecoveryPlan::Volumes(rules::plan_volumes(r, &ctx).map_err(under("volumes"))?)
    } else if let Some(r) = request.rds.take() {
        let ctx = context(&r.db_instance_id);
        RecoveryPlan::Rds(rules::plan_rds(r, &ctx).map_err(under("rds"))?)
    } else if let Some(r) = request.aurora.take() {
        let ctx = context(&r.cluster_id);
        RecoveryPlan::Aurora(rules::plan_aurora(r, &ctx).map_err(under("aurora"))?)
    } else if let Some(r) = request.redshift.take() {
        let ctx = context(&r.cluster_id);
        RecoveryPlan::Redshift(rules::plan_redshift(r, &ctx).map_err(under("redshift"))?)
    } else if let Some(r) = request.dynamodb.take() {
        let ctx = context(&r.table_name);
        RecoveryPlan::Dynamodb(rules::plan_table(r, &ctx).map_err(under("dynamodb"))?)
    } else {
        unreachable!("exactly one kind was checked above")
    };
    rules::check_place(&plan, source, target)?;
    Ok(plan)
}

/// The identifier a database recovery would take, if it is already in use.
async fn identifier_in_use(
    config: &safehold_cloud::SdkConfig,
    plan: &RecoveryPlan,
) -> ApiResult<Option<(&'static str, String)>> {
    let (kind, field, id) = match plan {
        RecoveryPlan::Rds(p) => ("rds", "rds.new_db_instance_id", &p.db_instance_id),
        RecoveryPlan::Aurora(p) => ("aurora", "aurora.new_cluster_id", &p.cluster_id),
        RecoveryPlan::Redshift(p) => ("redshift", "redshift.new_cluster_id", &p.cluster_id),
        RecoveryPlan::Dynamodb(p) => ("dynamodb", "dynamodb.new_table_name", &p.table_name),
        _ => return Ok(None),
    };
    let taken = safehold_cloud::recovery::identifier_taken(config, kind, id)
        .await
        .map_err(aws_unavailable)?;
    Ok(taken.then(|| (field, id.clone())))
}

/// Checks in the target account and region that what an instance recovery
/// refers to exists there (image, key pair, subnet, security groups) and
/// fits together, naming the field at fault.
async fn check_references(
    config: &safehold_cloud::SdkConfig,
    plan: &safehold_domain::recovery::InstancePlan,
) -> ApiResult<()> {
    let launch = safehold_cloud::recovery::LaunchSpec::for_plan(
        plan,
        plan.image_id.clone().unwrap_or_default(),
    );
    let Err(e) = safehold_cloud::recovery::check_launch_references(config, &launch).await else {
        return Ok(());
    };
    let field = match e.code.as_str() {
        "InvalidAMIID.NotFound" | "InvalidAMIID.Malformed" => "instance.image_id",
        "InvalidKeyPair.NotFound" => "instance.key_name",
        "InvalidSubnetID.NotFound" | "ZoneMismatch" => "instance.subnet_id",
        "PrivateIpNotInSubnet" => "instance.private_ip",
        "InvalidGroup.NotFound" | "SecurityGroupVpcMismatch" => "instance.security_group_ids",
        _ => return Err(aws_unavailable(e)),
    };
    Err(ApiError::invalid_field(
        field,
        "invalid_reference",
        e.message,
    ))
}

/// Starts a recovery from a backup. Options left out take the backed-up
/// resource's values; every problem with them is answered before anything
/// is created.
#[utoipa::path(post, path = "/v1/backups/{id}/recoveries", tag = "recoveries", params(("id" = Uuid, Path)),
    request_body = RecoveryRequest,
    responses((status = 202, body = RecoveryDetailView),
              (status = 403, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/backups/{id}/recoveries")]
pub async fn start_recovery(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: Json<RecoveryRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let backup = visible_backup(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::Recover)?;
    if backup.deleted {
        return Err(ApiError::conflict(
            "backup_deleted",
            "the backup's snapshots have been deleted",
        ));
    }
    let mut request = body.0;
    let accounts = tenant_accounts(&state, actor).await?;
    let account = |id: Uuid, field: &str| {
        accounts
            .iter()
            .find(|a| a.account_id == id)
            .cloned()
            .ok_or_else(|| {
                ApiError::invalid_field(
                    field,
                    "unknown_account",
                    "not an account of the organisation",
                )
            })
    };
    let resource_region = resource_of(&request)
        .and_then(|resource| rules::home_region(&backup, &resource).map(str::to_string));
    let source = Location {
        account_id: request.source_account_id.unwrap_or(backup.account_id),
        // A resource the backup does not hold is named by the planning below.
        region: request
            .source_region
            .clone()
            .or(resource_region)
            .or_else(|| backup.targets.first().map(|t| t.target.key.region.clone()))
            .unwrap_or_default(),
    };
    if !rules::recovery_sources(&backup).contains(&source) {
        return Err(ApiError::invalid_field(
            "source_region",
            "no_copies_there",
            format!(
                "the backup has no completed snapshots or DR copies in {} of that account",
                source.region
            ),
        ));
    }
    account(source.account_id, "source_account_id")?;
    let target = Location {
        account_id: request.target_account_id.unwrap_or(source.account_id),
        region: source.region.clone(),
    };
    let target_account = account(target.account_id, "target_account_id")?;
    // Checked without AWS first; then, for an instance keeping its
    // original IP, planned again if the original still runs.
    let live_check = request.instance.clone();
    let mut plan = plan(&mut request, &backup, &source, &target, None)?;
    if let (RecoveryPlan::Instance(p), Some(asked)) = (&plan, live_check) {
        if p.private_ip.is_some() && asked.private_ip.is_none() {
            let id = asked.instance_id.clone();
            if live_instance(&state, actor, &id, &target_account, &target).await? {
                request.instance = Some(asked);
                plan = self::plan(&mut request, &backup, &source, &target, Some(id))?;
            }
        }
    }

    // The target account's view, through the one-off keys when given.
    let one_off = request.credentials.take();
    let one_off_credentials = one_off.is_some();
    let config = match &one_off {
        Some(keys) => {
            let spec = AccessSpec::Keys {
                access_key_id: keys.access_key_id.clone(),
                secret_access_key: Secret::new(keys.secret_access_key.clone()),
            };
            let config = sdk_config(&state.cloud.endpoint, &spec, &target.region).await;
            let identity = caller_identity(&config).await.map_err(|e| {
                ApiError::invalid_field("credentials", "credentials_rejected", e.to_string())
            })?;
            if identity.account != target_account.number {
                return Err(ApiError::invalid_field(
                    "credentials",
                    "wrong_account",
                    format!(
                        "the credentials belong to account {}, not to {}",
                        identity.account, target_account.number
                    ),
                ));
            }
            config
        }
        None => state
            .cloud
            .config(actor.tenant_id, &target_account, &target.region)
            .await
            .map_err(aws_unavailable)?,
    };
    if let RecoveryPlan::Instance(p) = &plan {
        check_references(&config, p).await?;
    }
    if let Some((field, id)) = identifier_in_use(&config, &plan).await? {
        return Err(ApiError::invalid_field(
            field,
            "identifier_in_use",
            format!("{id} exists in the target account: choose a new identifier"),
        ));
    }

    let id = Uuid::new_v4();
    if let Some(keys) = one_off {
        let secret_id = state
            .cloud
            .store_secret(actor.tenant_id, &Secret::new(keys.secret_access_key))
            .await
            .map_err(ApiError::internal)?;
        sqlx::query(
            "INSERT INTO recovery_credentials (tenant_id, recovery_id, access_key_id, secret_id)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(actor.tenant_id.0)
        .bind(id)
        .bind(&keys.access_key_id)
        .bind(secret_id)
        .execute(&state.pool)
        .await?;
    }
    state
        .commands
        .recovery(
            &auth.metadata(),
            id,
            RecoveryCommand::Request {
                id,
                tenant_id: actor.tenant_id,
                backup_id: backup.id,
                policy_id: backup.policy_id,
                source,
                target,
                plan,
                one_off_credentials,
                at: Utc::now(),
            },
        )
        .await?;
    let row = read::find(&state.pool, actor.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::internal("the recovery is not in the monitor"))?;
    Ok(HttpResponse::Accepted().json(detailed(&state, actor, row).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecoveryQuery {
    pub backup_id: Option<Uuid>,
    pub policy_id: Option<Uuid>,
    /// `in_progress`, `succeeded`, `partially_succeeded` or `failed`.
    pub status: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The recovery monitor: recoveries from backups of the policies the caller sees, newest first.
#[utoipa::path(get, path = "/v1/recoveries", tag = "recoveries", params(RecoveryQuery),
    responses((status = 200, body = Page<RecoveryView>),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/v1/recoveries")]
pub async fn list_recoveries(
    state: web::Data<AppState>,
    auth: Authenticated,
    query: web::Query<RecoveryQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let limit = pagination::limit(query.limit)?;
    if let Some(status) = &query.status {
        if RecoveryStatus::parse(status).is_none() {
            return Err(ApiError::invalid_field(
                "status",
                "unknown_status",
                "in_progress, succeeded, partially_succeeded or failed",
            ));
        }
    }
    let filter = RecoveryFilter {
        owners: visible_owners(&state, &auth.actor).await?,
        backup_id: query.backup_id,
        policy_id: query.policy_id,
        status: query.status,
        before: query
            .cursor
            .as_deref()
            .map(pagination::decode)
            .transpose()?,
        limit: limit + 1,
    };
    let rows = read::list(&state.pool, auth.actor.tenant_id, &filter).await?;
    let page = pagination::page(
        rows,
        limit,
        |r| (r.requested_at, r.recovery_id),
        RecoveryView::from,
    );
    Ok(HttpResponse::Ok().json(page))
}

/// One recovery with what it created and its log.
#[utoipa::path(get, path = "/v1/recoveries/{id}", tag = "recoveries", params(("id" = Uuid, Path)),
    responses((status = 200, body = RecoveryDetailView),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/v1/recoveries/{id}")]
pub async fn get_recovery(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = read::find(&state.pool, actor.tenant_id, path.into_inner())
        .await?
        .ok_or_else(|| ApiError::not_found("recovery"))?;
    let visible = match row.owner_id {
        Some(owner) => visible_owners(&state, actor).await?.contains(&owner),
        None => false,
    };
    if !visible {
        return Err(ApiError::not_found("recovery"));
    }
    Ok(HttpResponse::Ok().json(detailed(&state, actor, row).await?))
}
