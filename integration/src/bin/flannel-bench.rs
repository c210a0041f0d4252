//! flannel-embed benchmarks. Figures are printed, never asserted.
//!
//! `flannel-bench peers [--nodes 1000,5000,10000]`: time from starting the
//! Node watch (API server already up and filled) to the first complete
//! PeerSet, at each cluster size.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use flannel_embed::config::NetConf;
use flannel_embed::kube_subnet::{watch_peers, AnnotationKeys, Lease, PeerContext, PeerSnapshot};
use integration::apiserver::{ready_node, Options, TestApiServer};
use integration::fixtures::{vxlan_peer, PREFIX};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "flannel-bench",
    about = "flannel-embed benchmarks (figures, not assertions)"
)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// First complete PeerSet from N Nodes in the test API server.
    Peers {
        /// Cluster sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1000u32, 5000, 10000])]
        nodes: Vec<u32>,
        /// Runs per size (the median is printed).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flannel-bench: cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match args.scenario {
        Scenario::Peers { nodes, runs } => runtime.block_on(peers(&nodes, runs.max(1))),
    }
}

async fn peers(sizes: &[u32], runs: usize) -> std::process::ExitCode {
    println!("first complete PeerSet (watch start -> synced snapshot), {runs} run(s) each, median");
    println!(
        "{:>8} {:>12} {:>8} {:>8}",
        "nodes", "seconds", "peers", "skipped"
    );
    for &size in sizes {
        let server = match TestApiServer::start(Options::default()) {
            Ok(server) => server,
            Err(e) => {
                eprintln!("flannel-bench: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let created = server
            .create_node(ready_node("node-a", Some("10.42.0.0/24")))
            .and_then(|_| server.create_nodes((1..=size).map(vxlan_peer)));
        if let Err(e) = created {
            eprintln!("flannel-bench: filling the API server: {e}");
            return std::process::ExitCode::FAILURE;
        }
        let ctx = PeerContext {
            own_name: "node-a".into(),
            own_lease: Lease {
                ipv4: "10.42.0.0/24".parse().ok(),
                ipv6: None,
            },
            keys: AnnotationKeys::new(PREFIX),
            netconf: match NetConf::parse(
                r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#,
            ) {
                Ok(conf) => conf,
                Err(e) => {
                    eprintln!("flannel-bench: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            },
        };
        let mut times = Vec::new();
        let mut last = PeerSnapshot::default();
        for _ in 0..runs {
            let client = match server.client() {
                Ok(client) => client,
                Err(e) => {
                    eprintln!("flannel-bench: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let (publish, mut receiver) = watch::channel(PeerSnapshot::default());
            let started = Instant::now();
            let task = tokio::spawn(watch_peers(client, ctx.clone(), publish));
            let synced =
                tokio::time::timeout(Duration::from_secs(300), receiver.wait_for(|s| s.synced))
                    .await
                    .map(|r| r.map(|s| s.clone()));
            let elapsed = started.elapsed();
            task.abort();
            match synced {
                Ok(Ok(snapshot)) => {
                    times.push(elapsed);
                    last = snapshot;
                }
                _ => {
                    eprintln!("flannel-bench: no complete PeerSet at {size} nodes within 300 s");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "{:>8} {:>12.3} {:>8} {:>8}",
            size,
            median.as_secs_f64(),
            last.peers.len(),
            last.skipped
        );
    }
    std::process::ExitCode::SUCCESS
}
