//! DNS TXT lookups ([`TxtLookup`]) for custom-domain verification, through
//! `hickory-resolver`: the host's resolv.conf, or one configured server
//! (`HOSTD_DNS_RESOLVER`). No cache: a tenant who just created the record
//! is checked against the server's answer, not an old negative one.

use std::net::SocketAddr;

use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use super::{DriverError, DriverResult};

/// Looks up TXT records.
#[async_trait]
pub trait TxtLookup: Send + Sync + 'static {
    /// The TXT strings at `name` (each record's strings joined); empty when
    /// the name has none.
    async fn txt(&self, name: &str) -> DriverResult<Vec<String>>;
}

/// [`TxtLookup`] through a DNS resolver.
pub struct DnsResolver(TokioResolver);

impl DnsResolver {
    pub fn new(server: Option<SocketAddr>) -> DriverResult<Self> {
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.attempts = 2;
        opts.timeout = std::time::Duration::from_secs(3);
        let builder = match server {
            Some(addr) => {
                let mut config = ResolverConfig::new();
                config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| DriverError::Other(format!("resolv.conf: {e}")))?,
        };
        Ok(DnsResolver(builder.with_options(opts).build()))
    }
}

#[async_trait]
impl TxtLookup for DnsResolver {
    async fn txt(&self, name: &str) -> DriverResult<Vec<String>> {
        // A fully qualified name: no search domains.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.0.txt_lookup(fqdn).await {
            Ok(answer) => Ok(answer
                .iter()
                .map(|t| {
                    t.txt_data()
                        .iter()
                        .map(|d| String::from_utf8_lossy(d).into_owned())
                        .collect::<String>()
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(vec![]),
            Err(e) => Err(DriverError::Other(format!("DNS: {e}"))),
        }
    }
}
