//! The leader lease's fencing token (issue 22): a reconciler whose term is
//! over (another process took the lease, e.g. after a Postgres restart killed
//! the lease connection) has its writes refused by Postgres itself, while the
//! API's writes and the new term's go through, and its hypervisor changes
//! are refused before they are made. Real Postgres; libvirt's test driver.

mod common;

use std::time::Duration;

use common::{create_hosting as create, TestApp};
use hostd::domain::{EventType, Reason};
use hostd::store::lease::Lease;
use hostd::store::{NewEvent, StoreError};

fn note(msg: &str) -> NewEvent {
    NewEvent {
        type_: EventType::Normal,
        reason: Reason::Provisioning,
        message: msg.to_string(),
    }
}

async fn events_with(app: &TestApp, id: hostd::domain::HostingId, msg: &str) -> usize {
    let (n,): (i64,) =
        sqlx::query_as("select count(*) from events where hosting_id = $1 and message = $2")
            .bind(id.0)
            .bind(msg)
            .fetch_one(&app.store.db())
            .await
            .unwrap();
    n as usize
}

/// A ready hosting under a manual reconciler whose term has ended: term 1
/// fenced its store, then another process took the lease (term 2's lease is
/// returned with the hosting's id and its stand-in guest).
async fn deposed(
    app: &TestApp,
    ctl: &hostd::reconciler::Controller,
    user: &str,
) -> (Lease, hostd::domain::HostingId, common::FakeGuest) {
    let instance = app.config.instance.clone();
    let (_t, id, guest) = common::reconciler::ready_manual(app, ctl, user).await;
    let mut first = Lease::new(&instance);
    assert!(first.try_acquire(&app.store).await.unwrap());
    ctl.ctx
        .store
        .fence(&instance, first.epoch().unwrap())
        .unwrap();
    first.release().await;
    let mut second = Lease::new(&instance);
    assert!(second.try_acquire(&app.store).await.unwrap());
    (second, id, guest)
}

/// Term 1 writes; term 2 begins elsewhere; term 1's status, event and
/// reconcile writes are refused (nothing lands), the API still writes, and
/// a store fenced by term 2 writes again.
#[tokio::test]
async fn a_deposed_leaders_writes_are_refused_by_postgres() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let ctx = ctl.ctx.clone();
    let instance = app.config.instance.clone();
    let (token, _uid, id) = create(&app, "fenced").await;

    let mut first = Lease::new(&instance);
    assert!(first.try_acquire(&app.store).await.unwrap());
    let e1 = first.epoch().unwrap();
    ctx.store.fence(&instance, e1).unwrap();
    ctl.reconcile_once(id).await.expect("term 1 reconciles");
    ctx.store.add_events(id, &[note("term 1")]).await.unwrap();
    assert_eq!(events_with(&app, id, "term 1").await, 1);

    // The lease connection dies (as in a Postgres restart) and another
    // process takes the lease: a new term, a new epoch.
    first.release().await;
    let mut second = Lease::new(&instance);
    assert!(second.try_acquire(&app.store).await.unwrap());
    let e2 = second.epoch().unwrap();
    assert_eq!(e2, e1 + 1);

    let refused = ctx.store.add_events(id, &[note("late")]).await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    assert_eq!(events_with(&app, id, "late").await, 0);
    let before = app.store.get_record(id).await.unwrap().unwrap().status;
    let mut late = before.clone();
    late.message = Some("written by a deposed leader".into());
    let refused = ctx.store.write_status(id, &late).await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    assert_eq!(
        app.store
            .get_record(id)
            .await
            .unwrap()
            .unwrap()
            .status
            .message,
        before.message
    );
    assert!(ctx.store.release_ports(id).await.is_err());
    assert!(app
        .store
        .get_record(id)
        .await
        .unwrap()
        .unwrap()
        .status
        .ssh_port
        .is_some());

    // The API is not fenced: the tenant can still change desired state.
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"running": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The new term writes.
    ctx.store.fence(&instance, e2).unwrap();
    ctx.store.add_events(id, &[note("term 2")]).await.unwrap();
    assert_eq!(events_with(&app, id, "term 2").await, 1);
    second.release().await;
}

/// A new term waits for a write of the old term still in flight, and the
/// old term's writes that start after the bump are refused: no write of
/// term 1 can land after term 2 has begun.
#[tokio::test]
async fn a_new_term_waits_for_the_old_terms_writes_in_flight() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let instance = app.config.instance.clone();
    let (_t, _uid, id) = create(&app, "inflight").await;
    let mut first = Lease::new(&instance);
    assert!(first.try_acquire(&app.store).await.unwrap());
    ctl.ctx
        .store
        .fence(&instance, first.epoch().unwrap())
        .unwrap();

    let pool = ctl.ctx.store.db();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("insert into events (hosting_id, type, reason, message) values ($1, 'Normal', 'Provisioning', 'in flight')")
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    first.release().await;
    let store = app.store.clone();
    let inst = instance.clone();
    let bump = tokio::spawn(async move {
        let mut second = Lease::new(&inst);
        assert!(second.try_acquire(&store).await.unwrap());
        second
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !bump.is_finished(),
        "the new term began while a write of the old one was in flight"
    );
    tx.commit().await.unwrap();
    let mut second = tokio::time::timeout(Duration::from_secs(10), bump)
        .await
        .expect("the new term begins once the write is done")
        .unwrap();
    assert_eq!(events_with(&app, id, "in flight").await, 1);
    let late = ctl.ctx.store.add_events(id, &[note("after")]).await;
    assert!(matches!(late, Err(StoreError::Fenced)), "{late:?}");
    second.release().await;
}

/// The hypervisor side (issue 27): once another process has taken the
/// lease, the deposed reconciler's libvirt changes are refused before
/// they are made (the domain stays running; the pass ends `Deposed`),
/// while its reads still work; the new term acts.
#[tokio::test]
async fn a_deposed_leader_changes_no_hypervisor() {
    use hostd::drivers::DriverError;
    use hostd::reconciler::ReconcileError;
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let ctx = ctl.ctx.clone();
    let instance = app.config.instance.clone();
    let (mut second, id, _guest) = deposed(&app, &ctl, "deposed").await;
    let name = hostd::reconciler::names::domain_name(id);

    // Term 1 is over: a destroy (here, as a reconcile would after its
    // lease check missed the change) is refused and the guest still runs.
    let refused = ctx.vm.destroy(&name).await;
    assert!(matches!(refused, Err(DriverError::Deposed)), "{refused:?}");
    assert!(
        ctx.vm.get_domain(&name).await.unwrap().unwrap().running,
        "reads work, nothing changed"
    );
    let nodes = ctx.nodes.all();
    assert!(!nodes.is_empty());
    for node in nodes {
        let r = node.driver.undefine(&name).await;
        assert!(
            matches!(r, Err(DriverError::Deposed)),
            "node {}: {r:?}",
            node.name()
        );
    }
    // A whole pass that would restart the guest (a new size) ends Deposed
    // without touching it.
    sqlx::query("update hostings set memory_mib = 1024, generation = generation + 1 where id = $1")
        .bind(id.0)
        .execute(&app.store.db())
        .await
        .unwrap();
    let before = ctx.vm.get_domain(&name).await.unwrap().unwrap();
    let r = ctl.reconcile_once(id).await;
    assert!(
        matches!(r, Err(ReconcileError::Driver(DriverError::Deposed))),
        "{r:?}"
    );
    let after = ctx.vm.get_domain(&name).await.unwrap().unwrap();
    assert_eq!(
        before.marker.spec_hash, after.marker.spec_hash,
        "not redefined"
    );
    assert!(after.running);

    // The new term acts.
    ctx.store.fence(&instance, second.epoch().unwrap()).unwrap();
    assert_eq!(
        common::settle(&ctl, id).await,
        hostd::reconciler::Action::AwaitChange
    );
    let after = ctx.vm.get_domain(&name).await.unwrap().unwrap();
    assert_ne!(
        before.marker.spec_hash, after.marker.spec_hash,
        "term 2 redefined it"
    );
    second.release().await;
}

/// The host nginx (issue 27): once another process has taken the lease, the
/// deposed reconciler's route changes are refused before nginx sees them
/// (a submitted change ends `Failed(Deposed)` and wakes its hosting; a
/// direct one is refused; a pass that would rewrite the route ends
/// `Deposed`), the route keeps serving, and the new term changes it.
#[tokio::test]
async fn a_deposed_leader_changes_no_route() {
    use hostd::drivers::{DriverError, RouteOutcome};
    use hostd::reconciler::ReconcileError;
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let ctx = ctl.ctx.clone();
    let instance = app.config.instance.clone();
    let (mut second, id, _guest) = deposed(&app, &ctl, "routed").await;
    let served = ctx.proxy.read_route(id).await.unwrap().expect("routed");

    let r = ctx.proxy.apply(id, None).await;
    assert!(matches!(r, Err(DriverError::Deposed)), "{r:?}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let woken = Box::new(move || {
        let _ = tx.send(());
    });
    ctx.proxy.submit(id, None, woken);
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the refused change wakes its hosting")
        .unwrap();
    let out = ctx.proxy.outcome(id, None);
    assert!(
        matches!(out, Some(RouteOutcome::Failed(DriverError::Deposed))),
        "{out:?}"
    );
    ctx.proxy.forget(id);
    let r = ctx.proxy.remove_stray("stray.conf").await;
    assert!(matches!(r, Err(DriverError::Deposed)), "{r:?}");
    assert_eq!(
        ctx.proxy.read_route(id).await.unwrap().as_deref(),
        Some(served.as_str()),
        "nothing changed"
    );
    // A pass that would route the site to the stopped page ends at its
    // first change (a status write refused by Postgres, or a change
    // refused here).
    sqlx::query("update hostings set running = false, generation = generation + 1 where id = $1")
        .bind(id.0)
        .execute(&app.store.db())
        .await
        .unwrap();
    let r = ctl.reconcile_once(id).await;
    assert!(
        matches!(
            r,
            Err(ReconcileError::Driver(DriverError::Deposed))
                | Err(ReconcileError::Store(hostd::store::StoreError::Fenced))
        ),
        "{r:?}"
    );
    assert_eq!(
        ctx.proxy.read_route(id).await.unwrap().as_deref(),
        Some(served.as_str()),
        "the route still serves the guest"
    );

    // The new term changes it.
    ctx.store.fence(&instance, second.epoch().unwrap()).unwrap();
    ctx.proxy.apply(id, None).await.unwrap();
    assert!(ctx.proxy.read_route(id).await.unwrap().is_none());
    second.release().await;
}
