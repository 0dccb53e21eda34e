//! Sign-up, sign-in, passwords, sessions and API keys over real HTTP.

mod common;

use common::{TestServer, PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn sign_up_creates_the_organisation_and_a_root_user_who_can_sign_in() {
    let s = TestServer::start().await;
    let (tenant, root) = s.sign_up("acme", "alice").await;
    let token = s.token("acme", "alice", PASSWORD).await;
    let (status, me) = s.get("/v1/me", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["tenant_id"], tenant);
    assert_eq!(me["user"]["id"], root);
    assert_eq!(me["user"]["kind"], "root");

    let (status, again) = s
        .post(
            "/v1/signup",
            None,
            json!({"organisation": "acme", "name": "x", "username": "bob", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(again["code"], "organisation_exists");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let s = TestServer::start().await;
    s.sign_up("acme", "alice").await;
    let (status, wrong) = s.login_as("acme", "alice", "Not-The-Password-1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong["code"], "invalid_credentials");
    let (status, unknown) = s.login_as("acme", "mallory", PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown["detail"], wrong["detail"]);
}

#[tokio::test]
async fn five_failures_lock_the_username_even_against_the_right_password() {
    let s = TestServer::start().await;
    s.sign_up("acme", "alice").await;
    for attempt in 1..=5 {
        let (status, _) = s.login_as("acme", "alice", "Wrong-Password-9").await;
        let expected = if attempt < 5 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(status, expected, "attempt {attempt}");
    }
    let resp = s
        .http
        .post(format!("{}/v1/auth/login", s.base))
        .json(&json!({"organisation": "acme", "username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "too_many_failed_sign_ins");
    // Once the lock has passed, the right password works and resets the count.
    sqlx::query("UPDATE login_attempts SET locked_until = now() - interval '1 second'")
        .execute(&s.pool)
        .await
        .unwrap();
    s.token("acme", "alice", PASSWORD).await;
}

#[tokio::test]
async fn each_password_rule_is_named_and_nothing_is_created() {
    let s = TestServer::start().await;
    let cases = [
        ("aB3$xy", "min_length"),
        ("kestrel-orbit-quilt", "character_classes"),
        ("83029174651209", "numeric_only"),
        ("P@ssw0rd1!", "common"),
    ];
    for (password, rule) in cases {
        let (status, problem) = s
            .post(
                "/v1/signup",
                None,
                json!({"organisation": "acme", "name": "Acme", "username": "alice", "password": password}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{password}");
        let codes: Vec<_> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["field"].as_str().unwrap(), e["code"].as_str().unwrap()))
            .collect();
        assert!(codes.contains(&("password", rule)), "{password}: {codes:?}");
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
}

#[tokio::test]
async fn an_expired_password_must_be_changed_before_anything_else() {
    let s = TestServer::start().await;
    s.sign_up("acme", "alice").await;
    sqlx::query("UPDATE password_credentials SET changed_at = now() - interval '200 days'")
        .execute(&s.pool)
        .await
        .unwrap();
    let (status, login) = s.login_as("acme", "alice", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(login["password_change_required"], true);
    let token = login["access_token"].as_str().unwrap();
    let (status, blocked) = s.get("/v1/me", token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(blocked["code"], "password_change_required");

    let (status, _) = s
        .post(
            "/v1/me/password",
            Some(token),
            json!({"current_password": PASSWORD, "new_password": "Quasar-Lantern-77#"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s.get("/v1/me", token).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_last_three_passwords_cannot_be_reused() {
    let s = TestServer::start().await;
    s.sign_up("acme", "alice").await;
    let token = s.token("acme", "alice", PASSWORD).await;
    let change = |from: &'static str, to: &'static str| {
        let s = &s;
        let token = token.clone();
        async move {
            s.post(
                "/v1/me/password",
                Some(&token),
                json!({"current_password": from, "new_password": to}),
            )
            .await
        }
    };
    assert_eq!(
        change(PASSWORD, "Quasar-Lantern-77#").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        change("Quasar-Lantern-77#", "Harbor-Tundra-58%").await.0,
        StatusCode::NO_CONTENT
    );
    let (status, problem) = change("Harbor-Tundra-58%", PASSWORD).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["code"], "reused");
    assert_eq!(problem["errors"][0]["field"], "new_password");
    assert_eq!(
        change("Harbor-Tundra-58%", "Marble-Falcon-31&").await.0,
        StatusCode::NO_CONTENT
    );
    // Three changes later the first password is out of the history.
    assert_eq!(
        change("Marble-Falcon-31&", PASSWORD).await.0,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn idle_sessions_expire_and_logout_revokes() {
    let s = TestServer::start().await;
    s.sign_up("acme", "alice").await;
    let idle = s.token("acme", "alice", PASSWORD).await;
    let active = s.token("acme", "alice", PASSWORD).await;
    // Default idle limit is 12 h: push one session past it.
    sqlx::query(
        "UPDATE sessions SET last_seen_at = now() - interval '12 hours 1 minute'
          WHERE session_id = (SELECT session_id FROM sessions ORDER BY created_at LIMIT 1)",
    )
    .execute(&s.pool)
    .await
    .unwrap();
    let (status, problem) = s.get("/v1/me", &idle).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem["code"], "unauthenticated");
    assert_eq!(s.get("/v1/me", &active).await.0, StatusCode::OK);

    let (status, _) = s.post("/v1/auth/logout", Some(&active), json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(s.get("/v1/me", &active).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_shorter_tenant_idle_limit_applies_to_new_sessions() {
    let s = TestServer::start().await;
    s.sign_up("acme", "alice").await;
    let token = s.token("acme", "alice", PASSWORD).await;
    let (_, mut settings) = s.get("/v1/settings", &token).await;
    settings["session_idle_minutes"] = json!(3);
    let (status, _) = s
        .call(Method::PUT, "/v1/settings", Some(&token), Some(settings))
        .await;
    assert_eq!(status, StatusCode::OK);
    let fresh = s.token("acme", "alice", PASSWORD).await;
    sqlx::query(
        "UPDATE sessions SET last_seen_at = now() - interval '4 minutes' WHERE idle_minutes = 3",
    )
    .execute(&s.pool)
    .await
    .unwrap();
    assert_eq!(s.get("/v1/me", &fresh).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn api_keys_authenticate_until_revoked_and_are_never_shown_again() {
    let s = TestServer::start().await;
    s.sign_up("acme", "alice").await;
    let token = s.token("acme", "alice", PASSWORD).await;
    let (status, created) = s
        .post("/v1/me/api-keys", Some(&token), json!({"name": "ci"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let key = created["api_key"].as_str().unwrap();
    assert!(key.starts_with("shk_"));
    let (status, me) = s.get("/v1/me", key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"]["username"], "alice");

    let (_, keys) = s.get("/v1/me/api-keys", &token).await;
    let listed = keys.to_string();
    assert!(!listed.contains(key), "the secret must not be listed");
    assert_eq!(keys[0]["name"], "ci");

    let key_id = created["key_id"].as_str().unwrap();
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/v1/me/api-keys/{key_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(s.get("/v1/me", key).await.0, StatusCode::UNAUTHORIZED);
    let tampered = format!("{}x", &key[..key.len() - 1]);
    assert_eq!(s.get("/v1/me", &tampered).await.0, StatusCode::UNAUTHORIZED);
}
