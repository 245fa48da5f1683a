//! The admin API's nodes (`/api/v1/admin/nodes…`, admins only): list, add,
//! cordon, uncordon, drain, fence, evacuate and remove hypervisor nodes. Desired state only: the
//! reconciler connects to a node added here at its next heartbeat, and it
//! alone writes a node's readiness. `hostd node …` and the dashboard call
//! the same functions ([`add`], [`cordon`], [`remove`]). Each change is an
//! audit log line naming the admin.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::admin::Admin;
use super::auth::AuthUser;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::domain::{NodeAddress, NodeName, NodeUri, ValidationError};
use crate::store::{NewNode, Node, Store};

/// A node as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    pub name: String,
    /// The libvirt URI hostd connects to.
    pub uri: String,
    /// Where the host reaches the ports its guests forward.
    pub address: String,
    /// New hostings may be placed here (`false`: cordoned).
    pub schedulable: bool,
    #[schema(value_type = Object)]
    pub labels: serde_json::Map<String, serde_json::Value>,
    /// Capacity overrides (what the node is taken to have).
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
    /// The node of `HOSTD_LIBVIRT_URI`.
    pub implicit: bool,
    /// Its last heartbeat answered (`false`: unreachable or down).
    pub ready: bool,
    /// `Ready`, `Unreachable` (silent for less than HOSTD_NODE_DOWN_SECS) or `Down`.
    pub health: String,
    /// Why it is not ready.
    pub message: Option<String>,
    /// When it last answered.
    pub heartbeat_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What libvirt reported: memory_mib, cpus, disk_available_bytes.
    #[schema(value_type = Option<Object>)]
    pub resources: Option<crate::drivers::HostResources>,
    /// Hostings placed on it.
    pub hostings: i64,
    /// When an operator declared it dead (`null`: not fenced).
    pub fenced_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Where its guests forward SSH (`null`: HOSTD_SSH_BIND).
    pub ssh_address: Option<String>,
    /// When an operator asked for it to be drained (`null`: not draining;
    /// uncordoning ends a drain). It is drained when `hostings` is 0.
    pub draining_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Why the drain makes no progress, if it does not.
    pub drain_message: Option<String>,
}

impl From<Node> for NodeView {
    fn from(n: Node) -> NodeView {
        NodeView {
            name: n.name.to_string(),
            uri: n.uri.to_string(),
            address: n.address.to_string(),
            schedulable: n.schedulable,
            labels: n.labels,
            memory_mib: n.memory_mib,
            vcpus: n.vcpus,
            implicit: n.implicit,
            ready: n.ready,
            health: n.health,
            message: n.message,
            heartbeat_at: n.heartbeat_at,
            resources: n.resources,
            hostings: n.hostings,
            fenced_at: n.fenced_at,
            ssh_address: n.ssh_address.map(|a| a.to_string()),
            draining_since: n.draining_since,
            drain_message: n.drain_message,
        }
    }
}

/// The body of `POST /api/v1/admin/nodes`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNode {
    /// 1-32 characters of a-z, 0-9 and '-'.
    pub name: String,
    /// libvirt URI: `qemu+ssh://host/system`, `qemu+tls://host/system`,
    /// `qemu+unix:///system?socket=PATH`, `qemu:///system` or `test:///…`.
    pub uri: String,
    /// IP address at which the host reaches the node's forwarded ports
    /// (default 127.0.0.1: a node on this machine).
    #[serde(default)]
    pub address: Option<String>,
    /// IP address its guests forward SSH on (default: HOSTD_SSH_BIND).
    /// Two nodes on one machine need different ones to move hostings
    /// between them.
    #[serde(default)]
    pub ssh_address: Option<String>,
    /// Free-form labels (string values).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub labels: serde_json::Map<String, serde_json::Value>,
    /// Take the node to have this much memory (MiB) whatever libvirt reports.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Take the node to have this many CPUs.
    #[serde(default)]
    pub vcpus: Option<u32>,
}

impl AddNode {
    /// Parses the request into a node to add; nothing is stored on error.
    pub fn parse(self) -> Result<NewNode, ValidationError> {
        let labels_ok = self.labels.len() <= 32
            && self.labels.iter().all(|(k, v)| {
                (1..=63).contains(&k.len())
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
                    && v.as_str()
                        .is_some_and(|s| s.len() <= 256 && !s.chars().any(char::is_control))
            });
        ValidationError::check(
            labels_ok,
            "labels",
            "at most 32 labels; keys of 1-63 of a-z, A-Z, 0-9, '-', '_', '.', '/'; string values of at most 256 characters",
        )?;
        ValidationError::check(
            self.memory_mib.is_none_or(|m| (256..=1 << 30).contains(&m)),
            "memory_mib",
            "must be between 256 and 1073741824",
        )?;
        ValidationError::check(
            self.vcpus.is_none_or(|v| (1..=4096).contains(&v)),
            "vcpus",
            "must be between 1 and 4096",
        )?;
        Ok(NewNode {
            name: NodeName::parse(&self.name)?,
            uri: NodeUri::parse(&self.uri)?,
            address: match self.address.as_deref() {
                Some(a) => NodeAddress::parse(a)?,
                None => NodeAddress::LOOPBACK,
            },
            ssh_address: match self.ssh_address.as_deref() {
                Some(a) => {
                    Some(a.parse().map_err(|_| {
                        ValidationError::new("ssh_address", "must be an IP address")
                    })?)
                }
                None => None,
            },
            labels: self.labels,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
        })
    }
}

/// A store error about a node, as the API answers it.
fn node_error(e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::NotFound => ApiError::NotFound("no such node"),
        e => e.into(),
    }
}

/// [`node_error`], where the store's refusal is a conflict with the node's
/// state (the implicit node, hostings on it, not fenced).
fn node_conflict(e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::Invalid(v) => ApiError::Conflict(v.to_string()),
        e => node_error(e),
    }
}

fn parse_name(name: &str) -> Result<NodeName, ApiError> {
    NodeName::parse(name).map_err(|_| ApiError::NotFound("no such node"))
}

/// Adds a node (for the API, the CLI and the dashboard).
pub async fn add(store: &Store, by: &str, n: NewNode) -> Result<Node, ApiError> {
    let node = store.add_node(&n).await?;
    tracing::info!(target: "audit", by, node = %node.name, uri = %node.uri, address = %node.address, "node added");
    Ok(node)
}

/// Cordons (`schedulable = false`) or uncordons a node.
pub async fn cordon(
    store: &Store,
    by: &str,
    name: &NodeName,
    schedulable: bool,
) -> Result<Node, ApiError> {
    let node = store
        .set_schedulable(name, schedulable)
        .await
        .map_err(node_error)?;
    let what = if schedulable {
        "uncordoned"
    } else {
        "cordoned"
    };
    tracing::info!(target: "audit", by, node = %name, "node {what}");
    Ok(node)
}

/// Removes a node that holds no hosting (never the implicit one).
pub async fn remove(store: &Store, by: &str, name: &NodeName) -> Result<(), ApiError> {
    store.remove_node(name).await.map_err(node_conflict)?;
    tracing::info!(target: "audit", by, node = %name, "node removed");
    Ok(())
}

/// Fences a node (`true`: the operator declares it dead; it is also
/// cordoned) or lifts the fence.
pub async fn fence(
    store: &Store,
    by: &str,
    name: &NodeName,
    fenced: bool,
) -> Result<Node, ApiError> {
    let node = store.fence_node(name, fenced).await.map_err(node_error)?;
    let what = if fenced {
        "fenced (declared dead)"
    } else {
        "unfenced"
    };
    tracing::warn!(target: "audit", by, node = %name, "node {what}");
    Ok(node)
}

/// Drains a node: cordons it and moves its hostings to other nodes by live
/// migration, one at a time (the reconciler does the moves).
pub async fn drain(store: &Store, by: &str, name: &NodeName) -> Result<Node, ApiError> {
    let node = store.drain_node(name).await.map_err(node_conflict)?;
    tracing::warn!(target: "audit", by, node = %name, hostings = node.hostings,
        "node drained: its hostings are moved to other nodes by live migration");
    Ok(node)
}

/// Evacuates a fenced node: its hostings are restored on other nodes from
/// their newest backups (those without one stay).
pub async fn evacuate(
    store: &Store,
    by: &str,
    name: &NodeName,
) -> Result<crate::store::Evacuation, ApiError> {
    let e = store.evacuate_node(name).await.map_err(node_conflict)?;
    tracing::warn!(target: "audit", by, node = %name, moved = e.moved.len(), stranded = e.stranded.len(),
        "node evacuated: its hostings are restored elsewhere from their newest backups");
    Ok(e)
}

/// What `POST /api/v1/admin/nodes/{name}/evacuate` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EvacuationView {
    /// Hostings to be restored on other nodes, with the backup each comes
    /// from and when it was taken (what changed after is lost).
    pub moved: Vec<EvacuatedHosting>,
    /// Hostings without a completed backup, left on the fenced node.
    pub stranded: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EvacuatedHosting {
    pub hosting_id: String,
    pub backup_id: String,
    pub backup_taken_at: chrono::DateTime<chrono::Utc>,
}

impl From<crate::store::Evacuation> for EvacuationView {
    fn from(e: crate::store::Evacuation) -> Self {
        EvacuationView {
            moved: (e.moved.into_iter())
                .map(|(h, b, t)| EvacuatedHosting {
                    hosting_id: h.to_string(),
                    backup_id: b.0.to_string(),
                    backup_taken_at: t,
                })
                .collect(),
            stranded: e.stranded.into_iter().map(|h| h.to_string()).collect(),
        }
    }
}

/// `POST /api/v1/admin/nodes/{name}/fence`: declare the node dead.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{name}/fence", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The node's name")),
    responses(
        (status = 200, description = "The node, fenced and cordoned", body = NodeView),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
    ))]
pub async fn fence_node(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let node = fence(&st.store, &admin.username, &parse_name(&name)?, true).await?;
    Ok(Json(NodeView::from(node)))
}

/// `POST /api/v1/admin/nodes/{name}/unfence`: lift the fence (the node stays cordoned).
#[utoipa::path(post, path = "/api/v1/admin/nodes/{name}/unfence", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The node's name")),
    responses(
        (status = 200, description = "The node, no longer fenced", body = NodeView),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
    ))]
pub async fn unfence_node(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let node = fence(&st.store, &admin.username, &parse_name(&name)?, false).await?;
    Ok(Json(NodeView::from(node)))
}

/// `POST /api/v1/admin/nodes/{name}/drain`: cordon the node and move its
/// hostings to other nodes by live migration, one at a time.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{name}/drain", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The node's name")),
    responses(
        (status = 202, description = "Requested: the node, cordoned and draining", body = NodeView),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "The node is fenced (evacuate it instead)", body = ErrorBody),
    ))]
pub async fn drain_node(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let node = drain(&st.store, &admin.username, &parse_name(&name)?).await?;
    Ok((StatusCode::ACCEPTED, Json(NodeView::from(node))))
}

/// `POST /api/v1/admin/nodes/{name}/evacuate`: restore a fenced node's
/// hostings on other nodes from their newest backups.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{name}/evacuate", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The node's name")),
    responses(
        (status = 202, description = "Requested: what is restored elsewhere, and from which backup", body = EvacuationView),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "The node is not fenced", body = ErrorBody),
    ))]
pub async fn evacuate_node(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let e = evacuate(&st.store, &admin.username, &parse_name(&name)?).await?;
    Ok((StatusCode::ACCEPTED, Json(EvacuationView::from(e))))
}

/// `GET /api/v1/admin/nodes`: every node, with its last heartbeat.
#[utoipa::path(get, path = "/api/v1/admin/nodes", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every node", body = Vec<NodeView>),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
    ))]
pub async fn list_nodes(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let nodes = st.store.list_nodes().await?;
    Ok(Json(
        nodes.into_iter().map(NodeView::from).collect::<Vec<_>>(),
    ))
}

/// `POST /api/v1/admin/nodes`: add a node.
#[utoipa::path(post, path = "/api/v1/admin/nodes", tag = "admin",
    security(("bearer" = [])),
    request_body = AddNode,
    responses(
        (status = 201, description = "The node, as stored (the reconciler connects at its next heartbeat)", body = NodeView),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 409, description = "A node of that name exists", body = ErrorBody),
        (status = 422, description = "Invalid name, URI, address, labels or capacity", body = ErrorBody),
    ))]
pub async fn add_node(
    State(st): State<AppState>,
    auth: AuthUser,
    body: Result<Json<AddNode>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let Json(body) = body?;
    let new = body
        .parse()
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let node = add(&st.store, &admin.username, new).await?;
    Ok((StatusCode::CREATED, Json(NodeView::from(node))))
}

/// `GET /api/v1/admin/nodes/{name}`: one node.
#[utoipa::path(get, path = "/api/v1/admin/nodes/{name}", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The node's name")),
    responses(
        (status = 200, description = "The node", body = NodeView),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
    ))]
pub async fn get_node(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let node = st
        .store
        .get_node(&parse_name(&name)?)
        .await
        .map_err(node_error)?;
    Ok(Json(NodeView::from(node)))
}

/// `DELETE /api/v1/admin/nodes/{name}`: remove a node that holds no hosting.
#[utoipa::path(delete, path = "/api/v1/admin/nodes/{name}", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The node's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "The implicit node, or hostings are placed on it", body = ErrorBody),
    ))]
pub async fn remove_node(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    remove(&st.store, &admin.username, &parse_name(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/admin/nodes/{name}/cordon`: place no new hosting there.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{name}/cordon", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The node's name")),
    responses(
        (status = 200, description = "The node, cordoned", body = NodeView),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
    ))]
pub async fn cordon_node(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let node = cordon(&st.store, &admin.username, &parse_name(&name)?, false).await?;
    Ok(Json(NodeView::from(node)))
}

/// `POST /api/v1/admin/nodes/{name}/uncordon`: place new hostings there again.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{name}/uncordon", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The node's name")),
    responses(
        (status = 200, description = "The node, schedulable", body = NodeView),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
    ))]
pub async fn uncordon_node(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let node = cordon(&st.store, &admin.username, &parse_name(&name)?, true).await?;
    Ok(Json(NodeView::from(node)))
}
