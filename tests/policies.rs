//! Schedules and policies through the API, with an account whose inventory
//! comes from the AWS emulator.

mod common;

use common::{TestServer, PASSWORD};
use reqwest::{Method, StatusCode};
use safehold_cloud::emulator::Emulator;
use serde_json::{json, Value};

const FIRST: &str = "First-Login-Pass-9!";

struct Setup {
    _emulator: Emulator,
    s: TestServer,
    root: String,
    account: String,
}

fn account_body(name: &str) -> Value {
    json!({
        "name": name, "number": "123456789012", "type": "backup",
        "access": {"method": "access_keys", "access_key_id": "AKIAEMULATORKEY00001", "secret_access_key": "s3cr3t"},
        "scan": {"enabled": true, "regions": ["us-east-1"]},
    })
}

/// An organisation with one account whose inventory holds two instances
/// (web-1, db-1) and a volume (shared-data).
async fn setup() -> Setup {
    let emulator = Emulator::start(None).await.expect("AWS emulator");
    safehold_cloud::seed_demo_resources(&safehold_cloud::Target {
        endpoint: Some(emulator.endpoint.clone()),
        region: "us-east-1".into(),
    })
    .await
    .unwrap();
    let s = TestServer::start_with_aws(Some(emulator.endpoint.clone())).await;
    s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    let (status, account) = s
        .post("/v1/accounts", Some(&root), account_body("production"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{account}");
    let account = account["id"].as_str().unwrap().to_string();
    let (status, _) = s
        .post(
            &format!("/v1/accounts/{account}/discover"),
            Some(&root),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    Setup {
        _emulator: emulator,
        s,
        root,
        account,
    }
}

impl Setup {
    async fn resource(&self, kind: &str, name: &str) -> Value {
        let (_, page) = self
            .s
            .get(
                &format!(
                    "/v1/accounts/{}/resources?type={kind}&q={name}",
                    self.account
                ),
                &self.root,
            )
            .await;
        page["items"][0].clone()
    }

    async fn policy(&self, name: &str) -> String {
        let (status, policy) = self
            .s
            .post(
                "/v1/policies",
                Some(&self.root),
                json!({"name": name, "account_id": self.account}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{policy}");
        policy["id"].as_str().unwrap().to_string()
    }

    async fn add_target(&self, policy: &str, body: Value) -> (StatusCode, Value) {
        self.s
            .post(
                &format!("/v1/policies/{policy}/targets"),
                Some(&self.root),
                body,
            )
            .await
    }

    async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.s.pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn policies_protect_inventory_resources_with_instance_defaults_and_the_inventory_counts_them()
{
    let x = setup().await;
    let web = x.resource("ec2_instance", "web-1").await;
    let data = x.resource("ebs_volume", "shared-data").await;
    assert_eq!(web["protected_by_policies"], 0);
    let policy = x.policy("nightly").await;

    let (status, view) = x
        .add_target(
            &policy,
            json!({"type": "ec2_instance", "region": "us-east-1", "resource_id": web["id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let (status, view) = x
        .add_target(
            &policy,
            json!({"type": "ebs_volume", "region": "us-east-1", "resource_id": data["id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let targets = view["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    let instance = targets
        .iter()
        .find(|t| t["type"] == "ec2_instance")
        .unwrap();
    // A Linux instance defaults to snapshots of all its volumes.
    assert_eq!(instance["instance"]["mode"], "snapshots");
    assert_eq!(instance["instance"]["volumes"]["select"], "all");
    assert_eq!(instance["name"], "web-1");

    // A second policy on the same volume: the inventory shows both.
    let weekly = x.policy("weekly").await;
    x.add_target(
        &weekly,
        json!({"type": "ebs_volume", "region": "us-east-1", "resource_id": data["id"]}),
    )
    .await;
    assert_eq!(
        x.resource("ebs_volume", "shared-data").await["protected_by_policies"],
        2
    );
    assert_eq!(
        x.resource("ec2_instance", "web-1").await["protected_by_policies"],
        1
    );

    // Reconfigure: include only the root device, as an AMI with reboot.
    let device = web["details"]["volumes"][0]["device"].as_str().unwrap();
    let (status, view) = x
        .add_target(
            &policy,
            json!({"type": "ec2_instance", "region": "us-east-1", "resource_id": web["id"],
                   "instance": {"mode": "ami_with_reboot", "volumes": {"select": "include", "devices": [device]}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let instance = view["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "ec2_instance")
        .unwrap()
        .clone();
    assert_eq!(instance["instance"]["mode"], "ami_with_reboot");
    assert_eq!(instance["instance"]["volumes"]["devices"][0], device);

    // Removing a target and the policy's account.
    let (status, _) =
        x.s.call(
            Method::DELETE,
            &format!(
                "/v1/policies/{policy}/targets/ebs_volume/us-east-1/{}",
                data["id"].as_str().unwrap()
            ),
            Some(&x.root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        x.resource("ebs_volume", "shared-data").await["protected_by_policies"],
        1
    );
    let (status, refused) =
        x.s.call(
            Method::DELETE,
            &format!("/v1/accounts/{}", x.account),
            Some(&x.root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["code"], "account_in_use");
    assert!(refused["detail"]
        .as_str()
        .unwrap()
        .contains("policy nightly"));
}

#[tokio::test]
async fn bad_policy_input_names_the_field_and_changes_nothing() {
    let x = setup().await;
    let policy = x.policy("nightly").await;
    let web = x.resource("ec2_instance", "web-1").await;
    let before = x.event_count().await;

    let cases = [
        (
            "/v1/policies".to_string(),
            json!({"name": "p2", "account_id": x.account, "generations": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "generations",
        ),
        (
            "/v1/policies".to_string(),
            json!({"name": "p2", "account_id": x.account, "retries": 99}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "retries",
        ),
        (
            "/v1/policies".to_string(),
            json!({"name": "p2", "account_id": uuid::Uuid::new_v4()}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "account_id",
        ),
        (
            "/v1/policies".to_string(),
            json!({"name": "p2", "account_id": x.account, "schedule_ids": [uuid::Uuid::new_v4()]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "schedule_ids",
        ),
        (
            "/v1/policies".to_string(),
            json!({"name": "p2", "account_id": x.account, "auto_target_removal": "maybe"}),
            StatusCode::BAD_REQUEST,
            "auto_target_removal",
        ),
        (
            format!("/v1/policies/{policy}/targets"),
            json!({"type": "ebs_volume", "region": "us-east-1", "resource_id": "vol-00000000"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "resource_id",
        ),
        (
            format!("/v1/policies/{policy}/targets"),
            json!({"type": "ec2_instance", "region": "us-east-1", "resource_id": web["id"],
                   "instance": {"volumes": {"select": "exclude", "devices": ["/dev/nope"]}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "instance.volumes.devices",
        ),
        (
            format!("/v1/policies/{policy}/targets"),
            json!({"type": "ebs_volume", "region": "us-east-1", "resource_id": "vol-1",
                   "instance": {"mode": "snapshots"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "instance",
        ),
    ];
    for (path, body, status, field) in cases {
        let (got, problem) = x.s.post(&path, Some(&x.root), body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
        let fields: Vec<_> = problem["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|e| e["field"].as_str().unwrap_or(""))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            fields.iter().any(|f| f.contains(field)),
            "{body}: expected {field} in {problem}"
        );
    }
    let (status, taken) =
        x.s.post(
            "/v1/policies",
            Some(&x.root),
            json!({"name": "nightly", "account_id": x.account}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(taken["code"], "name_taken");
    let (status, _) =
        x.s.call(
            Method::PATCH,
            &format!("/v1/policies/{policy}"),
            Some(&x.root),
            Some(json!({"name": "renamed", "failures_before_alert": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(x.event_count().await, before, "nothing was recorded");
    let (_, view) = x.s.get(&format!("/v1/policies/{policy}"), &x.root).await;
    assert_eq!(view["name"], "nightly");
}

#[tokio::test]
async fn the_owners_limits_bound_what_its_policies_protect() {
    let x = setup().await;
    x.s.create_user(
        &x.root,
        "acme",
        json!({"username": "ops", "password": FIRST, "kind": "independent",
                   "limits": {"max_instances": 1, "max_non_instance_ebs_gib": 10}}),
    )
    .await;
    let ops = x.s.token("acme", "ops", PASSWORD).await;
    let (status, account) =
        x.s.post("/v1/accounts", Some(&ops), account_body("ops-account"))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{account}");
    let account = account["id"].as_str().unwrap();
    x.s.post(
        &format!("/v1/accounts/{account}/discover"),
        Some(&ops),
        json!({}),
    )
    .await;
    let (status, policy) =
        x.s.post(
            "/v1/policies",
            Some(&ops),
            json!({"name": "ops-nightly", "account_id": account}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    let policy = policy["id"].as_str().unwrap();
    let (_, instances) =
        x.s.get(
            &format!("/v1/accounts/{account}/resources?type=ec2_instance"),
            &ops,
        )
        .await;
    let ids: Vec<_> = instances["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].clone())
        .collect();
    assert_eq!(ids.len(), 2);
    let targets = format!("/v1/policies/{policy}/targets");
    let add = |id: Value, kind: &str| {
        x.s.post(
            &targets,
            Some(&ops),
            json!({"type": kind, "region": "us-east-1", "resource_id": id}),
        )
    };
    assert_eq!(add(ids[0].clone(), "ec2_instance").await.0, StatusCode::OK);
    let (status, refused) = add(ids[1].clone(), "ec2_instance").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["code"], "limit_reached");
    assert!(refused["detail"]
        .as_str()
        .unwrap()
        .contains("max_instances"));
    // The 20 GiB volume is above the 10 GiB limit for volumes.
    let (_, volumes) =
        x.s.get(
            &format!("/v1/accounts/{account}/resources?type=ebs_volume&q=shared-data"),
            &ops,
        )
        .await;
    let (status, refused) = add(volumes["items"][0]["id"].clone(), "ebs_volume").await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["detail"]
        .as_str()
        .unwrap()
        .contains("max_non_instance_ebs_gib"));
}

#[tokio::test]
async fn a_delegate_without_backup_changes_cannot_change_policies_or_schedules() {
    let x = setup().await;
    let policy = x.policy("nightly").await;
    let (delegate_id, helper) =
        x.s.create_user(
            &x.root,
            "acme",
            json!({"username": "helper", "password": FIRST, "kind": "delegate"}),
        )
        .await;
    let schedule =
        json!({"name": "daily", "start": "2030-01-01T22:00", "every": 1, "unit": "days"});
    let attempts = [
        (
            Method::POST,
            "/v1/schedules".to_string(),
            Some(schedule.clone()),
        ),
        (
            Method::POST,
            "/v1/policies".to_string(),
            Some(json!({"name": "p2", "account_id": x.account})),
        ),
        (
            Method::PATCH,
            format!("/v1/policies/{policy}"),
            Some(json!({"enabled": false})),
        ),
        (Method::POST, format!("/v1/policies/{policy}/run"), None),
        (Method::DELETE, format!("/v1/policies/{policy}"), None),
    ];
    for (method, path, body) in &attempts {
        let (status, problem) =
            x.s.call(method.clone(), path, Some(&helper), body.clone())
                .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {problem}");
    }
    // Reading is allowed.
    let (status, _) = x.s.get(&format!("/v1/policies/{policy}"), &helper).await;
    assert_eq!(status, StatusCode::OK);

    // With the permission, the same delegate may.
    let (status, _) = x
        .s
        .call(
            Method::PUT,
            &format!("/v1/users/{delegate_id}/permissions"),
            Some(&x.root),
            Some(json!({"allow_recovery": false, "allow_account_changes": false, "allow_backup_changes": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let helper = x.s.token("acme", "helper", PASSWORD).await;
    let (status, created) = x.s.post("/v1/schedules", Some(&helper), schedule).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}

#[tokio::test]
async fn run_now_starts_one_backup_and_refuses_another_while_it_runs() {
    let x = setup().await;
    let policy = x.policy("nightly").await;
    let run = format!("/v1/policies/{policy}/run");
    let (status, empty) = x.s.post(&run, Some(&x.root), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(empty["code"], "no_targets");

    let data = x.resource("ebs_volume", "shared-data").await;
    x.add_target(
        &policy,
        json!({"type": "ebs_volume", "region": "us-east-1", "resource_id": data["id"]}),
    )
    .await;
    let (status, started) = x.s.post(&run, Some(&x.root), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let (_, view) = x.s.get(&format!("/v1/policies/{policy}"), &x.root).await;
    assert_eq!(view["running_backup_id"], started["backup_id"]);
    let (status, again) = x.s.post(&run, Some(&x.root), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(again["code"], "backup_running");
}

#[tokio::test]
async fn schedules_are_entered_in_the_organisation_time_zone_and_stored_in_utc() {
    let x = setup().await;
    let (_, mut settings) = x.s.get("/v1/settings", &x.root).await;
    settings["time_zone"] = json!("Europe/Berlin");
    let (status, _) =
        x.s.call(Method::PUT, "/v1/settings", Some(&x.root), Some(settings))
            .await;
    assert_eq!(status, StatusCode::OK);

    let (status, schedule) =
        x.s.post(
            "/v1/schedules",
            Some(&x.root),
            json!({"name": "evenings", "start": "2030-01-07T22:00", "every": 1, "unit": "days",
                   "weekdays": ["mon", "tue", "wed", "thu", "fri"],
                   "disabled_windows": [{"day": "wed", "from": "21:00", "to": "06:00"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    assert_eq!(schedule["start"], "2030-01-07T22:00");
    assert_eq!(schedule["start_utc"], "2030-01-07T21:00:00Z");
    assert_eq!(schedule["time_zone"], "Europe/Berlin");
    let id = schedule["id"].as_str().unwrap();
    let (status, runs) =
        x.s.get(&format!("/v1/schedules/{id}/upcoming?count=4"), &x.root)
            .await;
    assert_eq!(status, StatusCode::OK);
    // Mon 7, Tue 8, (Wed 9 is in its window), Thu 10, Fri 11 January 2030.
    assert_eq!(
        runs,
        json!([
            "2030-01-07T21:00:00Z",
            "2030-01-08T21:00:00Z",
            "2030-01-10T21:00:00Z",
            "2030-01-11T21:00:00Z"
        ])
    );

    let (status, bad) =
        x.s.post(
            "/v1/schedules",
            Some(&x.root),
            json!({"name": "broken", "start": "2030-01-07T22:00", "every": 0, "unit": "days"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad["errors"][0]["field"], "every");
    let (status, bad) =
        x.s.post(
            "/v1/schedules",
            Some(&x.root),
            json!({"name": "broken", "start": "tomorrow", "every": 1, "unit": "days"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad["errors"][0]["field"], "start");

    // In use by a policy, a schedule cannot be deleted.
    let (status, policy) =
        x.s.post(
            "/v1/policies",
            Some(&x.root),
            json!({"name": "nightly", "account_id": x.account, "schedule_ids": [id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    assert_eq!(policy["schedule_ids"][0], id);
    let (status, refused) =
        x.s.call(
            Method::DELETE,
            &format!("/v1/schedules/{id}"),
            Some(&x.root),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["code"], "schedule_in_use");
}
