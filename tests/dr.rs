//! Disaster recovery end to end against the AWS emulator: policy DR
//! settings, copies into other regions and into a vault account, every-N
//! skipping, originals deleted once copied, failed copies, the copy
//! scheduler's limit and the cleanup of copies. Each test checks what exists
//! in AWS in each region and account, not only what Safehold reports.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use common::estate::{setup, Estate, REGION};
use common::vault::{
    config, dr_outcome, dr_workers, production_keys, register_vault, vault_role, VAULT, WEST,
};
use reqwest::{Method, StatusCode};
use safehold_cloud::SdkConfig;
use serde_json::{json, Value};

fn volume_target(volume: &Value) -> Value {
    json!({"type": "ebs_volume", "region": REGION, "resource_id": volume["id"]})
}

fn tags(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.into(), t.value().unwrap_or_default().into())))
        .collect()
}

/// EBS snapshots in the region of `config` that are DR copies made for `backup`.
async fn ebs_copies(config: &SdkConfig, backup: &str) -> Vec<aws_sdk_ec2::types::Snapshot> {
    aws_sdk_ec2::Client::new(config)
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            Filter::builder()
                .name("tag:safehold:backup")
                .values(backup)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("tag-key")
                .values("safehold:dr-source")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .snapshots()
        .to_vec()
}

async fn set_dr(x: &Estate, policy: &str, dr: Value) -> (StatusCode, Value) {
    x.s.call(
        Method::PATCH,
        &format!("/v1/policies/{policy}"),
        Some(&x.root),
        Some(json!({ "dr": dr })),
    )
    .await
}

fn log_messages(backup: &Value) -> Vec<String> {
    backup["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn dr_settings_are_validated_per_field_authorised_and_audited() {
    let x = setup().await;
    let policy = x.policy(json!({"name": "nightly"}), &[]).await;
    let (_, before) = x.s.get(&format!("/v1/policies/{policy}"), &x.root).await;
    assert_eq!(before["dr"]["enabled"], false);
    assert_eq!(before["dr"]["timeout_hours"], 24);
    assert_eq!(before["dr"]["keep_originals"], true);

    // Bad shapes name their fields and change nothing (not even the name).
    let (status, problem) =
        x.s.call(
            Method::PATCH,
            &format!("/v1/policies/{policy}"),
            Some(&x.root),
            Some(json!({"name": "renamed",
                        "dr": {"enabled": true, "every": 0, "regions": ["eu-west-1", "narnia"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["dr.every", "dr.regions"], "{problem}");
    // Enabled without regions; a backup account as the vault.
    let (status, problem) = set_dr(&x, &policy, json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "dr.regions");
    let (status, problem) = set_dr(
        &x,
        &policy,
        json!({"enabled": true, "regions": [WEST], "vault_account_id": x.account}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "dr.vault_account_id");
    assert_eq!(problem["errors"][0]["code"], "not_a_vault");
    let (_, after) = x.s.get(&format!("/v1/policies/{policy}"), &x.root).await;
    assert_eq!(after["dr"], before["dr"]);
    assert_eq!(after["name"], "nightly");

    // A delegate without allow-backup-changes may not change DR.
    let (_, helper) =
        x.s.create_user(
            &x.root,
            "acme",
            json!({"username": "helper", "password": "First-Pass-123!", "kind": "delegate"}),
        )
        .await;
    let (status, _) =
        x.s.call(
            Method::PATCH,
            &format!("/v1/policies/{policy}"),
            Some(&helper),
            Some(json!({"dr": {"enabled": true, "regions": [WEST]}})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Valid settings are kept, shown and audited; a vault account is accepted.
    let vault = register_vault(&x, false).await;
    let (status, view) = set_dr(
        &x,
        &policy,
        json!({"enabled": true, "every": 3, "regions": [WEST], "timeout_hours": 6,
               "vault_account_id": vault, "keep_originals": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        view["dr"],
        json!({"enabled": true, "every": 3, "regions": [WEST], "timeout_hours": 6,
               "vault_account_id": vault, "keep_originals": false})
    );
    // `null` returns the copies to the policy's own account; omitted fields stay.
    let (_, view) = set_dr(&x, &policy, json!({"vault_account_id": null})).await;
    assert_eq!(view["dr"]["vault_account_id"], Value::Null);
    assert_eq!(view["dr"]["every"], 3);
    common::project_everything(&x.s.pool).await;
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT description FROM audit_log WHERE event_type = 'DrSettingsChanged' ORDER BY occurred_at",
    )
    .fetch_all(&x.s.pool)
    .await
    .unwrap();
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert!(
        audited[0].contains("every 3 backups to eu-west-1"),
        "{audited:?}"
    );
}

#[tokio::test]
async fn a_backup_is_copied_into_each_target_region_it_is_not_in_with_its_tags() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let rds = aws_sdk_rds::Client::new(&x.config);
    rds.create_db_instance()
        .db_instance_identifier("orders-db")
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .allocated_storage(20)
        .master_username("admin")
        .master_user_password("password-123")
        .send()
        .await
        .unwrap();
    rds.create_db_cluster()
        .db_cluster_identifier("ledger")
        .engine("aurora-postgresql")
        .master_username("admin")
        .master_user_password("password-123")
        .send()
        .await
        .unwrap();
    x.discover().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let instance = x.resource("ec2_instance", "web-1").await;
    let policy = x
        .policy(
            json!({"name": "nightly",
                   "dr": {"enabled": true, "regions": [REGION, WEST]}}),
            &[
                volume_target(&volume),
                json!({"type": "ec2_instance", "region": REGION, "resource_id": instance["id"],
                       "instance": {"mode": "ami_without_reboot", "volumes": {"select": "all"}}}),
                json!({"type": "rds_instance", "region": REGION, "resource_id": "orders-db"}),
                json!({"type": "aurora_cluster", "region": REGION, "resource_id": "ledger"}),
            ],
        )
        .await;
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    let id = backup["id"].as_str().unwrap();
    let done = dr_outcome(&x, id).await;
    assert_eq!(done["dr_status"], "completed", "{done}");
    let original = |kind: &str| {
        backup["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == kind)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // EBS: one copy in eu-west-1, carrying the original's tags and its source.
    let west = config(&x, &production_keys(), WEST).await;
    let copies = ebs_copies(&west, id).await;
    let volume_copy = copies
        .iter()
        .find(|c| tags(c.tags()).get("safehold:dr-source") == Some(&original("ebs_snapshot")))
        .expect("a copy of the volume's snapshot in eu-west-1");
    let copy_tags = tags(volume_copy.tags());
    assert_eq!(
        copy_tags.get("Name").map(String::as_str),
        Some("shared-data")
    );
    assert_eq!(copy_tags.get("safehold:policy"), Some(&policy));
    assert!(copy_tags.contains_key("safehold:tenant"));
    // The backup shows each copy with its original.
    let listed = done["dr_copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["original_id"] == original("ebs_snapshot").as_str())
        .unwrap_or_else(|| panic!("no copy of the volume's snapshot listed: {done}"));
    assert_eq!(listed["copy_id"], volume_copy.snapshot_id().unwrap());
    assert_eq!(listed["region"], WEST);
    assert_eq!(listed["source_region"], REGION);
    assert_eq!(listed["state"], "completed");
    assert_eq!(done["dr_copies"].as_array().unwrap().len(), 4, "{done}");
    // Nothing is copied into the region the originals are already in.
    assert!(ebs_copies(&x.config, id).await.is_empty());

    // The AMI: copied to eu-west-1 under its deterministic name, tagged.
    let west_ec2 = aws_sdk_ec2::Client::new(&west);
    let images = west_ec2
        .describe_images()
        .owners("self")
        .filters(
            Filter::builder()
                .name("tag:safehold:dr-source")
                .values(original("ami"))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(images.images().len(), 1, "{images:?}");

    // RDS and Aurora: copies in eu-west-1 tagged with their source.
    let west_rds = aws_sdk_rds::Client::new(&west);
    let db_copies = west_rds.describe_db_snapshots().send().await.unwrap();
    let db_copy = db_copies
        .db_snapshots()
        .iter()
        .find(|s| {
            s.tag_list().iter().any(|t| {
                t.key() == Some("safehold:dr-source")
                    && t.value() == Some(&original("rds_snapshot"))
            })
        })
        .expect("an RDS copy in eu-west-1");
    assert!(db_copy
        .tag_list()
        .iter()
        .any(|t| t.key() == Some("safehold:backup") && t.value() == Some(id)));
    let cluster_copies = west_rds
        .describe_db_cluster_snapshots()
        .send()
        .await
        .unwrap();
    assert!(cluster_copies.db_cluster_snapshots().iter().any(|s| {
        s.tag_list().iter().any(|t| {
            t.key() == Some("safehold:dr-source") && t.value() == Some(&original("aurora_snapshot"))
        })
    }));
    let east_copies = rds.describe_db_snapshots().send().await.unwrap();
    assert!(
        !east_copies.db_snapshots().iter().any(|s| s
            .tag_list()
            .iter()
            .any(|t| t.key() == Some("safehold:dr-source"))),
        "no RDS copy in the original's region"
    );

    // Recorded: four copies, all in eu-west-1, in the backup log.
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT original_id, region, state FROM backup_dr_copies WHERE backup_id = $1::text::uuid
          ORDER BY original_id",
    )
    .bind(id)
    .fetch_all(&x.s.pool)
    .await
    .unwrap();
    let copy_ids: Vec<String> = sqlx::query_scalar(
        "SELECT copy_id FROM backup_dr_copies WHERE backup_id = $1::text::uuid ORDER BY original_id",
    )
    .bind(id)
    .fetch_all(&x.s.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|(_, r, s)| r == WEST && s == "completed"));
    let log = log_messages(&done);
    assert!(
        log.iter()
            .any(|m| m.contains("Disaster recovery finished: completed")),
        "{log:?}"
    );

    // A repeated copy step (a round re-run after a crash) finds each copy
    // instead of making a second one.
    for kind in ["ebs_snapshot", "ami", "rds_snapshot", "aurora_snapshot"] {
        let order = safehold_cloud::dr::CopyOrder {
            kind: serde_json::from_value(json!(kind)).unwrap(),
            original_id: original(kind),
            source_region: REGION.into(),
            backup_id: id.parse().unwrap(),
        };
        let again = safehold_cloud::dr::copy(&x.config, &west, &order)
            .await
            .unwrap();
        let recorded = rows
            .iter()
            .zip(copy_ids.iter())
            .find(|((o, _, _), _)| *o == original(kind))
            .map(|(_, c)| c.clone());
        assert_eq!(Some(again.id), recorded, "{kind}");
    }
    assert_eq!(ebs_copies(&west, id).await.len(), copies.len());
}

#[tokio::test]
async fn redshift_and_dynamodb_are_skipped_with_the_reason_in_the_log() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    aws_sdk_redshift::Client::new(&x.config)
        .create_cluster()
        .cluster_identifier("warehouse")
        .node_type("dc2.large")
        .cluster_type("single-node")
        .master_username("admin")
        .master_user_password("Password123")
        .send()
        .await
        .unwrap();
    x.discover().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "warehouse", "dr": {"enabled": true, "regions": [WEST]}}),
            &[
                volume_target(&volume),
                json!({"type": "redshift_cluster", "region": REGION, "resource_id": "warehouse"}),
            ],
        )
        .await;
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap();
    let done = dr_outcome(&x, id).await;
    assert_eq!(done["dr_status"], "completed", "{done}");
    let warnings: Vec<&Value> = done["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["level"] == "warning")
        .collect();
    assert!(
        warnings.iter().any(|l| l["message"]
            .as_str()
            .unwrap()
            .contains("Redshift snapshots are copied to other regions by the cluster")),
        "{warnings:?}"
    );
    let west = config(&x, &production_keys(), WEST).await;
    assert_eq!(ebs_copies(&west, id).await.len(), 1);
    let redshift_west = aws_sdk_redshift::Client::new(&west)
        .describe_cluster_snapshots()
        .send()
        .await
        .unwrap();
    assert!(redshift_west.snapshots().is_empty());
}

#[tokio::test]
async fn every_nth_backup_is_copied_and_the_others_are_skipped() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "hourly", "dr": {"enabled": true, "every": 2, "regions": [WEST]}}),
            &[volume_target(&volume)],
        )
        .await;
    let west = config(&x, &production_keys(), WEST).await;
    let mut statuses = Vec::new();
    let mut copies = Vec::new();
    for _ in 0..3 {
        let backup = x.run(&policy).await;
        let id = backup["id"].as_str().unwrap().to_string();
        let done = dr_outcome(&x, &id).await;
        statuses.push(done["dr_status"].as_str().unwrap().to_string());
        copies.push(ebs_copies(&west, &id).await.len());
    }
    assert_eq!(statuses, vec!["completed", "skipped", "completed"]);
    assert_eq!(copies, vec![1, 0, 1], "skipped backups have no copy");
}

#[tokio::test]
async fn originals_are_deleted_once_copied_when_the_policy_keeps_none() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "nightly",
                   "dr": {"enabled": true, "regions": [WEST], "keep_originals": false}}),
            &[volume_target(&volume)],
        )
        .await;
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap();
    let original = backup["snapshots"][0]["id"].as_str().unwrap().to_string();
    // (DR may already have deleted it in AWS: it starts as the backup ends.)
    assert_eq!(backup["snapshots"][0]["state"], "completed", "{backup}");
    let done = dr_outcome(&x, id).await;
    assert_eq!(done["dr_status"], "completed");
    let west = config(&x, &production_keys(), WEST).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !x.aws_snapshots(id).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "original not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let copies = ebs_copies(&west, id).await;
    assert_eq!(copies.len(), 1);
    assert_eq!(
        tags(copies[0].tags()).get("safehold:dr-source"),
        Some(&original)
    );
    // The backup's record shows the original as deleted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, view) = x.s.get(&format!("/v1/backups/{id}"), &x.root).await;
        if view["snapshots"][0]["deleted_at"].is_string() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_copy_that_cannot_be_made_fails_dr_and_keeps_the_original() {
    let x = setup().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let data = x.resource("ec2_instance", "web-1").await;
    let policy = x
        .policy(
            json!({"name": "nightly",
                   "dr": {"enabled": true, "regions": [WEST], "keep_originals": false}}),
            &[
                volume_target(&volume),
                json!({"type": "ec2_instance", "region": REGION, "resource_id": data["id"]}),
            ],
        )
        .await;
    // The DR workers start only after one original has gone from AWS.
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap();
    let gone = backup["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == volume["id"])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    x.ec2
        .delete_snapshot()
        .snapshot_id(&gone)
        .send()
        .await
        .unwrap();
    // Throttled copies are retried, not failed.
    x.emulator
        .inject(r#"{"action": "CopySnapshot", "kind": "throttle", "count": 3}"#)
        .await
        .unwrap();
    let _dr = dr_workers(&x, 20);
    let done = dr_outcome(&x, id).await;
    assert_eq!(done["dr_status"], "failed", "{done}");
    let log = log_messages(&done);
    assert!(
        log.iter()
            .any(|m| m.contains(&format!("copy of {gone} to eu-west-1 failed"))),
        "{log:?}"
    );
    // The instance's snapshots were copied; with DR failed, they are kept.
    let west = config(&x, &production_keys(), WEST).await;
    let copied = ebs_copies(&west, id).await.len();
    assert_eq!(copied, backup["snapshots"].as_array().unwrap().len() - 1);
    assert_eq!(x.aws_snapshots(id).await.len(), copied);
}

#[tokio::test]
async fn copies_in_flight_never_exceed_the_limit_and_queued_ones_wait() {
    let x = setup().await;
    let ec2 = &x.ec2;
    let mut targets = Vec::new();
    for n in 0..4 {
        let volume = ec2
            .create_volume()
            .availability_zone(format!("{REGION}a"))
            .size(1)
            .tag_specifications(
                aws_sdk_ec2::types::TagSpecification::builder()
                    .resource_type(aws_sdk_ec2::types::ResourceType::Volume)
                    .tags(
                        aws_sdk_ec2::types::Tag::builder()
                            .key("Name")
                            .value(format!("bulk-{n}"))
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
        targets.push(json!({"type": "ebs_volume", "region": REGION,
                            "resource_id": volume.volume_id().unwrap()}));
    }
    x.discover().await;
    let policy = x
        .policy(
            json!({"name": "bulk", "dr": {"enabled": true, "regions": [WEST]}}),
            &targets,
        )
        .await;
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap().to_string();
    // Copies stay pending for a few polls each.
    x.emulator
        .configure(r#"{"pending_polls": 3}"#)
        .await
        .unwrap();
    let _dr = dr_workers(&x, 2);
    let west = config(&x, &production_keys(), WEST).await;
    let mut most_in_flight = 0;
    let mut most_slots = 0i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM dr_copy_slots")
            .fetch_one(&x.s.pool)
            .await
            .unwrap();
        most_slots = most_slots.max(slots);
        // Copies in AWS not recorded as completed yet are in flight.
        let completed: Vec<String> =
            sqlx::query_scalar("SELECT copy_id FROM backup_dr_copies WHERE state = 'completed'")
                .fetch_all(&x.s.pool)
                .await
                .unwrap();
        let in_aws = ebs_copies(&west, &id).await;
        let in_flight = in_aws
            .iter()
            .filter(|c| !completed.contains(&c.snapshot_id().unwrap().to_string()))
            .count();
        most_in_flight = most_in_flight.max(in_flight);
        let (_, view) = x.s.get(&format!("/v1/backups/{id}"), &x.root).await;
        if view["dr_status"] == "completed" {
            assert_eq!(in_aws.len(), 4);
            break;
        }
        assert_ne!(view["dr_status"], "failed", "{view}");
        assert!(tokio::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most_slots <= 2, "slots in use: {most_slots}");
    assert!(most_in_flight <= 2, "copies in flight: {most_in_flight}");
    assert!(most_in_flight >= 1);
}

#[tokio::test]
async fn copies_into_a_vault_account_are_shared_copied_there_and_expired_on_cleanup() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let vault = register_vault(&x, false).await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let instance = x.resource("ec2_instance", "web-1").await;
    let policy = x
        .policy(
            json!({"name": "vaulted",
                   "dr": {"enabled": true, "regions": [REGION, WEST], "vault_account_id": vault}}),
            &[
                volume_target(&volume),
                json!({"type": "ec2_instance", "region": REGION, "resource_id": instance["id"],
                       "instance": {"mode": "ami_without_reboot", "volumes": {"select": "all"}}}),
            ],
        )
        .await;
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap().to_string();
    let original = backup["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "ebs_snapshot")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = dr_outcome(&x, &id).await;
    assert_eq!(done["dr_status"], "completed", "{done}");
    // The AMI is not copied into the vault; the log says why.
    assert!(
        log_messages(&done)
            .iter()
            .any(|m| m.contains("AMIs are not copied into another account")),
        "{done}"
    );
    for region in [REGION, WEST] {
        let vault_images = aws_sdk_ec2::Client::new(&config(&x, &vault_role(), region).await)
            .describe_images()
            .owners("self")
            .send()
            .await
            .unwrap();
        assert!(
            vault_images.images().is_empty(),
            "no AMI in the vault's {region}"
        );
    }

    // The original is shared with the vault and copied inside it, into its
    // own region too; the production account holds no copy.
    let shared = x
        .ec2
        .describe_snapshot_attribute()
        .snapshot_id(&original)
        .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await
        .unwrap();
    assert!(shared
        .create_volume_permissions()
        .iter()
        .any(|p| p.user_id() == Some(VAULT)));
    for region in [REGION, WEST] {
        let in_vault = ebs_copies(&config(&x, &vault_role(), region).await, &id).await;
        assert_eq!(in_vault.len(), 1, "vault copy in {region}");
        assert_eq!(in_vault[0].owner_id(), Some(VAULT));
        let in_production = ebs_copies(&config(&x, &production_keys(), region).await, &id).await;
        assert!(in_production.is_empty(), "no copy in production's {region}");
    }

    // Cleanup of the copies: the vault may not delete, so they are tagged.
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT tenant_id FROM policies LIMIT 1")
        .fetch_one(&x.s.pool)
        .await
        .unwrap();
    let meta = safehold_jobs::commands::system_metadata(safehold_domain::TenantId(tenant), "test");
    safehold_jobs::dr::delete_copies(&x.s.state.cloud, &meta, tenant, id.parse().unwrap())
        .await
        .unwrap();
    for region in [REGION, WEST] {
        let in_vault = ebs_copies(&config(&x, &vault_role(), region).await, &id).await;
        assert_eq!(in_vault.len(), 1, "kept in {region}");
        assert!(tags(in_vault[0].tags()).contains_key("safehold:expired-at"));
    }
}

#[tokio::test]
async fn cleanup_deletes_the_copies_of_a_backup() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "nightly", "dr": {"enabled": true, "regions": [WEST]}}),
            &[volume_target(&volume)],
        )
        .await;
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap().to_string();
    assert_eq!(dr_outcome(&x, &id).await["dr_status"], "completed");
    let west = config(&x, &production_keys(), WEST).await;
    assert_eq!(ebs_copies(&west, &id).await.len(), 1);
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT tenant_id FROM policies LIMIT 1")
        .fetch_one(&x.s.pool)
        .await
        .unwrap();
    let meta = safehold_jobs::commands::system_metadata(safehold_domain::TenantId(tenant), "test");
    safehold_jobs::dr::delete_copies(&x.s.state.cloud, &meta, tenant, id.parse().unwrap())
        .await
        .unwrap();
    assert!(ebs_copies(&west, &id).await.is_empty());
    common::project_everything(&x.s.pool).await;
    let deleted: Vec<Option<chrono::DateTime<chrono::Utc>>> = sqlx::query_scalar(
        "SELECT deleted_at FROM backup_dr_copies WHERE backup_id = $1::text::uuid",
    )
    .bind(&id)
    .fetch_all(&x.s.pool)
    .await
    .unwrap();
    assert_eq!(deleted.len(), 1);
    assert!(deleted[0].is_some());
}

#[tokio::test]
async fn the_copy_scheduler_keeps_the_limit_and_shares_it_between_waiting_tenants() {
    use safehold_jobs::dr::{release_slot, take_slot, Destination};
    let (_, pool) = common::fresh_database().await;
    let west = Destination {
        aws_account: VAULT.into(),
        region: WEST.into(),
        service: "ebs".into(),
    };
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let (backup_a, backup_b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let take = |tenant, backup, original: &str| {
        let (pool, west, original) = (pool.clone(), west.clone(), original.to_string());
        async move {
            take_slot(&pool, &west, tenant, backup, &original, 4)
                .await
                .unwrap()
        }
    };
    // Alone, a tenant may use the whole limit, and not more.
    for n in 0..4 {
        assert!(take(a, backup_a, &format!("snap-a{n}")).await);
    }
    assert!(take(a, backup_a, "snap-a0").await, "a held slot stays held");
    assert!(!take(a, backup_a, "snap-a4").await, "the limit is reached");
    // Another destination has slots of its own.
    let east = Destination {
        region: REGION.into(),
        ..west.clone()
    };
    assert!(take_slot(&pool, &east, a, backup_a, "snap-a4", 4)
        .await
        .unwrap());
    // B waits; A's freed slot goes to B, since A holds more than its share.
    assert!(!take(b, backup_b, "snap-b0").await);
    release_slot(&pool, a, backup_a, "snap-a0", WEST)
        .await
        .unwrap();
    assert!(!take(a, backup_a, "snap-a4").await, "A is above its share");
    assert!(take(b, backup_b, "snap-b0").await);
    // While A waits, B may grow to its share (2 of 4), not beyond, even
    // with slots free; then the waiting A gets one.
    for original in ["snap-a1", "snap-a2", "snap-a3"] {
        release_slot(&pool, a, backup_a, original, WEST)
            .await
            .unwrap();
    }
    assert!(take(b, backup_b, "snap-b1").await);
    assert!(
        !take(b, backup_b, "snap-b2").await,
        "B is at its share while A waits"
    );
    assert!(take(a, backup_a, "snap-a4").await);
    let in_flight: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dr_copy_slots WHERE aws_account = $1 AND region = $2",
    )
    .bind(VAULT)
    .bind(WEST)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(in_flight <= 4);
}

#[tokio::test]
async fn copies_not_done_by_the_timeout_fail_dr_and_free_their_slots() {
    let x = setup().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "nightly",
                   "dr": {"enabled": true, "regions": [WEST], "timeout_hours": 1,
                          "keep_originals": false}}),
            &[volume_target(&volume)],
        )
        .await;
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap().to_string();
    // The copy stays pending far longer than the test.
    x.emulator
        .configure(r#"{"pending_polls": 100000}"#)
        .await
        .unwrap();
    let _dr = dr_workers(&x, 20);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let started: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM backup_dr_copies WHERE backup_id = $1::text::uuid AND state = 'pending'",
        )
        .bind(&id)
        .fetch_one(&x.s.pool)
        .await
        .unwrap();
        if started == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no copy started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM dr_copy_slots")
        .fetch_one(&x.s.pool)
        .await
        .unwrap();
    assert_eq!(slots, 1, "the copy in flight holds a slot");
    // Two hours later, by the aggregate's clock, the next round gives up.
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT tenant_id FROM policies LIMIT 1")
        .fetch_one(&x.s.pool)
        .await
        .unwrap();
    let meta = safehold_jobs::commands::system_metadata(safehold_domain::TenantId(tenant), "test");
    safehold_jobs::commands::execute::<safehold_domain::backup::Backup>(
        &x.s.pool,
        &meta,
        id.parse().unwrap(),
        safehold_domain::backup::BackupCommand::DrTimeOut {
            now: chrono::Utc::now() + chrono::Duration::hours(2),
        },
    )
    .await
    .unwrap();
    let done = dr_outcome(&x, &id).await;
    assert_eq!(done["dr_status"], "failed", "{done}");
    assert!(log_messages(&done)
        .iter()
        .any(|m| m.contains("not completed before the disaster-recovery timeout")));
    // The original is kept (DR failed), and the slot is given back.
    assert_eq!(x.aws_snapshots(&id).await.len(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM dr_copy_slots")
            .fetch_one(&x.s.pool)
            .await
            .unwrap();
        if slots == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn production_credentials_never_copy_tag_or_delete_anything_for_the_vault() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let vault = register_vault(&x, true).await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "vaulted",
                   "dr": {"enabled": true, "regions": [REGION, WEST], "vault_account_id": vault}}),
            &[volume_target(&volume)],
        )
        .await;
    x.emulator.reset_calls().await.unwrap();
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap().to_string();
    let done = dr_outcome(&x, &id).await;
    assert_eq!(done["dr_status"], "completed", "{done}");
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT tenant_id FROM policies LIMIT 1")
        .fetch_one(&x.s.pool)
        .await
        .unwrap();
    let meta = safehold_jobs::commands::system_metadata(safehold_domain::TenantId(tenant), "test");
    safehold_jobs::dr::delete_copies(&x.s.state.cloud, &meta, tenant, id.parse().unwrap())
        .await
        .unwrap();

    let by_key = x.emulator.calls_by_access_key().await.unwrap();
    let production = by_key
        .get("AKIAEMULATORKEY00001")
        .cloned()
        .unwrap_or_default();
    // Production's credentials take the snapshot, share it and assume the
    // vault's role; everything done in the vault is done by the vault's own
    // (assumed-role) credentials.
    for action in [
        "CopySnapshot",
        "DeleteSnapshot",
        "CreateTags",
        "DeleteTags",
        "CopyImage",
        "DeregisterImage",
    ] {
        assert!(
            !production.contains_key(action),
            "production credentials called {action}: {production:?}"
        );
    }
    assert!(
        production.contains_key("ModifySnapshotAttribute"),
        "{production:?}"
    );
    assert!(production.contains_key("AssumeRole"), "{production:?}");
    let vault_side = |action: &str| -> u64 {
        by_key
            .iter()
            .filter(|(key, _)| key.as_str() != "AKIAEMULATORKEY00001")
            .filter_map(|(_, calls)| calls.get(action))
            .sum()
    };
    assert_eq!(vault_side("CopySnapshot"), 2, "{by_key:?}");
    assert_eq!(vault_side("DeleteSnapshot"), 2, "{by_key:?}");
    for region in [REGION, WEST] {
        let in_vault = ebs_copies(&config(&x, &vault_role(), region).await, &id).await;
        assert!(in_vault.is_empty(), "deleted from the vault's {region}");
    }
}

#[tokio::test]
async fn an_rds_snapshot_is_shared_and_copied_inside_the_vault() {
    /// The DB snapshots in the region of `config` (its own, not shared ones)
    /// that are DR copies of `original` made for `backup`.
    async fn rds_copies(
        config: &SdkConfig,
        backup: &str,
        original: &str,
    ) -> Vec<aws_sdk_rds::types::DbSnapshot> {
        let tagged = |s: &aws_sdk_rds::types::DbSnapshot, key: &str, value: &str| {
            s.tag_list()
                .iter()
                .any(|t| t.key() == Some(key) && t.value() == Some(value))
        };
        aws_sdk_rds::Client::new(config)
            .describe_db_snapshots()
            .send()
            .await
            .unwrap()
            .db_snapshots()
            .iter()
            .filter(|s| {
                tagged(s, "safehold:dr-source", original) && tagged(s, "safehold:backup", backup)
            })
            .cloned()
            .collect()
    }

    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let vault = register_vault(&x, false).await;
    let rds = aws_sdk_rds::Client::new(&x.config);
    rds.create_db_instance()
        .db_instance_identifier("orders-db")
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .allocated_storage(20)
        .master_username("admin")
        .master_user_password("password-123")
        .send()
        .await
        .unwrap();
    x.discover().await;
    let policy = x
        .policy(
            json!({"name": "vaulted-db",
                   "dr": {"enabled": true, "regions": [REGION, WEST], "vault_account_id": vault}}),
            &[json!({"type": "rds_instance", "region": REGION, "resource_id": "orders-db"})],
        )
        .await;
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    let id = backup["id"].as_str().unwrap().to_string();
    let original = backup["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "rds_snapshot")
        .unwrap_or_else(|| panic!("no RDS snapshot taken: {backup}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = dr_outcome(&x, &id).await;
    assert_eq!(done["dr_status"], "completed", "{done}");

    // Production shares the snapshot with the vault (`restore` attribute)...
    let attributes = rds
        .describe_db_snapshot_attributes()
        .db_snapshot_identifier(&original)
        .send()
        .await
        .unwrap();
    let restore: Vec<String> = attributes
        .db_snapshot_attributes_result()
        .unwrap()
        .db_snapshot_attributes()
        .iter()
        .filter(|a| a.attribute_name() == Some("restore"))
        .flat_map(|a| a.attribute_values().to_vec())
        .collect();
    assert!(restore.iter().any(|a| a == VAULT), "{restore:?}");
    // ...and the vault copies it into each target region, as its own; the
    // production account holds no copy.
    for region in [REGION, WEST] {
        let in_vault = rds_copies(&config(&x, &vault_role(), region).await, &id, &original).await;
        assert_eq!(in_vault.len(), 1, "vault copy in {region}: {in_vault:?}");
        let arn = in_vault[0].db_snapshot_arn().unwrap_or_default();
        assert!(
            arn.starts_with(&format!("arn:aws:rds:{region}:{VAULT}:snapshot:")),
            "{arn}"
        );
        let in_production = rds_copies(
            &config(&x, &production_keys(), region).await,
            &id,
            &original,
        )
        .await;
        assert!(
            in_production.is_empty(),
            "no copy in production's {region}: {in_production:?}"
        );
    }
}

/// A customer-managed KMS key with `alias` in the region of `config`; its ARN.
async fn kms_key_with_alias(config: &SdkConfig, alias: &str) -> String {
    let kms = aws_sdk_kms::Client::new(config);
    let key = kms.create_key().send().await.unwrap();
    let arn = key.key_metadata().unwrap().arn().unwrap().to_string();
    kms.create_alias()
        .alias_name(alias)
        .target_key_id(&arn)
        .send()
        .await
        .unwrap();
    arn
}

/// An encrypted EBS volume named `name` in the production account's
/// region, with `key` (the default EBS key without one), discovered.
async fn encrypted_volume(x: &Estate, name: &str, key: Option<&str>) -> Value {
    x.ec2
        .create_volume()
        .availability_zone(format!("{REGION}a"))
        .size(1)
        .encrypted(true)
        .set_kms_key_id(key.map(str::to_string))
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Volume)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("Name")
                        .value(name)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    x.discover().await;
    x.resource("ebs_volume", name).await
}

#[tokio::test]
async fn an_encrypted_snapshot_is_copied_with_the_key_of_the_same_alias_in_the_target_region() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let west = config(&x, &production_keys(), WEST).await;
    let source_key = kms_key_with_alias(&x.config, "alias/safehold-backups").await;
    // Another key of the target region, made first, is not taken.
    kms_key_with_alias(&west, "alias/other").await;
    let west_key = kms_key_with_alias(&west, "alias/safehold-backups").await;
    let rds = aws_sdk_rds::Client::new(&x.config);
    rds.create_db_instance()
        .db_instance_identifier("secret-db")
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .allocated_storage(20)
        .master_username("admin")
        .master_user_password("password-123")
        .storage_encrypted(true)
        .kms_key_id(&source_key)
        .send()
        .await
        .unwrap();
    rds.create_db_cluster()
        .db_cluster_identifier("secret-ledger")
        .engine("aurora-postgresql")
        .master_username("admin")
        .master_user_password("password-123")
        .storage_encrypted(true)
        .kms_key_id(&source_key)
        .send()
        .await
        .unwrap();
    let volume = encrypted_volume(&x, "secret-data", Some(&source_key)).await;
    let policy = x
        .policy(
            json!({"name": "encrypted", "dr": {"enabled": true, "regions": [WEST]}}),
            &[
                volume_target(&volume),
                json!({"type": "rds_instance", "region": REGION, "resource_id": "secret-db"}),
                json!({"type": "aurora_cluster", "region": REGION, "resource_id": "secret-ledger"}),
            ],
        )
        .await;
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    let id = backup["id"].as_str().unwrap();
    let done = dr_outcome(&x, id).await;
    assert_eq!(done["dr_status"], "completed", "{done}");

    // Each copy in eu-west-1 is encrypted with the key of the same alias there.
    let copies = ebs_copies(&west, id).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].encrypted(), Some(true));
    assert_eq!(copies[0].kms_key_id(), Some(west_key.as_str()));
    let west_rds = aws_sdk_rds::Client::new(&west);
    let db_copies = west_rds.describe_db_snapshots().send().await.unwrap();
    let db_copy = db_copies
        .db_snapshots()
        .iter()
        .find(|s| {
            s.tag_list()
                .iter()
                .any(|t| t.key() == Some("safehold:backup") && t.value() == Some(id))
        })
        .expect("an RDS copy in eu-west-1");
    assert_eq!(db_copy.encrypted(), Some(true));
    assert_eq!(db_copy.kms_key_id(), Some(west_key.as_str()));
    let cluster_copies = west_rds
        .describe_db_cluster_snapshots()
        .send()
        .await
        .unwrap();
    let cluster_copy = cluster_copies
        .db_cluster_snapshots()
        .iter()
        .find(|s| {
            s.tag_list()
                .iter()
                .any(|t| t.key() == Some("safehold:backup") && t.value() == Some(id))
        })
        .expect("an Aurora copy in eu-west-1");
    assert_eq!(cluster_copy.kms_key_id(), Some(west_key.as_str()));
}

#[tokio::test]
async fn an_encrypted_snapshot_without_a_matching_key_alias_fails_dr_before_copying() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let west = config(&x, &production_keys(), WEST).await;
    let source_key = kms_key_with_alias(&x.config, "alias/safehold-backups").await;
    kms_key_with_alias(&west, "alias/other").await;
    let volume = encrypted_volume(&x, "secret-data", Some(&source_key)).await;
    let policy = x
        .policy(
            json!({"name": "encrypted", "dr": {"enabled": true, "regions": [WEST]}}),
            &[volume_target(&volume)],
        )
        .await;
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    let id = backup["id"].as_str().unwrap();
    let done = dr_outcome(&x, id).await;
    assert_eq!(done["dr_status"], "failed", "{done}");
    let log = log_messages(&done);
    assert!(
        log.iter().any(|m| m.contains(
            "no KMS key with alias alias/safehold-backups in eu-west-1 of account 123456789012"
        )),
        "{log:?}"
    );
    // No copy was attempted, and none exists in the target region.
    assert!(ebs_copies(&west, id).await.is_empty());
    let calls = x.emulator.calls().await.unwrap();
    assert_eq!(
        calls.get("CopySnapshot").copied().unwrap_or(0),
        0,
        "{calls:?}"
    );
}

#[tokio::test]
async fn an_aws_managed_key_is_the_default_key_in_its_account_and_never_shared_with_a_vault() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let vault = register_vault(&x, false).await;
    // Encrypted with the account's default EBS key, alias/aws/ebs.
    let volume = encrypted_volume(&x, "secret-data", None).await;

    // Within the account, the copy is encrypted with the target region's default key.
    let regional = x
        .policy(
            json!({"name": "regional", "dr": {"enabled": true, "regions": [WEST]}}),
            &[volume_target(&volume)],
        )
        .await;
    let backup = x.run(&regional).await;
    let id = backup["id"].as_str().unwrap();
    let done = dr_outcome(&x, id).await;
    assert_eq!(done["dr_status"], "completed", "{done}");
    let copies = ebs_copies(&config(&x, &production_keys(), WEST).await, id).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].encrypted(), Some(true));

    // Into the vault, the key cannot follow: DR fails before sharing or copying.
    let vaulted = x
        .policy(
            json!({"name": "vaulted",
                   "dr": {"enabled": true, "regions": [WEST], "vault_account_id": vault}}),
            &[volume_target(&volume)],
        )
        .await;
    let backup = x.run(&vaulted).await;
    let id = backup["id"].as_str().unwrap();
    let original = backup["snapshots"][0]["id"].as_str().unwrap().to_string();
    let done = dr_outcome(&x, id).await;
    assert_eq!(done["dr_status"], "failed", "{done}");
    let log = log_messages(&done);
    assert!(
        log.iter()
            .any(|m| m.contains("AWS-managed key alias/aws/ebs")
                && m.contains(&format!("eu-west-1 of account {VAULT}"))),
        "{log:?}"
    );
    assert!(ebs_copies(&config(&x, &vault_role(), WEST).await, id)
        .await
        .is_empty());
    let shared = x
        .ec2
        .describe_snapshot_attribute()
        .snapshot_id(&original)
        .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await
        .unwrap();
    assert!(shared.create_volume_permissions().is_empty(), "{shared:?}");
}

#[tokio::test]
async fn an_encrypted_ami_is_copied_with_the_key_of_the_same_alias_and_a_mixed_one_is_refused() {
    use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, InstanceType};
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let west = config(&x, &production_keys(), WEST).await;
    let source_key = kms_key_with_alias(&x.config, "alias/safehold-images").await;
    let other_key = kms_key_with_alias(&x.config, "alias/other-images").await;
    let west_key = kms_key_with_alias(&west, "alias/safehold-images").await;
    kms_key_with_alias(&west, "alias/other-images").await;
    let image = x
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images()[0]
        .image_id()
        .unwrap()
        .to_string();
    // One instance encrypted with one key, one with two.
    let encrypted = |device: &str, key: &str| {
        BlockDeviceMapping::builder()
            .device_name(device)
            .ebs(
                EbsBlockDevice::builder()
                    .volume_size(8)
                    .encrypted(true)
                    .kms_key_id(key)
                    .build(),
            )
            .build()
    };
    let mut instances = Vec::new();
    for mappings in [
        vec![encrypted("/dev/xvda", &source_key)],
        vec![
            encrypted("/dev/xvda", &source_key),
            encrypted("/dev/sdf", &other_key),
        ],
    ] {
        let run = x
            .ec2
            .run_instances()
            .image_id(&image)
            .instance_type(InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .set_block_device_mappings(Some(mappings))
            .send()
            .await
            .unwrap();
        instances.push(run.instances()[0].instance_id().unwrap().to_string());
    }
    x.discover().await;
    let ami_target = |instance: &str| {
        json!({"type": "ec2_instance", "region": REGION, "resource_id": instance,
               "instance": {"mode": "ami_without_reboot", "volumes": {"select": "all"}}})
    };

    let single = x
        .policy(
            json!({"name": "one-key", "dr": {"enabled": true, "regions": [WEST]}}),
            &[ami_target(&instances[0])],
        )
        .await;
    let backup = x.run(&single).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    let id = backup["id"].as_str().unwrap();
    let done = dr_outcome(&x, id).await;
    assert_eq!(done["dr_status"], "completed", "{done}");
    let west_ec2 = aws_sdk_ec2::Client::new(&west);
    let copy = west_ec2
        .describe_images()
        .owners("self")
        .filters(
            Filter::builder()
                .name("tag:safehold:backup")
                .values(id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let copy = &copy.images()[0];
    let snapshot_ids: Vec<String> = copy
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_owned))
        .collect();
    assert!(!snapshot_ids.is_empty(), "{copy:?}");
    let snapshots = west_ec2
        .describe_snapshots()
        .set_snapshot_ids(Some(snapshot_ids))
        .send()
        .await
        .unwrap();
    for snapshot in snapshots.snapshots() {
        assert_eq!(snapshot.encrypted(), Some(true));
        assert_eq!(snapshot.kms_key_id(), Some(west_key.as_str()));
    }

    let mixed = x
        .policy(
            json!({"name": "two-keys", "dr": {"enabled": true, "regions": [WEST]}}),
            &[ami_target(&instances[1])],
        )
        .await;
    let backup = x.run(&mixed).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    let id = backup["id"].as_str().unwrap();
    let done = dr_outcome(&x, id).await;
    assert_eq!(done["dr_status"], "failed", "{done}");
    assert!(
        log_messages(&done)
            .iter()
            .any(|m| m.contains("encrypted with different KMS keys")),
        "{done}"
    );
    let copies = west_ec2
        .describe_images()
        .owners("self")
        .filters(
            Filter::builder()
                .name("tag:safehold:backup")
                .values(id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(copies.images().is_empty(), "{copies:?}");
}
