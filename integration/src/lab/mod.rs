//! The local multi-node lab: N "nodes" that are network namespaces on one
//! machine, each running its own `flannel-agent` process against the test
//! API server, with pods attached through the conflist each agent wrote.
//! The `flannel-lab` binary and the lab e2e tests both drive it.
//!
//! # Layout (lab id `ID`, directory `DIR`)
//!
//! ```text
//!  netns fl-ID-ul   bridge br0 192.168.1.1/24 (the underlay "switch" and
//!                   the nodes' default gateway); port nI per node;
//!                   dual-stack: also fd00:1::1/64 on br0
//!  netns fl-ID-nI   node I: eth0 192.168.1.(10+I)/24, default via .1;
//!                   dual-stack: also fd00:1::(10+I)/64 (nodad), default
//!                   via fd00:1::1, IPv6 forwarding on; podCIDR the I-th
//!                   /24 of the cluster CIDR (and the I-th /64 of its IPv6
//!                   CIDR); the agent programs flannel.1 (and flannel-v6.1)
//!                   for vxlan or one route per peer for host-gw, plus its
//!                   masquerade rules; cni0 comes with pods
//!  netns fl-ID-nIpJ pod J on node I (eth0 from the bridge plugin; an IPv4
//!                   and, dual-stack, an IPv6 address)
//!  netns fl-ID-ext  with `outside_host` (`--outside-host`): a host "on the
//!                   internet", eth0 203.0.113.10/24 (dual-stack: also
//!                   2001:db8:1::10/64) on a veth to the underlay namespace,
//!                   which routes to it (203.0.113.1, 2001:db8:1::1): the
//!                   nodes reach it through their default route
//!  DIR/state.json   what exists (namespaces, pids, API URL)
//!  DIR/kubeconfig   for kubectl and the agents
//!  DIR/logs/        apiserver.log, node-I.log
//!  DIR/nodes/node-I/run      the node's /run      (run/flannel/subnet.env)
//!  DIR/nodes/node-I/var-lib  the node's /var/lib  (cni/, rancher/k3s/)
//! ```
//!
//! # Options
//!
//! [`Options::backend`] is passed to every agent as `--flannel-backend`:
//! `vxlan` (the default) or `host-gw`; the status table and the checks
//! follow it (host-gw: no VXLAN device, a peer is programmed when its
//! `<lease> via <peer uplink IP> dev eth0` route is there).
//! [`Options::cluster_cidr`] is one IPv4 CIDR or a dual-stack pair
//! (`10.42.0.0/16,fd00:42::/56`, either order, as k3s's `--cluster-cidr`):
//! then the underlay, the Nodes' `spec.podCIDRs` and the pods get both
//! families, and [`Lab::ping_matrices`] has one matrix per family.
//! [`Options::agent_args`], [`Options::node_agent_args`],
//! [`Options::agent_env`] and [`Options::read_only_proc_sys`] change how
//! every agent runs (extra flags, per node too, extra environment, a
//! read-only `/proc/sys`); [`Lab::start_agent`] keeps using them after a
//! [`Lab::stop_agent`] on the same `Lab`.
//!
//! Nothing is created in the machine's own network namespace: every link,
//! address and route lives in the lab's namespaces, and the only traffic
//! outside them is the agents' and tools' API calls on 127.0.0.1.
//!
//! # Isolation
//!
//! The test API server listens on 127.0.0.1 in the machine's namespace.
//! Each agent runs in that namespace too (so it reaches the server) with
//! `--netns /run/netns/fl-ID-nI`: the library does all its netlink work in
//! the node's namespace. The agent runs in a private mount namespace where
//! the node's `run` and `var-lib` directories are mounted over `/run` and
//! `/var/lib` (see [`sandbox`]), so it uses the default paths
//! (`/run/flannel/subnet.env`, `/var/lib/rancher/k3s`) and still writes
//! only into `DIR`. CNI plugins and `flannel-lab exec` run the same way but
//! also inside the node's network namespace.
//!
//! ```no_run
//! use integration::lab::{Lab, Options};
//!
//! let mut options = Options::for_tests("doc", std::path::Path::new("/tmp/doc-lab"));
//! options.nodes = 2;
//! let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
//! println!("{}", lab.status().unwrap().render());
//! lab.down().unwrap();
//! ```

pub mod api;
pub mod auth;
pub mod cni;
pub mod kernel;
pub mod process;
pub mod report;
pub mod sandbox;
pub mod state;
pub mod util;
pub mod wg;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeAddress};

use crate::apiserver::ready_node;
use crate::fixtures::PREFIX;
use api::NodeApi;
use auth::{AgentCredential, ApiSecurity, AuthFiles};
use kernel::{PeerView, Snapshot};
use process::{log_tail, spawn_background, ProcRef};
use sandbox::NodeSandbox;
use state::{LabState, NodeState, PodState, STATE_FILE};
use util::{ip, ip_in, poll, run, ClusterCidrs};

pub use kernel::Family;
pub use report::{FamilyRow, NodeRow, PingMatrix, StatusTable};

/// Default lab directory.
pub const DEFAULT_DIR: &str = "/tmp/flannel-lab";
/// Default lab id.
pub const DEFAULT_ID: &str = "lab";
/// Most nodes a lab can have (uplinks 192.168.1.10 to .249).
pub const MAX_NODES: usize = 240;
/// The underlay gateway (the bridge's address in the underlay namespace).
pub const UNDERLAY_GATEWAY: &str = "192.168.1.1";
/// The underlay's IPv6 gateway (dual-stack labs).
pub const UNDERLAY_GATEWAY_V6: &str = "fd00:1::1";
/// The outside host's address ([`Options::outside_host`]), outside every
/// lab network; the nodes reach it through the underlay gateway.
pub const OUTSIDE_IP: &str = "203.0.113.10";
/// The outside host's IPv6 address (dual-stack labs).
pub const OUTSIDE_IPV6: &str = "2001:db8:1::10";
/// The underlay namespace's address on the outside host's link.
const OUTSIDE_GATEWAY: &str = "203.0.113.1";
/// The same for IPv6.
const OUTSIDE_GATEWAY_V6: &str = "2001:db8:1::1";
/// Where Debian's containernetworking-plugins are.
pub const SYSTEM_CNI_DIR: &str = crate::cni_runner::SYSTEM_CNI_DIR;

/// Something the lab could not do, naming the step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {message}")]
pub struct LabError {
    /// What the lab was doing.
    pub step: String,
    /// What went wrong.
    pub message: String,
}

impl LabError {
    /// An error in `step`.
    pub fn new(step: &str, message: impl Into<String>) -> LabError {
        LabError {
            step: step.to_string(),
            message: message.into(),
        }
    }
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab id: part of every namespace name (`fl-<id>-n0`).
    pub id: String,
    /// Lab directory (state, logs, the nodes' files).
    pub dir: PathBuf,
    /// Number of nodes.
    pub nodes: usize,
    /// `--flannel-backend` for the agents: `vxlan`, `host-gw` or
    /// `wireguard-native`.
    pub backend: String,
    /// `--cluster-cidr`: an IPv4 CIDR, or an IPv4 and an IPv6 CIDR
    /// (`10.42.0.0/16,fd00:42::/56`) for a dual-stack lab. Node podCIDRs
    /// are its /24s (and /64s) in order.
    pub cluster_cidr: String,
    /// Pods attached per node (once the node's subnet.env exists).
    pub pods_per_node: usize,
    /// Nodes that get a namespace, an uplink and a Node object but no agent
    /// and no pods (for peers set up by hand).
    pub without_agent: BTreeSet<usize>,
    /// How long to wait for each stage (annotations, subnet.env, peers).
    pub wait: Duration,
    /// Where the workspace binaries are.
    pub bin_dir: PathBuf,
    /// RUST_LOG for the agents.
    pub rust_log: String,
    /// Tear down a lab already set up in `dir` first instead of refusing.
    pub replace: bool,
    /// Add the outside host `fl-<id>-ext` ([`OUTSIDE_IP`]) behind the
    /// underlay gateway, for traffic leaving the cluster (masquerade).
    pub outside_host: bool,
    /// Extra flags appended to every agent's command line (after the
    /// lab's own, so they win where a flag is given twice).
    pub agent_args: Vec<String>,
    /// Extra flags for the agent of one node (by index), appended after
    /// [`Options::agent_args`]: e.g. its own `--healthz-bind` port.
    pub node_agent_args: BTreeMap<usize, Vec<String>>,
    /// Extra environment for every agent (after RUST_LOG, so it may
    /// override it).
    pub agent_env: Vec<(String, String)>,
    /// The agents see `/proc/sys` read-only (as in a non-privileged pod):
    /// their sysctl writes fail with EROFS. Only the agents: CNI plugins
    /// and `exec` still see it writable.
    pub read_only_proc_sys: bool,
    /// How the API server is secured and how the agents authenticate
    /// (default: HTTPS with an ECDSA CA, the shipped RBAC, client
    /// certificates).
    pub api: ApiSecurity,
}

impl Options {
    /// The defaults of `flannel-lab up` with binaries from `bin_dir`.
    pub fn new(bin_dir: &Path) -> Options {
        Options {
            id: DEFAULT_ID.to_string(),
            dir: PathBuf::from(DEFAULT_DIR),
            nodes: 2,
            backend: "vxlan".to_string(),
            cluster_cidr: "10.42.0.0/16".to_string(),
            pods_per_node: 1,
            without_agent: BTreeSet::new(),
            wait: Duration::from_secs(30),
            bin_dir: bin_dir.to_path_buf(),
            rust_log: "info".to_string(),
            replace: false,
            outside_host: false,
            agent_args: Vec::new(),
            node_agent_args: BTreeMap::new(),
            agent_env: Vec::new(),
            read_only_proc_sys: false,
            api: ApiSecurity::default(),
        }
    }

    /// Options for a test: a unique id from `tag`, the directory `dir`
    /// (e.g. a tempdir), the binaries next to the running test.
    pub fn for_tests(tag: &str, dir: &Path) -> Options {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .take(8)
            .collect();
        let mut options = Options::new(&workspace_bin_dir());
        options.id = format!(
            "{tag}{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        options.dir = dir.to_path_buf();
        options.rust_log = "info,flannel_embed=debug".to_string();
        options
    }
}

/// The directory of the running test's (or tool's) executable, without a
/// trailing `deps`: where `cargo build --workspace --bins` put the
/// workspace binaries.
pub fn workspace_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The namespace-name prefix of lab `id`.
pub fn netns_prefix(id: &str) -> String {
    format!("fl-{id}-")
}

/// The uplink address of node `index`.
pub fn uplink_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, (10 + index) as u8)
}

/// The IPv6 uplink address of node `index` in a dual-stack lab
/// (`fd00:1::10` for node 0: the IPv4 last octet written as the last group).
pub fn uplink_ipv6(index: usize) -> Ipv6Addr {
    format!("fd00:1::{}", 10 + index)
        .parse()
        .unwrap_or(Ipv6Addr::UNSPECIFIED)
}

/// Every `ip netns` name.
pub fn netns_list() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The binaries the lab runs.
const BINARIES: [&str; 4] = ["flannel-agent", "flannel", "test-apiserver", "flannel-lab"];
/// Entries `up` creates in the lab directory (all `down` removes).
const DIR_ENTRIES: [&str; 7] = [
    STATE_FILE,
    ".state.json.tmp",
    "kubeconfig",
    "apiserver.url",
    "logs",
    "nodes",
    "auth",
];

/// Set in the environment of every process the lab starts (API server,
/// agents) to the lab directory: how `down` finds them when their command
/// line names no lab file (an in-cluster agent has no `--kubeconfig`).
const LAB_DIR_ENV: &str = "FLANNEL_LAB_DIR";

/// A running lab. Dropping a lab that [`Lab::up`] made tears it down
/// unless [`Lab::keep`] was called; a lab from [`Lab::open`] is left alone.
pub struct Lab {
    state: LabState,
    children: HashMap<u32, Child>,
    api: OnceLock<NodeApi>,
    rust_log: String,
    agent_extras: AgentExtras,
    teardown_on_drop: bool,
}

/// What [`Options`] adds to every agent start. Kept with the `Lab` (like
/// RUST_LOG), not in the state file: a lab from [`Lab::open`] starts its
/// agents without them.
#[derive(Debug, Clone, Default)]
struct AgentExtras {
    args: Vec<String>,
    node_args: BTreeMap<usize, Vec<String>>,
    env: Vec<(String, String)>,
    proc_sys: sandbox::ProcSys,
}

impl AgentExtras {
    fn of(options: &Options) -> AgentExtras {
        AgentExtras {
            args: options.agent_args.clone(),
            node_args: options.node_agent_args.clone(),
            env: options.agent_env.clone(),
            proc_sys: if options.read_only_proc_sys {
                sandbox::ProcSys::ReadOnly
            } else {
                sandbox::ProcSys::Writable
            },
        }
    }
}

impl Lab {
    // ------------------------------------------------------------- building

    /// Builds the lab (see the module docs), reporting progress through
    /// `progress`. On failure everything made so far is torn down.
    pub fn up(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Lab, LabError> {
        // Absolute paths: the agents get them on their command line.
        let options = &Options {
            dir: absolute(&options.dir),
            bin_dir: absolute(&options.bin_dir),
            ..options.clone()
        };
        let cluster = check_options(options)?;
        prepare_dir(options, progress)?;
        let run_netns_existed = Path::new("/run/netns").exists();
        let mut lab = Lab {
            state: LabState {
                id: options.id.clone(),
                dir: options.dir.clone(),
                bin_dir: options.bin_dir.clone(),
                backend: options.backend.clone(),
                cluster_cidr: options.cluster_cidr.clone(),
                underlay: None,
                outside: None,
                created_run_netns: !run_netns_existed,
                apiserver: None,
                api_url: None,
                api: options.api.clone(),
                nodes: Vec::new(),
                pods: Vec::new(),
            },
            children: HashMap::new(),
            api: OnceLock::new(),
            rust_log: options.rust_log.clone(),
            agent_extras: AgentExtras::of(options),
            teardown_on_drop: true,
        };
        lab.state.save()?;
        // On an error, dropping `lab` tears down what exists so far.
        match lab.build(options, cluster, progress) {
            Ok(()) => Ok(lab),
            Err(mut error) => {
                progress("failed; removing what this `up` made");
                drop(lab);
                error
                    .message
                    .push_str(" (what this `up` had made is removed again)");
                Err(error)
            }
        }
    }

    fn build(
        &mut self,
        options: &Options,
        cluster: ClusterCidrs,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LabError> {
        let started = Instant::now();
        let dual = cluster.v6.is_some();
        self.make_underlay(dual)?;
        progress(&format!(
            "underlay: netns {} with bridge br0 {UNDERLAY_GATEWAY}/24{}",
            self.underlay(),
            if dual {
                format!(" and {UNDERLAY_GATEWAY_V6}/64")
            } else {
                String::new()
            }
        ));
        if options.outside_host {
            self.make_outside(dual)?;
            progress(&format!(
                "outside host: netns {}, eth0 {OUTSIDE_IP}/24{} behind the underlay gateway",
                self.state.outside.as_deref().unwrap_or_default(),
                if dual {
                    format!(" and {OUTSIDE_IPV6}/64")
                } else {
                    String::new()
                }
            ));
        }
        for index in 0..options.nodes {
            let planning = |what: String| {
                LabError::new(
                    "planning addresses",
                    format!("{what} has no subnet for node {index}"),
                )
            };
            let pod_cidr = cluster
                .v4
                .slash24(index as u32)
                .map(|c| c.to_string())
                .ok_or_else(|| planning(cluster.v4.to_string()))?;
            let pod_cidr_v6 = match cluster.v6 {
                Some(v6) => Some(
                    v6.slash64(index as u32)
                        .map(|c| c.to_string())
                        .ok_or_else(|| planning(v6.to_string()))?,
                ),
                None => None,
            };
            let node = NodeState {
                index,
                name: format!("node-{index}"),
                netns: format!("{}n{index}", netns_prefix(&options.id)),
                pod_cidr,
                pod_cidr_v6,
                uplink_ip: uplink_ip(index).to_string(),
                uplink_ipv6: dual.then(|| uplink_ipv6(index).to_string()),
                runs_agent: !options.without_agent.contains(&index),
                agent: None,
            };
            self.state.nodes.push(node.clone());
            self.state.save()?;
            self.make_node(&node)?;
            match &node.uplink_ipv6 {
                Some(v6) => progress(&format!(
                    "{}: netns {}, eth0 {}/24 and {v6}/64 on the underlay, default via {UNDERLAY_GATEWAY} and {UNDERLAY_GATEWAY_V6}",
                    node.name, node.netns, node.uplink_ip
                )),
                None => progress(&format!(
                    "{}: netns {}, eth0 {}/24 on the underlay, default via {UNDERLAY_GATEWAY}",
                    node.name, node.netns, node.uplink_ip
                )),
            }
        }

        self.start_apiserver()?;
        progress(&format!(
            "API server {} (kubectl --kubeconfig {})",
            self.api_url(),
            self.kubeconfig().display()
        ));
        for node in self.state.nodes.clone() {
            self.api()?.create(&lab_node(&node))?;
            match &node.pod_cidr_v6 {
                Some(v6) => progress(&format!(
                    "{}: Node created with podCIDRs {},{v6}",
                    node.name, node.pod_cidr
                )),
                None => progress(&format!(
                    "{}: Node created with podCIDR {}",
                    node.name, node.pod_cidr
                )),
            }
        }

        for node in self.state.nodes.clone() {
            if node.runs_agent {
                self.start_agent(node.index)?;
                let pid = self.state.nodes[node.index]
                    .agent
                    .as_ref()
                    .map_or(0, |p| p.pid);
                progress(&format!(
                    "{}: flannel-agent pid {pid} (log {})",
                    node.name,
                    self.agent_log(node.index).display()
                ));
            } else {
                progress(&format!("{}: no agent (set up by hand)", node.name));
            }
        }

        let agents: Vec<usize> = self.agent_nodes();
        for &index in &agents {
            let node = self.wait_published(index, options.wait)?;
            let annotations = node.metadata.annotations.unwrap_or_default();
            progress(&format!(
                "{}: annotations published: public-ip {}, backend-data {}",
                self.state.nodes[index].name,
                annotations
                    .get(&format!("{PREFIX}public-ip"))
                    .map_or("-", String::as_str),
                annotations
                    .get(&format!("{PREFIX}backend-data"))
                    .map_or("-", String::as_str),
            ));
        }

        let mut with_subnet_env = Vec::new();
        for &index in &agents {
            let name = self.state.nodes[index].name.clone();
            if self.wait_subnet_env(index, options.wait)? {
                progress(&format!(
                    "{name}: /run/flannel/subnet.env written by the agent"
                ));
                with_subnet_env.push(index);
            } else {
                progress(&format!(
                    "{name}: the agent wrote no /run/flannel/subnet.env within {:?} (see {}), so no pods are attached on this node",
                    options.wait,
                    self.agent_log(index).display()
                ));
            }
        }

        for &index in &with_subnet_env {
            for pod in 0..options.pods_per_node {
                let attached = self.attach_pod(index, pod)?;
                let addresses: Vec<&str> = attached
                    .ip
                    .iter()
                    .chain(&attached.ipv6)
                    .map(String::as_str)
                    .collect();
                progress(&format!(
                    "{}: pod {} has {}",
                    self.state.nodes[index].name,
                    attached.name,
                    if addresses.is_empty() {
                        "no address".to_string()
                    } else {
                        addresses.join(" and ")
                    }
                ));
            }
        }

        if agents.len() > 1 {
            let table = self.wait_peers_programmed(options.wait);
            for row in &table.rows {
                if row.agent.is_some() {
                    progress(&format!(
                        "{}: peers programmed {}/{}",
                        row.name, row.peers_programmed, row.peers_expected
                    ));
                }
            }
        }
        progress(&format!(
            "lab {} up in {:.1?}",
            self.state.id,
            started.elapsed()
        ));
        Ok(())
    }

    fn make_underlay(&mut self, dual: bool) -> Result<(), LabError> {
        let netns = format!("{}ul", netns_prefix(&self.state.id));
        let step = format!("creating the underlay namespace {netns}");
        ip(&step, &["netns", "add", &netns])?;
        self.state.underlay = Some(netns.clone());
        self.state.save()?;
        ip_in(&step, &netns, &["link", "set", "lo", "up"])?;
        ip_in(&step, &netns, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(
            &step,
            &netns,
            &[
                "addr",
                "add",
                &format!("{UNDERLAY_GATEWAY}/24"),
                "dev",
                "br0",
            ],
        )?;
        if dual {
            ip_in(
                &step,
                &netns,
                &[
                    "addr",
                    "add",
                    &format!("{UNDERLAY_GATEWAY_V6}/64"),
                    "dev",
                    "br0",
                    "nodad",
                ],
            )?;
        }
        ip_in(&step, &netns, &["link", "set", "br0", "up"])?;
        Ok(())
    }

    /// The outside host: `fl-<id>-ext` on a veth `ext` from the underlay
    /// namespace, which forwards between it and the nodes.
    fn make_outside(&mut self, dual: bool) -> Result<(), LabError> {
        let netns = format!("{}ext", netns_prefix(&self.state.id));
        let underlay = self.underlay().to_string();
        let step = format!("creating the outside host {netns}");
        ip(&step, &["netns", "add", &netns])?;
        self.state.outside = Some(netns.clone());
        self.state.save()?;
        ip_in(&step, &netns, &["link", "set", "lo", "up"])?;
        ip_in(
            &step,
            &underlay,
            &[
                "link", "add", "ext", "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )?;
        let mut plan = vec![
            (underlay.as_str(), "ext", format!("{OUTSIDE_GATEWAY}/24")),
            (netns.as_str(), "eth0", format!("{OUTSIDE_IP}/24")),
        ];
        if dual {
            plan.push((underlay.as_str(), "ext", format!("{OUTSIDE_GATEWAY_V6}/64")));
            plan.push((netns.as_str(), "eth0", format!("{OUTSIDE_IPV6}/64")));
        }
        for (ns, dev, address) in &plan {
            let mut args = vec!["addr", "add", address.as_str(), "dev", dev];
            if address.contains(':') {
                args.push("nodad");
            }
            ip_in(&step, ns, &args)?;
        }
        ip_in(&step, &underlay, &["link", "set", "ext", "up"])?;
        ip_in(&step, &netns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &step,
            &netns,
            &["route", "add", "default", "via", OUTSIDE_GATEWAY],
        )?;
        let mut sysctls = vec!["net.ipv4.ip_forward=1"];
        if dual {
            ip_in(
                &step,
                &netns,
                &["-6", "route", "add", "default", "via", OUTSIDE_GATEWAY_V6],
            )?;
            sysctls.push("net.ipv6.conf.all.forwarding=1");
        }
        for sysctl in sysctls {
            run(
                &step,
                Command::new("ip").args(["netns", "exec", &underlay, "sysctl", "-qw", sysctl]),
            )?;
        }
        Ok(())
    }

    fn make_node(&mut self, node: &NodeState) -> Result<(), LabError> {
        let step = format!("creating node {} (namespace {})", node.name, node.netns);
        let underlay = self.underlay().to_string();
        let port = format!("n{}", node.index);
        ip(&step, &["netns", "add", &node.netns])?;
        let ns = node.netns.as_str();
        ip_in(&step, ns, &["link", "set", "lo", "up"])?;
        ip_in(
            &step,
            ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &underlay,
            ],
        )?;
        ip_in(
            &step,
            &underlay,
            &["link", "set", &port, "master", "br0", "up"],
        )?;
        ip_in(
            &step,
            ns,
            &[
                "addr",
                "add",
                &format!("{}/24", node.uplink_ip),
                "dev",
                "eth0",
            ],
        )?;
        if let Some(v6) = &node.uplink_ipv6 {
            // nodad: usable at once (flannel-v6.1's local address).
            ip_in(
                &step,
                ns,
                &["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"],
            )?;
        }
        ip_in(&step, ns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &step,
            ns,
            &[
                "route",
                "add",
                "default",
                "via",
                UNDERLAY_GATEWAY,
                "dev",
                "eth0",
            ],
        )?;
        // What k3s's agent does on a node before flannel starts.
        let mut sysctls = vec!["net.ipv4.ip_forward=1"];
        if node.uplink_ipv6.is_some() {
            ip_in(
                &step,
                ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    UNDERLAY_GATEWAY_V6,
                    "dev",
                    "eth0",
                ],
            )?;
            sysctls.push("net.ipv6.conf.all.forwarding=1");
        }
        for sysctl in sysctls {
            run(
                &step,
                Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw", sysctl]),
            )?;
        }
        self.sandbox(node.index)
            .prepare()
            .map_err(|e| LabError::new(&step, format!("node directory: {e}")))?;
        std::fs::create_dir_all(self.state.dir.join("logs"))
            .map_err(|e| LabError::new(&step, format!("logs directory: {e}")))?;
        Ok(())
    }

    fn start_apiserver(&mut self) -> Result<(), LabError> {
        let step = "starting the test API server";
        let url_file = self.state.dir.join("apiserver.url");
        let mut command = Command::new(self.bin("test-apiserver"));
        command
            .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(self.kubeconfig())
            .env(LAB_DIR_ENV, &self.state.dir);
        let security = self.state.api.clone();
        if let Some(algorithm) = &security.tls {
            let files = self.auth();
            let tokens = files.prepare(self.state.nodes.len())?;
            command
                .args(["--tls", algorithm, "--cert-dir"])
                .arg(files.dir())
                .arg("--token-auth-file")
                .arg(files.tokens())
                .arg("--rbac")
                .arg(files.rbac())
                .arg("--authz-log")
                .arg(files.authz_log());
            for node in &self.state.nodes {
                let kubeconfig = files
                    .node_kubeconfig(node.index)
                    .to_string_lossy()
                    .into_owned();
                match security.credential {
                    AgentCredential::ClientCert => command.arg("--client-kubeconfig").arg(format!(
                        "{}/{}={kubeconfig}",
                        AuthFiles::cert_user(&node.name),
                        auth::CERT_GROUP
                    )),
                    AgentCredential::Token => command
                        .arg("--token-kubeconfig")
                        .arg(format!("{}={kubeconfig}", tokens[node.index])),
                    AgentCredential::InCluster => &mut command,
                };
            }
        }
        let (proc, child) = spawn_background(
            "test-apiserver",
            command,
            Some(&url_file),
            &self.state.dir.join("logs/apiserver.log"),
        )?;
        self.children.insert(proc.pid, child);
        self.state.apiserver = Some(proc.clone());
        self.state.save()?;
        let url = poll(Duration::from_secs(15), || {
            let text = std::fs::read_to_string(&url_file).ok()?;
            let line = text.lines().next()?.trim().to_string();
            (text.contains('\n') && line.starts_with("http")).then_some(line)
        })
        .ok_or_else(|| {
            LabError::new(
                step,
                format!(
                    "no URL within 15 s (running: {}); log:\n{}",
                    proc.alive(),
                    log_tail(&self.state.dir.join("logs/apiserver.log"), 20)
                ),
            )
        })?;
        self.state.api_url = Some(url);
        self.state.save()?;
        if security.tls.is_some() && security.credential == AgentCredential::InCluster {
            for index in 0..self.state.nodes.len() {
                self.auth()
                    .write_service_account(&self.service_account_dir(index), index)?;
            }
        }
        Ok(())
    }

    fn wait_published(&self, index: usize, limit: Duration) -> Result<Node, LabError> {
        let name = self.state.nodes[index].name.clone();
        let step = format!("waiting for {name}'s flannel annotations");
        let key = format!("{PREFIX}public-ip");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(node) = self.api()?.get(&name)? {
                let has = node
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(&key));
                if has {
                    return Ok(node);
                }
            }
            if !self.agent_running(index) {
                return Err(LabError::new(
                    &step,
                    format!(
                        "the agent exited; its log ({}):\n{}",
                        self.agent_log(index).display(),
                        log_tail(&self.agent_log(index), 30)
                    ),
                ));
            }
            if Instant::now() >= deadline {
                return Err(LabError::new(
                    &step,
                    format!(
                        "none after {limit:?}; the agent's log ({}):\n{}",
                        self.agent_log(index).display(),
                        log_tail(&self.agent_log(index), 30)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `limit` for node `index`'s `/run/flannel/subnet.env`;
    /// an error if the agent exits meanwhile.
    pub fn wait_subnet_env(&self, index: usize, limit: Duration) -> Result<bool, LabError> {
        let path = self.sandbox(index).subnet_env();
        let deadline = Instant::now() + limit;
        loop {
            if path.exists() {
                return Ok(true);
            }
            let node = &self.state.nodes[index];
            if node.runs_agent && !self.agent_running(index) {
                return Err(LabError::new(
                    &format!("waiting for {}'s subnet.env", node.name),
                    format!(
                        "the agent exited; its log:\n{}",
                        log_tail(&self.agent_log(index), 30)
                    ),
                ));
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls the status until every agent node has every peer programmed
    /// (or `limit` passes) and returns the last status.
    pub fn wait_peers_programmed(&self, limit: Duration) -> StatusTable {
        let mut last = None;
        let done = poll(limit, || {
            let table = self.status().ok()?;
            let complete = table
                .rows
                .iter()
                .filter(|r| r.agent.is_some())
                .all(|r| r.peers_expected > 0 && r.peers_programmed == r.peers_expected);
            if complete {
                Some(table)
            } else {
                last = Some(table);
                None
            }
        });
        done.or(last).unwrap_or_default()
    }

    // ------------------------------------------------------------- opening

    /// The lab whose state is in `dir` (for `status`, `exec`, `down` from
    /// another process). Dropping it leaves the lab running.
    pub fn open(dir: &Path) -> Result<Lab, LabError> {
        let state = LabState::load(dir)?.ok_or_else(|| {
            LabError::new(
                "opening the lab",
                format!(
                    "no lab in {} (no {STATE_FILE}); start one with `flannel-lab up`",
                    dir.display()
                ),
            )
        })?;
        Ok(Lab {
            state,
            children: HashMap::new(),
            api: OnceLock::new(),
            rust_log: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
            agent_extras: AgentExtras::default(),
            teardown_on_drop: false,
        })
    }

    /// Leaves the lab running when this value is dropped (what
    /// `flannel-lab up` does before it exits).
    pub fn keep(mut self) {
        self.teardown_on_drop = false;
        // The children run on in their own sessions; init reaps them.
        self.children.clear();
    }

    // ------------------------------------------------------------- tearing down

    /// Stops every process, deletes every namespace and removes what the lab
    /// wrote to its directory. Returns what could not be removed (empty:
    /// nothing is left).
    pub fn down(mut self) -> Result<Vec<String>, LabError> {
        self.teardown_on_drop = false;
        let problems = self.teardown();
        if problems.is_empty() {
            Ok(problems)
        } else {
            Err(LabError::new("tearing down the lab", problems.join("; ")))
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for index in 0..self.state.nodes.len() {
            self.stop_agent(index);
        }
        if let Some(proc) = self.state.apiserver.take() {
            let child = self.children.get_mut(&proc.pid);
            proc.stop(Duration::from_secs(5), child);
            if proc.alive() {
                problems.push(format!("test-apiserver pid {} still runs", proc.pid));
            }
        }
        self.api = OnceLock::new();
        problems.extend(remove_leftovers(&self.state.id, &self.state.dir));
        if self.state.created_run_netns {
            remove_run_netns_if_unused();
        }
        problems
    }

    // ------------------------------------------------------------- accessors

    /// The lab's state (nodes, pods, processes).
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// The lab id.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NodeState] {
        &self.state.nodes
    }

    /// Node `index`.
    pub fn node(&self, index: usize) -> &NodeState {
        &self.state.nodes[index]
    }

    /// The pods.
    pub fn pods(&self) -> &[PodState] {
        &self.state.pods
    }

    /// The pods on node `index`.
    pub fn pods_on(&self, index: usize) -> Vec<&PodState> {
        self.state.pods.iter().filter(|p| p.node == index).collect()
    }

    /// The underlay namespace.
    pub fn underlay(&self) -> &str {
        self.state.underlay.as_deref().unwrap_or_default()
    }

    /// The API server's URL.
    pub fn api_url(&self) -> &str {
        self.state.api_url.as_deref().unwrap_or_default()
    }

    /// The kubeconfig for the lab's API server (with HTTPS: the admin,
    /// `system:masters`; what `kubectl` and the lab itself use).
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.dir.join("kubeconfig")
    }

    /// How the lab's API server is secured.
    pub fn api_security(&self) -> &ApiSecurity {
        &self.state.api
    }

    /// The lab's authentication files (CA, RBAC, tokens, decision log).
    pub fn auth(&self) -> AuthFiles {
        AuthFiles::new(&self.state.dir)
    }

    /// Node `index`'s in-cluster service-account directory, as the agent
    /// sees it at `/var/run/secrets/kubernetes.io/serviceaccount`.
    pub fn service_account_dir(&self, index: usize) -> PathBuf {
        self.sandbox(index)
            .run_dir
            .join("secrets/kubernetes.io/serviceaccount")
    }

    /// Rotates node `index`'s service-account token: the server refuses
    /// the old one from now on, and an in-cluster agent finds the new one
    /// in its token file. Returns the new token.
    pub fn rotate_token(&self, index: usize) -> Result<String, LabError> {
        let in_cluster = self.state.api.credential == AgentCredential::InCluster;
        let sa_token = in_cluster.then(|| self.service_account_dir(index).join("token"));
        self.auth().rotate_token(index, sa_token.as_deref())
    }

    /// Every authorization decision the API server made so far.
    pub fn authz_decisions(&self) -> Result<Vec<crate::apiserver::AuthzDecision>, LabError> {
        self.auth().decisions()
    }

    /// Node `index`'s agent log.
    pub fn agent_log(&self, index: usize) -> PathBuf {
        self.state
            .dir
            .join("logs")
            .join(format!("{}.log", self.state.nodes[index].name))
    }

    /// Node `index`'s filesystem view (`/run`, `/var/lib` stand-ins).
    pub fn sandbox(&self, index: usize) -> NodeSandbox {
        let node = &self.state.nodes[index];
        NodeSandbox::new(&node.netns, &self.state.dir.join("nodes").join(&node.name))
    }

    /// The node index for `name`: `node-0`, `0`, `n0` or the namespace.
    pub fn find_node(&self, name: &str) -> Option<usize> {
        self.state.nodes.iter().position(|n| {
            n.name == name
                || n.netns == name
                || n.index.to_string() == name
                || format!("n{}", n.index) == name
        })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.state.bin_dir.join(name)
    }

    /// The agent nodes (indices).
    pub fn agent_nodes(&self) -> Vec<usize> {
        self.state
            .nodes
            .iter()
            .filter(|n| n.runs_agent)
            .map(|n| n.index)
            .collect()
    }

    /// The Node API client (connected on first use).
    pub fn api(&self) -> Result<&NodeApi, LabError> {
        if let Some(api) = self.api.get() {
            return Ok(api);
        }
        let api = match self.state.api.tls {
            Some(_) => NodeApi::connect_kubeconfig(&self.kubeconfig())?,
            None => NodeApi::connect(self.api_url())?,
        };
        Ok(self.api.get_or_init(|| api))
    }

    // ------------------------------------------------------------- agents

    /// Starts node `index`'s agent (again).
    pub fn start_agent(&mut self, index: usize) -> Result<(), LabError> {
        let node = self.state.nodes[index].clone();
        if self.agent_running(index) {
            return Ok(());
        }
        let sandbox = self.sandbox(index);
        let mut args: Vec<String> = vec!["--node-name".into(), node.name.clone()];
        let security = &self.state.api;
        let kubeconfig = match (&security.tls, security.credential) {
            (None, _) => Some(self.kubeconfig()),
            (Some(_), AgentCredential::InCluster) => None,
            (Some(_), _) => Some(self.auth().node_kubeconfig(index)),
        };
        if let Some(path) = &kubeconfig {
            args.extend(["--kubeconfig".into(), path.to_string_lossy().into_owned()]);
        }
        args.extend([
            "--netns".into(),
            format!("/run/netns/{}", node.netns),
            "--flannel-backend".into(),
            self.state.backend.clone(),
            "--cluster-cidr".into(),
            self.state.cluster_cidr.clone(),
        ]);
        let extras = &self.agent_extras;
        args.extend(extras.args.iter().cloned());
        args.extend(extras.node_args.get(&index).into_iter().flatten().cloned());
        let mut command = sandbox.agent(self.bin("flannel-agent"), &args, extras.proc_sys);
        command.env("RUST_LOG", &self.rust_log);
        command.env(LAB_DIR_ENV, &self.state.dir);
        if kubeconfig.is_none() {
            // As in a pod: no kubeconfig anywhere, the service's address
            // in the environment, the token under /run/secrets (the
            // node's own /run inside the sandbox).
            let port = self
                .api_url()
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string();
            command
                .env_remove("KUBECONFIG")
                .env("HOME", self.sandbox(index).run_dir)
                .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
                .env("KUBERNETES_SERVICE_PORT", port);
        }
        command.envs(extras.env.iter().map(|(k, v)| (k, v)));
        let (proc, child) = spawn_background(
            &format!("flannel-agent {}", node.name),
            command,
            None,
            &self.agent_log(index),
        )?;
        self.children.insert(proc.pid, child);
        self.state.nodes[index].agent = Some(proc);
        self.state.save()
    }

    /// Stops node `index`'s agent (SIGTERM; the task leaves the data path
    /// in place), SIGKILL after 5 s.
    pub fn stop_agent(&mut self, index: usize) {
        if let Some(proc) = self.state.nodes[index].agent.take() {
            let mut child = self.children.remove(&proc.pid);
            proc.stop(Duration::from_secs(5), child.as_mut());
            let _ = self.state.save();
        }
    }

    /// Whether node `index`'s agent runs.
    pub fn agent_running(&self, index: usize) -> bool {
        self.state.nodes[index]
            .agent
            .as_ref()
            .is_some_and(ProcRef::alive)
    }

    // ------------------------------------------------------------- nodes

    /// A command run inside node `index` (its mounts and network
    /// namespace): what `flannel-lab exec` runs.
    pub fn node_command(&self, index: usize, program: &str, args: &[&str]) -> Command {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.sandbox(index).inside(program, &args)
    }

    /// Runs a command inside node `index` and returns its output.
    pub fn exec(&self, index: usize, program: &str, args: &[&str]) -> Result<Output, LabError> {
        util::output(
            &format!("running {program} in {}", self.state.nodes[index].name),
            &mut self.node_command(index, program, args),
        )
    }

    /// `ip -n <node netns> <args>`.
    pub fn ip(&self, index: usize, args: &[&str]) -> Result<String, LabError> {
        let node = &self.state.nodes[index];
        ip_in(&format!("ip on {}", node.name), &node.netns, args)
    }

    /// Node `index`'s subnet.env, as the agent wrote it.
    pub fn subnet_env(&self, index: usize) -> Option<String> {
        std::fs::read_to_string(self.sandbox(index).subnet_env()).ok()
    }

    /// Node `index`'s kernel state (flannel.1, routes, neighbours, FDB).
    pub fn kernel(&self, index: usize) -> Result<Snapshot, LabError> {
        Snapshot::read(&self.state.nodes[index].netns)
    }

    /// Node `index`'s kernel state for `family` (IPv6: flannel-v6.1 and
    /// the IPv6 routes).
    pub fn kernel_of(&self, index: usize, family: Family) -> Result<Snapshot, LabError> {
        Snapshot::read_family(&self.state.nodes[index].netns, family)
    }

    /// Whether the lab is dual-stack (its cluster CIDR has an IPv6 part).
    pub fn dual_stack(&self) -> bool {
        self.state.nodes.iter().any(|n| n.pod_cidr_v6.is_some())
            || self.state.cluster_cidr.contains(':')
    }

    /// The lab's address families: IPv4, and IPv6 when dual-stack.
    pub fn families(&self) -> Vec<Family> {
        if self.dual_stack() {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    /// The `--flannel-backend` the agents run with.
    pub fn backend(&self) -> &str {
        &self.state.backend
    }

    /// The outside host's namespace, when the lab has one.
    pub fn outside(&self) -> Option<&str> {
        self.state.outside.as_deref()
    }

    /// The Node object of node `index` (None once deleted).
    pub fn node_object(&self, index: usize) -> Result<Option<Node>, LabError> {
        self.api()?.get(&self.state.nodes[index].name)
    }

    /// How node `index` appears to its peers (from its Node object), if it
    /// publishes everything a peer needs.
    pub fn peer_view(&self, index: usize) -> Result<Option<PeerView>, LabError> {
        Ok(self.node_object(index)?.as_ref().and_then(peer_view))
    }

    /// [`Lab::peer_view`] for `family` (IPv6: its IPv6 podCIDR,
    /// `backend-v6-data` and `public-ipv6`).
    pub fn peer_view_of(&self, index: usize, family: Family) -> Result<Option<PeerView>, LabError> {
        Ok(self
            .node_object(index)?
            .as_ref()
            .and_then(|n| peer_view_of(n, family)))
    }

    /// `kubectl --kubeconfig <lab kubeconfig> <args>`.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output, LabError> {
        util::output(
            "running kubectl",
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(self.kubeconfig())
                .args(args),
        )
    }

    // ------------------------------------------------------------- pods

    /// Creates pod `pod` on node `index` (namespace `fl-<id>-n<i>p<j>`) and
    /// attaches it with the node's conflist (CNI ADD inside the node).
    pub fn attach_pod(&mut self, index: usize, pod: usize) -> Result<PodState, LabError> {
        let cni_path = vec![self.state.bin_dir.clone(), PathBuf::from(SYSTEM_CNI_DIR)];
        self.attach_pod_with(index, pod, &cni_path, None)
    }

    /// [`Lab::attach_pod`] with plugins from `cni_path` and the conflist at
    /// `conflist` (default: the agent's), both as paths outside the node:
    /// e.g. what an install-cni run put in the node's CNI directories.
    pub fn attach_pod_with(
        &mut self,
        index: usize,
        pod: usize,
        cni_path: &[PathBuf],
        conflist: Option<&Path>,
    ) -> Result<PodState, LabError> {
        let node = self.state.nodes[index].clone();
        let name = format!("{}p{pod}", node.netns);
        let step = format!("attaching pod {name} on {}", node.name);
        ip(&step, &["netns", "add", &name])?;
        let mut state = PodState {
            name: name.clone(),
            node: index,
            container_id: name.clone(),
            ip: None,
            ipv6: None,
        };
        self.state.pods.push(state.clone());
        self.state.save()?;
        ip_in(&step, &name, &["link", "set", "lo", "up"])?;
        let cni_path = std::env::join_paths(cni_path)
            .map_err(|e| LabError::new(&step, format!("CNI_PATH: {e}")))?;
        let mut args = vec![
            "cni".to_string(),
            "ADD".to_string(),
            "--container-id".to_string(),
            name.clone(),
            "--netns".to_string(),
            format!("/run/netns/{name}"),
            "--cni-path".to_string(),
            cni_path.to_string_lossy().into_owned(),
        ];
        if let Some(conflist) = conflist {
            args.push("--conflist".to_string());
            args.push(conflist.to_string_lossy().into_owned());
        }
        let output = util::output(
            &step,
            &mut self.sandbox(index).inside(self.bin("flannel-lab"), &args),
        )?;
        if !output.status.success() {
            return Err(LabError::new(
                &step,
                format!(
                    "CNI ADD failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            ));
        }
        let result: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| LabError::new(&step, format!("CNI result is not JSON: {e}")))?;
        let addresses: Vec<&str> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next())
            .collect();
        let first = |family: Family| {
            addresses
                .iter()
                .find(|a| Family::of(a) == family)
                .map(|a| a.to_string())
        };
        state.ip = first(Family::V4);
        state.ipv6 = first(Family::V6);
        let want_v6 = node.pod_cidr_v6.is_some();
        if state.ip.is_none() || (want_v6 && state.ipv6.is_none()) {
            return Err(LabError::new(
                &step,
                format!(
                    "CNI result lacks an {} address: {result}",
                    if state.ip.is_none() { "IPv4" } else { "IPv6" }
                ),
            ));
        }
        if let Some(saved) = self.state.pods.iter_mut().find(|p| p.name == name) {
            *saved = state.clone();
        }
        self.state.save()?;
        Ok(state)
    }

    /// A command run inside pod `name`'s network namespace.
    pub fn pod_command(&self, pod: &str, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", pod, program]).args(args);
        command
    }

    /// Pod `pod`'s address of `family`.
    pub fn pod_ip(&self, pod: &str, family: Family) -> Option<String> {
        let pod = self.state.pods.iter().find(|p| p.name == pod)?;
        match family {
            Family::V4 => pod.ip.clone(),
            Family::V6 => pod.ipv6.clone(),
        }
    }

    /// Whether pod `pod` gets an answer to a ping to `ip` (IPv4 or IPv6)
    /// within 3 s.
    pub fn ping(&self, pod: &str, ip: &str) -> bool {
        self.pod_command(pod, "ping", &["-c", "1", "-i", "0.2", "-w", "3", "-q", ip])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    // ------------------------------------------------------------- reports

    /// The status table: per node (and per family) its podCIDR, public
    /// IP, VtepMAC (vxlan), its flannel device and how many peers its
    /// kernel has fully programmed (vxlan: route, neighbour and FDB entry;
    /// host-gw: the route via the peer's uplink address).
    pub fn status(&self) -> Result<StatusTable, LabError> {
        report::status(self)
    }

    /// IPv4 pings between every two pods.
    pub fn ping_matrix(&self) -> PingMatrix {
        report::ping_matrix(self, Family::V4)
    }

    /// Pings of `family` between every two pods.
    pub fn ping_matrix_of(&self, family: Family) -> PingMatrix {
        report::ping_matrix(self, family)
    }

    /// One ping matrix per family of the lab (IPv4, then IPv6 when
    /// dual-stack).
    pub fn ping_matrices(&self) -> Vec<PingMatrix> {
        self.families()
            .into_iter()
            .map(|f| report::ping_matrix(self, f))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.teardown_on_drop {
            self.teardown_on_drop = false;
            for problem in self.teardown() {
                eprintln!("flannel lab {}: teardown: {problem}", self.state.id);
            }
        }
    }
}

/// A Node as the lab registers it: kubelet's Ready Node with the uplink
/// address(es) as InternalIP and the podCIDR(s) kube-controller-manager
/// would assign (dual-stack: `spec.podCIDRs` IPv4 first, then IPv6).
pub fn lab_node(node: &NodeState) -> Node {
    let mut object = ready_node(&node.name, Some(&node.pod_cidr));
    if let Some(status) = object.status.as_mut() {
        let mut addresses = vec![NodeAddress {
            type_: "InternalIP".into(),
            address: node.uplink_ip.clone(),
        }];
        if let Some(v6) = &node.uplink_ipv6 {
            addresses.push(NodeAddress {
                type_: "InternalIP".into(),
                address: v6.clone(),
            });
        }
        addresses.push(NodeAddress {
            type_: "Hostname".into(),
            address: node.name.clone(),
        });
        status.addresses = Some(addresses);
    }
    if let Some(spec) = object.spec.as_mut() {
        spec.provider_id = Some(format!("k3s://{}", node.name));
        if let Some(v6) = &node.pod_cidr_v6 {
            spec.pod_cidrs = Some(vec![node.pod_cidr.clone(), v6.clone()]);
        }
    }
    object
}

/// What a Node publishes for its IPv4 peers (podCIDR, VtepMAC, public IP).
pub fn peer_view(node: &Node) -> Option<PeerView> {
    peer_view_of(node, Family::V4)
}

/// What a Node publishes for its peers of `family`: the podCIDR of that
/// family (`spec.podCIDRs`, or `spec.podCIDR`), the VtepMAC from
/// `backend-data` / `backend-v6-data` (empty for host-gw's `null`) and
/// `public-ip` / `public-ipv6`.
pub fn peer_view_of(node: &Node, family: Family) -> Option<PeerView> {
    let annotations: &BTreeMap<String, String> = node.metadata.annotations.as_ref()?;
    let spec = node.spec.as_ref()?;
    let pod_cidr = spec
        .pod_cidrs
        .iter()
        .flatten()
        .chain(&spec.pod_cidr)
        .find(|c| Family::of(c) == family)?
        .clone();
    let (public_ip, data) = match family {
        Family::V4 => ("public-ip", "backend-data"),
        Family::V6 => ("public-ipv6", "backend-v6-data"),
    };
    let public_ip = annotations.get(&format!("{PREFIX}{public_ip}"))?.clone();
    let data: serde_json::Value =
        serde_json::from_str(annotations.get(&format!("{PREFIX}{data}"))?).ok()?;
    let vtep_mac = data["VtepMAC"].as_str().unwrap_or_default().to_string();
    let public_key = data["PublicKey"].as_str().unwrap_or_default().to_string();
    let port = data["Port"].as_u64().and_then(|p| u16::try_from(p).ok());
    Some(PeerView {
        pod_cidr,
        vtep_mac,
        public_ip,
        public_key,
        port,
    })
}

fn check_options(options: &Options) -> Result<ClusterCidrs, LabError> {
    let step = "checking the lab options";
    let bad = |message: String| Err(LabError::new(step, message));
    if options.id.is_empty()
        || options.id.len() > 24
        || !options
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return bad(format!(
            "--id {:?}: use 1 to 24 lowercase letters and digits",
            options.id
        ));
    }
    if options.nodes == 0 || options.nodes > MAX_NODES {
        return bad(format!("--nodes {}: use 1 to {MAX_NODES}", options.nodes));
    }
    if !matches!(
        options.backend.as_str(),
        "vxlan" | "host-gw" | "wireguard-native"
    ) {
        return bad(format!(
            "--backend {:?}: the lab runs vxlan, host-gw or wireguard-native",
            options.backend
        ));
    }
    let cluster = ClusterCidrs::parse(&options.cluster_cidr)
        .map_err(|e| LabError::new(step, format!("--cluster-cidr {e}")))?;
    if cluster.v4.slash24_count() < options.nodes as u64 {
        return bad(format!(
            "--cluster-cidr {} holds {} node /24s, fewer than --nodes {}",
            cluster.v4,
            cluster.v4.slash24_count(),
            options.nodes
        ));
    }
    if let Some(v6) = cluster
        .v6
        .filter(|v6| v6.slash64_count() < options.nodes as u64)
    {
        return bad(format!(
            "--cluster-cidr {v6} holds {} node /64s, fewer than --nodes {}",
            v6.slash64_count(),
            options.nodes
        ));
    }
    if let Some(&index) = options.without_agent.iter().find(|&&i| i >= options.nodes) {
        return bad(format!("node {index} without agent does not exist"));
    }
    if let Some(&index) = options
        .node_agent_args
        .keys()
        .find(|&&i| i >= options.nodes)
    {
        return bad(format!(
            "node {index} with extra agent flags does not exist"
        ));
    }
    let dir = absolute(&options.dir);
    for hidden in ["/run", "/var/run", "/var/lib"] {
        if dir.starts_with(hidden) {
            return bad(format!(
                "--dir {}: the lab mounts each node's own directories over {hidden} inside the node, so the lab directory cannot be under it; use e.g. {DEFAULT_DIR}",
                dir.display()
            ));
        }
    }
    for name in BINARIES {
        let path = options.bin_dir.join(name);
        if !path.is_file() {
            return bad(format!(
                "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, or integration/lab.sh)",
                path.display()
            ));
        }
    }
    for plugin in ["bridge", "host-local", "portmap", "bandwidth"] {
        if !Path::new(SYSTEM_CNI_DIR).join(plugin).is_file() {
            return bad(format!(
                "{SYSTEM_CNI_DIR}/{plugin} is missing: install containernetworking-plugins (bash .ci/install-deps)"
            ));
        }
    }
    for tool in [
        "ip", "bridge", "unshare", "setsid", "mount", "sysctl", "ping",
    ] {
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return bad(format!(
                "`{tool}` is not on PATH: install iproute2, util-linux, procps and iputils-ping (bash .ci/install-deps)"
            ));
        }
    }
    Ok(cluster)
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    }
}

fn prepare_dir(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
    let dir = &options.dir;
    let step = format!("preparing the lab directory {}", dir.display());
    if let Some(previous) = LabState::load(dir)? {
        if !options.replace {
            return Err(LabError::new(
                &step,
                format!(
                    "a lab (id {}, {} nodes) is already set up here: run `flannel-lab down --dir {}` first, or `flannel-lab up --replace`",
                    previous.id,
                    previous.nodes.len(),
                    dir.display()
                ),
            ));
        }
        progress(&format!(
            "tearing down the previous lab {} first (--replace)",
            previous.id
        ));
        Lab::open(dir)?.down()?;
    }
    let prefix = netns_prefix(&options.id);
    let stale: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if !stale.is_empty() {
        return Err(LabError::new(
            &step,
            format!(
                "network namespaces of an earlier lab with id {} exist ({}): run `flannel-lab down --id {}` or choose another --id",
                options.id,
                stale.join(", "),
                options.id
            ),
        ));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        let foreign: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !DIR_ENTRIES.contains(&name.as_str()))
            .collect();
        if !foreign.is_empty() {
            return Err(LabError::new(
                &step,
                format!(
                    "it holds files that are not the lab's ({}): choose an empty or new --dir",
                    foreign.join(", ")
                ),
            ));
        }
        // Leftovers of a lab that crashed before it saved its state.
        for entry in DIR_ENTRIES {
            remove_path(&dir.join(entry));
        }
    }
    std::fs::create_dir_all(dir.join("logs"))
        .and_then(|()| std::fs::create_dir_all(dir.join("nodes")))
        .map_err(|e| LabError::new(&step, e.to_string()))
}

fn remove_path(path: &Path) -> Option<String> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result
        .err()
        .map(|e| format!("cannot remove {}: {e}", path.display()))
}

/// Removes what a lab `id` in `dir` may have left: its processes (found by
/// their `--kubeconfig <dir>/kubeconfig` argument), its namespaces
/// (`fl-<id>-*`) and its files in `dir`. Returns what could not be
/// removed. `flannel-lab down` uses it also when the state file is gone.
pub fn remove_leftovers(id: &str, dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let kubeconfig = absolute(dir).join("kubeconfig");
    let marker = format!("{LAB_DIR_ENV}={}", absolute(dir).display());
    for proc in processes_mentioning(&kubeconfig.to_string_lossy())
        .into_iter()
        .chain(processes_with_env(&marker))
    {
        proc.stop(Duration::from_secs(5), None);
        if proc.alive() {
            problems.push(format!("{} (pid {}) still runs", proc.what, proc.pid));
        }
    }
    let prefix = netns_prefix(id);
    let lab_netns: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    // What the agents started inside a node and left running on purpose
    // (wireguard-go outlives its agent, as a kernel device does).
    for proc in processes_in_netns(&lab_netns) {
        proc.stop(Duration::from_secs(5), None);
        if proc.alive() {
            problems.push(format!("{} (pid {}) still runs", proc.what, proc.pid));
        }
    }
    for netns in lab_netns {
        if let Err(e) = ip("deleting namespaces", &["netns", "del", &netns]) {
            problems.push(e.to_string());
        }
    }
    for entry in DIR_ENTRIES {
        problems.extend(remove_path(&dir.join(entry)));
    }
    if dir.exists() && std::fs::remove_dir(dir).is_err() {
        let left: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !left.is_empty() {
            problems.push(format!(
                "{} still holds files that are not the lab's: {}",
                dir.display(),
                left.join(", ")
            ));
        }
    }
    problems
}

/// Processes whose network namespace is one of `names` (`ip netns`
/// names), compared by the namespace's inode.
pub fn processes_in_netns(names: &[String]) -> Vec<ProcRef> {
    use std::os::unix::fs::MetadataExt;
    let inodes: Vec<u64> = names
        .iter()
        .filter_map(|n| std::fs::metadata(Path::new("/run/netns").join(n)).ok())
        .map(|m| m.ino())
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    other_processes(|pid, _| {
        std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino()))
    })
}

/// Processes whose environment has `entry` (`KEY=value`).
fn processes_with_env(entry: &str) -> Vec<ProcRef> {
    other_processes(|pid, _| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
    })
}

/// Processes whose command line has an argument equal to `arg` (the lab's
/// kubeconfig path: its API server and agents, and nothing else).
fn processes_mentioning(arg: &str) -> Vec<ProcRef> {
    other_processes(|_, args| args.contains(&arg.as_bytes()))
}

/// Every process but ours that `wanted(pid, its arguments)` picks, named
/// by its first argument.
fn other_processes(wanted: impl Fn(u32, &[&[u8]]) -> bool) -> Vec<ProcRef> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let own = std::process::id();
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !wanted(pid, &args) {
            continue;
        }
        let what = args
            .first()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default();
        if let Some(start_time) = process::start_time(pid) {
            found.push(ProcRef {
                pid,
                start_time,
                what,
            });
        }
    }
    found
}

/// `/run/netns` when `ip netns add` made it for this lab and nothing else
/// uses it any more: unmounted and removed, as on a fresh machine.
fn remove_run_netns_if_unused() {
    let dir = Path::new("/run/netns");
    let empty = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    if empty {
        let _ = Command::new("umount").arg(dir).output();
        let _ = std::fs::remove_dir(dir);
    }
}
