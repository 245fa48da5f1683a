//! Steps 1 and 2: the hosting's ports, and its disk (created, pinned to an
//! image version, replaced by a reset or a restore, or reported lost).

use super::Pass;
use crate::domain::{has_true, remove_condition, ConditionType as C, EventType, Phase, Reason};
use crate::drivers::VolumeSource;
use crate::images::ImageEntry;
use crate::reconciler::names::{disk_volume, domain_name};
use crate::reconciler::ReconcileError;

impl Pass<'_> {
    /// Step 1: the SSH and HTTP ports (allocated and recorded in one transaction).
    pub async fn ports(&mut self) -> Result<(u16, u16), ReconcileError> {
        if let (Some(s), Some(h)) = (self.st.ssh_port, self.st.http_port) {
            return Ok((s, h));
        }
        let cfg = &self.ctx.config;
        let (s, h) = self
            .ctx
            .store
            .allocate_ports(self.id(), cfg.ssh_ports, cfg.http_ports)
            .await?;
        // Recorded (in the allocation's transaction) from here on.
        (self.st.ssh_port, self.st.http_port) = (Some(s), Some(h));
        let msg = format!("SSH port {s}, HTTP port {h}");
        self.event(EventType::Normal, Reason::PortsAllocated, &msg);
        self.fault("after_port_allocation").await?;
        Ok((s, h))
    }

    /// Marks a new hosting as Provisioning.
    pub async fn begin(&mut self) -> Result<(), ReconcileError> {
        if self.st.phase != Phase::Pending {
            return Ok(());
        }
        self.st.phase = Phase::Provisioning;
        let cfg = &self.ctx.config;
        let msg = format!(
            "provisioning a {} VM ({})",
            cfg.domain_type.as_str(),
            cfg.domain_type_reason
        );
        self.event(EventType::Normal, Reason::Provisioning, &msg);
        Ok(())
    }

    /// Step 2: the image version (pinned when the disk is first created, so a
    /// rebuilt image never changes the kernel under an existing disk) and the
    /// disk volume. A newer desired disk epoch replaces the disk: by the
    /// backup it names (a restore) or by an empty one (a reset); the old disk
    /// is quarantined. A disk that vanished is restored from the newest
    /// backup that verifies, and never silently recreated empty: without a
    /// backup the hosting goes `Failed` with `DiskLost` until its owner
    /// decides. `None`: stop here and wait for the owner.
    pub async fn disk(&mut self) -> Result<Option<ImageEntry>, ReconcileError> {
        let spec = &self.rec.spec;
        let image = match &self.st.image_pin {
            Some(pin) => {
                pin.check(&spec.image)?;
                pin.clone()
            }
            None => self.ctx.catalog.pin(&spec.image)?,
        };
        let name = disk_volume(self.id());
        let mut exists = self.vm.volume_exists(&name).await?;
        if exists && !self.st.disk_created {
            // Made by a pass a crash cut short before it was recorded: never
            // started, so nothing of the tenant's is on it; made anew (it may
            // be from another source than this pass will choose).
            self.vm.delete_volume(&name).await?;
            exists = false;
        }
        let new_epoch = self.st.disk_created && self.st.disk_epoch < self.rec.disk_epoch;
        let mut reset = false;
        if new_epoch {
            match self.rec.restore_from {
                Some(b) => {
                    exists = self.restore_requested(b, exists).await? || exists;
                }
                None => {
                    self.replace_disk(exists).await?;
                    reset = true;
                }
            }
        } else if !exists && self.st.disk_created {
            if !self.restore_latest().await? {
                self.disk_lost().await?;
                return Ok(None);
            }
            exists = true;
        }
        if !exists && self.st.disk_created && !reset {
            // A requested restore that could not be used, and no disk either.
            self.disk_lost().await?;
            return Ok(None);
        }
        let mut source = VolumeSource::Overlay {
            backing: image.disk.clone(),
            backing_format: image.format.clone(),
            capacity_gib: spec.disk_gib,
        };
        // A first disk of a class with a ready template: a clone's.
        let template = match !self.st.disk_created && !exists {
            true => self.clone_source(&image),
            false => None,
        };
        if let Some(t) = &template {
            source = self.clone_disk(t);
        }
        if !exists || reset {
            self.vm.create_volume(&name, source).await?;
            let msg = match &template {
                Some(t) => format!(
                    "{} GiB disk from image {}, as a clone of template {}",
                    spec.disk_gib,
                    spec.image.as_str(),
                    t.hash
                ),
                None => format!(
                    "{} GiB disk from image {}",
                    spec.disk_gib,
                    spec.image.as_str()
                ),
            };
            let reason = if reset {
                Reason::DiskReset
            } else {
                Reason::DiskCreated
            };
            self.event(EventType::Normal, reason, &msg);
            self.fault("after_disk_create").await?;
        }
        if !self.st.disk_created || self.st.image_pin.is_none() || reset {
            if let Some(t) = &template {
                // Recorded with the disk: this guest's first start is a clone's.
                self.st.applied_seed = Some(format!("{}{}", super::clone::CLONE_MARK, t.hash));
            }
            self.st.disk_created = true;
            self.st.disk_epoch = self.rec.disk_epoch;
            self.st.image_pin = Some(image.clone());
            remove_condition(&mut self.st.conditions, C::DiskLost);
            self.write_status().await?;
        }
        Ok(Some(image))
    }

    /// Records a vanished disk: `Failed`, `DiskLost`, a Warning event once.
    async fn disk_lost(&mut self) -> Result<(), ReconcileError> {
        let first = !has_true(&self.st.conditions, C::DiskLost);
        let msg = "the disk volume vanished and there is no backup to restore it from; \
                   POST /api/v1/host/my/reset gives the hosting a fresh, empty disk";
        self.condition(C::DiskLost, true, Reason::DiskMissing, msg);
        self.fail_pending_backup("the hosting has no disk (DiskLost)")
            .await?;
        self.st.phase = Phase::Failed;
        self.st.message = Some(msg.into());
        self.write_status().await?;
        if first {
            self.ctx.metrics.repairs.inc();
            self.event(EventType::Warning, Reason::DiskLost, msg);
        }
        Ok(())
    }

    /// Before a consented reset: stops the guest and moves the old disk (if
    /// any) to quarantine instead of deleting it.
    async fn replace_disk(&mut self, exists: bool) -> Result<(), ReconcileError> {
        self.vm.destroy(&domain_name(self.id())).await?;
        // The new disk has none of the old one's bitmaps.
        self.vm.forget_checkpoints(&domain_name(self.id())).await?;
        if exists {
            let name = disk_volume(self.id());
            match self.ctx.quarantine_volume(&*self.vm, &name).await? {
                Some(to) => {
                    let msg = format!("the previous disk was moved to {}", to.display());
                    self.event(EventType::Normal, Reason::DiskQuarantined, &msg);
                }
                // A simulated volume has no file to keep.
                None => self.vm.delete_volume(&name).await?,
            }
        }
        Ok(())
    }
}
