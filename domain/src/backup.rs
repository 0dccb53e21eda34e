//! The Backup aggregate: one run of a policy. It records what was created in
//! AWS for each target (snapshots, AMIs, database snapshots and backups),
//! their completion, the outcome, and later the freezer and deletion.
//!
//! Jobs do the AWS work and report here; the aggregate decides the outcome
//! and refuses reports that do not fit (a second result for one target, a
//! change after deletion), so a repeated job step changes nothing.
//!
//! Retention deletes a backup's AWS objects but keeps an instance's initial
//! AMI (mode "snapshots + initial AMI") while it is the newest of that
//! instance; it goes once a newer one has completed. The record of a deleted
//! backup is purged after the organisation's record retention, once nothing
//! of it is kept; frozen backups are never purged.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::policy::InstanceMode;
use crate::policy::{DrSettings, SuccessCriterion, Target, TargetKey, Trigger};
use crate::source::SourceRecord;
use crate::{DomainError, TenantId};

/// What Safehold made in AWS for a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// `ebs_snapshot`, `ami`, `rds_snapshot`, `aurora_snapshot`, `redshift_snapshot` or `dynamodb_backup`.
    pub kind: String,
    /// The AWS id (snapshot id, AMI id, identifier or ARN).
    pub id: String,
    pub region: String,
    /// The resource it was taken from.
    pub source: String,
    /// Instance volumes: the device name.
    pub device: Option<String>,
    pub size_gib: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    Pending,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    InProgress,
    Successful,
    PartiallySuccessful,
    Failed,
}

impl BackupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::InProgress => "in_progress",
            BackupStatus::Successful => "successful",
            BackupStatus::PartiallySuccessful => "partially_successful",
            BackupStatus::Failed => "failed",
        }
    }
}

/// Where a target stands in this backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetProgress {
    /// Nothing created yet.
    Waiting,
    /// Created; completion pending for some snapshots.
    Taken,
    Failed {
        error: String,
    },
    /// The resource no longer exists.
    Vanished,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRun {
    pub target: Target,
    pub progress: TargetProgress,
    /// AWS id → snapshot and its state.
    pub snapshots: BTreeMap<String, (Snapshot, SnapshotState)>,
    /// What the source was like when it was taken (recovery defaults).
    #[serde(default)]
    pub source: Option<SourceRecord>,
}

impl TargetRun {
    fn done(&self) -> bool {
        match self.progress {
            TargetProgress::Waiting => false,
            TargetProgress::Taken => self
                .snapshots
                .values()
                .all(|(_, s)| *s != SnapshotState::Pending),
            TargetProgress::Failed { .. } | TargetProgress::Vanished => true,
        }
    }

    fn succeeded(&self) -> bool {
        self.progress == TargetProgress::Taken
            && self
                .snapshots
                .values()
                .all(|(_, s)| *s == SnapshotState::Completed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FreezerEntry {
    pub name: String,
    pub description: String,
}

/// Where a backup stands in disaster recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DrStatus {
    /// Decided; no copy started yet.
    Pending,
    InProgress,
    /// Every copy completed.
    Completed,
    /// A copy failed or did not complete before the timeout.
    Failed,
    /// The policy copies only every N-th backup.
    Skipped,
}

impl DrStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DrStatus::Pending => "pending",
            DrStatus::InProgress => "in_progress",
            DrStatus::Completed => "completed",
            DrStatus::Failed => "failed",
            DrStatus::Skipped => "skipped",
        }
    }
}

/// A disaster-recovery copy of one of the backup's snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrCopy {
    /// The backup's own snapshot, AMI or database snapshot.
    pub original_id: String,
    /// The original's kind (`ebs_snapshot`, `ami`, `rds_snapshot`, `aurora_snapshot`).
    pub kind: String,
    pub source_region: String,
    /// Where the copy is.
    pub region: String,
    /// The registered account holding the copy.
    pub account_id: Uuid,
    pub copy_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrCopyRun {
    pub copy: DrCopy,
    pub state: SnapshotState,
}

/// A copy that could not be made or did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrCopyFailure {
    pub original_id: String,
    pub region: String,
    pub reason: String,
}

/// One disaster-recovery run of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrRun {
    pub status: DrStatus,
    pub regions: Vec<String>,
    /// The account receiving the copies.
    pub account_id: Uuid,
    /// Whether that is a vault account other than the backup's.
    pub cross_account: bool,
    pub keep_originals: bool,
    pub deadline: DateTime<Utc>,
    pub copies: Vec<DrCopyRun>,
    pub failures: Vec<DrCopyFailure>,
    /// Originals deleted once copied (the policy keeps no originals).
    pub originals_deleted: Vec<String>,
    pub copies_deleted: bool,
}

/// The kinds of snapshot disaster recovery copies; the others are noted
/// with the reason.
fn dr_not_copied(kind: &str, cross_account: bool) -> Option<&'static str> {
    match kind {
        "ebs_snapshot" | "rds_snapshot" | "aurora_snapshot" => None,
        "ami" if cross_account => Some(
            "AMIs are not copied into another account (their snapshots would need sharing one by one); \
             launch from the instance's snapshots there instead",
        ),
        "ami" => None,
        "redshift_snapshot" => Some(
            "Redshift snapshots are copied to other regions by the cluster's own cross-region \
             snapshot setting, not per snapshot",
        ),
        "dynamodb_backup" => Some(
            "DynamoDB on-demand backups cannot be copied to another region or account",
        ),
        _ => Some("this kind of snapshot cannot be copied"),
    }
}

impl DrRun {
    fn copy(&self, original: &str, region: &str) -> Option<&DrCopyRun> {
        self.copies
            .iter()
            .find(|c| c.copy.original_id == original && c.copy.region == region)
    }

    fn failed(&self, original: &str, region: &str) -> bool {
        self.failures
            .iter()
            .any(|f| f.original_id == original && f.region == region)
    }

    /// Copies started and not yet completed or failed.
    pub fn pending(&self) -> impl Iterator<Item = &DrCopy> {
        self.copies
            .iter()
            .filter(|c| c.state == SnapshotState::Pending)
            .map(|c| &c.copy)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Backup {
    pub state: Option<BackupState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupState {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub policy_id: Uuid,
    pub policy_name: String,
    pub account_id: Uuid,
    pub trigger: Trigger,
    pub success_criterion: SuccessCriterion,
    pub targets: Vec<TargetRun>,
    pub status: BackupStatus,
    pub frozen: Option<FreezerEntry>,
    pub deleted: bool,
    /// Initial AMIs kept after the backup's deletion (each is still its
    /// instance's newest).
    #[serde(default)]
    pub kept: BTreeSet<String>,
    /// When its AWS objects were last deleted (the backup's deletion, or a
    /// kept AMI's); unknown for deletions recorded without their time.
    #[serde(default)]
    pub deleted_at: Option<DateTime<Utc>>,
    /// The record is gone from the read models; nothing more happens to it.
    #[serde(default)]
    pub purged: bool,
    /// Disaster recovery, once decided.
    #[serde(default)]
    pub dr: Option<DrRun>,
    /// A round has begun creating AWS objects: from then on a round looks
    /// for what an interrupted one may have made before creating anything.
    #[serde(default)]
    pub taking_started: bool,
}

impl BackupState {
    /// Whether its disaster-recovery copies are still being made: its AWS
    /// objects are the copies' sources until then, so it is not deleted.
    pub fn dr_running(&self) -> bool {
        self.dr
            .as_ref()
            .is_some_and(|dr| matches!(dr.status, DrStatus::Pending | DrStatus::InProgress))
    }

    /// The copies disaster recovery makes: each completed snapshot of a
    /// copyable kind into each target region, except within its own account
    /// into the region it is already in.
    pub fn dr_wanted(&self) -> Vec<(&Snapshot, &str)> {
        let Some(dr) = &self.dr else { return vec![] };
        let mut wanted = Vec::new();
        for run in &self.targets {
            for (snapshot, state) in run.snapshots.values() {
                if *state != SnapshotState::Completed
                    || dr_not_copied(&snapshot.kind, dr.cross_account).is_some()
                {
                    continue;
                }
                for region in &dr.regions {
                    if dr.cross_account || *region != snapshot.region {
                        wanted.push((snapshot, region.as_str()));
                    }
                }
            }
        }
        wanted
    }

    /// Wanted copies neither started nor failed yet.
    pub fn dr_to_start(&self) -> Vec<(&Snapshot, &str)> {
        let Some(dr) = &self.dr else { return vec![] };
        self.dr_wanted()
            .into_iter()
            .filter(|(s, region)| dr.copy(&s.id, region).is_none() && !dr.failed(&s.id, region))
            .collect()
    }

    /// Originals to delete once every copy completed, when the policy keeps
    /// none: those copied elsewhere (a snapshot already in a target region
    /// is its own copy there and stays).
    pub fn dr_originals_to_delete(&self) -> Vec<&Snapshot> {
        let Some(dr) = &self.dr else { return vec![] };
        if dr.keep_originals || dr.status != DrStatus::Completed {
            return vec![];
        }
        self.snapshots()
            .filter(|s| {
                dr.copies.iter().any(|c| c.copy.original_id == s.id)
                    && (dr.cross_account || !dr.regions.contains(&s.region))
                    && !dr.originals_deleted.contains(&s.id)
            })
            .collect()
    }

    /// The outcome of disaster recovery once every wanted copy is done.
    fn dr_outcome(&self) -> Option<DrStatus> {
        let dr = self.dr.as_ref()?;
        if !matches!(dr.status, DrStatus::Pending | DrStatus::InProgress) {
            return None;
        }
        let mut all_completed = true;
        for (s, region) in self.dr_wanted() {
            if dr.failed(&s.id, region) {
                all_completed = false;
                continue;
            }
            match dr.copy(&s.id, region).map(|c| c.state) {
                None | Some(SnapshotState::Pending) => return None,
                Some(SnapshotState::Failed) => all_completed = false,
                Some(SnapshotState::Completed) => {}
            }
        }
        Some(if all_completed {
            DrStatus::Completed
        } else {
            DrStatus::Failed
        })
    }

    pub fn target(&self, key: &TargetKey) -> Option<&TargetRun> {
        self.targets.iter().find(|t| &t.target.key == key)
    }

    /// Every snapshot not yet known to be complete or failed.
    pub fn pending(&self) -> impl Iterator<Item = &Snapshot> {
        self.targets.iter().flat_map(|t| {
            t.snapshots
                .values()
                .filter(|(_, s)| *s == SnapshotState::Pending)
                .map(|(snap, _)| snap)
        })
    }

    pub fn snapshots(&self) -> impl Iterator<Item = &Snapshot> {
        self.targets
            .iter()
            .flat_map(|t| t.snapshots.values().map(|(snap, _)| snap))
    }

    /// The initial AMIs this backup made (AMIs of instances backed up as
    /// "snapshots + initial AMI"), with their state.
    pub fn initial_amis(&self) -> impl Iterator<Item = (&Snapshot, SnapshotState)> {
        self.targets
            .iter()
            .filter(|t| {
                t.target
                    .instance
                    .as_ref()
                    .is_some_and(|o| o.mode == InstanceMode::SnapshotsWithInitialAmi)
            })
            .flat_map(|t| t.snapshots.values())
            .filter(|(snap, _)| snap.kind == "ami")
            .map(|(snap, state)| (snap, *state))
    }

    /// Whether `id` is one of this backup's completed initial AMIs.
    pub fn is_initial_ami(&self, id: &str) -> bool {
        self.initial_amis()
            .any(|(snap, state)| snap.id == id && state == SnapshotState::Completed)
    }

    /// The initial AMIs retention keeps when it deletes this backup: each
    /// completed one that no newer completed initial AMI of its instance
    /// replaces (`replaced` answers that).
    pub fn initial_amis_to_keep(&self, replaced: impl Fn(&Snapshot) -> bool) -> Vec<String> {
        self.initial_amis()
            .filter(|(_, state)| *state == SnapshotState::Completed)
            .filter(|(snap, _)| !replaced(snap))
            .map(|(snap, _)| snap.id.clone())
            .collect()
    }

    /// The outcome once every target is done: all succeeded, some, or none.
    /// Vanished targets that the policy drops do not count against it.
    fn outcome(&self) -> Option<BackupStatus> {
        if !self.targets.iter().all(TargetRun::done) {
            return None;
        }
        let counted: Vec<_> = self
            .targets
            .iter()
            .filter(|t| t.progress != TargetProgress::Vanished)
            .collect();
        let ok = counted.iter().filter(|t| t.succeeded()).count();
        Some(if counted.is_empty() || ok == 0 {
            BackupStatus::Failed
        } else if ok == counted.len() {
            BackupStatus::Successful
        } else {
            BackupStatus::PartiallySuccessful
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum BackupCommand {
    Begin {
        id: Uuid,
        tenant_id: TenantId,
        policy_id: Uuid,
        policy_name: String,
        account_id: Uuid,
        trigger: Trigger,
        success_criterion: SuccessCriterion,
        targets: Vec<Target>,
    },
    RecordSnapshots {
        target: TargetKey,
        snapshots: Vec<Snapshot>,
    },
    /// Recorded before a round first creates anything in AWS.
    StartTaking,
    /// What a round took for many targets at once: one append instead of
    /// one per target. Targets already reported are left as they are.
    RecordTaken {
        taken: Vec<(TargetKey, Vec<Snapshot>)>,
        /// What the taken sources were like, for recovery.
        sources: Vec<(TargetKey, SourceRecord)>,
    },
    RecordTargetFailed {
        target: TargetKey,
        error: String,
    },
    RecordTargetVanished {
        target: TargetKey,
        /// Whether the policy drops the target (auto target removal).
        removed_from_policy: bool,
    },
    RecordSnapshotStates {
        states: Vec<(String, SnapshotState)>,
    },
    /// Gives up on snapshots still pending (completion timeout).
    TimeOut,
    Freeze(FreezerEntry),
    /// Records that its AWS objects are gone (deleted, or marked where Safehold may not delete).
    RecordDeleted {
        marked_only: bool,
        /// Initial AMIs left in place: each is still its instance's newest.
        kept: Vec<String>,
        at: DateTime<Utc>,
    },
    /// Records that a kept initial AMI is gone: a newer one replaced it.
    RecordInitialAmiDeleted {
        id: String,
        marked_only: bool,
        at: DateTime<Utc>,
    },
    /// Removes the record of a deleted backup from the read models once its
    /// AWS objects have been gone for `record_retention_days`.
    Purge {
        now: DateTime<Utc>,
        record_retention_days: u32,
        /// When the read model says its objects were deleted; used only for
        /// deletions recorded without their time.
        recorded_deleted_at: Option<DateTime<Utc>>,
    },
    /// After a successful backup: whether and where disaster recovery
    /// copies it. `successful_before` counts the policy's earlier successful
    /// backups; `now` starts the DR timeout.
    DecideDr {
        settings: DrSettings,
        successful_before: u64,
        now: DateTime<Utc>,
    },
    RecordDrCopy(DrCopy),
    RecordDrCopyFailed {
        original_id: String,
        region: String,
        reason: String,
    },
    /// States of started copies, by copy id and region.
    RecordDrCopyStates {
        states: Vec<(String, String, SnapshotState)>,
    },
    /// Fails what is not complete once the DR deadline has passed.
    DrTimeOut {
        now: DateTime<Utc>,
    },
    RecordDrOriginalsDeleted {
        ids: Vec<String>,
    },
    /// The DR copies are gone (deleted, or marked where deletion is not allowed).
    RecordDrCopiesDeleted {
        marked_only: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BackupEvent {
    BackupBegun {
        id: Uuid,
        tenant_id: TenantId,
        policy_id: Uuid,
        policy_name: String,
        account_id: Uuid,
        trigger: Trigger,
        success_criterion: SuccessCriterion,
        targets: Vec<Target>,
    },
    SnapshotsTaken {
        target: TargetKey,
        snapshots: Vec<Snapshot>,
    },
    TakingStarted,
    /// The configuration of sources at backup time, recorded with their
    /// snapshots so a recovery has its defaults after the source is gone.
    SourcesRecorded {
        sources: Vec<(TargetKey, SourceRecord)>,
    },
    TargetFailed {
        target: TargetKey,
        error: String,
    },
    TargetVanished {
        target: TargetKey,
        removed_from_policy: bool,
    },
    SnapshotCompleted {
        id: String,
    },
    SnapshotFailed {
        id: String,
        reason: String,
    },
    BackupCompleted {
        status: BackupStatus,
    },
    BackupFrozen(FreezerEntry),
    BackupDeleted {
        marked_only: bool,
        /// When the objects were deleted (absent in earlier records).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<DateTime<Utc>>,
    },
    /// An initial AMI outlives its backup's deletion: it is still the newest
    /// of its instance. Recorded just before `BackupDeleted`.
    InitialAmiKept {
        id: String,
    },
    /// A kept initial AMI is deleted (or marked expired) after a newer one
    /// of its instance completed.
    InitialAmiDeleted {
        id: String,
        marked_only: bool,
        at: DateTime<Utc>,
    },
    /// The record of the deleted backup is removed from the read models.
    RecordPurged {
        record_retention_days: u32,
    },
    DrSkipped {
        reason: String,
    },
    DrPlanned {
        regions: Vec<String>,
        account_id: Uuid,
        cross_account: bool,
        keep_originals: bool,
        deadline: DateTime<Utc>,
    },
    DrSnapshotNotCopied {
        original_id: String,
        reason: String,
    },
    DrCopyStarted(DrCopy),
    DrCopyCompleted {
        copy_id: String,
        region: String,
    },
    DrCopyFailed {
        original_id: String,
        region: String,
        reason: String,
    },
    DrFinished {
        status: DrStatus,
    },
    DrOriginalsDeleted {
        ids: Vec<String>,
    },
    DrCopiesDeleted {
        marked_only: bool,
    },
}

impl DomainEvent for BackupEvent {
    fn event_type(&self) -> String {
        match self {
            BackupEvent::BackupBegun { .. } => "BackupBegun",
            BackupEvent::SnapshotsTaken { .. } => "SnapshotsTaken",
            BackupEvent::TargetFailed { .. } => "TargetFailed",
            BackupEvent::TargetVanished { .. } => "TargetVanished",
            BackupEvent::SnapshotCompleted { .. } => "SnapshotCompleted",
            BackupEvent::SnapshotFailed { .. } => "SnapshotFailed",
            BackupEvent::BackupCompleted { .. } => "BackupCompleted",
            BackupEvent::BackupFrozen(_) => "BackupFrozen",
            BackupEvent::TakingStarted => "TakingStarted",
            BackupEvent::SourcesRecorded { .. } => "SourcesRecorded",
            BackupEvent::BackupDeleted { .. } => "BackupDeleted",
            BackupEvent::InitialAmiKept { .. } => "InitialAmiKept",
            BackupEvent::InitialAmiDeleted { .. } => "InitialAmiDeleted",
            BackupEvent::RecordPurged { .. } => "RecordPurged",
            BackupEvent::DrSkipped { .. } => "DrSkipped",
            BackupEvent::DrPlanned { .. } => "DrPlanned",
            BackupEvent::DrSnapshotNotCopied { .. } => "DrSnapshotNotCopied",
            BackupEvent::DrCopyStarted(_) => "DrCopyStarted",
            BackupEvent::DrCopyCompleted { .. } => "DrCopyCompleted",
            BackupEvent::DrCopyFailed { .. } => "DrCopyFailed",
            BackupEvent::DrFinished { .. } => "DrFinished",
            BackupEvent::DrOriginalsDeleted { .. } => "DrOriginalsDeleted",
            BackupEvent::DrCopiesDeleted { .. } => "DrCopiesDeleted",
        }
        .into()
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

fn key_text(key: &TargetKey) -> String {
    format!("{} {} ({})", key.kind.as_str(), key.resource_id, key.region)
}

impl BackupEvent {
    /// One line for the backup log and the audit log.
    pub fn describe(&self) -> String {
        match self {
            BackupEvent::BackupBegun {
                policy_name,
                targets,
                ..
            } => format!(
                "Backup of policy {policy_name} began with {} targets",
                targets.len()
            ),
            BackupEvent::SnapshotsTaken { target, snapshots } => format!(
                "{}: created {}",
                key_text(target),
                snapshots
                    .iter()
                    .map(|s| format!("{} {}", s.kind, s.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            BackupEvent::TargetFailed { target, error } => {
                format!("{}: failed: {error}", key_text(target))
            }
            BackupEvent::TargetVanished {
                target,
                removed_from_policy,
            } => format!(
                "Warning: {} no longer exists{}",
                key_text(target),
                if *removed_from_policy {
                    "; removed from the policy"
                } else {
                    ""
                }
            ),
            BackupEvent::SnapshotCompleted { id } => format!("{id} completed"),
            BackupEvent::SnapshotFailed { id, reason } => format!("{id} failed: {reason}"),
            BackupEvent::BackupCompleted { status } => {
                format!("Backup finished: {}", status.as_str().replace('_', " "))
            }
            BackupEvent::BackupFrozen(entry) => {
                format!("Moved to the freezer as {}", entry.name)
            }
            BackupEvent::TakingStarted => "Taking snapshots".into(),
            BackupEvent::SourcesRecorded { sources } => {
                format!("Recorded the configuration of {} source(s)", sources.len())
            }
            BackupEvent::BackupDeleted { marked_only, .. } => if *marked_only {
                "Expired: its AWS objects were tagged as expired (deletion not allowed there)"
            } else {
                "Deleted its AWS objects"
            }
            .into(),
            BackupEvent::InitialAmiKept { id } => {
                format!("Kept {id}: it is still the instance's newest initial AMI")
            }
            BackupEvent::InitialAmiDeleted {
                id, marked_only, ..
            } => if *marked_only {
                format!("A newer initial AMI replaces {id}: tagged as expired (deletion not allowed there)")
            } else {
                format!("A newer initial AMI replaces {id}: deleted")
            },
            BackupEvent::RecordPurged {
                record_retention_days,
            } => format!(
                "Record purged: its AWS objects were deleted more than {record_retention_days} days ago"
            ),
            BackupEvent::DrSkipped { reason } => format!("Disaster recovery skipped: {reason}"),
            BackupEvent::DrPlanned {
                regions,
                account_id,
                cross_account,
                ..
            } => format!(
                "Disaster recovery: copying to {}{}",
                regions.join(", "),
                if *cross_account {
                    format!(" in vault account {account_id}")
                } else {
                    String::new()
                }
            ),
            BackupEvent::DrSnapshotNotCopied {
                original_id,
                reason,
            } => format!("Disaster recovery: {original_id} not copied: {reason}"),
            BackupEvent::DrCopyStarted(c) => format!(
                "Disaster recovery: copying {} {} to {} as {}",
                c.kind, c.original_id, c.region, c.copy_id
            ),
            BackupEvent::DrCopyCompleted { copy_id, region } => {
                format!("Disaster recovery: copy {copy_id} in {region} completed")
            }
            BackupEvent::DrCopyFailed {
                original_id,
                region,
                reason,
            } => format!("Disaster recovery: copy of {original_id} to {region} failed: {reason}"),
            BackupEvent::DrFinished { status } => format!(
                "Disaster recovery finished: {}",
                status.as_str().replace('_', " ")
            ),
            BackupEvent::DrOriginalsDeleted { ids } => format!(
                "Disaster recovery: deleted the copied originals {}",
                ids.join(", ")
            ),
            BackupEvent::DrCopiesDeleted { marked_only } => if *marked_only {
                "Disaster-recovery copies tagged as expired (deletion not allowed there)"
            } else {
                "Deleted the disaster-recovery copies"
            }
            .into(),
        }
    }
}

impl Backup {
    fn live(&self) -> Result<&BackupState, DomainError> {
        let state = self.state.as_ref().ok_or(DomainError::NotFound("backup"))?;
        if state.deleted {
            return Err(DomainError::conflict(
                "backup_deleted",
                "the backup has been deleted",
            ));
        }
        Ok(state)
    }

    fn running(&self) -> Result<&BackupState, DomainError> {
        let state = self.live()?;
        if state.status != BackupStatus::InProgress {
            return Err(DomainError::conflict(
                "backup_finished",
                "the backup has finished",
            ));
        }
        Ok(state)
    }
}

/// Appends the completion event when the reports so far settle the outcome.
fn with_outcome(state: &BackupState, events: Vec<BackupEvent>) -> Vec<BackupEvent> {
    let mut next = Backup {
        state: Some(state.clone()),
    };
    for e in &events {
        next.apply(e.clone());
    }
    let mut events = events;
    if let Some(status) = next.state.as_ref().and_then(BackupState::outcome) {
        events.push(BackupEvent::BackupCompleted { status });
    }
    events
}

impl Aggregate for Backup {
    const TYPE: &'static str = "backup";
    type Command = BackupCommand;
    type Event = BackupEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events =
            match command {
                BackupCommand::Begin {
                    id,
                    tenant_id,
                    policy_id,
                    policy_name,
                    account_id,
                    trigger,
                    success_criterion,
                    targets,
                } => {
                    if self.state.is_some() {
                        // A repeated start of the same backup.
                        return Ok(());
                    }
                    let begun = BackupEvent::BackupBegun {
                        id,
                        tenant_id,
                        policy_id,
                        policy_name,
                        account_id,
                        trigger,
                        success_criterion,
                        targets: targets.clone(),
                    };
                    if targets.is_empty() {
                        vec![
                            begun,
                            BackupEvent::BackupCompleted {
                                status: BackupStatus::Failed,
                            },
                        ]
                    } else {
                        vec![begun]
                    }
                }
                BackupCommand::RecordSnapshots { target, snapshots } => {
                    let state = self.running()?;
                    let run = state
                        .target(&target)
                        .ok_or(DomainError::NotFound("target"))?;
                    if run.progress != TargetProgress::Waiting {
                        return Ok(());
                    }
                    with_outcome(
                        state,
                        vec![BackupEvent::SnapshotsTaken { target, snapshots }],
                    )
                }
                BackupCommand::StartTaking => {
                    let state = self.running()?;
                    if state.taking_started {
                        // Tells the round that an earlier one may have created
                        // objects it has not recorded.
                        return Err(DomainError::conflict(
                            "taking_started",
                            "an earlier round has begun taking snapshots",
                        ));
                    }
                    vec![BackupEvent::TakingStarted]
                }
                BackupCommand::RecordTaken { taken, sources } => {
                    let state = self.running()?;
                    if taken.iter().any(|(t, _)| state.target(t).is_none()) {
                        return Err(DomainError::NotFound("target"));
                    }
                    let mut seen = std::collections::HashSet::new();
                    let taken: Vec<_> = taken
                        .into_iter()
                        .filter(|(target, _)| {
                            state
                                .target(target)
                                .is_some_and(|run| run.progress == TargetProgress::Waiting)
                                && seen.insert(target.clone())
                        })
                        .collect();
                    let sources: Vec<_> = sources
                        .into_iter()
                        .filter(|(target, _)| seen.contains(target))
                        .collect();
                    let mut events = Vec::with_capacity(taken.len() + 1);
                    if !sources.is_empty() {
                        events.push(BackupEvent::SourcesRecorded { sources });
                    }
                    events.extend(taken.into_iter().map(|(target, snapshots)| {
                        BackupEvent::SnapshotsTaken { target, snapshots }
                    }));
                    with_outcome(state, events)
                }
                BackupCommand::RecordTargetFailed { target, error } => {
                    let state = self.running()?;
                    let run = state
                        .target(&target)
                        .ok_or(DomainError::NotFound("target"))?;
                    if run.progress != TargetProgress::Waiting {
                        return Ok(());
                    }
                    with_outcome(state, vec![BackupEvent::TargetFailed { target, error }])
                }
                BackupCommand::RecordTargetVanished {
                    target,
                    removed_from_policy,
                } => {
                    let state = self.running()?;
                    let run = state
                        .target(&target)
                        .ok_or(DomainError::NotFound("target"))?;
                    if run.progress != TargetProgress::Waiting {
                        return Ok(());
                    }
                    with_outcome(
                        state,
                        vec![BackupEvent::TargetVanished {
                            target,
                            removed_from_policy,
                        }],
                    )
                }
                BackupCommand::RecordSnapshotStates { states } => {
                    let state = self.running()?;
                    let pending: Vec<&str> = state.pending().map(|s| s.id.as_str()).collect();
                    let events = states
                        .into_iter()
                        .filter(|(id, _)| pending.contains(&id.as_str()))
                        .filter_map(|(id, s)| match s {
                            SnapshotState::Pending => None,
                            SnapshotState::Completed => Some(BackupEvent::SnapshotCompleted { id }),
                            SnapshotState::Failed => Some(BackupEvent::SnapshotFailed {
                                id,
                                reason: "AWS reported it failed or missing".into(),
                            }),
                        })
                        .collect();
                    with_outcome(state, events)
                }
                BackupCommand::TimeOut => {
                    let state = self.running()?;
                    let mut events: Vec<_> = state
                        .pending()
                        .map(|s| BackupEvent::SnapshotFailed {
                            id: s.id.clone(),
                            reason: "not completed before the timeout".into(),
                        })
                        .collect();
                    events.extend(
                        state
                            .targets
                            .iter()
                            .filter(|t| t.progress == TargetProgress::Waiting)
                            .map(|t| BackupEvent::TargetFailed {
                                target: t.target.key.clone(),
                                error: "not started before the timeout".into(),
                            }),
                    );
                    with_outcome(state, events)
                }
                BackupCommand::Freeze(entry) => {
                    let state = self.live()?;
                    if state.status == BackupStatus::InProgress {
                        return Err(DomainError::conflict(
                            "backup_in_progress",
                            "a backup can be frozen once it has finished",
                        ));
                    }
                    let name = entry.name.trim().to_string();
                    if name.is_empty() || name.len() > 100 {
                        return Err(DomainError::invalid(
                            "name",
                            "invalid_value",
                            "must be 1-100 characters",
                        ));
                    }
                    if entry.description.len() > 1000 {
                        return Err(DomainError::invalid(
                            "description",
                            "invalid_value",
                            "at most 1000 characters",
                        ));
                    }
                    if state.frozen.is_some() {
                        return Err(DomainError::conflict(
                            "already_frozen",
                            "the backup is already in the freezer",
                        ));
                    }
                    vec![BackupEvent::BackupFrozen(FreezerEntry {
                        name,
                        description: entry.description,
                    })]
                }
                BackupCommand::DecideDr {
                    settings,
                    successful_before,
                    now,
                } => {
                    let state = self.live()?;
                    if state.status != BackupStatus::Successful
                        || state.dr.is_some()
                        || !settings.enabled
                    {
                        return Ok(());
                    }
                    decide_dr(state, &settings, successful_before, now)
                }
                BackupCommand::RecordDrCopy(copy) => {
                    let state = self.live()?;
                    let dr = dr_running(state)?;
                    let wanted = state
                        .dr_wanted()
                        .iter()
                        .any(|(s, r)| s.id == copy.original_id && *r == copy.region);
                    if !wanted {
                        return Err(DomainError::NotFound("snapshot to copy"));
                    }
                    if dr.copy(&copy.original_id, &copy.region).is_some()
                        || dr.failed(&copy.original_id, &copy.region)
                    {
                        return Ok(());
                    }
                    with_dr_outcome(state, vec![BackupEvent::DrCopyStarted(copy)])
                }
                BackupCommand::RecordDrCopyFailed {
                    original_id,
                    region,
                    reason,
                } => {
                    let state = self.live()?;
                    let dr = dr_running(state)?;
                    if dr.failed(&original_id, &region)
                        || dr
                            .copy(&original_id, &region)
                            .is_some_and(|c| c.state != SnapshotState::Pending)
                    {
                        return Ok(());
                    }
                    with_dr_outcome(
                        state,
                        vec![BackupEvent::DrCopyFailed {
                            original_id,
                            region,
                            reason,
                        }],
                    )
                }
                BackupCommand::RecordDrCopyStates { states } => {
                    let state = self.live()?;
                    let dr = dr_running(state)?;
                    let events = states
                        .into_iter()
                        .filter_map(|(copy_id, region, to)| {
                            let run = dr
                                .pending()
                                .find(|c| c.copy_id == copy_id && c.region == region)?;
                            match to {
                                SnapshotState::Pending => None,
                                SnapshotState::Completed => {
                                    Some(BackupEvent::DrCopyCompleted { copy_id, region })
                                }
                                SnapshotState::Failed => Some(BackupEvent::DrCopyFailed {
                                    original_id: run.original_id.clone(),
                                    region,
                                    reason: format!(
                                        "AWS reported copy {copy_id} failed or missing"
                                    ),
                                }),
                            }
                        })
                        .collect();
                    with_dr_outcome(state, events)
                }
                BackupCommand::DrTimeOut { now } => {
                    let state = self.live()?;
                    let dr = dr_running(state)?;
                    if now < dr.deadline {
                        return Ok(());
                    }
                    let events = state
                        .dr_wanted()
                        .into_iter()
                        .filter(|(s, region)| {
                            !dr.failed(&s.id, region)
                                && dr
                                    .copy(&s.id, region)
                                    .is_none_or(|c| c.state == SnapshotState::Pending)
                        })
                        .map(|(s, region)| BackupEvent::DrCopyFailed {
                            original_id: s.id.clone(),
                            region: region.to_string(),
                            reason: "not completed before the disaster-recovery timeout".into(),
                        })
                        .collect();
                    with_dr_outcome(state, events)
                }
                BackupCommand::RecordDrOriginalsDeleted { ids } => {
                    let state = self.state.as_ref().ok_or(DomainError::NotFound("backup"))?;
                    let Some(dr) = &state.dr else {
                        return Ok(());
                    };
                    let ids: Vec<String> = ids
                        .into_iter()
                        .filter(|id| !dr.originals_deleted.contains(id))
                        .collect();
                    if ids.is_empty() {
                        return Ok(());
                    }
                    vec![BackupEvent::DrOriginalsDeleted { ids }]
                }
                BackupCommand::RecordDrCopiesDeleted { marked_only } => {
                    let state = self.state.as_ref().ok_or(DomainError::NotFound("backup"))?;
                    match &state.dr {
                        Some(dr) if !dr.copies_deleted && !dr.copies.is_empty() => {
                            vec![BackupEvent::DrCopiesDeleted { marked_only }]
                        }
                        _ => return Ok(()),
                    }
                }
                BackupCommand::RecordDeleted {
                    marked_only,
                    kept,
                    at,
                } => {
                    let Some(state) = self.state.as_ref() else {
                        return Err(DomainError::NotFound("backup"));
                    };
                    if state.deleted {
                        return Ok(());
                    }
                    if let Some(id) = kept.iter().find(|id| !state.is_initial_ami(id)) {
                        return Err(DomainError::invalid(
                            "kept",
                            "invalid_value",
                            format!("{id} is not a completed initial AMI of this backup"),
                        ));
                    }
                    let kept: BTreeSet<String> = kept.into_iter().collect();
                    let mut events: Vec<_> = kept
                        .into_iter()
                        .map(|id| BackupEvent::InitialAmiKept { id })
                        .collect();
                    events.push(BackupEvent::BackupDeleted {
                        marked_only,
                        at: Some(at),
                    });
                    events
                }
                BackupCommand::RecordInitialAmiDeleted {
                    id,
                    marked_only,
                    at,
                } => {
                    let Some(state) = self.state.as_ref() else {
                        return Err(DomainError::NotFound("backup"));
                    };
                    if !state.kept.contains(&id) {
                        // Deleted with its backup, or already recorded.
                        return Ok(());
                    }
                    vec![BackupEvent::InitialAmiDeleted {
                        id,
                        marked_only,
                        at,
                    }]
                }
                BackupCommand::Purge {
                    now,
                    record_retention_days,
                    recorded_deleted_at,
                } => {
                    let Some(state) = self.state.as_ref() else {
                        return Err(DomainError::NotFound("backup"));
                    };
                    if state.purged {
                        return Ok(());
                    }
                    purgeable(state, now, record_retention_days, recorded_deleted_at)?;
                    vec![BackupEvent::RecordPurged {
                        record_retention_days,
                    }]
                }
            };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        if let BackupEvent::BackupBegun {
            id,
            tenant_id,
            policy_id,
            policy_name,
            account_id,
            trigger,
            success_criterion,
            targets,
        } = event
        {
            self.state = Some(BackupState {
                id,
                tenant_id,
                policy_id,
                policy_name,
                account_id,
                trigger,
                success_criterion,
                targets: targets
                    .into_iter()
                    .map(|target| TargetRun {
                        target,
                        progress: TargetProgress::Waiting,
                        snapshots: BTreeMap::new(),
                        source: None,
                    })
                    .collect(),
                status: BackupStatus::InProgress,
                frozen: None,
                deleted: false,
                kept: BTreeSet::new(),
                deleted_at: None,
                purged: false,
                dr: None,
                taking_started: false,
            });
            return;
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        let run_of = |state: &mut BackupState, key: &TargetKey| {
            state.targets.iter_mut().position(|t| &t.target.key == key)
        };
        match event {
            BackupEvent::BackupBegun { .. } => {}
            BackupEvent::SnapshotsTaken { target, snapshots } => {
                if let Some(i) = run_of(state, &target) {
                    let run = &mut state.targets[i];
                    run.progress = TargetProgress::Taken;
                    for s in snapshots {
                        run.snapshots
                            .insert(s.id.clone(), (s, SnapshotState::Pending));
                    }
                }
            }
            BackupEvent::TargetFailed { target, error } => {
                if let Some(i) = run_of(state, &target) {
                    state.targets[i].progress = TargetProgress::Failed { error };
                }
            }
            BackupEvent::TargetVanished { target, .. } => {
                if let Some(i) = run_of(state, &target) {
                    state.targets[i].progress = TargetProgress::Vanished;
                }
            }
            BackupEvent::SnapshotCompleted { id } => {
                set_state(state, &id, SnapshotState::Completed)
            }
            BackupEvent::SnapshotFailed { id, .. } => set_state(state, &id, SnapshotState::Failed),
            BackupEvent::BackupCompleted { status } => state.status = status,
            BackupEvent::BackupFrozen(entry) => state.frozen = Some(entry),
            BackupEvent::TakingStarted => state.taking_started = true,
            BackupEvent::SourcesRecorded { sources } => {
                for (target, source) in sources {
                    if let Some(i) = run_of(state, &target) {
                        state.targets[i].source = Some(source);
                    }
                }
            }
            BackupEvent::BackupDeleted { at, .. } => {
                state.deleted = true;
                state.deleted_at = at;
            }
            BackupEvent::InitialAmiKept { id } => {
                state.kept.insert(id);
            }
            BackupEvent::InitialAmiDeleted { id, at, .. } => {
                state.kept.remove(&id);
                state.deleted_at = Some(state.deleted_at.map_or(at, |d| d.max(at)));
            }
            BackupEvent::RecordPurged { .. } => state.purged = true,
            BackupEvent::DrSkipped { .. } => {
                state.dr = Some(DrRun {
                    status: DrStatus::Skipped,
                    regions: vec![],
                    account_id: state.account_id,
                    cross_account: false,
                    keep_originals: true,
                    deadline: DateTime::<Utc>::MIN_UTC,
                    copies: vec![],
                    failures: vec![],
                    originals_deleted: vec![],
                    copies_deleted: false,
                })
            }
            BackupEvent::DrPlanned {
                regions,
                account_id,
                cross_account,
                keep_originals,
                deadline,
            } => {
                state.dr = Some(DrRun {
                    status: DrStatus::Pending,
                    regions,
                    account_id,
                    cross_account,
                    keep_originals,
                    deadline,
                    copies: vec![],
                    failures: vec![],
                    originals_deleted: vec![],
                    copies_deleted: false,
                })
            }
            BackupEvent::DrSnapshotNotCopied { .. } => {}
            BackupEvent::DrCopyStarted(copy) => {
                if let Some(dr) = state.dr.as_mut() {
                    dr.status = DrStatus::InProgress;
                    dr.copies.push(DrCopyRun {
                        copy,
                        state: SnapshotState::Pending,
                    });
                }
            }
            BackupEvent::DrCopyCompleted { copy_id, region } => {
                if let Some(dr) = state.dr.as_mut() {
                    for c in dr.copies.iter_mut() {
                        if c.copy.copy_id == copy_id && c.copy.region == region {
                            c.state = SnapshotState::Completed;
                        }
                    }
                }
            }
            BackupEvent::DrCopyFailed {
                original_id,
                region,
                reason,
            } => {
                if let Some(dr) = state.dr.as_mut() {
                    dr.status = DrStatus::InProgress;
                    for c in dr.copies.iter_mut() {
                        if c.copy.original_id == original_id && c.copy.region == region {
                            c.state = SnapshotState::Failed;
                        }
                    }
                    dr.failures.push(DrCopyFailure {
                        original_id,
                        region,
                        reason,
                    });
                }
            }
            BackupEvent::DrFinished { status } => {
                if let Some(dr) = state.dr.as_mut() {
                    dr.status = status;
                }
            }
            BackupEvent::DrOriginalsDeleted { ids } => {
                if let Some(dr) = state.dr.as_mut() {
                    dr.originals_deleted.extend(ids);
                }
            }
            BackupEvent::DrCopiesDeleted { .. } => {
                if let Some(dr) = state.dr.as_mut() {
                    dr.copies_deleted = true;
                }
            }
        }
    }
}

/// DR that is pending or in progress; anything else refuses copy reports.
fn dr_running(state: &BackupState) -> Result<&DrRun, DomainError> {
    match &state.dr {
        Some(dr) if matches!(dr.status, DrStatus::Pending | DrStatus::InProgress) => Ok(dr),
        Some(_) => Err(DomainError::conflict(
            "dr_finished",
            "disaster recovery of this backup has finished",
        )),
        None => Err(DomainError::conflict(
            "dr_not_started",
            "disaster recovery has not started for this backup",
        )),
    }
}

/// Appends the DR outcome when the reports so far settle it.
fn with_dr_outcome(state: &BackupState, events: Vec<BackupEvent>) -> Vec<BackupEvent> {
    let mut next = Backup {
        state: Some(state.clone()),
    };
    for e in &events {
        next.apply(e.clone());
    }
    let mut events = events;
    if let Some(status) = next.state.as_ref().and_then(BackupState::dr_outcome) {
        events.push(BackupEvent::DrFinished { status });
    }
    events
}

/// Skips the backup (every N-th), or plans its copies and notes the
/// snapshots that cannot be copied.
fn decide_dr(
    state: &BackupState,
    settings: &DrSettings,
    successful_before: u64,
    now: DateTime<Utc>,
) -> Vec<BackupEvent> {
    if !settings.copies_backup(successful_before) {
        return vec![BackupEvent::DrSkipped {
            reason: format!(
                "the policy copies every {} successful backups",
                settings.every
            ),
        }];
    }
    let cross_account = settings
        .vault_account_id
        .is_some_and(|v| v != state.account_id);
    let mut events = vec![BackupEvent::DrPlanned {
        regions: settings.regions.clone(),
        account_id: settings.vault_account_id.unwrap_or(state.account_id),
        cross_account,
        keep_originals: settings.keep_originals,
        deadline: now + chrono::Duration::hours(i64::from(settings.timeout_hours)),
    }];
    for snapshot in state.snapshots() {
        if let Some(reason) = dr_not_copied(&snapshot.kind, cross_account) {
            events.push(BackupEvent::DrSnapshotNotCopied {
                original_id: snapshot.id.clone(),
                reason: reason.to_string(),
            });
        }
    }
    with_dr_outcome(state, events)
}

/// Whether the record of a backup may be purged at `now`: its AWS objects
/// are all gone (none kept) since at least `record_retention_days`, and it
/// is not in the freezer.
fn purgeable(
    state: &BackupState,
    now: DateTime<Utc>,
    record_retention_days: u32,
    recorded_deleted_at: Option<DateTime<Utc>>,
) -> Result<(), DomainError> {
    if state.frozen.is_some() {
        return Err(DomainError::conflict(
            "backup_frozen",
            "a frozen backup's record is never purged",
        ));
    }
    if !state.deleted {
        return Err(DomainError::conflict(
            "backup_not_deleted",
            "only a deleted backup's record can be purged",
        ));
    }
    if !state.kept.is_empty() {
        return Err(DomainError::conflict(
            "initial_ami_kept",
            "the backup's initial AMI is still kept",
        ));
    }
    let deleted_at = state.deleted_at.or(recorded_deleted_at);
    let old_enough = deleted_at.is_some_and(|at| {
        now.signed_duration_since(at) >= chrono::Duration::days(i64::from(record_retention_days))
    });
    if !old_enough {
        return Err(DomainError::conflict(
            "record_retention",
            format!("records of deleted backups are kept for {record_retention_days} days"),
        ));
    }
    Ok(())
}

fn set_state(state: &mut BackupState, id: &str, to: SnapshotState) {
    for run in &mut state.targets {
        if let Some((_, s)) = run.snapshots.get_mut(id) {
            *s = to;
        }
    }
}

/// Backups retention deletes: all but the newest `generations` successful
/// ones (the success criterion already decided which succeeded), never the
/// newest successful one, never a frozen or running one, never one already
/// deleted. Failed and partial backups older than the oldest kept successful
/// one go too; newer ones stay until they age out.
pub fn expired(backups: &[RetentionCandidate], generations: u32) -> Vec<Uuid> {
    let mut newest_first: Vec<&RetentionCandidate> = backups.iter().collect();
    newest_first.sort_by_key(|b| std::cmp::Reverse(b.started_at));
    let kept_successful: Vec<&RetentionCandidate> = newest_first
        .iter()
        .filter(|b| b.status == BackupStatus::Successful && !b.deleted)
        .take(generations.max(1) as usize)
        .copied()
        .collect();
    let Some(oldest_kept) = kept_successful.last().map(|b| b.started_at) else {
        return vec![];
    };
    newest_first
        .into_iter()
        .filter(|b| !b.deleted && !b.frozen && b.status != BackupStatus::InProgress)
        .filter(|b| b.started_at < oldest_kept)
        .map(|b| b.id)
        .collect()
}

/// What retention needs to know about one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionCandidate {
    pub id: Uuid,
    pub started_at: DateTime<Utc>,
    pub status: BackupStatus,
    pub frozen: bool,
    pub deleted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ResourceKind, Target};
    use cqrs_es::test::TestFramework;

    type Test = TestFramework<Backup>;

    fn key(id: &str) -> TargetKey {
        TargetKey {
            kind: ResourceKind::EbsVolume,
            region: "us-east-1".into(),
            resource_id: id.into(),
        }
    }

    fn begun(targets: &[&str]) -> BackupEvent {
        BackupEvent::BackupBegun {
            id: Uuid::nil(),
            tenant_id: TenantId(Uuid::nil()),
            policy_id: Uuid::nil(),
            policy_name: "nightly".into(),
            account_id: Uuid::nil(),
            trigger: Trigger::AdHoc,
            success_criterion: SuccessCriterion::AllSucceed,
            targets: targets
                .iter()
                .map(|t| Target {
                    key: key(t),
                    instance: None,
                })
                .collect(),
        }
    }

    fn snap(id: &str, source: &str) -> Snapshot {
        Snapshot {
            kind: "ebs_snapshot".into(),
            id: id.into(),
            region: "us-east-1".into(),
            source: source.into(),
            device: None,
            size_gib: Some(8),
        }
    }

    #[test]
    fn a_round_records_many_targets_at_once_skipping_those_already_reported() {
        Test::with(())
            .given(vec![
                begun(&["vol-1", "vol-2", "vol-3"]),
                BackupEvent::SnapshotsTaken {
                    target: key("vol-1"),
                    snapshots: vec![snap("snap-1", "vol-1")],
                },
            ])
            .when(BackupCommand::RecordTaken {
                taken: vec![
                    (key("vol-1"), vec![snap("snap-1b", "vol-1")]),
                    (key("vol-2"), vec![snap("snap-2", "vol-2")]),
                    (key("vol-3"), vec![snap("snap-3", "vol-3")]),
                    (key("vol-3"), vec![snap("snap-3b", "vol-3")]),
                ],
                sources: vec![],
            })
            .then_expect_events(vec![
                BackupEvent::SnapshotsTaken {
                    target: key("vol-2"),
                    snapshots: vec![snap("snap-2", "vol-2")],
                },
                BackupEvent::SnapshotsTaken {
                    target: key("vol-3"),
                    snapshots: vec![snap("snap-3", "vol-3")],
                },
            ]);
    }

    #[test]
    fn sources_are_recorded_only_with_snapshots_taken_in_the_same_report() {
        let table = |ttl: &str| {
            SourceRecord::Table(crate::source::TableRecord {
                tags: BTreeMap::from([("team".to_string(), "db".to_string())]),
                ttl_attribute: Some(ttl.into()),
            })
        };
        Test::with(())
            .given(vec![
                begun(&["vol-1", "vol-2"]),
                BackupEvent::SnapshotsTaken {
                    target: key("vol-1"),
                    snapshots: vec![snap("snap-1", "vol-1")],
                },
            ])
            .when(BackupCommand::RecordTaken {
                taken: vec![(key("vol-2"), vec![snap("snap-2", "vol-2")])],
                sources: vec![(key("vol-1"), table("late")), (key("vol-2"), table("ttl"))],
            })
            .then_expect_events(vec![
                BackupEvent::SourcesRecorded {
                    sources: vec![(key("vol-2"), table("ttl"))],
                },
                BackupEvent::SnapshotsTaken {
                    target: key("vol-2"),
                    snapshots: vec![snap("snap-2", "vol-2")],
                },
            ]);
        let mut backup = Backup::default();
        for event in [
            begun(&["vol-1"]),
            BackupEvent::SourcesRecorded {
                sources: vec![(key("vol-1"), table("ttl"))],
            },
        ] {
            backup.apply(event);
        }
        let state = backup.state.expect("begun");
        assert_eq!(state.targets[0].source, Some(table("ttl")));
    }

    #[test]
    fn taking_starts_once_and_a_later_round_learns_it_must_look_first() {
        Test::with(())
            .given(vec![begun(&["vol-1"])])
            .when(BackupCommand::StartTaking)
            .then_expect_events(vec![BackupEvent::TakingStarted]);
        Test::with(())
            .given(vec![begun(&["vol-1"]), BackupEvent::TakingStarted])
            .when(BackupCommand::StartTaking)
            .then_expect_error(DomainError::conflict(
                "taking_started",
                "an earlier round has begun taking snapshots",
            ));
    }

    #[test]
    fn a_round_report_naming_a_target_outside_the_backup_is_refused() {
        Test::with(())
            .given(vec![begun(&["vol-1"])])
            .when(BackupCommand::RecordTaken {
                taken: vec![(key("vol-9"), vec![snap("snap-9", "vol-9")])],
                sources: vec![],
            })
            .then_expect_error(DomainError::NotFound("target"));
    }

    #[test]
    fn a_backup_succeeds_when_every_snapshot_completes() {
        Test::with(())
            .given(vec![
                begun(&["vol-1"]),
                BackupEvent::SnapshotsTaken {
                    target: key("vol-1"),
                    snapshots: vec![snap("snap-1", "vol-1")],
                },
            ])
            .when(BackupCommand::RecordSnapshotStates {
                states: vec![("snap-1".into(), SnapshotState::Completed)],
            })
            .then_expect_events(vec![
                BackupEvent::SnapshotCompleted {
                    id: "snap-1".into(),
                },
                BackupEvent::BackupCompleted {
                    status: BackupStatus::Successful,
                },
            ]);
    }

    #[test]
    fn one_failed_target_of_two_makes_it_partial() {
        Test::with(())
            .given(vec![
                begun(&["vol-1", "vol-2"]),
                BackupEvent::SnapshotsTaken {
                    target: key("vol-1"),
                    snapshots: vec![snap("snap-1", "vol-1")],
                },
                BackupEvent::SnapshotCompleted {
                    id: "snap-1".into(),
                },
            ])
            .when(BackupCommand::RecordTargetFailed {
                target: key("vol-2"),
                error: "IncorrectState".into(),
            })
            .then_expect_events(vec![
                BackupEvent::TargetFailed {
                    target: key("vol-2"),
                    error: "IncorrectState".into(),
                },
                BackupEvent::BackupCompleted {
                    status: BackupStatus::PartiallySuccessful,
                },
            ]);
    }

    #[test]
    fn a_repeated_report_for_a_target_changes_nothing() {
        Test::with(())
            .given(vec![
                begun(&["vol-1", "vol-2"]),
                BackupEvent::SnapshotsTaken {
                    target: key("vol-1"),
                    snapshots: vec![snap("snap-1", "vol-1")],
                },
            ])
            .when(BackupCommand::RecordSnapshots {
                target: key("vol-1"),
                snapshots: vec![snap("snap-9", "vol-1")],
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_timeout_fails_what_is_still_pending() {
        Test::with(())
            .given(vec![
                begun(&["vol-1"]),
                BackupEvent::SnapshotsTaken {
                    target: key("vol-1"),
                    snapshots: vec![snap("snap-1", "vol-1")],
                },
            ])
            .when(BackupCommand::TimeOut)
            .then_expect_events(vec![
                BackupEvent::SnapshotFailed {
                    id: "snap-1".into(),
                    reason: "not completed before the timeout".into(),
                },
                BackupEvent::BackupCompleted {
                    status: BackupStatus::Failed,
                },
            ]);
    }

    #[test]
    fn a_running_backup_cannot_be_frozen() {
        Test::with(())
            .given(vec![begun(&["vol-1"])])
            .when(BackupCommand::Freeze(FreezerEntry {
                name: "before-migration".into(),
                description: String::new(),
            }))
            .then_expect_error(DomainError::conflict(
                "backup_in_progress",
                "a backup can be frozen once it has finished",
            ));
    }

    fn candidate(minute: i64, status: BackupStatus, frozen: bool) -> RetentionCandidate {
        RetentionCandidate {
            id: Uuid::from_u128(minute as u128),
            started_at: DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap(),
            status,
            frozen,
            deleted: false,
        }
    }

    #[test]
    fn retention_keeps_the_newest_generations_and_frozen_backups() {
        use BackupStatus::*;
        let backups = vec![
            candidate(1, Successful, false),
            candidate(2, Successful, true),
            candidate(3, Failed, false),
            candidate(4, Successful, false),
            candidate(5, Failed, false),
            candidate(6, Successful, false),
            candidate(7, InProgress, false),
        ];
        let mut gone = expired(&backups, 2);
        gone.sort();
        // Kept: 6 and 4 (two generations), 2 (frozen), 5 (newer than the
        // oldest kept), 7 (running). Gone: 1 and 3.
        assert_eq!(gone, vec![Uuid::from_u128(1), Uuid::from_u128(3)]);
    }

    fn dr_settings(regions: &[&str], every: u32, keep_originals: bool) -> DrSettings {
        DrSettings {
            enabled: true,
            every,
            regions: regions.iter().map(|r| r.to_string()).collect(),
            keep_originals,
            ..DrSettings::default()
        }
    }

    fn at(hour: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + hour * 3600, 0).unwrap()
    }

    /// A successful backup of a volume (snap-1) and a table (a DynamoDB backup), in us-east-1.
    fn successful() -> Vec<BackupEvent> {
        let mut table = snap("arn:backup/1", "sessions");
        table.kind = "dynamodb_backup".into();
        vec![
            begun(&["vol-1", "sessions"]),
            BackupEvent::SnapshotsTaken {
                target: key("vol-1"),
                snapshots: vec![snap("snap-1", "vol-1")],
            },
            BackupEvent::SnapshotsTaken {
                target: key("sessions"),
                snapshots: vec![table],
            },
            BackupEvent::SnapshotCompleted {
                id: "snap-1".into(),
            },
            BackupEvent::SnapshotCompleted {
                id: "arn:backup/1".into(),
            },
            BackupEvent::BackupCompleted {
                status: BackupStatus::Successful,
            },
        ]
    }

    fn replay(events: Vec<BackupEvent>) -> BackupState {
        let mut backup = Backup::default();
        for e in events {
            backup.apply(e);
        }
        backup.state.unwrap()
    }

    fn copy(region: &str) -> DrCopy {
        DrCopy {
            original_id: "snap-1".into(),
            kind: "ebs_snapshot".into(),
            source_region: "us-east-1".into(),
            region: region.into(),
            account_id: Uuid::nil(),
            copy_id: format!("snap-{region}"),
        }
    }

    #[test]
    fn dr_skips_backups_between_every_nth() {
        Test::with(())
            .given(successful())
            .when(BackupCommand::DecideDr {
                settings: dr_settings(&["eu-west-1"], 2, true),
                successful_before: 1,
                now: at(0),
            })
            .then_expect_events(vec![BackupEvent::DrSkipped {
                reason: "the policy copies every 2 successful backups".into(),
            }]);
    }

    #[test]
    fn dr_plans_copies_outside_the_original_region_and_notes_what_cannot_be_copied() {
        let settings = dr_settings(&["us-east-1", "eu-west-1"], 1, true);
        let mut given = successful();
        Test::with(())
            .given(given.clone())
            .when(BackupCommand::DecideDr {
                settings: settings.clone(),
                successful_before: 4,
                now: at(0),
            })
            .then_expect_events(vec![
                BackupEvent::DrPlanned {
                    regions: settings.regions.clone(),
                    account_id: Uuid::nil(),
                    cross_account: false,
                    keep_originals: true,
                    deadline: at(24),
                },
                BackupEvent::DrSnapshotNotCopied {
                    original_id: "arn:backup/1".into(),
                    reason: dr_not_copied("dynamodb_backup", false).unwrap().into(),
                },
            ]);
        given.push(BackupEvent::DrPlanned {
            regions: settings.regions.clone(),
            account_id: Uuid::nil(),
            cross_account: false,
            keep_originals: true,
            deadline: at(24),
        });
        let state = replay(given);
        let wanted: Vec<_> = state
            .dr_wanted()
            .into_iter()
            .map(|(s, r)| (s.id.clone(), r.to_string()))
            .collect();
        assert_eq!(
            wanted,
            vec![("snap-1".to_string(), "eu-west-1".to_string())]
        );
    }

    #[test]
    fn dr_completes_when_every_copy_completes_and_then_frees_the_originals() {
        let mut given = successful();
        given.push(BackupEvent::DrPlanned {
            regions: vec!["eu-west-1".into()],
            account_id: Uuid::nil(),
            cross_account: false,
            keep_originals: false,
            deadline: at(24),
        });
        given.push(BackupEvent::DrCopyStarted(copy("eu-west-1")));
        Test::with(())
            .given(given.clone())
            .when(BackupCommand::RecordDrCopyStates {
                states: vec![(
                    "snap-eu-west-1".into(),
                    "eu-west-1".into(),
                    SnapshotState::Completed,
                )],
            })
            .then_expect_events(vec![
                BackupEvent::DrCopyCompleted {
                    copy_id: "snap-eu-west-1".into(),
                    region: "eu-west-1".into(),
                },
                BackupEvent::DrFinished {
                    status: DrStatus::Completed,
                },
            ]);
        given.push(BackupEvent::DrCopyCompleted {
            copy_id: "snap-eu-west-1".into(),
            region: "eu-west-1".into(),
        });
        given.push(BackupEvent::DrFinished {
            status: DrStatus::Completed,
        });
        let state = replay(given);
        let ids: Vec<_> = state
            .dr_originals_to_delete()
            .iter()
            .map(|s| s.id.clone())
            .collect();
        assert_eq!(ids, vec!["snap-1".to_string()]);
    }

    #[test]
    fn dr_copies_pending_at_the_deadline_fail() {
        let mut given = successful();
        given.push(BackupEvent::DrPlanned {
            regions: vec!["eu-west-1".into()],
            account_id: Uuid::nil(),
            cross_account: false,
            keep_originals: true,
            deadline: at(24),
        });
        given.push(BackupEvent::DrCopyStarted(copy("eu-west-1")));
        Test::with(())
            .given(given.clone())
            .when(BackupCommand::DrTimeOut { now: at(23) })
            .then_expect_events(vec![]);
        Test::with(())
            .given(given)
            .when(BackupCommand::DrTimeOut { now: at(25) })
            .then_expect_events(vec![
                BackupEvent::DrCopyFailed {
                    original_id: "snap-1".into(),
                    region: "eu-west-1".into(),
                    reason: "not completed before the disaster-recovery timeout".into(),
                },
                BackupEvent::DrFinished {
                    status: DrStatus::Failed,
                },
            ]);
    }

    #[test]
    fn retention_never_deletes_without_a_successful_backup_to_keep() {
        use BackupStatus::*;
        let backups = vec![candidate(1, Failed, false), candidate(2, Failed, false)];
        assert!(expired(&backups, 1).is_empty());
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;
    use crate::policy::{InstanceOptions, ResourceKind, VolumeSelection};
    use cqrs_es::test::TestFramework;

    type Test = TestFramework<Backup>;

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + day * 86_400, 0).unwrap()
    }

    fn instance_key() -> TargetKey {
        TargetKey {
            kind: ResourceKind::Ec2Instance,
            region: "us-east-1".into(),
            resource_id: "i-1".into(),
        }
    }

    fn snapshot(kind: &str, id: &str) -> Snapshot {
        Snapshot {
            kind: kind.into(),
            id: id.into(),
            region: "us-east-1".into(),
            source: "i-1".into(),
            device: None,
            size_gib: None,
        }
    }

    /// A finished backup of instance i-1 in `mode` with a volume snapshot
    /// and an AMI.
    fn finished(mode: InstanceMode) -> Vec<BackupEvent> {
        vec![
            BackupEvent::BackupBegun {
                id: Uuid::nil(),
                tenant_id: TenantId(Uuid::nil()),
                policy_id: Uuid::nil(),
                policy_name: "nightly".into(),
                account_id: Uuid::nil(),
                trigger: Trigger::AdHoc,
                success_criterion: SuccessCriterion::AllSucceed,
                targets: vec![Target {
                    key: instance_key(),
                    instance: Some(InstanceOptions {
                        mode,
                        volumes: VolumeSelection::All,
                    }),
                }],
            },
            BackupEvent::SnapshotsTaken {
                target: instance_key(),
                snapshots: vec![snapshot("ebs_snapshot", "snap-1"), snapshot("ami", "ami-1")],
            },
            BackupEvent::SnapshotCompleted {
                id: "snap-1".into(),
            },
            BackupEvent::SnapshotCompleted { id: "ami-1".into() },
            BackupEvent::BackupCompleted {
                status: BackupStatus::Successful,
            },
        ]
    }

    fn state_of(events: &[BackupEvent]) -> BackupState {
        let mut backup = Backup::default();
        for e in events {
            backup.apply(e.clone());
        }
        backup.state.unwrap()
    }

    #[test]
    fn only_the_ami_of_an_initial_ami_target_is_an_initial_ami() {
        let initial = state_of(&finished(InstanceMode::SnapshotsWithInitialAmi));
        assert_eq!(initial.initial_amis_to_keep(|_| false), vec!["ami-1"]);
        assert!(initial.initial_amis_to_keep(|_| true).is_empty());
        let image_mode = state_of(&finished(InstanceMode::AmiWithoutReboot));
        assert!(image_mode.initial_amis_to_keep(|_| false).is_empty());
    }

    #[test]
    fn deleting_a_backup_can_keep_its_initial_ami() {
        Test::with(())
            .given(finished(InstanceMode::SnapshotsWithInitialAmi))
            .when(BackupCommand::RecordDeleted {
                marked_only: false,
                kept: vec!["ami-1".into()],
                at: at(0),
            })
            .then_expect_events(vec![
                BackupEvent::InitialAmiKept { id: "ami-1".into() },
                BackupEvent::BackupDeleted {
                    marked_only: false,
                    at: Some(at(0)),
                },
            ]);
    }

    #[test]
    fn only_an_initial_ami_can_be_kept() {
        Test::with(())
            .given(finished(InstanceMode::AmiWithoutReboot))
            .when(BackupCommand::RecordDeleted {
                marked_only: false,
                kept: vec!["ami-1".into()],
                at: at(0),
            })
            .then_expect_error(DomainError::invalid(
                "kept",
                "invalid_value",
                "ami-1 is not a completed initial AMI of this backup",
            ));
    }

    fn deleted_keeping_the_ami() -> Vec<BackupEvent> {
        let mut events = finished(InstanceMode::SnapshotsWithInitialAmi);
        events.push(BackupEvent::InitialAmiKept { id: "ami-1".into() });
        events.push(BackupEvent::BackupDeleted {
            marked_only: false,
            at: Some(at(0)),
        });
        events
    }

    fn purge(now: DateTime<Utc>) -> BackupCommand {
        BackupCommand::Purge {
            now,
            record_retention_days: 30,
            recorded_deleted_at: None,
        }
    }

    #[test]
    fn a_kept_initial_ami_is_deleted_once_and_then_the_record_ages_from_then() {
        let mut events = deleted_keeping_the_ami();
        Test::with(())
            .given(events.clone())
            .when(BackupCommand::RecordInitialAmiDeleted {
                id: "ami-1".into(),
                marked_only: false,
                at: at(10),
            })
            .then_expect_events(vec![BackupEvent::InitialAmiDeleted {
                id: "ami-1".into(),
                marked_only: false,
                at: at(10),
            }]);
        events.push(BackupEvent::InitialAmiDeleted {
            id: "ami-1".into(),
            marked_only: false,
            at: at(10),
        });
        Test::with(())
            .given(events.clone())
            .when(BackupCommand::RecordInitialAmiDeleted {
                id: "ami-1".into(),
                marked_only: false,
                at: at(11),
            })
            .then_expect_events(vec![]);
        Test::with(())
            .given(events.clone())
            .when(purge(at(39)))
            .then_expect_error(DomainError::conflict(
                "record_retention",
                "records of deleted backups are kept for 30 days",
            ));
        Test::with(())
            .given(events)
            .when(purge(at(40)))
            .then_expect_events(vec![BackupEvent::RecordPurged {
                record_retention_days: 30,
            }]);
    }

    #[test]
    fn a_record_is_not_purged_while_its_initial_ami_is_kept() {
        Test::with(())
            .given(deleted_keeping_the_ami())
            .when(purge(at(365)))
            .then_expect_error(DomainError::conflict(
                "initial_ami_kept",
                "the backup's initial AMI is still kept",
            ));
    }

    #[test]
    fn only_deleted_backups_older_than_the_record_retention_are_purged() {
        let events = finished(InstanceMode::Snapshots);
        Test::with(())
            .given(events.clone())
            .when(purge(at(365)))
            .then_expect_error(DomainError::conflict(
                "backup_not_deleted",
                "only a deleted backup's record can be purged",
            ));
        let mut deleted = events;
        deleted.push(BackupEvent::BackupDeleted {
            marked_only: false,
            at: Some(at(0)),
        });
        Test::with(())
            .given(deleted.clone())
            .when(purge(at(29)))
            .then_expect_error(DomainError::conflict(
                "record_retention",
                "records of deleted backups are kept for 30 days",
            ));
        Test::with(())
            .given(deleted.clone())
            .when(purge(at(30)))
            .then_expect_events(vec![BackupEvent::RecordPurged {
                record_retention_days: 30,
            }]);
        // A second purge changes nothing.
        deleted.push(BackupEvent::RecordPurged {
            record_retention_days: 30,
        });
        Test::with(())
            .given(deleted)
            .when(purge(at(31)))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_deletion_recorded_without_its_time_ages_from_the_read_models_time() {
        let mut events = finished(InstanceMode::Snapshots);
        events.push(BackupEvent::BackupDeleted {
            marked_only: false,
            at: None,
        });
        Test::with(())
            .given(events.clone())
            .when(purge(at(365)))
            .then_expect_error(DomainError::conflict(
                "record_retention",
                "records of deleted backups are kept for 30 days",
            ));
        Test::with(())
            .given(events)
            .when(BackupCommand::Purge {
                now: at(31),
                record_retention_days: 30,
                recorded_deleted_at: Some(at(0)),
            })
            .then_expect_events(vec![BackupEvent::RecordPurged {
                record_retention_days: 30,
            }]);
    }

    #[test]
    fn a_frozen_backup_is_never_purged() {
        let mut events = finished(InstanceMode::Snapshots);
        events.push(BackupEvent::BackupFrozen(FreezerEntry {
            name: "before-upgrade".into(),
            description: String::new(),
        }));
        events.push(BackupEvent::BackupDeleted {
            marked_only: false,
            at: Some(at(0)),
        });
        Test::with(())
            .given(events)
            .when(purge(at(3650)))
            .then_expect_error(DomainError::conflict(
                "backup_frozen",
                "a frozen backup's record is never purged",
            ));
    }

    #[test]
    fn an_earlier_deletion_record_without_a_time_still_reads() {
        let old: BackupEvent =
            serde_json::from_str(r#"{"BackupDeleted":{"marked_only":true}}"#).unwrap();
        assert_eq!(
            old,
            BackupEvent::BackupDeleted {
                marked_only: true,
                at: None
            }
        );
    }
}
