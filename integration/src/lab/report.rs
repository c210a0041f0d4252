//! The status table and the pod ping matrix `flannel-lab` prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::kernel::{flannel_devices, Family, PeerView, Snapshot, Vtep};
use super::{peer_view_of, Lab, LabError};
use crate::fixtures::PREFIX;

/// One address family of a node in the status table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyRow {
    /// The family.
    pub family: Family,
    /// podCIDR of this family from the Node object (`- (no Node)` once
    /// the Node is gone).
    pub pod_cidr: String,
    /// public-ip (IPv6: public-ipv6) annotation.
    pub public_ip: Option<String>,
    /// VtepMAC from backend-data (IPv6: backend-v6-data); None for
    /// host-gw.
    pub vtep_mac: Option<String>,
    /// The family's VXLAN device in the node's kernel (flannel.1,
    /// flannel-v6.1), None when absent.
    pub device: Option<Vtep>,
    /// Peers publishing this family.
    pub peers_expected: usize,
    /// Of those, peers this node's kernel has programmed for this family
    /// (vxlan: route, neighbour and FDB entry; host-gw: the route via the
    /// peer's public IP on eth0).
    pub peers_programmed: usize,
}

/// One node in the status table: a line per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRow {
    /// Node name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// IPv4 podCIDR from its Node object (`- (no Node)` once the Node is
    /// gone).
    pub pod_cidr: String,
    /// public-ip annotation.
    pub public_ip: Option<String>,
    /// VtepMAC from the backend-data annotation.
    pub vtep_mac: Option<String>,
    /// MAC of flannel.1 in the node's kernel (None: no device).
    pub kernel_mac: Option<String>,
    /// Per family (IPv4 first; IPv6 too in a dual-stack lab).
    pub families: Vec<FamilyRow>,
    /// Flannel VXLAN devices in the node's kernel (any family).
    pub devices: Vec<String>,
    /// Peers (other Nodes publishing a lease, and for vxlan a MAC, and a
    /// public IP), in any family.
    pub peers_expected: usize,
    /// Of those, peers programmed in every family they publish.
    pub peers_programmed: usize,
    /// The agent's pid when it runs.
    pub agent: Option<u32>,
    /// Whether the agent runs on this node at all.
    pub runs_agent: bool,
    /// Whether /run/flannel/subnet.env exists.
    pub subnet_env: bool,
}

impl NodeRow {
    /// The row of `family`, if the lab has it.
    pub fn family(&self, family: Family) -> Option<&FamilyRow> {
        self.families.iter().find(|f| f.family == family)
    }
}

/// The status table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusTable {
    /// The agents' `--flannel-backend`.
    pub backend: String,
    /// One row per node.
    pub rows: Vec<NodeRow>,
}

impl StatusTable {
    /// Every row expects and has programmed every other row as a peer.
    pub fn everyone_has_everyone(&self) -> bool {
        let others = self.rows.len().saturating_sub(1);
        self.rows
            .iter()
            .all(|r| r.peers_programmed == others && r.peers_expected == others)
    }

    /// The table as text: one line per node and family; host-gw has no
    /// VTEPMAC column and its DEVICE column says `none` (no flannel
    /// device) unless one is left over.
    pub fn render(&self) -> String {
        let host_gw = self.backend == "host-gw";
        let wireguard = self.backend == "wireguard-native";
        let dual = self.rows.iter().any(|r| r.families.len() > 1);
        let mut header = vec!["NODE"];
        if dual {
            header.push("FAMILY");
        }
        header.extend(["PODCIDR", "PUBLIC IP"]);
        if wireguard {
            header.push("PUBLIC KEY");
        } else if !host_gw {
            header.push("VTEPMAC");
        }
        header.extend([
            if host_gw { "DEVICE" } else { "FLANNEL DEVICE" },
            "PEERS PROGRAMMED",
            "SUBNET.ENV",
            "AGENT",
        ]);
        let dash = || "-".to_string();
        let mut rows: Vec<Vec<String>> = Vec::new();
        for r in &self.rows {
            for (n, f) in r.families.iter().enumerate() {
                let first = n == 0;
                let mut cells = vec![if first { r.name.clone() } else { String::new() }];
                if dual {
                    cells.push(f.family.to_string());
                }
                cells.push(f.pod_cidr.clone());
                cells.push(f.public_ip.clone().unwrap_or_else(dash));
                if wireguard {
                    // The first 8 characters are what people compare.
                    cells.push(f.vtep_mac.as_ref().map_or_else(dash, |k| {
                        format!("{}...", k.chars().take(8).collect::<String>())
                    }));
                } else if !host_gw {
                    cells.push(f.vtep_mac.clone().unwrap_or_else(dash));
                }
                cells.push(if host_gw {
                    match (first, r.devices.is_empty()) {
                        (false, _) => String::new(),
                        (true, true) => "none".to_string(),
                        (true, false) => format!("{} (not host-gw's)", r.devices.join(",")),
                    }
                } else {
                    match (&f.device, &f.vtep_mac) {
                        (None, _) => "absent".to_string(),
                        (Some(d), key) if wireguard => match key {
                            Some(k) if *k == d.mac => {
                                format!("{} port {}, same key", d.name, d.port)
                            }
                            _ => format!("{} port {}, OTHER key", d.name, d.port),
                        },
                        (Some(d), mac) => {
                            let state = if d.up { "up" } else { "down" };
                            match mac {
                                Some(m) if m.eq_ignore_ascii_case(&d.mac) => {
                                    format!("{} {state}, same MAC", d.name)
                                }
                                _ => format!("{} {state}, MAC {}", d.name, d.mac),
                            }
                        }
                    }
                });
                cells.push(format!("{}/{}", f.peers_programmed, f.peers_expected));
                if first {
                    cells.push(if r.subnet_env { "yes" } else { "no" }.to_string());
                    cells.push(match (r.runs_agent, r.agent) {
                        (false, _) => "none (by hand)".to_string(),
                        (true, Some(pid)) => format!("pid {pid}"),
                        (true, None) => "stopped".to_string(),
                    });
                } else {
                    cells.extend([String::new(), String::new()]);
                }
                rows.push(cells);
            }
        }
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
        line(&mut text, header.clone());
        for row in &rows {
            line(&mut text, row.iter().map(String::as_str).collect());
        }
        text
    }
}

pub(super) fn status(lab: &Lab) -> Result<StatusTable, LabError> {
    let objects = lab.api()?.list()?;
    let families = lab.families();
    // (family, name, view, is host-gw) of every Node that publishes the
    // family.
    let peers: Vec<(Family, String, PeerView, bool)> = families
        .iter()
        .flat_map(|&family| {
            objects.iter().filter_map(move |node| {
                let name = node.metadata.name.clone()?;
                let host_gw = node
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(&format!("{PREFIX}backend-type")))
                    .is_some_and(|t| t == "host-gw");
                Some((family, name, peer_view_of(node, family)?, host_gw))
            })
        })
        .collect();
    let wireguard = lab.backend() == "wireguard-native";
    let mut rows = Vec::new();
    for (index, node) in lab.nodes().iter().enumerate() {
        let object = objects
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(node.name.as_str()));
        let annotations = object
            .and_then(|o| o.metadata.annotations.clone())
            .unwrap_or_default();
        let mut family_rows = Vec::new();
        // Peer name → programmed in every family it publishes so far.
        let mut complete: BTreeMap<&str, bool> = BTreeMap::new();
        for &family in &families {
            let kernel = Snapshot::read_family(&node.netns, family)?;
            let wg_device = match family {
                Family::V4 => super::wg::WG_DEVICE,
                Family::V6 => super::wg::WG_DEVICE_V6,
            };
            // The single-device modes carry IPv6 on flannel-wg too.
            let (wg_device, wg_dump) = if wireguard {
                match lab.wg_show(index, wg_device)? {
                    Some(dump) => (wg_device, Some(dump)),
                    None if family == Family::V6 => (
                        super::wg::WG_DEVICE,
                        lab.wg_show(index, super::wg::WG_DEVICE)?,
                    ),
                    None => (wg_device, None),
                }
            } else {
                (wg_device, None)
            };
            let single_device = wg_device == super::wg::WG_DEVICE && family == Family::V6;
            let (ip_key, data_key) = match family {
                Family::V4 => ("public-ip", "backend-data"),
                Family::V6 => ("public-ipv6", "backend-v6-data"),
            };
            let vtep_mac = annotations
                .get(&format!("{PREFIX}{data_key}"))
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .and_then(|d| {
                    d[if wireguard { "PublicKey" } else { "VtepMAC" }]
                        .as_str()
                        .map(str::to_string)
                });
            let pod_cidr = object
                .and_then(|o| {
                    let spec = o.spec.as_ref()?;
                    spec.pod_cidrs
                        .iter()
                        .flatten()
                        .chain(&spec.pod_cidr)
                        .find(|c| Family::of(c) == family)
                        .cloned()
                })
                .unwrap_or_else(|| {
                    if object.is_some() {
                        "-".into()
                    } else {
                        "- (no Node)".into()
                    }
                });
            let mut expected = 0;
            let mut programmed = 0;
            for (_, name, peer, host_gw) in peers
                .iter()
                .filter(|(f, name, _, _)| *f == family && *name != node.name)
            {
                expected += 1;
                let ok = if wireguard {
                    wg_dump.as_ref().is_some_and(|dump| {
                        dump.peer(&peer.public_key).is_some_and(|p| {
                            if single_device {
                                // One peer for both families; its endpoint
                                // is the IPv4 row's business.
                                return p.allowed_ips.contains(&peer.pod_cidr);
                            }
                            p.allowed_ips.contains(&peer.pod_cidr)
                                && p.endpoint.as_deref()
                                    == peer
                                        .port
                                        .map(|port| super::wg::endpoint(&peer.public_ip, port))
                                        .as_deref()
                        })
                    })
                } else if *host_gw {
                    kernel.host_gw_route(peer)
                } else {
                    kernel.entries_for(peer).complete()
                };
                programmed += usize::from(ok);
                *complete.entry(name.as_str()).or_insert(true) &= ok;
            }
            family_rows.push(FamilyRow {
                family,
                pod_cidr,
                public_ip: annotations.get(&format!("{PREFIX}{ip_key}")).cloned(),
                vtep_mac,
                device: if wireguard {
                    wg_dump.as_ref().map(|dump| Vtep {
                        name: wg_device.to_string(),
                        vni: 0,
                        port: u64::from(dump.listen_port),
                        learning: false,
                        mtu: 0,
                        // The device's public key stands where vxlan's MAC
                        // does: what peers must know.
                        mac: dump.public_key.clone(),
                        local: None,
                        link: None,
                        up: true,
                        addrs: Vec::new(),
                    })
                } else {
                    kernel.vtep.clone()
                },
                peers_expected: expected,
                peers_programmed: programmed,
            });
        }
        let v4 = family_rows.first().cloned().unwrap_or_default();
        rows.push(NodeRow {
            name: node.name.clone(),
            netns: node.netns.clone(),
            pod_cidr: v4.pod_cidr.clone(),
            public_ip: v4.public_ip.clone(),
            vtep_mac: v4.vtep_mac.clone(),
            kernel_mac: v4.device.as_ref().map(|v| v.mac.clone()),
            families: family_rows,
            devices: flannel_devices(&node.netns)?,
            peers_expected: complete.len(),
            peers_programmed: complete.values().filter(|ok| **ok).count(),
            agent: node.agent.as_ref().filter(|p| p.alive()).map(|p| p.pid),
            runs_agent: node.runs_agent,
            subnet_env: lab.sandbox(node.index).subnet_env().exists(),
        });
    }
    Ok(StatusTable {
        backend: lab.backend().to_string(),
        rows,
    })
}

/// Pings between pods over one address family: `results[i][j]` is pod i
/// → pod j's address of that family (None on the diagonal and for pods
/// without an address of the family).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingMatrix {
    /// The family pinged.
    pub family: Family,
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

pub(super) fn ping_matrix(lab: &Lab, family: Family) -> PingMatrix {
    let pods: Vec<(String, String, Option<String>)> = lab
        .pods()
        .iter()
        .map(|p| {
            let ip = match family {
                Family::V4 => p.ip.clone(),
                Family::V6 => p.ipv6.clone(),
            };
            (p.name.clone(), lab.node(p.node).name.clone(), ip)
        })
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
    PingMatrix {
        family,
        pods,
        results,
    }
}
