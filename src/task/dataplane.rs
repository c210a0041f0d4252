//! The data paths: vxlan (a device per family, neighbours, FDB entries and
//! onlink routes) and host-gw (routes through the uplink), each reconciled
//! level-triggered: desired state from the whole peer set against a model
//! of what the kernel holds. Where the kernel has nexthop objects, every
//! route points at one of its own (`nhid`), which holds the gateway; see
//! `backend::nexthop`.
//!
//! The model comes from a full dump and is then kept by recording every
//! operation the kernel accepted and folding in kernel notifications: the
//! echo of our own writes changes nothing, while anything done behind our
//! back (a deleted route, a replaced neighbour, the device going away),
//! a failed operation, lost notifications and the periodic resync throw
//! the model away, so the next pass dumps again. A peer change at 5,000
//! peers therefore costs an in-memory diff, not four dumps of 5,000
//! entries each.

use std::time::Instant;

use std::collections::BTreeMap;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use tracing::{debug, info, warn};

use crate::backend::incremental::{EntryTarget, LastPass};
use crate::backend::nexthop::use_nexthops;
use crate::backend::vxlan::{desired_entries, incompatibility, DirectRouting, VxlanDeviceSpec};
use crate::backend::OpFailure;
use crate::backend::{
    diff, host_gw, peers_failing, split_dependents, KernelEntries, Observation, Op, Scope, PHASES,
};
use crate::kube_subnet::PeerSnapshot;
use crate::mac::MacAddr;
use crate::netlink::{AcceptRa, NetlinkError, NetlinkHandle, NexthopSupport};

/// The device as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Device {
    pub index: u32,
    pub mac: MacAddr,
}

/// What one reconcile did.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Peers whose entries are all in place.
    pub peers_programmed: usize,
    /// Operations applied.
    pub applied: usize,
    /// Operations that failed (the rest of the pass was still applied).
    pub failures: Vec<OpFailure>,
    /// Families (devices) whose pass could not run at all, with why; the
    /// other family's pass still ran.
    pub errors: Vec<(String, NetlinkError)>,
    /// Full dumps of the kernel this pass needed (the model was not
    /// trusted).
    pub dumps: u64,
}

impl Report {
    /// Whether everything wanted is in place.
    pub fn complete(&self) -> bool {
        self.failures.is_empty() && self.errors.is_empty()
    }

    /// One line for the status and the log: stable while the same things
    /// fail, so a lasting failure is warned about once.
    pub fn summary(&self) -> Option<String> {
        if self.complete() {
            return None;
        }
        let mut parts: Vec<String> = self
            .errors
            .iter()
            .map(|(device, error)| format!("{device}: {error}"))
            .collect();
        parts.extend(self.failures.iter().take(3).map(ToString::to_string));
        if self.failures.len() > 3 {
            parts.push(format!("and {} more", self.failures.len() - 3));
        }
        let mut line = parts.join("; ");
        if !self.failures.is_empty() {
            line.push_str(&format!(
                " ({} operation{} failed)",
                self.failures.len(),
                if self.failures.len() == 1 { "" } else { "s" }
            ));
        }
        Some(line)
    }
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
    /// What the kernel holds, while it can be trusted (`None`: dump).
    pub model: Option<KernelEntries>,
    /// What the previous pass wanted, while the model is trusted: small
    /// peer changes are then applied without a full pass.
    pub last: Option<LastPass>,
    /// Whether a read-only /proc/sys was warned about (once).
    pub accept_ra_warned: bool,
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
        match self.netlink.disable_accept_ra(&self.spec.name).await? {
            AcceptRa::Disabled if !created => {
                info!(device = %self.spec.name, "set accept_ra back to 0 on the vxlan device")
            }
            AcceptRa::NotWritable(problem) if !self.accept_ra_warned => {
                self.accept_ra_warned = true;
                warn!(
                    device = %self.spec.name,
                    "{problem} in {}: /proc/sys is read-only here, so router advertisements over the overlay are not ignored; going on without it, as upstream does",
                    self.netlink.netns()
                );
            }
            _ => {}
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
    /// entries from the model (or a dump, with the device checked first,
    /// when the model is not trusted), apply the difference. Deletions only
    /// once the peer list is complete.
    pub async fn reconcile(&mut self, peers: &PeerSnapshot) -> Result<Report, NetlinkError> {
        let started = Instant::now();
        let mut dumps = 0;
        let ipv6 = self.lease.is_ipv6();
        let nexthops = self.netlink.nexthop_support().await? == &NexthopSupport::Used;
        // A few peers changed and the model is trusted: touch only theirs.
        if let (Some(device), Some(model), Some(last)) =
            (self.device, self.model.as_ref(), self.last.as_mut())
        {
            let target = entry_target(device.index, self.direct.as_ref(), ipv6, nexthops);
            if let Some(phases) = last.advance(&peers.peers, peers.synced, model, &target) {
                let wanted = last.routes_wanted();
                let actual = self.model.take().unwrap_or_default();
                let (report, model) = apply_difference(
                    &self.netlink,
                    device.index,
                    &self.spec.name,
                    phases,
                    wanted,
                    actual,
                    started,
                )
                .await;
                // A refused operation is retried by a full pass (against
                // the model, without a dump).
                if model.is_none() || !report.failures.is_empty() {
                    self.last = None;
                }
                self.model = model;
                return Ok(report);
            }
        }
        let (device, actual) = match (self.device, self.model.take()) {
            (Some(device), Some(model)) => (device, model),
            _ => {
                let (device, _) = self.ensure_device().await?;
                dumps += 1;
                (device, self.netlink.dump_entries(device.index, ipv6).await?)
            }
        };
        let mut desired = desired_entries(&peers.peers, device.index, self.direct.as_ref(), ipv6);
        if nexthops {
            use_nexthops(&mut desired, &actual);
        }
        let phases = diff(&desired, &actual, peers.synced);
        let (mut report, model) = apply_difference(
            &self.netlink,
            device.index,
            &self.spec.name,
            phases,
            desired.routes.len(),
            actual,
            started,
        )
        .await;
        report.dumps = dumps;
        self.last = (model.is_some() && report.failures.is_empty()).then(|| {
            let target = entry_target(device.index, self.direct.as_ref(), ipv6, nexthops);
            LastPass::new(peers.peers.clone(), peers.synced, desired, &target)
        });
        self.model = model;
        Ok(report)
    }

    fn is_direct_uplink(&self, index: u32) -> bool {
        self.direct
            .as_ref()
            .is_some_and(|d| d.uplink_index == index)
    }

    /// Folds a kernel notification into the model; returns whether a pass
    /// is due: our device or its address changed, an entry of ours was
    /// touched by someone else, notifications were lost.
    pub fn observe(&mut self, observation: &Observation) -> bool {
        let index = self.device.map(|d| d.index);
        let ipv6 = self.lease.is_ipv6();
        let scope = Scope {
            device: index,
            ipv4: !ipv6,
            ipv6,
        };
        let stale = match observation {
            // DirectRouting: the uplink going down, losing its carrier or
            // its address flushes our routes (and nexthop objects) through
            // it with no notification of their own.
            Observation::Link { index: i, name } => {
                Some(*i) == index
                    || name.as_deref() == Some(self.spec.name.as_str())
                    || self.is_direct_uplink(*i)
            }
            // Only what `ensure_device` manages: our lease address and
            // other addresses inside the cluster network. The IPv6 link-local
            // address finishing DAD a second or two after the device came
            // up is none of our business.
            Observation::Address { index: i, address } => {
                (Some(*i) == index
                    && address
                        .is_none_or(|a| a == self.lease.network() || self.network.contains(a)))
                    || self.is_direct_uplink(*i)
            }
            Observation::Overrun | Observation::MonitorEnded => true,
            other => match &mut self.model {
                Some(model) => model.observe(&scope, other),
                None => return false,
            },
        };
        if stale {
            debug!(device = %self.spec.name, ?observation, "the kernel changed behind our back; the next pass dumps");
            self.model = None;
            self.last = None;
        }
        stale
    }
}

fn entry_target(
    device_index: u32,
    direct: Option<&DirectRouting>,
    ipv6: bool,
    nexthops: bool,
) -> EntryTarget<'_> {
    EntryTarget {
        device_index,
        direct,
        ipv6,
        nexthops,
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
    /// What the kernel holds, while it can be trusted (`None`: dump).
    pub model: Option<KernelEntries>,
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
        let (actual, dumps) = match self.model.take() {
            Some(model) => (model, 0),
            None => (
                self.netlink
                    .dump_routes_and_nexthops(self.ipv4, self.ipv6)
                    .await?,
                1,
            ),
        };
        if self.netlink.nexthop_support().await? == &NexthopSupport::Used {
            use_nexthops(&mut desired, &actual);
        }
        let phases = diff(&desired, &actual, peers.synced);
        let (mut report, model) = apply_difference(
            &self.netlink,
            self.uplink_index,
            &self.uplink_name,
            phases,
            desired.routes.len(),
            actual,
            started,
        )
        .await;
        report.dumps = dumps;
        self.model = model;
        Ok(report)
    }

    /// As [`VxlanDataPath::observe`]: routes and nexthop objects only; the
    /// uplink going down flushes our routes and nexthop objects on it
    /// without a notification of their own.
    pub fn observe(&mut self, observation: &Observation) -> bool {
        let scope = Scope {
            device: None,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
        };
        let stale = match observation {
            // Losing its address flushes plain routes through it, also
            // silently.
            Observation::Link { index, .. } | Observation::Address { index, .. } => {
                *index == self.uplink_index
            }
            Observation::Overrun | Observation::MonitorEnded => true,
            other => match &mut self.model {
                Some(model) => model.observe(&scope, other),
                None => return false,
            },
        };
        if stale {
            debug!(uplink = %self.uplink_name, ?observation, "the kernel changed behind our back; the next pass dumps");
            self.model = None;
        }
        stale
    }
}

/// The backend's data path: vxlan (one per enabled family), host-gw or
/// wireguard (one device per family, or one for both).
pub(crate) enum DataPath {
    Vxlan(Vec<VxlanDataPath>),
    HostGw(Box<HostGwDataPath>),
    Wireguard(Box<super::wg_path::WireguardDataPath>),
}

impl DataPath {
    /// One pass over every family: a family that fails does not keep the
    /// other from converging.
    pub async fn reconcile(&mut self, peers: &PeerSnapshot) -> Report {
        match self {
            DataPath::Vxlan(paths) => {
                let mut total = Report::default();
                let mut programmed = Vec::new();
                for path in paths.iter_mut() {
                    match path.reconcile(peers).await {
                        Ok(report) => {
                            programmed.push(report.peers_programmed);
                            total.dumps += report.dumps;
                            total.applied += report.applied;
                            total.failures.extend(report.failures);
                        }
                        Err(error) => {
                            programmed.push(0);
                            total.errors.push((path.spec.name.clone(), error));
                        }
                    }
                }
                // A peer counts once when it has both families, and only
                // when both are programmed.
                total.peers_programmed = programmed.into_iter().min().unwrap_or(0);
                total
            }
            DataPath::HostGw(path) => match path.reconcile(peers).await {
                Ok(report) => report,
                Err(error) => Report {
                    errors: vec![(path.uplink_name.clone(), error)],
                    ..Report::default()
                },
            },
            DataPath::Wireguard(path) => path.reconcile(peers).await,
        }
    }

    /// The netlink handle the paths program through (none: no family).
    pub fn netlink(&self) -> Option<&NetlinkHandle> {
        match self {
            DataPath::Vxlan(paths) => paths.first().map(|path| &path.netlink),
            DataPath::HostGw(path) => Some(&path.netlink),
            DataPath::Wireguard(path) => Some(&path.netlink),
        }
    }

    /// The uplink's address of a family changed: every vxlan device of
    /// that family moves its local address there (the device is recreated
    /// on the next pass, with the same MAC, so peers' neighbour entries
    /// stay right). Returns the devices that move.
    pub fn move_local(&mut self, ipv4: Option<IpAddr>, ipv6: Option<IpAddr>) -> Vec<String> {
        let DataPath::Vxlan(paths) = self else {
            return Vec::new();
        };
        let mut moved = Vec::new();
        for path in paths.iter_mut() {
            let new = if path.lease.is_ipv6() { ipv6 } else { ipv4 };
            if let Some(new) = new.filter(|new| *new != path.spec.local) {
                path.spec.local = new;
                path.device = None;
                path.model = None;
                path.last = None;
                moved.push(path.spec.name.clone());
            }
        }
        moved
    }

    /// Points every path at a reopened netlink connection. Nothing the
    /// old one said can be trusted: every model is forgotten.
    pub fn use_netlink(&mut self, netlink: &NetlinkHandle) {
        match self {
            DataPath::Vxlan(paths) => paths.iter_mut().for_each(|p| p.netlink = netlink.clone()),
            DataPath::HostGw(path) => path.netlink = netlink.clone(),
            DataPath::Wireguard(path) => path.use_netlink(netlink),
        }
        self.forget_models();
    }

    /// Folds a kernel notification into every path's model; returns
    /// whether a pass is due.
    pub fn observe(&mut self, observation: &Observation) -> bool {
        match self {
            // Every path sees every notification (no short circuit): each
            // keeps its own model.
            DataPath::Vxlan(paths) => {
                let mut due = false;
                for path in paths.iter_mut() {
                    due |= path.observe(observation);
                }
                due
            }
            DataPath::HostGw(path) => path.observe(observation),
            DataPath::Wireguard(path) => path.observe(observation),
        }
    }

    /// Forgets every model: the next pass dumps the kernel (the periodic
    /// resync, so drift never outlives it).
    pub fn forget_models(&mut self) {
        match self {
            DataPath::Vxlan(paths) => paths.iter_mut().for_each(|p| {
                p.model = None;
                p.last = None;
            }),
            DataPath::HostGw(path) => path.model = None,
            DataPath::Wireguard(path) => path.forget_models(),
        }
    }
}

/// Applies the phases in order, logs every change once; returns the report
/// and the model after the changes: what the kernel accepted is recorded,
/// what it refused is not (a refused operation changes nothing), and a
/// failure that says the model itself is wrong (an entry missing or
/// already there, no answer) gives `None`: the next pass dumps.
/// `routes_wanted`: one per programmable peer.
async fn apply_difference(
    netlink: &NetlinkHandle,
    device_index: u32,
    device_name: &str,
    phases: [Vec<Op>; PHASES],
    routes_wanted: usize,
    mut actual: KernelEntries,
    started: Instant,
) -> (Report, Option<KernelEntries>) {
    let total: usize = phases.iter().map(Vec::len).sum();
    let mut report = Report::default();
    for phase in &phases {
        let failed: Vec<Op> = report.failures.iter().map(|f| f.op).collect();
        let (go, held) = split_dependents(phase, &failed);
        for (op, blocker) in held {
            report.failures.push(OpFailure {
                op,
                errno: None,
                held_back_by: Some(blocker),
                message: format!("held back: it depends on `{blocker}`, which failed"),
            });
        }
        if go.is_empty() {
            continue;
        }
        report
            .failures
            .extend(netlink.apply(device_index, &go).await);
        report.applied += go.len();
    }
    // The loop reports failures (once while they last); the details of
    // every one are for debugging.
    for failure in &report.failures {
        debug!("{failure} on {device_name} in {}", netlink.netns());
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
    report.peers_programmed =
        routes_wanted.saturating_sub(peers_failing(&report.failures, &phases, &actual));
    // Held-back operations were never sent: they say nothing about the
    // model.
    let stale = report.failures.iter().any(OpFailure::model_is_stale);
    let model = (!stale).then(|| {
        let refused: Vec<Op> = report.failures.iter().map(|f| f.op).collect();
        phases
            .iter()
            .flatten()
            .filter(|op| !refused.contains(op))
            .for_each(|op| actual.record(op));
        actual
    });
    (report, model)
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
