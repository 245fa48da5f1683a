//! The API's in-process read view (store/view.rs): `GET /host/my` served
//! without touching Postgres, changes made elsewhere visible within a
//! second, a relist after the listening connection dies, and tokens that
//! another API process voids (logout, password change, account deletion)
//! refused at once by this one.

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use hostd::app::Mode;
use hostd::domain::UserId;
use hostd::store::view::Cached;
use serde_json::{json, Value};

/// Waits until `app`'s view is live and serves `user`'s hosting itself.
async fn view_serves(app: &TestApp, user: UserId) {
    let ok = common::eventually(Duration::from_secs(10), || async {
        let v = app.store.view()?;
        let live = v.live()?;
        matches!(live.hosting(user), Cached::Hit(_)).then_some(())
    })
    .await;
    assert!(ok.is_some(), "the read view never served the hosting");
}

fn uid(s: &str) -> UserId {
    UserId(uuid::Uuid::parse_str(s).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_my_is_served_from_the_view_and_follows_changes_made_elsewhere() {
    let app = TestApp::api().await;
    let (token, id, hosting) = common::create_hosting(&app, "view-reader").await;
    view_serves(&app, uid(&id)).await;

    // No database round trip: with the tables it reads locked by another
    // transaction, GET /host/my still answers at once.
    let mut locker = app.store.db().begin().await.unwrap();
    sqlx::query("lock table hostings, hosting_status, events, users in access exclusive mode")
        .execute(&mut *locker)
        .await
        .unwrap();
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        app.client
            .get(app.url("/api/v1/host/my"))
            .bearer_auth(&token)
            .send(),
    )
    .await
    .expect("GET /host/my waited on Postgres")
    .unwrap();
    assert_eq!(r.status(), 200);
    println!("GET /host/my with its tables locked: {:?}", t.elapsed());
    locker.rollback().await.unwrap();

    // A change made elsewhere (here: SQL, as another process's reconciler
    // would write it) is visible within a second.
    let t = Instant::now();
    sqlx::query("update hosting_status set message = 'changed elsewhere' where hosting_id = $1")
        .bind(hosting.0)
        .execute(&app.store.db())
        .await
        .unwrap();
    let seen = common::eventually(Duration::from_secs(1), || async {
        let (_, v) = app.get_json(&token, "/api/v1/host/my").await;
        (v["status"]["message"] == "changed elsewhere").then_some(t.elapsed())
    })
    .await;
    let took = seen.expect("a change made elsewhere was not visible within 1 s");
    println!("change visible after {took:?}");
    let stats = app.store.view().unwrap().stats();
    println!("{stats:?}");
    assert!(stats.live && stats.changes_applied >= 1);

    // This process's own writes are read back at once (a patch, then GET).
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&token)
        .json(&json!({"memory_mib": 1024}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = app.get_json(&token, "/api/v1/host/my").await;
    assert_eq!(v["spec"]["memory_mib"], 1024);
    assert_eq!(v["events"][0]["reason"], "SpecChanged");

    // The listening connection dies: the view relists, and what changed
    // meanwhile is there.
    let before = app.store.view().unwrap().stats().relists;
    let killed: Vec<(bool,)> = sqlx::query_as(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = current_database() and query ilike 'listen%hostd_view%'",
    )
    .fetch_all(&app.store.db())
    .await
    .unwrap();
    assert_eq!(killed, vec![(true,)], "the view's listening connection");
    sqlx::query(
        "update hosting_status set message = 'changed during the outage' where hosting_id = $1",
    )
    .bind(hosting.0)
    .execute(&app.store.db())
    .await
    .unwrap();
    let back = common::eventually(Duration::from_secs(10), || async {
        let (_, v) = app.get_json(&token, "/api/v1/host/my").await;
        let s = app.store.view().unwrap().stats();
        (s.live && s.relists > before && v["status"]["message"] == "changed during the outage")
            .then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "the view did not relist after its connection died"
    );
    app.stop().await;
}

/// Two API processes on one database and one Redis: what one of them
/// voids, the other refuses on the very next request, though its view has
/// the user (and may not have heard yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_voided_by_one_api_are_refused_at_once_by_the_other() {
    let a = TestApp::api().await;
    let mut cfg = a.config.clone();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let b = TestApp::spawn_with(cfg, Mode::Api, false, None, tempfile::tempdir().unwrap()).await;
    let (t1, id) = a.user("view-victim").await;
    let t2 = a.login("view-victim", "correct horse").await;
    let user = uid(&id);
    // b's view knows the user: the fast path is the one under test.
    let known = common::eventually(Duration::from_secs(10), || async {
        let live = b.store.view()?.live()?;
        matches!(live.user(user), Cached::Hit(_)).then_some(())
    })
    .await;
    assert!(known.is_some());
    // b hears of every change 3 s late: nothing below may depend on it.
    b.store
        .view()
        .unwrap()
        .delay_notifications(Duration::from_secs(3));
    let me = |app: &TestApp, t: &str| {
        let req = app.client.get(app.url("/api/v1/auth/me")).bearer_auth(t);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(me(&b, &t1).await, 200);

    // Logout on a: t1 refused by b at once.
    let r = a
        .client
        .post(a.url("/api/v1/auth/logout"))
        .bearer_auth(&t1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(me(&b, &t1).await, 401, "b accepted a token a revoked");
    assert_eq!(me(&b, &t2).await, 200);

    // Password change on a: t2 refused by b at once; the new token works.
    let r = a
        .client
        .put(a.url("/api/v1/auth/password"))
        .bearer_auth(&t2)
        .json(&json!({"old_password": "correct horse", "new_password": "correct horse 2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t3 = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        me(&b, &t2).await,
        401,
        "b accepted a token of an old password"
    );
    assert_eq!(me(&b, &t3).await, 200);

    // The account deleted on a: refused by both at once.
    let r = a
        .client
        .delete(a.url("/api/v1/auth/me"))
        .bearer_auth(&t3)
        .json(&json!({"password": "correct horse 2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(me(&b, &t3).await, 401, "b accepted a deleted user's token");
    assert_eq!(me(&a, &t3).await, 401);
    let (n,): (i64,) = sqlx::query_as("select count(*) from users where id = $1")
        .bind(user.0)
        .fetch_one(&a.store.db())
        .await
        .unwrap();
    assert_eq!(n, 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_account_with_a_hosting_is_not_deleted() {
    let app = TestApp::api().await;
    let (token, _, _) = common::create_hosting(&app, "view-owner").await;
    let del = |pw: &str| {
        app.client
            .delete(app.url("/api/v1/auth/me"))
            .bearer_auth(&token)
            .json(&json!({ "password": pw }))
            .send()
    };
    assert_eq!(del("wrong password").await.unwrap().status(), 401);
    let r = del("correct horse").await.unwrap();
    assert_eq!(r.status(), 409);
    let (s, _) = app.get_json(&token, "/api/v1/auth/me").await;
    assert_eq!(s, 200);
    app.stop().await;
}
