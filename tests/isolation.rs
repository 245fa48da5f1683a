//! Host-side guest isolation (drivers/isolation.rs) against the real kernel:
//! after `ensure`, a process running as a guest user (libvirt-qemu, which
//! passt and QEMU run as) cannot open a connection to a service on the host's
//! loopback, nor to non-public networks beyond the host (CGNAT, the cloud
//! metadata address), each held by a test host in a network namespace this
//! test creates; it can reach a public address; root still reaches all of
//! them; and a guest user can still *answer* a connection the host opened to
//! it (inbound port forwarding).

mod common;

use std::process::{Command, Stdio};

use hostd::domain::EgressPolicy;
use hostd::drivers::isolation::{Isolation, TABLE};

/// `nc -z` to addr:port as `user`; whether the connection was made.
fn connects_as(user: &str, addr: &str, port: u16) -> bool {
    Command::new("su")
        .args(["-s", "/bin/sh", user, "-c"])
        .arg(format!("nc -z -w 3 {addr} {port}"))
        .status()
        .unwrap()
        .success()
}

fn run(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}");
}

/// A network namespace of this test, joined to the host by a veth pair,
/// holding `addrs` and serving TCP on `PORT` at each; removed when dropped.
struct TestHost {
    ns: String,
    server: std::process::Child,
}

const PORT: u16 = 8080;

/// The table is one per host: the tests here take turns with it.
static TABLE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl TestHost {
    /// `routes`: (host side address/prefix, namespace side address/prefix).
    fn new(routes: &[(&str, &str)]) -> TestHost {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let (ns, vh, vn) = (
            format!("hdiso{tag}"),
            format!("vh{tag}"),
            format!("vn{tag}"),
        );
        run(&["ip", "netns", "add", &ns]);
        run(&[
            "ip", "link", "add", &vh, "type", "veth", "peer", "name", &vn,
        ]);
        run(&["ip", "link", "set", &vn, "netns", &ns]);
        for (host, inside) in routes {
            run(&["ip", "addr", "add", host, "dev", &vh]);
            run(&["ip", "-n", &ns, "addr", "add", inside, "dev", &vn]);
        }
        run(&["ip", "link", "set", &vh, "up"]);
        run(&["ip", "-n", &ns, "link", "set", &vn, "up"]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c"])
            .arg(format!(
                "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('0.0.0.0',{PORT}))\ns.listen(64)\nwhile True:\n  c,_=s.accept()\n  c.close()\n"
            ))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let h = TestHost { ns, server };
        // Up when root reaches it.
        let first = routes[0].1.split('/').next().unwrap();
        for _ in 0..50 {
            if connects_as("root", first, PORT) {
                return h;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the test host in {} never answered", h.ns);
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        // Deleting the namespace deletes its end of the veth pair, and so both.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
    }
}

#[tokio::test]
async fn guest_users_reach_neither_the_host_nor_non_public_networks() {
    let _turn = TABLE_LOCK.lock().await;
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
    assert!(
        connects_as("root", "127.0.0.1", port),
        "the host itself still connects"
    );
    assert!(
        !connects_as("libvirt-qemu", "127.0.0.1", port),
        "a guest user must be refused"
    );
    assert!(
        !connects_as("nobody", "127.0.0.1", port),
        "passt started as root runs as nobody"
    );

    // Beyond the host: a CGNAT address, the cloud metadata address and a
    // public (documentation) address, all held by this test's own host.
    let host = TestHost::new(&[
        ("100.64.77.1/24", "100.64.77.2/24"),
        ("169.254.169.1/24", "169.254.169.254/24"),
        ("198.51.100.1/24", "198.51.100.7/24"),
    ]);
    for addr in ["100.64.77.2", "169.254.169.254", "198.51.100.7"] {
        assert!(connects_as("root", addr, PORT), "root reaches {addr}");
    }
    assert!(
        !connects_as("libvirt-qemu", "100.64.77.2", PORT),
        "CGNAT reached"
    );
    assert!(
        !connects_as("libvirt-qemu", "169.254.169.254", PORT),
        "the metadata address reached"
    );
    assert!(
        connects_as("libvirt-qemu", "198.51.100.7", PORT),
        "a public address must stay reachable with HOSTD_GUEST_EGRESS=public"
    );
    // The operator's own list refuses more.
    let strict = Isolation::new(EgressPolicy::parse("public", "198.51.100.0/24").unwrap());
    strict.ensure().await.unwrap();
    assert!(!connects_as("libvirt-qemu", "198.51.100.7", PORT));
    // A check under the default policy sees the table is not what it wants.
    iso.check().await.unwrap();
    let none = Isolation::new(EgressPolicy::parse("none", "").unwrap());
    assert!(
        none.check().await.is_err(),
        "egress none is not in force yet"
    );
    drop(host);

    // Inbound forwarding: a guest user's listener still answers the host.
    iso.ensure().await.unwrap();
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

/// A guest process running as a user the table does not cover (a passt
/// started under another account) makes the check fail, naming it; the
/// next `ensure` covers it.
#[tokio::test]
async fn the_check_covers_the_users_guests_really_run_as() {
    let _turn = TABLE_LOCK.lock().await;
    let procs = tempfile::tempdir().unwrap();
    let p = procs.path().join("4242");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("status"),
        "Name:\tpasst.avx2\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t54321\t54321\t54321\t54321\n",
    )
    .unwrap();
    let plain = Isolation::default().with_proc_dir(std::path::Path::new("/nonexistent"));
    plain.ensure().await.unwrap();
    let seen = Isolation::default().with_proc_dir(procs.path());
    let e = seen.check().await.unwrap_err().to_string();
    assert!(
        e.contains("uid 54321") && e.contains("passt.avx2 pid 4242"),
        "{e}"
    );
    seen.ensure().await.unwrap();
    seen.check().await.unwrap();
    // Back to the host's own view.
    Isolation::default().ensure().await.unwrap();
}

/// The resync puts back a table that `nft flush ruleset` (a restart of the
/// nftables service) removed, and counts it.
#[tokio::test]
async fn the_resync_puts_a_removed_table_back() {
    let _turn = TABLE_LOCK.lock().await;
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), None);
    config.libvirt_uri = "qemu:///system".into();
    let _pool = common::SystemPoolGuard(config.instance.clone());
    let app = common::TestApp::spawn_with(config, hostd::app::Mode::All, false, None, state).await;
    let ctl = app.controller.clone().unwrap();
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", TABLE])
        .status();
    assert!(Isolation::default().check().await.is_err());
    let before = ctl.ctx.metrics.isolation_restored.get();
    let q = hostd::reconciler::queue::WorkQueue::default();
    hostd::reconciler::resync::resync(&ctl.ctx, &q)
        .await
        .unwrap();
    Isolation::default()
        .check()
        .await
        .expect("put back by the resync");
    assert_eq!(ctl.ctx.metrics.isolation_restored.get(), before + 1);
    // In force: the next resync changes nothing.
    hostd::reconciler::resync::resync(&ctl.ctx, &q)
        .await
        .unwrap();
    assert_eq!(ctl.ctx.metrics.isolation_restored.get(), before + 1);
    app.stop().await;
}
