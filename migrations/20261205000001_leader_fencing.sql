-- Fencing for the reconciler leader (issue 22). The leader lease is a
-- session advisory lock; a leader whose lease connection died (a Postgres
-- restart) may still act for up to one lease check. Each time a process
-- takes the lease it bumps its instance's epoch here, and the reconciler's
-- connections carry the epoch of the term they serve (startup options
-- `hostd.fence_instance` and `hostd.fence_epoch`). A statement on a table
-- the reconciler writes, made on such a connection under an older epoch, is
-- refused with SQLSTATE HF001.
--
-- No tuple locks: a fenced statement holds its instance's fence advisory
-- lock in shared mode until its transaction ends, and the bump takes it
-- exclusively, so a bump waits for writes in flight and every write that
-- starts after it reads the new epoch. Connections without the options (the
-- API's) are not checked.
create table reconciler_leader (
    instance text primary key,
    epoch bigint not null,
    since timestamptz not null default now()
);

create function hostd_fence_key(inst text) returns bigint
language sql immutable as $$ select hashtextextended('hostd-fence/' || inst, 0) $$;

create function hostd_fence() returns trigger
language plpgsql as $$
declare
    want text := current_setting('hostd.fence_epoch', true);
    inst text := current_setting('hostd.fence_instance', true);
    have bigint;
begin
    if want is null or want = '' then
        return null;
    end if;
    perform pg_advisory_xact_lock_shared(hostd_fence_key(inst));
    select epoch into have from reconciler_leader where instance = inst;
    if have is distinct from want::bigint then
        raise exception 'fenced: reconciler term % of instance % is over (the lease is at epoch %)',
            want, inst, coalesce(have::text, 'none')
            using errcode = 'HF001';
    end if;
    return null;
end $$;

create trigger fence before insert or update or delete on hostings
    for each statement execute function hostd_fence();
create trigger fence before insert or update or delete on hosting_status
    for each statement execute function hostd_fence();
create trigger fence before insert or update or delete on port_allocations
    for each statement execute function hostd_fence();
create trigger fence before insert or update or delete on events
    for each statement execute function hostd_fence();
create trigger fence before insert or update or delete on backups
    for each statement execute function hostd_fence();
create trigger fence before insert or update or delete on hosting_tombstones
    for each statement execute function hostd_fence();
create trigger fence before insert or update or delete on hosting_console
    for each statement execute function hostd_fence();
