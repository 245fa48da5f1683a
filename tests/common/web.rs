//! Dashboard helpers: a client that does not follow redirects, cookies,
//! the CSRF field of a page, a login through the form, and a form post
//! with a session.

use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::redirect::Policy;

use super::TestApp;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// `name=value` of a Set-Cookie header named `name`.
pub fn cookie_of(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_string())
}

/// The hidden CSRF field of a page.
pub fn csrf_in(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[i..].split('"').next().unwrap().to_string()
}

/// Logs in through the login form; the session cookie (`name=value`).
pub async fn web_login(app: &TestApp, c: &reqwest::Client, user: &str) -> String {
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

/// A page's HTML with a session (status checked: 200).
pub async fn page(app: &TestApp, session: &str, path: &str) -> String {
    let r = client()
        .get(app.url(path))
        .header(COOKIE, session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.text().await.unwrap()
}

/// Posts a form with a session: (status, body).
pub async fn post_form(
    app: &TestApp,
    session: &str,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, String) {
    let r = client()
        .post(app.url(path))
        .header(COOKIE, session)
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}
