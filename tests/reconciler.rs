//! Reconciler tests: real Postgres, a real nginx binary on a private port,
//! libvirt's `test:///default` driver. Guests are played by stand-in servers on
//! the forwarded ports (nothing answers there on the test driver).

mod common;

use std::time::Duration;

use common::{create_hosting as create, eventually, fake_guest, settle, settle_stopped, TestApp};
use hostd::domain::{ConditionType, HostingId, Phase, Reason};
use hostd::drivers::VmDriver;
use hostd::reconciler::names::{disk_volume, domain_name, seed_volume};
use hostd::reconciler::Action;
use serde_json::Value;

/// Creates a hosting for a new user, lets a stand-in guest answer on its
/// ports and drives it to Ready; the guest lives as long as the returned handle.
async fn ready_manual(
    app: &TestApp,
    ctl: &hostd::reconciler::Controller,
    name: &str,
) -> (String, HostingId, common::FakeGuest) {
    let (t, _, id) = create(app, name).await;
    ctl.reconcile_once(id).await.unwrap();
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    let guest = fake_guest(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "ok",
    )
    .await;
    assert_eq!(settle(ctl, id).await, Action::AwaitChange);
    (t, id, guest)
}

/// Waits (under a running reconciler loop) until the hosting has its ports.
async fn wait_ports(app: &TestApp, id: HostingId) -> hostd::store::HostingRecord {
    eventually(Duration::from_secs(20), || async {
        app.store
            .get_record(id)
            .await
            .unwrap()
            .filter(|r| r.status.http_port.is_some())
    })
    .await
    .expect("ports allocated")
}

/// Waits until the running loop has made the hosting Ready.
async fn wait_ready(app: &TestApp, id: HostingId) {
    eventually(Duration::from_secs(30), || async {
        app.store
            .get_record(id)
            .await
            .unwrap()
            .filter(|r| r.status.phase == Phase::Ready)
            .map(|_| ())
    })
    .await
    .expect("Ready");
}

/// GETs `url` until it answers `status` (nginx reloads are asynchronous);
/// returns the body. Panics after 10 s.
async fn get_until(url: &str, status: u16) -> String {
    eventually(Duration::from_secs(10), || async {
        let r = reqwest::get(url).await.ok()?;
        if r.status().as_u16() == status {
            r.text().await.ok()
        } else {
            None
        }
    })
    .await
    .unwrap_or_else(|| panic!("{url} never answered {status}"))
}

/// Sends the request `make` builds until it answers `status`. `nginx -s
/// reload` returns before the old workers stop accepting, so for a moment a
/// connection may still meet the old configuration after one met the new.
async fn until_status(
    make: impl Fn() -> reqwest::RequestBuilder,
    status: u16,
) -> reqwest::Response {
    eventually(Duration::from_secs(10), || async {
        let r = make().send().await.ok()?;
        (r.status().as_u16() == status).then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("never answered {status}"))
}

/// Waits until the named domain exists and runs.
async fn wait_running(vm: &std::sync::Arc<dyn VmDriver>, name: &str) -> Option<()> {
    eventually(Duration::from_secs(20), || async {
        vm.get_domain(name)
            .await
            .unwrap()
            .filter(|d| d.running)
            .map(|_| ())
    })
    .await
}

/// Waits until `path` holds exactly `content`.
async fn wait_route(dir: &std::path::Path, id: HostingId, content: &str) -> Option<()> {
    eventually(Duration::from_secs(20), || async {
        (common::route_entry(dir, id)? == content).then_some(())
    })
    .await
}

fn vm(app: &TestApp) -> std::sync::Arc<dyn VmDriver> {
    app.controller.as_ref().unwrap().ctx.vm.clone()
}

#[tokio::test]
async fn create_converges_to_ready_and_delete_cleans_everything() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (t, uid, id) = create(&app, "alice").await;

    // First step: ports, volumes, domain; the route goes to the nginx
    // batcher (not waited for); no guest answers yet.
    let a = ctl.reconcile_once(id).await.unwrap();
    assert_eq!(a, Action::Requeue(hostd::reconciler::steps::ROUTE_WAIT));
    // Later passes find the batch applied (written, validated, reloaded)
    // and go on to readiness.
    let mut a = a;
    for _ in 0..250 {
        if a != Action::Requeue(hostd::reconciler::steps::ROUTE_WAIT) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        a = ctl.reconcile_once(id).await.unwrap();
    }
    assert_eq!(a, Action::Requeue(hostd::reconciler::steps::PROBE_INTERVAL));
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.phase, Phase::Provisioning);
    let (ssh, http) = (rec.status.ssh_port.unwrap(), rec.status.http_port.unwrap());
    assert!((10000..=20000).contains(&ssh) && (20001..=30000).contains(&http));
    let dom = vm(&app)
        .get_domain(&domain_name(id))
        .await
        .unwrap()
        .expect("domain defined");
    assert_eq!(dom.marker.hosting_id, id);
    assert!(dom.running);
    let vols = vm(&app).list_volumes().await.unwrap();
    assert!(
        vols.contains(&disk_volume(id)) && vols.contains(&seed_volume(id)),
        "{vols:?}"
    );
    let nginx = app.nginx.as_ref().unwrap();
    let route = common::route_entry(&nginx.routes_dir, id).expect("route entry written");
    assert_eq!(
        route,
        format!("# hosting {id}\npath:{uid} 127.0.0.1:{http};\n"),
        "one map entry: the tenant's path → its guest"
    );
    let st = std::process::Command::new("nginx")
        .arg("-t")
        .arg("-c")
        .arg(&nginx.conf)
        .output()
        .unwrap();
    assert!(st.status.success());

    // The guest "boots": readiness goes through the real nginx.
    let _guest = fake_guest(ssh, http, "<h1>Welcome, alice</h1>").await;
    // nginx reloads asynchronously: the first probe may still meet old workers.
    assert_eq!(settle(&ctl, id).await, Action::AwaitChange);
    let (_, h) = app.get_json(&t, "/api/v1/host/my").await;
    assert_eq!(h["status"]["phase"], "Ready", "{h}");
    assert_eq!(h["status"]["observed_generation"], 1);
    let types: Vec<&str> = h["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "True")
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    for c in ["VMRunning", "WebReady", "RouteConfigured"] {
        assert!(types.contains(&c), "{types:?}");
    }
    assert_eq!(h["ssh_command"], format!("ssh -p {ssh} ubuntu@localhost"));
    let reasons: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    for r in [
        "Created",
        "PortsAllocated",
        "DiskCreated",
        "Defined",
        "Started",
        "Ready",
    ] {
        assert!(reasons.contains(&r), "{reasons:?}");
    }
    // Right after a reload, a connection can still land on an old nginx worker.
    let body = get_until(&nginx.url(&format!("/{uid}/")), 200).await;
    assert!(body.contains("Welcome, alice"));
    // Idempotent: another pass changes nothing.
    assert_eq!(ctl.reconcile_once(id).await.unwrap(), Action::AwaitChange);

    // Stop: shut off, route answers 503.
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"running": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    settle_stopped(&ctl, id).await;
    assert_eq!(
        app.store
            .get_record(id)
            .await
            .unwrap()
            .unwrap()
            .status
            .phase,
        Phase::Stopped
    );
    assert!(
        !vm(&app)
            .get_domain(&domain_name(id))
            .await
            .unwrap()
            .unwrap()
            .running
    );
    let url = nginx.url(&format!("/{uid}/"));
    assert!(get_until(&url, 503).await.contains("This site is stopped"));
    // Stopping rewrote the route hostd itself had written: not a hand edit.
    let evs = app.store.recent_events(id, 100).await.unwrap();
    assert!(
        !evs.iter().any(|e| e.reason == "RouteRepaired"),
        "stopping reported a repair: {evs:?}"
    );

    // Delete: everything goes.
    app.client
        .delete(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(ctl.reconcile_once(id).await.unwrap(), Action::Gone);
    assert!(vm(&app)
        .get_domain(&domain_name(id))
        .await
        .unwrap()
        .is_none());
    let vols = vm(&app).list_volumes().await.unwrap();
    assert!(
        !vols.iter().any(|v| v.contains(&id.to_string())),
        "{vols:?}"
    );
    assert_eq!(common::route_entry(&nginx.routes_dir, id), None);
    assert!(app.store.list_ports().await.unwrap().is_empty());
    assert!(app.store.get_record(id).await.unwrap().is_none());
    let url = nginx.url(&format!("/{uid}/"));
    get_until(&url, 404).await;
    app.stop().await;
}

#[tokio::test]
async fn memory_change_redefines_and_restarts() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (t, id, _g) = ready_manual(&app, &ctl, "mike").await;
    let before = vm(&app)
        .get_domain(&domain_name(id))
        .await
        .unwrap()
        .unwrap();
    app.client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"memory_mib": 1024}))
        .send()
        .await
        .unwrap();
    assert_eq!(ctl.reconcile_once(id).await.unwrap(), Action::AwaitChange);
    let after = vm(&app)
        .get_domain(&domain_name(id))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(before.marker.spec_hash, after.marker.spec_hash);
    assert_eq!(after.marker.generation, 2);
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.observed_generation, 2);
    let evs = app.store.recent_events(id, 50).await.unwrap();
    assert!(evs.iter().any(|e| e.reason == "Restarting"), "{evs:?}");
    app.stop().await;
}

#[tokio::test]
async fn ssh_key_change_regenerates_seed_without_restart_and_settles() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (t, id, _g) = ready_manual(&app, &ctl, "kate").await;
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl kate@laptop";
    app.client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"ssh_public_keys": [key]}))
        .send()
        .await
        .unwrap();
    assert_eq!(settle(&ctl, id).await, Action::AwaitChange);
    // Converged: further passes change nothing (no redefine loop).
    for _ in 0..3 {
        assert_eq!(ctl.reconcile_once(id).await.unwrap(), Action::AwaitChange);
    }
    let evs = app.store.recent_events(id, 50).await.unwrap();
    let count = |r: &str| evs.iter().filter(|e| e.reason == r).count();
    assert_eq!(count("SeedUpdated"), 1, "{evs:?}");
    assert_eq!(count("Redefined"), 1, "{evs:?}");
    assert_eq!(
        count("Restarting"),
        0,
        "a key change must not restart the VM"
    );
    assert!(
        vm(&app)
            .get_domain(&domain_name(id))
            .await
            .unwrap()
            .unwrap()
            .running
    );
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.observed_generation, 2);
    app.stop().await;
}

#[tokio::test]
async fn drift_is_repaired_by_the_running_loop() {
    let app = TestApp::running().await;
    let (t, uid, id) = create(&app, "dora").await;
    let rec = wait_ports(&app, id).await;
    let _g = fake_guest(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "hello dora",
    )
    .await;
    wait_ready(&app, id).await;
    let vm = vm(&app);
    let name = domain_name(id);
    let nginx = app.nginx.as_ref().unwrap();
    let dir = nginx.routes_dir.clone();

    // Destroyed behind hostd's back → started again.
    vm.destroy(&name).await.unwrap();
    let v = vm.clone();
    let n = name.clone();
    wait_running(&v, &n).await.expect("restarted after destroy");

    // Undefined → recreated (on the surviving disk volume).
    vm.undefine(&name).await.unwrap();
    wait_running(&v, &n)
        .await
        .expect("recreated after undefine");

    // Route edited by hand, then deleted → rewritten each time.
    let good = common::route_entry(&dir, id).unwrap();
    let hand = format!("# hosting {id}\npath:{uid} 127.0.0.1:1;\n");
    common::tamper_route(&dir, id, Some(&hand));
    wait_route(&dir, id, &good).await.expect("route rewritten");
    common::tamper_route(&dir, id, None);
    wait_route(&dir, id, &good).await.expect("route recreated");
    assert_eq!(
        get_until(&nginx.url(&format!("/{uid}/")), 200).await,
        "hello dora"
    );

    // Lines in the map file that are no hosting's entry are dropped.
    let map = dir.join("routes.map");
    let text = std::fs::read_to_string(&map).unwrap();
    std::fs::write(
        &map,
        format!("path:ffffffff-0000-0000-0000-000000000000 127.0.0.1:1;\n{text}"),
    )
    .unwrap();
    eventually(Duration::from_secs(20), || {
        let m = map.clone();
        let want = text.clone();
        async move { (std::fs::read_to_string(&m).ok()? == want).then_some(()) }
    })
    .await
    .expect("unowned map lines dropped");

    // A stray file in the routes directory is removed.
    let stray = nginx.routes_dir.join("stray.conf");
    std::fs::write(&stray, "location /x/ { return 200; }\n").unwrap();
    eventually(Duration::from_secs(20), || {
        let s = stray.clone();
        async move { (!s.exists()).then_some(()) }
    })
    .await
    .expect("stray route removed");

    let evs = app.store.recent_events(id, 100).await.unwrap();
    let reasons: Vec<&str> = evs.iter().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons.contains(&"DomainStarted")
            && reasons.contains(&"DomainRecreated")
            && reasons.contains(&"RouteRepaired"),
        "{reasons:?}"
    );
    let (_, h) = app.get_json(&t, "/api/v1/host/my").await;
    assert_eq!(h["status"]["phase"], "Ready");
    let admin = app.admin("drift_admin").await;
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
    assert!(
        m.lines()
            .any(|l| l.starts_with("hostd_repairs_total ") && !l.ends_with(" 0")),
        "{m}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_domain_destroyed_behind_hostds_back_is_restarted_without_waiting_for_the_resync() {
    // A resync period no test outlasts: only the domain event can act.
    let db = common::fresh_database().await;
    let nginx = common::TestNginx::start();
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.resync = Duration::from_secs(3600);
    let app = TestApp::spawn_with(config, hostd::app::Mode::All, true, Some(nginx), state).await;
    let (_t, _uid, id) = create(&app, "erin").await;
    let rec = wait_ports(&app, id).await;
    let _g = fake_guest(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "hello erin",
    )
    .await;
    wait_ready(&app, id).await;
    let metrics = app.controller.as_ref().unwrap().ctx.metrics.clone();
    let events_before = metrics.domain_events.get();
    let name = domain_name(id);
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let dom = conn.lookup_domain_by_name(&name).unwrap();
    dom.destroy().unwrap();
    assert!(!dom.is_active().unwrap());
    let restarted = eventually(Duration::from_secs(10), || {
        let dom = &dom;
        async move { dom.is_active().unwrap().then_some(()) }
    })
    .await;
    assert!(restarted.is_some(), "restarted by the domain event");
    assert!(metrics.domain_events.get() > events_before);
    let evs = app.store.recent_events(id, 100).await.unwrap();
    assert!(
        evs.iter().any(|e| e.reason == "DomainStarted"),
        "{:?}",
        evs.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_marker_changed_behind_hostds_back_is_seen_at_the_next_listing() {
    let app = TestApp::manual().await;
    let vm = vm(&app);
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let ours = app.store.installation_id().await.unwrap();
    let id = HostingId(uuid::Uuid::new_v4());
    let uuid = uuid::Uuid::new_v4();
    let marker = |generation: i64| {
        format!(
            "<hostd:hosting xmlns:hostd='{}' instance='{}' installation='{ours}' id='{id}' generation='{generation}' spec-hash='x-y'/>",
            hostd::templates::MARKER_NS,
            app.config.instance
        )
    };
    let xml = |generation: i64| {
        format!(
            "<domain type='test'><name>hostd-{id}</name><uuid>{uuid}</uuid><memory>1024</memory><metadata>{}</metadata><os><type>hvm</type></os></domain>",
            marker(generation)
        )
    };
    let listed = || {
        let vm = vm.clone();
        async move {
            vm.list_domains()
                .await
                .unwrap()
                .into_iter()
                .find(|d| d.marker.hosting_id == id)
                .map(|d| d.marker.generation)
        }
    };
    let changes = vm
        .domain_changes()
        .expect("the test driver delivers events");
    let dom = conn.define_domain_xml(&xml(1)).unwrap();
    assert_eq!(listed().await, Some(1));
    // The listing caches markers (for minutes); an event drops the entry.
    // Redefined under the same name and UUID:
    let before = changes.received();
    conn.define_domain_xml(&xml(2)).unwrap();
    let seen = eventually(Duration::from_secs(5), || async {
        (listed().await == Some(2)).then_some(())
    })
    .await;
    assert!(seen.is_some(), "redefinition seen");
    assert!(changes.received() > before);
    // The marker element rewritten in place (virsh metadata):
    let element = format!(
        "<hosting instance='{}' installation='{ours}' id='{id}' generation='3' spec-hash='x-y'/>",
        app.config.instance
    );
    dom.set_metadata(
        virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(&element),
        Some("hostd"),
        Some(hostd::templates::MARKER_NS),
        virt::sys::VIR_DOMAIN_AFFECT_CONFIG,
    )
    .unwrap();
    let seen = eventually(Duration::from_secs(5), || async {
        (listed().await == Some(3)).then_some(())
    })
    .await;
    assert!(seen.is_some(), "metadata change seen");
    // hostd's own start and destroy are not reported as changes; someone
    // else's are. The callbacks see every domain of the hypervisor (other
    // tests' too), so the feed is read by name. Events arrive in order: once
    // a foreign change to a sentinel domain is on the feed, hostd's own
    // earlier ones were handled.
    let name = format!("hostd-{id}");
    let sentinel = conn
        .define_domain_xml(&format!(
            "<domain type='test'><name>sentinel-{}</name><memory>1024</memory><os><type>hvm</type></os></domain>",
            uuid::Uuid::new_v4().simple()
        ))
        .unwrap();
    let sentinel_name = sentinel.name().unwrap();
    // Drain until the sentinel's definition is seen: older changes are gone.
    let drain_until = |wanted: String| {
        let changes = changes.clone();
        async move {
            let mut seen = std::collections::HashSet::new();
            let found = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let names = changes.next().await;
                    let hit = names.contains(&wanted);
                    seen.extend(names);
                    if hit {
                        break;
                    }
                }
            })
            .await;
            assert!(found.is_ok(), "{wanted} never reported");
            seen
        }
    };
    drain_until(sentinel_name.clone()).await;
    vm.start(&name).await.unwrap();
    vm.destroy(&name).await.unwrap();
    sentinel.create().unwrap();
    let seen = drain_until(sentinel_name.clone()).await;
    assert!(
        !seen.contains(&name),
        "hostd's own start and destroy are not reported"
    );
    dom.create().unwrap();
    drain_until(name.clone()).await;
    sentinel.destroy().unwrap();
    sentinel.undefine().unwrap();
    dom.destroy().unwrap();
    dom.undefine().unwrap();
    assert_eq!(listed().await, None);
    app.stop().await;
}

#[tokio::test]
async fn unmarked_domains_are_left_alone_and_marked_orphans_removed() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let vm = vm(&app);
    // Keep our own connection open so the test driver's state survives between calls.
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let stranger = format!("stranger-{}", uuid::Uuid::new_v4().simple());
    conn.define_domain_xml(&format!("<domain type='test'><name>{stranger}</name><memory>1024</memory><os><type>hvm</type></os></domain>")).unwrap();
    // An orphan: carries our marker (this installation) but no hosting row exists.
    let ours = app.store.installation_id().await.unwrap();
    let marked = |id: HostingId, installation: uuid::Uuid| {
        format!(
            "<domain type='test'><name>hostd-{id}</name><memory>1024</memory><metadata><hostd:hosting xmlns:hostd='{}' instance='{}' installation='{installation}' id='{id}' generation='1' spec-hash='x-y'/></metadata><os><type>hvm</type></os></domain>",
            hostd::templates::MARKER_NS,
            app.config.instance
        )
    };
    let ghost = HostingId(uuid::Uuid::new_v4());
    conn.define_domain_xml(&marked(ghost, ours)).unwrap();
    // Another installation's domain under the same instance name (a second
    // hostd with another database): never touched, only reported.
    let theirs = HostingId(uuid::Uuid::new_v4());
    conn.define_domain_xml(&marked(theirs, uuid::Uuid::new_v4()))
        .unwrap();
    assert!(vm.destroy(&format!("hostd-{theirs}")).await.is_err());
    assert!(vm
        .get_domain(&format!("hostd-{ghost}"))
        .await
        .unwrap()
        .is_some());
    // hostd refuses to touch the unmarked domain at all.
    assert!(vm.destroy(&stranger).await.is_err());
    hostd::reconciler::resync::resync(&ctl.ctx, &ctl.queue)
        .await
        .unwrap();
    assert!(
        vm.get_domain(&format!("hostd-{ghost}"))
            .await
            .unwrap()
            .is_none(),
        "orphan removed"
    );
    assert!(
        conn.lookup_domain_by_name(&stranger).is_ok(),
        "unmarked domain left alone"
    );
    assert!(
        conn.lookup_domain_by_name(&format!("hostd-{theirs}"))
            .is_ok(),
        "another installation's domain left alone"
    );
    assert_eq!(ctl.ctx.metrics.foreign_domains.get(), 1, "and counted");
    for name in [stranger, format!("hostd-{theirs}")] {
        conn.lookup_domain_by_name(&name)
            .unwrap()
            .undefine()
            .unwrap();
    }
    app.stop().await;
}

#[tokio::test]
async fn failing_nginx_validation_backs_off_with_warnings_then_recovers() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let nginx = app.nginx.as_ref().unwrap();
    let (_, _, id) = create(&app, "nora").await;
    // Break the main config so every `nginx -t` fails.
    let conf = std::fs::read_to_string(&nginx.conf).unwrap();
    std::fs::write(
        &nginx.conf,
        conf.replace(
            "server_tokens off;",
            "server_tokens off; this_is_not_a_directive;",
        ),
    )
    .unwrap();
    let mut delays = vec![];
    for _ in 0..4 {
        // One pass submits the route; a later one learns the batch's verdict.
        let mut verdict = None;
        for _ in 0..100 {
            match ctl.reconcile_once(id).await {
                Err(e) => {
                    verdict = Some(e);
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let e = verdict.expect("the rejected route was never reported");
        assert_eq!(e.reason(), Reason::RouteRejected, "{e}");
        delays.push(ctl.ctx.failures(id));
    }
    assert_eq!(delays, vec![1, 2, 3, 4]);
    assert_eq!(
        common::route_entry(&nginx.routes_dir, id),
        None,
        "rejected route rolled back"
    );
    let evs = app.store.recent_events(id, 50).await.unwrap();
    let warnings: Vec<_> = evs
        .iter()
        .filter(|e| e.type_ == "Warning" && e.reason == "RouteRejected")
        .collect();
    assert_eq!(warnings.len(), 4);
    // Backoff grows: the retry delays printed in the messages increase.
    let secs: Vec<f64> = warnings
        .iter()
        .rev()
        .map(|e| {
            e.message
                .rsplit("retrying in ")
                .next()
                .unwrap()
                .trim_end_matches("s)")
                .parse()
                .unwrap()
        })
        .collect();
    assert!(secs[3] > secs[0], "{secs:?}");
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert!(rec
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::Reconciled && c.reason == Reason::RouteRejected));

    // Fixed: converges, backoff reset.
    std::fs::write(&nginx.conf, conf).unwrap();
    common::settle(&ctl, id).await;
    assert!(common::route_entry(&nginx.routes_dir, id).is_some());
    assert_eq!(ctl.ctx.failures(id), 0);
    app.stop().await;
}

#[tokio::test]
async fn only_one_reconciler_leads_and_a_standby_takes_over() {
    let db = common::fresh_database().await;
    let n1 = common::TestNginx::start();
    let s1 = tempfile::tempdir().unwrap();
    let c1 = common::test_config(&db, s1.path(), Some(&n1));
    let mut c2 = c1.clone();
    c2.listen = "127.0.0.1:0".parse().unwrap();
    let s2 = tempfile::tempdir().unwrap();
    let a = TestApp::spawn_with(c1, hostd::app::Mode::All, true, Some(n1), s1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = TestApp::spawn_with(c2, hostd::app::Mode::All, true, None, s2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let la = a.controller.as_ref().unwrap().ctx.metrics.is_leader.get() == 1;
    let lb = b.controller.as_ref().unwrap().ctx.metrics.is_leader.get() == 1;
    assert!(la ^ lb, "exactly one leader (a={la}, b={lb})");
    let (leader, standby) = if la { (a, b) } else { (b, a) };
    let sm = standby.controller.as_ref().unwrap().ctx.metrics.clone();
    assert_eq!(sm.reconciles.get(), 0);
    leader.stop().await;
    let took = eventually(Duration::from_secs(10), || {
        let sm = sm.clone();
        async move { (sm.is_leader.get() == 1).then_some(()) }
    })
    .await;
    assert!(took.is_some(), "standby took over");
    standby.stop().await;
}

#[tokio::test]
async fn many_hostings_converge_with_unique_ports() {
    let app = TestApp::running().await;
    let n = 200;
    let mut ids = vec![];
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let store = app.store.clone();
        set.spawn(async move {
            let u = store
                .create_user(
                    &hostd::domain::Email::parse(&format!("u{i}@example.com")).unwrap(),
                    &hostd::domain::Username::parse(&format!("user{i}")).unwrap(),
                    "x",
                    hostd::domain::Role::User,
                )
                .await
                .unwrap();
            store
                .create_hosting(u.id, &Default::default(), false)
                .await
                .unwrap()
                .id
        });
    }
    while let Some(id) = set.join_next().await {
        ids.push(id.unwrap());
    }
    // Every hosting gets ports, volumes, a domain and a route (nothing answers,
    // so they stay Provisioning: the readiness part is covered above).
    let store = app.store.clone();
    let vmd = vm(&app);
    let routes_dir = app.nginx.as_ref().unwrap().routes_dir.clone();
    let done = eventually(Duration::from_secs(120), || {
        let (store, vmd, rd) = (store.clone(), vmd.clone(), routes_dir.clone());
        async move {
            let recs = store.list_records().await.unwrap();
            let doms = vmd.list_domains().await.unwrap();
            let routes = common::route_entries(&rd).len();
            let ok = recs
                .iter()
                .all(|r| r.status.http_port.is_some() && r.status.phase == Phase::Provisioning);
            (ok && doms.len() == n && routes == n).then_some(())
        }
    })
    .await;
    assert!(done.is_some(), "200 hostings did not converge");
    let ports = app.store.list_ports().await.unwrap();
    assert_eq!(ports.len(), 2 * n);
    let mut p: Vec<u16> = ports.iter().map(|p| p.0).collect();
    p.dedup();
    assert_eq!(p.len(), 2 * n, "ports are unique");
    let routes = common::route_entries(&app.nginx.as_ref().unwrap().routes_dir).len();
    assert_eq!(routes, n);
    let errors = app
        .controller
        .as_ref()
        .unwrap()
        .ctx
        .metrics
        .failures_total();
    let failures: Vec<String> = app
        .controller
        .as_ref()
        .unwrap()
        .ctx
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("hostd_reconcile_failures_total{") && !l.ends_with(" 0"))
        .map(String::from)
        .collect();
    if errors > 0 {
        // Say what failed: the Warning events name it.
        for id in &ids {
            for e in app.store.recent_events(*id, 50).await.unwrap() {
                if e.type_ == "Warning" {
                    eprintln!("{id}: {} {}", e.reason, e.message);
                }
            }
        }
    }
    assert_eq!(errors, 0, "no reconcile errors: {failures:?}");
    app.stop().await;
}

#[tokio::test]
async fn volume_listing_is_not_capped() {
    // The virt crate's `list_volumes` returns at most 1024 names; with more,
    // resync took present volumes for missing ones.
    let app = TestApp::manual().await;
    let vm = vm(&app);
    let backing = app.config.state_dir.join("images/debian-12/disk.qcow2");
    for i in 0..1100 {
        let id = HostingId(uuid::Uuid::from_u128(i));
        vm.create_volume(
            &disk_volume(id),
            hostd::drivers::VolumeSource::Overlay {
                backing: backing.clone(),
                backing_format: "qcow2".into(),
                capacity_gib: 1,
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(vm.list_volumes().await.unwrap().len(), 1100);
    app.stop().await;
}

#[tokio::test]
async fn a_vanished_disk_is_never_recreated_silently_and_a_reset_needs_consent() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (t, _, id) = create(&app, "lena").await;
    ctl.reconcile_once(id).await.unwrap();
    app.client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"running": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    // Someone deletes the disk volume behind hostd's back.
    vm(&app).delete_volume(&disk_volume(id)).await.unwrap();
    hostd::reconciler::resync::resync(&ctl.ctx, &ctl.queue)
        .await
        .unwrap();
    assert!(
        ctl.queue.is_queued_or_running(id),
        "resync noticed the missing disk"
    );
    for _ in 0..3 {
        assert_eq!(ctl.reconcile_once(id).await.unwrap(), Action::AwaitChange);
    }
    let has_disk = || async {
        vm(&app)
            .list_volumes()
            .await
            .unwrap()
            .contains(&disk_volume(id))
    };
    assert!(!has_disk().await, "no empty disk was made in its place");
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.phase, Phase::Failed);
    let lost = rec
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::DiskLost)
        .expect("DiskLost condition");
    assert!(lost.is_true() && lost.message.contains("/api/v1/host/my/reset"));
    let evs = app.store.recent_events(id, 50).await.unwrap();
    let warnings: Vec<_> = evs.iter().filter(|e| e.reason == "DiskLost").collect();
    assert_eq!(warnings.len(), 1, "one Warning, not one per pass: {evs:?}");
    assert_eq!(warnings[0].type_, "Warning");

    // The owner consents: a fresh disk, the condition goes, the hosting converges.
    let r = app
        .client
        .post(app.url("/api/v1/host/my/reset"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    assert!(has_disk().await, "a fresh disk after the reset");
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert!(rec
        .status
        .conditions
        .iter()
        .all(|c| c.type_ != ConditionType::DiskLost));
    assert_eq!(rec.status.disk_epoch, 1);
    let evs = app.store.recent_events(id, 50).await.unwrap();
    assert!(evs.iter().any(|e| e.reason == "DiskReset"), "{evs:?}");
    app.stop().await;
}

#[tokio::test]
async fn nginx_down_is_reported_and_recovered_from() {
    let app = TestApp::running().await;
    let nginx = app.nginx.as_ref().unwrap();
    let (t, uid, id) = create(&app, "nick").await;
    let rec = wait_ports(&app, id).await;
    let _g = fake_guest(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "up",
    )
    .await;
    get_until(&nginx.url(&format!("/{uid}/")), 200).await;

    // nginx stops: health says so (503), and a route change fails with a Warning.
    let st = std::process::Command::new("nginx")
        .arg("-c")
        .arg(&nginx.conf)
        .args(["-s", "stop"])
        .status()
        .unwrap();
    assert!(st.success());
    let url = app.url("/api/v1/health/detailed");
    let down = eventually(Duration::from_secs(10), || async {
        let r = reqwest::get(&url).await.ok()?;
        let code = r.status().as_u16();
        let v: serde_json::Value = r.json().await.ok()?;
        (code == 503 && v["checks"]["nginx"]["status"] == "error").then_some(v)
    })
    .await;
    assert!(
        down.is_some(),
        "health must report nginx down: {}",
        reqwest::get(&url).await.unwrap().text().await.unwrap()
    );
    app.client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"running": false}))
        .send()
        .await
        .unwrap();
    let warned = eventually(Duration::from_secs(20), || async {
        let evs = app.store.recent_events(id, 50).await.unwrap();
        evs.iter()
            .any(|e| e.type_ == "Warning" && e.reason == "NginxReloadFailed")
            .then_some(())
    })
    .await;
    assert!(warned.is_some(), "a NginxReloadFailed warning is recorded");

    // The operator starts nginx again: hostd converges (Stopped, 503 page).
    let st = std::process::Command::new("nginx")
        .arg("-c")
        .arg(&nginx.conf)
        .status()
        .unwrap();
    assert!(st.success());
    let stopped = eventually(Duration::from_secs(30), || async {
        let r = app.store.get_record(id).await.unwrap()?;
        (r.status.phase == Phase::Stopped).then_some(())
    })
    .await;
    assert!(stopped.is_some(), "converged after nginx came back");
    assert!(get_until(&nginx.url(&format!("/{uid}/")), 503)
        .await
        .contains("stopped"));
    app.stop().await;
}

/// Edits every template in turn (cumulatively) under a converged hosting and
/// checks that each edit reaches it exactly once: the resync notices the
/// drift, the domain template is applied by a redefine and one restart, a seed
/// template by a new seed and a redefine without restart, and afterwards the
/// hosting settles (no loop, the resync finds nothing). Templates are compiled
/// into the binary, so the edit is applied to the rendered output, which is
/// exactly what the desired-state hash is computed from.
#[tokio::test]
async fn every_template_edit_reaches_an_existing_hosting_exactly_once() {
    use hostd::reconciler::render::TemplateFile as F;
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_t, id, _g) = ready_manual(&app, &ctl, "tina").await;
    let files = [
        F::Domain,
        F::UserData,
        F::MetaData,
        F::NetworkConfig,
        F::Sshd,
        F::Nftables,
        F::Welcome,
    ];
    let count = |evs: &[hostd::store::Event], r: &str| evs.iter().filter(|e| e.reason == r).count();
    for n in 0..files.len() {
        let edited: Vec<F> = files[..=n].to_vec();
        ctl.ctx
            .render
            .set_edit(Some(std::sync::Arc::new(move |f, s: &mut String| {
                if !edited.contains(&f) {
                    return;
                }
                match f {
                    F::Domain => *s = s.replace("</domain>", "<!-- edited -->\n</domain>"),
                    F::Welcome => s.push_str("<!-- edited -->\n"),
                    _ => s.push_str("\n# edited\n"),
                }
            })));
        let before = app.store.recent_events(id, 200).await.unwrap();
        let marker_before = vm(&app)
            .get_domain(&domain_name(id))
            .await
            .unwrap()
            .unwrap()
            .marker;

        // A fresh queue: the controller's may still hold a delayed requeue.
        let q = hostd::reconciler::queue::WorkQueue::default();
        let stats = hostd::reconciler::resync::resync(&ctl.ctx, &q)
            .await
            .unwrap();
        assert_eq!(stats.queued, 1, "resync must see the {:?} edit", files[n]);

        assert_eq!(
            settle(&ctl, id).await,
            Action::AwaitChange,
            "{:?}",
            files[n]
        );
        for _ in 0..3 {
            assert_eq!(ctl.reconcile_once(id).await.unwrap(), Action::AwaitChange);
        }
        let q = hostd::reconciler::queue::WorkQueue::default();
        let stats = hostd::reconciler::resync::resync(&ctl.ctx, &q)
            .await
            .unwrap();
        assert_eq!(stats.queued, 0, "settled after the {:?} edit", files[n]);

        let after = app.store.recent_events(id, 200).await.unwrap();
        let delta = |r: &str| count(&after, r) - count(&before, r);
        let marker = vm(&app)
            .get_domain(&domain_name(id))
            .await
            .unwrap()
            .unwrap()
            .marker;
        let (dom_before, seed_before) = marker_before.spec_hash.split_once('-').unwrap();
        let (dom_after, seed_after) = marker.spec_hash.split_once('-').unwrap();
        assert_eq!(delta("Redefined"), 1, "{:?}: {after:?}", files[n]);
        if files[n] == F::Domain {
            assert_ne!(dom_before, dom_after);
            assert_eq!(seed_before, seed_after);
            assert_eq!(delta("Restarting"), 1, "domain edit restarts once");
            assert_eq!(delta("SeedUpdated"), 0);
        } else {
            assert_eq!(
                dom_before, dom_after,
                "{:?} must not touch the domain",
                files[n]
            );
            assert_ne!(seed_before, seed_after);
            assert_eq!(delta("SeedUpdated"), 1, "{:?}", files[n]);
            assert_eq!(delta("Restarting"), 0, "{:?} must not restart", files[n]);
        }
        let rec = app.store.get_record(id).await.unwrap().unwrap();
        assert_eq!(rec.status.phase, Phase::Ready);
    }
    app.stop().await;
}

/// A hostile upstream behind the real host nginx: tenant A's guest sends a
/// cookie for the whole origin, `Service-Worker-Allowed: /` and an
/// `X-Accel-Redirect` to tenant B's site. What reaches the client: the cookie
/// scoped to A's prefix, no Service-Worker-Allowed, A's own body (no internal
/// redirect), and the trailing-slash redirect never echoes a client's Host.
#[tokio::test]
async fn a_hostile_upstream_cannot_steer_nginx_or_reach_other_tenants() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_tb, id_b, _gb) = ready_manual(&app, &ctl, "bella").await;
    let uid_b = app.store.get_record(id_b).await.unwrap().unwrap().user_id;
    let (_ta, uid_a, id_a) = create(&app, "attila").await;
    ctl.reconcile_once(id_a).await.unwrap();
    let rec = app.store.get_record(id_a).await.unwrap().unwrap();
    let accel = format!("X-Accel-Redirect: /{uid_b}/");
    let _ga = common::fake_guest_with_headers(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "tenant A",
        &[
            "Set-Cookie: sid=a; Path=/; HttpOnly",
            "Set-Cookie: pref=1; Path=/elsewhere",
            "Service-Worker-Allowed: /",
            &accel,
        ],
    )
    .await;
    assert_eq!(settle(&ctl, id_a).await, Action::AwaitChange);

    let nginx = app.nginx.as_ref().unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = until_status(|| client.get(nginx.url(&format!("/{uid_a}/"))), 200).await;
    let h = r.headers().clone();
    let cookies: Vec<&str> = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cookies.contains(&format!("sid=a; Path=/{uid_a}/; HttpOnly").as_str()),
        "{cookies:?}"
    );
    assert!(
        cookies.contains(&format!("pref=1; Path=/{uid_a}/elsewhere").as_str()),
        "{cookies:?}"
    );
    assert!(h.get("service-worker-allowed").is_none(), "{h:?}");
    assert!(h.get("x-accel-redirect").is_none(), "{h:?}");
    assert_eq!(
        r.text().await.unwrap(),
        "tenant A",
        "no internal redirect to tenant B"
    );

    // The trailing-slash redirect is relative: a forged Host goes nowhere.
    let r = until_status(
        || {
            client
                .get(nginx.url(&format!("/{uid_a}")))
                .header("Host", "evil.example")
        },
        301,
    )
    .await;
    assert_eq!(r.headers()["location"], format!("/{uid_a}/").as_str());

    // Dot segments resolve before routing: A's upstream only ever sees A's
    // paths, and B's site answers with B's content.
    let r = client
        .get(nginx.url(&format!("/{uid_a}/..%2F{uid_b}/")))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert_ne!(
        body, "ok",
        "an encoded ../ must not cross into tenant B: {body}"
    );
    app.stop().await;
}

/// With room for two 512 MiB guests (the test driver's 3 GiB host, 2 GiB
/// reserved), a third hosting waits `Pending` with `Scheduled=False`
/// (`InsufficientMemory`) and is admitted on its own once one is deleted.
#[tokio::test]
async fn a_hosting_that_does_not_fit_waits_and_is_admitted_when_room_frees() {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.capacity = hostd::config::CapacityPolicy {
        reserved_mib: 2048,
        memory_overcommit: 1.0,
        cpu_overcommit: 4.0,
    };
    let app = TestApp::spawn_with(config, hostd::app::Mode::All, true, Some(nginx), state).await;
    let mut guests = Vec::new();
    let mut hostings = Vec::new();
    for name in ["cap_one", "cap_two", "cap_three"] {
        hostings.push(create(&app, name).await);
        tokio::time::sleep(Duration::from_millis(50)).await; // distinct created_at
    }
    for (_, _, id) in &hostings[..2] {
        let rec = wait_ports(&app, *id).await;
        let (s, h) = (rec.status.ssh_port.unwrap(), rec.status.http_port.unwrap());
        guests.push(fake_guest(s, h, "ok").await);
    }
    let phase_of = |id: HostingId| {
        let store = app.store.clone();
        async move { store.get_record(id).await.unwrap().unwrap() }
    };
    for (_, _, id) in &hostings[..2] {
        let ready = eventually(Duration::from_secs(20), || async {
            (phase_of(*id).await.status.phase == Phase::Ready).then_some(())
        })
        .await;
        assert!(ready.is_some(), "the first two fit");
    }
    let third = hostings[2].2;
    let waiting = eventually(Duration::from_secs(20), || async {
        let r = phase_of(third).await;
        r.status
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Scheduled && !c.is_true())
            .map(|c| (r.status.phase, c.reason, r.status.ssh_port))
    })
    .await;
    assert_eq!(
        waiting,
        Some((Phase::Pending, Reason::InsufficientMemory, None)),
        "the third waits, holding nothing"
    );
    let admin = app.admin("capacity_admin").await;
    let r: Value = app
        .client
        .get(app.url("/api/v1/health/detailed"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["capacity"]["budget"]["memory_mib"], 1024, "{r}");
    assert_eq!(r["capacity"]["allocated"]["memory_mib"], 1024, "{r}");
    assert_eq!(r["capacity"]["waiting"], 1, "{r}");

    // Deleting the first makes room: the third is admitted with no other action.
    let r = app
        .client
        .delete(app.url("/api/v1/host/my"))
        .bearer_auth(&hostings[0].0)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let rec = wait_ports(&app, third).await;
    let _g3 = fake_guest(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "three",
    )
    .await;
    let ready = eventually(Duration::from_secs(30), || async {
        (phase_of(third).await.status.phase == Phase::Ready).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the third became Ready once room freed");
    app.stop().await;
}

/// With `HOSTD_SITES_DOMAIN`, each tenant's site is also served on its own
/// host name (its own origin), `web_url` says so, the path form keeps
/// working, and an unknown name under the domain gets 404.
#[tokio::test]
async fn sites_domain_serves_each_tenant_on_its_own_host_name() {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start_with(Some("sites.example.test"));
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.sites.sites_domain = Some("sites.example.test".into());
    let app = TestApp::spawn_with(config, hostd::app::Mode::All, false, Some(nginx), state).await;
    let ctl = app.controller.clone().unwrap();
    let (ta, id_a, _ga) = ready_manual(&app, &ctl, "vera_v").await;
    let (_tb, id_b, _gb) = ready_manual(&app, &ctl, "walt").await;
    let uid_a = app.store.get_record(id_a).await.unwrap().unwrap().user_id;
    let _ = id_b;
    let my: Value = app
        .client
        .get(app.url("/api/v1/host/my"))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(my["web_url"], "http://vera-v.sites.example.test/");
    let nginx = app.nginx.as_ref().unwrap();
    let get = |host: &'static str, path: String| {
        let url = nginx.url(&path);
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .header("Host", host)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // The newest routes reach every nginx worker (see until_status).
    for host in ["walt.sites.example.test", "vera-v.sites.example.test"] {
        until_status(
            || {
                reqwest::Client::new()
                    .get(nginx.url("/"))
                    .header("Host", host)
            },
            200,
        )
        .await;
    }
    assert_eq!(
        get("vera-v.sites.example.test", "/".into()).await,
        (200, "ok".into())
    );
    assert_eq!(get("VERA-V.sites.example.test", "/x/y".into()).await.0, 200);
    assert_eq!(
        get("walt.sites.example.test", "/".into()).await,
        (200, "ok".into())
    );
    assert_eq!(get("nobody.sites.example.test", "/".into()).await.0, 404);
    // The internal prefix cannot be reached from outside (on another tenant's
    // host name any path simply goes to that tenant's own guest).
    assert_eq!(
        get("localhost", format!("/.hostd-vhost/{uid_a}/")).await.0,
        404
    );
    // The path form keeps working.
    assert_eq!(
        get("localhost", format!("/{uid_a}/")).await,
        (200, "ok".into())
    );
    // Usernames that would share a host name are one name.
    let r = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&serde_json::json!({"email": "v2@example.com", "username": "vera-v", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    app.stop().await;
}

/// A second hostd with a fresh database and the same instance name, against
/// the same libvirt and state directory (a staging install, or DATABASE_URL
/// pointing at the wrong database), refuses to start its reconciler, naming
/// both installations; so does one with its own directories but the same
/// instance name (the libvirt pool is the first one's). Nothing of the first
/// is touched.
#[tokio::test]
async fn a_second_installation_never_touches_the_first_ones_objects() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_t, id, _g) = ready_manual(&app, &ctl, "first_one").await;
    let ours = app.store.installation_id().await.unwrap();

    let mut second = app.config.clone();
    second.database_url = common::fresh_database().await;
    second.listen = "127.0.0.1:0".parse().unwrap();
    let err = hostd::app::Application::build(second.clone(), hostd::app::Mode::All)
        .await
        .err()
        .expect("the second reconciler must refuse to start");
    let msg = err.to_string();
    assert!(msg.contains(&ours.to_string()), "names the owner: {msg}");
    let theirs = hostd::store::Store::connect(&second.database_url, 1)
        .await
        .unwrap()
        .installation_id()
        .await
        .unwrap();
    assert!(msg.contains(&theirs.to_string()), "names itself: {msg}");

    // Its own state and routes directories, the same instance name: the
    // libvirt pool of that name holds the first one's directory.
    let other_state = tempfile::tempdir().unwrap();
    let mut third = second.clone();
    third.state_dir = other_state.path().to_path_buf();
    third.nginx_routes_dir = other_state.path().join("routes");
    third.database_url = common::fresh_database().await;
    let err = hostd::app::Application::build(third, hostd::app::Mode::All)
        .await
        .err()
        .expect("a same-named pool in another directory is refused");
    assert!(err.to_string().contains("HOSTD_INSTANCE"), "{err}");

    // An API-only second process is harmless and may start.
    let api = hostd::app::Application::build(second, hostd::app::Mode::Api).await;
    assert!(api.is_ok());

    let vols = vm(&app).list_volumes().await.unwrap();
    assert!(vols.contains(&disk_volume(id)) && vols.contains(&seed_volume(id)));
    assert!(vm(&app)
        .get_domain(&domain_name(id))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        common::route_entries(&app.nginx.as_ref().unwrap().routes_dir).len(),
        1
    );
    assert_eq!(ctl.reconcile_once(id).await.unwrap(), Action::AwaitChange);
    app.stop().await;
}

/// A disk whose hosting row is gone without a completed deletion (a restored
/// or wrong database) is never deleted: the resync leaves it (here, on the
/// simulated hypervisor, where volumes have no file to move) or quarantines
/// it (real pools); only a tombstoned hosting's leftovers are deleted.
#[tokio::test]
async fn disks_without_a_hosting_are_kept_unless_the_deletion_completed() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_t, id, _g) = ready_manual(&app, &ctl, "rosa").await;
    for sql in [
        "delete from port_allocations where hosting_id = $1",
        "delete from hostings where id = $1",
    ] {
        sqlx::query(sql)
            .bind(id.0)
            .execute(app.store.pool())
            .await
            .unwrap();
    }
    let q = hostd::reconciler::queue::WorkQueue::default();
    hostd::reconciler::resync::resync(&ctl.ctx, &q)
        .await
        .unwrap();
    let vols = vm(&app).list_volumes().await.unwrap();
    assert!(
        vols.contains(&disk_volume(id)),
        "the disk is kept: {vols:?}"
    );
    assert!(
        vm(&app)
            .get_domain(&domain_name(id))
            .await
            .unwrap()
            .is_none(),
        "the definition goes"
    );
    // A completed deletion leaves a tombstone: then leftovers go at once.
    sqlx::query("insert into hosting_tombstones (hosting_id) values ($1)")
        .bind(id.0)
        .execute(app.store.pool())
        .await
        .unwrap();
    hostd::reconciler::resync::resync(&ctl.ctx, &q)
        .await
        .unwrap();
    let vols = vm(&app).list_volumes().await.unwrap();
    assert!(
        !vols.contains(&disk_volume(id)),
        "tombstoned leftovers are deleted"
    );
    app.stop().await;
}

/// The admission ledger sums what the SQL sums: for hostings admitted and
/// running, stopped, waiting for room, being deleted and new, the in-memory
/// sums over `capacity_rows` equal `capacity_usage` for each of them as the
/// one being decided, and for the totals.
#[tokio::test]
async fn the_admission_ledger_sums_what_the_sql_sums() {
    use hostd::domain::{Email, HostingSpec, PortRange, Role, Username};
    let app = TestApp::api().await;
    let store = &app.store;
    let (ssh, http) = (
        PortRange {
            start: 10000,
            end: 10100,
        },
        PortRange {
            start: 20001,
            end: 20101,
        },
    );
    let mut mine = Vec::new();
    for i in 0..10 {
        let u = store
            .create_user(
                &Email::parse(&format!("ledger{i}@example.com")).unwrap(),
                &Username::parse(&format!("ledger{i}")).unwrap(),
                "x",
                Role::User,
            )
            .await
            .unwrap();
        let spec = HostingSpec {
            memory_mib: 512 * (i + 1),
            vcpus: 1 + i % 3,
            ..Default::default()
        };
        let rec = store.create_hosting(u.id, &spec, false).await.unwrap();
        match i % 5 {
            0 => {
                store.allocate_ports(rec.id, ssh, http).await.unwrap();
            }
            1 => {
                store.allocate_ports(rec.id, ssh, http).await.unwrap();
                store
                    .update_spec(u.id, |s| {
                        Ok(HostingSpec {
                            running: false,
                            ..s.clone()
                        })
                    })
                    .await
                    .unwrap();
            }
            2 => {
                store.allocate_ports(rec.id, ssh, http).await.unwrap();
                sqlx::query(
                    "update hosting_status set conditions = \
                     '[{\"type\":\"Scheduled\",\"status\":\"False\",\"reason\":\"InsufficientMemory\",\"message\":\"\",\"last_transition_time\":\"2026-01-01T00:00:00Z\"}]' \
                     where hosting_id = $1",
                )
                .bind(rec.id.0)
                .execute(store.pool())
                .await
                .unwrap();
            }
            3 => {
                store.allocate_ports(rec.id, ssh, http).await.unwrap();
                store.request_deletion(u.id).await.unwrap();
            }
            _ => {}
        }
        mine.push((rec.id, rec.created_at));
    }
    let rows = store.capacity_rows().await.unwrap();
    assert_eq!(rows.len(), 10);
    let sql_totals = store.capacity_usage(None).await.unwrap();
    assert!(
        sql_totals.memory_mib > 0 && sql_totals.waiting == 2,
        "{sql_totals:?}"
    );
    for me in mine.iter().copied().map(Some).chain([None]) {
        assert_eq!(
            hostd::capacity::usage(&rows, me),
            store.capacity_usage(me).await.unwrap(),
            "for {me:?}"
        );
    }
}

/// The path form through the real nginx with the map configuration: the
/// guest sees the path without the prefix, re-escaped (an encoded CR LF
/// stays encoded: no header injection towards the guest), with the query;
/// `/<id>` redirects; an unknown user id and an upper-case one get 404.
#[tokio::test]
async fn the_path_form_forwards_the_escaped_path_without_the_prefix() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_t, uid, id) = create(&app, "echo").await;
    ctl.reconcile_once(id).await.unwrap();
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    // A guest that answers with the request line and headers it received.
    let http = tokio::net::TcpListener::bind(("127.0.0.1", rec.status.http_port.unwrap()))
        .await
        .unwrap();
    let ssh = common::stand_in_ssh(rec.status.ssh_port.unwrap()).await;
    let echo = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = http.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
                    head.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    assert_eq!(settle(&ctl, id).await, Action::AwaitChange);
    let nginx = app.nginx.as_ref().unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let body = get_until(
        &nginx.url(&format!("/{uid}/a%20b/%0d%0aX-Evil:%201?q=%2F&x")),
        200,
    )
    .await;
    let first = body.lines().next().unwrap();
    assert_eq!(
        first, "GET /a%20b/%0D%0AX-Evil:%201?q=%2F&x HTTP/1.1",
        "{body}"
    );
    assert!(!body.lines().any(|l| l.starts_with("X-Evil")), "{body}");
    assert!(
        body.contains(&format!("X-Forwarded-Prefix: /{uid}")),
        "{body}"
    );
    let r = until_status(|| client.get(nginx.url(&format!("/{uid}"))), 301).await;
    assert_eq!(r.headers()["location"], format!("/{uid}/").as_str());
    let other = uuid::Uuid::new_v4();
    let r = client
        .get(nginx.url(&format!("/{other}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let upper = uid.to_uppercase();
    let r = client
        .get(nginx.url(&format!("/{upper}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    echo.abort();
    ssh.abort();
    app.stop().await;
}

/// A pass's events travel with its status writes; a pass cut short by an
/// error still records what it did, before the Warning that reports the
/// error.
#[tokio::test]
async fn a_pass_cut_short_still_records_the_events_of_what_it_did() {
    let nginx = common::TestNginx::start();
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.faults = hostd::faults::Faults::parse("after_define:error").unwrap();
    let app = TestApp::spawn_with(config, hostd::app::Mode::All, false, Some(nginx), state).await;
    let ctl = app.controller.clone().unwrap();
    let (_, _, id) = create(&app, "cutshort").await;
    assert!(ctl.reconcile_once(id).await.is_err());
    let events = app.store.recent_events(id, 50).await.unwrap();
    // Newest first.
    let reasons: Vec<&str> = events.iter().rev().map(|e| e.reason.as_str()).collect();
    let at = |r: &str| reasons.iter().position(|x| *x == r);
    for r in ["PortsAllocated", "DiskCreated", "Defined", "InjectedFault"] {
        assert!(at(r).is_some(), "{r} missing: {reasons:?}");
    }
    assert!(at("PortsAllocated") < at("Defined"), "{reasons:?}");
    assert!(at("Defined") < at("InjectedFault"), "{reasons:?}");
    // The domain the event reports exists.
    assert!(vm(&app)
        .get_domain(&domain_name(id))
        .await
        .unwrap()
        .is_some());
    app.stop().await;
}

/// Allocators running at once on a range with exactly as many ports as
/// hostings all get distinct ports, none gives up; one more hosting finds
/// the range full; a hosting that has ports gets the same ones again.
#[tokio::test]
async fn concurrent_allocators_fill_a_range_exactly_without_errors() {
    use hostd::domain::{Email, HostingSpec, PortRange, Role, Username};
    let app = TestApp::api().await;
    let n = 24u16;
    let ssh = PortRange {
        start: 11000,
        end: 11000 + n - 1,
    };
    let http = PortRange {
        start: 21000,
        end: 21000 + n - 1,
    };
    let mut ids = Vec::new();
    for i in 0..=n {
        let u = app
            .store
            .create_user(
                &Email::parse(&format!("ports{i}@example.com")).unwrap(),
                &Username::parse(&format!("ports{i}")).unwrap(),
                "x",
                Role::User,
            )
            .await
            .unwrap();
        let rec = app
            .store
            .create_hosting(u.id, &HostingSpec::default(), false)
            .await
            .unwrap();
        ids.push(rec.id);
    }
    let extra = ids.pop().unwrap();
    let mut set = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let store = app.store.clone();
        set.spawn(async move { (id, store.allocate_ports(id, ssh, http).await) });
    }
    let mut got = std::collections::HashMap::new();
    while let Some(r) = set.join_next().await {
        let (id, ports) = r.unwrap();
        got.insert(id, ports.expect("every allocator gets ports"));
    }
    let ssh_ports: std::collections::HashSet<u16> = got.values().map(|p| p.0).collect();
    let http_ports: std::collections::HashSet<u16> = got.values().map(|p| p.1).collect();
    assert_eq!(ssh_ports.len(), n as usize, "distinct SSH ports");
    assert_eq!(http_ports.len(), n as usize, "distinct HTTP ports");
    assert!(ssh_ports.iter().all(|p| (ssh.start..=ssh.end).contains(p)));
    assert!(http_ports
        .iter()
        .all(|p| (http.start..=http.end).contains(p)));
    let err = app
        .store
        .allocate_ports(extra, ssh, http)
        .await
        .unwrap_err();
    assert!(
        matches!(err, hostd::store::StoreError::PortsExhausted("ssh")),
        "{err:?}"
    );
    // Nothing of the failed allocation stays.
    let (left,): (i64,) =
        sqlx::query_as("select count(*) from port_allocations where hosting_id = $1")
            .bind(extra.0)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(left, 0);
    let again = app.store.allocate_ports(ids[0], ssh, http).await.unwrap();
    assert_eq!(again, got[&ids[0]], "idempotent");
    let rec = app.store.get_record(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (rec.status.ssh_port, rec.status.http_port),
        (Some(again.0), Some(again.1))
    );
    app.stop().await;
}

/// The resync's records: while nothing was written, a pass reuses what it
/// has (one fingerprint row); any write to a hosting, its status or its
/// owner, made anywhere, is seen by the next pass.
#[tokio::test]
async fn the_resync_sees_every_record_write_behind_its_fingerprint() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_, _, id) = create(&app, "fingerprint").await;
    let store = &app.store;
    let current = || async {
        let all = ctl.ctx.records.lock().await.current(store).await.unwrap();
        all.into_iter().find(|r| r.id == id).map(|r| r.rec.clone())
    };
    let f0 = store.records_fingerprint().await.unwrap();
    assert_eq!(store.records_fingerprint().await.unwrap(), f0, "stable");
    assert_eq!(current().await.unwrap().status.message, None);
    sqlx::query("update hosting_status set message = 'by hand' where hosting_id = $1")
        .bind(id.0)
        .execute(store.pool())
        .await
        .unwrap();
    assert_ne!(store.records_fingerprint().await.unwrap(), f0);
    assert_eq!(
        current().await.unwrap().status.message.as_deref(),
        Some("by hand")
    );
    let rec = current().await.unwrap();
    sqlx::query("update users set username = 'renamed' where id = $1")
        .bind(rec.user_id.0)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(current().await.unwrap().username.as_str(), "renamed");
    sqlx::query("update hostings set vcpus = 2 where id = $1")
        .bind(id.0)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(current().await.unwrap().spec.vcpus, 2);
    // Status and events go with it (on delete cascade).
    sqlx::query("delete from hostings where id = $1")
        .bind(id.0)
        .execute(store.pool())
        .await
        .unwrap();
    assert!(current().await.is_none(), "a deleted hosting is gone");
    app.stop().await;
}

/// While events flow, a listing is served from the last full listing and
/// the domains events touched since: after changes made through another
/// connection (define, start, redefine, destroy, undefine), it lists what a
/// full listing lists.
#[tokio::test]
async fn the_listing_kept_by_events_matches_a_full_listing() {
    let app = TestApp::manual().await;
    let vm = vm(&app);
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let ours = app.store.installation_id().await.unwrap();
    let ids: Vec<HostingId> = (0..4).map(|_| HostingId(uuid::Uuid::new_v4())).collect();
    let xml = |id: HostingId, generation: i64| {
        format!(
            "<domain type='test'><name>hostd-{id}</name><uuid>{id}</uuid><memory>1024</memory><metadata>\
             <hostd:hosting xmlns:hostd='{}' instance='{}' installation='{ours}' id='{id}' generation='{generation}' spec-hash='x-y'/>\
             </metadata><os><type>hvm</type></os></domain>",
            hostd::templates::MARKER_NS,
            app.config.instance
        )
    };
    // Ours only: the hypervisor is shared with the tests running alongside.
    let mine = |all: Vec<hostd::drivers::ObservedDomain>| {
        let mut v: Vec<(HostingId, i64, bool)> = all
            .into_iter()
            .filter(|d| ids.contains(&d.marker.hosting_id))
            .map(|d| (d.marker.hosting_id, d.marker.generation, d.running))
            .collect();
        v.sort();
        v
    };
    let a = conn.define_domain_xml(&xml(ids[0], 1)).unwrap();
    let b = conn.define_domain_xml(&xml(ids[1], 1)).unwrap();
    b.create().unwrap();
    // A full listing, which the next ones start from.
    vm.expire_listing();
    let mut want = vec![(ids[0], 1, false), (ids[1], 1, true)];
    want.sort();
    assert_eq!(mine(vm.list_domains().await.unwrap()), want);
    // Changes behind its back.
    a.create().unwrap();
    b.destroy().unwrap();
    b.undefine().unwrap();
    conn.define_domain_xml(&xml(ids[2], 1)).unwrap();
    let d = conn.define_domain_xml(&xml(ids[3], 1)).unwrap();
    d.create().unwrap();
    conn.define_domain_xml(&xml(ids[3], 2)).unwrap();
    d.destroy().unwrap();
    let mut want = vec![(ids[0], 1, true), (ids[2], 1, false), (ids[3], 2, false)];
    want.sort();
    // Events arrive on libvirt's event loop thread, shortly after.
    let served = eventually(Duration::from_secs(5), || async {
        let got = mine(vm.list_domains().await.unwrap());
        (got == want).then_some(got)
    })
    .await;
    assert_eq!(served, Some(want.clone()), "the listing served from events");
    vm.expire_listing();
    assert_eq!(
        mine(vm.list_domains().await.unwrap()),
        want,
        "a full listing"
    );
    for id in [ids[0], ids[2], ids[3]] {
        let d = conn.lookup_domain_by_name(&format!("hostd-{id}")).unwrap();
        let _ = d.destroy();
        d.undefine().unwrap();
    }
    let gone = eventually(Duration::from_secs(5), || async {
        mine(vm.list_domains().await.unwrap())
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(gone.is_some(), "undefined domains leave the listing");
    app.stop().await;
}
