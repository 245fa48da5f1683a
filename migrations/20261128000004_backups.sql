-- Backups are desired state like everything else: the API (or the scheduler
-- in the reconciler's resync) inserts a Pending row, the reconciler runs it
-- (Running) and records the result (Completed with size and checksum, or
-- Failed with a message). At most one backup per hosting is Pending or
-- Running at a time. The files live in $HOSTD_STATE_DIR/backups/<hosting id>/.
create table backups (
    id uuid primary key,
    hosting_id uuid not null references hostings (id) on delete cascade,
    trigger text not null check (trigger in ('Manual', 'Scheduled')),
    state text not null default 'Pending'
        check (state in ('Pending', 'Running', 'Completed', 'Failed')),
    created_at timestamptz not null default now(),
    started_at timestamptz,
    completed_at timestamptz,
    size_bytes bigint,
    sha256 text,
    message text
);
create index backups_by_hosting on backups (hosting_id, created_at desc);
create unique index backups_one_active on backups (hosting_id)
    where state in ('Pending', 'Running');

-- A restore is a disk epoch, like a reset: the owner's request bumps
-- hostings.disk_epoch and names the backup the new disk comes from
-- (null: a fresh, empty disk).
alter table hostings add column restore_backup_id uuid;

-- A new backup request wakes the reconciler like a hosting change does.
create or replace function hostd_notify_backup() returns trigger
language plpgsql as $$
begin
    perform pg_notify('hostd_hostings', new.hosting_id::text);
    return new;
end $$;
create trigger backups_notify after insert on backups
    for each row execute function hostd_notify_backup();
