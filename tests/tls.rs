//! HTTPS end to end against a real ACME CA: Debian's Pebble (started by
//! `scripts/pebble.sh`, its DNS server pebble-challtestsrv resolving every
//! name to 127.0.0.1) validating HTTP-01 through a private host nginx with
//! hostd's TLS listener, and a stand-in guest behind it. One CA for every
//! step (it takes a second to start).

mod common;

use std::time::Duration;

use common::reconciler::ready_manual;
use common::*;
use hostd::app::Mode;
use hostd::reconciler::tls;

/// A Pebble instance and its companion DNS server.
struct Pebble {
    dir: tempfile::TempDir,
    env: std::collections::HashMap<String, String>,
}

impl Pebble {
    fn start(http_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("scripts/pebble.sh")
            .arg("start")
            .arg(dir.path())
            .arg(http_port.to_string())
            .output()
            .expect("scripts/pebble.sh");
        assert!(
            out.status.success(),
            "pebble: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Pebble { dir, env }
    }
    fn var(&self, k: &str) -> &str {
        &self.env[k]
    }
    fn stop(&self) {
        let _ = std::process::Command::new("scripts/pebble.sh")
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
    /// Pebble's issuing root (made fresh at each start), for clients.
    async fn root(&self) -> reqwest::Certificate {
        let ca = std::fs::read(self.var("HOSTD_ACME_CA_FILE")).unwrap();
        let c = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let pem = c
            .get(format!("{}/roots/0", self.var("PEBBLE_MANAGEMENT")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        std::fs::write(self.dir.path().join("issuing-root.pem"), &pem).unwrap();
        reqwest::Certificate::from_pem(&pem).unwrap()
    }
    async fn set_txt(&self, host: &str, value: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/set-txt", self.var("CHALLTESTSRV")))
            .json(&serde_json::json!({"host": format!("{host}."), "value": value}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client that trusts only `root`, resolves `names` to the host nginx and
/// opens a new connection (a full TLS handshake) for every request.
fn https_client(root: &reqwest::Certificate, names: &[&str], port: u16) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root.clone())
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5));
    for n in names {
        b = b.resolve(n, ([127, 0, 0, 1], port).into());
    }
    b.build().unwrap()
}

/// A plain-HTTP GET to the host nginx with a Host header: (status, Location, body).
async fn http_get(port: u16, host: &str, path: &str) -> (u16, String, String) {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("Host", host)
        .send()
        .await
        .unwrap();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), loc, r.text().await.unwrap_or_default())
}

/// GETs `url` until it answers 200 with `want`, for up to 10 s (nginx's
/// reload is asynchronous: the old workers serve the old config a moment).
async fn https_until(client: &reqwest::Client, url: &str, want: &str) {
    let mut last = String::new();
    for _ in 0..100 {
        match client.get(url).send().await {
            Ok(r) if r.status() == 200 => {
                last = r.text().await.unwrap();
                if last == want {
                    return;
                }
            }
            Ok(r) => last = r.status().to_string(),
            Err(e) => last = format!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url}: {last}");
}

async fn cert_row(app: &TestApp, name: &str) -> hostd::store::CertRow {
    app.store
        .list_certificates()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no certificate row for {name}"))
}

#[tokio::test]
async fn sites_and_custom_domains_are_served_over_https_with_certificates_from_acme() {
    let state = tempfile::tempdir().unwrap();
    {
        // nginx's workers traverse the state directory to the TLS files.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let tls_dir = state.path().join("tls");
    let api = format!("127.0.0.1:{}", free_port());
    let nginx = TestNginx::start_full(
        Some("sites.test"),
        Some(&tls_dir),
        Some(("panel.test", &api)),
    );
    let (http, https) = (nginx.port, nginx.https_port.unwrap());
    let pebble = Pebble::start(http);
    let db = fresh_database().await;
    let mut config = test_config(&db, state.path(), Some(&nginx));
    config.sites.sites_domain = Some("sites.test".into());
    config.listen = api.parse().unwrap();
    config.tls.panel_host = Some("panel.test".into());
    config.tls.acme = Some(hostd::config::AcmePolicy {
        directory: pebble.var("HOSTD_ACME_DIRECTORY").into(),
        email: Some("ops@example.com".into()),
        ca_file: Some(pebble.var("HOSTD_ACME_CA_FILE").into()),
        renew_before: Duration::from_secs(30 * 86400),
    });
    config.tls.dns_resolver = Some(pebble.var("HOSTD_DNS_RESOLVER").parse().unwrap());
    let app = TestApp::spawn_with(config, Mode::All, false, Some(nginx), state).await;
    let ctl = app.controller.clone().unwrap();
    let root = pebble.root().await;

    // A tenant's own name gets a certificate and is served over HTTPS.
    let (alice, alice_id, _guest) = ready_manual(&app, &ctl, "alice").await;
    let stats = tls::pass(&ctl.ctx).await.unwrap();
    // The tenant's name and the dashboard's.
    assert_eq!(
        stats.issued,
        2,
        "{stats:?} {:?}",
        app.store.list_certificates().await.unwrap()
    );
    assert!(stats.map_changed);
    let row = cert_row(&app, "alice.sites.test").await;
    assert_eq!(row.state, "Ready", "{row:?}");
    assert!(row.not_after.unwrap() > chrono::Utc::now() + chrono::Duration::days(30));
    let file = tls_dir.join("live/alice.sites.test.pem");
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::metadata(&file).unwrap();
        assert_eq!(
            m.permissions().mode() & 0o777,
            0o600,
            "the key file is private"
        );
        let www = std::fs::read_to_string("/etc/passwd").unwrap();
        let www_uid: u32 = www
            .lines()
            .find(|l| l.starts_with("www-data:"))
            .unwrap()
            .split(':')
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            m.uid(),
            www_uid,
            "owned by nginx's workers, who load it per handshake"
        );
    }
    let account = std::fs::read_dir(&tls_dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("acme-account-"))
        .expect("the ACME account is kept");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            account.metadata().unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let client = https_client(&root, &["alice.sites.test", "www.alice-shop.test"], https);
    // nginx's reload is asynchronous: the old workers finish first.
    https_until(&client, &format!("https://alice.sites.test:{https}/"), "ok").await;
    let root_file = pebble.dir.path().join("issuing-root.pem");
    // (Not blocking this runtime: the stand-in guest answers on it.)
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--http2",
            "--cacert",
        ])
        .arg(&root_file)
        .args(["--resolve", &format!("alice.sites.test:{https}:127.0.0.1")])
        .arg(format!("https://alice.sites.test:{https}/"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "HTTP/2 over TLS ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP is redirected, ACME paths excepted (and never the guest's).
    let (s, loc, _) = http_get(http, "alice.sites.test", "/a?b=1").await;
    assert_eq!(
        (s, loc.as_str()),
        (
            301,
            format!("https://alice.sites.test:{https}/a?b=1").as_str()
        )
    );
    let (s, _, body) = http_get(
        http,
        "alice.sites.test",
        "/.well-known/acme-challenge/guess",
    )
    .await;
    assert_eq!(
        s, 404,
        "a challenge path is the host's, not the guest's ({body})"
    );
    // The dashboard on its own name, over HTTPS through the host nginx.
    let panel = https_client(&root, &["panel.test"], https);
    let r = panel
        .get(format!("https://panel.test:{https}/ui/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text().await.unwrap().contains("name=\"csrf\""),
        "the login form"
    );
    assert_eq!(
        http_get(http, "panel.test", "/ui/login").await.0,
        301,
        "HTTP redirected"
    );
    // A tenant cannot claim it.
    // A name without a certificate gets the fallback, which no client trusts.
    let unknown = https_client(&root, &["nobody.sites.test"], https);
    assert!(unknown
        .get(format!("https://nobody.sites.test:{https}/"))
        .send()
        .await
        .is_err());

    // A custom domain is refused until its TXT record proves control.
    let (bob, _) = {
        let (t, _uid, _id) = create_hosting(&app, "bob").await;
        (t, ())
    };
    let add = |token: String, name: &'static str| {
        let c = app.client.clone();
        let url = app.url("/api/v1/host/my/domains");
        async move {
            let r = c
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"name": name}))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (s, d) = add(alice.clone(), "WWW.Alice-Shop.test").await;
    assert_eq!(s, 201, "{d}");
    assert_eq!(d["name"], "www.alice-shop.test");
    assert_eq!(d["state"], "PendingVerification");
    assert_eq!(d["txt_name"], "_hostd-challenge.www.alice-shop.test");
    let token = d["txt_value"].as_str().unwrap().to_string();
    // Another tenant may claim it too while it is unproven (a claim alone
    // must not let a squatter block the owner)…
    assert_eq!(add(bob.clone(), "www.alice-shop.test").await.0, 201);
    for bad in [
        "x.sites.test",
        "sites.test",
        "127.0.0.1",
        "*.shop.test",
        "localhost",
        "bad_name.test",
    ] {
        let (s, e) = add(alice.clone(), bad).await;
        assert_eq!(s, 422, "{bad}: {e}");
    }
    tls::pass(&ctl.ctx).await.unwrap();
    let (_, list) = app.get_json(&alice, "/api/v1/host/my/domains").await;
    assert_eq!(list[0]["state"], "PendingVerification");
    assert!(
        list[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("no TXT record"),
        "{list}"
    );
    let (s, _, _) = http_get(http, "www.alice-shop.test", "/x").await;
    assert_eq!(s, 404, "not routed to the guest before verification");
    // A wrong value does not verify it.
    pebble
        .set_txt("_hostd-challenge.www.alice-shop.test", "hostd-wrong")
        .await;
    sqlx::query("update custom_domains set next_check_at = now()")
        .execute(&app.store.db())
        .await
        .unwrap();
    tls::pass(&ctl.ctx).await.unwrap();
    let (_, list) = app.get_json(&alice, "/api/v1/host/my/domains").await;
    assert_eq!(list[0]["state"], "PendingVerification", "{list}");
    // The right value verifies it; it is routed and issued.
    pebble
        .set_txt("_hostd-challenge.www.alice-shop.test", &token)
        .await;
    sqlx::query("update custom_domains set next_check_at = now()")
        .execute(&app.store.db())
        .await
        .unwrap();
    let stats = tls::pass(&ctl.ctx).await.unwrap();
    assert_eq!((stats.domains_verified, stats.issued), (1, 1), "{stats:?}");
    settle(&ctl, alice_id).await;
    let routes = &app.nginx.as_ref().unwrap().routes_dir;
    let entry = route_entry(routes, alice_id).unwrap();
    assert!(entry.contains("host:www.alice-shop.test "), "{entry}");
    let events = app.store.recent_events(alice_id, 20).await.unwrap();
    assert!(
        events.iter().any(|e| e.reason == "DomainVerified"),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| e.reason == "RouteRepaired"),
        "a new domain is no hand edit: {events:?}"
    );
    let (_, list) = app.get_json(&alice, "/api/v1/host/my/domains").await;
    assert_eq!(list[0]["state"], "Ready", "{list}");
    https_until(
        &client,
        &format!("https://www.alice-shop.test:{https}/"),
        "ok",
    )
    .await;
    assert_eq!(http_get(http, "www.alice-shop.test", "/").await.0, 301);
    // …and now the other tenant's claim has failed, and no one can claim it.
    let (_, bobs) = app.get_json(&bob, "/api/v1/host/my/domains").await;
    assert_eq!(bobs[0]["state"], "Failed", "{bobs}");
    let (s, e) = add(bob.clone(), "www.alice-shop.test").await;
    assert_eq!(s, 409, "{e}");

    // A forced renewal replaces the certificate while a client keeps
    // connecting: no request fails.
    let before = std::fs::read(&file).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client
                    .get(format!("https://alice.sites.test:{https}/"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.store
            .request_renewal(Some("alice.sites.test"))
            .await
            .unwrap(),
        1
    );
    let stats = tls::pass(&ctl.ctx).await.unwrap();
    assert_eq!(stats.issued, 1, "{stats:?}");
    assert!(!stats.map_changed, "a renewal needs no reload");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = poller.await.unwrap();
    assert!(
        failed.is_empty(),
        "requests failed during the renewal: {failed:?}"
    );
    assert!(ok >= 5, "the poller made {ok} requests");
    assert_ne!(
        std::fs::read(&file).unwrap(),
        before,
        "the certificate was replaced"
    );

    // The CA gone: issuance fails with a reason, a Warning event, and the
    // site keeps its last good certificate.
    pebble.stop();
    app.store
        .request_renewal(Some("alice.sites.test"))
        .await
        .unwrap();
    let stats = tls::pass(&ctl.ctx).await.unwrap();
    assert_eq!(stats.failed, 1, "{stats:?}");
    let row = cert_row(&app, "alice.sites.test").await;
    assert_eq!(row.state, "Failed");
    assert!(
        row.last_error.as_deref().unwrap_or("").contains("ACME"),
        "{row:?}"
    );
    assert!(
        row.next_attempt_at > chrono::Utc::now(),
        "backoff before the next attempt"
    );
    let events = app.store.recent_events(alice_id, 10).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.type_ == "Warning" && e.reason == "CertificateFailed"),
        "{events:?}"
    );
    let r = client
        .get(format!("https://alice.sites.test:{https}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "still served with the last certificate");
    // Backing off: the next pass does not try again yet.
    assert_eq!(tls::pass(&ctl.ctx).await.unwrap().failed, 0);

    // Removing the domain stops serving it and removes its certificate.
    let r = app
        .client
        .delete(app.url("/api/v1/host/my/domains/www.alice-shop.test"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let stats = tls::pass(&ctl.ctx).await.unwrap();
    assert!(stats.map_changed);
    assert!(!tls_dir.join("live/www.alice-shop.test.pem").exists());
    settle(&ctl, alice_id).await;
    let gone = eventually(Duration::from_secs(10), || async {
        (http_get(http, "www.alice-shop.test", "/x").await.0 == 404).then_some(())
    });
    assert!(gone.await.is_some(), "the removed domain is still routed");
    app.stop().await;
}

/// A tenant whose name servers never answer cannot stall the TLS pass:
/// lookups run at once, each bounded (one timeout per pass, not one per
/// domain). The "DNS server" here is a UDP socket that never replies.
#[tokio::test]
async fn name_servers_that_never_answer_do_not_stall_the_pass() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let db = fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, state.path(), None);
    config.tls.dns_resolver = Some(silent.local_addr().unwrap());
    config.tls.max_domains = 20;
    let app = TestApp::spawn_with(config, Mode::All, false, None, state).await;
    let ctl = app.controller.clone().unwrap();
    let (t, _, _) = create_hosting(&app, "slowdns").await;
    for i in 0..10 {
        let r = app
            .client
            .post(app.url("/api/v1/host/my/domains"))
            .bearer_auth(&t)
            .json(&serde_json::json!({"name": format!("d{i}.slow.test")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let started = std::time::Instant::now();
    tls::pass(&ctl.ctx).await.unwrap();
    let took = started.elapsed();
    // One bounded lookup (5 s) per pass; ten in a row would take 50 s.
    assert!(took < Duration::from_secs(15), "the pass took {took:?}");
    let (_, list) = app.get_json(&t, "/api/v1/host/my/domains").await;
    for d in list.as_array().unwrap() {
        assert_eq!(d["state"], "PendingVerification");
        let e = d["last_error"].as_str().unwrap_or("");
        assert!(
            e.contains("no answer") || e.contains("cannot look up"),
            "{d}"
        );
    }
    drop(silent);
    app.stop().await;
}

/// `HOSTD_MAX_DOMAINS`: past it a claim is refused (422) and nothing is
/// stored; removing one makes room. A tenant without a hosting gets 404.
#[tokio::test]
async fn the_domain_limit_holds_at_the_api() {
    let db = fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, state.path(), None);
    config.tls.max_domains = 2;
    let app = TestApp::spawn_with(config, Mode::Api, false, None, state).await;
    let (nohost, _) = app.user("dom-nohost").await;
    let (t, _, _) = create_hosting(&app, "dom-limit").await;
    let add = |token: String, name: &'static str| {
        let (c, url) = (app.client.clone(), app.url("/api/v1/host/my/domains"));
        async move {
            let r = c
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"name": name}))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.text().await.unwrap())
        }
    };
    assert_eq!(add(nohost, "a.limit.test").await.0, 404);
    assert_eq!(add(t.clone(), "a.limit.test").await.0, 201);
    assert_eq!(add(t.clone(), "a.limit.test").await.0, 409, "already yours");
    assert_eq!(add(t.clone(), "b.limit.test").await.0, 201);
    let (s, body) = add(t.clone(), "c.limit.test").await;
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("at most 2"), "{body}");
    let (_, list) = app.get_json(&t, "/api/v1/host/my/domains").await;
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "nothing stored past the limit"
    );
    let r = app
        .client
        .delete(app.url("/api/v1/host/my/domains/a.limit.test"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(add(t, "c.limit.test").await.0, 201, "room again");
}

/// A CA and a `*.sites.test` certificate it signed, as PEM files in `dir`:
/// (CA certificate for clients, chain file, key file).
fn wildcard_files(
    dir: &std::path::Path,
) -> (reqwest::Certificate, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["*.sites.test".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert, keyf) = (dir.join("wildcard.crt"), dir.join("wildcard.key"));
    std::fs::write(&cert, leaf.pem() + &ca.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    (
        reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap(),
        cert,
        keyf,
    )
}

/// A GET with a fresh connection: (status, Strict-Transport-Security, body).
async fn get_sts(client: &reqwest::Client, url: &str) -> (u16, Option<String>, String) {
    let r = client.get(url).send().await.unwrap();
    let sts = r
        .headers()
        .get("strict-transport-security")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), sts, r.text().await.unwrap())
}

/// The operator's wildcard certificate serves every tenant name without an
/// ACME order; HSTS is the hosting's opt-in, only on its own names over
/// HTTPS, never a guest's own header; a stopped site's 503 page is served
/// over TLS too (with the hosting's HSTS).
#[tokio::test]
async fn a_wildcard_certificate_serves_tenants_with_hsts_opt_in_and_the_stopped_page() {
    let state = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let tls_dir = state.path().join("tls");
    let nginx = TestNginx::start_full(Some("sites.test"), Some(&tls_dir), None);
    let (http, https) = (nginx.port, nginx.https_port.unwrap());
    let files = tempfile::tempdir().unwrap();
    let (ca, cert, key) = wildcard_files(files.path());
    let db = fresh_database().await;
    let mut config = test_config(&db, state.path(), Some(&nginx));
    config.sites.sites_domain = Some("sites.test".into());
    config.tls.wildcard = Some((cert, key));
    let app = TestApp::spawn_with(config, Mode::All, false, Some(nginx), state).await;
    let ctl = app.controller.clone().unwrap();

    // A guest that tries to pin the whole sites domain to HTTPS itself.
    let (t, uid, id) = create_hosting(&app, "wally").await;
    ctl.reconcile_once(id).await.unwrap();
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    let _guest = fake_guest_with_headers(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "ok",
        &["Strict-Transport-Security: max-age=63072000; includeSubDomains; preload"],
    )
    .await;
    assert_eq!(
        settle(&ctl, id).await,
        hostd::reconciler::Action::AwaitChange
    );
    let stats = tls::pass(&ctl.ctx).await.unwrap();
    assert_eq!(stats.issued, 0, "no ACME order with a wildcard: {stats:?}");
    assert!(stats.map_changed);
    assert!(
        app.store.list_certificates().await.unwrap().is_empty(),
        "no per-tenant certificate"
    );
    let client = https_client(&ca, &["wally.sites.test"], https);
    let site = format!("https://wally.sites.test:{https}/");
    https_until(&client, &site, "ok").await;
    let (_, sts, _) = get_sts(&client, &site).await;
    assert_eq!(sts, None, "the guest's own header is not passed on");
    // The shared path origin, over TLS (the fallback certificate).
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let shared = format!("https://127.0.0.1:{https}/{uid}/");
    let (s, sts, body) = get_sts(&insecure, &shared).await;
    assert_eq!((s, body.as_str(), sts), (200, "ok", None));
    let (s, loc, _) = http_get(http, "wally.sites.test", "/x").await;
    assert_eq!(
        (s, loc.as_str()),
        (301, format!("https://wally.sites.test:{https}/x").as_str())
    );

    // Opted in: sent on the tenant's name over HTTPS only.
    let patch = |body: serde_json::Value| {
        let (c, url, t) = (app.client.clone(), app.url("/api/v1/host/my"), t.clone());
        async move {
            let r = c
                .patch(url)
                .bearer_auth(t)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    patch(serde_json::json!({"hsts": true})).await;
    let (_, view) = app.get_json(&t, "/api/v1/host/my").await;
    assert_eq!(view["spec"]["hsts"], true);
    assert_eq!(
        settle(&ctl, id).await,
        hostd::reconciler::Action::AwaitChange
    );
    let mut sts = None;
    for _ in 0..100 {
        sts = get_sts(&client, &site).await.1;
        if sts.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sts.as_deref(), Some("max-age=31536000"));
    let (_, sts, _) = get_sts(&insecure, &shared).await;
    assert_eq!(sts, None, "never on the shared origin");
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (s, sts, _) = get_sts(&plain, &format!("http://127.0.0.1:{http}/{uid}/")).await;
    assert_eq!((s, sts), (200, None), "never over plain HTTP");

    // Stopped: the 503 page over TLS, still with the hosting's HSTS.
    patch(serde_json::json!({"running": false})).await;
    settle_stopped(&ctl, id).await;
    let mut last = (0, None, String::new());
    for _ in 0..100 {
        last = get_sts(&client, &site).await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 503, "{last:?}");
    assert!(last.2.contains("This site is stopped"), "{last:?}");
    assert_eq!(last.1.as_deref(), Some("max-age=31536000"));
    app.stop().await;
}
