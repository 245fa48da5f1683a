//! hostd: a self-hosted web-hosting control plane shaped like a Kubernetes
//! controller.
//!
//! Crate map:
//! - [`api`]: the REST API (axum). Validates input, writes *desired* state.
//! - [`store`]: every SQL statement (Postgres via sqlx): users, hostings,
//!   status, ports, events, leader lease, heartbeat.
//! - [`reconciler`]: the control loop that makes reality match desired state.
//! - [`drivers`]: libvirt (VMs, volumes) and nginx (routes), behind traits.
//! - [`domain`]: validated domain types; raw input never gets past the edge.
//! - [`templates`]: askama templates for domain XML, cloud-init and nginx.
//! - [`images`]: the guest image catalogue.
//! - [`crd`]: the Hosting CustomResourceDefinition, generated from types.
//! - [`config`], [`telemetry`]: typed settings and logging.
//! - [`app`]: wiring: builds the server and/or reconciler for a process.

pub mod api;
pub mod app;
pub mod config;
pub mod crd;
pub mod domain;
pub mod drivers;
pub mod images;
pub mod reconciler;
pub mod store;
pub mod telemetry;
pub mod templates;
