//! The Backup aggregate: one run of a policy. It records what was created in
//! AWS for each target (snapshots, AMIs, database snapshots and backups),
//! their completion, the outcome, and later the freezer and deletion.
//!
//! Jobs do the AWS work and report here; the aggregate decides the outcome
//! and refuses reports that do not fit (a second result for one target, a
//! change after deletion), so a repeated job step changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::policy::{SuccessCriterion, Target, TargetKey, Trigger};
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
}

impl BackupState {
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
    /// What a round took for many targets at once: one append instead of
    /// one per target. Targets already reported are left as they are.
    RecordTaken {
        taken: Vec<(TargetKey, Vec<Snapshot>)>,
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
            BackupEvent::BackupDeleted { .. } => "BackupDeleted",
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
            BackupEvent::BackupDeleted { marked_only } => if *marked_only {
                "Expired: its AWS objects were tagged as expired (deletion not allowed there)"
            } else {
                "Deleted its AWS objects"
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
        let events = match command {
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
            BackupCommand::RecordTaken { taken } => {
                let state = self.running()?;
                if taken.iter().any(|(t, _)| state.target(t).is_none()) {
                    return Err(DomainError::NotFound("target"));
                }
                let mut seen = std::collections::HashSet::new();
                let events = taken
                    .into_iter()
                    .filter(|(target, _)| {
                        state
                            .target(target)
                            .is_some_and(|run| run.progress == TargetProgress::Waiting)
                            && seen.insert(target.clone())
                    })
                    .map(|(target, snapshots)| BackupEvent::SnapshotsTaken { target, snapshots })
                    .collect();
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
            BackupCommand::RecordDeleted { marked_only } => {
                let Some(state) = self.state.as_ref() else {
                    return Err(DomainError::NotFound("backup"));
                };
                if state.deleted {
                    return Ok(());
                }
                vec![BackupEvent::BackupDeleted { marked_only }]
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
                    })
                    .collect(),
                status: BackupStatus::InProgress,
                frozen: None,
                deleted: false,
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
            BackupEvent::BackupDeleted { .. } => state.deleted = true,
        }
    }
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
    fn a_round_report_naming_a_target_outside_the_backup_is_refused() {
        Test::with(())
            .given(vec![begun(&["vol-1"])])
            .when(BackupCommand::RecordTaken {
                taken: vec![(key("vol-9"), vec![snap("snap-9", "vol-9")])],
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

    #[test]
    fn retention_never_deletes_without_a_successful_backup_to_keep() {
        use BackupStatus::*;
        let backups = vec![candidate(1, Failed, false), candidate(2, Failed, false)];
        assert!(expired(&backups, 1).is_empty());
    }
}
