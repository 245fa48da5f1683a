-- hostd schema: desired state (users, hostings), observed status, port allocations,
-- events, and the wake-up notifications the reconciler listens for.

create or replace function hostd_set_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at = now();
    return new;
end;
$$;

create table users (
    id            uuid primary key,
    email         text not null,
    username      text not null,
    password_hash text not null,
    role          text not null default 'user' check (role in ('user', 'admin')),
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);
create unique index users_email_key on users (lower(email));
create unique index users_username_key on users (username);
create trigger users_updated_at before update on users
    for each row execute function hostd_set_updated_at();

-- Desired state. Written by the API only.
create table hostings (
    id                    uuid primary key,
    user_id               uuid not null references users (id) on delete restrict,
    vcpus                 integer not null check (vcpus between 1 and 64),
    memory_mib            integer not null check (memory_mib between 128 and 262144),
    disk_gib              integer not null check (disk_gib between 1 and 4096),
    image                 text not null,
    ssh_public_keys       text[] not null default '{}',
    running               boolean not null default true,
    generation            bigint not null default 1,
    deletion_requested_at timestamptz,
    created_at            timestamptz not null default now(),
    updated_at            timestamptz not null default now()
);
-- One hosting per user; this constraint (not application code) decides concurrent creates.
create unique index hostings_user_id_key on hostings (user_id);
create index hostings_deleting_idx on hostings (deletion_requested_at) where deletion_requested_at is not null;
create trigger hostings_updated_at before update on hostings
    for each row execute function hostd_set_updated_at();

-- Observed state. Written by the reconciler only.
create table hosting_status (
    hosting_id          uuid primary key references hostings (id) on delete cascade,
    phase               text not null default 'Pending'
        check (phase in ('Pending', 'Provisioning', 'Ready', 'Updating', 'Stopped', 'Deleting', 'Failed')),
    conditions          jsonb not null default '[]',
    observed_generation bigint not null default 0,
    ssh_port            integer,
    http_port           integer,
    vm_name             text,
    message             text,
    disk_created        boolean not null default false,
    provisioning_since  timestamptz,
    last_reconciled_at  timestamptz,
    updated_at          timestamptz not null default now()
);
create trigger hosting_status_updated_at before update on hosting_status
    for each row execute function hostd_set_updated_at();

-- Port allocations. The primary key makes a double allocation impossible whatever
-- the application does; (hosting_id, kind) keeps one port of each kind per hosting.
create table port_allocations (
    port         integer primary key check (port between 1 and 65535),
    kind         text not null check (kind in ('ssh', 'http')),
    hosting_id   uuid not null references hostings (id) on delete restrict,
    allocated_at timestamptz not null default now(),
    unique (hosting_id, kind)
);

create table events (
    id         bigserial primary key,
    hosting_id uuid not null references hostings (id) on delete cascade,
    at         timestamptz not null default now(),
    type       text not null check (type in ('Normal', 'Warning')),
    reason     text not null,
    message    text not null
);
create index events_hosting_at_idx on events (hosting_id, at desc, id desc);

-- Wake the reconciler on every desired-state change.
create or replace function hostd_notify_hosting() returns trigger
language plpgsql as $$
begin
    perform pg_notify('hostd_hostings', coalesce(new.id, old.id)::text);
    return null;
end;
$$;
create trigger hostings_notify after insert or update or delete on hostings
    for each row execute function hostd_notify_hosting();

-- Reconciler heartbeat and counters, written by the leader on every resync so
-- that API processes can report on a reconciler running elsewhere.
create table reconciler_heartbeat (
    instance   text primary key,
    holder     text not null,
    at         timestamptz not null default now(),
    stats      jsonb not null default '{}'
);
