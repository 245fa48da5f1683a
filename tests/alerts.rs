//! The alert rules (`deploy/prometheus/hostd-rules.yml`) read series hostd
//! really exports, with the meaning they assume: after a resync, every
//! `hostd_*` name in a rule's expression is in `/metrics`, and the gauges
//! say what the database and the host say (an overdue backup, the first
//! certificate to expire, the nodes, the disk). `promtool test rules`
//! checks the rules' logic (scripts/lint-deploy.sh).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::TestApp;
use hostd::app::Mode;

/// Every `hostd_…` metric name in the rules' expressions.
fn names_in_rules() -> BTreeSet<String> {
    let text = std::fs::read_to_string("deploy/prometheus/hostd-rules.yml").unwrap();
    let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let mut names = BTreeSet::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("hostd_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    names
}

/// The value of the series `series` (name and labels, as exported).
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn every_series_the_alert_rules_read_is_exported_with_its_meaning() {
    let db = common::fresh_database().await;
    let nginx = common::TestNginx::start();
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.backups.interval = Some(Duration::from_secs(24 * 3600));
    let app = TestApp::spawn_with(config, Mode::All, false, Some(nginx), state).await;
    let ctl = app.controller.clone().unwrap();
    let admin = app.admin("root").await;
    // Two hostings with disks: one created three days ago and never backed
    // up (overdue: more than twice the 24 h interval), one new.
    let (_, _, old) = common::create_hosting(&app, "alice").await;
    let (_, _, new) = common::create_hosting(&app, "bob").await;
    for id in [old, new] {
        ctl.reconcile_once(id).await.unwrap();
    }
    let db = app.store.db();
    sqlx::query("update hostings set created_at = now() - interval '3 days' where id = $1")
        .bind(old.0)
        .execute(&db)
        .await
        .unwrap();
    // Two served certificates; the first expires in 10 days.
    let soon = chrono::Utc::now() + chrono::Duration::days(10);
    for (name, at) in [
        ("a.example.net", soon),
        ("b.example.net", soon + chrono::Duration::days(30)),
    ] {
        sqlx::query("insert into certificates (name, state, not_after) values ($1, 'Ready', $2)")
            .bind(name)
            .bind(at)
            .execute(&db)
            .await
            .unwrap();
    }
    // A Failed one with an older date does not count.
    sqlx::query("insert into certificates (name, state, not_after) values ('c.example.net', 'Failed', now())")
        .execute(&db)
        .await
        .unwrap();
    let q = hostd::reconciler::queue::WorkQueue::default();
    hostd::reconciler::resync::resync(&ctl.ctx, &q)
        .await
        .unwrap();

    let metrics = app.scrape(&admin).await;
    let names = names_in_rules();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        // A sample, or (a labelled family with no series yet, e.g. no
        // failure so far) its declaration.
        let base = name.strip_suffix("_total").unwrap_or(name);
        let exported = metrics.lines().any(|l| {
            l.strip_prefix(name.as_str())
                .is_some_and(|t| t.starts_with([' ', '{']))
        }) || metrics.contains(&format!("# TYPE {base} "));
        assert!(
            exported,
            "a rule reads {name}, which /metrics does not export:\n{metrics}"
        );
    }
    assert_eq!(
        value(&metrics, "hostd_backups_overdue"),
        Some(1.0),
        "{metrics}"
    );
    let expiry = value(
        &metrics,
        "hostd_certificate_earliest_expiry_timestamp_seconds",
    );
    assert_eq!(expiry, Some(soon.timestamp() as f64));
    assert_eq!(
        value(&metrics, "hostd_node_ready{node=\"local\"}"),
        Some(1.0)
    );
    let reserve = value(&metrics, "hostd_disk_reserve_bytes").unwrap();
    assert_eq!(reserve, app.config.disk_reserve_bytes as f64);
    let free = value(&metrics, "hostd_state_disk_free_bytes").unwrap();
    let actual = hostd::reconciler::space::free_bytes(&app.config.state_dir).unwrap() as f64;
    assert!(
        (free - actual).abs() < 512.0 * 1024.0 * 1024.0,
        "{free} vs {actual}"
    );
    assert_eq!(value(&metrics, "hostd_guest_isolation_missing"), Some(0.0));
    assert_eq!(
        value(&metrics, "hostd_reconciler_leader"),
        Some(0.0),
        "no lease: a manual test app"
    );

    // Backed up since: nothing is overdue.
    sqlx::query(
        "insert into backups (id, hosting_id, trigger, state, completed_at) \
         values (gen_random_uuid(), $1, 'Manual', 'Completed', now())",
    )
    .bind(old.0)
    .execute(&db)
    .await
    .unwrap();
    hostd::reconciler::resync::resync(&ctl.ctx, &q)
        .await
        .unwrap();
    let metrics = app.scrape(&admin).await;
    assert_eq!(
        value(&metrics, "hostd_backups_overdue"),
        Some(0.0),
        "{metrics}"
    );
    app.stop().await;
}
