//! Host-side guest isolation (drivers/isolation.rs) against the real kernel:
//! after `ensure`, a process running as a guest user (libvirt-qemu, which
//! passt and QEMU run as) cannot open a connection to a service on the host's
//! loopback, while root still can, and a guest user can still *answer* a
//! connection the host opened to it (inbound port forwarding).

use std::process::Command;

use hostd::drivers::isolation::Isolation;

/// `nc -z` to 127.0.0.1:port as `user`; whether the connection was made.
fn connects_as(user: &str, port: u16) -> bool {
    Command::new("su")
        .args(["-s", "/bin/sh", user, "-c"])
        .arg(format!("nc -z -w 3 127.0.0.1 {port}"))
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn guest_users_cannot_open_connections_to_host_services() {
    let iso = Isolation::default();
    let detail = iso
        .ensure()
        .await
        .expect("nftables isolation installs (root, nftables)");
    assert!(detail.contains("refused"), "{detail}");
    iso.check().await.expect("in force after ensure");

    // A host service on loopback (stands for Postgres, the API, nginx, a
    // forwarded port of another guest).
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    assert!(connects_as("root", port), "the host itself still connects");
    assert!(
        !connects_as("libvirt-qemu", port),
        "a guest user must be refused"
    );
    assert!(
        !connects_as("nobody", port),
        "passt started as root runs as nobody"
    );

    // Inbound forwarding: a guest user's listener still answers the host.
    let port2 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut listener = Command::new("su")
        .args(["-s", "/bin/sh", "libvirt-qemu", "-c"])
        .arg(format!(
            "printf 'hello from the guest side' | nc -l -q 1 127.0.0.1 {port2}"
        ))
        .spawn()
        .unwrap();
    let mut got = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port2)) {
            use std::io::Read;
            let _ = s.read_to_string(&mut got);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(got, "hello from the guest side");
    // Installing again is idempotent.
    iso.ensure().await.unwrap();
}
