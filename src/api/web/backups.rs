//! The backups page (`/ui/backups`): the hosting's backups, "take a backup
//! now" (disabled with the reason while one is pending or running), each
//! running backup's progress followed live (`/ui/backups/events`), and a
//! restore behind a confirmation page that says what is replaced and where
//! the replaced disk goes. Also the fresh-disk reset's confirmation
//! (`/ui/hosting/reset`), offered when the disk is lost. The rules are the
//! API's (`crate::api::hosting::{backup_for, restore_for, reset_for}`).

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;

use super::forms::to_hosting;
use super::pages::{my_record, BackupsPage, ResetPage, RestorePage};
use super::session::{render, shown, WebError, WebUser};
use crate::api::error::ApiError;
use crate::api::hosting::{backup_for, host_op, reset_for, restore_for, StorageView};
use crate::api::AppState;
use crate::domain::{BackupId, BackupState, UserId};
use crate::store::{Backup, HostingRecord};

/// A backup as the page shows it.
#[derive(serde::Serialize)]
pub struct BackupItem {
    pub id: String,
    pub short: String,
    pub state: String,
    pub trigger: String,
    /// Full, or Incremental and after which backup (Completed ones).
    pub kind: String,
    pub created: String,
    pub size: String,
    pub sha: String,
    /// What a running one does, or why a failed one failed.
    pub message: String,
    /// Seconds since a running one started.
    pub elapsed_s: Option<i64>,
    pub restorable: bool,
    /// Whether a sealed copy is in the off-host store.
    pub offsite: bool,
}

impl From<&Backup> for BackupItem {
    fn from(b: &Backup) -> Self {
        BackupItem {
            id: b.id.to_string(),
            short: b.id.to_string().chars().take(8).collect(),
            state: b.state.to_string(),
            trigger: b.trigger.to_string(),
            kind: match (b.state, b.parent) {
                (BackupState::Completed, Some(p)) => format!(
                    "Incremental after {}",
                    p.to_string().chars().take(8).collect::<String>()
                ),
                (BackupState::Completed, None) => "Full".into(),
                _ => String::new(),
            },
            created: b.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            size: b.size_bytes.map(|s| mib(s as u64)).unwrap_or_default(),
            sha: b
                .sha256
                .as_deref()
                .map(|s| s.chars().take(12).collect())
                .unwrap_or_default(),
            message: b.message.clone().unwrap_or_default(),
            elapsed_s: match b.state {
                BackupState::Running => b.started_at.map(|t| (Utc::now() - t).num_seconds()),
                _ => None,
            },
            restorable: b.state == BackupState::Completed,
            offsite: b.offsite,
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// Everything the live part of the backups page shows.
#[derive(serde::Serialize)]
pub struct BackupsLive {
    pub backups: Vec<BackupItem>,
    /// Why "take a backup now" is disabled, if it is.
    pub busy: Option<String>,
    /// Backups and quarantined data against the quota, in words.
    pub storage: String,
}

fn live_of(st: &AppState, rec: &HostingRecord, list: &[Backup]) -> BackupsLive {
    let busy = if rec.deletion_requested_at.is_some() {
        Some("the hosting is being deleted".to_string())
    } else if let Some(b) = list
        .iter()
        .find(|b| matches!(b.state, BackupState::Pending | BackupState::Running))
    {
        let short: String = b.id.to_string().chars().take(8).collect();
        Some(format!(
            "backup {short} is {}: one at a time",
            b.state.to_string().to_lowercase()
        ))
    } else if rec.restore_from.is_some() {
        Some("a restore is in progress".to_string())
    } else {
        None
    };
    BackupsLive {
        backups: list.iter().map(BackupItem::from).collect(),
        busy,
        storage: StorageView::of(st, rec).summary(),
    }
}

/// The backups view of a user's hosting (`None`: no hosting).
pub(super) async fn backups_live(
    st: &AppState,
    user: UserId,
) -> Result<Option<BackupsLive>, WebError> {
    let Some(rec) = my_record(st, user).await? else {
        return Ok(None);
    };
    let list = st.store.list_backups(rec.id).await?;
    Ok(Some(live_of(st, &rec, &list)))
}

/// The page, with a form's error (and its status).
async fn page(
    st: &AppState,
    u: &WebUser,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response, WebError> {
    let Some(live) = backups_live(st, u.user.id).await? else {
        return Ok(to_hosting());
    };
    let b = &st.config.backups;
    let body = render(&BackupsPage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        error,
        live,
        keep: b.keep,
        interval_hours: b.interval.map(|d| d.as_secs() / 3600),
        per_minute: st.config.limits.host_ops_per_min,
        offsite: b.offsite.is_some(),
    });
    Ok((status, body).into_response())
}

/// `GET /ui/backups`
pub(super) async fn backups_page(
    State(st): State<AppState>,
    u: WebUser,
) -> Result<Response, WebError> {
    page(&st, &u, StatusCode::OK, None).await
}

/// A refused form: the page again with the API's status and message.
async fn refused(st: &AppState, u: &WebUser, e: ApiError) -> Result<Response, WebError> {
    let (status, msg) = shown(e)?;
    page(st, u, status, Some(msg)).await
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/backups`: take a backup now.
pub(super) async fn backup_now(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let result = async {
        host_op(&st, u.user.id).await?;
        backup_for(&st, u.user.id).await
    }
    .await;
    match result {
        Ok(_) => Ok(Redirect::to("/ui/backups").into_response()),
        Err(e) => refused(&st, &u, e).await,
    }
}

#[derive(Deserialize)]
pub(super) struct RestoreQuery {
    #[serde(default)]
    id: String,
}

fn parse_backup_id(s: &str) -> Result<BackupId, ApiError> {
    uuid::Uuid::parse_str(s.trim())
        .map(BackupId)
        .map_err(|_| ApiError::NotFound("your hosting has no backup with that id"))
}

/// `GET /ui/backups/restore?id=…`: what a restore of that backup replaces.
pub(super) async fn restore_confirm(
    State(st): State<AppState>,
    u: WebUser,
    Query(q): Query<RestoreQuery>,
) -> Result<Response, WebError> {
    let Some(rec) = my_record(&st, u.user.id).await? else {
        return Ok(to_hosting());
    };
    let id = parse_backup_id(&q.id)?;
    let b = st
        .store
        .get_backup(rec.id, id)
        .await?
        .ok_or(ApiError::NotFound(
            "your hosting has no backup with that id",
        ))?;
    Ok(render(&RestorePage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        backup: BackupItem::from(&b),
        quarantine_days: st.config.quarantine.as_secs() / 86400,
        disk_lost: crate::domain::has_true(
            &rec.status.conditions,
            crate::domain::ConditionType::DiskLost,
        ),
    }))
}

#[derive(Deserialize)]
pub(super) struct RestoreForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /ui/backups/restore`: replace the disk with the backup (the box on
/// the confirmation page must be ticked); the hosting page follows it.
pub(super) async fn restore_submit(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<RestoreForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    if f.confirm != "yes" {
        return Err(WebError::Page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "confirm: tick the box to replace the disk with the backup".into(),
        ));
    }
    let result = async {
        let id = parse_backup_id(&f.id)?;
        host_op(&st, u.user.id).await?;
        restore_for(&st, u.user.id, id).await
    }
    .await;
    match result {
        Ok(rec) => {
            tracing::info!(hosting = %rec.id, "restore requested (dashboard)");
            Ok(to_hosting())
        }
        Err(e) => refused(&st, &u, e).await,
    }
}

/// `GET /ui/hosting/reset`: what a fresh disk means, and the form.
pub(super) async fn reset_confirm(
    State(st): State<AppState>,
    u: WebUser,
) -> Result<Response, WebError> {
    let Some(rec) = my_record(&st, u.user.id).await? else {
        return Ok(to_hosting());
    };
    Ok(render(&ResetPage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        username: u.user.username.clone(),
        quarantine_days: st.config.quarantine.as_secs() / 86400,
        disk_lost: crate::domain::has_true(
            &rec.status.conditions,
            crate::domain::ConditionType::DiskLost,
        ),
    }))
}

#[derive(Deserialize)]
pub(super) struct ResetForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /ui/hosting/reset`: a fresh, empty disk (the username typed to
/// confirm, as for a deletion).
pub(super) async fn reset_submit(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<ResetForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    if f.confirm.trim() != u.user.username {
        return Err(WebError::Page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "confirm: type your username to replace the disk with a fresh one".into(),
        ));
    }
    let result = async {
        host_op(&st, u.user.id).await?;
        reset_for(&st, u.user.id).await
    }
    .await;
    match result {
        Ok(rec) => {
            tracing::info!(hosting = %rec.id, "disk reset requested (dashboard)");
            Ok(to_hosting())
        }
        Err(e) => super::forms::form_error(&st, &u, e).await,
    }
}
