//! HTTPS convergence, run by the leader beside the hosting reconciles:
//!
//! 1. **Custom domains**: each pending claim whose check is due is looked
//!    up (`_hostd-challenge.<name>` TXT must hold its token); a match
//!    verifies it (and fails other tenants' pending claims on the name), a
//!    miss is checked again later (backoff up to an hour). A verified
//!    domain changes its hosting's row (trigger), so the hosting's route
//!    serves it.
//! 2. **Certificates**: the names that should have one (each tenant's
//!    `<user>.<sites domain>` unless a wildcard covers them, and every
//!    verified custom domain) are the `certificates` rows; a name without
//!    an installed certificate, one within `HOSTD_ACME_RENEW_DAYS` of
//!    expiry, or one asked to renew is issued by ACME. A failure is
//!    recorded with a backoff and a Warning event on the hosting; the last
//!    good certificate stays installed and served.
//! 3. **The TLS map**: names with an installed certificate (plus the
//!    wildcard) are written to `certs.map`; nginx reloads only when the
//!    set changes (a renewal replaces a file and needs no reload). Files
//!    of names no longer served are removed after the map stops naming them.
//!
//! Level-triggered: every pass compares the whole desired set with the
//! files on the host, so a crash at any point is repaired by the next pass.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{Context, ReconcileError};
use crate::domain::{EventType, Reason, UserId};
use crate::drivers::acme::{AcmeIssuer, CertIssuer};
use crate::drivers::dns::{DnsResolver, TxtLookup};
use crate::drivers::tls_files::CertFiles;
use crate::drivers::DriverError;
use crate::shutdown::Shutdown;
use crate::store::NewEvent;

/// Time between passes.
pub const TICK: Duration = Duration::from_secs(3);
/// Most issuances one pass starts (the rest wait for the next pass).
const ISSUES_PER_PASS: usize = 4;
/// Most domain checks one pass makes (concurrently).
const CHECKS_PER_PASS: i64 = 20;
/// How long one TXT lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS side of the reconciler's context.
pub struct Tls {
    pub files: CertFiles,
    /// `None`: no ACME directory configured.
    pub issuer: Option<Arc<dyn CertIssuer>>,
    /// `None`: no resolver could be set up (custom domains stay pending).
    pub dns: Option<Arc<dyn TxtLookup>>,
}

impl Tls {
    pub fn new(config: &crate::config::Config) -> Tls {
        let t = &config.tls;
        let dns = match DnsResolver::new(t.dns_resolver) {
            Ok(r) => Some(Arc::new(r) as Arc<dyn TxtLookup>),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver: custom domains cannot be verified");
                None
            }
        };
        Tls {
            files: CertFiles::new(&t.dir),
            issuer: t
                .acme
                .clone()
                .map(|a| Arc::new(AcmeIssuer::new(a, &t.dir)) as Arc<dyn CertIssuer>),
            dns,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassStats {
    pub domains_verified: usize,
    pub issued: usize,
    pub failed: usize,
    /// Whether the TLS map changed (nginx reloaded).
    pub map_changed: bool,
}

/// Runs passes until `stop`.
pub async fn run(ctx: Arc<Context>, stop: Shutdown) {
    loop {
        match pass(&ctx).await {
            Ok(_) => {}
            Err(ReconcileError::Store(crate::store::StoreError::Fenced)) => break,
            Err(e) => tracing::warn!(error = %e, "TLS pass failed; will retry"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// One pass: domains, certificates, the map.
#[tracing::instrument(name = "tls_pass", skip_all)]
pub async fn pass(ctx: &Context) -> Result<PassStats, ReconcileError> {
    let mut stats = PassStats {
        domains_verified: verify_domains(ctx).await?,
        ..Default::default()
    };
    if ctx.config.tls.enabled() {
        converge_certificates(ctx, &mut stats).await?;
    }
    Ok(stats)
}

/// Delay before the next check of a claim checked `checks` times.
fn check_backoff(checks: i32) -> Duration {
    Duration::from_secs((5u64 << checks.clamp(0, 10) as u32).min(3600))
}

/// Delay before retrying an issuance that failed `failures` times.
fn issue_backoff(failures: i32) -> Duration {
    Duration::from_secs((60u64 << failures.clamp(0, 10) as u32).min(6 * 3600))
}

async fn event(
    ctx: &Context,
    user: Option<UserId>,
    type_: EventType,
    reason: Reason,
    message: String,
) {
    let Some(user) = user else { return };
    match ctx.store.hosting_of_user(user).await {
        Ok(Some(h)) => {
            let e = NewEvent {
                type_,
                reason,
                message,
            };
            if let Err(e) = ctx.store.add_events(h, &[e]).await {
                tracing::warn!(error = %e, "cannot record a TLS event");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot find the hosting for a TLS event"),
    }
}

async fn verify_domains(ctx: &Context) -> Result<usize, ReconcileError> {
    let Some(dns) = ctx.tls.dns.clone() else {
        return Ok(0);
    };
    // Lookups run at once, each bounded: a tenant whose name servers never
    // answer delays a pass by one timeout, not one per domain.
    let mut lookups = tokio::task::JoinSet::new();
    for c in ctx.store.due_domain_checks(CHECKS_PER_PASS).await? {
        let dns = dns.clone();
        lookups.spawn(async move {
            let txt_name = c.name.txt_name();
            let outcome = match tokio::time::timeout(LOOKUP_TIMEOUT, dns.txt(&txt_name)).await {
                Ok(Ok(values)) if values.iter().any(|v| v.trim() == c.token) => Ok(()),
                Ok(Ok(values)) if values.is_empty() => {
                    Err(format!("no TXT record at {txt_name} yet"))
                }
                Ok(Ok(_)) => Err(format!(
                    "the TXT record at {txt_name} does not hold this domain's token"
                )),
                Ok(Err(e)) => Err(format!("cannot look up {txt_name}: {e}")),
                Err(_) => Err(format!(
                    "no answer for {txt_name} within {} s",
                    LOOKUP_TIMEOUT.as_secs()
                )),
            };
            (c, outcome)
        });
    }
    let mut verified = 0;
    while let Some(done) = lookups.join_next().await {
        let Ok((c, outcome)) = done else { continue };
        match outcome {
            Ok(()) => {
                if ctx.store.domain_verified(c.user_id, &c.name).await? {
                    verified += 1;
                    tracing::info!(domain = %c.name, "custom domain verified");
                    event(
                        ctx,
                        Some(c.user_id),
                        EventType::Normal,
                        Reason::DomainVerified,
                        format!(
                            "{} verified by its TXT record; it is routed to this hosting",
                            c.name
                        ),
                    )
                    .await;
                }
            }
            Err(why) => {
                let next = Utc::now() + check_backoff(c.checks);
                ctx.store
                    .domain_check_failed(c.user_id, &c.name, &why, next)
                    .await?;
            }
        }
    }
    Ok(verified)
}

/// The names that should have a certificate, with their owners.
async fn desired_names(ctx: &Context) -> Result<BTreeMap<String, Option<UserId>>, ReconcileError> {
    let mut want = BTreeMap::new();
    if ctx.tls.issuer.is_none() {
        return Ok(want);
    }
    if ctx.config.tls.wildcard.is_none() {
        for (user, name) in ctx.store.hosting_owners().await? {
            if let Some(host) = ctx.config.sites.vhost(&name) {
                want.insert(host, Some(user));
            }
        }
    }
    for (user, d) in ctx.store.verified_domains().await? {
        want.insert(d.to_string(), Some(user));
    }
    if let Some(panel) = &ctx.config.tls.panel_host {
        want.insert(panel.clone(), None);
    }
    Ok(want)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ReconcileError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DriverError::Other(e.to_string()))?
        .map_err(|e| ReconcileError::Driver(DriverError::Io(e)))
}

async fn converge_certificates(ctx: &Context, stats: &mut PassStats) -> Result<(), ReconcileError> {
    let files = ctx.tls.files.clone();
    // Directories and the fallback certificate (a few syscalls once they exist).
    let f = files.clone();
    blocking(move || f.prepare()).await?;
    let want = desired_names(ctx).await?;
    let rows = ctx.store.list_certificates().await?;
    let have: HashSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let add: Vec<(String, Option<UserId>)> = want
        .iter()
        .filter(|(n, u)| !rows.iter().any(|r| &r.name == *n && r.user_id == **u))
        .map(|(n, u)| (n.clone(), *u))
        .collect();
    let remove: Vec<String> = have
        .iter()
        .filter(|n| !want.contains_key(**n))
        .map(|n| n.to_string())
        .collect();
    ctx.store.sync_certificates(&add, &remove).await?;
    let rows = if add.is_empty() && remove.is_empty() {
        rows
    } else {
        ctx.store.list_certificates().await?
    };

    // Issue what is missing, expiring or asked for.
    if let (Some(issuer), Some(acme)) = (ctx.tls.issuer.clone(), ctx.config.tls.acme.as_ref()) {
        let now = Utc::now();
        let renew_before = chrono::Duration::from_std(acme.renew_before).unwrap_or_default();
        let mut started = 0;
        for r in &rows {
            if started >= ISSUES_PER_PASS {
                break;
            }
            let (f, n) = (files.clone(), r.name.clone());
            let installed = blocking(move || Ok(f.installed(&n))).await?;
            let due = r.renew_requested || installed.is_none_or(|t| t - renew_before <= now);
            if !due {
                // Installed and fresh: make the row say so (after a crash
                // between install and record, or a drifted row).
                if let Some(t) = installed {
                    if r.state != "Ready" || r.not_after != Some(t) {
                        ctx.store.certificate_ready(&r.name, t).await?;
                    }
                }
                continue;
            }
            if r.state == "Failed" && r.next_attempt_at > now {
                continue;
            }
            started += 1;
            ctx.store.certificate_issuing(&r.name).await?;
            let t0 = std::time::Instant::now();
            match issuer.issue(std::slice::from_ref(&r.name)).await {
                Ok(issued) => {
                    let (f, n) = (files.clone(), r.name.clone());
                    let expiry = crate::drivers::tls_files::not_after(issued.chain_pem.as_bytes());
                    let Some(expiry) = expiry else {
                        let why = "the CA returned no parsable certificate";
                        ctx.store
                            .certificate_failed(&r.name, why, now + issue_backoff(r.failures))
                            .await?;
                        stats.failed += 1;
                        continue;
                    };
                    blocking(move || f.install(&n, &issued.chain_pem, &issued.key_pem)).await?;
                    ctx.store.certificate_ready(&r.name, expiry).await?;
                    stats.issued += 1;
                    tracing::info!(name = %r.name, secs = t0.elapsed().as_secs_f64(), %expiry, "certificate issued");
                    event(
                        ctx,
                        r.user_id,
                        EventType::Normal,
                        Reason::CertificateIssued,
                        format!(
                            "certificate for {} issued (valid until {})",
                            r.name,
                            expiry.format("%Y-%m-%d")
                        ),
                    )
                    .await;
                }
                Err(e) => {
                    let why = e.to_string();
                    let next = Utc::now() + issue_backoff(r.failures);
                    ctx.store.certificate_failed(&r.name, &why, next).await?;
                    stats.failed += 1;
                    tracing::warn!(name = %r.name, error = %why, "certificate issuance failed");
                    let kept = if installed.is_some() {
                        "; the current certificate stays in use"
                    } else {
                        ""
                    };
                    event(
                        ctx,
                        r.user_id,
                        EventType::Warning,
                        Reason::CertificateFailed,
                        format!("certificate for {} not issued: {why}{kept}", r.name),
                    )
                    .await;
                }
            }
        }
    }

    // The map: names that have a certificate on disk.
    let f = files.clone();
    let on_disk = blocking(move || f.list()).await?;
    let served: Vec<String> = want
        .keys()
        .filter(|n| on_disk.contains(n))
        .cloned()
        .collect();
    let wildcard = match &ctx.config.tls.wildcard {
        Some((cert, key)) => {
            let (f, c, k) = (files.clone(), cert.clone(), key.clone());
            match blocking(move || f.install_wildcard(&c, &k)).await {
                Ok(_) => ctx.config.sites.sites_domain.as_deref(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot install the sites wildcard certificate");
                    None
                }
            }
        }
        None => None,
    };
    let content = files.map_content(&served, wildcard);
    stats.map_changed = ctx.proxy.apply_tls_map(&content).await?;
    // Only now that nginx no longer names them: files of names not served.
    for stale in on_disk.iter().filter(|n| !want.contains_key(*n)) {
        let (f, n) = (files.clone(), stale.clone());
        blocking(move || f.remove(&n)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffs_grow_and_are_capped() {
        assert_eq!(check_backoff(0), Duration::from_secs(5));
        assert_eq!(check_backoff(3), Duration::from_secs(40));
        assert_eq!(check_backoff(50), Duration::from_secs(3600));
        assert_eq!(issue_backoff(0), Duration::from_secs(60));
        assert_eq!(issue_backoff(20), Duration::from_secs(6 * 3600));
    }
}
