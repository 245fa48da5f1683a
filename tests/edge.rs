//! The host nginx hostd configures, under a hostile client: thousands of
//! idle connections from one address must not keep another client (or the
//! reconciler's readiness probes) from being answered. Real nginx, the
//! configuration `hostd nginx-conf` writes, loopback addresses standing for
//! separate clients.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    s.connect(to).await
}

/// `GET /` from `from`: the status line, and how long the answer took.
async fn get_from(from: [u8; 4], to: SocketAddr) -> (String, Duration) {
    let t = Instant::now();
    let answer = async {
        let mut c = connect_from(from, to).await?;
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = vec![0u8; 256];
        let n = c.read(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let status = match tokio::time::timeout(Duration::from_secs(15), answer).await {
        Ok(Ok(s)) => s.lines().next().unwrap_or("").to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "no answer within 15 s".into(),
    };
    (status, t.elapsed())
}

/// 4,000 connections from 127.0.0.3 that never finish a request, held open;
/// a request from 127.0.0.2 and one from 127.0.0.1 (where the readiness
/// probes come from) are still answered. With one worker of 1,024
/// connections (the configuration before) neither was: the idle ones held
/// every connection slot for nginx's 60 s default header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_from_one_address_do_not_starve_others() {
    let nginx = common::TestNginx::start();
    let to: SocketAddr = ([127, 0, 0, 1], nginx.port).into();
    let (status, _) = get_from([127, 0, 0, 2], to).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // Each sends the start of a request and then nothing (slowloris): a
    // connection that has sent nothing yet is one nginx may reuse when it
    // runs short; one inside a header is not.
    let opened = futures_util::future::join_all((0..4000).map(|_| async move {
        let c = tokio::time::timeout(Duration::from_secs(3), async {
            let mut c = connect_from([127, 0, 0, 3], to).await?;
            c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
                .await?;
            Ok::<_, std::io::Error>(c)
        });
        c.await.ok().and_then(|r| r.ok())
    }))
    .await;
    let held: Vec<TcpStream> = opened.into_iter().flatten().collect();
    // The kernel accepts them; nginx may or may not have picked them all up.
    assert!(held.len() >= 3000, "only {} connections opened", held.len());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (other, t_other) = get_from([127, 0, 0, 2], to).await;
    let (probe, t_probe) = get_from([127, 0, 0, 1], to).await;
    eprintln!(
        "edge: {} idle connections from 127.0.0.3 held; 127.0.0.2 answered {other:?} in {:.3} s, 127.0.0.1 {probe:?} in {:.3} s",
        held.len(),
        t_other.as_secs_f64(),
        t_probe.as_secs_f64()
    );
    assert!(other.starts_with("HTTP/1.1 200"), "another client: {other}");
    assert!(
        probe.starts_with("HTTP/1.1 200"),
        "the probe address: {probe}"
    );
    drop(held);
}
