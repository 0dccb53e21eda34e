//! Synthetic fleets in the AWS emulator, for load measurements: many
//! instances with several volumes each, and the raw cost of snapshotting
//! them without Safehold in between.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, InstanceType};
use futures::StreamExt;

use crate::{ec2, Target};

/// Instances started per RunInstances call.
const RUN_BATCH: i32 = 100;

/// Starts `count` instances whose image maps a root volume and
/// `data_volumes` data volumes, so each instance has `1 + data_volumes` EBS
/// volumes. Returns the instance ids.
pub async fn launch(
    target: &Target,
    count: usize,
    data_volumes: usize,
) -> anyhow::Result<Vec<String>> {
    let client = ec2(target).await;
    let zone = format!("{}a", target.region);
    let volume = client
        .create_volume()
        .availability_zone(&zone)
        .size(8)
        .send()
        .await?;
    let snapshot = client
        .create_snapshot()
        .volume_id(volume.volume_id().unwrap_or_default())
        .send()
        .await?;
    let snapshot_id = snapshot.snapshot_id().unwrap_or_default();
    let image = client
        .register_image()
        .name(format!("fleet-{}", uuid::Uuid::new_v4()))
        .root_device_name("/dev/xvda")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(snapshot_id)
                        .volume_size(8)
                        .build(),
                )
                .build(),
        )
        .send()
        .await?;
    let image_id = image.image_id().unwrap_or_default();
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let n = RUN_BATCH.min((count - ids.len()) as i32);
        let run = client
            .run_instances()
            .image_id(image_id)
            .instance_type(InstanceType::T3Micro)
            .placement(
                aws_sdk_ec2::types::Placement::builder()
                    .availability_zone(&zone)
                    .build(),
            )
            .min_count(n)
            .max_count(n)
            .send()
            .await?;
        ids.extend(
            run.instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_owned)),
        );
    }
    // Data volumes, attached the way an operator would.
    let attaching = ids.iter().flat_map(|instance| {
        (0..data_volumes).map(move |i| {
            (
                instance.clone(),
                format!("/dev/sd{}", (b'f' + i as u8) as char),
            )
        })
    });
    let attached: Vec<anyhow::Result<()>> =
        futures::stream::iter(attaching.map(|(instance, device)| {
            let (client, zone) = (client.clone(), zone.clone());
            async move {
                let volume = client
                    .create_volume()
                    .availability_zone(zone)
                    .size(10)
                    .send()
                    .await?;
                client
                    .attach_volume()
                    .volume_id(volume.volume_id().unwrap_or_default())
                    .instance_id(instance)
                    .device(device)
                    .send()
                    .await?;
                Ok(())
            }
        }))
        .buffer_unordered(16)
        .collect()
        .await;
    attached.into_iter().collect::<anyhow::Result<()>>()?;
    client
        .delete_volume()
        .volume_id(volume.volume_id().unwrap_or_default())
        .send()
        .await?;
    Ok(ids)
}

/// The time AWS itself needs for one CreateSnapshots per instance, issued
/// `concurrency` at a time, each with a description and four tags as a
/// backup's carry: the floor any backup of these instances stands on.
pub async fn create_snapshots_floor(
    target: &Target,
    instance_ids: &[String],
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let client = ec2(target).await;
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(instance_ids.iter().map(|id| {
        let client = client.clone();
        async move {
            client
                .create_snapshots()
                .instance_specification(
                    aws_sdk_ec2::types::InstanceSpecification::builder()
                        .instance_id(id)
                        .build(),
                )
                .description(format!("Floor measurement of ec2_instance:{id}"))
                .tag_specifications(floor_tags(id))
                .send()
                .await
        }
    }))
    .buffer_unordered(concurrency)
    .collect()
    .await;
    let elapsed = started.elapsed();
    for result in results {
        result?;
    }
    Ok(elapsed)
}

/// Four tags the size of a backup's own.
fn floor_tags(instance_id: &str) -> aws_sdk_ec2::types::TagSpecification {
    let tag = |key: &str, value: String| {
        aws_sdk_ec2::types::Tag::builder()
            .key(key)
            .value(value)
            .build()
    };
    aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::Snapshot)
        .tags(tag("floor:tenant", uuid::Uuid::new_v4().to_string()))
        .tags(tag("floor:backup", uuid::Uuid::new_v4().to_string()))
        .tags(tag("floor:policy", uuid::Uuid::new_v4().to_string()))
        .tags(tag("floor:target", format!("ec2_instance:{instance_id}")))
        .build()
}
