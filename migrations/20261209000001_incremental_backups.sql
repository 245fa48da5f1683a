-- Incremental backups (libvirt checkpoints). A backup is Full (a standalone
-- qcow2) or Incremental (only the clusters written since its parent was
-- taken: a qcow2 whose backing file is the parent's file). `checkpoint`
-- says a libvirt checkpoint named hostd-<id> was made with it (a running
-- guest's backup), so the next backup can copy only what changed since.
-- The foreign key (checked at the end of each statement) refuses to delete
-- a parent a remaining backup needs; a Failed backup needs no parent.
alter table backups
    add column kind text not null default 'Full' check (kind in ('Full', 'Incremental')),
    add column parent_id uuid references backups (id),
    add column checkpoint boolean not null default false,
    add constraint backups_incremental_has_parent
        check (kind = 'Full' or parent_id is not null or state <> 'Completed');
create index backups_parent_idx on backups (parent_id) where parent_id is not null;
