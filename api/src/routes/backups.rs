//! The backup monitor, one backup's snapshots and log, and the freezer.

use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use safehold_domain::access::{Action, Actor};
use safehold_domain::backup::{BackupCommand, BackupStatus, FreezerEntry, SnapshotState};
use safehold_projections::backups::{self as read, BackupFilter, BackupRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::body::Json;
use crate::error::{ApiError, ApiResult};
use crate::pagination::{self, Page};
use crate::routes::accounts::visible_owners;
use crate::state::AppState;

/// A backup's place in the freezer.
#[derive(Debug, Serialize, ToSchema)]
pub struct FreezerView {
    pub name: String,
    pub description: String,
    pub frozen_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BackupView {
    pub id: Uuid,
    pub policy_id: Uuid,
    pub policy_name: Option<String>,
    pub account_id: Option<Uuid>,
    pub status: BackupStatus,
    /// Copies to vault accounts: `none` until disaster recovery is configured.
    pub dr_status: String,
    /// `scheduled`, `ad_hoc` or `retry`.
    pub trigger: String,
    /// Scheduled backups: the schedule and its occurrence.
    pub schedule_id: Option<Uuid>,
    pub occurrence: Option<DateTime<Utc>>,
    pub is_retry: bool,
    /// Retries: the backup first tried. `attempt` is 0 for a first run, n for the n-th retry.
    pub retry_of: Option<Uuid>,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub frozen: bool,
    pub freezer: Option<FreezerView>,
    pub snapshot_count: i32,
    /// When its AWS objects were deleted (or tagged as expired, see `deletion_marked_only`).
    pub deleted_at: Option<DateTime<Utc>>,
    pub deletion_marked_only: Option<bool>,
}

impl From<BackupRow> for BackupView {
    fn from(r: BackupRow) -> Self {
        Self {
            status: r.status(),
            freezer: r.frozen.then(|| FreezerView {
                name: r.freezer_name.clone().unwrap_or_default(),
                description: r.freezer_description.clone().unwrap_or_default(),
                frozen_at: r.frozen_at,
            }),
            is_retry: r.trigger == "retry",
            id: r.backup_id,
            policy_id: r.policy_id,
            policy_name: r.policy_name,
            account_id: r.account_id,
            dr_status: r.dr_status,
            trigger: r.trigger,
            schedule_id: r.schedule_id,
            occurrence: r.occurrence,
            retry_of: r.retry_of,
            attempt: r.attempt,
            started_at: r.started_at,
            finished_at: r.finished_at,
            frozen: r.frozen,
            snapshot_count: r.snapshot_count,
            deleted_at: r.deleted_at,
            deletion_marked_only: r.deletion_marked_only,
        }
    }
}

/// The resource a snapshot was taken for.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotTargetView {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub region: String,
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotView {
    /// The AWS id (snapshot id, AMI id, identifier or ARN).
    pub id: String,
    /// `ebs_snapshot`, `ami`, `rds_snapshot`, `aurora_snapshot`, `redshift_snapshot` or `dynamodb_backup`.
    pub kind: String,
    pub region: String,
    pub account_id: Option<Uuid>,
    pub target: SnapshotTargetView,
    /// The resource it was taken from (for instances, the volume).
    pub source: String,
    pub device: Option<String>,
    pub size_gib: Option<i32>,
    pub state: SnapshotState,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogEntryView {
    pub time: DateTime<Utc>,
    /// `info`, `warning` or `error`.
    pub level: String,
    pub message: String,
}

/// A disaster-recovery copy of one of the backup's snapshots.
#[derive(Debug, Serialize, ToSchema)]
pub struct DrCopyView {
    /// The AWS id of the original.
    pub original_id: String,
    pub kind: String,
    pub source_region: String,
    /// Where the copy is.
    pub region: String,
    pub account_id: Uuid,
    /// The AWS id of the copy.
    pub copy_id: String,
    /// `pending`, `completed` or `failed`.
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BackupDetailView {
    #[serde(flatten)]
    pub backup: BackupView,
    pub snapshots: Vec<SnapshotView>,
    /// Disaster-recovery copies, with the original each was made from.
    pub dr_copies: Vec<DrCopyView>,
    /// Oldest first.
    pub log: Vec<LogEntryView>,
}

/// A backup the actor may see; anything else is "not found".
pub(crate) async fn visible_backup(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
) -> ApiResult<BackupRow> {
    let row = read::find_backup(&state.pool, actor.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("backup"))?;
    let visible = match row.owner_id {
        Some(owner) => visible_owners(state, actor).await?.contains(&owner),
        None => false,
    };
    if visible {
        Ok(row)
    } else {
        Err(ApiError::not_found("backup"))
    }
}

async fn detailed(state: &AppState, actor: &Actor, row: BackupRow) -> ApiResult<BackupDetailView> {
    let id = row.backup_id;
    let snapshots = read::snapshots_of(&state.pool, actor.tenant_id, id)
        .await?
        .into_iter()
        .map(|s| SnapshotView {
            state: match s.state.as_str() {
                "completed" => SnapshotState::Completed,
                "failed" => SnapshotState::Failed,
                _ => SnapshotState::Pending,
            },
            id: s.snapshot_id,
            kind: s.kind,
            region: s.region,
            account_id: s.account_id,
            target: SnapshotTargetView {
                resource_type: s.target_type,
                region: s.target_region,
                id: s.target_id,
            },
            source: s.source,
            device: s.device,
            size_gib: s.size_gib,
            created_at: s.created_at,
            completed_at: s.completed_at,
            deleted_at: s.deleted_at,
        })
        .collect();
    let log = read::log_of(&state.pool, actor.tenant_id, id)
        .await?
        .into_iter()
        .map(|l| LogEntryView {
            time: l.occurred_at,
            level: l.level,
            message: l.message,
        })
        .collect();
    let dr_copies = read::dr_copies_of(&state.pool, actor.tenant_id, id)
        .await?
        .into_iter()
        .map(|c| DrCopyView {
            original_id: c.original_id,
            kind: c.kind,
            source_region: c.source_region,
            region: c.region,
            account_id: c.account_id,
            copy_id: c.copy_id,
            state: c.state,
            created_at: c.created_at,
            completed_at: c.completed_at,
            deleted_at: c.deleted_at,
        })
        .collect();
    Ok(BackupDetailView {
        backup: row.into(),
        snapshots,
        dr_copies,
        log,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BackupQuery {
    pub policy_id: Option<Uuid>,
    /// `in_progress`, `successful`, `partially_successful` or `failed`.
    pub status: Option<String>,
    /// Started at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Started before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Only backups in (true) or out of (false) the freezer.
    pub frozen: Option<bool>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn parse_status(status: &str) -> ApiResult<BackupStatus> {
    [
        BackupStatus::InProgress,
        BackupStatus::Successful,
        BackupStatus::PartiallySuccessful,
        BackupStatus::Failed,
    ]
    .into_iter()
    .find(|s| s.as_str() == status)
    .ok_or_else(|| {
        ApiError::invalid_field(
            "status",
            "invalid_value",
            "one of in_progress, successful, partially_successful, failed",
        )
    })
}

/// The backup monitor: backups of the policies the caller sees, newest first.
#[utoipa::path(get, path = "/v1/backups", tag = "backups", params(BackupQuery),
    responses((status = 200, body = Page<BackupView>),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/v1/backups")]
pub async fn list_backups(
    state: web::Data<AppState>,
    auth: Authenticated,
    query: web::Query<BackupQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let limit = pagination::limit(query.limit)?;
    let filter = BackupFilter {
        policy_id: query.policy_id,
        status: query.status.as_deref().map(parse_status).transpose()?,
        from: query.from,
        to: query.to,
        frozen: query.frozen,
        q: None,
        after: query
            .cursor
            .as_deref()
            .map(pagination::decode)
            .transpose()?,
    };
    let owners = visible_owners(&state, &auth.actor).await?;
    let rows = read::list_backups(
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
        |r| (r.started_at, r.backup_id),
        BackupView::from,
    );
    Ok(HttpResponse::Ok().json(page))
}

/// One backup with what it created in AWS and its log.
#[utoipa::path(get, path = "/v1/backups/{id}", tag = "backups", params(("id" = Uuid, Path)),
    responses((status = 200, body = BackupDetailView),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/v1/backups/{id}")]
pub async fn get_backup(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let row = visible_backup(&state, &auth.actor, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(detailed(&state, &auth.actor, row).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeRequest {
    /// 1-100 characters, unique in the organisation's freezer.
    pub name: String,
    /// At most 1000 characters.
    pub description: Option<String>,
}

/// Moves a finished backup to the freezer: retention no longer deletes it,
/// and it outlives its policy.
#[utoipa::path(post, path = "/v1/backups/{id}/freeze", tag = "backups", params(("id" = Uuid, Path)),
    request_body = FreezeRequest,
    responses((status = 200, body = BackupDetailView),
              (status = 403, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/backups/{id}/freeze")]
pub async fn freeze_backup(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: Json<FreezeRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_backup(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ChangeBackup)?;
    let body = body.0;
    let name = body.name.trim().to_string();
    // Freezes of one organisation take turns, so the name check below still
    // holds when the command runs. The lock is transaction-scoped and the
    // transaction is ended explicitly on every path (a dropped one would
    // keep the lock until its connection is reused).
    let mut lock = state.pool.begin().await?;
    let outcome = async {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("freezer:{}", actor.tenant_id.0))
            .execute(&mut *lock)
            .await?;
        if read::freezer_name_taken(&mut lock, actor.tenant_id, &name, row.backup_id).await? {
            return Err(ApiError::conflict(
                "name_taken",
                format!("the freezer already holds a backup named {name}"),
            ));
        }
        state
            .commands
            .backup(
                &auth.metadata(),
                row.backup_id,
                BackupCommand::Freeze(FreezerEntry {
                    name: name.clone(),
                    description: body.description.clone().unwrap_or_default(),
                }),
            )
            .await
    }
    .await;
    lock.rollback().await?;
    outcome?;
    let row = visible_backup(&state, actor, row.backup_id).await?;
    Ok(HttpResponse::Ok().json(detailed(&state, actor, row).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FreezerQuery {
    /// Part of the name or description, case-insensitive.
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Backups in the freezer, by name.
#[utoipa::path(get, path = "/v1/freezer", tag = "backups", params(FreezerQuery),
    responses((status = 200, body = Page<BackupView>)), security(("bearer" = [])))]
#[get("/v1/freezer")]
pub async fn list_freezer(
    state: web::Data<AppState>,
    auth: Authenticated,
    query: web::Query<FreezerQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let limit = pagination::limit(query.limit)?;
    let after: Option<(String, Uuid)> = query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?;
    let owners = visible_owners(&state, &auth.actor).await?;
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let rows = read::list_freezer(
        &state.pool,
        auth.actor.tenant_id,
        &owners,
        q,
        after,
        limit + 1,
    )
    .await?;
    let page = pagination::page(
        rows,
        limit,
        |r| (r.freezer_name.clone().unwrap_or_default(), r.backup_id),
        BackupView::from,
    );
    Ok(HttpResponse::Ok().json(page))
}
