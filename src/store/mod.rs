//! The store: every SQL statement hostd runs lives here. The API writes desired
//! state (users, hostings); the reconciler reads it and writes observed status,
//! port allocations and events. Callers pass and receive domain types only.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

use crate::domain::*;

pub mod alert_facts;
pub mod backup_chains;
pub mod backups;
pub mod hostings;
pub mod lease;
pub mod moves;
pub mod nodes;
pub mod samples;
pub mod sessions;
pub mod status;
pub mod tls;
pub mod usage;
pub mod users;
pub mod view;
pub mod warm_pool;

pub use backups::{Backup, Lineage, RemoteCopy, RestoreRefusal};
pub use hostings::{HostingRecord, Meter, ObservedStatus, RecordVersion, StorageUse};
pub use moves::DrainWork;
pub use nodes::{Evacuation, NewNode, Node};
pub use status::{CapacityRow, CapacityUsage, ConsoleTail, Event, NewEvent, ReconcilerStats};
pub use tls::{AddDomain, CertRow, DomainRow, DueCheck};
pub use users::User;
pub use warm_pool::{WarmPoolCounts, WARM_POOL_USER};

/// Store-layer errors. The API maps these to HTTP codes; nothing here knows HTTP.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was hit; the string names what was duplicated.
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("no free {0} port left in the configured range")]
    PortsExhausted(&'static str),
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// The write was made under a leader term that is over: another
    /// process (or this one, again) took the lease since.
    #[error("refused: this reconciler's leader term is over")]
    Fenced,
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Postgres channel the `hostings` trigger notifies on.
pub const NOTIFY_CHANNEL: &str = "hostd_hostings";

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some(FENCED_SQLSTATE) => {
                StoreError::Fenced
            }
            _ => StoreError::Db(e),
        }
    }
}

/// The SQLSTATE the fence trigger raises (`hostd_fence`).
const FENCED_SQLSTATE: &str = "HF001";

fn is_unique_violation(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => {
            Some(d.constraint().unwrap_or("").to_string())
        }
        _ => None,
    }
}

/// A pooled connection idle for at least this long is tested (a round
/// trip) before it is handed out.
const ACQUIRE_TEST_IDLE: Duration = Duration::from_secs(1);

/// Handle to the database. Cheap to clone; clones share one pool slot.
#[derive(Clone, Debug)]
pub struct Store {
    /// The pool statements run on. The reconciler's store (see
    /// [`Store::detached`]) swaps in a pool fenced by its leader term.
    slot: std::sync::Arc<std::sync::RwLock<Slot>>,
    url: String,
    /// The API's read view, when this process serves reads from one.
    view: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<view::ReadView>>>,
    /// The time usage records are written at: the system's, or one a
    /// test sets and moves ([`Store::set_clock`]). Shared by clones.
    clock: std::sync::Arc<std::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>>,
}

#[derive(Debug)]
struct Slot {
    pool: PgPool,
    /// Whether the pool is this store's own (made by [`Store::fence`] for a
    /// leader term) rather than shared with the store it was detached from.
    own: bool,
}

/// How hostd's pools connect: statements logged at debug level.
fn connect_options(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?.log_statements(tracing::log::LevelFilter::Debug))
}

/// How hostd's pools hand out connections.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every connection it hands out (a round trip before
        // each statement); one used within the last second is known to
        // be alive (sqlx pings it on release too), so only connections
        // idle for longer are tested: after a Postgres restart those are
        // the ones that are dead.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= ACQUIRE_TEST_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

impl Store {
    /// Now, as usage records see it.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.lock().unwrap().unwrap_or_else(chrono::Utc::now)
    }

    /// Stops this store's clock at `t` (`None`: the system's again), for
    /// tests that play a timeline of hours in seconds; [`Store::advance`]
    /// moves it on.
    pub fn set_clock(&self, t: Option<chrono::DateTime<chrono::Utc>>) {
        *self.clock.lock().unwrap() = t;
    }

    /// Moves a stopped clock on by `d` (nothing for the system's).
    pub fn advance(&self, d: std::time::Duration) {
        if let Some(t) = self.clock.lock().unwrap().as_mut() {
            *t += chrono::Duration::from_std(d).expect("a test's step fits");
        }
    }

    /// Connects a pool of at most `max_connections` (fails at once if
    /// Postgres is unreachable; `app` retries start-up for 30 s).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        let pool = pool_options(max_connections)
            .connect_with(connect_options(url)?)
            .await?;
        Ok(Store {
            slot: std::sync::Arc::new(std::sync::RwLock::new(Slot { pool, own: false })),
            url: url.to_string(),
            view: Default::default(),
            clock: Default::default(),
        })
    }

    /// The pool statements run on now.
    fn pool(&self) -> PgPool {
        self.slot.read().expect("store slot").pool.clone()
    }

    /// The Postgres connection pool (for tests and benchmarks that query directly).
    pub fn db(&self) -> PgPool {
        self.pool()
    }

    /// A store with a pool slot of its own (the reconciler's), on the same
    /// pool until [`Store::fence`] is called on it.
    pub fn detached(&self) -> Store {
        let pool = self.pool();
        Store {
            slot: std::sync::Arc::new(std::sync::RwLock::new(Slot { pool, own: false })),
            url: self.url.clone(),
            view: self.view.clone(),
            clock: self.clock.clone(),
        }
    }

    /// From now on this store's statements run on connections that carry
    /// leader term `epoch` of `instance` (see [`lease::Lease::epoch`]):
    /// Postgres refuses their writes to the reconciler's tables once another
    /// term has begun (`StoreError::Fenced`, migration
    /// `20261205000001_leader_fencing`). The previous term's pool is closed.
    pub fn fence(&self, instance: &str, epoch: i64) -> Result<()> {
        let max = self.pool().options().get_max_connections();
        let opts = connect_options(&self.url)?.options([
            ("hostd.fence_instance", instance),
            ("hostd.fence_epoch", epoch.to_string().as_str()),
        ]);
        let pool = pool_options(max).connect_lazy_with(opts);
        let new = Slot { pool, own: true };
        let old = std::mem::replace(&mut *self.slot.write().expect("store slot"), new);
        if old.own {
            tokio::spawn(async move { old.pool.close().await });
        }
        Ok(())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Applies pending migrations (idempotent; concurrent callers serialize on a lock).
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations").run(&self.pool()).await?;
        Ok(())
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.pool()).await?;
        Ok(())
    }

    /// A dedicated connection (LISTEN, leases).
    pub async fn dedicated_connection(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }
}

impl Store {
    /// This installation's identity (created once by the migrations).
    pub async fn installation_id(&self) -> Result<uuid::Uuid> {
        let (id,): (uuid::Uuid,) = sqlx::query_as("select id from installation")
            .fetch_one(&self.pool())
            .await?;
        Ok(id)
    }

    /// Whether the hosting's deletion completed here (its row is gone by design).
    pub async fn has_tombstone(&self, id: crate::domain::HostingId) -> Result<bool> {
        let row: Option<(uuid::Uuid,)> =
            sqlx::query_as("select hosting_id from hosting_tombstones where hosting_id = $1")
                .bind(id.0)
                .fetch_optional(&self.pool())
                .await?;
        Ok(row.is_some())
    }
}
