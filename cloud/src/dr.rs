//! The AWS side of disaster recovery: copying a backup's EBS snapshots, AMIs,
//! RDS and Aurora snapshots into another region (of the same account, or of
//! a vault account the snapshot is shared with), and finding, sharing and
//! deleting those copies.
//!
//! A copy carries the original's tags (Safehold's included, so it names its
//! backup, policy and target) plus `safehold:dr-source` = the original's id.
//! Before creating one, the destination is searched for it (EBS snapshots by
//! tags; AMIs, RDS and Aurora snapshots by a name derived from the backup and
//! the original), so a repeated step never makes a second copy.
//!
//! An encrypted EBS, RDS or Aurora original is copied with the key that has
//! the same alias in the destination (the account making the copy, in the
//! target region); see [`copy_key`] and [`key_rule`] for the cases.

use std::collections::{BTreeMap, BTreeSet};

use aws_config::SdkConfig;
use uuid::Uuid;

use crate::access::CloudError;
use crate::backup::{
    ebs_state, ec2_filter, ec2_tag_map, ec2_tag_spec, error, find_db_cluster_snapshot,
    find_db_snapshot, image_snapshot_ids, image_state, own_images, rds_tag_map, rds_tags,
    snapshot_status, truncate, ArtifactKind, ArtifactState, TAG_BACKUP, TAG_EXPIRED_AT,
};

pub const TAG_DR_SOURCE: &str = "safehold:dr-source";

const MAX_TAGS: usize = 50;
const MAX_DESCRIPTION: usize = 255;
const MAX_AMI_NAME: usize = 128;
const MAX_SNAPSHOT_IDENTIFIER: usize = 63;

/// One copy to make: `original_id` of `kind`, in `source_region` of the
/// backup's account, made by backup `backup_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOrder {
    pub kind: ArtifactKind,
    pub original_id: String,
    pub source_region: String,
    pub backup_id: Uuid,
}

impl CopyOrder {
    /// The copy's name (AMIs) or identifier (RDS, Aurora): the same on every
    /// attempt, distinct per backup, source region and original.
    pub fn copy_name(&self) -> String {
        let digest = Uuid::new_v5(
            &self.backup_id,
            format!("dr:{}:{}", self.source_region, self.original_id).as_bytes(),
        )
        .simple()
        .to_string();
        let (max, original) = match self.kind {
            ArtifactKind::Ami => (MAX_AMI_NAME, self.original_id.clone()),
            _ => (
                MAX_SNAPSHOT_IDENTIFIER,
                self.original_id
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_lowercase()
                        } else {
                            '-'
                        }
                    })
                    .collect(),
            ),
        };
        let mut name = format!("safehold-dr-{}-{original}", &digest[..12]);
        name = truncate(&name, max);
        while name.contains("--") {
            name = name.replace("--", "-");
        }
        while name.ends_with('-') {
            name.pop();
        }
        name
    }

    /// The original's tags (except AWS's and an expiry marker), then the
    /// source marker, within the per-resource limit.
    fn copy_tags(&self, original: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut tags: Vec<(String, String)> = original
            .iter()
            .filter(|(k, _)| {
                let lower = k.to_ascii_lowercase();
                !lower.starts_with("aws:") && *k != TAG_EXPIRED_AT && *k != TAG_DR_SOURCE
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .take(MAX_TAGS - 1)
            .collect();
        tags.push((TAG_DR_SOURCE.to_string(), self.original_id.clone()));
        if !tags.iter().any(|(k, _)| k == TAG_BACKUP) {
            tags.pop();
            tags.truncate(MAX_TAGS - 2);
            tags.push((TAG_BACKUP.to_string(), self.backup_id.to_string()));
            tags.push((TAG_DR_SOURCE.to_string(), self.original_id.clone()));
        }
        tags
    }

    fn description(&self, original: Option<&str>) -> String {
        truncate(
            &format!(
                "Safehold disaster-recovery copy of {} ({}){}",
                self.original_id,
                self.source_region,
                original.map(|d| format!(": {d}")).unwrap_or_default()
            ),
            MAX_DESCRIPTION,
        )
    }
}

/// A copy as AWS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub id: String,
    pub state: ArtifactState,
}

/// How a copy is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyKey {
    /// As AWS copies it by default: an unencrypted original.
    AsOriginal,
    /// With the destination's default key of the service (`alias/aws/ebs`,
    /// `alias/aws/rds`).
    DestinationDefault,
    /// With this key (its ARN) of the destination.
    Key(String),
}

/// What the copy of an encrypted original needs in the destination, by
/// the aliases of the original's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRule {
    /// An AWS-managed key copied within its account: the destination's
    /// default key (what AWS does).
    DestinationDefault,
    /// A key with the first of these aliases in the destination.
    SameAlias(Vec<String>),
}

const AWS_MANAGED_ALIAS: &str = "alias/aws/";

/// The rules for an original encrypted with `key` (known by
/// `key_aliases`), copied within its account or into another
/// (`same_account`). `destination` names the target region and account in
/// refusals. An AWS-managed key (`alias/aws/...`) cannot be shared with
/// another account; a customer key without an alias has no counterpart to
/// find.
pub fn key_rule(
    key: &str,
    key_aliases: &[String],
    same_account: bool,
    destination: &str,
) -> Result<KeyRule, CloudError> {
    if let Some(managed) = key_aliases
        .iter()
        .find(|a| a.starts_with(AWS_MANAGED_ALIAS))
    {
        return if same_account {
            Ok(KeyRule::DestinationDefault)
        } else {
            Err(error(
                "KmsKeyNotShareable",
                format!(
                    "the original is encrypted with the AWS-managed key {managed}, \
                     which cannot be shared with another account, so it cannot be \
                     copied into {destination}; use a customer-managed key with an alias"
                ),
            ))
        };
    }
    let customer: Vec<String> = key_aliases
        .iter()
        .filter(|a| a.starts_with("alias/"))
        .cloned()
        .collect();
    if customer.is_empty() {
        return Err(error(
            "KmsKeyNotFound",
            format!(
                "the original's KMS key {key} has no alias, so no key for the copy \
                 can be found in {destination}"
            ),
        ));
    }
    Ok(KeyRule::SameAlias(customer))
}

/// The destination key for `rule`, from the destination's aliases (alias
/// name to key ARN).
pub fn pick_key(
    rule: &KeyRule,
    destination_aliases: &BTreeMap<String, String>,
    destination: &str,
) -> Result<CopyKey, CloudError> {
    match rule {
        KeyRule::DestinationDefault => Ok(CopyKey::DestinationDefault),
        KeyRule::SameAlias(aliases) => aliases
            .iter()
            .find_map(|a| destination_aliases.get(a))
            .map(|arn| CopyKey::Key(arn.clone()))
            .ok_or_else(|| {
                error(
                    "KmsKeyNotFound",
                    format!(
                        "no KMS key with alias {} in {destination}",
                        aliases.join(" or ")
                    ),
                )
            }),
    }
}

/// The aliases (`alias/...`) of `key` in the region of `config`, each with
/// the ARN of the key it names. With `key`, only that key's aliases.
async fn kms_aliases(
    config: &SdkConfig,
    key: Option<&str>,
) -> Result<BTreeMap<String, String>, CloudError> {
    let client = aws_sdk_kms::Client::new(config);
    let mut aliases = BTreeMap::new();
    let mut marker: Option<String> = None;
    loop {
        let out = client
            .list_aliases()
            .set_key_id(key.map(str::to_string))
            .set_marker(marker.clone())
            .send()
            .await
            .map_err(CloudError::from_sdk)?;
        for alias in out.aliases() {
            let (Some(name), Some(target)) = (alias.alias_name(), alias.target_key_id()) else {
                continue;
            };
            let arn = match alias.alias_arn().and_then(|a| a.split_once(":alias/")) {
                Some((prefix, _)) if !target.starts_with("arn:") => {
                    format!("{prefix}:key/{target}")
                }
                _ => target.to_string(),
            };
            aliases.insert(name.to_string(), arn);
        }
        marker = out.next_marker().map(str::to_string);
        if !out.truncated() || marker.is_none() {
            return Ok(aliases);
        }
    }
}

/// The KMS key an original is encrypted with, `None` when it is not
/// encrypted (or is an AMI, copied as AWS copies it).
async fn original_key(source: &SdkConfig, order: &CopyOrder) -> Result<Option<String>, CloudError> {
    let unknown = || {
        error(
            "KmsKeyUnknown",
            format!(
                "{} is encrypted, but AWS does not say with which KMS key",
                order.original_id
            ),
        )
    };
    match order.kind {
        ArtifactKind::EbsSnapshot => {
            ebs_snapshot_key(&aws_sdk_ec2::Client::new(source), &order.original_id).await
        }
        ArtifactKind::Ami => {
            let ec2 = aws_sdk_ec2::Client::new(source);
            let image = own_images(&ec2, vec![ec2_filter("image-id", &[&order.original_id])])
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    error(
                        "InvalidAMIID.NotFound",
                        format!("image {} not found", order.original_id),
                    )
                })?;
            let mut keys = BTreeSet::new();
            for snapshot in image
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs()?.snapshot_id())
            {
                keys.extend(ebs_snapshot_key(&ec2, snapshot).await?);
            }
            // CopyImage encrypts every snapshot of the copy with one key.
            if keys.len() > 1 {
                return Err(error(
                    "KmsKeyMixed",
                    format!(
                        "the snapshots of {} are encrypted with different KMS keys; a copy of an AMI takes one",
                        order.original_id
                    ),
                ));
            }
            Ok(keys.into_iter().next())
        }
        ArtifactKind::RdsSnapshot => {
            let Some(original) =
                find_db_snapshot(&aws_sdk_rds::Client::new(source), &order.original_id).await?
            else {
                return Ok(None);
            };
            if original.encrypted() != Some(true) {
                return Ok(None);
            }
            original
                .kms_key_id()
                .map(|k| Some(k.to_string()))
                .ok_or_else(unknown)
        }
        ArtifactKind::AuroraSnapshot => {
            let Some(original) =
                find_db_cluster_snapshot(&aws_sdk_rds::Client::new(source), &order.original_id)
                    .await?
            else {
                return Ok(None);
            };
            if original.storage_encrypted() != Some(true) {
                return Ok(None);
            }
            original
                .kms_key_id()
                .map(|k| Some(k.to_string()))
                .ok_or_else(unknown)
        }
        ArtifactKind::RedshiftSnapshot | ArtifactKind::DynamodbBackup => Ok(None),
    }
}

/// The KMS key of an encrypted EBS snapshot (none when unencrypted).
async fn ebs_snapshot_key(
    ec2: &aws_sdk_ec2::Client,
    snapshot_id: &str,
) -> Result<Option<String>, CloudError> {
    let unknown = || {
        error(
            "KmsKeyUnknown",
            format!("{snapshot_id} is encrypted, but AWS does not say with which KMS key"),
        )
    };
    let original = ec2
        .describe_snapshots()
        .filters(ec2_filter("snapshot-id", &[snapshot_id]))
        .send()
        .await
        .map_err(CloudError::from_sdk)?
        .snapshots()
        .first()
        .cloned()
        .ok_or_else(|| {
            error(
                "InvalidSnapshot.NotFound",
                format!("snapshot {snapshot_id} not found"),
            )
        })?;
    if original.encrypted() != Some(true) {
        return Ok(None);
    }
    if let Some(key) = original.kms_key_id() {
        return Ok(Some(key.to_string()));
    }
    // When AWS did not say, the key of the volume it was taken from.
    let volume = original.volume_id().ok_or_else(unknown)?;
    let volumes = ec2
        .describe_volumes()
        .filters(ec2_filter("volume-id", &[volume]))
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    volumes
        .volumes()
        .first()
        .and_then(|v| v.kms_key_id())
        .map(|k| Some(k.to_string()))
        .ok_or_else(unknown)
}

/// How the copy of `order` into the region of `dest` is encrypted. An
/// unencrypted original is copied as it is (an AMI is encrypted when its
/// snapshots are, all with one key). For an encrypted
/// one, the aliases of its key (in the original's account and region) are
/// looked up in the destination: a key with the same alias encrypts the
/// copy. An AWS-managed key becomes the destination's default key within
/// the account and is refused into another account. Refusals are permanent
/// errors, raised before anything is shared or copied.
pub async fn copy_key(
    source: &SdkConfig,
    dest: &SdkConfig,
    order: &CopyOrder,
) -> Result<CopyKey, CloudError> {
    let Some(key) = original_key(source, order).await? else {
        return Ok(CopyKey::AsOriginal);
    };
    let key_aliases: Vec<String> = kms_aliases(source, Some(&key)).await?.into_keys().collect();
    let dest_account = account_of(dest).await?;
    let same_account = account_of(source).await? == dest_account;
    let region = dest
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "us-east-1".into());
    let destination = format!("{region} of account {dest_account}");
    let rule = key_rule(&key, &key_aliases, same_account, &destination)?;
    let dest_aliases = match rule {
        KeyRule::DestinationDefault => BTreeMap::new(),
        KeyRule::SameAlias(_) => kms_aliases(dest, None).await?,
    };
    pick_key(&rule, &dest_aliases, &destination)
}

/// Makes (or finds, when an earlier attempt made it) the copy of `order`
/// in the region of `dest`, encrypted as [`copy_key`] decides. `source`
/// reaches the original. Across accounts the original must have been
/// shared with the destination account first ([`share`]).
pub async fn copy(
    source: &SdkConfig,
    dest: &SdkConfig,
    order: &CopyOrder,
) -> Result<Copy, CloudError> {
    let key = copy_key(source, dest, order).await?;
    copy_with_key(source, dest, order, &key).await
}

/// [`copy`] with the key found by [`copy_key`].
pub async fn copy_with_key(
    source: &SdkConfig,
    dest: &SdkConfig,
    order: &CopyOrder,
    key: &CopyKey,
) -> Result<Copy, CloudError> {
    match order.kind {
        ArtifactKind::EbsSnapshot => copy_ebs(source, dest, order, key).await,
        ArtifactKind::Ami => copy_ami(source, dest, order, key).await,
        ArtifactKind::RdsSnapshot => copy_rds(source, dest, order, key).await,
        ArtifactKind::AuroraSnapshot => copy_aurora(source, dest, order, key).await,
        ArtifactKind::RedshiftSnapshot | ArtifactKind::DynamodbBackup => Err(error(
            "CopyNotSupported",
            format!("{:?} {} cannot be copied", order.kind, order.original_id),
        )),
    }
}

/// The EBS snapshot copy of `order` made in `dest`'s region, if any.
pub async fn find_ebs_copy(
    dest: &SdkConfig,
    order: &CopyOrder,
) -> Result<Option<Copy>, CloudError> {
    let out = aws_sdk_ec2::Client::new(dest)
        .describe_snapshots()
        .owner_ids("self")
        .filters(ec2_filter(
            &format!("tag:{TAG_DR_SOURCE}"),
            &[&order.original_id],
        ))
        .filters(ec2_filter(
            &format!("tag:{TAG_BACKUP}"),
            &[order.backup_id.to_string()],
        ))
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    let mut found: Vec<_> = out.snapshots().to_vec();
    found.sort_by_key(|s| s.start_time().map(|t| (t.secs(), t.subsec_nanos())));
    Ok(found.first().map(|s| Copy {
        id: s.snapshot_id().unwrap_or_default().to_string(),
        state: ebs_state(s.state()),
    }))
}

async fn copy_ebs(
    source: &SdkConfig,
    dest: &SdkConfig,
    order: &CopyOrder,
    key: &CopyKey,
) -> Result<Copy, CloudError> {
    if let Some(found) = find_ebs_copy(dest, order).await? {
        return Ok(found);
    }
    let original = aws_sdk_ec2::Client::new(source)
        .describe_snapshots()
        .filters(ec2_filter("snapshot-id", &[&order.original_id]))
        .send()
        .await
        .map_err(CloudError::from_sdk)?
        .snapshots()
        .first()
        .cloned()
        .ok_or_else(|| {
            error(
                "InvalidSnapshot.NotFound",
                format!("snapshot {} not found", order.original_id),
            )
        })?;
    let tags = order.copy_tags(&ec2_tag_map(original.tags()));
    let (encrypted, key_id) = match key {
        CopyKey::AsOriginal => (None, None),
        CopyKey::DestinationDefault => (Some(true), None),
        CopyKey::Key(arn) => (Some(true), Some(arn.clone())),
    };
    let out = aws_sdk_ec2::Client::new(dest)
        .copy_snapshot()
        .source_region(&order.source_region)
        .source_snapshot_id(&order.original_id)
        .set_encrypted(encrypted)
        .set_kms_key_id(key_id)
        .description(order.description(original.description()))
        .tag_specifications(ec2_tag_spec(
            aws_sdk_ec2::types::ResourceType::Snapshot,
            &tags,
        ))
        .send()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(Copy {
        id: out.snapshot_id().unwrap_or_default().to_string(),
        state: ArtifactState::Pending,
    })
}

async fn copy_ami(
    source: &SdkConfig,
    dest: &SdkConfig,
    order: &CopyOrder,
    key: &CopyKey,
) -> Result<Copy, CloudError> {
    let client = aws_sdk_ec2::Client::new(dest);
    let name = order.copy_name();
    let found = own_images(&client, vec![ec2_filter("name", &[&name])]).await?;
    let image_id = match found.first() {
        Some(image) => image.image_id().unwrap_or_default().to_string(),
        None => {
            let source_client = aws_sdk_ec2::Client::new(source);
            let original = own_images(
                &source_client,
                vec![ec2_filter("image-id", &[&order.original_id])],
            )
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                error(
                    "InvalidAMIID.NotFound",
                    format!("image {} not found", order.original_id),
                )
            })?;
            let (encrypted, key_id) = match key {
                CopyKey::AsOriginal => (None, None),
                CopyKey::DestinationDefault => (Some(true), None),
                CopyKey::Key(arn) => (Some(true), Some(arn.clone())),
            };
            let out = client
                .copy_image()
                .source_region(&order.source_region)
                .source_image_id(&order.original_id)
                .name(&name)
                .description(order.description(original.description()))
                .set_encrypted(encrypted)
                .set_kms_key_id(key_id)
                .send()
                .await
                .map_err(CloudError::from_sdk)?;
            out.image_id().unwrap_or_default().to_string()
        }
    };
    // CopyImage takes no tags for the image's snapshots: tag both (again,
    // after an interrupted attempt).
    let image = own_images(&client, vec![ec2_filter("image-id", &[&image_id])])
        .await?
        .into_iter()
        .next();
    let state = image
        .as_ref()
        .map(|i| image_state(i.state()))
        .unwrap_or(ArtifactState::Pending);
    let tagged = image
        .as_ref()
        .is_some_and(|i| ec2_tag_map(i.tags()).contains_key(TAG_DR_SOURCE));
    if !tagged {
        let original = own_images(
            &aws_sdk_ec2::Client::new(source),
            vec![ec2_filter("image-id", &[&order.original_id])],
        )
        .await?;
        let tags = order.copy_tags(
            &original
                .first()
                .map(|i| ec2_tag_map(i.tags()))
                .unwrap_or_default(),
        );
        let mut resources = vec![image_id.clone()];
        resources.extend(image.as_ref().map(image_snapshot_ids).unwrap_or_default());
        client
            .create_tags()
            .set_resources(Some(resources))
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(CloudError::from_sdk)?;
    }
    Ok(Copy {
        id: image_id,
        state,
    })
}

/// The ARN of an RDS resource in the caller's view when AWS did not say.
fn rds_arn(config: &SdkConfig, account: &str, resource: &str, id: &str) -> String {
    let region = config
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "us-east-1".into());
    format!("arn:aws:rds:{region}:{account}:{resource}:{id}")
}

async fn account_of(config: &SdkConfig) -> Result<String, CloudError> {
    Ok(crate::access::caller_identity(config).await?.account)
}

fn check_copy_source(
    name: &str,
    tags: &BTreeMap<String, String>,
    order: &CopyOrder,
) -> Result<(), CloudError> {
    match tags.get(TAG_DR_SOURCE) {
        Some(source) if *source != order.original_id => Err(error(
            "ArtifactNameConflict",
            format!("{name} exists but is not a copy of {}", order.original_id),
        )),
        _ => Ok(()),
    }
}

/// The `KmsKeyId` of an RDS or Aurora copy.
fn rds_copy_key(key: &CopyKey) -> Option<String> {
    match key {
        CopyKey::AsOriginal => None,
        CopyKey::DestinationDefault => Some("alias/aws/rds".into()),
        CopyKey::Key(arn) => Some(arn.clone()),
    }
}

async fn copy_rds(
    source: &SdkConfig,
    dest: &SdkConfig,
    order: &CopyOrder,
    key: &CopyKey,
) -> Result<Copy, CloudError> {
    let client = aws_sdk_rds::Client::new(dest);
    let name = order.copy_name();
    let found = |s: &aws_sdk_rds::types::DbSnapshot| -> Result<Copy, CloudError> {
        check_copy_source(&name, &rds_tag_map(s.tag_list()), order)?;
        Ok(Copy {
            id: name.clone(),
            state: snapshot_status(s.status()),
        })
    };
    if let Some(existing) = find_db_snapshot(&client, &name).await? {
        return found(&existing);
    }
    let original = find_db_snapshot(&aws_sdk_rds::Client::new(source), &order.original_id)
        .await?
        .ok_or_else(|| {
            error(
                "DBSnapshotNotFound",
                format!("snapshot {} not found", order.original_id),
            )
        })?;
    let arn = match original.db_snapshot_arn() {
        Some(arn) => arn.to_string(),
        None => rds_arn(
            source,
            &account_of(source).await?,
            "snapshot",
            &order.original_id,
        ),
    };
    let tags = order.copy_tags(&rds_tag_map(original.tag_list()));
    let created = client
        .copy_db_snapshot()
        .source_db_snapshot_identifier(arn)
        .target_db_snapshot_identifier(&name)
        .set_kms_key_id(rds_copy_key(key))
        .set_tags(Some(rds_tags(&tags)))
        .send()
        .await
        .map_err(CloudError::from_sdk);
    match created {
        Ok(out) => Ok(Copy {
            id: name.clone(),
            state: out
                .db_snapshot()
                .map(|s| snapshot_status(s.status()))
                .unwrap_or(ArtifactState::Pending),
        }),
        Err(e) if e.code.starts_with("DBSnapshotAlreadyExists") => {
            match find_db_snapshot(&client, &name).await? {
                Some(existing) => found(&existing),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

async fn copy_aurora(
    source: &SdkConfig,
    dest: &SdkConfig,
    order: &CopyOrder,
    key: &CopyKey,
) -> Result<Copy, CloudError> {
    let client = aws_sdk_rds::Client::new(dest);
    let name = order.copy_name();
    let found = |s: &aws_sdk_rds::types::DbClusterSnapshot| -> Result<Copy, CloudError> {
        check_copy_source(&name, &rds_tag_map(s.tag_list()), order)?;
        Ok(Copy {
            id: name.clone(),
            state: snapshot_status(s.status()),
        })
    };
    if let Some(existing) = find_db_cluster_snapshot(&client, &name).await? {
        return found(&existing);
    }
    let original = find_db_cluster_snapshot(&aws_sdk_rds::Client::new(source), &order.original_id)
        .await?
        .ok_or_else(|| {
            error(
                "DBClusterSnapshotNotFoundFault",
                format!("cluster snapshot {} not found", order.original_id),
            )
        })?;
    let arn = match original.db_cluster_snapshot_arn() {
        Some(arn) => arn.to_string(),
        None => rds_arn(
            source,
            &account_of(source).await?,
            "cluster-snapshot",
            &order.original_id,
        ),
    };
    let tags = order.copy_tags(&rds_tag_map(original.tag_list()));
    let created = client
        .copy_db_cluster_snapshot()
        .source_db_cluster_snapshot_identifier(arn)
        .target_db_cluster_snapshot_identifier(&name)
        .set_kms_key_id(rds_copy_key(key))
        .set_tags(Some(rds_tags(&tags)))
        .send()
        .await
        .map_err(CloudError::from_sdk);
    match created {
        Ok(out) => Ok(Copy {
            id: name.clone(),
            state: out
                .db_cluster_snapshot()
                .map(|s| snapshot_status(s.status()))
                .unwrap_or(ArtifactState::Pending),
        }),
        Err(e) if e.code.starts_with("DBClusterSnapshotAlreadyExists") => {
            match find_db_cluster_snapshot(&client, &name).await? {
                Some(existing) => found(&existing),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Lets `account` (a 12-digit number) copy the original: EC2
/// createVolumePermission, or the RDS `restore` attribute. Granting twice is
/// harmless.
pub async fn share(
    source: &SdkConfig,
    kind: &ArtifactKind,
    original_id: &str,
    account: &str,
) -> Result<(), CloudError> {
    match kind {
        ArtifactKind::EbsSnapshot => {
            aws_sdk_ec2::Client::new(source)
                .modify_snapshot_attribute()
                .snapshot_id(original_id)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .operation_type(aws_sdk_ec2::types::OperationType::Add)
                .user_ids(account)
                .send()
                .await
                .map_err(CloudError::from_sdk)?;
            Ok(())
        }
        ArtifactKind::RdsSnapshot => {
            aws_sdk_rds::Client::new(source)
                .modify_db_snapshot_attribute()
                .db_snapshot_identifier(original_id)
                .attribute_name("restore")
                .values_to_add(account)
                .send()
                .await
                .map_err(CloudError::from_sdk)?;
            Ok(())
        }
        ArtifactKind::AuroraSnapshot => {
            aws_sdk_rds::Client::new(source)
                .modify_db_cluster_snapshot_attribute()
                .db_cluster_snapshot_identifier(original_id)
                .attribute_name("restore")
                .values_to_add(account)
                .send()
                .await
                .map_err(CloudError::from_sdk)?;
            Ok(())
        }
        other => Err(error(
            "CopyNotSupported",
            format!("{other:?} {original_id} cannot be shared"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(kind: ArtifactKind, original: &str) -> CopyOrder {
        CopyOrder {
            kind,
            original_id: original.into(),
            source_region: "us-east-1".into(),
            backup_id: Uuid::from_u128(7),
        }
    }

    #[test]
    fn copy_names_follow_rds_rules_and_differ_per_original() {
        let long = format!("safehold-0000000-{}", "x".repeat(80));
        let a = order(ArtifactKind::RdsSnapshot, &long).copy_name();
        assert!(a.len() <= MAX_SNAPSHOT_IDENTIFIER, "{a}");
        assert!(!a.ends_with('-') && !a.contains("--"), "{a}");
        let b = order(ArtifactKind::RdsSnapshot, "safehold-other").copy_name();
        assert_ne!(a, b);
        assert_eq!(
            b,
            order(ArtifactKind::RdsSnapshot, "safehold-other").copy_name()
        );
    }

    fn aliases(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    const WHERE: &str = "eu-west-1 of account 210987654321";

    #[test]
    fn an_aws_managed_key_becomes_the_default_key_within_its_account_only() {
        let managed = aliases(&["alias/aws/ebs"]);
        assert_eq!(
            key_rule("k", &managed, true, WHERE),
            Ok(KeyRule::DestinationDefault)
        );
        assert_eq!(
            pick_key(&KeyRule::DestinationDefault, &BTreeMap::new(), WHERE),
            Ok(CopyKey::DestinationDefault)
        );
        let refused = key_rule("k", &managed, false, WHERE).unwrap_err();
        assert_eq!(refused.code, "KmsKeyNotShareable");
        assert!(refused.message.contains("alias/aws/ebs"), "{refused}");
        assert!(refused.message.contains(WHERE), "{refused}");
    }

    #[test]
    fn a_customer_key_needs_a_key_with_the_same_alias_in_the_destination() {
        let rule = key_rule("k", &aliases(&["alias/backups", "alias/old"]), false, WHERE).unwrap();
        assert_eq!(
            rule,
            KeyRule::SameAlias(aliases(&["alias/backups", "alias/old"]))
        );
        // The same rule within the account (another region).
        assert_eq!(
            key_rule("k", &aliases(&["alias/backups", "alias/old"]), true, WHERE),
            Ok(rule.clone())
        );
        let mut dest = BTreeMap::new();
        dest.insert("alias/old".to_string(), "arn:key/old".to_string());
        dest.insert("alias/other".to_string(), "arn:key/other".to_string());
        assert_eq!(
            pick_key(&rule, &dest, WHERE),
            Ok(CopyKey::Key("arn:key/old".into()))
        );
        dest.insert("alias/backups".to_string(), "arn:key/backups".to_string());
        assert_eq!(
            pick_key(&rule, &dest, WHERE),
            Ok(CopyKey::Key("arn:key/backups".into()))
        );
        let missing =
            pick_key(&KeyRule::SameAlias(aliases(&["alias/x"])), &dest, WHERE).unwrap_err();
        assert_eq!(missing.code, "KmsKeyNotFound");
        assert_eq!(
            missing.message,
            format!("no KMS key with alias alias/x in {WHERE}")
        );
        assert!(!missing.is_transient());
    }

    #[test]
    fn a_customer_key_without_an_alias_cannot_be_matched() {
        let refused = key_rule("arn:aws:kms:us-east-1:1:key/k", &[], true, WHERE).unwrap_err();
        assert_eq!(refused.code, "KmsKeyNotFound");
        assert!(refused.message.contains("has no alias"), "{refused}");
    }

    #[test]
    fn copies_keep_the_original_tags_and_name_their_source() {
        let mut original = BTreeMap::new();
        original.insert("Name".to_string(), "data".to_string());
        original.insert(TAG_BACKUP.to_string(), "b".to_string());
        original.insert("aws:backup".to_string(), "x".to_string());
        original.insert(TAG_EXPIRED_AT.to_string(), "2026".to_string());
        let tags = order(ArtifactKind::EbsSnapshot, "snap-1").copy_tags(&original);
        assert_eq!(
            tags,
            vec![
                ("Name".to_string(), "data".to_string()),
                (TAG_BACKUP.to_string(), "b".to_string()),
                (TAG_DR_SOURCE.to_string(), "snap-1".to_string()),
            ]
        );
    }
}
