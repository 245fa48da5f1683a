//! How hostctl shows a hosting: the one-line (or wide) table, `describe`'s
//! sections, and `get -w`'s line per change. Everything is read from the
//! API's own [`HostingView`].

use hostd::api::hosting::HostingView;
use hostd::domain::Phase;

use super::{fail, send, show};

/// `get`'s output formats.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

/// An optional value as a cell ("-" when absent).
fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
}

/// The one-line (or wide) table of a hosting.
pub fn table(h: &HostingView, wide: bool) -> String {
    let st = &h.status;
    let mut head = vec!["ID", "PHASE", "GENERATION", "SSH", "URL"];
    let mut row = vec![
        h.id.clone(),
        st.phase.to_string(),
        format!("{}/{}", st.observed_generation, h.generation),
        opt(&st.ssh_port),
        opt(&h.web_url),
    ];
    if wide {
        head.extend(["VCPUS", "MEMORY", "DISK", "IMAGE", "MESSAGE"]);
        let sp = &h.spec;
        row.extend([
            sp.vcpus.to_string(),
            format!("{}Mi", sp.memory_mib),
            format!("{}Gi", sp.disk_gib),
            sp.image.clone(),
            opt(&st.message),
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

/// Reads a successful answer as a hosting (exit 1 when it is not one).
pub async fn hosting(r: reqwest::Response) -> HostingView {
    r.json()
        .await
        .unwrap_or_else(|e| fail(format!("the API's answer is not a hosting: {e}")))
}

/// Prints a `GET /host/my` answer in `output` form; the exit code.
pub async fn print_hosting(r: reqwest::Response, output: Output) -> i32 {
    if !r.status().is_success() {
        return show(r).await;
    }
    let h = hosting(r).await;
    match output {
        Output::Table => print!("{}", table(&h, false)),
        Output::Wide => print!("{}", table(&h, true)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&h).unwrap_or_default()),
        Output::Yaml => print!("{}", serde_norway::to_string(&h).unwrap_or_default()),
    }
    0
}

/// Whether a hosting has converged to Ready for its current generation.
fn ready(h: &HostingView) -> bool {
    h.status.phase == Phase::Ready && h.status.observed_generation == h.generation
}

/// `get -w`: one line per change (with the steps done so far out of the
/// usual seven), until Ready for the current generation (0), Failed or the
/// timeout (3).
pub async fn watch_hosting(c: &reqwest::Client, url: &str, tok: &str, timeout: u64) -> i32 {
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
        let h = hosting(r).await;
        let reasons: Vec<&str> = h
            .events
            .iter()
            .flatten()
            .map(|e| e.reason.as_str())
            .collect();
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
            h.status.phase.to_string(),
            h.status.observed_generation,
            h.generation,
            opt(&h.status.message)
        );
        if line != last {
            println!("{:>6.1}s {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        if ready(&h) {
            println!("Ready: {}  ({})", opt(&h.web_url), opt(&h.ssh_command));
            return 0;
        }
        if h.status.phase == Phase::Failed {
            eprintln!("hostctl: the hosting Failed: {}", opt(&h.status.message));
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
pub fn describe(h: &HostingView) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let (sp, st) = (&h.spec, &h.status);
    let _ = writeln!(o, "ID:          {}", h.id);
    let _ = writeln!(o, "URL:         {}", opt(&h.web_url));
    let _ = writeln!(o, "SSH:         {}", opt(&h.ssh_command));
    let _ = writeln!(o, "Backups:     {}", h.storage.summary());
    let _ = writeln!(
        o,
        "Generation:  {} (observed {})",
        h.generation, st.observed_generation
    );
    let _ = writeln!(o, "Spec:");
    for (k, v) in [
        ("vcpus", sp.vcpus.to_string()),
        ("memory_mib", sp.memory_mib.to_string()),
        ("disk_gib", sp.disk_gib.to_string()),
        ("image", sp.image.clone()),
        ("running", sp.running.to_string()),
        ("hsts", sp.hsts.to_string()),
        ("ssh keys", sp.ssh_public_keys.len().to_string()),
    ] {
        let _ = writeln!(o, "  {k:<12} {v}");
    }
    let _ = writeln!(o, "Status:");
    let _ = writeln!(o, "  {:<12} {}", "phase", st.phase);
    let _ = writeln!(o, "  {:<12} {}", "message", opt(&st.message));
    let _ = writeln!(
        o,
        "  {:<12} ssh {}, http {}",
        "ports",
        opt(&st.ssh_port),
        opt(&st.http_port)
    );
    let _ = writeln!(o, "  {:<12} {}", "node", opt(&st.node));
    let _ = writeln!(o, "Conditions:");
    let _ = writeln!(
        o,
        "  {:<16} {:<7} {:<18} MESSAGE",
        "TYPE", "STATUS", "REASON"
    );
    for c in &st.conditions {
        let _ = writeln!(
            o,
            "  {:<16} {:<7} {:<18} {}",
            c.type_.to_string(),
            c.status,
            c.reason.to_string(),
            c.message
        );
    }
    let _ = writeln!(o, "Events (newest first):");
    let _ = writeln!(o, "  {:<24} {:<8} {:<20} MESSAGE", "AT", "TYPE", "REASON");
    for e in h.events.iter().flatten() {
        let at = e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let _ = writeln!(
            o,
            "  {:<24} {:<8} {:<20} {}",
            at.get(..23).unwrap_or(&at),
            e.type_,
            e.reason,
            e.message
        );
    }
    o
}

/// `hostctl usage`: the totals over the range in hours and GiB.
pub fn usage(u: &hostd::api::usage::UsageView) -> String {
    use std::fmt::Write as _;
    let t = &u.totals;
    let mut o = String::new();
    let _ = writeln!(o, "From:    {}", u.from.to_rfc3339());
    let _ = writeln!(o, "To:      {}", u.to.to_rfc3339());
    let h = |s: f64| s / 3600.0;
    let _ = writeln!(o, "vCPU:    {:.3} vCPU-hours", h(t.vcpu_seconds));
    let _ = writeln!(
        o,
        "Memory:  {:.3} GiB-hours",
        h(t.memory_mib_seconds) / 1024.0
    );
    let _ = writeln!(o, "Disk:    {:.3} GiB-hours", h(t.disk_gib_seconds));
    let _ = writeln!(o, "Backups: {:.3} GiB-hours", h(t.backup_gib_seconds));
    let _ = writeln!(
        o,
        "Egress:  {:.3} GiB",
        t.egress_bytes / 1024.0 / 1024.0 / 1024.0
    );
    for (currency, amount) in &t.charges {
        let _ = writeln!(o, "Charges: {amount:.2} {currency}");
    }
    let _ = writeln!(o, "Records: {}", u.spans.len());
    o
}

/// `hostctl top`: the newest point of the statistics.
pub fn top(v: &hostd::api::stats::StatsView) -> String {
    use std::fmt::Write as _;
    let Some(p) = v.points.last() else {
        return "no statistics yet (the first samples come within two sampling periods of the guest's start)\n".into();
    };
    let bytes = |b: Option<f64>| match b {
        None => "-".to_string(),
        Some(b) if b >= 1048576.0 => format!("{:.1} MiB", b / 1048576.0),
        Some(b) if b >= 1024.0 => format!("{:.1} KiB", b / 1024.0),
        Some(b) => format!("{b:.0} B"),
    };
    let num = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.1}{unit}"));
    let mut o = String::new();
    let _ = writeln!(
        o,
        "AT        {} ({} s)",
        p.at.format("%Y-%m-%d %H:%M:%S UTC"),
        p.seconds
    );
    let _ = writeln!(o, "CPU       {}", num(p.cpu_percent, " %"));
    let _ = writeln!(o, "MEMORY    {}", bytes(p.memory_bytes));
    let _ = writeln!(
        o,
        "DISK      read {}/s, write {}/s, allocated {}",
        bytes(p.disk_read_bps),
        bytes(p.disk_write_bps),
        bytes(p.disk_allocation_bytes)
    );
    let _ = writeln!(
        o,
        "NETWORK   in {}/s, out {}/s",
        bytes(p.net_rx_bps),
        bytes(p.net_tx_bps)
    );
    let status = p.status.map_or("-".to_string(), |s| {
        format!("2xx {} 3xx {} 4xx {} 5xx {}", s[0], s[1], s[2], s[3])
    });
    let _ = writeln!(
        o,
        "REQUESTS  {}, {}/s sent; {status}",
        num(p.requests_per_s, "/s"),
        bytes(p.http_bytes_per_s)
    );
    o
}
