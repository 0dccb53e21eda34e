//! A real Safehold server on a random port, over its own fresh database.
#![allow(dead_code)]

pub mod estate;
pub mod vault;

use std::net::TcpListener;

use actix_web::web;
use reqwest::{Method, StatusCode};
use safehold_api::{AppState, Config};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::watch;

pub const PASSWORD: &str = "Kestrel-Orbit-42!";

pub fn admin_url() -> String {
    std::env::var("SAFEHOLD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A migrated database of its own.
pub async fn fresh_database() -> (String, PgPool) {
    let url = safehold_projections::db::create_scratch_database(&admin_url(), "sh_t")
        .await
        .expect("create a test database (is Postgres running? see scripts/test)");
    let pool = safehold_projections::db::connect(&url, 10).await.unwrap();
    safehold_projections::db::migrate(&pool).await.unwrap();
    (url, pool)
}

/// Runs every projection until it has applied every committed event.
/// Transaction ids are cluster-wide, so a transaction open in another test's
/// database can hold a single pass back; this waits it out (up to 30 s).
pub async fn project_everything(pool: &PgPool) {
    let projections = safehold_projections::all_projections();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        safehold_projections::runtime::catch_up(pool, &projections)
            .await
            .unwrap();
        let behind: bool = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM projection_checkpoints) < $1
                 OR EXISTS (SELECT 1 FROM projection_checkpoints c
                             WHERE EXISTS (SELECT 1 FROM events e
                                            WHERE (e.tx_id, e.global_position)
                                                  > (c.tx_id::text::xid8, c.position)))",
        )
        .bind(projections.len() as i64)
        .fetch_one(pool)
        .await
        .unwrap();
        if !behind {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projections did not catch up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub struct TestServer {
    pub base: String,
    pub database_url: String,
    pub pool: PgPool,
    pub state: web::Data<AppState>,
    pub http: reqwest::Client,
    stop: watch::Sender<bool>,
    handle: actix_web::dev::ServerHandle,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with_aws(None).await
    }

    /// A server whose AWS is the emulator at `aws_endpoint`.
    pub async fn start_with_aws(aws_endpoint: Option<String>) -> Self {
        let (url, pool) = fresh_database().await;
        let config = Config::ephemeral(url.clone(), aws_endpoint);
        let state = web::Data::new(AppState::new(pool.clone(), config));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = safehold_api::server::serve(state.clone(), listener).unwrap();
        let handle = server.handle();
        tokio::spawn(server);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(safehold_projections::Projector::new(pool.clone()).run(stop_rx));
        Self {
            base,
            database_url: url,
            pool,
            state,
            http: reqwest::Client::new(),
            stop,
            handle,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Signs up `org` with root user `root`; returns (tenant id, root user id).
    pub async fn sign_up(&self, org: &str, root: &str) -> (String, String) {
        let (status, body) = self
            .post(
                "/v1/signup",
                None,
                json!({"organisation": org, "name": org, "username": root, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["tenant_id"].as_str().unwrap().into(),
            body["user_id"].as_str().unwrap().into(),
        )
    }

    pub async fn login_as(&self, org: &str, user: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/v1/auth/login",
            None,
            json!({"organisation": org, "username": user, "password": password}),
        )
        .await
    }

    /// Signs in and returns the access token, changing the password first
    /// when the server demands it (new users must).
    pub async fn token(&self, org: &str, user: &str, password: &str) -> String {
        let (status, body) = self.login_as(org, user, password).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// Creates a user as `token`'s user and returns its id; the new user's
    /// first password is then replaced so it can act at once.
    pub async fn create_user(&self, token: &str, org: &str, body: Value) -> (String, String) {
        let (status, created) = self.post("/v1/users", Some(token), body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let username = body["username"].as_str().unwrap();
        let first = self
            .token(org, username, body["password"].as_str().unwrap())
            .await;
        let (status, changed) = self
            .post(
                "/v1/me/password",
                Some(&first),
                json!({"current_password": body["password"], "new_password": PASSWORD}),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{changed}");
        (
            created["id"].as_str().unwrap().to_string(),
            self.token(org, username, PASSWORD).await,
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
    }
}
