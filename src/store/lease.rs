//! Leader lease: a Postgres session-level advisory lock held on a dedicated
//! connection. Only the holder reconciles. When the holder dies its connection
//! closes and Postgres releases the lock at once, so a standby takes over on its
//! next attempt (every couple of seconds). If the connection breaks (Postgres
//! restart), the holder notices on its next check and stops acting.
//!
//! Until then Postgres fences it: each acquisition bumps the instance's
//! epoch in `reconciler_leader`, the reconciler's connections carry the
//! epoch of their term (`Store::fence`), and writes made under an older
//! epoch are refused (migration `20261205000001_leader_fencing`).

use sqlx::{Connection, PgConnection};

use super::{Result, Store};

/// A held (or not yet held) leader lease.
pub struct Lease {
    key: i64,
    instance: String,
    conn: Option<PgConnection>,
    /// The fencing token of the term this lease began (set on acquisition).
    epoch: Option<i64>,
}

/// Derives the advisory lock key from the hostd instance name, so several
/// installations can share one database server.
fn key_for(instance: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("hostd-reconciler-leader/{instance}").as_bytes());
    i64::from_be_bytes(d[..8].try_into().unwrap())
}

impl Lease {
    pub fn new(instance: &str) -> Lease {
        Lease {
            key: key_for(instance),
            instance: instance.to_string(),
            conn: None,
            epoch: None,
        }
    }

    /// Tries to take the lease; `true` if held after the call.
    pub async fn try_acquire(&mut self, store: &Store) -> Result<bool> {
        if self.conn.is_some() {
            return self.check().await;
        }
        let mut conn = store.dedicated_connection().await?;
        let (got,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut conn)
            .await?;
        if got {
            match begin_term(&mut conn, &self.instance).await {
                Ok(epoch) => {
                    self.epoch = Some(epoch);
                    self.conn = Some(conn);
                }
                Err(e) => {
                    let _ = conn.close().await;
                    return Err(e.into());
                }
            }
        } else {
            let _ = conn.close().await;
        }
        Ok(got)
    }

    /// Verifies the lease is still held (the connection is alive).
    pub async fn check(&mut self) -> Result<bool> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        // A session-level advisory lock lives exactly as long as the session:
        // if the connection still answers, the lock is still ours.
        let held: Result<(i32,), sqlx::Error> = sqlx::query_as("select 1").fetch_one(conn).await;
        match held {
            Ok(_) => Ok(true),
            Err(_) => {
                self.conn = None;
                Ok(false)
            }
        }
    }

    /// The fencing token of the current (or last) term.
    pub fn epoch(&self) -> Option<i64> {
        self.epoch
    }

    pub fn is_held(&self) -> bool {
        self.conn.is_some()
    }

    /// Gives the lease up (clean shutdown).
    pub async fn release(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = sqlx::query("select pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut c)
                .await;
            let _ = c.close().await;
        }
    }
}

/// Bumps the instance's epoch: the new term's fencing token. Takes the fence
/// lock exclusively, so it waits for writes of the previous term still in
/// flight, and every later write of that term sees the new epoch.
async fn begin_term(conn: &mut PgConnection, instance: &str) -> Result<i64, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hostd_fence_key($1))")
        .bind(instance)
        .execute(&mut *tx)
        .await?;
    let (epoch,): (i64,) = sqlx::query_as(
        "insert into reconciler_leader (instance, epoch) values ($1, 1) \
         on conflict (instance) do update set epoch = reconciler_leader.epoch + 1, since = now() \
         returning epoch",
    )
    .bind(instance)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(epoch)
}

impl Store {
    /// Whether the leader term this store's connections carry is still the
    /// current one (always, for a store that was never fenced). Asked
    /// before every call that changes a hypervisor (`drivers::fenced`).
    pub async fn term_valid(&self) -> Result<bool> {
        Ok(sqlx::query_scalar("select hostd_term_valid()")
            .fetch_one(&self.pool())
            .await?)
    }
}
