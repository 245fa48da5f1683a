//! Open-loop load at a fixed rate (used by `scripts/bench-api.sh`): sends
//! GET requests at `RATE` per second for `SECS` seconds over `CONNS`
//! keep-alive connections, each timed from when it was *scheduled* (so a
//! slow server cannot hide queueing: no coordinated omission), and prints
//! `sent ok p50_ms p99_ms max_ms`.
//!
//! Usage: load_rate URL RATE SECS CONNS [HEADER: VALUE]

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: load_rate URL RATE SECS CONNS [HEADER: VALUE]");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let rate: f64 = args[2].parse().expect("RATE");
    let secs: f64 = args[3].parse().expect("SECS");
    let conns: usize = args[4].parse().expect("CONNS");
    let header = args.get(5).and_then(|h| {
        h.split_once(':')
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(conns)
            .no_proxy()
            .build()
            .unwrap();
        let total = (rate * secs) as usize;
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(conns));
        let start = Instant::now() + Duration::from_millis(100);
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
            let (c, url, header, sem) = (client.clone(), url.clone(), header.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire_owned().await.unwrap();
                let mut req = c.get(&url);
                if let Some((k, v)) = header {
                    req = req.header(k, v);
                }
                let ok = match req.send().await {
                    Ok(r) => {
                        let s = r.status().is_success();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => false,
                };
                (ok, at.elapsed())
            }));
        }
        let mut lat = Vec::with_capacity(total);
        let mut ok = 0;
        for t in tasks {
            let (good, d) = t.await.unwrap();
            ok += usize::from(good);
            lat.push(d.as_secs_f64() * 1000.0);
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
        println!(
            "{} {} {:.2} {:.2} {:.2}",
            total,
            ok,
            p(0.5),
            p(0.99),
            lat.last().copied().unwrap_or(0.0)
        );
    });
}
