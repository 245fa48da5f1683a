//! API benchmark (run by `scripts/bench-api.sh`): `GET /api/v1/health` and
//! `GET /api/v1/host/my` latency percentiles while 100 logins (bcrypt cost
//! 12) arrive at once and keep coming (the bcrypt gate bounds the work; what
//! it sheds is answered 503 and retried), then `GET /api/v1/host/my` requests
//! per second. Prints numbers; asserts nothing. Needs Redis (bench-api.sh
//! starts it).

use std::time::{Duration, Instant};

use hostd::app::{Application, Mode};
use hostd::shutdown::Shutdown;

#[tokio::main]
async fn main() {
    let admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://hostd:hostd@127.0.0.1:5432/postgres".into());
    let name = format!("hostd_bench_{}", uuid::Uuid::new_v4().simple());
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&admin).await.expect("postgres");
        sqlx::query(&format!("create database {name}"))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let db = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let state = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&state).unwrap();
    std::env::set_var("DATABASE_URL", &db);
    std::env::set_var("HOSTD_JWT_SECRET", "bench-secret-bench-secret-bench-secret");
    std::env::set_var("HOSTD_LISTEN", "127.0.0.1:0");
    std::env::set_var("HOSTD_LIBVIRT_URI", "test:///default");
    std::env::set_var("HOSTD_STATE_DIR", &state);
    let (config, _) = hostd::config::Config::from_env(false).unwrap();
    let cost = config.bcrypt_cost;
    let app = Application::build(config, Mode::Api).await.unwrap();
    let base = format!("http://{}", app.addr().unwrap());
    let sd = Shutdown::default();
    let sd2 = sd.clone();
    let server = tokio::spawn(async move { app.run_until_stopped(sd2).await.unwrap() });
    let c = reqwest::Client::new();
    c.post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"email": "b@example.com", "username": "bench", "password": "bench-password"}))
        .send()
        .await
        .unwrap();

    let tok: serde_json::Value = c
        .post(format!("{base}/api/v1/auth/login"))
        .form(&[("username", "bench"), ("password", "bench-password")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tok = tok["access_token"].as_str().unwrap().to_string();
    c.post(format!("{base}/api/v1/host"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();

    // 100 concurrent logins, repeated, while health and host/my are sampled.
    let shed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut logins = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let shed = shed.clone();
        let (c, base, stop) = (c.clone(), base.clone(), stop.clone());
        logins.spawn(async move {
            let mut lat = vec![];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = c
                    .post(format!("{base}/api/v1/auth/login"))
                    .form(&[("username", "bench"), ("password", "bench-password")])
                    .send()
                    .await
                    .unwrap();
                if r.status() == 503 {
                    shed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                assert!(r.status().is_success(), "{}", r.status());
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let (mut health, mut mine) = (vec![], vec![]);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let t = Instant::now();
        c.get(format!("{base}/api/v1/health")).send().await.unwrap();
        health.push(t.elapsed());
        let t = Instant::now();
        let r = c
            .get(format!("{base}/api/v1/host/my"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        mine.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut login_lat = vec![];
    while let Some(l) = logins.join_next().await {
        login_lat.extend(l.unwrap());
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0
    };
    println!(
        "bcrypt cost {cost}, 100 concurrent logins for 10 s on {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "  GET /api/v1/health: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        health.len(),
        pct(&mut health, 0.5),
        pct(&mut health, 0.99),
        pct(&mut health, 1.0)
    );
    println!(
        "  GET /api/v1/host/my: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        mine.len(),
        pct(&mut mine, 0.5),
        pct(&mut mine, 0.99),
        pct(&mut mine, 1.0)
    );
    println!(
        "  POST /api/v1/auth/login: n={} p50={:.0} ms p99={:.0} ms; shed with 503: {}",
        login_lat.len(),
        pct(&mut login_lat, 0.5),
        pct(&mut login_lat, 0.99),
        shed.load(std::sync::atomic::Ordering::Relaxed)
    );

    // GET /host/my throughput with 16 concurrent clients.
    let mut set = tokio::task::JoinSet::new();
    let dur = Duration::from_secs(10);
    for _ in 0..16 {
        let (c, base, tok) = (c.clone(), base.clone(), tok.clone());
        set.spawn(async move {
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed() < dur {
                let r = c
                    .get(format!("{base}/api/v1/host/my"))
                    .bearer_auth(&tok)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                n += 1;
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = set.join_next().await {
        total += n.unwrap();
    }
    println!(
        "  GET /api/v1/host/my: {:.0} requests/s (16 clients, 10 s)",
        total as f64 / dur.as_secs_f64()
    );
    sd.cancel();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&state);
}
