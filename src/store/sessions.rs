//! Dashboard sessions. The cookie holds 32 random bytes; only their SHA-256
//! is stored, so a database dump yields no usable session. A session is void
//! once expired, when the user's token epoch moves (password change), or
//! when the user is deleted (cascade).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::users::UserRow;
use super::{Result, Store};
use crate::domain::UserId;

/// The stored key of a session id.
fn key(raw: &[u8]) -> Vec<u8> {
    Sha256::digest(raw).to_vec()
}

impl Store {
    /// Records a session for `user` at token epoch `epoch` until `expires_at`
    /// (and drops expired sessions of everyone).
    pub async fn create_session(
        &self,
        raw_id: &[u8],
        user: UserId,
        epoch: i32,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("delete from web_sessions where expires_at < now()")
            .execute(&self.pool())
            .await?;
        sqlx::query(
            "insert into web_sessions (id_hash, user_id, token_epoch, expires_at) values ($1, $2, $3, $4)",
        )
        .bind(key(raw_id))
        .bind(user.0)
        .bind(epoch)
        .bind(expires_at)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// The user of a live session, or `None` (unknown, expired, or voided
    /// by a password change).
    pub async fn session_user(&self, raw_id: &[u8]) -> Result<Option<super::User>> {
        let row = sqlx::query_as::<_, UserRow>(
            "select u.id, u.email, u.username, u.role, u.created_at, u.password_hash, u.token_epoch \
             from web_sessions s join users u on u.id = s.user_id \
             where s.id_hash = $1 and s.expires_at > now() and s.token_epoch = u.token_epoch \
               and u.role <> 'system'",
        )
        .bind(key(raw_id))
        .fetch_optional(&self.pool())
        .await?;
        Ok(row.map(|r| r.into_user().0))
    }

    /// Ends a session (logout).
    pub async fn delete_session(&self, raw_id: &[u8]) -> Result<()> {
        sqlx::query("delete from web_sessions where id_hash = $1")
            .bind(key(raw_id))
            .execute(&self.pool())
            .await?;
        Ok(())
    }
}
