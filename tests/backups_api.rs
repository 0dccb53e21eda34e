//! The backup monitor, backup details and the freezer through the API. The
//! backups are driven on the aggregates directly, as the backup job would.

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{TestServer, PASSWORD};
use cqrs_es::Aggregate;
use reqwest::StatusCode;
use safehold_domain::backup::{Backup, BackupCommand, Snapshot, SnapshotState};
use safehold_domain::ids::stream_id;
use safehold_domain::policy::{
    Policy, PolicyCommand, PolicySettings, ResourceKind, SuccessCriterion, Target, TargetKey,
    Trigger,
};
use safehold_domain::{CommandMetadata, TenantId, UserId};
use safehold_jobs::commands::{execute, system_metadata};
use serde_json::{json, Value};
use uuid::Uuid;

const FIRST: &str = "First-Login-Pass-9!";

fn day(d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, d, h, 0, 0).unwrap()
}

fn key(volume: &str) -> TargetKey {
    TargetKey {
        kind: ResourceKind::EbsVolume,
        region: "us-east-1".into(),
        resource_id: volume.into(),
    }
}

fn snap(id: &str, volume: &str) -> Snapshot {
    Snapshot {
        kind: "ebs_snapshot".into(),
        id: id.into(),
        region: "us-east-1".into(),
        source: volume.into(),
        device: None,
        size_gib: Some(8),
    }
}

struct Org {
    s: TestServer,
    tenant: TenantId,
    owner: UserId,
    root: String,
}

impl Org {
    fn meta(&self, at: DateTime<Utc>) -> CommandMetadata {
        CommandMetadata {
            occurred_at: at,
            ..system_metadata(self.tenant, "test")
        }
    }

    /// Waits until every projection has applied the stream's latest event.
    async fn settle<A: Aggregate>(&self, entity: Uuid) {
        safehold_projections::runtime::notify_committed(&self.s.pool).await;
        let caught_up = safehold_projections::runtime::wait_for_stream(
            &self.s.pool,
            A::TYPE,
            &stream_id(self.tenant, entity),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert!(caught_up, "projections caught up");
    }

    async fn policy_command(&self, policy: Uuid, at: DateTime<Utc>, command: PolicyCommand) {
        execute::<Policy>(&self.s.pool, &self.meta(at), policy, command)
            .await
            .unwrap();
    }

    async fn backup_command(&self, backup: Uuid, at: DateTime<Utc>, command: BackupCommand) {
        execute::<Backup>(&self.s.pool, &self.meta(at), backup, command)
            .await
            .unwrap();
    }

    async fn policy(&self, name: &str, account: Uuid, volumes: &[&str]) -> Uuid {
        let id = Uuid::new_v4();
        self.policy_command(
            id,
            day(1, 0),
            PolicyCommand::Create {
                id,
                tenant_id: self.tenant,
                owner_id: self.owner,
                account_id: account,
                name: name.into(),
                settings: PolicySettings::default(),
                enabled: true,
                from_tag_scan: false,
            },
        )
        .await;
        for volume in volumes {
            self.policy_command(
                id,
                day(1, 0),
                PolicyCommand::PutTarget(Target {
                    key: key(volume),
                    instance: None,
                }),
            )
            .await;
        }
        id
    }

    /// Starts a backup of the policy and begins it, as the backup job does.
    async fn begin(
        &self,
        policy: Uuid,
        name: &str,
        account: Uuid,
        volumes: &[&str],
        at: DateTime<Utc>,
        trigger: Trigger,
    ) -> Uuid {
        let backup = Uuid::new_v4();
        self.policy_command(
            policy,
            at,
            PolicyCommand::StartBackup {
                backup_id: backup,
                trigger: trigger.clone(),
            },
        )
        .await;
        self.settle::<Policy>(policy).await;
        self.backup_command(
            backup,
            at,
            BackupCommand::Begin {
                id: backup,
                tenant_id: self.tenant,
                policy_id: policy,
                policy_name: name.into(),
                account_id: account,
                trigger,
                success_criterion: SuccessCriterion::AllSucceed,
                targets: volumes
                    .iter()
                    .map(|v| Target {
                        key: key(v),
                        instance: None,
                    })
                    .collect(),
            },
        )
        .await;
        backup
    }

    async fn finish(&self, policy: Uuid, backup: Uuid, at: DateTime<Utc>, succeeded: bool) {
        self.policy_command(
            policy,
            at,
            PolicyCommand::FinishBackup {
                backup_id: backup,
                succeeded,
            },
        )
        .await;
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.s.get(path, &self.root).await
    }

    /// Ids of a monitor or freezer page.
    async fn ids(&self, path: &str) -> Vec<String> {
        let (status, page) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    }
}

struct Backups {
    org: Org,
    nightly: Uuid,
    weekly: Uuid,
    account: Uuid,
    /// Jan 1: vol-1 completed, vol-2 vanished: successful.
    a: Uuid,
    /// Jan 2 01:00: both targets failed.
    b: Uuid,
    /// Jan 2 02:00: retry of b, successful.
    e: Uuid,
    /// Jan 2 12:00, the weekly policy: successful.
    d: Uuid,
    /// Jan 3: still running.
    c: Uuid,
}

async fn setup() -> Backups {
    let s = TestServer::start().await;
    let (tenant, root_id) = s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    let org = Org {
        s,
        tenant: TenantId(tenant.parse().unwrap()),
        owner: UserId(root_id.parse().unwrap()),
        root,
    };
    let account = Uuid::new_v4();
    let nightly = org.policy("nightly", account, &["vol-1", "vol-2"]).await;
    let weekly = org.policy("weekly", account, &["vol-3"]).await;
    let both = ["vol-1", "vol-2"];

    let a = org
        .begin(
            nightly,
            "nightly",
            account,
            &both,
            day(1, 1),
            Trigger::AdHoc,
        )
        .await;
    org.backup_command(
        a,
        day(1, 1),
        BackupCommand::RecordSnapshots {
            target: key("vol-1"),
            snapshots: vec![snap("snap-a1", "vol-1")],
        },
    )
    .await;
    org.backup_command(
        a,
        day(1, 1),
        BackupCommand::RecordTargetVanished {
            target: key("vol-2"),
            removed_from_policy: false,
        },
    )
    .await;
    org.backup_command(
        a,
        day(1, 2),
        BackupCommand::RecordSnapshotStates {
            states: vec![("snap-a1".into(), SnapshotState::Completed)],
        },
    )
    .await;
    org.finish(nightly, a, day(1, 2), true).await;

    let b = org
        .begin(
            nightly,
            "nightly",
            account,
            &both,
            day(2, 1),
            Trigger::AdHoc,
        )
        .await;
    for volume in both {
        org.backup_command(
            b,
            day(2, 1),
            BackupCommand::RecordTargetFailed {
                target: key(volume),
                error: "IncorrectState".into(),
            },
        )
        .await;
    }
    org.finish(nightly, b, day(2, 1), false).await;

    let retry = Trigger::Retry { of: b, attempt: 1 };
    let e = org
        .begin(nightly, "nightly", account, &["vol-1"], day(2, 2), retry)
        .await;
    org.backup_command(
        e,
        day(2, 2),
        BackupCommand::RecordSnapshots {
            target: key("vol-1"),
            snapshots: vec![snap("snap-e1", "vol-1")],
        },
    )
    .await;
    org.backup_command(
        e,
        day(2, 3),
        BackupCommand::RecordSnapshotStates {
            states: vec![("snap-e1".into(), SnapshotState::Completed)],
        },
    )
    .await;
    org.finish(nightly, e, day(2, 3), true).await;

    let d = org
        .begin(
            weekly,
            "weekly",
            account,
            &["vol-3"],
            day(2, 12),
            Trigger::AdHoc,
        )
        .await;
    org.backup_command(
        d,
        day(2, 12),
        BackupCommand::RecordSnapshots {
            target: key("vol-3"),
            snapshots: vec![snap("snap-d1", "vol-3")],
        },
    )
    .await;
    org.backup_command(
        d,
        day(2, 13),
        BackupCommand::RecordSnapshotStates {
            states: vec![("snap-d1".into(), SnapshotState::Completed)],
        },
    )
    .await;
    org.finish(weekly, d, day(2, 13), true).await;

    let c = org
        .begin(
            nightly,
            "nightly",
            account,
            &both,
            day(3, 1),
            Trigger::AdHoc,
        )
        .await;
    org.backup_command(
        c,
        day(3, 1),
        BackupCommand::RecordSnapshots {
            target: key("vol-1"),
            snapshots: vec![snap("snap-c1", "vol-1")],
        },
    )
    .await;
    org.settle::<Backup>(c).await;

    Backups {
        org,
        nightly,
        weekly,
        account,
        a,
        b,
        e,
        d,
        c,
    }
}

fn strings(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

#[tokio::test]
async fn the_monitor_lists_newest_first_with_filters_and_cursor_pagination() {
    let x = setup().await;
    let org = &x.org;
    let all = strings(&[x.c, x.d, x.e, x.b, x.a]);
    assert_eq!(org.ids("/v1/backups").await, all);

    let (_, page) = org.get("/v1/backups").await;
    let items = page["items"].as_array().unwrap();
    let running = &items[0];
    assert_eq!(running["status"], "in_progress");
    assert_eq!(running["finished_at"], Value::Null);
    assert_eq!(running["snapshot_count"], 1);
    let retry = &items[2];
    assert_eq!(retry["is_retry"], true);
    assert_eq!(retry["trigger"], "retry");
    assert_eq!(retry["retry_of"], x.b.to_string());
    assert_eq!(retry["attempt"], 1);
    let first = &items[4];
    assert_eq!(first["policy_id"], x.nightly.to_string());
    assert_eq!(first["policy_name"], "nightly");
    assert_eq!(first["account_id"], x.account.to_string());
    assert_eq!(first["status"], "successful");
    assert_eq!(first["dr_status"], "none");
    assert_eq!(first["trigger"], "ad_hoc");
    assert_eq!(first["is_retry"], false);
    assert_eq!(first["frozen"], false);
    assert_eq!(first["started_at"], "2030-01-01T01:00:00Z");
    assert_eq!(first["finished_at"], "2030-01-01T02:00:00Z");

    assert_eq!(
        org.ids("/v1/backups?status=successful").await,
        strings(&[x.d, x.e, x.a])
    );
    assert_eq!(org.ids("/v1/backups?status=failed").await, strings(&[x.b]));
    assert_eq!(
        org.ids(&format!("/v1/backups?policy_id={}", x.weekly))
            .await,
        strings(&[x.d])
    );
    assert_eq!(
        org.ids("/v1/backups?from=2030-01-02T00:00:00Z&to=2030-01-03T00:00:00Z")
            .await,
        strings(&[x.d, x.e, x.b])
    );
    assert_eq!(
        org.ids(&format!(
            "/v1/backups?policy_id={}&status=successful&from=2030-01-02T00:00:00Z",
            x.nightly
        ))
        .await,
        strings(&[x.e])
    );

    let (status, problem) = org.get("/v1/backups?status=done").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "status");

    // Two at a time, following the cursor.
    let mut seen = Vec::new();
    let mut path = "/v1/backups?limit=2".to_string();
    loop {
        let (status, page) = org.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|b| b["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/backups?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, all);
}

#[tokio::test]
async fn a_backup_shows_its_snapshots_and_an_ordered_log() {
    let x = setup().await;
    let org = &x.org;
    let (status, a) = org.get(&format!("/v1/backups/{}", x.a)).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["id"], x.a.to_string());
    let snapshots = a["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 1);
    let s = &snapshots[0];
    assert_eq!(s["id"], "snap-a1");
    assert_eq!(s["kind"], "ebs_snapshot");
    assert_eq!(s["region"], "us-east-1");
    assert_eq!(s["account_id"], x.account.to_string());
    assert_eq!(
        s["target"],
        json!({"type": "ebs_volume", "region": "us-east-1", "id": "vol-1"})
    );
    assert_eq!(s["source"], "vol-1");
    assert_eq!(s["size_gib"], 8);
    assert_eq!(s["state"], "completed");
    assert_eq!(s["created_at"], "2030-01-01T01:00:00Z");
    assert_eq!(s["completed_at"], "2030-01-01T02:00:00Z");
    assert_eq!(s["deleted_at"], Value::Null);

    let log: Vec<(String, String)> = a["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["level"].as_str().unwrap().to_string(),
                l["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("info", "Backup of policy nightly began with 2 targets"),
        (
            "info",
            "ebs_volume vol-1 (us-east-1): created ebs_snapshot snap-a1",
        ),
        (
            "warning",
            "Warning: ebs_volume vol-2 (us-east-1) no longer exists",
        ),
        ("info", "snap-a1 completed"),
        ("info", "Backup finished: successful"),
    ];
    assert_eq!(
        log,
        expected
            .iter()
            .map(|(l, m)| (l.to_string(), m.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(a["log"][0]["time"], "2030-01-01T01:00:00Z");

    let (_, b) = org.get(&format!("/v1/backups/{}", x.b)).await;
    let levels: Vec<&str> = b["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["info", "error", "error", "error"]);
    assert_eq!(b["status"], "failed");
    assert!(b["snapshots"].as_array().unwrap().is_empty());

    let (_, c) = org.get(&format!("/v1/backups/{}", x.c)).await;
    assert_eq!(c["snapshots"][0]["state"], "pending");
    assert_eq!(c["snapshots"][0]["completed_at"], Value::Null);

    let (status, _) = org.get(&format!("/v1/backups/{}", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_freezer_keeps_finished_backups_under_unique_names() {
    let x = setup().await;
    let org = &x.org;
    let s = &org.s;
    let freeze = |id: Uuid| format!("/v1/backups/{id}/freeze");
    let body =
        json!({"name": "before-migration", "description": "State before the Postgres 17 upgrade"});

    // A delegate without backup changes sees backups but cannot freeze them.
    let (_, helper) = s
        .create_user(
            &org.root,
            "acme",
            json!({"username": "helper", "password": FIRST, "kind": "delegate"}),
        )
        .await;
    let (status, _) = s.get(&format!("/v1/backups/{}", x.a), &helper).await;
    assert_eq!(status, StatusCode::OK);
    let (status, problem) = s.post(&freeze(x.a), Some(&helper), body.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");

    let (status, frozen) = s.post(&freeze(x.a), Some(&org.root), body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{frozen}");
    assert_eq!(frozen["frozen"], true);
    assert_eq!(frozen["freezer"]["name"], "before-migration");
    assert_eq!(
        frozen["freezer"]["description"],
        "State before the Postgres 17 upgrade"
    );
    assert_eq!(
        frozen["log"].as_array().unwrap().last().unwrap()["message"],
        "Moved to the freezer as before-migration"
    );

    let (status, again) = s.post(&freeze(x.a), Some(&org.root), body.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["code"], "already_frozen");
    let (status, taken) = s.post(&freeze(x.d), Some(&org.root), body.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{taken}");
    assert_eq!(taken["code"], "name_taken");
    let (status, running) = s
        .post(&freeze(x.c), Some(&org.root), json!({"name": "in-flight"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{running}");
    assert_eq!(running["code"], "backup_in_progress");
    let (status, invalid) = s
        .post(&freeze(x.d), Some(&org.root), json!({"name": "  "}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{invalid}");
    assert_eq!(invalid["errors"][0]["field"], "name");

    let (status, quarterly) = s
        .post(&freeze(x.d), Some(&org.root), json!({"name": "quarterly"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{quarterly}");
    assert_eq!(quarterly["freezer"]["description"], "");

    assert_eq!(
        org.ids("/v1/backups?frozen=true").await,
        strings(&[x.d, x.a])
    );
    assert_eq!(
        org.ids("/v1/backups?frozen=false").await,
        strings(&[x.c, x.e, x.b])
    );

    // The freezer, by name; the search covers descriptions, in any case.
    assert_eq!(org.ids("/v1/freezer").await, strings(&[x.a, x.d]));
    assert_eq!(org.ids("/v1/freezer?q=postgres").await, strings(&[x.a]));
    assert_eq!(org.ids("/v1/freezer?q=QUARTER").await, strings(&[x.d]));
    assert!(org.ids("/v1/freezer?q=100%25").await.is_empty());
    let (_, page) = org.get("/v1/freezer?limit=1").await;
    assert_eq!(page["items"][0]["id"], x.a.to_string());
    let cursor = page["next_cursor"].as_str().unwrap();
    assert_eq!(
        org.ids(&format!("/v1/freezer?limit=1&cursor={cursor}"))
            .await,
        strings(&[x.d])
    );

    // A frozen backup outlives its policy.
    org.policy_command(x.weekly, Utc::now(), PolicyCommand::Remove)
        .await;
    org.settle::<Policy>(x.weekly).await;
    let (status, kept) = org.get(&format!("/v1/backups/{}", x.d)).await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    assert_eq!(kept["policy_name"], "weekly");
    assert_eq!(org.ids("/v1/freezer").await, strings(&[x.a, x.d]));
}

#[tokio::test]
async fn another_organisation_sees_none_of_it() {
    let x = setup().await;
    let s = &x.org.s;
    s.sign_up("globex", "root").await;
    let other = s.token("globex", "root", PASSWORD).await;
    let (status, _) = s.get(&format!("/v1/backups/{}", x.a), &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .post(
            &format!("/v1/backups/{}/freeze", x.a),
            Some(&other),
            json!({"name": "mine"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, page) = s.get("/v1/backups", &other).await;
    assert!(page["items"].as_array().unwrap().is_empty(), "{page}");
    let (_, page) = s.get("/v1/freezer", &other).await;
    assert!(page["items"].as_array().unwrap().is_empty(), "{page}");

    // Nor does an independent user of the same organisation.
    let (_, alice) = s
        .create_user(
            &x.org.root,
            "acme",
            json!({"username": "alice", "password": FIRST, "kind": "independent"}),
        )
        .await;
    let (status, _) = s.get(&format!("/v1/backups/{}", x.a), &alice).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, page) = s.get("/v1/backups", &alice).await;
    assert!(page["items"].as_array().unwrap().is_empty(), "{page}");
}

#[tokio::test]
async fn the_backups_projection_creates_the_row_when_it_sees_the_backup_first_and_rebuilds() {
    use safehold_projections::backups::{self as read, BackupsProjection};
    use safehold_projections::runtime::{catch_up, rebuild};
    use safehold_projections::Projection;
    use std::sync::Arc;

    let (_, pool) = common::fresh_database().await;
    let tenant = TenantId(Uuid::new_v4());
    let owner = UserId(Uuid::new_v4());
    let meta = system_metadata(tenant, "test");
    let (policy, backup, account, schedule) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    execute::<Policy>(
        &pool,
        &meta,
        policy,
        PolicyCommand::Create {
            id: policy,
            tenant_id: tenant,
            owner_id: owner,
            account_id: account,
            name: "nightly".into(),
            settings: PolicySettings::default(),
            enabled: true,
            from_tag_scan: false,
        },
    )
    .await
    .unwrap();
    let commands = [
        BackupCommand::Begin {
            id: backup,
            tenant_id: tenant,
            policy_id: policy,
            policy_name: "nightly".into(),
            account_id: account,
            trigger: Trigger::Scheduled {
                schedule_id: schedule,
                occurrence: day(1, 1),
            },
            success_criterion: SuccessCriterion::AllSucceed,
            targets: vec![Target {
                key: key("vol-1"),
                instance: None,
            }],
        },
        BackupCommand::RecordSnapshots {
            target: key("vol-1"),
            snapshots: vec![snap("snap-1", "vol-1")],
        },
        BackupCommand::RecordSnapshotStates {
            states: vec![("snap-1".into(), SnapshotState::Completed)],
        },
        BackupCommand::Freeze(safehold_domain::backup::FreezerEntry {
            name: "keep".into(),
            description: String::new(),
        }),
    ];
    for command in commands {
        execute::<Backup>(&pool, &meta, backup, command)
            .await
            .unwrap();
    }
    let only: Vec<Arc<dyn Projection>> = vec![Arc::new(BackupsProjection)];
    catch_up(&pool, &only).await.unwrap();

    let check = |row: read::BackupRow| {
        assert_eq!(row.owner_id, Some(owner.0));
        assert_eq!(row.policy_name.as_deref(), Some("nightly"));
        assert_eq!(row.account_id, Some(account));
        assert_eq!(row.trigger, "scheduled");
        assert_eq!(row.schedule_id, Some(schedule));
        assert_eq!(row.occurrence, Some(day(1, 1)));
        assert_eq!(row.status, "successful");
        assert_eq!(row.snapshot_count, 1);
        assert!(row.frozen);
        assert_eq!(row.freezer_name.as_deref(), Some("keep"));
    };
    check(
        read::find_backup(&pool, tenant, backup)
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(read::log_of(&pool, tenant, backup).await.unwrap().len(), 5);

    // Replaying the log gives the same read model.
    rebuild(&pool, &BackupsProjection).await.unwrap();
    check(
        read::find_backup(&pool, tenant, backup)
            .await
            .unwrap()
            .unwrap(),
    );
    let snapshots = read::snapshots_of(&pool, tenant, backup).await.unwrap();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0].state, "completed");
    assert_eq!(snapshots[0].account_id, Some(account));
    assert_eq!(read::log_of(&pool, tenant, backup).await.unwrap().len(), 5);
}
