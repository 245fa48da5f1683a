//! Abuse resistance for the API: rate limits (sliding windows in Redis, shared
//! by every API process), token revocations, and the gate that bounds bcrypt
//! work. When Redis is unreachable the limits fall back to per-process
//! windows in memory (never to no limit), revocations to Postgres, and
//! `health/detailed` says `degraded`; logins keep working.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::ApiError;
use crate::config::RateLimits;
use crate::domain::UserId;
use crate::drivers::kv::{Kv, Window};
use crate::store::Store;
use crate::telemetry::Metrics;

/// The limited actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Failed logins per account from one client address: the lockout (an
    /// attacker elsewhere never locks the owner out).
    LoginAccountAddress,
    /// Failed logins per account from anywhere: past this ceiling, attempts
    /// on the account are slowed (one at a time, [`SLOW_TURN`] apart), never
    /// refused.
    LoginAccount,
    /// Failed logins per client address.
    LoginAddress,
    /// Registrations per client address.
    Register,
    /// Hosting writes (create, change, delete, backup, restore, reset) per user.
    HostOps,
    /// Disk replacements (restores and resets) per user per hour: each one
    /// moves a whole disk to quarantine.
    DiskReplace,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::LoginAccountAddress => "login_account_address",
            Rule::LoginAccount => "login_account",
            Rule::LoginAddress => "login_address",
            Rule::Register => "register",
            Rule::HostOps => "host_ops",
            Rule::DiskReplace => "disk_replace",
        }
    }
}

/// How far apart the attempts on an account past its failure ceiling are.
pub const SLOW_TURN: Duration = Duration::from_secs(1);

/// How long Redis is left alone after it failed, before it is tried again.
const REDIS_COOLDOWN: Duration = Duration::from_secs(5);

/// Rate limits, revocations and the bcrypt gate of one API process.
pub struct Guard {
    kv: Kv,
    store: Store,
    policy: RateLimits,
    metrics: Arc<Metrics>,
    /// Windows kept in this process while Redis is unreachable.
    memory: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
    /// Redis is not tried again before this instant (after a failure).
    redis_down_until: Mutex<Option<Instant>>,
    /// Whether Redis answered last time (for the transition log lines).
    redis_ok: AtomicBool,
    /// Concurrent bcrypt computations.
    bcrypt: Arc<tokio::sync::Semaphore>,
    /// How many bcrypt computations may wait for a turn before new ones are
    /// refused (503) instead of queued.
    bcrypt_queue: usize,
    /// How many wait now (tokio's semaphore does not say).
    bcrypt_waiting: std::sync::atomic::AtomicUsize,
    /// Accounts past their failure ceiling: their attempts take turns.
    slowed: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An account's turn for a slowed login attempt (see [`Guard::slow_turn`]).
pub struct SlowTurn {
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Guard {
    pub fn new(kv: Kv, store: Store, policy: RateLimits, metrics: Arc<Metrics>) -> Guard {
        let permits = policy.bcrypt_concurrency.max(1);
        Guard {
            kv,
            store,
            policy,
            metrics,
            memory: Mutex::new(HashMap::new()),
            redis_down_until: Mutex::new(None),
            redis_ok: AtomicBool::new(true),
            bcrypt: Arc::new(tokio::sync::Semaphore::new(permits)),
            bcrypt_queue: permits * 64,
            bcrypt_waiting: std::sync::atomic::AtomicUsize::new(0),
            slowed: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for `account`'s turn: one slowed attempt at a time, each
    /// [`SLOW_TURN`] after the previous one began, and holds it until the
    /// returned turn is dropped (after the password was checked). Guessers
    /// from many addresses get one guess per turn; the owner still gets in.
    pub async fn slow_turn(&self, account: &str) -> SlowTurn {
        let lane = {
            let mut m = self.slowed.lock().unwrap();
            // Forget lanes nobody waits on.
            m.retain(|_, l| Arc::strong_count(l) > 1);
            m.entry(account.to_string()).or_default().clone()
        };
        let turn = lane.lock_owned().await;
        tokio::time::sleep(SLOW_TURN).await;
        SlowTurn { _turn: turn }
    }

    fn limit(&self, rule: Rule) -> (u32, Duration) {
        let p = &self.policy;
        match rule {
            Rule::LoginAccountAddress => (p.login_max_failures, p.login_window),
            Rule::LoginAccount => (p.login_slow_after, p.login_window),
            Rule::LoginAddress => (p.login_max_failures_per_address, p.login_window),
            Rule::Register => (p.register_per_hour, Duration::from_secs(3600)),
            Rule::HostOps => (p.host_ops_per_min, Duration::from_secs(60)),
            Rule::DiskReplace => (p.disk_replaces_per_hour, Duration::from_secs(3600)),
        }
    }

    /// Redis, unless it failed within the cooldown.
    fn redis(&self) -> Option<&Kv> {
        let until = *self.redis_down_until.lock().unwrap();
        match until {
            Some(t) if Instant::now() < t => None,
            _ => Some(&self.kv),
        }
    }

    fn redis_failed(&self, e: &crate::drivers::DriverError) {
        *self.redis_down_until.lock().unwrap() = Some(Instant::now() + REDIS_COOLDOWN);
        if self.redis_ok.swap(false, Ordering::Relaxed) {
            tracing::warn!(target: "audit", error = %e,
                "redis unreachable: rate limits are kept per process in memory, revocations checked in postgres");
        }
    }

    fn redis_succeeded(&self) {
        if !self.redis_ok.swap(true, Ordering::Relaxed) {
            tracing::info!(target: "audit", "redis reachable again: shared rate limits restored");
        }
    }

    /// A Redis round trip, for health checks (also updates the status).
    pub async fn ping_redis(&self) -> Result<String, String> {
        match self.kv.ping().await {
            Ok(p) => {
                self.redis_succeeded();
                *self.redis_down_until.lock().unwrap() = None;
                Ok(p)
            }
            Err(e) => {
                self.redis_failed(&e);
                Err(e.to_string())
            }
        }
    }

    fn memory_window(&self, key: &str, limit: u32, window: Duration, add: Option<u64>) -> Window {
        let mut map = self.memory.lock().unwrap();
        let now = Instant::now();
        let log = map.entry(key.to_string()).or_default();
        while log
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            log.pop_front();
        }
        if log.len() >= limit as usize {
            let (oldest, _) = *log.front().expect("non-empty");
            return Window::Limited(window.saturating_sub(now.duration_since(oldest)));
        }
        if let Some(id) = add {
            log.push_back((now, id));
        }
        // Bound the map: forget idle keys now and then.
        if map.len() > 100_000 {
            map.retain(|_, l| {
                l.back()
                    .is_some_and(|(t, _)| now.duration_since(*t) < window)
            });
        }
        Window::Allowed
    }

    async fn window(&self, rule: Rule, subject: &str, add: Option<u64>) -> Window {
        let (limit, window) = self.limit(rule);
        let key = format!("{}:{subject}", rule.as_str());
        if let Some(kv) = self.redis() {
            let member = add.map(|id| format!("{id:x}"));
            match kv.window(&key, limit, window, member.as_deref()).await {
                Ok(w) => {
                    self.redis_succeeded();
                    return w;
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        self.memory_window(&key, limit, window, add)
    }

    fn limited(&self, rule: Rule, subject: &str, retry: Duration) -> ApiError {
        self.metrics.rate_limited(rule.as_str());
        tracing::warn!(target: "audit", rule = rule.as_str(), subject, retry_after_s = retry.as_secs_f64(),
            "rate limit hit");
        ApiError::TooManyRequests(retry)
    }

    /// Counts one action against `rule` for `subject`; 429 when over. The
    /// ticket can take the action out of the count again ([`Guard::forgive`]),
    /// e.g. a login attempt that turned out right: counting attempts before
    /// their outcome keeps the limit exact however many run at once.
    pub async fn attempt(&self, rule: Rule, subject: &str) -> Result<Ticket, ApiError> {
        let id = rand_id();
        match self.window(rule, subject, Some(id)).await {
            Window::Allowed => Ok(Ticket {
                rule,
                subject: subject.to_string(),
                id,
            }),
            Window::Limited(d) => Err(self.limited(rule, subject, d)),
        }
    }

    /// Counts one action against `rule` for `subject`; 429 when over.
    pub async fn hit(&self, rule: Rule, subject: &str) -> Result<(), ApiError> {
        self.attempt(rule, subject).await.map(|_| ())
    }

    /// Takes a counted action out of its window (it did not count after all).
    pub async fn forgive(&self, t: Ticket) {
        let key = format!("{}:{}", t.rule.as_str(), t.subject);
        if let Some(kv) = self.redis() {
            match kv.forget(&key, &format!("{:x}", t.id)).await {
                Ok(()) => return self.redis_succeeded(),
                Err(e) => self.redis_failed(&e),
            }
        }
        if let Some(log) = self.memory.lock().unwrap().get_mut(&key) {
            log.retain(|(_, id)| *id != t.id);
        }
    }

    /// Revokes one token until `expires_at`: in Redis (checked on every
    /// request) and in Postgres (checked while Redis is unreachable).
    pub async fn revoke(
        &self,
        jti: uuid::Uuid,
        user: UserId,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), ApiError> {
        self.store.revoke_token(jti, user, expires_at).await?;
        let ttl = (expires_at - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::from_secs(1));
        if let Some(kv) = self.redis() {
            match kv.revoke(&jti.to_string(), ttl).await {
                Ok(()) => self.redis_succeeded(),
                Err(e) => self.redis_failed(&e),
            }
        }
        self.metrics.revocations.inc();
        Ok(())
    }

    /// For a caller that has checked this process's read view: whether
    /// another API process has just voided the token (Redis holds every
    /// revocation, password change and account deletion at once; the view
    /// learns of other processes' changes by notification, milliseconds
    /// later). One round trip. `None` while Redis is down: then the caller
    /// asks Postgres, which is exact too.
    pub async fn refused_elsewhere(
        &self,
        jti: uuid::Uuid,
        user: UserId,
        epoch: i32,
    ) -> Option<bool> {
        let kv = self.redis()?;
        match kv.token_state(&jti.to_string(), &user.to_string()).await {
            Ok((revoked, mark)) => {
                self.redis_succeeded();
                let voided = match mark.as_deref() {
                    None => false,
                    Some("deleted") => true,
                    Some(m) => m.parse::<i32>().map_or(true, |current| epoch < current),
                };
                Some(revoked || voided)
            }
            Err(e) => {
                self.redis_failed(&e);
                None
            }
        }
    }

    /// Tells every API process, through Redis, that the user's tokens below
    /// `mark` (a token epoch) or all of them (`deleted`) are void, for `ttl`
    /// (the token lifetime). Postgres holds the same fact; without Redis the
    /// other processes fall back to it.
    pub async fn mark_user(&self, user: UserId, mark: &str, ttl: Duration) {
        if let Some(kv) = self.redis() {
            match kv.mark_user(&user.to_string(), mark, ttl).await {
                Ok(()) => self.redis_succeeded(),
                Err(e) => self.redis_failed(&e),
            }
        }
    }

    /// Whether a token was revoked: Redis, or Postgres while Redis is down.
    pub async fn is_revoked(&self, jti: uuid::Uuid) -> Result<bool, ApiError> {
        if let Some(kv) = self.redis() {
            match kv.is_revoked(&jti.to_string()).await {
                Ok(r) => {
                    self.redis_succeeded();
                    return Ok(r);
                }
                Err(e) => self.redis_failed(&e),
            }
        }
        Ok(self.store.is_token_revoked(jti).await?)
    }

    /// Runs a bcrypt computation on the blocking pool, at most
    /// `HOSTD_BCRYPT_CONCURRENCY` at a time; 503 when too many already wait.
    pub async fn bcrypt<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        /// Counts one waiter for as long as it lives (also when the request
        /// is dropped while waiting).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let waiting = self.bcrypt_waiting.fetch_add(1, Ordering::Relaxed);
        let counted = Waiting(&self.bcrypt_waiting);
        let permit = if waiting >= self.bcrypt_queue {
            None
        } else {
            self.bcrypt.clone().acquire_owned().await.ok()
        };
        drop(counted);
        let Some(permit) = permit else {
            self.metrics.rate_limited("bcrypt_queue");
            tracing::warn!(target: "audit", waiting, "bcrypt queue full: refusing");
            return Err(ApiError::Busy(Duration::from_secs(1)));
        };
        // The permit lives as long as the computation, even if the request
        // is dropped meanwhile.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
    }
}

/// One counted action, which [`Guard::forgive`] can take back.
#[derive(Debug)]
pub struct Ticket {
    rule: Rule,
    subject: String,
    id: u64,
}

fn rand_id() -> u64 {
    let b = uuid::Uuid::new_v4();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The client's address as a limit key: IPv4-mapped IPv6 addresses are
/// their IPv4 address; an IPv6 client is its /64.
pub fn client_key(addr: Option<IpAddr>) -> String {
    match addr.map(canonical) {
        Some(IpAddr::V6(v6)) => {
            // A /64 is one client for IPv6 (one host usually holds all of it).
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(ip) => ip.to_string(),
        None => "unknown".into(),
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what an IPv6 listener
/// sees of an IPv4 client) as its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client of a request whose TCP peer is `peer`: the peer itself,
/// unless it is one of `trusted` proxies; then the right-most address of
/// `X-Forwarded-For` that is not a trusted proxy (a client can put anything
/// on the left; only what the proxies appended counts).
pub fn client_of(peer: Option<IpAddr>, xff: &[&str], trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops: Vec<IpAddr> = xff
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .map(|a| a.parse::<IpAddr>().ok().map(canonical))
        .collect::<Option<Vec<_>>>()
        // A malformed header: no hop of it can be trusted.
        .unwrap_or_default();
    Some(
        hops.iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .or(hops.first())
            .copied()
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_ipv4_and_ipv6_clients_their_64() {
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(client_key(Some(mapped)), "203.0.113.9");
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(client_key(Some(v6)), "2001:db8:1:2::/64");
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Not a trusted peer: its header is ignored.
        let stranger = ip("198.51.100.7");
        assert_eq!(client_of(stranger, &["1.2.3.4"], &trusted), stranger);
        // Behind the proxy: the right-most address it did not add itself;
        // what the client wrote on the left does not count.
        assert_eq!(
            client_of(Some(proxy), &["6.6.6.6, 203.0.113.9"], &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_of(Some(proxy), &["203.0.113.9", "10.0.0.7"], &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_of(Some(proxy), &["::ffff:203.0.113.9"], &trusted),
            ip("203.0.113.9")
        );
        // No header, or a malformed one: the proxy's own address.
        assert_eq!(client_of(Some(proxy), &[], &trusted), Some(proxy));
        assert_eq!(client_of(Some(proxy), &["nonsense"], &trusted), Some(proxy));
    }
}
