//! Warm pool tests: real Postgres, a real nginx binary, libvirt's
//! `test:///default` driver, stand-in guests on the forwarded ports. The test
//! driver has no guest agent, so a claim here is personalised by the
//! fallback (a restart that applies the owner's seed at boot); the live path
//! through the agent is exercised with real guests by `scripts/e2e.sh`.

mod common;

use std::time::Duration;

use common::{eventually, fake_guest, settle, TestApp};
use hostd::domain::{HostingId, Phase};
use hostd::reconciler::names::{domain_name, seed_volume};
use hostd::reconciler::{warm_pool, Action};
use hostd::store::HostingRecord;

/// A test config with a warm pool of `size` and an image that declares the
/// guest agent (as `build-image.sh` writes it in the manifest).
fn pool_config(
    db: &str,
    state: &std::path::Path,
    nginx: &common::TestNginx,
    size: u32,
) -> hostd::config::Config {
    let mut config = common::test_config(db, state, Some(nginx));
    config.warm_pool = size;
    std::fs::write(
        state.join("images/debian-12/manifest.json"),
        r#"{"name": "debian-12", "guest_agent": true}"#,
    )
    .unwrap();
    config
}

async fn manual_pool_app(size: u32) -> TestApp {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let config = pool_config(&db, state.path(), &nginx, size);
    TestApp::spawn_with(config, hostd::app::Mode::All, false, Some(nginx), state).await
}

async fn pool_rows(app: &TestApp) -> Vec<HostingRecord> {
    let all = app.store.list_records().await.unwrap();
    all.into_iter()
        .filter(|r| r.warm && r.deletion_requested_at.is_none())
        .collect()
}

/// Boots every pool row to Ready with stand-in guests; returns the guests.
async fn boot_pool(app: &TestApp) -> Vec<common::FakeGuest> {
    let ctl = app.controller.clone().unwrap();
    let mut guests = Vec::new();
    for r in pool_rows(app).await {
        ctl.reconcile_once(r.id).await.unwrap();
        let rec = app.store.get_record(r.id).await.unwrap().unwrap();
        let (s, h) = (rec.status.ssh_port.unwrap(), rec.status.http_port.unwrap());
        guests.push(fake_guest(s, h, "pool guest").await);
        assert_eq!(settle(&ctl, r.id).await, Action::AwaitChange);
        let rec = app.store.get_record(r.id).await.unwrap().unwrap();
        assert_eq!(rec.status.phase, Phase::Ready, "{:?}", rec.status);
    }
    guests
}

fn seed_bytes(app: &TestApp, id: HostingId) -> Vec<u8> {
    let dir = app
        .config
        .state_dir
        .join("pools")
        .join(&app.config.instance);
    std::fs::read(dir.join(seed_volume(id))).expect("seed volume file")
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGn5mGkWqfI3bf4Pq0+8fOxaYDXLNQq2Z0S1Zb6pH9hd pool@test";

#[tokio::test]
async fn a_new_hosting_claims_a_ready_pool_guest_and_the_pool_refills() {
    let app = manual_pool_app(1).await;
    let ctl = app.controller.clone().unwrap();
    // The pool is desired state: converging its size adds one row.
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    let rows = pool_rows(&app).await;
    assert_eq!(rows.len(), 1, "one pool guest, however often maintained");
    let pool_id = rows[0].id;
    let guests = boot_pool(&app).await;
    // A pool guest has no route, and carries no tenant key.
    let nginx = app.nginx.as_ref().unwrap();
    assert!(common::route_entries(&nginx.routes_dir).is_empty());
    assert!(!contains(&seed_bytes(&app, pool_id), "pool@test"));
    let pool_rec = app.store.get_record(pool_id).await.unwrap().unwrap();
    let ports = (pool_rec.status.ssh_port, pool_rec.status.http_port);

    // Claim: the create answers with the pool guest, re-owned.
    let (t, uid) = app.user("pia").await;
    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"ssh_public_keys": [KEY]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let h: serde_json::Value = r.json().await.unwrap();
    assert_eq!(h["id"], pool_id.to_string(), "{h}");
    assert_eq!(h["status"]["phase"], "Provisioning", "{h}");
    let reasons: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["Created"],
        "the pool's history is not the tenant's"
    );
    // A second create by the same user changes nothing.
    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    let rec = app.store.get_record(pool_id).await.unwrap().unwrap();
    assert!(!rec.warm && rec.claimed_at.is_some());
    assert_eq!(rec.user_id.0.to_string(), uid);
    assert_eq!(
        (rec.status.ssh_port, rec.status.http_port),
        ports,
        "ports taken over"
    );

    // Personalise: the test driver has no guest agent, so the fallback
    // restarts the guest on the owner's seed.
    assert_eq!(settle(&ctl, pool_id).await, Action::AwaitChange);
    let rec = app.store.get_record(pool_id).await.unwrap().unwrap();
    assert_eq!(rec.status.phase, Phase::Ready, "{:?}", rec.status);
    assert_eq!(rec.status.observed_generation, rec.generation);
    let seed = seed_bytes(&app, pool_id);
    assert!(
        contains(&seed, "pool@test"),
        "the owner's key is in the seed"
    );
    assert!(
        contains(&seed, "Welcome, pia"),
        "the welcome page names the owner"
    );
    assert!(
        contains(&seed, &format!("hostd-{pool_id}-{uid}")),
        "a new instance id, so the guest writes the owner's welcome page"
    );
    let evs = app.store.recent_events(pool_id, 50).await.unwrap();
    let reasons: Vec<&str> = evs.iter().map(|e| e.reason.as_str()).collect();
    for want in [
        "SeedUpdated",
        "PersonaliseFallback",
        "RouteConfigured",
        "Ready",
    ] {
        assert!(reasons.contains(&want), "{reasons:?}");
    }
    assert_eq!(ctl.ctx.metrics.warm_pool_claim_fallbacks.get(), 1);
    // Served through nginx at the owner's path.
    let body = eventually(Duration::from_secs(10), || async {
        let r = reqwest::get(nginx.url(&format!("/{uid}/"))).await.ok()?;
        (r.status() == 200).then_some(())?;
        r.text().await.ok()
    })
    .await;
    assert_eq!(body.as_deref(), Some("pool guest"));
    // The pool refilled right after the claim, with a new row.
    let rows = pool_rows(&app).await;
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0].id, pool_id);
    // A later key change is no claim: without an agent it waits for the next
    // boot (no restart, no second refill).
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"ssh_public_keys": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(settle(&ctl, pool_id).await, Action::AwaitChange);
    let evs = app.store.recent_events(pool_id, 50).await.unwrap();
    assert_eq!(evs[1].reason.as_str(), "SeedApplyFailed", "{evs:?}");
    assert_eq!(
        ctl.ctx.metrics.warm_pool_claim_fallbacks.get(),
        1,
        "no restart"
    );
    assert_eq!(pool_rows(&app).await.len(), 1);
    // Visible to admins in health/detailed (booting: the new row) and /metrics.
    let admin = app.admin("pool_admin").await;
    let (_, h) = app.get_json(&admin, "/api/v1/health/detailed").await;
    let p = &h["warm_pool"];
    assert_eq!(
        (
            p["desired"].as_i64(),
            p["guests"].as_i64(),
            p["ready"].as_i64()
        ),
        (Some(1), Some(1), Some(0)),
        "{h}"
    );
    let m = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("hostd_warm_pool_claim_fallbacks_total 1"), "{m}");
    drop(guests);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_creates_never_share_a_pool_guest() {
    let app = manual_pool_app(1).await;
    let ctl = app.controller.clone().unwrap();
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    let _guests = boot_pool(&app).await;
    let pool_id = pool_rows(&app).await[0].id;
    let mut tokens = Vec::new();
    for i in 0..6 {
        tokens.push(app.user(&format!("racer{i}")).await.0);
    }
    let mut tasks = Vec::new();
    for t in tokens {
        let (c, url) = (app.client.clone(), app.url("/api/v1/host"));
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).bearer_auth(t).send().await.unwrap();
            assert_eq!(r.status(), 202);
            let h: serde_json::Value = r.json().await.unwrap();
            h["id"].as_str().unwrap().to_string()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let claimed = ids.iter().filter(|i| **i == pool_id.to_string()).count();
    assert_eq!(claimed, 1, "exactly one create got the pool guest: {ids:?}");
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 6, "six distinct hostings");
    app.stop().await;
}

#[tokio::test]
async fn a_spec_outside_the_pool_class_goes_the_cold_path() {
    let app = manual_pool_app(1).await;
    let ctl = app.controller.clone().unwrap();
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    let _guests = boot_pool(&app).await;
    let pool_id = pool_rows(&app).await[0].id;
    let (t, _) = app.user("bigger").await;
    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"memory_mib": 1024}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let h: serde_json::Value = r.json().await.unwrap();
    assert_ne!(h["id"], pool_id.to_string());
    assert_eq!(pool_rows(&app).await.len(), 1, "the pool guest stays");
    app.stop().await;
}

/// Room for two 512 MiB guests (the test driver's 3 GiB host, 2 GiB
/// reserved): a pool of two fills it; a tenant who does not fit the class
/// evicts a pool guest and is admitted; the pool does not grow back while
/// there is no room.
#[tokio::test]
async fn pool_guests_make_room_for_tenants() {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let mut config = pool_config(&db, state.path(), &nginx, 2);
    config.capacity = hostd::config::CapacityPolicy {
        reserved_mib: 2048,
        memory_overcommit: 1.0,
        cpu_overcommit: 4.0,
        reserved_disk_bytes: 0,
    };
    let app = TestApp::spawn_with(config, hostd::app::Mode::All, false, Some(nginx), state).await;
    let ctl = app.controller.clone().unwrap();
    // One pool guest boots at a time: the second is added once the first is Ready.
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    assert_eq!(pool_rows(&app).await.len(), 1);
    let mut _guests = boot_pool(&app).await;
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    let rows = pool_rows(&app).await;
    assert_eq!(rows.len(), 2);
    let second = rows
        .iter()
        .find(|r| r.status.ssh_port.is_none())
        .unwrap()
        .id;
    ctl.reconcile_once(second).await.unwrap();
    let rec = app.store.get_record(second).await.unwrap().unwrap();
    _guests.push(
        fake_guest(
            rec.status.ssh_port.unwrap(),
            rec.status.http_port.unwrap(),
            "pool",
        )
        .await,
    );
    assert_eq!(settle(&ctl, second).await, Action::AwaitChange);
    let (t, _) = app.user("tenant").await;
    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"vcpus": 2}))
        .send()
        .await
        .unwrap();
    let h: serde_json::Value = r.json().await.unwrap();
    let id = HostingId(uuid::Uuid::parse_str(h["id"].as_str().unwrap()).unwrap());
    // Refused at first: a pool guest is asked to go.
    assert!(matches!(
        ctl.reconcile_once(id).await.unwrap(),
        Action::Requeue(_)
    ));
    let all = app.store.list_records().await.unwrap();
    let leaving: Vec<_> = all
        .iter()
        .filter(|r| r.warm && r.deletion_requested_at.is_some())
        .collect();
    assert_eq!(leaving.len(), 1, "one pool guest evicted");
    let gone = leaving[0].id;
    assert_eq!(ctl.reconcile_once(gone).await.unwrap(), Action::Gone);
    assert!(ctl
        .ctx
        .vm
        .get_domain(&domain_name(gone))
        .await
        .unwrap()
        .is_none());
    // Now the tenant fits, and the pool does not take the room back.
    ctl.reconcile_once(id).await.unwrap();
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert!(rec.status.ssh_port.is_some(), "admitted: {:?}", rec.status);
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    assert_eq!(
        pool_rows(&app).await.len(),
        1,
        "no room for a second pool guest"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_pool_account_cannot_log_in_or_be_registered() {
    let app = TestApp::api().await;
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "hostd-warm-pool", "password": "!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(
            &serde_json::json!({"email": "x@example.com", "username": "hostd-warm-pool",
                                   "password": "correct horse battery"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    app.stop().await;
}

/// Boots the pool rows not Ready yet with stand-in guests.
async fn boot_new_pool_rows(app: &TestApp, guests: &mut Vec<common::FakeGuest>) {
    let ctl = app.controller.clone().unwrap();
    for r in pool_rows(app).await {
        if r.status.phase == Phase::Ready {
            continue;
        }
        ctl.reconcile_once(r.id).await.unwrap();
        let rec = app.store.get_record(r.id).await.unwrap().unwrap();
        let (s, h) = (rec.status.ssh_port.unwrap(), rec.status.http_port.unwrap());
        guests.push(fake_guest(s, h, "pool guest").await);
        assert_eq!(settle(&ctl, r.id).await, Action::AwaitChange);
    }
}

/// Each node that takes new hostings keeps a pool of its own (one guest
/// booting at a time, across nodes); a cordoned node's pool guest is never
/// claimed, and is removed.
#[tokio::test]
async fn each_node_keeps_its_own_pool_and_a_cordoned_nodes_guest_is_not_claimed() {
    let app = manual_pool_app(1).await;
    let ctl = app.controller.clone().unwrap();
    let admin = app.admin("root").await;
    // A second hypervisor, named to sort before the implicit node "local"
    // (so its pool guest is the older one).
    let dir = tempfile::tempdir().unwrap();
    let uri = common::node_xml(dir.path(), "a1", 16, 16384);
    let r = app
        .client
        .post(app.url("/api/v1/admin/nodes"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "a1", "uri": uri}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let node_of = |r: &HostingRecord| r.node.as_ref().map(|n| n.to_string());
    let mut guests = vec![];
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    let rows = pool_rows(&app).await;
    assert_eq!(rows.len(), 1, "one booting at a time");
    assert_eq!(node_of(&rows[0]).as_deref(), Some("a1"));
    let a1_guest = rows[0].id;
    boot_new_pool_rows(&app, &mut guests).await;
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    boot_new_pool_rows(&app, &mut guests).await;
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    let rows = pool_rows(&app).await;
    let mut placed: Vec<_> = rows
        .iter()
        .map(|r| (node_of(r), r.status.phase.as_str()))
        .collect();
    placed.sort();
    assert_eq!(
        placed,
        [
            (Some("a1".to_string()), "Ready"),
            (Some("local".to_string()), "Ready")
        ],
        "one Ready pool guest on each node"
    );
    // Admins see each node's pool.
    let (_, h) = app.get_json(&admin, "/api/v1/health/detailed").await;
    let p = &h["warm_pool"];
    assert_eq!(
        (p["desired"].as_i64(), p["ready"].as_i64()),
        (Some(1), Some(2)),
        "{h}"
    );
    for n in ["a1", "local"] {
        assert_eq!(p["nodes"][n]["ready"].as_i64(), Some(1), "{h}");
    }
    let local_guest = rows.iter().find(|r| r.id != a1_guest).unwrap().id;
    // The domain is on its own node.
    let a1 = ctl
        .ctx
        .nodes
        .get(&hostd::domain::NodeName::parse("a1").unwrap())
        .unwrap();
    assert!(a1
        .driver
        .get_domain(&domain_name(a1_guest))
        .await
        .unwrap()
        .is_some());

    // Cordoned: its (older) guest is not claimed.
    let r = app
        .client
        .post(app.url("/api/v1/admin/nodes/a1/cordon"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (t, _) = app.user("pia").await;
    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"ssh_public_keys": [KEY]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let h: serde_json::Value = r.json().await.unwrap();
    assert_eq!(h["id"], local_guest.to_string(), "{h}");
    // ... and it is removed; local's pool is refilled.
    ctl.ctx.nodes.refresh(&app.store).await.unwrap();
    warm_pool::maintain(&ctl.ctx).await.unwrap();
    let gone = app.store.get_record(a1_guest).await.unwrap().unwrap();
    assert!(
        gone.deletion_requested_at.is_some(),
        "the cordoned node's pool guest is removed"
    );
    let rows = pool_rows(&app).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(node_of(&rows[0]).as_deref(), Some("local"));
    assert_ne!(rows[0].id, local_guest);
    drop(guests);
}
