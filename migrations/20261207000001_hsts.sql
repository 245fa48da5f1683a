-- HSTS opt-in per hosting (issue 23): when set, the host nginx sends
-- `Strict-Transport-Security` on the hosting's own names (its sites name and
-- verified custom domains) when they are served over HTTPS. Desired state,
-- changed by `PATCH /api/v1/host/my {"hsts": true}`.
alter table hostings add column hsts boolean not null default false;
