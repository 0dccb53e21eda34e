//! Backup operations against the AWS emulator: every kind of artifact is
//! created once per backup and target (however often the step runs), tagged
//! and described, polled, expired, deleted; sources are checked.

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use chrono::{TimeZone, Utc};
use safehold_cloud::access::{sdk_config, AccessSpec, Endpoint};
use safehold_cloud::backup::{
    backup_dynamodb, delete, image_instance, mark_expired, poll, snapshot_aurora,
    snapshot_instance, snapshot_rds, snapshot_redshift, snapshot_volume, source_exists, Artifact,
    ArtifactKind, ArtifactState, BackupLabel, TAG_BACKUP, TAG_EXPIRED_AT, TAG_POLICY, TAG_TARGET,
    TAG_TENANT,
};
use safehold_cloud::emulator::Emulator;
use safehold_cloud::secrets::Secret;
use uuid::Uuid;

const REGION: &str = "us-east-1";

async fn setup() -> (Emulator, SdkConfig) {
    let emulator = Emulator::start(None).await.expect("AWS emulator");
    let access = AccessSpec::Keys {
        access_key_id: "AKIAEMULATORKEY00001".into(),
        secret_access_key: Secret::new("emulator-secret"),
    };
    let config = sdk_config(&Endpoint(Some(emulator.endpoint.clone())), &access, REGION).await;
    (emulator, config)
}

fn label(kind: &str, id: &str) -> BackupLabel {
    BackupLabel {
        tenant_id: Uuid::new_v4(),
        backup_id: Uuid::new_v4(),
        policy_id: Uuid::new_v4(),
        policy_name: "nightly".into(),
        target: format!("{kind}:{REGION}:{id}"),
    }
}

fn description(label: &BackupLabel) -> String {
    format!(
        "Safehold backup of {} by policy {}",
        label.target, label.policy_name
    )
}

/// Safehold's tags and the source's Name and team tags.
fn assert_labelled(tags: &BTreeMap<String, String>, label: &BackupLabel, name: &str) {
    assert_eq!(tags.get(TAG_TENANT), Some(&label.tenant_id.to_string()));
    assert_eq!(tags.get(TAG_BACKUP), Some(&label.backup_id.to_string()));
    assert_eq!(tags.get(TAG_POLICY), Some(&label.policy_id.to_string()));
    assert_eq!(tags.get(TAG_TARGET), Some(&label.target));
    assert_eq!(tags.get("Name").map(String::as_str), Some(name), "{tags:?}");
    assert_eq!(tags.get("team").map(String::as_str), Some("storage"));
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

fn ec2_source_tags(
    kind: aws_sdk_ec2::types::ResourceType,
    name: &str,
) -> aws_sdk_ec2::types::TagSpecification {
    aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(kind)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("Name")
                .value(name)
                .build(),
        )
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("team")
                .value("storage")
                .build(),
        )
        .build()
}

fn rds_source_tags(name: &str) -> Vec<aws_sdk_rds::types::Tag> {
    vec![
        aws_sdk_rds::types::Tag::builder()
            .key("Name")
            .value(name)
            .build(),
        aws_sdk_rds::types::Tag::builder()
            .key("team")
            .value("storage")
            .build(),
    ]
}

/// Own EBS snapshots carrying the backup's tag.
async fn labelled_snapshots(
    ec2: &aws_sdk_ec2::Client,
    label: &BackupLabel,
) -> Vec<aws_sdk_ec2::types::Snapshot> {
    ec2.describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{TAG_BACKUP}"))
                .values(label.backup_id.to_string())
                .build(),
        )
        .send()
        .await
        .unwrap()
        .snapshots()
        .to_vec()
}

async fn create_volume(ec2: &aws_sdk_ec2::Client, size: i32, name: &str) -> String {
    ec2.create_volume()
        .availability_zone(format!("{REGION}a"))
        .size(size)
        .tag_specifications(ec2_source_tags(
            aws_sdk_ec2::types::ResourceType::Volume,
            name,
        ))
        .send()
        .await
        .unwrap()
        .volume_id()
        .unwrap()
        .to_string()
}

/// An instance with its 8 GiB root volume at /dev/sda1 and data volumes of
/// 10 and 20 GiB at /dev/sdf and /dev/sdg. Returns (instance, [root, sdf, sdg]).
async fn instance_with_two_data_volumes(ec2: &aws_sdk_ec2::Client) -> (String, Vec<String>) {
    let seed_volume = create_volume(ec2, 8, "seed").await;
    let seed = ec2
        .create_snapshot()
        .volume_id(&seed_volume)
        .send()
        .await
        .unwrap();
    let image = ec2
        .register_image()
        .name("base")
        .root_device_name("/dev/sda1")
        .block_device_mappings(
            aws_sdk_ec2::types::BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(
                    aws_sdk_ec2::types::EbsBlockDevice::builder()
                        .snapshot_id(seed.snapshot_id().unwrap())
                        .volume_size(8)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let run = ec2
        .run_instances()
        .image_id(image.image_id().unwrap())
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(ec2_source_tags(
            aws_sdk_ec2::types::ResourceType::Instance,
            "web-1",
        ))
        .send()
        .await
        .unwrap();
    let instance = run.instances()[0].instance_id().unwrap().to_string();
    for (device, size) in [("/dev/sdf", 10), ("/dev/sdg", 20)] {
        let volume = create_volume(ec2, size, device).await;
        ec2.attach_volume()
            .volume_id(&volume)
            .instance_id(&instance)
            .device(device)
            .send()
            .await
            .unwrap();
    }
    let described = ec2
        .describe_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    let mappings = described.reservations()[0].instances()[0].block_device_mappings();
    let volume_at = |device: &str| {
        mappings
            .iter()
            .find(|m| m.device_name() == Some(device))
            .and_then(|m| m.ebs()?.volume_id())
            .unwrap_or_else(|| panic!("no volume at {device}: {mappings:?}"))
            .to_string()
    };
    let volumes = vec![
        volume_at("/dev/sda1"),
        volume_at("/dev/sdf"),
        volume_at("/dev/sdg"),
    ];
    (instance, volumes)
}

fn states(
    kind_states: &std::collections::HashMap<String, ArtifactState>,
    id: &str,
) -> ArtifactState {
    kind_states[id].clone()
}

#[tokio::test]
async fn volume_snapshot_is_made_once_tagged_polled_expired_and_deleted() {
    let (emulator, config) = setup().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let volume = create_volume(&ec2, 30, "shared-data").await;
    let label = label("ebs_volume", &volume);
    emulator.configure(r#"{"pending_polls": 2}"#).await.unwrap();

    let artifact = snapshot_volume(&config, &label, &volume).await.unwrap();
    assert_eq!(artifact.kind, ArtifactKind::EbsSnapshot);
    assert_eq!(artifact.source, volume);
    assert_eq!(artifact.device, None);
    assert_eq!(artifact.size_gib, Some(30));
    assert_eq!(artifact.state, ArtifactState::Pending);

    // Pending for the two configured polls, then available; unknown ids fail.
    let ids = vec![artifact.id.clone(), "snap-0123456789abcdef0".to_string()];
    for _ in 0..2 {
        let polled = poll(&config, ArtifactKind::EbsSnapshot, &ids)
            .await
            .unwrap();
        assert_eq!(states(&polled, &artifact.id), ArtifactState::Pending);
        assert_eq!(states(&polled, &ids[1]), ArtifactState::Failed);
    }
    let polled = poll(&config, ArtifactKind::EbsSnapshot, &ids)
        .await
        .unwrap();
    assert_eq!(states(&polled, &artifact.id), ArtifactState::Available);

    // A retried step finds the snapshot instead of taking another.
    let again = snapshot_volume(&config, &label, &volume).await.unwrap();
    assert_eq!(again.id, artifact.id);
    assert_eq!(again.state, ArtifactState::Available);
    let snapshots = labelled_snapshots(&ec2, &label).await;
    assert_eq!(snapshots.len(), 1);
    assert_eq!(
        snapshots[0].description(),
        Some(description(&label).as_str())
    );
    assert_labelled(&ec2_tags(snapshots[0].tags()), &label, "shared-data");

    // Another backup of the same volume is a new snapshot.
    let next = snapshot_volume(&config, &self::label("ebs_volume", &volume), &volume)
        .await
        .unwrap();
    assert_ne!(next.id, artifact.id);

    let at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
    mark_expired(&config, &artifact, at).await.unwrap();
    let snapshots = labelled_snapshots(&ec2, &label).await;
    assert_eq!(
        ec2_tags(snapshots[0].tags())
            .get(TAG_EXPIRED_AT)
            .map(String::as_str),
        Some("2030-01-02T03:04:05Z")
    );

    delete(&config, &artifact).await.unwrap();
    assert!(labelled_snapshots(&ec2, &label).await.is_empty());
    delete(&config, &artifact).await.unwrap();
    mark_expired(&config, &artifact, at).await.unwrap();
    let polled = poll(
        &config,
        ArtifactKind::EbsSnapshot,
        std::slice::from_ref(&artifact.id),
    )
    .await
    .unwrap();
    assert_eq!(states(&polled, &artifact.id), ArtifactState::Failed);
}

#[tokio::test]
async fn instance_snapshots_leave_out_excluded_devices_and_are_made_once() {
    let (_emulator, config) = setup().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let (instance, volumes) = instance_with_two_data_volumes(&ec2).await;
    let label = label("ec2_instance", &instance);

    let mut artifacts = snapshot_instance(&config, &label, &instance, &["/dev/sdg".into()])
        .await
        .unwrap();
    artifacts.sort_by(|a, b| a.device.cmp(&b.device));
    let summary: Vec<_> = artifacts
        .iter()
        .map(|a| (a.device.as_deref(), a.source.as_str(), a.size_gib))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some("/dev/sda1"), volumes[0].as_str(), Some(8)),
            (Some("/dev/sdf"), volumes[1].as_str(), Some(10)),
        ]
    );
    assert!(artifacts
        .iter()
        .all(|a| a.kind == ArtifactKind::EbsSnapshot));

    // AWS keeps exactly the two snapshots, tagged with the instance's tags.
    let snapshots = labelled_snapshots(&ec2, &label).await;
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    for snapshot in &snapshots {
        assert_ne!(snapshot.volume_id(), Some(volumes[2].as_str()));
        assert_eq!(snapshot.description(), Some(description(&label).as_str()));
        assert_labelled(&ec2_tags(snapshot.tags()), &label, "web-1");
    }

    let mut again = snapshot_instance(&config, &label, &instance, &["/dev/sdg".into()])
        .await
        .unwrap();
    again.sort_by(|a, b| a.device.cmp(&b.device));
    let ids = |list: &[Artifact]| list.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&artifacts));
    assert_eq!(labelled_snapshots(&ec2, &label).await.len(), 2);

    // Excluding the root device excludes the boot volume.
    let data_only = self::label("ec2_instance", &instance);
    let mut artifacts = snapshot_instance(&config, &data_only, &instance, &["/dev/sda1".into()])
        .await
        .unwrap();
    artifacts.sort_by(|a, b| a.device.cmp(&b.device));
    let devices: Vec<_> = artifacts.iter().map(|a| a.device.as_deref()).collect();
    assert_eq!(devices, vec![Some("/dev/sdf"), Some("/dev/sdg")]);
    assert_eq!(labelled_snapshots(&ec2, &data_only).await.len(), 2);

    let everything = ["/dev/sda1".into(), "/dev/sdf".into(), "/dev/sdg".into()];
    let none = snapshot_instance(
        &config,
        &self::label("ec2_instance", &instance),
        &instance,
        &everything,
    )
    .await
    .unwrap_err();
    assert_eq!(none.code, "NoVolumesSelected");
}

#[tokio::test]
async fn instance_image_is_made_once_and_deleted_with_its_snapshots() {
    let (_emulator, config) = setup().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let (instance, _) = instance_with_two_data_volumes(&ec2).await;
    let label = label("ec2_instance", &instance);

    let image = image_instance(&config, &label, &instance, false)
        .await
        .unwrap();
    assert_eq!(image.kind, ArtifactKind::Ami);
    assert_eq!(image.source, instance);
    assert_eq!(image.size_gib, Some(8 + 10 + 20));
    assert_eq!(image.state, ArtifactState::Available);

    let again = image_instance(&config, &label, &instance, true)
        .await
        .unwrap();
    assert_eq!(again.id, image.id);
    let images = ec2
        .describe_images()
        .owners("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{TAG_BACKUP}"))
                .values(label.backup_id.to_string())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(images.images().len(), 1);
    let described = &images.images()[0];
    assert_eq!(described.image_id(), Some(image.id.as_str()));
    assert_eq!(described.description(), Some(description(&label).as_str()));
    assert_labelled(&ec2_tags(described.tags()), &label, "web-1");

    // Its snapshots carry the label too, and are not instance snapshots.
    let snapshots = labelled_snapshots(&ec2, &label).await;
    assert_eq!(snapshots.len(), 3);
    for snapshot in &snapshots {
        assert_labelled(&ec2_tags(snapshot.tags()), &label, "web-1");
    }
    let polled = poll(
        &config,
        ArtifactKind::Ami,
        &[image.id.clone(), "ami-0123456789abcdef0".into()],
    )
    .await
    .unwrap();
    assert_eq!(polled[&image.id], ArtifactState::Available);
    assert_eq!(polled["ami-0123456789abcdef0"], ArtifactState::Failed);

    let at = Utc.with_ymd_and_hms(2030, 6, 1, 0, 0, 0).unwrap();
    mark_expired(&config, &image, at).await.unwrap();
    let images = ec2
        .describe_images()
        .image_ids(&image.id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ec2_tags(images.images()[0].tags())
            .get(TAG_EXPIRED_AT)
            .map(String::as_str),
        Some("2030-06-01T00:00:00Z")
    );
    for snapshot in labelled_snapshots(&ec2, &label).await {
        assert!(ec2_tags(snapshot.tags()).contains_key(TAG_EXPIRED_AT));
    }

    delete(&config, &image).await.unwrap();
    let polled = poll(&config, ArtifactKind::Ami, std::slice::from_ref(&image.id))
        .await
        .unwrap();
    assert_eq!(polled[&image.id], ArtifactState::Failed);
    assert!(labelled_snapshots(&ec2, &label).await.is_empty());
    delete(&config, &image).await.unwrap();
}

#[tokio::test]
async fn instance_snapshots_and_image_of_one_backup_are_told_apart() {
    let (_emulator, config) = setup().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let (instance, _) = instance_with_two_data_volumes(&ec2).await;
    let label = label("ec2_instance", &instance);

    let snapshots = snapshot_instance(&config, &label, &instance, &[])
        .await
        .unwrap();
    assert_eq!(snapshots.len(), 3);
    let image = image_instance(&config, &label, &instance, false)
        .await
        .unwrap();
    // Three instance snapshots and three the image is made of.
    assert_eq!(labelled_snapshots(&ec2, &label).await.len(), 6);

    // Retried, each finds its own artifacts and nothing else.
    let mut again = snapshot_instance(&config, &label, &instance, &[])
        .await
        .unwrap();
    let mut first = snapshots.clone();
    again.sort_by(|a, b| a.id.cmp(&b.id));
    first.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(again, first);
    assert_eq!(
        image_instance(&config, &label, &instance, false)
            .await
            .unwrap()
            .id,
        image.id
    );
    assert_eq!(labelled_snapshots(&ec2, &label).await.len(), 6);

    // Deleting the image leaves the instance snapshots alone.
    delete(&config, &image).await.unwrap();
    let left: Vec<_> = labelled_snapshots(&ec2, &label)
        .await
        .iter()
        .filter_map(|s| s.snapshot_id().map(str::to_owned))
        .collect();
    let mut expected: Vec<_> = snapshots.iter().map(|a| a.id.clone()).collect();
    let mut left = left;
    left.sort();
    expected.sort();
    assert_eq!(left, expected);
}

#[tokio::test]
async fn rds_snapshot_is_made_once_tagged_expired_and_deleted() {
    let (_emulator, config) = setup().await;
    let rds = aws_sdk_rds::Client::new(&config);
    rds.create_db_instance()
        .db_instance_identifier("orders-db")
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .allocated_storage(20)
        .master_username("admin")
        .master_user_password("password-123")
        .set_tags(Some(rds_source_tags("orders")))
        .send()
        .await
        .unwrap();
    let label = label("rds_instance", "orders-db");

    let artifact = snapshot_rds(&config, &label, "orders-db").await.unwrap();
    assert_eq!(artifact.kind, ArtifactKind::RdsSnapshot);
    assert_eq!(artifact.source, "orders-db");
    assert!(artifact.id.starts_with("safehold-"), "{}", artifact.id);
    assert!(artifact.id.ends_with("-orders-db"), "{}", artifact.id);
    assert_eq!(artifact.size_gib, Some(20));
    let again = snapshot_rds(&config, &label, "orders-db").await.unwrap();
    assert_eq!(again.id, artifact.id);

    let snapshots = rds
        .describe_db_snapshots()
        .db_instance_identifier("orders-db")
        .snapshot_type("manual")
        .send()
        .await
        .unwrap();
    assert_eq!(snapshots.db_snapshots().len(), 1);
    assert_labelled(
        &rds_tags(snapshots.db_snapshots()[0].tag_list()),
        &label,
        "orders",
    );
    let arn = snapshots.db_snapshots()[0]
        .db_snapshot_arn()
        .unwrap()
        .to_string();

    let polled = poll(
        &config,
        ArtifactKind::RdsSnapshot,
        &[artifact.id.clone(), "missing".into()],
    )
    .await
    .unwrap();
    assert_eq!(polled[&artifact.id], ArtifactState::Available);
    assert_eq!(polled["missing"], ArtifactState::Failed);

    let at = Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap();
    mark_expired(&config, &artifact, at).await.unwrap();
    let tags = rds
        .list_tags_for_resource()
        .resource_name(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        rds_tags(tags.tag_list())
            .get(TAG_EXPIRED_AT)
            .map(String::as_str),
        Some("2030-01-01T12:00:00Z")
    );

    delete(&config, &artifact).await.unwrap();
    delete(&config, &artifact).await.unwrap();
    mark_expired(&config, &artifact, at).await.unwrap();
    let polled = poll(
        &config,
        ArtifactKind::RdsSnapshot,
        std::slice::from_ref(&artifact.id),
    )
    .await
    .unwrap();
    assert_eq!(polled[&artifact.id], ArtifactState::Failed);
}

#[tokio::test]
async fn aurora_snapshot_is_made_once_tagged_expired_and_deleted() {
    let (_emulator, config) = setup().await;
    let rds = aws_sdk_rds::Client::new(&config);
    rds.create_db_cluster()
        .db_cluster_identifier("ledger")
        .engine("aurora-postgresql")
        .master_username("admin")
        .master_user_password("password-123")
        .set_tags(Some(rds_source_tags("ledger-cluster")))
        .send()
        .await
        .unwrap();
    let label = label("aurora_cluster", "ledger");

    let artifact = snapshot_aurora(&config, &label, "ledger").await.unwrap();
    assert_eq!(artifact.kind, ArtifactKind::AuroraSnapshot);
    assert_eq!(artifact.source, "ledger");
    let again = snapshot_aurora(&config, &label, "ledger").await.unwrap();
    assert_eq!(again.id, artifact.id);

    let snapshots = rds
        .describe_db_cluster_snapshots()
        .db_cluster_identifier("ledger")
        .snapshot_type("manual")
        .send()
        .await
        .unwrap();
    assert_eq!(snapshots.db_cluster_snapshots().len(), 1);
    let snapshot = &snapshots.db_cluster_snapshots()[0];
    assert_labelled(&rds_tags(snapshot.tag_list()), &label, "ledger-cluster");
    let arn = snapshot.db_cluster_snapshot_arn().unwrap().to_string();

    let polled = poll(
        &config,
        ArtifactKind::AuroraSnapshot,
        &[artifact.id.clone(), "missing".into()],
    )
    .await
    .unwrap();
    assert_eq!(polled[&artifact.id], ArtifactState::Available);
    assert_eq!(polled["missing"], ArtifactState::Failed);

    let at = Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap();
    mark_expired(&config, &artifact, at).await.unwrap();
    let tags = rds
        .list_tags_for_resource()
        .resource_name(&arn)
        .send()
        .await
        .unwrap();
    assert!(rds_tags(tags.tag_list()).contains_key(TAG_EXPIRED_AT));

    delete(&config, &artifact).await.unwrap();
    delete(&config, &artifact).await.unwrap();
    let polled = poll(
        &config,
        ArtifactKind::AuroraSnapshot,
        std::slice::from_ref(&artifact.id),
    )
    .await
    .unwrap();
    assert_eq!(polled[&artifact.id], ArtifactState::Failed);
}

#[tokio::test]
async fn redshift_snapshot_is_made_once_tagged_expired_and_deleted() {
    let (_emulator, config) = setup().await;
    let redshift = aws_sdk_redshift::Client::new(&config);
    redshift
        .create_cluster()
        .cluster_identifier("warehouse")
        .node_type("dc2.large")
        .cluster_type("single-node")
        .master_username("admin")
        .master_user_password("Password123")
        .tags(
            aws_sdk_redshift::types::Tag::builder()
                .key("Name")
                .value("analytics")
                .build(),
        )
        .tags(
            aws_sdk_redshift::types::Tag::builder()
                .key("team")
                .value("storage")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let label = label("redshift_cluster", "warehouse");

    let artifact = snapshot_redshift(&config, &label, "warehouse")
        .await
        .unwrap();
    assert_eq!(artifact.kind, ArtifactKind::RedshiftSnapshot);
    assert_eq!(artifact.source, "warehouse");
    let again = snapshot_redshift(&config, &label, "warehouse")
        .await
        .unwrap();
    assert_eq!(again.id, artifact.id);

    let snapshots = redshift
        .describe_cluster_snapshots()
        .cluster_identifier("warehouse")
        .snapshot_type("manual")
        .send()
        .await
        .unwrap();
    assert_eq!(snapshots.snapshots().len(), 1);
    assert_labelled(
        &redshift_tags(snapshots.snapshots()[0].tags()),
        &label,
        "analytics",
    );

    let polled = poll(
        &config,
        ArtifactKind::RedshiftSnapshot,
        &[artifact.id.clone(), "missing".into()],
    )
    .await
    .unwrap();
    assert_eq!(polled[&artifact.id], ArtifactState::Available);
    assert_eq!(polled["missing"], ArtifactState::Failed);

    let at = Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap();
    mark_expired(&config, &artifact, at).await.unwrap();
    let snapshots = redshift
        .describe_cluster_snapshots()
        .snapshot_identifier(&artifact.id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        redshift_tags(snapshots.snapshots()[0].tags())
            .get(TAG_EXPIRED_AT)
            .map(String::as_str),
        Some("2030-01-01T12:00:00Z")
    );

    delete(&config, &artifact).await.unwrap();
    delete(&config, &artifact).await.unwrap();
    let polled = poll(
        &config,
        ArtifactKind::RedshiftSnapshot,
        std::slice::from_ref(&artifact.id),
    )
    .await
    .unwrap();
    assert_eq!(polled[&artifact.id], ArtifactState::Failed);
}

async fn create_table(dynamodb: &aws_sdk_dynamodb::Client, name: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    dynamodb
        .create_table()
        .table_name(name)
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
}

#[tokio::test]
async fn dynamodb_backup_is_made_once_and_deleted() {
    let (_emulator, config) = setup().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    create_table(&dynamodb, "sessions").await;
    let label = label("dynamodb_table", "sessions");

    let artifact = backup_dynamodb(&config, &label, "sessions").await.unwrap();
    assert_eq!(artifact.kind, ArtifactKind::DynamodbBackup);
    assert_eq!(artifact.source, "sessions");
    assert!(
        artifact.id.contains(":table/sessions/backup/"),
        "{}",
        artifact.id
    );
    assert_eq!(artifact.state, ArtifactState::Available);
    let again = backup_dynamodb(&config, &label, "sessions").await.unwrap();
    assert_eq!(again.id, artifact.id);
    let backups = dynamodb
        .list_backups()
        .table_name("sessions")
        .send()
        .await
        .unwrap();
    assert_eq!(backups.backup_summaries().len(), 1);
    let name = backups.backup_summaries()[0].backup_name().unwrap();
    assert!(
        name.starts_with("safehold-") && name.ends_with("-sessions"),
        "{name}"
    );

    let next = backup_dynamodb(
        &config,
        &self::label("dynamodb_table", "sessions"),
        "sessions",
    )
    .await
    .unwrap();
    assert_ne!(next.id, artifact.id);

    let missing = artifact.id.replace("/backup/", "/backup/0");
    let polled = poll(
        &config,
        ArtifactKind::DynamodbBackup,
        &[artifact.id.clone(), missing.clone()],
    )
    .await
    .unwrap();
    assert_eq!(polled[&artifact.id], ArtifactState::Available);
    assert_eq!(polled[&missing], ArtifactState::Failed);

    // DynamoDB on-demand backups take no tags.
    let refused = mark_expired(&config, &artifact, Utc::now())
        .await
        .unwrap_err();
    assert_eq!(refused.code, "TagsNotSupported");
    assert!(!refused.is_transient());

    delete(&config, &artifact).await.unwrap();
    delete(&config, &artifact).await.unwrap();
    let polled = poll(
        &config,
        ArtifactKind::DynamodbBackup,
        std::slice::from_ref(&artifact.id),
    )
    .await
    .unwrap();
    assert_eq!(polled[&artifact.id], ArtifactState::Failed);
}

#[tokio::test]
async fn sources_exist_until_they_are_deleted() {
    let (_emulator, config) = setup().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let rds = aws_sdk_rds::Client::new(&config);
    let redshift = aws_sdk_redshift::Client::new(&config);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);

    let (instance, _) = instance_with_two_data_volumes(&ec2).await;
    let volume = create_volume(&ec2, 5, "scratch").await;
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
    create_table(&dynamodb, "sessions").await;

    let sources = [
        ("ec2_instance", instance.as_str()),
        ("ebs_volume", volume.as_str()),
        ("rds_instance", "orders-db"),
        ("aurora_cluster", "ledger"),
        ("redshift_cluster", "warehouse"),
        ("dynamodb_table", "sessions"),
    ];
    for (kind, id) in sources {
        assert!(
            source_exists(&config, kind, id).await.unwrap(),
            "{kind} {id}"
        );
    }
    for (kind, id) in [
        ("ec2_instance", "i-0123456789abcdef0"),
        ("ebs_volume", "vol-0123456789abcdef0"),
        ("rds_instance", "nope"),
        ("aurora_cluster", "nope"),
        ("redshift_cluster", "nope"),
        ("dynamodb_table", "nope"),
    ] {
        assert!(
            !source_exists(&config, kind, id).await.unwrap(),
            "{kind} {id}"
        );
    }

    ec2.terminate_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    ec2.delete_volume().volume_id(&volume).send().await.unwrap();
    rds.delete_db_instance()
        .db_instance_identifier("orders-db")
        .skip_final_snapshot(true)
        .send()
        .await
        .unwrap();
    rds.delete_db_cluster()
        .db_cluster_identifier("ledger")
        .skip_final_snapshot(true)
        .send()
        .await
        .unwrap();
    redshift
        .delete_cluster()
        .cluster_identifier("warehouse")
        .skip_final_cluster_snapshot(true)
        .send()
        .await
        .unwrap();
    dynamodb
        .delete_table()
        .table_name("sessions")
        .send()
        .await
        .unwrap();
    for (kind, id) in sources {
        assert!(
            !source_exists(&config, kind, id).await.unwrap(),
            "{kind} {id}"
        );
    }

    let unknown = source_exists(&config, "s3_bucket", "x").await.unwrap_err();
    assert_eq!(unknown.code, "InvalidParameterValue");
}
