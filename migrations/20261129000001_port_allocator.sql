-- Port allocation in one statement (store/status.rs `allocate_ports`): it
-- was a transaction of up to eight round trips, and allocators running
-- concurrently near a full range lost races until they gave up.
--
-- hostd_allocate_port returns the hosting's port of `kind`, allocating the
-- lowest free one from `start_at` up (else from the range's start up) if it
-- has none. A concurrent allocator's uncommitted row makes the insert wait
-- for it; if that one took the port, the search runs again on a new
-- snapshot, so a race costs a retry here, not an error. Raises SQLSTATE
-- HD001 (detail: the kind) when the range has no free port.
create or replace function hostd_allocate_port(
    hosting uuid, kind text, range_start int, range_end int, start_at int
) returns int language plpgsql as $$
declare
    p int;
begin
    select a.port into p from port_allocations a
        where a.hosting_id = hosting and a.kind = hostd_allocate_port.kind;
    if found then
        return p;
    end if;
    for attempt in 1..1000 loop
        -- Each branch walks the primary key only along the run of taken
        -- ports it starts in, and the first branch that finds one ends the
        -- query: cost grows with the run, not with the range.
        select c.p into p from (
            (select start_at as p
               where not exists (select 1 from port_allocations where port = start_at))
            union all
            (select a.port + 1 from port_allocations a
               where a.port >= start_at and a.port < range_end
                 and not exists (select 1 from port_allocations b where b.port = a.port + 1)
               order by a.port limit 1)
            union all
            (select range_start
               where not exists (select 1 from port_allocations where port = range_start))
            union all
            (select a.port + 1 from port_allocations a
               where a.port >= range_start and a.port < start_at
                 and not exists (select 1 from port_allocations b where b.port = a.port + 1)
               order by a.port limit 1)
        ) c limit 1;
        if p is null then
            raise exception 'no free % port', kind using errcode = 'HD001', detail = kind;
        end if;
        insert into port_allocations (port, kind, hosting_id)
            values (p, kind, hosting) on conflict do nothing;
        if found then
            return p;
        end if;
    end loop;
    raise exception 'no free % port (contention)', kind using errcode = 'HD001', detail = kind;
end $$;
