//! Runs backups. Each run of a `BackupJob` does one round for its backup:
//! takes the snapshots not yet taken, polls the ones pending (one call per
//! region and kind), records every outcome on the Backup aggregate, and
//! either finishes (policy bookkeeping, retention, retry) or enqueues the next
//! round. Every step is safe to repeat: AWS objects are tagged with the backup
//! and target and looked up before anything is created, and the aggregate
//! ignores a second report for a target. A per-backup advisory lock keeps two
//! runs of one backup (a job re-run after a crash) from working at once.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use std::time::Duration;

use apalis::prelude::*;
use apalis_sql::postgres::PostgresStorage;
use chrono::Utc;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, EventStore};
use postgres_es::PostgresEventRepository;
use safehold_cloud::backup::{self as aws, Artifact, ArtifactKind, ArtifactState, BackupLabel};
use safehold_cloud::resolve::Cloud;
use safehold_domain::backup::{
    Backup, BackupCommand, BackupState, BackupStatus, Snapshot, SnapshotState, TargetProgress,
};
use safehold_domain::ids::stream_id;
use safehold_domain::policy::{
    AutoTargetRemoval, InstanceMode, InstanceOptions, Policy, PolicyCommand, PolicyState,
    ResourceKind, Target, TargetKey, Trigger, VolumeSelection,
};
use safehold_domain::source::{SourceRecord, TableRecord};
use safehold_domain::{DomainError, TenantId};
use safehold_projections::accounts::AccountRow;
use safehold_projections::dispatch::{enqueue, BackupJob, BACKUP_QUEUE};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::commands::{execute, system_metadata};
use crate::rounds::{next_round, run_locked};

/// How backups are driven; tests shorten the waits.
#[derive(Debug, Clone)]
pub struct BackupSettings {
    /// Time between completion polls.
    pub poll_every: Duration,
    /// A backup whose snapshots are not complete by then fails.
    pub timeout: Duration,
    /// Backups worked on at once by one process.
    pub concurrency: usize,
    /// A job held by a worker not seen for this long (it died) runs again.
    pub orphaned_after: Duration,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            poll_every: Duration::from_secs(30),
            timeout: Duration::from_secs(12 * 3600),
            concurrency: 8,
            orphaned_after: Duration::from_secs(120),
        }
    }
}

impl BackupSettings {
    /// Defaults, with `SAFEHOLD_BACKUP_POLL_MS` and
    /// `SAFEHOLD_JOB_ORPHANED_AFTER_MS` when set.
    pub fn from_env() -> Self {
        let ms = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
        };
        let defaults = Self::default();
        Self {
            poll_every: ms("SAFEHOLD_BACKUP_POLL_MS").unwrap_or(defaults.poll_every),
            orphaned_after: ms("SAFEHOLD_JOB_ORPHANED_AFTER_MS").unwrap_or(defaults.orphaned_after),
            ..defaults
        }
    }

    fn queue(&self, name: &str, poll: Duration) -> apalis_sql::Config {
        // Workers report every quarter of the orphan delay, so a live worker
        // is never taken for dead.
        apalis_sql::Config::new(name)
            .set_poll_interval(poll)
            .set_keep_alive(self.orphaned_after / 4)
            .set_reenqueue_orphaned_after(self.orphaned_after)
    }
}

#[derive(Clone)]
pub struct BackupContext {
    pub cloud: Cloud,
    pub settings: BackupSettings,
}

pub(crate) async fn load<A: Aggregate>(pool: &PgPool, tenant: Uuid, id: Uuid) -> anyhow::Result<A> {
    let store: PersistedEventStore<PostgresEventRepository, A> =
        PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone()));
    Ok(store
        .load_aggregate(&stream_id(TenantId(tenant), id))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .aggregate)
}

/// What a round leaves to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Round {
    Finished(BackupStatus),
    /// Snapshots are still pending (or a transient AWS error): run again later.
    Again,
}

/// One round of a backup. Returns whether it has finished.
pub async fn run_round(ctx: &BackupContext, job: &BackupJob) -> anyhow::Result<Round> {
    let pool = &ctx.cloud.pool;
    let meta = system_metadata(
        TenantId(job.tenant_id),
        &format!("backup:{}", job.backup_id),
    );
    let policy = load::<Policy>(pool, job.tenant_id, job.policy_id)
        .await?
        .state;
    let mut backup = load::<Backup>(pool, job.tenant_id, job.backup_id)
        .await?
        .state;
    if backup.is_none() {
        let Some(policy) = policy.as_ref().filter(|p| !p.removed) else {
            tracing::warn!(backup = %job.backup_id, "the policy of a started backup is gone");
            return Ok(Round::Finished(BackupStatus::Failed));
        };
        let trigger = started_trigger(pool, job).await?.unwrap_or(Trigger::AdHoc);
        execute::<Backup>(
            pool,
            &meta,
            job.backup_id,
            BackupCommand::Begin {
                id: job.backup_id,
                tenant_id: TenantId(job.tenant_id),
                policy_id: policy.id,
                policy_name: policy.name.clone(),
                account_id: policy.account_id,
                trigger,
                success_criterion: policy.settings.success_criterion,
                targets: policy.targets.clone(),
            },
        )
        .await?;
        backup = load::<Backup>(pool, job.tenant_id, job.backup_id)
            .await?
            .state;
    }
    let backup = backup.ok_or_else(|| anyhow::anyhow!("backup {} not begun", job.backup_id))?;
    if backup.status == BackupStatus::InProgress {
        let account =
            safehold_projections::accounts::find(pool, TenantId(job.tenant_id), backup.account_id)
                .await?;
        match account {
            Some(account) => {
                let started = std::time::Instant::now();
                take_snapshots(ctx, &meta, &backup, policy.as_ref(), &account).await?;
                let taking = started.elapsed();
                let backup = load::<Backup>(pool, job.tenant_id, job.backup_id)
                    .await?
                    .state
                    .expect("begun");
                poll_pending(ctx, &meta, &backup, &account).await?;
                tracing::debug!(
                    backup = %backup.id,
                    take_ms = taking.as_millis() as u64,
                    poll_ms = (started.elapsed() - taking).as_millis() as u64,
                    "backup round"
                );
            }
            None => {
                for run in &backup.targets {
                    let _ = execute::<Backup>(
                        pool,
                        &meta,
                        backup.id,
                        BackupCommand::RecordTargetFailed {
                            target: run.target.key.clone(),
                            error: "the policy's account has been removed".into(),
                        },
                    )
                    .await;
                }
            }
        }
        let started: Option<chrono::DateTime<Utc>> = sqlx::query_scalar(
            "SELECT started_at FROM backups WHERE tenant_id = $1 AND backup_id = $2",
        )
        .bind(job.tenant_id)
        .bind(job.backup_id)
        .fetch_optional(pool)
        .await?;
        let timed_out = started
            .is_some_and(|s| (Utc::now() - s).to_std().unwrap_or_default() > ctx.settings.timeout);
        if timed_out {
            ignore_finished(
                execute::<Backup>(pool, &meta, backup.id, BackupCommand::TimeOut).await,
            )?;
        }
    }
    let backup = load::<Backup>(pool, job.tenant_id, job.backup_id)
        .await?
        .state
        .expect("begun");
    if backup.status == BackupStatus::InProgress {
        return Ok(Round::Again);
    }
    let finishing = std::time::Instant::now();
    finish(ctx, &meta, &backup, policy.as_ref()).await?;
    tracing::debug!(backup = %backup.id, finish_ms = finishing.elapsed().as_millis() as u64, "backup finished");
    Ok(Round::Finished(backup.status))
}

/// A report on a backup that finished meanwhile (another run of the same
/// backup got there first) is not an error.
fn ignore_finished(result: Result<(), cqrs_es::AggregateError<DomainError>>) -> anyhow::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(cqrs_es::AggregateError::UserError(DomainError::Conflict { .. })) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// The trigger the policy recorded when it started this backup.
async fn started_trigger(pool: &PgPool, job: &BackupJob) -> anyhow::Result<Option<Trigger>> {
    let payload: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload->'BackupStarted'->'trigger' FROM events
          WHERE aggregate_type = 'policy' AND aggregate_id = $1 AND event_type = 'BackupStarted'
            AND payload->'BackupStarted'->>'backup_id' = $2",
    )
    .bind(stream_id(TenantId(job.tenant_id), job.policy_id))
    .bind(job.backup_id.to_string())
    .fetch_optional(pool)
    .await?;
    Ok(payload.and_then(|p| serde_json::from_value(p).ok()))
}

fn snapshot_of(artifact: Artifact, region: &str) -> Snapshot {
    Snapshot {
        kind: serde_json::to_value(&artifact.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        id: artifact.id,
        region: region.to_string(),
        source: artifact.source,
        device: artifact.device,
        size_gib: artifact.size_gib,
    }
}

/// The tags and names of what a backup creates for one target.
fn label_of(backup: &BackupState, target: &Target) -> BackupLabel {
    BackupLabel {
        tenant_id: backup.tenant_id.0,
        backup_id: backup.id,
        policy_id: backup.policy_id,
        policy_name: backup.policy_name.clone(),
        target: format!(
            "{}:{}:{}",
            target.key.kind.as_str(),
            target.key.region,
            target.key.resource_id
        ),
    }
}

fn instance_options(target: &Target) -> InstanceOptions {
    target.instance.clone().unwrap_or(InstanceOptions {
        mode: InstanceMode::Snapshots,
        volumes: VolumeSelection::All,
    })
}

/// Instances backed up by EBS snapshots are taken together, a region at a
/// time (see `take_instance_snapshots`); everything else one by one.
fn takes_instance_snapshots(target: &Target) -> bool {
    target.key.kind == ResourceKind::Ec2Instance
        && matches!(
            instance_options(target).mode,
            InstanceMode::Snapshots | InstanceMode::SnapshotsWithInitialAmi
        )
}

/// Creates (or finds, when a previous run already did) the AWS objects of
/// one target that is not an instance backed up by snapshots.
async fn take_target(
    backup: &BackupState,
    config: &safehold_cloud::SdkConfig,
    target: &Target,
) -> Result<Artifact, safehold_cloud::access::CloudError> {
    let label = label_of(backup, target);
    let id = target.key.resource_id.as_str();
    match target.key.kind {
        ResourceKind::EbsVolume => aws::snapshot_volume(config, &label, id).await,
        ResourceKind::RdsInstance => aws::snapshot_rds(config, &label, id).await,
        ResourceKind::AuroraCluster => aws::snapshot_aurora(config, &label, id).await,
        ResourceKind::RedshiftCluster => aws::snapshot_redshift(config, &label, id).await,
        ResourceKind::DynamodbTable => aws::backup_dynamodb(config, &label, id).await,
        ResourceKind::Ec2Instance => {
            let reboot = instance_options(target).mode == InstanceMode::AmiWithReboot;
            aws::image_instance(config, &label, id, reboot).await
        }
    }
}

/// The organisation's days between renewals of an instance's initial AMI.
async fn initial_ami_rotation_days(
    ctx: &BackupContext,
    backup: &BackupState,
) -> anyhow::Result<u32> {
    Ok(
        crate::cleanup::tenant_settings(&ctx.cloud.pool, Some(backup.tenant_id.0))
            .await?
            .into_iter()
            .next()
            .map(|(_, settings)| settings.initial_ami_rotation_days)
            .unwrap_or(90),
    )
}

/// An instance keeps one initial AMI, renewed after `rotation_days`
/// (0: never renewed).
async fn needs_initial_ami(
    ctx: &BackupContext,
    backup: &BackupState,
    account: &AccountRow,
    instance: &str,
    rotation_days: u32,
) -> anyhow::Result<bool> {
    let newest: Option<chrono::DateTime<Utc>> = sqlx::query_scalar(
        "SELECT max(s.created_at) FROM backup_snapshots s
          WHERE s.tenant_id = $1 AND s.account_id = $2 AND s.kind = 'ami' AND s.source = $3
            AND s.deleted_at IS NULL AND s.state <> 'failed'",
    )
    .bind(backup.tenant_id.0)
    .bind(account.account_id)
    .bind(instance)
    .fetch_one(&ctx.cloud.pool)
    .await?;
    Ok(match newest {
        None => true,
        Some(_) if rotation_days == 0 => false,
        Some(at) => (Utc::now() - at).num_days() >= i64::from(rotation_days),
    })
}

/// Creating calls a round has in flight at once.
pub const CREATE_CONCURRENCY: usize = 16;

/// What a round took, recorded in one append per region, with what the
/// sources were like (recovery defaults).
#[derive(Default)]
struct Taken {
    snapshots: Vec<(TargetKey, Vec<Snapshot>)>,
    sources: Vec<(TargetKey, SourceRecord)>,
}

async fn take_snapshots(
    ctx: &BackupContext,
    meta: &safehold_domain::CommandMetadata,
    backup: &BackupState,
    policy: Option<&PolicyState>,
    account: &AccountRow,
) -> anyhow::Result<()> {
    let mut by_region: BTreeMap<&str, Vec<&Target>> = BTreeMap::new();
    for run in backup
        .targets
        .iter()
        .filter(|t| t.progress == TargetProgress::Waiting)
    {
        by_region
            .entry(run.target.key.region.as_str())
            .or_default()
            .push(&run.target);
    }
    for (region, targets) in by_region {
        let config = ctx
            .cloud
            .config(backup.tenant_id, account, region)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (instances, others): (Vec<&Target>, Vec<&Target>) = targets
            .into_iter()
            .partition(|t| takes_instance_snapshots(t));
        let mut taken = Taken::default();
        take_instance_snapshots(
            ctx, meta, backup, policy, account, &config, &instances, &mut taken,
        )
        .await?;
        for target in others {
            let key = &target.key;
            match aws::source_exists(&config, key.kind.as_str(), &key.resource_id).await {
                Ok(true) => {}
                Ok(false) => {
                    target_vanished(&ctx.cloud.pool, meta, backup, policy, key).await?;
                    continue;
                }
                Err(e) if e.is_transient() => continue,
                Err(e) => {
                    record_failure(&ctx.cloud.pool, meta, backup, key, &e.to_string()).await?;
                    continue;
                }
            }
            match take_target(backup, &config, target).await {
                Ok(artifact) => {
                    // A restore does not bring back a table's tags and TTL.
                    if key.kind == ResourceKind::DynamodbTable {
                        match safehold_cloud::recovery::table_facts(&config, &key.resource_id).await
                        {
                            Ok((tags, ttl_attribute)) => taken.sources.push((
                                key.clone(),
                                SourceRecord::Table(TableRecord {
                                    tags,
                                    ttl_attribute,
                                }),
                            )),
                            Err(e) => tracing::warn!(
                                backup = %backup.id, table = %key.resource_id, error = %e,
                                "could not record the table's tags and TTL"
                            ),
                        }
                    }
                    taken
                        .snapshots
                        .push((key.clone(), vec![snapshot_of(artifact, region)]))
                }
                // Throttling and AWS-side failures: try again next round.
                Err(e) if e.is_transient() => {
                    tracing::info!(backup = %backup.id, error = %e, "will retry a snapshot");
                }
                Err(e) => {
                    record_failure(&ctx.cloud.pool, meta, backup, key, &e.to_string()).await?
                }
            }
        }
        if !taken.snapshots.is_empty() {
            ignore_finished(
                execute::<Backup>(
                    &ctx.cloud.pool,
                    meta,
                    backup.id,
                    BackupCommand::RecordTaken {
                        taken: taken.snapshots,
                        sources: taken.sources,
                    },
                )
                .await,
            )?;
        }
    }
    Ok(())
}

/// Snapshots of a region's instances: one DescribeInstances per hundred
/// instances tells which still exist and what their volumes are, one
/// DescribeSnapshots finds what an interrupted earlier round already made,
/// then one CreateSnapshots per instance not yet taken.
#[allow(clippy::too_many_arguments)]
async fn take_instance_snapshots(
    ctx: &BackupContext,
    meta: &safehold_domain::CommandMetadata,
    backup: &BackupState,
    policy: Option<&PolicyState>,
    account: &AccountRow,
    config: &safehold_cloud::SdkConfig,
    targets: &[&Target],
    taken: &mut Taken,
) -> anyhow::Result<()> {
    if targets.is_empty() {
        return Ok(());
    }
    let pool = &ctx.cloud.pool;
    let ids: Vec<String> = targets.iter().map(|t| t.key.resource_id.clone()).collect();
    // Before a backup's first creating call nothing can exist to be found;
    // once a round has begun creating (and may have been interrupted), every
    // round looks first.
    let look_for_made = backup.taking_started
        || match execute::<Backup>(pool, meta, backup.id, BackupCommand::StartTaking).await {
            Ok(()) => false,
            Err(cqrs_es::AggregateError::UserError(DomainError::Conflict { .. })) => true,
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        };
    let looked_up = futures::future::try_join(aws::describe_live_instances(config, &ids), async {
        if look_for_made {
            aws::backup_snapshots(config, backup.id).await
        } else {
            Ok(HashMap::new())
        }
    });
    let started = std::time::Instant::now();
    let (live, mut made) = match looked_up.await {
        Ok(found) => found,
        Err(e) if e.is_transient() => {
            tracing::info!(backup = %backup.id, error = %e, "will look up instances next round");
            return Ok(());
        }
        Err(e) => {
            for target in targets {
                record_failure(pool, meta, backup, &target.key, &e.to_string()).await?;
            }
            return Ok(());
        }
    };
    let mut present = Vec::new();
    for target in targets {
        match live.get(&target.key.resource_id) {
            Some(instance) => {
                let label = label_of(backup, target);
                let already_made = made.remove(&label.target_tag()).unwrap_or_default();
                present.push((*target, instance, label, already_made));
            }
            None => target_vanished(pool, meta, backup, policy, &target.key).await?,
        }
    }
    let mut creating = Vec::with_capacity(present.len());
    for (target, instance, label, already_made) in present {
        creating.push(async move {
            let options = instance_options(target);
            let selection = match &options.volumes {
                VolumeSelection::All => aws::DeviceSelection::All,
                VolumeSelection::Include { devices } => aws::DeviceSelection::Include(devices),
                VolumeSelection::Exclude { devices } => aws::DeviceSelection::Exclude(devices),
            };
            let result =
                aws::snapshot_described_instance(config, &label, instance, selection, already_made)
                    .await;
            (target, label, result)
        });
    }
    let looking_up = started.elapsed();
    let results: Vec<_> = futures::stream::iter(creating)
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    tracing::debug!(
        backup = %backup.id,
        instances = targets.len(),
        lookup_ms = looking_up.as_millis() as u64,
        create_ms = (started.elapsed() - looking_up).as_millis() as u64,
        "instance snapshots"
    );
    // Read once per round, and only when some instance keeps an initial AMI.
    let rotation_days = if targets
        .iter()
        .any(|t| instance_options(t).mode == InstanceMode::SnapshotsWithInitialAmi)
    {
        initial_ami_rotation_days(ctx, backup).await?
    } else {
        0
    };
    for (target, label, result) in results {
        let key = &target.key;
        let mut artifacts = match result {
            Ok(artifacts) => artifacts,
            // Throttling and AWS-side failures: the next round finds what
            // was made by its tags and takes the rest.
            Err(e) if e.is_transient() => {
                tracing::info!(backup = %backup.id, error = %e, "will retry a snapshot");
                continue;
            }
            Err(e) => {
                record_failure(pool, meta, backup, key, &e.to_string()).await?;
                continue;
            }
        };
        if instance_options(target).mode == InstanceMode::SnapshotsWithInitialAmi
            && needs_initial_ami(ctx, backup, account, &key.resource_id, rotation_days).await?
        {
            match aws::image_instance(config, &label, &key.resource_id, false).await {
                Ok(image) => artifacts.push(image),
                Err(e) if e.is_transient() => continue,
                Err(e) => {
                    record_failure(pool, meta, backup, key, &e.to_string()).await?;
                    continue;
                }
            }
        }
        let snapshots = artifacts
            .into_iter()
            .map(|a| snapshot_of(a, &key.region))
            .collect();
        if let Some(instance) = live.get(&key.resource_id) {
            let record = SourceRecord::Instance(Box::new(aws::instance_record(instance)));
            taken.sources.push((key.clone(), record));
        }
        taken.snapshots.push((key.clone(), snapshots));
    }
    Ok(())
}

/// A target whose resource no longer exists fails, or with auto target
/// removal leaves the policy with a warning in the backup log.
async fn target_vanished(
    pool: &PgPool,
    meta: &safehold_domain::CommandMetadata,
    backup: &BackupState,
    policy: Option<&PolicyState>,
    key: &TargetKey,
) -> anyhow::Result<()> {
    let removal = policy
        .map(|p| p.settings.auto_target_removal)
        .unwrap_or(AutoTargetRemoval::No);
    let remove = removal != AutoTargetRemoval::No;
    if remove {
        let _ = execute::<Policy>(
            pool,
            meta,
            backup.policy_id,
            PolicyCommand::RemoveTarget {
                key: key.clone(),
                vanished: true,
            },
        )
        .await;
    }
    let command = if remove {
        BackupCommand::RecordTargetVanished {
            target: key.clone(),
            removed_from_policy: true,
        }
    } else {
        BackupCommand::RecordTargetFailed {
            target: key.clone(),
            error: "the resource no longer exists".into(),
        }
    };
    ignore_finished(execute::<Backup>(pool, meta, backup.id, command).await)
}

async fn record_failure(
    pool: &PgPool,
    meta: &safehold_domain::CommandMetadata,
    backup: &BackupState,
    key: &TargetKey,
    error: &str,
) -> anyhow::Result<()> {
    ignore_finished(
        execute::<Backup>(
            pool,
            meta,
            backup.id,
            BackupCommand::RecordTargetFailed {
                target: key.clone(),
                error: error.to_string(),
            },
        )
        .await,
    )
}

/// Asks AWS about every pending snapshot: one call per region and kind.
async fn poll_pending(
    ctx: &BackupContext,
    meta: &safehold_domain::CommandMetadata,
    backup: &BackupState,
    account: &AccountRow,
) -> anyhow::Result<()> {
    let mut groups: BTreeMap<(String, String), Vec<&Snapshot>> = BTreeMap::new();
    for s in backup.pending() {
        groups
            .entry((s.region.clone(), s.kind.clone()))
            .or_default()
            .push(s);
    }
    let mut states = Vec::new();
    for ((region, kind), snapshots) in groups {
        let Ok(kind) = serde_json::from_value::<ArtifactKind>(serde_json::Value::String(kind))
        else {
            continue;
        };
        let config = ctx
            .cloud
            .config(backup.tenant_id, account, &region)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let ids: Vec<String> = snapshots.iter().map(|s| s.id.clone()).collect();
        match aws::poll(&config, kind, &ids).await {
            Ok(found) => states.extend(found.into_iter().filter_map(|(id, state)| {
                let state = match state {
                    ArtifactState::Pending => return None,
                    ArtifactState::Available => SnapshotState::Completed,
                    ArtifactState::Failed => SnapshotState::Failed,
                };
                Some((id, state))
            })),
            Err(e) => tracing::info!(backup = %backup.id, error = %e, "poll failed; next round"),
        }
    }
    if !states.is_empty() {
        ignore_finished(
            execute::<Backup>(
                &ctx.cloud.pool,
                meta,
                backup.id,
                BackupCommand::RecordSnapshotStates { states },
            )
            .await,
        )?;
    }
    Ok(())
}

/// After a backup: retention runs, a failed or partial backup is retried
/// when the policy allows, and then the policy learns the outcome (so a
/// policy shows as running until its cleanup is done).
async fn finish(
    ctx: &BackupContext,
    meta: &safehold_domain::CommandMetadata,
    backup: &BackupState,
    policy: Option<&PolicyState>,
) -> anyhow::Result<()> {
    let pool = &ctx.cloud.pool;
    let succeeded = backup.status == BackupStatus::Successful;
    if let Some(policy) = policy.filter(|p| !p.removed) {
        if !succeeded {
            schedule_retry(pool, backup, policy).await?;
        }
        // Decided before the policy learns the outcome, so a repeated finish
        // decides disaster recovery once.
        crate::dr::after_backup(&ctx.cloud, meta, backup, policy).await?;
        // A cleanup failure must not keep the policy from its next backup:
        // what it left is picked up by the next cleanup.
        if let Err(e) = crate::retention::apply_retention(ctx, meta, policy, backup).await {
            tracing::warn!(policy = %policy.id, error = %e, "retention did not complete");
        }
    }
    match execute::<Policy>(
        pool,
        meta,
        backup.policy_id,
        PolicyCommand::FinishBackup {
            backup_id: backup.id,
            succeeded,
        },
    )
    .await
    {
        Ok(()) | Err(cqrs_es::AggregateError::UserError(DomainError::NotFound(_))) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

async fn schedule_retry(
    pool: &PgPool,
    backup: &BackupState,
    policy: &PolicyState,
) -> anyhow::Result<()> {
    let (of, attempt) = match backup.trigger {
        Trigger::Retry { of, attempt } => (of, attempt),
        _ => (backup.id, 0),
    };
    if attempt >= policy.settings.retries {
        return Ok(());
    }
    let retry = RetryJob {
        tenant_id: backup.tenant_id.0,
        policy_id: policy.id,
        of,
        attempt: attempt + 1,
    };
    let run_at =
        Utc::now() + chrono::Duration::minutes(i64::from(policy.settings.retry_wait_minutes));
    let mut conn = pool.acquire().await?;
    enqueue(
        &mut conn,
        RETRY_QUEUE,
        Uuid::new_v5(&of, format!("retry-job-{}", attempt + 1).as_bytes()),
        &retry,
        run_at,
    )
    .await?;
    Ok(())
}

/// Queue of delayed retries of failed backups.
pub const RETRY_QUEUE: &str = "safehold::backup-retry";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RetryJob {
    pub tenant_id: Uuid,
    pub policy_id: Uuid,
    /// The first backup of the series.
    pub of: Uuid,
    pub attempt: u32,
}

/// The id of the n-th retry of a backup: the same however often it is tried.
pub fn retry_backup_id(of: Uuid, attempt: u32) -> Uuid {
    Uuid::new_v5(&of, format!("retry-{attempt}").as_bytes())
}

async fn run_retry(job: RetryJob, ctx: Data<BackupContext>) -> Result<(), Error> {
    let meta = system_metadata(TenantId(job.tenant_id), "backup-retry");
    let outcome = execute::<Policy>(
        &ctx.cloud.pool,
        &meta,
        job.policy_id,
        PolicyCommand::StartBackup {
            backup_id: retry_backup_id(job.of, job.attempt),
            trigger: Trigger::Retry {
                of: job.of,
                attempt: job.attempt,
            },
        },
    )
    .await;
    match outcome {
        Ok(()) => {
            safehold_projections::runtime::notify_committed(&ctx.cloud.pool).await;
            Ok(())
        }
        // Another backup runs, or the policy is gone: no retry then.
        Err(cqrs_es::AggregateError::UserError(e)) => {
            tracing::info!(policy = %job.policy_id, reason = %e, "retry not started");
            Ok(())
        }
        Err(e) => Err(Error::Failed(std::sync::Arc::new(Box::new(
            std::io::Error::other(e.to_string()),
        )))),
    }
}

async fn run_backup_job(job: BackupJob, ctx: Data<BackupContext>) -> Result<(), Error> {
    let pool = &ctx.cloud.pool;
    // One run per backup at a time; a second one (after a crash) leaves it be.
    let key = backup_lock_key(job.backup_id);
    match run_locked(pool, key, run_round(&ctx, &job)).await? {
        None => {}
        Some(Round::Finished(status)) => {
            tracing::info!(backup = %job.backup_id, status = status.as_str(), "backup finished");
            safehold_projections::runtime::notify_committed(pool).await;
        }
        Some(Round::Again) => {
            next_round(pool, BACKUP_QUEUE, &job, ctx.settings.poll_every).await?;
        }
    }
    Ok(())
}

/// The advisory lock that keeps two runs of one backup apart.
pub fn backup_lock_key(backup: Uuid) -> i64 {
    let bytes = backup.as_bytes();
    i64::from_be_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

/// Runs backup and retry jobs until `stop`.
pub async fn run_workers(ctx: BackupContext, mut stop: watch::Receiver<bool>) {
    let pool = ctx.cloud.pool.clone();
    let backups: PostgresStorage<BackupJob> = PostgresStorage::new_with_config(
        pool.clone(),
        ctx.settings.queue(BACKUP_QUEUE, Duration::from_millis(500)),
    );
    let retries: PostgresStorage<RetryJob> = PostgresStorage::new_with_config(
        pool,
        ctx.settings.queue(RETRY_QUEUE, Duration::from_secs(5)),
    );
    let concurrency = ctx.settings.concurrency;
    let monitor = Monitor::new()
        .register(
            WorkerBuilder::new(format!("backup-{}", Uuid::new_v4()))
                .concurrency(concurrency)
                .data(ctx.clone())
                .backend(backups)
                .build_fn(run_backup_job),
        )
        .register(
            WorkerBuilder::new(format!("backup-retry-{}", Uuid::new_v4()))
                .data(ctx)
                .backend(retries)
                .build_fn(run_retry),
        );
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
        Ok(())
    };
    if let Err(e) = monitor.run_with_signal(stopped).await {
        tracing::warn!(error = %e, "backup workers stopped");
    }
}
