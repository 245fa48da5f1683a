//! The ACME client ([`CertIssuer`]): certificates from an ACME CA (Let's
//! Encrypt, or Pebble in tests) with `instant-acme`, validated by HTTP-01.
//! The host nginx answers `/.well-known/acme-challenge/<token>` for every
//! name from the challenge directory this driver writes, before any tenant
//! route, so a guest can neither answer nor block a challenge.
//!
//! The account key is created once per directory URL and kept in the TLS
//! directory (0600); certificate keys are generated here and returned to
//! the caller, which installs them on the host. Nothing goes to Postgres.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use sha2::Digest;

use super::{DriverError, DriverResult};
use crate::config::AcmePolicy;

/// A certificate chain and its private key, both PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Something that issues certificates for host names.
#[async_trait]
pub trait CertIssuer: Send + Sync + 'static {
    /// Issues one certificate covering `names`.
    async fn issue(&self, names: &[String]) -> DriverResult<Issued>;
}

/// [`CertIssuer`] backed by an ACME CA.
pub struct AcmeIssuer {
    policy: AcmePolicy,
    /// Where the account's credentials are kept.
    account_file: PathBuf,
    /// Where challenge responses are written (served by the host nginx).
    challenges: PathBuf,
    account: tokio::sync::Mutex<Option<Account>>,
}

/// How long one issuance may wait for the CA's validation and signature.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

impl AcmeIssuer {
    pub fn new(policy: AcmePolicy, tls_dir: &Path) -> Self {
        let tag = hex::encode(&sha2::Sha256::digest(policy.directory.as_bytes())[..8]);
        AcmeIssuer {
            account_file: tls_dir.join(format!("acme-account-{tag}.json")),
            challenges: tls_dir.join("challenges"),
            policy,
            account: Default::default(),
        }
    }

    fn builder(&self) -> DriverResult<instant_acme::AccountBuilder> {
        match &self.policy.ca_file {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        }
        .map_err(acme_err)
    }

    /// The account: loaded from its file, or created (and its file written
    /// 0600) on first use.
    async fn account(&self) -> DriverResult<Account> {
        let mut slot = self.account.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let account = match tokio::fs::read(&self.account_file).await {
            Ok(bytes) => {
                let creds: AccountCredentials = serde_json::from_slice(&bytes).map_err(|e| {
                    DriverError::Other(format!("{}: {e}", self.account_file.display()))
                })?;
                self.builder()?
                    .from_credentials(creds)
                    .await
                    .map_err(acme_err)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let contact = self.policy.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = self
                    .builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.policy.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(acme_err)?;
                let json = serde_json::to_vec(&creds)
                    .map_err(|e| DriverError::Other(format!("account credentials: {e}")))?;
                let path = self.account_file.clone();
                tokio::task::spawn_blocking(move || {
                    super::tls_files::write_private(&path, &json, None)
                })
                .await
                .map_err(|e| DriverError::Other(e.to_string()))??;
                tracing::info!(directory = %self.policy.directory, "ACME account created");
                account
            }
            Err(e) => return Err(e.into()),
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Forgets the account after the CA refused it (e.g. a test CA that
    /// restarted): the next issuance creates a new one.
    async fn forget_account(&self) {
        *self.account.lock().await = None;
        let _ = tokio::fs::remove_file(&self.account_file).await;
    }

    async fn order(&self, account: &Account, names: &[String]) -> DriverResult<Issued> {
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(acme_err)?;
        let mut written = Vec::new();
        let result = async {
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut authz = a.map_err(acme_err)?;
                if authz.status == AuthorizationStatus::Valid {
                    continue;
                }
                let mut ch = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                    DriverError::Other("the CA offers no HTTP-01 challenge".into())
                })?;
                let token = ch.token.clone();
                if token.is_empty()
                    || !token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(DriverError::Other(
                        "the CA sent an unusable challenge token".into(),
                    ));
                }
                let path = self.challenges.join(&token);
                tokio::fs::write(&path, ch.key_authorization().as_str()).await?;
                written.push(path);
                ch.set_ready().await.map_err(acme_err)?;
            }
            let policy = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(ORDER_TIMEOUT);
            let status = order.poll_ready(&policy).await.map_err(acme_err)?;
            if status != OrderStatus::Ready {
                return Err(DriverError::Other(format!(
                    "the CA did not validate the order ({status:?}): {}",
                    problems(&mut order).await
                )));
            }
            let key_pem = order.finalize().await.map_err(acme_err)?;
            let chain_pem = order.poll_certificate(&policy).await.map_err(acme_err)?;
            Ok(Issued { chain_pem, key_pem })
        }
        .await;
        for p in written {
            let _ = tokio::fs::remove_file(p).await;
        }
        result
    }
}

/// The CA's reasons for refusing an order's authorizations.
async fn problems(order: &mut instant_acme::Order) -> String {
    let mut out = Vec::new();
    if let Some(p) = &order.state().error {
        out.push(p.to_string());
    }
    let mut authzs = order.authorizations();
    while let Some(Ok(mut a)) = authzs.next().await {
        if let Ok(state) = a.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    out.push(p.to_string());
                }
            }
        }
    }
    if out.is_empty() {
        "no reason given".into()
    } else {
        out.join("; ")
    }
}

fn acme_err(e: instant_acme::Error) -> DriverError {
    DriverError::Other(format!("ACME: {e}"))
}

#[async_trait]
impl CertIssuer for AcmeIssuer {
    async fn issue(&self, names: &[String]) -> DriverResult<Issued> {
        let account = self.account().await?;
        match self.order(&account, names).await {
            Err(DriverError::Other(m)) if m.contains("accountDoesNotExist") => {
                self.forget_account().await;
                let account = self.account().await?;
                self.order(&account, names).await
            }
            r => r,
        }
    }
}
