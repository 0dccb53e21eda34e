//! What Safehold may do in an account, asked of AWS without changing
//! anything: EC2 calls with `DryRun` (AWS answers `DryRunOperation` when the
//! call would be allowed, `UnauthorizedOperation` when not), read-only calls
//! where a service has no dry run.

use aws_config::SdkConfig;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allowed,
    Denied,
    /// AWS answered something else (unreachable, throttled…): not known.
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `backup`, `dr_copy` or `recovery`.
    pub capability: &'static str,
    pub action: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

/// Resource ids to dry-run against; AWS checks permissions before it would
/// look the resource up, so placeholders do when the account has none.
#[derive(Debug, Clone)]
pub struct Samples {
    pub volume_id: String,
    pub instance_id: String,
    pub snapshot_id: String,
    pub availability_zone: String,
}

fn judge<E, R>(result: Result<impl Sized, aws_sdk_ec2::error::SdkError<E, R>>) -> (Outcome, String)
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        // A dry run never succeeds; success means the flag was ignored.
        Ok(_) => (Outcome::Allowed, "the call succeeded".into()),
        Err(e) => {
            let error = crate::access::CloudError::from_sdk(e);
            match error.code.as_str() {
                "DryRunOperation" => (Outcome::Allowed, "would be allowed".into()),
                "UnauthorizedOperation"
                | "AuthFailure"
                | "AccessDenied"
                | "AccessDeniedException"
                | "InvalidClientTokenId" => (Outcome::Denied, error.to_string()),
                _ => (Outcome::Unknown, error.to_string()),
            }
        }
    }
}

/// Runs every check for one region.
pub async fn check(config: &SdkConfig, samples: &Samples) -> Vec<Check> {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let rds = aws_sdk_rds::Client::new(config);
    let mut checks = Vec::new();
    let mut push = |capability, action, (outcome, detail): (Outcome, String)| {
        checks.push(Check {
            capability,
            action,
            outcome,
            detail,
        })
    };
    push(
        "backup",
        "ec2:CreateSnapshot",
        judge(
            ec2.create_snapshot()
                .volume_id(&samples.volume_id)
                .dry_run(true)
                .send()
                .await,
        ),
    );
    push(
        "backup",
        "ec2:CreateImage",
        judge(
            ec2.create_image()
                .instance_id(&samples.instance_id)
                .name("safehold-permission-check")
                .dry_run(true)
                .send()
                .await,
        ),
    );
    let rds_read = match rds.describe_db_snapshots().max_records(20).send().await {
        Ok(_) => (Outcome::Allowed, "read access confirmed".into()),
        Err(e) => {
            let error = crate::access::CloudError::from_sdk(e);
            let outcome =
                if error.code.starts_with("AccessDenied") || error.code == "InvalidClientTokenId" {
                    Outcome::Denied
                } else {
                    Outcome::Unknown
                };
            (outcome, error.to_string())
        }
    };
    push("backup", "rds:DescribeDBSnapshots", rds_read);
    push(
        "dr_copy",
        "ec2:CopySnapshot",
        judge(
            ec2.copy_snapshot()
                .source_snapshot_id(&samples.snapshot_id)
                .source_region(config.region().map(|r| r.to_string()).unwrap_or_default())
                .dry_run(true)
                .send()
                .await,
        ),
    );
    push(
        "dr_copy",
        "ec2:ModifySnapshotAttribute",
        judge(
            ec2.modify_snapshot_attribute()
                .snapshot_id(&samples.snapshot_id)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .dry_run(true)
                .send()
                .await,
        ),
    );
    push(
        "recovery",
        "ec2:CreateVolume",
        judge(
            ec2.create_volume()
                .availability_zone(&samples.availability_zone)
                .size(1)
                .dry_run(true)
                .send()
                .await,
        ),
    );
    push(
        "recovery",
        "ec2:StartInstances",
        judge(
            ec2.start_instances()
                .instance_ids(&samples.instance_id)
                .dry_run(true)
                .send()
                .await,
        ),
    );
    checks
}
