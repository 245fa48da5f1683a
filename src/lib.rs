//! hostd: a self-hosted web-hosting control plane shaped like a Kubernetes
//! controller.
//!
//! Crate map (dependencies point down this list, never up):
//! - [`app`]: wiring: builds the API server and/or reconciler for a process.
//! - [`api`]: the REST API (axum). Validates input, writes *desired* state.
//! - [`reconciler`]: the control loop that makes reality match desired state,
//!   one named step at a time.
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

pub mod api;
pub mod app;
pub mod capacity;
pub mod config;
pub mod crd;
pub mod domain;
pub mod drivers;
pub mod faults;
pub mod images;
pub mod reconciler;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod templates;
