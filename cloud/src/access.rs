//! Reaching an AWS account: static keys, the server's own credentials, or a
//! role assumed with another account's credentials (chains allowed). Every
//! configuration carries the retry, timeout and endpoint discipline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::secrets::Secret;

/// How to obtain credentials, with secrets already decrypted.
#[derive(Clone, Debug)]
pub enum AccessSpec {
    Keys {
        access_key_id: String,
        secret_access_key: Secret,
    },
    ServerCredentials,
    AssumeRole {
        source: Box<AccessSpec>,
        role_arn: String,
        external_id: Option<String>,
    },
}

/// The role ARN of `role_name` in account `number`.
pub fn role_arn(number: &str, role_name: &str) -> String {
    format!("arn:aws:iam::{number}:role/{role_name}")
}

/// Where AWS is: the real endpoints, or one override (the emulator).
#[derive(Clone, Debug, Default)]
pub struct Endpoint(pub Option<String>);

fn retry_config() -> RetryConfig {
    // Adaptive mode slows the client down when AWS throttles instead of
    // hammering it; jittered exponential backoff between attempts.
    RetryConfig::adaptive()
        .with_max_attempts(10)
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(10))
}

fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(120))
        .build()
}

/// Builds the SDK configuration for one account in one region.
pub fn sdk_config<'a>(
    endpoint: &'a Endpoint,
    access: &'a AccessSpec,
    region: &'a str,
) -> futures::future::BoxFuture<'a, SdkConfig> {
    Box::pin(async move {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .retry_config(retry_config())
            .timeout_config(timeout_config());
        if let Some(url) = &endpoint.0 {
            loader = loader.endpoint_url(url);
        }
        loader = match access {
            AccessSpec::Keys {
                access_key_id,
                secret_access_key,
            } => loader.credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key.expose(),
                None,
                None,
                "safehold-account-keys",
            )),
            AccessSpec::ServerCredentials => loader,
            AccessSpec::AssumeRole {
                source,
                role_arn,
                external_id,
            } => {
                let source_config = sdk_config(endpoint, source, region).await;
                let mut role = AssumeRoleProvider::builder(role_arn.clone())
                    .session_name("safehold")
                    .configure(&source_config);
                if let Some(id) = external_id {
                    role = role.external_id(id.clone());
                }
                loader.credentials_provider(SharedCredentialsProvider::new(role.build().await))
            }
        };
        loader.load().await
    })
}

/// One SDK configuration per (account, region), reused: clients built from it
/// share its HTTP connections and its credential cache (temporary credentials
/// are refreshed before they expire).
#[derive(Clone, Default)]
pub struct ConfigCache {
    configs: Arc<Mutex<HashMap<(Uuid, String), SdkConfig>>>,
}

impl ConfigCache {
    pub async fn get_or_build(
        &self,
        account: Uuid,
        region: &str,
        build: impl std::future::Future<Output = anyhow::Result<SdkConfig>>,
    ) -> anyhow::Result<SdkConfig> {
        let key = (account, region.to_string());
        if let Some(config) = self.configs.lock().await.get(&key) {
            return Ok(config.clone());
        }
        let config = build.await?;
        self.configs.lock().await.insert(key, config.clone());
        Ok(config)
    }

    /// Forgets an account (its keys or role changed), and every account
    /// whose configuration may have been built through it.
    pub async fn forget_all(&self) {
        self.configs.lock().await.clear();
    }
}

/// Who the credentials are, according to STS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub account: String,
    pub arn: String,
}

/// An AWS error, reduced to what a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CloudError {
    pub code: String,
    pub message: String,
}

impl CloudError {
    /// Throttling, server-side failures and unreachable endpoints: worth
    /// trying again later, unlike refusals.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code.as_str(),
            "RequestLimitExceeded"
                | "Throttling"
                | "ThrottlingException"
                | "TooManyRequestsException"
                | "ProvisionedThroughputExceededException"
                | "InternalError"
                | "InternalFailure"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "Unavailable"
                | "Unreachable"
        )
    }

    pub fn from_sdk<E, R>(error: aws_sdk_sts::error::SdkError<E, R>) -> Self
    where
        E: aws_sdk_sts::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        use aws_sdk_sts::error::SdkError;
        match &error {
            SdkError::ServiceError(e) => Self {
                code: e.err().code().unwrap_or("Unknown").to_string(),
                message: e.err().message().unwrap_or("no message").to_string(),
            },
            other => Self {
                code: "Unreachable".into(),
                message: aws_sdk_sts::error::DisplayErrorContext(other).to_string(),
            },
        }
    }
}

/// STS GetCallerIdentity with the given configuration.
pub async fn caller_identity(config: &SdkConfig) -> Result<Identity, CloudError> {
    let out = aws_sdk_sts::Client::new(config)
        .get_caller_identity()
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(Identity {
        account: out.account().unwrap_or_default().to_string(),
        arn: out.arn().unwrap_or_default().to_string(),
    })
}
