//! The admin page (`/ui/admin`, admins only): the host's health checks,
//! capacity and warm pool (from the cached `health/detailed` answer), every
//! hosting with start/stop and delete (behind a confirmation naming the
//! owner), the nodes (add, cordon, uncordon, remove) and the accounts with
//! their roles. Actions go through the admin
//! API's functions (`crate::api::admin::{act_on, set_role_of}`), so each is
//! an audit line naming the admin and an event on the hosting.

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::Value;

use super::pages::{AdminDeletePage, AdminPage, AdminRow, CheckRow, UserItem};
use super::session::{render, shown, WebError, WebUser};
use crate::api::admin::{act_on, parse_hosting_id, set_role_of, Admin, HostingAction};
use crate::api::error::ApiError;
use crate::api::nodes::{self, AddNode, NodeView};
use crate::api::AppState;
use crate::domain::NodeName;
use crate::domain::Role;

fn admin_of(u: &WebUser) -> Result<Admin, WebError> {
    Ok(Admin::of(u.user.id, &u.user.username, u.user.role)?)
}

/// A JSON number as text ("?" when absent).
fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "?".into(), |n| n.to_string())
}

/// The page, with a form's error (and its status) or a notice.
async fn page(
    st: &AppState,
    u: &WebUser,
    status: StatusCode,
    error: Option<String>,
    notice: Option<String>,
) -> Result<Response, WebError> {
    admin_of(u)?;
    let health = crate::api::health::cached(st).await.body;
    let checks = health["checks"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(name, c)| CheckRow {
                    name: name.clone(),
                    ok: c["status"] == "ok",
                    status: c["status"].as_str().unwrap_or("?").to_string(),
                    detail: c["detail"]
                        .as_str()
                        .or(c["error"].as_str())
                        .unwrap_or_default()
                        .to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let c = &health["capacity"];
    let capacity = if c["host"].is_object() {
        vec![
            (
                "Memory (MiB)".to_string(),
                format!(
                    "{} allocated of {} (host {})",
                    num(&c["allocated"]["memory_mib"]),
                    num(&c["budget"]["memory_mib"]),
                    num(&c["host"]["memory_mib"])
                ),
            ),
            (
                "vCPUs".to_string(),
                format!(
                    "{} allocated of {} (host {} CPUs)",
                    num(&c["allocated"]["vcpus"]),
                    num(&c["budget"]["vcpus"]),
                    num(&c["host"]["cpus"])
                ),
            ),
            (
                "Disk (GiB)".to_string(),
                format!(
                    "{} available above the reserve",
                    num(&c["budget"]["disk_available_gib"])
                ),
            ),
            ("Waiting for room".to_string(), num(&c["waiting"])),
        ]
    } else {
        vec![(
            "Capacity".to_string(),
            c["detail"].as_str().unwrap_or("unknown").to_string(),
        )]
    };
    let w = &health["warm_pool"];
    let warm_pool = format!(
        "desired {} per node, ready {}, booting {}, leaving {}",
        num(&w["desired"]),
        num(&w["ready"]),
        num(&w["booting"]),
        num(&w["leaving"])
    );
    let node = match st.store.last_heartbeat(&st.config.instance).await {
        Ok(Some((holder, _, _))) => holder,
        _ => "no reconciler heartbeat".to_string(),
    };
    let records = st.store.list_records().await?;
    let rows = records
        .iter()
        .map(|r| AdminRow {
            id: r.id.to_string(),
            owner: r.username.as_str().to_string(),
            warm: r.warm,
            phase: r.status.phase.to_string(),
            converged: r.status.observed_generation == r.generation,
            running: r.spec.running,
            deleting: r.deletion_requested_at.is_some(),
            size: format!(
                "{} vCPU, {} MiB, {} GiB",
                r.spec.vcpus, r.spec.memory_mib, r.spec.disk_gib
            ),
            ssh_port: r.status.ssh_port.map(|p| p.to_string()).unwrap_or_default(),
            node: r
                .node
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "–".into()),
        })
        .collect();
    let nodes = st
        .store
        .list_nodes()
        .await?
        .into_iter()
        .map(NodeView::from)
        .collect();
    let users = st
        .store
        .list_accounts()
        .await?
        .into_iter()
        .map(|a| UserItem {
            has_hosting: records.iter().any(|r| !r.warm && r.user_id == a.id),
            is_self: a.id == u.user.id,
            admin: a.role == Role::Admin,
            created: a.created_at.format("%Y-%m-%d").to_string(),
            username: a.username,
            email: a.email,
        })
        .collect();
    let body = render(&AdminPage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        error,
        notice,
        status: health["status"].as_str().unwrap_or("?").to_string(),
        checks,
        capacity,
        warm_pool,
        rows,
        users,
        node: format!("{} ({})", st.config.instance, node),
        nodes,
    });
    Ok((status, body).into_response())
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    done: Option<String>,
}

/// `GET /ui/admin` (`?done=…` after an action).
pub(super) async fn admin_page(
    State(st): State<AppState>,
    u: WebUser,
    Query(q): Query<PageQuery>,
) -> Result<Response, WebError> {
    let notice = match q.done.as_deref() {
        Some("start") => Some("Start requested.".to_string()),
        Some("stop") => Some("Stop requested.".to_string()),
        Some("delete") => Some("Deletion requested.".to_string()),
        Some("role") => Some("Role changed.".to_string()),
        Some("node-added") => {
            Some("Node added; the reconciler connects at its next heartbeat.".to_string())
        }
        Some("node-cordoned") => Some("Node cordoned: no new hosting is placed there.".to_string()),
        Some("node-uncordoned") => Some("Node uncordoned.".to_string()),
        Some("node-removed") => Some("Node removed.".to_string()),
        Some("node-fenced") => Some("Node fenced (declared dead) and cordoned.".to_string()),
        Some("node-unfenced") => Some("Node unfenced; it stays cordoned.".to_string()),
        Some("node-draining") => Some(
            "Drain requested: the node is cordoned and its hostings move to other nodes by live migration, one at a time."
                .to_string(),
        ),
        Some("node-evacuated") => Some(
            "Evacuation requested: the node's hostings with a backup are restored on other nodes."
                .to_string(),
        ),
        _ => None,
    };
    page(&st, &u, StatusCode::OK, None, notice).await
}

/// A refused action: the page again with the API's status and message.
async fn refused(st: &AppState, u: &WebUser, e: ApiError) -> Result<Response, WebError> {
    let (status, msg) = shown(e)?;
    page(st, u, status, Some(msg), None).await
}

#[derive(Deserialize)]
pub(super) struct PowerForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    running: String,
}

/// `POST /ui/admin/hosting/power`: start or stop any hosting.
pub(super) async fn admin_power(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<PowerForm>,
) -> Result<Response, WebError> {
    let admin = admin_of(&u)?;
    u.check(&st, &headers, &f.csrf)?;
    let result = async {
        let action = match f.running.as_str() {
            "true" => HostingAction::Start,
            "false" => HostingAction::Stop,
            _ => return Err(ApiError::Unprocessable("running: true or false".into())),
        };
        act_on(&st, &admin, parse_hosting_id(&f.id)?, action).await?;
        Ok(action)
    }
    .await;
    match result {
        Ok(HostingAction::Start) => Ok(Redirect::to("/ui/admin?done=start").into_response()),
        Ok(_) => Ok(Redirect::to("/ui/admin?done=stop").into_response()),
        Err(e) => refused(&st, &u, e).await,
    }
}

#[derive(Deserialize)]
pub(super) struct IdQuery {
    #[serde(default)]
    id: String,
}

/// `GET /ui/admin/hosting/delete?id=…`: the confirmation, naming the owner.
pub(super) async fn admin_delete_confirm(
    State(st): State<AppState>,
    u: WebUser,
    Query(q): Query<IdQuery>,
) -> Result<Response, WebError> {
    admin_of(&u)?;
    let id = parse_hosting_id(&q.id)?;
    let rec = st
        .store
        .get_record(id)
        .await?
        .ok_or(ApiError::NotFound("no such hosting"))?;
    Ok(render(&AdminDeletePage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        id: rec.id.to_string(),
        owner: rec.username.as_str().to_string(),
        phase: rec.status.phase.to_string(),
    }))
}

#[derive(Deserialize)]
pub(super) struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /ui/admin/hosting/delete`: the owner's username typed to confirm.
pub(super) async fn admin_delete(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<DeleteForm>,
) -> Result<Response, WebError> {
    let admin = admin_of(&u)?;
    u.check(&st, &headers, &f.csrf)?;
    let result = async {
        let id = parse_hosting_id(&f.id)?;
        let rec = st
            .store
            .get_record(id)
            .await?
            .ok_or(ApiError::NotFound("no such hosting"))?;
        if f.confirm.trim() != rec.username.as_str() {
            return Err(ApiError::Unprocessable(
                "confirm: type the owner's username to delete their hosting".into(),
            ));
        }
        act_on(&st, &admin, id, HostingAction::Delete).await
    }
    .await;
    match result {
        Ok(_) => Ok(Redirect::to("/ui/admin?done=delete").into_response()),
        Err(e) => refused(&st, &u, e).await,
    }
}

#[derive(Deserialize)]
pub(super) struct RoleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
}

/// `POST /ui/admin/users/role`: make an account an admin or a user.
pub(super) async fn admin_role(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<RoleForm>,
) -> Result<Response, WebError> {
    let admin = admin_of(&u)?;
    u.check(&st, &headers, &f.csrf)?;
    let result = async {
        let role = match f.role.as_str() {
            "admin" => Role::Admin,
            "user" => Role::User,
            _ => return Err(ApiError::Unprocessable("role: admin or user".into())),
        };
        set_role_of(&st, &admin, &f.username, role).await
    }
    .await;
    match result {
        Ok(_) => Ok(Redirect::to("/ui/admin?done=role").into_response()),
        Err(e) => refused(&st, &u, e).await,
    }
}

#[derive(Deserialize)]
pub(super) struct NodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uri: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    ssh_address: String,
    /// For cordon/uncordon: "true" (schedulable) or "false".
    #[serde(default)]
    schedulable: String,
    /// For fence/unfence: "true" (fenced) or "false".
    #[serde(default)]
    fenced: String,
}

/// `POST /ui/admin/nodes/add`: add a node (the API's validation).
pub(super) async fn admin_node_add(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<NodeForm>,
) -> Result<Response, WebError> {
    let admin = admin_of(&u)?;
    u.check(&st, &headers, &f.csrf)?;
    let req = AddNode {
        name: f.name.trim().to_string(),
        uri: f.uri.trim().to_string(),
        address: Some(f.address.trim().to_string()).filter(|a| !a.is_empty()),
        ssh_address: Some(f.ssh_address.trim().to_string()).filter(|a| !a.is_empty()),
        labels: Default::default(),
        memory_mib: None,
        vcpus: None,
    };
    let result = async {
        let new = req
            .parse()
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        nodes::add(&st.store, &admin.username, new).await
    }
    .await;
    match result {
        Ok(_) => Ok(Redirect::to("/ui/admin?done=node-added").into_response()),
        Err(e) => refused(&st, &u, e).await,
    }
}

/// What a node form on the admin page asks for.
#[derive(Debug, Clone, Copy)]
enum NodeAction {
    /// Cordon (`false`) or uncordon.
    Schedule,
    /// Fence (`true`) or unfence.
    Fence,
    Remove,
    Evacuate,
    Drain,
}

/// Runs one node action of the admin page through the admin API's
/// functions; redirects with its notice, or shows the page with why not.
async fn node_action(
    st: &AppState,
    u: &WebUser,
    headers: &HeaderMap,
    f: &NodeForm,
    action: NodeAction,
) -> Result<Response, WebError> {
    let admin = admin_of(u)?;
    u.check(st, headers, &f.csrf)?;
    let flag = |v: &str, field: &str| match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::Unprocessable(format!("{field}: true or false"))),
    };
    let result = async {
        let name = NodeName::parse(&f.name).map_err(|_| ApiError::NotFound("no such node"))?;
        let by = admin.username.as_str();
        Ok::<_, ApiError>(match action {
            NodeAction::Schedule => {
                let on = flag(&f.schedulable, "schedulable")?;
                nodes::cordon(&st.store, by, &name, on).await?;
                if on {
                    "node-uncordoned"
                } else {
                    "node-cordoned"
                }
            }
            NodeAction::Fence => {
                let on = flag(&f.fenced, "fenced")?;
                nodes::fence(&st.store, by, &name, on).await?;
                if on {
                    "node-fenced"
                } else {
                    "node-unfenced"
                }
            }
            NodeAction::Remove => {
                nodes::remove(&st.store, by, &name).await?;
                "node-removed"
            }
            NodeAction::Evacuate => {
                nodes::evacuate(&st.store, by, &name).await?;
                "node-evacuated"
            }
            NodeAction::Drain => {
                nodes::drain(&st.store, by, &name).await?;
                "node-draining"
            }
        })
    }
    .await;
    match result {
        Ok(done) => Ok(Redirect::to(&format!("/ui/admin?done={done}")).into_response()),
        Err(e) => refused(st, u, e).await,
    }
}

/// `POST /ui/admin/nodes/schedule`: cordon (`schedulable=false`) or uncordon.
pub(super) async fn admin_node_schedule(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<NodeForm>,
) -> Result<Response, WebError> {
    node_action(&st, &u, &headers, &f, NodeAction::Schedule).await
}

/// `POST /ui/admin/nodes/remove`: remove a node no hosting is placed on.
pub(super) async fn admin_node_remove(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<NodeForm>,
) -> Result<Response, WebError> {
    node_action(&st, &u, &headers, &f, NodeAction::Remove).await
}

/// `POST /ui/admin/nodes/fence`: fence (`fenced=true`) or unfence a node.
pub(super) async fn admin_node_fence(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<NodeForm>,
) -> Result<Response, WebError> {
    node_action(&st, &u, &headers, &f, NodeAction::Fence).await
}

/// `POST /ui/admin/nodes/evacuate`: restore a fenced node's hostings elsewhere.
pub(super) async fn admin_node_evacuate(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<NodeForm>,
) -> Result<Response, WebError> {
    node_action(&st, &u, &headers, &f, NodeAction::Evacuate).await
}

/// `POST /ui/admin/nodes/drain`: cordon a node and move its hostings away.
pub(super) async fn admin_node_drain(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<NodeForm>,
) -> Result<Response, WebError> {
    node_action(&st, &u, &headers, &f, NodeAction::Drain).await
}
