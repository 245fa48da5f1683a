-- One meaning per name: "pool" alone was the warm pool, the libvirt storage
-- pool and the Postgres pool at once. The warm pool's column says so now.
alter table hostings rename column pool to warm_pool;
alter index hostings_pool_idx rename to hostings_warm_pool_idx;
