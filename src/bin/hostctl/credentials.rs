//! Where hostctl keeps and finds what identifies you: the config file
//! (server and token, 0600), `$HOSTCTL_TOKEN` and `$HOSTCTL_TOKEN_FILE`, and
//! passwords prompted for without echo.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use super::fail;

/// The config file: server and token.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct CliConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

fn config_path() -> PathBuf {
    std::env::var_os("HOSTCTL_CONFIG")
        .map(Into::into)
        .unwrap_or_else(|| home().join(".config/hostd/config.yaml"))
}

/// The config file (empty when there is none; exit 2 when it is unreadable).
pub fn load_config() -> CliConfig {
    let p = config_path();
    match std::fs::read_to_string(&p) {
        Ok(s) => serde_norway::from_str(&s).unwrap_or_else(|e| {
            eprintln!("hostctl: {}: {e}", p.display());
            std::process::exit(2)
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CliConfig::default(),
        Err(e) => {
            eprintln!("hostctl: {}: {e}", p.display());
            std::process::exit(2)
        }
    }
}

/// `$HOSTCTL_TOKEN_FILE`, when set.
fn token_file() -> Option<PathBuf> {
    std::env::var_os("HOSTCTL_TOKEN_FILE").map(Into::into)
}

pub fn token() -> String {
    if let Ok(t) = std::env::var("HOSTCTL_TOKEN") {
        if !t.trim().is_empty() {
            return t.trim().to_string();
        }
    }
    let t = match token_file() {
        Some(f) => std::fs::read_to_string(f).ok(),
        None => load_config().token,
    };
    t.map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            eprintln!("hostctl: not logged in (run `hostctl login`)");
            std::process::exit(2)
        })
}

/// Keeps a new token: in `$HOSTCTL_TOKEN_FILE` when set, else in the config
/// file with the server it came from. Where it went.
pub fn save_token(server: &str, t: &str) -> std::io::Result<PathBuf> {
    if let Some(f) = token_file() {
        write_private(&f, t)?;
        return Ok(f);
    }
    let mut cfg = load_config();
    cfg.server = Some(server.to_string());
    cfg.token = Some(t.to_string());
    let p = config_path();
    write_private(
        &p,
        &serde_norway::to_string(&cfg).expect("config serializes"),
    )?;
    Ok(p)
}

/// Forgets the token (logout).
pub fn forget_token() {
    match token_file() {
        Some(f) => {
            let _ = std::fs::remove_file(f);
        }
        None => {
            let mut cfg = load_config();
            if cfg.token.take().is_some() {
                let body = serde_norway::to_string(&cfg).expect("config serializes");
                let _ = write_private(&config_path(), &body);
            }
        }
    }
}

/// Writes `body` to `f` readable by its owner only (its directory too).
fn write_private(f: &std::path::Path, body: &str) -> std::io::Result<()> {
    if let Some(d) = f.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)?;
    }
    // Replace, never reuse, a file that may have had looser permissions.
    let _ = std::fs::remove_file(f);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(f)?;
    file.write_all(body.as_bytes())
}

/// The password: prompted for without echo on a terminal, else the first
/// line of standard input.
pub fn password() -> String {
    password_as("password: ")
}

/// A password prompted for with `prompt` (or the next line of standard input).
pub fn password_as(prompt: &str) -> String {
    let stdin = std::io::stdin();
    let p = if stdin.is_terminal() {
        rpassword::prompt_password(prompt).unwrap_or_else(|e| fail(e))
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .unwrap_or_else(|e| fail(e));
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if p.is_empty() {
        fail("empty password");
    }
    p
}
