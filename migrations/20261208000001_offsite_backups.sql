-- Off-host backups (HOSTD_BACKUP_S3_URL): where a backup's sealed copy is in
-- the object store, its size and SHA-256 there (read back before the backup
-- is Completed), the fingerprint of the key that sealed it, and the id of
-- an upload in progress (recorded before any part is sent, so an upload a
-- crash interrupted is aborted, not left behind).
alter table backups
    add column remote_key text,
    add column remote_size bigint,
    add column remote_sha256 text,
    add column key_fingerprint text,
    add column upload_id text;
