//! Users: sign-up, login lookup, roles.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{is_unique_violation, Result, Store, StoreError};
use crate::domain::*;

/// A user as the API shows it (never with the hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub username: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    username: String,
    role: String,
    created_at: DateTime<Utc>,
    password_hash: String,
}

impl UserRow {
    fn into_user(self) -> (User, String) {
        (
            User {
                id: UserId(self.id),
                email: self.email,
                username: self.username,
                role: Role::from_db(&self.role),
                created_at: self.created_at,
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
             returning id, email, username, role, created_at, password_hash",
        )
        .bind(Uuid::new_v4())
        .bind(email.as_str())
        .bind(username.as_str())
        .bind(password_hash)
        .bind(role.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match is_unique_violation(&e) {
            Some(c) if c.contains("email") => StoreError::Conflict("a user with this email"),
            Some(_) => StoreError::Conflict("a user with this username"),
            None => e.into(),
        })?;
        Ok(row.into_user().0)
    }

    /// Finds a user by email (case-insensitive) or username, with the password hash.
    pub async fn find_user_for_login(&self, login: &str) -> Result<Option<(User, String)>> {
        let row = sqlx::query_as::<_, UserRow>(
            "select id, email, username, role, created_at, password_hash from users \
             where lower(email) = lower($1) or username = $1 limit 1",
        )
        .bind(login)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(UserRow::into_user))
    }

    pub async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        let row = sqlx::query_as::<_, UserRow>(
            "select id, email, username, role, created_at, password_hash from users where id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.into_user().0))
    }

    pub async fn set_role(&self, username: &Username, role: Role) -> Result<()> {
        let r = sqlx::query("update users set role = $2 where username = $1")
            .bind(username.as_str())
            .bind(role.as_str())
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
