//! The SSH keys page (`/ui/keys`): the hosting's keys with their
//! fingerprints, add (pasted or read from a `.pub` file), remove, and
//! whether the last change has reached the guest (live through the guest
//! agent, or at the next boot), followed live over the hosting's status
//! stream. A change is a spec patch with the API's validation
//! (`crate::api::hosting::patch_for`).

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::forms::to_hosting;
use super::pages::{live_status, my_record, KeyItem, KeysPage};
use super::session::{render, shown, WebError, WebUser};
use crate::api::error::ApiError;
use crate::api::hosting::{host_op, patch_for};
use crate::api::AppState;
use crate::domain::SpecPatch;

/// The page, with a form's error (and its status).
async fn page(
    st: &AppState,
    u: &WebUser,
    status: StatusCode,
    error: Option<String>,
    pasted: String,
) -> Result<Response, WebError> {
    let Some(rec) = my_record(st, u.user.id).await? else {
        return Ok(to_hosting());
    };
    let events = st.store.recent_events(rec.id, 20).await?;
    let live = live_status(st, &rec, &events);
    let keys = rec
        .spec
        .ssh_public_keys
        .iter()
        .map(|k| KeyItem {
            kind: k.kind().to_string(),
            comment: k.comment().to_string(),
            fingerprint: k.fingerprint(),
        })
        .collect();
    let body = render(&KeysPage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        error,
        keys,
        live,
        pasted,
    });
    Ok((status, body).into_response())
}

/// `GET /ui/keys`
pub(super) async fn keys_page(
    State(st): State<AppState>,
    u: WebUser,
) -> Result<Response, WebError> {
    page(&st, &u, StatusCode::OK, None, String::new()).await
}

/// Writes the new key list (the API's validation and limits); back to the
/// page, or the page with the error and what was pasted.
async fn write_keys(
    st: &AppState,
    u: &WebUser,
    keys: Result<Vec<String>, ApiError>,
    pasted: String,
) -> Result<Response, WebError> {
    let result = async {
        let keys = keys?;
        host_op(st, u.user.id).await?;
        let patch = SpecPatch {
            ssh_public_keys: Some(keys),
            ..SpecPatch::default()
        };
        patch_for(st, u.user.id, &patch).await
    }
    .await;
    match result {
        Ok(_) => Ok(Redirect::to("/ui/keys").into_response()),
        Err(e) => {
            let (status, msg) = shown(e)?;
            page(st, u, status, Some(msg), pasted).await
        }
    }
}

/// The hosting's keys as the API's patch takes them.
async fn current(st: &AppState, u: &WebUser) -> Result<Vec<String>, ApiError> {
    let rec = crate::api::hosting::hosting_of(st, u.user.id).await?;
    Ok(rec
        .spec
        .ssh_public_keys
        .iter()
        .map(|k| k.as_str().to_string())
        .collect())
}

#[derive(Deserialize)]
pub(super) struct AddForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    ssh_key: String,
}

/// `POST /ui/keys/add`: one key or more, one per line (`#` lines skipped).
pub(super) async fn keys_add(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<AddForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let new = super::forms::key_lines(&f.ssh_key);
    let keys = match current(&st, &u).await {
        Ok(_) if new.is_empty() => Err(ApiError::Unprocessable(
            "ssh_public_keys: paste a public key (or pick a .pub file)".into(),
        )),
        Ok(mut keys) => {
            for k in new {
                // The form a key is stored in, so a key pasted twice is one.
                let k = crate::domain::SshPublicKey::parse(&k)
                    .map(|p| p.as_str().to_string())
                    .unwrap_or(k);
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            Ok(keys)
        }
        Err(e) => Err(e),
    };
    write_keys(&st, &u, keys, f.ssh_key).await
}

#[derive(Deserialize)]
pub(super) struct RemoveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    fingerprint: String,
}

/// `POST /ui/keys/remove`: the key with that fingerprint goes.
pub(super) async fn keys_remove(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<RemoveForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let keys = async {
        let rec = crate::api::hosting::hosting_of(&st, u.user.id).await?;
        let before = rec.spec.ssh_public_keys.len();
        let kept: Vec<String> = rec
            .spec
            .ssh_public_keys
            .iter()
            .filter(|k| k.fingerprint() != f.fingerprint)
            .map(|k| k.as_str().to_string())
            .collect();
        if kept.len() == before {
            return Err(ApiError::NotFound(
                "your hosting has no key with that fingerprint",
            ));
        }
        Ok(kept)
    }
    .await;
    write_keys(&st, &u, keys, String::new()).await
}
