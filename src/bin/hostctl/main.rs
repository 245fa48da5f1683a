//! hostctl: a kubectl-like client for the hostd API. Passwords are prompted
//! for without echo (or read from standard input when it is not a terminal),
//! never taken as arguments, which `ps` and shell history would show.
//!
//! Where things come from, first match wins:
//! - the server: `--api`, `$HOSTD_API`, the config file's `server`, then
//!   `http://127.0.0.1:8000`;
//! - the token: `$HOSTCTL_TOKEN` (for scripts), the file `$HOSTCTL_TOKEN_FILE`
//!   names (when set), then the config file's `token`.
//!
//! The config file is `$HOSTCTL_CONFIG` (default `~/.config/hostd/config.yaml`),
//! YAML with `server` and `token`, written mode 0600 in a 0700 directory by
//! `login` and `password` (or the token alone to `$HOSTCTL_TOKEN_FILE` when
//! that is set); `logout` removes the token.
//!
//! Exit codes a script can rely on: 0 success; 1 the API refused (its JSON
//! error is printed); 2 not logged in, or a bad file or argument; 3 a watch
//! ended without Ready (the hosting Failed, or `--timeout` passed).//!
//! Answers are read into the API's own types (`hostd::api`), so a renamed
//! or retyped field fails loudly here instead of printing "-".

mod credentials;
mod show;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hostd::api::auth::TokenResponse;
use hostd::api::hosting::{ConsoleView, HostingView};
use serde_json::{json, Value};

use credentials::{forget_token, load_config, password, password_as, save_token, token};
use show::{describe, print_hosting, watch_hosting, Output};

#[derive(Parser)]
#[command(name = "hostctl", version, about = "Client for the hostd API")]
struct Cli {
    /// hostd API base URL (default: the config file's `server`, else
    /// http://127.0.0.1:8000).
    #[arg(long, env = "HOSTD_API")]
    api: Option<String>,
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
    /// Show your hosting: a one-line table (`-o wide`: more columns), or the
    /// whole resource (`-o json`, `-o yaml`). `-w` watches it until Ready (for
    /// its current generation) or Failed, printing each change.
    Get {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        #[arg(short, long)]
        watch: bool,
        /// With `-w`: give up after this many seconds (exit 3).
        #[arg(long, default_value = "600")]
        timeout: u64,
    },
    /// Your hosting in readable form: spec, status, conditions, events.
    Describe,
    /// Make your hosting match a `Hosting` document (YAML or JSON, as in
    /// `crds/hosting.yaml`): creates it, or patches what differs.
    Apply {
        /// The file (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Run ssh to your hosting (extra arguments go to ssh).
    Ssh {
        /// Private key file (passed to ssh as `-i`).
        #[arg(short = 'i')]
        identity: Option<PathBuf>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Request a hosting (optionally with an SSH public key file).
    Create {
        #[arg(long)]
        ssh_key: Option<PathBuf>,
        #[arg(long)]
        memory_mib: Option<i64>,
    },
    /// Delete your hosting (`--wait`: until it is gone).
    Delete {
        #[arg(long)]
        wait: bool,
    },
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
    /// Print the tail of your hosting's boot console log (guest text).
    Console,
    /// Your hosting's newest statistics: CPU, memory, disk and network
    /// rates, requests to its site (`-w`: again every sample until ^C).
    Top {
        #[arg(short, long)]
        watch: bool,
    },
    /// What your hostings used over a range (default: this month so far):
    /// vCPU-, memory-, disk- and backup-hours, egress, and the charges at
    /// the operator's prices; `-o json`: the API's answer with every record.
    Usage {
        /// Start, RFC 3339 (like 2026-12-01T00:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// End, RFC 3339, exclusive (default: now).
        #[arg(long)]
        to: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Your custom domains: `add NAME` (prints the TXT record that proves
    /// you control it), `ls`, `rm NAME`.
    Domain {
        #[command(subcommand)]
        cmd: DomainCmd,
    },
}

#[derive(Subcommand)]
enum DomainCmd {
    /// Claim a domain for your site; create the TXT record it prints.
    Add { name: String },
    /// List your domains: state, certificate, last error.
    Ls,
    /// Stop serving a domain.
    Rm { name: String },
}

/// A `Hosting` document for `apply` (the CRD's shape; only `spec` is read).
#[derive(serde::Deserialize)]
struct HostingDoc {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    #[serde(default)]
    spec: serde_json::Map<String, Value>,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("hostctl: {msg}");
    std::process::exit(1)
}
/// Saves the token of a successful token response (saying `what`), or
/// shows the error; the exit code.
async fn keep_token(server: &str, r: reqwest::Response, what: &str) -> i32 {
    if !r.status().is_success() {
        return show(r).await;
    }
    let t: TokenResponse = r.json().await.unwrap_or_else(|e| fail(e));
    let f = save_token(server, &t.access_token)
        .unwrap_or_else(|e| fail(format!("saving the token: {e}")));
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
    let server = cli
        .api
        .clone()
        .or_else(|| load_config().server)
        .unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let server = server.trim_end_matches('/').to_string();
    let url = |path: &str| format!("{server}/api/v1{path}");
    let code = match cli.cmd {
        Cmd::Register { email, username } => {
            let body = json!({"email": email, "username": username, "password": password()});
            show(send(c.post(url("/auth/register")).json(&body)).await).await
        }
        Cmd::Login { username } => {
            let form = [("username", username), ("password", password())];
            let r = send(c.post(url("/auth/login")).form(&form)).await;
            keep_token(&server, r, "logged in").await
        }
        Cmd::Logout => {
            let r = send(c.post(url("/auth/logout")).bearer_auth(token())).await;
            let ok = r.status().is_success();
            forget_token();
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
            keep_token(&server, r, "password changed; other sessions revoked").await
        }
        Cmd::Get {
            output,
            watch,
            timeout,
        } => {
            let tok = token();
            if watch {
                watch_hosting(&c, &url("/host/my"), &tok, timeout).await
            } else {
                let r = send(c.get(url("/host/my")).bearer_auth(&tok)).await;
                print_hosting(r, output).await
            }
        }
        Cmd::Describe => {
            let r = send(c.get(url("/host/my")).bearer_auth(token())).await;
            if !r.status().is_success() {
                show(r).await
            } else {
                print!("{}", describe(&show::hosting(r).await));
                0
            }
        }
        Cmd::Apply { file } => apply(&c, &url, &file).await,
        Cmd::Ssh { identity, args } => {
            let r = send(c.get(url("/host/my")).bearer_auth(token())).await;
            if !r.status().is_success() {
                show(r).await
            } else {
                ssh(&show::hosting(r).await, identity, &args)
            }
        }
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
        Cmd::Delete { wait } => {
            let tok = token();
            let r = send(c.delete(url("/host/my")).bearer_auth(&tok)).await;
            let code = show(r).await;
            if code == 0 && wait {
                loop {
                    let r = send(c.get(url("/host/my")).bearer_auth(&tok)).await;
                    if r.status() == reqwest::StatusCode::NOT_FOUND {
                        println!("deleted");
                        break 0;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            } else {
                code
            }
        }
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
        Cmd::Domain { cmd } => domain(&c, &url, cmd).await,
        Cmd::Top { watch } => {
            let tok = token();
            loop {
                let r = send(
                    c.get(url("/host/my/stats"))
                        .query(&[("range", "1h")])
                        .bearer_auth(&tok),
                )
                .await;
                if !r.status().is_success() {
                    break show(r).await;
                }
                let v: hostd::api::stats::StatsView = r
                    .json()
                    .await
                    .unwrap_or_else(|e| fail(format!("unexpected answer: {e}")));
                print!("{}", show::top(&v));
                if !watch {
                    break 0;
                }
                let secs = v.sample_seconds.max(5);
                tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
            }
        }
        Cmd::Usage { from, to, output } => {
            let mut q = vec![];
            q.extend(from.map(|f| ("from", f)));
            q.extend(to.map(|t| ("to", t)));
            let r = send(c.get(url("/host/my/usage")).query(&q).bearer_auth(token())).await;
            if !r.status().is_success() || !matches!(output, Output::Table) {
                show(r).await
            } else {
                let u: hostd::api::usage::UsageView = r
                    .json()
                    .await
                    .unwrap_or_else(|e| fail(format!("unexpected answer: {e}")));
                print!("{}", show::usage(&u));
                0
            }
        }
        Cmd::Console => {
            let r = send(c.get(url("/host/my/console")).bearer_auth(token())).await;
            if !r.status().is_success() {
                show(r).await
            } else {
                let v: ConsoleView = r.json().await.unwrap_or_else(|e| fail(e));
                match v.captured_at {
                    None => eprintln!("hostctl: no console output copied yet"),
                    Some(at) => {
                        let at = at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
                        let cut = if v.truncated {
                            " (the last 64 KiB)"
                        } else {
                            ""
                        };
                        eprintln!("# console log copied {at}{cut}");
                    }
                }
                print!("{}", v.text);
                0
            }
        }
    };
    std::process::exit(code);
}

/// `apply -f`: create the hosting from the document's spec, or patch the
/// fields that differ from the current spec; the exit code.
async fn apply(c: &reqwest::Client, url: &dyn Fn(&str) -> String, file: &std::path::Path) -> i32 {
    let raw = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).unwrap_or_else(|e| fail(e));
        s
    } else {
        std::fs::read_to_string(file).unwrap_or_else(|e| {
            eprintln!("hostctl: {}: {e}", file.display());
            std::process::exit(2)
        })
    };
    let doc: HostingDoc = serde_norway::from_str(&raw).unwrap_or_else(|e| {
        eprintln!("hostctl: {}: not a Hosting document: {e}", file.display());
        std::process::exit(2)
    });
    if doc.kind != "Hosting" || !doc.api_version.starts_with("hostd.dev/") {
        eprintln!(
            "hostctl: {}: expected apiVersion hostd.dev/v1 and kind Hosting, got {} {}",
            file.display(),
            doc.api_version,
            doc.kind
        );
        std::process::exit(2);
    }
    let tok = token();
    let r = send(c.get(url("/host/my")).bearer_auth(&tok)).await;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        let r = send(c.post(url("/host")).bearer_auth(&tok).json(&doc.spec)).await;
        if r.status().is_success() {
            println!("hosting created");
        }
        return print_or_error(r).await;
    }
    if !r.status().is_success() {
        return show(r).await;
    }
    let cur = show::hosting(r).await;
    let cur = serde_json::to_value(&cur.spec).unwrap_or_default();
    let patch: serde_json::Map<String, Value> = doc
        .spec
        .into_iter()
        .filter(|(k, v)| cur.get(k) != Some(v))
        .collect();
    if patch.is_empty() {
        println!("hosting unchanged");
        return 0;
    }
    let fields: Vec<&str> = patch.keys().map(|k| k.as_str()).collect();
    let fields = fields.join(", ");
    let r = send(c.patch(url("/host/my")).bearer_auth(&tok).json(&patch)).await;
    if r.status().is_success() {
        println!("hosting patched: {fields}");
    }
    print_or_error(r).await
}

/// Success: the one-line table; failure: the API's error. The exit code.
async fn print_or_error(r: reqwest::Response) -> i32 {
    if r.status().is_success() {
        print_hosting(r, Output::Table).await
    } else {
        show(r).await
    }
}

/// `ssh`: replaces this process with ssh to the hosting's port as `ubuntu`.
fn ssh(h: &HostingView, identity: Option<PathBuf>, args: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let Some(port) = h.status.ssh_port else {
        eprintln!("hostctl: the hosting has no SSH port yet");
        return 3;
    };
    // The host part of the server's own `ssh -p PORT ubuntu@HOST` line.
    let cmd = h.ssh_command.clone().unwrap_or_default();
    let host = cmd
        .rsplit('@')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("127.0.0.1")
        .to_string();
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-p").arg(port.to_string());
    if let Some(i) = identity {
        ssh.arg("-i").arg(i);
    }
    ssh.arg(format!("ubuntu@{host}")).args(args);
    let err = ssh.exec();
    eprintln!("hostctl: cannot run ssh: {err}");
    2
}

/// `hostctl domain …`.
async fn domain(c: &reqwest::Client, url: &dyn Fn(&str) -> String, cmd: DomainCmd) -> i32 {
    match cmd {
        DomainCmd::Add { name } => {
            let req = c.post(url("/host/my/domains")).bearer_auth(token());
            let r = send(req.json(&json!({ "name": name }))).await;
            if !r.status().is_success() {
                return show(r).await;
            }
            let d: Value = r.json().await.unwrap_or_else(|e| fail(e));
            println!(
                "added {}: to prove you control it, create this DNS record:",
                d["name"].as_str().unwrap_or("")
            );
            println!(
                "  {}  TXT  \"{}\"",
                d["txt_name"].as_str().unwrap_or(""),
                d["txt_value"].as_str().unwrap_or("")
            );
            println!("It is checked every few seconds at first, then less often; `hostctl domain ls` shows where it stands.");
            0
        }
        DomainCmd::Ls => {
            let r = send(c.get(url("/host/my/domains")).bearer_auth(token())).await;
            if !r.status().is_success() {
                return show(r).await;
            }
            let list: Vec<Value> = r.json().await.unwrap_or_else(|e| fail(e));
            println!(
                "{:<40} {:<20} {:<12} {:<12} NOTE",
                "NAME", "STATE", "CERTIFICATE", "EXPIRES"
            );
            for d in list {
                let s = |k: &str| d[k].as_str().unwrap_or("-").to_string();
                let expires = s("certificate_not_after")
                    .chars()
                    .take(10)
                    .collect::<String>();
                println!(
                    "{:<40} {:<20} {:<12} {:<12} {}",
                    s("name"),
                    s("state"),
                    s("certificate_state"),
                    expires,
                    d["last_error"].as_str().unwrap_or("")
                );
            }
            0
        }
        DomainCmd::Rm { name } => {
            let r = send(
                c.delete(url(&format!("/host/my/domains/{name}")))
                    .bearer_auth(token()),
            )
            .await;
            if r.status().is_success() {
                println!("removed {name}");
                0
            } else {
                show(r).await
            }
        }
    }
}
