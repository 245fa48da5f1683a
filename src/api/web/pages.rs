//! The dashboard's pages (askama templates under `templates/web/`) and the
//! view models they show, built from a hosting's record and events.

use askama::Template;

use super::session::{Nav, WebError, WebUser};
use crate::api::error::ApiError;
use crate::api::hosting::hosting_of;
use crate::api::AppState;
use crate::domain::{ssh_command, ConditionType, Phase, UserId};
use crate::store::HostingRecord;

// ------------------------------------------------------------- templates

#[derive(Template)]
#[template(path = "web/error.html")]
pub(super) struct ErrorPage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) status: u16,
    pub(super) message: String,
}

#[derive(Template)]
#[template(path = "web/login.html")]
pub(super) struct LoginPage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) error: Option<String>,
    pub(super) username: String,
}

#[derive(Template)]
#[template(path = "web/signup.html")]
pub(super) struct SignupPage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) error: Option<String>,
    pub(super) username: String,
    pub(super) email: String,
}

/// A condition as the page shows it.
pub struct CondRow {
    pub type_: String,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

/// An event as the page shows it.
pub struct EventRow {
    pub at: String,
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// A custom domain as the page shows it (the API's view).
pub type DomainItem = crate::api::domains::DomainView;

/// Everything the status section shows, for the page and the live view.
#[derive(serde::Serialize)]
pub struct LiveStatus {
    pub phase: String,
    pub message: String,
    pub progress: u8,
    pub converged: bool,
    pub generation: i64,
    pub observed_generation: i64,
    pub running: bool,
    /// The hosting's HSTS opt-in.
    pub hsts: bool,
    pub vcpus: crate::domain::Vcpus,
    pub memory_mib: crate::domain::MemoryMib,
    pub disk_gib: crate::domain::DiskGib,
    /// Backups and quarantined data against the quota, in words.
    pub storage: String,
    pub web_url: Option<String>,
    pub ssh_command: Option<String>,
    pub conditions: Vec<(String, bool, String, String)>,
    pub events: Vec<(String, bool, String, String)>,
    pub deleting: bool,
    /// The disk is gone and no backup restored it: the owner decides.
    pub disk_lost: bool,
    /// Whether the last SSH key change has reached the guest, in words.
    pub keys_status: String,
}

#[derive(Template)]
#[template(path = "web/hosting.html")]
pub(super) struct HostingPage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) error: Option<String>,
    pub(super) hosting: Option<LiveStatus>,
    pub(super) conditions: Vec<CondRow>,
    pub(super) events: Vec<EventRow>,
    pub(super) sizes: Vec<(i64, i64, &'static str)>,
    /// The tenant's custom domains.
    pub(super) domains: Vec<DomainItem>,
    /// After a lost disk: the newest completed backup (id, when taken).
    pub(super) newest_backup: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "web/account.html")]
pub(super) struct AccountPage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) email: String,
    pub(super) error: Option<String>,
    pub(super) notice: Option<String>,
    /// Deleting the account is refused while it has a hosting.
    pub(super) has_hosting: bool,
}

#[derive(Template)]
#[template(path = "web/delete.html")]
pub(super) struct DeletePage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) username: String,
}

#[derive(Template)]
#[template(path = "web/console.html")]
pub(super) struct ConsolePage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) captured_at: Option<String>,
    pub(super) truncated: bool,
    pub(super) text: String,
}

/// A hosting row of the admin page.
pub struct AdminRow {
    pub id: String,
    pub owner: String,
    pub warm: bool,
    pub phase: String,
    pub converged: bool,
    pub running: bool,
    pub deleting: bool,
    pub size: String,
    pub ssh_port: String,
    pub node: String,
}

/// A health check on the admin page.
pub struct CheckRow {
    pub name: String,
    pub ok: bool,
    pub status: String,
    pub detail: String,
}

/// An account on the admin page.
pub struct UserItem {
    pub username: String,
    pub email: String,
    pub admin: bool,
    pub created: String,
    pub has_hosting: bool,
    pub is_self: bool,
}

#[derive(Template)]
#[template(path = "web/admin.html")]
pub(super) struct AdminPage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) error: Option<String>,
    pub(super) notice: Option<String>,
    /// `health/detailed`'s overall status.
    pub(super) status: String,
    pub(super) checks: Vec<CheckRow>,
    /// (what, figures)
    pub(super) capacity: Vec<(String, String)>,
    pub(super) warm_pool: String,
    pub(super) rows: Vec<AdminRow>,
    pub(super) users: Vec<UserItem>,
    pub(super) node: String,
    pub(super) nodes: Vec<crate::api::nodes::NodeView>,
}

#[derive(Template)]
#[template(path = "web/admin_delete.html")]
pub(super) struct AdminDeletePage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) id: String,
    pub(super) owner: String,
    pub(super) phase: String,
}

#[derive(Template)]
#[template(path = "web/backups.html")]
pub(super) struct BackupsPage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) error: Option<String>,
    pub(super) live: super::backups::BackupsLive,
    pub(super) keep: u32,
    pub(super) interval_hours: Option<u64>,
    pub(super) per_minute: u32,
    /// Whether backups also go to an off-host store.
    pub(super) offsite: bool,
}

#[derive(Template)]
#[template(path = "web/restore.html")]
pub(super) struct RestorePage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) backup: super::backups::BackupItem,
    pub(super) quarantine_days: u64,
    pub(super) disk_lost: bool,
}

#[derive(Template)]
#[template(path = "web/reset.html")]
pub(super) struct ResetPage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) username: String,
    pub(super) quarantine_days: u64,
    pub(super) disk_lost: bool,
}

/// An SSH key as the keys page shows it.
pub struct KeyItem {
    pub kind: String,
    pub comment: String,
    pub fingerprint: String,
}

#[derive(Template)]
#[template(path = "web/keys.html")]
pub(super) struct KeysPage {
    pub(super) user: Option<Nav>,
    pub(super) csrf: String,
    pub(super) error: Option<String>,
    pub(super) keys: Vec<KeyItem>,
    pub(super) live: LiveStatus,
    /// What the add form held when it was refused.
    pub(super) pasted: String,
}

/// The sizes offered by the create and resize forms: (vCPUs, MiB, label).
pub(super) const SIZES: &[(i64, i64, &str)] = &[
    (1, 512, "Small: 1 vCPU, 512 MiB"),
    (1, 1024, "Medium: 1 vCPU, 1 GiB"),
    (2, 2048, "Large: 2 vCPUs, 2 GiB"),
];

// --------------------------------------------------------------- status

/// How far provisioning has got, 0-100, from the conditions that make it up.
pub fn progress(rec: &HostingRecord) -> u8 {
    let s = &rec.status;
    let converged = s.observed_generation == rec.generation;
    match s.phase {
        Phase::Ready | Phase::Stopped if converged => 100,
        Phase::Failed => 100,
        _ => {
            let steps = [
                ConditionType::Scheduled,
                ConditionType::VMRunning,
                ConditionType::RouteConfigured,
                ConditionType::WebReady,
            ];
            let done = steps
                .iter()
                .filter(|t| crate::domain::has_true(&s.conditions, **t))
                .count() as u8;
            5 + done * 22
        }
    }
}

pub(super) fn live_status(
    st: &AppState,
    rec: &HostingRecord,
    events: &[crate::store::Event],
) -> LiveStatus {
    let s = &rec.status;
    LiveStatus {
        phase: s.phase.to_string(),
        message: s.message.clone().unwrap_or_default(),
        progress: progress(rec),
        converged: s.observed_generation == rec.generation,
        generation: rec.generation,
        observed_generation: s.observed_generation,
        running: rec.spec.running,
        hsts: rec.spec.hsts,
        vcpus: rec.spec.vcpus,
        memory_mib: rec.spec.memory_mib,
        disk_gib: rec.spec.disk_gib,
        storage: crate::api::hosting::StorageView::of(st, rec).summary(),
        web_url: s
            .http_port
            .map(|_| st.config.sites.web_url(&rec.username, rec.user_id)),
        ssh_command: s.ssh_port.map(|p| ssh_command(st.config.public_host(), p)),
        conditions: s
            .conditions
            .iter()
            .map(|c| {
                (
                    c.type_.to_string(),
                    c.is_true(),
                    c.reason.to_string(),
                    c.message.clone(),
                )
            })
            .collect(),
        events: events
            .iter()
            .map(|e| {
                (
                    e.at.format("%H:%M:%S").to_string(),
                    e.type_ == "Warning",
                    e.reason.clone(),
                    e.message.clone(),
                )
            })
            .collect(),
        deleting: rec.deletion_requested_at.is_some(),
        disk_lost: crate::domain::has_true(&s.conditions, ConditionType::DiskLost),
        keys_status: keys_status(rec, events),
    }
}

/// Whether the hosting's last SSH key change has reached its guest, from
/// its generation and its latest seed and boot events (newest first).
pub fn keys_status(rec: &HostingRecord, events: &[crate::store::Event]) -> String {
    if !rec.spec.running {
        return "The hosting is stopped: the keys listed here apply when it starts.".into();
    }
    if rec.status.observed_generation != rec.generation {
        return "Applying your change…".into();
    }
    for e in events {
        match e.reason.as_str() {
            "SeedApplied" | "Personalised" => {
                return format!(
                    "Your last change reached the running guest at {} UTC.",
                    e.at.format("%H:%M:%S")
                )
            }
            "SeedApplyFailed" => {
                return "The guest agent could not apply your last change: it takes effect at \
                        the next boot (stop and start the hosting)."
                    .into()
            }
            "SeedUpdated" if e.message.contains("next boot") => {
                return "Your last change takes effect at the next boot (stop and start the \
                        hosting)."
                    .into()
            }
            "SeedUpdated" => return "Applying your change to the running guest…".into(),
            "Started" | "DomainStarted" | "Restarting" | "Created" => break,
            _ => {}
        }
    }
    "The keys listed here are the ones your guest has.".into()
}

/// The signed-in user's hosting, if any.
pub(super) async fn my_record(
    st: &AppState,
    user: UserId,
) -> Result<Option<HostingRecord>, WebError> {
    match hosting_of(st, user).await {
        Ok(r) => Ok(Some(r)),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn hosting_view(
    st: &AppState,
    u: &WebUser,
    error: Option<String>,
) -> Result<HostingPage, WebError> {
    let rec = my_record(st, u.user.id).await?;
    let (hosting, conditions, events) = match &rec {
        None => (None, vec![], vec![]),
        Some(rec) => {
            let evs = st.store.recent_events(rec.id, 20).await?;
            let live = live_status(st, rec, &evs);
            let conditions = live
                .conditions
                .iter()
                .map(|(t, ok, r, m)| CondRow {
                    type_: t.clone(),
                    ok: *ok,
                    reason: r.clone(),
                    message: m.clone(),
                })
                .collect();
            let events = live
                .events
                .iter()
                .map(|(at, w, r, m)| EventRow {
                    at: at.clone(),
                    warning: *w,
                    reason: r.clone(),
                    message: m.clone(),
                })
                .collect();
            (Some(live), conditions, events)
        }
    };
    Ok(HostingPage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        error,
        hosting,
        conditions,
        events,
        sizes: SIZES.to_vec(),
        newest_backup: match &rec {
            Some(r) if crate::domain::has_true(&r.status.conditions, ConditionType::DiskLost) => {
                st.store.completed_backups(r.id).await?.first().map(|b| {
                    let at = b.completed_at.unwrap_or(b.created_at);
                    (
                        b.id.to_string(),
                        at.format("%Y-%m-%d %H:%M UTC").to_string(),
                    )
                })
            }
            _ => None,
        },
        domains: match &rec {
            Some(_) => st
                .store
                .list_domains(u.user.id)
                .await?
                .into_iter()
                .map(DomainItem::from)
                .collect(),
            None => vec![],
        },
    })
}
