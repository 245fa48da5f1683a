//! Accounts: e-mail addresses, usernames, passwords and roles, parsed from
//! what a client sent.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ValidationError;

/// A syntactically valid e-mail address, stored as typed (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let s = s.trim();
        let err = |m: &str| Err(ValidationError::new("email", m));
        if s.is_empty() || s.len() > 254 {
            return err("must be 1 to 254 characters");
        }
        let Some((local, domain)) = s.split_once('@') else {
            return err("must contain '@'");
        };
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return err("is not a valid address");
        }
        if !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return err("domain part is not valid");
        }
        let ok_local = local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let ok_domain = domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !ok_local || !ok_domain {
            return err("contains characters that are not allowed");
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 3–32 characters of `[a-z0-9_-]`, starting with a letter. Safe in hostnames,
/// HTML, YAML and file names by construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let ok = (3..=32).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        let rule = "must be 3-32 characters of a-z, 0-9, '_' or '-', starting with a letter";
        ValidationError::check(ok, "username", rule).map(|_| Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// A hostname derived from the username (`_` is not valid in hostnames).
    pub fn hostname(&self) -> String {
        self.0.replace('_', "-")
    }
}

/// A password of acceptable length. Never logged, never stored in clear.
#[derive(Clone)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    /// Normalises to NFC (so the same password typed on two systems is the
    /// same bytes) and checks: at least 8 characters, at most 72 bytes
    /// (bcrypt ignores the rest: longer input is refused, never truncated),
    /// no NUL or other control characters.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        use unicode_normalization::UnicodeNormalization;
        if s.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "password",
                "must not contain control characters (NUL, tab, newline, ...)",
            ));
        }
        let s: String = s.nfc().collect();
        if s.chars().count() < 8 {
            return Err(ValidationError::new(
                "password",
                "must be at least 8 characters",
            ));
        }
        if s.len() > 72 {
            return Err(ValidationError::new("password", "must be at most 72 bytes"));
        }
        Ok(Self(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
    pub fn from_db(s: &str) -> Role {
        if s == "admin" {
            Role::Admin
        } else {
            Role::User
        }
    }
}
