//! flannel-embed benchmarks. Figures are printed, never asserted; every
//! scenario also writes CSV into `--out` (default `target/bench/`).
//!
//! - `flannel-bench peers [--nodes 1000,5000,10000]`: time from starting
//!   the Node watch (API server already up and filled) to the first
//!   complete PeerSet, at each cluster size.
//! - `events`, `churn`, `cni`, `data-plane`, `cold-sync`, `wg-cold-sync`,
//!   `wg-throughput`: see `--help`.
//! - `flannel-bench all`: every scenario in turn with its default sizes,
//!   then a summary of the goals (met / not met / failed) and the total
//!   wall time; exits non-zero when a scenario failed.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use integration::bench::{api, cold, cost, peerset, plane, suite, wireguard};
use integration::fixtures::NodeShape;

#[derive(Parser)]
#[command(
    name = "flannel-bench",
    about = "flannel-embed benchmarks (figures, not assertions)"
)]
struct Args {
    /// Directory for the CSV files (and cold-sync.svg); created if missing.
    /// Default: target/bench of the workspace this binary was built in.
    #[arg(long, global = true, value_name = "DIR")]
    out: Option<PathBuf>,
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
        /// Peer Nodes as a kubelet keeps them (about 15 KB each) or
        /// `minimal` (only what flannel reads).
        #[arg(long, default_value_t = NodeShape::Kubelet)]
        nodes_shape: NodeShape,
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
        /// Peer Nodes as a kubelet keeps them or `minimal`.
        #[arg(long, default_value_t = NodeShape::Kubelet)]
        nodes_shape: NodeShape,
    },
    /// Idle churn: status-only Node updates; kernel writes, CPU, RSS.
    Churn {
        #[arg(long, default_value_t = 5000)]
        peers: u32,
        #[arg(long, default_value_t = 20)]
        rate: u32,
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Peer Nodes as a kubelet keeps them or `minimal`.
        #[arg(long, default_value_t = NodeShape::Kubelet)]
        nodes_shape: NodeShape,
    },
    /// Event cost: with N peers programmed, `--events` kubelet-shaped Node
    /// creates in one stream, then their deletes; the agent's CPU time per
    /// event (every thread's schedstat, idle rate subtracted) until the
    /// kernel shows the last route added (removed). Writes event-cost.csv.
    EventCost {
        /// Peer counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1000u32, 5000, 10000])]
        peers: Vec<u32>,
        /// Creates (and deletes) per run.
        #[arg(long, default_value_t = 500)]
        events: u32,
        /// Runs per size against one agent (medians printed).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Peer Nodes as a kubelet keeps them or `minimal`.
        #[arg(long, default_value_t = NodeShape::Kubelet)]
        nodes_shape: NodeShape,
    },
    /// CNI ADD+DEL through `flannel` (the workspace build and the static
    /// one, which integration/build-static-cni.sh builds first) vs the
    /// bare `bridge` delegate, then the same with the cheaper `loopback`
    /// delegate (twice the pods; less noise). Per pod, interleaved, the
    /// order rotating; the pods are the samples; 95 % intervals by
    /// bootstrap.
    Cni {
        #[arg(long, default_value_t = 200)]
        pods: u32,
    },
    /// Pod-to-pod iperf3, RTT and path MTU over the overlay vs the underlay.
    DataPlane {
        /// iperf3 seconds per direction and run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Runs in one lab, overlay and underlay interleaved (medians
        /// printed).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Cold sync: a `flannel-agent` process in a fresh namespace programs N
    /// peers (API already up); the same entries through `ip -batch` and
    /// `bridge -batch` in a twin namespace are the floor (plain onlink
    /// routes, as upstream programs them), and the same again with nexthop
    /// objects for comparison. Set FLANNEL_EMBED_NEXTHOPS=off to time the
    /// agent's plain-route fallback. Writes cold-sync.csv and cold-sync.svg.
    ColdSync {
        /// Peer counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1000u32, 5000, 10000, 20000])]
        peers: Vec<u32>,
        /// Runs per size, agent and floor interleaved (medians printed).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Peer Nodes as a kubelet keeps them (about 15 KB each) or
        /// `minimal` (only what flannel reads).
        #[arg(long, default_value_t = NodeShape::Kubelet)]
        nodes_shape: NodeShape,
    },
    /// wireguard-native cold sync on the userspace path (wireguard-go): a
    /// `flannel-agent --flannel-backend wireguard-native` process in a
    /// fresh namespace programs N peers (API already up) until subnet.env;
    /// the floor is one `wg setconf` of the same peers into an already
    /// running wireguard-go in a twin namespace (its start-up, which the
    /// agent's figure includes, not counted), and the agent's own UAPI
    /// set=1 request written straight to its socket. Every wireguard-go
    /// runs with a private /run. Writes wg-cold-sync.csv.
    WgColdSync {
        /// Peer counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [100u32, 1000, 5000])]
        peers: Vec<u32>,
        /// Runs per size, agent and floors interleaved (medians printed).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Pod-to-pod iperf3 TCP through the wireguard-go tunnel of a 2-node
    /// wireguard-native lab vs node-to-node over the bare underlay, with
    /// the CPU wireguard-go uses. Writes wg-throughput.csv.
    WgThroughput {
        /// iperf3 seconds per path and run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Runs, tunnel and underlay interleaved (medians printed).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The `cni` scenario's measured loop, run by the scenario itself inside
    /// the node (spec as JSON on stdin, samples as JSON on stdout).
    #[command(hide = true)]
    CniLoop,
    /// Every scenario with its default sizes (cold sync 1,000 and 5,000
    /// peers 3 runs, 10,000 and 20,000 one run; data plane 3 runs;
    /// wireguard cold sync 100, 1,000 and 5,000 peers 3 runs; wireguard
    /// throughput 3 runs), then
    /// the goal summary and the total wall time. A failing scenario does
    /// not stop the others; the exit status is non-zero if any failed.
    All,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Scenario::CniLoop = args.scenario {
        return cni_loop();
    }
    let out = args.out.unwrap_or_else(suite::default_out_dir);
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
    let ok = runtime.block_on(async {
        match args.scenario {
            Scenario::Peers {
                nodes,
                runs,
                nodes_shape,
            } => suite::run(
                "peers",
                &out,
                peerset::first_peerset(&nodes, runs, nodes_shape),
            )
            .await
            .1
            .error
            .is_none(),
            Scenario::Events {
                peers,
                events,
                rate,
                nodes_shape,
            } => suite::run(
                "events",
                &out,
                api::event_latency(peers, events, rate, nodes_shape),
            )
            .await
            .1
            .error
            .is_none(),
            Scenario::Churn {
                peers,
                rate,
                seconds,
                nodes_shape,
            } => suite::run(
                "churn",
                &out,
                api::idle_churn(peers, rate, seconds, nodes_shape),
            )
            .await
            .1
            .error
            .is_none(),
            Scenario::EventCost {
                peers,
                events,
                runs,
                nodes_shape,
            } => suite::run(
                "event-cost",
                &out,
                cost::event_cost(&peers, events, runs, nodes_shape),
            )
            .await
            .1
            .error
            .is_none(),
            Scenario::Cni { pods } => suite::run("cni", &out, suite::cni_overhead(pods))
                .await
                .1
                .error
                .is_none(),
            Scenario::DataPlane { seconds, runs } => {
                suite::run("data-plane", &out, plane::data_plane(seconds, runs))
                    .await
                    .1
                    .error
                    .is_none()
            }
            Scenario::ColdSync {
                peers,
                runs,
                nodes_shape,
            } => {
                let plan: Vec<(u32, usize)> = peers.iter().map(|&p| (p, runs)).collect();
                suite::run("cold-sync", &out, cold::cold_sync(&plan, nodes_shape))
                    .await
                    .1
                    .error
                    .is_none()
            }
            Scenario::WgColdSync { peers, runs } => {
                let plan: Vec<(u32, usize)> = peers.iter().map(|&p| (p, runs)).collect();
                suite::run("wg-cold-sync", &out, wireguard::wg_cold_sync(&plan))
                    .await
                    .1
                    .error
                    .is_none()
            }
            Scenario::WgThroughput { seconds, runs } => suite::run(
                "wg-throughput",
                &out,
                wireguard::wg_throughput(seconds, runs),
            )
            .await
            .1
            .error
            .is_none(),
            Scenario::All => suite::all(&out).await,
            Scenario::CniLoop => false,
        }
    });
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// `flannel-bench cni-loop`: no runtime, no output but the samples.
fn cni_loop() -> std::process::ExitCode {
    let spec: plane::CniLoopSpec = match serde_json::from_reader(std::io::stdin().lock()) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("flannel-bench cni-loop: the spec on stdin: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match plane::cni_loop(&spec) {
        Ok(json) => {
            println!("{json}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flannel-bench cni-loop: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
