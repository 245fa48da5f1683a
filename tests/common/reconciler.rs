//! Helpers of the reconciler tests: waiting for ports, Ready, a route, a
//! running domain or a status; a Ready hosting with its stand-in guest.

use std::time::Duration;

use super::{create_hosting as create, eventually, fake_guest, settle, TestApp};
use hostd::domain::{HostingId, Phase};
use hostd::drivers::VmDriver;
use hostd::reconciler::Action;

/// Creates a hosting for a new user, lets a stand-in guest answer on its
/// ports and drives it to Ready; the guest lives as long as the returned handle.
pub async fn ready_manual(
    app: &TestApp,
    ctl: &hostd::reconciler::Controller,
    name: &str,
) -> (String, HostingId, super::FakeGuest) {
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
pub async fn wait_ports(app: &TestApp, id: HostingId) -> hostd::store::HostingRecord {
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
pub async fn wait_ready(app: &TestApp, id: HostingId) {
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
pub async fn get_until(url: &str, status: u16) -> String {
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
pub async fn until_status(
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
pub async fn wait_running(vm: &std::sync::Arc<dyn VmDriver>, name: &str) -> Option<()> {
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
pub async fn wait_route(dir: &std::path::Path, id: HostingId, content: &str) -> Option<()> {
    eventually(Duration::from_secs(20), || async {
        (super::route_entry(dir, id)? == content).then_some(())
    })
    .await
}

pub fn vm(app: &TestApp) -> std::sync::Arc<dyn VmDriver> {
    app.controller.as_ref().unwrap().ctx.vm.clone()
}
