-- Whether the leader term a reconciler connection carries (startup options
-- hostd.fence_instance and hostd.fence_epoch, see 20261205000001) is still
-- the current one (issue 27): the reconciler asks before every call that
-- changes a hypervisor, so a deposed leader stops acting on libvirt as it
-- stops writing to Postgres. Connections without the options (the API's,
-- tests') are never deposed.
create function hostd_term_valid() returns boolean
language plpgsql stable as $$
declare
    want text := current_setting('hostd.fence_epoch', true);
    inst text := current_setting('hostd.fence_instance', true);
    have bigint;
begin
    if want is null or want = '' then
        return true;
    end if;
    select epoch into have from reconciler_leader where instance = inst;
    return have is not distinct from want::bigint;
end $$;
