-- Many hypervisor hosts (issue 27). A node is desired state written by the
-- operator (CLI or admin API): a name, the libvirt URI hostd connects to,
-- the address the host nginx and probes use to reach the ports that node's
-- guests forward, whether new hostings may be placed there, labels and
-- capacity overrides. The reconciler writes the observed columns (last
-- heartbeat, readiness and health, resources). `HOSTD_LIBVIRT_URI` is upserted at
-- startup as the implicit node, so a one-machine install changes nothing.
create table nodes (
    name text primary key check (name ~ '^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$'),
    libvirt_uri text not null check (length(libvirt_uri) between 1 and 512),
    address inet not null default '127.0.0.1',
    schedulable boolean not null default true,
    labels jsonb not null default '{}'::jsonb,
    memory_mib bigint check (memory_mib is null or memory_mib > 0),
    vcpus integer check (vcpus is null or vcpus > 0),
    implicit boolean not null default false,
    created_at timestamptz not null default now(),
    -- Observed (reconciler): the last successful heartbeat, whether the node
    -- counts as up, why not, and what libvirt reported of its resources.
    heartbeat_at timestamptz,
    ready boolean not null default false,
    health text not null default 'Unreachable' check (health in ('Ready', 'Unreachable', 'Down')),
    message text,
    resources jsonb
);
create unique index nodes_one_implicit on nodes (implicit) where implicit;

-- The placement decision: written once, before anything is created on the
-- node (`where node is null`), so no hosting is ever bound to two nodes.
alter table hostings add column node text references nodes (name);
create index hostings_node on hostings (node);

create trigger fence before insert or update or delete on nodes
    for each statement execute function hostd_fence();

-- A hosting whose node is down is `Unknown`: nobody can tell what its guest does.
alter table hosting_status drop constraint hosting_status_phase_check;
alter table hosting_status add constraint hosting_status_phase_check
    check (phase in ('Pending', 'Provisioning', 'Ready', 'Updating', 'Stopped', 'Deleting', 'Failed', 'Unknown'));
