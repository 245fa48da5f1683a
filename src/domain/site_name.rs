//! Custom domains a tenant brings: parsed at the edge into [`CustomDomain`],
//! an ASCII (IDNA) lowercase DNS name that is safe in an nginx map, a file
//! name and a TXT query. IP addresses, wildcards, single labels, invalid
//! IDNs and names of the platform itself (the sites domain and anything
//! under it, the panel's host name) are refused.

use std::fmt;

use super::ValidationError;

/// The DNS label a tenant's ownership proof lives under.
pub const CHALLENGE_LABEL: &str = "_hostd-challenge";

/// A custom domain, validated (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomDomain(String);

impl CustomDomain {
    /// Parses what a tenant typed. `platform` lists the names that belong
    /// to the platform: the sites domain (with everything under it) and
    /// the panel's host name.
    pub fn parse(input: &str, platform: &[&str]) -> Result<Self, ValidationError> {
        let err = |m: &str| Err(ValidationError::new("name", m));
        if input.chars().any(char::is_control) {
            return err("must be a domain name, without control characters");
        }
        let s = input.trim().trim_end_matches('.');
        if s.is_empty() || s.len() > 253 {
            return err("must be a domain name of at most 253 characters");
        }
        if s.contains('*') {
            return err("wildcards are not accepted: add each name you serve");
        }
        if s.parse::<std::net::IpAddr>().is_ok() || s.starts_with('[') {
            return err("must be a domain name, not an IP address");
        }
        let Ok(ascii) = idna::domain_to_ascii_strict(s) else {
            return err("is not a valid (internationalised) domain name");
        };
        let labels: Vec<&str> = ascii.split('.').collect();
        let label_ok = |l: &&str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) || ascii.len() > 253 {
            return err("must be a domain name of two or more labels of a-z, 0-9 and '-'");
        }
        if labels
            .last()
            .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()))
        {
            return err("must be a domain name, not an IP address");
        }
        for p in platform.iter().filter(|p| !p.is_empty()) {
            if ascii == *p || ascii.ends_with(&format!(".{p}")) {
                return err("belongs to this platform: your site already has its own name there");
            }
        }
        Ok(Self(ascii))
    }

    /// A name read back from the store (validated when it was stored).
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the tenant puts the TXT record that proves control.
    pub fn txt_name(&self) -> String {
        format!("{CHALLENGE_LABEL}.{}", self.0)
    }
}

impl fmt::Display for CustomDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLATFORM: &[&str] = &["sites.example.net", "panel.example.net"];

    #[test]
    fn accepts_names_and_normalises_them() {
        let d = CustomDomain::parse("WWW.Example.COM.", PLATFORM).unwrap();
        assert_eq!(d.as_str(), "www.example.com");
        assert_eq!(d.txt_name(), "_hostd-challenge.www.example.com");
        let idn = CustomDomain::parse("bücher.example", PLATFORM).unwrap();
        assert_eq!(idn.as_str(), "xn--bcher-kva.example");
    }

    #[test]
    fn refuses_what_is_not_a_tenants_name() {
        for bad in [
            "",
            "localhost",
            "1.2.3.4",
            "::1",
            "[::1]",
            "*.example.com",
            "a..b",
            "-a.example.com",
            "a_b.example.com",
            "exa mple.com",
            "a/b.example.com",
            "x.sites.example.net",
            "sites.example.net",
            "panel.example.net",
            "example.com;evil",
            "a.example.com\n",
            "xn--zz.example",
            "10.0.0.1",
            "example.123",
        ] {
            assert!(
                CustomDomain::parse(bad, PLATFORM).is_err(),
                "{bad:?} was accepted"
            );
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(CustomDomain::parse(&long, PLATFORM).is_err());
    }
}
