//! User kinds, visibility, delegates, tenant isolation, audit, bad input.

mod common;

use common::{TestServer, PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const FIRST: &str = "First-Login-Pass-9!";

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn each_user_kind_sees_what_it_manages() {
    let s = TestServer::start().await;
    s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    let (indie_id, indie) = s
        .create_user(
            &root,
            "acme",
            json!({"username": "indie", "password": FIRST, "kind": "independent"}),
        )
        .await;
    let (_, managed) = s
        .create_user(
            &root,
            "acme",
            json!({"username": "managed", "password": FIRST, "kind": "managed", "manager_id": indie_id}),
        )
        .await;
    s.create_user(
        &root,
        "acme",
        json!({"username": "other", "password": FIRST, "kind": "managed"}),
    )
    .await;

    let (_, all) = s.get("/v1/users", &root).await;
    assert_eq!(ids(&all), ["indie", "managed", "other", "root"]);
    let (_, mine) = s.get("/v1/users", &indie).await;
    assert_eq!(ids(&mine), ["indie", "managed"]);
    let (_, own) = s.get("/v1/users", &managed).await;
    assert_eq!(ids(&own), ["managed"]);

    // Only root manages users.
    let (status, problem) = s
        .post(
            "/v1/users",
            Some(&indie),
            json!({"username": "x", "password": FIRST, "kind": "managed"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem["code"], "forbidden");
}

#[tokio::test]
async fn pagination_walks_every_user_once() {
    let s = TestServer::start().await;
    s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    for i in 0..5 {
        let (status, body) = s
            .post(
                "/v1/users",
                Some(&root),
                json!({"username": format!("u{i}"), "password": FIRST, "kind": "independent"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/users?limit=2&cursor={c}"),
            None => "/v1/users?limit=2".into(),
        };
        let (status, page) = s.get(&path, &root).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ["root", "u0", "u1", "u2", "u3", "u4"]);
    let (status, problem) = s.get("/v1/users?cursor=garbage", &root).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "cursor");
}

#[tokio::test]
async fn delegates_act_for_their_user_without_its_administrative_rights() {
    let s = TestServer::start().await;
    s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    let (root_id, _) = {
        let (_, me) = s.get("/v1/me", &root).await;
        (me["user"]["id"].as_str().unwrap().to_string(), ())
    };
    let all = json!({"allow_recovery": true, "allow_account_changes": true, "allow_backup_changes": true});
    let (delegate_id, delegate) = s
        .create_user(
            &root,
            "acme",
            json!({"username": "helper", "password": FIRST, "kind": "delegate", "permissions": all}),
        )
        .await;
    let (_, me) = s.get("/v1/me", &delegate).await;
    assert_eq!(me["acting_for"], root_id.as_str());
    assert_eq!(me["user"]["permissions"], all);

    // Even with every permission a root delegate may not manage users or settings.
    let (status, _) = s
        .post(
            "/v1/users",
            Some(&delegate),
            json!({"username": "x", "password": FIRST, "kind": "independent"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, settings) = s.get("/v1/settings", &delegate).await;
    let (status, _) = s
        .call(Method::PUT, "/v1/settings", Some(&delegate), Some(settings))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::PUT,
            &format!("/v1/users/{delegate_id}/permissions"),
            Some(&delegate),
            Some(json!({"allow_recovery": false, "allow_account_changes": false, "allow_backup_changes": false})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Defaults deny everything; the user the delegate acts for can change that.
    let (_, limited) = s
        .post(
            "/v1/users",
            Some(&root),
            json!({"username": "viewer", "password": FIRST, "kind": "delegate"}),
        )
        .await;
    assert_eq!(
        limited["permissions"],
        json!({"allow_recovery": false, "allow_account_changes": false, "allow_backup_changes": false})
    );
    let (status, updated) = s
        .call(
            Method::PUT,
            &format!("/v1/users/{}/permissions", limited["id"].as_str().unwrap()),
            Some(&root),
            Some(json!({"allow_recovery": true, "allow_account_changes": false, "allow_backup_changes": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["permissions"]["allow_recovery"], true);
}

#[tokio::test]
async fn root_resets_and_deletes_users_and_their_sessions_end() {
    let s = TestServer::start().await;
    s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    let (id, token) = s
        .create_user(
            &root,
            "acme",
            json!({"username": "bob", "password": FIRST, "kind": "independent"}),
        )
        .await;
    let (status, _) = s
        .post(
            &format!("/v1/users/{id}/password"),
            Some(&root),
            json!({"new_password": "Reset-By-Root-55$"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(s.get("/v1/me", &token).await.0, StatusCode::UNAUTHORIZED);
    let (_, login) = s.login_as("acme", "bob", "Reset-By-Root-55$").await;
    assert_eq!(login["password_change_required"], true);

    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/v1/users/{id}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        s.get(&format!("/v1/users/{id}"), &root).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.login_as("acme", "bob", "Reset-By-Root-55$").await.0,
        StatusCode::UNAUTHORIZED
    );

    let (_, me) = s.get("/v1/me", &root).await;
    let root_id = me["user"]["id"].as_str().unwrap();
    let (status, problem) = s
        .call(
            Method::DELETE,
            &format!("/v1/users/{root_id}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["code"], "cannot_delete_root");
}

#[tokio::test]
async fn another_tenants_ids_answer_404_everywhere() {
    let s = TestServer::start().await;
    s.sign_up("acme", "alice").await;
    s.sign_up("globex", "gina").await;
    let alice = s.token("acme", "alice", PASSWORD).await;
    let gina = s.token("globex", "gina", PASSWORD).await;
    let (_, created) = s
        .post(
            "/v1/users",
            Some(&alice),
            json!({"username": "bob", "password": FIRST, "kind": "delegate"}),
        )
        .await;
    let bob = created["id"].as_str().unwrap();
    let (_, me) = s.get("/v1/me", &alice).await;
    let alice_id = me["user"]["id"].as_str().unwrap();

    for id in [bob, alice_id] {
        let attempts = [
            (Method::GET, format!("/v1/users/{id}"), None),
            (
                Method::PATCH,
                format!("/v1/users/{id}"),
                Some(json!({"email": "x@example.com"})),
            ),
            (Method::DELETE, format!("/v1/users/{id}"), None),
            (
                Method::PUT,
                format!("/v1/users/{id}/permissions"),
                Some(
                    json!({"allow_recovery": true, "allow_account_changes": true, "allow_backup_changes": true}),
                ),
            ),
            (
                Method::POST,
                format!("/v1/users/{id}/password"),
                Some(json!({"new_password": "Hostile-Takeover-1!"})),
            ),
        ];
        for (method, path, body) in attempts {
            let (status, problem) = s.call(method.clone(), &path, Some(&gina), body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {problem}");
            assert_eq!(problem["code"], "not_found");
        }
    }
    let (status, key) = s
        .post("/v1/me/api-keys", Some(&alice), json!({"name": "k"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/v1/me/api-keys/{}", key["key_id"].as_str().unwrap()),
            Some(&gina),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        s.get("/v1/me", key["api_key"].as_str().unwrap()).await.0,
        StatusCode::OK
    );
    let (_, audit) = s.get(&format!("/v1/audit?user_id={alice_id}"), &gina).await;
    assert_eq!(audit["items"], json!([]));
    let (_, gina_users) = s.get("/v1/users", &gina).await;
    assert_eq!(ids(&gina_users), ["gina"]);
}

#[tokio::test]
async fn every_mutation_is_audited_with_user_and_delegate() {
    let s = TestServer::start().await;
    s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    let (_, delegate) = s
        .create_user(
            &root,
            "acme",
            json!({"username": "helper", "password": FIRST, "kind": "delegate"}),
        )
        .await;
    let (_, mut settings) = s.get("/v1/settings", &root).await;
    settings["audit_retention_days"] = json!(90);
    s.call(Method::PUT, "/v1/settings", Some(&root), Some(settings))
        .await;
    s.post(
        "/v1/me/api-keys",
        Some(&delegate),
        json!({"name": "helper-key"}),
    )
    .await;

    let (status, audit) = s.get("/v1/audit?limit=500", &root).await;
    assert_eq!(status, StatusCode::OK);
    let entries = audit["items"].as_array().unwrap();
    let types: Vec<_> = entries
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    for expected in [
        "TenantCreated",
        "UserCreated",
        "SignedIn",
        "PasswordChanged",
        "SettingsUpdated",
        "ApiKeyCreated",
    ] {
        assert!(
            types.contains(&expected),
            "{expected} missing from {types:?}"
        );
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(entries.len() as i64, events, "one audit entry per event");
    let key = entries
        .iter()
        .find(|e| e["event_type"] == "ApiKeyCreated")
        .unwrap();
    assert_eq!(key["username"], "root");
    assert_eq!(key["delegate_username"], "helper");
    assert!(key["description"].as_str().unwrap().contains("helper-key"));

    let csv = s
        .http
        .get(format!("{}/v1/audit?format=csv", s.base))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    assert!(text.starts_with("time,event_type,description,user,delegate,request_id\n"));
    assert_eq!(text.lines().count() as i64, events + 1);

    let (status, problem) = s.get("/v1/audit?format=xml", &root).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "format");
}

#[tokio::test]
async fn bad_input_gets_problem_json_and_changes_nothing() {
    let s = TestServer::start().await;
    s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&s.pool)
            .await
            .unwrap()
    };
    let before = count().await;
    let send = |body: Vec<u8>, content_type: &'static str| {
        let req = s
            .http
            .post(format!("{}/v1/users", s.base))
            .bearer_auth(&root)
            .header("content-type", content_type)
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
            let body: Value = resp.json().await.unwrap();
            (status, ct, body)
        }
    };
    let (status, ct, body) = send(b"{\"username\": ".to_vec(), "application/json").await;
    assert_eq!(
        (status, ct.as_str()),
        (StatusCode::BAD_REQUEST, "application/problem+json")
    );
    assert_eq!(body["code"], "malformed_json");

    let unknown = json!({"username": "x", "password": FIRST, "kind": "independent", "admin": true});
    let (status, _, body) = send(unknown.to_string().into_bytes(), "application/json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("admin"), "{body}");

    let wrong_type = json!({"username": "x", "password": FIRST, "kind": "independent", "limits": {"max_accounts": "many"}});
    let (status, _, body) = send(wrong_type.to_string().into_bytes(), "application/json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "limits.max_accounts");

    let (status, _, body) = send(vec![b' '; 70 * 1024], "application/json").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["code"], "payload_too_large");

    let (status, _, body) = send(b"username=x".to_vec(), "application/x-www-form-urlencoded").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["code"], "unsupported_media_type");

    let (status, body) = s.get("/v1/users/not-a-uuid", &root).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "invalid_path");

    let (status, body) = s
        .post(
            "/v1/users",
            Some(&root),
            json!({"username": "bad name", "password": FIRST, "kind": "independent"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "username");

    let (status, body) = s.get("/v1/nothing-here", &root).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");

    assert_eq!(count().await, before);
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let s = TestServer::start().await;
    let health = s
        .http
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(health.headers().contains_key("x-request-id"));
    let echoed = s
        .http
        .get(format!("{}/readyz", s.base))
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), StatusCode::OK);
    assert_eq!(echoed.headers()["x-request-id"], "trace-123");
    let metrics = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("safehold_http_requests_total"));
    let spec: Value = s
        .http
        .get(format!("{}/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let docs = s
        .http
        .get(format!("{}/docs/", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
}
