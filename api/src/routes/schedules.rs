//! Schedules: when policies run. Times are entered and shown in the
//! organisation's time zone and stored in UTC.

use actix_web::{delete, get, patch, post, web, HttpResponse};
use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use safehold_domain::access::{Action, Actor};
use safehold_domain::schedule::{
    local_to_utc, Day, DisabledWindow, Recurrence, RepeatUnit, ScheduleCommand,
};
use safehold_domain::UserId;
use safehold_projections::policies::{self as read, ScheduleRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::body::Json;
use crate::error::{ApiError, ApiResult};
use crate::pagination::{self, Page, PageQuery};
use crate::routes::accounts::visible_owners;
use crate::state::AppState;

const ALL_DAYS: [Day; 7] = [
    Day::Mon,
    Day::Tue,
    Day::Wed,
    Day::Thu,
    Day::Fri,
    Day::Sat,
    Day::Sun,
];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateScheduleRequest {
    pub name: String,
    pub description: Option<String>,
    /// First run, wall-clock time in the organisation's time zone (`2026-12-01T22:00`).
    pub start: String,
    /// No run after this wall-clock time.
    pub end: Option<String>,
    /// Repeat every `every` `unit`s.
    pub every: u32,
    pub unit: RepeatUnit,
    /// Days on which runs may happen (default: every day).
    pub weekdays: Option<Vec<Day>>,
    /// Times when runs are skipped; `to` before `from` crosses midnight.
    #[serde(default)]
    pub disabled_windows: Vec<DisabledWindow>,
    /// Root or a managing user may create the schedule for a managed user.
    pub owner_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateScheduleRequest {
    pub name: Option<String>,
    pub description: Option<String>,
    pub start: Option<String>,
    /// `null` keeps the current end; use `clear_end` to remove it.
    pub end: Option<String>,
    #[serde(default)]
    pub clear_end: bool,
    pub every: Option<u32>,
    pub unit: Option<RepeatUnit>,
    pub weekdays: Option<Vec<Day>>,
    pub disabled_windows: Option<Vec<DisabledWindow>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub description: String,
    /// The organisation's time zone, in which `start` and `end` are shown.
    pub time_zone: String,
    pub start: String,
    pub end: Option<String>,
    pub start_utc: DateTime<Utc>,
    pub end_utc: Option<DateTime<Utc>>,
    pub every: u32,
    pub unit: RepeatUnit,
    pub weekdays: Vec<Day>,
    pub disabled_windows: Vec<DisabledWindow>,
    /// The next run after now, if the schedule has not ended.
    pub next_run: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn local_text(at: DateTime<Utc>, tz: Tz) -> String {
    at.with_timezone(&tz).format("%Y-%m-%dT%H:%M").to_string()
}

fn view(row: ScheduleRow, tz: Tz) -> ApiResult<ScheduleView> {
    let r: Recurrence = serde_json::from_value(row.recurrence).map_err(ApiError::internal)?;
    Ok(ScheduleView {
        id: row.schedule_id,
        owner_id: row.owner_id,
        name: row.name,
        description: row.description,
        time_zone: tz.name().to_string(),
        start: local_text(r.start, tz),
        end: r.end.map(|e| local_text(e, tz)),
        next_run: r.next_after(tz, Utc::now()),
        start_utc: r.start,
        end_utc: r.end,
        every: r.every,
        unit: r.unit,
        weekdays: r.weekdays,
        disabled_windows: r.disabled_windows,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

async fn tenant_zone(state: &AppState, actor: &Actor) -> ApiResult<Tz> {
    let settings = super::tenant_settings(state, actor.tenant_id).await?;
    Ok(settings.time_zone.parse().unwrap_or(Tz::UTC))
}

fn parse_local(field: &str, text: &str, tz: Tz) -> ApiResult<DateTime<Utc>> {
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .map(|local| local_to_utc(tz, local))
        .ok_or_else(|| {
            ApiError::invalid_field(
                field,
                "invalid_value",
                "a wall-clock time such as 2026-12-01T22:00",
            )
        })
}

fn check_recurrence(r: &Recurrence) -> ApiResult<()> {
    r.validate()
        .map_err(|errors| safehold_domain::DomainError::Invalid(errors).into())
}

/// A schedule the actor may see; anything else is "not found".
async fn visible_schedule(state: &AppState, actor: &Actor, id: Uuid) -> ApiResult<ScheduleRow> {
    let row = read::find_schedule(&state.pool, actor.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("schedule"))?;
    if visible_owners(state, actor).await?.contains(&row.owner_id) {
        Ok(row)
    } else {
        Err(ApiError::not_found("schedule"))
    }
}

async fn check_name_free(
    state: &AppState,
    actor: &Actor,
    owner: Uuid,
    name: &str,
    except: Option<Uuid>,
) -> ApiResult<()> {
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM schedules WHERE tenant_id = $1 AND owner_id = $2 AND name = $3
                          AND ($4::uuid IS NULL OR schedule_id <> $4))",
    )
    .bind(actor.tenant_id.0)
    .bind(owner)
    .bind(name.trim())
    .bind(except)
    .fetch_one(&state.pool)
    .await?;
    if taken {
        return Err(ApiError::conflict(
            "name_taken",
            format!("a schedule named {} exists", name.trim()),
        ));
    }
    Ok(())
}

/// Creates a schedule.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = CreateScheduleRequest,
    responses((status = 201, body = ScheduleView),
              (status = 403, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[post("/v1/schedules")]
pub async fn create_schedule(
    state: web::Data<AppState>,
    auth: Authenticated,
    body: Json<CreateScheduleRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    actor.authorize(Action::ChangeBackup)?;
    let body = body.0;
    let owner = body.owner_id.unwrap_or(actor.user_id.0);
    if !visible_owners(&state, actor).await?.contains(&owner) {
        return Err(ApiError::invalid_field(
            "owner_id",
            "invalid_owner",
            "must be you or a user you manage",
        ));
    }
    let tz = tenant_zone(&state, actor).await?;
    let recurrence = Recurrence {
        start: parse_local("start", &body.start, tz)?,
        end: body
            .end
            .as_deref()
            .map(|e| parse_local("end", e, tz))
            .transpose()?,
        every: body.every,
        unit: body.unit,
        weekdays: body.weekdays.unwrap_or(ALL_DAYS.to_vec()),
        disabled_windows: body.disabled_windows,
    };
    check_recurrence(&recurrence)?;
    check_name_free(&state, actor, owner, &body.name, None).await?;
    let id = Uuid::new_v4();
    state
        .commands
        .schedule(
            &auth.metadata(),
            id,
            ScheduleCommand::Create {
                id,
                tenant_id: actor.tenant_id,
                owner_id: UserId(owner),
                name: body.name,
                description: body.description.unwrap_or_default(),
                recurrence,
            },
        )
        .await?;
    let row = visible_schedule(&state, actor, id).await?;
    Ok(HttpResponse::Created().json(view(row, tz)?))
}

/// Schedules the caller sees, by name.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", params(PageQuery),
    responses((status = 200, body = Page<ScheduleView>)), security(("bearer" = [])))]
#[get("/v1/schedules")]
pub async fn list_schedules(
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
    let tz = tenant_zone(&state, &auth.actor).await?;
    let owners = visible_owners(&state, &auth.actor).await?;
    let rows =
        read::list_schedules(&state.pool, auth.actor.tenant_id, &owners, after, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|r| pagination::encode(&(r.name.clone(), r.schedule_id)))
        })
        .flatten();
    let items = rows
        .into_iter()
        .map(|r| view(r, tz))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

/// One schedule.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduleView), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/v1/schedules/{id}")]
pub async fn get_schedule(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let row = visible_schedule(&state, &auth.actor, path.into_inner()).await?;
    let tz = tenant_zone(&state, &auth.actor).await?;
    Ok(HttpResponse::Ok().json(view(row, tz)?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UpcomingQuery {
    /// How many runs to list, 1-100 (default 10).
    pub count: Option<u32>,
}

/// The next runs of a schedule, in UTC.
#[utoipa::path(get, path = "/v1/schedules/{id}/upcoming", tag = "schedules", params(("id" = Uuid, Path), UpcomingQuery),
    responses((status = 200, body = Vec<DateTime<Utc>>), (status = 404, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[get("/v1/schedules/{id}/upcoming")]
pub async fn upcoming_runs(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    query: web::Query<UpcomingQuery>,
) -> ApiResult<HttpResponse> {
    let count = query.count.unwrap_or(10);
    if !(1..=100).contains(&count) {
        return Err(ApiError::invalid_field("count", "out_of_range", "1-100"));
    }
    let row = visible_schedule(&state, &auth.actor, path.into_inner()).await?;
    let tz = tenant_zone(&state, &auth.actor).await?;
    let r: Recurrence = serde_json::from_value(row.recurrence).map_err(ApiError::internal)?;
    let mut runs = Vec::new();
    let mut after = Utc::now();
    while runs.len() < count as usize {
        let Some(next) = r.next_after(tz, after) else {
            break;
        };
        runs.push(next);
        after = next;
    }
    Ok(HttpResponse::Ok().json(runs))
}

/// Changes a schedule; omitted fields keep their values.
#[utoipa::path(patch, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path)), request_body = UpdateScheduleRequest,
    responses((status = 200, body = ScheduleView),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[patch("/v1/schedules/{id}")]
pub async fn update_schedule(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
    body: Json<UpdateScheduleRequest>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_schedule(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ChangeBackup)?;
    let body = body.0;
    let tz = tenant_zone(&state, actor).await?;
    let current: Recurrence =
        serde_json::from_value(row.recurrence.clone()).map_err(ApiError::internal)?;
    let recurrence = Recurrence {
        start: match &body.start {
            Some(s) => parse_local("start", s, tz)?,
            None => current.start,
        },
        end: match (&body.end, body.clear_end) {
            (Some(_), true) => {
                return Err(ApiError::invalid_field(
                    "clear_end",
                    "conflicting_fields",
                    "give either end or clear_end",
                ))
            }
            (Some(e), false) => Some(parse_local("end", e, tz)?),
            (None, true) => None,
            (None, false) => current.end,
        },
        every: body.every.unwrap_or(current.every),
        unit: body.unit.unwrap_or(current.unit),
        weekdays: body.weekdays.unwrap_or(current.weekdays),
        disabled_windows: body.disabled_windows.unwrap_or(current.disabled_windows),
    };
    check_recurrence(&recurrence)?;
    if let Some(name) = &body.name {
        check_name_free(&state, actor, row.owner_id, name, Some(row.schedule_id)).await?;
    }
    state
        .commands
        .schedule(
            &auth.metadata(),
            row.schedule_id,
            ScheduleCommand::Update {
                name: body.name,
                description: body.description,
                recurrence: Some(recurrence),
            },
        )
        .await?;
    let row = visible_schedule(&state, actor, row.schedule_id).await?;
    Ok(HttpResponse::Ok().json(view(row, tz)?))
}

/// Deletes a schedule that no policy uses.
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path)),
    responses((status = 204),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[delete("/v1/schedules/{id}")]
pub async fn delete_schedule(
    state: web::Data<AppState>,
    auth: Authenticated,
    path: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let actor = &auth.actor;
    let row = visible_schedule(&state, actor, path.into_inner()).await?;
    actor.authorize(Action::ChangeBackup)?;
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT p.name FROM policy_schedules ps
           JOIN policies p ON p.tenant_id = ps.tenant_id AND p.policy_id = ps.policy_id
          WHERE ps.tenant_id = $1 AND ps.schedule_id = $2 ORDER BY p.name",
    )
    .bind(actor.tenant_id.0)
    .bind(row.schedule_id)
    .fetch_all(&state.pool)
    .await?;
    if !users.is_empty() {
        return Err(ApiError::conflict(
            "schedule_in_use",
            format!("detach it from these policies first: {}", users.join(", ")),
        ));
    }
    state
        .commands
        .schedule(&auth.metadata(), row.schedule_id, ScheduleCommand::Remove)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
