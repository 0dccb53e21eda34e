//! Recovery operations against the AWS emulator: every creating call makes
//! its resource once per recovery (however often the step runs), with the
//! requested size, type, placement and tags, and never the backup's tag.

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use safehold_cloud::access::{role_arn, sdk_config, AccessSpec, Endpoint};
use safehold_cloud::backup::{ArtifactKind, TAG_BACKUP};
use safehold_cloud::emulator::Emulator;
use safehold_cloud::recovery::*;
use safehold_cloud::secrets::Secret;
use uuid::Uuid;

const REGION: &str = "us-east-1";
const ZONE: &str = "us-east-1a";
const VAULT: &str = "210987654321";

fn keys() -> AccessSpec {
    AccessSpec::Keys {
        access_key_id: "AKIAEMULATORKEY00001".into(),
        secret_access_key: Secret::new("emulator-secret"),
    }
}

async fn setup() -> (Emulator, SdkConfig) {
    let emulator = Emulator::start(None).await.expect("AWS emulator");
    let config = sdk_config(&Endpoint(Some(emulator.endpoint.clone())), &keys(), REGION).await;
    (emulator, config)
}

fn label() -> RecoveryLabel {
    RecoveryLabel {
        tenant_id: Uuid::new_v4(),
        recovery_id: Uuid::new_v4(),
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
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

/// The recovery's tags and the caller's `team` tag, never the backup's.
fn assert_recovery_tags(
    tags: &BTreeMap<String, String>,
    label: &RecoveryLabel,
    item: Option<&str>,
) {
    assert_eq!(
        tags.get(TAG_RECOVERY),
        Some(&label.recovery_id.to_string()),
        "{tags:?}"
    );
    assert_eq!(
        tags.get(TAG_RECOVERY_ITEM).map(String::as_str),
        item,
        "{tags:?}"
    );
    assert_eq!(tags.get("team").map(String::as_str), Some("storage"));
    assert!(!tags.contains_key(TAG_BACKUP), "{tags:?}");
}

/// A snapshot of a new `size` GiB volume, tagged like a backup's.
async fn snapshot(ec2: &aws_sdk_ec2::Client, size: i32) -> String {
    let volume = ec2
        .create_volume()
        .availability_zone(ZONE)
        .size(size)
        .send()
        .await
        .unwrap();
    ec2.create_snapshot()
        .volume_id(volume.volume_id().unwrap())
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Snapshot)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(TAG_BACKUP)
                        .value("b-1")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string()
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

async fn describe_instance(ec2: &aws_sdk_ec2::Client, id: &str) -> aws_sdk_ec2::types::Instance {
    ec2.describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap()
        .reservations()[0]
        .instances()[0]
        .clone()
}

async fn recovery_volume_count(ec2: &aws_sdk_ec2::Client, label: &RecoveryLabel) -> usize {
    ec2.describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{TAG_RECOVERY}"))
                .values(label.recovery_id.to_string())
                .build(),
        )
        .send()
        .await
        .unwrap()
        .volumes()
        .len()
}

fn volume_spec(item: &str, snapshot_id: &str) -> VolumeSpec {
    VolumeSpec {
        item: item.into(),
        snapshot_id: snapshot_id.into(),
        availability_zone: ZONE.into(),
        size_gib: None,
        volume_type: "gp3".into(),
        iops: Some(4000),
        tags: pairs(&[("Name", "data"), ("team", "storage"), (TAG_BACKUP, "b-1")]),
    }
}

#[tokio::test]
async fn volumes_are_created_once_with_their_size_type_and_tags() {
    let (_emulator, config) = setup().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let label = label();
    let snap = snapshot(&ec2, 20).await;

    let spec = volume_spec(&snap, &snap);
    let id = create_volume(&config, &label, &spec).await.unwrap();
    assert_eq!(create_volume(&config, &label, &spec).await.unwrap(), id);
    let volume = describe_volume(&ec2, &id).await;
    assert_eq!(volume.size(), Some(20), "the snapshot's size");
    assert_eq!(volume.volume_type().unwrap().as_str(), "gp3");
    assert_eq!(volume.iops(), Some(4000));
    assert_eq!(volume.availability_zone(), Some(ZONE));
    assert_eq!(volume.snapshot_id(), Some(snap.as_str()));
    let tags = ec2_tags(volume.tags());
    assert_recovery_tags(&tags, &label, Some(&snap));
    assert_eq!(tags.get("Name").map(String::as_str), Some("data"));

    // Another item of the same recovery: a bigger io1 volume.
    let bigger = VolumeSpec {
        item: "second".into(),
        size_gib: Some(50),
        volume_type: "io1".into(),
        iops: Some(500),
        ..spec.clone()
    };
    let other = create_volume(&config, &label, &bigger).await.unwrap();
    assert_ne!(other, id);
    let volume = describe_volume(&ec2, &other).await;
    assert_eq!(
        (
            volume.size(),
            volume.volume_type().unwrap().as_str(),
            volume.iops()
        ),
        (Some(50), "io1", Some(500))
    );
    assert_eq!(recovery_volume_count(&ec2, &label).await, 2);

    assert_eq!(
        volume_state(&config, &id).await.unwrap().as_deref(),
        Some("available")
    );
    ec2.delete_volume().volume_id(&id).send().await.unwrap();
    assert_eq!(volume_state(&config, &id).await.unwrap(), None);
}

/// An instance in `zone`; returns its id.
async fn instance(ec2: &aws_sdk_ec2::Client, zone: &str) -> String {
    let run = ec2
        .run_instances()
        .image_id("ami-12345678")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .placement(
            aws_sdk_ec2::types::Placement::builder()
                .availability_zone(zone)
                .build(),
        )
        .send()
        .await
        .unwrap();
    run.instances()[0].instance_id().unwrap().to_string()
}

async fn volume_at(ec2: &aws_sdk_ec2::Client, instance_id: &str, device: &str) -> Option<String> {
    describe_instance(ec2, instance_id)
        .await
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(device))
        .and_then(|m| m.ebs()?.volume_id().map(str::to_owned))
}

#[tokio::test]
async fn volumes_are_attached_or_switched_in_for_an_instance_volume() {
    let (_emulator, config) = setup().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let label = label();
    let snap = snapshot(&ec2, 10).await;
    let instance_id = instance(&ec2, ZONE).await;
    let new_volume = |item: &str| {
        let spec = VolumeSpec {
            iops: None,
            ..volume_spec(item, &snap)
        };
        let config = config.clone();
        let label = label.clone();
        async move { create_volume(&config, &label, &spec).await.unwrap() }
    };
    let first = new_volume("first").await;
    let unchanged = Attached {
        replaced_volume: None,
        deleted_replaced: false,
    };

    let attached = attach_volume(
        &config,
        &first,
        &instance_id,
        "/dev/sdf",
        AttachBehavior::IfDeviceFree,
    )
    .await
    .unwrap();
    assert_eq!(attached, unchanged);
    assert_eq!(
        volume_state(&config, &first).await.unwrap().as_deref(),
        Some("in-use")
    );
    let attachment = describe_volume(&ec2, &first).await.attachments()[0].clone();
    assert_eq!(attachment.instance_id(), Some(instance_id.as_str()));
    assert_eq!(attachment.device(), Some("/dev/sdf"));
    // A retry finds it attached there.
    let retried = attach_volume(
        &config,
        &first,
        &instance_id,
        "/dev/sdf",
        AttachBehavior::Switch,
    )
    .await
    .unwrap();
    assert_eq!(retried, unchanged);

    let second = new_volume("second").await;
    let taken = attach_volume(
        &config,
        &second,
        &instance_id,
        "/dev/sdf",
        AttachBehavior::IfDeviceFree,
    )
    .await
    .unwrap_err();
    assert_eq!(taken.code, "DeviceInUse");
    let running = attach_volume(
        &config,
        &second,
        &instance_id,
        "/dev/sdf",
        AttachBehavior::Switch,
    )
    .await
    .unwrap_err();
    assert_eq!(running.code, "InstanceNotStopped");
    assert_eq!(
        volume_at(&ec2, &instance_id, "/dev/sdf").await,
        Some(first.clone())
    );
    assert_eq!(
        volume_state(&config, &second).await.unwrap().as_deref(),
        Some("available")
    );

    let elsewhere = instance(&ec2, "us-east-1b").await;
    let zone = attach_volume(
        &config,
        &second,
        &elsewhere,
        "/dev/sdf",
        AttachBehavior::IfDeviceFree,
    )
    .await
    .unwrap_err();
    assert_eq!(zone.code, "ZoneMismatch");
    assert!(zone.message.contains("us-east-1b"), "{zone}");

    ec2.stop_instances()
        .instance_ids(&instance_id)
        .send()
        .await
        .unwrap();
    let switched = attach_volume(
        &config,
        &second,
        &instance_id,
        "/dev/sdf",
        AttachBehavior::Switch,
    )
    .await
    .unwrap();
    assert_eq!(
        switched,
        Attached {
            replaced_volume: Some(first.clone()),
            deleted_replaced: false
        }
    );
    assert_eq!(
        volume_at(&ec2, &instance_id, "/dev/sdf").await,
        Some(second.clone())
    );
    assert_eq!(
        volume_state(&config, &first).await.unwrap().as_deref(),
        Some("available")
    );

    let third = new_volume("third").await;
    let replaced = attach_volume(
        &config,
        &third,
        &instance_id,
        "/dev/sdf",
        AttachBehavior::SwitchAndDeleteOld,
    )
    .await
    .unwrap();
    assert_eq!(
        replaced,
        Attached {
            replaced_volume: Some(second.clone()),
            deleted_replaced: true
        }
    );
    assert_eq!(
        volume_at(&ec2, &instance_id, "/dev/sdf").await,
        Some(third.clone())
    );
    assert_eq!(volume_state(&config, &second).await.unwrap(), None);
    // A volume attached elsewhere is not taken away.
    let busy = attach_volume(
        &config,
        &third,
        &elsewhere,
        "/dev/sdg",
        AttachBehavior::Switch,
    )
    .await
    .unwrap_err();
    assert_eq!(busy.code, "VolumeInUse");
}

/// A VPC with subnet 10.0.1.0/24 in us-east-1a, a security group and a key
/// pair. Returns (subnet, group).
async fn network(ec2: &aws_sdk_ec2::Client) -> (String, String) {
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.0.1.0/24")
        .availability_zone(ZONE)
        .send()
        .await
        .unwrap()
        .subnet()
        .unwrap()
        .subnet_id()
        .unwrap()
        .to_string();
    let group = ec2
        .create_security_group()
        .group_name("web")
        .description("web")
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    ec2.create_key_pair().key_name("ops").send().await.unwrap();
    (subnet, group)
}

fn launch_spec(image_id: &str, subnet: &str, group: &str, extra_snapshot: &str) -> LaunchSpec {
    LaunchSpec {
        item: "i-0source".into(),
        image_id: image_id.into(),
        instance_type: "m5.large".into(),
        count: 2,
        key_name: Some("ops".into()),
        subnet_id: Some(subnet.into()),
        availability_zone: None,
        private_ip: None,
        security_group_ids: vec![group.into()],
        associate_public_ip: None,
        user_data: Some("#!/bin/sh\necho restored\n".into()),
        tags: pairs(&[("Name", "web-1"), ("team", "storage"), (TAG_BACKUP, "b-1")]),
        shutdown_behavior: Some("stop".into()),
        termination_protection: true,
        monitoring: true,
        instance_profile_arn: None,
        ebs_optimized: true,
        tenancy: None,
        volumes: vec![BlockVolume {
            device: "/dev/sdg".into(),
            snapshot_id: extra_snapshot.into(),
            size_gib: Some(15),
            volume_type: Some("io1".into()),
            iops: Some(300),
            delete_on_termination: false,
        }],
        volume_tags: pairs(&[("team", "storage"), ("backup-of", "vol-1")]),
    }
}

#[tokio::test]
async fn images_are_registered_once_and_instances_launched_from_them() {
    let (_emulator, config) = setup().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let label = label();
    let root = snapshot(&ec2, 8).await;
    let data = snapshot(&ec2, 20).await;
    let extra = snapshot(&ec2, 5).await;
    let image_spec = ImageSpec {
        item: "i-0source".into(),
        root_snapshot_id: root.clone(),
        root_device_name: "/dev/xvda".into(),
        architecture: "arm64".into(),
        volumes: vec![BlockVolume {
            device: "/dev/sdf".into(),
            snapshot_id: data.clone(),
            size_gib: Some(25),
            volume_type: Some("gp3".into()),
            iops: None,
            delete_on_termination: true,
        }],
    };
    let image_id = register_image(&config, &label, &image_spec).await.unwrap();
    assert_eq!(
        register_image(&config, &label, &image_spec).await.unwrap(),
        image_id
    );
    let images = ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images()
        .to_vec();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image.root_device_name(), Some("/dev/xvda"));
    assert_eq!(image.architecture().unwrap().as_str(), "arm64");
    assert!(image
        .name()
        .unwrap()
        .contains(&label.recovery_id.simple().to_string()));
    let mappings: Vec<_> = image
        .block_device_mappings()
        .iter()
        .map(|m| {
            let ebs = m.ebs().unwrap();
            (
                m.device_name().unwrap().to_string(),
                ebs.snapshot_id().unwrap().to_string(),
                ebs.volume_size().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mappings,
        vec![
            ("/dev/xvda".to_string(), root.clone(), 8),
            ("/dev/sdf".to_string(), data.clone(), 25)
        ]
    );
    let tags = ec2_tags(image.tags());
    assert_eq!(tags.get(TAG_RECOVERY), Some(&label.recovery_id.to_string()));
    assert_eq!(
        tags.get(TAG_RECOVERY_ITEM).map(String::as_str),
        Some("i-0source")
    );

    let (subnet, group) = network(&ec2).await;
    let mut spec = launch_spec(&image_id, &subnet, &group, &extra);
    check_launch_references(&config, &spec).await.unwrap();
    let refused = |mut broken: LaunchSpec, change: fn(&mut LaunchSpec)| {
        change(&mut broken);
        let config = config.clone();
        async move { check_launch_references(&config, &broken).await.unwrap_err() }
    };
    let e = refused(spec.clone(), |s| s.key_name = Some("missing-key".into())).await;
    assert_eq!(e.code, "InvalidKeyPair.NotFound");
    assert!(e.message.contains("missing-key"), "{e}");
    let e = refused(spec.clone(), |s| {
        s.subnet_id = Some("subnet-0000000f".into())
    })
    .await;
    assert_eq!(e.code, "InvalidSubnetID.NotFound");
    assert!(e.message.contains("subnet-0000000f"), "{e}");
    let e = refused(spec.clone(), |s| s.private_ip = Some("10.0.2.10".into())).await;
    assert_eq!(e.code, "PrivateIpNotInSubnet");
    assert!(e.message.contains("10.0.2.10"), "{e}");
    let e = refused(spec.clone(), |s| s.image_id = "ami-0000000f".into()).await;
    assert_eq!(e.code, "InvalidAMIID.NotFound");
    let e = refused(spec.clone(), |s| {
        s.security_group_ids = vec!["sg-0000000f".into()]
    })
    .await;
    assert_eq!(e.code, "InvalidGroup.NotFound");
    spec.private_ip = Some("10.0.1.25".into());
    spec.count = 1;
    check_launch_references(&config, &spec).await.unwrap();

    let ids = launch_instances(&config, &label, &spec).await.unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(launch_instances(&config, &label, &spec).await.unwrap(), ids);
    // Asking for two launches only the missing one.
    spec.count = 2;
    spec.private_ip = None;
    let both = launch_instances(&config, &label, &spec).await.unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], ids[0]);
    assert_eq!(
        launch_instances(&config, &label, &spec).await.unwrap(),
        both
    );

    let states = instance_states(&config, &both).await.unwrap();
    assert_eq!(states.len(), 2);
    assert!(
        states.values().all(|s| s == "running" || s == "pending"),
        "{states:?}"
    );

    let first = describe_instance(&ec2, &ids[0]).await;
    assert_eq!(first.instance_type().unwrap().as_str(), "m5.large");
    assert_eq!(first.image_id(), Some(image_id.as_str()));
    assert_eq!(first.key_name(), Some("ops"));
    assert_eq!(first.subnet_id(), Some(subnet.as_str()));
    assert_eq!(first.private_ip_address(), Some("10.0.1.25"));
    assert_eq!(first.security_groups()[0].group_id(), Some(group.as_str()));
    assert_eq!(first.ebs_optimized(), Some(true));
    assert_eq!(
        first.monitoring().unwrap().state().unwrap().as_str(),
        "enabled"
    );
    let tags = ec2_tags(first.tags());
    assert_recovery_tags(&tags, &label, Some("i-0source"));
    assert_eq!(tags.get("Name").map(String::as_str), Some("web-1"));
    let attribute = |name: aws_sdk_ec2::types::InstanceAttributeName| {
        ec2.describe_instance_attribute()
            .instance_id(&ids[0])
            .attribute(name)
            .send()
    };
    let protection = attribute(aws_sdk_ec2::types::InstanceAttributeName::DisableApiTermination)
        .await
        .unwrap();
    assert_eq!(
        protection.disable_api_termination().unwrap().value(),
        Some(true)
    );
    let user_data = attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .await
        .unwrap();
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(user_data.user_data().unwrap().value().unwrap())
        .unwrap();
    assert_eq!(decoded, b"#!/bin/sh\necho restored\n");

    // Root and data volumes from the image's snapshots, the extra one from
    // the launch, all tagged with the recovery and the preserved volume tags.
    let volumes = ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("attachment.instance-id")
                .values(&ids[0])
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut shape: Vec<_> = volumes
        .volumes()
        .iter()
        .map(|v| {
            let tags = ec2_tags(v.tags());
            assert_recovery_tags(&tags, &label, Some("i-0source"));
            assert_eq!(tags.get("backup-of").map(String::as_str), Some("vol-1"));
            (
                v.attachments()[0].device().unwrap().to_string(),
                v.snapshot_id().unwrap().to_string(),
                v.size().unwrap(),
                v.volume_type().unwrap().as_str().to_string(),
                v.availability_zone().unwrap().to_string(),
            )
        })
        .collect();
    shape.sort();
    assert_eq!(
        shape,
        vec![
            (
                "/dev/sdf".into(),
                data.clone(),
                25,
                "gp3".into(),
                ZONE.into()
            ),
            (
                "/dev/sdg".into(),
                extra.clone(),
                15,
                "io1".into(),
                ZONE.into()
            ),
            (
                "/dev/xvda".into(),
                root.clone(),
                8,
                "gp2".into(),
                ZONE.into()
            ),
        ]
    );

    let record = instance_record(&first);
    assert_eq!(record.instance_type, "m5.large");
    assert_eq!(record.subnet_id.as_deref(), Some(subnet.as_str()));
    assert_eq!(record.security_group_ids, vec![group.clone()]);
    assert!(record.monitoring && record.ebs_optimized);
    assert_eq!(record.tags.get("Name").map(String::as_str), Some("web-1"));
    assert_eq!(record.volumes.len(), 3);
    assert!(record.volume_at("/dev/sdg").is_some());

    // Deregistering keeps the backup's snapshots; again is harmless.
    deregister_image(&config, &image_id).await.unwrap();
    deregister_image(&config, &image_id).await.unwrap();
    assert!(ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images()
        .is_empty());
    let left = ec2
        .describe_snapshots()
        .snapshot_ids(&root)
        .snapshot_ids(&data)
        .send()
        .await
        .unwrap();
    assert_eq!(left.snapshots().len(), 2);
}

#[tokio::test]
async fn public_ip_launches_put_the_network_on_the_interface() {
    let (_emulator, config) = setup().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let label = label();
    let root = snapshot(&ec2, 8).await;
    let image_id = register_image(
        &config,
        &label,
        &ImageSpec {
            item: "i-0pub".into(),
            root_snapshot_id: root,
            root_device_name: "/dev/xvda".into(),
            architecture: "x86_64".into(),
            volumes: vec![],
        },
    )
    .await
    .unwrap();
    let (subnet, group) = network(&ec2).await;
    let spec = LaunchSpec {
        item: "i-0pub".into(),
        count: 1,
        associate_public_ip: Some(true),
        private_ip: Some("10.0.1.30".into()),
        volumes: vec![],
        ..launch_spec(&image_id, &subnet, &group, "")
    };
    let ids = launch_instances(&config, &label, &spec).await.unwrap();
    let instance = describe_instance(&ec2, &ids[0]).await;
    assert_eq!(instance.subnet_id(), Some(subnet.as_str()));
    assert_eq!(instance.private_ip_address(), Some("10.0.1.30"));
    let interface = &instance.network_interfaces()[0];
    assert_eq!(interface.groups()[0].group_id(), Some(group.as_str()));
    assert!(instance.public_ip_address().is_some());
}

#[tokio::test]
async fn shared_snapshots_are_recovered_in_the_account_they_are_shared_with() {
    let (emulator, config) = setup().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let vault_spec = AccessSpec::AssumeRole {
        source: Box::new(keys()),
        role_arn: role_arn(VAULT, "SafeholdVault"),
        external_id: None,
    };
    let vault = sdk_config(
        &Endpoint(Some(emulator.endpoint.clone())),
        &vault_spec,
        REGION,
    )
    .await;
    let snap = snapshot(&ec2, 12).await;
    let label = label();
    let spec = volume_spec("shared", &snap);
    let unshared = create_volume(&vault, &label, &spec).await.unwrap_err();
    assert_eq!(unshared.code, "InvalidSnapshot.NotFound");

    safehold_cloud::dr::share(&config, &ArtifactKind::EbsSnapshot, &snap, VAULT)
        .await
        .unwrap();
    let vault_ec2 = aws_sdk_ec2::Client::new(&vault);
    let id = create_volume(&vault, &label, &spec).await.unwrap();
    assert_eq!(create_volume(&vault, &label, &spec).await.unwrap(), id);
    let volume = describe_volume(&vault_ec2, &id).await;
    assert_eq!(volume.size(), Some(12));
    assert_eq!(volume.snapshot_id(), Some(snap.as_str()));
    assert!(ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("volume-id")
                .values(&id)
                .build()
        )
        .send()
        .await
        .unwrap()
        .volumes()
        .is_empty());

    let image_id = register_image(
        &vault,
        &label,
        &ImageSpec {
            item: "i-0shared".into(),
            root_snapshot_id: snap.clone(),
            root_device_name: "/dev/xvda".into(),
            architecture: "x86_64".into(),
            volumes: vec![],
        },
    )
    .await
    .unwrap();
    let image = vault_ec2
        .describe_images()
        .image_ids(&image_id)
        .send()
        .await
        .unwrap()
        .images()[0]
        .clone();
    assert_eq!(image.owner_id(), Some(VAULT));
    let ids = launch_instances(
        &vault,
        &label,
        &LaunchSpec {
            item: "i-0shared".into(),
            image_id: image_id.clone(),
            instance_type: "t3.micro".into(),
            count: 1,
            key_name: None,
            subnet_id: None,
            availability_zone: Some(ZONE.into()),
            private_ip: None,
            security_group_ids: vec![],
            associate_public_ip: None,
            user_data: None,
            tags: vec![],
            shutdown_behavior: None,
            termination_protection: false,
            monitoring: false,
            instance_profile_arn: None,
            ebs_optimized: false,
            tenancy: None,
            volumes: vec![],
            volume_tags: vec![],
        },
    )
    .await
    .unwrap();
    let instance = describe_instance(&vault_ec2, &ids[0]).await;
    let root = instance.block_device_mappings()[0]
        .ebs()
        .unwrap()
        .volume_id()
        .unwrap()
        .to_string();
    let root = describe_volume(&vault_ec2, &root).await;
    assert_eq!(
        (root.snapshot_id(), root.size()),
        (Some(snap.as_str()), Some(12))
    );
}

#[tokio::test]
async fn rds_instances_are_restored_once_with_their_settings() {
    let (_emulator, config) = setup().await;
    let rds = aws_sdk_rds::Client::new(&config);
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
    rds.create_db_snapshot()
        .db_instance_identifier("orders-db")
        .db_snapshot_identifier("safehold-orders")
        .tags(
            aws_sdk_rds::types::Tag::builder()
                .key(TAG_BACKUP)
                .value("b-1")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let label = label();
    let spec = RdsSpec {
        snapshot: "safehold-orders".into(),
        db_instance_id: "orders-restored".into(),
        db_instance_class: Some("db.m5.large".into()),
        port: Some(6543),
        multi_az: Some(true),
        subnet_group: None,
        availability_zone: None,
        publicly_accessible: Some(false),
        tags: pairs(&[("team", "storage"), (TAG_BACKUP, "b-1")]),
    };
    assert!(!identifier_taken(&config, "rds", "orders-restored")
        .await
        .unwrap());
    assert_eq!(
        restore_rds(&config, &label, &spec).await.unwrap(),
        "orders-restored"
    );
    assert_eq!(
        restore_rds(&config, &label, &spec).await.unwrap(),
        "orders-restored"
    );
    let db = rds
        .describe_db_instances()
        .db_instance_identifier("orders-restored")
        .send()
        .await
        .unwrap()
        .db_instances()[0]
        .clone();
    assert_eq!(db.db_instance_class(), Some("db.m5.large"));
    assert_eq!(db.endpoint().and_then(|e| e.port()), Some(6543));
    assert_eq!(db.multi_az(), Some(true));
    assert_eq!(db.engine(), Some("postgres"));
    assert_recovery_tags(&rds_tags(db.tag_list()), &label, None);
    assert_eq!(
        rds.describe_db_instances()
            .send()
            .await
            .unwrap()
            .db_instances()
            .len(),
        2
    );
    assert!(identifier_taken(&config, "rds", "orders-restored")
        .await
        .unwrap());
    assert_eq!(
        database_status(&config, "rds", "orders-restored")
            .await
            .unwrap()
            .as_deref(),
        Some("available")
    );
    assert_eq!(
        database_status(&config, "rds", "nothing").await.unwrap(),
        None
    );

    let taken = restore_rds(&config, &self::label(), &spec)
        .await
        .unwrap_err();
    assert_eq!(taken.code, "DBInstanceAlreadyExists");
    let source = restore_rds(
        &config,
        &label,
        &RdsSpec {
            db_instance_id: "orders-db".into(),
            ..spec.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(source.code, "DBInstanceAlreadyExists");
}

#[tokio::test]
async fn aurora_clusters_are_restored_once_with_writer_and_reader() {
    let (_emulator, config) = setup().await;
    let rds = aws_sdk_rds::Client::new(&config);
    rds.create_db_cluster()
        .db_cluster_identifier("ledger")
        .engine("aurora-postgresql")
        .master_username("admin")
        .master_user_password("password-123")
        .send()
        .await
        .unwrap();
    rds.create_db_cluster_snapshot()
        .db_cluster_identifier("ledger")
        .db_cluster_snapshot_identifier("safehold-ledger")
        .send()
        .await
        .unwrap();
    let label = label();
    let spec = AuroraSpec {
        snapshot: "safehold-ledger".into(),
        cluster_id: "ledger-restored".into(),
        instance_id: "ledger-restored-1".into(),
        instance_class: "db.r6g.large".into(),
        port: Some(5433),
        subnet_group: None,
        availability_zone: None,
        publicly_accessible: Some(false),
        multi_az: true,
        tags: pairs(&[("team", "storage")]),
    };
    let expected = (
        "ledger-restored".to_string(),
        vec![
            "ledger-restored-1".to_string(),
            "ledger-restored-1-reader".to_string(),
        ],
    );
    assert_eq!(
        restore_aurora(&config, &label, &spec).await.unwrap(),
        expected
    );
    assert_eq!(
        restore_aurora(&config, &label, &spec).await.unwrap(),
        expected
    );
    let cluster = rds
        .describe_db_clusters()
        .db_cluster_identifier("ledger-restored")
        .send()
        .await
        .unwrap()
        .db_clusters()[0]
        .clone();
    assert_eq!(cluster.engine(), Some("aurora-postgresql"));
    assert_eq!(cluster.port(), Some(5433));
    assert_recovery_tags(&rds_tags(cluster.tag_list()), &label, None);
    let members: Vec<_> = cluster
        .db_cluster_members()
        .iter()
        .filter_map(|m| m.db_instance_identifier())
        .collect();
    assert_eq!(members.len(), 2, "{members:?}");
    for id in &expected.1 {
        let db = rds
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
            .unwrap()
            .db_instances()[0]
            .clone();
        assert_eq!(db.db_cluster_identifier(), Some("ledger-restored"));
        assert_eq!(db.db_instance_class(), Some("db.r6g.large"));
        assert_recovery_tags(&rds_tags(db.tag_list()), &label, None);
    }
    assert!(database_status(&config, "aurora", "ledger-restored")
        .await
        .unwrap()
        .is_some());
    assert!(identifier_taken(&config, "aurora", "ledger-restored")
        .await
        .unwrap());
    let taken = restore_aurora(&config, &self::label(), &spec)
        .await
        .unwrap_err();
    assert_eq!(taken.code, "DBClusterAlreadyExistsFault");
}

#[tokio::test]
async fn redshift_clusters_are_restored_once_and_tagged() {
    let (_emulator, config) = setup().await;
    let redshift = aws_sdk_redshift::Client::new(&config);
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
    redshift
        .create_cluster_snapshot()
        .cluster_identifier("warehouse")
        .snapshot_identifier("safehold-warehouse")
        .tags(
            aws_sdk_redshift::types::Tag::builder()
                .key(TAG_BACKUP)
                .value("b-1")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let label = label();
    let spec = RedshiftSpec {
        snapshot_id: "safehold-warehouse".into(),
        snapshot_owner: None,
        cluster_id: "warehouse-restored".into(),
        node_type: Some("ra3.xlplus".into()),
        port: Some(5440),
        availability_zone: Some(ZONE.into()),
        subnet_group: None,
        publicly_accessible: Some(false),
        tags: pairs(&[("team", "storage")]),
    };
    assert_eq!(
        restore_redshift(&config, &label, &spec).await.unwrap(),
        "warehouse-restored"
    );
    assert_eq!(
        restore_redshift(&config, &label, &spec).await.unwrap(),
        "warehouse-restored"
    );
    let cluster = redshift
        .describe_clusters()
        .cluster_identifier("warehouse-restored")
        .send()
        .await
        .unwrap()
        .clusters()[0]
        .clone();
    assert_eq!(cluster.node_type(), Some("ra3.xlplus"));
    assert_eq!(cluster.endpoint().and_then(|e| e.port()), Some(5440));
    assert_eq!(cluster.availability_zone(), Some(ZONE));
    let tags: BTreeMap<String, String> = cluster
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.into(), t.value().unwrap_or_default().into())))
        .collect();
    assert_recovery_tags(&tags, &label, None);
    assert_eq!(
        redshift
            .describe_clusters()
            .send()
            .await
            .unwrap()
            .clusters()
            .len(),
        2
    );
    assert_eq!(
        database_status(&config, "redshift", "warehouse-restored")
            .await
            .unwrap()
            .as_deref(),
        Some("available")
    );
    let taken = restore_redshift(&config, &self::label(), &spec)
        .await
        .unwrap_err();
    assert_eq!(taken.code, "ClusterAlreadyExists");
}

#[tokio::test]
async fn tables_are_restored_once_then_get_their_tags_and_ttl() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TimeToLiveSpecification,
    };
    let (_emulator, config) = setup().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
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
        .tags(
            aws_sdk_dynamodb::types::Tag::builder()
                .key("team")
                .value("storage")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let source_arn = table
        .table_description()
        .unwrap()
        .table_arn()
        .unwrap()
        .to_string();
    dynamodb
        .update_time_to_live()
        .table_name("sessions")
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name("expires")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    dynamodb
        .tag_resource()
        .resource_arn(&source_arn)
        .tags(
            aws_sdk_dynamodb::types::Tag::builder()
                .key(TAG_BACKUP)
                .value("b-1")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let (source_tags, ttl) = table_facts(&config, "sessions").await.unwrap();
    assert_eq!(source_tags.get("team").map(String::as_str), Some("storage"));
    assert_eq!(ttl.as_deref(), Some("expires"));
    let backup_arn = dynamodb
        .create_backup()
        .table_name("sessions")
        .backup_name("safehold-sessions")
        .send()
        .await
        .unwrap()
        .backup_details()
        .unwrap()
        .backup_arn()
        .to_string();

    let label = label();
    let spec = TableSpec {
        backup_arn: backup_arn.clone(),
        table_name: "sessions-restored".into(),
        tags: preserved_tags(&source_tags),
        ttl_attribute: ttl.clone(),
    };
    let arn = restore_table(&config, &label, &spec).await.unwrap();
    assert!(arn.ends_with(":table/sessions-restored"), "{arn}");
    assert_eq!(restore_table(&config, &label, &spec).await.unwrap(), arn);
    assert!(finish_table(&config, &spec).await.unwrap());
    let (tags, restored_ttl) = table_facts(&config, "sessions-restored").await.unwrap();
    assert_recovery_tags(&tags, &label, None);
    assert_eq!(restored_ttl.as_deref(), Some("expires"));
    assert_eq!(
        dynamodb
            .describe_table()
            .table_name("sessions-restored")
            .send()
            .await
            .unwrap()
            .table()
            .unwrap()
            .restore_summary()
            .and_then(|r| r.source_backup_arn()),
        Some(backup_arn.as_str())
    );
    assert_eq!(
        database_status(&config, "dynamodb", "sessions-restored")
            .await
            .unwrap()
            .as_deref(),
        Some("active")
    );
    assert!(identifier_taken(&config, "dynamodb", "sessions-restored")
        .await
        .unwrap());
    assert!(!identifier_taken(&config, "dynamodb", "nothing")
        .await
        .unwrap());

    let taken = restore_table(&config, &self::label(), &spec)
        .await
        .unwrap_err();
    assert_eq!(taken.code, "TableAlreadyExistsException");
    let source = restore_table(
        &config,
        &label,
        &TableSpec {
            table_name: "sessions".into(),
            ..spec.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(source.code, "TableAlreadyExistsException");
    assert_eq!(
        dynamodb
            .list_tables()
            .send()
            .await
            .unwrap()
            .table_names()
            .len(),
        2
    );
}
