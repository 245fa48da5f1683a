//! Redis: the state every API process shares and that may expire on its own
//! (rate-limit windows, revoked tokens). One multiplexed connection, opened
//! lazily and reopened by the client library; every call has a short
//! deadline, so a Redis outage costs a request at most that long.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{DriverError, DriverResult};

/// The longest a Redis call may take before it counts as an outage.
const DEADLINE: Duration = Duration::from_millis(500);

/// Sliding-window log: drop entries older than the window, count, and (if
/// under the limit and asked to) add one. Redis' own clock, so every API
/// process agrees. Returns {allowed, retry_after_ms}.
const WINDOW_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window - now}
end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
end
return {1, 0}
"#;

/// Redis, namespaced per hostd instance.
#[derive(Clone)]
pub struct Kv {
    conn: ConnectionManager,
    prefix: String,
    script: std::sync::Arc<redis::Script>,
}

/// What a sliding window said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Allowed,
    /// Over the limit; the oldest counted event leaves the window after this.
    Limited(Duration),
}

fn err(e: impl std::fmt::Display) -> DriverError {
    DriverError::Other(format!("redis: {e}"))
}

impl Kv {
    /// A client for `url` (nothing is connected yet); keys start with `prefix`.
    pub fn new(url: &str, prefix: &str) -> DriverResult<Kv> {
        let client = redis::Client::open(url).map_err(err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEADLINE))
            .set_response_timeout(Some(DEADLINE))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client.get_connection_manager_lazy(config).map_err(err)?;
        Ok(Kv {
            conn,
            prefix: prefix.to_string(),
            script: std::sync::Arc::new(redis::Script::new(WINDOW_SCRIPT)),
        })
    }

    async fn run<T, F>(&self, f: F) -> DriverResult<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(DEADLINE, f).await {
            Ok(r) => r.map_err(err),
            Err(_) => Err(err("no answer within 500 ms")),
        }
    }

    /// Counts an event (named `add`, unique) in the window `key`, unless
    /// `limit` events are in it already; `add: None` only looks.
    pub async fn window(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        add: Option<&str>,
    ) -> DriverResult<Window> {
        let mut conn = self.conn.clone();
        let key = format!("{}rl:{key}", self.prefix);
        let mut inv = self.script.key(key);
        inv.arg(window.as_millis() as u64)
            .arg(limit)
            .arg(if add.is_some() { "1" } else { "0" })
            .arg(add.unwrap_or(""));
        let (allowed, retry_ms): (i64, i64) = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(if allowed == 1 {
            Window::Allowed
        } else {
            Window::Limited(Duration::from_millis(retry_ms.max(1) as u64))
        })
    }

    /// Takes a counted event (named `member`) out of the window `key` again.
    pub async fn forget(&self, key: &str, member: &str) -> DriverResult<()> {
        let mut conn = self.conn.clone();
        let key = format!("{}rl:{key}", self.prefix);
        self.run(
            redis::cmd("ZREM")
                .arg(key)
                .arg(member)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Marks a token id revoked for `ttl` (its remaining lifetime).
    pub async fn revoke(&self, jti: &str, ttl: Duration) -> DriverResult<()> {
        let mut conn = self.conn.clone();
        let key = format!("{}revoked:{jti}", self.prefix);
        let secs = ttl.as_secs().max(1);
        self.run(
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("EX")
                .arg(secs)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Whether a token id was revoked.
    pub async fn is_revoked(&self, jti: &str) -> DriverResult<bool> {
        let mut conn = self.conn.clone();
        let key = format!("{}revoked:{jti}", self.prefix);
        let n: i64 = self
            .run(redis::cmd("EXISTS").arg(key).query_async(&mut conn))
            .await?;
        Ok(n > 0)
    }

    /// Records the state of a user's tokens for `ttl` (the token lifetime):
    /// its current token epoch after a password change, or `deleted`.
    pub async fn mark_user(&self, user: &str, mark: &str, ttl: Duration) -> DriverResult<()> {
        let mut conn = self.conn.clone();
        let key = format!("{}user:{user}", self.prefix);
        self.run(
            redis::cmd("SET")
                .arg(key)
                .arg(mark)
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// In one round trip: whether the token id is revoked, and the user's
    /// mark (see [`Kv::mark_user`]), if any.
    pub async fn token_state(&self, jti: &str, user: &str) -> DriverResult<(bool, Option<String>)> {
        let mut conn = self.conn.clone();
        let (r, u) = (
            format!("{}revoked:{jti}", self.prefix),
            format!("{}user:{user}", self.prefix),
        );
        let v: Vec<Option<String>> = self
            .run(redis::cmd("MGET").arg(r).arg(u).query_async(&mut conn))
            .await?;
        let mut it = v.into_iter();
        let revoked = it.next().flatten().is_some();
        Ok((revoked, it.next().flatten()))
    }

    /// A round trip; the server's version.
    pub async fn ping(&self) -> DriverResult<String> {
        let mut conn = self.conn.clone();
        let pong: String = self.run(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(pong)
    }
}
