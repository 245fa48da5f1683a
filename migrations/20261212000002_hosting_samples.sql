-- Per-hosting statistics (issue 28): what the reconciler samples every
-- HOSTD_STATS_SECS from libvirt (CPU time, memory, disk and network
-- bytes, disk allocation) and from the host nginx's site log (requests,
-- bytes sent, status classes). One row per hosting and interval:
-- resolution 0 holds raw samples (kept a day), 300 five-minute buckets
-- (kept 30 days), 3600 hourly ones (kept a year); the downsampling moves
-- rows from one to the next, so a row is counted once at one resolution.
--
-- Counters are the amounts of the interval (`seconds` long); gauges are
-- sums over `samples` (average = sum / samples), so buckets merge exactly.
-- A column is null where the source could not tell (no network counters
-- under passt; no site log configured).
create table hosting_samples (
    hosting_id      uuid not null references hostings (id) on delete cascade,
    resolution      integer not null check (resolution in (0, 300, 3600)),
    at              timestamptz not null,
    seconds         real not null check (seconds > 0),
    samples         integer not null default 1 check (samples > 0),
    cpu_ns          bigint,
    memory_sum      bigint,
    disk_read       bigint,
    disk_write      bigint,
    disk_alloc_sum  bigint,
    net_rx          bigint,
    net_tx          bigint,
    requests        integer,
    http_bytes      bigint,
    s2xx            integer,
    s3xx            integer,
    s4xx            integer,
    s5xx            integer,
    primary key (hosting_id, resolution, at)
);
create index hosting_samples_age on hosting_samples (resolution, at);

create trigger fence before insert or update or delete on hosting_samples
    for each statement execute function hostd_fence();
