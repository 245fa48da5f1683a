//! The dashboard's disk pages with the reconciler on libvirt's
//! `test:///default` driver and real qcow2 files (`common::disks`): the
//! backups page takes a backup and its live stream shows it complete, a
//! restore goes through its confirmation page and brings the old content
//! back, a lost disk is explained with a fresh-disk reset behind a
//! confirmation. Forged posts change nothing.

mod common;

use std::time::Duration;

use common::disks::{disk_file, holds, stopped_hosting, write_disk};
use common::reconciler::vm;
use common::web::{csrf_in, page, post_form, web_login};
use common::{settle_stopped, TestApp};
use hostd::domain::{ConditionType, Phase};
use hostd::reconciler::names::disk_volume;
use reqwest::header::COOKIE;

/// The next `backups` event of a live stream, as JSON.
async fn next_backups(stream: &mut reqwest::Response, buf: &mut String) -> serde_json::Value {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.contains("event: backups") {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("data line");
                return serde_json::from_str(data).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn backup_count(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("select count(*) from backups")
        .fetch_one(&app.store.db())
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn the_backups_page_backs_up_live_and_restores_behind_a_confirmation() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_t, id) = stopped_hosting(&app, "web-bk", 0x31).await;
    let session = web_login(&app, &common::web::client(), "web-bk").await;
    let html = page(&app, &session, "/ui/backups").await;
    assert!(html.contains("No backups yet"), "{html}");
    let csrf = csrf_in(&html);

    // A forged post: refused, no backup recorded.
    let (s, _) = post_form(&app, &session, "/ui/backups", &[("csrf", "forged")]).await;
    assert_eq!(s, 403);
    assert_eq!(backup_count(&app).await, 0);

    // The live view, then "take a backup now".
    let r = common::web::client()
        .get(app.url("/ui/backups/events"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r;
    let mut buf = String::new();
    let first = next_backups(&mut stream, &mut buf).await;
    assert!(first["backups"].as_array().unwrap().is_empty(), "{first}");
    assert!(first["busy"].is_null());
    let (s, _) = post_form(&app, &session, "/ui/backups", &[("csrf", &csrf)]).await;
    assert_eq!(s, 303);
    let pending = next_backups(&mut stream, &mut buf).await;
    assert_eq!(pending["backups"][0]["state"], "Pending", "{pending}");
    assert!(pending["busy"].as_str().unwrap().contains("one at a time"));
    // While it is pending the button is disabled with the reason, and a
    // second request is the API's 409, shown on the page.
    let html = page(&app, &session, "/ui/backups").await;
    assert!(html.contains("id=\"backup-now\" disabled"), "{html}");
    let (s, body) = post_form(&app, &session, "/ui/backups", &[("csrf", &csrf)]).await;
    assert_eq!(s, 409);
    assert!(body.contains("pending or running backup"), "{body}");

    // The reconciler takes it: the stream shows it Completed with its size
    // and checksum, and the button comes back.
    settle_stopped(&ctl, id).await;
    let done = loop {
        let v = next_backups(&mut stream, &mut buf).await;
        if v["backups"][0]["state"] == "Completed" {
            break v;
        }
    };
    let b = &done["backups"][0];
    assert!(b["size"].as_str().unwrap().ends_with("MiB"), "{done}");
    assert_eq!(b["sha"].as_str().unwrap().len(), 12);
    assert!(b["restorable"].as_bool().unwrap());
    assert!(done["busy"].is_null(), "{done}");
    // A stopped guest's backup is full; the page says so too.
    assert_eq!(b["kind"], "Full", "{done}");
    let html = page(&app, &session, "/ui/backups").await;
    assert!(html.contains("<td>Full</td>"), "the Kind column: {html}");
    let backup_id = b["id"].as_str().unwrap().to_string();
    drop(stream);

    // The site's files change; the owner restores the backup.
    write_disk(&disk_file(&app, id), 0x32);
    let html = page(
        &app,
        &session,
        &format!("/ui/backups/restore?id={backup_id}"),
    )
    .await;
    let days = app.config.quarantine.as_secs() / 86400;
    assert!(
        html.contains("is replaced by this backup") && html.contains(&format!("{days} days")),
        "the confirmation says what is replaced and how long the old disk is kept: {html}"
    );
    let restore = |csrf: &str, confirm: &str| {
        let (csrf, confirm, id) = (csrf.to_string(), confirm.to_string(), backup_id.clone());
        let (app, session) = (&app, &session);
        async move {
            post_form(
                app,
                session,
                "/ui/backups/restore",
                &[("csrf", &csrf), ("id", &id), ("confirm", &confirm)],
            )
            .await
            .0
        }
    };
    assert_eq!(restore("forged", "yes").await, 403);
    assert_eq!(restore(&csrf, "").await, 422, "the box must be ticked");
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert!(
        rec.restore_from.is_none(),
        "refused posts asked for nothing"
    );
    // Another hosting's backup id, or garbage: 404, nothing asked.
    let (s, _) = post_form(
        &app,
        &session,
        "/ui/backups/restore",
        &[
            ("csrf", &csrf),
            ("id", "00000000-0000-4000-8000-00000000dead"),
            ("confirm", "yes"),
        ],
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(restore(&csrf, "yes").await, 303);
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    assert!(
        holds(&disk_file(&app, id), 0x31),
        "the backup's content is back"
    );
    let evs = app.store.recent_events(id, 50).await.unwrap();
    assert!(evs.iter().any(|e| e.reason == "DiskRestored"), "{evs:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_lost_disk_is_explained_and_reset_to_a_fresh_one_behind_a_confirmation() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_t, id) = stopped_hosting(&app, "web-lost", 0x41).await;
    let session = web_login(&app, &common::web::client(), "web-lost").await;
    let html = page(&app, &session, "/ui/hosting").await;
    assert!(!html.contains("id=\"disk-lost\""), "no loss yet");
    // The disk goes behind hostd's back; there is no backup.
    vm(&app).delete_volume(&disk_volume(id)).await.unwrap();
    let _ = std::fs::remove_file(disk_file(&app, id));
    for _ in 0..3 {
        ctl.reconcile_once(id).await.unwrap();
    }
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert!(hostd::domain::has_true(
        &rec.status.conditions,
        ConditionType::DiskLost
    ));
    let html = page(&app, &session, "/ui/hosting").await;
    assert!(
        html.contains("id=\"disk-lost\"")
            && html.contains("no backup to bring it back from")
            && html.contains("id=\"reset-link\""),
        "the page explains the loss and offers the reset: {html}"
    );
    assert!(html.contains("data-disk-lost=\"true\""));
    let html = page(&app, &session, "/ui/hosting/reset").await;
    assert!(html.contains("disk is gone"), "{html}");
    let csrf = csrf_in(&html);
    let reset = |csrf: &str, confirm: &str| {
        let (csrf, confirm) = (csrf.to_string(), confirm.to_string());
        let (app, session) = (&app, &session);
        async move {
            post_form(
                app,
                session,
                "/ui/hosting/reset",
                &[("csrf", &csrf), ("confirm", &confirm)],
            )
            .await
            .0
        }
    };
    assert_eq!(reset("forged", "web-lost").await, 403);
    assert_eq!(reset(&csrf, "someone-else").await, 422);
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.disk_epoch, 0, "refused posts reset nothing");
    assert_eq!(reset(&csrf, "web-lost").await, 303);
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.disk_epoch, 1);
    assert!(!hostd::domain::has_true(
        &rec.status.conditions,
        ConditionType::DiskLost
    ));
    assert!(vm(&app).volume_exists(&disk_volume(id)).await.unwrap());
    let html = page(&app, &session, "/ui/hosting").await;
    assert!(!html.contains("id=\"disk-lost\""), "{html}");
    app.stop().await;
}
