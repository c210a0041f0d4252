//! First complete PeerSet: time from starting the Node watch (API server
//! already up and filled with N Nodes, in this process) to the first
//! synced snapshot, at each cluster size.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use flannel_embed::config::NetConf;
use flannel_embed::kube_subnet::{watch_peers, AnnotationKeys, Lease, PeerContext, PeerSnapshot};
use tokio::sync::watch;

use super::report::{self, BenchResult, Csv};
use crate::fixtures::{NodeShape, PREFIX};

/// Every run at one cluster size.
#[derive(Debug, Clone)]
pub struct PeerSetSize {
    /// Nodes in the API server besides our own.
    pub nodes: u32,
    /// Seconds per run.
    pub seconds: Vec<f64>,
    /// Peers in the last snapshot.
    pub peers: usize,
    /// Nodes the last snapshot skipped.
    pub skipped: usize,
}

impl PeerSetSize {
    /// Median seconds.
    pub fn median(&self) -> f64 {
        report::median(&self.seconds)
    }
}

/// The first-PeerSet result.
#[derive(Debug, Clone)]
pub struct PeerSet {
    /// Runs per size.
    pub runs: usize,
    /// Per size.
    pub sizes: Vec<PeerSetSize>,
}

impl BenchResult for PeerSet {
    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "first complete PeerSet (watch start -> synced snapshot), {} run(s) each, median",
            self.runs
        );
        let _ = writeln!(
            out,
            "{:>8} {:>12} {:>8} {:>8}",
            "nodes", "seconds", "peers", "skipped"
        );
        for size in &self.sizes {
            let _ = writeln!(
                out,
                "{:>8} {:>12.3} {:>8} {:>8}",
                size.nodes,
                size.median(),
                size.peers,
                size.skipped
            );
        }
        out
    }

    fn files(&self) -> Vec<(String, String)> {
        let mut csv = Csv::new(&["nodes", "run", "seconds", "peers", "skipped"]);
        for size in &self.sizes {
            for (i, seconds) in size.seconds.iter().enumerate() {
                csv.row([
                    size.nodes.to_string(),
                    (i + 1).to_string(),
                    report::num(*seconds, 4),
                    size.peers.to_string(),
                    size.skipped.to_string(),
                ]);
            }
            csv.row([
                size.nodes.to_string(),
                "median".into(),
                report::num(size.median(), 4),
                size.peers.to_string(),
                size.skipped.to_string(),
            ]);
        }
        vec![("peers.csv".into(), csv.into_text())]
    }
}

/// Measures the first complete PeerSet at each size, `runs` times.
pub async fn first_peerset(
    sizes: &[u32],
    runs: usize,
    shape: NodeShape,
) -> Result<PeerSet, String> {
    let runs = runs.max(1);
    let mut result = PeerSet {
        runs,
        sizes: Vec::new(),
    };
    let netconf = NetConf::parse(r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#)
        .map_err(|e| format!("the benchmark's net-conf.json: {e}"))?;
    for &size in sizes {
        let server = super::filled_server("node-a", 1..=size, shape)?;
        let ctx = PeerContext {
            own_name: "node-a".into(),
            own_lease: Lease {
                ipv4: "10.42.0.0/24".parse().ok(),
                ipv6: None,
            },
            keys: AnnotationKeys::new(PREFIX),
            netconf: netconf.clone(),
        };
        let mut seconds = Vec::new();
        let mut last = PeerSnapshot::default();
        for _ in 0..runs {
            let client = server
                .client()
                .map_err(|e| format!("a client for the test API server: {e}"))?;
            let (publish, mut receiver) = watch::channel(PeerSnapshot::default());
            let started = Instant::now();
            let task = tokio::spawn(watch_peers(
                client,
                ctx.clone(),
                publish,
                String::new(),
                |_| {},
            ));
            let synced =
                tokio::time::timeout(Duration::from_secs(300), receiver.wait_for(|s| s.synced))
                    .await
                    .map(|r| r.map(|s| s.clone()));
            let elapsed = started.elapsed();
            task.abort();
            match synced {
                Ok(Ok(snapshot)) => {
                    seconds.push(elapsed.as_secs_f64());
                    last = snapshot;
                }
                Ok(Err(_)) => {
                    return Err(format!(
                        "the peer watch at {size} nodes ended before a complete PeerSet"
                    ))
                }
                Err(_) => return Err(format!("no complete PeerSet at {size} nodes within 300 s")),
            }
        }
        result.sizes.push(PeerSetSize {
            nodes: size,
            seconds,
            peers: last.peers.len(),
            skipped: last.skipped,
        });
    }
    Ok(result)
}
