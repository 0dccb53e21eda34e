//! Recovery end to end against the AWS emulator: the recovery panel, every
//! recovery kind, recovery from a DR copy in another region and from a vault
//! account into production, one-off credentials, and the rules checked
//! before anything reaches AWS. Each test checks the resources AWS holds
//! afterwards, not only what Safehold reports.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::estate::{setup, Estate, REGION};
use common::vault::{
    config, dr_outcome, dr_workers, production_keys, register_vault, vault_role, VAULT, WEST,
};
use common::PASSWORD;
use reqwest::StatusCode;
use safehold_jobs::recovery::{RecoveryContext, RecoverySettings};
use serde_json::{json, Value};
use tokio::sync::watch;

/// Recovery workers in this process, polling quickly.
fn recovery_workers(x: &Estate) -> watch::Sender<bool> {
    let (stop, stop_rx) = watch::channel(false);
    let ctx = RecoveryContext {
        cloud: x.s.state.cloud.clone(),
        settings: RecoverySettings {
            poll_every: Duration::from_millis(200),
            ..RecoverySettings::default()
        },
    };
    tokio::spawn(safehold_jobs::recovery::run_workers(ctx, stop_rx));
    stop
}

fn ec2_tags(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.into(), t.value().unwrap_or_default().into())))
        .collect()
}

async fn start(x: &Estate, backup: &str, body: Value) -> (StatusCode, Value) {
    x.s.post(
        &format!("/v1/backups/{backup}/recoveries"),
        Some(&x.root),
        body,
    )
    .await
}

/// Starts a recovery and waits for its outcome.
async fn recover(x: &Estate, backup: &str, body: Value) -> Value {
    let (status, started) = start(x, backup, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    outcome(x, started["id"].as_str().unwrap()).await
}

async fn outcome(x: &Estate, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, view) = x.s.get(&format!("/v1/recoveries/{id}"), &x.root).await;
        if view["status"] != "in_progress" {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recovery {id} did not finish: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn created(recovery: &Value, kind: &str) -> Vec<String> {
    recovery["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == kind)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

async fn instance_backup(x: &Estate, instance: &str) -> Value {
    let policy = x
        .policy(
            json!({"name": "app"}),
            &[
                json!({"type": "ec2_instance", "region": REGION, "resource_id": instance,
                     "instance": {"mode": "snapshots", "volumes": {"select": "all"}}}),
            ],
        )
        .await;
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    backup
}

async fn describe_instance(x: &Estate, id: &str) -> aws_sdk_ec2::types::Instance {
    x.ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap()
        .reservations()[0]
        .instances()[0]
        .clone()
}

async fn describe_volume(ec2: &aws_sdk_ec2::Client, id: &str) -> aws_sdk_ec2::types::Volume {
    ec2.describe_volumes()
        .volume_ids(id)
        .send()
        .await
        .unwrap()
        .volumes()[0]
        .clone()
}

#[tokio::test]
async fn an_instance_is_recovered_from_its_boot_snapshot_as_it_was_with_changed_volumes() {
    let x = setup().await;
    let _workers = recovery_workers(&x);
    let (instance, _) = x.app_instance().await;
    let backup = instance_backup(&x, &instance).await;
    let id = backup["id"].as_str().unwrap();

    // The panel offers the instance, from its own region and account.
    let (status, panel) =
        x.s.get(&format!("/v1/backups/{id}/recovery-panel"), &x.root)
            .await;
    assert_eq!(status, StatusCode::OK, "{panel}");
    assert_eq!(panel["instances"][0]["instance_id"], instance.as_str());
    assert_eq!(panel["instances"][0]["can_launch_from_snapshot"], true);
    assert_eq!(panel["instances"][0]["record"]["instance_type"], "t3.small");
    assert_eq!(
        panel["instances"][0]["volumes"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        panel["sources"],
        json!([{"account_id": x.account, "region": REGION, "origin": "backup"}])
    );
    assert_eq!(
        panel["target_accounts"][0]["account_id"],
        x.account.as_str()
    );

    let done = recover(
        &x,
        id,
        json!({"instance": {"instance_id": instance, "volumes": [
            {"device": "/dev/sdf", "recover": false},
            {"device": "/dev/sdg", "size_gib": 30, "volume_type": "io1", "iops": 1000}
        ]}}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let launched = created(&done, "instance");
    assert_eq!(launched.len(), 1, "{done}");
    let recovered = describe_instance(&x, &launched[0]).await;
    assert_eq!(
        recovered.instance_type().map(|t| t.as_str()),
        Some("t3.small")
    );
    assert_eq!(
        recovered.placement().and_then(|p| p.availability_zone()),
        Some(format!("{REGION}a").as_str())
    );
    let tags = ec2_tags(recovered.tags());
    assert_eq!(tags.get("Name").map(String::as_str), Some("app-1"));
    assert_eq!(tags.get("team").map(String::as_str), Some("web"));
    assert!(!tags.contains_key("safehold:backup"), "{tags:?}");

    // The root from the boot snapshot, /dev/sdg enlarged and retyped, /dev/sdf left out.
    let devices: BTreeMap<String, String> = recovered
        .block_device_mappings()
        .iter()
        .map(|m| {
            (
                m.device_name().unwrap().to_string(),
                m.ebs().unwrap().volume_id().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        devices.keys().cloned().collect::<Vec<_>>(),
        vec!["/dev/sda1".to_string(), "/dev/sdg".to_string()],
        "{devices:?}"
    );
    let sdg = describe_volume(&x.ec2, &devices["/dev/sdg"]).await;
    assert_eq!(sdg.size(), Some(30));
    assert_eq!(sdg.volume_type().map(|t| t.as_str()), Some("io1"));
    assert_eq!(sdg.iops(), Some(1000));
    let root_snapshot = backup["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["device"] == "/dev/sda1")
        .unwrap()["id"]
        .clone();
    let root = describe_volume(&x.ec2, &devices["/dev/sda1"]).await;
    assert_eq!(root.snapshot_id(), root_snapshot.as_str());

    // The temporary AMI was deregistered; the monitor and the policy know.
    let images = created(&done, "image");
    assert_eq!(images.len(), 1);
    let left = x.ec2.describe_images().owners("self").send().await.unwrap();
    assert!(
        !left
            .images()
            .iter()
            .any(|i| i.image_id() == Some(&images[0])),
        "the temporary AMI is gone"
    );
    assert!(done["log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["message"].as_str().unwrap().contains("Deregistered")));
    let (_, monitor) = x.s.get("/v1/recoveries", &x.root).await;
    assert_eq!(monitor["items"][0]["id"], done["id"]);
    assert_eq!(monitor["items"][0]["kind"], "instance");
    let (_, panel) =
        x.s.get(&format!("/v1/backups/{id}/recovery-panel"), &x.root)
            .await;
    assert!(panel["last_recovery_at"].is_string(), "{panel}");
    let policy = backup["policy_id"].as_str().unwrap();
    let (_, view) = x.s.get(&format!("/v1/policies/{policy}"), &x.root).await;
    assert_eq!(
        view["last_recovery_at"], panel["last_recovery_at"],
        "{view}"
    );
}

#[tokio::test]
async fn a_kept_ami_can_be_made_without_launching_anything() {
    let x = setup().await;
    let _workers = recovery_workers(&x);
    let (instance, _) = x.app_instance().await;
    let backup = instance_backup(&x, &instance).await;
    let before = x
        .ec2
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
        .len();
    let done = recover(
        &x,
        backup["id"].as_str().unwrap(),
        json!({"instance": {"instance_id": instance, "ami_handling": "create_only"}}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(created(&done, "instance").is_empty());
    let image = &created(&done, "image")[0];
    let images = x
        .ec2
        .describe_images()
        .image_ids(image)
        .send()
        .await
        .unwrap();
    assert_eq!(images.images()[0].root_device_name(), Some("/dev/sda1"));
    let after = x
        .ec2
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
        .len();
    assert_eq!(before, after, "nothing launched");
}

#[tokio::test]
async fn volumes_are_recovered_larger_elsewhere_and_switched_into_a_stopped_instance() {
    let x = setup().await;
    let _workers = recovery_workers(&x);
    let (instance, _) = x.app_instance().await;
    let backup = instance_backup(&x, &instance).await;
    let id = backup["id"].as_str().unwrap();
    let old_sdf = describe_instance(&x, &instance)
        .await
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some("/dev/sdf"))
        .unwrap()
        .ebs()
        .unwrap()
        .volume_id()
        .unwrap()
        .to_string();

    // Into another zone, larger, as gp3 with IOPS: created, not attached.
    let done = recover(
        &x,
        id,
        json!({"volumes": {"instance_id": instance, "volumes": [
            {"device": "/dev/sda1", "recover": false},
            {"device": "/dev/sdg", "recover": false},
            {"device": "/dev/sdf", "availability_zone": format!("{REGION}b"), "size_gib": 15,
             "volume_type": "gp3", "iops": 4000}
        ]}}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let volume = describe_volume(&x.ec2, &created(&done, "volume")[0]).await;
    assert_eq!(
        volume.availability_zone(),
        Some(format!("{REGION}b").as_str())
    );
    assert_eq!(volume.size(), Some(15));
    assert_eq!(volume.volume_type().map(|t| t.as_str()), Some("gp3"));
    assert_eq!(volume.iops(), Some(4000));
    assert_eq!(
        ec2_tags(volume.tags()).get("team").map(String::as_str),
        Some("web"),
        "the snapshot's source tags are carried over"
    );
    assert!(volume.attachments().is_empty());

    // Switching with a running instance is refused: the volume stays unattached.
    let body = json!({"volumes": {"instance_id": instance, "volumes": [
            {"device": "/dev/sda1", "recover": false},
            {"device": "/dev/sdg", "recover": false}],
        "attach_to": instance, "attach_behavior": "switch_and_delete_old"}});
    let refused = recover(&x, id, body.clone()).await;
    assert_eq!(refused["status"], "partially_succeeded", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("InstanceNotStopped"),
        "{refused}"
    );
    assert_eq!(
        describe_volume(&x.ec2, &old_sdf).await.attachments()[0].instance_id(),
        Some(instance.as_str())
    );

    // Stopped: the recovered volume takes /dev/sdf and the old one is deleted.
    x.ec2
        .stop_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    let switched = recover(&x, id, body).await;
    assert_eq!(switched["status"], "succeeded", "{switched}");
    let new = created(&switched, "volume")[0].clone();
    let attached = describe_instance(&x, &instance)
        .await
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some("/dev/sdf"))
        .and_then(|m| m.ebs()?.volume_id().map(str::to_string));
    assert_eq!(attached, Some(new));
    let gone = x.ec2.describe_volumes().volume_ids(&old_sdf).send().await;
    assert!(gone.is_err(), "the old volume was deleted");
}

#[tokio::test]
async fn databases_need_new_identifiers_and_tables_come_back_with_tags_and_ttl() {
    let x = setup().await;
    let _workers = recovery_workers(&x);
    let rds = aws_sdk_rds::Client::new(&x.config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&x.config);
    let redshift = aws_sdk_redshift::Client::new(&x.config);
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
    redshift
        .create_cluster()
        .cluster_identifier("warehouse")
        .node_type("dc2.large")
        .cluster_type("single-node")
        .master_username("admin")
        .master_user_password("Password123")
        .send()
        .await
        .unwrap();
    {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, Tag,
            TimeToLiveSpecification,
        };
        let table = dynamodb
            .create_table()
            .table_name("sessions")
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        let arn = table.table_description().unwrap().table_arn().unwrap();
        dynamodb
            .tag_resource()
            .resource_arn(arn)
            .tags(
                Tag::builder()
                    .key("team")
                    .value("identity")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        dynamodb
            .update_time_to_live()
            .table_name("sessions")
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name("expires_at")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    x.discover().await;
    let targets = [
        ("rds_instance", "orders-db"),
        ("aurora_cluster", "ledger"),
        ("redshift_cluster", "warehouse"),
        ("dynamodb_table", "sessions"),
    ]
    .map(|(kind, id)| json!({"type": kind, "region": REGION, "resource_id": id}));
    let policy = x.policy(json!({"name": "databases"}), &targets).await;
    let backup = x.run(&policy).await;
    assert_eq!(backup["status"], "successful", "{backup}");
    let id = backup["id"].as_str().unwrap();
    let (_, panel) =
        x.s.get(&format!("/v1/backups/{id}/recovery-panel"), &x.root)
            .await;
    assert_eq!(panel["databases"].as_array().unwrap().len(), 4, "{panel}");

    // The originals exist: their identifiers are refused, naming the field.
    for (kind, body, field) in [
        (
            "rds",
            json!({"db_instance_id": "orders-db"}),
            "rds.new_db_instance_id",
        ),
        (
            "aurora",
            json!({"cluster_id": "ledger", "instance_class": "db.r5.large"}),
            "aurora.new_cluster_id",
        ),
        (
            "redshift",
            json!({"cluster_id": "warehouse"}),
            "redshift.new_cluster_id",
        ),
        (
            "dynamodb",
            json!({"table_name": "sessions"}),
            "dynamodb.new_table_name",
        ),
    ] {
        let (status, problem) = start(&x, id, json!({ kind: body })).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{kind}: {problem}"
        );
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        assert_eq!(problem["errors"][0]["code"], "identifier_in_use");
    }

    let done = recover(
        &x,
        id,
        json!({"rds": {"db_instance_id": "orders-db", "new_db_instance_id": "orders-drill",
                       "port": 6543, "publicly_accessible": false}}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let db = rds
        .describe_db_instances()
        .db_instance_identifier("orders-drill")
        .send()
        .await
        .unwrap();
    let db = &db.db_instances()[0];
    assert_eq!(db.db_instance_class(), Some("db.t3.micro"));
    assert_eq!(db.endpoint().and_then(|e| e.port()), Some(6543));

    let done = recover(
        &x,
        id,
        json!({"aurora": {"cluster_id": "ledger", "new_cluster_id": "ledger-drill",
                          "instance_class": "db.r5.large", "multi_az": true}}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let cluster = rds
        .describe_db_clusters()
        .db_cluster_identifier("ledger-drill")
        .send()
        .await
        .unwrap();
    let mut members: Vec<String> = cluster.db_clusters()[0]
        .db_cluster_members()
        .iter()
        .filter_map(|m| m.db_instance_identifier().map(str::to_string))
        .collect();
    members.sort();
    assert_eq!(members, vec!["ledger-drill-1", "ledger-drill-1-reader"]);

    let done = recover(
        &x,
        id,
        json!({"redshift": {"cluster_id": "warehouse", "new_cluster_id": "warehouse-drill"}}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let restored = redshift
        .describe_clusters()
        .cluster_identifier("warehouse-drill")
        .send()
        .await
        .unwrap();
    assert_eq!(restored.clusters()[0].node_type(), Some("dc2.large"));

    let done = recover(
        &x,
        id,
        json!({"dynamodb": {"table_name": "sessions", "new_table_name": "sessions-drill"}}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let table = dynamodb
        .describe_table()
        .table_name("sessions-drill")
        .send()
        .await
        .unwrap();
    let arn = table.table().unwrap().table_arn().unwrap().to_string();
    let tags = dynamodb
        .list_tags_of_resource()
        .resource_arn(arn)
        .send()
        .await
        .unwrap();
    assert!(tags
        .tags()
        .iter()
        .any(|t| t.key() == "team" && t.value() == "identity"));
    let ttl = dynamodb
        .describe_time_to_live()
        .table_name("sessions-drill")
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|t| t.attribute_name()),
        Some("expires_at")
    );
}

#[tokio::test]
async fn recovery_works_from_a_dr_copy_in_another_region_and_from_the_vault_into_production() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let _workers = recovery_workers(&x);
    let vault = register_vault(&x, false).await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "vaulted",
                   "dr": {"enabled": true, "regions": [REGION, WEST], "vault_account_id": vault}}),
            &[json!({"type": "ebs_volume", "region": REGION, "resource_id": volume["id"]})],
        )
        .await;
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap().to_string();
    let done = dr_outcome(&x, &id).await;
    assert_eq!(done["dr_status"], "completed", "{done}");
    let (_, panel) =
        x.s.get(&format!("/v1/backups/{id}/recovery-panel"), &x.root)
            .await;
    let sources: Vec<(String, String)> = panel["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["account_id"].as_str().unwrap().to_string(),
                s["region"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for expected in [
        (x.account.clone(), REGION.to_string()),
        (vault.clone(), REGION.to_string()),
        (vault.clone(), WEST.to_string()),
    ] {
        assert!(sources.contains(&expected), "{expected:?} in {panel}");
    }
    let volume_id = volume["id"].as_str().unwrap();

    // From the vault's copy in eu-west-1, into the vault's eu-west-1.
    let west = recover(
        &x,
        &id,
        json!({"source_account_id": vault, "source_region": WEST,
               "volumes": {"volumes": [{"volume_id": volume_id, "availability_zone": format!("{WEST}a")}]}}),
    )
    .await;
    assert_eq!(west["status"], "succeeded", "{west}");
    let vault_west = aws_sdk_ec2::Client::new(&config(&x, &vault_role(), WEST).await);
    let made = describe_volume(&vault_west, &created(&west, "volume")[0]).await;
    assert_eq!(made.size(), Some(20));
    assert_eq!(
        ec2_tags(made.tags()).get("Name").map(String::as_str),
        Some("shared-data")
    );

    // From the vault's copy in us-east-1 into the production account.
    let home = recover(
        &x,
        &id,
        json!({"source_account_id": vault, "target_account_id": x.account,
               "volumes": {"volumes": [{"volume_id": volume_id, "availability_zone": format!("{REGION}a")}]}}),
    )
    .await;
    assert_eq!(home["status"], "succeeded", "{home}");
    assert_eq!(home["target"]["account_id"], x.account.as_str());
    let production = aws_sdk_ec2::Client::new(&config(&x, &production_keys(), REGION).await);
    let made = describe_volume(&production, &created(&home, "volume")[0]).await;
    let vault_east = aws_sdk_ec2::Client::new(&config(&x, &vault_role(), REGION).await);
    let from = vault_east
        .describe_snapshots()
        .snapshot_ids(made.snapshot_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        from.snapshots()[0].owner_id(),
        Some(VAULT),
        "the production volume was made from the vault's copy"
    );
}

#[tokio::test]
async fn invalid_requests_change_nothing_and_only_allowed_users_recover() {
    let x = setup().await;
    let _workers = recovery_workers(&x);
    let volume = x.resource("ebs_volume", "shared-data").await;
    let volume_id = volume["id"].as_str().unwrap().to_string();
    let policy = x
        .policy(
            json!({"name": "data"}),
            &[json!({"type": "ebs_volume", "region": REGION, "resource_id": volume_id})],
        )
        .await;
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap();

    x.emulator.reset_calls().await.unwrap();
    for (body, field, code) in [
        (
            json!({"volumes": {"volumes": [{"volume_id": volume_id, "availability_zone": "us-east-1a", "size_gib": 10}]}}),
            "volumes.volumes[0].size_gib",
            "smaller_than_original",
        ),
        (
            json!({"volumes": {"volumes": [{"volume_id": volume_id, "availability_zone": "us-east-1a", "volume_type": "io2", "size_gib": 20, "iops": 20000}]}}),
            "volumes.volumes[0].iops",
            "iops_too_high_for_size",
        ),
        (
            json!({"volumes": {"volumes": [{"volume_id": volume_id, "availability_zone": "us-east-1a"}], "attach_behavior": "switch"}}),
            "volumes.attach_behavior",
            "not_allowed",
        ),
        (
            json!({"volumes": {"volumes": [{"volume_id": "vol-unknown", "availability_zone": "us-east-1a"}]}}),
            "volumes.volumes[0].volume_id",
            "not_in_backup",
        ),
        (
            json!({"rds": {"db_instance_id": "orders"}, "volumes": {"volumes": []}}),
            "instance",
            "one_kind_required",
        ),
        (
            json!({"target_account_id": uuid::Uuid::new_v4(),
                   "volumes": {"volumes": [{"volume_id": volume_id, "availability_zone": "us-east-1a"}]}}),
            "target_account_id",
            "unknown_account",
        ),
    ] {
        let (status, problem) = start(&x, id, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        let fields: Vec<(&str, &str)> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["field"].as_str().unwrap(), e["code"].as_str().unwrap()))
            .collect();
        assert!(fields.contains(&(field, code)), "{body}: {problem}");
    }
    let (status, _) = start(&x, id, json!({"volumes": {}, "colour": "red"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let calls = x.emulator.calls().await.unwrap();
    assert!(
        calls.is_empty(),
        "no AWS call for invalid requests: {calls:?}"
    );
    let (_, monitor) = x.s.get("/v1/recoveries", &x.root).await;
    assert_eq!(monitor["items"], json!([]));

    // A delegate needs allow-recovery; another organisation sees nothing.
    let (delegate, helper) =
        x.s.create_user(
            &x.root,
            "acme",
            json!({"username": "helper", "password": "Temporary-Pass-1!", "kind": "delegate"}),
        )
        .await;
    let good = json!({"volumes": {"volumes": [{"volume_id": volume_id, "availability_zone": "us-east-1a"}]}});
    let (status, problem) =
        x.s.post(
            &format!("/v1/backups/{id}/recoveries"),
            Some(&helper),
            good.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    let (status, _) =
        x.s.get(&format!("/v1/backups/{id}/recovery-panel"), &helper)
            .await;
    assert_eq!(status, StatusCode::OK, "a delegate may look");
    x.s.call(
        reqwest::Method::PUT,
        &format!("/v1/users/{delegate}/permissions"),
        Some(&x.root),
        Some(json!({"allow_recovery": true, "allow_account_changes": false, "allow_backup_changes": false})),
    )
    .await;
    let helper = x.s.token("acme", "helper", PASSWORD).await;
    let (status, started) =
        x.s.post(
            &format!("/v1/backups/{id}/recoveries"),
            Some(&helper),
            good.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let done = outcome(&x, started["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["delegate_id"], delegate.as_str());
    let (_, audit) = x.s.get("/v1/audit?limit=200", &x.root).await;
    assert!(
        audit["items"].as_array().unwrap().iter().any(
            |e| e["event_type"] == "RecoveryRequested" && e["delegate_id"] == delegate.as_str()
        ),
        "{audit}"
    );
    x.s.sign_up("other", "root").await;
    let other = x.s.token("other", "root", PASSWORD).await;
    for path in [
        format!("/v1/backups/{id}/recovery-panel"),
        format!("/v1/recoveries/{}", done["id"].as_str().unwrap()),
    ] {
        let (status, _) = x.s.get(&path, &other).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) =
        x.s.post(
            &format!("/v1/backups/{id}/recoveries"),
            Some(&other),
            good.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // One-off credentials must belong to the target account, and are
    // forgotten once the recovery is over.
    let vault_keys = aws_sdk_sts::Client::new(&x.config)
        .assume_role()
        .role_arn(safehold_cloud::access::role_arn(VAULT, "SafeholdVault"))
        .role_session_name("elsewhere")
        .send()
        .await
        .unwrap();
    let vault_keys = vault_keys.credentials().unwrap();
    let mut foreign = good.clone();
    foreign["credentials"] = json!({"access_key_id": vault_keys.access_key_id(),
                                    "secret_access_key": vault_keys.secret_access_key()});
    let (status, problem) = start(&x, id, foreign).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "credentials", "{problem}");
    assert_eq!(problem["errors"][0]["code"], "wrong_account", "{problem}");
    let mut own = good;
    own["credentials"] =
        json!({"access_key_id": "AKIAEMULATORKEY00002", "secret_access_key": "another"});
    let done = recover(&x, id, own).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["one_off_credentials"], true);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM recovery_credentials")
        .fetch_one(&x.s.pool)
        .await
        .unwrap();
    assert_eq!(kept, 0, "one-off credentials are forgotten");
    let by_key = x.emulator.calls_by_access_key().await.unwrap();
    assert!(
        by_key.contains_key("AKIAEMULATORKEY00002"),
        "the recovery used the one-off keys: {by_key:?}"
    );
}

#[tokio::test]
async fn an_instance_is_recovered_in_a_dr_region_with_references_given_and_checked_there() {
    let x = setup().await;
    let _dr = dr_workers(&x, 20);
    let _workers = recovery_workers(&x);
    let (instance, _) = x.app_instance().await;
    let policy = x
        .policy(
            json!({"name": "app", "dr": {"enabled": true, "regions": [WEST]}}),
            &[
                json!({"type": "ec2_instance", "region": REGION, "resource_id": instance,
                     "instance": {"mode": "snapshots", "volumes": {"select": "all"}}}),
            ],
        )
        .await;
    let backup = x.run(&policy).await;
    let id = backup["id"].as_str().unwrap().to_string();
    let dr = dr_outcome(&x, &id).await;
    assert_eq!(dr["dr_status"], "completed", "{dr}");

    // In eu-west-1 the original subnet and security groups mean nothing.
    let (status, problem) = start(
        &x,
        &id,
        json!({"source_region": WEST, "instance": {"instance_id": instance}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["instance.subnet_id"], "{problem}");

    // Given, they are checked in eu-west-1 before anything is created.
    let west = aws_sdk_ec2::Client::new(&config(&x, &production_keys(), WEST).await);
    let subnet = west.describe_subnets().send().await.unwrap().subnets()[0].clone();
    let group = west
        .describe_security_groups()
        .send()
        .await
        .unwrap()
        .security_groups()[0]
        .group_id()
        .unwrap()
        .to_string();
    let (status, problem) = start(
        &x,
        &id,
        json!({"source_region": WEST, "instance": {"instance_id": instance,
               "subnet_id": "subnet-0000000000000000", "security_group_ids": [group]}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(
        problem["errors"][0]["field"], "instance.subnet_id",
        "{problem}"
    );

    let done = recover(
        &x,
        &id,
        json!({"source_region": WEST, "instance": {"instance_id": instance,
               "subnet_id": subnet.subnet_id(), "security_group_ids": [group]}}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["source"]["region"], WEST);
    let launched = &created(&done, "instance")[0];
    let recovered = west
        .describe_instances()
        .instance_ids(launched)
        .send()
        .await
        .unwrap()
        .reservations()[0]
        .instances()[0]
        .clone();
    assert_eq!(recovered.subnet_id(), subnet.subnet_id());
    assert_eq!(
        recovered.instance_type().map(|t| t.as_str()),
        Some("t3.small")
    );
    // Its boot volume comes from the DR copy of the boot snapshot.
    let root = recovered
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some("/dev/sda1"))
        .and_then(|m| m.ebs()?.volume_id())
        .unwrap()
        .to_string();
    let root = describe_volume(&west, &root).await;
    let copy = dr["dr_copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            backup["snapshots"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["id"] == c["original_id"] && s["device"] == "/dev/sda1")
        })
        .unwrap()["copy_id"]
        .clone();
    assert_eq!(root.snapshot_id(), copy.as_str());
}
