//! Steps 2 and 5 for a clone: a new hosting whose class has a ready
//! template (`reconciler::clone_templates`) gets a disk that is an overlay of
//! the template's frozen disk, and its first start loads the template's
//! memory instead of booting; step 5b then resets its identity and applies
//! its seed through the guest agent, like a warm-pool claim.
//!
//! The durable mark is the status's `applied_seed`: `clone:<template hash>`
//! from the moment the disk is made (in the same status write that records
//! the disk) until the personalisation has run. While it is set, the disk
//! holds nothing of the tenant's (they get access only with the
//! personalisation), so every attempt to start the clone makes the overlay
//! anew first: a crash after a restore never loads the memory again over a
//! disk that moved on. Whatever fails on the way (template gone, restore or
//! personalisation failed) ends in a cold boot on a disk made anew from the
//! image, which the event says.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::Pass;
use crate::domain::{EventType, Reason};
use crate::drivers::VolumeSource;
use crate::images::ImageEntry;
use crate::reconciler::clone_templates::TemplateInfo;
use crate::reconciler::names::{disk_volume, domain_name};
use crate::reconciler::render::{Hashes, Inputs};
use crate::reconciler::ReconcileError;

/// The prefix of `applied_seed` that marks a clone not yet personalised.
pub const CLONE_MARK: &str = "clone:";

/// How long a clone may take from its start to its filesystems thawed.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

impl Pass<'_> {
    /// The template hash of this hosting's clone, while it is not personalised.
    pub fn clone_pending(&self) -> Option<String> {
        self.st
            .applied_seed
            .as_deref()
            .and_then(|s| s.strip_prefix(CLONE_MARK))
            .map(str::to_string)
    }

    /// Step 2, for a disk made for the first time: the template to clone it
    /// from, if one fits.
    pub(super) fn clone_source(&self, image: &ImageEntry) -> Option<TemplateInfo> {
        // Templates live on the implicit node (their memory file in hostd's
        // state directory, their disk in its pool).
        let implicit = self.ctx.nodes.implicit();
        if !image.guest_agent || self.node.as_ref().is_some_and(|n| n != implicit) {
            return None;
        }
        self.ctx
            .templates
            .for_hosting(self.ctx, &self.rec.spec, image)
    }

    /// The overlay of a template's disk, as a volume source.
    pub(super) fn clone_disk(&self, t: &TemplateInfo) -> VolumeSource {
        VolumeSource::Overlay {
            backing: t.disk_file.clone(),
            backing_format: "qcow2".into(),
            capacity_gib: self.rec.spec.disk_gib,
        }
    }

    /// Step 5 for a clone's first start: its overlay made anew, then the
    /// domain started from the template's memory. `Ok(false)`: the clone
    /// path was given up (the disk is made anew from the image); the caller
    /// boots the guest cold.
    pub async fn start_clone(
        &mut self,
        hash: &str,
        inputs: &Inputs<'_>,
        want: &Hashes,
    ) -> Result<bool, ReconcileError> {
        let (id, ctx) = (self.id(), self.ctx);
        let name = domain_name(id);
        let Some(t) = ctx.templates.ready(hash) else {
            let why = format!("template {hash} is gone (rebuilt or removed)");
            self.uncloned(&why).await?;
            return Ok(false);
        };
        let vol = disk_volume(id);
        self.vm.delete_volume(&vol).await?;
        self.vm.create_volume(&vol, self.clone_disk(&t)).await?;
        self.fault("before_clone_restore").await?;
        let xml = ctx
            .render
            .clone_xml(inputs, self.rec.generation, &want.marker(), &t.memory_file);
        let started = Instant::now();
        let restored = {
            let _slot = ctx.templates.restores.acquire().await;
            self.vm.restore_clone(&name, &xml, RESTORE_TIMEOUT).await
        };
        if let Err(e) = restored {
            self.vm.destroy(&name).await?;
            self.uncloned(&format!("starting the clone failed: {e}"))
                .await?;
            return Ok(false);
        }
        let ms = started.elapsed().as_millis();
        self.st.provisioning_since = Some(Utc::now());
        self.st.boot_restarts = Some(0);
        let msg = format!(
            "started as a clone of template {hash} in {ms} ms (no boot); resetting its identity next"
        );
        self.event(EventType::Normal, Reason::Cloned, &msg);
        self.fault("after_clone_restore").await?;
        self.write_status().await?;
        Ok(true)
    }

    /// Gives up the clone path: the domain stopped, the disk made anew from
    /// the image, the mark cleared (the caller boots the guest cold).
    pub async fn uncloned(&mut self, why: &str) -> Result<(), ReconcileError> {
        let (id, ctx) = (self.id(), self.ctx);
        let image = match &self.st.image_pin {
            Some(p) => p.clone(),
            None => ctx.catalog.pin(&self.rec.spec.image)?,
        };
        self.vm.destroy(&domain_name(id)).await?;
        let vol = disk_volume(id);
        self.vm.delete_volume(&vol).await?;
        let source = VolumeSource::Overlay {
            backing: image.disk.clone(),
            backing_format: image.format.clone(),
            capacity_gib: self.rec.spec.disk_gib,
        };
        self.vm.create_volume(&vol, source).await?;
        self.fault("after_clone_fallback_disk").await?;
        self.st.applied_seed = None;
        self.write_status().await?;
        ctx.metrics.clone_fallbacks.inc();
        let msg =
            format!("{why}; booting the guest cold instead, on a disk made anew from the image");
        self.event(EventType::Warning, Reason::CloneFallback, &msg);
        Ok(())
    }
}
