//! Usage records: a scripted timeline (create with 2 vCPUs, run 90 s,
//! resize to 1 vCPU, run 60 s, stop 30 s, delete) played on a stopped clock
//! with libvirt's test driver gives exactly 240 vCPU-seconds and the
//! matching memory and disk figures, also when reconcilers are cut short
//! between each state change and its record and replaced by fresh ones; the
//! records never overlap; the tenant's and the admin's views agree; prices
//! turn them into charges. Real Postgres and nginx.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{fake_guest, settle, settle_stopped, TestApp};
use hostd::domain::{HostingId, Phase};
use hostd::reconciler::{Action, Context, Controller};
use serde_json::{json, Value};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 10, 0, 0).unwrap()
}

/// A fresh reconciler on the app's database, hypervisor and nginx (a
/// restarted process: it remembers nothing), failing at `faults`.
async fn reconciler(app: &TestApp, faults: &str) -> Arc<Controller> {
    let base = app.controller.as_ref().unwrap();
    let mut config = app.config.clone();
    config.faults = hostd::faults::Faults::parse(faults).unwrap();
    let ctx = Context::new(
        app.store.clone(),
        base.ctx.vm.clone(),
        base.ctx.proxy.clone(),
        config,
        app.store.installation_id().await.unwrap(),
        base.ctx.metrics.clone(),
    )
    .unwrap();
    Arc::new(Controller::new(ctx))
}

async fn patch(app: &TestApp, token: &str, body: Value) {
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{body}");
}

/// Lets reconcilers cut short at every point of `cuts` try the change
/// first (each pass gets further, then fails before its record), then a
/// fresh one finish it. No time passes meanwhile: the records must come
/// out as if nothing had failed.
async fn cut_short(app: &TestApp, id: HostingId, cuts: &str) -> Arc<Controller> {
    if !cuts.is_empty() {
        let mut failed = 0;
        for _ in 0..40 {
            let faulty = reconciler(app, cuts).await;
            match faulty.reconcile_once(id).await {
                Err(_) => failed += 1,
                Ok(Action::Gone) => break,
                // A route batch being applied: give it a moment.
                Ok(Action::Requeue(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(_) => {}
            }
            if failed == 4 {
                break;
            }
        }
        assert!(failed > 0, "no pass met a fault point of {cuts}");
    }
    reconciler(app, "").await
}

/// Plays the timeline; returns the tenant's token and the hosting.
async fn timeline(app: &TestApp, cuts: &str) -> (String, HostingId, i64, i64) {
    let store = &app.store;
    store.set_clock(Some(t0()));
    let (token, _) = app.user("tina").await;
    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&token)
        .json(&json!({"vcpus": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let h: Value = r.json().await.unwrap();
    let id = HostingId(h["id"].as_str().unwrap().parse().unwrap());
    let ctl = app.controller.clone().unwrap();
    ctl.reconcile_once(id).await.unwrap();
    let rec = store.get_record(id).await.unwrap().unwrap();
    let _guest = fake_guest(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "ok",
    )
    .await;
    assert_eq!(settle(&ctl, id).await, Action::AwaitChange);
    assert_eq!(phase(app, id).await, Phase::Ready);
    let (mem, disk) = (
        i64::from(rec.spec.memory_mib.get()),
        i64::from(rec.spec.disk_gib.get()),
    );

    // Half-way through the first run, the reconciler is replaced.
    store.advance(Duration::from_secs(45));
    let ctl = reconciler(app, "").await;
    assert_eq!(settle(&ctl, id).await, Action::AwaitChange);
    store.advance(Duration::from_secs(45));

    // Resize to 1 vCPU: a restart.
    patch(app, &token, json!({"vcpus": 1})).await;
    let ctl = cut_short(app, id, cuts).await;
    assert_eq!(settle(&ctl, id).await, Action::AwaitChange);
    let rec = store.get_record(id).await.unwrap().unwrap();
    assert_eq!(
        (rec.status.phase, rec.status.observed_generation),
        (Phase::Ready, rec.generation)
    );
    store.advance(Duration::from_secs(60));

    // Stop.
    patch(app, &token, json!({"running": false})).await;
    let ctl = cut_short(app, id, cuts).await;
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    store.advance(Duration::from_secs(30));

    // Delete.
    let r = app
        .client
        .delete(app.url("/api/v1/host/my"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ctl = cut_short(app, id, cuts).await;
    for _ in 0..10 {
        if ctl.reconcile_once(id).await.unwrap() == Action::Gone {
            break;
        }
    }
    assert!(store.get_record(id).await.unwrap().is_none(), "deleted");
    (token, id, mem, disk)
}

async fn phase(app: &TestApp, id: HostingId) -> Phase {
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    rec.status.phase
}

/// Checks the records the timeline must leave, through the tenant's API.
async fn check(app: &TestApp, token: &str, id: HostingId, mem: i64, disk: i64) {
    let from = (t0() - chrono::Duration::hours(1)).to_rfc3339();
    let to = (t0() + chrono::Duration::hours(1)).to_rfc3339();
    let r = app
        .client
        .get(app.url("/api/v1/host/my/usage"))
        .query(&[("from", &from), ("to", &to)])
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let u: Value = r.json().await.unwrap();
    let totals = &u["totals"];
    println!("usage totals: {totals}");
    let near = |k: &str, want: f64| {
        let got = totals[k].as_f64().unwrap();
        assert!((got - want).abs() < 1e-6, "{k}: {got}, want {want}");
    };
    near("vcpu_seconds", 240.0);
    near("memory_mib_seconds", (mem * 150) as f64);
    near("disk_gib_seconds", (disk * 180) as f64);
    near("backup_gib_seconds", 0.0);
    // The spans themselves: 2 vCPUs for 90 s, then 1 for 60 s; memory for
    // the 150 s the guest ran; disk for all 180 s; nothing open.
    let spans: Vec<(String, f64, i64, i64)> = u["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let at = |k: &str| {
                let t: DateTime<Utc> = s[k].as_str().expect("closed").parse().unwrap();
                (t - t0()).num_seconds()
            };
            assert_eq!(s["hosting_id"].as_str().unwrap(), id.to_string());
            (
                s["kind"].as_str().unwrap().to_string(),
                s["quantity"].as_f64().unwrap(),
                at("start"),
                at("end"),
            )
        })
        .collect();
    let want = vec![
        ("disk_gib".to_string(), disk as f64, 0, 180),
        ("memory_mib".to_string(), mem as f64, 0, 150),
        ("vcpu".to_string(), 2.0, 0, 90),
        ("vcpu".to_string(), 1.0, 90, 150),
    ];
    assert_eq!(spans, want);
}

#[tokio::test]
async fn the_timeline_gives_exactly_240_vcpu_seconds_and_prices_make_charges() {
    let app = TestApp::manual().await;
    let (token, id, mem, disk) = timeline(&app, "").await;
    check(&app, &token, id, mem, disk).await;

    // Prices: 0.036 EUR per vCPU-hour, doubled from 100 s into the run.
    let admin = app.admin("root").await;
    let rate = |price: f64, from: DateTime<Utc>| {
        app.client
            .post(app.url("/api/v1/admin/rates"))
            .bearer_auth(&admin)
            .json(&json!({"kind": "vcpu", "price": price, "currency": "EUR", "from": from.to_rfc3339()}))
            .send()
    };
    assert_eq!(
        rate(0.036, t0() - chrono::Duration::days(1))
            .await
            .unwrap()
            .status(),
        201
    );
    let charge = |token: String| {
        let app = &app;
        async move {
            let u: Value = app
                .client
                .get(app.url("/api/v1/host/my/usage"))
                .query(&[
                    ("from", "2026-11-01T00:00:00Z"),
                    ("to", "2026-11-03T00:00:00Z"),
                ])
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            u["totals"]["charges"]["EUR"].as_f64().unwrap()
        }
    };
    let eur = charge(token.clone()).await;
    assert!((eur - 240.0 * 0.036 / 3600.0).abs() < 1e-9, "{eur}");
    assert_eq!(
        rate(0.072, t0() + chrono::Duration::seconds(100))
            .await
            .unwrap()
            .status(),
        201
    );
    let eur = charge(token.clone()).await;
    let want = (2.0 * 90.0 + 10.0) * 0.036 / 3600.0 + 50.0 * 0.072 / 3600.0;
    assert!((eur - want).abs() < 1e-9, "{eur}, want {want}");
    // A malformed price changes nothing.
    for bad in [
        json!({"kind": "gpu", "price": 1, "currency": "EUR"}),
        json!({"kind": "vcpu", "price": -1, "currency": "EUR"}),
        json!({"kind": "vcpu", "price": 1, "currency": "euro"}),
    ] {
        let r = app
            .client
            .post(app.url("/api/v1/admin/rates"))
            .bearer_auth(&admin)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{bad}");
    }
    let (_, rates) = app.get_json(&admin, "/api/v1/admin/rates").await;
    assert_eq!(rates.as_array().unwrap().len(), 2, "{rates}");

    // The admin's export: the same four records, named by owner.
    let csv_url = "/api/v1/admin/usage.csv?from=2026-11-01T00:00:00Z&to=2026-11-03T00:00:00Z";
    let r = app
        .client
        .get(app.url(csv_url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.split(',').nth(1) == Some("tina")),
        "{csv}"
    );
    let vcpu: f64 = lines[1..]
        .iter()
        .filter(|l| l.split(',').nth(3) == Some("vcpu"))
        .map(|l| l.split(',').nth(8).unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(vcpu, 240.0, "{csv}");
    // Only for admins; a bad range is a 400 that says why.
    let r = app
        .client
        .get(app.url(csv_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for q in [
        "from=yesterday",
        "from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z",
        "until=x",
    ] {
        let r = app
            .client
            .get(app.url(&format!("/api/v1/host/my/usage?{q}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].is_object() || e["error"].is_string(), "{e}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_timeline_gives_the_same_records_with_reconcilers_cut_short_at_every_change() {
    let app = TestApp::manual().await;
    let cuts = "after_restart_destroy:error,after_start:error,before_status_write:error,\
                after_domain_destroy:error,after_release_ports:error";
    let (token, id, mem, disk) = timeline(&app, cuts).await;
    check(&app, &token, id, mem, disk).await;
    app.stop().await;
}

/// Spans of one kind of one hosting never overlap, however they are
/// written: the database refuses it.
#[tokio::test]
async fn overlapping_records_are_refused_by_the_database() {
    let app = TestApp::api().await;
    let (_, _, id) = common::create_hosting(&app, "olga").await;
    let id = id.0;
    let db = app.store.db();
    let insert = |from: &str, to: Option<&str>| {
        let to = to.map(String::from);
        let from = from.to_string();
        let db = db.clone();
        async move {
            sqlx::query(
                "insert into usage (hosting_id, owner_id, kind, quantity, period) \
                 values ($1, $1, 'vcpu', 1, tstzrange($2::timestamptz, $3::timestamptz, '[)'))",
            )
            .bind(id)
            .bind(from)
            .bind(to)
            .execute(&db)
            .await
        }
    };
    insert("2026-11-02T10:00:00Z", None).await.unwrap();
    let second_open = insert("2026-11-02T11:00:00Z", None).await;
    assert!(second_open.is_err(), "a second open span was stored");
    let inside = insert("2026-11-01T10:00:00Z", Some("2026-11-02T10:00:01Z")).await;
    assert!(inside.is_err(), "an overlapping span was stored");
    insert("2026-11-01T10:00:00Z", Some("2026-11-02T10:00:00Z"))
        .await
        .expect("one that ends where the next starts");
    app.stop().await;
}

/// Through the status write: a quantity change closes one span and opens
/// the next at the same instant; the same quantity written again changes
/// nothing; a clock that went back never makes spans overlap.
#[tokio::test]
async fn status_writes_open_and_close_spans_idempotently() {
    let app = TestApp::manual().await;
    let store = &app.store;
    let (_, _, id) = common::create_hosting(&app, "sam").await;
    let mut rec = store.get_record(id).await.unwrap().unwrap();
    store.set_clock(Some(t0()));
    rec.status.meter.vcpus = Some(2);
    store.write_status(id, &rec.status).await.unwrap();
    store.advance(Duration::from_secs(10));
    store.write_status(id, &rec.status).await.unwrap();
    store.advance(Duration::from_secs(10));
    rec.status.meter.vcpus = Some(1);
    store.write_status(id, &rec.status).await.unwrap();
    // A clock 1 h behind (another process's): the next span starts where
    // the last ended, not before.
    store.set_clock(Some(t0() - chrono::Duration::hours(1)));
    rec.status.meter.vcpus = Some(3);
    store.write_status(id, &rec.status).await.unwrap();
    let rows: Vec<(f64, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "select quantity::float8, lower(period), upper(period) from usage where hosting_id = $1 \
         and kind = 'vcpu' order by lower(period)",
    )
    .bind(id.0)
    .fetch_all(&store.db())
    .await
    .unwrap();
    let s = |n| t0() + chrono::Duration::seconds(n);
    assert_eq!(rows[0], (2.0, s(0), Some(s(20))));
    assert_eq!(
        rows.len(),
        2,
        "the span of 1 vCPU written at an earlier time is empty: {rows:?}"
    );
    assert_eq!(rows[1], (3.0, s(20), None));
    app.stop().await;
}

/// Backups: a Completed backup opens a backup_gib span of its size, a
/// second one changes it to their total, deleting them ends it (by the
/// trigger on `backups`, in the transaction that changes them).
#[tokio::test]
async fn completed_backups_are_metered_in_gib() {
    let app = TestApp::api().await;
    let (_, _, id) = common::create_hosting(&app, "bert").await;
    let db = app.store.db();
    let add = |size: i64| {
        let db = db.clone();
        async move {
            sqlx::query(
                "insert into backups (id, hosting_id, trigger, state, completed_at, size_bytes) \
                 values (gen_random_uuid(), $1, 'Manual', 'Completed', now(), $2)",
            )
            .bind(id.0)
            .bind(size)
            .execute(&db)
            .await
            .unwrap();
        }
    };
    let open = || async {
        app.store
            .open_usage()
            .await
            .unwrap()
            .into_iter()
            .filter(|(h, k, _)| *h == id.0 && k == "backup_gib")
            .map(|(_, _, q)| q)
            .collect::<Vec<f64>>()
    };
    add(1 << 30).await;
    assert_eq!(open().await, vec![1.0]);
    add(1 << 29).await;
    assert_eq!(open().await, vec![1.5]);
    sqlx::query("delete from backups where hosting_id = $1")
        .bind(id.0)
        .execute(&db)
        .await
        .unwrap();
    assert!(open().await.is_empty());
    let spans: i64 = sqlx::query_scalar(
        "select count(*) from usage where hosting_id = $1 and kind = 'backup_gib'",
    )
    .bind(id.0)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(spans >= 1, "the closed spans stay for the bill");
    app.stop().await;
}

/// Egress: each round's bytes add to the hosting's row of that clock hour
/// (one row per hour, never overlapping); an unknown hosting's are left out.
#[tokio::test]
async fn egress_adds_up_per_clock_hour() {
    let app = TestApp::api().await;
    let (t, _, id) = common::create_hosting(&app, "egon").await;
    let at = |m: i64| t0() + chrono::Duration::minutes(m);
    app.store.add_egress(&[(id.0, 1000)], at(5)).await.unwrap();
    app.store
        .add_egress(&[(id.0, 500), (uuid::Uuid::new_v4(), 7)], at(50))
        .await
        .unwrap();
    app.store.add_egress(&[(id.0, 0)], at(55)).await.unwrap();
    app.store.add_egress(&[(id.0, 20)], at(65)).await.unwrap();
    let rows: Vec<(f64, DateTime<Utc>)> = sqlx::query_as(
        "select quantity::float8, lower(period) from usage where kind = 'egress_bytes' order by 2",
    )
    .fetch_all(&app.store.db())
    .await
    .unwrap();
    assert_eq!(rows, vec![(1500.0, at(0)), (20.0, at(60))]);
    let u: Value = app
        .client
        .get(app.url("/api/v1/host/my/usage"))
        .query(&[("from", at(0).to_rfc3339()), ("to", at(60).to_rfc3339())])
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(u["totals"]["egress_bytes"], 1500.0, "{u}");
    app.stop().await;
}
