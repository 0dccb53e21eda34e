//! Runs commands on aggregates from background work (the scheduler, backup
//! steps), retrying optimistic-concurrency conflicts.

use cqrs_es::{Aggregate, AggregateError};
use safehold_domain::ids::stream_id;
use safehold_domain::{CommandMetadata, DomainError, TenantId};
use sqlx::PgPool;
use uuid::Uuid;

const CONFLICT_RETRIES: usize = 5;

/// Metadata of a command Safehold issues itself (no acting user).
pub fn system_metadata(tenant: TenantId, source: &str) -> CommandMetadata {
    CommandMetadata {
        tenant_id: tenant,
        user_id: None,
        delegate_id: None,
        request_id: source.to_string(),
        occurred_at: chrono::Utc::now(),
    }
}

/// Executes `command` on the aggregate `entity` of the metadata's tenant.
pub async fn execute<A>(
    pool: &PgPool,
    meta: &CommandMetadata,
    entity: Uuid,
    command: A::Command,
) -> Result<(), AggregateError<DomainError>>
where
    A: Aggregate<Error = DomainError, Services = ()>,
    A::Command: Clone,
{
    let cqrs = postgres_es::postgres_cqrs::<A>(pool.clone(), vec![], ());
    let stream = stream_id(meta.tenant_id, entity);
    let mut attempt = 0;
    loop {
        match cqrs
            .execute_with_metadata(&stream, command.clone(), meta.to_map())
            .await
        {
            Err(AggregateError::AggregateConflict) if attempt < CONFLICT_RETRIES => attempt += 1,
            other => return other,
        }
    }
}
