//! nginx benchmark (run by `scripts/bench-nginx.sh`): what validating the
//! host nginx's configuration costs with N tenants' routes, in the two
//! layouts hostd has had: one file of `location` blocks per hosting (before
//! `routes.map`; the file below is what its template rendered for a running
//! hosting) and one map entry per hosting in `routes.map` (now, rendered by
//! the real driver). `nginx -t` parses what a reload parses; the figure is
//! the median of 5 runs. Prints a table; asserts nothing.

use std::time::{Duration, Instant};

use hostd::domain::{HostingId, UserId};
use hostd::drivers::{nginx::NginxDriver, ProxyDriver, RouteSpec};

/// A route file of the per-hosting layout (templates/route.conf at 683651e).
fn location_file(hosting: HostingId, user: UserId, port: u16) -> String {
    format!(
        r#"# Managed by hostd: route for hosting {hosting}. Do not edit: hostd rewrites this file.
location = /{user} {{
    return 301 /{user}/;
}}
location /{user}/ {{
    if ($request_uri !~ "^/{user}/") {{
        return 400;
    }}
    proxy_pass http://127.0.0.1:{port}/;
    proxy_http_version 1.1;
    proxy_set_header Host $host;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    proxy_ignore_headers X-Accel-Redirect X-Accel-Expires X-Accel-Limit-Rate X-Accel-Buffering X-Accel-Charset;
    proxy_connect_timeout 5s;
    proxy_send_timeout 60s;
    proxy_read_timeout 60s;
    client_max_body_size 64m;
    proxy_set_header X-Forwarded-Prefix /{user};
    proxy_cookie_path ~^/(.*)$ /{user}/$1;
    proxy_hide_header Service-Worker-Allowed;
}}
"#
    )
}

/// The main config of the per-hosting layout: the current one's `http`
/// settings, and the server block it had (templates/nginx-main.conf at
/// 683651e), which includes the route files.
fn location_main(current: &str, dir: &str) -> String {
    let maps_from = current.find("    # Routes.").unwrap();
    format!(
        r#"{}    server {{
        listen 127.0.0.1:1 default_server;
        server_name _;
        location = / {{
            default_type text/html;
            return 200 'hostd';
        }}
        location / {{
            default_type text/plain;
            return 404 'no such site\n';
        }}
        include {dir}/*.conf;
    }}
}}
"#,
        &current[..maps_from]
    )
}

fn median_t(conf: &std::path::Path) -> Duration {
    let mut runs: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let st = std::process::Command::new("nginx")
                .args(["-t", "-q", "-c"])
                .arg(conf)
                .status()
                .unwrap();
            assert!(st.success(), "nginx -t failed for {}", conf.display());
            t.elapsed()
        })
        .collect();
    runs.sort();
    runs[2]
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are numbers"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 5000]
    } else {
        sizes
    };
    println!(
        "| N | per-hosting location files: `nginx -t` | bytes | routes.map: `nginx -t` | bytes |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in ["loc", "map", "tmp"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        let main = hostd::app::nginx_main_conf(&hostd::app::NginxLayout {
            listen: "127.0.0.1:1",
            https_listen: None,
            prefix: &p.display().to_string(),
            routes_dir: &p.join("map").display().to_string(),
            tls_dir: "",
            sites_domain: None,
            panel: None,
            site_log: None,
        });
        let driver = NginxDriver::new(
            &p.join("map"),
            &p.join("map.conf"),
            "nginx".as_ref(),
            &p.join("tls.map"),
        );
        let (mut map, mut loc_bytes) = (String::new(), 0);
        for i in 0..n {
            let (h, u) = (
                HostingId(uuid::Uuid::new_v4()),
                UserId(uuid::Uuid::new_v4()),
            );
            let port = 20001 + (i % 10000) as u16;
            let f = location_file(h, u, port);
            loc_bytes += f.len();
            std::fs::write(p.join("loc").join(format!("{h}.conf")), f).unwrap();
            map.push_str(&driver.render(&RouteSpec {
                hosting_id: h,
                user_id: u,
                http_port: Some(port),
                upstream_host: hostd::domain::NodeAddress::LOOPBACK,
                hosts: vec![],
                hsts: false,
            }));
        }
        std::fs::write(p.join("map").join("routes.map"), &map).unwrap();
        std::fs::write(p.join("map.conf"), &main).unwrap();
        let loc_main = location_main(&main, &p.join("loc").display().to_string());
        std::fs::write(p.join("loc.conf"), loc_main).unwrap();
        let (loc, mapped) = (median_t(&p.join("loc.conf")), median_t(&p.join("map.conf")));
        println!(
            "| {n} | {:.0} ms | {} KiB | {:.0} ms | {} KiB |",
            loc.as_secs_f64() * 1000.0,
            loc_bytes / 1024,
            mapped.as_secs_f64() * 1000.0,
            map.len() / 1024
        );
    }
}
