//! Reconciler benchmark (run by `scripts/bench-reconcile.sh`): for N hostings
//! created at once against libvirt's `test:///default`, real Postgres and a real
//! nginx, the time until all are Ready (stand-in servers answer on every
//! forwarded port), then the cost of one idle full resync (CPU time, and SQL statements
//! counted in the server log).
//! Prints a table; asserts nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use hostd::app::Mode;
use hostd::domain::{Email, HostingSpec, PortRange, Role, Username};

/// CPU time (user + system) of this process, from /proc (10 ms resolution).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Sets the server's `log_statement` (as the postgres superuser, through
/// `su`; bench-reconcile.sh resets it on exit) and waits for the backends
/// to reload their configuration.
async fn log_statements(value: &str) {
    let cmd = format!(
        "psql -qAt -c \"alter system set log_statement = '{value}'\" -c 'select pg_reload_conf()'"
    );
    let ok = tokio::process::Command::new("su")
        .args(["postgres", "-c", &cmd])
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot set log_statement");
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Counts the SQL statements the server logged for database `db` between two
/// marker statements. Statement logging is on only for that window: on for
/// the whole run, it slowed the convergence it measures.
async fn statements_between(
    pool: &sqlx::PgPool,
    db: &str,
    mark: &str,
    f: impl std::future::Future<Output = ()>,
) -> usize {
    let log = std::env::var("PG_LOG")
        .unwrap_or_else(|_| "/var/log/postgresql/postgresql-15-main.log".into());
    let (start, end) = (
        format!("bench-mark-{mark}-start"),
        format!("bench-mark-{mark}-end"),
    );
    log_statements("all").await;
    sqlx::query(&format!("select '{start}'"))
        .execute(pool)
        .await
        .unwrap();
    f.await;
    sqlx::query(&format!("select '{end}'"))
        .execute(pool)
        .await
        .unwrap();
    log_statements("none").await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let Some(from) = text.find(&start) else {
        return usize::MAX;
    };
    let Some(to) = text[from..].find(&end) else {
        return usize::MAX;
    };
    let tag = format!("@{db} LOG:  ");
    let section = &text[from..from + to];
    // Drop the partial line that holds the end marker.
    let section = &section[..section.rfind('\n').unwrap_or(0)];
    // The line holding the start marker is not counted (it comes before `from`).
    // Statements appear as "LOG:  statement: …" (simple) or "LOG:  execute …"
    // (prepared). The lease keep-alive (`select 1`, every 2 s) is not resync work.
    section
        .lines()
        .skip(1)
        .filter(|l| {
            l.contains(&tag) && (l.contains("LOG:  statement:") || l.contains("LOG:  execute "))
        })
        .filter(|l| !l.ends_with(": select 1"))
        .count()
}

struct Row {
    n: usize,
    converge: Duration,
    cpu: Duration,
    wall: Duration,
    stmts: usize,
    queued: usize,
    errors: u64,
    /// Reconciles run until all were Ready, and domain changes the libvirt
    /// events reported in that time.
    work: (u64, u64),
    /// CPU time of each listing of a pass, alone (and of the full domain
    /// relist an idle pass makes every few minutes instead of the listing
    /// events keep current).
    parts: Vec<(&'static str, Duration)>,
}

async fn run(n: usize) -> Row {
    let db = common::fresh_database().await;
    let nginx = common::TestNginx::start();
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.ssh_ports = PortRange {
        start: 10000,
        end: 10000 + n as u16 - 1,
    };
    config.http_ports = PortRange {
        start: 20001,
        end: 20001 + n as u16 - 1,
    };
    config.resync = Duration::from_secs(3600);
    // Every port of both ranges answers like a booted guest, from another
    // process: guests are not hostd's sockets (10,000 of them in this
    // process would make every fork hostd does copy its file table).
    let mut guests = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--stand-ins", &n.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("stand-in guests");
    {
        use tokio::io::AsyncBufReadExt;
        let out = guests.stdout.take().unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(out)
            .read_line(&mut line)
            .await
            .unwrap();
        assert_eq!(line.trim(), "ready", "stand-in guests did not start");
    }
    let app = common::TestApp::spawn_with(config, Mode::All, true, Some(nginx), state).await;
    let store = app.store.clone();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let store = store.clone();
        set.spawn(async move {
            let u = store
                .create_user(
                    &Email::parse(&format!("u{i}@example.com")).unwrap(),
                    &Username::parse(&format!("user{i}")).unwrap(),
                    "x",
                    Role::User,
                )
                .await
                .unwrap();
            store
                .create_hosting(u.id, &HostingSpec::default(), false)
                .await
                .unwrap();
        });
        if set.len() >= 32 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
    loop {
        let (ready,): (i64,) =
            sqlx::query_as("select count(*) from hosting_status where phase = 'Ready'")
                .fetch_one(&store.db())
                .await
                .unwrap();
        if ready as usize == n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            panic!("only {ready}/{n} Ready after 30 min");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converge = t0.elapsed();
    let ctl = app.controller.clone().unwrap();
    let errors = ctl.ctx.metrics.failures_total();
    let m = &ctl.ctx.metrics;
    let work = (m.reconciles.get(), m.domain_events.get());
    // Quiesce: the queue must be empty (late requeues drained) before an idle pass.
    while ctl.queue.depth() > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // ... and the API's read view done with the notifications of the
    // convergence (its refreshes are not resync work).
    if let Some(view) = store.view() {
        let mut last = u64::MAX;
        while view.stats().changes_applied != last {
            last = view.stats().changes_applied;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let dbname = db.rsplit('/').next().unwrap().to_string();
    let mut stats = Default::default();
    let stmts = statements_between(&store.db(), &dbname, &dbname, async {
        stats = hostd::reconciler::resync::resync(&ctl.ctx, &ctl.queue)
            .await
            .unwrap();
    })
    .await;
    // Average CPU time of idle passes (BENCH_IDLE_PASSES: more of them,
    // for a profiler to attach to).
    let passes: u32 = std::env::var("BENCH_IDLE_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let c0 = cpu_time();
    let w0 = Instant::now();
    for _ in 0..passes {
        hostd::reconciler::resync::resync(&ctl.ctx, &ctl.queue)
            .await
            .unwrap();
    }
    let cpu = (cpu_time() - c0) / passes;
    let wall = w0.elapsed() / passes;
    // Where an idle pass's CPU goes: each listing alone, averaged.
    let mut parts = Vec::new();
    macro_rules! part {
        ($name:expr, $e:expr) => {{
            let c0 = cpu_time();
            for _ in 0..passes {
                let _ = $e.await.unwrap();
            }
            parts.push(($name, (cpu_time() - c0) / passes));
        }};
    }
    part!("list_domains", ctl.ctx.vm.list_domains());
    part!("list_domains (full relist)", async {
        ctl.ctx.vm.expire_listing();
        ctl.ctx.vm.list_domains().await
    });
    part!("list_volumes", ctl.ctx.vm.list_volumes());
    part!("list_routes", ctl.ctx.proxy.list_routes());
    part!("records", async {
        ctl.ctx.records.lock().await.current(&ctl.ctx.store).await
    });
    app.stop().await;
    let _ = guests.kill().await;
    // Let the aborted stand-in tasks release their ports before the next run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Row {
        n,
        converge,
        cpu,
        wall,
        stmts,
        queued: stats.queued,
        errors,
        work,
        parts,
    }
}

/// `--stand-ins N`: serves N stand-in guests (SSH 10000.., HTTP 20001..)
/// until killed; prints `ready` once all listen.
async fn stand_ins(n: u16) {
    let mut guests = Vec::with_capacity(n as usize);
    for i in 0..n {
        guests.push(common::fake_guest(10000 + i, 20001 + i, "ok").await);
    }
    println!("ready");
    std::future::pending::<()>().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--stand-ins") {
        return stand_ins(args[2].parse().unwrap()).await;
    }
    hostd::telemetry::init(false);
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000, 5000]
    } else {
        sizes
    };
    println!("| N | time to all Ready | idle resync: CPU | wall | SQL statements | hostings queued | reconcile errors |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut breakdown = Vec::new();
    for n in sizes {
        let r = run(n).await;
        let parts: Vec<String> = r
            .parts
            .iter()
            .map(|(name, d)| format!("{name} {:.0} ms", d.as_secs_f64() * 1000.0))
            .collect();
        breakdown.push(format!(
            "N = {n}: {} (to all Ready: {} reconciles, {} domain changes reported by events)",
            parts.join(", "),
            r.work.0,
            r.work.1
        ));
        println!(
            "| {} | {:.1} s | {:.0} ms | {:.0} ms | {} | {} | {} |",
            r.n,
            r.converge.as_secs_f64(),
            r.cpu.as_secs_f64() * 1000.0,
            r.wall.as_secs_f64() * 1000.0,
            r.stmts,
            r.queued,
            r.errors
        );
    }
    println!();
    println!("Idle resync, CPU of each listing alone (averaged):");
    for b in breakdown {
        println!("- {b}");
    }
}
