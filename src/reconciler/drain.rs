//! The drain loop (run with the heartbeats): for each node an operator is
//! draining, one hosting at a time is given a target node (placement as for
//! a new hosting, among the other nodes) and queued; its reconcile moves it
//! ([`super::steps::moves`]). A move under way is queued again at each
//! look, so a restarted reconciler resumes it. A hosting whose move failed
//! lately waits while the others go; a drain that cannot go on (no room
//! elsewhere) says why on its node.

use super::queue::WorkQueue;
use super::steps::schedule::place;
use super::{Context, ReconcileError};

/// Looks at every draining node once.
pub async fn tick(ctx: &Context, queue: &WorkQueue) -> Result<(), ReconcileError> {
    for w in ctx.store.drain_work().await? {
        if !w.moving.is_empty() {
            for id in &w.moving {
                queue.add_now(*id);
            }
            continue;
        }
        let Some(next) = w.next else {
            let msg = (w.left > 0).then_some(
                "the moves of the hostings left failed lately (see their events); each is tried again 5 minutes after its failure",
            );
            ctx.store.set_drain_message(&w.node, msg).await?;
            continue;
        };
        let Some(rec) = ctx.store.get_record(next).await? else {
            continue;
        };
        let verdict = {
            let mut ledger = ctx.scheduler.lock().await;
            if ledger.nodes_stale() {
                ctx.nodes.refresh(&ctx.store).await?;
                ledger.nodes_read();
            }
            // Only nodes its guests can migrate to (see
            // `steps::moves::migration_via`).
            let from = ctx.nodes.address(Some(&w.node));
            let others: Vec<_> = (ctx.nodes.all().into_iter())
                .filter(|n| n.name() != &w.node)
                .filter(|n| super::steps::moves::migration_via(ctx, from, n.address()).is_some())
                .collect();
            if others.is_empty() {
                drop(ledger);
                let msg = "no other node its guests can migrate to: only nodes on one machine (loopback addresses) can today";
                ctx.store.set_drain_message(&w.node, Some(msg)).await?;
                continue;
            }
            ledger.refresh(&ctx.store, &others).await?;
            let me = (rec.id, rec.created_at);
            let v = place(&ledger, &others, &rec, me, &ctx.config.capacity, true);
            if let Ok((to, _)) = &v {
                // It holds room there from now on (the database says so
                // once `move_to` is written).
                ledger.decided(&rec, Some(to.clone()), true);
            }
            v
        };
        match verdict {
            Ok((to, detail)) => {
                if ctx.store.start_move(rec.id, &w.node, &to).await? {
                    tracing::info!(node = %w.node, hosting = %rec.id, to = %to, detail, "drain: moving a hosting");
                    queue.add_now(rec.id);
                }
                ctx.store.set_drain_message(&w.node, None).await?;
            }
            Err((_, msg)) => {
                let msg = format!("cannot move hosting {} anywhere: {msg}", rec.id);
                ctx.store.set_drain_message(&w.node, Some(&msg)).await?;
            }
        }
    }
    Ok(())
}
