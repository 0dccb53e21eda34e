//! Runs recoveries. A `RecoveryJob` (enqueued by the outbox when a recovery
//! is requested) does one round at a time: creates what is missing, records
//! it, checks whether it is ready, and re-enqueues itself until the recovery
//! has finished or its deadline has passed.
//!
//! Every step is safe to repeat: the cloud operations find what an earlier
//! attempt of the same recovery made (by tags or identifiers) before
//! creating anything, and the aggregate ignores a second report. A
//! per-recovery advisory lock keeps two rounds apart.

use std::time::Duration;

use apalis::prelude::*;
use apalis_sql::postgres::PostgresStorage;
use chrono::Utc;
use safehold_cloud::access::{sdk_config, AccessSpec, CloudError};
use safehold_cloud::backup::ArtifactKind;
use safehold_cloud::recovery::{self as aws, RecoveryLabel};
use safehold_cloud::resolve::Cloud;
use safehold_cloud::SdkConfig;
use safehold_domain::recovery::{
    AmiHandling, AttachBehavior, LaunchFrom, Recovered, Recovery, RecoveryCommand, RecoveryPlan,
    RecoveryState, RecoveryStatus,
};
use safehold_domain::{CommandMetadata, DomainError, TenantId};
use safehold_projections::accounts::AccountRow;
use safehold_projections::dispatch::{RecoveryJob, RECOVERY_QUEUE};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::backup::load;
use crate::commands::{execute, system_metadata};
use crate::rounds::{next_round, run_locked};

/// How recoveries are driven; tests shorten the wait.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    /// Time between rounds while resources are being created.
    pub poll_every: Duration,
    /// A recovery not finished after this long fails.
    pub deadline: chrono::Duration,
    pub concurrency: usize,
    pub orphaned_after: Duration,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        Self {
            poll_every: Duration::from_secs(15),
            deadline: chrono::Duration::hours(6),
            concurrency: 8,
            orphaned_after: Duration::from_secs(120),
        }
    }
}

impl RecoverySettings {
    /// Defaults, with `SAFEHOLD_RECOVERY_POLL_MS` and
    /// `SAFEHOLD_JOB_ORPHANED_AFTER_MS` when set.
    pub fn from_env() -> Self {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let defaults = Self::default();
        Self {
            poll_every: number("SAFEHOLD_RECOVERY_POLL_MS")
                .map(Duration::from_millis)
                .unwrap_or(defaults.poll_every),
            orphaned_after: number("SAFEHOLD_JOB_ORPHANED_AFTER_MS")
                .map(Duration::from_millis)
                .unwrap_or(defaults.orphaned_after),
            ..defaults
        }
    }
}

#[derive(Clone)]
pub struct RecoveryContext {
    pub cloud: Cloud,
    pub settings: RecoverySettings,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Round {
    Finished,
    Again,
}

/// What a round of one plan leads to.
enum Step {
    /// Created resources are not ready yet.
    Wait,
    Done {
        status: RecoveryStatus,
        message: String,
    },
}

fn done(message: impl Into<String>) -> Step {
    Step::Done {
        status: RecoveryStatus::Succeeded,
        message: message.into(),
    }
}

/// A refused report (the recovery finished meanwhile) is not the job's error.
fn ignore_refused(result: Result<(), cqrs_es::AggregateError<DomainError>>) -> anyhow::Result<()> {
    match result {
        Ok(()) | Err(cqrs_es::AggregateError::UserError(_)) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

struct Run<'a> {
    pool: &'a PgPool,
    meta: CommandMetadata,
    recovery: &'a RecoveryState,
    label: RecoveryLabel,
    /// The target account's view.
    target: SdkConfig,
    /// The account holding the snapshots, when it is not the target.
    source: Option<(SdkConfig, String)>,
    target_number: String,
}

impl Run<'_> {
    async fn record(&self, created: Vec<Recovered>) -> anyhow::Result<()> {
        if created.iter().all(|r| self.recovery.has(&r.kind, &r.id)) {
            return Ok(());
        }
        ignore_refused(
            execute::<Recovery>(
                self.pool,
                &self.meta,
                self.recovery.id,
                RecoveryCommand::RecordCreated { created },
            )
            .await,
        )
    }

    async fn note(&self, message: impl Into<String>) -> anyhow::Result<()> {
        ignore_refused(
            execute::<Recovery>(
                self.pool,
                &self.meta,
                self.recovery.id,
                RecoveryCommand::Note {
                    message: message.into(),
                },
            )
            .await,
        )
    }

    /// Lets the target account use the source account's snapshots.
    async fn share(&self, kind: ArtifactKind, ids: &[&str]) -> Result<(), CloudError> {
        if let Some((source, _)) = &self.source {
            for id in ids {
                safehold_cloud::dr::share(source, &kind, id, &self.target_number).await?;
            }
        }
        Ok(())
    }

    /// How the target account names a source-account RDS snapshot.
    fn rds_snapshot(&self, resource: &str, id: &str) -> String {
        match &self.source {
            Some((_, number)) => format!(
                "arn:aws:rds:{}:{number}:{resource}:{id}",
                self.recovery.source.region
            ),
            None => id.to_string(),
        }
    }
}

fn tags(map: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

async fn recover_instance(
    run: &Run<'_>,
    plan: &safehold_domain::recovery::InstancePlan,
) -> Result<Step, anyhow::Error> {
    let config = &run.target;
    let snapshots: Vec<&str> = plan
        .root_snapshot_id
        .iter()
        .map(String::as_str)
        .chain(plan.volumes.iter().map(|v| v.snapshot_id.as_str()))
        .collect();
    run.share(ArtifactKind::EbsSnapshot, &snapshots).await?;
    let image_id = match plan.launch_from {
        LaunchFrom::Image => plan.image_id.clone().unwrap_or_default(),
        LaunchFrom::Snapshot => {
            let spec = aws::ImageSpec {
                item: plan.source_instance.clone(),
                root_snapshot_id: plan.root_snapshot_id.clone().unwrap_or_default(),
                root_device_name: plan
                    .root_device_name
                    .clone()
                    .unwrap_or_else(|| "/dev/xvda".into()),
                architecture: plan.architecture.clone(),
                volumes: Vec::new(),
            };
            let image = aws::register_image(config, &run.label, &spec).await?;
            run.record(vec![Recovered {
                kind: "image".into(),
                id: image.clone(),
            }])
            .await?;
            image
        }
    };
    if plan.launch_from == LaunchFrom::Snapshot && plan.ami_handling == AmiHandling::CreateOnly {
        return Ok(done(format!("registered AMI {image_id}; nothing launched")));
    }
    let launch = aws::LaunchSpec::for_plan(plan, image_id.clone());
    let launched: Vec<&str> = run.recovery.created_of("instance").collect();
    if launched.is_empty() {
        aws::check_launch_references(config, &launch).await?;
    }
    let instances = aws::launch_instances(config, &run.label, &launch).await?;
    run.record(
        instances
            .iter()
            .map(|id| Recovered {
                kind: "instance".into(),
                id: id.clone(),
            })
            .collect(),
    )
    .await?;
    let states = aws::instance_states(config, &instances).await?;
    if let Some((id, state)) = states
        .iter()
        .find(|(_, s)| matches!(s.as_str(), "terminated" | "shutting-down"))
    {
        return Ok(Step::Done {
            status: RecoveryStatus::Failed,
            message: format!("instance {id} is {state}"),
        });
    }
    if instances.len() < plan.count as usize
        || !states.values().all(|s| s == "running")
        || states.len() < instances.len()
    {
        return Ok(Step::Wait);
    }
    if plan.launch_from == LaunchFrom::Snapshot && plan.ami_handling == AmiHandling::Deregister {
        aws::deregister_image(config, &image_id).await?;
        run.note(format!("Deregistered the temporary AMI {image_id}"))
            .await?;
    }
    Ok(done(format!(
        "launched {} instance(s): {}",
        instances.len(),
        instances.join(", ")
    )))
}

async fn recover_volumes(
    run: &Run<'_>,
    plan: &safehold_domain::recovery::VolumesPlan,
) -> Result<Step, anyhow::Error> {
    let config = &run.target;
    let snapshots: Vec<&str> = plan
        .volumes
        .iter()
        .map(|v| v.volume.snapshot_id.as_str())
        .collect();
    run.share(ArtifactKind::EbsSnapshot, &snapshots).await?;
    let mut created = Vec::new();
    for v in &plan.volumes {
        // The snapshot kept its source's tags; only its owner sees them.
        let tags = if v.preserve_tags {
            let owner = run.source.as_ref().map(|(c, _)| c).unwrap_or(config);
            let kept = safehold_cloud::backup::snapshot_tags(owner, &v.volume.snapshot_id).await?;
            aws::preserved_tags(&kept)
        } else {
            Vec::new()
        };
        let spec = aws::VolumeSpec {
            item: v.volume.snapshot_id.clone(),
            snapshot_id: v.volume.snapshot_id.clone(),
            availability_zone: v.availability_zone.clone(),
            size_gib: Some(v.volume.size_gib),
            volume_type: v.volume.volume_type.clone(),
            iops: v.volume.iops,
            tags,
        };
        created.push((v, aws::create_volume(config, &run.label, &spec).await?));
    }
    run.record(
        created
            .iter()
            .map(|(_, id)| Recovered {
                kind: "volume".into(),
                id: id.clone(),
            })
            .collect(),
    )
    .await?;
    for (_, id) in &created {
        match aws::volume_state(config, id).await?.as_deref() {
            Some("available") | Some("in-use") => {}
            Some("error") | None => {
                return Ok(Step::Done {
                    status: RecoveryStatus::Failed,
                    message: format!("volume {id} could not be created"),
                })
            }
            _ => return Ok(Step::Wait),
        }
    }
    let ids: Vec<&str> = created.iter().map(|(_, id)| id.as_str()).collect();
    let Some(instance) = &plan.attach_to else {
        return Ok(done(format!("created volume(s) {}", ids.join(", "))));
    };
    let behavior = match plan.attach_behavior {
        AttachBehavior::IfDeviceFree => aws::AttachBehavior::IfDeviceFree,
        AttachBehavior::Switch => aws::AttachBehavior::Switch,
        AttachBehavior::SwitchAndDeleteOld => aws::AttachBehavior::SwitchAndDeleteOld,
    };
    let mut problems = Vec::new();
    for (v, id) in &created {
        match aws::attach_volume(config, id, instance, &v.volume.device, behavior).await {
            Ok(attached) => {
                let mut line = format!("Attached {id} to {instance} at {}", v.volume.device);
                if let Some(old) = attached.replaced_volume {
                    line.push_str(&format!(
                        ", replacing {old}{}",
                        if attached.deleted_replaced {
                            " (deleted)"
                        } else {
                            ""
                        }
                    ));
                }
                run.note(line).await?;
            }
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => problems.push(format!("{id} was created but not attached: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(done(format!(
            "created volume(s) {} and attached them to {instance}",
            ids.join(", ")
        )))
    } else {
        Ok(Step::Done {
            status: RecoveryStatus::PartiallySucceeded,
            message: problems.join("; "),
        })
    }
}

/// The step after creating a database: done once AWS says it is available.
async fn when_available(config: &SdkConfig, kind: &str, id: &str) -> Result<Step, anyhow::Error> {
    match aws::database_status(config, kind, id).await?.as_deref() {
        Some("available") => Ok(done(format!("{id} is available"))),
        Some("failed") | Some("incompatible-restore") | None => Ok(Step::Done {
            status: RecoveryStatus::Failed,
            message: format!("{id} could not be restored"),
        }),
        _ => Ok(Step::Wait),
    }
}

async fn recover(run: &Run<'_>) -> Result<Step, anyhow::Error> {
    let config = &run.target;
    match &run.recovery.plan {
        RecoveryPlan::Instance(plan) => recover_instance(run, plan).await,
        RecoveryPlan::Volumes(plan) => recover_volumes(run, plan).await,
        RecoveryPlan::Rds(plan) => {
            run.share(ArtifactKind::RdsSnapshot, &[&plan.snapshot_id])
                .await?;
            let spec = aws::RdsSpec {
                snapshot: run.rds_snapshot("snapshot", &plan.snapshot_id),
                db_instance_id: plan.db_instance_id.clone(),
                db_instance_class: plan.db_instance_class.clone(),
                port: plan.port,
                multi_az: plan.multi_az,
                subnet_group: plan.subnet_group.clone(),
                availability_zone: plan.availability_zone.clone(),
                publicly_accessible: plan.publicly_accessible,
                tags: Vec::new(),
            };
            let id = aws::restore_rds(config, &run.label, &spec).await?;
            run.record(vec![Recovered {
                kind: "db_instance".into(),
                id: id.clone(),
            }])
            .await?;
            when_available(config, "rds", &id).await
        }
        RecoveryPlan::Aurora(plan) => {
            run.share(ArtifactKind::AuroraSnapshot, &[&plan.snapshot_id])
                .await?;
            let spec = aws::AuroraSpec {
                snapshot: run.rds_snapshot("cluster-snapshot", &plan.snapshot_id),
                cluster_id: plan.cluster_id.clone(),
                instance_id: plan.instance_id.clone(),
                instance_class: plan.instance_class.clone(),
                port: plan.port,
                subnet_group: plan.subnet_group.clone(),
                availability_zone: plan.availability_zone.clone(),
                publicly_accessible: plan.publicly_accessible,
                multi_az: plan.multi_az,
                tags: Vec::new(),
            };
            let (cluster, instances) = aws::restore_aurora(config, &run.label, &spec).await?;
            let mut created = vec![Recovered {
                kind: "db_cluster".into(),
                id: cluster.clone(),
            }];
            created.extend(instances.iter().map(|id| Recovered {
                kind: "db_instance".into(),
                id: id.clone(),
            }));
            run.record(created).await?;
            when_available(config, "aurora", &cluster).await
        }
        RecoveryPlan::Redshift(plan) => {
            let spec = aws::RedshiftSpec {
                snapshot_id: plan.snapshot_id.clone(),
                snapshot_owner: None,
                cluster_id: plan.cluster_id.clone(),
                node_type: plan.node_type.clone(),
                port: plan.port,
                availability_zone: plan.availability_zone.clone(),
                subnet_group: plan.subnet_group.clone(),
                publicly_accessible: plan.publicly_accessible,
                tags: Vec::new(),
            };
            let id = aws::restore_redshift(config, &run.label, &spec).await?;
            run.record(vec![Recovered {
                kind: "redshift_cluster".into(),
                id: id.clone(),
            }])
            .await?;
            when_available(config, "redshift", &id).await
        }
        RecoveryPlan::Dynamodb(plan) => {
            let spec = aws::TableSpec {
                backup_arn: plan.backup_arn.clone(),
                table_name: plan.table_name.clone(),
                tags: tags(&plan.tags),
                ttl_attribute: plan.ttl_attribute.clone(),
            };
            aws::restore_table(config, &run.label, &spec).await?;
            run.record(vec![Recovered {
                kind: "dynamodb_table".into(),
                id: plan.table_name.clone(),
            }])
            .await?;
            if aws::finish_table(config, &spec).await? {
                Ok(done(format!("table {} restored", plan.table_name)))
            } else {
                Ok(Step::Wait)
            }
        }
    }
}

/// The target account's SDK configuration: through the recovery's one-off
/// keys when it has them.
async fn target_config(
    cloud: &Cloud,
    recovery: &RecoveryState,
    account: &AccountRow,
) -> anyhow::Result<SdkConfig> {
    let region = &recovery.target.region;
    if recovery.one_off_credentials {
        let keys: Option<(String, Uuid)> = sqlx::query_as(
            "SELECT access_key_id, secret_id FROM recovery_credentials
             WHERE tenant_id = $1 AND recovery_id = $2",
        )
        .bind(recovery.tenant_id.0)
        .bind(recovery.id)
        .fetch_optional(&cloud.pool)
        .await?;
        let (access_key_id, secret_id) =
            keys.ok_or_else(|| anyhow::anyhow!("the recovery's one-off credentials are gone"))?;
        let secret = safehold_cloud::secrets::load(
            &cloud.pool,
            &cloud.keyring,
            recovery.tenant_id.0,
            secret_id,
        )
        .await?;
        let spec = AccessSpec::Keys {
            access_key_id,
            secret_access_key: secret,
        };
        return Ok(sdk_config(&cloud.endpoint, &spec, region).await);
    }
    cloud
        .config(recovery.tenant_id, account, region)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Forgets one-off credentials once the recovery has ended.
async fn forget_credentials(pool: &PgPool, recovery: &RecoveryState) -> anyhow::Result<()> {
    let secret: Option<Uuid> = sqlx::query_scalar(
        "DELETE FROM recovery_credentials WHERE tenant_id = $1 AND recovery_id = $2
         RETURNING secret_id",
    )
    .bind(recovery.tenant_id.0)
    .bind(recovery.id)
    .fetch_optional(pool)
    .await?;
    if let Some(secret) = secret {
        safehold_cloud::secrets::delete(pool, recovery.tenant_id.0, secret).await?;
    }
    Ok(())
}

/// A failed instance recovery leaves no temporary AMI behind.
async fn deregister_temporary_images(run: &Run<'_>) {
    let RecoveryPlan::Instance(plan) = &run.recovery.plan else {
        return;
    };
    if plan.launch_from != LaunchFrom::Snapshot || plan.ami_handling != AmiHandling::Deregister {
        return;
    }
    let recovery = load::<Recovery>(run.pool, run.recovery.tenant_id.0, run.recovery.id).await;
    let images: Vec<String> = recovery
        .ok()
        .and_then(|r| r.state)
        .map(|s| s.created_of("image").map(str::to_string).collect())
        .unwrap_or_default();
    for image in images {
        match aws::deregister_image(&run.target, &image).await {
            Ok(()) => {
                let _ = run
                    .note(format!("Deregistered the temporary AMI {image}"))
                    .await;
            }
            Err(e) => tracing::warn!(image, error = %e, "could not deregister a temporary AMI"),
        }
    }
}

async fn finish(
    pool: &PgPool,
    meta: &CommandMetadata,
    recovery: &RecoveryState,
    status: RecoveryStatus,
    message: String,
) -> anyhow::Result<()> {
    ignore_refused(
        execute::<Recovery>(
            pool,
            meta,
            recovery.id,
            RecoveryCommand::Finish { status, message },
        )
        .await,
    )?;
    forget_credentials(pool, recovery).await
}

/// One round of a recovery.
pub async fn run_round(ctx: &RecoveryContext, job: &RecoveryJob) -> anyhow::Result<Round> {
    let pool = &ctx.cloud.pool;
    let tenant = TenantId(job.tenant_id);
    let meta = system_metadata(tenant, &format!("recovery:{}", job.recovery_id));
    let Some(recovery) = load::<Recovery>(pool, job.tenant_id, job.recovery_id)
        .await?
        .state
    else {
        return Ok(Round::Finished);
    };
    if recovery.status != RecoveryStatus::InProgress {
        forget_credentials(pool, &recovery).await?;
        return Ok(Round::Finished);
    }
    if Utc::now() - recovery.requested_at > ctx.settings.deadline {
        finish(
            pool,
            &meta,
            &recovery,
            RecoveryStatus::Failed,
            "the recovery did not complete in time".into(),
        )
        .await?;
        return Ok(Round::Finished);
    }
    let find = |id| safehold_projections::accounts::find(pool, tenant, id);
    let (Some(target_account), Some(source_account)) = (
        find(recovery.target.account_id).await?,
        find(recovery.source.account_id).await?,
    ) else {
        finish(
            pool,
            &meta,
            &recovery,
            RecoveryStatus::Failed,
            "the source or target account has been removed".into(),
        )
        .await?;
        return Ok(Round::Finished);
    };
    let target = target_config(&ctx.cloud, &recovery, &target_account).await?;
    let source = if recovery.source.account_id == recovery.target.account_id {
        None
    } else {
        let config = ctx
            .cloud
            .config(tenant, &source_account, &recovery.source.region)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Some((config, source_account.number.clone()))
    };
    let run = Run {
        pool,
        meta: meta.clone(),
        recovery: &recovery,
        label: RecoveryLabel {
            tenant_id: job.tenant_id,
            recovery_id: recovery.id,
        },
        target,
        source,
        target_number: target_account.number.clone(),
    };
    let (status, message) = match recover(&run).await {
        Ok(Step::Wait) => return Ok(Round::Again),
        Ok(Step::Done { status, message }) => (status, message),
        Err(e) => match e.downcast_ref::<CloudError>() {
            Some(cloud) if cloud.is_transient() => {
                tracing::info!(recovery = %recovery.id, error = %cloud, "will retry the recovery step");
                return Ok(Round::Again);
            }
            Some(cloud) => (RecoveryStatus::Failed, cloud.to_string()),
            None => return Err(e),
        },
    };
    if status == RecoveryStatus::Failed {
        deregister_temporary_images(&run).await;
    }
    finish(pool, &meta, &recovery, status, message).await?;
    Ok(Round::Finished)
}

fn lock_key(recovery: Uuid) -> i64 {
    let (high, _) = recovery.as_u64_pair();
    // Recoveries use their own key space beside backups' and DR's.
    (high ^ 0x5245_434f_5645_5259) as i64
}

async fn run_recovery_job(job: RecoveryJob, ctx: Data<RecoveryContext>) -> Result<(), Error> {
    let pool = &ctx.cloud.pool;
    match run_locked(pool, lock_key(job.recovery_id), run_round(&ctx, &job)).await? {
        None => {}
        Some(Round::Finished) => {
            tracing::info!(recovery = %job.recovery_id, "recovery finished");
            safehold_projections::runtime::notify_committed(pool).await;
        }
        Some(Round::Again) => {
            next_round(pool, RECOVERY_QUEUE, &job, ctx.settings.poll_every).await?;
        }
    }
    Ok(())
}

/// Runs recovery jobs until `stop`.
pub async fn run_workers(ctx: RecoveryContext, mut stop: watch::Receiver<bool>) {
    let config = apalis_sql::Config::new(RECOVERY_QUEUE)
        .set_poll_interval(Duration::from_millis(200))
        .set_keep_alive(ctx.settings.orphaned_after / 4)
        .set_reenqueue_orphaned_after(ctx.settings.orphaned_after);
    let jobs: PostgresStorage<RecoveryJob> =
        PostgresStorage::new_with_config(ctx.cloud.pool.clone(), config);
    let concurrency = ctx.settings.concurrency;
    let monitor = Monitor::new().register(
        WorkerBuilder::new(format!("recovery-{}", Uuid::new_v4()))
            .concurrency(concurrency)
            .data(ctx)
            .backend(jobs)
            .build_fn(run_recovery_job),
    );
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
        Ok(())
    };
    if let Err(e) = monitor.run_with_signal(stopped).await {
        tracing::warn!(error = %e, "recovery workers stopped");
    }
}
