//! Runs commands on aggregates with the request's metadata, retries on
//! optimistic-concurrency conflicts, and waits for the read models so the
//! response (and the client's next read) sees the change.

use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, EventStore};
use postgres_es::{PostgresCqrs, PostgresEventRepository};
use safehold_domain::account::{Account, AccountCommand};
use safehold_domain::backup::BackupState;
use safehold_domain::backup::{Backup, BackupCommand};
use safehold_domain::ids::stream_id;
use safehold_domain::policy::{Policy, PolicyCommand, PolicyState};
use safehold_domain::recovery::{Recovery, RecoveryCommand};
use safehold_domain::schedule::{Schedule, ScheduleCommand};
use safehold_domain::tenant::{Tenant, TenantCommand, TenantState};
use safehold_domain::user::{User, UserCommand, UserState};
use safehold_domain::{CommandMetadata, DomainError, TenantId, UserId};
use sqlx::PgPool;

use crate::error::ApiError;

const CONFLICT_RETRIES: usize = 5;
const READ_MODEL_WAIT: Duration = Duration::from_secs(5);

pub struct Commands {
    pool: PgPool,
    tenants: PostgresCqrs<Tenant>,
    users: PostgresCqrs<User>,
    accounts: PostgresCqrs<Account>,
    policies: PostgresCqrs<Policy>,
    schedules: PostgresCqrs<Schedule>,
    backups: PostgresCqrs<Backup>,
    recoveries: PostgresCqrs<Recovery>,
}

fn framework<A: Aggregate<Services = ()>>(pool: &PgPool) -> PostgresCqrs<A> {
    postgres_es::postgres_cqrs(pool.clone(), vec![], ())
}

fn store<A: Aggregate>(pool: &PgPool) -> PersistedEventStore<PostgresEventRepository, A> {
    PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone()))
}

impl Commands {
    pub fn new(pool: PgPool) -> Self {
        Self {
            tenants: framework(&pool),
            users: framework(&pool),
            accounts: framework(&pool),
            policies: framework(&pool),
            schedules: framework(&pool),
            backups: framework(&pool),
            recoveries: framework(&pool),
            pool,
        }
    }

    async fn run<A: Aggregate<Error = DomainError>>(
        &self,
        cqrs: &PostgresCqrs<A>,
        stream: String,
        command: A::Command,
        meta: &CommandMetadata,
    ) -> Result<(), ApiError>
    where
        A::Command: Clone,
    {
        let mut attempt = 0;
        loop {
            match cqrs
                .execute_with_metadata(&stream, command.clone(), meta.to_map())
                .await
            {
                Err(AggregateError::AggregateConflict) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
                Ok(()) => break,
            }
        }
        safehold_projections::runtime::notify_committed(&self.pool).await;
        let caught_up = safehold_projections::runtime::wait_for_stream(
            &self.pool,
            A::TYPE,
            &stream,
            READ_MODEL_WAIT,
        )
        .await?;
        if !caught_up {
            tracing::warn!(stream, "read models did not catch up in time");
        }
        Ok(())
    }

    pub async fn tenant(
        &self,
        meta: &CommandMetadata,
        command: TenantCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, meta.tenant_id.0);
        self.run(&self.tenants, stream, command, meta).await
    }

    pub async fn user(
        &self,
        meta: &CommandMetadata,
        user: UserId,
        command: UserCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, user.0);
        self.run(&self.users, stream, command, meta).await
    }

    pub async fn account(
        &self,
        meta: &CommandMetadata,
        account: uuid::Uuid,
        command: AccountCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, account);
        self.run(&self.accounts, stream, command, meta).await
    }

    pub async fn policy(
        &self,
        meta: &CommandMetadata,
        policy: uuid::Uuid,
        command: PolicyCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, policy);
        self.run(&self.policies, stream, command, meta).await
    }

    pub async fn schedule(
        &self,
        meta: &CommandMetadata,
        schedule: uuid::Uuid,
        command: ScheduleCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, schedule);
        self.run(&self.schedules, stream, command, meta).await
    }

    pub async fn backup(
        &self,
        meta: &CommandMetadata,
        backup: uuid::Uuid,
        command: BackupCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, backup);
        self.run(&self.backups, stream, command, meta).await
    }

    pub async fn recovery(
        &self,
        meta: &CommandMetadata,
        recovery: uuid::Uuid,
        command: RecoveryCommand,
    ) -> Result<(), ApiError> {
        let stream = stream_id(meta.tenant_id, recovery);
        self.run(&self.recoveries, stream, command, meta).await
    }

    /// The current state of a backup, from the event log.
    pub async fn load_backup(
        &self,
        tenant: TenantId,
        backup: uuid::Uuid,
    ) -> Result<Option<BackupState>, ApiError> {
        let context = store::<Backup>(&self.pool)
            .load_aggregate(&stream_id(tenant, backup))
            .await
            .map_err(ApiError::internal)?;
        Ok(context.aggregate.state)
    }

    /// The current state of a live policy, from the event log.
    pub async fn load_policy(
        &self,
        tenant: TenantId,
        policy: uuid::Uuid,
    ) -> Result<Option<PolicyState>, ApiError> {
        let context = store::<Policy>(&self.pool)
            .load_aggregate(&stream_id(tenant, policy))
            .await
            .map_err(ApiError::internal)?;
        Ok(context.aggregate.state.filter(|s| !s.removed))
    }

    /// The current state of a tenant, from the event log.
    pub async fn load_tenant(&self, tenant: TenantId) -> Result<Option<TenantState>, ApiError> {
        let context = store::<Tenant>(&self.pool)
            .load_aggregate(&stream_id(tenant, tenant.0))
            .await
            .map_err(ApiError::internal)?;
        Ok(context.aggregate.created)
    }

    /// The current state of a live (not deleted) user, from the event log.
    pub async fn load_user(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<Option<UserState>, ApiError> {
        let context = store::<User>(&self.pool)
            .load_aggregate(&stream_id(tenant, user.0))
            .await
            .map_err(ApiError::internal)?;
        Ok(context.aggregate.state.filter(|s| !s.deleted))
    }
}
