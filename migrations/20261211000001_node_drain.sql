-- Drain (issue 27): the operator asks for a node to be emptied by live
-- migration (`hostd node drain`), which also cordons it. The reconciler
-- moves its hostings one at a time: `move_to` is the node the hosting is
-- being moved to (desired state, written before anything is done there);
-- the move ends by setting `node = move_to` in the same statement that
-- clears it, after the guest answers on the new node. A move that failed is
-- given up (the hosting stays, served, where it is) and noted, so the
-- drain tries the others first and this one again later.
alter table nodes add column draining_since timestamptz;
alter table nodes add column drain_message text;
alter table hostings add column move_to text references nodes (name);
alter table hostings add column move_started_at timestamptz;
alter table hostings add column move_failed_at timestamptz;
-- The live migration failed: the move goes on with the guest stopped
-- (stop, copy, start there).
alter table hostings add column move_cold boolean not null default false;
alter table hostings add constraint hostings_move_elsewhere check (move_to is null or move_to <> node);
create index hostings_moving on hostings (move_to) where move_to is not null;

-- Where a node's guests forward SSH (default: HOSTD_SSH_BIND). Two nodes on
-- one machine need different ones, or a hosting's SSH port collides with
-- itself while it migrates.
alter table nodes add column ssh_address inet;
