-- What a hosting's backups and quarantined data hold on the host's disk
-- (issue 22): counted against the tenant's backup quota
-- (HOSTD_BACKUP_QUOTA_GIB, or HOSTD_BACKUP_KEEP × the disk size) and shown
-- by GET /api/v1/host/my and the dashboard.
--
-- backup_bytes: the sum of the hosting's Completed backups' sizes, kept by
-- the trigger below on every change of its backups. quarantine_bytes:
-- written by the reconciler, which alone sees the quarantine directory.
alter table hosting_status
    add column backup_bytes bigint not null default 0,
    add column quarantine_bytes bigint not null default 0;

create function hostd_backup_bytes() returns trigger
language plpgsql as $$
declare
    -- NEW is null on DELETE, OLD on INSERT.
    h uuid := coalesce(new.hosting_id, old.hosting_id);
begin
    update hosting_status s set backup_bytes = t.total
      from (select coalesce(sum(size_bytes), 0)::bigint as total from backups
             where hosting_id = h and state = 'Completed') t
     where s.hosting_id = h and s.backup_bytes is distinct from t.total;
    return null;
end $$;

create trigger backups_bytes after insert or update or delete on backups
    for each row execute function hostd_backup_bytes();

update hosting_status s set backup_bytes = coalesce(
    (select sum(size_bytes) from backups b where b.hosting_id = s.hosting_id and b.state = 'Completed'), 0);
