//! Request ids, request logging and HTTP metrics.

use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use prometheus::{HistogramVec, IntCounterVec};
use tracing::Instrument;

/// The id of the current request: the caller's `x-request-id` when it sent a
/// sane one, else a new UUID. Echoed in the response and recorded in events.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id this middleware gave the request (empty outside it).
    pub fn of(req: &actix_web::HttpRequest) -> String {
        req.extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default()
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn http_metrics() -> &'static (IntCounterVec, HistogramVec) {
    static METRICS: OnceLock<(IntCounterVec, HistogramVec)> = OnceLock::new();
    METRICS.get_or_init(|| {
        (
            prometheus::register_int_counter_vec!(
                "safehold_http_requests_total",
                "HTTP requests by route and status",
                &["method", "route", "status"]
            )
            .expect("metric registers once"),
            prometheus::register_histogram_vec!(
                "safehold_http_request_duration_seconds",
                "HTTP request latency by route",
                &["method", "route"]
            )
            .expect("metric registers once"),
        )
    })
}

fn sane(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let started = Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let status = response.status();
    let elapsed = started.elapsed();
    let (counter, latency) = http_metrics();
    counter
        .with_label_values(&[method.as_str(), route.as_str(), status.as_str()])
        .inc();
    latency
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            duration_ms = elapsed.as_millis() as u64,
            "handled"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    Ok(response)
}
