-- Restarts of a guest that did not become ready after hostd started it
-- (HOSTD_BOOT_RETRIES). NULL: the guest has been ready since its start (a
-- ready guest that stops answering later is reported, not restarted).
alter table hosting_status add column boot_restarts integer default 0;
