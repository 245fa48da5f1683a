-- Dashboard sessions: the browser's HttpOnly cookie holds a random id; only
-- its SHA-256 is stored. A password change (token_epoch) or a deleted user
-- voids them.
create table web_sessions (
    id_hash bytea primary key,
    user_id uuid not null references users(id) on delete cascade,
    token_epoch integer not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index web_sessions_user on web_sessions(user_id);
create index web_sessions_expires on web_sessions(expires_at);

-- The tail of each guest's boot console log, copied by the reconciler (which
-- runs on the hypervisor host) so the API can serve it from anywhere.
create table hosting_console (
    hosting_id uuid primary key references hostings(id) on delete cascade,
    captured_at timestamptz not null default now(),
    -- Size of the log file when captured, bytes.
    log_size bigint not null,
    -- Its last bytes, control characters removed (at most 64 KiB).
    tail text not null
);
