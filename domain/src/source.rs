//! What a backup records about a source at backup time, beyond its snapshots:
//! the facts a recovery needs for its defaults once the source itself is
//! gone (an instance's type, placement, network and tags; a table's tags
//! and TTL, which a DynamoDB restore does not bring back).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceRecord {
    Instance(Box<InstanceRecord>),
    Table(TableRecord),
}

/// An EC2 instance as it was when it was backed up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceRecord {
    pub instance_type: String,
    /// The AMI it was launched from.
    pub image_id: Option<String>,
    pub key_name: Option<String>,
    pub availability_zone: Option<String>,
    pub subnet_id: Option<String>,
    pub vpc_id: Option<String>,
    pub private_ip: Option<String>,
    pub security_group_ids: Vec<String>,
    /// Whether it had a public IP address.
    pub public_ip: bool,
    pub root_device_name: Option<String>,
    /// `x86_64`, `arm64` or `i386`.
    pub architecture: Option<String>,
    /// `windows` for Windows instances.
    pub platform: Option<String>,
    pub ebs_optimized: bool,
    /// Detailed monitoring.
    pub monitoring: bool,
    /// `default`, `dedicated` or `host`.
    pub tenancy: Option<String>,
    pub instance_profile_arn: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub volumes: Vec<InstanceVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceVolume {
    pub device: String,
    pub volume_id: String,
    pub delete_on_termination: bool,
}

impl InstanceRecord {
    /// The device of the boot volume.
    pub fn root_device(&self) -> Option<&str> {
        self.root_device_name.as_deref()
    }

    pub fn is_windows(&self) -> bool {
        self.platform
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("windows"))
    }

    pub fn volume_at(&self, device: &str) -> Option<&InstanceVolume> {
        self.volumes.iter().find(|v| v.device == device)
    }
}

/// A DynamoDB table's tags and TTL attribute (None: TTL off).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TableRecord {
    pub tags: BTreeMap<String, String>,
    pub ttl_attribute: Option<String>,
}
