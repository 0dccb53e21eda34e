//! Disaster-recovery helpers: a vault account reached by assume-role, DR
//! workers in this process, and waiting for a backup's DR outcome.

use std::time::Duration;

use reqwest::StatusCode;
use safehold_cloud::access::{role_arn, sdk_config, AccessSpec, Endpoint};
use safehold_cloud::secrets::Secret;
use safehold_cloud::SdkConfig;
use safehold_jobs::dr::{DrContext, DrWorkerSettings};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::estate::Estate;

pub const WEST: &str = "eu-west-1";
pub const VAULT: &str = "210987654321";

pub fn production_keys() -> AccessSpec {
    AccessSpec::Keys {
        access_key_id: "AKIAEMULATORKEY00001".into(),
        secret_access_key: Secret::new("s3cr3t"),
    }
}

pub fn vault_role() -> AccessSpec {
    AccessSpec::AssumeRole {
        source: Box::new(production_keys()),
        role_arn: role_arn(VAULT, "SafeholdVault"),
        external_id: None,
    }
}

pub async fn config(x: &Estate, spec: &AccessSpec, region: &str) -> SdkConfig {
    sdk_config(&Endpoint(Some(x.emulator.endpoint.clone())), spec, region).await
}

/// Starts the DR workers (polling quickly, with the given copy limit).
pub fn dr_workers(x: &Estate, copy_limit: i64) -> watch::Sender<bool> {
    let (stop, stop_rx) = watch::channel(false);
    let ctx = DrContext {
        cloud: x.s.state.cloud.clone(),
        settings: DrWorkerSettings {
            poll_every: Duration::from_millis(300),
            copy_limit,
            ..DrWorkerSettings::default()
        },
    };
    tokio::spawn(safehold_jobs::dr::run_workers(ctx, stop_rx));
    stop
}

/// Waits until the backup's disaster recovery has an outcome.
pub async fn dr_outcome(x: &Estate, backup: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, view) = x.s.get(&format!("/v1/backups/{backup}"), &x.root).await;
        if matches!(
            view["dr_status"].as_str(),
            Some("completed" | "failed" | "skipped")
        ) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "DR of {backup} did not finish: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn register_vault(x: &Estate, allow_delete: bool) -> String {
    let (status, vault) = x
        .s
        .post(
            "/v1/accounts",
            Some(&x.root),
            json!({"name": "vault", "number": VAULT, "type": "vault", "allow_delete": allow_delete,
                   "access": {"method": "assume_role", "via_account_id": x.account, "role_name": "SafeholdVault"},
                   "scan": {"enabled": false, "regions": [WEST]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vault}");
    vault["id"].as_str().unwrap().to_string()
}
