-- A disk reset is desired state: the owner's consent to a fresh, empty disk
-- bumps hostings.disk_epoch; hosting_status.disk_epoch is the epoch of the
-- disk that exists. A vanished disk at the current epoch is never recreated
-- silently (DiskLost); a newer desired epoch is.
alter table hostings add column disk_epoch integer not null default 0;
alter table hosting_status add column disk_epoch integer not null default 0;
