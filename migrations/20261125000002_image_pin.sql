-- The image version a hosting's disk was created from (its resolved disk,
-- kernel and initrd paths). Kernel and initrd must keep matching the base the
-- overlay is backed by, even after the image is rebuilt.
alter table hosting_status add column image_pin jsonb;
