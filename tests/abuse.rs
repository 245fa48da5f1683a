//! Abuse resistance, against a real Redis and Postgres: rate limits (429 with
//! Retry-After), password rules, token rules, logout and password-change
//! revocation, Redis going away mid-test, and a `health/detailed` flood.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::{json, Value};

/// An app whose limits are narrowed by `f` (and whose Redis is `redis`).
async fn app_with(f: impl FnOnce(&mut hostd::config::Config)) -> TestApp {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), None);
    f(&mut config);
    TestApp::spawn_with(config, hostd::app::Mode::Api, false, None, state).await
}

async fn login(app: &TestApp, name: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .form(&[("username", name), ("password", password)])
        .send()
        .await
        .unwrap()
}

async fn register(app: &TestApp, name: &str, password: &str) -> u16 {
    app.client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": format!("{name}@example.com"), "username": name, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn get(app: &TestApp, token: &str, path: &str) -> u16 {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn metrics(app: &TestApp, admin: &str) -> String {
    app.client
        .get(app.url("/metrics"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_sixth_wrong_login_is_refused_and_the_right_one_works_after_the_window() {
    let app = app_with(|c| c.limits.login_window = Duration::from_secs(3)).await;
    app.user("lima").await;
    for i in 0..5 {
        let r = login(&app, "lima", "wrong password").await;
        assert_eq!(r.status(), 401, "attempt {i}");
    }
    let r = login(&app, "lima", "wrong password").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Even the right password waits for the window (no oracle for guessers).
    assert_eq!(login(&app, "lima", "correct horse").await.status(), 429);
    // The email is the same account: same budget.
    assert_eq!(
        login(&app, "lima@example.com", "wrong password")
            .await
            .status(),
        429
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(login(&app, "lima", "correct horse").await.status(), 200);

    let admin = app.admin("limadmin").await;
    let m = metrics(&app, &admin).await;
    assert_eq!(metric(&m, "hostd_login_failures_total"), 5.0, "{m}");
    assert!(
        metric(
            &m,
            "hostd_rate_limited_total{rule=\"login_account_address\"}"
        ) >= 3.0,
        "{m}"
    );
    app.stop().await;
}

/// A login from `from` (forwarded by the trusted proxy on 127.0.0.1).
async fn login_from(app: &TestApp, from: &str, name: &str, password: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", from)
        .form(&[("username", name), ("password", password)])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), t.elapsed())
}

/// Guessers at other addresses never lock the owner out: the lockout is per
/// account and address; past the account's ceiling its attempts are slowed
/// (one a second), not refused. Behind a trusted proxy (127.0.0.1 here) each
/// client is its forwarded address; a client that is not a trusted proxy
/// cannot pick its own address with the header.
#[tokio::test]
async fn guessing_from_elsewhere_never_locks_the_owner_out() {
    let app = app_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.limits.login_slow_after = 8;
    })
    .await;
    app.user("owner").await;
    // An attacker at 203.0.113.66 locks only itself out.
    for i in 0..5 {
        let (code, _) = login_from(&app, "203.0.113.66", "owner", "guess").await;
        assert_eq!(code, 401, "guess {i}");
    }
    assert_eq!(
        login_from(&app, "203.0.113.66", "owner", "guess").await.0,
        429
    );
    assert_eq!(
        login_from(&app, "203.0.113.66", "owner", "correct horse")
            .await
            .0,
        429,
        "the locked-out address gets no oracle"
    );
    let (code, _) = login_from(&app, "198.51.100.1", "owner", "correct horse").await;
    assert_eq!(code, 200, "the owner at an address that never failed");
    // Many addresses push the account past its ceiling: still no lockout,
    // but every attempt on it waits its turn.
    for i in 0..4 {
        let from = format!("203.0.113.{}", 100 + i);
        assert_eq!(login_from(&app, &from, "owner", "guess").await.0, 401);
    }
    let (code, took) = login_from(&app, "198.51.100.2", "owner", "correct horse").await;
    assert_eq!(
        code, 200,
        "past the ceiling the owner is slowed, not refused"
    );
    assert!(took >= Duration::from_millis(900), "not slowed: {took:?}");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..3 {
        let (c, url) = (app.client.clone(), app.url("/api/v1/auth/login"));
        set.spawn(async move {
            c.post(url)
                .header("x-forwarded-for", format!("203.0.113.{}", 150 + i))
                .form(&[("username", "owner"), ("password", "guess")])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    let t = Instant::now();
    while let Some(c) = set.join_next().await {
        assert_eq!(c.unwrap(), 401);
    }
    assert!(
        t.elapsed() >= Duration::from_millis(2700),
        "three slowed guesses took turns: {:?}",
        t.elapsed()
    );
    app.stop().await;

    // Without trusted proxies the header is the client's own word: ignored.
    let app = app_with(|_| {}).await;
    app.user("owner2").await;
    for i in 0..5 {
        let from = format!("203.0.113.{i}");
        assert_eq!(login_from(&app, &from, "owner2", "guess").await.0, 401);
    }
    let (code, _) = login_from(&app, "198.51.100.9", "owner2", "guess").await;
    assert_eq!(code, 429, "a forged X-Forwarded-For escaped the lockout");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_guesses_cannot_overrun_the_limit() {
    let app = app_with(|c| c.limits.login_max_failures_per_address = 8).await;
    app.user("conc").await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (c, url) = (app.client.clone(), app.url("/api/v1/auth/login"));
        // Half guess one account, half spray unknown names.
        let name = if i % 2 == 0 {
            "conc".to_string()
        } else {
            format!("ghost{i}")
        };
        set.spawn(async move {
            let form = [("username", name.as_str()), ("password", "wrong password")];
            c.post(url)
                .form(&form)
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
    let failed = codes.iter().filter(|c| **c == 401).count();
    assert_eq!(
        failed, 8,
        "exactly the address's budget reached bcrypt: {codes:?}"
    );
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 16, "{codes:?}");
    app.stop().await;
}

#[tokio::test]
async fn addresses_and_users_have_their_own_limits() {
    let app = app_with(|c| {
        c.limits.login_max_failures_per_address = 3;
        c.limits.register_per_hour = 4;
        c.limits.host_ops_per_min = 2;
    })
    .await;
    // Registrations: 4 per address per hour (admin and user below count).
    let t = app.user("ada").await.0;
    let admin = app.admin("adadmin").await;
    assert_eq!(register(&app, "bob", "correct horse").await, 201);
    assert_eq!(register(&app, "cyd", "correct horse").await, 201);
    assert_eq!(register(&app, "dan", "correct horse").await, 429);
    // Failed logins from one address, spread over accounts.
    for name in ["bob", "cyd", "nobody"] {
        assert_eq!(login(&app, name, "wrong password").await.status(), 401);
    }
    assert_eq!(login(&app, "ada", "wrong password").await.status(), 429);
    // Hosting writes per user: 2 per minute.
    let post = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 202);
    let patch = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&json!({"memory_mib": 1024}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    let del = app
        .client
        .delete(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 429);
    assert!(del.headers().contains_key("retry-after"));
    let (_, h) = app.get_json(&t, "/api/v1/host/my").await;
    assert!(
        h["deletion_requested_at"].is_null(),
        "the refused delete changed nothing"
    );
    // Reads are not limited.
    for _ in 0..5 {
        assert_eq!(get(&app, &t, "/api/v1/host/my").await, 200);
    }
    let m = metrics(&app, &admin).await;
    for rule in ["register", "login_address", "host_ops"] {
        let key = format!("hostd_rate_limited_total{{rule=\"{rule}\"}}");
        assert!(metric(&m, &key) >= 1.0, "{rule}: {m}");
    }
    app.stop().await;
}

#[tokio::test]
async fn passwords_are_checked_exactly() {
    let app = app_with(|c| c.limits.login_max_failures = 100).await;
    let p72 = "p".repeat(72);
    assert_eq!(register(&app, "pat", &p72).await, 201);
    assert_eq!(login(&app, "pat", &p72).await.status(), 200);
    // bcrypt would ignore the extra bytes: refused, not truncated.
    assert_eq!(
        login(&app, "pat", &format!("{p72}extra")).await.status(),
        401
    );
    assert_eq!(register(&app, "pat2", &"p".repeat(73)).await, 422);
    // NUL and other control characters.
    assert_eq!(register(&app, "nul", &"\0".repeat(8)).await, 422);
    assert_eq!(register(&app, "tab", "correct\thorse").await, 422);
    assert_eq!(login(&app, "pat", &"\0".repeat(8)).await.status(), 401);
    assert_eq!(login(&app, "pat", "").await.status(), 401);
    assert_eq!(register(&app, "short", "1234567").await, 422);
    // NFC: a decomposed "é" at registration, the composed one at login.
    assert_eq!(register(&app, "nfc", "caf\u{65}\u{301} au lait").await, 201);
    assert_eq!(login(&app, "nfc", "caf\u{e9} au lait").await.status(), 200);
    // One message for a taken email or username.
    let dup_user = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(
            &json!({"email": "other@example.com", "username": "pat", "password": "correct horse"}),
        )
        .send()
        .await
        .unwrap();
    let dup_email = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"email": "pat@example.com", "username": "newname", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (dup_user.status().as_u16(), dup_email.status().as_u16()),
        (409, 409)
    );
    let (a, b): (Value, Value) = (
        dup_user.json().await.unwrap(),
        dup_email.json().await.unwrap(),
    );
    assert_eq!(a["error"]["message"], b["error"]["message"]);
    app.stop().await;
}

/// Signs claims with the test configuration's secret.
fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef-test"),
    )
    .unwrap()
}

#[tokio::test]
async fn tokens_need_valid_times_a_bounded_lifetime_and_an_id() {
    let app = app_with(|_| {}).await;
    let (_, uid) = app.user("tom").await;
    let now = chrono::Utc::now().timestamp();
    let claims = |iat: i64, nbf: i64, exp: i64| {
        json!({"sub": uid, "iat": iat, "nbf": nbf, "exp": exp,
               "jti": uuid::Uuid::new_v4().to_string(), "tep": 0})
    };
    // The crafting itself is right: a well-formed token works.
    assert_eq!(
        get(&app, &sign(&claims(now, now, now + 600)), "/api/v1/auth/me").await,
        200
    );
    let bad = [
        ("nbf in the future", claims(now, now + 600, now + 1200)),
        ("iat in the future", claims(now + 600, now, now + 1200)),
        ("expired", claims(now - 7200, now - 7200, now - 60)),
        (
            "lifetime over HOSTD_JWT_TTL_SECS",
            claims(now, now, now + 7200),
        ),
        (
            "no jti",
            json!({"sub": uid, "iat": now, "nbf": now, "exp": now + 600, "tep": 0}),
        ),
        (
            "no nbf",
            json!({"sub": uid, "iat": now, "exp": now + 600, "jti": uuid::Uuid::new_v4().to_string(), "tep": 0}),
        ),
        ("another token epoch", {
            let mut c = claims(now, now, now + 600);
            c["tep"] = json!(1);
            c
        }),
    ];
    for (what, c) in bad {
        assert_eq!(get(&app, &sign(&c), "/api/v1/auth/me").await, 401, "{what}");
    }
    app.stop().await;
}

#[tokio::test]
async fn logout_and_a_password_change_revoke_tokens() {
    let app = app_with(|_| {}).await;
    let (t1, _) = app.user("rev").await;
    let t2 = app.login("rev", "correct horse").await;
    let r = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&t1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(get(&app, &t1, "/api/v1/auth/me").await, 401, "logged out");
    assert_eq!(
        get(&app, &t2, "/api/v1/auth/me").await,
        200,
        "the other session lives"
    );

    let change = |token: String, old: &'static str, new: &'static str| {
        let req = app
            .client
            .put(app.url("/api/v1/auth/password"))
            .bearer_auth(token)
            .json(&json!({"old_password": old, "new_password": new}));
        async move { req.send().await.unwrap() }
    };
    assert_eq!(
        change(t2.clone(), "wrong password", "new horse battery")
            .await
            .status(),
        401
    );
    assert_eq!(
        change(t2.clone(), "correct horse", "short").await.status(),
        422
    );
    let r = change(t2.clone(), "correct horse", "new horse battery").await;
    assert_eq!(r.status(), 200);
    let t3 = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&app, &t2, "/api/v1/auth/me").await,
        401,
        "revoked by the change"
    );
    assert_eq!(get(&app, &t3, "/api/v1/auth/me").await, 200);
    assert_eq!(login(&app, "rev", "correct horse").await.status(), 401);
    assert_eq!(login(&app, "rev", "new horse battery").await.status(), 200);
    app.stop().await;
}

/// A private Redis on a free port, so a test can stop it.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = common::free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/install-deps.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateRedis { child, port }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn without_redis_logins_work_limits_hold_in_memory_and_health_says_so() {
    let redis = PrivateRedis::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let app = app_with(|c| c.redis_url = url).await;
    app.user("rita").await;
    app.user("rudi").await;
    let admin = app.admin("radmin").await;
    let health = || async {
        app.client
            .get(app.url("/api/v1/health/detailed"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    assert_eq!(health().await["checks"]["redis"]["status"], "ok");
    let t = app.login("rita", "correct horse").await;
    drop(redis);

    // Logins keep working; sessions too; limits hold per process.
    assert_eq!(login(&app, "rita", "correct horse").await.status(), 200);
    assert_eq!(get(&app, &t, "/api/v1/auth/me").await, 200);
    for _ in 0..5 {
        assert_eq!(login(&app, "rudi", "wrong password").await.status(), 401);
    }
    assert_eq!(
        login(&app, "rudi", "wrong password").await.status(),
        429,
        "no fail-open"
    );
    // A logout while Redis is down still revokes (Postgres keeps it).
    let r = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(get(&app, &t, "/api/v1/auth/me").await, 401);
    // Health (after its cache period) names Redis as the problem.
    tokio::time::sleep(hostd::api::health::CACHE_FOR).await;
    let h = health().await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["checks"]["redis"]["status"], "degraded", "{h}");
    assert_eq!(h["checks"]["database"]["status"], "ok", "{h}");
    app.stop().await;
}

#[tokio::test]
async fn a_flood_of_health_detailed_runs_the_checks_once_per_period() {
    let app = app_with(|_| {}).await;
    let admin = app.admin("hadmin").await;
    let before = metric(&metrics(&app, &admin).await, "hostd_health_checks_total");
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (c, url) = (app.client.clone(), app.url("/api/v1/health/detailed"));
        tasks.spawn(async move {
            let mut n = 0u32;
            while t0.elapsed() < Duration::from_secs(3) {
                let r = c.get(&url).send().await.unwrap();
                let v: Value = r.json().await.unwrap();
                // Anonymous callers see statuses, not versions or host names.
                assert!(v["checks"]["libvirt"].get("detail").is_none(), "{v}");
                assert!(v.get("capacity").is_none());
                n += 1;
            }
            n
        });
    }
    let mut requests = 0;
    while let Some(n) = tasks.join_next().await {
        requests += n.unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let runs = metric(&metrics(&app, &admin).await, "hostd_health_checks_total") - before;
    println!("health/detailed: {requests} requests in {elapsed:.1} s, {runs} check runs");
    assert!(
        requests > 300,
        "the flood was too small to tell: {requests}"
    );
    let period = hostd::api::health::CACHE_FOR.as_secs_f64();
    assert!(
        runs <= (elapsed / period).ceil() + 1.0,
        "{runs} check runs in {elapsed:.1} s"
    );
    app.stop().await;
}

/// Restores and resets each park a whole disk in quarantine: a user gets
/// `HOSTD_DISK_REPLACES_PER_HOUR` of them; a refused one (no hosting) does
/// not count, one past the limit changes nothing.
#[tokio::test]
async fn disk_replacements_are_limited_per_hour() {
    let app = app_with(|c| c.limits.disk_replaces_per_hour = 2).await;
    let t = app.user("resetter").await.0;
    let reset = || async {
        app.client
            .post(app.url("/api/v1/host/my/reset"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(reset().await.status(), 404, "no hosting yet");
    let post = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 202);
    let epoch = || async {
        let (_, h) = app.get_json(&t, "/api/v1/host/my").await;
        let id: uuid::Uuid = h["id"].as_str().unwrap().parse().unwrap();
        app.store
            .get_record(hostd::domain::HostingId(id))
            .await
            .unwrap()
            .unwrap()
            .disk_epoch
    };
    let e0 = epoch().await;
    assert_eq!(reset().await.status(), 202);
    assert_eq!(reset().await.status(), 202);
    let r = reset().await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(epoch().await, e0 + 2, "the refused reset changed nothing");
    app.stop().await;
}
