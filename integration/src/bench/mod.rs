//! Benchmarks that the `flannel-bench` tool runs. Each scenario returns a
//! result that prints its table and writes its CSV ([`report`]); [`suite`]
//! runs them (one, or all in turn with a goal summary).

pub mod api;
pub mod cold;
pub mod cost;
pub mod peerset;
pub mod plane;
pub mod report;
pub mod suite;
pub mod wireguard;

use crate::apiserver::{ready_node, KeyAlgorithm, Options, TestApiServer};
use crate::fixtures::NodeShape;

/// The benchmarks' API server (the one place that starts it, so a switch
/// of transport is one change): `own` with podCIDR 10.42.0.0/24 and the
/// vxlan peers `first..=last` in `shape`.
pub fn filled_server(
    own: &str,
    peers: std::ops::RangeInclusive<u32>,
    shape: NodeShape,
) -> Result<TestApiServer, String> {
    // As a real cluster serves it: HTTPS from the server's own ECDSA CA
    // (k3s's choice), the agent authenticated by a client certificate (the
    // kubeconfig `write_kubeconfig` writes: system:admin).
    let server = TestApiServer::start(Options::default().tls(KeyAlgorithm::EcdsaP256))
        .map_err(|e| format!("starting the test API server: {e}"))?;
    let count = peers.clone().count();
    server
        .create_node(ready_node(own, Some("10.42.0.0/24")))
        .and_then(|_| server.create_nodes(peers.map(|i| shape.vxlan_peer(i))))
        .map_err(|e| format!("filling the API server with {count} {shape} peers: {e}"))?;
    Ok(server)
}

/// The message of a caught panic (`&str` or `String` payloads).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string());
    format!("panicked: {text}")
}

/// What a process has used so far, from `/proc/<pid>/status` and `stat`
/// (zeros when the process is gone).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// user + system CPU seconds.
    pub cpu_seconds: f64,
    /// Current resident set (VmRSS), MiB.
    pub rss_mib: f64,
    /// Peak resident set (VmHWM), MiB.
    pub peak_rss_mib: f64,
}

/// Reads a process's CPU time and memory.
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime: the 14th and 15th fields, counted after the ")"
    // that ends the command name.
    let ticks: f64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0);
    Usage {
        cpu_seconds: ticks / 100.0,
        rss_mib: kib("VmRSS:") / 1024.0,
        peak_rss_mib: kib("VmHWM:") / 1024.0,
    }
}
