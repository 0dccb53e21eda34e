//! AWS accounts against the AWS emulator: registration checks, assume-role
//! chains into vaults, secrets at rest, discovery, throttling, access rules.

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use common::{TestServer, PASSWORD};
use reqwest::{Method, StatusCode};
use safehold_cloud::access::{role_arn, sdk_config, AccessSpec, Endpoint};
use safehold_cloud::emulator::Emulator;
use safehold_cloud::secrets::Secret;
use serde_json::{json, Value};

const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
const PRODUCTION: &str = "123456789012";
const VAULT: &str = "111111111111";
const FIRST: &str = "First-Login-Pass-9!";

/// Everything logged by this test binary, at every level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Capture(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buffer
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn setup() -> (Emulator, TestServer, String) {
    let emulator = Emulator::start(None).await.expect("AWS emulator");
    let server = TestServer::start_with_aws(Some(emulator.endpoint.clone())).await;
    server.sign_up("acme", "root").await;
    let root = server.token("acme", "root", PASSWORD).await;
    (emulator, server, root)
}

fn keys_account(name: &str, number: &str) -> Value {
    json!({
        "name": name, "number": number, "type": "backup",
        "access": {"method": "access_keys", "access_key_id": "AKIAEMULATORKEY00001", "secret_access_key": SECRET},
        "scan": {"enabled": true, "regions": ["us-east-1", "eu-west-1"]},
    })
}

fn vault_via(name: &str, number: &str, via: &str) -> Value {
    json!({
        "name": name, "number": number, "type": "vault",
        "access": {"method": "assume_role", "via_account_id": via, "role_name": "SafeholdVault", "external_id": "acme-dr"},
        "scan": {"enabled": false, "regions": ["eu-west-1"]},
    })
}

#[tokio::test]
async fn accounts_are_registered_only_when_sts_confirms_them_and_secrets_never_leak() {
    let logs = captured_logs();
    let (_emulator, s, root) = setup().await;
    let mut responses = Vec::new();

    let (status, prod) = s
        .post(
            "/v1/accounts",
            Some(&root),
            keys_account("production", PRODUCTION),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{prod}");
    assert_eq!(prod["access"]["method"], "access_keys");
    assert_eq!(prod["access"]["access_key_id"], "AKIAEMULATORKEY00001");
    responses.push(prod.to_string());

    let (status, wrong) = s
        .post(
            "/v1/accounts",
            Some(&root),
            keys_account("other", "210987654321"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong["errors"][0]["field"], "number");
    assert_eq!(wrong["errors"][0]["code"], "account_mismatch");
    assert!(wrong["detail"].as_str().unwrap().contains(PRODUCTION));
    responses.push(wrong.to_string());

    let (status, bad) = s
        .post("/v1/accounts", Some(&root), json!({"name": "x", "number": "12345", "type": "backup",
            "access": {"method": "server_credentials"}, "scan": {"enabled": false, "regions": ["us-east-1"]}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad["errors"][0]["field"], "number");

    // A vault reached by assuming a role from production, and a chain beyond it.
    let prod_id = prod["id"].as_str().unwrap();
    let (status, vault) = s
        .post(
            "/v1/accounts",
            Some(&root),
            vault_via("vault", VAULT, prod_id),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vault}");
    assert_eq!(vault["type"], "vault");
    assert_eq!(vault["allow_delete"], false);
    assert_eq!(
        vault["access"]["role_arn"],
        format!("arn:aws:iam::{VAULT}:role/SafeholdVault")
    );
    let vault_id = vault["id"].as_str().unwrap();
    let (status, chained) = s
        .post(
            "/v1/accounts",
            Some(&root),
            vault_via("archive", "222222222222", vault_id),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{chained}");
    let (status, mismatch) = s
        .post(
            "/v1/accounts",
            Some(&root),
            vault_via("liar", "333333333333", vault_id)
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o["access"]["role_name"] = json!("arn:aws:iam::333333333333:role/x");
                    Value::Object(o)
                })
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(mismatch["errors"][0]["field"], "access.role_name");

    // Rotation is checked too, and the old secret goes away.
    let (status, rotated) = s
        .call(Method::PUT, &format!("/v1/accounts/{prod_id}/keys"), Some(&root),
            Some(json!({"access_key_id": "AKIAEMULATORKEY00002", "secret_access_key": format!("{SECRET}-2")})))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["access"]["access_key_id"], "AKIAEMULATORKEY00002");
    responses.push(rotated.to_string());
    let secrets: i64 = sqlx::query_scalar("SELECT count(*) FROM secrets")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(secrets, 1, "the replaced secret is deleted");

    let (_, listed) = s.get("/v1/accounts", &root).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    responses.push(listed.to_string());
    let (_, audit) = s.get("/v1/audit?limit=500", &root).await;
    responses.push(audit.to_string());
    let (status, in_use) = s
        .call(
            Method::DELETE,
            &format!("/v1/accounts/{vault_id}"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(in_use["code"], "account_in_use");

    let events: Vec<String> =
        sqlx::query_scalar("SELECT payload::text || metadata::text FROM events")
            .fetch_all(&s.pool)
            .await
            .unwrap();
    let at_rest: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM secrets WHERE position(convert_to($1, 'UTF8') IN ciphertext) > 0",
    )
    .bind(SECRET)
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(at_rest, 0);
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(!logged.is_empty(), "logs were captured");
    for (place, text) in [
        ("responses", responses.join("\n")),
        ("events", events.join("\n")),
        ("logs", logged),
    ] {
        assert!(!text.contains(SECRET), "the secret key appears in {place}");
    }
}

#[tokio::test]
async fn unknown_and_root_user_keys_are_refused_with_clear_errors() {
    let (emulator, s, root) = setup().await;
    emulator
        .configure(r#"{"rejected_access_keys": ["AKIAREVOKEDKEY000001"], "root_access_keys": ["AKIAROOTUSERKEY00001"]}"#)
        .await
        .unwrap();
    let with_key = |key: &str| {
        let mut body = keys_account("production", PRODUCTION);
        body["access"]["access_key_id"] = json!(key);
        body
    };
    let (status, rejected) = s
        .post(
            "/v1/accounts",
            Some(&root),
            with_key("AKIAREVOKEDKEY000001"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(rejected["errors"][0]["field"], "access");
    assert_eq!(rejected["errors"][0]["code"], "credentials_rejected");
    assert!(
        rejected["detail"]
            .as_str()
            .unwrap()
            .contains("InvalidClientTokenId"),
        "{rejected}"
    );

    let (status, rooted) = s
        .post(
            "/v1/accounts",
            Some(&root),
            with_key("AKIAROOTUSERKEY00001"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(rooted["errors"][0]["code"], "root_credentials");

    let (_, listed) = s.get("/v1/accounts", &root).await;
    assert_eq!(listed["items"], json!([]), "nothing was registered");
    let secrets: i64 = sqlx::query_scalar("SELECT count(*) FROM secrets")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(secrets, 0, "refused keys are not stored");
}

#[tokio::test]
async fn the_permission_check_reports_each_capability_per_region() {
    let (emulator, s, root) = setup().await;
    let (_, prod) = s
        .post(
            "/v1/accounts",
            Some(&root),
            keys_account("production", PRODUCTION),
        )
        .await;
    let prod_id = prod["id"].as_str().unwrap();
    let path = format!("/v1/accounts/{prod_id}/permission-check");
    let (status, checks) = s.post(&path, Some(&root), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{checks}");
    let checks = checks.as_array().unwrap().clone();
    let regions: std::collections::BTreeSet<_> = checks
        .iter()
        .map(|c| c["region"].as_str().unwrap())
        .collect();
    assert_eq!(
        regions.into_iter().collect::<Vec<_>>(),
        ["eu-west-1", "us-east-1"]
    );
    for capability in ["backup", "dr_copy", "recovery"] {
        assert!(
            checks.iter().any(|c| c["capability"] == capability),
            "{capability}"
        );
    }
    for check in &checks {
        assert_eq!(check["outcome"], "allowed", "{check}");
    }

    // Once AWS stops accepting the key, every check says so.
    emulator
        .configure(r#"{"rejected_access_keys": ["AKIAEMULATORKEY00001"]}"#)
        .await
        .unwrap();
    let (_, denied) = s.post(&path, Some(&root), json!({})).await;
    for check in denied.as_array().unwrap() {
        assert_eq!(check["outcome"], "denied", "{check}");
    }
}

#[tokio::test]
async fn only_root_may_use_the_servers_own_credentials_which_sts_must_confirm() {
    let (_emulator, s, root) = setup().await;
    let (_, indie) = s
        .create_user(
            &root,
            "acme",
            json!({"username": "indie", "password": FIRST, "kind": "independent"}),
        )
        .await;
    let body = json!({"name": "own", "number": PRODUCTION, "type": "backup",
        "access": {"method": "server_credentials"}, "scan": {"enabled": false, "regions": ["us-east-1"]}});
    let (status, problem) = s.post("/v1/accounts", Some(&indie), body.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    // The server's default credential chain reads these.
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIASERVERROLEKEY001");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "server-secret");
    let (status, own) = s.post("/v1/accounts", Some(&root), body).await;
    assert_eq!(status, StatusCode::CREATED, "{own}");
    assert_eq!(own["access"]["method"], "server_credentials");
}

/// Creates sample resources in an account of the emulator.
async fn seed(endpoint: &str, spec: &AccessSpec, label: &str, region: &str) -> Vec<String> {
    let config = sdk_config(&Endpoint(Some(endpoint.into())), spec, region).await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let volume = ec2
        .create_volume()
        .availability_zone(format!("{region}a"))
        .size(42)
        .send()
        .await
        .unwrap();
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let table = format!("{label}-orders-{region}");
    dynamo
        .create_table()
        .table_name(&table)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    vec![volume.volume_id().unwrap().to_string(), table]
}

async fn resource_ids(s: &TestServer, token: &str, account: &str, query: &str) -> Vec<String> {
    let (status, page) = s
        .get(&format!("/v1/accounts/{account}/resources?{query}"), token)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn discovery_lists_each_accounts_resources_per_region_and_survives_throttling() {
    let (emulator, s, root) = setup().await;
    let prod_keys = AccessSpec::Keys {
        access_key_id: "AKIAEMULATORKEY00001".into(),
        secret_access_key: Secret::new(SECRET),
    };
    let vault_role = AccessSpec::AssumeRole {
        source: Box::new(prod_keys.clone()),
        role_arn: role_arn(VAULT, "SafeholdVault"),
        external_id: None,
    };
    let prod_east = seed(&emulator.endpoint, &prod_keys, "prod", "us-east-1").await;
    let prod_west = seed(&emulator.endpoint, &prod_keys, "prod", "eu-west-1").await;
    let vault_west = seed(&emulator.endpoint, &vault_role, "vault", "eu-west-1").await;

    let (_, prod) = s
        .post(
            "/v1/accounts",
            Some(&root),
            keys_account("production", PRODUCTION),
        )
        .await;
    let prod_id = prod["id"].as_str().unwrap().to_string();
    let (_, vault) = s
        .post(
            "/v1/accounts",
            Some(&root),
            vault_via("vault", VAULT, &prod_id),
        )
        .await;
    let vault_id = vault["id"].as_str().unwrap().to_string();

    // Half of all AWS calls are throttled; adaptive retries still get through.
    emulator
        .inject(r#"{"action": "*", "kind": "throttle", "probability": 0.5}"#)
        .await
        .unwrap();
    for account in [&prod_id, &vault_id] {
        let started = std::time::Instant::now();
        let (status, outcome) = s
            .post(
                &format!("/v1/accounts/{account}/discover"),
                Some(&root),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        for region in outcome.as_array().unwrap() {
            assert_eq!(region["error"], Value::Null, "{region}");
        }
        eprintln!("discovery under throttling took {:?}", started.elapsed());
    }
    emulator.clear_faults().await.unwrap();

    let east = resource_ids(&s, &root, &prod_id, "region=us-east-1").await;
    let west = resource_ids(&s, &root, &prod_id, "region=eu-west-1").await;
    for id in &prod_east {
        assert!(
            east.contains(id) && !west.contains(id),
            "{id} in us-east-1 only"
        );
    }
    for id in &prod_west {
        assert!(west.contains(id), "{id} in eu-west-1");
    }
    let vault_ids = resource_ids(&s, &root, &vault_id, "").await;
    assert_eq!(vault_ids.len(), 2, "{vault_ids:?}");
    for id in &vault_west {
        assert!(vault_ids.contains(id));
    }
    for id in prod_east.iter().chain(&prod_west) {
        assert!(
            !vault_ids.contains(id),
            "production's {id} is not in the vault"
        );
    }

    let tables = resource_ids(&s, &root, &prod_id, "type=dynamodb_table").await;
    assert_eq!(tables, ["prod-orders-eu-west-1", "prod-orders-us-east-1"]);
    let (_, volume) = s
        .get(
            &format!("/v1/accounts/{prod_id}/resources?q={}", prod_east[0]),
            &root,
        )
        .await;
    assert_eq!(volume["items"][0]["size_gib"], 42);
    let (status, problem) = s
        .get(
            &format!("/v1/accounts/{prod_id}/resources?type=lambda"),
            &root,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "type");
}

#[tokio::test]
async fn delegates_need_account_changes_and_users_see_only_their_accounts() {
    let (_emulator, s, root) = setup().await;
    let (_, viewer) = s
        .create_user(
            &root,
            "acme",
            json!({"username": "viewer", "password": FIRST, "kind": "delegate"}),
        )
        .await;
    let (status, _) = s
        .post("/v1/accounts", Some(&viewer), keys_account("p", PRODUCTION))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (_, mine) = s
        .post(
            "/v1/accounts",
            Some(&root),
            keys_account("root-prod", PRODUCTION),
        )
        .await;
    let mine_id = mine["id"].as_str().unwrap();
    let (status, seen) = s.get(&format!("/v1/accounts/{mine_id}"), &viewer).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a delegate sees its user's accounts: {seen}"
    );
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/v1/accounts/{mine_id}"),
            Some(json!({"name": "renamed"})),
        ),
        (Method::DELETE, format!("/v1/accounts/{mine_id}"), None),
        (
            Method::PUT,
            format!("/v1/accounts/{mine_id}/keys"),
            Some(json!({"access_key_id": "AKIAEMULATORKEY00003", "secret_access_key": "x"})),
        ),
    ] {
        let (status, problem) = s.call(method.clone(), &path, Some(&viewer), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {problem}");
    }

    let (_, managed) = s
        .create_user(
            &root,
            "acme",
            json!({"username": "team-a", "password": FIRST, "kind": "managed"}),
        )
        .await;
    let (_, other) = s
        .create_user(
            &root,
            "acme",
            json!({"username": "team-b", "password": FIRST, "kind": "managed"}),
        )
        .await;
    let (status, theirs) = s
        .post(
            "/v1/accounts",
            Some(&managed),
            keys_account("team-a-prod", PRODUCTION),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{theirs}");
    let theirs_id = theirs["id"].as_str().unwrap();

    let names = |page: Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(s.get("/v1/accounts", &root).await.1),
        ["root-prod", "team-a-prod"]
    );
    assert_eq!(
        names(s.get("/v1/accounts", &managed).await.1),
        ["team-a-prod"]
    );
    assert_eq!(
        names(s.get("/v1/accounts", &other).await.1),
        Vec::<String>::new()
    );
    assert_eq!(
        s.get(&format!("/v1/accounts/{theirs_id}"), &other).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get(&format!("/v1/accounts/{mine_id}"), &managed).await.0,
        StatusCode::NOT_FOUND
    );

    s.sign_up("globex", "gina").await;
    let gina = s.token("globex", "gina", PASSWORD).await;
    for (method, path) in [
        (Method::GET, format!("/v1/accounts/{mine_id}")),
        (Method::DELETE, format!("/v1/accounts/{mine_id}")),
        (Method::POST, format!("/v1/accounts/{mine_id}/discover")),
        (Method::GET, format!("/v1/accounts/{mine_id}/resources")),
    ] {
        let body = (method == Method::POST).then(|| json!({}));
        assert_eq!(
            s.call(method.clone(), &path, Some(&gina), body).await.0,
            StatusCode::NOT_FOUND,
            "{method} {path}"
        );
    }
}
