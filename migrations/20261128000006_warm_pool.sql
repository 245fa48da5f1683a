-- Warm pool: generic guests booted ahead of demand. A pool guest is a hosting
-- owned by the internal `hostd-warm-pool` account (role 'system', which can
-- never log in) with `pool = true`. Creating a hosting that fits the pool's
-- class re-owns a Ready pool row in the same transaction that would have
-- inserted a new one, so one guest can never go to two hostings (row lock +
-- the unique index below); the reconciler then personalises the running guest.
alter table users drop constraint users_role_check;
alter table users add constraint users_role_check check (role in ('user', 'admin', 'system'));
insert into users (id, email, username, password_hash, role)
values ('00000000-0000-4000-8000-000000000001', 'warm-pool@hostd.invalid', 'hostd-warm-pool', '!', 'system')
on conflict do nothing;

alter table hostings add column pool boolean not null default false;
-- When a pool guest was handed to its owner (null: never pooled, or still in the pool).
alter table hostings add column claimed_at timestamptz;
-- The generation the claim set: the claim is being personalised while the
-- observed generation is below it.
alter table hostings add column claim_generation bigint;
drop index hostings_user_id_key;
create unique index hostings_user_id_key on hostings (user_id) where not pool;
create index hostings_pool_idx on hostings (created_at) where pool;

-- The seed hash the running guest has applied (at boot, or live through the
-- guest agent); null when unknown.
alter table hosting_status add column applied_seed text;
