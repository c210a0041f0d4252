//! Node objects as a flannel-run cluster has them, for tests and
//! benchmarks.

use std::collections::BTreeMap;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use flannel_embed::wireguard::Key;
use flannel_embed::{Backend, Config, Handle};
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::apiserver::{ready_node, Options, TestApiServer};
use crate::netns::TestNetns;

/// flannel's default annotation prefix.
pub const PREFIX: &str = "flannel.alpha.coreos.com/";

/// A Ready Node that a flannel vxlan agent has annotated: the i-th peer of
/// a lab-like cluster (`10.42.<i>.0/24` on `192.168.<i/250>.<i%250+1>`, a
/// MAC derived from `i`).
pub fn vxlan_peer(index: u32) -> Node {
    let cidr = peer_pod_cidr(index);
    let mac = format!(
        "0a:{:02x}:{:02x}:{:02x}:{:02x}:01",
        (index >> 24) & 0xff,
        (index >> 16) & 0xff,
        (index >> 8) & 0xff,
        index & 0xff
    );
    annotated(
        ready_node(&format!("peer-{index}"), Some(&cidr)),
        &[
            ("kube-subnet-manager", "true"),
            ("backend-type", "vxlan"),
            ("backend-data", &format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)),
            ("public-ip", &peer_public_ip(index)),
        ],
    )
}

/// A Ready Node that a flannel wireguard agent has annotated: the i-th
/// peer with [`vxlan_peer`]'s podCIDR and public IP, the public key
/// [`wireguard_peer_key`]`(i)` and port 51820, as upstream publishes them
/// (`{"PublicKey":"<base64>","Port":51820}`).
pub fn wireguard_peer(index: u32) -> Node {
    let cidr = peer_pod_cidr(index);
    let key = wireguard_peer_key(index).to_base64();
    annotated(
        ready_node(&format!("peer-{index}"), Some(&cidr)),
        &[
            ("kube-subnet-manager", "true"),
            ("backend-type", "wireguard"),
            (
                "backend-data",
                &format!(r#"{{"PublicKey":"{key}","Port":51820}}"#),
            ),
            ("public-ip", &peer_public_ip(index)),
        ],
    )
}

/// How the benchmarks' peer Nodes look: `minimal` is [`vxlan_peer`] as it
/// is; `kubelet` dresses it up as a real kubelet and k3s leave it
/// ([`kubelet_shaped`], about 15 KB of JSON each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeShape {
    /// Only what flannel reads, plus a Ready condition.
    Minimal,
    /// Labels, k3s and kubeadm annotations, five conditions, capacity,
    /// nodeInfo and 50 images, as `kubectl get node -o json` shows them.
    #[default]
    Kubelet,
}

impl NodeShape {
    /// The i-th vxlan peer in this shape.
    pub fn vxlan_peer(self, index: u32) -> Node {
        match self {
            NodeShape::Minimal => vxlan_peer(index),
            NodeShape::Kubelet => kubelet_shaped(vxlan_peer(index), index),
        }
    }

    /// The name `--nodes-shape` takes.
    pub fn name(self) -> &'static str {
        match self {
            NodeShape::Minimal => "minimal",
            NodeShape::Kubelet => "kubelet",
        }
    }
}

impl std::str::FromStr for NodeShape {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "minimal" => Ok(NodeShape::Minimal),
            "kubelet" => Ok(NodeShape::Kubelet),
            other => Err(format!("'{other}' is not a node shape (minimal, kubelet)")),
        }
    }
}

impl std::fmt::Display for NodeShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `node` (the i-th of its cluster) as a k3s agent's kubelet keeps it:
/// well-known and k3s labels, the k3s and kubeadm annotations (the
/// node-args JSON is the large one) beside whatever annotations it had,
/// five conditions, addresses, capacity and allocatable, the kubelet
/// endpoint, nodeInfo, a providerID, a taint on every tenth node and 50
/// images with a digest and a tag name each. About 15 KB of JSON (a little heavier than the 12 KB of a typical k3s node, so the figures err on the heavy side); the
/// same for the same index in every run. Its name, spec.podCIDR(s) and
/// flannel annotations are left as they are.
pub fn kubelet_shaped(mut node: Node, index: u32) -> Node {
    let name = node.metadata.name.clone().unwrap_or_default();
    let internal_ip = format!(
        "172.{}.{}.{}",
        16 + index / 65536 % 16,
        index / 256 % 256,
        index % 256
    );
    let zone = ["a", "b", "c"][index as usize % 3];
    let labels = node.metadata.labels.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        ("beta.kubernetes.io/arch", "amd64".to_string()),
        ("beta.kubernetes.io/os", "linux".to_string()),
        ("beta.kubernetes.io/instance-type", "k3s".to_string()),
        ("kubernetes.io/arch", "amd64".to_string()),
        ("kubernetes.io/os", "linux".to_string()),
        ("kubernetes.io/hostname", name.clone()),
        ("node.kubernetes.io/instance-type", "m6i.xlarge".to_string()),
        ("node-role.kubernetes.io/worker", "true".to_string()),
        ("topology.kubernetes.io/region", "eu-west-1".to_string()),
        ("topology.kubernetes.io/zone", format!("eu-west-1{zone}")),
        (
            "failure-domain.beta.kubernetes.io/region",
            "eu-west-1".to_string(),
        ),
        (
            "failure-domain.beta.kubernetes.io/zone",
            format!("eu-west-1{zone}"),
        ),
        ("k3s.io/hostname", name.clone()),
        ("k3s.io/internal-ip", internal_ip.clone()),
        ("node.k3s.io/pool", format!("pool-{}", index % 7)),
    ] {
        labels.insert(key.to_string(), value);
    }
    let node_args = format!(
        r#"["agent","--server","https://k3s-api.example.internal:6443","--token","********","--node-name","{name}","--node-ip","{internal_ip}","--node-label","node.k3s.io/pool=pool-{pool}","--kubelet-arg","max-pods=110","--kubelet-arg","eviction-hard=memory.available<100Mi,nodefs.available<10%","--kubelet-arg","kube-reserved=cpu=200m,memory=256Mi","--kubelet-arg","system-reserved=cpu=200m,memory=256Mi","--flannel-iface","eth0","--with-node-id","--resolv-conf","/run/systemd/resolve/resolv.conf","--protect-kernel-defaults","--selinux"]"#,
        pool = index % 7
    );
    let annotations = node.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        ("alpha.kubernetes.io/provided-node-ip", internal_ip.clone()),
        ("k3s.io/hostname", name.clone()),
        ("k3s.io/internal-ip", internal_ip.clone()),
        ("k3s.io/node-args", node_args),
        (
            "k3s.io/node-config-hash",
            format!("{:0>52}", format!("{:X}", u64::from(index).wrapping_mul(0x9e37_79b9_7f4a_7c15))),
        ),
        (
            "k3s.io/node-env",
            r#"{"K3S_DATA_DIR":"/var/lib/rancher/k3s/data/9f2d4c9c0e6e1c6f1d7f2a5b0b6e3f4a","K3S_TOKEN":"********","K3S_URL":"https://k3s-api.example.internal:6443"}"#.to_string(),
        ),
        ("kubeadm.alpha.kubernetes.io/cri-socket", "unix:///run/k3s/containerd/containerd.sock".to_string()),
        ("node.alpha.kubernetes.io/ttl", "0".to_string()),
        ("volumes.kubernetes.io/controller-managed-attach-detach", "true".to_string()),
        ("csi.volume.kubernetes.io/nodeid", format!(r#"{{"ebs.csi.aws.com":"i-{index:017x}"}}"#)),
    ] {
        annotations.insert(key.to_string(), value);
    }
    let spec = node.spec.get_or_insert_with(Default::default);
    spec.provider_id = Some(format!("k3s://{name}"));
    if index % 10 == 0 {
        spec.taints = Some(vec![Taint {
            key: "dedicated".into(),
            value: Some("batch".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }]);
    }
    let since = Time(Timestamp::from_second(1_780_000_000 + i64::from(index)).unwrap_or_default());
    let heartbeat =
        Time(Timestamp::from_second(1_790_000_000 + i64::from(index)).unwrap_or_default());
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(heartbeat.clone()),
        last_transition_time: Some(since.clone()),
    };
    let quantities = |pairs: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    };
    let status = node.status.get_or_insert_with(Default::default);
    status.conditions = Some(vec![
        condition(
            "NetworkUnavailable",
            "False",
            "FlannelIsUp",
            "Flannel is running on this node",
        ),
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]);
    status.addresses = Some(vec![
        NodeAddress {
            type_: "InternalIP".into(),
            address: internal_ip,
        },
        NodeAddress {
            type_: "Hostname".into(),
            address: name,
        },
    ]);
    status.capacity = Some(quantities(&[
        ("cpu", "4"),
        ("ephemeral-storage", "101430960Ki"),
        ("hugepages-1Gi", "0"),
        ("hugepages-2Mi", "0"),
        ("memory", "16211928Ki"),
        ("pods", "110"),
    ]));
    status.allocatable = Some(quantities(&[
        ("cpu", "3600m"),
        ("ephemeral-storage", "98670349773"),
        ("hugepages-1Gi", "0"),
        ("hugepages-2Mi", "0"),
        ("memory", "15687640Ki"),
        ("pods", "110"),
    ]));
    status.daemon_endpoints = Some(NodeDaemonEndpoints {
        kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
    });
    status.node_info = Some(NodeSystemInfo {
        architecture: "amd64".into(),
        boot_id: format!(
            "{:08x}-1f2e-4d3c-8b7a-{:012x}",
            index,
            u64::from(index) * 7919
        ),
        container_runtime_version: "containerd://2.0.5-k3s1".into(),
        kernel_version: "6.12.48+deb13-amd64".into(),
        kube_proxy_version: "v1.33.5+k3s1".into(),
        kubelet_version: "v1.33.5+k3s1".into(),
        machine_id: format!(
            "{:032x}",
            u128::from(index).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        ),
        operating_system: "linux".into(),
        os_image: "Debian GNU/Linux 13 (trixie)".into(),
        system_uuid: format!("ec2{:05x}-5e1a-4c1d-9a3f-{:012x}", index % 0xfffff, index),
        ..Default::default()
    });
    status.images = Some(
        (0..50u32)
            .map(|i| {
                let repository = format!(
                    "registry.example.internal/{}/{}",
                    ["platform", "apps", "monitoring", "rancher", "library"][i as usize % 5],
                    [
                        "mirrored-coredns-coredns",
                        "local-path-provisioner",
                        "klipper-helm",
                        "mirrored-metrics-server",
                        "traefik",
                        "prometheus-node-exporter",
                        "fluent-bit",
                        "api-gateway",
                        "orders-service",
                        "payments-worker",
                    ][i as usize % 10]
                );
                let digest = format!(
                    "{:016x}{:016x}{:016x}{:016x}",
                    u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    u64::from(i + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
                    u64::from(i + 2).wrapping_mul(0x94d0_49bb_1331_11eb),
                    u64::from(i + 3).wrapping_mul(0x2545_f491_4f6c_dd1d),
                );
                ContainerImage {
                    names: Some(vec![
                        format!("{repository}@sha256:{digest}"),
                        format!("{repository}:v{}.{}.{}", 1 + i % 3, i % 17, i % 5),
                    ]),
                    size_bytes: Some(i64::from(i + 1) * 7_340_033 + i64::from(index % 1000)),
                }
            })
            .collect(),
    );
    node
}

/// The public key of [`wireguard_peer`]`(index)`: 32 bytes from a
/// splitmix64 stream seeded with the index, distinct per index (the first
/// eight bytes are a bijection of it) and the same in every run.
pub fn wireguard_peer_key(index: u32) -> Key {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut state = 0x666c_616e_6e65_6c77 ^ u64::from(index).wrapping_mul(GOLDEN);
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        state = state.wrapping_add(GOLDEN);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes());
    }
    Key(bytes)
}

/// The i-th peer's podCIDR: 10.42.0.0/16 only has 256 /24s; larger
/// clusters spill into /24s of 10.0.0.0/8 above it, which callers put in
/// a bigger Network.
fn peer_pod_cidr(index: u32) -> String {
    format!("10.{}.{}.0/24", 42 + index / 256, index % 256)
}

/// The i-th peer's public IP: `192.168.<i/250>.<i%250+1>`.
fn peer_public_ip(index: u32) -> String {
    format!("192.168.{}.{}", (index / 250) % 256, index % 250 + 1)
}

/// Adds (or, with `None`, removes) flannel annotations under [`PREFIX`].
pub fn annotated(mut node: Node, annotations: &[(&str, &str)]) -> Node {
    let map: &mut BTreeMap<String, String> =
        node.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (key, value) in annotations {
        map.insert(format!("{PREFIX}{key}"), value.to_string());
    }
    node
}

/// Removes a flannel annotation.
pub fn without(mut node: Node, key: &str) -> Node {
    if let Some(map) = node.metadata.annotations.as_mut() {
        map.remove(&format!("{PREFIX}{key}"));
    }
    node
}

/// Two nodes as in the seed article: `node-0` (192.168.1.12) and `node-1`
/// (192.168.1.13) in their own network namespaces, joined by a veth "wire",
/// with Node objects in a test API server (podCIDRs `10.42.<i>.0/24`, plus
/// `fd00:42:0:<i>::/64` and uplink addresses fd00:1::12/13 when dual-stack).
/// Each node's network task runs in this process, bound to its namespace.
pub struct NodePair {
    /// The API server both tasks talk to.
    pub server: TestApiServer,
    /// node-0 and node-1.
    pub nodes: [TestNetns; 2],
    backend: Backend,
    cluster_cidr: String,
    dir: tempfile::TempDir,
}

impl NodePair {
    /// IPv4 only.
    pub fn new(tag: &str, backend: Backend) -> NodePair {
        NodePair::with_cluster_cidr(tag, backend, "10.42.0.0/16")
    }

    /// With the given `--cluster-cidr` (a dual-stack value adds IPv6 to the
    /// wire and the Nodes).
    pub fn with_cluster_cidr(tag: &str, backend: Backend, cluster_cidr: &str) -> NodePair {
        let dual = cluster_cidr.contains(':');
        let nodes = [
            TestNetns::new(&format!("{tag}0")),
            TestNetns::new(&format!("{tag}1")),
        ];
        let status = Command::new("ip")
            .args([
                "link",
                "add",
                "eth0",
                "netns",
                nodes[0].name(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                nodes[1].name(),
            ])
            .status()
            .expect("ip runs");
        assert!(status.success(), "creating the wire between the test nodes");
        let server = TestApiServer::start(Options::default()).expect("test API server starts");
        for (i, ns) in nodes.iter().enumerate() {
            ns.ip(&[
                "addr",
                "add",
                &format!("192.168.1.{}/24", 12 + i),
                "dev",
                "eth0",
            ]);
            if dual {
                ns.ip(&[
                    "addr",
                    "add",
                    &format!("fd00:1::{}/64", 12 + i),
                    "dev",
                    "eth0",
                    "nodad",
                ]);
            }
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                "192.168.1.1",
                "dev",
                "eth0",
                "onlink",
            ]);
            if dual {
                ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    "fd00:1::1",
                    "dev",
                    "eth0",
                    "onlink",
                ]);
            }
            let mut node = ready_node(&format!("node-{i}"), Some(&format!("10.42.{i}.0/24")));
            if dual {
                if let Some(spec) = node.spec.as_mut() {
                    spec.pod_cidrs = Some(vec![
                        format!("10.42.{i}.0/24"),
                        format!("fd00:42:0:{i}::/64"),
                    ]);
                }
            }
            server.create_node(node).expect("Node created");
        }
        NodePair {
            server,
            nodes,
            backend,
            cluster_cidr: cluster_cidr.to_string(),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Where node `i`'s task writes subnet.env.
    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("node-{i}/run/flannel/subnet.env"))
    }

    /// node `i`'s configuration.
    pub fn config(&self, i: usize) -> Config {
        Config::builder(format!("node-{i}"))
            .backend(self.backend)
            .cluster_cidr(&self.cluster_cidr)
            .data_dir(self.dir.path().join(format!("node-{i}/data")))
            .subnet_file(self.subnet_file(i))
            .netns(self.nodes[i].path())
            .build()
            .expect("valid test config")
    }

    /// Starts node `i`'s network task (call inside a tokio runtime).
    pub fn spawn(&self, i: usize) -> Handle {
        flannel_embed::spawn(self.server.client().expect("client"), self.config(i))
    }
}

/// Ready, and the other node of a [`NodePair`] programmed as a peer (the
/// other agent may publish its annotations a moment after this one is
/// ready). Panics with the task's status when it does not get there.
pub async fn ready_with_peer(handle: &Handle) {
    match tokio::time::timeout(Duration::from_secs(20), handle.ready()).await {
        Ok(result) => result.expect("ready without error"),
        Err(_) => panic!("not ready within 20 s: {:?}", handle.status()),
    }
    let mut status = handle.watch_status();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.peers_programmed == 1),
    )
    .await
    .expect("the peer is programmed within 10 s")
    .expect("the task is running");
}

/// Polls `check` every 20 ms until it holds; returns how long it took.
/// Panics naming `what` after `limit`.
pub async fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// The route to `dst` as `ip route` prints it in `ns`, if any.
pub fn route_to(ns: &TestNetns, dst: &str) -> Option<String> {
    let family = if dst.contains(':') { "-6" } else { "-4" };
    ns.ip(&[family, "route", "show"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(dst))
        .map(str::to_string)
}

/// Whether an `ip route` line means `via <via> dev <dev> proto 77
/// [onlink]`, plain or through a nexthop object (`... nhid N via ...`).
pub fn means(line: &str, via: &str, dev: &str, onlink: bool) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| words.windows(2).find(|w| w[0] == key).map(|w| w[1]);
    after("via") == Some(via)
        && after("dev") == Some(dev)
        && after("proto") == Some("77")
        && words.contains(&"onlink") == onlink
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wireguard_peers_publish_what_upstream_does_with_distinct_keys() {
        let node = wireguard_peer(7);
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        let data = annotations
            .get(&format!("{PREFIX}backend-data"))
            .cloned()
            .unwrap_or_default();
        let key = wireguard_peer_key(7).to_base64();
        assert_eq!(data, format!(r#"{{"PublicKey":"{key}","Port":51820}}"#));
        assert_eq!(Key::from_base64(&key), Ok(wireguard_peer_key(7)));
        assert_eq!(
            annotations
                .get(&format!("{PREFIX}backend-type"))
                .map(String::as_str),
            Some("wireguard")
        );
        assert_eq!(
            annotations
                .get(&format!("{PREFIX}public-ip"))
                .map(String::as_str),
            Some("192.168.0.8")
        );
        assert_eq!(
            node.spec.and_then(|s| s.pod_cidr).as_deref(),
            Some("10.42.7.0/24")
        );
        let keys: std::collections::BTreeSet<Key> = (0..20_000).map(wireguard_peer_key).collect();
        assert_eq!(keys.len(), 20_000);
        assert_eq!(wireguard_peer_key(3), wireguard_peer_key(3));
    }

    #[test]
    fn kubelet_shaped_nodes_weigh_about_15_kb_and_keep_what_flannel_reads() {
        let node = NodeShape::Kubelet.vxlan_peer(4321);
        let size = serde_json::to_vec(&node).unwrap().len();
        assert!((12_000..17_000).contains(&size), "{size} bytes");
        let minimal = vxlan_peer(4321);
        assert_eq!(node.metadata.name, minimal.metadata.name);
        assert_eq!(
            node.spec.as_ref().unwrap().pod_cidrs,
            minimal.spec.as_ref().unwrap().pod_cidrs
        );
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        for (key, value) in minimal.metadata.annotations.unwrap_or_default() {
            assert_eq!(annotations.get(&key), Some(&value), "{key}");
        }
        assert!(annotations.contains_key("k3s.io/node-args"));
        let status = node.status.clone().unwrap();
        assert_eq!(status.conditions.unwrap().len(), 5);
        assert_eq!(status.images.unwrap().len(), 50);
        assert_eq!(kubelet_shaped(vxlan_peer(4321), 4321), node);
        assert_eq!(NodeShape::Minimal.vxlan_peer(4321), vxlan_peer(4321));
        assert_eq!("kubelet".parse::<NodeShape>(), Ok(NodeShape::Kubelet));
    }

    #[test]
    fn vxlan_peers_keep_their_addresses() {
        let node = vxlan_peer(300);
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations
                .get(&format!("{PREFIX}public-ip"))
                .map(String::as_str),
            Some("192.168.1.51")
        );
        assert_eq!(
            node.spec.and_then(|s| s.pod_cidr).as_deref(),
            Some("10.43.44.0/24")
        );
    }
}
