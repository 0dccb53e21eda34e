//! From a registered account to SDK configurations: decrypts its secret, and
//! for assume-role accounts resolves the account they go through (chains of
//! at most five hops, never a cycle).

use aws_config::SdkConfig;
use safehold_domain::TenantId;
use safehold_projections::accounts::{self as read, AccountRow};
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::{role_arn, sdk_config, AccessSpec, ConfigCache, Endpoint};
use crate::secrets::{self, Keyring, Secret};

const MAX_CHAIN: usize = 5;

/// Everything needed to reach customer accounts.
#[derive(Clone)]
pub struct Cloud {
    pub pool: PgPool,
    pub endpoint: Endpoint,
    pub keyring: Keyring,
    pub configs: ConfigCache,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("account {0} is not registered")]
    UnknownAccount(Uuid),
    #[error("the assume-role chain is longer than {MAX_CHAIN} accounts or loops")]
    ChainTooLong,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Cloud {
    pub fn new(pool: PgPool, endpoint: Endpoint, keyring: Keyring) -> Self {
        Self {
            pool,
            endpoint,
            keyring,
            configs: ConfigCache::default(),
        }
    }

    /// The access spec of a registered account.
    pub async fn access_of(
        &self,
        tenant: TenantId,
        account: &AccountRow,
    ) -> Result<AccessSpec, ResolveError> {
        let mut chain = vec![account.clone()];
        while let Some(via) = chain.last().and_then(|a| a.via_account) {
            if chain.len() > MAX_CHAIN || chain.iter().any(|a| a.account_id == via) {
                return Err(ResolveError::ChainTooLong);
            }
            let next = read::find(&self.pool, tenant, via)
                .await
                .map_err(anyhow::Error::from)?
                .ok_or(ResolveError::UnknownAccount(via))?;
            chain.push(next);
        }
        // The last account of the chain holds real credentials.
        let base = chain.pop().expect("the chain holds the account itself");
        let mut spec = self.base_access(tenant, &base).await?;
        while let Some(account) = chain.pop() {
            spec = AccessSpec::AssumeRole {
                source: Box::new(spec),
                role_arn: role_arn(
                    &account.number,
                    account.role_name.as_deref().unwrap_or_default(),
                ),
                external_id: account.external_id.clone(),
            };
        }
        Ok(spec)
    }

    async fn base_access(
        &self,
        tenant: TenantId,
        account: &AccountRow,
    ) -> Result<AccessSpec, ResolveError> {
        match account.access_method.as_str() {
            "access_keys" => {
                let secret_id = account.secret_id.ok_or_else(|| {
                    anyhow::anyhow!("account {} has no secret", account.account_id)
                })?;
                Ok(AccessSpec::Keys {
                    access_key_id: account.access_key_id.clone().unwrap_or_default(),
                    secret_access_key: secrets::load(
                        &self.pool,
                        &self.keyring,
                        tenant.0,
                        secret_id,
                    )
                    .await?,
                })
            }
            _ => Ok(AccessSpec::ServerCredentials),
        }
    }

    /// The (cached) SDK configuration for an account in a region.
    pub async fn config(
        &self,
        tenant: TenantId,
        account: &AccountRow,
        region: &str,
    ) -> Result<SdkConfig, ResolveError> {
        let build = async {
            let spec = self
                .access_of(tenant, account)
                .await
                .map_err(anyhow::Error::from)?;
            Ok(sdk_config(&self.endpoint, &spec, region).await)
        };
        Ok(self
            .configs
            .get_or_build(account.account_id, region, build)
            .await?)
    }

    /// Stores a secret access key, encrypted, and returns its id.
    pub async fn store_secret(&self, tenant: TenantId, secret: &Secret) -> anyhow::Result<Uuid> {
        secrets::store(&self.pool, &self.keyring, tenant.0, secret).await
    }
}
