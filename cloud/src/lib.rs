//! Safehold's only door to AWS. Every client takes an optional endpoint
//! override so the same code runs against AWS or the local emulator.

pub use aws_config::SdkConfig;

pub mod access;
pub mod backup;
pub mod dr;
pub mod emulator;
pub mod fleet;
pub mod inventory;
pub mod permissions;
pub mod recovery;
pub mod resolve;
pub mod secrets;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, ResourceType, Tag, TagSpecification};

/// Where and as whom to call AWS.
#[derive(Clone, Debug)]
pub struct Target {
    /// `None`: the real AWS endpoints.
    pub endpoint: Option<String>,
    pub region: String,
}

/// Static credentials the emulator accepts for its default account.
fn emulator_credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "safehold-emulator")
}

pub async fn ec2(target: &Target) -> aws_sdk_ec2::Client {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new(target.region.clone()));
    if let Some(endpoint) = &target.endpoint {
        loader = loader
            .endpoint_url(endpoint)
            .credentials_provider(emulator_credentials());
    }
    aws_sdk_ec2::Client::new(&loader.load().await)
}

fn name_tag(kind: ResourceType, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key("Name").value(name).build())
        .tags(Tag::builder().key("environment").value("demo").build())
        .build()
}

/// Creates a small sample estate in one region of the emulator: an image,
/// two instances and a detached data volume. Returns the created ids.
pub async fn seed_demo_resources(target: &Target) -> anyhow::Result<Vec<String>> {
    let client = ec2(target).await;
    let zone = format!("{}a", target.region);
    let root = client
        .create_volume()
        .availability_zone(&zone)
        .size(8)
        .send()
        .await?;
    let root_id = root.volume_id().unwrap_or_default().to_string();
    let snapshot = client.create_snapshot().volume_id(&root_id).send().await?;
    let image = client
        .register_image()
        .name(format!("demo-base-{}", target.region))
        .root_device_name("/dev/xvda")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(snapshot.snapshot_id().unwrap_or_default())
                        .volume_size(8)
                        .build(),
                )
                .build(),
        )
        .send()
        .await?;
    let image_id = image.image_id().unwrap_or_default().to_string();
    let mut created = vec![image_id.clone()];
    for name in ["web-1", "db-1"] {
        let run = client
            .run_instances()
            .image_id(&image_id)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .tag_specifications(name_tag(ResourceType::Instance, name))
            .send()
            .await?;
        created.extend(
            run.instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_owned)),
        );
    }
    let data = client
        .create_volume()
        .availability_zone(&zone)
        .size(20)
        .tag_specifications(name_tag(ResourceType::Volume, "shared-data"))
        .send()
        .await?;
    created.extend(data.volume_id().map(str::to_owned));
    client.delete_volume().volume_id(&root_id).send().await?;
    Ok(created)
}
