//! Read model of organisations.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use safehold_domain::tenant::{Tenant, TenantEvent};
use sqlx::PgConnection;

use crate::runtime::{Projection, StoredEvent};

pub struct TenantsProjection;

#[async_trait]
impl Projection for TenantsProjection {
    fn name(&self) -> &'static str {
        "tenants"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tenants"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if event.aggregate_type != Tenant::TYPE {
            return Ok(());
        }
        let tenant_id = event.metadata.tenant_id.0;
        match event.decode::<TenantEvent>()? {
            TenantEvent::TenantCreated {
                slug,
                name,
                root_user_id,
                settings,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO tenants (tenant_id, slug, name, root_user_id, time_zone,
                            audit_retention_days, session_idle_minutes, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(tenant_id)
                .bind(slug)
                .bind(name)
                .bind(root_user_id.0)
                .bind(settings.time_zone)
                .bind(settings.audit_retention_days as i32)
                .bind(settings.session_idle_minutes as i32)
                .bind(event.metadata.occurred_at)
                .execute(&mut *tx)
                .await?;
            }
            TenantEvent::SettingsUpdated { settings } => {
                sqlx::query(
                    "UPDATE tenants SET time_zone = $2, audit_retention_days = $3,
                            session_idle_minutes = $4
                      WHERE tenant_id = $1",
                )
                .bind(tenant_id)
                .bind(settings.time_zone)
                .bind(settings.audit_retention_days as i32)
                .bind(settings.session_idle_minutes as i32)
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(())
    }
}
