//! Read model of users and their API keys, and the queries the API runs on it.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use safehold_domain::access::{DelegatePermissions, PrincipalKind, UserKind};
use safehold_domain::user::{ResourceLimits, User, UserEvent};
use safehold_domain::{TenantId, UserId};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::runtime::{Projection, StoredEvent};

pub struct UsersProjection;

fn kind_columns(kind: &UserKind) -> (&'static str, Option<Uuid>, Option<Uuid>, [bool; 3]) {
    match kind {
        UserKind::Root => ("root", None, None, [false; 3]),
        UserKind::Independent => ("independent", None, None, [false; 3]),
        UserKind::Managed { manager_id } => ("managed", manager_id.map(|m| m.0), None, [false; 3]),
        UserKind::Delegate { of, permissions: p } => (
            "delegate",
            None,
            Some(of.0),
            [
                p.allow_recovery,
                p.allow_account_changes,
                p.allow_backup_changes,
            ],
        ),
    }
}

fn limit(v: Option<u32>) -> Option<i32> {
    v.map(|v| v as i32)
}

#[async_trait]
impl Projection for UsersProjection {
    fn name(&self) -> &'static str {
        "users"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users", "api_keys"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()> {
        self.apply_batch(tx, std::slice::from_ref(event)).await
    }

    /// Permission changes, the users' frequent event, are gathered and
    /// written with one statement; any other change first writes those
    /// gathered so far, so rows see every change in log order.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        let mut permissions = PermissionChanges::default();
        for event in events.iter().filter(|e| e.aggregate_type == User::TYPE) {
            let tenant = event.metadata.tenant_id.0;
            let user = event
                .entity_id()
                .ok_or_else(|| anyhow::anyhow!("bad user stream id {}", event.aggregate_id))?;
            let at = event.metadata.occurred_at;
            let decoded = event.decode::<UserEvent>().map_err(|e| {
                e.context(format!("event {} ({})", event.position, event.event_type))
            })?;
            match decoded {
                UserEvent::DelegatePermissionsChanged { permissions: p } => {
                    permissions.0.insert((tenant, user), (p, at));
                }
                other => {
                    permissions.write(tx).await?;
                    apply_user_event(tx, tenant, user, at, other).await?;
                }
            }
        }
        permissions.write(tx).await
    }
}

/// The latest permissions of each delegate, not yet written.
#[derive(Default)]
struct PermissionChanges(HashMap<(Uuid, Uuid), (DelegatePermissions, DateTime<Utc>)>);

impl PermissionChanges {
    async fn write(&mut self, tx: &mut PgConnection) -> anyhow::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let n = self.0.len();
        let (mut tenants, mut users, mut at) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut recovery, mut account_changes, mut backup_changes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((tenant, user), (p, changed_at)) in self.0.drain() {
            tenants.push(tenant);
            users.push(user);
            recovery.push(p.allow_recovery);
            account_changes.push(p.allow_account_changes);
            backup_changes.push(p.allow_backup_changes);
            at.push(changed_at);
        }
        sqlx::query(
            "UPDATE users u SET allow_recovery = c.allow_recovery,
                    allow_account_changes = c.allow_account_changes,
                    allow_backup_changes = c.allow_backup_changes, updated_at = c.at
               FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::bool[], $5::bool[],
                           $6::timestamptz[])
                    AS c (tenant_id, user_id, allow_recovery, allow_account_changes,
                          allow_backup_changes, at)
              WHERE u.tenant_id = c.tenant_id AND u.user_id = c.user_id",
        )
        .bind(tenants)
        .bind(users)
        .bind(recovery)
        .bind(account_changes)
        .bind(backup_changes)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

async fn apply_user_event(
    tx: &mut PgConnection,
    tenant: Uuid,
    user: Uuid,
    at: DateTime<Utc>,
    event: UserEvent,
) -> anyhow::Result<()> {
    match event {
        UserEvent::UserCreated {
            username,
            email,
            kind,
            limits,
            ..
        } => {
            let (kind, manager, delegate_of, perms) = kind_columns(&kind);
            sqlx::query(
                    "INSERT INTO users (tenant_id, user_id, username, email, kind, manager_id, delegate_of,
                            allow_recovery, allow_account_changes, allow_backup_changes,
                            max_accounts, max_instances, max_non_instance_ebs_gib, max_rds_gib,
                            max_redshift_gib, max_dynamodb_gib, created_at, updated_at)
                     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$17)",
                )
                .bind(tenant)
                .bind(user)
                .bind(username)
                .bind(email)
                .bind(kind)
                .bind(manager)
                .bind(delegate_of)
                .bind(perms[0])
                .bind(perms[1])
                .bind(perms[2])
                .bind(limit(limits.max_accounts))
                .bind(limit(limits.max_instances))
                .bind(limit(limits.max_non_instance_ebs_gib))
                .bind(limit(limits.max_rds_gib))
                .bind(limit(limits.max_redshift_gib))
                .bind(limit(limits.max_dynamodb_gib))
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        UserEvent::UserUpdated {
            email,
            limits,
            kind,
        } => {
            let (kind, manager, _, _) = kind_columns(&kind);
            sqlx::query(
                "UPDATE users SET email = $3, kind = $4, manager_id = $5,
                            max_accounts = $6, max_instances = $7, max_non_instance_ebs_gib = $8,
                            max_rds_gib = $9, max_redshift_gib = $10, max_dynamodb_gib = $11,
                            updated_at = $12
                      WHERE tenant_id = $1 AND user_id = $2",
            )
            .bind(tenant)
            .bind(user)
            .bind(email)
            .bind(kind)
            .bind(manager)
            .bind(limit(limits.max_accounts))
            .bind(limit(limits.max_instances))
            .bind(limit(limits.max_non_instance_ebs_gib))
            .bind(limit(limits.max_rds_gib))
            .bind(limit(limits.max_redshift_gib))
            .bind(limit(limits.max_dynamodb_gib))
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        UserEvent::ApiKeyCreated {
            key_id,
            name,
            prefix,
        } => {
            sqlx::query(
                "INSERT INTO api_keys (tenant_id, key_id, user_id, name, prefix, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant)
            .bind(key_id)
            .bind(user)
            .bind(name)
            .bind(prefix)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        UserEvent::ApiKeyRevoked { key_id } => {
            sqlx::query("UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND key_id = $2")
                .bind(tenant)
                .bind(key_id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        UserEvent::UserDeleted => {
            sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM api_keys WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        UserEvent::DelegatePermissionsChanged { .. }
        | UserEvent::PasswordChanged { .. }
        | UserEvent::SignedIn { .. }
        | UserEvent::SignedOut { .. } => {}
    }
    Ok(())
}

/// A row of the users read model.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub kind: String,
    pub manager_id: Option<Uuid>,
    pub delegate_of: Option<Uuid>,
    pub allow_recovery: bool,
    pub allow_account_changes: bool,
    pub allow_backup_changes: bool,
    pub max_accounts: Option<i32>,
    pub max_instances: Option<i32>,
    pub max_non_instance_ebs_gib: Option<i32>,
    pub max_rds_gib: Option<i32>,
    pub max_redshift_gib: Option<i32>,
    pub max_dynamodb_gib: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserRow {
    pub fn limits(&self) -> ResourceLimits {
        let l = |v: Option<i32>| v.map(|v| v as u32);
        ResourceLimits {
            max_accounts: l(self.max_accounts),
            max_instances: l(self.max_instances),
            max_non_instance_ebs_gib: l(self.max_non_instance_ebs_gib),
            max_rds_gib: l(self.max_rds_gib),
            max_redshift_gib: l(self.max_redshift_gib),
            max_dynamodb_gib: l(self.max_dynamodb_gib),
        }
    }

    pub fn principal_kind(&self) -> Option<PrincipalKind> {
        match self.kind.as_str() {
            "root" => Some(PrincipalKind::Root),
            "independent" => Some(PrincipalKind::Independent),
            "managed" => Some(PrincipalKind::Managed {
                manager_id: self.manager_id.map(UserId),
            }),
            _ => None,
        }
    }
}

pub async fn find_user(
    pool: &PgPool,
    tenant: TenantId,
    user: UserId,
) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as("SELECT * FROM users WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant.0)
        .bind(user.0)
        .fetch_optional(pool)
        .await
}

/// Users ordered by username, after `after` (exclusive), at most `limit`.
pub async fn list_users(
    pool: &PgPool,
    tenant: TenantId,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<UserRow>> {
    sqlx::query_as(
        "SELECT * FROM users WHERE tenant_id = $1 AND ($2::text IS NULL OR lower(username) > $2)
          ORDER BY lower(username) LIMIT $3",
    )
    .bind(tenant.0)
    .bind(after.map(str::to_lowercase))
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub key_id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn list_api_keys(
    pool: &PgPool,
    tenant: TenantId,
    user: UserId,
) -> sqlx::Result<Vec<ApiKeyRow>> {
    sqlx::query_as(
        "SELECT key_id, user_id, name, prefix, created_at, revoked_at FROM api_keys
          WHERE tenant_id = $1 AND user_id = $2 ORDER BY created_at, key_id",
    )
    .bind(tenant.0)
    .bind(user.0)
    .fetch_all(pool)
    .await
}
