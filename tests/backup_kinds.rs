//! Every kind of backup end to end against the AWS emulator: database
//! snapshots and DynamoDB backups, instance volume selection, AMI modes, and
//! retention across successful, partial and failed backups. Each test checks
//! what exists in AWS, not only what Safehold reports.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::Filter;
use common::estate::{setup, Estate, REGION};
use reqwest::StatusCode;
use serde_json::{json, Value};

impl Estate {
    /// Own AMIs in AWS tagged with this backup id.
    async fn aws_images(&self, backup: &str) -> Vec<aws_sdk_ec2::types::Image> {
        self.ec2
            .describe_images()
            .owners("self")
            .filters(
                Filter::builder()
                    .name("tag:safehold:backup")
                    .values(backup)
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .images()
            .to_vec()
    }

    /// The image, unless AWS no longer has it (unknown or deregistered).
    async fn live_image(&self, id: &str) -> Option<aws_sdk_ec2::types::Image> {
        let described = self.ec2.describe_images().image_ids(id).send().await;
        match described {
            Ok(out) => out
                .images()
                .iter()
                .find(|i| {
                    i.image_id() == Some(id)
                        && i.state().map(|s| s.as_str()) != Some("deregistered")
                })
                .cloned(),
            Err(e) => {
                let code = aws_sdk_ec2::error::ProvideErrorMetadata::code(&e);
                assert!(
                    matches!(
                        code,
                        Some("InvalidAMIID.NotFound") | Some("InvalidAMIID.Unavailable")
                    ),
                    "describing {id}: {e:?}"
                );
                None
            }
        }
    }
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap().to_string()
}

fn instance_target(instance: &str, mode: &str, volumes: Value) -> Value {
    json!({"type": "ec2_instance", "region": REGION, "resource_id": instance,
           "instance": {"mode": mode, "volumes": volumes}})
}

/// The backup's snapshots as reported, with the given kind.
fn reported<'a>(backup: &'a Value, kind: &str) -> Vec<&'a Value> {
    backup["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == kind)
        .collect()
}

fn ec2_tags(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.into(), t.value().unwrap_or_default().into())))
        .collect()
}

fn rds_tags(tags: &[aws_sdk_rds::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.into(), t.value().unwrap_or_default().into())))
        .collect()
}

fn redshift_tags(tags: &[aws_sdk_redshift::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.into(), t.value().unwrap_or_default().into())))
        .collect()
}

fn ids(snapshots: &[aws_sdk_ec2::types::Snapshot]) -> BTreeSet<String> {
    snapshots
        .iter()
        .filter_map(|s| s.snapshot_id().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn every_database_kind_is_backed_up_and_tagged() {
    let x = setup().await;
    let rds = aws_sdk_rds::Client::new(&x.config);
    let redshift = aws_sdk_redshift::Client::new(&x.config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&x.config);
    rds.create_db_instance()
        .db_instance_identifier("orders-db")
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .allocated_storage(20)
        .master_username("admin")
        .master_user_password("password-123")
        .tags(
            aws_sdk_rds::types::Tag::builder()
                .key("team")
                .value("payments")
                .build(),
        )
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
    // A cluster member is protected through its cluster, not on its own.
    rds.create_db_instance()
        .db_instance_identifier("ledger-1")
        .db_cluster_identifier("ledger")
        .db_instance_class("db.r6g.large")
        .engine("aurora-postgresql")
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
            AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
            ScalarAttributeType,
        };
        dynamodb
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
        dynamodb
            .put_item()
            .table_name("sessions")
            .item("pk", AttributeValue::S("user-1".into()))
            .send()
            .await
            .unwrap();
    }
    x.discover().await;
    let (_, members) =
        x.s.get(
            &format!(
                "/v1/accounts/{}/resources?type=rds_instance&q=ledger-1",
                x.account
            ),
            &x.root,
        )
        .await;
    assert_eq!(
        members["items"].as_array().map(Vec::len),
        Some(0),
        "{members}"
    );

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
    let id = id_of(&backup);
    let snapshots = backup["snapshots"].as_array().unwrap();
    let kinds: BTreeSet<&str> = snapshots
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(snapshots.len(), 4, "{backup}");
    assert_eq!(
        kinds,
        BTreeSet::from([
            "aurora_snapshot",
            "dynamodb_backup",
            "rds_snapshot",
            "redshift_snapshot"
        ])
    );
    assert!(
        snapshots.iter().all(|s| s["state"] == "completed"),
        "{backup}"
    );
    let one = |kind: &str| {
        let found = reported(&backup, kind);
        assert_eq!(found.len(), 1, "{kind}: {backup}");
        found[0]["id"].as_str().unwrap().to_string()
    };

    // RDS: the snapshot of the instance, tagged through its ARN.
    let rds_id = one("rds_snapshot");
    let described = rds
        .describe_db_snapshots()
        .db_snapshot_identifier(&rds_id)
        .send()
        .await
        .unwrap();
    let [snapshot] = described.db_snapshots() else {
        panic!("{described:?}")
    };
    assert_eq!(snapshot.db_instance_identifier(), Some("orders-db"));
    let tags = rds
        .list_tags_for_resource()
        .resource_name(snapshot.db_snapshot_arn().unwrap())
        .send()
        .await
        .unwrap();
    let tags = rds_tags(tags.tag_list());
    assert_eq!(tags.get("safehold:backup"), Some(&id), "{tags:?}");
    assert_eq!(
        tags.get("safehold:target").map(String::as_str),
        Some("rds_instance:us-east-1:orders-db")
    );
    assert_eq!(tags.get("safehold:policy"), Some(&policy));
    assert_eq!(tags.get("team").map(String::as_str), Some("payments"));
    // Only the instance of its own; the cluster member is in the cluster's.
    let all = rds
        .describe_db_snapshots()
        .snapshot_type("manual")
        .send()
        .await
        .unwrap();
    assert_eq!(all.db_snapshots().len(), 1, "{all:?}");

    // Aurora: the cluster snapshot.
    let aurora_id = one("aurora_snapshot");
    let described = rds
        .describe_db_cluster_snapshots()
        .db_cluster_snapshot_identifier(&aurora_id)
        .send()
        .await
        .unwrap();
    let [snapshot] = described.db_cluster_snapshots() else {
        panic!("{described:?}")
    };
    assert_eq!(snapshot.db_cluster_identifier(), Some("ledger"));
    let tags = rds
        .list_tags_for_resource()
        .resource_name(snapshot.db_cluster_snapshot_arn().unwrap())
        .send()
        .await
        .unwrap();
    let tags = rds_tags(tags.tag_list());
    assert_eq!(tags.get("safehold:backup"), Some(&id), "{tags:?}");
    assert_eq!(
        tags.get("safehold:target").map(String::as_str),
        Some("aurora_cluster:us-east-1:ledger")
    );

    // Redshift: tags come with the snapshot.
    let redshift_id = one("redshift_snapshot");
    let described = redshift
        .describe_cluster_snapshots()
        .snapshot_identifier(&redshift_id)
        .send()
        .await
        .unwrap();
    let [snapshot] = described.snapshots() else {
        panic!("{described:?}")
    };
    assert_eq!(snapshot.cluster_identifier(), Some("warehouse"));
    let tags = redshift_tags(snapshot.tags());
    assert_eq!(tags.get("safehold:backup"), Some(&id), "{tags:?}");
    assert_eq!(
        tags.get("safehold:target").map(String::as_str),
        Some("redshift_cluster:us-east-1:warehouse")
    );

    // DynamoDB: an on-demand backup of the table (these take no tags).
    let dynamodb_id = one("dynamodb_backup");
    let listed = dynamodb
        .list_backups()
        .table_name("sessions")
        .send()
        .await
        .unwrap();
    let [summary] = listed.backup_summaries() else {
        panic!("{listed:?}")
    };
    assert_eq!(summary.backup_arn(), Some(dynamodb_id.as_str()));
    assert_eq!(
        summary.backup_status(),
        Some(&aws_sdk_dynamodb::types::BackupStatus::Available)
    );
    let name = summary.backup_name().unwrap();
    assert!(
        name.starts_with(&format!("safehold-{}", &id.replace('-', "")[..8]))
            && name.ends_with("-sessions"),
        "{name}"
    );
}

#[tokio::test]
async fn instance_volume_selection_is_honoured() {
    let x = setup().await;
    let (instance, volumes) = x.app_instance().await;
    let [root, sdf, sdg] = [&volumes[0], &volumes[1], &volumes[2]];
    let policy = x
        .policy(
            json!({"name": "app"}),
            &[instance_target(
                &instance,
                "snapshots",
                json!({"select": "exclude", "devices": ["/dev/sdf"]}),
            )],
        )
        .await;
    let first = x.run(&policy).await;
    assert_eq!(first["status"], "successful", "{first}");
    let mut devices: Vec<&str> = reported(&first, "ebs_snapshot")
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    devices.sort();
    assert_eq!(devices, ["/dev/sda1", "/dev/sdg"], "{first}");
    assert_eq!(first["snapshots"].as_array().unwrap().len(), 2);

    let aws = x.aws_snapshots(&id_of(&first)).await;
    assert_eq!(aws.len(), 2, "{aws:?}");
    let from: BTreeSet<&str> = aws.iter().filter_map(|s| s.volume_id()).collect();
    assert_eq!(from, BTreeSet::from([root.as_str(), sdg.as_str()]));
    // No snapshot of the excluded volume is left anywhere.
    assert!(
        x.snapshots_where("volume-id", std::slice::from_ref(sdf))
            .await
            .is_empty(),
        "the excluded volume was snapshotted"
    );

    // The same target again, now with only that device.
    let view = x
        .put_target(
            &policy,
            instance_target(
                &instance,
                "snapshots",
                json!({"select": "include", "devices": ["/dev/sdf"]}),
            ),
        )
        .await;
    let targets = view["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{view}");
    assert_eq!(targets[0]["instance"]["volumes"]["select"], "include");
    let second = x.run(&policy).await;
    assert_eq!(second["status"], "successful", "{second}");
    let reported_second = reported(&second, "ebs_snapshot");
    assert_eq!(reported_second.len(), 1, "{second}");
    assert_eq!(reported_second[0]["device"], "/dev/sdf");
    assert_eq!(reported_second[0]["source"], sdf.as_str());

    let aws = x.aws_snapshots(&id_of(&second)).await;
    assert_eq!(aws.len(), 1, "{aws:?}");
    assert_eq!(aws[0].volume_id(), Some(sdf.as_str()));
    assert_eq!(
        aws[0].snapshot_id(),
        reported_second[0]["id"].as_str(),
        "the snapshot reported is the one in AWS"
    );
    for other in [root, sdg] {
        let of_other = x
            .snapshots_where("volume-id", std::slice::from_ref(other))
            .await;
        assert_eq!(of_other.len(), 1, "only the first backup's: {of_other:?}");
    }

    // A volume attached after the last discovery is not in an include list.
    let zone = "us-east-1a";
    let late = x
        .ec2
        .create_volume()
        .availability_zone(zone)
        .size(4)
        .send()
        .await
        .unwrap();
    let late = late.volume_id().unwrap().to_string();
    x.ec2
        .attach_volume()
        .volume_id(&late)
        .instance_id(&instance)
        .device("/dev/sdh")
        .send()
        .await
        .unwrap();
    let third = x.run(&policy).await;
    assert_eq!(third["status"], "successful", "{third}");
    let reported: Vec<_> = third["snapshots"].as_array().unwrap().clone();
    assert_eq!(reported.len(), 1, "{third}");
    assert_eq!(reported[0]["device"], "/dev/sdf");
    assert!(x
        .snapshots_where("volume-id", std::slice::from_ref(&late))
        .await
        .is_empty());
}

#[tokio::test]
async fn ami_modes_create_images_and_retention_deregisters_them() {
    let x = setup().await;
    let web = id_of(&x.resource("ec2_instance", "web-1").await);
    let db = x.resource("ec2_instance", "db-1").await;
    let all = json!({"select": "all"});

    // A fresh AMI per backup; one generation kept.
    let images = x
        .policy(
            json!({"name": "images", "generations": 1}),
            &[instance_target(&web, "ami_without_reboot", all.clone())],
        )
        .await;
    let first = x.run(&images).await;
    assert_eq!(first["status"], "successful", "{first}");
    let first_id = id_of(&first);
    let amis = reported(&first, "ami");
    assert_eq!(amis.len(), 1, "{first}");
    assert_eq!(first["snapshots"].as_array().unwrap().len(), 1, "{first}");
    let first_ami = amis[0]["id"].as_str().unwrap().to_string();
    let image = x.live_image(&first_ami).await.expect("the first AMI");
    assert_eq!(
        ec2_tags(image.tags()).get("safehold:backup"),
        Some(&first_id)
    );
    let first_snapshots: Vec<String> = image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_owned))
        .collect();
    assert!(!first_snapshots.is_empty(), "{image:?}");
    assert_eq!(
        ids(&x.aws_snapshots(&first_id).await),
        first_snapshots.iter().cloned().collect(),
        "the AMI's snapshots carry the backup's tag"
    );

    let second = x.run(&images).await;
    assert_eq!(second["status"], "successful", "{second}");
    let second_id = id_of(&second);
    let amis = reported(&second, "ami");
    assert_eq!(amis.len(), 1, "{second}");
    let second_ami = amis[0]["id"].as_str().unwrap().to_string();
    assert_ne!(second_ami, first_ami);

    // The first backup's AMI is deregistered and its snapshots deleted.
    assert!(
        x.live_image(&first_ami).await.is_none(),
        "{first_ami} is still registered"
    );
    assert!(
        x.snapshots_where("snapshot-id", &first_snapshots)
            .await
            .is_empty(),
        "the first AMI's snapshots remain"
    );
    assert!(x.aws_snapshots(&first_id).await.is_empty());
    x.recorded_deleted(&first_id).await;
    // The second one is there, tagged with its backup.
    let image = x.live_image(&second_ami).await.expect("the second AMI");
    assert_eq!(image.state().map(|s| s.as_str()), Some("available"));
    let tags = ec2_tags(image.tags());
    assert_eq!(tags.get("safehold:backup"), Some(&second_id), "{tags:?}");
    assert_eq!(
        tags.get("safehold:target"),
        Some(&format!("ec2_instance:{REGION}:{web}"))
    );
    assert_eq!(tags.get("Name").map(String::as_str), Some("web-1"));
    assert!(!x.aws_snapshots(&second_id).await.is_empty());

    // Snapshots plus an initial AMI: the AMI is made once, not per backup.
    let db_id = id_of(&db);
    let db_volumes = db["details"]["volumes"].as_array().unwrap().len();
    let with_image = x
        .policy(
            json!({"name": "with-image"}),
            &[instance_target(&db_id, "snapshots_with_initial_ami", all)],
        )
        .await;
    let first = x.run(&with_image).await;
    assert_eq!(first["status"], "successful", "{first}");
    let first_id = id_of(&first);
    assert_eq!(
        reported(&first, "ebs_snapshot").len(),
        db_volumes,
        "{first}"
    );
    let amis = reported(&first, "ami");
    assert_eq!(amis.len(), 1, "{first}");
    let initial_ami = amis[0]["id"].as_str().unwrap().to_string();
    let tagged = x.aws_images(&first_id).await;
    assert_eq!(tagged.len(), 1, "{tagged:?}");
    assert_eq!(tagged[0].image_id(), Some(initial_ami.as_str()));
    let in_aws = ids(&x.aws_snapshots(&first_id).await);
    for snapshot in reported(&first, "ebs_snapshot") {
        assert!(
            in_aws.contains(snapshot["id"].as_str().unwrap()),
            "{in_aws:?}"
        );
    }

    let second = x.run(&with_image).await;
    assert_eq!(second["status"], "successful", "{second}");
    let second_id = id_of(&second);
    let snapshots = second["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), db_volumes, "{second}");
    assert!(
        snapshots.iter().all(|s| s["kind"] == "ebs_snapshot"),
        "{second}"
    );
    assert!(x.aws_images(&second_id).await.is_empty());
    assert_eq!(x.aws_snapshots(&second_id).await.len(), db_volumes);
    assert!(
        x.live_image(&initial_ami).await.is_some(),
        "the initial AMI is kept"
    );
}

#[tokio::test]
async fn partial_and_failed_backups_do_not_count_as_generations() {
    let x = setup().await;
    let volume = id_of(&x.resource("ebs_volume", "shared-data").await);
    let web = x.resource("ec2_instance", "web-1").await;
    let web_volumes = web["details"]["volumes"].as_array().unwrap().len();
    let web = id_of(&web);
    let policy = x
        .policy(
            json!({"name": "nightly", "generations": 1, "auto_target_removal": "no", "retries": 0}),
            &[
                json!({"type": "ebs_volume", "region": REGION, "resource_id": volume}),
                json!({"type": "ec2_instance", "region": REGION, "resource_id": web}),
            ],
        )
        .await;

    let a = x.run(&policy).await;
    assert_eq!(a["status"], "successful", "{a}");
    let a_id = id_of(&a);
    let a_snapshots = ids(&x.aws_snapshots(&a_id).await);
    assert_eq!(a_snapshots.len(), 1 + web_volumes, "{a}");

    // The volume disappears and stays a target: the next backup is partial.
    x.ec2
        .delete_volume()
        .volume_id(&volume)
        .send()
        .await
        .unwrap();
    let b = x.run(&policy).await;
    assert_eq!(b["status"], "partially_successful", "{b}");
    let b_id = id_of(&b);
    let b_snapshots = ids(&x.aws_snapshots(&b_id).await);
    assert_eq!(b_snapshots.len(), web_volumes, "{b}");
    // A is still the newest successful backup: nothing of it is deleted.
    assert_eq!(
        ids(&x
            .snapshots_where(
                "snapshot-id",
                &a_snapshots.iter().cloned().collect::<Vec<_>>()
            )
            .await),
        a_snapshots,
        "the partial backup counted as a generation"
    );
    let (_, a_now) = x.s.get(&format!("/v1/backups/{a_id}"), &x.root).await;
    assert!(a_now["deleted_at"].is_null(), "{a_now}");

    // With only the vanished target left the next one fails; it does not
    // count either.
    let (status, body) = x.remove_target(&policy, "ec2_instance", &web).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let f = x.run(&policy).await;
    assert_eq!(f["status"], "failed", "{f}");
    let f_id = id_of(&f);
    assert_eq!(x.aws_snapshots(&a_id).await.len(), a_snapshots.len());
    assert_eq!(x.aws_snapshots(&b_id).await.len(), b_snapshots.len());

    // Back to the instance alone: the next one succeeds and replaces them all.
    x.put_target(
        &policy,
        json!({"type": "ec2_instance", "region": REGION, "resource_id": web}),
    )
    .await;
    let (status, body) = x.remove_target(&policy, "ebs_volume", &volume).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let c = x.run(&policy).await;
    assert_eq!(c["status"], "successful", "{c}");
    let c_id = id_of(&c);
    assert!(x.aws_snapshots(&a_id).await.is_empty(), "A is kept");
    assert!(x
        .snapshots_where("snapshot-id", &a_snapshots.into_iter().collect::<Vec<_>>())
        .await
        .is_empty());
    assert!(
        x.aws_snapshots(&b_id).await.is_empty(),
        "B, older than the newest successful backup, is kept"
    );
    assert_eq!(x.aws_snapshots(&c_id).await.len(), web_volumes);
    x.recorded_deleted(&a_id).await;
    x.recorded_deleted(&b_id).await;
    x.recorded_deleted(&f_id).await;
    let (_, c_now) = x.s.get(&format!("/v1/backups/{c_id}"), &x.root).await;
    assert!(c_now["deleted_at"].is_null(), "{c_now}");
}
