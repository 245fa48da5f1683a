//! Fencing for the hypervisors: a [`VmDriver`] that asks Postgres whether
//! this reconciler's leader term is still current (`Store::term_valid`)
//! before every call that changes a hypervisor, and refuses it
//! ([`DriverError::Deposed`]) once another process has taken the lease.
//! Writes to Postgres are fenced by the database itself
//! (`20261205000001_leader_fencing`); this closes the same door for
//! libvirt, where a deposed leader that has not noticed yet (its lease
//! check runs every 2 s) would otherwise keep defining, starting and
//! destroying guests beside the new leader.
//!
//! The check and the call are two steps: a term that ends between them is
//! not caught (a window of one Postgres round trip, instead of up to the
//! lease check's 2 s plus a reconcile's length). Reads are not checked. The
//! host nginx is fenced the same way (`fenced_proxy`).

use std::sync::Arc;

use async_trait::async_trait;

use crate::drivers::{
    Captured, Checkpoints, DiskImage, DomainStats, DriverError, DriverResult, HostResources,
    MigrationVia, ObservedDomain, VmDriver, VolumeSource,
};
use crate::store::Store;

/// A hypervisor whose changes need a current leader term.
pub struct Fenced {
    inner: Arc<dyn VmDriver>,
    store: Store,
}

impl Fenced {
    /// `inner`, fenced by the term of `store`'s connections (the
    /// reconciler's store: `Store::fence` swaps its pool per term).
    pub fn wrap(inner: Arc<dyn VmDriver>, store: Store) -> Arc<dyn VmDriver> {
        Arc::new(Fenced { inner, store })
    }

    async fn check(&self) -> DriverResult<()> {
        term_check(&self.store).await
    }
}

/// `Ok` while the term of `store`'s connections is current;
/// [`DriverError::Deposed`] once another has begun.
pub(super) async fn term_check(store: &Store) -> DriverResult<()> {
    match store.term_valid().await {
        Ok(true) => Ok(()),
        Ok(false) => Err(DriverError::Deposed),
        Err(e) => Err(DriverError::Connection(format!(
            "cannot confirm this reconciler's leader term: {e}"
        ))),
    }
}

#[async_trait]
impl VmDriver for Fenced {
    async fn ping(&self) -> DriverResult<String> {
        self.inner.ping().await
    }
    async fn ensure_storage_pool(&self) -> DriverResult<()> {
        self.check().await?;
        self.inner.ensure_storage_pool().await
    }
    async fn resources(&self) -> DriverResult<HostResources> {
        self.inner.resources().await
    }
    fn storage_pool_name(&self) -> &str {
        self.inner.storage_pool_name()
    }
    async fn list_domains(&self) -> DriverResult<Vec<ObservedDomain>> {
        self.inner.list_domains().await
    }
    async fn domain_stats(&self, names: Vec<String>) -> DriverResult<Vec<(String, DomainStats)>> {
        self.inner.domain_stats(names).await
    }
    fn domain_changes(&self) -> Option<Arc<crate::drivers::domain_events::DomainChanges>> {
        self.inner.domain_changes()
    }
    fn expire_listing(&self) {
        self.inner.expire_listing()
    }
    async fn get_domain(&self, name: &str) -> DriverResult<Option<ObservedDomain>> {
        self.inner.get_domain(name).await
    }
    async fn list_volumes(&self) -> DriverResult<Vec<String>> {
        self.inner.list_volumes().await
    }
    async fn volume_exists(&self, name: &str) -> DriverResult<bool> {
        self.inner.volume_exists(name).await
    }
    async fn create_volume(&self, name: &str, source: VolumeSource) -> DriverResult<bool> {
        self.check().await?;
        self.inner.create_volume(name, source).await
    }
    async fn replace_volume_bytes(&self, name: &str, bytes: Vec<u8>) -> DriverResult<()> {
        self.check().await?;
        self.inner.replace_volume_bytes(name, bytes).await
    }
    async fn quarantine_volume(
        &self,
        name: &str,
        to: &std::path::Path,
    ) -> DriverResult<Option<std::path::PathBuf>> {
        self.check().await?;
        self.inner.quarantine_volume(name, to).await
    }
    async fn disk_image(
        &self,
        domain: &str,
        volume: &str,
        staging: &std::path::Path,
        checkpoints: &Checkpoints,
    ) -> DriverResult<DiskImage> {
        self.check().await?;
        self.inner
            .disk_image(domain, volume, staging, checkpoints)
            .await
    }
    async fn forget_checkpoints(&self, domain: &str) -> DriverResult<()> {
        self.check().await?;
        self.inner.forget_checkpoints(domain).await
    }
    async fn restore_volume(&self, name: &str, from: &std::path::Path) -> DriverResult<()> {
        self.check().await?;
        self.inner.restore_volume(name, from).await
    }
    async fn delete_volume(&self, name: &str) -> DriverResult<()> {
        self.check().await?;
        self.inner.delete_volume(name).await
    }
    async fn define(&self, xml: &str) -> DriverResult<()> {
        self.check().await?;
        self.inner.define(xml).await
    }
    async fn start(&self, name: &str) -> DriverResult<()> {
        self.check().await?;
        self.inner.start(name).await
    }
    async fn shutdown(&self, name: &str) -> DriverResult<()> {
        self.check().await?;
        self.inner.shutdown(name).await
    }
    async fn destroy(&self, name: &str) -> DriverResult<()> {
        self.check().await?;
        self.inner.destroy(name).await
    }
    async fn undefine(&self, name: &str) -> DriverResult<()> {
        self.check().await?;
        self.inner.undefine(name).await
    }
    fn clones_supported(&self) -> bool {
        self.inner.clones_supported()
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.inner.as_any()
    }
    async fn migrate(
        &self,
        name: &str,
        target: &dyn VmDriver,
        xml: &str,
        via: &MigrationVia,
        timeout: std::time::Duration,
    ) -> DriverResult<()> {
        self.check().await?;
        self.inner.migrate(name, target, xml, via, timeout).await
    }
    async fn volume_path(&self, name: &str) -> DriverResult<std::path::PathBuf> {
        self.inner.volume_path(name).await
    }
    async fn capture_template(
        &self,
        name: &str,
        xml: &str,
        memory: &std::path::Path,
        boot_timeout: std::time::Duration,
    ) -> DriverResult<Captured> {
        self.check().await?;
        self.inner
            .capture_template(name, xml, memory, boot_timeout)
            .await
    }
    async fn remove_template_domain(&self, name: &str) -> DriverResult<()> {
        self.check().await?;
        self.inner.remove_template_domain(name).await
    }
    async fn restore_clone(
        &self,
        name: &str,
        xml: &str,
        timeout: std::time::Duration,
    ) -> DriverResult<()> {
        self.check().await?;
        self.inner.restore_clone(name, xml, timeout).await
    }
    async fn guest_exec(
        &self,
        name: &str,
        path: &str,
        args: &[&str],
        timeout: std::time::Duration,
    ) -> DriverResult<String> {
        self.check().await?;
        self.inner.guest_exec(name, path, args, timeout).await
    }
}
