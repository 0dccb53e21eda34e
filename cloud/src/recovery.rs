//! The AWS side of recovering from a backup: volumes from EBS snapshots
//! (attached, or switched in for an instance's volume), AMIs registered from
//! a root snapshot and instances launched from them, DB instances, Aurora
//! and Redshift clusters restored from snapshots, DynamoDB tables restored
//! from backups.
//!
//! Every creating call first looks for what an earlier attempt of the same
//! recovery made (EC2: by the `safehold:recovery` and `safehold:recovery-item`
//! tags; RDS, Aurora, Redshift and DynamoDB: by the identifier, accepted only
//! when it carries this recovery's tag), so a retried step never duplicates
//! anything. Nothing recovery creates carries `safehold:backup`: recovered
//! resources are not backups and must not be expired as such.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use aws_config::SdkConfig;
use base64::Engine;
use safehold_domain::recovery::is_carried_tag as is_preserved;
use safehold_domain::recovery::{InstancePlan, ShutdownBehavior, VolumeFromSnapshot};
use uuid::Uuid;

use crate::access::CloudError;
use crate::backup::{
    absent_as_none, describe_instance, describe_instance_batch, ec2_filter, ec2_tag_spec, error,
    own_images, partition_and_account, rds_tag_map, rds_tags, redshift_tag_map, redshift_tags,
    region, truncate,
};

/// What a backup recorded about an instance (for a recovery's defaults).
pub use crate::backup::instance_record;

pub const TAG_RECOVERY: &str = "safehold:recovery";
pub const TAG_RECOVERY_ITEM: &str = "safehold:recovery-item";

/// EC2, RDS, Redshift and DynamoDB allow 50 tags per resource.
const MAX_TAGS: usize = 50;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;
const MAX_AMI_NAME: usize = 128;
/// Instance ids per DescribeInstances call.
const DESCRIBE_BATCH: usize = 100;
/// How long a switch waits for the old volume to come off the instance.
const DETACH_POLLS: u32 = 60;
const DETACH_POLL_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RecoveryLabel {
    pub tenant_id: Uuid,
    pub recovery_id: Uuid,
}

impl RecoveryLabel {
    /// `safehold:recovery`, then `safehold:recovery-item` when given, then
    /// the caller's tags (minus AWS's and Safehold's keys) within the limit.
    fn tags(&self, item: Option<&str>, extra: &[(String, String)]) -> Vec<(String, String)> {
        let mut tags = vec![(TAG_RECOVERY.to_string(), self.recovery_id.to_string())];
        if let Some(item) = item {
            tags.push((TAG_RECOVERY_ITEM.to_string(), truncate(item, MAX_TAG_VALUE)));
        }
        let room = MAX_TAGS - tags.len();
        tags.extend(
            extra
                .iter()
                .filter(|(k, _)| is_preserved(k) && k.chars().count() <= MAX_TAG_KEY)
                .take(room)
                .map(|(k, v)| (k.clone(), truncate(v, MAX_TAG_VALUE))),
        );
        tags
    }

    fn filters(&self, item: &str) -> Vec<aws_sdk_ec2::types::Filter> {
        vec![
            ec2_filter(
                &format!("tag:{TAG_RECOVERY}"),
                &[self.recovery_id.to_string()],
            ),
            ec2_filter(
                &format!("tag:{TAG_RECOVERY_ITEM}"),
                &[truncate(item, MAX_TAG_VALUE)],
            ),
        ]
    }

    /// Whether tags found on an existing resource say this recovery made it.
    fn made(&self, tags: &BTreeMap<String, String>) -> bool {
        tags.get(TAG_RECOVERY) == Some(&self.recovery_id.to_string())
    }

    /// An idempotency token for EC2 calls: the same on every attempt of one
    /// step, so AWS answers a resent request with what it already made.
    fn client_token(&self, step: &str) -> String {
        Uuid::new_v5(&self.recovery_id, step.as_bytes()).to_string()
    }
}

/// Tags to carry over from a backed-up source: drops keys starting with
/// `aws:` (AWS refuses them) or `safehold:` (they describe the backup, not
/// the recovered resource), case-insensitive.
pub fn preserved_tags(source: &BTreeMap<String, String>) -> Vec<(String, String)> {
    source
        .iter()
        .filter(|(k, _)| is_preserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn same_device(a: &str, b: &str) -> bool {
    a.trim_start_matches("/dev/") == b.trim_start_matches("/dev/")
}

// ---------------------------------------------------------------------------
// EBS volumes
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct VolumeSpec {
    /// Unique within the recovery (e.g. the snapshot id); the volume's
    /// safehold:recovery-item tag.
    pub item: String,
    pub snapshot_id: String,
    pub availability_zone: String,
    /// None: the snapshot's size.
    pub size_gib: Option<i32>,
    /// gp2 gp3 io1 io2 st1 sc1 standard
    pub volume_type: String,
    pub iops: Option<i32>,
    pub tags: Vec<(String, String)>,
}

/// Volumes carrying the recovery's tags for `item`, except deleted ones.
async fn recovered_volumes(
    client: &aws_sdk_ec2::Client,
    label: &RecoveryLabel,
    item: &str,
) -> Result<Vec<aws_sdk_ec2::types::Volume>, CloudError> {
    let pages = client
        .describe_volumes()
        .set_filters(Some(label.filters(item)))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(pages
        .iter()
        .flat_map(|p| p.volumes())
        .filter(|v| {
            !matches!(
                v.state().map(|s| s.as_str()),
                Some("deleting") | Some("deleted")
            )
        })
        .cloned()
        .collect())
}

/// A volume from the snapshot (also one shared by another account), tagged
/// with the label, the item and the spec's tags. Returns the volume id.
pub async fn create_volume(
    config: &SdkConfig,
    label: &RecoveryLabel,
    spec: &VolumeSpec,
) -> Result<String, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    if let Some(id) = recovered_volumes(&client, label, &spec.item)
        .await?
        .iter()
        .find_map(|v| v.volume_id())
    {
        return Ok(id.to_string());
    }
    let tags = label.tags(Some(&spec.item), &spec.tags);
    let out = client
        .create_volume()
        .snapshot_id(&spec.snapshot_id)
        .availability_zone(&spec.availability_zone)
        .set_size(spec.size_gib)
        .volume_type(aws_sdk_ec2::types::VolumeType::from(
            spec.volume_type.as_str(),
        ))
        .set_iops(spec.iops)
        .tag_specifications(ec2_tag_spec(
            aws_sdk_ec2::types::ResourceType::Volume,
            &tags,
        ))
        .client_token(label.client_token(&format!("volume:{}", spec.item)))
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    out.volume_id()
        .map(str::to_owned)
        .ok_or_else(|| error("InternalError", "CreateVolume returned no volume id"))
}

async fn describe_volume(
    client: &aws_sdk_ec2::Client,
    volume_id: &str,
) -> Result<Option<aws_sdk_ec2::types::Volume>, CloudError> {
    // A filter (unlike VolumeIds) answers an empty list for an unknown id.
    let out = client
        .describe_volumes()
        .filters(ec2_filter("volume-id", &[volume_id]))
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(out
        .volumes()
        .iter()
        .find(|v| v.volume_id() == Some(volume_id))
        .cloned())
}

/// "creating" | "available" | "in-use" | "error"; None if gone.
pub async fn volume_state(
    config: &SdkConfig,
    volume_id: &str,
) -> Result<Option<String>, CloudError> {
    let volume = describe_volume(&aws_sdk_ec2::Client::new(config), volume_id).await?;
    Ok(volume
        .and_then(|v| v.state().map(|s| s.as_str().to_string()))
        .filter(|s| s != "deleting" && s != "deleted"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachBehavior {
    IfDeviceFree,
    Switch,
    SwitchAndDeleteOld,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub replaced_volume: Option<String>,
    pub deleted_replaced: bool,
}

/// Attaches `volume_id` to `instance_id` at `device`. Already attached there
/// (a retry): Ok. Device taken: IfDeviceFree -> CloudError code
/// "DeviceInUse"; Switch/SwitchAndDeleteOld require the instance to be
/// `stopped` (else code "InstanceNotStopped", nothing changed), detach the
/// old volume (waiting until it is detached/available), attach the new one,
/// and SwitchAndDeleteOld then deletes the old volume. Instance and volume
/// must be in the same AZ (else code "ZoneMismatch").
pub async fn attach_volume(
    config: &SdkConfig,
    volume_id: &str,
    instance_id: &str,
    device: &str,
    behavior: AttachBehavior,
) -> Result<Attached, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let volume = describe_volume(&client, volume_id).await?.ok_or_else(|| {
        error(
            "InvalidVolume.NotFound",
            format!("volume {volume_id} not found"),
        )
    })?;
    let unchanged = Attached {
        replaced_volume: None,
        deleted_replaced: false,
    };
    for attachment in volume.attachments() {
        let state = attachment.state().map(|s| s.as_str());
        if matches!(state, Some("detached") | Some("detaching")) {
            continue;
        }
        if attachment.instance_id() == Some(instance_id)
            && attachment.device().is_some_and(|d| same_device(d, device))
        {
            return Ok(unchanged);
        }
        return Err(error(
            "VolumeInUse",
            format!(
                "volume {volume_id} is attached to {} at {}",
                attachment.instance_id().unwrap_or("another instance"),
                attachment.device().unwrap_or("another device")
            ),
        ));
    }
    let instance = describe_instance(&client, instance_id).await?;
    let instance_zone = instance
        .placement()
        .and_then(|p| p.availability_zone())
        .unwrap_or_default();
    let volume_zone = volume.availability_zone().unwrap_or_default();
    if instance_zone != volume_zone {
        return Err(error(
            "ZoneMismatch",
            format!(
                "volume {volume_id} is in {volume_zone} but instance {instance_id} is in {instance_zone}"
            ),
        ));
    }
    // (device as the instance names it, volume) now at `device`
    let old = instance.block_device_mappings().iter().find_map(|m| {
        let name = m.device_name().filter(|d| same_device(d, device))?;
        Some((name.to_string(), m.ebs()?.volume_id()?.to_string()))
    });
    let mut attached = unchanged;
    if let Some((old_device, old)) = old {
        if behavior == AttachBehavior::IfDeviceFree {
            return Err(error(
                "DeviceInUse",
                format!("{device} of instance {instance_id} is taken by volume {old}"),
            ));
        }
        let state = instance.state().and_then(|s| s.name()).map(|n| n.as_str());
        if state != Some("stopped") {
            return Err(error(
                "InstanceNotStopped",
                format!(
                    "instance {instance_id} is {}; it must be stopped to switch its volume at {device}",
                    state.unwrap_or("in an unknown state")
                ),
            ));
        }
        client
            .detach_volume()
            .volume_id(&old)
            .instance_id(instance_id)
            .device(old_device)
            .send()
            .await
            .map_err(CloudError::from_sdk)?;
        wait_detached(&client, &old).await?;
        attached.replaced_volume = Some(old);
    }
    client
        .attach_volume()
        .volume_id(volume_id)
        .instance_id(instance_id)
        .device(device)
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    if let (Some(old), AttachBehavior::SwitchAndDeleteOld) = (&attached.replaced_volume, behavior) {
        let deleted = client
            .delete_volume()
            .volume_id(old)
            .send()
            .await
            .map_err(CloudError::from_sdk);
        absent_as_none(deleted)?;
        attached.deleted_replaced = true;
    }
    Ok(attached)
}

/// Waits until the volume is `available` (detached) or gone.
async fn wait_detached(client: &aws_sdk_ec2::Client, volume_id: &str) -> Result<(), CloudError> {
    for poll in 0..DETACH_POLLS {
        if poll > 0 {
            tokio::time::sleep(DETACH_POLL_INTERVAL).await;
        }
        let volume = describe_volume(client, volume_id).await?;
        let Some(volume) = volume else { return Ok(()) };
        if volume.state().map(|s| s.as_str()) == Some("available") {
            return Ok(());
        }
    }
    Err(error(
        "DetachTimeout",
        format!("volume {volume_id} did not detach in time"),
    ))
}

// ---------------------------------------------------------------------------
// EC2 instances
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct BlockVolume {
    pub device: String,
    pub snapshot_id: String,
    pub size_gib: Option<i32>,
    pub volume_type: Option<String>,
    pub iops: Option<i32>,
    pub delete_on_termination: bool,
}

impl BlockVolume {
    fn mapping(&self) -> aws_sdk_ec2::types::BlockDeviceMapping {
        aws_sdk_ec2::types::BlockDeviceMapping::builder()
            .device_name(&self.device)
            .ebs(
                aws_sdk_ec2::types::EbsBlockDevice::builder()
                    .snapshot_id(&self.snapshot_id)
                    .set_volume_size(self.size_gib)
                    .set_volume_type(
                        self.volume_type
                            .as_deref()
                            .map(aws_sdk_ec2::types::VolumeType::from),
                    )
                    .set_iops(self.iops)
                    .delete_on_termination(self.delete_on_termination)
                    .build(),
            )
            .build()
    }
}

/// A temporary or kept AMI registered from the backup's root snapshot.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Unique within the recovery (e.g. the backed-up instance id): names
    /// the AMI and is its safehold:recovery-item tag, so a recovery of
    /// several instances registers one AMI each.
    pub item: String,
    pub root_snapshot_id: String,
    pub root_device_name: String,
    /// x86_64, arm64, i386
    pub architecture: String,
    /// Data volumes included in the image (may be empty).
    pub volumes: Vec<BlockVolume>,
}

/// The AMI name of a recovery's image for `item`: the same on every attempt.
fn image_name(label: &RecoveryLabel, item: &str) -> String {
    let digest = Uuid::new_v5(&label.recovery_id, format!("image:{item}").as_bytes())
        .simple()
        .to_string();
    let item: String = item
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    truncate(
        &format!(
            "safehold-recovery-{}-{}-{item}",
            label.recovery_id.simple(),
            &digest[..12]
        ),
        MAX_AMI_NAME,
    )
}

/// Registers (or finds, by a name derived from the recovery id and item) an
/// AMI from the root snapshot, tagged with the label.
pub async fn register_image(
    config: &SdkConfig,
    label: &RecoveryLabel,
    spec: &ImageSpec,
) -> Result<String, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let name = image_name(label, &spec.item);
    let find = || async {
        let images = own_images(&client, vec![ec2_filter("name", &[&name])]).await?;
        Ok::<_, CloudError>(images.iter().find_map(|i| i.image_id().map(str::to_owned)))
    };
    if let Some(id) = find().await? {
        return Ok(id);
    }
    let root = BlockVolume {
        device: spec.root_device_name.clone(),
        snapshot_id: spec.root_snapshot_id.clone(),
        size_gib: None,
        volume_type: None,
        iops: None,
        delete_on_termination: true,
    };
    let tags = label.tags(Some(&spec.item), &[]);
    let registered = client
        .register_image()
        .name(&name)
        .description(format!("Safehold recovery {}", label.recovery_id))
        .root_device_name(&spec.root_device_name)
        .architecture(aws_sdk_ec2::types::ArchitectureValues::from(
            spec.architecture.as_str(),
        ))
        .virtualization_type("hvm")
        .ena_support(true)
        .set_block_device_mappings(Some(
            std::iter::once(&root)
                .chain(&spec.volumes)
                .map(BlockVolume::mapping)
                .collect(),
        ))
        .tag_specifications(ec2_tag_spec(aws_sdk_ec2::types::ResourceType::Image, &tags))
        .send()
        .await
        .map_err(CloudError::from_sdk);
    match registered {
        Ok(out) => out
            .image_id()
            .map(str::to_owned)
            .ok_or_else(|| error("InternalError", "RegisterImage returned no image id")),
        // An earlier attempt registered it after all.
        Err(e) if e.code == "InvalidAMIName.Duplicate" => find()
            .await?
            .ok_or_else(|| error("InvalidAMIName.Duplicate", e.message)),
        Err(e) => Err(e),
    }
}

/// Deregisters an AMI registered by register_image (never deletes the
/// backup's snapshots). Gone already: Ok.
pub async fn deregister_image(config: &SdkConfig, image_id: &str) -> Result<(), CloudError> {
    let result = aws_sdk_ec2::Client::new(config)
        .deregister_image()
        .image_id(image_id)
        .send()
        .await
        .map_err(CloudError::from_sdk);
    absent_as_none(result).map(|_| ())
}

#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Unique within the recovery (e.g. the backed-up instance id): the
    /// instances' safehold:recovery-item tag, which tells this launch's
    /// instances from the recovery's other launches.
    pub item: String,
    pub image_id: String,
    pub instance_type: String,
    pub count: i32,
    pub key_name: Option<String>,
    pub subnet_id: Option<String>,
    pub availability_zone: Option<String>,
    pub private_ip: Option<String>,
    pub security_group_ids: Vec<String>,
    pub associate_public_ip: Option<bool>,
    /// Plain text; base64-encoded for AWS.
    pub user_data: Option<String>,
    pub tags: Vec<(String, String)>,
    /// stop | terminate
    pub shutdown_behavior: Option<String>,
    pub termination_protection: bool,
    pub monitoring: bool,
    pub instance_profile_arn: Option<String>,
    pub ebs_optimized: bool,
    pub tenancy: Option<String>,
    /// Data volumes from the backup's snapshots, added to the launch's block
    /// device mappings.
    pub volumes: Vec<BlockVolume>,
    /// Volume tags (preserved from the backup) applied to the new volumes.
    pub volume_tags: Vec<(String, String)>,
}

impl LaunchSpec {
    /// The launch an instance recovery plans, from `image_id` (empty while
    /// the image is still to be registered).
    pub fn for_plan(plan: &InstancePlan, image_id: String) -> Self {
        let tags = |map: &BTreeMap<String, String>| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        Self {
            item: plan.source_instance.clone(),
            image_id,
            instance_type: plan.instance_type.clone(),
            count: plan.count,
            key_name: plan.key_name.clone(),
            subnet_id: plan.subnet_id.clone(),
            availability_zone: plan.availability_zone.clone(),
            private_ip: plan.private_ip.clone(),
            security_group_ids: plan.security_group_ids.clone(),
            associate_public_ip: plan.associate_public_ip,
            user_data: plan.user_data.clone(),
            tags: tags(&plan.tags),
            shutdown_behavior: Some(
                match plan.shutdown_behavior {
                    ShutdownBehavior::Stop => "stop",
                    ShutdownBehavior::Terminate => "terminate",
                }
                .into(),
            ),
            termination_protection: plan.termination_protection,
            monitoring: plan.monitoring,
            instance_profile_arn: plan.instance_profile_arn.clone(),
            ebs_optimized: plan.ebs_optimized,
            tenancy: plan.tenancy.clone(),
            volumes: plan.volumes.iter().map(BlockVolume::from_plan).collect(),
            volume_tags: tags(&plan.volume_tags),
        }
    }
}

impl BlockVolume {
    pub fn from_plan(v: &VolumeFromSnapshot) -> Self {
        Self {
            device: v.device.clone(),
            snapshot_id: v.snapshot_id.clone(),
            size_gib: Some(v.size_gib),
            volume_type: Some(v.volume_type.clone()),
            iops: v.iops,
            delete_on_termination: v.delete_on_termination,
        }
    }
}

/// Launches `count` instances (or finds those an earlier attempt launched,
/// by the recovery tags; launches only the missing ones). Returns instance
/// ids.
pub async fn launch_instances(
    config: &SdkConfig,
    label: &RecoveryLabel,
    spec: &LaunchSpec,
) -> Result<Vec<String>, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let pages = client
        .describe_instances()
        .set_filters(Some(label.filters(&spec.item)))
        .filters(ec2_filter(
            "instance-state-name",
            &["pending", "running", "stopping", "stopped"],
        ))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    let mut ids: Vec<String> = pages
        .iter()
        .flat_map(|p| p.reservations())
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    let missing = spec.count - ids.len() as i32;
    if missing <= 0 {
        return Ok(ids);
    }
    let tags = label.tags(Some(&spec.item), &spec.tags);
    let volume_tags = label.tags(Some(&spec.item), &spec.volume_tags);
    // With a public IP choice the network settings go on the primary
    // network interface; AWS refuses them on both.
    let interface = spec.associate_public_ip.map(|public| {
        aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification::builder()
            .device_index(0)
            .associate_public_ip_address(public)
            .set_subnet_id(spec.subnet_id.clone())
            .set_private_ip_address(spec.private_ip.clone())
            .set_groups(
                (!spec.security_group_ids.is_empty()).then(|| spec.security_group_ids.clone()),
            )
            .delete_on_termination(true)
            .build()
    });
    let placement = (spec.availability_zone.is_some() || spec.tenancy.is_some()).then(|| {
        aws_sdk_ec2::types::Placement::builder()
            .set_availability_zone(spec.availability_zone.clone())
            .set_tenancy(
                spec.tenancy
                    .as_deref()
                    .map(aws_sdk_ec2::types::Tenancy::from),
            )
            .build()
    });
    let mut request = client
        .run_instances()
        .image_id(&spec.image_id)
        .instance_type(aws_sdk_ec2::types::InstanceType::from(
            spec.instance_type.as_str(),
        ))
        .min_count(missing)
        .max_count(missing)
        .set_key_name(spec.key_name.clone())
        .set_placement(placement)
        .set_user_data(
            spec.user_data
                .as_ref()
                .map(|u| base64::engine::general_purpose::STANDARD.encode(u)),
        )
        .tag_specifications(ec2_tag_spec(
            aws_sdk_ec2::types::ResourceType::Instance,
            &tags,
        ))
        .tag_specifications(ec2_tag_spec(
            aws_sdk_ec2::types::ResourceType::Volume,
            &volume_tags,
        ))
        .set_instance_initiated_shutdown_behavior(
            spec.shutdown_behavior
                .as_deref()
                .map(aws_sdk_ec2::types::ShutdownBehavior::from),
        )
        .disable_api_termination(spec.termination_protection)
        .monitoring(
            aws_sdk_ec2::types::RunInstancesMonitoringEnabled::builder()
                .enabled(spec.monitoring)
                .build(),
        )
        .set_iam_instance_profile(spec.instance_profile_arn.as_ref().map(|arn| {
            aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
                .arn(arn)
                .build()
        }))
        .ebs_optimized(spec.ebs_optimized)
        .set_block_device_mappings(
            (!spec.volumes.is_empty())
                .then(|| spec.volumes.iter().map(BlockVolume::mapping).collect()),
        )
        // Resending after a lost answer returns the same instances.
        .client_token(label.client_token(&format!("launch:{}:{}:{missing}", spec.item, ids.len())));
    request = match interface {
        Some(interface) => request.network_interfaces(interface),
        None => request
            .set_subnet_id(spec.subnet_id.clone())
            .set_private_ip_address(spec.private_ip.clone())
            .set_security_group_ids(
                (!spec.security_group_ids.is_empty()).then(|| spec.security_group_ids.clone()),
            ),
    };
    let out = request.send().await.map_err(CloudError::from_sdk)?;
    ids.extend(
        out.instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned)),
    );
    Ok(ids)
}

/// Instance id -> state name ("pending", "running", ...). Unknown ids are
/// left out.
pub async fn instance_states(
    config: &SdkConfig,
    ids: &[String],
) -> Result<BTreeMap<String, String>, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let mut states = BTreeMap::new();
    for batch in ids.chunks(DESCRIBE_BATCH) {
        for instance in describe_instance_batch(&client, batch).await? {
            if let (Some(id), Some(state)) = (
                instance.instance_id(),
                instance.state().and_then(|s| s.name()),
            ) {
                states.insert(id.to_string(), state.as_str().to_string());
            }
        }
    }
    Ok(states)
}

/// Runs a describe call whose not-found error (or empty answer) means
/// `code`, with a message naming the value.
fn reference<T>(
    result: Result<Vec<T>, CloudError>,
    code: &str,
    what: &str,
    value: &str,
    place: &str,
) -> Result<Vec<T>, CloudError> {
    let not_found = || error(code, format!("{what} {value} does not exist in {place}"));
    match result {
        Ok(found) if found.is_empty() => Err(not_found()),
        Ok(found) => Ok(found),
        Err(e) if e.code.contains("NotFound") || e.code.contains("Malformed") => Err(not_found()),
        Err(e) => Err(e),
    }
}

/// Whether `ip` lies in the IPv4 `cidr`.
fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (Ok(ip), Some((net, bits))) = (ip.parse::<Ipv4Addr>(), cidr.split_once('/')) else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<Ipv4Addr>(), bits.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - bits.min(32)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Checks region-bound references exist in this account/region before
/// launching: image, key pair, subnet, security groups, and that private_ip
/// lies in the subnet's CIDR. Returns Err with code naming what is wrong
/// (e.g. "InvalidKeyPair.NotFound", "InvalidSubnetID.NotFound",
/// "PrivateIpNotInSubnet") and a message naming the value.
pub async fn check_launch_references(
    config: &SdkConfig,
    spec: &LaunchSpec,
) -> Result<(), CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let place = region(config);
    // No image yet when it is to be registered from the boot snapshot.
    if !spec.image_id.is_empty() {
        let images = client
            .describe_images()
            .image_ids(&spec.image_id)
            .send()
            .await
            .map_err(CloudError::from_sdk)
            .map(|o| o.images().to_vec());
        reference(
            images,
            "InvalidAMIID.NotFound",
            "image",
            &spec.image_id,
            &place,
        )?;
    }
    if let Some(key) = &spec.key_name {
        let keys = client
            .describe_key_pairs()
            .key_names(key)
            .send()
            .await
            .map_err(CloudError::from_sdk)
            .map(|o| o.key_pairs().to_vec());
        reference(keys, "InvalidKeyPair.NotFound", "key pair", key, &place)?;
    }
    let mut vpc = None;
    if let Some(subnet_id) = &spec.subnet_id {
        let subnets = client
            .describe_subnets()
            .subnet_ids(subnet_id)
            .send()
            .await
            .map_err(CloudError::from_sdk)
            .map(|o| o.subnets().to_vec());
        let subnets = reference(
            subnets,
            "InvalidSubnetID.NotFound",
            "subnet",
            subnet_id,
            &place,
        )?;
        let subnet = &subnets[0];
        let cidr = subnet.cidr_block().unwrap_or_default();
        if let Some(ip) = &spec.private_ip {
            if !in_cidr(ip, cidr) {
                return Err(error(
                    "PrivateIpNotInSubnet",
                    format!("private IP {ip} is not in subnet {subnet_id} ({cidr})"),
                ));
            }
        }
        let zone = subnet.availability_zone().unwrap_or_default();
        if let Some(wanted) = spec.availability_zone.as_deref().filter(|z| *z != zone) {
            return Err(error(
                "ZoneMismatch",
                format!("subnet {subnet_id} is in {zone}, not {wanted}"),
            ));
        }
        vpc = subnet.vpc_id().map(str::to_owned);
    }
    for group in &spec.security_group_ids {
        let groups = client
            .describe_security_groups()
            .group_ids(group)
            .send()
            .await
            .map_err(CloudError::from_sdk)
            .map(|o| o.security_groups().to_vec());
        let groups = reference(
            groups,
            "InvalidGroup.NotFound",
            "security group",
            group,
            &place,
        )?;
        if let (Some(vpc), Some(group_vpc)) = (&vpc, groups[0].vpc_id()) {
            if vpc != group_vpc {
                return Err(error(
                    "SecurityGroupVpcMismatch",
                    format!("security group {group} is in {group_vpc}, the subnet in {vpc}"),
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// databases
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct RdsSpec {
    /// Identifier, or ARN when shared from another account.
    pub snapshot: String,
    pub db_instance_id: String,
    pub db_instance_class: Option<String>,
    pub port: Option<i32>,
    pub multi_az: Option<bool>,
    pub subnet_group: Option<String>,
    pub availability_zone: Option<String>,
    pub publicly_accessible: Option<bool>,
    pub tags: Vec<(String, String)>,
}

async fn find_db_instance(
    client: &aws_sdk_rds::Client,
    id: &str,
) -> Result<Option<aws_sdk_rds::types::DbInstance>, CloudError> {
    let result = client
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
        .map_err(CloudError::from_sdk);
    Ok(absent_as_none(result)?.and_then(|out| out.db_instances().first().cloned()))
}

async fn find_db_cluster(
    client: &aws_sdk_rds::Client,
    id: &str,
) -> Result<Option<aws_sdk_rds::types::DbCluster>, CloudError> {
    let result = client
        .describe_db_clusters()
        .db_cluster_identifier(id)
        .send()
        .await
        .map_err(CloudError::from_sdk);
    Ok(absent_as_none(result)?.and_then(|out| out.db_clusters().first().cloned()))
}

async fn find_redshift_cluster(
    client: &aws_sdk_redshift::Client,
    id: &str,
) -> Result<Option<aws_sdk_redshift::types::Cluster>, CloudError> {
    let result = client
        .describe_clusters()
        .cluster_identifier(id)
        .send()
        .await
        .map_err(CloudError::from_sdk);
    Ok(absent_as_none(result)?.and_then(|out| out.clusters().first().cloned()))
}

/// Ok(true) if a DB instance `id` exists and this recovery made it, an
/// error if another one has the identifier, Ok(false) if it is free.
async fn own_db_instance(
    client: &aws_sdk_rds::Client,
    label: &RecoveryLabel,
    id: &str,
) -> Result<bool, CloudError> {
    match find_db_instance(client, id).await? {
        Some(db) if label.made(&rds_tag_map(db.tag_list())) => Ok(true),
        Some(_) => Err(error(
            "DBInstanceAlreadyExists",
            format!(
                "DB instance {id} exists and was not made by recovery {}",
                label.recovery_id
            ),
        )),
        None => Ok(false),
    }
}

/// The DB instance restored from the snapshot, tagged with the label and
/// the spec's tags. Returns its identifier.
pub async fn restore_rds(
    config: &SdkConfig,
    label: &RecoveryLabel,
    spec: &RdsSpec,
) -> Result<String, CloudError> {
    let client = aws_sdk_rds::Client::new(config);
    let id = &spec.db_instance_id;
    if own_db_instance(&client, label, id).await? {
        return Ok(id.clone());
    }
    let restored = client
        .restore_db_instance_from_db_snapshot()
        .db_instance_identifier(id)
        .db_snapshot_identifier(&spec.snapshot)
        .set_db_instance_class(spec.db_instance_class.clone())
        .set_port(spec.port)
        .set_multi_az(spec.multi_az)
        .set_db_subnet_group_name(spec.subnet_group.clone())
        .set_availability_zone(spec.availability_zone.clone())
        .set_publicly_accessible(spec.publicly_accessible)
        .set_tags(Some(rds_tags(&label.tags(None, &spec.tags))))
        .send()
        .await
        .map_err(CloudError::from_sdk);
    match restored {
        Ok(_) => Ok(id.clone()),
        // A concurrent attempt of this recovery got there first.
        Err(e) if e.code.starts_with("DBInstanceAlreadyExists") => {
            own_db_instance(&client, label, id).await?;
            Ok(id.clone())
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone)]
pub struct AuroraSpec {
    pub snapshot: String,
    pub cluster_id: String,
    pub instance_id: String,
    pub instance_class: String,
    pub port: Option<i32>,
    pub subnet_group: Option<String>,
    pub availability_zone: Option<String>,
    pub publicly_accessible: Option<bool>,
    /// Creates a reader named `<instance_id>-reader` too.
    pub multi_az: bool,
    pub tags: Vec<(String, String)>,
}

/// Restores the cluster (engine read from the cluster snapshot), then creates
/// its writer instance (and the reader). Returns (cluster id, instance ids).
pub async fn restore_aurora(
    config: &SdkConfig,
    label: &RecoveryLabel,
    spec: &AuroraSpec,
) -> Result<(String, Vec<String>), CloudError> {
    let client = aws_sdk_rds::Client::new(config);
    let tags = rds_tags(&label.tags(None, &spec.tags));
    let cluster_id = &spec.cluster_id;
    let engine = match find_db_cluster(&client, cluster_id).await? {
        Some(cluster) if label.made(&rds_tag_map(cluster.tag_list())) => {
            cluster.engine().unwrap_or_default().to_string()
        }
        Some(_) => {
            return Err(error(
                "DBClusterAlreadyExistsFault",
                format!(
                    "DB cluster {cluster_id} exists and was not made by recovery {}",
                    label.recovery_id
                ),
            ))
        }
        None => {
            let snapshots = client
                .describe_db_cluster_snapshots()
                .db_cluster_snapshot_identifier(&spec.snapshot)
                .include_shared(true)
                .send()
                .await
                .map_err(CloudError::from_sdk)?;
            let engine = snapshots
                .db_cluster_snapshots()
                .first()
                .and_then(|s| s.engine())
                .ok_or_else(|| {
                    error(
                        "DBClusterSnapshotNotFoundFault",
                        format!("DB cluster snapshot {} not found", spec.snapshot),
                    )
                })?
                .to_string();
            client
                .restore_db_cluster_from_snapshot()
                .db_cluster_identifier(cluster_id)
                .snapshot_identifier(&spec.snapshot)
                .engine(&engine)
                .set_port(spec.port)
                .set_db_subnet_group_name(spec.subnet_group.clone())
                .set_availability_zones(spec.availability_zone.clone().map(|z| vec![z]))
                .set_tags(Some(tags.clone()))
                .send()
                .await
                .map_err(CloudError::from_sdk)?;
            engine
        }
    };
    let mut instances = vec![spec.instance_id.clone()];
    if spec.multi_az {
        instances.push(format!("{}-reader", spec.instance_id));
    }
    for (index, instance_id) in instances.iter().enumerate() {
        if own_db_instance(&client, label, instance_id).await? {
            continue;
        }
        // The reader goes wherever RDS puts it: another AZ than the writer.
        let zone = if index == 0 {
            spec.availability_zone.clone()
        } else {
            None
        };
        let created = client
            .create_db_instance()
            .db_instance_identifier(instance_id)
            .db_cluster_identifier(cluster_id)
            .engine(&engine)
            .db_instance_class(&spec.instance_class)
            .set_availability_zone(zone)
            .set_publicly_accessible(spec.publicly_accessible)
            .set_tags(Some(tags.clone()))
            .send()
            .await
            .map_err(CloudError::from_sdk);
        match created {
            Ok(_) => {}
            Err(e) if e.code.starts_with("DBInstanceAlreadyExists") => {
                own_db_instance(&client, label, instance_id).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((cluster_id.clone(), instances))
}

#[derive(Debug, Clone)]
pub struct RedshiftSpec {
    pub snapshot_id: String,
    /// The account owning the snapshot when it is not the caller's.
    pub snapshot_owner: Option<String>,
    pub cluster_id: String,
    pub node_type: Option<String>,
    pub port: Option<i32>,
    pub availability_zone: Option<String>,
    pub subnet_group: Option<String>,
    pub publicly_accessible: Option<bool>,
    pub tags: Vec<(String, String)>,
}

/// Restores the Redshift cluster, then tags it (RestoreFromClusterSnapshot
/// takes no tags) and removes any Safehold backup tags it came with.
/// A cluster found with the identifier is this recovery's only when it has
/// the recovery tag; an attempt interrupted between restoring and tagging
/// therefore leaves a cluster the next attempt reports as
/// "ClusterAlreadyExists".
pub async fn restore_redshift(
    config: &SdkConfig,
    label: &RecoveryLabel,
    spec: &RedshiftSpec,
) -> Result<String, CloudError> {
    let client = aws_sdk_redshift::Client::new(config);
    let id = &spec.cluster_id;
    let existing = find_redshift_cluster(&client, id).await?;
    let (tags_now, needs_tags) = match existing {
        Some(cluster) => {
            let tags = redshift_tag_map(cluster.tags());
            if !label.made(&tags) {
                return Err(error(
                    "ClusterAlreadyExists",
                    format!(
                        "Redshift cluster {id} exists and was not made by recovery {}",
                        label.recovery_id
                    ),
                ));
            }
            (tags, false)
        }
        None => {
            let cluster = client
                .restore_from_cluster_snapshot()
                .cluster_identifier(id)
                .snapshot_identifier(&spec.snapshot_id)
                .set_owner_account(spec.snapshot_owner.clone())
                .set_node_type(spec.node_type.clone())
                .set_port(spec.port)
                .set_availability_zone(spec.availability_zone.clone())
                .set_cluster_subnet_group_name(spec.subnet_group.clone())
                .set_publicly_accessible(spec.publicly_accessible)
                .send()
                .await
                .map_err(CloudError::from_sdk)?;
            let tags = cluster
                .cluster()
                .map(|c| redshift_tag_map(c.tags()))
                .unwrap_or_default();
            (tags, true)
        }
    };
    let stale: Vec<String> = tags_now
        .keys()
        .filter(|k| k.to_ascii_lowercase().starts_with("safehold:") && k.as_str() != TAG_RECOVERY)
        .cloned()
        .collect();
    if !needs_tags && stale.is_empty() {
        return Ok(id.clone());
    }
    let (partition, account) = partition_and_account(config).await?;
    let arn = format!(
        "arn:{partition}:redshift:{}:{account}:cluster:{id}",
        region(config)
    );
    if !stale.is_empty() {
        client
            .delete_tags()
            .resource_name(&arn)
            .set_tag_keys(Some(stale))
            .send()
            .await
            .map_err(CloudError::from_sdk)?;
    }
    if needs_tags {
        client
            .create_tags()
            .resource_name(&arn)
            .set_tags(Some(redshift_tags(&label.tags(None, &spec.tags))))
            .send()
            .await
            .map_err(CloudError::from_sdk)?;
    }
    Ok(id.clone())
}

#[derive(Debug, Clone)]
pub struct TableSpec {
    pub backup_arn: String,
    pub table_name: String,
    pub tags: Vec<(String, String)>,
    pub ttl_attribute: Option<String>,
}

async fn find_table(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
) -> Result<Option<aws_sdk_dynamodb::types::TableDescription>, CloudError> {
    let result = client
        .describe_table()
        .table_name(name)
        .send()
        .await
        .map_err(CloudError::from_sdk);
    Ok(absent_as_none(result)?.and_then(|out| out.table().cloned()))
}

async fn table_tags(
    client: &aws_sdk_dynamodb::Client,
    arn: &str,
) -> Result<BTreeMap<String, String>, CloudError> {
    let mut tags = BTreeMap::new();
    let mut token = None;
    loop {
        let out = client
            .list_tags_of_resource()
            .resource_arn(arn)
            .set_next_token(token)
            .send()
            .await
            .map_err(CloudError::from_sdk)?;
        for tag in out.tags() {
            tags.insert(tag.key().to_string(), tag.value().to_string());
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(tags);
        }
    }
}

async fn table_ttl(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
) -> Result<Option<String>, CloudError> {
    let out = client
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(out.time_to_live_description().and_then(|d| {
        let on = matches!(
            d.time_to_live_status().map(|s| s.as_str()),
            Some("ENABLED") | Some("ENABLING")
        );
        on.then(|| d.attribute_name().map(str::to_owned)).flatten()
    }))
}

/// Applies the missing tags of `wanted` and the TTL to an ACTIVE table.
/// Returns whether nothing was missing.
async fn settle_table(
    client: &aws_sdk_dynamodb::Client,
    table: &aws_sdk_dynamodb::types::TableDescription,
    wanted: &[(String, String)],
    ttl_attribute: Option<&str>,
) -> Result<bool, CloudError> {
    let name = table.table_name().unwrap_or_default();
    let arn = table.table_arn().unwrap_or_default();
    let tags = table_tags(client, arn).await?;
    let missing: Vec<aws_sdk_dynamodb::types::Tag> = wanted
        .iter()
        .filter(|(k, v)| tags.get(k) != Some(v))
        .map(|(k, v)| {
            aws_sdk_dynamodb::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| error("InvalidParameterValue", e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let mut settled = missing.is_empty();
    if !missing.is_empty() {
        client
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(missing))
            .send()
            .await
            .map_err(CloudError::from_sdk)?;
    }
    if let Some(attribute) = ttl_attribute {
        if table_ttl(client, name).await?.as_deref() != Some(attribute) {
            settled = false;
            let ttl = aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(attribute)
                .build()
                .map_err(|e| error("InvalidParameterValue", e.to_string()))?;
            client
                .update_time_to_live()
                .table_name(name)
                .time_to_live_specification(ttl)
                .send()
                .await
                .map_err(CloudError::from_sdk)?;
        }
    }
    Ok(settled)
}

fn is_active(table: &aws_sdk_dynamodb::types::TableDescription) -> bool {
    table.table_status() == Some(&aws_sdk_dynamodb::types::TableStatus::Active)
}

/// Restores the table from the backup, then (once ACTIVE — restoring returns
/// before) its tags and TTL. Returns the table ARN. Call again until
/// `finish_table` says done; repeating is harmless.
///
/// A table found with the name is this recovery's when it carries the
/// recovery tag or, while untagged (tags can only be set once it is
/// ACTIVE), when it was restored from this backup.
pub async fn restore_table(
    config: &SdkConfig,
    label: &RecoveryLabel,
    spec: &TableSpec,
) -> Result<String, CloudError> {
    let client = aws_sdk_dynamodb::Client::new(config);
    let name = &spec.table_name;
    let table = match find_table(&client, name).await? {
        Some(table) => {
            let from_backup = table.restore_summary().and_then(|r| r.source_backup_arn())
                == Some(spec.backup_arn.as_str());
            let ours = if is_active(&table) {
                let tags = table_tags(&client, table.table_arn().unwrap_or_default()).await?;
                label.made(&tags) || (from_backup && !tags.contains_key(TAG_RECOVERY))
            } else {
                from_backup
            };
            if !ours {
                return Err(error(
                    "TableAlreadyExistsException",
                    format!(
                        "table {name} exists and was not restored by recovery {}",
                        label.recovery_id
                    ),
                ));
            }
            table
        }
        None => client
            .restore_table_from_backup()
            .target_table_name(name)
            .backup_arn(&spec.backup_arn)
            .send()
            .await
            .map_err(CloudError::from_sdk)?
            .table_description()
            .cloned()
            .ok_or_else(|| error("InternalError", "RestoreTableFromBackup returned no table"))?,
    };
    if is_active(&table) {
        let tags = label.tags(None, &spec.tags);
        settle_table(&client, &table, &tags, spec.ttl_attribute.as_deref()).await?;
    }
    Ok(table.table_arn().unwrap_or_default().to_string())
}

/// Whether the table is ACTIVE and carries its tags and TTL (applies them
/// when it is ACTIVE and they are missing). Done also needs the
/// `safehold:recovery` tag, which only `restore_table` can apply (it knows
/// the recovery), so the caller keeps calling it until this says done.
pub async fn finish_table(config: &SdkConfig, spec: &TableSpec) -> Result<bool, CloudError> {
    let client = aws_sdk_dynamodb::Client::new(config);
    let Some(table) = find_table(&client, &spec.table_name).await? else {
        return Ok(false);
    };
    if !is_active(&table) {
        return Ok(false);
    }
    let wanted: Vec<(String, String)> = spec
        .tags
        .iter()
        .filter(|(k, _)| is_preserved(k))
        .cloned()
        .collect();
    let settled = settle_table(&client, &table, &wanted, spec.ttl_attribute.as_deref()).await?;
    let arn = table.table_arn().unwrap_or_default();
    Ok(settled && table_tags(&client, arn).await?.contains_key(TAG_RECOVERY))
}

/// What a backed-up DynamoDB table had that a restore does not bring back:
/// its tags and TTL attribute (None: TTL off).
pub async fn table_facts(
    config: &SdkConfig,
    table_name: &str,
) -> Result<(BTreeMap<String, String>, Option<String>), CloudError> {
    let client = aws_sdk_dynamodb::Client::new(config);
    let table = find_table(&client, table_name).await?.ok_or_else(|| {
        error(
            "ResourceNotFoundException",
            format!("table {table_name} not found"),
        )
    })?;
    let tags = table_tags(&client, table.table_arn().unwrap_or_default()).await?;
    Ok((tags, table_ttl(&client, table_name).await?))
}

/// "available"/"creating"/... for RDS instances, Aurora clusters, Redshift
/// clusters (by kind: "rds", "aurora", "redshift"; "dynamodb" gives the
/// table status in lower case); None if absent.
pub async fn database_status(
    config: &SdkConfig,
    kind: &str,
    id: &str,
) -> Result<Option<String>, CloudError> {
    Ok(match kind {
        "rds" => find_db_instance(&aws_sdk_rds::Client::new(config), id)
            .await?
            .map(|db| db.db_instance_status().unwrap_or_default().to_string()),
        "aurora" => find_db_cluster(&aws_sdk_rds::Client::new(config), id)
            .await?
            .map(|c| c.status().unwrap_or_default().to_string()),
        "redshift" => find_redshift_cluster(&aws_sdk_redshift::Client::new(config), id)
            .await?
            .map(|c| c.cluster_status().unwrap_or_default().to_string()),
        "dynamodb" => find_table(&aws_sdk_dynamodb::Client::new(config), id)
            .await?
            .map(|t| {
                t.table_status()
                    .map(|s| s.as_str().to_ascii_lowercase())
                    .unwrap_or_default()
            }),
        other => {
            return Err(error(
                "InvalidParameterValue",
                format!("unknown database kind {other}"),
            ))
        }
    })
}

/// Whether a DB instance / Aurora cluster / Redshift cluster / DynamoDB
/// table with this identifier exists (kind: rds, aurora, redshift,
/// dynamodb).
pub async fn identifier_taken(
    config: &SdkConfig,
    kind: &str,
    id: &str,
) -> Result<bool, CloudError> {
    Ok(database_status(config, kind, id).await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> RecoveryLabel {
        RecoveryLabel {
            tenant_id: Uuid::from_u128(1),
            recovery_id: Uuid::from_u128(2),
        }
    }

    #[test]
    fn preserved_tags_drop_aws_and_safehold_keys() {
        let mut source = BTreeMap::new();
        source.insert("AWS:cloudformation:stack-name".to_string(), "x".to_string());
        source.insert("Safehold:Backup".to_string(), "b".to_string());
        source.insert("Name".to_string(), "web".to_string());
        source.insert("team".to_string(), "ops".to_string());
        assert_eq!(
            preserved_tags(&source),
            vec![
                ("Name".to_string(), "web".to_string()),
                ("team".to_string(), "ops".to_string())
            ]
        );
    }

    #[test]
    fn label_tags_come_first_and_fit_the_limit() {
        let extra: Vec<(String, String)> = (0..60)
            .map(|i| (format!("k{i:02}"), "v".repeat(300)))
            .chain([("safehold:backup".to_string(), "b".to_string())])
            .collect();
        let tags = label().tags(Some("snap-1"), &extra);
        assert_eq!(tags.len(), MAX_TAGS);
        assert_eq!(
            tags[0],
            (TAG_RECOVERY.to_string(), Uuid::from_u128(2).to_string())
        );
        assert_eq!(
            tags[1],
            (TAG_RECOVERY_ITEM.to_string(), "snap-1".to_string())
        );
        assert!(tags
            .iter()
            .all(|(k, v)| k != "safehold:backup" && v.len() <= MAX_TAG_VALUE));
    }

    #[test]
    fn image_names_are_stable_valid_and_distinct_per_item() {
        let a = image_name(&label(), "i-0abc/x");
        assert_eq!(a, image_name(&label(), "i-0abc/x"));
        assert_ne!(a, image_name(&label(), "i-0abd"));
        assert!(a.len() <= MAX_AMI_NAME && a.ends_with("i-0abc-x"), "{a}");
        assert!(image_name(&label(), &"x".repeat(300)).len() <= MAX_AMI_NAME);
    }

    #[test]
    fn cidr_membership() {
        assert!(in_cidr("10.0.1.20", "10.0.1.0/24"));
        assert!(!in_cidr("10.0.2.20", "10.0.1.0/24"));
        assert!(in_cidr("10.9.9.9", "0.0.0.0/0"));
        assert!(!in_cidr("not-an-ip", "10.0.1.0/24"));
    }
}
