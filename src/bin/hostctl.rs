//! hostctl: a small client for the hostd API. The token is kept in
//! `$HOSTCTL_TOKEN_FILE` (default `~/.config/hostd/token`).

use clap::{Parser, Subcommand};

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
    /// Register a new user.
    Register {
        email: String,
        username: String,
        password: String,
    },
    /// Log in and store the token.
    Login { username: String, password: String },
    /// Show your hosting.
    Get,
    /// Request a hosting (optionally with an SSH public key file).
    Create {
        #[arg(long)]
        ssh_key: Option<std::path::PathBuf>,
        #[arg(long)]
        memory_mib: Option<i64>,
    },
    /// Delete your hosting.
    Delete,
}

fn token_file() -> std::path::PathBuf {
    std::env::var_os("HOSTCTL_TOKEN_FILE")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
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

async fn show(r: reqwest::Response) -> i32 {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| serde_json::to_string_pretty(&v).unwrap())
        .unwrap_or(text);
    println!("{pretty}");
    if status.is_success() {
        0
    } else {
        1
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let c = reqwest::Client::new();
    let base = cli.api.trim_end_matches('/').to_string();
    let fail = |e: reqwest::Error| -> ! {
        eprintln!("hostctl: {e}");
        std::process::exit(1)
    };
    let code = match cli.cmd {
        Cmd::Register {
            email,
            username,
            password,
        } => {
            let body =
                serde_json::json!({"email": email, "username": username, "password": password});
            show(
                c.post(format!("{base}/api/v1/auth/register"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap_or_else(|e| fail(e)),
            )
            .await
        }
        Cmd::Login { username, password } => {
            let r = c
                .post(format!("{base}/api/v1/auth/login"))
                .form(&[("username", username), ("password", password)])
                .send()
                .await
                .unwrap_or_else(|e| fail(e));
            if !r.status().is_success() {
                show(r).await
            } else {
                let v: serde_json::Value = r.json().await.unwrap_or_else(|e| fail(e));
                let t = v["access_token"].as_str().unwrap_or_default();
                let f = token_file();
                if let Some(d) = f.parent() {
                    let _ = std::fs::create_dir_all(d);
                }
                std::fs::write(&f, t).expect("write token file");
                println!("logged in; token saved to {}", f.display());
                0
            }
        }
        Cmd::Get => {
            show(
                c.get(format!("{base}/api/v1/host/my"))
                    .bearer_auth(token())
                    .send()
                    .await
                    .unwrap_or_else(|e| fail(e)),
            )
            .await
        }
        Cmd::Create {
            ssh_key,
            memory_mib,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(p) = ssh_key {
                let k = std::fs::read_to_string(&p).unwrap_or_else(|e| {
                    eprintln!("hostctl: {}: {e}", p.display());
                    std::process::exit(2)
                });
                body.insert("ssh_public_keys".into(), serde_json::json!([k.trim()]));
            }
            if let Some(m) = memory_mib {
                body.insert("memory_mib".into(), m.into());
            }
            show(
                c.post(format!("{base}/api/v1/host"))
                    .bearer_auth(token())
                    .json(&body)
                    .send()
                    .await
                    .unwrap_or_else(|e| fail(e)),
            )
            .await
        }
        Cmd::Delete => {
            show(
                c.delete(format!("{base}/api/v1/host/my"))
                    .bearer_auth(token())
                    .send()
                    .await
                    .unwrap_or_else(|e| fail(e)),
            )
            .await
        }
    };
    std::process::exit(code);
}
