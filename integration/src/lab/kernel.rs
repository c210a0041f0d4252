//! What the kernel of a lab node holds, read from outside with
//! `ip -j -n <netns>` and `bridge -j -n <netns>` (iproute2's JSON output),
//! so checks do not depend on the library under test.

use std::process::Command;

use serde_json::Value;

use super::util::run;
use super::LabError;

/// The VXLAN device flannel programs for IPv4.
pub const VTEP: &str = "flannel.1";
/// The VXLAN device flannel programs for IPv6 (dual-stack).
pub const VTEP_V6: &str = "flannel-v6.1";
/// The uplink of every lab node (host-gw routes go out on it).
pub const UPLINK: &str = "eth0";

/// An address family of the pod network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    #[default]
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// `-4` or `-6` for `ip`.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// flannel's VXLAN device for this family (VNI 1).
    pub fn vtep(self) -> &'static str {
        match self {
            Family::V4 => VTEP,
            Family::V6 => VTEP_V6,
        }
    }

    /// The family of an address or CIDR in text form.
    pub fn of(text: &str) -> Family {
        if text.contains(':') {
            Family::V6
        } else {
            Family::V4
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A VXLAN device as `ip -d link show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtep {
    /// Device name.
    pub name: String,
    /// VNI (`id`).
    pub vni: u64,
    /// UDP destination port.
    pub port: u64,
    /// Learning on?
    pub learning: bool,
    /// MTU.
    pub mtu: u64,
    /// MAC address.
    pub mac: String,
    /// Local (source) address.
    pub local: Option<String>,
    /// Underlying device.
    pub link: Option<String>,
    /// Administratively up?
    pub up: bool,
    /// Addresses of the device's family with prefix length
    /// (`10.42.0.0/32`; for `flannel-v6.1` the global ones,
    /// `fd00:42::/128`).
    pub addrs: Vec<String>,
}

/// A route as `ip -j route show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination (`10.42.1.0/24`, `default`).
    pub dst: String,
    /// Gateway, if any.
    pub gateway: Option<String>,
    /// Device.
    pub dev: Option<String>,
    /// Protocol (`77`, `kernel`, ...).
    pub protocol: Option<String>,
    /// Flags (`onlink`, ...).
    pub flags: Vec<String>,
}

impl Route {
    /// Has the `onlink` flag.
    pub fn onlink(&self) -> bool {
        self.flags.iter().any(|f| f == "onlink")
    }
}

/// A neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// IP address.
    pub dst: String,
    /// Link-layer address.
    pub lladdr: Option<String>,
    /// States (`PERMANENT`, ...).
    pub state: Vec<String>,
}

/// A bridge forwarding database entry on a VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// MAC address.
    pub mac: String,
    /// Remote VTEP address.
    pub dst: Option<String>,
    /// Flags (`self`, ...).
    pub flags: Vec<String>,
    /// State (`permanent`, ...).
    pub state: Option<String>,
}

fn json(step: &str, program: &str, netns: &str, args: &[&str]) -> Result<Value, LabError> {
    let text = run(
        step,
        Command::new(program)
            .arg("-j")
            .arg("-n")
            .arg(netns)
            .args(args),
    )?;
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text)
        .map_err(|e| LabError::new(step, format!("{program} printed no JSON ({e}): {text}")))
}

fn string(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn strings(value: &Value, key: &str) -> Vec<String> {
    match value.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// `ip -d link show <dev>` as a [`Vtep`] with its IPv4 addresses, or
/// `None` when there is no such device (or it is not VXLAN).
pub fn vtep(netns: &str, dev: &str) -> Result<Option<Vtep>, LabError> {
    vtep_of(netns, dev, Family::V4)
}

/// [`vtep`] listing the device's addresses of `family` (IPv6: global
/// scope only, not the link-local one).
pub fn vtep_of(netns: &str, dev: &str, family: Family) -> Result<Option<Vtep>, LabError> {
    let step = format!("reading {dev} in {netns}");
    let exists = Command::new("ip")
        .args(["-n", netns, "link", "show", dev])
        .output()
        .map_err(|e| LabError::new(&step, format!("cannot run ip: {e}")))?;
    if !exists.status.success() {
        return Ok(None);
    }
    let links = items(json(
        &step,
        "ip",
        netns,
        &["-d", "addr", "show", "dev", dev],
    )?);
    let Some(link) = links.into_iter().next() else {
        return Ok(None);
    };
    let info = &link["linkinfo"];
    if info["info_kind"] != "vxlan" {
        return Ok(None);
    }
    let data = &info["info_data"];
    let addrs = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| match family {
            Family::V4 => a["family"] == "inet",
            Family::V6 => a["family"] == "inet6" && a["scope"] == "global",
        })
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect();
    Ok(Some(Vtep {
        name: dev.to_string(),
        vni: data["id"].as_u64().unwrap_or_default(),
        port: data["port"].as_u64().unwrap_or_default(),
        learning: data["learning"].as_bool().unwrap_or(true),
        mtu: link["mtu"].as_u64().unwrap_or_default(),
        mac: string(&link, "address").unwrap_or_default(),
        // iproute2 names an IPv6 local address `local6`.
        local: string(data, "local").or_else(|| string(data, "local6")),
        link: string(data, "link"),
        up: strings(&link, "flags").iter().any(|f| f == "UP"),
        addrs,
    }))
}

/// IPv4 routes of the main table.
pub fn routes(netns: &str) -> Result<Vec<Route>, LabError> {
    routes_of(netns, Family::V4)
}

/// Routes of `family` in the main table.
pub fn routes_of(netns: &str, family: Family) -> Result<Vec<Route>, LabError> {
    let step = format!("reading {family} routes in {netns}");
    Ok(items(json(
        &step,
        "ip",
        netns,
        &[family.ip_flag(), "route", "show"],
    )?)
    .iter()
    .map(|r| Route {
        dst: string(r, "dst").unwrap_or_default(),
        gateway: string(r, "gateway"),
        dev: string(r, "dev"),
        protocol: string(r, "protocol"),
        flags: strings(r, "flags"),
    })
    .collect())
}

/// IPv4 neighbours on `dev`.
pub fn neighbours(netns: &str, dev: &str) -> Result<Vec<Neighbour>, LabError> {
    neighbours_of(netns, dev, Family::V4)
}

/// Neighbours of `family` on `dev`.
pub fn neighbours_of(netns: &str, dev: &str, family: Family) -> Result<Vec<Neighbour>, LabError> {
    let step = format!("reading {family} neighbours on {dev} in {netns}");
    if !link_exists(netns, dev) {
        return Ok(Vec::new());
    }
    Ok(items(json(
        &step,
        "ip",
        netns,
        &[family.ip_flag(), "neigh", "show", "dev", dev],
    )?)
    .iter()
    .map(|n| Neighbour {
        dst: string(n, "dst").unwrap_or_default(),
        lladdr: string(n, "lladdr"),
        state: strings(n, "state"),
    })
    .collect())
}

/// FDB entries on `dev`.
pub fn fdb(netns: &str, dev: &str) -> Result<Vec<FdbEntry>, LabError> {
    let step = format!("reading the FDB of {dev} in {netns}");
    if !link_exists(netns, dev) {
        return Ok(Vec::new());
    }
    Ok(
        items(json(&step, "bridge", netns, &["fdb", "show", "dev", dev])?)
            .iter()
            .map(|f| FdbEntry {
                mac: string(f, "mac").unwrap_or_default(),
                dst: string(f, "dst"),
                flags: strings(f, "flags"),
                state: string(f, "state"),
            })
            .collect(),
    )
}

fn link_exists(netns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "link", "show", dev])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Every flannel VXLAN device (`flannel.<VNI>`, `flannel-v6.<VNI>`) in
/// the namespace, by name.
pub fn flannel_devices(netns: &str) -> Result<Vec<String>, LabError> {
    let step = format!("listing links in {netns}");
    Ok(items(json(&step, "ip", netns, &["link", "show"])?)
        .iter()
        .filter_map(|l| string(l, "ifname"))
        .filter(|n| n.starts_with("flannel.") || n.starts_with("flannel-v6."))
        .collect())
}

/// What a node's kernel holds for one peer (flannel's three entries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerEntries {
    /// `<lease> via <lease network address> dev flannel.1 onlink`.
    pub route: bool,
    /// `<lease network address> lladdr <VtepMAC>` on flannel.1, permanent.
    pub neighbour: bool,
    /// `<VtepMAC> dst <public IP>` on flannel.1, self, permanent.
    pub fdb: bool,
}

impl PeerEntries {
    /// All three present.
    pub fn complete(&self) -> bool {
        self.route && self.neighbour && self.fdb
    }

    /// None of the three present.
    pub fn none(&self) -> bool {
        !self.route && !self.neighbour && !self.fdb
    }
}

/// A peer as its Node publishes it, for one address family (for IPv6
/// from `spec.podCIDRs`, `backend-v6-data` and `public-ipv6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// The peer's podCIDR of the family (`10.42.1.0/24`,
    /// `fd00:42:0:1::/64`).
    pub pod_cidr: String,
    /// Its VTEP MAC (backend-data; empty for host-gw).
    pub vtep_mac: String,
    /// Its public IP of the family.
    pub public_ip: String,
    /// wireguard: its public key (backend-data PublicKey; empty otherwise).
    pub public_key: String,
    /// wireguard: its port (backend-data Port).
    pub port: Option<u16>,
}

/// A node's kernel state relevant to flannel for one address family, read
/// at once: the family's VXLAN device and its entries, and the routes.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The family read.
    pub family: Family,
    /// flannel.1 (IPv6: flannel-v6.1), if present.
    pub vtep: Option<Vtep>,
    /// Routes of the family.
    pub routes: Vec<Route>,
    /// Neighbours on the VXLAN device.
    pub neighbours: Vec<Neighbour>,
    /// FDB entries on the VXLAN device.
    pub fdb: Vec<FdbEntry>,
}

impl Snapshot {
    /// Reads the namespace's IPv4 side (flannel.1).
    pub fn read(netns: &str) -> Result<Snapshot, LabError> {
        Snapshot::read_family(netns, Family::V4)
    }

    /// Reads the namespace's `family` side (flannel.1 or flannel-v6.1).
    pub fn read_family(netns: &str, family: Family) -> Result<Snapshot, LabError> {
        let dev = family.vtep();
        Ok(Snapshot {
            family,
            vtep: vtep_of(netns, dev, family)?,
            routes: routes_of(netns, family)?,
            neighbours: neighbours_of(netns, dev, family)?,
            fdb: fdb(netns, dev)?,
        })
    }

    /// Whether the host-gw route for `peer` is there:
    /// `<peer lease> via <peer public IP> dev eth0`.
    pub fn host_gw_route(&self, peer: &PeerView) -> bool {
        self.routes.iter().any(|r| {
            r.dst == peer.pod_cidr
                && r.gateway.as_deref() == Some(peer.public_ip.as_str())
                && r.dev.as_deref() == Some(UPLINK)
        })
    }

    /// The VXLAN entries this node holds for `peer`.
    pub fn entries_for(&self, peer: &PeerView) -> PeerEntries {
        let network = peer.pod_cidr.split('/').next().unwrap_or_default();
        let mac = peer.vtep_mac.to_ascii_lowercase();
        let dev = self.family.vtep();
        PeerEntries {
            route: self.routes.iter().any(|r| {
                r.dst == peer.pod_cidr
                    && r.gateway.as_deref() == Some(network)
                    && r.dev.as_deref() == Some(dev)
                    && r.onlink()
            }),
            neighbour: self.neighbours.iter().any(|n| {
                n.dst == network
                    && n.lladdr.as_deref().map(str::to_ascii_lowercase).as_deref()
                        == Some(mac.as_str())
                    && n.state.iter().any(|s| s == "PERMANENT")
            }),
            fdb: self.fdb.iter().any(|f| {
                f.mac.to_ascii_lowercase() == mac
                    && f.dst.as_deref() == Some(peer.public_ip.as_str())
                    && f.flags.iter().any(|s| s == "self")
            }),
        }
    }

    /// Any route, neighbour or FDB entry that mentions `peer` (its subnet,
    /// its network address or its MAC) at all.
    pub fn mentions(&self, peer: &PeerView) -> PeerEntries {
        let network = peer.pod_cidr.split('/').next().unwrap_or_default();
        let mac = peer.vtep_mac.to_ascii_lowercase();
        PeerEntries {
            route: self.routes.iter().any(|r| r.dst == peer.pod_cidr),
            neighbour: self.neighbours.iter().any(|n| n.dst == network),
            fdb: self.fdb.iter().any(|f| f.mac.to_ascii_lowercase() == mac),
        }
    }
}
