//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers'
//! `#[utoipa::path]` annotations. The router is built from the same
//! annotations (`utoipa_axum::routes!`), so a documented path is a routed
//! path by construction; `tests/openapi.rs` checks the other direction
//! against the live app, and `scripts/schemathesis.sh` fuzzes the document.
//!
//! Error responses every operation can give are added here in one place
//! ([`standard_errors`]) instead of on each handler: 500 and 503 everywhere;
//! 401 where a bearer token is required; 400, 413, 415 and 422 where there is
//! a request body. Handler annotations list only their specific outcomes.

use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

/// The document's fixed parts; paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "hostd",
        description = "Self-hosted web hosting: one VM per user running nginx, reachable at \
                       /<user id>/ and over SSH. Writes record desired state; the reconciler \
                       converges to it and reports status, conditions and events.",
        license(name = "MIT")
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "hosting", description = "The caller's hosting (desired state and status)"),
        (name = "domains", description = "The caller's custom domains (verified by DNS, served over HTTPS)"),
        (name = "admin", description = "Operators only"),
        (name = "meta", description = "Health, version, this document"),
    )
)]
pub struct ApiDoc;

/// Security scheme name used by the handlers' `security(("bearer" = []))`.
pub const BEARER: &str = "bearer";

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A token from POST /api/v1/auth/login (`Authorization: Bearer …`).",
                    ))
                    .build(),
            ),
        );
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/json", content)
        .build()
        .into()
}

/// Every operation with its method, for walking the document.
pub fn operations(
    doc: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (String, HttpMethod, &mut Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            (HttpMethod::Get, item.get.as_mut()),
            (HttpMethod::Put, item.put.as_mut()),
            (HttpMethod::Post, item.post.as_mut()),
            (HttpMethod::Delete, item.delete.as_mut()),
            (HttpMethod::Patch, item.patch.as_mut()),
        ]
        .into_iter()
        .filter_map(move |(m, op)| op.map(|op| (path.clone(), m, op)))
    })
}

/// Adds the error responses shared by every operation (see the module doc).
pub fn standard_errors(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    for (_, _, op) in operations(&mut doc) {
        let secured = op
            .security
            .as_ref()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|r| r != &Default::default()));
        let has_body = op.request_body.is_some();
        let mut add = |code: &str, what: &str| {
            op.responses
                .responses
                .entry(code.to_string())
                .or_insert_with(|| error_response(what));
        };
        add("500", "Internal error (logged; the body echoes nothing)");
        add(
            "503",
            "A dependency is unavailable, or the server is busy (`Retry-After`)",
        );
        if secured {
            add("401", "Missing, invalid, expired or revoked bearer token");
        }
        if has_body {
            add("400", "Malformed body");
            add("413", "Body larger than 64 KiB");
            add("415", "Wrong Content-Type");
            add("422", "A field failed validation (the message names it)");
        }
    }
    doc
}
