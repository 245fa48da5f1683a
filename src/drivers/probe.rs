//! Readiness probes: a guest is ready when its site answers 2xx through the
//! host nginx and its SSH port greets with an `SSH-2.0-` banner. Probes are
//! short and never block a reconcile for long: the caller requeues instead.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// sshd forks per connection; a TCG guest under load can take several seconds
/// to send its banner, which is not a failure.
const BANNER_TIMEOUT: Duration = Duration::from_secs(10);

/// The readiness probe's `User-Agent`: requests with it from 127.0.0.1 are
/// the host's own and stay out of the site log (`templates/nginx-main.conf`).
pub const USER_AGENT: &str = "hostd-probe";

/// GETs `url`; `Ok(status)` when it answered 2xx.
pub async fn http_ok(client: &reqwest::Client, url: &str) -> Result<u16, String> {
    match client.get(url).timeout(PROBE_TIMEOUT).send().await {
        Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
        Ok(r) => Err(format!("HTTP {} from {url}", r.status().as_u16())),
        Err(e) => Err(format!("no HTTP answer from {url}: {}", e.without_url())),
    }
}

/// Connects to `addr` and reads the SSH identification line.
pub async fn ssh_banner(addr: SocketAddr) -> Result<String, String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("ssh port {addr}: {e}"))?;
        // Send our identification first (RFC 4253 lets either side start): some
        // user-mode network forwarders (passt) only relay the server's banner
        // once the client has sent data.
        s.write_all(b"SSH-2.0-hostd_probe\r\n")
            .await
            .map_err(|e| format!("ssh port {addr}: {e}"))?;
        let mut buf = vec![0u8; 256];
        let mut n = 0;
        while n < buf.len() {
            let r = s
                .read(&mut buf[n..])
                .await
                .map_err(|e| format!("ssh port {addr}: {e}"))?;
            if r == 0 {
                break;
            }
            n += r;
            if buf[..n].contains(&b'\n') {
                break;
            }
        }
        let line = String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        if line.starts_with("SSH-2.0-") {
            Ok(line)
        } else {
            Err(format!(
                "ssh port {addr}: no SSH-2.0 banner (got {:?})",
                line.chars().take(40).collect::<String>()
            ))
        }
    };
    tokio::time::timeout(BANNER_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("ssh port {addr}: timed out")))
}
