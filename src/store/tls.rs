//! HTTPS state: tenants' custom domains (desired, written by the API; their
//! verification written by the reconciler) and certificates (one row per
//! served name; the reconciler keeps the set and records issuance).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{is_unique_violation, Result, Store};
use crate::domain::*;

/// A custom domain as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRow {
    pub user_id: UserId,
    pub name: CustomDomain,
    pub token: String,
    /// `PendingVerification`, `Verified` or `Failed`.
    pub state: String,
    pub last_error: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
    pub verified_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Its certificate's state and expiry, once it has a row.
    pub certificate: Option<(String, Option<DateTime<Utc>>)>,
}

/// What adding a domain did.
#[derive(Debug)]
pub enum AddDomain {
    Added(DomainRow),
    /// This tenant has it already.
    Exists,
    /// Another tenant has proved control of it.
    TakenByOther,
    /// The tenant is at `HOSTD_MAX_DOMAINS`.
    Limit,
}

/// A pending claim due for a DNS check.
#[derive(Debug, Clone)]
pub struct DueCheck {
    pub user_id: UserId,
    pub name: CustomDomain,
    pub token: String,
    pub checks: i32,
}

/// A certificate's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    pub name: String,
    pub user_id: Option<UserId>,
    /// `Pending`, `Issuing`, `Ready` or `Failed`.
    pub state: String,
    pub not_after: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub failures: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub renew_requested: bool,
}

type DomainTuple = (
    Uuid,
    String,
    String,
    String,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    Option<String>,
    Option<DateTime<Utc>>,
);

const DOMAIN_SELECT: &str =
    "select d.user_id, d.name, d.token, d.state, d.last_error, d.checked_at, \
     d.verified_at, d.created_at, c.state, c.not_after from custom_domains d \
     left join certificates c on c.name = d.name and c.user_id = d.user_id";

fn domain_row(t: DomainTuple) -> DomainRow {
    DomainRow {
        user_id: UserId(t.0),
        name: CustomDomain::from_stored(t.1),
        token: t.2,
        state: t.3,
        last_error: t.4,
        checked_at: t.5,
        verified_at: t.6,
        created_at: t.7,
        certificate: t.8.map(|s| (s, t.9)),
    }
}

type CertTuple = (
    String,
    Option<Uuid>,
    String,
    Option<DateTime<Utc>>,
    Option<String>,
    i32,
    DateTime<Utc>,
    bool,
);

fn cert_row(t: CertTuple) -> CertRow {
    CertRow {
        name: t.0,
        user_id: t.1.map(UserId),
        state: t.2,
        not_after: t.3,
        last_error: t.4,
        failures: t.5,
        next_attempt_at: t.6,
        renew_requested: t.7,
    }
}

impl Store {
    /// Claims `name` for `user` with a fresh TXT `token`, unless another
    /// tenant has verified it or the user is at `max` domains. Serialized
    /// per user, so two requests cannot pass the limit together.
    pub async fn add_domain(
        &self,
        user: UserId,
        name: &CustomDomain,
        token: &str,
        max: u32,
    ) -> Result<AddDomain> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "select pg_advisory_xact_lock(hashtextextended('hostd-domains/' || $1::text, 0))",
        )
        .bind(user.0)
        .execute(&mut *tx)
        .await?;
        let (mine, taken): (i64, bool) = sqlx::query_as(
            "select (select count(*) from custom_domains where user_id = $1), \
                    exists(select 1 from custom_domains where name = $2 and state = 'Verified' and user_id <> $1)",
        )
        .bind(user.0)
        .bind(name.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if taken {
            return Ok(AddDomain::TakenByOther);
        }
        let exists: bool = sqlx::query_scalar(
            "select exists(select 1 from custom_domains where user_id = $1 and name = $2)",
        )
        .bind(user.0)
        .bind(name.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if exists {
            return Ok(AddDomain::Exists);
        }
        if mine >= i64::from(max) {
            return Ok(AddDomain::Limit);
        }
        let r =
            sqlx::query("insert into custom_domains (user_id, name, token) values ($1, $2, $3)")
                .bind(user.0)
                .bind(name.as_str())
                .bind(token)
                .execute(&mut *tx)
                .await;
        if let Err(e) = r {
            return match is_unique_violation(&e) {
                Some(_) => Ok(AddDomain::Exists),
                None => Err(e.into()),
            };
        }
        tx.commit().await?;
        let row = self
            .domain(user, name)
            .await?
            .ok_or(super::StoreError::NotFound)?;
        Ok(AddDomain::Added(row))
    }

    /// One of a user's domains.
    pub async fn domain(&self, user: UserId, name: &CustomDomain) -> Result<Option<DomainRow>> {
        let row: Option<DomainTuple> = sqlx::query_as(&format!(
            "{DOMAIN_SELECT} where d.user_id = $1 and d.name = $2"
        ))
        .bind(user.0)
        .bind(name.as_str())
        .fetch_optional(&self.pool())
        .await?;
        Ok(row.map(domain_row))
    }

    /// A user's domains, by name.
    pub async fn list_domains(&self, user: UserId) -> Result<Vec<DomainRow>> {
        let rows: Vec<DomainTuple> = sqlx::query_as(&format!(
            "{DOMAIN_SELECT} where d.user_id = $1 order by d.name"
        ))
        .bind(user.0)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows.into_iter().map(domain_row).collect())
    }

    /// Removes a user's domain; whether it existed. Its certificate row goes
    /// with the next TLS pass (which also removes the files).
    pub async fn remove_domain(&self, user: UserId, name: &CustomDomain) -> Result<bool> {
        let n = sqlx::query("delete from custom_domains where user_id = $1 and name = $2")
            .bind(user.0)
            .bind(name.as_str())
            .execute(&self.pool())
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Pending claims whose next DNS check is due, oldest first.
    pub async fn due_domain_checks(&self, limit: i64) -> Result<Vec<DueCheck>> {
        let rows: Vec<(Uuid, String, String, i32)> = sqlx::query_as(
            "select user_id, name, token, checks from custom_domains \
             where state = 'PendingVerification' and next_check_at <= now() \
             order by next_check_at limit $1",
        )
        .bind(limit)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(u, n, token, checks)| DueCheck {
                user_id: UserId(u),
                name: CustomDomain::from_stored(n),
                token,
                checks,
            })
            .collect())
    }

    /// Records a failed check of a pending claim and when to look again.
    pub async fn domain_check_failed(
        &self,
        user: UserId,
        name: &CustomDomain,
        error: &str,
        next_check_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "update custom_domains set last_error = $3, checks = checks + 1, checked_at = now(), \
             next_check_at = $4 where user_id = $1 and name = $2 and state = 'PendingVerification'",
        )
        .bind(user.0)
        .bind(name.as_str())
        .bind(error)
        .bind(next_check_at)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Marks a claim verified, and every other tenant's pending claim on the
    /// name failed. `false` when another tenant verified it first.
    pub async fn domain_verified(&self, user: UserId, name: &CustomDomain) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query(
            "update custom_domains set state = 'Verified', verified_at = now(), checked_at = now(), \
             checks = checks + 1, last_error = null \
             where user_id = $1 and name = $2 and state = 'PendingVerification'",
        )
        .bind(user.0)
        .bind(name.as_str())
        .execute(&mut *tx)
        .await;
        match r {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e).is_some() => {
                drop(tx);
                sqlx::query(
                    "update custom_domains set state = 'Failed', checked_at = now(), \
                     last_error = 'another account proved control of this domain first' \
                     where user_id = $1 and name = $2 and state = 'PendingVerification'",
                )
                .bind(user.0)
                .bind(name.as_str())
                .execute(&self.pool())
                .await?;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        sqlx::query(
            "update custom_domains set state = 'Failed', checked_at = now(), \
             last_error = 'another account proved control of this domain' \
             where name = $1 and user_id <> $2 and state = 'PendingVerification'",
        )
        .bind(name.as_str())
        .bind(user.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every verified custom domain with its owner.
    pub async fn verified_domains(&self) -> Result<Vec<(UserId, CustomDomain)>> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "select user_id, name from custom_domains where state = 'Verified' order by name",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(u, n)| (UserId(u), CustomDomain::from_stored(n)))
            .collect())
    }

    /// The owner and username of every hosting (not the warm pool's).
    pub async fn hosting_owners(&self) -> Result<Vec<(UserId, Username)>> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "select u.id, u.username from hostings h join users u on u.id = h.user_id \
             where not h.warm_pool and h.deletion_requested_at is null",
        )
        .fetch_all(&self.pool())
        .await?;
        rows.into_iter()
            .map(|(u, n)| Ok((UserId(u), Username::parse(&n)?)))
            .collect()
    }

    /// Every certificate row.
    pub async fn list_certificates(&self) -> Result<Vec<CertRow>> {
        let rows: Vec<CertTuple> = sqlx::query_as(
            "select name, user_id, state, not_after, last_error, failures, next_attempt_at, \
             renew_requested from certificates order by name",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows.into_iter().map(cert_row).collect())
    }

    /// Adds rows for names newly served (state `Pending`) and deletes the
    /// rows of names no longer served.
    pub async fn sync_certificates(
        &self,
        add: &[(String, Option<UserId>)],
        remove: &[String],
    ) -> Result<()> {
        if !add.is_empty() {
            let names: Vec<&str> = add.iter().map(|(n, _)| n.as_str()).collect();
            let users: Vec<Option<Uuid>> = add.iter().map(|(_, u)| u.map(|u| u.0)).collect();
            sqlx::query(
                "insert into certificates (name, user_id) select * from unnest($1::text[], $2::uuid[]) \
                 on conflict (name) do update set user_id = excluded.user_id",
            )
            .bind(names)
            .bind(users)
            .execute(&self.pool())
            .await?;
        }
        if !remove.is_empty() {
            sqlx::query("delete from certificates where name = any($1)")
                .bind(remove)
                .execute(&self.pool())
                .await?;
        }
        Ok(())
    }

    /// Marks an issuance started.
    pub async fn certificate_issuing(&self, name: &str) -> Result<()> {
        sqlx::query(
            "update certificates set state = 'Issuing', updated_at = now() where name = $1",
        )
        .bind(name)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Records a certificate installed on the host.
    pub async fn certificate_ready(&self, name: &str, not_after: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "update certificates set state = 'Ready', not_after = $2, issued_at = now(), \
             last_error = null, failures = 0, renew_requested = false, updated_at = now() \
             where name = $1",
        )
        .bind(name)
        .bind(not_after)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Records a failed issuance and when to try again. A certificate that
    /// is installed and valid stays served (its `not_after` is kept).
    pub async fn certificate_failed(
        &self,
        name: &str,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "update certificates set state = 'Failed', last_error = $2, failures = failures + 1, \
             next_attempt_at = $3, updated_at = now() where name = $1",
        )
        .bind(name)
        .bind(error)
        .bind(next_attempt_at)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Asks for certificates to be renewed now (all, or the one named);
    /// how many rows were marked.
    pub async fn request_renewal(&self, name: Option<&str>) -> Result<u64> {
        let n = sqlx::query(
            "update certificates set renew_requested = true, next_attempt_at = now() \
             where $1::text is null or name = $1",
        )
        .bind(name)
        .execute(&self.pool())
        .await?
        .rows_affected();
        Ok(n)
    }

    /// The hosting of a user, if any (events about its names go there).
    pub async fn hosting_of_user(&self, user: UserId) -> Result<Option<HostingId>> {
        let id: Option<Uuid> = sqlx::query_scalar("select id from hostings where user_id = $1")
            .bind(user.0)
            .fetch_optional(&self.pool())
            .await?;
        Ok(id.map(HostingId))
    }
}
