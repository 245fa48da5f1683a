//! hostctl: a small client for the hostd API. Passwords are prompted for
//! without echo (or read from standard input when it is not a terminal), never
//! taken as arguments, which `ps` and shell history would show. The token is
//! kept in `$HOSTCTL_TOKEN_FILE` (default `~/.config/hostd/token`), mode 0600.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "hostctl", version, about = "Client for the hostd API")]
struct Cli {
    /// hostd API base URL.
    #[arg(long, env = "HOSTD_API", default_value = "http://127.0.0.1:8000")]
    api: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Register a new user (the password is prompted for, or read from stdin).
    Register { email: String, username: String },
    /// Log in and store the token (the password is prompted for, or read from stdin).
    Login { username: String },
    /// Revoke the stored token and forget it.
    Logout,
    /// Change your password (old and new are prompted for, or read from two
    /// lines of stdin); every other session is logged out.
    Password,
    /// Show your hosting.
    Get,
    /// Request a hosting (optionally with an SSH public key file).
    Create {
        #[arg(long)]
        ssh_key: Option<PathBuf>,
        #[arg(long)]
        memory_mib: Option<i64>,
    },
    /// Delete your hosting.
    Delete,
    /// Ask for a backup of your hosting's disk (taken while it runs).
    Backup,
    /// List your hosting's backups, newest first.
    Backups,
    /// Replace your hosting's disk with a completed backup (the guest restarts;
    /// the current disk is kept in quarantine).
    Restore {
        /// The backup's id (see `hostctl backups`).
        backup_id: String,
    },
    /// Replace a lost (or the current) disk with a fresh, empty one.
    Reset,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("hostctl: {msg}");
    std::process::exit(1)
}

fn token_file() -> PathBuf {
    std::env::var_os("HOSTCTL_TOKEN_FILE")
        .map(Into::into)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".config/hostd/token")
        })
}

fn token() -> String {
    std::fs::read_to_string(token_file())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            eprintln!("hostctl: not logged in (run `hostctl login`)");
            std::process::exit(2)
        })
}

/// Writes the token readable by its owner only (the directory too).
fn save_token(t: &str) -> std::io::Result<PathBuf> {
    let f = token_file();
    if let Some(d) = f.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)?;
    }
    // Replace, never reuse, a file that may have had looser permissions.
    let _ = std::fs::remove_file(&f);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&f)?;
    file.write_all(t.as_bytes())?;
    Ok(f)
}

/// The password: prompted for without echo on a terminal, else the first
/// line of standard input.
fn password() -> String {
    password_as("password: ")
}

/// A password prompted for with `prompt` (or the next line of standard input).
fn password_as(prompt: &str) -> String {
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

/// Saves the token of a successful token response (saying `what`), or
/// shows the error; the exit code.
async fn keep_token(r: reqwest::Response, what: &str) -> i32 {
    if !r.status().is_success() {
        return show(r).await;
    }
    let v: Value = r.json().await.unwrap_or_else(|e| fail(e));
    let t = v["access_token"].as_str().unwrap_or_default();
    let f = save_token(t).unwrap_or_else(|e| fail(format!("saving the token: {e}")));
    println!("{what}; token saved to {}", f.display());
    0
}

/// Prints the response body (pretty JSON when it is JSON); the exit code.
async fn show(r: reqwest::Response) -> i32 {
    let ok = r.status().is_success();
    let text = r.text().await.unwrap_or_default();
    let pretty = serde_json::from_str::<Value>(&text)
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
        .unwrap_or(text);
    println!("{pretty}");
    i32::from(!ok)
}

async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    req.send().await.unwrap_or_else(|e| fail(e))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let c = reqwest::Client::new();
    let url = |path: &str| format!("{}/api/v1{path}", cli.api.trim_end_matches('/'));
    let code = match cli.cmd {
        Cmd::Register { email, username } => {
            let body = json!({"email": email, "username": username, "password": password()});
            show(send(c.post(url("/auth/register")).json(&body)).await).await
        }
        Cmd::Login { username } => {
            let form = [("username", username), ("password", password())];
            let r = send(c.post(url("/auth/login")).form(&form)).await;
            keep_token(r, "logged in").await
        }
        Cmd::Logout => {
            let r = send(c.post(url("/auth/logout")).bearer_auth(token())).await;
            let ok = r.status().is_success();
            let _ = std::fs::remove_file(token_file());
            if ok {
                println!("logged out; token revoked and removed");
                0
            } else {
                show(r).await
            }
        }
        Cmd::Password => {
            let body = json!({"old_password": password_as("current password: "),
                              "new_password": password_as("new password: ")});
            let r = send(
                c.put(url("/auth/password"))
                    .bearer_auth(token())
                    .json(&body),
            )
            .await;
            keep_token(r, "password changed; other sessions revoked").await
        }
        Cmd::Get => show(send(c.get(url("/host/my")).bearer_auth(token())).await).await,
        Cmd::Create {
            ssh_key,
            memory_mib,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(p) = ssh_key {
                let k = std::fs::read_to_string(&p)
                    .unwrap_or_else(|e| fail(format!("{}: {e}", p.display())));
                body.insert("ssh_public_keys".into(), json!([k.trim()]));
            }
            if let Some(m) = memory_mib {
                body.insert("memory_mib".into(), m.into());
            }
            let req = c.post(url("/host")).bearer_auth(token()).json(&body);
            show(send(req).await).await
        }
        Cmd::Delete => show(send(c.delete(url("/host/my")).bearer_auth(token())).await).await,
        Cmd::Backup => {
            let req = c.post(url("/host/my/backups")).bearer_auth(token());
            show(send(req).await).await
        }
        Cmd::Backups => {
            let req = c.get(url("/host/my/backups")).bearer_auth(token());
            show(send(req).await).await
        }
        Cmd::Restore { backup_id } => {
            let body = json!({ "backup_id": backup_id });
            let req = c.post(url("/host/my/restore")).bearer_auth(token());
            show(send(req.json(&body)).await).await
        }
        Cmd::Reset => {
            let req = c.post(url("/host/my/reset")).bearer_auth(token());
            show(send(req).await).await
        }
    };
    std::process::exit(code);
}
