//! What a lab is made of, saved as `<dir>/state.json` after every step so a
//! later `flannel-lab status`, `exec` or `down` (or a `down` after a crash
//! half-way through `up`) finds everything.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::process::ProcRef;
use super::LabError;

/// The state file's name inside the lab directory.
pub const STATE_FILE: &str = "state.json";

/// A lab node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Position (0-based).
    pub index: usize,
    /// Kubernetes Node name (`node-0`).
    pub name: String,
    /// Network namespace (`fl-<id>-n0`).
    pub netns: String,
    /// IPv4 podCIDR the lab assigned (as kube-controller-manager would).
    pub pod_cidr: String,
    /// IPv6 podCIDR in a dual-stack lab (`fd00:42:0:1::/64`).
    #[serde(default)]
    pub pod_cidr_v6: Option<String>,
    /// Address of the node's uplink `eth0` (`192.168.1.10`).
    pub uplink_ip: String,
    /// IPv6 address of `eth0` in a dual-stack lab (`fd00:1::10`).
    #[serde(default)]
    pub uplink_ipv6: Option<String>,
    /// Whether the lab runs an agent on this node.
    pub runs_agent: bool,
    /// The running agent, if any.
    pub agent: Option<ProcRef>,
}

/// A lab pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    /// Name (= its network namespace, `fl-<id>-n0p0`).
    pub name: String,
    /// The node it runs on (index).
    pub node: usize,
    /// CNI container id.
    pub container_id: String,
    /// Its IPv4 address, once attached.
    pub ip: Option<String>,
    /// Its IPv6 address (dual-stack), once attached.
    #[serde(default)]
    pub ipv6: Option<String>,
}

/// The whole lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// Lab id (in every namespace name).
    pub id: String,
    /// Lab directory.
    pub dir: PathBuf,
    /// Where `flannel-agent`, `flannel`, `test-apiserver`, `flannel-lab` are.
    pub bin_dir: PathBuf,
    /// `--flannel-backend` given to the agents.
    pub backend: String,
    /// `--cluster-cidr` given to the agents.
    pub cluster_cidr: String,
    /// The underlay namespace (holds the bridge).
    pub underlay: Option<String>,
    /// The "outside" host's namespace, when the lab has one.
    #[serde(default)]
    pub outside: Option<String>,
    /// Whether `/run/netns` did not exist before this lab (then `down`
    /// removes it again when it is empty).
    pub created_run_netns: bool,
    /// The test API server.
    pub apiserver: Option<ProcRef>,
    /// Its URL.
    pub api_url: Option<String>,
    /// How it is secured and how the agents authenticate.
    #[serde(default)]
    pub api: super::auth::ApiSecurity,
    /// Nodes.
    pub nodes: Vec<NodeState>,
    /// Pods.
    pub pods: Vec<PodState>,
}

impl LabState {
    /// Writes `<dir>/state.json` atomically.
    pub fn save(&self) -> Result<(), LabError> {
        let path = self.dir.join(STATE_FILE);
        let step = format!("saving the lab state {}", path.display());
        let text =
            serde_json::to_vec_pretty(self).map_err(|e| LabError::new(&step, e.to_string()))?;
        let tmp = self.dir.join(".state.json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| LabError::new(&step, e.to_string()))
    }

    /// Reads `<dir>/state.json`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<LabState>, LabError> {
        let path = dir.join(STATE_FILE);
        let step = format!("reading the lab state {}", path.display());
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| LabError::new(&step, format!("not a lab state file: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LabError::new(&step, e.to_string())),
        }
    }
}
