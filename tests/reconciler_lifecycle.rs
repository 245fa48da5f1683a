//! Reconciler tests of a hosting's life: create to Ready and delete, resize, new keys, many at once, admission and its ledger, ports, the events of a pass, and what the reconciler remembers of a hosting.
//! Real Postgres, a real nginx binary on a private port, libvirt's
//! `test:///default` driver; guests are played by stand-in servers on the
//! forwarded ports.

mod common;

use std::time::Duration;

use common::reconciler::*;
use common::{create_hosting as create, eventually, fake_guest, settle, settle_stopped, TestApp};
use hostd::domain::{ConditionType, HostingId, Phase, Reason};
use hostd::reconciler::names::{disk_volume, domain_name, seed_volume};
use hostd::reconciler::Action;
use serde_json::Value;

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
        reserved_disk_bytes: 0,
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
            memory_mib: hostd::domain::MemoryMib::parse(512 * (i + 1)).unwrap(),
            vcpus: hostd::domain::Vcpus::parse(1 + i % 3).unwrap(),
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
                .execute(&store.db())
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
            .fetch_one(&app.store.db())
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

/// What the reconciler remembers of a hosting (here: its error backoff) is
/// forgotten when the hosting is found gone, not only when the finalizer
/// deletes it: a row removed while the hosting was in backoff leaves no
/// entry behind (the `Gone` branch once cleared only some of it).
#[tokio::test]
async fn a_hosting_gone_while_in_backoff_leaves_nothing_remembered() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_, _, id) = create(&app, "gone").await;
    ctl.reconcile_once(id).await.unwrap();
    let (delay, failures) = ctl.ctx.error_policy(id);
    assert!(delay > Duration::ZERO && failures == 1);
    ctl.ctx.memory.with(id, |m| {
        m.shutdown_asked = Some(tokio::time::Instant::now());
        m.route_note = Some((Reason::RouteConfigured, "routed".into()));
    });
    assert!(ctl.ctx.memory.knows(id));
    assert_eq!(ctl.ctx.failures(id), 1);
    // The row vanishes behind the reconciler's back (no finalizer ran).
    for sql in [
        "delete from port_allocations where hosting_id = $1",
        "delete from hostings where id = $1",
    ] {
        sqlx::query(sql)
            .bind(id.0)
            .execute(&app.store.db())
            .await
            .unwrap();
    }
    assert_eq!(ctl.reconcile_once(id).await.unwrap(), Action::Gone);
    assert!(
        !ctl.ctx.memory.knows(id),
        "something of the hosting is still remembered"
    );
    assert_eq!(ctl.ctx.failures(id), 0);
    app.stop().await;
}
