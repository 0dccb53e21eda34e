//! The AWS side of a backup: creating artifacts (EBS snapshots, AMIs, RDS,
//! Aurora and Redshift snapshots, DynamoDB backups), following their state,
//! deleting or expiring them, and checking that their sources still exist.
//!
//! Every creating call first looks for what an earlier attempt of the same
//! step made (EC2: by tags; RDS, Aurora, Redshift, DynamoDB: by a name derived
//! from the backup and the source), so a retried step never duplicates one.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_config::SdkConfig;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{caller_identity, CloudError};

pub const TAG_TENANT: &str = "safehold:tenant";
pub const TAG_BACKUP: &str = "safehold:backup";
pub const TAG_POLICY: &str = "safehold:policy";
pub const TAG_TARGET: &str = "safehold:target";
pub const TAG_EXPIRED_AT: &str = "safehold:expired-at";

/// EC2, RDS and Redshift allow 50 tags per resource.
const MAX_TAGS: usize = 50;
/// Leaves room for Safehold's four keys and the expiry marker added later.
const MAX_COPIED_TAGS: usize = MAX_TAGS - 5;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;
/// EBS snapshot and AMI descriptions.
const MAX_DESCRIPTION: usize = 255;
const MAX_AMI_NAME: usize = 128;
/// RDS DB cluster snapshot identifiers are the strictest of the RDS and
/// Redshift snapshot identifiers.
const MAX_SNAPSHOT_IDENTIFIER: usize = 63;
const MAX_DYNAMODB_BACKUP_NAME: usize = 255;
/// Bounds the number of filter values in one request.
const FILTER_BATCH: usize = 100;
/// Batched describe calls in flight at once.
const DESCRIBE_CONCURRENCY: usize = 4;
/// What AWS writes as the description of a snapshot CreateImage makes.
const CREATE_IMAGE_DESCRIPTION: &str = "Created by CreateImage(";

/// Tags put on everything Safehold creates; also how a retried step finds
/// what it already made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupLabel {
    pub tenant_id: Uuid,
    pub backup_id: Uuid,
    pub policy_id: Uuid,
    pub policy_name: String,
    /// `kind:region:resource_id`
    pub target: String,
}

impl BackupLabel {
    /// The description of EBS snapshots and AMIs (the other services have
    /// none for their snapshots).
    pub fn description(&self) -> String {
        truncate(
            &format!(
                "Safehold backup of {} by policy {}",
                self.target, self.policy_name
            ),
            MAX_DESCRIPTION,
        )
    }

    /// Safehold's keys, then the source's own tags (Name first) except AWS's
    /// and Safehold's, within the per-resource tag limit.
    fn tags(&self, source: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut tags = vec![
            (TAG_TENANT.to_string(), self.tenant_id.to_string()),
            (TAG_BACKUP.to_string(), self.backup_id.to_string()),
            (TAG_POLICY.to_string(), self.policy_id.to_string()),
            (
                TAG_TARGET.to_string(),
                truncate(&self.target, MAX_TAG_VALUE),
            ),
        ];
        let copied = source
            .get_key_value("Name")
            .into_iter()
            .chain(source.iter().filter(|(k, _)| k.as_str() != "Name"))
            .filter(|(k, _)| {
                let lower = k.to_ascii_lowercase();
                !lower.starts_with("aws:")
                    && !lower.starts_with("safehold:")
                    && k.chars().count() <= MAX_TAG_KEY
            })
            .take(MAX_COPIED_TAGS)
            .map(|(k, v)| (k.clone(), truncate(v, MAX_TAG_VALUE)));
        tags.extend(copied);
        tags
    }

    /// A name unique to this backup and source: the backup id's first eight
    /// hex digits for people, a digest of both for uniqueness, then the
    /// source as far as it fits.
    fn artifact_name(&self, source: &str, rules: NameRules) -> String {
        let backup = self.backup_id.simple().to_string();
        let digest = Uuid::new_v5(&self.backup_id, source.as_bytes())
            .simple()
            .to_string();
        let prefix = format!("safehold-{}-{}-", &backup[..8], &digest[..12]);
        let mut rest = String::new();
        for c in source.chars() {
            let c = match rules {
                NameRules::Identifier if c.is_ascii_alphanumeric() => c.to_ascii_lowercase(),
                NameRules::Identifier => '-',
                NameRules::Ami | NameRules::DynamoDb
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') =>
                {
                    c
                }
                NameRules::Ami | NameRules::DynamoDb => '-',
            };
            // RDS and Redshift reject two hyphens in a row.
            if c == '-' && rest.ends_with('-') && rules == NameRules::Identifier {
                continue;
            }
            rest.push(c);
        }
        if rules == NameRules::Identifier {
            rest = rest.trim_start_matches('-').to_string();
        }
        let room = rules.max_len() - prefix.len();
        let mut name: String = prefix.chars().chain(rest.chars().take(room)).collect();
        // RDS and Redshift reject a trailing hyphen.
        while name.ends_with('-') {
            name.pop();
        }
        name
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NameRules {
    /// RDS, Aurora and Redshift snapshot identifiers: lowercase letters,
    /// digits and single hyphens, starting with a letter.
    Identifier,
    Ami,
    DynamoDb,
}

impl NameRules {
    fn max_len(self) -> usize {
        match self {
            NameRules::Identifier => MAX_SNAPSHOT_IDENTIFIER,
            NameRules::Ami => MAX_AMI_NAME,
            NameRules::DynamoDb => MAX_DYNAMODB_BACKUP_NAME,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    EbsSnapshot,
    Ami,
    RdsSnapshot,
    AuroraSnapshot,
    RedshiftSnapshot,
    DynamodbBackup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactState {
    Pending,
    Available,
    Failed,
}

/// Something a backup created in AWS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub kind: ArtifactKind,
    /// Snapshot id, AMI id, RDS or Redshift snapshot identifier, or DynamoDB
    /// backup ARN.
    pub id: String,
    /// Volume id, instance id, DB instance or cluster id, or table name.
    pub source: String,
    /// For EBS snapshots taken from an instance: the volume's device name.
    pub device: Option<String>,
    pub size_gib: Option<i32>,
    pub state: ArtifactState,
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

pub(crate) fn error(code: &str, message: impl Into<String>) -> CloudError {
    CloudError {
        code: code.to_string(),
        message: message.into(),
    }
}

/// Error codes meaning "it is not there (any more)". `DBSnapshotNotFoundFault`
/// is what moto answers where AWS says `DBSnapshotNotFound`.
fn is_gone(error: &CloudError) -> bool {
    matches!(
        error.code.as_str(),
        "InvalidSnapshot.NotFound"
            | "InvalidAMIID.NotFound"
            | "InvalidAMIID.Unavailable"
            | "InvalidInstanceID.NotFound"
            | "InvalidVolume.NotFound"
            | "DBSnapshotNotFound"
            | "DBSnapshotNotFoundFault"
            | "DBClusterSnapshotNotFoundFault"
            | "DBInstanceNotFound"
            | "DBInstanceNotFoundFault"
            | "DBClusterNotFoundFault"
            | "ClusterSnapshotNotFound"
            | "ClusterNotFound"
            | "BackupNotFoundException"
            | "ResourceNotFoundException"
            | "TableNotFoundException"
    )
}

/// Ok(None) when the call failed because the thing is not there.
pub(crate) fn absent_as_none<T>(result: Result<T, CloudError>) -> Result<Option<T>, CloudError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn tag_map<'a>(
    pairs: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| Some((k?.to_string(), v.unwrap_or_default().to_string())))
        .collect()
}

pub(crate) fn ec2_tag_map(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tag_map(tags.iter().map(|t| (t.key(), t.value())))
}

pub(crate) fn rds_tag_map(tags: &[aws_sdk_rds::types::Tag]) -> BTreeMap<String, String> {
    tag_map(tags.iter().map(|t| (t.key(), t.value())))
}

pub(crate) fn redshift_tag_map(tags: &[aws_sdk_redshift::types::Tag]) -> BTreeMap<String, String> {
    tag_map(tags.iter().map(|t| (t.key(), t.value())))
}

pub(crate) fn ec2_tag_spec(
    resource: aws_sdk_ec2::types::ResourceType,
    tags: &[(String, String)],
) -> aws_sdk_ec2::types::TagSpecification {
    tags.iter()
        .fold(
            aws_sdk_ec2::types::TagSpecification::builder().resource_type(resource),
            |spec, (k, v)| spec.tags(aws_sdk_ec2::types::Tag::builder().key(k).value(v).build()),
        )
        .build()
}

pub(crate) fn rds_tags(tags: &[(String, String)]) -> Vec<aws_sdk_rds::types::Tag> {
    tags.iter()
        .map(|(k, v)| aws_sdk_rds::types::Tag::builder().key(k).value(v).build())
        .collect()
}

pub(crate) fn redshift_tags(tags: &[(String, String)]) -> Vec<aws_sdk_redshift::types::Tag> {
    tags.iter()
        .map(|(k, v)| {
            aws_sdk_redshift::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
        })
        .collect()
}

pub(crate) fn ec2_filter(name: &str, values: &[impl AsRef<str>]) -> aws_sdk_ec2::types::Filter {
    values
        .iter()
        .fold(aws_sdk_ec2::types::Filter::builder().name(name), |f, v| {
            f.values(v.as_ref())
        })
        .build()
}

pub(crate) fn rds_filter(name: &str, values: &[String]) -> aws_sdk_rds::types::Filter {
    aws_sdk_rds::types::Filter::builder()
        .name(name)
        .set_values(Some(values.to_vec()))
        .build()
}

fn label_filters(label: &BackupLabel) -> Vec<aws_sdk_ec2::types::Filter> {
    vec![
        ec2_filter(&format!("tag:{TAG_BACKUP}"), &[label.backup_id.to_string()]),
        ec2_filter(&format!("tag:{TAG_TARGET}"), &[&label.target]),
    ]
}

fn gib_from_bytes(bytes: i64) -> i32 {
    ((bytes + (1 << 30) - 1) >> 30) as i32
}

fn gib_from_megabytes(megabytes: f64) -> i32 {
    (megabytes / 1024.0).ceil() as i32
}

/// An artifact found by name must belong to this backup and source: a
/// different owner means the name is taken by something else.
fn check_found(
    label: &BackupLabel,
    name: &str,
    tags: &BTreeMap<String, String>,
    found_source: Option<&str>,
    source: &str,
) -> Result<(), CloudError> {
    let other_backup = tags
        .get(TAG_BACKUP)
        .is_some_and(|b| *b != label.backup_id.to_string());
    let other_source = found_source.is_some_and(|s| !s.eq_ignore_ascii_case(source));
    if other_backup || other_source {
        return Err(error(
            "ArtifactNameConflict",
            format!(
                "{name} exists but was not made by backup {} of {source}",
                label.backup_id
            ),
        ));
    }
    Ok(())
}

pub(crate) fn ebs_state(state: Option<&aws_sdk_ec2::types::SnapshotState>) -> ArtifactState {
    match state.map(|s| s.as_str()) {
        Some("completed") => ArtifactState::Available,
        Some("pending") | Some("recovering") => ArtifactState::Pending,
        _ => ArtifactState::Failed,
    }
}

pub(crate) fn image_state(state: Option<&aws_sdk_ec2::types::ImageState>) -> ArtifactState {
    match state.map(|s| s.as_str()) {
        Some("available") => ArtifactState::Available,
        Some("pending") | Some("transient") => ArtifactState::Pending,
        _ => ArtifactState::Failed,
    }
}

/// RDS, Aurora and Redshift snapshot statuses.
pub(crate) fn snapshot_status(status: Option<&str>) -> ArtifactState {
    match status.map(str::to_ascii_lowercase).as_deref() {
        Some("available") => ArtifactState::Available,
        Some("creating")
        | Some("copying")
        | Some("pending")
        | Some("modifying")
        | Some("upgrading")
        | Some("final snapshot") => ArtifactState::Pending,
        _ => ArtifactState::Failed,
    }
}

fn dynamodb_state(status: Option<&aws_sdk_dynamodb::types::BackupStatus>) -> ArtifactState {
    match status.map(|s| s.as_str()) {
        Some("AVAILABLE") => ArtifactState::Available,
        Some("CREATING") => ArtifactState::Pending,
        _ => ArtifactState::Failed,
    }
}

// ---------------------------------------------------------------------------
// EC2
// ---------------------------------------------------------------------------

pub(crate) async fn describe_instance(
    client: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> Result<aws_sdk_ec2::types::Instance, CloudError> {
    let out = client
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(instance_id))
        .cloned()
        .ok_or_else(|| {
            error(
                "InvalidInstanceID.NotFound",
                format!("instance {instance_id} not found"),
            )
        })
}

/// Own snapshots carrying the label, oldest first, excluding those CreateImage
/// made (they belong to an AMI).
async fn labelled_snapshots(
    client: &aws_sdk_ec2::Client,
    label: &BackupLabel,
) -> Result<Vec<aws_sdk_ec2::types::Snapshot>, CloudError> {
    let pages = client
        .describe_snapshots()
        .owner_ids("self")
        .set_filters(Some(label_filters(label)))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    let mut snapshots: Vec<_> = pages
        .iter()
        .flat_map(|p| p.snapshots())
        .filter(|s| {
            !s.description()
                .unwrap_or_default()
                .starts_with(CREATE_IMAGE_DESCRIPTION)
        })
        .cloned()
        .collect();
    snapshots.sort_by_key(|s| s.start_time().map(|t| (t.secs(), t.subsec_nanos())));
    Ok(snapshots)
}

pub(crate) async fn own_images(
    client: &aws_sdk_ec2::Client,
    filters: Vec<aws_sdk_ec2::types::Filter>,
) -> Result<Vec<aws_sdk_ec2::types::Image>, CloudError> {
    let pages = client
        .describe_images()
        .owners("self")
        .set_filters(Some(filters))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(pages.iter().flat_map(|p| p.images()).cloned().collect())
}

fn image_artifact(image: &aws_sdk_ec2::types::Image, instance_id: &str) -> Artifact {
    let sizes: Vec<i32> = image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs()?.volume_size())
        .collect();
    Artifact {
        kind: ArtifactKind::Ami,
        id: image.image_id().unwrap_or_default().to_string(),
        source: instance_id.to_string(),
        device: None,
        size_gib: (!sizes.is_empty()).then(|| sizes.iter().sum()),
        state: image_state(image.state()),
    }
}

pub(crate) fn image_snapshot_ids(image: &aws_sdk_ec2::types::Image) -> Vec<String> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_owned))
        .collect()
}

/// Snapshots CreateImage made for `image_id` (AWS describes them as
/// `Created by CreateImage(i-...) for ami-...`), also after the image is gone.
async fn snapshots_made_for_image(
    client: &aws_sdk_ec2::Client,
    image_id: &str,
) -> Result<Vec<String>, CloudError> {
    let pattern = format!("{CREATE_IMAGE_DESCRIPTION}*) for {image_id}*");
    let pages = client
        .describe_snapshots()
        .owner_ids("self")
        .filters(ec2_filter("description", &[pattern]))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    let marker = format!(" for {image_id}");
    Ok(pages
        .iter()
        .flat_map(|p| p.snapshots())
        .filter(|s| {
            // The wildcard would also match a longer image id.
            let description = s.description().unwrap_or_default();
            description.find(&marker).is_some_and(|at| {
                let rest = &description[at + marker.len()..];
                rest.is_empty() || rest.starts_with(' ')
            })
        })
        .filter_map(|s| s.snapshot_id().map(str::to_owned))
        .collect())
}

async fn delete_ebs_snapshot(client: &aws_sdk_ec2::Client, id: &str) -> Result<(), CloudError> {
    let result = client
        .delete_snapshot()
        .snapshot_id(id)
        .send()
        .await
        .map_err(CloudError::from_sdk);
    absent_as_none(result).map(|_| ())
}

/// Snapshot of one EBS volume, tagged with the label and the volume's tags.
pub async fn snapshot_volume(
    config: &SdkConfig,
    label: &BackupLabel,
    volume_id: &str,
) -> Result<Artifact, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let artifact = |id: &str, size: Option<i32>, state| Artifact {
        kind: ArtifactKind::EbsSnapshot,
        id: id.to_string(),
        source: volume_id.to_string(),
        device: None,
        size_gib: size,
        state,
    };
    let existing = labelled_snapshots(&client, label).await?;
    if let Some(found) = existing.iter().find(|s| s.volume_id() == Some(volume_id)) {
        return Ok(artifact(
            found.snapshot_id().unwrap_or_default(),
            found.volume_size(),
            ebs_state(found.state()),
        ));
    }
    let volumes = client
        .describe_volumes()
        .volume_ids(volume_id)
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    let volume = volumes.volumes().first().ok_or_else(|| {
        error(
            "InvalidVolume.NotFound",
            format!("volume {volume_id} not found"),
        )
    })?;
    let tags = label.tags(&ec2_tag_map(volume.tags()));
    let out = client
        .create_snapshot()
        .volume_id(volume_id)
        .description(label.description())
        .tag_specifications(ec2_tag_spec(
            aws_sdk_ec2::types::ResourceType::Snapshot,
            &tags,
        ))
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(artifact(
        out.snapshot_id().unwrap_or_default(),
        out.volume_size().or(volume.size()),
        ebs_state(out.state()),
    ))
}

/// Which of an instance's volumes a snapshot set covers, by device name.
#[derive(Debug, Clone, Copy)]
pub enum DeviceSelection<'a> {
    All,
    /// Only these devices: worked out from the instance as it is now, so a
    /// volume attached since the last discovery is left out too.
    Include(&'a [String]),
    /// Every device but these.
    Exclude(&'a [String]),
}

/// Like `snapshot_instance`, keeping only the volumes at `include_devices`.
pub async fn snapshot_instance_including(
    config: &SdkConfig,
    label: &BackupLabel,
    instance_id: &str,
    include_devices: &[String],
) -> Result<Vec<Artifact>, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let instance = describe_instance(&client, instance_id).await?;
    let made = labelled_snapshots(&client, label).await?;
    snapshot_described_instance(
        config,
        label,
        &instance,
        DeviceSelection::Include(include_devices),
        made,
    )
    .await
}

/// Crash-consistent snapshots of an instance's EBS volumes in one
/// CreateSnapshots call, leaving out the volumes at `exclude_devices`
/// (excluding the root device sets ExcludeBootVolume). Tagged with the label
/// and the instance's tags.
pub async fn snapshot_instance(
    config: &SdkConfig,
    label: &BackupLabel,
    instance_id: &str,
    exclude_devices: &[String],
) -> Result<Vec<Artifact>, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let instance = describe_instance(&client, instance_id).await?;
    let made = labelled_snapshots(&client, label).await?;
    snapshot_described_instance(
        config,
        label,
        &instance,
        DeviceSelection::Exclude(exclude_devices),
        made,
    )
    .await
}

/// The instances among `batch`: looked up by id, and when one of them no
/// longer exists (AWS then fails the whole call) by a filter, which leaves
/// unknown ids out.
pub(crate) async fn describe_instance_batch(
    client: &aws_sdk_ec2::Client,
    batch: &[String],
) -> Result<Vec<aws_sdk_ec2::types::Instance>, CloudError> {
    let instances =
        |pages: Vec<aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput>| {
            pages
                .iter()
                .flat_map(|p| p.reservations())
                .flat_map(|r| r.instances())
                .cloned()
                .collect::<Vec<_>>()
        };
    let by_id = client
        .describe_instances()
        .set_instance_ids(Some(batch.to_vec()))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk);
    match by_id {
        Ok(pages) => Ok(instances(pages)),
        Err(e) if e.code.starts_with("InvalidInstanceID") => {
            let pages = client
                .describe_instances()
                .filters(ec2_filter("instance-id", batch))
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(CloudError::from_sdk)?;
            Ok(instances(pages))
        }
        Err(e) => Err(e),
    }
}

/// Live instances (not terminated or shutting down) among `ids`, with their
/// volumes and tags: one call per hundred instances, so a round checks that
/// its instances exist and learns what to snapshot without a call per
/// instance.
pub async fn describe_live_instances(
    config: &SdkConfig,
    ids: &[String],
) -> Result<HashMap<String, aws_sdk_ec2::types::Instance>, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let describing = ids
        .chunks(FILTER_BATCH)
        .map(|batch| describe_instance_batch(&client, batch))
        .collect::<Vec<_>>();
    let pages: Vec<Result<Vec<_>, CloudError>> = futures::stream::iter(describing)
        .buffer_unordered(DESCRIBE_CONCURRENCY)
        .collect()
        .await;
    let mut live = HashMap::new();
    for instances in pages {
        for instance in instances? {
            let gone = matches!(
                instance.state().and_then(|s| s.name()).map(|n| n.as_str()),
                Some("terminated") | Some("shutting-down")
            );
            if let (Some(id), false) = (instance.instance_id().map(str::to_owned), gone) {
                live.insert(id, instance);
            }
        }
    }
    Ok(live)
}

/// A snapshot's tags.
pub async fn snapshot_tags(
    config: &SdkConfig,
    snapshot_id: &str,
) -> Result<BTreeMap<String, String>, CloudError> {
    let out = aws_sdk_ec2::Client::new(config)
        .describe_snapshots()
        .snapshot_ids(snapshot_id)
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(out
        .snapshots()
        .first()
        .map(|s| ec2_tag_map(s.tags()))
        .unwrap_or_default())
}

/// What a backup records about an instance for its recovery defaults.
pub fn instance_record(
    instance: &aws_sdk_ec2::types::Instance,
) -> safehold_domain::source::InstanceRecord {
    let text = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
    safehold_domain::source::InstanceRecord {
        instance_type: instance
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        image_id: text(instance.image_id()),
        key_name: text(instance.key_name()),
        availability_zone: text(instance.placement().and_then(|p| p.availability_zone())),
        subnet_id: text(instance.subnet_id()),
        vpc_id: text(instance.vpc_id()),
        private_ip: text(instance.private_ip_address()),
        security_group_ids: instance
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect(),
        public_ip: instance.public_ip_address().is_some(),
        root_device_name: text(instance.root_device_name()),
        architecture: instance.architecture().map(|a| a.as_str().to_string()),
        platform: instance.platform().map(|p| p.as_str().to_string()),
        ebs_optimized: instance.ebs_optimized().unwrap_or(false),
        monitoring: instance
            .monitoring()
            .and_then(|m| m.state())
            .is_some_and(|s| s.as_str() == "enabled"),
        tenancy: instance
            .placement()
            .and_then(|p| p.tenancy())
            .map(|t| t.as_str().to_string()),
        instance_profile_arn: text(instance.iam_instance_profile().and_then(|p| p.arn())),
        tags: ec2_tag_map(instance.tags()),
        volumes: instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| {
                let ebs = m.ebs()?;
                Some(safehold_domain::source::InstanceVolume {
                    device: m.device_name()?.to_string(),
                    volume_id: ebs.volume_id()?.to_string(),
                    delete_on_termination: ebs.delete_on_termination().unwrap_or(false),
                })
            })
            .collect(),
    }
}

/// The EBS snapshots an earlier attempt already made for a backup in this
/// region, by the `safehold:target` tag (snapshots CreateImage made for an
/// AMI excluded): what a repeated round takes instead of creating anew.
pub async fn backup_snapshots(
    config: &SdkConfig,
    backup_id: Uuid,
) -> Result<HashMap<String, Vec<aws_sdk_ec2::types::Snapshot>>, CloudError> {
    let pages = aws_sdk_ec2::Client::new(config)
        .describe_snapshots()
        .owner_ids("self")
        .filters(ec2_filter(
            &format!("tag:{TAG_BACKUP}"),
            &[backup_id.to_string()],
        ))
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    let mut by_target: HashMap<String, Vec<aws_sdk_ec2::types::Snapshot>> = HashMap::new();
    for snapshot in pages.iter().flat_map(|p| p.snapshots()) {
        if snapshot
            .description()
            .unwrap_or_default()
            .starts_with(CREATE_IMAGE_DESCRIPTION)
        {
            continue;
        }
        let target = snapshot
            .tags()
            .iter()
            .find(|t| t.key() == Some(TAG_TARGET))
            .and_then(|t| t.value());
        if let Some(target) = target {
            by_target
                .entry(target.to_string())
                .or_default()
                .push(snapshot.clone());
        }
    }
    Ok(by_target)
}

impl BackupLabel {
    /// The value of the `safehold:target` tag, as AWS stores it.
    pub fn target_tag(&self) -> String {
        truncate(&self.target, MAX_TAG_VALUE)
    }
}

/// The snapshots of a described instance's selected volumes: those in
/// `already_made` (what an earlier attempt of this step created), or else
/// one CreateSnapshots call.
pub async fn snapshot_described_instance(
    config: &SdkConfig,
    label: &BackupLabel,
    instance: &aws_sdk_ec2::types::Instance,
    selection: DeviceSelection<'_>,
    already_made: Vec<aws_sdk_ec2::types::Snapshot>,
) -> Result<Vec<Artifact>, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let instance_id = instance.instance_id().unwrap_or_default();
    let devices: HashMap<String, String> = instance
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            Some((
                m.ebs()?.volume_id()?.to_string(),
                m.device_name()?.to_string(),
            ))
        })
        .collect();
    let is_excluded = |device: &str| match selection {
        DeviceSelection::All => false,
        DeviceSelection::Include(include) => !include.iter().any(|d| d == device),
        DeviceSelection::Exclude(exclude) => exclude.iter().any(|d| d == device),
    };
    let excluded: HashSet<&str> = devices
        .iter()
        .filter(|(_, device)| is_excluded(device))
        .map(|(volume, _)| volume.as_str())
        .collect();
    if devices.len() == excluded.len() {
        return Err(error(
            "NoVolumesSelected",
            format!("every EBS volume of {instance_id} is excluded"),
        ));
    }
    let root = instance.root_device_name();
    let exclude_boot = root.is_some_and(is_excluded);
    // (snapshot id, volume id, size, state)
    let mut snapshots: Vec<(String, String, Option<i32>, ArtifactState)> = already_made
        .iter()
        .map(|s| {
            (
                s.snapshot_id().unwrap_or_default().to_string(),
                s.volume_id().unwrap_or_default().to_string(),
                s.volume_size(),
                ebs_state(s.state()),
            )
        })
        .collect();
    if snapshots.is_empty() {
        let data_excluded: Vec<String> = devices
            .iter()
            .filter(|(volume, device)| {
                excluded.contains(volume.as_str()) && Some(device.as_str()) != root
            })
            .map(|(volume, _)| volume.clone())
            .collect();
        let spec = aws_sdk_ec2::types::InstanceSpecification::builder()
            .instance_id(instance_id)
            .exclude_boot_volume(exclude_boot)
            .set_exclude_data_volume_ids((!data_excluded.is_empty()).then_some(data_excluded))
            .build();
        let tags = label.tags(&ec2_tag_map(instance.tags()));
        let out = client
            .create_snapshots()
            .instance_specification(spec)
            .description(label.description())
            .tag_specifications(ec2_tag_spec(
                aws_sdk_ec2::types::ResourceType::Snapshot,
                &tags,
            ))
            .send()
            .await
            .map_err(CloudError::from_sdk)?;
        snapshots = out
            .snapshots()
            .iter()
            .map(|s| {
                (
                    s.snapshot_id().unwrap_or_default().to_string(),
                    s.volume_id().unwrap_or_default().to_string(),
                    s.volume_size(),
                    ebs_state(s.state()),
                )
            })
            .collect();
    }
    // A snapshot of an excluded volume (the emulator ignores
    // ExcludeDataVolumeIds) is not part of the backup; it is removed so it
    // neither costs money nor escapes retention.
    let mut artifacts = Vec::new();
    for (id, volume, size, state) in snapshots {
        if excluded.contains(volume.as_str()) {
            if let Err(e) = delete_ebs_snapshot(&client, &id).await {
                tracing::warn!(snapshot = %id, error = %e, "could not delete snapshot of an excluded volume");
            }
            continue;
        }
        artifacts.push(Artifact {
            kind: ArtifactKind::EbsSnapshot,
            id,
            device: devices.get(&volume).cloned(),
            source: volume,
            size_gib: size,
            state,
        });
    }
    Ok(artifacts)
}

/// An AMI of the instance (CreateImage, NoReboot = !reboot); the image and
/// its snapshots carry the label and the instance's tags.
pub async fn image_instance(
    config: &SdkConfig,
    label: &BackupLabel,
    instance_id: &str,
    reboot: bool,
) -> Result<Artifact, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    if let Some(image) = own_images(&client, label_filters(label)).await?.first() {
        return Ok(image_artifact(image, instance_id));
    }
    let instance = describe_instance(&client, instance_id).await?;
    let tags = label.tags(&ec2_tag_map(instance.tags()));
    let name = label.artifact_name(instance_id, NameRules::Ami);
    let created = client
        .create_image()
        .instance_id(instance_id)
        .name(&name)
        .description(label.description())
        .no_reboot(!reboot)
        .tag_specifications(ec2_tag_spec(aws_sdk_ec2::types::ResourceType::Image, &tags))
        .tag_specifications(ec2_tag_spec(
            aws_sdk_ec2::types::ResourceType::Snapshot,
            &tags,
        ))
        .send()
        .await
        .map_err(CloudError::from_sdk);
    let image_id = match created {
        Ok(out) => out.image_id().map(str::to_owned),
        // The name is this backup's: an earlier attempt made the image.
        Err(e) if e.code == "InvalidAMIName.Duplicate" => None,
        Err(e) => return Err(e),
    };
    let filter = match &image_id {
        Some(id) => ec2_filter("image-id", &[id]),
        None => ec2_filter("name", &[&name]),
    };
    match (own_images(&client, vec![filter]).await?.first(), image_id) {
        (Some(image), _) => Ok(image_artifact(image, instance_id)),
        // Not yet visible to DescribeImages.
        (None, Some(id)) => Ok(Artifact {
            kind: ArtifactKind::Ami,
            id,
            source: instance_id.to_string(),
            device: None,
            size_gib: None,
            state: ArtifactState::Pending,
        }),
        (None, None) => Err(error(
            "InvalidAMIName.Duplicate",
            format!("an image named {name} exists but is not visible"),
        )),
    }
}

// ---------------------------------------------------------------------------
// RDS and Aurora
// ---------------------------------------------------------------------------

pub(crate) async fn find_db_snapshot(
    client: &aws_sdk_rds::Client,
    identifier: &str,
) -> Result<Option<aws_sdk_rds::types::DbSnapshot>, CloudError> {
    // A filter answers an empty list where the identifier parameter fails.
    let out = client
        .describe_db_snapshots()
        .filters(rds_filter("db-snapshot-id", &[identifier.to_string()]))
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(out.db_snapshots().first().cloned())
}

pub(crate) async fn find_db_cluster_snapshot(
    client: &aws_sdk_rds::Client,
    identifier: &str,
) -> Result<Option<aws_sdk_rds::types::DbClusterSnapshot>, CloudError> {
    let out = client
        .describe_db_cluster_snapshots()
        .filters(rds_filter(
            "db-cluster-snapshot-id",
            &[identifier.to_string()],
        ))
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(out.db_cluster_snapshots().first().cloned())
}

fn rds_artifact(snapshot: &aws_sdk_rds::types::DbSnapshot, source: &str) -> Artifact {
    Artifact {
        kind: ArtifactKind::RdsSnapshot,
        id: snapshot
            .db_snapshot_identifier()
            .unwrap_or_default()
            .to_string(),
        source: source.to_string(),
        device: None,
        size_gib: snapshot.allocated_storage(),
        state: snapshot_status(snapshot.status()),
    }
}

fn aurora_artifact(snapshot: &aws_sdk_rds::types::DbClusterSnapshot, source: &str) -> Artifact {
    Artifact {
        kind: ArtifactKind::AuroraSnapshot,
        id: snapshot
            .db_cluster_snapshot_identifier()
            .unwrap_or_default()
            .to_string(),
        source: source.to_string(),
        device: None,
        size_gib: snapshot.allocated_storage(),
        state: snapshot_status(snapshot.status()),
    }
}

/// Manual snapshot of an RDS DB instance, named from the backup and the
/// instance, tagged with the label and the instance's tags.
pub async fn snapshot_rds(
    config: &SdkConfig,
    label: &BackupLabel,
    db_instance_id: &str,
) -> Result<Artifact, CloudError> {
    let client = aws_sdk_rds::Client::new(config);
    let name = label.artifact_name(db_instance_id, NameRules::Identifier);
    let found = |snapshot: aws_sdk_rds::types::DbSnapshot| {
        check_found(
            label,
            &name,
            &rds_tag_map(snapshot.tag_list()),
            snapshot.db_instance_identifier(),
            db_instance_id,
        )?;
        Ok(rds_artifact(&snapshot, db_instance_id))
    };
    if let Some(snapshot) = find_db_snapshot(&client, &name).await? {
        return found(snapshot);
    }
    let instances = client
        .describe_db_instances()
        .db_instance_identifier(db_instance_id)
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    let source_tags = instances
        .db_instances()
        .first()
        .map(|db| rds_tag_map(db.tag_list()))
        .unwrap_or_default();
    let created = client
        .create_db_snapshot()
        .db_snapshot_identifier(&name)
        .db_instance_identifier(db_instance_id)
        .set_tags(Some(rds_tags(&label.tags(&source_tags))))
        .send()
        .await
        .map_err(CloudError::from_sdk);
    match created {
        Ok(out) => match out.db_snapshot() {
            Some(snapshot) => Ok(rds_artifact(snapshot, db_instance_id)),
            None => find_db_snapshot(&client, &name)
                .await?
                .map(found)
                .unwrap_or_else(|| Err(error("DBSnapshotNotFound", name.clone()))),
        },
        // A concurrent attempt made it between the lookup and the create.
        Err(e) if e.code == "DBSnapshotAlreadyExists" => find_db_snapshot(&client, &name)
            .await?
            .map(found)
            .unwrap_or(Err(e)),
        Err(e) => Err(e),
    }
}

/// Manual snapshot of an Aurora DB cluster, named from the backup and the
/// cluster, tagged with the label and the cluster's tags.
pub async fn snapshot_aurora(
    config: &SdkConfig,
    label: &BackupLabel,
    cluster_id: &str,
) -> Result<Artifact, CloudError> {
    let client = aws_sdk_rds::Client::new(config);
    let name = label.artifact_name(cluster_id, NameRules::Identifier);
    let found = |snapshot: aws_sdk_rds::types::DbClusterSnapshot| {
        check_found(
            label,
            &name,
            &rds_tag_map(snapshot.tag_list()),
            snapshot.db_cluster_identifier(),
            cluster_id,
        )?;
        Ok(aurora_artifact(&snapshot, cluster_id))
    };
    if let Some(snapshot) = find_db_cluster_snapshot(&client, &name).await? {
        return found(snapshot);
    }
    let clusters = client
        .describe_db_clusters()
        .db_cluster_identifier(cluster_id)
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    let source_tags = clusters
        .db_clusters()
        .first()
        .map(|c| rds_tag_map(c.tag_list()))
        .unwrap_or_default();
    let created = client
        .create_db_cluster_snapshot()
        .db_cluster_snapshot_identifier(&name)
        .db_cluster_identifier(cluster_id)
        .set_tags(Some(rds_tags(&label.tags(&source_tags))))
        .send()
        .await
        .map_err(CloudError::from_sdk);
    match created {
        Ok(out) => match out.db_cluster_snapshot() {
            Some(snapshot) => Ok(aurora_artifact(snapshot, cluster_id)),
            None => find_db_cluster_snapshot(&client, &name)
                .await?
                .map(found)
                .unwrap_or_else(|| Err(error("DBClusterSnapshotNotFoundFault", name.clone()))),
        },
        Err(e) if e.code == "DBClusterSnapshotAlreadyExistsFault" => {
            find_db_cluster_snapshot(&client, &name)
                .await?
                .map(found)
                .unwrap_or(Err(e))
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// Redshift
// ---------------------------------------------------------------------------

async fn find_redshift_snapshot(
    client: &aws_sdk_redshift::Client,
    identifier: &str,
) -> Result<Option<aws_sdk_redshift::types::Snapshot>, CloudError> {
    let result = client
        .describe_cluster_snapshots()
        .snapshot_identifier(identifier)
        .send()
        .await
        .map_err(CloudError::from_sdk);
    Ok(absent_as_none(result)?.and_then(|out| {
        out.snapshots()
            .iter()
            .find(|s| s.snapshot_identifier() == Some(identifier))
            .cloned()
    }))
}

fn redshift_artifact(snapshot: &aws_sdk_redshift::types::Snapshot, source: &str) -> Artifact {
    Artifact {
        kind: ArtifactKind::RedshiftSnapshot,
        id: snapshot
            .snapshot_identifier()
            .unwrap_or_default()
            .to_string(),
        source: source.to_string(),
        device: None,
        size_gib: snapshot
            .total_backup_size_in_mega_bytes()
            .filter(|mb| *mb > 0.0)
            .map(gib_from_megabytes),
        state: snapshot_status(snapshot.status()),
    }
}

/// Manual snapshot of a Redshift cluster, named from the backup and the
/// cluster, tagged with the label and the cluster's tags.
pub async fn snapshot_redshift(
    config: &SdkConfig,
    label: &BackupLabel,
    cluster_id: &str,
) -> Result<Artifact, CloudError> {
    let client = aws_sdk_redshift::Client::new(config);
    let name = label.artifact_name(cluster_id, NameRules::Identifier);
    let found = |snapshot: aws_sdk_redshift::types::Snapshot| {
        check_found(
            label,
            &name,
            &redshift_tag_map(snapshot.tags()),
            snapshot.cluster_identifier(),
            cluster_id,
        )?;
        Ok(redshift_artifact(&snapshot, cluster_id))
    };
    if let Some(snapshot) = find_redshift_snapshot(&client, &name).await? {
        return found(snapshot);
    }
    let clusters = client
        .describe_clusters()
        .cluster_identifier(cluster_id)
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    let source_tags = clusters
        .clusters()
        .first()
        .map(|c| redshift_tag_map(c.tags()))
        .unwrap_or_default();
    let created = client
        .create_cluster_snapshot()
        .snapshot_identifier(&name)
        .cluster_identifier(cluster_id)
        .set_tags(Some(redshift_tags(&label.tags(&source_tags))))
        .send()
        .await
        .map_err(CloudError::from_sdk);
    match created {
        Ok(out) => match out.snapshot() {
            Some(snapshot) => Ok(redshift_artifact(snapshot, cluster_id)),
            None => find_redshift_snapshot(&client, &name)
                .await?
                .map(found)
                .unwrap_or_else(|| Err(error("ClusterSnapshotNotFound", name.clone()))),
        },
        Err(e) if e.code == "ClusterSnapshotAlreadyExists" => {
            find_redshift_snapshot(&client, &name)
                .await?
                .map(found)
                .unwrap_or(Err(e))
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// DynamoDB
// ---------------------------------------------------------------------------

/// On-demand backup of a DynamoDB table. DynamoDB backups cannot carry tags,
/// so the backup name (from the backup and the table) is the only label.
pub async fn backup_dynamodb(
    config: &SdkConfig,
    label: &BackupLabel,
    table_name: &str,
) -> Result<Artifact, CloudError> {
    let client = aws_sdk_dynamodb::Client::new(config);
    let name = label.artifact_name(table_name, NameRules::DynamoDb);
    let mut start: Option<String> = None;
    loop {
        let page = client
            .list_backups()
            .table_name(table_name)
            .backup_type(aws_sdk_dynamodb::types::BackupTypeFilter::User)
            .set_exclusive_start_backup_arn(start.take())
            .send()
            .await
            .map_err(CloudError::from_sdk)?;
        if let Some(summary) = page
            .backup_summaries()
            .iter()
            .find(|b| b.backup_name() == Some(name.as_str()))
        {
            return Ok(Artifact {
                kind: ArtifactKind::DynamodbBackup,
                id: summary.backup_arn().unwrap_or_default().to_string(),
                source: table_name.to_string(),
                device: None,
                size_gib: summary.backup_size_bytes().map(gib_from_bytes),
                state: dynamodb_state(summary.backup_status()),
            });
        }
        match page.last_evaluated_backup_arn() {
            Some(arn) if !page.backup_summaries().is_empty() => start = Some(arn.to_string()),
            _ => break,
        }
    }
    let out = client
        .create_backup()
        .table_name(table_name)
        .backup_name(&name)
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    let details = out
        .backup_details()
        .ok_or_else(|| error("BackupNotFoundException", format!("no details for {name}")))?;
    Ok(Artifact {
        kind: ArtifactKind::DynamodbBackup,
        id: details.backup_arn().to_string(),
        source: table_name.to_string(),
        device: None,
        size_gib: details.backup_size_bytes().map(gib_from_bytes),
        state: dynamodb_state(Some(details.backup_status())),
    })
}

// ---------------------------------------------------------------------------
// state, deletion, expiry
// ---------------------------------------------------------------------------

/// Current state of artifacts of one kind, with one paginated call per kind
/// (DynamoDB: one DescribeBackup per backup). Ids AWS does not know are
/// `Failed`.
pub async fn poll(
    config: &SdkConfig,
    kind: ArtifactKind,
    ids: &[String],
) -> Result<HashMap<String, ArtifactState>, CloudError> {
    let mut states: HashMap<String, ArtifactState> = ids
        .iter()
        .map(|id| (id.clone(), ArtifactState::Failed))
        .collect();
    if ids.is_empty() {
        return Ok(states);
    }
    let mut record = |id: Option<&str>, state: ArtifactState| {
        if let Some(slot) = id.and_then(|id| states.get_mut(id)) {
            *slot = state;
        }
    };
    match kind {
        ArtifactKind::EbsSnapshot => {
            let client = aws_sdk_ec2::Client::new(config);
            for batch in ids.chunks(FILTER_BATCH) {
                // By id; when one is gone (AWS then fails the whole call) by
                // a filter, which leaves unknown ids out.
                let by_id = client
                    .describe_snapshots()
                    .owner_ids("self")
                    .set_snapshot_ids(Some(batch.to_vec()))
                    .into_paginator()
                    .send()
                    .try_collect()
                    .await
                    .map_err(CloudError::from_sdk);
                let pages = match by_id {
                    Err(e) if e.code.starts_with("InvalidSnapshot") => client
                        .describe_snapshots()
                        .owner_ids("self")
                        .filters(ec2_filter("snapshot-id", batch))
                        .into_paginator()
                        .send()
                        .try_collect()
                        .await
                        .map_err(CloudError::from_sdk)?,
                    other => other?,
                };
                for s in pages.iter().flat_map(|p| p.snapshots()) {
                    record(s.snapshot_id(), ebs_state(s.state()));
                }
            }
        }
        ArtifactKind::Ami => {
            let client = aws_sdk_ec2::Client::new(config);
            for batch in ids.chunks(FILTER_BATCH) {
                for image in own_images(&client, vec![ec2_filter("image-id", batch)]).await? {
                    record(image.image_id(), image_state(image.state()));
                }
            }
        }
        ArtifactKind::RdsSnapshot => {
            let client = aws_sdk_rds::Client::new(config);
            for batch in ids.chunks(FILTER_BATCH) {
                let pages = client
                    .describe_db_snapshots()
                    .filters(rds_filter("db-snapshot-id", batch))
                    .into_paginator()
                    .send()
                    .try_collect()
                    .await
                    .map_err(CloudError::from_sdk)?;
                for s in pages.iter().flat_map(|p| p.db_snapshots()) {
                    record(s.db_snapshot_identifier(), snapshot_status(s.status()));
                }
            }
        }
        ArtifactKind::AuroraSnapshot => {
            let client = aws_sdk_rds::Client::new(config);
            for batch in ids.chunks(FILTER_BATCH) {
                let pages = client
                    .describe_db_cluster_snapshots()
                    .filters(rds_filter("db-cluster-snapshot-id", batch))
                    .into_paginator()
                    .send()
                    .try_collect()
                    .await
                    .map_err(CloudError::from_sdk)?;
                for s in pages.iter().flat_map(|p| p.db_cluster_snapshots()) {
                    record(
                        s.db_cluster_snapshot_identifier(),
                        snapshot_status(s.status()),
                    );
                }
            }
        }
        ArtifactKind::RedshiftSnapshot => {
            // Redshift looks snapshots up by one identifier only; listing the
            // manual ones answers any number of ids in one paginated call.
            let client = aws_sdk_redshift::Client::new(config);
            let pages = client
                .describe_cluster_snapshots()
                .snapshot_type("manual")
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(CloudError::from_sdk)?;
            for s in pages.iter().flat_map(|p| p.snapshots()) {
                record(s.snapshot_identifier(), snapshot_status(s.status()));
            }
        }
        ArtifactKind::DynamodbBackup => {
            let client = aws_sdk_dynamodb::Client::new(config);
            for id in ids {
                let result = client
                    .describe_backup()
                    .backup_arn(id)
                    .send()
                    .await
                    .map_err(CloudError::from_sdk);
                if let Some(out) = absent_as_none(result)? {
                    let status = out
                        .backup_description()
                        .and_then(|d| d.backup_details())
                        .map(|d| d.backup_status());
                    record(Some(id), dynamodb_state(status));
                }
            }
        }
    }
    Ok(states)
}

/// Deletes an artifact; an AMI is deregistered and its snapshots deleted.
/// Deleting something already gone succeeds.
pub async fn delete(config: &SdkConfig, artifact: &Artifact) -> Result<(), CloudError> {
    let id = artifact.id.as_str();
    match artifact.kind {
        ArtifactKind::EbsSnapshot => {
            delete_ebs_snapshot(&aws_sdk_ec2::Client::new(config), id).await
        }
        ArtifactKind::Ami => {
            let client = aws_sdk_ec2::Client::new(config);
            let mut snapshots: Vec<String> =
                own_images(&client, vec![ec2_filter("image-id", &[id])])
                    .await?
                    .iter()
                    .flat_map(image_snapshot_ids)
                    .collect();
            let deregistered = client
                .deregister_image()
                .image_id(id)
                .send()
                .await
                .map_err(CloudError::from_sdk);
            absent_as_none(deregistered)?;
            // Also finds the snapshots of an image an interrupted delete
            // already deregistered.
            for extra in snapshots_made_for_image(&client, id).await? {
                if !snapshots.contains(&extra) {
                    snapshots.push(extra);
                }
            }
            for snapshot in snapshots {
                delete_ebs_snapshot(&client, &snapshot).await?;
            }
            Ok(())
        }
        ArtifactKind::RdsSnapshot => {
            let result = aws_sdk_rds::Client::new(config)
                .delete_db_snapshot()
                .db_snapshot_identifier(id)
                .send()
                .await
                .map_err(CloudError::from_sdk);
            absent_as_none(result).map(|_| ())
        }
        ArtifactKind::AuroraSnapshot => {
            let result = aws_sdk_rds::Client::new(config)
                .delete_db_cluster_snapshot()
                .db_cluster_snapshot_identifier(id)
                .send()
                .await
                .map_err(CloudError::from_sdk);
            absent_as_none(result).map(|_| ())
        }
        ArtifactKind::RedshiftSnapshot => {
            let result = aws_sdk_redshift::Client::new(config)
                .delete_cluster_snapshot()
                .snapshot_identifier(id)
                .snapshot_cluster_identifier(&artifact.source)
                .send()
                .await
                .map_err(CloudError::from_sdk);
            absent_as_none(result).map(|_| ())
        }
        ArtifactKind::DynamodbBackup => {
            let result = aws_sdk_dynamodb::Client::new(config)
                .delete_backup()
                .backup_arn(id)
                .send()
                .await
                .map_err(CloudError::from_sdk);
            absent_as_none(result).map(|_| ())
        }
    }
}

/// For accounts where Safehold may not delete: tags the artifact (an AMI and
/// its snapshots) `safehold:expired-at` = `at` in RFC 3339. An artifact
/// already gone needs no marker. DynamoDB backups cannot be tagged: that
/// fails with `TagsNotSupported`.
pub async fn mark_expired(
    config: &SdkConfig,
    artifact: &Artifact,
    at: DateTime<Utc>,
) -> Result<(), CloudError> {
    let id = artifact.id.as_str();
    let value = at.to_rfc3339_opts(SecondsFormat::Secs, true);
    match artifact.kind {
        ArtifactKind::EbsSnapshot | ArtifactKind::Ami => {
            let client = aws_sdk_ec2::Client::new(config);
            let mut resources = vec![id.to_string()];
            if artifact.kind == ArtifactKind::Ami {
                let images = own_images(&client, vec![ec2_filter("image-id", &[id])]).await?;
                let Some(image) = images.first() else {
                    return Ok(());
                };
                resources.extend(image_snapshot_ids(image));
            }
            let result = client
                .create_tags()
                .set_resources(Some(resources))
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(TAG_EXPIRED_AT)
                        .value(&value)
                        .build(),
                )
                .send()
                .await
                .map_err(CloudError::from_sdk);
            absent_as_none(result).map(|_| ())
        }
        ArtifactKind::RdsSnapshot | ArtifactKind::AuroraSnapshot => {
            let client = aws_sdk_rds::Client::new(config);
            let arn = if artifact.kind == ArtifactKind::RdsSnapshot {
                find_db_snapshot(&client, id)
                    .await?
                    .map(|s| s.db_snapshot_arn().map(str::to_owned))
            } else {
                find_db_cluster_snapshot(&client, id)
                    .await?
                    .map(|s| s.db_cluster_snapshot_arn().map(str::to_owned))
            };
            let Some(arn) = arn else { return Ok(()) };
            let arn = match arn {
                Some(arn) => arn,
                None => {
                    let resource = if artifact.kind == ArtifactKind::RdsSnapshot {
                        "snapshot"
                    } else {
                        "cluster-snapshot"
                    };
                    let (partition, account) = partition_and_account(config).await?;
                    format!(
                        "arn:{partition}:rds:{}:{account}:{resource}:{id}",
                        region(config)
                    )
                }
            };
            let result = client
                .add_tags_to_resource()
                .resource_name(arn)
                .tags(
                    aws_sdk_rds::types::Tag::builder()
                        .key(TAG_EXPIRED_AT)
                        .value(&value)
                        .build(),
                )
                .send()
                .await
                .map_err(CloudError::from_sdk);
            absent_as_none(result).map(|_| ())
        }
        ArtifactKind::RedshiftSnapshot => {
            let client = aws_sdk_redshift::Client::new(config);
            let Some(snapshot) = find_redshift_snapshot(&client, id).await? else {
                return Ok(());
            };
            let (partition, caller) = partition_and_account(config).await?;
            let account = snapshot.owner_account().unwrap_or(&caller);
            let cluster = snapshot.cluster_identifier().unwrap_or(&artifact.source);
            let arn = format!(
                "arn:{partition}:redshift:{}:{account}:snapshot:{cluster}/{id}",
                region(config)
            );
            let result = client
                .create_tags()
                .resource_name(arn)
                .tags(
                    aws_sdk_redshift::types::Tag::builder()
                        .key(TAG_EXPIRED_AT)
                        .value(&value)
                        .build(),
                )
                .send()
                .await
                .map_err(CloudError::from_sdk);
            absent_as_none(result).map(|_| ())
        }
        ArtifactKind::DynamodbBackup => Err(error(
            "TagsNotSupported",
            format!("DynamoDB on-demand backups cannot be tagged; {id} is not marked"),
        )),
    }
}

pub(crate) fn region(config: &SdkConfig) -> String {
    config
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "us-east-1".to_string())
}

/// The partition and account of the credentials, from STS.
pub(crate) async fn partition_and_account(
    config: &SdkConfig,
) -> Result<(String, String), CloudError> {
    let identity = caller_identity(config).await?;
    let partition = identity
        .arn
        .split(':')
        .nth(1)
        .filter(|p| !p.is_empty())
        .unwrap_or("aws")
        .to_string();
    Ok((partition, identity.account))
}

/// Whether the source of a backup target still exists. `kind` is an
/// inventory resource type: `ec2_instance`, `ebs_volume`, `rds_instance`,
/// `aurora_cluster`, `redshift_cluster` or `dynamodb_table`. Resources being
/// deleted count as gone.
pub async fn source_exists(config: &SdkConfig, kind: &str, id: &str) -> Result<bool, CloudError> {
    match kind {
        "ec2_instance" => {
            let pages = aws_sdk_ec2::Client::new(config)
                .describe_instances()
                .filters(ec2_filter("instance-id", &[id]))
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(CloudError::from_sdk)?;
            Ok(pages
                .iter()
                .flat_map(|p| p.reservations())
                .flat_map(|r| r.instances())
                .filter(|i| i.instance_id() == Some(id))
                .any(|i| {
                    !matches!(
                        i.state().and_then(|s| s.name()).map(|n| n.as_str()),
                        Some("terminated") | Some("shutting-down")
                    )
                }))
        }
        "ebs_volume" => {
            let pages = aws_sdk_ec2::Client::new(config)
                .describe_volumes()
                .filters(ec2_filter("volume-id", &[id]))
                .into_paginator()
                .send()
                .try_collect()
                .await
                .map_err(CloudError::from_sdk)?;
            Ok(pages
                .iter()
                .flat_map(|p| p.volumes())
                .filter(|v| v.volume_id() == Some(id))
                .any(|v| {
                    !matches!(
                        v.state().map(|s| s.as_str()),
                        Some("deleting") | Some("deleted")
                    )
                }))
        }
        // A database being deleted is gone for a backup.
        "rds_instance" | "aurora_cluster" | "redshift_cluster" | "dynamodb_table" => {
            // rds, aurora, redshift, dynamodb
            let service = kind.split('_').next().unwrap_or(kind);
            Ok(crate::recovery::database_status(config, service, id)
                .await?
                .is_some_and(|status| status != "deleting"))
        }
        other => Err(error(
            "InvalidParameterValue",
            format!("unknown resource kind {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> BackupLabel {
        BackupLabel {
            tenant_id: Uuid::from_u128(1),
            backup_id: Uuid::parse_str("0a1b2c3d-0000-4000-8000-000000000000").unwrap(),
            policy_id: Uuid::from_u128(3),
            policy_name: "nightly".into(),
            target: "rds_instance:eu-west-1:orders".into(),
        }
    }

    #[test]
    fn identifiers_follow_rds_and_redshift_rules() {
        let l = label();
        let name = l.artifact_name("Orders_DB--Main-", NameRules::Identifier);
        assert!(name.starts_with("safehold-0a1b2c3d-"), "{name}");
        assert!(name.ends_with("-orders-db-main"), "{name}");
        assert!(!name.contains("--") && !name.ends_with('-'));
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));

        let long = "a".repeat(200);
        let name = l.artifact_name(&long, NameRules::Identifier);
        assert_eq!(name.len(), MAX_SNAPSHOT_IDENTIFIER);
        // Same prefix, different sources: different names.
        let other = l.artifact_name(&format!("{long}b"), NameRules::Identifier);
        assert_ne!(name, other);
        // Deterministic.
        assert_eq!(name, l.artifact_name(&long, NameRules::Identifier));
    }

    #[test]
    fn dynamodb_names_keep_table_characters() {
        let name = label().artifact_name("Orders_v2.prod", NameRules::DynamoDb);
        assert!(name.ends_with("-Orders_v2.prod"), "{name}");
    }

    #[test]
    fn tags_copy_source_tags_except_reserved_ones_within_limits() {
        let mut source = BTreeMap::new();
        source.insert("aws:cloudformation:stack-name".into(), "x".into());
        source.insert("safehold:backup".into(), "stale".into());
        source.insert("Name".into(), "orders".into());
        for i in 0..60 {
            source.insert(format!("k{i:02}"), "v".repeat(300));
        }
        let tags = label().tags(&source);
        assert_eq!(tags.len(), 4 + MAX_COPIED_TAGS);
        assert_eq!(tags[4], ("Name".to_string(), "orders".to_string()));
        assert!(tags.iter().all(|(_, v)| v.chars().count() <= MAX_TAG_VALUE));
        assert!(!tags.iter().any(|(k, _)| k.starts_with("aws:")));
        assert_eq!(
            tags.iter().filter(|(k, _)| k == TAG_BACKUP).count(),
            1,
            "the source's safehold tags are not copied"
        );
    }

    #[test]
    fn descriptions_fit_aws_limits() {
        let mut l = label();
        l.policy_name = "p".repeat(400);
        assert_eq!(l.description().chars().count(), MAX_DESCRIPTION);
        assert!(label()
            .description()
            .starts_with("Safehold backup of rds_instance:eu-west-1:orders by policy nightly"));
    }

    #[test]
    fn kinds_and_states_serialize_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&ArtifactKind::DynamodbBackup).unwrap(),
            "\"dynamodb_backup\""
        );
        assert_eq!(
            serde_json::to_string(&ArtifactKind::EbsSnapshot).unwrap(),
            "\"ebs_snapshot\""
        );
        assert_eq!(
            serde_json::to_string(&ArtifactState::Available).unwrap(),
            "\"available\""
        );
    }
}
