//! Resource discovery: what exists in one account and region, paginated.
//! The result feeds the inventory cache; nothing here is event-sourced.

use std::collections::{BTreeMap, HashMap};

use aws_config::SdkConfig;
use serde_json::json;

use crate::access::CloudError;

/// One discovered resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// `ec2_instance`, `ebs_volume`, `rds_instance`, `aurora_cluster`,
    /// `redshift_cluster` or `dynamodb_table`.
    pub resource_type: &'static str,
    pub id: String,
    pub name: Option<String>,
    pub size_gib: Option<i32>,
    pub tags: BTreeMap<String, String>,
    pub details: serde_json::Value,
}

fn ec2_tags(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// Everything Safehold can protect in the region.
pub async fn discover(config: &SdkConfig) -> Result<Vec<Resource>, CloudError> {
    let mut resources = ec2(config).await?;
    resources.extend(rds(config).await?);
    resources.extend(redshift(config).await?);
    resources.extend(dynamodb(config).await?);
    Ok(resources)
}

async fn ec2(config: &SdkConfig) -> Result<Vec<Resource>, CloudError> {
    let client = aws_sdk_ec2::Client::new(config);
    let volume_pages = client
        .describe_volumes()
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    let volumes: Vec<_> = volume_pages.iter().flat_map(|p| p.volumes()).collect();
    let sizes: HashMap<&str, i32> = volumes
        .iter()
        .filter_map(|v| Some((v.volume_id()?, v.size()?)))
        .collect();
    let mut out = Vec::new();
    let pages = client
        .describe_instances()
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    for instance in pages
        .iter()
        .flat_map(|p| p.reservations())
        .flat_map(|r| r.instances())
    {
        let tags = ec2_tags(instance.tags());
        let disks: Vec<_> = instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| {
                let volume = m.ebs()?.volume_id()?;
                Some(json!({
                    "device": m.device_name(),
                    "volume_id": volume,
                    "size_gib": sizes.get(volume),
                }))
            })
            .collect();
        let total: i32 = instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| sizes.get(m.ebs()?.volume_id()?))
            .sum();
        out.push(Resource {
            resource_type: "ec2_instance",
            id: instance.instance_id().unwrap_or_default().to_string(),
            name: tags.get("Name").cloned(),
            size_gib: Some(total),
            details: json!({
                "platform": instance.platform_details().unwrap_or("Linux/UNIX"),
                "instance_type": instance.instance_type().map(|t| t.as_str()),
                "state": instance.state().and_then(|s| s.name()).map(|n| n.as_str()),
                "image_id": instance.image_id(),
                "key_name": instance.key_name(),
                "subnet_id": instance.subnet_id(),
                "availability_zone": instance.placement().and_then(|p| p.availability_zone()),
                "security_groups": instance.security_groups().iter().filter_map(|g| g.group_id()).collect::<Vec<_>>(),
                "root_device": instance.root_device_name(),
                "volumes": disks,
            }),
            tags,
        });
    }
    for volume in volumes {
        let tags = ec2_tags(volume.tags());
        out.push(Resource {
            resource_type: "ebs_volume",
            id: volume.volume_id().unwrap_or_default().to_string(),
            name: tags.get("Name").cloned(),
            size_gib: volume.size(),
            details: json!({
                "availability_zone": volume.availability_zone(),
                "volume_type": volume.volume_type().map(|t| t.as_str()),
                "encrypted": volume.encrypted(),
                "attachments": volume.attachments().iter().map(|a| json!({
                    "instance_id": a.instance_id(), "device": a.device(),
                })).collect::<Vec<_>>(),
            }),
            tags,
        });
    }
    Ok(out)
}

async fn rds(config: &SdkConfig) -> Result<Vec<Resource>, CloudError> {
    let client = aws_sdk_rds::Client::new(config);
    let tags = |list: &[aws_sdk_rds::types::Tag]| -> BTreeMap<String, String> {
        list.iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_string(),
                    t.value().unwrap_or_default().to_string(),
                ))
            })
            .collect()
    };
    let mut out = Vec::new();
    let pages = client
        .describe_db_instances()
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    // Instances of a cluster are protected through their cluster.
    for db in pages
        .iter()
        .flat_map(|p| p.db_instances())
        .filter(|d| d.db_cluster_identifier().is_none())
    {
        out.push(Resource {
            resource_type: "rds_instance",
            id: db.db_instance_identifier().unwrap_or_default().to_string(),
            name: db.db_instance_identifier().map(str::to_owned),
            size_gib: db.allocated_storage(),
            tags: tags(db.tag_list()),
            details: json!({
                "engine": db.engine(),
                "class": db.db_instance_class(),
                "multi_az": db.multi_az(),
                "availability_zone": db.availability_zone(),
                "status": db.db_instance_status(),
            }),
        });
    }
    let clusters = client
        .describe_db_clusters()
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    for cluster in clusters.iter().flat_map(|p| p.db_clusters()) {
        if !cluster.engine().unwrap_or_default().starts_with("aurora") {
            continue;
        }
        out.push(Resource {
            resource_type: "aurora_cluster",
            id: cluster.db_cluster_identifier().unwrap_or_default().to_string(),
            name: cluster.db_cluster_identifier().map(str::to_owned),
            size_gib: cluster.allocated_storage(),
            tags: tags(cluster.tag_list()),
            details: json!({
                "engine": cluster.engine(),
                "members": cluster.db_cluster_members().iter().filter_map(|m| m.db_instance_identifier()).collect::<Vec<_>>(),
                "status": cluster.status(),
            }),
        });
    }
    Ok(out)
}

async fn redshift(config: &SdkConfig) -> Result<Vec<Resource>, CloudError> {
    let client = aws_sdk_redshift::Client::new(config);
    let pages = client
        .describe_clusters()
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    Ok(pages
        .iter()
        .flat_map(|p| p.clusters())
        .map(|c| {
            let tags: BTreeMap<String, String> = c
                .tags()
                .iter()
                .filter_map(|t| {
                    Some((
                        t.key()?.to_string(),
                        t.value().unwrap_or_default().to_string(),
                    ))
                })
                .collect();
            let megabytes = c.total_storage_capacity_in_mega_bytes().unwrap_or(0);
            Resource {
                resource_type: "redshift_cluster",
                id: c.cluster_identifier().unwrap_or_default().to_string(),
                name: tags
                    .get("Name")
                    .cloned()
                    .or(c.cluster_identifier().map(str::to_owned)),
                size_gib: Some(((megabytes + 1023) / 1024) as i32),
                tags,
                details: json!({
                    "node_type": c.node_type(),
                    "nodes": c.number_of_nodes(),
                    "status": c.cluster_status(),
                }),
            }
        })
        .collect())
}

async fn dynamodb(config: &SdkConfig) -> Result<Vec<Resource>, CloudError> {
    let client = aws_sdk_dynamodb::Client::new(config);
    let pages = client
        .list_tables()
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(CloudError::from_sdk)?;
    let mut out = Vec::new();
    for name in pages.iter().flat_map(|p| p.table_names()) {
        let table = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(CloudError::from_sdk)?;
        let Some(table) = table.table() else { continue };
        let bytes = table.table_size_bytes().unwrap_or(0);
        out.push(Resource {
            resource_type: "dynamodb_table",
            id: name.clone(),
            name: Some(name.clone()),
            size_gib: Some(((bytes + (1 << 30) - 1) >> 30) as i32),
            tags: BTreeMap::new(),
            details: json!({
                "arn": table.table_arn(),
                "status": table.table_status().map(|s| s.as_str()),
                "items": table.item_count(),
            }),
        });
    }
    Ok(out)
}
