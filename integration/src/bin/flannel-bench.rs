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
use integration::netns::TestNetns;
use integration::workspace_bin;
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
    /// Event latency: API write -> entry visible in the kernel, at N peers.
    Events {
        #[arg(long, default_value_t = 5000)]
        peers: u32,
        #[arg(long, default_value_t = 500)]
        events: u32,
        /// Events per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
    },
    /// Idle churn: status-only Node updates; kernel writes, CPU, RSS.
    Churn {
        #[arg(long, default_value_t = 5000)]
        peers: u32,
        #[arg(long, default_value_t = 20)]
        rate: u32,
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// CNI ADD+DEL through `flannel` vs the bare `bridge` delegate.
    Cni {
        #[arg(long, default_value_t = 200)]
        pods: u32,
    },
    /// Pod-to-pod iperf3, RTT and path MTU over the overlay vs the underlay.
    DataPlane {
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// Cold sync: a `flannel-agent` process in a fresh namespace programs N
    /// peers (API already up); the same entries through `ip -batch` and
    /// `bridge -batch` in a twin namespace are the floor (plain onlink
    /// routes, as upstream programs them), and the same again with nexthop
    /// objects for comparison. Set FLANNEL_EMBED_NEXTHOPS=off to time the
    /// agent's plain-route fallback.
    ColdSync {
        /// Peer counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1000u32, 5000, 10000, 20000])]
        peers: Vec<u32>,
        /// Runs per size, agent and floor interleaved (medians printed).
        #[arg(long, default_value_t = 1)]
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
        Scenario::Events {
            peers,
            events,
            rate,
        } => report(runtime.block_on(integration::bench::api::event_latency(peers, events, rate))),
        Scenario::Churn {
            peers,
            rate,
            seconds,
        } => report(runtime.block_on(integration::bench::api::idle_churn(peers, rate, seconds))),
        Scenario::Cni { pods } => report(integration::bench::plane::cni_overhead(pods)),
        Scenario::DataPlane { seconds } => {
            report(runtime.block_on(integration::bench::plane::data_plane(seconds)))
        }
        Scenario::ColdSync { peers, runs } => {
            match runtime.block_on(cold_sync(&peers, runs.max(1))) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flannel-bench: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
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

/// One kernel-programming measurement.
struct Sample {
    seconds: f64,
    rss_mib: f64,
    cpu_seconds: f64,
}

async fn cold_sync(sizes: &[u32], runs: usize) -> Result<(), String> {
    let agent = workspace_bin("flannel-agent");
    println!("cold sync: spawn -> kernel holds every entry (agent) vs ip/bridge -batch (floor: plain onlink routes; floor nh: nexthop objects), {runs} run(s), median");
    if let Ok(value) = std::env::var(flannel_embed::netlink::NEXTHOPS_ENV) {
        println!(
            "agent runs with {}={value}",
            flannel_embed::netlink::NEXTHOPS_ENV
        );
    }
    println!(
        "{:>7} {:>10} {:>10} {:>7} {:>11} {:>12} {:>10}",
        "peers", "agent s", "floor s", "ratio", "floor nh s", "agent MiB", "agent cpu"
    );
    for &size in sizes {
        let server = TestApiServer::start(Options::default()).map_err(|e| e.to_string())?;
        server
            .create_node(ready_node("bench-node", Some("10.42.0.0/24")))
            .map_err(|e| e.to_string())?;
        server
            .create_nodes((1..=size).map(vxlan_peer))
            .map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let kubeconfig = server
            .write_kubeconfig(dir.path())
            .map_err(|e| e.to_string())?;
        let netconf = dir.path().join("net-conf.json");
        std::fs::write(
            &netconf,
            r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#,
        )
        .map_err(|e| e.to_string())?;
        let mut agent_runs = Vec::new();
        let mut floor_runs = Vec::new();
        let mut floor_nh_runs = Vec::new();
        for run in 0..runs {
            floor_runs.push(floor(size, dir.path(), run, false)?);
            settle().await;
            floor_nh_runs.push(floor(size, dir.path(), run, true)?);
            settle().await;
            agent_runs.push(agent_run(&agent, size, dir.path(), &kubeconfig, &netconf, run).await?);
            settle().await;
        }
        let agent = median(agent_runs.iter().map(|s| s.seconds).collect());
        let floor = median(floor_runs.iter().map(|s| s.seconds).collect());
        let floor_nh = median(floor_nh_runs.iter().map(|s| s.seconds).collect());
        let rss = median(agent_runs.iter().map(|s| s.rss_mib).collect());
        let cpu = median(agent_runs.iter().map(|s| s.cpu_seconds).collect());
        println!(
            "{:>7} {:>10.3} {:>10.3} {:>7.2} {:>11.3} {:>12.1} {:>10.2}",
            size,
            agent,
            floor,
            agent / floor.max(1e-9),
            floor_nh,
            rss,
            cpu
        );
    }
    Ok(())
}

/// Deleting a namespace with thousands of entries keeps the kernel busy for
/// a while; let it finish before the next measurement.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The entries flannel programs for peer `i` (as `vxlan_peer(i)` announces).
fn peer_entries(i: u32) -> (String, String, String) {
    let lease_net = format!("10.{}.{}.0", 42 + i / 256, i % 256);
    let mac = format!(
        "0a:{:02x}:{:02x}:{:02x}:{:02x}:01",
        (i >> 24) & 0xff,
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    );
    let public = format!("192.168.{}.{}", (i / 250) % 256, i % 250 + 1);
    (lease_net, mac, public)
}

/// `ip -batch` + `bridge -batch` of the same entries; with `nexthops`, each
/// route through a nexthop object of its own (`nexthop replace id <i> via
/// <net> dev flannel.1 onlink proto 77` + `route replace <net>/24 nhid <i>
/// proto 77`).
fn floor(size: u32, dir: &std::path::Path, run: usize, nexthops: bool) -> Result<Sample, String> {
    let ns = TestNetns::new("bfloor").with_uplink("192.168.255.1/16", "192.168.0.254");
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.168.255.1",
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&["link", "set", "flannel.1", "mtu", "1450", "up"]);
    ns.ip(&["addr", "add", "10.42.0.0/32", "dev", "flannel.1"]);
    let mut ip_batch = String::new();
    let mut bridge_batch = String::new();
    for i in 1..=size {
        let (net, mac, public) = peer_entries(i);
        ip_batch += &format!("neigh replace {net} lladdr {mac} dev flannel.1 nud permanent\n");
        if nexthops {
            ip_batch +=
                &format!("nexthop replace id {i} via {net} dev flannel.1 onlink proto 77\n");
            ip_batch += &format!("route replace {net}/24 nhid {i} proto 77\n");
        } else {
            ip_batch +=
                &format!("route replace {net}/24 via {net} dev flannel.1 onlink proto 77\n");
        }
        bridge_batch += &format!("fdb replace {mac} dev flannel.1 dst {public} self permanent\n");
    }
    let ip_file = dir.join(format!("ip-batch-{run}-{nexthops}"));
    let bridge_file = dir.join(format!("bridge-batch-{run}"));
    std::fs::write(&ip_file, ip_batch).map_err(|e| e.to_string())?;
    std::fs::write(&bridge_file, bridge_batch).map_err(|e| e.to_string())?;
    let started = Instant::now();
    for (tool, file) in [("bridge", &bridge_file), ("ip", &ip_file)] {
        let status = std::process::Command::new(tool)
            .args(["-n", ns.name(), "-batch"])
            .arg(file)
            .status()
            .map_err(|e| format!("{tool} -batch: {e}"))?;
        if !status.success() {
            return Err(format!("{tool} -batch failed in {}", ns.name()));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let routes = count_routes(&ns);
    if routes != size as usize {
        return Err(format!("floor: {routes} routes instead of {size}"));
    }
    Ok(Sample {
        seconds,
        rss_mib: 0.0,
        cpu_seconds: 0.0,
    })
}

fn count_routes(ns: &TestNetns) -> usize {
    ns.ip(&["route", "show", "proto", "77"]).lines().count()
}

async fn agent_run(
    agent: &std::path::Path,
    size: u32,
    dir: &std::path::Path,
    kubeconfig: &std::path::Path,
    netconf: &std::path::Path,
    run: usize,
) -> Result<Sample, String> {
    let ns = TestNetns::new("bagent").with_uplink("192.168.255.1/16", "192.168.0.254");
    let subnet_file = dir.join(format!("subnet-{run}.env"));
    let started = Instant::now();
    let mut child = std::process::Command::new(agent)
        .arg("--node-name=bench-node")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--flannel-conf={}", netconf.display()))
        .arg(format!("--netns={}", ns.path().display()))
        .arg(format!(
            "--data-dir={}",
            dir.join(format!("data-{run}")).display()
        ))
        .arg(format!("--subnet-file={}", subnet_file.display()))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", agent.display()))?;
    let pid = child.id();
    // subnet.env appears after the first complete reconcile with every peer.
    let deadline = started + Duration::from_secs(600);
    while !subnet_file.exists() {
        if Instant::now() > deadline || child.try_wait().map_err(|e| e.to_string())?.is_some() {
            let _ = child.kill();
            return Err(format!("the agent did not finish programming {size} peers"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let usage = integration::bench::usage(pid);
    let (rss_mib, cpu_seconds) = (usage.peak_rss_mib, usage.cpu_seconds);
    let _ = child.kill();
    let _ = child.wait();
    let routes = count_routes(&ns);
    if routes != size as usize {
        return Err(format!("agent: {routes} routes instead of {size}"));
    }
    Ok(Sample {
        seconds,
        rss_mib,
        cpu_seconds,
    })
}

fn report(result: Result<String, String>) -> std::process::ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flannel-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
