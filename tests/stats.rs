//! Per-hosting statistics with libvirt's test driver and a real nginx:
//! a round samples the guest's counters from libvirt and the requests the
//! host nginx served from its site log; the tenant's stats endpoint shows
//! them; the bytes sent become egress usage; downsampling keeps totals;
//! per-hosting series appear on `/metrics` only when asked for.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::reconciler::ready_manual;
use common::TestApp;
use hostd::reconciler::stats::sample;
use hostd::store::samples::{HttpCounts, Sample};
use serde_json::Value;

#[tokio::test]
async fn a_round_samples_libvirt_and_the_site_log_and_the_tenant_sees_it() {
    let nginx = common::TestNginx::start();
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.stats.per_hosting_metrics = true;
    let app = TestApp::spawn_with(config, hostd::app::Mode::All, false, Some(nginx), state).await;
    let ctl = app.controller.clone().unwrap();
    let admin = app.admin("root").await;
    let (token, id, _guest) = ready_manual(&app, &ctl, "stella").await;
    let (_, me) = app.get_json(&token, "/api/v1/auth/me").await;
    let uid = me["id"].as_str().unwrap().to_string();

    // The first round only sees where the counters are.
    let r = sample(&ctl.ctx).await.unwrap();
    assert_eq!(r.hostings, 1, "{r:?}");
    // Seven requests through the host nginx (the reconciler's readiness
    // probe, also through it, is left out of the site log).
    let site = app.nginx.as_ref().unwrap().url(&format!("/{uid}/"));
    // Right after the reload that routed the site, an old nginx worker may
    // still take a connection (and answer 404): wait until three requests
    // in a row are served, as the probe (left out of the site log).
    let probe = reqwest::Client::builder()
        .user_agent(hostd::drivers::probe::USER_AGENT)
        .build()
        .unwrap();
    let mut served = 0;
    for _ in 0..100 {
        let ok = probe
            .get(&site)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        served = if ok { served + 1 } else { 0 };
        if served == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, 3, "the site is served");
    let client = reqwest::Client::new();
    let mut sent = 0;
    for _ in 0..7 {
        let r = client.get(&site).send().await.unwrap();
        assert_eq!(r.status(), 200);
        sent += 1;
    }
    // nginx flushes the site log's buffer every 5 s.
    tokio::time::sleep(Duration::from_millis(5600)).await;
    let r = sample(&ctl.ctx).await.unwrap();
    assert_eq!(r.hostings, 1);

    let (s, v) = app.get_json(&token, "/api/v1/host/my/stats?range=1h").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["range"], "1h");
    let points = v["points"].as_array().unwrap();
    let requests: f64 = points
        .iter()
        .map(|p| p["requests_per_s"].as_f64().unwrap_or(0.0) * p["seconds"].as_f64().unwrap())
        .sum();
    assert!(
        (requests - sent as f64).abs() < 1e-6,
        "{requests} requests in {v}"
    );
    let status: i64 = points
        .iter()
        .filter_map(|p| p["status"].as_array())
        .map(|s| s[0].as_i64().unwrap())
        .sum();
    assert_eq!(status, sent, "{v}");
    let last = points.last().unwrap();
    assert!(
        last["cpu_percent"].as_f64().is_some(),
        "the second round has a CPU delta: {v}"
    );
    assert!(last["memory_bytes"].as_f64().unwrap() > 0.0, "{v}");
    let http_bytes: f64 = points
        .iter()
        .map(|p| p["http_bytes_per_s"].as_f64().unwrap_or(0.0) * p["seconds"].as_f64().unwrap())
        .sum();
    assert!(http_bytes > 0.0);

    // The bytes sent are the hosting's egress usage for this hour.
    let from = (Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    let r = app
        .client
        .get(app.url("/api/v1/host/my/usage"))
        .query(&[("from", from.as_str())])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let u: Value = r.json().await.unwrap();
    assert!(
        (u["totals"]["egress_bytes"].as_f64().unwrap() - http_bytes).abs() < 1.0,
        "{u} vs {http_bytes}"
    );

    // Per-hosting series, asked for here.
    let m = app.scrape(&admin).await;
    let series = format!("hostd_hosting_http_requests_total{{hosting=\"{id}\"}} {sent}");
    assert!(m.contains(&series), "{series} not in /metrics");
    assert!(m.contains(&format!("hostd_hosting_memory_bytes{{hosting=\"{id}\"}}")));

    // The dashboard draws it: six graphs, the requests one with a line
    // and its newest value, no script.
    let session = common::web::web_login(&app, &common::web::client(), "stella").await;
    let html = common::web::page(&app, &session, "/ui/stats?range=1h").await;
    for g in ["cpu", "memory", "disk", "network", "requests", "traffic"] {
        assert!(
            html.contains(&format!("id=\"graph-{g}\"")),
            "graph {g} missing"
        );
    }
    let requests = &html[html.find("id=\"graph-requests\"").unwrap()..];
    let requests = &requests[..requests.find("</figure>").unwrap()];
    assert!(
        requests.contains("<polyline class=\"s1\" points=\""),
        "{requests}"
    );
    assert!(requests.contains("/s</span>"), "{requests}");
    assert!(
        !requests.contains("<script") && requests.contains("<svg "),
        "drawn as SVG, no script"
    );
    assert!(html.contains("Usage this month"));
    let html = common::web::page(&app, &session, "/ui/stats?range=30d").await;
    assert!(html.contains("<strong>30d</strong>"));

    // Ranges: the others answer, an unknown one is a 400.
    for r in ["24h", "30d"] {
        let (s, v) = app
            .get_json(&token, &format!("/api/v1/host/my/stats?range={r}"))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["range"], r);
    }
    let (s, _) = app.get_json(&token, "/api/v1/host/my/stats?range=1y").await;
    assert_eq!(s, 400);
    app.stop().await;
}

#[tokio::test]
async fn without_the_opt_in_metrics_carry_no_per_hosting_series() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let admin = app.admin("root").await;
    let (_t, _id, _guest) = ready_manual(&app, &ctl, "quiet").await;
    sample(&ctl.ctx).await.unwrap();
    sample(&ctl.ctx).await.unwrap();
    let m = app.scrape(&admin).await;
    assert!(m.contains("hostd_stats_rounds_total 2"), "rounds counted");
    assert!(
        !m.lines()
            .any(|l| l.starts_with("hostd_hosting_") && l.contains("hosting=")),
        "a per-hosting series without HOSTD_METRICS_PER_HOSTING"
    );
    app.stop().await;
}

/// Raw samples older than a day become 5-minute buckets, those older than
/// 30 days hourly ones, those older than a year go; the totals a graph
/// reads stay the same.
#[tokio::test]
async fn downsampling_keeps_totals_and_bounds_the_table() {
    let app = TestApp::manual().await;
    let (_, _, id) = common::create_hosting(&app, "olivia").await;
    let now = Utc::now();
    let mut samples = vec![];
    // Two days of 15-second samples, 1 s of CPU and 10 requests each, at
    // 40 days ago and 2 days ago, plus one 400 days ago.
    for base in [chrono::Duration::days(40), chrono::Duration::days(2)] {
        for i in 0..(2 * 24 * 240) {
            samples.push(Sample {
                hosting: id,
                at: now - base + chrono::Duration::seconds(15 * i),
                seconds: 15.0,
                cpu_ns: Some(1_000_000_000),
                memory_bytes: Some(512 << 20),
                disk_read: Some(0),
                disk_write: Some(4096),
                disk_alloc_bytes: Some(1 << 30),
                net_rx: None,
                net_tx: None,
                http: Some(HttpCounts {
                    requests: 10,
                    bytes: 1000,
                    s2xx: 9,
                    s3xx: 0,
                    s4xx: 1,
                    s5xx: 0,
                }),
            });
        }
    }
    samples.push(Sample {
        at: now - chrono::Duration::days(400),
        ..samples[0].clone()
    });
    for chunk in samples.chunks(5000) {
        app.store.insert_samples(chunk).await.unwrap();
    }
    let total = |pts: &[hostd::store::samples::Point]| {
        let cpu: f64 = pts
            .iter()
            .map(|p| p.cpu_percent.unwrap() / 100.0 * p.seconds)
            .sum();
        let req: f64 = pts
            .iter()
            .map(|p| p.requests_per_s.unwrap() * p.seconds)
            .sum();
        (cpu.round(), req.round())
    };
    let since = now - chrono::Duration::days(365);
    let before = app.store.sample_points(id, since, 3600).await.unwrap();
    let (rows_before, bytes_before) = app.store.samples_size().await.unwrap();
    let moved = app.store.downsample(now).await.unwrap();
    let after = app.store.sample_points(id, since, 3600).await.unwrap();
    let (rows_after, bytes_after) = app.store.samples_size().await.unwrap();
    println!(
        "downsampling: {rows_before} rows ({bytes_before} bytes) -> {rows_after} rows ({bytes_after} bytes), {moved} moved"
    );
    assert_eq!(total(&before), total(&after));
    assert_eq!(
        total(&after),
        (2.0 * 2.0 * 24.0 * 240.0, 10.0 * 2.0 * 2.0 * 24.0 * 240.0)
    );
    // Memory averages survive the merge.
    assert!(after
        .iter()
        .all(|p| p.memory_bytes == Some((512u64 << 20) as f64)));
    // What is left: a day of raw samples (or less), 5-minute buckets up to
    // 30 days back, hourly ones before; the one 400 days old is gone.
    let by_res: Vec<(i32, i64)> =
        sqlx::query_as("select resolution, count(*) from hosting_samples group by 1 order by 1")
            .fetch_all(&app.store.db())
            .await
            .unwrap();
    let raw = by_res.iter().find(|r| r.0 == 0).map_or(0, |r| r.1);
    assert!(raw <= 5760 + 1, "{by_res:?}");
    assert!(
        by_res.iter().any(|r| r.0 == 300) && by_res.iter().any(|r| r.0 == 3600),
        "{by_res:?}"
    );
    let oldest: chrono::DateTime<Utc> = sqlx::query_scalar("select min(at) from hosting_samples")
        .fetch_one(&app.store.db())
        .await
        .unwrap();
    assert!(oldest > now - chrono::Duration::days(365));
    // Again: nothing more to move, nothing changes.
    let again = app.store.sample_points(id, since, 3600).await.unwrap();
    app.store.downsample(now).await.unwrap();
    assert_eq!(
        total(&again),
        total(&app.store.sample_points(id, since, 3600).await.unwrap())
    );
    app.stop().await;
}
