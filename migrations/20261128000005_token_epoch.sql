-- Every token carries its user's token epoch; a password change bumps it, so
-- all earlier tokens stop working even if Redis (where single-token
-- revocations live) lost its data.
alter table users add column token_epoch integer not null default 0;

-- Single-token revocations (logout), also kept here so they hold while Redis
-- is unreachable; rows past the token's expiry are purged on the next logout.
create table revoked_tokens (
    jti        uuid primary key,
    user_id    uuid not null references users (id) on delete cascade,
    expires_at timestamptz not null
);
create index revoked_tokens_expiry on revoked_tokens (expires_at);
