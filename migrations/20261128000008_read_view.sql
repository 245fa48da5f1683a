-- The API's in-process read view (store/view.rs) follows every change of
-- what GET /host/my and authentication read, on its own channel (the
-- reconciler's `hostd_hostings` must not wake on status writes). Payload:
-- '<kind>:<id>|<clock_timestamp as epoch seconds>' with kind u (user),
-- h (hosting, its status or events) or r (revoked token); the timestamp
-- lets the view measure how stale it runs.
create or replace function hostd_view_notify(kind text, id uuid) returns void
language plpgsql as $$
begin
    perform pg_notify('hostd_view', kind || ':' || id::text || '|' || extract(epoch from clock_timestamp())::text);
end $$;

create or replace function hostd_view_user() returns trigger language plpgsql as $$
begin
    perform hostd_view_notify('u', coalesce(new.id, old.id));
    return null;
end $$;
create trigger users_view after insert or update or delete on users
    for each row execute function hostd_view_user();

create or replace function hostd_view_hosting() returns trigger language plpgsql as $$
begin
    perform hostd_view_notify('h', coalesce(new.id, old.id));
    return null;
end $$;
create trigger hostings_view after insert or update or delete on hostings
    for each row execute function hostd_view_hosting();

create or replace function hostd_view_hosting_child() returns trigger language plpgsql as $$
begin
    perform hostd_view_notify('h', coalesce(new.hosting_id, old.hosting_id));
    return null;
end $$;
create trigger hosting_status_view after insert or update on hosting_status
    for each row execute function hostd_view_hosting_child();
create trigger events_view after insert on events
    for each row execute function hostd_view_hosting_child();

create or replace function hostd_view_revoked() returns trigger language plpgsql as $$
begin
    perform hostd_view_notify('r', new.jti);
    return null;
end $$;
create trigger revoked_tokens_view after insert on revoked_tokens
    for each row execute function hostd_view_revoked();
