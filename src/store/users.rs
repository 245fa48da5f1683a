//! Users: sign-up, login lookup, roles.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{is_unique_violation, Result, Store, StoreError};
use crate::domain::*;

/// A user as the API shows it (never with the hash).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub username: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Bumped by a password change: tokens of an older epoch are void.
    #[serde(skip)]
    pub token_epoch: i32,
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    id: Uuid,
    email: String,
    username: String,
    role: String,
    created_at: DateTime<Utc>,
    password_hash: String,
    token_epoch: i32,
}

impl UserRow {
    pub(super) fn into_user(self) -> (User, String) {
        (
            User {
                id: UserId(self.id),
                email: self.email,
                username: self.username,
                role: Role::from_db(&self.role),
                created_at: self.created_at,
                token_epoch: self.token_epoch,
            },
            self.password_hash,
        )
    }
}

impl Store {
    pub async fn create_user(
        &self,
        email: &Email,
        username: &Username,
        password_hash: &str,
        role: Role,
    ) -> Result<User> {
        let row = sqlx::query_as::<_, UserRow>(
            "insert into users (id, email, username, password_hash, role) values ($1, $2, $3, $4, $5) \
             returning id, email, username, role, created_at, password_hash, token_epoch",
        )
        .bind(Uuid::new_v4())
        .bind(email.as_str())
        .bind(username.as_str())
        .bind(password_hash)
        .bind(role.as_str())
        .fetch_one(&self.pool())
        .await
        .map_err(|e| match is_unique_violation(&e) {
            // One message for both: which one exists is nobody's business.
            Some(_) => StoreError::Conflict("a user with this email or username"),
            None => e.into(),
        })?;
        let user = row.into_user().0;
        self.touched_user(user.id);
        Ok(user)
    }

    /// Deletes an account that owns no hosting (`Conflict` if it does; its
    /// sessions and revocation records go with it).
    pub async fn delete_user(&self, id: UserId) -> Result<()> {
        let r = sqlx::query("delete from users where id = $1 and role <> 'system'")
            .bind(id.0)
            .execute(&self.pool())
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
                    StoreError::Conflict("a hosting of this account (delete it first)")
                }
                _ => e.into(),
            })?;
        self.touched_user(id);
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Every account (the read view's initial list).
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query_as::<_, UserRow>(
            "select id, email, username, role, created_at, password_hash, token_epoch from users",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.into_user().0).collect())
    }

    /// The people's accounts (not the internal warm-pool one), oldest
    /// first: the admin's user list.
    pub async fn list_accounts(&self) -> Result<Vec<User>> {
        let rows = sqlx::query_as::<_, UserRow>(
            "select id, email, username, role, created_at, password_hash, token_epoch from users \
             where role <> 'system' order by created_at, username",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.into_user().0).collect())
    }

    /// Finds a user by email (case-insensitive) or username, with the password hash.
    pub async fn find_user_for_login(&self, login: &str) -> Result<Option<(User, String)>> {
        let row = sqlx::query_as::<_, UserRow>(
            "select id, email, username, role, created_at, password_hash, token_epoch from users \
             where (lower(email) = lower($1) or username = $1) and role <> 'system' limit 1",
        )
        .bind(login)
        .fetch_optional(&self.pool())
        .await?;
        Ok(row.map(UserRow::into_user))
    }

    pub async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        let row = sqlx::query_as::<_, UserRow>(
            "select id, email, username, role, created_at, password_hash, token_epoch from users where id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool())
        .await?;
        Ok(row.map(|r| r.into_user().0))
    }

    /// The users of `ids` that exist, in one query.
    pub async fn get_users(&self, ids: &[UserId]) -> Result<Vec<User>> {
        let ids: Vec<Uuid> = ids.iter().map(|i| i.0).collect();
        let rows = sqlx::query_as::<_, UserRow>(
            "select id, email, username, role, created_at, password_hash, token_epoch from users where id = any($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.into_user().0).collect())
    }

    pub async fn set_role(&self, username: &Username, role: Role) -> Result<()> {
        let r: Option<(Uuid,)> = sqlx::query_as(
            "update users set role = $2 where username = $1 and role <> 'system' returning id",
        )
        .bind(username.as_str())
        .bind(role.as_str())
        .fetch_optional(&self.pool())
        .await?;
        let (id,) = r.ok_or(StoreError::NotFound)?;
        self.touched_user(UserId(id));
        Ok(())
    }

    /// The password hash of a user (for a password change).
    pub async fn password_hash(&self, id: UserId) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("select password_hash from users where id = $1")
                .bind(id.0)
                .fetch_optional(&self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Sets a new password hash and bumps the token epoch (every earlier
    /// token is void); returns the new epoch.
    pub async fn change_password(&self, id: UserId, hash: &str) -> Result<i32> {
        let row: Option<(i32,)> = sqlx::query_as(
            "update users set password_hash = $2, token_epoch = token_epoch + 1 where id = $1 \
             returning token_epoch",
        )
        .bind(id.0)
        .bind(hash)
        .fetch_optional(&self.pool())
        .await?;
        self.touched_user(id);
        row.map(|r| r.0).ok_or(StoreError::NotFound)
    }

    /// Moves the user's token epoch: every token and dashboard session made
    /// before ends ("log out everywhere"). The new epoch.
    pub async fn bump_token_epoch(&self, id: UserId) -> Result<i32> {
        let row: Option<(i32,)> = sqlx::query_as(
            "update users set token_epoch = token_epoch + 1 where id = $1 returning token_epoch",
        )
        .bind(id.0)
        .fetch_optional(&self.pool())
        .await?;
        self.touched_user(id);
        row.map(|r| r.0).ok_or(StoreError::NotFound)
    }

    /// Records a revoked token until its expiry (and purges expired rows).
    pub async fn revoke_token(
        &self,
        jti: Uuid,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("delete from revoked_tokens where expires_at < now()")
            .execute(&self.pool())
            .await?;
        sqlx::query(
            "insert into revoked_tokens (jti, user_id, expires_at) values ($1, $2, $3) \
             on conflict (jti) do nothing",
        )
        .bind(jti)
        .bind(user.0)
        .bind(expires_at)
        .execute(&self.pool())
        .await?;
        self.touched_revocation(jti, expires_at);
        Ok(())
    }

    /// Whether a token was revoked (the record Postgres keeps).
    pub async fn is_token_revoked(&self, jti: Uuid) -> Result<bool> {
        let row: Option<(Uuid,)> = sqlx::query_as("select jti from revoked_tokens where jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool())
            .await?;
        Ok(row.is_some())
    }
}
