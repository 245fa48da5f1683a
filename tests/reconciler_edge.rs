//! Reconciler tests of the edge: the host nginx the reconciler configures, as a hostile upstream and a client see it (path form, host names).
//! Real Postgres, a real nginx binary on a private port, libvirt's
//! `test:///default` driver; guests are played by stand-in servers on the
//! forwarded ports.

mod common;

use common::reconciler::*;
use common::{create_hosting as create, settle, TestApp};
use hostd::reconciler::Action;
use serde_json::Value;

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
