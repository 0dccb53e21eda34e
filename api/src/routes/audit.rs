use actix_web::{get, web, HttpResponse};
use chrono::{DateTime, Utc};
use safehold_projections::audit::{self, AuditFilter, AuditRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::error::{ApiError, ApiResult};
use crate::pagination::{self, Page};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only what this user did, directly or as a delegate.
    pub user_id: Option<Uuid>,
    /// From this time (inclusive, RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Until this time (exclusive, RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub time: DateTime<Utc>,
    pub event_type: String,
    pub description: String,
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub delegate_id: Option<Uuid>,
    pub delegate_username: Option<String>,
    pub request_id: String,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.position,
            time: r.occurred_at,
            event_type: r.event_type,
            description: r.description,
            user_id: r.user_id,
            username: r.username,
            delegate_id: r.delegate_id,
            delegate_username: r.delegate_username,
            request_id: r.request_id,
        }
    }
}

fn csv_field(value: &str) -> String {
    // Quote everything and neutralise spreadsheet formulas.
    let value = match value.chars().next() {
        Some('=' | '+' | '-' | '@') => format!("'{value}"),
        _ => value.to_string(),
    };
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// The organisation's audit log, newest first. The root user sees every
/// entry; other users see what they and their delegates did.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>), (status = 200, description = "CSV when format=csv", content_type = "text/csv")),
    security(("bearer" = [])))]
#[get("/v1/audit")]
pub async fn list_audit(
    state: web::Data<AppState>,
    auth: Authenticated,
    query: web::Query<AuditQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "format",
                "invalid_value",
                "must be json or csv",
            ))
        }
    };
    let actor = &auth.actor;
    let full_view = actor.is_root() && actor.delegate.is_none();
    let user_id = match (full_view, query.user_id) {
        (true, filter) => filter,
        (false, Some(u)) if u != actor.user_id.0 => {
            return Err(ApiError::forbidden(
                "forbidden",
                "only the root user sees other users' audit entries",
            ))
        }
        (false, _) => Some(actor.user_id.0),
    };
    let limit = if csv {
        100_000
    } else {
        pagination::limit(query.limit)?
    };
    let filter = AuditFilter {
        user_id,
        from: query.from,
        to: query.to,
        before_position: query
            .cursor
            .as_deref()
            .map(pagination::decode)
            .transpose()?,
    };
    let rows = audit::list(&state.pool, actor.tenant_id, &filter, limit + 1).await?;
    if csv {
        let mut out = String::from("time,event_type,description,user,delegate,request_id\n");
        for r in rows.into_iter().take(limit as usize) {
            let line = [
                r.occurred_at.to_rfc3339(),
                r.event_type,
                r.description,
                r.username.unwrap_or_default(),
                r.delegate_username.unwrap_or_default(),
                r.request_id,
            ]
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(",");
            out.push_str(&line);
            out.push('\n');
        }
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header(("content-disposition", "attachment; filename=\"audit.csv\""))
            .body(out));
    }
    let page: Page<AuditEntry> = pagination::page(rows, limit, |r| r.position, AuditEntry::from);
    Ok(HttpResponse::Ok().json(page))
}
