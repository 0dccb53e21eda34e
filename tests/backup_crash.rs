//! Crash safety of backups: a `safehold worker` process is killed with
//! SIGKILL at seeded random moments of backups and restarted. Every backup
//! must still finish, with no AWS object made twice, none left behind
//! unrecorded, and no generation counted twice.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use common::{TestServer, PASSWORD};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use safehold_cloud::emulator::Emulator;
use serde_json::{json, Value};

fn worker(s: &TestServer, emulator: &Emulator) -> Child {
    let data_dir = std::env::temp_dir().join(format!("safehold-crash-{}", uuid::Uuid::new_v4()));
    Command::new(env!("CARGO_BIN_EXE_safehold"))
        .arg("worker")
        .env("DATABASE_URL", &s.database_url)
        .env("SAFEHOLD_DATA_DIR", data_dir)
        .env("SAFEHOLD_AWS_ENDPOINT", &emulator.endpoint)
        .env("SAFEHOLD_MASTER_KEYS", s.state.cloud.keyring.to_spec())
        .env("SAFEHOLD_BACKUP_POLL_MS", "200")
        .env("SAFEHOLD_JOB_ORPHANED_AFTER_MS", "2000")
        .env("SAFEHOLD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start a worker")
}

async fn get(s: &TestServer, token: &str, path: &str) -> Value {
    let (status, body) = s.get(path, token).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

#[tokio::test]
async fn killing_the_worker_at_random_points_loses_and_duplicates_nothing() {
    let emulator = Emulator::start(None).await.expect("AWS emulator");
    let target = safehold_cloud::Target {
        endpoint: Some(emulator.endpoint.clone()),
        region: "us-east-1".into(),
    };
    safehold_cloud::seed_demo_resources(&target).await.unwrap();
    let ec2 = safehold_cloud::ec2(&target).await;
    // Snapshots stay pending for a few polls, so kills also land while waiting.
    emulator.configure(r#"{"pending_polls": 3}"#).await.unwrap();
    let s = TestServer::start_with_aws(Some(emulator.endpoint.clone())).await;
    s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    let (status, account) = s
        .post(
            "/v1/accounts",
            Some(&root),
            json!({"name": "production", "number": "123456789012", "type": "backup",
                   "access": {"method": "access_keys", "access_key_id": "AKIAEMULATORKEY00001", "secret_access_key": "s3cr3t"},
                   "scan": {"enabled": true, "regions": ["us-east-1"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{account}");
    let account = account["id"].as_str().unwrap();
    s.post(
        &format!("/v1/accounts/{account}/discover"),
        Some(&root),
        json!({}),
    )
    .await;
    let resources = get(&s, &root, &format!("/v1/accounts/{account}/resources")).await;
    let targets: Vec<Value> = resources["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "ec2_instance" || r["name"] == "shared-data")
        .map(|r| json!({"type": r["type"], "region": r["region"], "resource_id": r["id"]}))
        .collect();
    assert_eq!(targets.len(), 3, "two instances and a volume");
    let (status, policy) = s
        .post(
            "/v1/policies",
            Some(&root),
            json!({"name": "nightly", "account_id": account, "generations": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    let policy = policy["id"].as_str().unwrap().to_string();
    for t in &targets {
        let (status, body) = s
            .post(
                &format!("/v1/policies/{policy}/targets"),
                Some(&root),
                t.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(20261125);
    let mut worker_process = worker(&s, &emulator);
    let mut backups = Vec::new();
    let mut kills_mid_backup = 0;
    for round in 0..4 {
        let (status, started) = s
            .post(
                &format!("/v1/policies/{policy}/run"),
                Some(&root),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{started}");
        let id = started["backup_id"].as_str().unwrap().to_string();
        // One or two kills per backup, at seeded moments.
        for _ in 0..rng.gen_range(1..=2) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..1500))).await;
            let at_kill = get(&s, &root, &format!("/v1/backups/{id}")).await;
            if at_kill["status"] == "in_progress" && !at_kill["log"].as_array().unwrap().is_empty()
            {
                kills_mid_backup += 1;
            }
            worker_process.kill().unwrap();
            worker_process.wait().unwrap();
            worker_process = worker(&s, &emulator);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let backup = get(&s, &root, &format!("/v1/backups/{id}")).await;
            let view = get(&s, &root, &format!("/v1/policies/{policy}")).await;
            if backup["status"] != "in_progress" && view["running_backup_id"].is_null() {
                assert_eq!(backup["status"], "successful", "round {round}: {backup}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: backup {id} never finished: {backup}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        backups.push(id);
    }
    worker_process.kill().unwrap();
    worker_process.wait().unwrap();
    assert!(
        kills_mid_backup >= 2,
        "the seeds must interrupt running backups ({kills_mid_backup} did)"
    );

    // AWS side: every Safehold snapshot belongs to a recorded, undeleted
    // snapshot of a backup, and each recorded one exists exactly once.
    let in_aws = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            Filter::builder()
                .name("tag-key")
                .values("safehold:backup")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let aws_ids: Vec<String> = in_aws
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(str::to_string))
        .collect();
    let mut recorded_live = BTreeSet::new();
    let mut kept_generations = 0;
    for id in &backups {
        let backup = get(&s, &root, &format!("/v1/backups/{id}")).await;
        let snapshots = backup["snapshots"].as_array().unwrap();
        assert_eq!(snapshots.len(), 3, "one snapshot per volume: {backup}");
        let live: Vec<_> = snapshots
            .iter()
            .filter(|s| s["deleted_at"].is_null())
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        if !live.is_empty() {
            kept_generations += 1;
        }
        recorded_live.extend(live);
    }
    let unique: BTreeSet<String> = aws_ids.iter().cloned().collect();
    assert_eq!(unique.len(), aws_ids.len(), "no snapshot listed twice");
    assert_eq!(
        unique, recorded_live,
        "AWS holds exactly the recorded, undeleted snapshots"
    );
    assert_eq!(
        kept_generations, 2,
        "two generations kept, counted once each"
    );
}
