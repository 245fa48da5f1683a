//! The dashboard's security properties without a browser (the Chromium test,
//! tests/browser/test_dashboard.py, drives the same pages for real): CSRF
//! tokens and Origin checks on every form, sessions that a password change
//! voids, bearer-only JSON API, security headers, escaped guest text.

mod common;

use common::TestApp;
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::redirect::Policy;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// `name=value` of a Set-Cookie header named `name`.
fn cookie_of(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// The hidden CSRF field of a page.
fn csrf_in(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[i..].split('"').next().unwrap().to_string()
}

/// Logs in through the login form; the session cookie (`name=value`).
async fn web_login(app: &TestApp, c: &reqwest::Client, user: &str) -> String {
    let r = c.get(app.url("/ui/login")).send().await.unwrap();
    let pre = cookie_of(&r, "hostd_presession").unwrap();
    let token = csrf_in(&r.text().await.unwrap());
    let r = c
        .post(app.url("/ui/login"))
        .header(COOKIE, &pre)
        .form(&[
            ("csrf", token.as_str()),
            ("username", user),
            ("password", "correct horse"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("hostd_session="))
        .unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "{set}");
    }
    cookie_of(&r, "hostd_session").unwrap()
}

async fn hostings(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("select count(*) from hostings where not warm_pool")
        .fetch_one(&app.store.db())
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn forms_need_the_session_token_and_this_origin() {
    let app = TestApp::api().await;
    let c = client();
    app.user("web-alice").await;
    // A login post without the pre-session token: refused, no session.
    let r = c
        .post(app.url("/ui/login"))
        .form(&[("username", "web-alice"), ("password", "correct horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(cookie_of(&r, "hostd_session").is_none());

    let session = web_login(&app, &c, "web-alice").await;
    let r = c
        .get(app.url("/ui/hosting"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let page = r.text().await.unwrap();
    assert!(
        !page.contains("<script>") && !page.contains(" style="),
        "inline script or style"
    );
    let token = csrf_in(&page);
    let create = [("csrf", token.as_str()), ("size", "1:512"), ("ssh_key", "")];

    // No token; a wrong token; another session's token; the right token
    // from another origin; the right token with Sec-Fetch-Site cross-site.
    let other = {
        app.user("web-mallory").await;
        let s = web_login(&app, &c, "web-mallory").await;
        let r = c
            .get(app.url("/ui/hosting"))
            .header(COOKIE, &s)
            .send()
            .await
            .unwrap();
        csrf_in(&r.text().await.unwrap())
    };
    type Attempt<'a> = (Vec<(&'a str, &'a str)>, Option<(&'a str, &'a str)>);
    let attempts: Vec<Attempt> = vec![
        (vec![("size", "1:512")], None),
        (vec![("csrf", "AAAA"), ("size", "1:512")], None),
        (vec![("csrf", other.as_str()), ("size", "1:512")], None),
        (
            create.to_vec(),
            Some((ORIGIN.as_str(), "http://127.0.0.1:1")),
        ),
        (create.to_vec(), Some(("sec-fetch-site", "cross-site"))),
    ];
    for (form, header) in attempts {
        let mut req = c
            .post(app.url("/ui/hosting"))
            .header(COOKIE, &session)
            .form(&form);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "{form:?} {header:?}");
        assert_eq!(hostings(&app).await, 0, "a refused form created a hosting");
    }
    // The right token, same origin: created.
    let origin = format!("http://{}", app.addr);
    let r = c
        .post(app.url("/ui/hosting"))
        .header(COOKIE, &session)
        .header(ORIGIN, &origin)
        .form(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/hosting");
    assert_eq!(hostings(&app).await, 1);

    // The JSON API never takes the cookie.
    let r = c
        .get(app.url("/api/v1/auth/me"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn a_password_change_or_logout_ends_the_session() {
    let app = TestApp::api().await;
    let c = client();
    let (token, _) = app.user("web-bob").await;
    let session = web_login(&app, &c, "web-bob").await;
    let page = |s: String| {
        let c = c.clone();
        let url = app.url("/ui/hosting");
        async move { c.get(url).header(COOKIE, s).send().await.unwrap() }
    };
    assert_eq!(page(session.clone()).await.status(), 200);
    let r = c
        .put(app.url("/api/v1/auth/password"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"old_password": "correct horse", "new_password": "correct horse 2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = page(session).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/login");

    // Logout (with its token) deletes the session.
    let r = c.get(app.url("/ui/login")).send().await.unwrap();
    let pre = cookie_of(&r, "hostd_presession").unwrap();
    let t = csrf_in(&r.text().await.unwrap());
    let r = c
        .post(app.url("/ui/login"))
        .header(COOKIE, &pre)
        .form(&[
            ("csrf", t.as_str()),
            ("username", "web-bob"),
            ("password", "correct horse 2"),
        ])
        .send()
        .await
        .unwrap();
    let s2 = cookie_of(&r, "hostd_session").unwrap();
    let t2 = csrf_in(&page(s2.clone()).await.text().await.unwrap());
    let r = c
        .post(app.url("/ui/logout"))
        .header(COOKIE, &s2)
        .form(&[("csrf", t2.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(page(s2).await.status(), 303);
    app.stop().await;
}

#[tokio::test]
async fn guest_console_text_is_escaped_on_the_page() {
    let app = TestApp::api().await;
    let c = client();
    let (_, _, id) = common::create_hosting(&app, "web-carol").await;
    app.store
        .save_console(
            id,
            100,
            "<script>alert(1)</script><img src=x onerror=alert(2)>",
        )
        .await
        .unwrap();
    let s = web_login(&app, &c, "web-carol").await;
    let r = c
        .get(app.url("/ui/hosting/console"))
        .header(COOKIE, &s)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || html.contains("&lt;script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>alert") && !html.contains("<img src=x"));
    app.stop().await;
}

#[tokio::test]
async fn custom_domains_are_added_shown_and_removed_from_the_page() {
    let app = TestApp::api().await;
    let c = client();
    let (t, _, _) = common::create_hosting(&app, "web-dom").await;
    let session = web_login(&app, &c, "web-dom").await;
    let page = |c: reqwest::Client, s: String| {
        let url = app.url("/ui/hosting");
        async move {
            c.get(url)
                .header(COOKIE, s)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let html = page(c.clone(), session.clone()).await;
    let csrf = csrf_in(&html);
    assert!(
        html.contains("id=\"domain-form\""),
        "the page offers to add a domain"
    );
    let post = |path: &'static str, name: &'static str, token: String| {
        let (c, s, url) = (c.clone(), session.clone(), app.url(path));
        async move {
            c.post(url)
                .header(COOKIE, s)
                .form(&[("csrf", token.as_str()), ("name", name)])
                .send()
                .await
                .unwrap()
        }
    };
    // Without the CSRF token: refused, nothing added.
    let r = post("/ui/hosting/domains", "shop.example.net", "forged".into()).await;
    assert_eq!(r.status(), 403);
    assert!(app
        .get_json(&t, "/api/v1/host/my/domains")
        .await
        .1
        .as_array()
        .unwrap()
        .is_empty());
    // Added: the page shows its TXT record (escaped like all guest-controlled text).
    let r = post("/ui/hosting/domains", "Shop.Example.NET", csrf.clone()).await;
    assert_eq!(r.status(), 303);
    let (_, list) = app.get_json(&t, "/api/v1/host/my/domains").await;
    let value = list[0]["txt_value"].as_str().unwrap().to_string();
    let html = page(c.clone(), session.clone()).await;
    assert!(
        html.contains("_hostd-challenge.shop.example.net") && html.contains(&value),
        "{html}"
    );
    assert!(html.contains("PendingVerification"));
    // The API's validation, shown on the page with its status.
    let r = post("/ui/hosting/domains", "<b>1.2.3.4</b>", csrf.clone()).await;
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("not a valid") || body.contains("IP address"),
        "{body}"
    );
    assert!(!body.contains("<b>1.2.3.4</b>"), "input is escaped");
    // HSTS, the hosting's opt-in: off, turned on (CSRF-checked), shown.
    assert!(html.contains("id=\"hsts-state\">off<"), "{html}");
    let hsts = |value: &'static str, token: String| {
        let (c, s, url) = (c.clone(), session.clone(), app.url("/ui/hosting/hsts"));
        async move {
            c.post(url)
                .header(COOKIE, s)
                .form(&[("csrf", token.as_str()), ("hsts", value)])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(hsts("true", "forged".into()).await, 403);
    assert_eq!(hsts("maybe", csrf.clone()).await, 422);
    assert_eq!(
        app.get_json(&t, "/api/v1/host/my").await.1["spec"]["hsts"],
        false
    );
    assert_eq!(hsts("true", csrf.clone()).await, 303);
    assert_eq!(
        app.get_json(&t, "/api/v1/host/my").await.1["spec"]["hsts"],
        true
    );
    let html = page(c.clone(), session.clone()).await;
    assert!(html.contains("id=\"hsts-state\">on<"), "{html}");
    // Removed.
    let r = post("/ui/hosting/domains/remove", "shop.example.net", csrf).await;
    assert_eq!(r.status(), 303);
    assert!(app
        .get_json(&t, "/api/v1/host/my/domains")
        .await
        .1
        .as_array()
        .unwrap()
        .is_empty());
}

/// Over HTTPS (`HOSTD_SECURE_COOKIES`): `__Host-` cookies (Secure, Path=/,
/// no Domain: no sibling host can set or shadow them), and a cookie sent
/// twice (one planted by a page on another host) is refused.
#[tokio::test]
async fn secure_cookies_use_the_host_prefix_and_a_duplicate_is_refused() {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), None);
    config.secure_cookies = true;
    let app = TestApp::spawn_with(config, hostd::app::Mode::Api, false, None, state).await;
    app.user("web-secure").await;
    let c = client();
    let r = c.get(app.url("/ui/login")).send().await.unwrap();
    let pre = cookie_of(&r, "__Host-hostd_presession").expect("a __Host- pre-session cookie");
    let token = csrf_in(&r.text().await.unwrap());
    let r = c
        .post(app.url("/ui/login"))
        .header(COOKIE, &pre)
        .form(&[
            ("csrf", token.as_str()),
            ("username", "web-secure"),
            ("password", "correct horse"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("__Host-hostd_session="))
        .expect("a __Host- session cookie");
    for attr in ["; Path=/;", "; Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    let session = cookie_of(&r, "__Host-hostd_session").unwrap();
    let page = |cookie: String| {
        let (c, url) = (c.clone(), app.url("/ui/hosting"));
        async move {
            c.get(url)
                .header(COOKIE, cookie)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(page(session.clone()).await, 200);
    // A second cookie of the name beside it: refused, whichever comes first.
    let planted = "__Host-hostd_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(page(format!("{session}; {planted}")).await, 303);
    assert_eq!(page(format!("{planted}; {session}")).await, 303);
    // The name without the prefix (settable by any sibling host) is not read.
    let bare = session.replacen("__Host-", "", 1);
    assert_eq!(page(bare).await, 303);
}

/// The account page: a password change ends the other sessions and the API
/// tokens while this browser continues; forged posts change nothing; the
/// account cannot be deleted while it has a hosting, then can; "log out
/// everywhere" ends this session too.
#[tokio::test]
async fn the_account_page_changes_the_password_logs_out_everywhere_and_deletes() {
    let app = TestApp::api().await;
    let c = client();
    let (token, _, _) = common::create_hosting(&app, "web-acct").await;
    let mine = web_login(&app, &c, "web-acct").await;
    let other = web_login(&app, &c, "web-acct").await;
    let get = |s: String, path: &'static str| {
        let (c, url) = (c.clone(), app.url(path));
        async move {
            let r = c.get(url).header(COOKIE, s).send().await.unwrap();
            let loc = r
                .headers()
                .get(LOCATION)
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), loc, r.text().await.unwrap())
        }
    };
    let post = |s: String, path: &'static str, form: Vec<(&'static str, String)>| {
        let (c, url) = (c.clone(), app.url(path));
        async move {
            c.post(url)
                .header(COOKIE, s)
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    let (status, _, html) = get(mine.clone(), "/ui/account").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("web-acct@example.com") || html.contains("web-acct"),
        "{html}"
    );
    assert!(html.contains("id=\"delete-account-blocked\""), "{html}");
    let csrf = csrf_in(&html);
    let pw = |old: &str, new: &str, csrf: &str| {
        vec![
            ("csrf", csrf.to_string()),
            ("old_password", old.to_string()),
            ("new_password", new.to_string()),
        ]
    };

    // Forged: refused, nothing changed.
    let r = post(
        mine.clone(),
        "/ui/account/password",
        pw("correct horse", "new horse battery", "forged"),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(app.get_json(&token, "/api/v1/auth/me").await.0, 200);
    // A wrong current password: the page says so.
    let r = post(
        mine.clone(),
        "/ui/account/password",
        pw("wrong horse", "new horse battery", &csrf),
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("id=\"account-error\""));
    // Changed: this browser gets a new session; the other browser and the
    // API token are signed out.
    let r = post(
        mine.clone(),
        "/ui/account/password",
        pw("correct horse", "new horse battery", &csrf),
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/account?changed=password");
    let mine = cookie_of(&r, "hostd_session").expect("a fresh session");
    let (status, _, html) = get(mine.clone(), "/ui/account?changed=password").await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"account-notice\""), "{html}");
    let (status, loc, _) = get(other.clone(), "/ui/hosting").await;
    assert_eq!(
        (status, loc.as_deref()),
        (303, Some("/ui/login")),
        "the other session ended"
    );
    assert_eq!(
        app.get_json(&token, "/api/v1/auth/me").await.0,
        401,
        "the old token ended"
    );
    let csrf = csrf_in(&html);
    // Deleting is refused while the hosting exists.
    let del = |password: &str, csrf: &str| {
        vec![
            ("csrf", csrf.to_string()),
            ("password", password.to_string()),
        ]
    };
    let r = post(
        mine.clone(),
        "/ui/account/delete",
        del("new horse battery", &csrf),
    )
    .await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("delete it first"));
    // Log out everywhere: this session ends too.
    let r = post(
        mine.clone(),
        "/ui/account/logout-all",
        vec![("csrf", "forged".into())],
    )
    .await;
    assert_eq!(r.status(), 403);
    let (status, _, _) = get(mine.clone(), "/ui/account").await;
    assert_eq!(status, 200, "a forged post ends nothing");
    let r = post(
        mine.clone(),
        "/ui/account/logout-all",
        vec![("csrf", csrf.clone())],
    )
    .await;
    assert_eq!(r.status(), 303);
    let (status, loc, _) = get(mine, "/ui/account").await;
    assert_eq!((status, loc.as_deref()), (303, Some("/ui/login")));

    // An account without a hosting is deleted (forged and wrong-password
    // posts first change nothing).
    app.user("web-gone").await;
    let s = web_login(&app, &c, "web-gone").await;
    let (_, _, html) = get(s.clone(), "/ui/account").await;
    let csrf = csrf_in(&html);
    assert!(!html.contains("delete-account-blocked"));
    let r = post(
        s.clone(),
        "/ui/account/delete",
        del("correct horse", "forged"),
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = post(s.clone(), "/ui/account/delete", del("wrong horse", &csrf)).await;
    assert_eq!(r.status(), 401);
    app.login("web-gone", "correct horse").await;
    let r = post(s.clone(), "/ui/account/delete", del("correct horse", &csrf)).await;
    assert_eq!(r.status(), 303);
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .form(&[("username", "web-gone"), ("password", "correct horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the account is gone");
    app.stop().await;
}
