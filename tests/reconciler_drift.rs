//! Reconciler tests of drift: changes made behind hostd's back (domains, markers, templates, nginx) are seen and repaired; failures back off and recover; the resync and the event-kept listing see what a full read sees.
//! Real Postgres, a real nginx binary on a private port, libvirt's
//! `test:///default` driver; guests are played by stand-in servers on the
//! forwarded ports.

mod common;

use std::time::Duration;

use common::reconciler::*;
use common::{create_hosting as create, eventually, fake_guest, settle, TestApp};
use hostd::domain::{ConditionType, HostingId, Phase, Reason};
use hostd::reconciler::names::{disk_volume, domain_name};
use hostd::reconciler::Action;

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
    // The event itself: other tests of this binary share the simulated
    // hypervisor, and their events may refresh the listing first, so the
    // event is waited for rather than expected already counted.
    let event = eventually(Duration::from_secs(5), || async {
        (changes.received() > before).then_some(())
    })
    .await;
    assert!(event.is_some(), "the redefinition's event arrived");
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
        .execute(&store.db())
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
        .execute(&store.db())
        .await
        .unwrap();
    assert_eq!(current().await.unwrap().username.as_str(), "renamed");
    sqlx::query("update hostings set vcpus = 2 where id = $1")
        .bind(id.0)
        .execute(&store.db())
        .await
        .unwrap();
    assert_eq!(current().await.unwrap().spec.vcpus.get(), 2);
    // Status and events go with it (on delete cascade).
    sqlx::query("delete from hostings where id = $1")
        .bind(id.0)
        .execute(&store.db())
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
                capacity_gib: hostd::domain::DiskGib::parse(1).unwrap(),
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(vm.list_volumes().await.unwrap().len(), 1100);
    app.stop().await;
}
