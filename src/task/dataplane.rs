//! The data paths: vxlan (a device per family, neighbours, FDB entries and
//! onlink routes) and host-gw (routes through the uplink), each reconciled
//! level-triggered against a kernel dump. Where the kernel has nexthop
//! objects, every route points at one of its own (`nhid`), which holds the
//! gateway; see `backend::nexthop`.

use std::time::Instant;

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::RouteNetlinkMessage;
use tracing::{debug, info, warn};

use crate::backend::nexthop::use_nexthops;
use crate::backend::vxlan::{desired_entries, incompatibility, DirectRouting, VxlanDeviceSpec};
use crate::backend::{diff, host_gw, KernelEntries, Op, PHASES, ROUTE_PROTOCOL};
use crate::kube_subnet::PeerSnapshot;
use crate::mac::MacAddr;
use crate::netlink::{KernelEvent, NetlinkError, NetlinkHandle, NexthopEvent, NexthopSupport};

/// The device as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Device {
    pub index: u32,
    pub mac: MacAddr,
}

/// What one reconcile did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    /// Peers whose entries are all in place.
    pub peers_programmed: usize,
    /// Operations applied.
    pub applied: usize,
    /// Operations that failed (object and error).
    pub failures: Vec<(Op, String)>,
}

/// The vxlan data path for one address family.
pub(crate) struct VxlanDataPath {
    pub netlink: NetlinkHandle,
    pub spec: VxlanDeviceSpec,
    /// Own lease: its network address goes on the device as a /32 (/128).
    pub lease: IpNetwork,
    /// Cluster network: other addresses inside it are removed from the device.
    pub network: IpNetwork,
    pub direct: Option<DirectRouting>,
    pub device: Option<Device>,
}

impl VxlanDataPath {
    /// Makes sure the device exists with the right attributes, is up, has
    /// the right MTU and exactly our address. A missing device is created
    /// with `spec.mac` (the MAC peers know); an incompatible one is
    /// recreated; an existing compatible one is reused, MAC included.
    pub async fn ensure_device(&mut self) -> Result<(Device, bool), NetlinkError> {
        let mut created = false;
        let found = match self.netlink.find_vxlan(&self.spec.name).await? {
            Some(found) => match incompatibility(&self.spec, &found) {
                None => Some(found),
                Some(reason) => {
                    warn!("{reason}; recreating it");
                    self.netlink.delete_link(found.index).await?;
                    None
                }
            },
            None => None,
        };
        let found = match found {
            Some(found) => found,
            None => {
                self.netlink.create_vxlan(&self.spec).await?;
                created = true;
                info!(
                    device = %self.spec.name,
                    vni = self.spec.vni,
                    local = %self.spec.local,
                    dstport = self.spec.port,
                    mtu = self.spec.mtu,
                    mac = %self.spec.mac,
                    "created vxlan device"
                );
                self.netlink
                    .find_vxlan(&self.spec.name)
                    .await?
                    .ok_or_else(|| {
                        NetlinkError::NoInterface(format!(
                            "{} vanished right after creation",
                            self.spec.name
                        ))
                    })?
            }
        };
        if found.mtu != self.spec.mtu || !found.up {
            self.netlink.set_link(found.index, self.spec.mtu).await?;
            if !created {
                info!(device = %self.spec.name, mtu = self.spec.mtu, "set the vxlan device's MTU and brought it up");
            }
        }
        let host_prefix = if self.lease.is_ipv6() { 128 } else { 32 };
        let address = IpNetwork::new(self.lease.network(), host_prefix)
            .map_err(|e| NetlinkError::NoInterface(format!("lease address: {e}")))?;
        if self
            .netlink
            .ensure_only_address(found.index, address, self.network)
            .await?
            && !created
        {
            info!(device = %self.spec.name, %address, "restored the vxlan device's address");
        }
        let device = Device {
            index: found.index,
            mac: found.mac.unwrap_or(self.spec.mac),
        };
        // Keep using this MAC if the device is ever recreated.
        self.spec.mac = device.mac;
        self.device = Some(device);
        Ok((device, created))
    }

    /// One level-triggered pass: desired entries from the peers, actual
    /// entries from a dump, apply the difference. Deletions only once the
    /// peer list is complete.
    pub async fn reconcile(&mut self, peers: &PeerSnapshot) -> Result<Report, NetlinkError> {
        let started = Instant::now();
        let (device, _) = self.ensure_device().await?;
        let ipv6 = self.lease.is_ipv6();
        let actual = self.netlink.dump_entries(device.index, ipv6).await?;
        let mut desired = desired_entries(&peers.peers, device.index, self.direct.as_ref(), ipv6);
        if self.netlink.nexthop_support().await? == &NexthopSupport::Used {
            use_nexthops(&mut desired, &actual);
        }
        Ok(apply_difference(
            &self.netlink,
            device.index,
            &self.spec.name,
            &desired,
            &actual,
            peers.synced,
            started,
        )
        .await)
    }

    /// Whether a kernel notification concerns what we own: our device, an
    /// entry on it, one of our routes or nexthop objects.
    pub fn is_relevant(&self, event: &KernelEvent) -> bool {
        let message = match event {
            KernelEvent::Rtnl(message) => message,
            KernelEvent::Nexthop(event) => return is_ours(event),
            KernelEvent::Overrun => return true,
        };
        let NetlinkPayload::InnerMessage(inner) = &message.payload else {
            return false;
        };
        let index = self.device.map(|d| d.index);
        match inner {
            RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link) => {
                Some(link.header.index) == index
                    || link
                        .attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::IfName(n) if *n == self.spec.name))
            }
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                Some(n.header.ifindex) == index
            }
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                Some(a.header.index) == index
            }
            RouteNetlinkMessage::DelRoute(r) => u8::from(r.header.protocol) == ROUTE_PROTOCOL,
            _ => false,
        }
    }
}

/// host-gw: routes through the uplink, nothing else.
pub(crate) struct HostGwDataPath {
    pub netlink: NetlinkHandle,
    pub uplink_name: String,
    pub uplink_index: u32,
    /// The uplink's connected subnets (peers must be on one of them).
    pub connected: Vec<IpNetwork>,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Peer → the reason already warned about.
    pub warned: BTreeMap<String, String>,
}

impl HostGwDataPath {
    pub async fn reconcile(&mut self, peers: &PeerSnapshot) -> Result<Report, NetlinkError> {
        let started = Instant::now();
        let (mut desired, unreachable) =
            host_gw::desired_routes(&peers.peers, self.uplink_index, &self.connected);
        for (peer, reason) in &unreachable {
            if self.warned.get(peer) != Some(reason) {
                warn!(peer = %peer, "no host-gw route to node {peer}: {reason}");
                self.warned.insert(peer.clone(), reason.clone());
            }
        }
        self.warned
            .retain(|peer, _| unreachable.iter().any(|(p, _)| p == peer));
        let actual = self
            .netlink
            .dump_routes_and_nexthops(self.ipv4, self.ipv6)
            .await?;
        if self.netlink.nexthop_support().await? == &NexthopSupport::Used {
            use_nexthops(&mut desired, &actual);
        }
        Ok(apply_difference(
            &self.netlink,
            self.uplink_index,
            &self.uplink_name,
            &desired,
            &actual,
            peers.synced,
            started,
        )
        .await)
    }
}

/// The backend's data path: vxlan (one per enabled family) or host-gw.
pub(crate) enum DataPath {
    Vxlan(Vec<VxlanDataPath>),
    HostGw(HostGwDataPath),
}

impl DataPath {
    pub async fn reconcile(&mut self, peers: &PeerSnapshot) -> Result<Report, NetlinkError> {
        match self {
            DataPath::Vxlan(paths) => {
                let mut total = Report::default();
                for path in paths.iter_mut() {
                    let report = path.reconcile(peers).await?;
                    // A peer counts once even when it has both families.
                    total.peers_programmed = total.peers_programmed.max(report.peers_programmed);
                    total.applied += report.applied;
                    total.failures.extend(report.failures);
                }
                Ok(total)
            }
            DataPath::HostGw(path) => path.reconcile(peers).await,
        }
    }

    pub fn is_relevant(&self, event: &KernelEvent) -> bool {
        match self {
            DataPath::Vxlan(paths) => paths.iter().any(|p| p.is_relevant(event)),
            DataPath::HostGw(path) => match event {
                KernelEvent::Rtnl(message) => match &message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => {
                        u8::from(r.header.protocol) == ROUTE_PROTOCOL
                    }
                    // The uplink going down flushes our routes and nexthop
                    // objects on it without a notification of their own.
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link),
                    ) => link.header.index == path.uplink_index,
                    _ => false,
                },
                KernelEvent::Nexthop(event) => is_ours(event),
                KernelEvent::Overrun => true,
            },
        }
    }
}

/// A nexthop object of ours (protocol 77) was added, replaced or deleted:
/// by us (one more pass finds nothing to do) or by someone else (a hand-
/// deleted object took its routes with it, silently).
fn is_ours(event: &NexthopEvent) -> bool {
    event.nexthop.protocol == ROUTE_PROTOCOL
}

/// Diffs, applies in phases, logs every change once; returns the report.
async fn apply_difference(
    netlink: &NetlinkHandle,
    device_index: u32,
    device_name: &str,
    desired: &KernelEntries,
    actual: &KernelEntries,
    synced: bool,
    started: Instant,
) -> Report {
    let phases = diff(desired, actual, synced);
    let total: usize = phases.iter().map(Vec::len).sum();
    let mut report = Report::default();
    for phase in &phases {
        if phase.is_empty() {
            continue;
        }
        report
            .failures
            .extend(netlink.apply(device_index, phase).await);
        report.applied += phase.len();
    }
    for (op, error) in &report.failures {
        warn!(
            "{op} on {device_name} in {} failed: {error}",
            netlink.netns()
        );
    }
    if total > 0 {
        log_ops(&phases, device_name);
        info!(
            device = %device_name,
            applied = total - report.failures.len(),
            failed = report.failures.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "reconciled"
        );
    }
    report.peers_programmed = desired.routes.len().saturating_sub(report.failures.len());
    report
}

/// Every kernel change is logged once: one line per operation when there
/// are few, a count per kind when there are many (a cold start at
/// thousands of peers).
fn log_ops(phases: &[Vec<Op>; PHASES], device: &str) {
    let total: usize = phases.iter().map(Vec::len).sum();
    if total <= 32 {
        for op in phases.iter().flatten() {
            info!("{op} on {device}");
        }
    } else {
        for op in phases.iter().flatten() {
            debug!("{op} on {device}");
        }
    }
}
