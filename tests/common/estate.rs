//! An AWS estate for backup tests: the emulator with sample EC2 resources,
//! a server with an organisation and a discovered account, and the backup
//! workers running in-process.

use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use reqwest::{Method, StatusCode};
use safehold_cloud::emulator::Emulator;
use safehold_cloud::SdkConfig;
use safehold_jobs::backup::{BackupContext, BackupSettings};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{TestServer, PASSWORD};

pub const REGION: &str = "us-east-1";

pub struct Estate {
    pub emulator: Emulator,
    pub s: TestServer,
    pub root: String,
    pub account: String,
    pub config: SdkConfig,
    pub ec2: aws_sdk_ec2::Client,
    _workers: watch::Sender<bool>,
}

/// Emulator with the demo EC2 resources, a server with an organisation and a
/// discovered account, and the backup workers.
pub async fn setup() -> Estate {
    let emulator = Emulator::start(None).await.expect("AWS emulator");
    let target = safehold_cloud::Target {
        endpoint: Some(emulator.endpoint.clone()),
        region: REGION.into(),
    };
    safehold_cloud::seed_demo_resources(&target).await.unwrap();
    let config = safehold_cloud::access::sdk_config(
        &safehold_cloud::access::Endpoint(Some(emulator.endpoint.clone())),
        &safehold_cloud::access::AccessSpec::Keys {
            access_key_id: "AKIAEMULATORKEY00001".into(),
            secret_access_key: safehold_cloud::secrets::Secret::new("s3cr3t"),
        },
        REGION,
    )
    .await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let s = TestServer::start_with_aws(Some(emulator.endpoint.clone())).await;
    s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    let (status, account) = s
        .post(
            "/v1/accounts",
            Some(&root),
            json!({"name": "production", "number": "123456789012", "type": "backup",
                   "access": {"method": "access_keys", "access_key_id": "AKIAEMULATORKEY00001", "secret_access_key": "s3cr3t"},
                   "scan": {"enabled": true, "regions": [REGION]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{account}");
    let stop = start_workers(&s);
    let x = Estate {
        emulator,
        s,
        root,
        account: account["id"].as_str().unwrap().to_string(),
        config,
        ec2,
        _workers: stop,
    };
    x.discover().await;
    x
}

/// Backup workers in this process, polling quickly; they stop when the
/// returned sender is dropped or says so.
fn start_workers(s: &TestServer) -> watch::Sender<bool> {
    let (stop, stop_rx) = watch::channel(false);
    let ctx = BackupContext {
        cloud: s.state.cloud.clone(),
        settings: BackupSettings {
            poll_every: Duration::from_millis(300),
            ..BackupSettings::default()
        },
    };
    tokio::spawn(safehold_jobs::backup::run_workers(ctx, stop_rx));
    stop
}

impl Estate {
    /// Stops the backup workers, as a worker process that dies does.
    pub async fn stop_workers(&self) {
        let _ = self._workers.send(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    /// Starts new backup workers, as a restarted worker process does.
    pub fn restart_workers(&mut self) {
        self._workers = start_workers(&self.s);
    }

    /// A t3.small instance named app-1 (tagged team=web) in the default
    /// subnet of zone a, with its root at /dev/sda1 and data volumes of 10 GiB
    /// at /dev/sdf and 20 GiB at /dev/sdg, discovered. Returns it and its
    /// [root, sdf, sdg] volume ids.
    pub async fn app_instance(&self) -> (String, Vec<String>) {
        use aws_sdk_ec2::types::{
            BlockDeviceMapping, EbsBlockDevice, InstanceType, ResourceType, Tag, TagSpecification,
        };
        let ec2 = &self.ec2;
        let tagged = |kind: ResourceType, name: &str| {
            TagSpecification::builder()
                .resource_type(kind)
                .tags(Tag::builder().key("Name").value(name).build())
                .tags(Tag::builder().key("team").value("web").build())
                .build()
        };
        let seed = ec2
            .create_volume()
            .availability_zone(format!("{REGION}a"))
            .size(8)
            .send()
            .await
            .unwrap();
        let seed = ec2
            .create_snapshot()
            .volume_id(seed.volume_id().unwrap())
            .send()
            .await
            .unwrap();
        let image = ec2
            .register_image()
            .name("app-base")
            .root_device_name("/dev/sda1")
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/sda1")
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(seed.snapshot_id().unwrap())
                            .volume_size(8)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
        // The default VPC's subnet in zone a.
        let subnets = ec2
            .describe_subnets()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("availability-zone")
                    .values(format!("{REGION}a"))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let subnet = subnets.subnets()[0].subnet_id().unwrap().to_string();
        let run = ec2
            .run_instances()
            .image_id(image.image_id().unwrap())
            .instance_type(InstanceType::T3Small)
            .subnet_id(&subnet)
            .min_count(1)
            .max_count(1)
            .tag_specifications(tagged(ResourceType::Instance, "app-1"))
            .send()
            .await
            .unwrap();
        let instance = run.instances()[0].instance_id().unwrap().to_string();
        for (device, size) in [("/dev/sdf", 10), ("/dev/sdg", 20)] {
            let volume = ec2
                .create_volume()
                .availability_zone(format!("{REGION}a"))
                .size(size)
                .send()
                .await
                .unwrap();
            ec2.attach_volume()
                .volume_id(volume.volume_id().unwrap())
                .instance_id(&instance)
                .device(device)
                .send()
                .await
                .unwrap();
        }
        let described = ec2
            .describe_instances()
            .instance_ids(&instance)
            .send()
            .await
            .unwrap();
        let mappings = described.reservations()[0].instances()[0].block_device_mappings();
        let volume_at = |device: &str| {
            mappings
                .iter()
                .find(|m| m.device_name() == Some(device))
                .and_then(|m| m.ebs()?.volume_id())
                .unwrap_or_else(|| panic!("no volume at {device}: {mappings:?}"))
                .to_string()
        };
        let volumes = ["/dev/sda1", "/dev/sdf", "/dev/sdg"]
            .map(volume_at)
            .to_vec();
        self.discover().await;
        (instance, volumes)
    }

    pub async fn discover(&self) {
        let (status, body) = self
            .s
            .post(
                &format!("/v1/accounts/{}/discover", self.account),
                Some(&self.root),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    pub async fn resource(&self, kind: &str, name: &str) -> Value {
        let (_, page) = self
            .s
            .get(
                &format!(
                    "/v1/accounts/{}/resources?type={kind}&q={name}",
                    self.account
                ),
                &self.root,
            )
            .await;
        let found = page["items"][0].clone();
        assert!(found.is_object(), "no {kind} {name}: {page}");
        found
    }

    pub async fn put_target(&self, policy: &str, target: Value) -> Value {
        let (status, view) = self
            .s
            .post(
                &format!("/v1/policies/{policy}/targets"),
                Some(&self.root),
                target,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        view
    }

    pub async fn remove_target(&self, policy: &str, kind: &str, id: &str) -> (StatusCode, Value) {
        self.s
            .call(
                Method::DELETE,
                &format!("/v1/policies/{policy}/targets/{kind}/{REGION}/{id}"),
                Some(&self.root),
                None,
            )
            .await
    }

    pub async fn policy(&self, body: Value, targets: &[Value]) -> String {
        let mut body = body;
        body["account_id"] = json!(self.account);
        let (status, policy) = self.s.post("/v1/policies", Some(&self.root), body).await;
        assert_eq!(status, StatusCode::CREATED, "{policy}");
        let id = policy["id"].as_str().unwrap().to_string();
        for target in targets {
            self.put_target(&id, target.clone()).await;
        }
        id
    }

    /// Runs the policy now and waits until the backup has finished.
    pub async fn run(&self, policy: &str) -> Value {
        let (status, started) = self
            .s
            .post(
                &format!("/v1/policies/{policy}/run"),
                Some(&self.root),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{started}");
        self.finished(started["backup_id"].as_str().unwrap()).await
    }

    /// Waits until the backup has finished and its policy is free again.
    pub async fn finished(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, backup) = self.s.get(&format!("/v1/backups/{id}"), &self.root).await;
            if status == StatusCode::OK && backup["status"] != "in_progress" {
                // The policy is free again once retention is done.
                let policy = backup["policy_id"].as_str().unwrap();
                let (_, view) = self
                    .s
                    .get(&format!("/v1/policies/{policy}"), &self.root)
                    .await;
                if view["running_backup_id"].is_null() {
                    return backup;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "backup {id} did not finish: {backup}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every snapshot of the backup is recorded as deleted.
    pub async fn recorded_deleted(&self, backup: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, view) = self
                .s
                .get(&format!("/v1/backups/{backup}"), &self.root)
                .await;
            let snapshots = view["snapshots"].as_array().cloned().unwrap_or_default();
            if view["deleted_at"].is_string()
                && snapshots.iter().all(|s| s["deleted_at"].is_string())
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Own EBS snapshots in AWS with `filter` = `values`.
    pub async fn snapshots_where(
        &self,
        filter: &str,
        values: &[String],
    ) -> Vec<aws_sdk_ec2::types::Snapshot> {
        self.ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(
                Filter::builder()
                    .name(filter)
                    .set_values(Some(values.to_vec()))
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .snapshots()
            .to_vec()
    }

    /// EBS snapshots in AWS tagged with this backup id (the snapshots of its
    /// AMIs included).
    pub async fn aws_snapshots(&self, backup: &str) -> Vec<aws_sdk_ec2::types::Snapshot> {
        self.snapshots_where("tag:safehold:backup", &[backup.to_string()])
            .await
    }
}
