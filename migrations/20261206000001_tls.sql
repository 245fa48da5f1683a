-- HTTPS (issue 23): custom domains a tenant claims, and the certificates
-- the reconciler keeps for every name the host nginx serves over TLS.
-- Postgres holds only metadata: keys and chains live in the host's state
-- directory (0600).

-- A tenant's claim on a domain. Claims by several tenants may be pending at
-- once (a claim alone must not let a squatter block the owner); the first
-- to prove control with its TXT record wins, and only one verified claim
-- per name can exist.
create table custom_domains (
    user_id uuid not null references users(id) on delete cascade,
    name text not null,
    -- The value the TXT record `_hostd-challenge.<name>` must hold.
    token text not null,
    state text not null default 'PendingVerification'
        check (state in ('PendingVerification', 'Verified', 'Failed')),
    last_error text,
    checks integer not null default 0,
    checked_at timestamptz,
    next_check_at timestamptz not null default now(),
    verified_at timestamptz,
    created_at timestamptz not null default now(),
    primary key (user_id, name)
);
create unique index custom_domains_one_verified on custom_domains (name) where state = 'Verified';
create index custom_domains_name on custom_domains (name);

-- One certificate per served name (a tenant's `<user>.<sites domain>` or a
-- verified custom domain). Rows are desired state the reconciler derives;
-- state and dates are what it observed.
create table certificates (
    name text primary key,
    user_id uuid references users(id) on delete cascade,
    state text not null default 'Pending'
        check (state in ('Pending', 'Issuing', 'Ready', 'Failed')),
    not_after timestamptz,
    issued_at timestamptz,
    last_error text,
    failures integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    -- Set by an operator (`hostd renew-certificate`) to renew now.
    renew_requested boolean not null default false,
    updated_at timestamptz not null default now()
);

create trigger fence before insert or update or delete on custom_domains
    for each statement execute function hostd_fence();
create trigger fence before insert or update or delete on certificates
    for each statement execute function hostd_fence();

-- A hosting's route serves its owner's verified domains: a change to them
-- touches the hosting's row, so the reconciler (NOTIFY, row versions) sees it.
create function hostd_domains_touch() returns trigger
language plpgsql as $$
begin
    if (tg_op <> 'INSERT' and old.state = 'Verified') or (tg_op <> 'DELETE' and new.state = 'Verified') then
        update hostings set updated_at = now()
         where user_id = (case when tg_op = 'DELETE' then old.user_id else new.user_id end);
    end if;
    return null;
end $$;
create trigger custom_domains_touch after insert or update or delete on custom_domains
    for each row execute function hostd_domains_touch();
