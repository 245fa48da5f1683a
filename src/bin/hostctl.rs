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
//! ended without Ready (the hosting Failed, or `--timeout` passed).

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

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
}

/// The config file: server and token.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct CliConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
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
fn load_config() -> CliConfig {
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

/// `get`'s output formats.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
    Yaml,
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

/// `$HOSTCTL_TOKEN_FILE`, when set.
fn token_file() -> Option<PathBuf> {
    std::env::var_os("HOSTCTL_TOKEN_FILE").map(Into::into)
}

fn token() -> String {
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
fn save_token(server: &str, t: &str) -> std::io::Result<PathBuf> {
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
fn forget_token() {
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
async fn keep_token(server: &str, r: reqwest::Response, what: &str) -> i32 {
    if !r.status().is_success() {
        return show(r).await;
    }
    let v: Value = r.json().await.unwrap_or_else(|e| fail(e));
    let t = v["access_token"].as_str().unwrap_or_default();
    let f = save_token(server, t).unwrap_or_else(|e| fail(format!("saving the token: {e}")));
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
                let h: Value = r.json().await.unwrap_or_else(|e| fail(e));
                print!("{}", describe(&h));
                0
            }
        }
        Cmd::Apply { file } => apply(&c, &url, &file).await,
        Cmd::Ssh { identity, args } => {
            let r = send(c.get(url("/host/my")).bearer_auth(token())).await;
            if !r.status().is_success() {
                show(r).await
            } else {
                let h: Value = r.json().await.unwrap_or_else(|e| fail(e));
                ssh(&h, identity, &args)
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
        Cmd::Console => {
            let r = send(c.get(url("/host/my/console")).bearer_auth(token())).await;
            if !r.status().is_success() {
                show(r).await
            } else {
                let v: Value = r.json().await.unwrap_or_else(|e| fail(e));
                match v["captured_at"].as_str() {
                    None => eprintln!("hostctl: no console output copied yet"),
                    Some(at) => {
                        let cut = if v["truncated"] == true {
                            " (the last 64 KiB)"
                        } else {
                            ""
                        };
                        eprintln!("# console log copied {at}{cut}");
                    }
                }
                print!("{}", v["text"].as_str().unwrap_or_default());
                0
            }
        }
    };
    std::process::exit(code);
}

/// The text of a JSON string field ("-" when absent).
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        o => o.to_string(),
    }
}

/// The one-line (or wide) table of a hosting.
fn table(h: &Value, wide: bool) -> String {
    let st = &h["status"];
    let mut head = vec!["ID", "PHASE", "GENERATION", "SSH", "URL"];
    let mut row = vec![
        text(&h["id"]),
        text(&st["phase"]),
        format!(
            "{}/{}",
            text(&st["observed_generation"]),
            text(&h["generation"])
        ),
        text(&st["ssh_port"]),
        text(&h["web_url"]),
    ];
    if wide {
        head.extend(["VCPUS", "MEMORY", "DISK", "IMAGE", "MESSAGE"]);
        let sp = &h["spec"];
        row.extend([
            text(&sp["vcpus"]),
            format!("{}Mi", text(&sp["memory_mib"])),
            format!("{}Gi", text(&sp["disk_gib"])),
            text(&sp["image"]),
            text(&st["message"]),
        ]);
    }
    let widths: Vec<usize> = head
        .iter()
        .zip(&row)
        .map(|(a, b)| a.len().max(b.len()))
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    format!(
        "{}\n{}\n",
        line(head.iter().map(|s| s.to_string()).collect()),
        line(row)
    )
}

/// Prints a `GET /host/my` answer in `output` form; the exit code.
async fn print_hosting(r: reqwest::Response, output: Output) -> i32 {
    if !r.status().is_success() {
        return show(r).await;
    }
    let h: Value = r.json().await.unwrap_or_else(|e| fail(e));
    match output {
        Output::Table => print!("{}", table(&h, false)),
        Output::Wide => print!("{}", table(&h, true)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&h).unwrap_or_default()),
        Output::Yaml => print!("{}", serde_norway::to_string(&h).unwrap_or_default()),
    }
    0
}

/// Whether a hosting has converged to Ready for its current generation.
fn ready(h: &Value) -> bool {
    h["status"]["phase"] == "Ready" && h["status"]["observed_generation"] == h["generation"]
}

/// `get -w`: one line per change (with the steps done so far out of the
/// usual seven), until Ready for the current generation (0), Failed or the
/// timeout (3).
async fn watch_hosting(c: &reqwest::Client, url: &str, tok: &str, timeout: u64) -> i32 {
    const STEPS: &[&str] = &[
        "PortsAllocated",
        "DiskCreated",
        "Defined",
        "Started",
        "RouteConfigured",
        "Ready",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let r = send(c.get(url).bearer_auth(tok)).await;
        if !r.status().is_success() {
            return show(r).await;
        }
        let h: Value = r.json().await.unwrap_or_else(|e| fail(e));
        let reasons: Vec<&str> = h["events"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["reason"].as_str()).collect())
            .unwrap_or_default();
        let done = if ready(&h) {
            STEPS.len()
        } else {
            STEPS
                .iter()
                .filter(|s| reasons.contains(s))
                .count()
                .min(STEPS.len() - 1)
        };
        let bar: String = (0..STEPS.len())
            .map(|i| if i < done { '#' } else { '.' })
            .collect();
        let line = format!(
            "[{bar}] {:<12} gen {}/{}  {}",
            text(&h["status"]["phase"]),
            text(&h["status"]["observed_generation"]),
            text(&h["generation"]),
            text(&h["status"]["message"])
        );
        if line != last {
            println!("{:>6.1}s {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        if ready(&h) {
            println!(
                "Ready: {}  ({})",
                text(&h["web_url"]),
                text(&h["ssh_command"])
            );
            return 0;
        }
        if h["status"]["phase"] == "Failed" {
            eprintln!(
                "hostctl: the hosting Failed: {}",
                text(&h["status"]["message"])
            );
            return 3;
        }
        if std::time::Instant::now() > deadline {
            eprintln!("hostctl: not Ready after {timeout} s");
            return 3;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `describe`: the hosting as readable sections.
fn describe(h: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let sp = &h["spec"];
    let st = &h["status"];
    let _ = writeln!(o, "ID:          {}", text(&h["id"]));
    let _ = writeln!(o, "URL:         {}", text(&h["web_url"]));
    let _ = writeln!(o, "SSH:         {}", text(&h["ssh_command"]));
    let _ = writeln!(
        o,
        "Generation:  {} (observed {})",
        text(&h["generation"]),
        text(&st["observed_generation"])
    );
    let _ = writeln!(o, "Spec:");
    for k in ["vcpus", "memory_mib", "disk_gib", "image", "running"] {
        let _ = writeln!(o, "  {k:<12} {}", text(&sp[k]));
    }
    let keys = sp["ssh_public_keys"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    let _ = writeln!(o, "  {:<12} {keys}", "ssh keys");
    let _ = writeln!(o, "Status:");
    let _ = writeln!(o, "  {:<12} {}", "phase", text(&st["phase"]));
    let _ = writeln!(o, "  {:<12} {}", "message", text(&st["message"]));
    let _ = writeln!(
        o,
        "  {:<12} ssh {}, http {}",
        "ports",
        text(&st["ssh_port"]),
        text(&st["http_port"])
    );
    let _ = writeln!(o, "Conditions:");
    let _ = writeln!(
        o,
        "  {:<16} {:<7} {:<18} MESSAGE",
        "TYPE", "STATUS", "REASON"
    );
    for cnd in st["conditions"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  {:<16} {:<7} {:<18} {}",
            text(&cnd["type"]),
            text(&cnd["status"]),
            text(&cnd["reason"]),
            text(&cnd["message"])
        );
    }
    let _ = writeln!(o, "Events (newest first):");
    let _ = writeln!(o, "  {:<24} {:<8} {:<20} MESSAGE", "AT", "TYPE", "REASON");
    for e in h["events"].as_array().into_iter().flatten() {
        let at = text(&e["at"]);
        let _ = writeln!(
            o,
            "  {:<24} {:<8} {:<20} {}",
            at.get(..23).unwrap_or(&at),
            text(&e["type"]),
            text(&e["reason"]),
            text(&e["message"])
        );
    }
    o
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
    let cur: Value = r.json().await.unwrap_or_else(|e| fail(e));
    let patch: serde_json::Map<String, Value> = doc
        .spec
        .into_iter()
        .filter(|(k, v)| cur["spec"].get(k) != Some(v))
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
fn ssh(h: &Value, identity: Option<PathBuf>, args: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let Some(port) = h["status"]["ssh_port"].as_u64() else {
        eprintln!("hostctl: the hosting has no SSH port yet");
        return 3;
    };
    // The host part of the server's own `ssh -p PORT ubuntu@HOST` line.
    let cmd = text(&h["ssh_command"]);
    let host = cmd
        .rsplit('@')
        .next()
        .filter(|s| !s.is_empty() && *s != "-")
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
