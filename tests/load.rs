//! Concurrency under load: two API processes' worth of servers and one
//! reconciler on one database; 500 users register and create hostings at
//! once through both APIs (retrying after `Retry-After` when an API sheds
//! bcrypt work with 503). Exactly 500 hostings, unique ports, all Ready.
//! (libvirt `test:///default`, real nginx; stand-in guests answer on every
//! port of the configured ranges.)

mod common;

use std::time::Duration;

use common::TestApp;
use hostd::app::Mode;
use hostd::domain::PortRange;
use serde_json::json;

/// Sends a request again after `Retry-After` while the API sheds load
/// (503: more bcrypt work queued than it accepts), as a client should.
async fn retrying(req: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    loop {
        let r = req().send().await.unwrap();
        if r.status() != 503 {
            return r;
        }
        let secs: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_users_through_two_apis() {
    const N: u16 = 500;
    let db = common::fresh_database().await;
    let nginx = common::TestNginx::start();
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    // Exactly N ports per kind: every one must be used once.
    config.ssh_ports = PortRange {
        start: 15000,
        end: 15000 + N - 1,
    };
    config.http_ports = PortRange {
        start: 25000,
        end: 25000 + N - 1,
    };
    let mut guests = vec![];
    for i in 0..N {
        guests.push(common::fake_guest(15000 + i, 25000 + i, "ok").await);
    }
    let mut api_config = config.clone();
    api_config.listen = "127.0.0.1:0".parse().unwrap();
    // One process runs API + reconciler, the other only an API.
    let a = TestApp::spawn_with(config, Mode::All, true, Some(nginx), state).await;
    let b = TestApp::spawn_with(
        api_config,
        Mode::Api,
        false,
        None,
        tempfile::tempdir().unwrap(),
    )
    .await;
    let urls = [a.url(""), b.url("")];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N as usize {
        let (c, base, other) = (
            client.clone(),
            urls[i % 2].clone(),
            urls[(i + 1) % 2].clone(),
        );
        set.spawn(async move {
            let name = format!("load{i}");
            let body = json!({"email": format!("{name}@example.com"), "username": name, "password": "correct horse"});
            let r = retrying(|| c.post(format!("{base}/api/v1/auth/register")).json(&body)).await;
            assert_eq!(r.status(), 201);
            let form = [("username", name.as_str()), ("password", "correct horse")];
            let t: serde_json::Value = retrying(|| c.post(format!("{base}/api/v1/auth/login")).form(&form))
                .await
                .json()
                .await
                .unwrap();
            let token = t["access_token"].as_str().unwrap().to_string();
            // Create twice, once through each API: exactly one must win.
            let r1 = c.post(format!("{base}/api/v1/host")).bearer_auth(&token).send().await.unwrap().status().as_u16();
            let r2 = c.post(format!("{other}/api/v1/host")).bearer_auth(&token).send().await.unwrap().status().as_u16();
            (r1, r2)
        });
    }
    let mut created = 0;
    while let Some(r) = set.join_next().await {
        let (r1, r2) = r.unwrap();
        assert_eq!((r1, r2), (202, 409));
        created += 1;
    }
    assert_eq!(created, N as usize);
    let store = a.store.clone();
    let all_ready = common::eventually(Duration::from_secs(240), || {
        let store = store.clone();
        async move {
            let (n,): (i64,) =
                sqlx::query_as("select count(*) from hosting_status where phase = 'Ready'")
                    .fetch_one(&store.db())
                    .await
                    .unwrap();
            (n == N as i64).then_some(())
        }
    })
    .await;
    let (hostings,): (i64,) = sqlx::query_as("select count(*) from hostings")
        .fetch_one(&a.store.db())
        .await
        .unwrap();
    assert_eq!(hostings, N as i64, "exactly one hosting per user");
    assert!(all_ready.is_some(), "not all hostings became Ready");
    let ports = a.store.list_ports().await.unwrap();
    let unique: std::collections::HashSet<u16> = ports.iter().map(|p| p.0).collect();
    assert_eq!(ports.len(), 2 * N as usize);
    assert_eq!(unique.len(), 2 * N as usize, "ports are unique");
    let errors = a.controller.as_ref().unwrap().ctx.metrics.failures_total();
    assert_eq!(errors, 0);
    b.stop().await;
    a.stop().await;
    drop(guests);
}
