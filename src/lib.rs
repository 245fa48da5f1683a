//! hostd: a self-hosted web-hosting control plane shaped like a Kubernetes
//! controller.
//!
//! Crate map (dependencies point down this list, never up):
//! - [`app`], [`doctor`], [`recover`], [`node_cli`]: wiring: builds the API
//!   server and/or reconciler for a process; `hostd doctor`; `hostd recover`;
//!   `hostd node …`.
//! - [`api`] and [`reconciler`], siblings (neither imports the other):
//!   the REST API (axum), which validates input and writes *desired* state;
//!   the control loop that makes reality match it, one named step at a time.
//! - [`checks`]: the dependency checks of `health/detailed` and `doctor`.
//! - [`store`]: every SQL statement (Postgres via sqlx): users, hostings,
//!   status, ports, events, leader lease, heartbeat.
//! - [`drivers`]: libvirt (VMs, volumes) and nginx (routes), behind traits.
//! - [`templates`]: askama templates for domain XML, cloud-init and nginx.
//! - [`capacity`]: host capacity accounting (admission, health report).
//! - [`images`]: the guest image catalogue.
//! - [`crd`]: the Hosting CustomResourceDefinition, generated from types.
//! - [`domain`]: validated domain types; raw input never gets past the edge.
//! - [`config`], [`faults`], [`shutdown`], [`telemetry`]: typed settings,
//!   fault injection, cooperative shutdown, logging and metrics.
//! - [`seal`]: encryption of backups before they leave the host.

pub mod api;
pub mod app;
pub mod capacity;
pub mod checks;
pub mod config;
pub mod crd;
pub mod doctor;
pub mod domain;
pub mod drivers;
pub mod faults;
pub mod images;
pub mod node_cli;
pub mod reconciler;
pub mod recover;
pub mod seal;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod templates;
