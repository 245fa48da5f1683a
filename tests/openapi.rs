//! The OpenAPI contract against the live router: every documented operation
//! is routed (neither the 404 fallback nor 405) and answers with a status
//! code the document lists; every `#[utoipa::path]` in the source is in the
//! document; no `/api/` route is added beside the documented list. The
//! schemathesis run in `scripts/schemathesis.sh` fuzzes the same document.

mod common;

use common::TestApp;
use serde_json::{json, Value};

async fn document(app: &TestApp) -> Value {
    let r = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

/// (path, method) of every operation, creates first and deletes last so that
/// each call finds the state it documents.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            ops.push((path.clone(), method.clone()));
        }
    }
    let rank = |(p, m): &(String, String)| match (p.as_str(), m.as_str()) {
        ("/api/v1/host", "post") => 0,
        (_, "delete") => 2,
        _ => 1,
    };
    ops.sort_by_key(rank);
    ops
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_answers_as_documented() {
    let app = TestApp::api().await;
    let admin = app.admin("oa-admin").await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let ops = operations(&doc);
    assert!(ops.len() >= 17, "{} operations", ops.len());
    for (path, method) in &ops {
        let op = &doc["paths"][path][method];
        // Secured: a bearer token is required (no empty, anonymous
        // alternative beside it, as `health/detailed` has).
        let secured = op["security"].as_array().is_some_and(|s| {
            s.iter().any(|r| r.get("bearer").is_some())
                && s.iter()
                    .all(|r| r.as_object().is_some_and(|o| !o.is_empty()))
        });
        let mut req = app
            .client
            .request(method.to_uppercase().parse().unwrap(), app.url(path));
        if secured {
            req = req.bearer_auth(&admin);
        }
        if op.get("requestBody").is_some() {
            req = req.json(&json!({}));
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: documented but not routed");
        assert!(
            !body.contains("no such endpoint"),
            "{method} {path}: documented but answered by the fallback"
        );
        let documented = op["responses"].as_object().unwrap();
        assert!(
            documented.contains_key(&status.to_string()),
            "{method} {path} answered {status}, which the document does not list: {body}"
        );
        // Every operation documents the shared error shape.
        for code in ["500", "503"] {
            assert!(
                documented.contains_key(code),
                "{method} {path} lacks {code}"
            );
        }
        if secured {
            assert!(documented.contains_key("401"), "{method} {path} lacks 401");
        }
    }
    // An undocumented path under /api/v1 is the fallback's 404, in the
    // documented error shape.
    let r = app
        .client
        .get(app.url("/api/v1/host/theirs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "not_found");
    app.stop().await;
}

/// Every `#[utoipa::path(method, path = "…")]` in `src/api` is in the
/// document (an annotated handler that is not routed would be missing), and
/// no `/api/` path is routed with a plain `.route(` outside the documented
/// list.
#[tokio::test]
async fn source_annotations_and_routes_agree_with_the_document() {
    let app = TestApp::api().await;
    let doc = document(&app).await;
    let ops = operations(&doc);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    // Every source file under src/api, its subdirectories (the dashboard's) too.
    let mut files = vec![];
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 10, "{files:?}");
    let mut annotated = 0;
    for path in files {
        let src = std::fs::read_to_string(&path).unwrap();
        for chunk in src.split("#[utoipa::path(").skip(1) {
            let method = chunk.split([',', ' ']).next().unwrap().to_string();
            let p = chunk
                .split("path = \"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap()
                .to_string();
            assert!(
                ops.contains(&(p.clone(), method.clone())),
                "{}: {method} {p} is annotated but not in the document",
                path.display()
            );
            annotated += 1;
        }
        for line in src.lines() {
            assert!(
                !(line.contains(".route(\"/api") || line.contains(".nest(\"/api")),
                "{}: an /api route outside the documented list: {line}",
                path.display()
            );
        }
    }
    assert_eq!(
        annotated,
        ops.len(),
        "annotations and operations differ in number"
    );
    app.stop().await;
}
