//! API tests: real Postgres (a fresh database per test), the real router on
//! port 0, assertions on the database as well as on responses.

mod common;

use common::TestApp;
use serde_json::{json, Value};

async fn count(app: &TestApp, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&app.store.db())
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn register_login_me_round_trip() {
    let app = TestApp::api().await;
    let r = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(
            &json!({"email": "Alice@Example.com", "username": "alice", "password": "s3cret-pass"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let u: Value = r.json().await.unwrap();
    assert_eq!(u["username"], "alice");
    assert_eq!(u["role"], "user");
    assert!(u.get("password_hash").is_none() && !u.to_string().contains("$2b$"));
    for k in ["id", "email", "username", "role", "created_at"] {
        assert!(u.get(k).is_some(), "missing {k}");
    }
    // Form login by username, JSON login by email (case-insensitive).
    let form = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .form(&[("username", "alice"), ("password", "s3cret-pass")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let t: Value = form.json().await.unwrap();
    assert_eq!(t["token_type"], "bearer");
    assert!(t["expires_in"].as_u64().unwrap() > 0);
    let js = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": "alice@example.com", "password": "s3cret-pass"}))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    let (s, me) = app
        .get_json(t["access_token"].as_str().unwrap(), "/api/v1/auth/me")
        .await;
    assert_eq!(s, 200);
    assert_eq!(me["id"], u["id"]);
    app.stop().await;
}

#[tokio::test]
async fn duplicates_conflict_and_bad_input_is_422() {
    let app = TestApp::api().await;
    app.user("bob").await;
    for body in [
        json!({"email": "bob@example.com", "username": "bob2", "password": "password1"}),
        json!({"email": "BOB@example.com", "username": "bob3", "password": "password1"}),
        json!({"email": "other@example.com", "username": "bob", "password": "password1"}),
    ] {
        let r = app
            .client
            .post(app.url("/api/v1/auth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "conflict");
    }
    for body in [
        json!({"email": "x@example.com", "username": "X!", "password": "password1"}),
        json!({"email": "not-an-email", "username": "xavier", "password": "password1"}),
        json!({"email": "x@example.com", "username": "xavier", "password": "short"}),
        json!({"email": "x@example.com", "username": "1xavier", "password": "password1"}),
    ] {
        let r = app
            .client
            .post(app.url("/api/v1/auth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{body}");
    }
    assert_eq!(
        count(&app, "select count(*) from users where role <> 'system'").await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_alike() {
    let app = TestApp::api().await;
    app.user("carol").await;
    let mut bodies = vec![];
    for (u, p) in [("carol", "wrong password"), ("nobody", "correct horse")] {
        let r = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .form(&[("username", u), ("password", p)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        bodies.push(r.text().await.unwrap());
    }
    assert_eq!(bodies[0], bodies[1]);
    app.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_401() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let app = TestApp::api().await;
    let (token, uid) = app.user("dave").await;
    let secret = &app.config.jwt_secret;
    let now = chrono::Utc::now().timestamp();
    let expired = encode(
        &Header::default(),
        &json!({"sub": uid, "iat": now - 7200, "exp": now - 3600}),
        &EncodingKey::from_secret(secret),
    )
    .unwrap();
    let wrong_key = encode(
        &Header::default(),
        &json!({"sub": uid, "iat": now, "exp": now + 3600}),
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    use base64_shim::b64;
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(
            r#"{{"sub":"{uid}","iat":{now},"exp":{}}}"#,
            now + 3600
        ))
    );
    let hs512 = encode(
        &Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": uid, "iat": now, "exp": now + 3600}),
        &EncodingKey::from_secret(secret),
    )
    .unwrap();
    for t in [
        expired,
        wrong_key,
        tampered,
        none,
        hs512,
        "garbage".into(),
        "".into(),
    ] {
        let (s, body) = app.get_json(&t, "/api/v1/auth/me").await;
        assert_eq!(s, 401, "token {t:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let r = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

mod base64_shim {
    pub fn b64(s: &str) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut o = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..=c.len() {
                o.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        o
    }
}

#[tokio::test]
async fn hosting_lifecycle_desired_state_only() {
    let app = TestApp::api().await;
    let (t, uid) = app.user("erin").await;
    let (s, _) = app.get_json(&t, "/api/v1/host/my").await;
    assert_eq!(s, 404);
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&json!({"memory_mib": 1024}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .delete(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["user_id"], uid.as_str());
    assert_eq!(h["generation"], 1);
    assert_eq!(
        h["spec"],
        json!({"vcpus": 1, "memory_mib": 512, "disk_gib": 10, "image": "debian-12", "ssh_public_keys": [], "running": true, "hsts": false})
    );
    assert_eq!(h["status"]["phase"], "Pending");
    assert_eq!(count(&app, "select count(*) from hostings").await, 1);
    assert_eq!(
        count(
            &app,
            "select count(*) from hosting_status where phase = 'Pending'"
        )
        .await,
        1
    );

    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // PATCH bumps generation; a no-op PATCH does not; invalid values are 422.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl erin@laptop";
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&json!({"memory_mib": 1024, "ssh_public_keys": [key]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["generation"], 2);
    assert_eq!(h["spec"]["memory_mib"], 1024);
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&json!({"memory_mib": 1024}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["generation"], 2);
    for bad in [
        json!({"memory_mib": 1}),
        json!({"vcpus": 0}),
        json!({"ssh_public_keys": ["not a key"]}),
        json!({"disk_gib": 20}),
        json!({"memory_mib": "lots"}),
        json!({"colour": "red"}),
    ] {
        let r = app
            .client
            .patch(app.url("/api/v1/host/my"))
            .bearer_auth(&t)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{bad}");
    }
    let (gen,): (i64,) = sqlx::query_as("select generation from hostings")
        .fetch_one(&app.store.db())
        .await
        .unwrap();
    assert_eq!(gen, 2);

    // GET shows the contract shape, with events.
    let (_, h) = app.get_json(&t, "/api/v1/host/my").await;
    for k in [
        "id",
        "user_id",
        "spec",
        "generation",
        "deletion_requested_at",
        "status",
        "web_url",
        "ssh_command",
        "events",
    ] {
        assert!(h.get(k).is_some(), "missing {k}");
    }
    for k in [
        "phase",
        "conditions",
        "observed_generation",
        "ssh_port",
        "http_port",
        "message",
    ] {
        assert!(h["status"].get(k).is_some(), "missing status.{k}");
    }
    assert!(h["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "Created"));

    // DELETE marks deletion and keeps the row (finalizer semantics).
    let r = app
        .client
        .delete(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        count(
            &app,
            "select count(*) from hostings where deletion_requested_at is not null"
        )
        .await,
        1
    );
    let (_, h) = app.get_json(&t, "/api/v1/host/my").await;
    assert!(h["deletion_requested_at"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn concurrent_creates_make_exactly_one() {
    let app = TestApp::api().await;
    let (t, _) = app.user("frank").await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (c, url, t) = (app.client.clone(), app.url("/api/v1/host"), t.clone());
        set.spawn(async move {
            c.post(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let mut codes = vec![];
    while let Some(c) = set.join_next().await {
        codes.push(c.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 202).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 19, "{codes:?}");
    assert_eq!(count(&app, "select count(*) from hostings").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn users_only_see_their_own_hosting_and_admin_sees_all() {
    let app = TestApp::api().await;
    let (ta, _) = app.user("gina").await;
    let (tb, _) = app.user("hank").await;
    app.client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap();
    let (s, _) = app.get_json(&tb, "/api/v1/host/my").await;
    assert_eq!(s, 404);
    let r = app
        .client
        .delete(app.url("/api/v1/host/my"))
        .bearer_auth(&tb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        count(
            &app,
            "select count(*) from hostings where deletion_requested_at is null"
        )
        .await,
        1
    );
    let (s, _) = app.get_json(&tb, "/api/v1/admin/hostings").await;
    assert_eq!(s, 403);
    app.store
        .set_role(
            &hostd::domain::Username::parse("hank").unwrap(),
            hostd::domain::Role::Admin,
        )
        .await
        .unwrap();
    let (s, all) = app.get_json(&tb, "/api/v1/admin/hostings").await;
    assert_eq!(s, 200);
    assert_eq!(all.as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn oversized_and_malformed_bodies_change_nothing() {
    let app = TestApp::api().await;
    let (t, _) = app.user("ivan").await;
    let huge = "x".repeat(200 * 1024);
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (app.client.post(app.url("/api/v1/host")).bearer_auth(&t).header("content-type", "application/json").body(format!("{{\"image\":\"{huge}\"}}")), 413),
        (app.client.post(app.url("/api/v1/host")).bearer_auth(&t).header("content-type", "application/json").body("{not json"), 400),
        (app.client.post(app.url("/api/v1/host")).bearer_auth(&t).header("content-type", "text/plain").body("{}"), 415),
        (app.client.post(app.url("/api/v1/host")).bearer_auth(&t).json(&json!({"vcpus": 1, "evil": true})), 422),
        (app.client.post(app.url("/api/v1/host")).bearer_auth(&t).json(&json!({"image": "../../etc/passwd"})), 422),
        (app.client.post(app.url("/api/v1/host")).bearer_auth(&t).json(&json!({"image": "nosuchimage"})), 422),
        (app.client.post(app.url("/api/v1/auth/register")).header("content-type", "application/json").body(huge.clone()), 413),
        (app.client.post(app.url("/api/v1/auth/register")).json(&json!({"email": "a@b.co", "username": "abc", "password": "password1", "role": "admin"})), 422),
    ];
    for (req, want) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want);
        let e: Value = r.json().await.expect("errors are JSON");
        assert!(e["error"]["code"].is_string() && e["error"]["message"].is_string());
    }
    assert_eq!(count(&app, "select count(*) from hostings").await, 0);
    assert_eq!(
        count(&app, "select count(*) from users where role <> 'system'").await,
        1
    );
    let r = app
        .client
        .get(app.url("/api/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn health_version_and_metrics_answer() {
    let app = TestApp::api().await;
    let r = app
        .client
        .get(app.url("/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = app
        .client
        .get(app.url("/api/v1/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["name"], "hostd");
    let d: Value = app
        .client
        .get(app.url("/api/v1/health/detailed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["checks"]["database"]["status"], "ok");
    assert_eq!(d["checks"]["libvirt"]["status"], "ok", "{d}");
    // No reconciler runs in an API-only process: the missing heartbeat is reported.
    assert_eq!(d["checks"]["reconciler"]["status"], "error");
    // /metrics on the API listener: admins only.
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let admin = app.admin("metrics_admin").await;
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
    assert!(m.contains("hostd_reconciles_total"));
    app.stop().await;
}

#[test]
fn crd_file_matches_the_types() {
    let on_disk =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/hosting.yaml")).unwrap();
    assert_eq!(
        on_disk,
        hostd::crd::hosting_crd_yaml(),
        "crds/hosting.yaml is stale: run `cargo run --bin hostd -- crds > crds/hosting.yaml`"
    );
}

/// hostctl reads passwords from stdin (never argv) and keeps its token 0600.
#[tokio::test]
async fn hostctl_takes_passwords_on_stdin_and_keeps_the_token_private() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    use tokio::process::Command;
    let app = TestApp::api().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("cfg/token");
    // Async: the API under test runs on this test's runtime.
    let run = |args: &[&str], stdin: &str| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (stdin, url, token_file) = (stdin.to_string(), app.url(""), token_file.clone());
        async move {
            let mut child = Command::new(env!("CARGO_BIN_EXE_hostctl"))
                .args(["--api", &url])
                .args(&args)
                .env("HOSTCTL_TOKEN_FILE", &token_file)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.as_bytes()).await.unwrap();
            drop(input);
            child.wait_with_output().await.unwrap()
        }
    };
    let out = run(
        &["register", "cli@example.com", "cliuser"],
        "correct horse\n",
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let out = run(&["login", "cliuser"], "wrong horse\n").await;
    assert!(!out.status.success(), "a wrong password must fail");
    assert!(!token_file.exists());
    let out = run(&["login", "cliuser"], "correct horse\n").await;
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    let dir_mode = std::fs::metadata(token_file.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o077, 0, "token dir mode {dir_mode:o}");
    let out = run(&["get"], "").await;
    // Logged in: the API answers 404 "you have no hosting", not 401.
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("you have no hosting"), "{body}");
    // The old positional form is refused: a password never goes on the command line.
    let out = run(&["login", "cliuser", "correct horse"], "").await;
    assert!(!out.status.success());
    app.stop().await;
}

/// Requests above this installation's per-hosting maximums get 422 naming the
/// field and its limit, and change nothing; a change that does not grow a
/// field is accepted even above a (since lowered) maximum.
#[tokio::test]
async fn oversized_hostings_are_refused_with_the_limit() {
    let app = TestApp::api().await;
    let (t, _) = app.user("quinn").await;
    for (body, field, limit) in [
        (json!({"vcpus": 16}), "vcpus", "at most 2"),
        (
            json!({"memory_mib": 65536}),
            "memory_mib",
            "at most 2048 MiB",
        ),
        (json!({"disk_gib": 1024}), "disk_gib", "at most 20 GiB"),
    ] {
        let r = app
            .client
            .post(app.url("/api/v1/host"))
            .bearer_auth(&t)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let e: Value = r.json().await.unwrap();
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field) && msg.contains(limit), "{msg}");
    }
    assert_eq!(count(&app, "select count(*) from hostings").await, 0);
    // Within the limits: accepted; then growing past them is refused too.
    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .json(&json!({"vcpus": 2, "memory_mib": 2048, "disk_gib": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&json!({"memory_mib": 4096}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // An existing hosting above a lowered maximum may still change other fields.
    sqlx::query("update hostings set memory_mib = 4096")
        .execute(&app.store.db())
        .await
        .unwrap();
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&json!({"running": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    app.stop().await;
}

/// A reconciler-only process serves Prometheus metrics on
/// `HOSTD_METRICS_LISTEN`: counters, the reconcile-duration histogram and
/// hostings by phase, once it leads and has resynced.
#[tokio::test]
async fn reconciler_only_process_serves_metrics_on_its_own_listener() {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), None);
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let app = hostd::app::Application::build(config, hostd::app::Mode::Reconciler)
        .await
        .unwrap();
    assert!(app.addr().is_none(), "no API listener in reconciler mode");
    let addr = app.metrics_addr().expect("metrics listener bound");
    let shutdown = hostd::shutdown::Shutdown::new();
    let run = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let text = common::eventually(std::time::Duration::from_secs(15), || async {
        let t = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let resynced = !t.contains("hostd_resyncs_total 0");
        (t.contains("hostd_reconciler_leader 1") && resynced).then_some(t)
    })
    .await
    .expect("metrics show the leader");
    for series in [
        "hostd_resyncs_total",
        "hostd_reconcile_duration_seconds_bucket",
        "hostd_hostings{phase=\"Ready\"}",
        "hostd_queue_depth",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    let r = reqwest::get(format!("http://{addr}/api/v1/health"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the metrics listener serves nothing else");
    shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), run).await;
}

/// Found by schemathesis: a login name holding NUL reached Postgres (which
/// refuses NUL in text) and answered 500. Now it is simply a wrong login.
#[tokio::test]
async fn login_name_with_nul_or_controls_is_a_plain_401() {
    let app = TestApp::api().await;
    app.user("nul-victim").await;
    for name in ["nul-victim\u{0}", "\u{1a}x\u{0}H", "nul\u{7}victim"] {
        for form in [true, false] {
            let req = app.client.post(app.url("/api/v1/auth/login"));
            let req = if form {
                req.form(&[("username", name), ("password", "correct horse")])
            } else {
                req.json(&json!({"username": name, "password": "correct horse"}))
            };
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{name:?} form={form}");
        }
    }
    app.stop().await;
}

/// An API-only process (the container deployment's API cannot see the host)
/// shows the host checks the reconciler made with its last heartbeat: a
/// guest isolation the reconciler found missing is an error here too.
#[tokio::test]
async fn an_api_only_process_shows_the_reconcilers_host_checks() {
    let app = TestApp::api().await;
    let admin = app.admin("hc_admin").await;
    let stats = hostd::store::ReconcilerStats {
        host_checks: Some(json!({
            "libvirt": {"status": "ok", "detail": "qemu:///system: libvirt 11.3.0"},
            "nginx": {"status": "ok", "detail": "config valid, master running"},
            "guest_isolation": {"status": "error", "detail": "NOT in force: uid 64055 uncovered"},
        })),
        ..Default::default()
    };
    app.store
        .heartbeat(&app.config.instance, "reconciler-host:1", &stats)
        .await
        .unwrap();
    let r = app
        .client
        .get(app.url("/api/v1/health/detailed"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let d: Value = r.json().await.unwrap();
    let iso = &d["checks"]["guest_isolation"];
    assert_eq!(iso["status"], "error", "{d}");
    assert_eq!(iso["source"], "reconciler", "{d}");
    assert!(iso["detail"].as_str().unwrap().contains("uid 64055"), "{d}");
    assert_eq!(
        d["checks"]["libvirt"]["detail"],
        "qemu:///system: libvirt 11.3.0"
    );
    assert!(
        d["checks"]["reconciler"]["counters"]
            .get("host_checks")
            .is_none(),
        "shown once, as checks: {d}"
    );
    app.stop().await;
}
