//! The Recovery aggregate: one recovery from a backup — what is recovered,
//! from where (the backup's region and account, or a DR copy's), into which
//! account and region, with which options, what it created, and how it
//! ended.
//!
//! Requests arrive with options that may be left out; `plan_*` fills them
//! with the backed-up resource's values and checks every combination before
//! anything reaches AWS. The recorded plan is complete: the job that runs it
//! never guesses.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::backup::{BackupState, SnapshotState};
use crate::settings::FieldError;
use crate::source::{InstanceRecord, SourceRecord, TableRecord};
use crate::{DomainError, TenantId};

/// An account and region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Location {
    pub account_id: Uuid,
    pub region: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryStatus {
    InProgress,
    Succeeded,
    /// Some of what was asked for was created.
    PartiallySucceeded,
    Failed,
}

impl RecoveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryStatus::InProgress => "in_progress",
            RecoveryStatus::Succeeded => "succeeded",
            RecoveryStatus::PartiallySucceeded => "partially_succeeded",
            RecoveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RecoveryStatus::InProgress,
            RecoveryStatus::Succeeded,
            RecoveryStatus::PartiallySucceeded,
            RecoveryStatus::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

// ---------------------------------------------------------------------------
// plans: what a recovery creates, every option decided
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecoveryPlan {
    Instance(Box<InstancePlan>),
    Volumes(VolumesPlan),
    Rds(RdsPlan),
    Aurora(AuroraPlan),
    Redshift(RedshiftPlan),
    Dynamodb(TablePlan),
}

impl RecoveryPlan {
    pub fn kind(&self) -> &'static str {
        match self {
            RecoveryPlan::Instance(_) => "instance",
            RecoveryPlan::Volumes(_) => "volumes",
            RecoveryPlan::Rds(_) => "rds",
            RecoveryPlan::Aurora(_) => "aurora",
            RecoveryPlan::Redshift(_) => "redshift",
            RecoveryPlan::Dynamodb(_) => "dynamodb",
        }
    }

    /// The backed-up resource(s) it recovers, for people.
    pub fn what(&self) -> String {
        match self {
            RecoveryPlan::Instance(p) => p.source_instance.clone(),
            RecoveryPlan::Volumes(p) => p
                .volumes
                .iter()
                .map(|v| v.volume.source.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            RecoveryPlan::Rds(p) => p.source.clone(),
            RecoveryPlan::Aurora(p) => p.source.clone(),
            RecoveryPlan::Redshift(p) => p.source.clone(),
            RecoveryPlan::Dynamodb(p) => p.source.clone(),
        }
    }
}

/// How an instance's boot volume is recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LaunchFrom {
    /// An AMI registered from the backup's snapshot of the boot volume.
    Snapshot,
    /// An existing AMI: the backup's initial AMI, the original, or one given.
    Image,
}

/// What happens to the AMI registered from the boot snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AmiHandling {
    /// Used for this launch only, deregistered afterwards.
    Deregister,
    /// Left registered after the launch.
    Keep,
    /// Registered and kept; nothing is launched.
    CreateOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownBehavior {
    Stop,
    Terminate,
}

/// A volume created from one of the backup's snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeFromSnapshot {
    /// The backed-up volume.
    pub source: String,
    /// The snapshot it is created from (a DR copy's id when recovering from one).
    pub snapshot_id: String,
    pub device: String,
    pub size_gib: i32,
    pub volume_type: String,
    pub iops: Option<i32>,
    pub delete_on_termination: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstancePlan {
    pub source_instance: String,
    pub launch_from: LaunchFrom,
    /// Launching from an image: the image.
    pub image_id: Option<String>,
    /// Launching from the boot snapshot: the snapshot, its device and architecture.
    pub root_snapshot_id: Option<String>,
    pub root_device_name: Option<String>,
    pub architecture: String,
    pub ami_handling: AmiHandling,
    pub instance_type: String,
    pub count: i32,
    pub key_name: Option<String>,
    pub availability_zone: Option<String>,
    pub subnet_id: Option<String>,
    pub private_ip: Option<String>,
    pub security_group_ids: Vec<String>,
    pub associate_public_ip: Option<bool>,
    pub user_data: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub shutdown_behavior: ShutdownBehavior,
    pub termination_protection: bool,
    pub monitoring: bool,
    pub instance_profile_arn: Option<String>,
    pub ebs_optimized: bool,
    pub tenancy: Option<String>,
    /// Data volumes launched with the instance.
    pub volumes: Vec<VolumeFromSnapshot>,
    pub volume_tags: BTreeMap<String, String>,
}

/// How a recovered volume joins an instance whose device may be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttachBehavior {
    /// Fails the attachment when the device is taken.
    IfDeviceFree,
    /// Detaches the volume at the device (the instance must be stopped).
    Switch,
    /// Like `switch`, then deletes the detached volume.
    SwitchAndDeleteOld,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeRecoveryPlan {
    #[serde(flatten)]
    pub volume: VolumeFromSnapshot,
    pub availability_zone: String,
    /// Whether the volume gets the tags its snapshot kept of its source.
    pub preserve_tags: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumesPlan {
    pub volumes: Vec<VolumeRecoveryPlan>,
    /// Attaches every volume at its device.
    pub attach_to: Option<String>,
    pub attach_behavior: AttachBehavior,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RdsPlan {
    pub source: String,
    pub snapshot_id: String,
    pub db_instance_id: String,
    pub db_instance_class: Option<String>,
    pub port: Option<i32>,
    pub multi_az: Option<bool>,
    pub subnet_group: Option<String>,
    pub availability_zone: Option<String>,
    pub publicly_accessible: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuroraPlan {
    pub source: String,
    pub snapshot_id: String,
    pub cluster_id: String,
    /// The writer; a multi-AZ cluster gets a reader named `<instance_id>-reader`.
    pub instance_id: String,
    pub instance_class: String,
    pub port: Option<i32>,
    pub multi_az: bool,
    pub subnet_group: Option<String>,
    pub availability_zone: Option<String>,
    pub publicly_accessible: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RedshiftPlan {
    pub source: String,
    pub snapshot_id: String,
    pub cluster_id: String,
    pub node_type: Option<String>,
    pub port: Option<i32>,
    pub availability_zone: Option<String>,
    pub subnet_group: Option<String>,
    pub publicly_accessible: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TablePlan {
    pub source: String,
    pub backup_arn: String,
    pub table_name: String,
    pub tags: BTreeMap<String, String>,
    pub ttl_attribute: Option<String>,
}

// ---------------------------------------------------------------------------
// requests: options as a user sends them, defaults left out
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeOptions {
    /// The device the volume had in the backed-up instance (instance volumes).
    pub device: Option<String>,
    /// The backed-up volume (independent volumes).
    pub volume_id: Option<String>,
    /// Default true.
    pub recover: Option<bool>,
    /// Default: the snapshot's size; never smaller.
    pub size_gib: Option<i32>,
    /// Default `gp3`.
    pub volume_type: Option<String>,
    pub iops: Option<i32>,
    /// The device to use instead of the original.
    pub new_device: Option<String>,
    /// Default true: the backed-up volume's tags.
    pub preserve_tags: Option<bool>,
    /// Instance recovery: default true.
    pub delete_on_termination: Option<bool>,
    /// Volume recovery: default the backed-up instance's zone.
    pub availability_zone: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceRequest {
    /// The backed-up instance.
    pub instance_id: String,
    /// Default: `snapshot` when the backup holds the boot volume's snapshot
    /// and the instance is not Windows, else `image`.
    pub launch_from: Option<LaunchFrom>,
    /// Default `deregister`.
    pub ami_handling: Option<AmiHandling>,
    /// Default: the backup's initial AMI, else the AMI the instance was launched from.
    pub image_id: Option<String>,
    pub instance_type: Option<String>,
    /// 1–20, default 1.
    pub count: Option<i32>,
    pub key_name: Option<String>,
    pub availability_zone: Option<String>,
    pub subnet_id: Option<String>,
    pub private_ip: Option<String>,
    pub security_group_ids: Option<Vec<String>>,
    pub associate_public_ip: Option<bool>,
    pub user_data: Option<String>,
    /// Default true.
    pub preserve_tags: Option<bool>,
    pub shutdown_behavior: Option<ShutdownBehavior>,
    pub termination_protection: Option<bool>,
    pub monitoring: Option<bool>,
    pub instance_profile_arn: Option<String>,
    pub ebs_optimized: Option<bool>,
    /// `default`, `dedicated` or `host`.
    pub tenancy: Option<String>,
    /// Changes to data volumes, by original device; others are recovered as they were.
    #[serde(default)]
    pub volumes: Vec<VolumeOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumesRequest {
    /// For an instance's volumes: the backed-up instance.
    pub instance_id: Option<String>,
    /// Which volumes and how; for an instance, left-out volumes are recovered as they were.
    #[serde(default)]
    pub volumes: Vec<VolumeOptions>,
    /// Attach every recovered volume to this instance, at its device.
    pub attach_to: Option<String>,
    /// Default `if_device_free`.
    pub attach_behavior: Option<AttachBehavior>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RdsRequest {
    /// The backed-up DB instance.
    pub db_instance_id: String,
    /// Default: the original identifier (it must not exist).
    pub new_db_instance_id: Option<String>,
    /// Default: the original class.
    pub db_instance_class: Option<String>,
    pub port: Option<i32>,
    pub multi_az: Option<bool>,
    pub subnet_group: Option<String>,
    pub availability_zone: Option<String>,
    pub publicly_accessible: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuroraRequest {
    /// The backed-up cluster.
    pub cluster_id: String,
    /// Default: the original identifier (it must not exist).
    pub new_cluster_id: Option<String>,
    /// The writer instance; default `<cluster id>-1`.
    pub instance_id: Option<String>,
    pub instance_class: String,
    pub port: Option<i32>,
    /// Adds a reader instance. Default false.
    pub multi_az: Option<bool>,
    pub subnet_group: Option<String>,
    pub availability_zone: Option<String>,
    pub publicly_accessible: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedshiftRequest {
    /// The backed-up cluster.
    pub cluster_id: String,
    /// Default: the original identifier (it must not exist).
    pub new_cluster_id: Option<String>,
    pub node_type: Option<String>,
    pub port: Option<i32>,
    pub availability_zone: Option<String>,
    pub subnet_group: Option<String>,
    pub publicly_accessible: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TableRequest {
    /// The backed-up table.
    pub table_name: String,
    /// Default: the original name (it must not exist).
    pub new_table_name: Option<String>,
    /// Default true: the table's tags at backup time.
    pub preserve_tags: Option<bool>,
}

// ---------------------------------------------------------------------------
// planning: defaults and validation, no IO
// ---------------------------------------------------------------------------

/// One snapshot of the backup as the recovery sees it: in the region and
/// account it recovers from (a DR copy's id there when that is the source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    /// The original snapshot's kind: `ebs_snapshot`, `ami`, `rds_snapshot`, ...
    pub kind: String,
    pub id: String,
    pub source: String,
    pub device: Option<String>,
    pub size_gib: Option<i32>,
}

/// What planning knows about the backup being recovered.
#[derive(Debug, Clone, Default)]
pub struct PlanContext {
    /// The backup's snapshots in the region and account recovered from.
    pub snapshots: Vec<Available>,
    /// Instance and table records by resource id.
    pub instances: BTreeMap<String, InstanceRecord>,
    pub tables: BTreeMap<String, TableRecord>,
    /// Whether the recovery lands in the backup's own account and region:
    /// only then do region-bound defaults (AMI, key, subnet, security
    /// groups) still mean something.
    pub same_place: bool,
    /// Backed-up instances still running there: their private IPs are taken.
    pub live_instances: BTreeSet<String>,
}

struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, code: &'static str, detail: impl Into<String>) {
        self.0.push(FieldError::new(field, code, detail));
    }

    fn into_result<T>(self, value: T) -> Result<T, DomainError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(DomainError::Invalid(self.0))
        }
    }
}

const VOLUME_TYPES: [&str; 7] = ["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];

/// Checks a volume's type, size and IOPS against EBS's rules.
fn check_volume(
    problems: &mut Problems,
    field: &str,
    volume_type: &str,
    size_gib: i32,
    iops: Option<i32>,
) {
    if !VOLUME_TYPES.contains(&volume_type) {
        problems.add(
            format!("{field}.volume_type"),
            "unknown_volume_type",
            format!("volume type must be one of {}", VOLUME_TYPES.join(", ")),
        );
        return;
    }
    let (min_size, max_size) = match volume_type {
        "st1" | "sc1" => (125, 16_384),
        "standard" => (1, 1_024),
        _ => (1, 16_384),
    };
    if !(min_size..=max_size).contains(&size_gib) {
        problems.add(
            format!("{field}.size_gib"),
            "size_out_of_range",
            format!("a {volume_type} volume holds {min_size}-{max_size} GiB"),
        );
    }
    // (minimum, maximum, IOPS per GiB at most)
    let limits = match volume_type {
        "io1" => Some((100, 64_000, 50)),
        "io2" => Some((100, 256_000, 500)),
        "gp3" => Some((3_000, 16_000, 500)),
        _ => None,
    };
    match (limits, iops) {
        (None, Some(_)) => problems.add(
            format!("{field}.iops"),
            "iops_not_allowed",
            format!("IOPS cannot be set for a {volume_type} volume"),
        ),
        (Some(_), None) if volume_type.starts_with("io") => problems.add(
            format!("{field}.iops"),
            "iops_required",
            format!("a {volume_type} volume needs provisioned IOPS"),
        ),
        (Some((min, max, per_gib)), Some(iops)) => {
            if !(min..=max).contains(&iops) {
                problems.add(
                    format!("{field}.iops"),
                    "iops_out_of_range",
                    format!("a {volume_type} volume takes {min}-{max} IOPS"),
                );
            } else if iops > size_gib.saturating_mul(per_gib) {
                problems.add(
                    format!("{field}.iops"),
                    "iops_too_high_for_size",
                    format!(
                        "a {volume_type} volume takes at most {per_gib} IOPS per GiB: \
                         {iops} IOPS need at least {} GiB",
                        (iops + per_gib - 1) / per_gib
                    ),
                );
            }
        }
        _ => {}
    }
}

fn check_device(problems: &mut Problems, field: &str, device: &str) {
    let ok = device.starts_with("/dev/") && device.len() > 5 || device.starts_with("xvd");
    if !ok {
        problems.add(
            field,
            "invalid_device",
            "a device is named like /dev/sdf or xvdf",
        );
    }
}

/// RDS, Aurora and Redshift identifiers: 1-63 letters, digits and single
/// hyphens, starting with a letter, not ending with a hyphen.
fn check_identifier(problems: &mut Problems, field: &str, id: &str) {
    let ok = (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !id.ends_with('-')
        && !id.contains("--");
    if !ok {
        problems.add(
            field,
            "invalid_identifier",
            "1-63 letters, digits and single hyphens, starting with a letter and not ending with a hyphen",
        );
    }
}

fn check_port(problems: &mut Problems, field: &str, port: Option<i32>) {
    if port.is_some_and(|p| !(1150..=65535).contains(&p)) {
        problems.add(field, "port_out_of_range", "the port must be 1150-65535");
    }
}

fn check_table_name(problems: &mut Problems, field: &str, name: &str) {
    let ok = (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        problems.add(
            field,
            "invalid_table_name",
            "3-255 letters, digits, underscores, hyphens and dots",
        );
    }
}

/// Whether a source's tag is carried over to what is recovered: not AWS's
/// (AWS refuses them) nor Safehold's (they describe the backup).
pub fn is_carried_tag(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    !lower.starts_with("aws:") && !lower.starts_with("safehold:")
}

/// Source tags worth carrying over.
pub fn carried_tags(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .filter(|(k, _)| is_carried_tag(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn ipv4(text: &str) -> bool {
    text.parse::<std::net::Ipv4Addr>().is_ok()
}

impl PlanContext {
    fn snapshot_of(&self, kinds: &[&str], source: &str) -> Option<&Available> {
        self.snapshots
            .iter()
            .find(|s| kinds.contains(&s.kind.as_str()) && s.source == source)
    }

    fn volume_snapshots<'a>(
        &'a self,
        instance: &'a str,
    ) -> impl Iterator<Item = &'a Available> + 'a {
        self.snapshots
            .iter()
            .filter(move |s| s.kind == "ebs_snapshot" && s.source != instance)
    }
}

/// The instance recovery `request` asks for, with every default filled in
/// from the backed-up instance, or every problem with it.
pub fn plan_instance(
    request: InstanceRequest,
    ctx: &PlanContext,
) -> Result<InstancePlan, DomainError> {
    let id = request.instance_id.clone();
    let record = ctx.instances.get(&id).cloned().ok_or_else(|| {
        DomainError::invalid(
            "instance_id",
            "not_in_backup",
            format!("the backup holds no instance {id}"),
        )
    })?;
    let mut problems = Problems(Vec::new());
    let root_device = record.root_device().map(str::to_string);
    let snapshots: Vec<&Available> = ctx
        .snapshots
        .iter()
        .filter(|s| s.kind == "ebs_snapshot" && record.volume_at_snapshot(s))
        .collect();
    let root_snapshot = snapshots
        .iter()
        .find(|s| s.device.is_some() && s.device == root_device);
    let initial_ami = ctx
        .snapshots
        .iter()
        .find(|s| s.kind == "ami" && s.source == id)
        .map(|s| s.id.clone());
    let launch_from =
        request
            .launch_from
            .unwrap_or(if root_snapshot.is_some() && !record.is_windows() {
                LaunchFrom::Snapshot
            } else {
                LaunchFrom::Image
            });
    let region_bound = |given: Option<String>, recorded: Option<String>| {
        given.or(if ctx.same_place { recorded } else { None })
    };
    let image_id = match launch_from {
        LaunchFrom::Image => {
            let image = request
                .image_id
                .clone()
                .or(initial_ami.clone())
                .or(if ctx.same_place {
                    record.image_id.clone()
                } else {
                    None
                });
            if image.is_none() {
                problems.add(
                    "image_id",
                    "required",
                    "launching from an image needs an image in the recovery's region and account",
                );
            }
            image
        }
        LaunchFrom::Snapshot => {
            if root_snapshot.is_none() {
                problems.add(
                    "launch_from",
                    "no_boot_snapshot",
                    "the backup holds no snapshot of the boot volume: launch from an image",
                );
            }
            if request.image_id.is_some() {
                problems.add(
                    "image_id",
                    "not_allowed",
                    "an image is used only when launching from an image",
                );
            }
            None
        }
    };
    if request.ami_handling.is_some() && launch_from == LaunchFrom::Image {
        problems.add(
            "ami_handling",
            "not_allowed",
            "AMI handling applies only when launching from the boot snapshot",
        );
    }
    let count = request.count.unwrap_or(1);
    if !(1..=20).contains(&count) {
        problems.add("count", "count_out_of_range", "1-20 instances");
    }
    let subnet_id = region_bound(request.subnet_id.clone(), record.subnet_id.clone());
    if record.subnet_id.is_some() && subnet_id.is_none() {
        problems.add(
            "subnet_id",
            "required",
            "in another region or account the subnet must be given",
        );
    }
    let security_group_ids = request.security_group_ids.clone().unwrap_or_else(|| {
        if ctx.same_place {
            record.security_group_ids.clone()
        } else {
            Vec::new()
        }
    });
    if !record.security_group_ids.is_empty() && security_group_ids.is_empty() {
        problems.add(
            "security_group_ids",
            "required",
            "in another region or account the security groups must be given",
        );
    }
    let key_name = region_bound(request.key_name.clone(), record.key_name.clone());
    // The original's IP is taken while it runs, and fits one instance only.
    let private_ip = match request.private_ip.clone() {
        Some(ip) => Some(ip),
        None if ctx.live_instances.contains(&id) || count > 1 => None,
        None => region_bound(None, record.private_ip.clone()),
    };
    if private_ip.as_deref().is_some_and(|ip| !ipv4(ip)) {
        problems.add("private_ip", "invalid_ip", "an IPv4 address");
    }
    if private_ip.is_some() && count > 1 {
        problems.add(
            "private_ip",
            "one_instance_only",
            "a private IP can be given to one instance only",
        );
    }
    if private_ip.is_some() && subnet_id.is_none() {
        problems.add("private_ip", "needs_subnet", "a private IP needs a subnet");
    }
    let availability_zone = if subnet_id.is_some() {
        // The subnet decides the zone.
        if request.availability_zone.is_some() {
            problems.add(
                "availability_zone",
                "not_allowed",
                "the subnet decides the zone; give one or the other",
            );
        }
        None
    } else {
        region_bound(
            request.availability_zone.clone(),
            record.availability_zone.clone(),
        )
    };
    let instance_type = request
        .instance_type
        .clone()
        .unwrap_or(record.instance_type.clone());
    if instance_type.is_empty() {
        problems.add(
            "instance_type",
            "required",
            "the instance type is unknown: give one",
        );
    }
    let tenancy = request.tenancy.clone().or(record.tenancy.clone());
    if tenancy
        .as_deref()
        .is_some_and(|t| !["default", "dedicated", "host"].contains(&t))
    {
        problems.add("tenancy", "invalid_tenancy", "default, dedicated or host");
    }
    if request
        .user_data
        .as_ref()
        .is_some_and(|u| u.len() > 16 * 1024)
    {
        problems.add("user_data", "too_long", "user data is at most 16 KiB");
    }
    let preserve_tags = request.preserve_tags.unwrap_or(true);
    let carried = if preserve_tags {
        carried_tags(&record.tags)
    } else {
        BTreeMap::new()
    };
    // Data volumes: every one in the backup unless excluded.
    for (i, option) in request.volumes.iter().enumerate() {
        let known = option
            .device
            .as_ref()
            .is_some_and(|d| snapshots.iter().any(|s| s.device.as_ref() == Some(d)));
        if !known {
            problems.add(
                format!("volumes[{i}].device"),
                "not_in_backup",
                "name the device of a volume this backup holds",
            );
        }
        if option.device.is_some() && option.device == root_device {
            problems.add(
                format!("volumes[{i}].device"),
                "boot_volume",
                "the boot volume is recovered with the instance",
            );
        }
        if option.availability_zone.is_some() || option.volume_id.is_some() {
            problems.add(
                format!("volumes[{i}]"),
                "not_allowed",
                "zone and volume_id apply to volume recovery only",
            );
        }
    }
    let mut volumes = Vec::new();
    for snapshot in snapshots.iter().filter(|s| s.device != root_device) {
        let device = snapshot.device.clone().unwrap_or_default();
        let index = request
            .volumes
            .iter()
            .position(|v| v.device.as_deref() == Some(device.as_str()));
        let option = index
            .map(|i| request.volumes[i].clone())
            .unwrap_or_default();
        let field = format!("volumes[{}]", index.unwrap_or(0));
        if !option.recover.unwrap_or(true) {
            continue;
        }
        let original_size = snapshot.size_gib.unwrap_or(1);
        let size_gib = option.size_gib.unwrap_or(original_size);
        if size_gib < original_size {
            problems.add(
                format!("{field}.size_gib"),
                "smaller_than_original",
                format!("the volume was {original_size} GiB; it cannot be made smaller"),
            );
        }
        let volume_type = option.volume_type.clone().unwrap_or_else(|| "gp3".into());
        check_volume(&mut problems, &field, &volume_type, size_gib, option.iops);
        let new_device = option.new_device.clone().unwrap_or(device.clone());
        check_device(&mut problems, &format!("{field}.new_device"), &new_device);
        let recorded = record.volume_at(&device);
        volumes.push(VolumeFromSnapshot {
            source: snapshot.source.clone(),
            snapshot_id: snapshot.id.clone(),
            device: new_device,
            size_gib,
            volume_type,
            iops: option.iops,
            delete_on_termination: option
                .delete_on_termination
                .unwrap_or(recorded.map(|v| v.delete_on_termination).unwrap_or(true)),
        });
    }
    let mut devices: Vec<&str> = volumes.iter().map(|v| v.device.as_str()).collect();
    devices.extend(root_device.as_deref());
    devices.sort_unstable();
    if devices.windows(2).any(|w| w[0] == w[1]) {
        problems.add(
            "volumes",
            "duplicate_device",
            "two volumes would use the same device",
        );
    }
    let plan = InstancePlan {
        source_instance: id,
        launch_from,
        image_id,
        root_snapshot_id: match launch_from {
            LaunchFrom::Snapshot => root_snapshot.map(|s| s.id.clone()),
            LaunchFrom::Image => None,
        },
        root_device_name: root_device,
        architecture: record
            .architecture
            .clone()
            .unwrap_or_else(|| "x86_64".into()),
        ami_handling: request.ami_handling.unwrap_or(AmiHandling::Deregister),
        instance_type,
        count,
        key_name,
        availability_zone,
        subnet_id,
        private_ip,
        security_group_ids,
        associate_public_ip: request
            .associate_public_ip
            .or(record.subnet_id.as_ref().map(|_| record.public_ip)),
        user_data: request.user_data,
        volume_tags: carried.clone(),
        tags: carried,
        shutdown_behavior: request.shutdown_behavior.unwrap_or(ShutdownBehavior::Stop),
        termination_protection: request.termination_protection.unwrap_or(false),
        monitoring: request.monitoring.unwrap_or(record.monitoring),
        instance_profile_arn: request
            .instance_profile_arn
            .or(record.instance_profile_arn.clone()),
        ebs_optimized: request.ebs_optimized.unwrap_or(record.ebs_optimized),
        tenancy,
        volumes,
    };
    problems.into_result(plan)
}

impl InstanceRecord {
    /// Whether a backup snapshot is of one of this instance's volumes.
    fn volume_at_snapshot(&self, snapshot: &Available) -> bool {
        self.volumes.iter().any(|v| v.volume_id == snapshot.source)
    }
}

/// The volume recovery `request` asks for, or every problem with it.
pub fn plan_volumes(
    request: VolumesRequest,
    ctx: &PlanContext,
) -> Result<VolumesPlan, DomainError> {
    let mut problems = Problems(Vec::new());
    let record = match &request.instance_id {
        Some(id) => match ctx.instances.get(id) {
            Some(record) => Some(record.clone()),
            None => {
                return Err(DomainError::invalid(
                    "instance_id",
                    "not_in_backup",
                    format!("the backup holds no instance {id}"),
                ))
            }
        },
        None => None,
    };
    // (snapshot, option index) for every volume recovered
    let mut chosen: Vec<(&Available, Option<usize>)> = Vec::new();
    match &record {
        Some(record) => {
            let instance = request.instance_id.as_deref().unwrap_or_default();
            let of_instance: Vec<&Available> = ctx
                .volume_snapshots(instance)
                .filter(|s| record.volumes.iter().any(|v| v.volume_id == s.source))
                .collect();
            for (i, option) in request.volumes.iter().enumerate() {
                if !option
                    .device
                    .as_ref()
                    .is_some_and(|d| of_instance.iter().any(|s| s.device.as_ref() == Some(d)))
                {
                    problems.add(
                        format!("volumes[{i}].device"),
                        "not_in_backup",
                        "name the device of a volume of the instance this backup holds",
                    );
                }
            }
            for snapshot in of_instance {
                let index = request
                    .volumes
                    .iter()
                    .position(|v| v.device.is_some() && v.device == snapshot.device);
                chosen.push((snapshot, index));
            }
        }
        None => {
            if request.volumes.is_empty() {
                problems.add(
                    "volumes",
                    "required",
                    "name the volumes to recover (volume_id), or an instance (instance_id)",
                );
            }
            for (i, option) in request.volumes.iter().enumerate() {
                let found = option.volume_id.as_ref().and_then(|v| {
                    ctx.snapshots
                        .iter()
                        .find(|s| s.kind == "ebs_snapshot" && s.device.is_none() && &s.source == v)
                });
                match found {
                    Some(snapshot) => chosen.push((snapshot, Some(i))),
                    None => problems.add(
                        format!("volumes[{i}].volume_id"),
                        "not_in_backup",
                        "name an independent volume this backup holds",
                    ),
                }
            }
        }
    }
    let attach_behavior = request
        .attach_behavior
        .unwrap_or(AttachBehavior::IfDeviceFree);
    if request.attach_to.is_none() && request.attach_behavior.is_some() {
        problems.add(
            "attach_behavior",
            "not_allowed",
            "an attach behaviour needs an instance to attach to (attach_to)",
        );
    }
    let mut volumes = Vec::new();
    for (snapshot, index) in chosen {
        let option = index
            .map(|i| request.volumes[i].clone())
            .unwrap_or_default();
        let field = format!("volumes[{}]", index.unwrap_or(0));
        if !option.recover.unwrap_or(true) {
            continue;
        }
        let original_size = snapshot.size_gib.unwrap_or(1);
        let size_gib = option.size_gib.unwrap_or(original_size);
        if size_gib < original_size {
            problems.add(
                format!("{field}.size_gib"),
                "smaller_than_original",
                format!("the volume was {original_size} GiB; it cannot be made smaller"),
            );
        }
        let volume_type = option.volume_type.clone().unwrap_or_else(|| "gp3".into());
        check_volume(&mut problems, &field, &volume_type, size_gib, option.iops);
        let zone = option.availability_zone.clone().or_else(|| {
            record
                .as_ref()
                .and_then(|r| r.availability_zone.clone())
                .filter(|_| ctx.same_place)
        });
        let Some(availability_zone) = zone else {
            problems.add(
                format!("{field}.availability_zone"),
                "required",
                "the zone to create the volume in",
            );
            continue;
        };
        let device = option.new_device.clone().or(snapshot.device.clone());
        if request.attach_to.is_some() {
            match &device {
                Some(device) => check_device(&mut problems, &format!("{field}.new_device"), device),
                None => problems.add(
                    format!("{field}.new_device"),
                    "required",
                    "attaching needs the device to attach at",
                ),
            }
        }
        volumes.push(VolumeRecoveryPlan {
            volume: VolumeFromSnapshot {
                source: snapshot.source.clone(),
                snapshot_id: snapshot.id.clone(),
                device: device.unwrap_or_default(),
                size_gib,
                volume_type,
                iops: option.iops,
                delete_on_termination: false,
            },
            availability_zone,
            preserve_tags: option.preserve_tags.unwrap_or(true),
        });
    }
    if volumes.is_empty() && problems.0.is_empty() {
        problems.add("volumes", "nothing_to_recover", "every volume is left out");
    }
    if request.attach_to.is_some() {
        let mut zones: Vec<&str> = volumes
            .iter()
            .map(|v| v.availability_zone.as_str())
            .collect();
        zones.dedup();
        if zones.len() > 1 {
            problems.add(
                "volumes",
                "zones_differ",
                "volumes attached to one instance must be in its zone",
            );
        }
        let mut devices: Vec<&str> = volumes.iter().map(|v| v.volume.device.as_str()).collect();
        devices.sort_unstable();
        if devices.windows(2).any(|w| w[0] == w[1]) {
            problems.add(
                "volumes",
                "duplicate_device",
                "two volumes would use the same device",
            );
        }
    }
    problems.into_result(VolumesPlan {
        volumes,
        attach_to: request.attach_to,
        attach_behavior,
    })
}

fn database_snapshot<'a>(
    ctx: &'a PlanContext,
    kind: &str,
    field: &str,
    source: &str,
) -> Result<&'a Available, DomainError> {
    ctx.snapshot_of(&[kind], source).ok_or_else(|| {
        DomainError::invalid(
            field,
            "not_in_backup",
            format!("the backup holds no snapshot of {source}"),
        )
    })
}

pub fn plan_rds(request: RdsRequest, ctx: &PlanContext) -> Result<RdsPlan, DomainError> {
    let snapshot = database_snapshot(
        ctx,
        "rds_snapshot",
        "db_instance_id",
        &request.db_instance_id,
    )?;
    let mut problems = Problems(Vec::new());
    let id = request
        .new_db_instance_id
        .clone()
        .unwrap_or(request.db_instance_id.clone());
    check_identifier(&mut problems, "new_db_instance_id", &id);
    check_port(&mut problems, "port", request.port);
    if request.multi_az == Some(true) && request.availability_zone.is_some() {
        problems.add(
            "availability_zone",
            "not_allowed",
            "a multi-AZ database cannot be placed in one zone",
        );
    }
    problems.into_result(RdsPlan {
        source: request.db_instance_id,
        snapshot_id: snapshot.id.clone(),
        db_instance_id: id,
        db_instance_class: request.db_instance_class,
        port: request.port,
        multi_az: request.multi_az,
        subnet_group: request.subnet_group,
        availability_zone: request.availability_zone,
        publicly_accessible: request.publicly_accessible,
    })
}

pub fn plan_aurora(request: AuroraRequest, ctx: &PlanContext) -> Result<AuroraPlan, DomainError> {
    let snapshot = database_snapshot(ctx, "aurora_snapshot", "cluster_id", &request.cluster_id)?;
    let mut problems = Problems(Vec::new());
    let cluster_id = request
        .new_cluster_id
        .clone()
        .unwrap_or(request.cluster_id.clone());
    check_identifier(&mut problems, "new_cluster_id", &cluster_id);
    let instance_id = request
        .instance_id
        .clone()
        .unwrap_or(format!("{cluster_id}-1"));
    check_identifier(&mut problems, "instance_id", &instance_id);
    let multi_az = request.multi_az.unwrap_or(false);
    if multi_az {
        // The reader's name must fit as well.
        check_identifier(
            &mut problems,
            "instance_id",
            &format!("{instance_id}-reader"),
        );
    }
    if request.instance_class.trim().is_empty() {
        problems.add(
            "instance_class",
            "required",
            "the class of the cluster's instances",
        );
    }
    check_port(&mut problems, "port", request.port);
    if multi_az && request.availability_zone.is_some() {
        problems.add(
            "availability_zone",
            "not_allowed",
            "a multi-AZ cluster cannot be placed in one zone",
        );
    }
    problems.into_result(AuroraPlan {
        source: request.cluster_id,
        snapshot_id: snapshot.id.clone(),
        cluster_id,
        instance_id,
        instance_class: request.instance_class,
        port: request.port,
        multi_az,
        subnet_group: request.subnet_group,
        availability_zone: request.availability_zone,
        publicly_accessible: request.publicly_accessible,
    })
}

pub fn plan_redshift(
    request: RedshiftRequest,
    ctx: &PlanContext,
) -> Result<RedshiftPlan, DomainError> {
    let snapshot = database_snapshot(ctx, "redshift_snapshot", "cluster_id", &request.cluster_id)?;
    let mut problems = Problems(Vec::new());
    let cluster_id = request
        .new_cluster_id
        .clone()
        .unwrap_or(request.cluster_id.clone());
    check_identifier(&mut problems, "new_cluster_id", &cluster_id);
    check_port(&mut problems, "port", request.port);
    problems.into_result(RedshiftPlan {
        source: request.cluster_id,
        snapshot_id: snapshot.id.clone(),
        cluster_id,
        node_type: request.node_type,
        port: request.port,
        availability_zone: request.availability_zone,
        subnet_group: request.subnet_group,
        publicly_accessible: request.publicly_accessible,
    })
}

pub fn plan_table(request: TableRequest, ctx: &PlanContext) -> Result<TablePlan, DomainError> {
    let snapshot = database_snapshot(ctx, "dynamodb_backup", "table_name", &request.table_name)?;
    let mut problems = Problems(Vec::new());
    let table_name = request
        .new_table_name
        .clone()
        .unwrap_or(request.table_name.clone());
    check_table_name(&mut problems, "new_table_name", &table_name);
    let record = ctx
        .tables
        .get(&request.table_name)
        .cloned()
        .unwrap_or_default();
    problems.into_result(TablePlan {
        source: request.table_name,
        backup_arn: snapshot.id.clone(),
        table_name,
        tags: if request.preserve_tags.unwrap_or(true) {
            carried_tags(&record.tags)
        } else {
            BTreeMap::new()
        },
        ttl_attribute: record.ttl_attribute,
    })
}

/// Where a backup can be recovered from: its own account in each region it
/// has completed snapshots in, then every account and region holding
/// completed DR copies.
pub fn recovery_sources(backup: &BackupState) -> Vec<Location> {
    let mut sources: Vec<Location> = Vec::new();
    let mut add = |account_id: Uuid, region: &str| {
        let location = Location {
            account_id,
            region: region.to_string(),
        };
        if !sources.contains(&location) {
            sources.push(location);
        }
    };
    for run in &backup.targets {
        for (snapshot, state) in run.snapshots.values() {
            if *state == SnapshotState::Completed {
                add(backup.account_id, &snapshot.region);
            }
        }
    }
    if let Some(dr) = &backup.dr {
        for copy in dr
            .copies
            .iter()
            .filter(|c| c.state == SnapshotState::Completed)
        {
            add(copy.copy.account_id, &copy.copy.region);
        }
    }
    sources
}

/// What `backup` offers a recovery from `source` into `target` of a
/// resource backed up in `home_region`: its completed snapshots there (DR
/// copies under their own ids), and the records of its instances and tables.
pub fn plan_context(
    backup: &BackupState,
    source: &Location,
    target: &Location,
    home_region: &str,
) -> PlanContext {
    let mut ctx = PlanContext {
        same_place: target.account_id == backup.account_id && target.region == home_region,
        ..PlanContext::default()
    };
    let copies: BTreeMap<&str, &str> = backup
        .dr
        .iter()
        .flat_map(|dr| dr.copies.iter())
        .filter(|c| {
            c.state == SnapshotState::Completed
                && c.copy.account_id == source.account_id
                && c.copy.region == source.region
        })
        .map(|c| (c.copy.original_id.as_str(), c.copy.copy_id.as_str()))
        .collect();
    let at_origin = source.account_id == backup.account_id;
    for run in &backup.targets {
        for (snapshot, state) in run.snapshots.values() {
            if *state != SnapshotState::Completed {
                continue;
            }
            let id = if at_origin && snapshot.region == source.region {
                Some(snapshot.id.as_str())
            } else {
                copies.get(snapshot.id.as_str()).copied()
            };
            if let Some(id) = id {
                ctx.snapshots.push(Available {
                    kind: snapshot.kind.clone(),
                    id: id.to_string(),
                    source: snapshot.source.clone(),
                    device: snapshot.device.clone(),
                    size_gib: snapshot.size_gib,
                });
            }
        }
        match &run.source {
            Some(SourceRecord::Instance(record)) => {
                ctx.instances
                    .insert(run.target.key.resource_id.clone(), (**record).clone());
            }
            Some(SourceRecord::Table(record)) => {
                ctx.tables
                    .insert(run.target.key.resource_id.clone(), record.clone());
            }
            None => {}
        }
    }
    ctx
}

/// The region a backed-up resource lives in.
pub fn home_region<'a>(backup: &'a BackupState, resource_id: &str) -> Option<&'a str> {
    backup
        .targets
        .iter()
        .find(|t| t.target.key.resource_id == resource_id)
        .map(|t| t.target.key.region.as_str())
}

/// Recoveries AWS cannot do across accounts, refused before any call.
pub fn check_place(
    plan: &RecoveryPlan,
    source: &Location,
    target: &Location,
) -> Result<(), DomainError> {
    if source.region != target.region {
        return Err(DomainError::invalid(
            "source_region",
            "region_mismatch",
            "a recovery creates resources in the region it recovers from; recover from a DR copy to use another region",
        ));
    }
    if source.account_id != target.account_id {
        let refused = match plan {
            RecoveryPlan::Dynamodb(_) => {
                Some("DynamoDB backups cannot be restored into another account")
            }
            RecoveryPlan::Redshift(_) => {
                Some("Redshift snapshots are recovered in the account holding them")
            }
            _ => None,
        };
        if let Some(reason) = refused {
            return Err(DomainError::invalid(
                "target_account_id",
                "cross_account_not_supported",
                reason,
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// the aggregate
// ---------------------------------------------------------------------------

/// Something a recovery created in AWS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Recovered {
    /// `instance`, `image`, `volume`, `db_instance`, `db_cluster`, `redshift_cluster` or `dynamodb_table`.
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Recovery {
    pub state: Option<RecoveryState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryState {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub backup_id: Uuid,
    pub policy_id: Uuid,
    pub source: Location,
    pub target: Location,
    pub plan: RecoveryPlan,
    pub one_off_credentials: bool,
    pub requested_at: DateTime<Utc>,
    pub created: Vec<Recovered>,
    pub status: RecoveryStatus,
}

impl RecoveryState {
    pub fn has(&self, kind: &str, id: &str) -> bool {
        self.created.iter().any(|r| r.kind == kind && r.id == id)
    }

    pub fn created_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.created
            .iter()
            .filter(move |r| r.kind == kind)
            .map(|r| r.id.as_str())
    }
}

// A request carries its whole plan; there is one per recovery.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryCommand {
    Request {
        id: Uuid,
        tenant_id: TenantId,
        backup_id: Uuid,
        policy_id: Uuid,
        source: Location,
        target: Location,
        plan: RecoveryPlan,
        one_off_credentials: bool,
        at: DateTime<Utc>,
    },
    /// What a step created; ids already recorded are left out.
    RecordCreated { created: Vec<Recovered> },
    /// A line for the recovery's log.
    Note { message: String },
    Finish {
        status: RecoveryStatus,
        message: String,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecoveryEvent {
    RecoveryRequested {
        id: Uuid,
        tenant_id: TenantId,
        backup_id: Uuid,
        policy_id: Uuid,
        source: Location,
        target: Location,
        plan: RecoveryPlan,
        one_off_credentials: bool,
        at: DateTime<Utc>,
    },
    ResourcesCreated {
        created: Vec<Recovered>,
    },
    RecoveryNoted {
        message: String,
    },
    RecoveryFinished {
        status: RecoveryStatus,
        message: String,
    },
}

impl DomainEvent for RecoveryEvent {
    fn event_type(&self) -> String {
        match self {
            RecoveryEvent::RecoveryRequested { .. } => "RecoveryRequested",
            RecoveryEvent::ResourcesCreated { .. } => "ResourcesCreated",
            RecoveryEvent::RecoveryNoted { .. } => "RecoveryNoted",
            RecoveryEvent::RecoveryFinished { .. } => "RecoveryFinished",
        }
        .into()
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

impl RecoveryEvent {
    /// One line for the recovery log and the audit log.
    pub fn describe(&self) -> String {
        match self {
            RecoveryEvent::RecoveryRequested {
                plan,
                target,
                source,
                ..
            } => format!(
                "Recovery of {} {} requested into {} (from {})",
                plan.kind(),
                plan.what(),
                target.region,
                source.region
            ),
            RecoveryEvent::ResourcesCreated { created } => format!(
                "Created {}",
                created
                    .iter()
                    .map(|r| format!("{} {}", r.kind, r.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            RecoveryEvent::RecoveryNoted { message } => message.clone(),
            RecoveryEvent::RecoveryFinished { status, message } => {
                format!("Recovery {}: {message}", status.as_str())
            }
        }
    }
}

impl Recovery {
    fn running(&self) -> Result<&RecoveryState, DomainError> {
        let state = self
            .state
            .as_ref()
            .ok_or(DomainError::NotFound("recovery"))?;
        if state.status != RecoveryStatus::InProgress {
            return Err(DomainError::conflict(
                "recovery_finished",
                "the recovery has finished",
            ));
        }
        Ok(state)
    }
}

impl Aggregate for Recovery {
    const TYPE: &'static str = "Recovery";
    type Command = RecoveryCommand;
    type Event = RecoveryEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match command {
            RecoveryCommand::Request {
                id,
                tenant_id,
                backup_id,
                policy_id,
                source,
                target,
                plan,
                one_off_credentials,
                at,
            } => {
                if self.state.is_some() {
                    return Err(DomainError::conflict(
                        "recovery_exists",
                        "this recovery was already requested",
                    ));
                }
                vec![RecoveryEvent::RecoveryRequested {
                    id,
                    tenant_id,
                    backup_id,
                    policy_id,
                    source,
                    target,
                    plan,
                    one_off_credentials,
                    at,
                }]
            }
            RecoveryCommand::RecordCreated { created } => {
                let state = self.running()?;
                let mut new: Vec<Recovered> = Vec::new();
                for r in created {
                    if !state.has(&r.kind, &r.id) && !new.contains(&r) {
                        new.push(r);
                    }
                }
                if new.is_empty() {
                    return Ok(());
                }
                vec![RecoveryEvent::ResourcesCreated { created: new }]
            }
            RecoveryCommand::Note { message } => {
                self.running()?;
                vec![RecoveryEvent::RecoveryNoted { message }]
            }
            RecoveryCommand::Finish { status, message } => {
                self.running()?;
                if status == RecoveryStatus::InProgress {
                    return Err(DomainError::invalid(
                        "status",
                        "not_final",
                        "a recovery finishes succeeded, partially succeeded or failed",
                    ));
                }
                vec![RecoveryEvent::RecoveryFinished { status, message }]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            RecoveryEvent::RecoveryRequested {
                id,
                tenant_id,
                backup_id,
                policy_id,
                source,
                target,
                plan,
                one_off_credentials,
                at,
            } => {
                self.state = Some(RecoveryState {
                    id,
                    tenant_id,
                    backup_id,
                    policy_id,
                    source,
                    target,
                    plan,
                    one_off_credentials,
                    requested_at: at,
                    created: Vec::new(),
                    status: RecoveryStatus::InProgress,
                })
            }
            RecoveryEvent::ResourcesCreated { created } => {
                if let Some(state) = self.state.as_mut() {
                    state.created.extend(created);
                }
            }
            RecoveryEvent::RecoveryNoted { .. } => {}
            RecoveryEvent::RecoveryFinished { status, .. } => {
                if let Some(state) = self.state.as_mut() {
                    state.status = status;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::InstanceVolume;
    use cqrs_es::test::TestFramework;

    type Test = TestFramework<Recovery>;

    fn snapshot(kind: &str, id: &str, source: &str, device: Option<&str>, size: i32) -> Available {
        Available {
            kind: kind.into(),
            id: id.into(),
            source: source.into(),
            device: device.map(str::to_string),
            size_gib: Some(size),
        }
    }

    fn instance() -> InstanceRecord {
        InstanceRecord {
            instance_type: "t3.small".into(),
            image_id: Some("ami-orig".into()),
            key_name: Some("ops".into()),
            availability_zone: Some("us-east-1a".into()),
            subnet_id: Some("subnet-1".into()),
            vpc_id: Some("vpc-1".into()),
            private_ip: Some("10.0.0.5".into()),
            security_group_ids: vec!["sg-1".into()],
            public_ip: false,
            root_device_name: Some("/dev/xvda".into()),
            architecture: Some("x86_64".into()),
            platform: None,
            ebs_optimized: true,
            monitoring: false,
            tenancy: Some("default".into()),
            instance_profile_arn: None,
            tags: BTreeMap::from([
                ("Name".to_string(), "web".to_string()),
                ("safehold:backup".to_string(), "x".to_string()),
            ]),
            volumes: vec![
                InstanceVolume {
                    device: "/dev/xvda".into(),
                    volume_id: "vol-root".into(),
                    delete_on_termination: true,
                },
                InstanceVolume {
                    device: "/dev/sdf".into(),
                    volume_id: "vol-data".into(),
                    delete_on_termination: false,
                },
            ],
        }
    }

    fn context(same_place: bool) -> PlanContext {
        PlanContext {
            snapshots: vec![
                snapshot(
                    "ebs_snapshot",
                    "snap-root",
                    "vol-root",
                    Some("/dev/xvda"),
                    8,
                ),
                snapshot(
                    "ebs_snapshot",
                    "snap-data",
                    "vol-data",
                    Some("/dev/sdf"),
                    20,
                ),
                snapshot("ebs_snapshot", "snap-solo", "vol-solo", None, 5),
                snapshot("rds_snapshot", "db-snap", "orders", None, 20),
                snapshot("aurora_snapshot", "cl-snap", "ledger", None, 20),
                snapshot("redshift_snapshot", "rs-snap", "warehouse", None, 20),
                snapshot("dynamodb_backup", "arn:backup", "events", None, 1),
            ],
            instances: BTreeMap::from([("i-1".to_string(), instance())]),
            tables: BTreeMap::from([(
                "events".to_string(),
                TableRecord {
                    tags: BTreeMap::from([("team".to_string(), "data".to_string())]),
                    ttl_attribute: Some("expires".into()),
                },
            )]),
            same_place,
            live_instances: BTreeSet::new(),
        }
    }

    fn fields(error: DomainError) -> Vec<(String, &'static str)> {
        match error {
            DomainError::Invalid(errors) => errors.into_iter().map(|e| (e.field, e.code)).collect(),
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn an_instance_recovers_by_default_as_it_was_from_its_boot_snapshot() {
        let plan = plan_instance(
            InstanceRequest {
                instance_id: "i-1".into(),
                ..Default::default()
            },
            &context(true),
        )
        .expect("valid");
        assert_eq!(plan.launch_from, LaunchFrom::Snapshot);
        assert_eq!(plan.root_snapshot_id.as_deref(), Some("snap-root"));
        assert_eq!(plan.ami_handling, AmiHandling::Deregister);
        assert_eq!(plan.instance_type, "t3.small");
        assert_eq!(plan.subnet_id.as_deref(), Some("subnet-1"));
        assert_eq!(plan.security_group_ids, vec!["sg-1".to_string()]);
        assert_eq!(plan.key_name.as_deref(), Some("ops"));
        assert!(plan.ebs_optimized);
        assert_eq!(
            plan.tags,
            BTreeMap::from([("Name".to_string(), "web".to_string())]),
            "Safehold's own tags are not carried over"
        );
        assert_eq!(plan.volumes.len(), 1);
        assert_eq!(plan.volumes[0].snapshot_id, "snap-data");
        assert_eq!(plan.volumes[0].size_gib, 20);
        assert!(!plan.volumes[0].delete_on_termination);
    }

    #[test]
    fn the_original_private_ip_is_kept_only_when_the_original_is_gone() {
        let request = || InstanceRequest {
            instance_id: "i-1".into(),
            ..Default::default()
        };
        let gone = plan_instance(request(), &context(true)).expect("valid");
        assert_eq!(gone.private_ip.as_deref(), Some("10.0.0.5"));
        let mut ctx = context(true);
        ctx.live_instances.insert("i-1".into());
        let running = plan_instance(request(), &ctx).expect("valid");
        assert_eq!(running.private_ip, None);
    }

    #[test]
    fn a_windows_instance_launches_from_its_initial_ami() {
        let mut ctx = context(true);
        ctx.instances.get_mut("i-1").unwrap().platform = Some("windows".into());
        ctx.snapshots
            .push(snapshot("ami", "ami-initial", "i-1", None, 8));
        let plan = plan_instance(
            InstanceRequest {
                instance_id: "i-1".into(),
                ..Default::default()
            },
            &ctx,
        )
        .expect("valid");
        assert_eq!(plan.launch_from, LaunchFrom::Image);
        assert_eq!(plan.image_id.as_deref(), Some("ami-initial"));
    }

    #[test]
    fn elsewhere_the_region_bound_references_must_be_given() {
        let error = plan_instance(
            InstanceRequest {
                instance_id: "i-1".into(),
                ..Default::default()
            },
            &context(false),
        )
        .unwrap_err();
        let fields = fields(error);
        assert!(
            fields.contains(&("subnet_id".into(), "required")),
            "{fields:?}"
        );
        assert!(
            fields.contains(&("security_group_ids".into(), "required")),
            "{fields:?}"
        );
        let plan = plan_instance(
            InstanceRequest {
                instance_id: "i-1".into(),
                subnet_id: Some("subnet-dr".into()),
                security_group_ids: Some(vec!["sg-dr".into()]),
                ..Default::default()
            },
            &context(false),
        )
        .expect("valid with references given");
        assert_eq!(
            plan.key_name, None,
            "the original key is not assumed elsewhere"
        );
        assert_eq!(plan.private_ip, None);
    }

    #[test]
    fn invalid_instance_options_are_each_named() {
        let error = plan_instance(
            InstanceRequest {
                instance_id: "i-1".into(),
                launch_from: Some(LaunchFrom::Image),
                ami_handling: Some(AmiHandling::Keep),
                count: Some(2),
                private_ip: Some("10.0.0.9".into()),
                volumes: vec![
                    VolumeOptions {
                        device: Some("/dev/sdf".into()),
                        size_gib: Some(10),
                        ..Default::default()
                    },
                    VolumeOptions {
                        device: Some("/dev/sdz".into()),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            &context(true),
        )
        .unwrap_err();
        let fields = fields(error);
        for expected in [
            ("ami_handling", "not_allowed"),
            ("private_ip", "one_instance_only"),
            ("volumes[0].size_gib", "smaller_than_original"),
            ("volumes[1].device", "not_in_backup"),
        ] {
            assert!(
                fields.contains(&(expected.0.to_string(), expected.1)),
                "{expected:?} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn volume_iops_follow_the_ebs_rules() {
        let plan = |volume_type: &str, size: i32, iops: Option<i32>| {
            plan_volumes(
                VolumesRequest {
                    volumes: vec![VolumeOptions {
                        volume_id: Some("vol-solo".into()),
                        availability_zone: Some("us-east-1b".into()),
                        volume_type: Some(volume_type.into()),
                        size_gib: Some(size),
                        iops,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                &context(true),
            )
        };
        assert!(plan("io1", 10, Some(500)).is_ok());
        assert_eq!(
            fields(plan("io1", 10, Some(501)).unwrap_err()),
            vec![("volumes[0].iops".to_string(), "iops_too_high_for_size")]
        );
        assert_eq!(
            fields(plan("io1", 10, Some(50)).unwrap_err()),
            vec![("volumes[0].iops".to_string(), "iops_out_of_range")]
        );
        assert_eq!(
            fields(plan("io2", 10, None).unwrap_err()),
            vec![("volumes[0].iops".to_string(), "iops_required")]
        );
        assert_eq!(
            fields(plan("gp2", 10, Some(300)).unwrap_err()),
            vec![("volumes[0].iops".to_string(), "iops_not_allowed")]
        );
        assert_eq!(
            fields(plan("st1", 10, None).unwrap_err()),
            vec![("volumes[0].size_gib".to_string(), "size_out_of_range")]
        );
        assert_eq!(
            fields(plan("gp3", 4, None).unwrap_err()),
            vec![("volumes[0].size_gib".to_string(), "smaller_than_original")]
        );
    }

    #[test]
    fn instance_volumes_keep_their_devices_and_zone_for_attaching() {
        let plan = plan_volumes(
            VolumesRequest {
                instance_id: Some("i-1".into()),
                volumes: vec![VolumeOptions {
                    device: Some("/dev/xvda".into()),
                    recover: Some(false),
                    ..Default::default()
                }],
                attach_to: Some("i-other".into()),
                attach_behavior: Some(AttachBehavior::Switch),
            },
            &context(true),
        )
        .expect("valid");
        assert_eq!(plan.volumes.len(), 1);
        assert_eq!(plan.volumes[0].volume.device, "/dev/sdf");
        assert_eq!(plan.volumes[0].availability_zone, "us-east-1a");
        assert!(plan.volumes[0].preserve_tags);
        let error = plan_volumes(
            VolumesRequest {
                attach_behavior: Some(AttachBehavior::Switch),
                volumes: vec![VolumeOptions {
                    volume_id: Some("vol-solo".into()),
                    availability_zone: Some("us-east-1a".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &context(true),
        )
        .unwrap_err();
        assert_eq!(
            fields(error),
            vec![("attach_behavior".to_string(), "not_allowed")]
        );
    }

    #[test]
    fn databases_take_new_identifiers_and_tables_keep_their_tags_and_ttl() {
        let rds = plan_rds(
            RdsRequest {
                db_instance_id: "orders".into(),
                new_db_instance_id: Some("orders-drill".into()),
                ..Default::default()
            },
            &context(true),
        )
        .expect("valid");
        assert_eq!(rds.snapshot_id, "db-snap");
        assert_eq!(rds.db_instance_id, "orders-drill");
        let bad = plan_rds(
            RdsRequest {
                db_instance_id: "orders".into(),
                new_db_instance_id: Some("Orders--1-".into()),
                port: Some(80),
                multi_az: Some(true),
                availability_zone: Some("us-east-1a".into()),
                ..Default::default()
            },
            &context(true),
        )
        .unwrap_err();
        assert_eq!(
            fields(bad),
            vec![
                ("new_db_instance_id".to_string(), "invalid_identifier"),
                ("port".to_string(), "port_out_of_range"),
                ("availability_zone".to_string(), "not_allowed"),
            ]
        );
        let aurora = plan_aurora(
            AuroraRequest {
                cluster_id: "ledger".into(),
                new_cluster_id: Some("ledger-2".into()),
                instance_class: "db.r5.large".into(),
                multi_az: Some(true),
                ..Default::default()
            },
            &context(true),
        )
        .expect("valid");
        assert_eq!(aurora.instance_id, "ledger-2-1");
        let table = plan_table(
            TableRequest {
                table_name: "events".into(),
                new_table_name: Some("events-restored".into()),
                preserve_tags: None,
            },
            &context(true),
        )
        .expect("valid");
        assert_eq!(table.ttl_attribute.as_deref(), Some("expires"));
        assert_eq!(table.tags.get("team").map(String::as_str), Some("data"));
        assert_eq!(
            fields(
                plan_redshift(
                    RedshiftRequest {
                        cluster_id: "nope".into(),
                        ..Default::default()
                    },
                    &context(true)
                )
                .unwrap_err()
            ),
            vec![("cluster_id".to_string(), "not_in_backup")]
        );
    }

    fn requested() -> RecoveryEvent {
        RecoveryEvent::RecoveryRequested {
            id: Uuid::nil(),
            tenant_id: TenantId(Uuid::nil()),
            backup_id: Uuid::nil(),
            policy_id: Uuid::nil(),
            source: Location {
                account_id: Uuid::nil(),
                region: "us-east-1".into(),
            },
            target: Location {
                account_id: Uuid::nil(),
                region: "us-east-1".into(),
            },
            plan: RecoveryPlan::Rds(
                plan_rds(
                    RdsRequest {
                        db_instance_id: "orders".into(),
                        ..Default::default()
                    },
                    &context(true),
                )
                .unwrap(),
            ),
            one_off_credentials: false,
            at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_repeated_report_of_created_resources_records_nothing() {
        let created = Recovered {
            kind: "db_instance".into(),
            id: "orders".into(),
        };
        Test::with(())
            .given(vec![
                requested(),
                RecoveryEvent::ResourcesCreated {
                    created: vec![created.clone()],
                },
            ])
            .when(RecoveryCommand::RecordCreated {
                created: vec![created],
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_finished_recovery_takes_no_more_reports() {
        Test::with(())
            .given(vec![
                requested(),
                RecoveryEvent::RecoveryFinished {
                    status: RecoveryStatus::Succeeded,
                    message: "done".into(),
                },
            ])
            .when(RecoveryCommand::Note {
                message: "late".into(),
            })
            .then_expect_error(DomainError::conflict(
                "recovery_finished",
                "the recovery has finished",
            ));
    }
}
