//! The daily cleanup against a real server, Postgres and the AWS emulator:
//! one cleanup per organisation and day whichever processes plan it, failed
//! deletions retried, records of long-deleted backups purged (also after a
//! projection rebuild), and an instance's initial AMI kept until a newer one
//! replaces it. Time is passed explicitly to the cleanup pass; the timing
//! rules themselves are unit-tested in `safehold_domain::cleanup`.

mod common;

use std::time::Duration;

use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice};
use chrono::{DateTime, NaiveDate, Utc};
use common::estate::{setup, Estate, REGION};
use common::{project_everything, TestServer, PASSWORD};
use reqwest::{Method, StatusCode};
use safehold_domain::TenantId;
use safehold_jobs::backup::{BackupContext, BackupSettings};
use safehold_jobs::cleanup::{clean_tenant, plan, CleanupJob, CLEANUP_QUEUE};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap().to_string()
}

async fn tenant_of(pool: &PgPool) -> TenantId {
    TenantId(
        sqlx::query_scalar("SELECT tenant_id FROM tenants LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap(),
    )
}

async fn change_settings(s: &TestServer, token: &str, change: Value) {
    let (_, mut settings) = s.get("/v1/settings", token).await;
    for (key, value) in change.as_object().unwrap() {
        settings[key] = value.clone();
    }
    let (status, body) = s
        .call(Method::PUT, "/v1/settings", Some(token), Some(settings))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Cleanup jobs in the queue, in due order.
async fn queued_cleanups(pool: &PgPool) -> Vec<CleanupJob> {
    let jobs: Vec<Value> =
        sqlx::query_scalar("SELECT job FROM apalis.jobs WHERE job_type = $1 ORDER BY run_at")
            .bind(CLEANUP_QUEUE)
            .fetch_all(pool)
            .await
            .unwrap();
    jobs.into_iter()
        .map(|j| serde_json::from_value(j).unwrap())
        .collect()
}

fn context(x: &Estate) -> BackupContext {
    BackupContext {
        cloud: x.s.state.cloud.clone(),
        settings: BackupSettings::default(),
    }
}

#[tokio::test]
async fn the_daily_cleanup_is_enqueued_once_per_organisation_and_day_across_processes() {
    let s = TestServer::start().await;
    s.sign_up("acme", "root").await;
    let root = s.token("acme", "root", PASSWORD).await;
    change_settings(
        &s,
        &root,
        json!({"time_zone": "Europe/Berlin", "cleanup_time": "02:30"}),
    )
    .await;
    let (tenant, _) = s.sign_up("globex", "root").await;
    let globex: Uuid = tenant.parse().unwrap();
    let acme = tenant_of_slug(&s.pool, "acme").await;

    // 2026-03-29: Berlin springs forward at 02:00, so 02:30 runs at 03:30
    // CEST (01:30 UTC). Two processes plan at once, just after it.
    let now = utc("2026-03-29T01:31:00Z");
    let (a, b) = tokio::join!(plan(&s.pool, now), plan(&s.pool, now));
    let mut enqueued = a.unwrap();
    enqueued.extend(b.unwrap());
    let for_acme: Vec<_> = enqueued.iter().filter(|j| j.tenant_id == acme).collect();
    assert_eq!(for_acme.len(), 1, "{enqueued:?}");
    assert_eq!(
        for_acme[0].day,
        NaiveDate::from_ymd_opt(2026, 3, 29).unwrap()
    );
    assert_eq!(for_acme[0].due, utc("2026-03-29T01:30:00Z"));
    // The other organisation keeps the default, 03:00 UTC: its latest is
    // the day before.
    let for_globex: Vec<_> = enqueued.iter().filter(|j| j.tenant_id == globex).collect();
    assert_eq!(for_globex.len(), 1, "{enqueued:?}");
    assert_eq!(for_globex[0].due, utc("2026-03-28T03:00:00Z"));
    assert_eq!(queued_cleanups(&s.pool).await.len(), 2);

    // Later, in any process: nothing more until the next cleanup time.
    for later in ["2026-03-29T01:45:00Z", "2026-03-29T02:59:59Z"] {
        assert!(plan(&s.pool, utc(later)).await.unwrap().is_empty());
    }
    // Globex's own day comes at 03:00 UTC; acme's next at 02:30 CEST.
    let next = plan(&s.pool, utc("2026-03-29T03:00:00Z")).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].tenant_id, globex);
    assert!(plan(&s.pool, utc("2026-03-29T23:59:00Z"))
        .await
        .unwrap()
        .is_empty());
    let next = plan(&s.pool, utc("2026-03-30T00:30:00Z")).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].tenant_id, acme);
    assert_eq!(next[0].due, utc("2026-03-30T00:30:00Z"));

    // Down from 31 March to 3 April noon: each catches up once, with the
    // latest missed day.
    let after_downtime = plan(&s.pool, utc("2026-04-03T12:00:00Z")).await.unwrap();
    assert_eq!(after_downtime.len(), 2, "{after_downtime:?}");
    assert!(after_downtime
        .iter()
        .all(|j| j.day == NaiveDate::from_ymd_opt(2026, 4, 3).unwrap()));
    assert!(plan(&s.pool, utc("2026-04-03T12:01:00Z"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(queued_cleanups(&s.pool).await.len(), 6);
}

async fn tenant_of_slug(pool: &PgPool, slug: &str) -> Uuid {
    sqlx::query_scalar("SELECT tenant_id FROM tenants WHERE slug = $1")
        .bind(slug)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn volume_target(volume: &Value) -> Value {
    json!({"type": "ebs_volume", "region": REGION, "resource_id": volume["id"]})
}

/// Whether AWS still has the snapshot.
async fn snapshot_exists(x: &Estate, id: &str) -> bool {
    !x.snapshots_where("snapshot-id", &[id.to_string()])
        .await
        .is_empty()
}

/// The image, unless AWS no longer has it (unknown or deregistered).
async fn image_exists(x: &Estate, id: &str) -> bool {
    match x.ec2.describe_images().image_ids(id).send().await {
        Ok(out) => out.images().iter().any(|i| {
            i.image_id() == Some(id) && i.state().map(|s| s.as_str()) != Some("deregistered")
        }),
        Err(_) => false,
    }
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_daily_cleanup_job_retries_a_deletion_that_failed() {
    let x = setup().await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "nightly", "generations": 1}),
            &[volume_target(&volume)],
        )
        .await;
    let first = x.run(&policy).await;
    assert_eq!(first["status"], "successful", "{first}");
    let first_id = id_of(&first);
    let snapshot = first["snapshots"][0]["id"].as_str().unwrap().to_string();

    // Someone registers an image from the snapshot: AWS refuses to delete
    // a snapshot in use, so retention after the next backup fails.
    let image = x
        .ec2
        .register_image()
        .name("made-from-a-backup")
        .root_device_name("/dev/sda1")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(EbsBlockDevice::builder().snapshot_id(&snapshot).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let second = x.run(&policy).await;
    assert_eq!(second["status"], "successful", "{second}");
    assert!(snapshot_exists(&x, &snapshot).await, "deletion refused");
    project_everything(&x.s.pool).await;
    let (_, now) = x.s.get(&format!("/v1/backups/{first_id}"), &x.root).await;
    assert!(
        now["deleted_at"].is_null(),
        "not recorded as deleted: {now}"
    );

    // The image goes; the day's cleanup, planned and run by the job
    // workers, deletes the snapshot this time.
    x.ec2
        .deregister_image()
        .image_id(image.image_id().unwrap())
        .send()
        .await
        .unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(safehold_jobs::cleanup::run_workers(context(&x), stop_rx));
    let planned = plan(&x.s.pool, Utc::now()).await.unwrap();
    assert_eq!(planned.len(), 1, "{planned:?}");
    wait_until("the cleanup job deletes the snapshot", || async {
        !snapshot_exists(&x, &snapshot).await
    })
    .await;
    x.recorded_deleted(&first_id).await;
    let second_snapshot = second["snapshots"][0]["id"].as_str().unwrap();
    assert!(
        snapshot_exists(&x, second_snapshot).await,
        "the newest stays"
    );
    let _ = stop.send(true);
}

/// The rows of the backup read models, for comparing before and after a rebuild.
async fn backup_tables(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for (table, order) in [
        ("backups", "backup_id"),
        ("backup_snapshots", "backup_id, snapshot_id"),
        ("backup_log", "backup_id, position"),
    ] {
        let dump: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT row_to_json(t)::text FROM {table} t ORDER BY {order}"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        rows.extend(dump.into_iter().map(|r| format!("{table}: {r}")));
    }
    rows
}

async fn rows_of(pool: &PgPool, backup: &str) -> i64 {
    let id: Uuid = backup.parse().unwrap();
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM backups WHERE backup_id = $1)
              + (SELECT count(*) FROM backup_snapshots WHERE backup_id = $1)
              + (SELECT count(*) FROM backup_log WHERE backup_id = $1)",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn records_of_backups_deleted_longer_ago_than_the_record_retention_are_purged() {
    let x = setup().await;
    change_settings(&x.s, &x.root, json!({"record_retention_days": 10})).await;
    let volume = x.resource("ebs_volume", "shared-data").await;
    let policy = x
        .policy(
            json!({"name": "nightly", "generations": 1}),
            &[volume_target(&volume)],
        )
        .await;
    let frozen = id_of(&x.run(&policy).await);
    let (status, body) =
        x.s.post(
            &format!("/v1/backups/{frozen}/freeze"),
            Some(&x.root),
            json!({"name": "kept-for-audit", "description": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let old = id_of(&x.run(&policy).await);
    let newest = id_of(&x.run(&policy).await);
    x.recorded_deleted(&old).await;
    project_everything(&x.s.pool).await;
    assert!(rows_of(&x.s.pool, &old).await > 2);

    let ctx = context(&x);
    let tenant = tenant_of(&x.s.pool).await;
    let now = Utc::now();
    // Nine days after the deletion the record stays.
    let report = clean_tenant(&ctx, tenant, now + chrono::Duration::days(9))
        .await
        .unwrap();
    assert_eq!(report.purged, 0, "{report:?}");
    assert_eq!(report.policies, 1);
    // Past ten days it goes, from every backup read model.
    let report = clean_tenant(&ctx, tenant, now + chrono::Duration::days(11))
        .await
        .unwrap();
    assert_eq!(report.purged, 1, "{report:?}");
    project_everything(&x.s.pool).await;
    let (status, _) = x.s.get(&format!("/v1/backups/{old}"), &x.root).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(rows_of(&x.s.pool, &old).await, 0);
    let (_, list) = x.s.get("/v1/backups", &x.root).await;
    let listed: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{list}");
    assert!(listed.contains(&newest.as_str()) && listed.contains(&frozen.as_str()));
    // The frozen backup and its objects are untouched.
    let (status, kept) = x.s.get(&format!("/v1/backups/{frozen}"), &x.root).await;
    assert_eq!(status, StatusCode::OK);
    assert!(kept["deleted_at"].is_null(), "{kept}");
    assert_eq!(x.aws_snapshots(&frozen).await.len(), 1);
    // The audit log records the purge.
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE event_type = 'RecordPurged' AND aggregate_id LIKE '%' || $1",
    )
    .bind(&old)
    .fetch_one(&x.s.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    // A second pass changes nothing.
    let again = clean_tenant(&ctx, tenant, now + chrono::Duration::days(12))
        .await
        .unwrap();
    assert_eq!(again.purged, 0);

    // Rebuilt from the event log, the read models are the same.
    project_everything(&x.s.pool).await;
    let before = backup_tables(&x.s.pool).await;
    safehold_projections::runtime::rebuild(
        &x.s.pool,
        &safehold_projections::backups::BackupsProjection,
    )
    .await
    .unwrap();
    assert_eq!(backup_tables(&x.s.pool).await, before);
    assert_eq!(rows_of(&x.s.pool, &old).await, 0);
}

#[tokio::test]
async fn the_initial_ami_is_kept_until_a_newer_one_has_completed() {
    let x = setup().await;
    let db = x.resource("ec2_instance", "db-1").await;
    let instance = id_of(&db);
    let policy = x
        .policy(
            json!({"name": "with-image", "generations": 1}),
            &[json!({"type": "ec2_instance", "region": REGION, "resource_id": instance,
                     "instance": {"mode": "snapshots_with_initial_ami", "volumes": {"select": "all"}}})],
        )
        .await;
    let amis_of = |backup: &Value| -> Vec<String> {
        backup["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "ami")
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let first = x.run(&policy).await;
    assert_eq!(first["status"], "successful", "{first}");
    let first_id = id_of(&first);
    let initial = amis_of(&first);
    assert_eq!(initial.len(), 1, "{first}");
    let initial = initial[0].clone();

    // One generation: the next backup deletes the first one's snapshots but
    // keeps its AMI, still the instance's only one.
    let second = x.run(&policy).await;
    assert_eq!(second["status"], "successful", "{second}");
    assert!(amis_of(&second).is_empty(), "{second}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let view = loop {
        let (_, view) = x.s.get(&format!("/v1/backups/{first_id}"), &x.root).await;
        if view["deleted_at"].is_string() {
            break view;
        }
        assert!(tokio::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for s in view["snapshots"].as_array().unwrap() {
        if s["kind"] == "ami" {
            assert!(s["deleted_at"].is_null(), "the AMI is kept: {view}");
        } else {
            assert!(s["deleted_at"].is_string(), "{view}");
            assert!(!snapshot_exists(&x, s["id"].as_str().unwrap()).await);
        }
    }
    assert!(image_exists(&x, &initial).await, "the initial AMI is kept");
    assert!(view["log"].as_array().unwrap().iter().any(|l| l["message"]
        .as_str()
        .unwrap()
        .starts_with(&format!("Kept {initial}"))));

    // The next backups make no new AMI: the kept one still counts.
    let third = x.run(&policy).await;
    assert_eq!(third["status"], "successful", "{third}");
    assert!(amis_of(&third).is_empty(), "no second initial AMI: {third}");
    assert!(image_exists(&x, &initial).await);
    // The daily cleanup leaves it too.
    project_everything(&x.s.pool).await;
    let ctx = context(&x);
    let tenant = tenant_of(&x.s.pool).await;
    clean_tenant(&ctx, tenant, Utc::now()).await.unwrap();
    assert!(image_exists(&x, &initial).await);
    // Its record is not purged while the AMI is kept.
    let report = clean_tenant(&ctx, tenant, Utc::now() + chrono::Duration::days(400))
        .await
        .unwrap();
    project_everything(&x.s.pool).await;
    assert_eq!(
        x.s.get(&format!("/v1/backups/{first_id}"), &x.root).await.0,
        StatusCode::OK,
        "{report:?}"
    );

    // The rotation period passes (the AMI is recorded as 91 days old): the
    // next backup makes a new initial AMI, and once it has completed the
    // old one is deleted.
    sqlx::query(
        "UPDATE backup_snapshots SET created_at = created_at - interval '91 days'
          WHERE snapshot_id = $1",
    )
    .bind(&initial)
    .execute(&x.s.pool)
    .await
    .unwrap();
    let fourth = x.run(&policy).await;
    assert_eq!(fourth["status"], "successful", "{fourth}");
    let renewed = amis_of(&fourth);
    assert_eq!(renewed.len(), 1, "{fourth}");
    let renewed = renewed[0].clone();
    assert_ne!(renewed, initial);
    project_everything(&x.s.pool).await;
    clean_tenant(&ctx, tenant, Utc::now()).await.unwrap();
    assert!(
        !image_exists(&x, &initial).await,
        "the old initial AMI is deleted"
    );
    assert!(image_exists(&x, &renewed).await, "the new one stays");
    project_everything(&x.s.pool).await;
    let (_, view) = x.s.get(&format!("/v1/backups/{first_id}"), &x.root).await;
    assert!(
        view["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["deleted_at"].is_string()),
        "{view}"
    );
}
