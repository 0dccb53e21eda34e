//! Backups end to end against the AWS emulator: the job workers snapshot the
//! targets, tag what they create, finish the backup, apply retention, and
//! survive throttling and repeated steps without duplicates.

mod common;

use std::time::Duration;

use common::estate::setup;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn volume_target(volume: &Value) -> Value {
    json!({"type": "ebs_volume", "region": "us-east-1", "resource_id": volume["id"]})
}

fn instance_target(instance: &Value) -> Value {
    json!({"type": "ec2_instance", "region": "us-east-1", "resource_id": instance["id"]})
}

#[tokio::test]
async fn a_backup_snapshots_every_target_tags_what_it_creates_and_succeeds() {
    let x = setup().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let instance = x.resource("ec2_instance", "web-1").await;
    x.emulator
        .configure(r#"{"pending_polls": 2}"#)
        .await
        .unwrap();
    let policy = x
        .policy(
            json!({"name": "nightly"}),
            &[volume_target(&volume), instance_target(&instance)],
        )
        .await;
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    let id = backup["id"].as_str().unwrap();
    let snapshots = backup["snapshots"].as_array().unwrap();
    let instance_volumes = instance["details"]["volumes"].as_array().unwrap().len();
    assert_eq!(snapshots.len(), 1 + instance_volumes, "{backup}");
    assert!(snapshots.iter().all(|s| s["state"] == "completed"));

    // In AWS: exactly those snapshots, tagged and described.
    let aws = x.aws_snapshots(id).await;
    assert_eq!(aws.len(), snapshots.len());
    let of_volume = aws
        .iter()
        .find(|s| s.volume_id() == volume["id"].as_str())
        .expect("the volume's snapshot");
    let tag = |key: &str| {
        of_volume
            .tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    assert_eq!(
        tag("Name").as_deref(),
        Some("shared-data"),
        "source tags are copied"
    );
    assert_eq!(tag("safehold:policy").as_deref(), Some(policy.as_str()));
    assert!(of_volume
        .description()
        .unwrap_or_default()
        .contains("nightly"));
    let log: Vec<&str> = backup["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        log.iter()
            .any(|m| m.contains(of_volume.snapshot_id().unwrap())),
        "{log:?}"
    );
}

#[tokio::test]
async fn retention_keeps_the_newest_generations_and_never_a_frozen_backup() {
    let x = setup().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "hourly", "generations": 2}),
            &[volume_target(&volume)],
        )
        .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let b = x.run(&policy).await;
        assert_eq!(b["status"], "successful");
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    // Keep the first one for good.
    let (status, frozen) =
        x.s.post(
            &format!("/v1/backups/{}/freeze", ids[0]),
            Some(&x.root),
            json!({"name": "before-upgrade", "description": "state before the v2 upgrade"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{frozen}");
    for _ in 0..2 {
        let b = x.run(&policy).await;
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    // Generations 3 and 4 are kept; 2 is deleted; 1 is frozen.
    assert_eq!(x.aws_snapshots(&ids[0]).await.len(), 1, "frozen: kept");
    assert_eq!(
        x.aws_snapshots(&ids[1]).await.len(),
        0,
        "beyond two generations"
    );
    assert_eq!(x.aws_snapshots(&ids[2]).await.len(), 1);
    assert_eq!(x.aws_snapshots(&ids[3]).await.len(), 1);
    // The record stays, with its deletion time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, deleted) = x.s.get(&format!("/v1/backups/{}", ids[1]), &x.root).await;
        if deleted["snapshots"][0]["deleted_at"].is_string() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{deleted}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_vanished_target_is_dropped_from_the_policy_with_a_warning() {
    let x = setup().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let instance = x.resource("ec2_instance", "web-1").await;
    let policy = x
        .policy(
            json!({"name": "nightly", "auto_target_removal": "yes_and_alert"}),
            &[volume_target(&volume), instance_target(&instance)],
        )
        .await;
    x.ec2
        .delete_volume()
        .volume_id(volume["id"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    assert!(backup["log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["level"] == "warning"
            && l["message"].as_str().unwrap().contains("no longer exists")));
    let (_, view) = x.s.get(&format!("/v1/policies/{policy}"), &x.root).await;
    let targets = view["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0]["type"], "ec2_instance");
}

#[tokio::test]
async fn throttled_snapshot_calls_are_retried_without_duplicates() {
    let x = setup().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(json!({"name": "nightly"}), &[volume_target(&volume)])
        .await;
    x.emulator
        .inject(r#"{"action": "CreateSnapshot", "kind": "throttle", "count": 3}"#)
        .await
        .unwrap();
    x.emulator
        .inject(r#"{"action": "DescribeSnapshots", "kind": "server_error", "count": 2}"#)
        .await
        .unwrap();
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    assert_eq!(
        x.aws_snapshots(backup["id"].as_str().unwrap()).await.len(),
        1
    );
}

#[tokio::test]
async fn a_snapshot_made_before_a_crash_is_found_not_made_again() {
    let x = setup().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(json!({"name": "nightly"}), &[volume_target(&volume)])
        .await;
    // Stop the policy's first backup before any worker runs it, create its
    // snapshot as a crashed run would have, then let the workers resume.
    let (status, started) =
        x.s.post(
            &format!("/v1/policies/{policy}/run"),
            Some(&x.root),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = started["backup_id"].as_str().unwrap().to_string();
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT tenant_id FROM policies LIMIT 1")
        .fetch_one(&x.s.pool)
        .await
        .unwrap();
    let config = safehold_cloud::access::sdk_config(
        &safehold_cloud::access::Endpoint(Some(x.emulator.endpoint.clone())),
        &safehold_cloud::access::AccessSpec::Keys {
            access_key_id: "AKIAEMULATORKEY00001".into(),
            secret_access_key: safehold_cloud::secrets::Secret::new("s3cr3t"),
        },
        "us-east-1",
    )
    .await;
    let label = safehold_cloud::backup::BackupLabel {
        tenant_id: tenant,
        backup_id: id.parse().unwrap(),
        policy_id: policy.parse().unwrap(),
        policy_name: "nightly".into(),
        target: format!("ebs_volume:us-east-1:{}", volume["id"].as_str().unwrap()),
    };
    let early =
        safehold_cloud::backup::snapshot_volume(&config, &label, volume["id"].as_str().unwrap())
            .await
            .unwrap();
    let backup = x.finished(&id).await;
    assert_eq!(backup["status"], "successful");
    assert_eq!(backup["snapshots"][0]["id"], early.id);
    assert_eq!(x.aws_snapshots(&id).await.len(), 1);
}

#[tokio::test]
async fn a_failed_backup_is_retried_later_and_raises_an_alert() {
    let x = setup().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "nightly", "retries": 2, "retry_wait_minutes": 5, "failures_before_alert": 1}),
            &[volume_target(&volume)],
        )
        .await;
    // The volume disappears and the policy keeps it as a target: it fails.
    x.ec2
        .delete_volume()
        .volume_id(volume["id"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "failed", "{backup}");
    let id = backup["id"].as_str().unwrap();
    let retry_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT run_at FROM apalis.jobs WHERE job_type = 'safehold::backup-retry' AND job->>'of' = $1",
    )
    .bind(id)
    .fetch_one(&x.s.pool)
    .await
    .unwrap();
    let wait = retry_at - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::minutes(4) && wait <= chrono::Duration::minutes(5),
        "retried after the policy's wait: {wait}"
    );
    let alerts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE event_type = 'FailureAlertRaised'",
    )
    .fetch_one(&x.s.pool)
    .await
    .unwrap();
    assert_eq!(alerts, 1);
    let (_, deleted) =
        x.s.call(
            Method::GET,
            &format!("/v1/backups/{id}"),
            Some(&x.root),
            None,
        )
        .await;
    assert_eq!(deleted["status"], "failed");
}

#[tokio::test]
async fn a_round_looks_instances_up_together_and_makes_one_create_per_instance() {
    let x = setup().await;
    let web = x.resource("ec2_instance", "web-1").await;
    let db = x.resource("ec2_instance", "db-1").await;
    let policy = x
        .policy(
            json!({"name": "nightly"}),
            &[instance_target(&web), instance_target(&db)],
        )
        .await;
    x.emulator.reset_calls().await.unwrap();
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    let calls = x.emulator.calls().await.unwrap();
    let count = |action: &str| calls.get(action).copied().unwrap_or(0);
    assert_eq!(count("CreateSnapshots"), 2, "{calls:?}");
    assert_eq!(count("DescribeInstances"), 1, "{calls:?}");
    assert_eq!(count("CreateSnapshot"), 0, "{calls:?}");
    // Instance snapshots are found by the backup's tag, once per round,
    // and completion is polled once per round: never once per instance.
    assert!(count("DescribeSnapshots") <= 3, "{calls:?}");
    assert_eq!(
        x.aws_snapshots(backup["id"].as_str().unwrap()).await.len(),
        2
    );
}

#[tokio::test]
async fn instance_snapshots_made_before_a_crash_are_found_not_made_again() {
    use safehold_domain::backup::{Backup, BackupCommand};
    use safehold_domain::policy::Trigger;
    let mut x = setup().await;
    let instance = x.resource("ec2_instance", "web-1").await;
    let instance_id = instance["id"].as_str().unwrap().to_string();
    let policy = x
        .policy(json!({"name": "nightly"}), &[instance_target(&instance)])
        .await;
    // No worker runs while the test plays the round that crashed.
    x.stop_workers().await;
    let (status, started) =
        x.s.post(
            &format!("/v1/policies/{policy}/run"),
            Some(&x.root),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id: uuid::Uuid = started["backup_id"].as_str().unwrap().parse().unwrap();
    let policy_id: uuid::Uuid = policy.parse().unwrap();
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT tenant_id FROM policies LIMIT 1")
        .fetch_one(&x.s.pool)
        .await
        .unwrap();
    // The round that crashed began the backup and its snapshots, created
    // them in AWS and died before recording them.
    let meta = safehold_jobs::commands::system_metadata(safehold_domain::TenantId(tenant), "test");
    let state =
        x.s.state
            .commands
            .load_policy(safehold_domain::TenantId(tenant), policy_id)
            .await
            .unwrap()
            .unwrap();
    for command in [
        BackupCommand::Begin {
            id,
            tenant_id: safehold_domain::TenantId(tenant),
            policy_id,
            policy_name: state.name.clone(),
            account_id: state.account_id,
            trigger: Trigger::AdHoc,
            success_criterion: state.settings.success_criterion,
            targets: state.targets.clone(),
        },
        BackupCommand::StartTaking,
    ] {
        safehold_jobs::commands::execute::<Backup>(&x.s.pool, &meta, id, command)
            .await
            .unwrap();
    }
    let label = safehold_cloud::backup::BackupLabel {
        tenant_id: tenant,
        backup_id: id,
        policy_id,
        policy_name: "nightly".into(),
        target: format!("ec2_instance:us-east-1:{instance_id}"),
    };
    let early = safehold_cloud::backup::snapshot_instance(&x.config, &label, &instance_id, &[])
        .await
        .unwrap();
    // The restarted worker runs the backup's job.
    x.restart_workers();
    let backup = x.finished(&id.to_string()).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    let recorded: Vec<&str> = backup["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    let made: Vec<&str> = early.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(recorded, made);
    assert_eq!(x.aws_snapshots(&id.to_string()).await.len(), made.len());
}
