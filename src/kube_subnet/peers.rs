//! Node → Peer validation. A peer with a bad annotation is skipped with a
//! reason (which the watcher logs once); it never stops the task and never
//! hides the good peers.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::lease::{lease_state, network_contains, Lease, LeaseError, LeaseState};
pub use super::peer_set::PeerSet;
use super::{AnnotationKeys, SlimNode};
use crate::config::{BackendConf, NetConf};
use crate::mac::MacAddr;

/// What a peer's backend needs to reach it, per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerBackend {
    /// vxlan: the peer's VTEP MAC (from `backend-data`).
    Vxlan {
        /// MAC of the peer's `flannel.<VNI>` device.
        vtep_mac: MacAddr,
    },
    /// host-gw: nothing beyond the public IP.
    HostGw,
    /// wireguard: the peer's public key and port.
    Wireguard {
        /// Base64 WireGuard public key.
        public_key: String,
        /// UDP port the peer listens on.
        port: u16,
    },
}

/// A validated peer node: everything the data path programs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// The peer's Pod CIDRs (enabled families only).
    pub lease: Lease,
    /// Where to send its IPv4 traffic (`public-ip`).
    pub public_ip: Option<Ipv4Addr>,
    /// Where to send its IPv6 traffic (`public-ipv6`).
    pub public_ipv6: Option<Ipv6Addr>,
    /// IPv4 backend data.
    pub backend_v4: Option<PeerBackend>,
    /// IPv6 backend data.
    pub backend_v6: Option<PeerBackend>,
}

/// Why a Node is not a peer (each one is logged once as a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// It announces another backend.
    OtherBackend {
        /// Its `backend-type`.
        theirs: String,
        /// Ours.
        ours: &'static str,
    },
    /// A required annotation is missing.
    MissingAnnotation(String),
    /// An annotation does not parse.
    BadAnnotation {
        /// The annotation name.
        key: String,
        /// Its value (shortened).
        value: String,
        /// What was expected.
        expected: String,
    },
    /// Its Pod CIDRs are unusable.
    Lease(LeaseError),
    /// No Pod CIDR (of an enabled family) yet.
    NoPodCidr(&'static str),
    /// Its Pod CIDR overlaps this node's.
    OverlapsOwn {
        /// The peer's subnet.
        lease: IpNetwork,
        /// Ours.
        own: IpNetwork,
    },
    /// Its Pod CIDR overlaps an older peer's.
    OverlapsPeer {
        /// The peer's subnet.
        lease: IpNetwork,
        /// The peer that keeps the subnet.
        other: String,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::OtherBackend { theirs, ours } => {
                write!(f, "it runs backend type '{theirs}', this node runs '{ours}'")
            }
            SkipReason::MissingAnnotation(key) => write!(f, "annotation {key} is missing"),
            SkipReason::BadAnnotation { key, value, expected } => {
                write!(f, "annotation {key}='{value}' is not {expected}")
            }
            SkipReason::Lease(error) => write!(f, "{error}"),
            SkipReason::NoPodCidr(family) => write!(f, "it has no {family} podCIDR yet"),
            SkipReason::OverlapsOwn { lease, own } => {
                write!(f, "its podCIDR {lease} overlaps this node's {own}")
            }
            SkipReason::OverlapsPeer { lease, other } => write!(
                f,
                "its podCIDR {lease} overlaps that of node {other}, which keeps it (older, or first by name)"
            ),
        }
    }
}

/// What peers are checked against.
#[derive(Debug, Clone)]
pub struct PeerContext {
    /// This node's name (never a peer of itself).
    pub own_name: String,
    /// This node's lease (peers must not overlap it).
    pub own_lease: Lease,
    /// Annotation names.
    pub keys: AnnotationKeys,
    /// The cluster configuration (families, networks, backend type).
    pub netconf: NetConf,
}

/// One Node's verdict, cached by the watcher so a batch of events re-parses
/// only the Nodes that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Older nodes win overlap conflicts; then the smaller name.
    priority: (Option<Timestamp>, String),
    /// `Ok(None)`: not a peer and nothing to warn about (ourselves, or a
    /// node not run by a kube subnet manager).
    verdict: Result<Option<Arc<Peer>>, SkipReason>,
}

impl Candidate {
    /// Reads one Node.
    pub fn from_node(node: &SlimNode, ctx: &PeerContext) -> Candidate {
        Candidate {
            priority: (
                node.metadata.creation_timestamp.as_ref().map(|t| t.0),
                node.name().to_string(),
            ),
            verdict: parse_peer(node, ctx).map(|peer| peer.map(Arc::new)),
        }
    }

    /// The subnets it claims, if it is a valid peer (what overlap rules
    /// look at).
    fn claimed_subnets(&self) -> Vec<IpNetwork> {
        match &self.verdict {
            Ok(Some(peer)) => lease_networks(&peer.lease),
            _ => Vec::new(),
        }
    }
}

/// The peer set and the reasons for every skipped Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSetBuild {
    /// The valid peers.
    pub peers: PeerSet,
    /// Node name → why it is not a peer.
    pub skipped: BTreeMap<String, SkipReason>,
}

/// Builds the peer set from every Node, as a pure function (see
/// [`Candidate`] for the cached form the watcher uses).
pub fn build_peer_set<'a>(
    nodes: impl IntoIterator<Item = &'a SlimNode>,
    ctx: &PeerContext,
) -> PeerSetBuild {
    let candidates: Vec<Candidate> = nodes
        .into_iter()
        .map(|node| Candidate::from_node(node, ctx))
        .collect();
    assemble_peer_set(candidates.iter(), &ctx.own_lease)
}

/// A valid candidate with its rank (creation time, then name).
type Ranked<'a> = (&'a (Option<Timestamp>, String), &'a Arc<Peer>);

/// Resolves overlaps between valid candidates deterministically (older
/// node first, then name) and collects the skip reasons.
pub fn assemble_peer_set<'a>(
    candidates: impl IntoIterator<Item = &'a Candidate>,
    own_lease: &Lease,
) -> PeerSetBuild {
    let mut build = PeerSetBuild::default();
    let mut valid: Vec<Ranked> = Vec::new();
    for candidate in candidates {
        match &candidate.verdict {
            Ok(Some(peer)) => valid.push((&candidate.priority, peer)),
            Ok(None) => {}
            Err(reason) => {
                build
                    .skipped
                    .insert(candidate.priority.1.clone(), reason.clone());
            }
        }
    }
    // `None` timestamps sort first; real API servers always set one.
    valid.sort_by(|a, b| a.0.cmp(b.0));
    let own: Vec<IpNetwork> = lease_networks(own_lease);
    let mut taken: Vec<(IpNetwork, String)> = Vec::new();
    let mut index = OverlapIndex::default();
    'peers: for (_, peer) in valid {
        for subnet in lease_networks(&peer.lease) {
            if let Some(own) = own.iter().find(|o| overlaps(**o, subnet)) {
                build.skipped.insert(
                    peer.name.clone(),
                    SkipReason::OverlapsOwn {
                        lease: subnet,
                        own: *own,
                    },
                );
                continue 'peers;
            }
            if let Some(other) = index.overlapping(subnet).map(|i| taken[i].1.clone()) {
                build.skipped.insert(
                    peer.name.clone(),
                    SkipReason::OverlapsPeer {
                        lease: subnet,
                        other,
                    },
                );
                continue 'peers;
            }
        }
        for subnet in lease_networks(&peer.lease) {
            index.insert(subnet, taken.len());
            taken.push((subnet, peer.name.clone()));
        }
        build.peers.insert(peer);
    }
    build
}

/// The peer set kept current one Node at a time. A change whose subnets,
/// before and after, overlap no other candidate's and not our own (the
/// normal case) touches that one entry in O(log n); any overlap falls back
/// to [`assemble_peer_set`] over every candidate. Either way the result is
/// exactly what the full build over the same candidates gives.
#[derive(Debug, Clone)]
pub struct PeerResolver {
    own_lease: Lease,
    candidates: HashMap<String, Candidate>,
    /// Every valid candidate's subnets, overlapping or not.
    claimed: ClaimedSubnets,
    build: PeerSetBuild,
    /// Node names whose peer or skip reason changed since the last
    /// [`PeerResolver::take_changed`].
    changed: Vec<String>,
}

impl PeerResolver {
    /// No candidates yet.
    pub fn new(own_lease: Lease) -> Self {
        PeerResolver {
            own_lease,
            candidates: HashMap::new(),
            claimed: ClaimedSubnets::default(),
            build: PeerSetBuild::default(),
            changed: Vec::new(),
        }
    }

    /// The current result.
    pub fn build(&self) -> &PeerSetBuild {
        &self.build
    }

    /// Replaces every candidate (a relist); returns whether the result
    /// changed.
    pub fn replace_all(&mut self, candidates: HashMap<String, Candidate>) -> bool {
        self.claimed = ClaimedSubnets::default();
        for net in candidates.values().flat_map(Candidate::claimed_subnets) {
            self.claimed.add(net);
        }
        self.candidates = candidates;
        self.rebuild()
    }

    /// Sets (`Some`) or removes (`None`) one Node's candidate; returns
    /// whether the result changed.
    pub fn set(&mut self, name: &str, candidate: Option<Candidate>) -> bool {
        if self.candidates.get(name) == candidate.as_ref() {
            return false;
        }
        let old = self.candidates.remove(name);
        let old_nets = old
            .as_ref()
            .map(Candidate::claimed_subnets)
            .unwrap_or_default();
        for net in &old_nets {
            self.claimed.remove(*net);
        }
        let new_nets = candidate
            .as_ref()
            .map(Candidate::claimed_subnets)
            .unwrap_or_default();
        let own = lease_networks(&self.own_lease);
        let entangled = old_nets
            .iter()
            .chain(&new_nets)
            .any(|net| self.claimed.overlaps(*net) || own.iter().any(|o| overlaps(*o, *net)));
        for net in &new_nets {
            self.claimed.add(*net);
        }
        let verdict = candidate.as_ref().map(|c| c.verdict.clone());
        if let Some(candidate) = candidate {
            self.candidates.insert(name.to_string(), candidate);
        }
        if entangled {
            return self.rebuild();
        }
        // Overlapping nothing, this Node decides only its own entry.
        let before = (
            self.build.peers.remove(name),
            self.build.skipped.remove(name),
        );
        match verdict {
            Some(Ok(Some(peer))) => self.build.peers.insert(&peer),
            Some(Err(reason)) => {
                self.build.skipped.insert(name.to_string(), reason);
            }
            Some(Ok(None)) | None => {}
        }
        let after = (self.build.peers.get(name), self.build.skipped.get(name));
        let changed = (before.0.as_deref(), before.1.as_ref()) != after;
        if changed {
            self.changed.push(name.to_string());
        }
        changed
    }

    /// Node names whose peer or skip reason changed since the last call.
    pub fn take_changed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.changed)
    }

    /// The full build over every candidate, folded into the current set
    /// peer by peer, so the published set keeps its history (and later
    /// snapshots still compare by change log).
    fn rebuild(&mut self) -> bool {
        let build = assemble_peer_set(self.candidates.values(), &self.own_lease);
        let mut names: Vec<String> = self
            .build
            .peers
            .differing(&build.peers)
            .into_iter()
            .map(str::to_string)
            .collect();
        for name in &names {
            match build.peers.get_shared(name) {
                Some(peer) => self.build.peers.insert(peer),
                None => {
                    self.build.peers.remove(name);
                }
            }
        }
        let old_skipped = std::mem::replace(&mut self.build.skipped, build.skipped);
        let new_skipped = &self.build.skipped;
        for (name, reason) in new_skipped {
            if old_skipped.get(name) != Some(reason) {
                names.push(name.clone());
            }
        }
        for name in old_skipped.keys() {
            if !new_skipped.contains_key(name) {
                names.push(name.clone());
            }
        }
        let changed = !names.is_empty();
        self.changed.extend(names);
        changed
    }
}

/// Subnets claimed by valid candidates, overlapping each other or not,
/// with a count per subnet: "does anything overlap this?" in O(log n) per
/// prefix length, since CIDR blocks either nest or are disjoint.
#[derive(Debug, Clone, Default)]
struct ClaimedSubnets {
    /// (family is IPv6, first address, prefix length) → how many claim it.
    counts: BTreeMap<(bool, u128, u8), u32>,
}

impl ClaimedSubnets {
    fn key(net: IpNetwork) -> (bool, u128, u8) {
        match net {
            IpNetwork::V4(n) => (false, u32::from(n.network()).into(), n.prefix()),
            IpNetwork::V6(n) => (true, u128::from(n.network()), n.prefix()),
        }
    }

    fn add(&mut self, net: IpNetwork) {
        *self.counts.entry(Self::key(net)).or_default() += 1;
    }

    fn remove(&mut self, net: IpNetwork) {
        let key = Self::key(net);
        if let Some(count) = self.counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&key);
            }
        }
    }

    fn overlaps(&self, net: IpNetwork) -> bool {
        let (v6, start, prefix) = Self::key(net);
        let width: u32 = if v6 { 128 } else { 32 };
        let host_bits = |prefix: u8| width - u32::from(prefix);
        let host_mask = |prefix: u8| {
            1u128
                .checked_shl(host_bits(prefix))
                .map_or(u128::MAX, |size| size - 1)
        };
        // A block that starts inside this one lies inside it (or is it).
        let end = start | host_mask(prefix);
        if self
            .counts
            .range((v6, start, 0)..=(v6, end, u8::MAX))
            .next()
            .is_some()
        {
            return true;
        }
        // A block that starts before it overlaps only by containing it.
        (0..prefix).any(|shorter| {
            let first = start & !host_mask(shorter);
            self.counts.contains_key(&(v6, first, shorter))
        })
    }
}

fn lease_networks(lease: &Lease) -> Vec<IpNetwork> {
    lease
        .ipv4
        .map(IpNetwork::V4)
        .into_iter()
        .chain(lease.ipv6.map(IpNetwork::V6))
        .collect()
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    network_contains(a, b) || network_contains(b, a)
}

/// Accepted subnets as address intervals per family, so each overlap check
/// is O(log n) even with tens of thousands of peers.
#[derive(Default)]
struct OverlapIndex {
    v4: BTreeMap<u128, (u128, usize)>,
    v6: BTreeMap<u128, (u128, usize)>,
}

impl OverlapIndex {
    fn bounds(net: IpNetwork) -> (u128, u128) {
        match net {
            IpNetwork::V4(n) => (
                u32::from(n.network()).into(),
                u32::from(n.broadcast()).into(),
            ),
            IpNetwork::V6(n) => {
                let start = u128::from(n.network());
                let size_mask = if n.prefix() == 0 {
                    u128::MAX
                } else {
                    (1u128 << (128 - u32::from(n.prefix()))) - 1
                };
                (start, start | size_mask)
            }
        }
    }

    fn map(&self, net: IpNetwork) -> &BTreeMap<u128, (u128, usize)> {
        match net {
            IpNetwork::V4(_) => &self.v4,
            IpNetwork::V6(_) => &self.v6,
        }
    }

    /// The index of an accepted subnet overlapping `net`. Accepted subnets
    /// never overlap each other, so checking the neighbours is enough.
    fn overlapping(&self, net: IpNetwork) -> Option<usize> {
        let (start, end) = Self::bounds(net);
        let map = self.map(net);
        if let Some((_, (other_end, i))) = map.range(..=start).next_back() {
            if *other_end >= start {
                return Some(*i);
            }
        }
        map.range(start..)
            .next()
            .filter(|(other_start, _)| **other_start <= end)
            .map(|(_, (_, i))| *i)
    }

    fn insert(&mut self, net: IpNetwork, i: usize) {
        let (start, end) = Self::bounds(net);
        match net {
            IpNetwork::V4(_) => self.v4.insert(start, (end, i)),
            IpNetwork::V6(_) => self.v6.insert(start, (end, i)),
        };
    }
}

/// Validates one Node as a peer.
fn parse_peer(node: &SlimNode, ctx: &PeerContext) -> Result<Option<Peer>, SkipReason> {
    let keys = &ctx.keys;
    if node.name() == ctx.own_name || node.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    if node.annotation(&keys.kube_subnet_manager) != Some("true") {
        return Ok(None);
    }
    let ours = ctx.netconf.backend.type_name();
    let theirs = node
        .annotation(&keys.backend_type)
        .ok_or_else(|| SkipReason::MissingAnnotation(keys.backend_type.clone()))?;
    if theirs != ours {
        return Err(SkipReason::OtherBackend {
            theirs: theirs.to_string(),
            ours,
        });
    }
    let lease = match lease_state(node, &ctx.netconf).map_err(SkipReason::Lease)? {
        LeaseState::Ready(lease) => lease,
        LeaseState::NotAssigned => return Err(SkipReason::NoPodCidr("Pod CIDR")),
        LeaseState::MissingFamily(family) => return Err(SkipReason::NoPodCidr(family)),
    };
    let mut peer = Peer {
        name: node.name().to_string(),
        lease,
        public_ip: None,
        public_ipv6: None,
        backend_v4: None,
        backend_v6: None,
    };
    if ctx.netconf.enable_ipv4 {
        peer.public_ip = Some(required_addr(node, &keys.public_ip, "an IPv4 address")?);
        peer.backend_v4 = Some(backend_data(
            node,
            &keys.backend_data,
            &ctx.netconf.backend,
            false,
        )?);
    }
    if ctx.netconf.enable_ipv6 {
        peer.public_ipv6 = Some(required_addr(node, &keys.public_ipv6, "an IPv6 address")?);
        peer.backend_v6 = Some(backend_data(
            node,
            &keys.backend_v6_data,
            &ctx.netconf.backend,
            true,
        )?);
    }
    Ok(Some(peer))
}

fn shorten(value: &str) -> String {
    if value.chars().count() > 80 {
        format!("{}...", value.chars().take(77).collect::<String>())
    } else {
        value.to_string()
    }
}

fn bad(key: &str, value: &str, expected: &str) -> SkipReason {
    SkipReason::BadAnnotation {
        key: key.to_string(),
        value: shorten(value),
        expected: expected.to_string(),
    }
}

fn required_addr<T: std::str::FromStr + IsUsable>(
    node: &SlimNode,
    key: &str,
    expected: &str,
) -> Result<T, SkipReason> {
    let text = node
        .annotation(key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| SkipReason::MissingAnnotation(key.to_string()))?;
    text.parse::<T>()
        .ok()
        .filter(IsUsable::is_usable)
        .ok_or_else(|| bad(key, text, expected))
}

/// Addresses a tunnel or route can point at.
trait IsUsable {
    fn is_usable(&self) -> bool;
}
impl IsUsable for Ipv4Addr {
    fn is_usable(&self) -> bool {
        !(self.is_unspecified() || self.is_multicast() || self.is_broadcast())
    }
}
impl IsUsable for Ipv6Addr {
    fn is_usable(&self) -> bool {
        !(self.is_unspecified() || self.is_multicast())
    }
}

/// Go's encoding/json matches field names without regard to case.
fn field<'v>(data: &'v Value, name: &str) -> Option<&'v Value> {
    data.as_object()?
        .iter()
        .rfind(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

fn backend_data(
    node: &SlimNode,
    key: &str,
    backend: &BackendConf,
    v6_data: bool,
) -> Result<PeerBackend, SkipReason> {
    if let BackendConf::HostGw = backend {
        return Ok(PeerBackend::HostGw);
    }
    let text = node
        .annotation(key)
        .ok_or_else(|| SkipReason::MissingAnnotation(key.to_string()))?;
    let data: Value = serde_json::from_str(text).map_err(|_| bad(key, text, "JSON"))?;
    match backend {
        BackendConf::HostGw => Ok(PeerBackend::HostGw),
        BackendConf::Vxlan(_) => {
            let vtep_mac = field(&data, "VtepMAC")
                .and_then(Value::as_str)
                .and_then(|mac| mac.parse::<MacAddr>().ok())
                .filter(MacAddr::is_usable_unicast)
                .ok_or_else(|| bad(key, text, "vxlan backend data with a unicast VtepMAC"))?;
            Ok(PeerBackend::Vxlan { vtep_mac })
        }
        BackendConf::Wireguard(conf) => {
            let public_key = field(&data, "PublicKey")
                .and_then(Value::as_str)
                .filter(|k| crate::wireguard::Key::from_base64(k).is_ok())
                .ok_or_else(|| bad(key, text, "wireguard backend data with a base64 PublicKey"))?;
            // flannel <= v0.26.5 publishes no Port: it listens where we do.
            let (own_v4, own_v6) = crate::backend::wireguard::published_ports(conf);
            let own_port = if v6_data { own_v6 } else { own_v4 };
            let port = match field(&data, "Port") {
                None | Some(Value::Null) => own_port,
                Some(port) => match port.as_u64().map(u16::try_from) {
                    Some(Ok(0)) => own_port,
                    Some(Ok(port)) => port,
                    _ => return Err(bad(key, text, "wireguard backend data with a valid Port")),
                },
            };
            Ok(PeerBackend::Wireguard {
                public_key: public_key.to_string(),
                port,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use crate::kube_subnet::node::SlimNodeSpec;

    const PREFIX: &str = "flannel.alpha.coreos.com/";
    const V4: &str = r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "vxlan"}}"#;
    const DUAL: &str = r#"{"Network": "10.42.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:42::/56", "Backend": {"Type": "vxlan"}}"#;

    fn ctx(netconf: &str) -> PeerContext {
        PeerContext {
            own_name: "node-a".into(),
            own_lease: Lease {
                ipv4: Some("10.42.0.0/24".parse().unwrap()),
                ipv6: Some("fd00:42::/64".parse().unwrap()),
            },
            keys: AnnotationKeys::new(PREFIX),
            netconf: NetConf::parse(netconf).unwrap(),
        }
    }

    fn node(
        name: &str,
        created: i64,
        pod_cidrs: &[&str],
        annotations: &[(&str, &str)],
    ) -> SlimNode {
        SlimNode {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(
                    Timestamp::from_second(1_700_000_000 + created).unwrap(),
                )),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: SlimNodeSpec {
                pod_cidr: None,
                pod_cidrs: Some(pod_cidrs.iter().map(|s| s.to_string()).collect()),
            },
        }
    }

    const MAC_B: &str = r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:0b"}"#;

    fn good(name: &str, created: i64, cidr: &str, ip: &str) -> SlimNode {
        node(
            name,
            created,
            &[cidr],
            &[
                ("kube-subnet-manager", "true"),
                ("backend-type", "vxlan"),
                ("backend-data", MAC_B),
                ("public-ip", ip),
            ],
        )
    }

    fn with(mut n: SlimNode, key: &str, value: Option<&str>) -> SlimNode {
        let annotations = n.metadata.annotations.get_or_insert_with(Default::default);
        match value {
            Some(v) => annotations.insert(format!("{PREFIX}{key}"), v.to_string()),
            None => annotations.remove(&format!("{PREFIX}{key}")),
        };
        n
    }

    #[test]
    fn a_good_peer_reads_like_the_seed_article() {
        let build = build_peer_set(
            [&good("ubuntu-dev3", 1, "10.42.1.0/24", "192.168.1.13")],
            &ctx(V4),
        );
        assert!(build.skipped.is_empty(), "{:?}", build.skipped);
        assert_eq!(
            build.peers.get("ubuntu-dev3"),
            Some(&Peer {
                name: "ubuntu-dev3".into(),
                lease: Lease {
                    ipv4: Some("10.42.1.0/24".parse().unwrap()),
                    ipv6: None
                },
                public_ip: Some(Ipv4Addr::new(192, 168, 1, 13)),
                public_ipv6: None,
                backend_v4: Some(PeerBackend::Vxlan {
                    vtep_mac: "0a:00:00:00:00:0b".parse().unwrap()
                }),
                backend_v6: None,
            })
        );
    }

    /// The issue's table: each malformed peer is skipped with a reason and
    /// the good ones stay.
    #[test]
    fn malformed_peers_are_skipped_with_a_reason_and_good_ones_kept() {
        let malformed: Vec<(SlimNode, &str)> = vec![
            (
                with(
                    good("bad-json", 2, "10.42.2.0/24", "192.168.1.2"),
                    "backend-data",
                    Some("{not json"),
                ),
                "backend-data='{not json' is not JSON",
            ),
            (
                with(
                    good("bad-mac", 3, "10.42.3.0/24", "192.168.1.3"),
                    "backend-data",
                    Some(r#"{"VNI":1,"VtepMAC":"zz:00:00:00:00:01"}"#),
                ),
                "is not vxlan backend data with a unicast VtepMAC",
            ),
            (
                with(
                    good("multicast-mac", 4, "10.42.4.0/24", "192.168.1.4"),
                    "backend-data",
                    Some(r#"{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}"#),
                ),
                "unicast VtepMAC",
            ),
            (
                good("v6-in-v4", 5, "10.42.5.0/24", "fd00::5"),
                "public-ip='fd00::5' is not an IPv4 address",
            ),
            (
                with(
                    good("no-public-ip", 6, "10.42.6.0/24", "x"),
                    "public-ip",
                    None,
                ),
                "annotation flannel.alpha.coreos.com/public-ip is missing",
            ),
            (
                good("outside", 7, "10.99.0.0/24", "192.168.1.7"),
                "not inside the flannel Network 10.42.0.0/16",
            ),
            (
                good("dup-of-b", 8, "10.42.1.0/24", "192.168.1.8"),
                "overlaps that of node node-b",
            ),
            (
                good("overlaps-me", 9, "10.42.0.0/25", "192.168.1.9"),
                "overlaps this node's 10.42.0.0/24",
            ),
            (
                with(
                    good("other-backend", 10, "10.42.10.0/24", "192.168.1.10"),
                    "backend-type",
                    Some("host-gw"),
                ),
                "runs backend type 'host-gw'",
            ),
            (
                node(
                    "no-cidr",
                    11,
                    &[],
                    &[("kube-subnet-manager", "true"), ("backend-type", "vxlan")],
                ),
                "no Pod CIDR podCIDR yet",
            ),
            (
                good("bad-cidr", 12, "10.42.12.0/33", "192.168.1.12"),
                "which is not a CIDR",
            ),
            (
                with(
                    good("no-type", 13, "10.42.13.0/24", "192.168.1.13"),
                    "backend-type",
                    None,
                ),
                "backend-type is missing",
            ),
        ];
        let mut nodes = vec![
            good("node-b", 1, "10.42.1.0/24", "192.168.1.13"),
            good("node-c", 20, "10.42.20.0/24", "192.168.1.20"),
            // Not run by flannel, and ourselves: silently not peers.
            node("not-managed", 1, &["10.42.30.0/24"], &[]),
            good("node-a", 0, "10.42.0.0/24", "192.168.1.12"),
        ];
        nodes.extend(malformed.iter().map(|(n, _)| n.clone()));
        let build = build_peer_set(&nodes, &ctx(V4));
        assert_eq!(
            build
                .peers
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            vec!["node-b", "node-c"]
        );
        assert_eq!(build.skipped.len(), malformed.len(), "{:#?}", build.skipped);
        for (n, wanted) in &malformed {
            let reason = build
                .skipped
                .get(n.name())
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                reason.contains(wanted),
                "{}: {reason:?} lacks {wanted:?}",
                n.name()
            );
        }
    }

    #[test]
    fn overlap_winner_is_the_older_node_whatever_the_input_order() {
        let old = good("zeta", 1, "10.42.5.0/24", "192.168.1.1");
        let new = good("alpha", 2, "10.42.5.0/24", "192.168.1.2");
        for order in [vec![&old, &new], vec![&new, &old]] {
            let build = build_peer_set(order, &ctx(V4));
            assert!(build.peers.get("zeta").is_some());
            assert!(build.skipped.contains_key("alpha"));
        }
        // A /23 covering two accepted /24s is caught by the neighbour check.
        let wide = good("wide", 3, "10.42.6.0/23", "192.168.1.3");
        let right = good("right", 1, "10.42.7.0/24", "192.168.1.4");
        let build = build_peer_set([&wide, &right], &ctx(V4));
        assert!(build.skipped.contains_key("wide"), "{:?}", build.skipped);
    }

    #[test]
    fn dual_stack_needs_both_families_and_notices_v4_only_changes() {
        let dual = |ip: &str| {
            with(
                with(
                    node(
                        "node-b",
                        1,
                        &["10.42.1.0/24", "fd00:42:0:1::/64"],
                        &[
                            ("kube-subnet-manager", "true"),
                            ("backend-type", "vxlan"),
                            ("backend-data", MAC_B),
                            ("public-ip", ip),
                        ],
                    ),
                    "backend-v6-data",
                    Some(r#"{"VNI":1,"VtepMAC":"0a:00:00:00:01:0b"}"#),
                ),
                "public-ipv6",
                Some("fd00::b"),
            )
        };
        let before = build_peer_set([&dual("192.168.1.13")], &ctx(DUAL));
        let peer = before.peers.get("node-b").unwrap();
        assert_eq!(peer.public_ipv6, Some("fd00::b".parse().unwrap()));
        assert_eq!(peer.lease.ipv6, Some("fd00:42:0:1::/64".parse().unwrap()));
        // Only the IPv4 public IP changes: upstream misses this in dual-stack.
        let after = build_peer_set([&dual("192.168.1.99")], &ctx(DUAL));
        assert_ne!(before.peers, after.peers);

        let v6_missing = with(dual("192.168.1.13"), "public-ipv6", None);
        let build = build_peer_set([&v6_missing], &ctx(DUAL));
        assert!(build.peers.is_empty());
        assert!(build.skipped["node-b"]
            .to_string()
            .contains("public-ipv6 is missing"));
    }

    #[test]
    fn wireguard_and_host_gw_backend_data() {
        let wg = r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "wireguard"}}"#;
        let key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        let peer = with(
            with(
                good("wg", 1, "10.42.1.0/24", "192.168.1.2"),
                "backend-type",
                Some("wireguard"),
            ),
            "backend-data",
            Some(&format!(r#"{{"PublicKey":"{key}","Port":51000}}"#)),
        );
        let build = build_peer_set([&peer], &ctx(wg));
        assert_eq!(
            build.peers.get("wg").unwrap().backend_v4,
            Some(PeerBackend::Wireguard {
                public_key: key.into(),
                port: 51000
            })
        );
        // flannel <= v0.26.5 publishes no Port (and Port 0 means the
        // same): the peer listens where we do. Keys are case-insensitive.
        for data in [
            format!(r#"{{"PublicKey":"{key}"}}"#),
            format!(r#"{{"publickey":"{key}","port":0}}"#),
        ] {
            let old = with(peer.clone(), "backend-data", Some(&data));
            assert_eq!(
                build_peer_set([&old], &ctx(wg))
                    .peers
                    .get("wg")
                    .unwrap()
                    .backend_v4,
                Some(PeerBackend::Wireguard {
                    public_key: key.into(),
                    port: 51820
                }),
                "{data}"
            );
        }
        for bad in [
            format!(r#"{{"PublicKey":"{key}","Port":70000}}"#),
            format!(r#"{{"PublicKey":"{key}","Port":"51820"}}"#),
        ] {
            let bad_port = with(peer.clone(), "backend-data", Some(&bad));
            assert!(
                build_peer_set([&bad_port], &ctx(wg))
                    .skipped
                    .contains_key("wg"),
                "{bad}"
            );
        }
        let bad_key = with(
            peer.clone(),
            "backend-data",
            Some(r#"{"PublicKey":"short"}"#),
        );
        assert!(build_peer_set([&bad_key], &ctx(wg))
            .skipped
            .contains_key("wg"));

        let hg = r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "host-gw"}}"#;
        let host = with(
            with(
                good("hg", 1, "10.42.1.0/24", "192.168.1.2"),
                "backend-type",
                Some("host-gw"),
            ),
            "backend-data",
            Some("null"),
        );
        assert_eq!(
            build_peer_set([&host], &ctx(hg))
                .peers
                .get("hg")
                .unwrap()
                .backend_v4,
            Some(PeerBackend::HostGw)
        );
    }

    #[test]
    fn deleting_nodes_are_not_peers() {
        let mut n = good("node-b", 1, "10.42.1.0/24", "192.168.1.13");
        n.metadata.deletion_timestamp = n.metadata.creation_timestamp.clone();
        let build = build_peer_set([&n], &ctx(V4));
        assert!(build.peers.is_empty() && build.skipped.is_empty());
    }

    /// The resolver, fed one Node at a time in a pseudo-random order of
    /// adds, changes (podCIDR, public IP, age, validity) and deletes, with
    /// nested, equal and own-lease-overlapping subnets, always holds what
    /// the full build over the same Nodes gives, and reports exactly the
    /// names whose entry changed.
    #[test]
    fn the_incremental_resolver_always_equals_the_full_build() {
        let ctx = ctx(V4);
        // Small pools so overlaps are frequent.
        let cidrs = [
            "10.42.1.0/24",
            "10.42.2.0/24",
            "10.42.2.0/23",
            "10.42.3.0/24",
            "10.42.0.0/24", // our own
            "10.42.0.0/22",
            "10.42.8.0/24",
            "10.42.9.0/24",
            "10.43.0.0/24", // outside the Network: skipped
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound as u64) as usize
        };
        let mut nodes: BTreeMap<String, SlimNode> = BTreeMap::new();
        let mut resolver = PeerResolver::new(ctx.own_lease);
        let mut full = build_peer_set(nodes.values(), &ctx);
        for step in 0..3000 {
            let name = format!("node-{}", next(12));
            let change = if next(5) == 0 {
                None
            } else {
                let cidr = cidrs[next(cidrs.len())];
                let ip = format!("192.168.1.{}", next(3) + 1);
                let mut n = good(&name, next(4) as i64, cidr, &ip);
                if next(8) == 0 {
                    n = with(n, "public-ip", Some("not-an-ip"));
                }
                Some(n)
            };
            let candidate = change.as_ref().map(|n| Candidate::from_node(n, &ctx));
            let reported = resolver.set(&name, candidate);
            match change {
                Some(n) => nodes.insert(name.clone(), n),
                None => nodes.remove(&name),
            };
            let expected = build_peer_set(nodes.values(), &ctx);
            assert_eq!(resolver.build(), &expected, "step {step}: {name}");
            let mut changed = resolver.take_changed();
            changed.sort();
            changed.dedup();
            let mut want: Vec<String> = nodes
                .keys()
                .chain(full.peers.iter().map(|p| &p.name))
                .chain(full.skipped.keys())
                .filter(|n| {
                    full.peers.get(n) != expected.peers.get(n)
                        || full.skipped.get(*n) != expected.skipped.get(*n)
                })
                .cloned()
                .collect();
            want.sort();
            want.dedup();
            assert_eq!(changed, want, "step {step}: {name}");
            assert_eq!(reported, !want.is_empty(), "step {step}: {name}");
            full = expected;
        }
        // A relist replaces everything at once.
        let relisted: HashMap<String, Candidate> = nodes
            .iter()
            .take(3)
            .map(|(name, n)| (name.clone(), Candidate::from_node(n, &ctx)))
            .collect();
        resolver.replace_all(relisted);
        let expected = build_peer_set(nodes.values().take(3), &ctx);
        assert_eq!(resolver.build(), &expected);
    }
}
