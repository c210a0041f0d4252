//! Cold sync: a `flannel-agent` process in a fresh namespace programs N
//! peers (API server already up and filled); time until subnet.env appears
//! (written after the first complete reconcile). The floor is the same
//! entries through `ip -batch` + `bridge -batch` in a twin namespace, with
//! plain onlink routes (what upstream programs) and with nexthop objects,
//! interleaved with the agent in the same run.

use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::report::{self, BenchResult, Csv, Marker, Series};
use crate::fixtures::NodeShape;
use crate::netns::TestNetns;

const NETCONF: &str = r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#;

/// One interleaved run at one size.
#[derive(Debug, Clone)]
pub struct ColdRun {
    /// Agent: spawn -> subnet.env, seconds.
    pub agent_seconds: f64,
    /// `ip -batch` + `bridge -batch` with plain onlink routes, seconds.
    pub floor_seconds: f64,
    /// The same with nexthop objects, seconds.
    pub floor_nh_seconds: f64,
    /// Agent peak RSS (VmHWM) at subnet.env, MiB.
    pub agent_peak_rss_mib: f64,
    /// Agent RSS (VmRSS) at subnet.env, MiB.
    pub agent_rss_mib: f64,
    /// Agent CPU (user + system) at subnet.env, seconds.
    pub agent_cpu_seconds: f64,
}

/// Every run at one peer count.
pub type ColdSize = report::SizeRuns<ColdRun>;

impl ColdSize {
    /// Median agent seconds.
    pub fn agent(&self) -> Option<f64> {
        self.median_of(|r| r.agent_seconds)
    }

    /// Median plain-route floor seconds.
    pub fn floor(&self) -> Option<f64> {
        self.median_of(|r| r.floor_seconds)
    }

    /// Median nexthop floor seconds.
    pub fn floor_nh(&self) -> Option<f64> {
        self.median_of(|r| r.floor_nh_seconds)
    }

    /// Median agent / median plain floor (what the table prints).
    pub fn ratio(&self) -> Option<f64> {
        Some(self.agent()? / self.floor()?.max(1e-9))
    }

    /// Median agent peak RSS, MiB.
    pub fn rss(&self) -> Option<f64> {
        self.median_of(|r| r.agent_peak_rss_mib)
    }

    /// Median agent RSS at subnet.env, MiB.
    pub fn rss_now(&self) -> Option<f64> {
        self.median_of(|r| r.agent_rss_mib)
    }

    /// Median agent CPU seconds.
    pub fn cpu(&self) -> Option<f64> {
        self.median_of(|r| r.agent_cpu_seconds)
    }
}

/// The cold-sync result.
#[derive(Debug, Clone)]
pub struct ColdSync {
    /// `FLANNEL_EMBED_NEXTHOPS` as the agent saw it.
    pub nexthops_env: Option<String>,
    /// Per peer count.
    pub sizes: Vec<ColdSize>,
    /// How the peer Nodes look.
    pub shape: NodeShape,
    /// The machine (nproc, kernel), for the plot's title.
    pub machine: String,
}

impl ColdSync {
    /// The result at `peers` peers, if measured.
    pub fn size(&self, peers: u32) -> Option<&ColdSize> {
        self.sizes.iter().find(|s| s.peers == peers)
    }

    fn runs_label(&self) -> String {
        report::runs_label(&self.sizes)
    }

    /// `cold-sync.svg`: seconds against peers, agent vs both floors.
    pub fn svg(&self) -> String {
        let points = |f: fn(&ColdSize) -> Option<f64>| -> Vec<(f64, f64)> {
            self.sizes
                .iter()
                .filter_map(|s| f(s).map(|v| (f64::from(s.peers), v)))
                .collect()
        };
        let agent_label = match &self.nexthops_env {
            Some(value) => format!(
                "flannel-agent ({}={value})",
                flannel_embed::netlink::NEXTHOPS_ENV
            ),
            None => "flannel-agent (spawn -> subnet.env)".to_string(),
        };
        report::line_plot(
            &format!("Cold sync, median per size: {}", self.machine),
            "peers (Nodes in the API server)",
            "seconds until every entry is in the kernel",
            &[
                Series {
                    label: agent_label,
                    color: "#d62728".into(),
                    marker: Marker::Circle,
                    points: points(ColdSize::agent),
                },
                Series {
                    label: "floor: ip/bridge -batch, plain onlink routes".into(),
                    color: "#1f77b4".into(),
                    marker: Marker::Square,
                    points: points(ColdSize::floor),
                },
                Series {
                    label: "floor: ip/bridge -batch, nexthop objects".into(),
                    color: "#2ca02c".into(),
                    marker: Marker::Triangle,
                    points: points(ColdSize::floor_nh),
                },
            ],
        )
    }
}

impl BenchResult for ColdSync {
    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cold sync: spawn -> kernel holds every entry (agent) vs ip/bridge -batch (floor: plain onlink routes; floor nh: nexthop objects), {} Nodes, {}, median",
            self.shape,
            self.runs_label()
        );
        if let Some(value) = &self.nexthops_env {
            let _ = writeln!(
                out,
                "agent runs with {}={value}",
                flannel_embed::netlink::NEXTHOPS_ENV
            );
        }
        let _ = writeln!(
            out,
            "{:>7} {:>10} {:>10} {:>7} {:>11} {:>12} {:>10} {:>10}",
            "peers",
            "agent s",
            "floor s",
            "ratio",
            "floor nh s",
            "agent MiB",
            "peak MiB",
            "agent cpu"
        );
        for size in &self.sizes {
            if let (
                Some(agent),
                Some(floor),
                Some(ratio),
                Some(nh),
                Some(rss),
                Some(peak),
                Some(cpu),
            ) = (
                size.agent(),
                size.floor(),
                size.ratio(),
                size.floor_nh(),
                size.rss_now(),
                size.rss(),
                size.cpu(),
            ) {
                let _ = writeln!(
                    out,
                    "{:>7} {:>10.3} {:>10.3} {:>7.2} {:>11.3} {:>12.1} {:>10.1} {:>10.2}",
                    size.peers, agent, floor, ratio, nh, rss, peak, cpu
                );
            }
            if let Some(line) = size.failure_line() {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    fn files(&self) -> Vec<(String, String)> {
        let mut csv = Csv::new(&[
            "peers",
            "run",
            "agent_s",
            "floor_plain_s",
            "floor_nexthop_s",
            "ratio_agent_to_plain_floor",
            "agent_peak_rss_mib",
            "agent_cpu_s",
            "agent_rss_mib",
            "node_shape",
            "nexthops_env",
            "error",
        ]);
        let env = self.nexthops_env.clone().unwrap_or_default();
        for size in &self.sizes {
            for (i, run) in size.runs.iter().enumerate() {
                csv.row([
                    size.peers.to_string(),
                    (i + 1).to_string(),
                    report::num(run.agent_seconds, 4),
                    report::num(run.floor_seconds, 4),
                    report::num(run.floor_nh_seconds, 4),
                    report::num(run.agent_seconds / run.floor_seconds.max(1e-9), 3),
                    report::num(run.agent_peak_rss_mib, 1),
                    report::num(run.agent_cpu_seconds, 2),
                    report::num(run.agent_rss_mib, 1),
                    self.shape.to_string(),
                    env.clone(),
                    String::new(),
                ]);
            }
            csv.row([
                size.peers.to_string(),
                "median".into(),
                report::opt(size.agent(), 4),
                report::opt(size.floor(), 4),
                report::opt(size.floor_nh(), 4),
                report::opt(size.ratio(), 3),
                report::opt(size.rss(), 1),
                report::opt(size.cpu(), 2),
                report::opt(size.rss_now(), 1),
                self.shape.to_string(),
                env.clone(),
                size.error.clone().unwrap_or_default(),
            ]);
        }
        vec![
            ("cold-sync.csv".into(), csv.into_text()),
            ("cold-sync.svg".into(), self.svg()),
        ]
    }

    fn error(&self) -> Option<String> {
        let failed: Vec<String> = self
            .sizes
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| format!("{} peers: {e}", s.peers)))
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }
}

/// Runs cold sync at each `(peers, runs)` of `plan`: per run the plain
/// floor, the nexthop floor and the agent in turn, with a pause for the
/// kernel between measurements. A size that fails is recorded and the next
/// one runs.
pub async fn cold_sync(plan: &[(u32, usize)], shape: NodeShape) -> Result<ColdSync, String> {
    let agent = super::api::agent_binary()?;
    let mut result = ColdSync {
        nexthops_env: std::env::var(flannel_embed::netlink::NEXTHOPS_ENV).ok(),
        sizes: Vec::new(),
        shape,
        machine: report::machine(),
    };
    for &(peers, runs) in plan {
        let runs = runs.max(1);
        let mut size = ColdSize::new(peers, runs);
        let measured = AssertUnwindSafe(measure_size(&agent, peers, runs, shape, &mut size.runs))
            .catch_unwind()
            .await;
        size.finish(measured);
        result.sizes.push(size);
    }
    Ok(result)
}

async fn measure_size(
    agent: &Path,
    size: u32,
    runs: usize,
    shape: NodeShape,
    out: &mut Vec<ColdRun>,
) -> Result<(), String> {
    let server = super::filled_server("bench-node", 1..=size, shape)?;
    let dir = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let kubeconfig = server
        .write_kubeconfig(dir.path())
        .map_err(|e| format!("writing the kubeconfig: {e}"))?;
    let netconf = dir.path().join("net-conf.json");
    std::fs::write(&netconf, NETCONF).map_err(|e| format!("writing {}: {e}", netconf.display()))?;
    for run in 0..runs {
        let floor_seconds = floor(size, dir.path(), run, false)?;
        settle().await;
        let floor_nh_seconds = floor(size, dir.path(), run, true)?;
        settle().await;
        let (agent_seconds, usage) =
            agent_run(agent, size, dir.path(), &kubeconfig, &netconf, run).await?;
        settle().await;
        eprintln!(
            "cold sync: {} peers, run {}/{runs}: floor {floor_seconds:.3} s, floor nh {floor_nh_seconds:.3} s, agent {agent_seconds:.3} s",
            report::thousands(size.into()),
            run + 1
        );
        out.push(ColdRun {
            agent_seconds,
            floor_seconds,
            floor_nh_seconds,
            agent_peak_rss_mib: usage.peak_rss_mib,
            agent_rss_mib: usage.rss_mib,
            agent_cpu_seconds: usage.cpu_seconds,
        });
    }
    Ok(())
}

/// Deleting a namespace with thousands of entries keeps the kernel busy for
/// a while; let it finish before the next measurement.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
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
/// proto 77`). Returns the seconds both tools took.
fn floor(size: u32, dir: &Path, run: usize, nexthops: bool) -> Result<f64, String> {
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
    std::fs::write(&ip_file, ip_batch)
        .map_err(|e| format!("writing {}: {e}", ip_file.display()))?;
    std::fs::write(&bridge_file, bridge_batch)
        .map_err(|e| format!("writing {}: {e}", bridge_file.display()))?;
    let started = Instant::now();
    for (tool, file) in [("bridge", &bridge_file), ("ip", &ip_file)] {
        let status = Command::new(tool)
            .args(["-n", ns.name(), "-batch"])
            .arg(file)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {tool} -batch: {e}"))?;
        if !status.success() {
            return Err(format!(
                "{tool} -batch {} failed in {}: {status}",
                file.display(),
                ns.name()
            ));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let routes = count_routes(&ns);
    if routes != size as usize {
        return Err(format!(
            "floor{}: {routes} routes instead of {size} in {}",
            if nexthops { " nh" } else { "" },
            ns.name()
        ));
    }
    Ok(seconds)
}

fn count_routes(ns: &TestNetns) -> usize {
    ns.ip(&["route", "show", "proto", "77"]).lines().count()
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One agent run: seconds from spawn to subnet.env, and its usage then.
async fn agent_run(
    agent: &Path,
    size: u32,
    dir: &Path,
    kubeconfig: &Path,
    netconf: &Path,
    run: usize,
) -> Result<(f64, super::Usage), String> {
    let ns = TestNetns::new("bagent").with_uplink("192.168.255.1/16", "192.168.0.254");
    let subnet_file = dir.join(format!("subnet-{run}.env"));
    let started = Instant::now();
    let child = Command::new(agent)
        .arg("--node-name=bench-node")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--flannel-conf={}", netconf.display()))
        .arg(format!("--netns={}", ns.path().display()))
        .arg(format!(
            "--data-dir={}",
            dir.join(format!("data-{run}")).display()
        ))
        .arg(format!("--subnet-file={}", subnet_file.display()))
        .env("RUST_LOG", super::api::agent_log_filter())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", agent.display()))?;
    let mut child = Killed(child);
    let pid = child.0.id();
    // subnet.env appears after the first complete reconcile with every peer.
    let deadline = started + Duration::from_secs(300);
    while !subnet_file.exists() {
        let exited = child
            .0
            .try_wait()
            .map_err(|e| format!("waiting for the agent (pid {pid}): {e}"))?;
        if let Some(status) = exited {
            return Err(format!(
                "the agent exited ({status}) before programming {size} peers"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the agent did not finish programming {size} peers within 300 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let usage = super::usage(pid);
    drop(child);
    let routes = count_routes(&ns);
    if routes != size as usize {
        return Err(format!(
            "agent: {routes} routes instead of {size} in {}",
            ns.name()
        ));
    }
    Ok((seconds, usage))
}
