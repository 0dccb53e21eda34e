//! The Policy aggregate: what to back up in one account (its targets), how
//! many generations to keep, how failures are handled, and which schedules
//! start it. It also decides when a backup may start: never twice for one
//! schedule occurrence and never while another backup of the policy runs.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::settings::FieldError;
use crate::user::ResourceLimits;
use crate::{DomainError, TenantId, UserId};

/// At most this many DynamoDB tables per policy (their backups are started
/// one API call each and share a per-account limit of concurrent backups).
pub const MAX_DYNAMODB_TARGETS: usize = 100;

/// The six kinds of resources a policy protects.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Ec2Instance,
    EbsVolume,
    RdsInstance,
    AuroraCluster,
    RedshiftCluster,
    DynamodbTable,
}

impl ResourceKind {
    /// The name used in the inventory and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Ec2Instance => "ec2_instance",
            ResourceKind::EbsVolume => "ebs_volume",
            ResourceKind::RdsInstance => "rds_instance",
            ResourceKind::AuroraCluster => "aurora_cluster",
            ResourceKind::RedshiftCluster => "redshift_cluster",
            ResourceKind::DynamodbTable => "dynamodb_table",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ResourceKind::Ec2Instance,
            ResourceKind::EbsVolume,
            ResourceKind::RdsInstance,
            ResourceKind::AuroraCluster,
            ResourceKind::RedshiftCluster,
            ResourceKind::DynamodbTable,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// How an instance is backed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceMode {
    /// Snapshots of the selected volumes.
    Snapshots,
    /// Snapshots, plus one AMI kept per instance and renewed every few months
    /// (so an instance can be relaunched from its own image).
    SnapshotsWithInitialAmi,
    /// An AMI of the whole instance, taken without stopping it.
    AmiWithoutReboot,
    /// An AMI taken with a reboot, for file-system consistency.
    AmiWithReboot,
}

impl InstanceMode {
    /// Windows instances default to keeping an initial AMI (their root volume
    /// alone cannot be relaunched); others to snapshots only.
    pub fn default_for_platform(platform: &str) -> Self {
        if platform.to_ascii_lowercase().contains("windows") {
            InstanceMode::SnapshotsWithInitialAmi
        } else {
            InstanceMode::Snapshots
        }
    }
}

/// Which of an instance's volumes are backed up, by device name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "select", rename_all = "snake_case", deny_unknown_fields)]
pub enum VolumeSelection {
    All,
    Include { devices: Vec<String> },
    Exclude { devices: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceOptions {
    pub mode: InstanceMode,
    pub volumes: VolumeSelection,
}

/// Identifies a resource within the policy's account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub struct TargetKey {
    pub kind: ResourceKind,
    pub region: String,
    pub resource_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Target {
    #[serde(flatten)]
    pub key: TargetKey,
    /// EC2 instances only.
    pub instance: Option<InstanceOptions>,
}

/// What happens when a target no longer exists at backup time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AutoTargetRemoval {
    No,
    Yes,
    YesAndAlert,
}

/// When a backup counts as successful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SuccessCriterion {
    /// Every snapshot and every hook succeeded.
    AllSucceed,
    /// The snapshots succeeded, whatever the hooks did.
    SnapshotsSucceed,
}

/// A policy's tunable behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub description: String,
    /// Successful backups kept; older ones are deleted.
    pub generations: u32,
    pub auto_target_removal: AutoTargetRemoval,
    pub success_criterion: SuccessCriterion,
    /// Further attempts after a failed or partial backup.
    pub retries: u32,
    pub retry_wait_minutes: u32,
    /// Consecutive failed backups before an alert is raised.
    pub failures_before_alert: u32,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            description: String::new(),
            generations: 30,
            auto_target_removal: AutoTargetRemoval::No,
            success_criterion: SuccessCriterion::AllSucceed,
            retries: 3,
            retry_wait_minutes: 30,
            failures_before_alert: 1,
        }
    }
}

impl PolicySettings {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.description.len() > 1000 {
            errors.push(FieldError::new(
                "description",
                "invalid_value",
                "at most 1000 characters",
            ));
        }
        if !(1..=1000).contains(&self.generations) {
            errors.push(FieldError::new(
                "generations",
                "invalid_value",
                "keep 1-1000 generations",
            ));
        }
        if self.retries > 10 {
            errors.push(FieldError::new("retries", "invalid_value", "at most 10"));
        }
        if !(1..=1440).contains(&self.retry_wait_minutes) {
            errors.push(FieldError::new(
                "retry_wait_minutes",
                "invalid_value",
                "1-1440 minutes",
            ));
        }
        if !(1..=100).contains(&self.failures_before_alert) {
            errors.push(FieldError::new(
                "failures_before_alert",
                "invalid_value",
                "1-100",
            ));
        }
        errors
    }
}

/// Disaster recovery: copies of a policy's successful backups into other
/// regions and, optionally, into a vault account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrSettings {
    pub enabled: bool,
    /// Copies every N-th successful backup (1: every one); the others are
    /// marked as skipped.
    pub every: u32,
    /// Regions the copies go to. A snapshot already in one of them is not
    /// copied again there within its own account.
    pub regions: Vec<String>,
    /// Copies not completed after this many hours fail.
    pub timeout_hours: u32,
    /// A registered vault account that receives the copies; none: the
    /// policy's own account.
    pub vault_account_id: Option<Uuid>,
    /// Keep the original snapshots once every copy completed (default true).
    pub keep_originals: bool,
}

/// At most this many DR target regions per policy.
pub const MAX_DR_REGIONS: usize = 10;

impl Default for DrSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            every: 1,
            regions: vec![],
            timeout_hours: 24,
            vault_account_id: None,
            keep_originals: true,
        }
    }
}

impl DrSettings {
    /// Checks the settings' own shape; field names are those of the API
    /// (`dr.` + field). The vault account's existence and type are checked
    /// by the caller against the registered accounts.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !(1..=1000).contains(&self.every) {
            errors.push(FieldError::new(
                "dr.every",
                "invalid_value",
                "copy every 1-1000 backups",
            ));
        }
        if !(1..=720).contains(&self.timeout_hours) {
            errors.push(FieldError::new(
                "dr.timeout_hours",
                "invalid_value",
                "1-720 hours",
            ));
        }
        if self.regions.len() > MAX_DR_REGIONS {
            errors.push(FieldError::new(
                "dr.regions",
                "invalid_value",
                format!("at most {MAX_DR_REGIONS} regions"),
            ));
        }
        if let Some(bad) = self
            .regions
            .iter()
            .find(|r| !crate::account::valid_region(r))
        {
            errors.push(FieldError::new(
                "dr.regions",
                "invalid_value",
                format!("{bad} is not a region name"),
            ));
        }
        let distinct: BTreeSet<&String> = self.regions.iter().collect();
        if distinct.len() != self.regions.len() {
            errors.push(FieldError::new(
                "dr.regions",
                "duplicate",
                "each region at most once",
            ));
        }
        if self.enabled && self.regions.is_empty() {
            errors.push(FieldError::new(
                "dr.regions",
                "required",
                "disaster recovery needs at least one target region",
            ));
        }
        errors
    }

    /// Whether the backup after `successful_before` successful backups of
    /// the policy is copied: the first, then every N-th.
    pub fn copies_backup(&self, successful_before: u64) -> bool {
        self.enabled && successful_before.is_multiple_of(u64::from(self.every.max(1)))
    }
}

/// Why a backup starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    Scheduled {
        schedule_id: Uuid,
        occurrence: DateTime<Utc>,
    },
    AdHoc,
    /// Another attempt after backup `of` failed or partly failed.
    Retry {
        of: Uuid,
        attempt: u32,
    },
}

/// The backup id a schedule occurrence gets: the same on every attempt, so a
/// repeated start is recognised.
pub fn scheduled_backup_id(policy: Uuid, occurrence: DateTime<Utc>) -> Uuid {
    let name = format!("{policy}/{}", occurrence.timestamp());
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes())
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Policy {
    pub state: Option<PolicyState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub owner_id: UserId,
    pub account_id: Uuid,
    pub name: String,
    pub settings: PolicySettings,
    pub enabled: bool,
    pub from_tag_scan: bool,
    pub targets: Vec<Target>,
    pub schedules: BTreeSet<Uuid>,
    /// The backup now running, if any.
    pub running: Option<Uuid>,
    /// The latest schedule occurrence already handled (started or skipped).
    pub last_occurrence: Option<DateTime<Utc>>,
    /// Failed backups since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    pub removed: bool,
    /// Disaster-recovery settings.
    #[serde(default)]
    pub dr: DrSettings,
    /// Successful backups so far (decides which ones DR copies).
    #[serde(default)]
    pub successful_backups: u64,
}

impl PolicyState {
    pub fn target(&self, key: &TargetKey) -> Option<&Target> {
        self.targets.iter().find(|t| &t.key == key)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyCommand {
    Create {
        id: Uuid,
        tenant_id: TenantId,
        owner_id: UserId,
        account_id: Uuid,
        name: String,
        settings: PolicySettings,
        enabled: bool,
        from_tag_scan: bool,
    },
    Update {
        name: Option<String>,
        settings: Option<PolicySettings>,
    },
    SetEnabled(bool),
    /// Adds a target or replaces its options.
    PutTarget(Target),
    RemoveTarget {
        key: TargetKey,
        /// Set when the resource disappeared and the policy removes it itself.
        vanished: bool,
    },
    AttachSchedule(Uuid),
    DetachSchedule(Uuid),
    /// Replaces the disaster-recovery settings.
    SetDr(DrSettings),
    StartBackup {
        backup_id: Uuid,
        trigger: Trigger,
    },
    FinishBackup {
        backup_id: Uuid,
        succeeded: bool,
    },
    Remove,
}

/// Why a schedule occurrence did not start a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    BackupRunning,
    NoTargets,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PolicyEvent {
    PolicyCreated {
        id: Uuid,
        tenant_id: TenantId,
        owner_id: UserId,
        account_id: Uuid,
        name: String,
        settings: PolicySettings,
        enabled: bool,
        from_tag_scan: bool,
    },
    PolicyUpdated {
        name: String,
        settings: PolicySettings,
    },
    PolicyEnabled,
    PolicyDisabled,
    TargetPut(Target),
    TargetRemoved {
        key: TargetKey,
        vanished: bool,
    },
    ScheduleAttached {
        schedule_id: Uuid,
    },
    ScheduleDetached {
        schedule_id: Uuid,
    },
    BackupStarted {
        backup_id: Uuid,
        trigger: Trigger,
    },
    OccurrenceSkipped {
        schedule_id: Uuid,
        occurrence: DateTime<Utc>,
        reason: SkipReason,
    },
    BackupFinished {
        backup_id: Uuid,
        succeeded: bool,
    },
    /// Consecutive failed backups reached the policy's alert threshold.
    FailureAlertRaised {
        backup_id: Uuid,
        consecutive_failures: u32,
    },
    PolicyRemoved,
    DrSettingsChanged(DrSettings),
}

impl DomainEvent for PolicyEvent {
    fn event_type(&self) -> String {
        match self {
            PolicyEvent::PolicyCreated { .. } => "PolicyCreated",
            PolicyEvent::PolicyUpdated { .. } => "PolicyUpdated",
            PolicyEvent::PolicyEnabled => "PolicyEnabled",
            PolicyEvent::PolicyDisabled => "PolicyDisabled",
            PolicyEvent::TargetPut(_) => "TargetPut",
            PolicyEvent::TargetRemoved { .. } => "TargetRemoved",
            PolicyEvent::ScheduleAttached { .. } => "ScheduleAttached",
            PolicyEvent::ScheduleDetached { .. } => "ScheduleDetached",
            PolicyEvent::BackupStarted { .. } => "BackupStarted",
            PolicyEvent::OccurrenceSkipped { .. } => "OccurrenceSkipped",
            PolicyEvent::BackupFinished { .. } => "BackupFinished",
            PolicyEvent::FailureAlertRaised { .. } => "FailureAlertRaised",
            PolicyEvent::PolicyRemoved => "PolicyRemoved",
            PolicyEvent::DrSettingsChanged(_) => "DrSettingsChanged",
        }
        .into()
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

impl PolicyEvent {
    /// One line for the audit log; `name` is the policy's name.
    pub fn describe(&self, name: &str) -> String {
        match self {
            PolicyEvent::PolicyCreated { .. } => format!("Created policy {name}"),
            PolicyEvent::PolicyUpdated { .. } => format!("Updated policy {name}"),
            PolicyEvent::PolicyEnabled => format!("Enabled policy {name}"),
            PolicyEvent::PolicyDisabled => format!("Disabled policy {name}"),
            PolicyEvent::TargetPut(t) => format!(
                "Set target {} {} ({}) in policy {name}",
                t.key.kind.as_str(),
                t.key.resource_id,
                t.key.region
            ),
            PolicyEvent::TargetRemoved { key, vanished } => format!(
                "Removed target {} {} ({}) from policy {name}{}",
                key.kind.as_str(),
                key.resource_id,
                key.region,
                if *vanished {
                    ": the resource no longer exists"
                } else {
                    ""
                }
            ),
            PolicyEvent::ScheduleAttached { schedule_id } => {
                format!("Attached schedule {schedule_id} to policy {name}")
            }
            PolicyEvent::ScheduleDetached { schedule_id } => {
                format!("Detached schedule {schedule_id} from policy {name}")
            }
            PolicyEvent::BackupStarted { backup_id, trigger } => match trigger {
                Trigger::Scheduled { occurrence, .. } => format!(
                    "Started backup {backup_id} of policy {name} for the run due at {}",
                    occurrence.to_rfc3339()
                ),
                Trigger::AdHoc => format!("Started ad hoc backup {backup_id} of policy {name}"),
                Trigger::Retry { of, attempt } => format!(
                    "Started backup {backup_id} of policy {name}: retry {attempt} of backup {of}"
                ),
            },
            PolicyEvent::OccurrenceSkipped {
                occurrence, reason, ..
            } => format!(
                "Skipped the run of policy {name} due at {}: {}",
                occurrence.to_rfc3339(),
                match reason {
                    SkipReason::BackupRunning => "a backup of the policy is still running",
                    SkipReason::NoTargets => "the policy has no targets",
                }
            ),
            PolicyEvent::BackupFinished {
                backup_id,
                succeeded,
            } => format!(
                "Backup {backup_id} of policy {name} {}",
                if *succeeded { "succeeded" } else { "failed" }
            ),
            PolicyEvent::FailureAlertRaised {
                consecutive_failures,
                ..
            } => format!("Alert: the last {consecutive_failures} backups of policy {name} failed"),
            PolicyEvent::PolicyRemoved => format!("Deleted policy {name}"),
            PolicyEvent::DrSettingsChanged(dr) if !dr.enabled => {
                format!("Disabled disaster recovery of policy {name}")
            }
            PolicyEvent::DrSettingsChanged(dr) => format!(
                "Set disaster recovery of policy {name}: every {} backups to {}{}, timeout {} h, {} originals",
                dr.every,
                dr.regions.join(", "),
                dr.vault_account_id
                    .map(|a| format!(" in vault account {a}"))
                    .unwrap_or_default(),
                dr.timeout_hours,
                if dr.keep_originals { "keeping" } else { "deleting" }
            ),
        }
    }
}

pub fn validate_name(name: &str) -> Option<FieldError> {
    let ok = !name.trim().is_empty() && name.len() <= 100 && name.chars().all(|c| !c.is_control());
    (!ok).then(|| {
        FieldError::new(
            "name",
            "invalid_value",
            "must be 1-100 printable characters",
        )
    })
}

/// Checks a target's own shape (its existence is checked against the inventory by the caller).
pub fn validate_target(target: &Target) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !crate::account::valid_region(&target.key.region) {
        errors.push(FieldError::new(
            "region",
            "invalid_value",
            "not a region name",
        ));
    }
    if target.key.resource_id.trim().is_empty() || target.key.resource_id.len() > 255 {
        errors.push(FieldError::new(
            "resource_id",
            "invalid_value",
            "must be 1-255 characters",
        ));
    }
    match (&target.instance, target.key.kind) {
        (Some(options), ResourceKind::Ec2Instance) => match &options.volumes {
            VolumeSelection::Include { devices } | VolumeSelection::Exclude { devices }
                if devices.is_empty() =>
            {
                errors.push(FieldError::new(
                    "instance.volumes.devices",
                    "invalid_value",
                    "list at least one device name",
                ))
            }
            _ => {}
        },
        (None, ResourceKind::Ec2Instance) => errors.push(FieldError::new(
            "instance",
            "required",
            "instance targets need their options",
        )),
        (Some(_), _) => errors.push(FieldError::new(
            "instance",
            "not_applicable",
            "only EC2 instance targets take instance options",
        )),
        (None, _) => {}
    }
    errors
}

/// Resources protected by one user's policies, in the units of its limits.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProtectedUsage {
    pub instances: u64,
    pub non_instance_ebs_gib: u64,
    pub rds_gib: u64,
    pub redshift_gib: u64,
    pub dynamodb_gib: u64,
}

impl ProtectedUsage {
    /// Adds one protected resource of `size_gib`. Aurora and DynamoDB sizes
    /// are counted in whole 10 GiB steps (their storage grows on its own).
    pub fn add(&mut self, kind: ResourceKind, size_gib: u64) {
        let tens = |gib: u64| gib.div_ceil(10).max(1) * 10;
        match kind {
            ResourceKind::Ec2Instance => self.instances += 1,
            ResourceKind::EbsVolume => self.non_instance_ebs_gib += size_gib,
            ResourceKind::RdsInstance => self.rds_gib += size_gib,
            ResourceKind::AuroraCluster => self.rds_gib += tens(size_gib),
            ResourceKind::RedshiftCluster => self.redshift_gib += size_gib,
            ResourceKind::DynamodbTable => self.dynamodb_gib += tens(size_gib),
        }
    }

    /// The limits this usage goes beyond, as field errors naming each limit.
    pub fn exceeded(&self, limits: &ResourceLimits) -> Vec<FieldError> {
        let checks = [
            ("max_instances", self.instances, limits.max_instances),
            (
                "max_non_instance_ebs_gib",
                self.non_instance_ebs_gib,
                limits.max_non_instance_ebs_gib,
            ),
            ("max_rds_gib", self.rds_gib, limits.max_rds_gib),
            (
                "max_redshift_gib",
                self.redshift_gib,
                limits.max_redshift_gib,
            ),
            (
                "max_dynamodb_gib",
                self.dynamodb_gib,
                limits.max_dynamodb_gib,
            ),
        ];
        checks
            .into_iter()
            .filter_map(|(field, used, max)| {
                let max = max?;
                (used > u64::from(max)).then(|| {
                    FieldError::new(
                        field,
                        "limit_reached",
                        format!(
                            "the owner's policies would protect {used}, above its limit of {max}"
                        ),
                    )
                })
            })
            .collect()
    }
}

impl Policy {
    fn live(&self) -> Result<&PolicyState, DomainError> {
        self.state
            .as_ref()
            .filter(|s| !s.removed)
            .ok_or(DomainError::NotFound("policy"))
    }
}

fn invalid(errors: Vec<FieldError>) -> Result<(), DomainError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Invalid(errors))
    }
}

impl Aggregate for Policy {
    const TYPE: &'static str = "policy";
    type Command = PolicyCommand;
    type Event = PolicyEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match command {
            PolicyCommand::Create {
                id,
                tenant_id,
                owner_id,
                account_id,
                name,
                settings,
                enabled,
                from_tag_scan,
            } => {
                if self.state.is_some() {
                    return Err(DomainError::conflict("policy_exists", "the policy exists"));
                }
                let mut errors: Vec<_> = validate_name(&name).into_iter().collect();
                errors.extend(settings.validate());
                invalid(errors)?;
                vec![PolicyEvent::PolicyCreated {
                    id,
                    tenant_id,
                    owner_id,
                    account_id,
                    name: name.trim().to_string(),
                    settings,
                    enabled,
                    from_tag_scan,
                }]
            }
            PolicyCommand::Update { name, settings } => {
                let state = self.live()?;
                let name = name.map(|n| n.trim().to_string());
                let mut errors: Vec<_> = name
                    .as_deref()
                    .and_then(validate_name)
                    .into_iter()
                    .collect();
                if let Some(s) = &settings {
                    errors.extend(s.validate());
                }
                invalid(errors)?;
                let name = name.unwrap_or_else(|| state.name.clone());
                let settings = settings.unwrap_or_else(|| state.settings.clone());
                if name == state.name && settings == state.settings {
                    vec![]
                } else {
                    vec![PolicyEvent::PolicyUpdated { name, settings }]
                }
            }
            PolicyCommand::SetEnabled(enabled) => {
                let state = self.live()?;
                match (state.enabled, enabled) {
                    (false, true) => vec![PolicyEvent::PolicyEnabled],
                    (true, false) => vec![PolicyEvent::PolicyDisabled],
                    _ => vec![],
                }
            }
            PolicyCommand::PutTarget(target) => {
                let state = self.live()?;
                invalid(validate_target(&target))?;
                match state.target(&target.key) {
                    Some(existing) if existing == &target => vec![],
                    Some(_) => vec![PolicyEvent::TargetPut(target)],
                    None if target.key.kind == ResourceKind::DynamodbTable
                        && state
                            .targets
                            .iter()
                            .filter(|t| t.key.kind == ResourceKind::DynamodbTable)
                            .count()
                            >= MAX_DYNAMODB_TARGETS =>
                    {
                        return Err(DomainError::conflict(
                            "too_many_targets",
                            format!("a policy has at most {MAX_DYNAMODB_TARGETS} DynamoDB tables"),
                        ))
                    }
                    None => vec![PolicyEvent::TargetPut(target)],
                }
            }
            PolicyCommand::RemoveTarget { key, vanished } => {
                let state = self.live()?;
                if state.target(&key).is_none() {
                    return Err(DomainError::NotFound("target"));
                }
                vec![PolicyEvent::TargetRemoved { key, vanished }]
            }
            PolicyCommand::AttachSchedule(schedule_id) => {
                let state = self.live()?;
                if state.schedules.contains(&schedule_id) {
                    vec![]
                } else {
                    vec![PolicyEvent::ScheduleAttached { schedule_id }]
                }
            }
            PolicyCommand::DetachSchedule(schedule_id) => {
                let state = self.live()?;
                if !state.schedules.contains(&schedule_id) {
                    return Err(DomainError::NotFound("schedule"));
                }
                vec![PolicyEvent::ScheduleDetached { schedule_id }]
            }
            PolicyCommand::SetDr(dr) => {
                let state = self.live()?;
                invalid(dr.validate())?;
                if state.dr == dr {
                    vec![]
                } else {
                    vec![PolicyEvent::DrSettingsChanged(dr)]
                }
            }
            PolicyCommand::StartBackup { backup_id, trigger } => {
                let state = self.live()?;
                start_backup(state, backup_id, trigger)?
            }
            PolicyCommand::FinishBackup {
                backup_id,
                succeeded,
            } => {
                let state = self.state.as_ref().ok_or(DomainError::NotFound("policy"))?;
                if state.running != Some(backup_id) {
                    return Ok(());
                }
                let mut events = vec![PolicyEvent::BackupFinished {
                    backup_id,
                    succeeded,
                }];
                let failures = if succeeded {
                    0
                } else {
                    state.consecutive_failures + 1
                };
                if failures > 0 && failures == state.settings.failures_before_alert {
                    events.push(PolicyEvent::FailureAlertRaised {
                        backup_id,
                        consecutive_failures: failures,
                    });
                }
                events
            }
            PolicyCommand::Remove => {
                self.live()?;
                vec![PolicyEvent::PolicyRemoved]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        if let PolicyEvent::PolicyCreated {
            id,
            tenant_id,
            owner_id,
            account_id,
            name,
            settings,
            enabled,
            from_tag_scan,
        } = event
        {
            self.state = Some(PolicyState {
                id,
                tenant_id,
                owner_id,
                account_id,
                name,
                settings,
                enabled,
                from_tag_scan,
                targets: vec![],
                schedules: BTreeSet::new(),
                running: None,
                last_occurrence: None,
                consecutive_failures: 0,
                removed: false,
                dr: DrSettings::default(),
                successful_backups: 0,
            });
            return;
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        match event {
            PolicyEvent::PolicyCreated { .. } => {}
            PolicyEvent::PolicyUpdated { name, settings } => {
                state.name = name;
                state.settings = settings;
            }
            PolicyEvent::PolicyEnabled => state.enabled = true,
            PolicyEvent::PolicyDisabled => state.enabled = false,
            PolicyEvent::TargetPut(target) => {
                match state.targets.iter_mut().find(|t| t.key == target.key) {
                    Some(existing) => *existing = target,
                    None => state.targets.push(target),
                }
            }
            PolicyEvent::TargetRemoved { key, .. } => state.targets.retain(|t| t.key != key),
            PolicyEvent::ScheduleAttached { schedule_id } => {
                state.schedules.insert(schedule_id);
            }
            PolicyEvent::ScheduleDetached { schedule_id } => {
                state.schedules.remove(&schedule_id);
            }
            PolicyEvent::BackupStarted { backup_id, trigger } => {
                state.running = Some(backup_id);
                if let Trigger::Scheduled { occurrence, .. } = trigger {
                    state.last_occurrence = Some(occurrence);
                }
            }
            PolicyEvent::OccurrenceSkipped { occurrence, .. } => {
                state.last_occurrence = Some(occurrence)
            }
            PolicyEvent::BackupFinished { succeeded, .. } => {
                state.running = None;
                if succeeded {
                    state.successful_backups += 1;
                }
                state.consecutive_failures = if succeeded {
                    0
                } else {
                    state.consecutive_failures + 1
                };
            }
            PolicyEvent::FailureAlertRaised { .. } => {}
            PolicyEvent::PolicyRemoved => state.removed = true,
            PolicyEvent::DrSettingsChanged(dr) => state.dr = dr,
        }
    }
}

/// The start rules: a schedule occurrence is handled once (a repeat or an
/// older occurrence does nothing); a scheduled run of a disabled policy does
/// nothing; while a backup runs, a scheduled run is skipped (and recorded)
/// and an ad hoc run is refused.
fn start_backup(
    state: &PolicyState,
    backup_id: Uuid,
    trigger: Trigger,
) -> Result<Vec<PolicyEvent>, DomainError> {
    match &trigger {
        Trigger::Scheduled {
            schedule_id,
            occurrence,
        } => {
            let handled = state
                .last_occurrence
                .is_some_and(|last| *occurrence <= last);
            if handled || !state.enabled || !state.schedules.contains(schedule_id) {
                return Ok(vec![]);
            }
            let skip = |reason| PolicyEvent::OccurrenceSkipped {
                schedule_id: *schedule_id,
                occurrence: *occurrence,
                reason,
            };
            if state.running.is_some() {
                return Ok(vec![skip(SkipReason::BackupRunning)]);
            }
            if state.targets.is_empty() {
                return Ok(vec![skip(SkipReason::NoTargets)]);
            }
        }
        Trigger::AdHoc | Trigger::Retry { .. } => {
            if let Some(running) = state.running {
                return Err(DomainError::conflict(
                    "backup_running",
                    format!("backup {running} of this policy is still running"),
                ));
            }
            if state.targets.is_empty() {
                return Err(DomainError::conflict(
                    "no_targets",
                    "the policy has no targets to back up",
                ));
            }
        }
    }
    Ok(vec![PolicyEvent::BackupStarted { backup_id, trigger }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Test = TestFramework<Policy>;

    fn created(enabled: bool) -> PolicyEvent {
        PolicyEvent::PolicyCreated {
            id: Uuid::nil(),
            tenant_id: TenantId(Uuid::nil()),
            owner_id: UserId(Uuid::nil()),
            account_id: Uuid::nil(),
            name: "nightly".into(),
            settings: PolicySettings::default(),
            enabled,
            from_tag_scan: false,
        }
    }

    fn volume(id: &str) -> Target {
        Target {
            key: TargetKey {
                kind: ResourceKind::EbsVolume,
                region: "us-east-1".into(),
                resource_id: id.into(),
            },
            instance: None,
        }
    }

    fn at(minute: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + i64::from(minute) * 60, 0).unwrap()
    }

    fn scheduled(schedule: u128, minute: u32) -> Trigger {
        Trigger::Scheduled {
            schedule_id: Uuid::from_u128(schedule),
            occurrence: at(minute),
        }
    }

    fn ready() -> Vec<PolicyEvent> {
        vec![
            created(true),
            PolicyEvent::TargetPut(volume("vol-1")),
            PolicyEvent::ScheduleAttached {
                schedule_id: Uuid::from_u128(1),
            },
            PolicyEvent::ScheduleAttached {
                schedule_id: Uuid::from_u128(2),
            },
        ]
    }

    #[test]
    fn an_occurrence_starts_one_backup_even_when_two_schedules_fire_it() {
        let backup = Uuid::from_u128(9);
        let mut given = ready();
        given.push(PolicyEvent::BackupStarted {
            backup_id: backup,
            trigger: scheduled(1, 10),
        });
        given.push(PolicyEvent::BackupFinished {
            backup_id: backup,
            succeeded: true,
        });
        Test::with(())
            .given(given)
            .when(PolicyCommand::StartBackup {
                backup_id: Uuid::from_u128(10),
                trigger: scheduled(2, 10),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_scheduled_run_while_a_backup_runs_is_skipped_and_recorded() {
        let mut given = ready();
        given.push(PolicyEvent::BackupStarted {
            backup_id: Uuid::from_u128(9),
            trigger: scheduled(1, 10),
        });
        Test::with(())
            .given(given)
            .when(PolicyCommand::StartBackup {
                backup_id: Uuid::from_u128(10),
                trigger: scheduled(2, 11),
            })
            .then_expect_events(vec![PolicyEvent::OccurrenceSkipped {
                schedule_id: Uuid::from_u128(2),
                occurrence: at(11),
                reason: SkipReason::BackupRunning,
            }]);
    }

    #[test]
    fn an_ad_hoc_run_while_a_backup_runs_is_refused() {
        let mut given = ready();
        given.push(PolicyEvent::BackupStarted {
            backup_id: Uuid::from_u128(9),
            trigger: Trigger::AdHoc,
        });
        Test::with(())
            .given(given)
            .when(PolicyCommand::StartBackup {
                backup_id: Uuid::from_u128(10),
                trigger: Trigger::AdHoc,
            })
            .then_expect_error(DomainError::conflict(
                "backup_running",
                format!(
                    "backup {} of this policy is still running",
                    Uuid::from_u128(9)
                ),
            ));
    }

    #[test]
    fn a_disabled_policy_ignores_its_schedules() {
        let mut given = ready();
        given.push(PolicyEvent::PolicyDisabled);
        Test::with(())
            .given(given)
            .when(PolicyCommand::StartBackup {
                backup_id: Uuid::from_u128(10),
                trigger: scheduled(1, 10),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_older_occurrence_than_one_handled_does_nothing() {
        let mut given = ready();
        given.push(PolicyEvent::OccurrenceSkipped {
            schedule_id: Uuid::from_u128(1),
            occurrence: at(20),
            reason: SkipReason::BackupRunning,
        });
        Test::with(())
            .given(given)
            .when(PolicyCommand::StartBackup {
                backup_id: Uuid::from_u128(10),
                trigger: scheduled(2, 15),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_alert_is_raised_when_failures_reach_the_threshold() {
        let mut given = ready();
        given.push(PolicyEvent::PolicyUpdated {
            name: "nightly".into(),
            settings: PolicySettings {
                failures_before_alert: 2,
                ..PolicySettings::default()
            },
        });
        let backup = |n| Uuid::from_u128(n);
        for n in [1, 2] {
            given.push(PolicyEvent::BackupStarted {
                backup_id: backup(n),
                trigger: Trigger::AdHoc,
            });
            if n == 1 {
                given.push(PolicyEvent::BackupFinished {
                    backup_id: backup(1),
                    succeeded: false,
                });
            }
        }
        Test::with(())
            .given(given)
            .when(PolicyCommand::FinishBackup {
                backup_id: backup(2),
                succeeded: false,
            })
            .then_expect_events(vec![
                PolicyEvent::BackupFinished {
                    backup_id: backup(2),
                    succeeded: false,
                },
                PolicyEvent::FailureAlertRaised {
                    backup_id: backup(2),
                    consecutive_failures: 2,
                },
            ]);
    }

    #[test]
    fn dynamodb_tables_are_capped_at_one_hundred_per_policy() {
        let table = |name: &str| Target {
            key: TargetKey {
                kind: ResourceKind::DynamodbTable,
                region: "us-east-1".into(),
                resource_id: name.into(),
            },
            instance: None,
        };
        let mut given = vec![created(true)];
        given.extend(
            (0..MAX_DYNAMODB_TARGETS).map(|i| PolicyEvent::TargetPut(table(&format!("t{i}")))),
        );
        // Other kinds are not capped by it.
        given.extend((0..150).map(|i| PolicyEvent::TargetPut(volume(&format!("vol-{i}")))));
        Test::with(())
            .given(given.clone())
            .when(PolicyCommand::PutTarget(volume("vol-extra")))
            .then_expect_events(vec![PolicyEvent::TargetPut(volume("vol-extra"))]);
        Test::with(())
            .given(given)
            .when(PolicyCommand::PutTarget(table("t-extra")))
            .then_expect_error(DomainError::conflict(
                "too_many_targets",
                format!("a policy has at most {MAX_DYNAMODB_TARGETS} DynamoDB tables"),
            ));
    }

    #[test]
    fn instance_targets_need_options_and_others_refuse_them() {
        let mut instance = volume("i-1");
        instance.key.kind = ResourceKind::Ec2Instance;
        assert_eq!(validate_target(&instance)[0].field, "instance");
        let mut with_options = volume("vol-1");
        with_options.instance = Some(InstanceOptions {
            mode: InstanceMode::Snapshots,
            volumes: VolumeSelection::All,
        });
        assert_eq!(validate_target(&with_options)[0].code, "not_applicable");
    }

    #[test]
    fn settings_errors_name_their_fields() {
        let settings = PolicySettings {
            generations: 0,
            retries: 11,
            ..PolicySettings::default()
        };
        let fields: Vec<_> = settings.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["generations", "retries"]);
    }

    #[test]
    fn aurora_and_dynamodb_count_in_ten_gib_steps() {
        let mut usage = ProtectedUsage::default();
        usage.add(ResourceKind::AuroraCluster, 1);
        usage.add(ResourceKind::DynamodbTable, 11);
        usage.add(ResourceKind::RdsInstance, 5);
        assert_eq!(usage.rds_gib, 15);
        assert_eq!(usage.dynamodb_gib, 20);
        let limits = ResourceLimits {
            max_rds_gib: Some(14),
            ..ResourceLimits::default()
        };
        let errors = usage.exceeded(&limits);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "max_rds_gib");
    }

    fn dr(regions: &[&str]) -> DrSettings {
        DrSettings {
            enabled: true,
            regions: regions.iter().map(|r| r.to_string()).collect(),
            ..DrSettings::default()
        }
    }

    #[test]
    fn dr_settings_are_validated_and_recorded() {
        Test::with(())
            .given(vec![created(true)])
            .when(PolicyCommand::SetDr(dr(&["eu-west-1"])))
            .then_expect_events(vec![PolicyEvent::DrSettingsChanged(dr(&["eu-west-1"]))]);
        Test::with(())
            .given(vec![
                created(true),
                PolicyEvent::DrSettingsChanged(dr(&["eu-west-1"])),
            ])
            .when(PolicyCommand::SetDr(dr(&["eu-west-1"])))
            .then_expect_events(vec![]);
        let bad = DrSettings {
            every: 0,
            timeout_hours: 0,
            ..dr(&["eu-west-1", "eu-west-1", "mars"])
        };
        let fields: Vec<_> = bad.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            vec!["dr.every", "dr.timeout_hours", "dr.regions", "dr.regions"]
        );
        assert_eq!(dr(&[]).validate()[0].code, "required");
        assert!(DrSettings::default().validate().is_empty());
    }

    #[test]
    fn dr_copies_the_first_backup_then_every_nth() {
        let every_third = DrSettings {
            every: 3,
            ..dr(&["eu-west-1"])
        };
        let copied: Vec<u64> = (0..7).filter(|n| every_third.copies_backup(*n)).collect();
        assert_eq!(copied, vec![0, 3, 6]);
        assert!(!DrSettings::default().copies_backup(0));
    }

    #[test]
    fn windows_instances_default_to_an_initial_ami() {
        assert_eq!(
            InstanceMode::default_for_platform("Windows"),
            InstanceMode::SnapshotsWithInitialAmi
        );
        assert_eq!(
            InstanceMode::default_for_platform("Linux/UNIX"),
            InstanceMode::Snapshots
        );
    }
}
