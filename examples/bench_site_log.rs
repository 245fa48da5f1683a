//! How fast hostd reads the host nginx's site log: counts the lines of FILE
//! the way each statistics round does (`drivers::nginx::site_log::count`)
//! and prints `lines seconds lines_per_second`. Used by
//! `scripts/bench-site-log.sh`.
//!
//! Usage: bench_site_log FILE

fn main() {
    let path = std::env::args().nth(1).expect("usage: bench_site_log FILE");
    let text = std::fs::read(&path).expect("read FILE");
    let lines = text.iter().filter(|b| **b == b'\n').count();
    let t = std::time::Instant::now();
    let counts = hostd::drivers::nginx::site_log::count(&text);
    let secs = t.elapsed().as_secs_f64();
    let requests: i64 = counts.values().map(|c| i64::from(c.requests)).sum();
    assert_eq!(
        requests as usize, lines,
        "every line is a request of a site"
    );
    println!("{lines} {secs:.4} {:.0}", lines as f64 / secs.max(1e-9));
}
