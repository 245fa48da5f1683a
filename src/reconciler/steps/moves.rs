//! Step 2b: a move to another node, decided by a drain
//! (`reconciler::drain`). The hosting's record says where it runs (`node`)
//! and where it is going (`move_to`); this step looks at both nodes and
//! takes the next step:
//!
//! ```text
//!   here, not there ────────────▶ migrate (live, disk copied; a stopped
//!                                 guest is copied paused and stays stopped)
//!   here and there ─────────────▶ a leftover of an attempt cut short
//!                                 there: removed, then migrate (what runs
//!                                 here is what is served)
//!   not here, there ────────────▶ the guest answers there? route to it,
//!                                 remove the stale volumes here, then
//!                                 `node = move_to` in one statement
//!   neither ────────────────────▶ nothing to move yet: converge here first
//! ```
//!
//! Never two running copies: libvirt's migration pauses the source before
//! the target runs, and a failed or cancelled one (hostd died: libvirt
//! cancels a managed migration whose client is gone) leaves the source
//! running and removes the target's copy. When the live migration fails,
//! the move goes on cold (`move_cold`): the guest is shut down here, its
//! disk copied with the guest paused (it never runs), and it is started
//! there by the passes on its new node. When that fails too, the move is
//! given up: the hosting stays where it is (and is started again there).

use std::time::{Duration, Instant};

use super::Pass;
use crate::domain::{EventType, NodeName, Reason};
use crate::drivers::seed::build_iso;
use crate::drivers::{probe, MigrationVia, VolumeSource};
use crate::images::ImageEntry;
use crate::reconciler::names::{disk_volume, domain_name, seed_volume};
use crate::reconciler::nodes::Health;
use crate::reconciler::render::Inputs;
use crate::reconciler::{Action, ReconcileError};

/// How long one migration may take before it is aborted.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a guest moved stopped has to shut down before it is stopped hard.
pub const COLD_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the moved guest has to answer on its new node.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// How a guest can migrate between nodes at these addresses: nodes on one
/// machine (loopback addresses) share hostd's state directory, so UNIX
/// sockets there. Between machines QEMU would make TCP connections as the
/// guests' user, which guest isolation refuses (and which would need TLS
/// to be safe from other guests): `None`, not supported.
pub fn migration_via(
    ctx: &crate::reconciler::Context,
    from: crate::domain::NodeAddress,
    to: crate::domain::NodeAddress,
) -> Option<MigrationVia> {
    (from.ip().is_loopback() && to.ip().is_loopback())
        .then(|| MigrationVia::Unix(ctx.config.state_dir.join("migrate")))
}

impl Pass<'_> {
    /// Step 2b: the next step of a move, if the hosting is being moved.
    /// `Some(action)`: the pass ends here.
    pub async fn move_node(
        &mut self,
        image: &ImageEntry,
        ports: (u16, u16),
    ) -> Result<Option<Action>, ReconcileError> {
        let Some(to) = self.rec.move_to.clone() else {
            return Ok(None);
        };
        let (ctx, id) = (self.ctx, self.id());
        let from = self.node.clone();
        let target = match ctx.nodes.get(&to) {
            Some(t) if t.row.fenced_at.is_some() => {
                let msg = format!("the move to node {to} is given up: that node is fenced");
                tracing::warn!("{msg}");
                ctx.store.give_up_move(id, &msg).await?;
                return Ok(Some(Action::Requeue(Duration::ZERO)));
            }
            Some(t) if t.health == Health::Ready => t,
            // It waits (served here) for the target to answer.
            _ => return Ok(Some(Action::Requeue(Duration::from_secs(5)))),
        };
        let name = domain_name(id);
        let here = self.vm.get_domain(&name).await?;
        let there = target.driver.get_domain(&name).await?;
        let inputs = Inputs::of(self.rec, image, ports).at(ctx.nodes.binds(Some(&to)));
        let mut took = None;
        match (&here, &there) {
            (None, None) => return Ok(None),
            (Some(h), _) => {
                if self.rec.move_cold && h.running {
                    self.stop_for_cold_move(&name).await?;
                }
                if there.is_some() {
                    tracing::warn!(node = %to, "a copy left there by a move cut short is removed; the guest here is the one served");
                    target.driver.destroy(&name).await?;
                    target.driver.undefine(&name).await?;
                }
                if target.driver.volume_exists(&disk_volume(id)).await? {
                    target.driver.delete_volume(&disk_volume(id)).await?;
                }
                // The target's own seed volume (read-only: not copied).
                target.driver.ensure_storage_pool().await?;
                let iso = build_iso(&ctx.render.seed(&inputs));
                if !(target.driver)
                    .create_volume(&seed_volume(id), VolumeSource::Bytes(iso.clone()))
                    .await?
                {
                    target
                        .driver
                        .replace_volume_bytes(&seed_volume(id), iso)
                        .await?;
                }
                // Checkpoints stay behind: the next backup is a full one.
                ctx.store.drop_checkpoints(id).await?;
                self.vm.forget_checkpoints(&name).await?;
                let want = ctx.render.hashes(&inputs);
                let xml = ctx
                    .render
                    .domain_xml(&inputs, self.rec.generation, &want.marker());
                std::fs::create_dir_all(ctx.render.console_dir())
                    .map_err(crate::drivers::DriverError::from)?;
                self.flush_events().await?;
                self.fault("before_migrate").await?;
                // Nodes on one machine: UNIX sockets in the state directory
                // (see `migration_via`); otherwise the target's address.
                let here_addr = ctx.nodes.address(from.as_ref());
                let via = migration_via(ctx, here_addr, target.address())
                    .unwrap_or(MigrationVia::Tcp(target.address().ip()));
                let t0 = Instant::now();
                // `during_migrate:error` fails the migration as libvirt
                // would (the failure paths' test: libvirt's test driver,
                // whose moves are simulated, does not fail by itself).
                let r = match self.fault("during_migrate").await {
                    Ok(()) => {
                        (self.vm)
                            .migrate(&name, target.driver.as_ref(), &xml, &via, MIGRATION_TIMEOUT)
                            .await
                    }
                    Err(e) => Err(crate::drivers::DriverError::Other(e.to_string())),
                };
                if let Err(e) = r {
                    let here_name = from.as_ref().map_or("its node", |n| n.as_str());
                    // libvirt removed its copy there; the seed made for it goes too.
                    target.driver.delete_volume(&seed_volume(id)).await?;
                    if h.running && !self.rec.move_cold {
                        let msg = format!(
                            "live migration to node {to} failed: {e}; the hosting is moved stopped instead \
                             (shut down here, disk copied, started there)"
                        );
                        tracing::warn!(node = %to, "{msg}");
                        ctx.store.move_cold(id, &msg).await?;
                    } else {
                        let msg = format!(
                            "the move to node {to} failed; the hosting stays on {here_name}: {e}"
                        );
                        tracing::warn!(node = %to, "{msg}");
                        ctx.store.give_up_move(id, &msg).await?;
                    }
                    return Ok(Some(Action::Requeue(Duration::ZERO)));
                }
                took = Some(t0.elapsed());
                self.fault("after_migrate").await?;
            }
            (None, Some(_)) => {}
        }
        // A guest running there must answer there before it is routed to
        // (one moved stopped is started and routed by the passes on its
        // new node).
        let running_there = (target.driver.get_domain(&name).await?).is_some_and(|d| d.running);
        if running_there {
            let url = format!("http://{}:{}/", target.address().host(), ports.1);
            let deadline = Instant::now() + ANSWER_TIMEOUT;
            while let Err(e) = probe::http_ok(&ctx.http, &url).await {
                if Instant::now() >= deadline {
                    let msg =
                        format!("moved to node {to}, but its guest does not answer there: {e}");
                    self.event(EventType::Warning, Reason::MigrationFailed, &msg);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if !self.rec.warm {
                (ctx.proxy)
                    .apply(
                        id,
                        Some(ctx.route_spec_on(self.rec, Some(&to), Some(ports.1))),
                    )
                    .await?;
            }
            self.fault("after_move_route").await?;
        }
        // The volumes left here are stale copies (the guest's disk is the
        // one there now): removed, not left for orphan collection (which
        // would quarantine them). A pass cut short after this finds them gone.
        for v in [disk_volume(id), seed_volume(id)] {
            if self.vm.volume_exists(&v).await? {
                self.vm.delete_volume(&v).await?;
            }
        }
        let from = from.as_ref().map_or("?", NodeName::as_str);
        let msg = match (took, running_there) {
            (Some(t), true) => format!(
                "live-migrated from node {from} to node {to} in {:.1} s (disk copied); it is served from there",
                t.as_secs_f64()
            ),
            (Some(t), false) => format!(
                "moved stopped from node {from} to node {to} in {:.1} s (disk copied); it runs there from now on",
                t.as_secs_f64()
            ),
            (None, _) => format!("moved to node {to}; it runs there from now on"),
        };
        ctx.store.finish_move(id, &to, &msg).await?;
        tracing::info!(node = %to, "{msg}");
        Ok(Some(Action::Requeue(Duration::ZERO)))
    }

    /// Stops the guest for a move without live migration: a clean shutdown,
    /// then, after [`COLD_STOP_TIMEOUT`], a hard stop.
    async fn stop_for_cold_move(&self, name: &str) -> Result<(), ReconcileError> {
        self.vm.shutdown(name).await?;
        let deadline = Instant::now() + COLD_STOP_TIMEOUT;
        while (self.vm.get_domain(name).await?).is_some_and(|d| d.running) {
            if Instant::now() >= deadline {
                self.vm.destroy(name).await?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }
}
