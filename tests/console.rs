//! The boot console: the reconciler copies the tail of the guest's console
//! log (the file QEMU writes; here written by the test, as the test driver
//! runs no QEMU) into Postgres, cleaned of control characters; the owner
//! reads it at `GET /api/v1/host/my/console`, nobody else can.

mod common;

use common::{create_hosting, TestApp};
use serde_json::Value;

#[tokio::test]
async fn console_tail_reaches_only_its_owner_cleaned() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (token, _, id) = create_hosting(&app, "con-owner").await;
    let (other, _, _) = create_hosting(&app, "con-other").await;

    // Before any copy: an empty, well-formed answer.
    let (s, v) = app.get_json(&token, "/api/v1/host/my/console").await;
    assert_eq!(s, 200);
    assert_eq!(v["text"], "");
    assert!(v["captured_at"].is_null());

    common::settle_stopped(&ctl, id).await;
    let dir = app.config.state_dir.join("console");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join(hostd::reconciler::names::console_log(id));
    // A hostile guest writes escapes, a fake prompt and bidi overrides.
    let mut raw = b"[    0.000000] Linux version 6.1\r\n\x1b[1;31mFAILED\x1b[0m unit\n".to_vec();
    raw.extend_from_slice(b"\x1b]0;pwned\x07<script>alert(1)</script>\n\xe2\x80\xaeevil\n");
    raw.extend(std::iter::repeat_n(b'x', 70_000));
    raw.extend_from_slice(b"\nlogin: \n");
    std::fs::write(&log, &raw).unwrap();
    ctl.reconcile_once(id).await.unwrap();

    let (s, v) = app.get_json(&token, "/api/v1/host/my/console").await;
    assert_eq!(s, 200, "{v}");
    let text = v["text"].as_str().unwrap();
    // The last 64 KiB start inside the run of x; the cut line is dropped.
    assert_eq!(text, "login: \n");
    assert_eq!(v["truncated"], true);
    assert_eq!(v["log_size"].as_u64(), Some(raw.len() as u64));
    assert!(!text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{202e}'));

    // A short log: everything, escapes removed, markup left as text (the
    // API is JSON; the dashboard escapes it).
    std::fs::write(&log, &raw[..120]).unwrap();
    // Copies are rate-limited per hosting; wait out the interval.
    tokio::time::sleep(hostd::reconciler::console::MIN_INTERVAL).await;
    ctl.reconcile_once(id).await.unwrap();
    let (_, v) = app.get_json(&token, "/api/v1/host/my/console").await;
    let text = v["text"].as_str().unwrap();
    assert!(
        text.starts_with("[    0.000000] Linux version 6.1\nFAILED unit\n<script>"),
        "{text}"
    );
    assert_eq!(v["truncated"], false);

    // The other tenant sees its own (empty) console, not this one.
    let (s, v): (u16, Value) = app.get_json(&other, "/api/v1/host/my/console").await;
    assert_eq!(s, 200);
    assert_eq!(v["text"], "");
    // Without a token: 401.
    let r = app
        .client
        .get(app.url("/api/v1/host/my/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}
