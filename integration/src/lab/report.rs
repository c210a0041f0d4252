//! The status table and the pod ping matrix `flannel-lab` prints.

use std::fmt::Write as _;

use super::kernel::{PeerView, Snapshot};
use super::{peer_view, Lab, LabError};
use crate::fixtures::PREFIX;

/// One node's line in the status table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRow {
    /// Node name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// podCIDR from its Node object (`-` once the Node is gone).
    pub pod_cidr: String,
    /// public-ip annotation.
    pub public_ip: Option<String>,
    /// VtepMAC from the backend-data annotation.
    pub vtep_mac: Option<String>,
    /// MAC of flannel.1 in the node's kernel (None: no device).
    pub kernel_mac: Option<String>,
    /// Peers (other Nodes publishing a lease, MAC and public IP).
    pub peers_expected: usize,
    /// Of those, peers with route, neighbour and FDB entry in the kernel.
    pub peers_programmed: usize,
    /// The agent's pid when it runs.
    pub agent: Option<u32>,
    /// Whether the agent runs on this node at all.
    pub runs_agent: bool,
    /// Whether /run/flannel/subnet.env exists.
    pub subnet_env: bool,
}

/// The status table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusTable {
    /// One row per node.
    pub rows: Vec<NodeRow>,
}

impl StatusTable {
    /// The table as text.
    pub fn render(&self) -> String {
        let header = [
            "NODE",
            "PODCIDR",
            "PUBLIC IP",
            "VTEPMAC",
            "FLANNEL.1",
            "PEERS PROGRAMMED",
            "SUBNET.ENV",
            "AGENT",
        ];
        let rows: Vec<[String; 8]> = self
            .rows
            .iter()
            .map(|r| {
                let kernel = match (&r.kernel_mac, &r.vtep_mac) {
                    (None, _) => "absent".to_string(),
                    (Some(k), Some(a)) if k.eq_ignore_ascii_case(a) => "up, same MAC".to_string(),
                    (Some(k), _) => format!("MAC {k}"),
                };
                [
                    r.name.clone(),
                    r.pod_cidr.clone(),
                    r.public_ip.clone().unwrap_or_else(|| "-".into()),
                    r.vtep_mac.clone().unwrap_or_else(|| "-".into()),
                    kernel,
                    format!("{}/{}", r.peers_programmed, r.peers_expected),
                    if r.subnet_env { "yes" } else { "no" }.to_string(),
                    match (r.runs_agent, r.agent) {
                        (false, _) => "none (by hand)".to_string(),
                        (true, Some(pid)) => format!("pid {pid}"),
                        (true, None) => "stopped".to_string(),
                    },
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let mut text = String::new();
        let line = |text: &mut String, cells: Vec<&str>| {
            let cells: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(text, "{}", cells.join("  ").trim_end());
        };
        line(&mut text, header.to_vec());
        for row in &rows {
            line(&mut text, row.iter().map(String::as_str).collect());
        }
        text
    }
}

pub(super) fn status(lab: &Lab) -> Result<StatusTable, LabError> {
    let objects = lab.api()?.list()?;
    let peers: Vec<(String, PeerView, bool)> = objects
        .iter()
        .filter_map(|node| {
            let name = node.metadata.name.clone()?;
            let host_gw = node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(&format!("{PREFIX}backend-type")))
                .is_some_and(|t| t == "host-gw");
            Some((name, peer_view(node)?, host_gw))
        })
        .collect();
    let mut rows = Vec::new();
    for node in lab.nodes() {
        let object = objects
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(node.name.as_str()));
        let annotations = object
            .and_then(|o| o.metadata.annotations.clone())
            .unwrap_or_default();
        let vtep_mac = annotations
            .get(&format!("{PREFIX}backend-data"))
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .and_then(|d| d["VtepMAC"].as_str().map(str::to_string));
        let kernel = Snapshot::read(&node.netns)?;
        let others: Vec<&(String, PeerView, bool)> = peers
            .iter()
            .filter(|(name, _, _)| *name != node.name)
            .collect();
        let programmed = others
            .iter()
            .filter(|(_, peer, host_gw)| {
                if *host_gw {
                    kernel.routes.iter().any(|r| {
                        r.dst == peer.pod_cidr
                            && r.gateway.as_deref() == Some(peer.public_ip.as_str())
                    })
                } else {
                    kernel.entries_for(peer).complete()
                }
            })
            .count();
        rows.push(NodeRow {
            name: node.name.clone(),
            netns: node.netns.clone(),
            pod_cidr: object
                .and_then(|o| o.spec.as_ref()?.pod_cidr.clone())
                .unwrap_or_else(|| "- (no Node)".into()),
            public_ip: annotations.get(&format!("{PREFIX}public-ip")).cloned(),
            vtep_mac,
            kernel_mac: kernel.vtep.as_ref().map(|v| v.mac.clone()),
            peers_expected: others.len(),
            peers_programmed: programmed,
            agent: node.agent.as_ref().filter(|p| p.alive()).map(|p| p.pid),
            runs_agent: node.runs_agent,
            subnet_env: lab.sandbox(node.index).subnet_env().exists(),
        });
    }
    Ok(StatusTable { rows })
}

/// Pings between pods: `results[i][j]` is pod i → pod j (None on the
/// diagonal and for pods without an address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingMatrix {
    /// Pods as (name, node name, address).
    pub pods: Vec<(String, String, Option<String>)>,
    /// Outcomes.
    pub results: Vec<Vec<Option<bool>>>,
}

impl PingMatrix {
    /// Whether every pod reached every other pod.
    pub fn all_ok(&self) -> bool {
        !self.pods.is_empty() && self.results.iter().flatten().all(|r| r.unwrap_or(true))
    }

    /// The matrix as text (`ok`, `FAIL`, `-`).
    pub fn render(&self) -> String {
        if self.pods.is_empty() {
            return "no pods to ping\n".to_string();
        }
        let label = |(name, node, ip): &(String, String, Option<String>)| {
            format!("{name} ({node}, {})", ip.as_deref().unwrap_or("no IP"))
        };
        let labels: Vec<String> = self.pods.iter().map(label).collect();
        let first = labels
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max("from \\ to".len());
        let columns: Vec<String> = self
            .pods
            .iter()
            .map(|(_, _, ip)| ip.clone().unwrap_or_else(|| "-".into()))
            .collect();
        let width = columns.iter().map(String::len).max().unwrap_or(4).max(4);
        let mut text = String::new();
        let _ = write!(text, "{:<first$}", "from \\ to");
        for column in &columns {
            let _ = write!(text, "  {column:<width$}");
        }
        text.push('\n');
        for (label, row) in labels.iter().zip(&self.results) {
            let _ = write!(text, "{label:<first$}");
            for cell in row {
                let cell = match cell {
                    None => "-",
                    Some(true) => "ok",
                    Some(false) => "FAIL",
                };
                let _ = write!(text, "  {cell:<width$}");
            }
            text.truncate(text.trim_end().len());
            text.push('\n');
        }
        text
    }
}

pub(super) fn ping_matrix(lab: &Lab) -> PingMatrix {
    let pods: Vec<(String, String, Option<String>)> = lab
        .pods()
        .iter()
        .map(|p| (p.name.clone(), lab.node(p.node).name.clone(), p.ip.clone()))
        .collect();
    let mut results = vec![vec![None; pods.len()]; pods.len()];
    let jobs: Vec<(usize, usize, &str, &str)> = pods
        .iter()
        .enumerate()
        .flat_map(|(i, (from, _, from_ip))| {
            pods.iter()
                .enumerate()
                .filter_map(move |(j, (_, _, to_ip))| {
                    (i != j && from_ip.is_some())
                        .then_some(())
                        .and(to_ip.as_deref())
                        .map(|to| (i, j, from.as_str(), to))
                })
        })
        .collect();
    // At most 32 pings at a time.
    for chunk in jobs.chunks(32) {
        let outcomes: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&(_, _, from, to)| scope.spawn(move || lab.ping(from, to)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(false))
                .collect()
        });
        for (&(i, j, _, _), ok) in chunk.iter().zip(outcomes) {
            results[i][j] = Some(ok);
        }
    }
    PingMatrix { pods, results }
}
