-- The identity of this hostd installation: created once, with the database.
-- It is written into every object hostd owns (domain markers, the storage pool
-- and routes directories), and a hostd only changes objects carrying its own.
create table installation (
    singleton   boolean primary key default true check (singleton),
    id          uuid not null default gen_random_uuid(),
    created_at  timestamptz not null default now()
);
insert into installation default values;

-- Hostings whose deletion completed: their leftovers may be removed at once
-- (anything else without a hosting row is quarantined, never deleted).
create table hosting_tombstones (
    hosting_id  uuid primary key,
    deleted_at  timestamptz not null default now()
);
