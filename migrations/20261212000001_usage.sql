-- Usage records for billing (issue 28): what each hosting used, when, as
-- time spans per kind of resource (the way Ubicloud keeps billing records).
--
-- A span of kind vcpu, memory_mib, disk_gib or backup_gib holds a quantity
-- over a period; an open span (no upper bound) is what the hosting uses
-- now. egress_bytes rows are counters: the bytes sent in one clock hour.
-- Rows outlive their hosting and its owner (no foreign keys): a bill is
-- made after the site is gone.
--
-- Spans change only through hostd_usage_set, called in the transaction of
-- the state change it records: the reconciler's status write (the guest
-- started, resized, stopped; its disk created), the hosting's deletion,
-- and a change of its Completed backups. A crash before that transaction
-- commits loses both, and the next pass that observes the state writes
-- both; the exclusion constraint makes two spans of one kind of one
-- hosting that overlap (an open span twice included) impossible.
create extension if not exists btree_gist;

create table usage (
    id          bigserial primary key,
    hosting_id  uuid not null,
    owner_id    uuid not null,
    kind        text not null check (kind in ('vcpu', 'memory_mib', 'disk_gib', 'backup_gib', 'egress_bytes')),
    quantity    numeric not null check (quantity > 0),
    period      tstzrange not null check (not isempty(period) and not lower_inf(period)),
    constraint usage_no_overlap exclude using gist (hosting_id with =, kind with =, period with &&)
);
create index usage_owner on usage (owner_id, kind);
create index usage_open on usage (hosting_id, kind) where upper_inf(period);
-- One egress row per hosting and hour, added to by each statistics round.
create unique index usage_egress_hour on usage (hosting_id, (lower(period))) where kind = 'egress_bytes';

create trigger fence before insert or update or delete on usage
    for each statement execute function hostd_fence();

-- Prices (optional): `price` per unit and hour for the span kinds (a vCPU,
-- a MiB of memory, a GiB of disk or backups), per GiB for egress_bytes,
-- valid over `valid`; at most one price per kind at any time.
create table rates (
    id        bigserial primary key,
    kind      text not null check (kind in ('vcpu', 'memory_mib', 'disk_gib', 'backup_gib', 'egress_bytes')),
    price     numeric not null check (price >= 0),
    currency  text not null check (currency ~ '^[A-Z]{3}$'),
    valid     tstzrange not null check (not isempty(valid) and not lower_inf(valid)),
    constraint rates_no_overlap exclude using gist (kind with =, valid with &&)
);

-- Makes the hosting's open span of kind k hold quantity q from `at` on:
-- nothing when it already does; otherwise the open span (if any) ends at
-- `at` (one that would be empty is deleted) and, unless q is null or 0, a
-- new one opens. Never before the end of the kind's last span (a clock
-- that went back, or another writer's): spans never overlap.
create function hostd_usage_set(h uuid, k text, q numeric, at timestamptz) returns void
language plpgsql as $$
declare
    cur usage%rowtype;
    owner uuid;
    since timestamptz;
begin
    if q = 0 then
        q := null;
    end if;
    select * into cur from usage where hosting_id = h and kind = k and upper_inf(period) for update;
    if found then
        if cur.quantity = q then
            return;
        end if;
        if at <= lower(cur.period) then
            delete from usage where id = cur.id;
        else
            update usage set period = tstzrange(lower(cur.period), at, '[)') where id = cur.id;
        end if;
    end if;
    if q is null then
        return;
    end if;
    select user_id into owner from hostings where id = h;
    if owner is null then
        return;
    end if;
    select max(upper(period)) into since from usage where hosting_id = h and kind = k;
    insert into usage (hosting_id, owner_id, kind, quantity, period)
        values (h, owner, k, q, tstzrange(greatest(at, coalesce(since, at)), null, '[)'));
end $$;

-- What the reconciler last saw running: the quantities its status write
-- records (null: none), and when it saw them.
alter table hosting_status
    add column metered_vcpus integer,
    add column metered_memory_mib integer,
    add column metered_disk_gib integer,
    add column metered_at timestamptz;

create function hostd_usage_meter() returns trigger
language plpgsql as $$
declare
    at timestamptz := coalesce(new.metered_at, now());
begin
    perform hostd_usage_set(new.hosting_id, 'vcpu', new.metered_vcpus, at);
    perform hostd_usage_set(new.hosting_id, 'memory_mib', new.metered_memory_mib, at);
    perform hostd_usage_set(new.hosting_id, 'disk_gib', new.metered_disk_gib, at);
    return null;
end $$;

create trigger usage_meter_insert after insert on hosting_status
    for each row execute function hostd_usage_meter();
create trigger usage_meter_update after update on hosting_status
    for each row
    when ((old.metered_vcpus, old.metered_memory_mib, old.metered_disk_gib)
          is distinct from (new.metered_vcpus, new.metered_memory_mib, new.metered_disk_gib))
    execute function hostd_usage_meter();

-- Backups: the Completed ones' total, in GiB, whenever it changes.
create or replace function hostd_backup_bytes() returns trigger
language plpgsql as $$
declare
    -- NEW is null on DELETE, OLD on INSERT.
    h uuid := coalesce(new.hosting_id, old.hosting_id);
    total bigint;
begin
    select coalesce(sum(size_bytes), 0)::bigint into total from backups
     where hosting_id = h and state = 'Completed';
    update hosting_status s set backup_bytes = total
     where s.hosting_id = h and s.backup_bytes is distinct from total;
    perform hostd_usage_set(h, 'backup_gib', total / 1073741824.0, now());
    return null;
end $$;

-- A hosting row gone by any path: whatever it still had open ends now
-- (the finalizer closes them first, at its own clock).
create function hostd_usage_close() returns trigger
language plpgsql as $$
begin
    update usage set period = tstzrange(lower(period), greatest(now(), lower(period) + interval '1 microsecond'), '[)')
     where hosting_id = old.id and upper_inf(period);
    return null;
end $$;

create trigger usage_close after delete on hostings
    for each row execute function hostd_usage_close();
