//! `hostd node …`: the operator's commands for nodes, on the database (the
//! same functions as the admin API's, so the same validation and audit
//! lines). The reconciler connects to a node added here at its next heartbeat.

use crate::api::nodes::{self, AddNode};
use crate::config::Config;
use crate::domain::NodeName;
use crate::store::Store;

/// What `hostd node` was asked to do.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeCmd {
    /// Lists the nodes with their readiness and load.
    List,
    /// Adds a node: `hostd node add NAME URI [--address IP]`.
    Add {
        name: String,
        /// libvirt URI (qemu+ssh://host/system, qemu+tls://host/system,
        /// qemu+unix:///system?socket=PATH).
        uri: String,
        /// IP address at which this host reaches the node's forwarded ports.
        #[arg(long)]
        address: Option<String>,
        /// IP address its guests forward SSH on (default: HOSTD_SSH_BIND).
        #[arg(long)]
        ssh_address: Option<String>,
        /// Take the node to have this much memory (MiB).
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Take the node to have this many CPUs.
        #[arg(long)]
        vcpus: Option<u32>,
        /// A label, KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Places no new hosting on the node (those there stay).
    Cordon { name: String },
    /// Places new hostings on the node again.
    Uncordon { name: String },
    /// Removes a node that holds no hosting.
    Remove { name: String },
    /// Cordons the node and moves its hostings to other nodes by live
    /// migration, one at a time (`uncordon` ends the drain).
    Drain { name: String },
    /// Declares a node dead (also cordons it): only then can it be evacuated.
    /// Make sure its guests are stopped for good (machine off, or cut off).
    Fence { name: String },
    /// Lifts the fence (the node stays cordoned).
    Unfence { name: String },
    /// Restores a fenced node's hostings on other nodes from their newest
    /// backups; those without a backup stay.
    Evacuate { name: String },
}

impl NodeCmd {
    /// The node the command names, as typed (`list` and `add` name none here).
    fn target(&self) -> Option<&str> {
        match self {
            NodeCmd::List | NodeCmd::Add { .. } => None,
            NodeCmd::Cordon { name }
            | NodeCmd::Uncordon { name }
            | NodeCmd::Fence { name }
            | NodeCmd::Unfence { name }
            | NodeCmd::Evacuate { name }
            | NodeCmd::Drain { name }
            | NodeCmd::Remove { name } => Some(name),
        }
    }
}

/// Runs one command; the exit code (0 ok, 1 failed, 2 bad input).
pub async fn run(config: Config, cmd: NodeCmd) -> i32 {
    let store = match Store::connect(&config.database_url, 2).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hostd: {e}");
            return 1;
        }
    };
    if let Err(e) = store.migrate().await {
        eprintln!("hostd: {e}");
        return 1;
    }
    let by = "hostd node (operator)";
    // The node a command names, parsed once (`add` parses its own request).
    let target = match cmd.target().map(NodeName::parse).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hostd: {e}");
            return 2;
        }
    };
    let named = || target.clone().expect("a command naming a node");
    let result = match cmd {
        NodeCmd::List => match store.list_nodes().await {
            Ok(list) => {
                print_list(&list);
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        NodeCmd::Add {
            name,
            uri,
            address,
            ssh_address,
            memory_mib,
            vcpus,
            labels,
        } => {
            let mut map = serde_json::Map::new();
            for l in labels {
                let Some((k, v)) = l.split_once('=') else {
                    eprintln!("hostd: --label {l}: must be KEY=VALUE");
                    return 2;
                };
                map.insert(k.to_string(), v.into());
            }
            let req = AddNode {
                name,
                uri,
                address,
                ssh_address,
                labels: map,
                memory_mib,
                vcpus,
            };
            let new = match req.parse() {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("hostd: {e}");
                    return 2;
                }
            };
            nodes::add(&store, by, new).await.map(|n| {
                println!(
                    "node {} added ({}, address {}); the reconciler connects at its next heartbeat",
                    n.name, n.uri, n.address
                );
            })
        }
        NodeCmd::Cordon { .. } => {
            let n = named();
            nodes::cordon(&store, by, &n, false)
                .await
                .map(|_| println!("node {n} cordoned: no new hosting is placed there"))
        }
        NodeCmd::Uncordon { .. } => {
            let n = named();
            nodes::cordon(&store, by, &n, true)
                .await
                .map(|_| println!("node {n} uncordoned"))
        }
        NodeCmd::Fence { .. } => {
            let n = named();
            nodes::fence(&store, by, &n, true).await.map(|_| {
                println!("node {n} fenced (declared dead) and cordoned; `hostd node evacuate {n}` restores its hostings elsewhere from their backups")
            })
        }
        NodeCmd::Unfence { .. } => {
            let n = named();
            nodes::fence(&store, by, &n, false)
                .await
                .map(|_| println!("node {n} unfenced (still cordoned)"))
        }
        NodeCmd::Evacuate { .. } => {
            let n = named();
            nodes::evacuate(&store, by, &n).await.map(|e| {
                for (h, b, t) in &e.moved {
                    println!(
                        "{h}: restored elsewhere from backup {} taken {t} (later changes are lost)",
                        b.0
                    );
                }
                for h in &e.stranded {
                    println!("{h}: no completed backup; stays on {n}");
                }
                println!(
                    "{} hosting(s) to be restored elsewhere, {} left on {n}",
                    e.moved.len(),
                    e.stranded.len()
                );
            })
        }
        NodeCmd::Drain { .. } => {
            let n = named();
            nodes::drain(&store, by, &n).await.map(|node| {
                println!(
                    "node {n} cordoned and draining: its {} hosting(s) move to other nodes by live migration, one at a time (`hostd node list` shows what is left)",
                    node.hostings
                )
            })
        }
        NodeCmd::Remove { .. } => {
            let n = named();
            nodes::remove(&store, by, &n)
                .await
                .map(|_| println!("node {n} removed"))
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hostd: {}", e.public_message());
            1
        }
    }
}

fn print_list(list: &[crate::store::Node]) {
    println!(
        "{:<16} {:<11} {:<11} {:>8} {:>12} {:>5}  {:<15} URI",
        "NAME", "HEALTH", "SCHEDULING", "HOSTINGS", "MEMORY MiB", "CPUS", "ADDRESS"
    );
    for n in list {
        let (mem, cpus) = n.resources.map_or(("-".to_string(), "-".to_string()), |r| {
            (
                n.memory_mib.unwrap_or(r.memory_mib).to_string(),
                n.vcpus.unwrap_or(r.cpus).to_string(),
            )
        });
        println!(
            "{:<16} {:<11} {:<11} {:>8} {:>12} {:>5}  {:<15} {}{}",
            n.name.to_string() + if n.implicit { "*" } else { "" },
            if n.fenced_at.is_some() {
                "Fenced"
            } else {
                n.health.as_str()
            },
            match (n.schedulable, n.draining_since, n.hostings) {
                (true, _, _) => "on",
                (false, None, _) => "cordoned",
                (false, Some(_), 0) => "drained",
                (false, Some(_), _) => "draining",
            },
            n.hostings,
            mem,
            cpus,
            n.address.to_string(),
            n.uri,
            (n.message.as_deref().or(n.drain_message.as_deref()))
                .map(|m| format!("  ({m})"))
                .unwrap_or_default(),
        );
    }
}
