//! libvirt driver benchmark: many concurrent read calls (`get_domain`,
//! `volume_exists`, `list_domains`) through one `LibvirtDriver`, as the
//! reconcile workers make them, against a real libvirtd (`qemu:///system`
//! by default, `BENCH_LIBVIRT_URI` to change). Prints calls per second for
//! several concurrency levels. Creates and removes a private storage pool.
//! Run by `scripts/bench-libvirt.sh`; asserts nothing.

use std::sync::Arc;
use std::time::Instant;

use hostd::drivers::libvirt::LibvirtDriver;
use hostd::drivers::VmDriver;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let uri = std::env::var("BENCH_LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into());
    let state = tempfile::tempdir().unwrap();
    let instance = format!("bench-{}", std::process::id());
    let vm = Arc::new(LibvirtDriver::new(
        &uri,
        &instance,
        uuid::Uuid::new_v4(),
        state.path(),
    ));
    vm.ensure_storage_pool().await.expect("storage pool");
    println!("{}", vm.ping().await.unwrap());
    println!("| concurrency | calls | wall | calls/s |");
    println!("|---:|---:|---:|---:|");
    for conc in [1usize, 8, 32] {
        let calls = 3000;
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for w in 0..conc {
            let vm = vm.clone();
            set.spawn(async move {
                for i in (w..calls).step_by(conc) {
                    match i % 3 {
                        0 => drop(vm.get_domain(&format!("hostd-none-{i}")).await.unwrap()),
                        1 => drop(vm.volume_exists(&format!("none-{i}")).await.unwrap()),
                        _ => drop(vm.list_domains().await.unwrap()),
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        let wall = t.elapsed();
        println!(
            "| {conc} | {calls} | {:.2} s | {:.0} |",
            wall.as_secs_f64(),
            calls as f64 / wall.as_secs_f64()
        );
    }
    drop(vm);
    let c = virt::connect::Connect::open(Some(&uri)).unwrap();
    if let Ok(p) = c.lookup_storage_pool_by_name(&format!("hostd-{instance}")) {
        let _ = p.destroy();
        let _ = p.undefine();
    }
}
