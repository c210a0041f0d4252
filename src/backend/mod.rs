//! What the kernel must hold for the current peers (desired state), how it
//! differs from a dump of what it holds (actual state), and the operations
//! that close the gap. Pure functions with table tests; `netlink` applies
//! the operations.

pub mod host_gw;
pub mod incremental;
pub mod nexthop;
pub mod vxlan;
pub mod wireguard;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::mac::MacAddr;

/// Route protocol number that marks routes as flannel-embed's own
/// (`ip route` shows `proto 77`), so garbage collection never touches a
/// route someone else made.
pub const ROUTE_PROTOCOL: u8 = 77;

/// A permanent neighbour (ARP) entry on our device: the peer's VTEP address
/// resolves to its VTEP MAC without the kernel ever asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    /// Peer lease network address (10.42.1.0).
    pub ip: IpAddr,
    /// Peer VTEP MAC.
    pub mac: MacAddr,
}

/// A bridge FDB entry on our vxlan device (NTF_SELF, permanent): frames for
/// `mac` are encapsulated to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    /// Peer VTEP MAC.
    pub mac: MacAddr,
    /// Peer public IP.
    pub dst: IpAddr,
}

/// One of our routes (protocol [`ROUTE_PROTOCOL`], main table).
///
/// `gateway`, `oif` and `onlink` are what the route means; with
/// `nexthop: Some(id)` the kernel holds them in the nexthop object `id`
/// and the route only points at it (`ip route` shows `<dst> nhid <id> via
/// <gateway> dev <device> proto 77 onlink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteEntry {
    /// Destination (the peer's lease).
    pub dst: IpNetwork,
    /// Next hop.
    pub gateway: IpAddr,
    /// Output interface index.
    pub oif: u32,
    /// `onlink`: the gateway is reachable on the device without a
    /// connected route (vxlan: the peer's lease network address).
    pub onlink: bool,
    /// The nexthop object the route points at (`nhid`), or `None` for a
    /// plain gateway route.
    pub nexthop: Option<u32>,
}

impl RouteEntry {
    /// Whether the kernel's `found` route already is this one: the same
    /// nexthop object, or (plain routes) the same gateway, device and
    /// onlink flag. A nexthop's own gateway is compared through
    /// [`KernelEntries::nexthops`], so a changed gateway replaces the
    /// nexthop without touching the route.
    pub fn is_satisfied_by(&self, found: &RouteEntry) -> bool {
        self.dst == found.dst
            && match self.nexthop {
                Some(id) => found.nexthop == Some(id),
                None => {
                    found.nexthop.is_none()
                        && (self.gateway, self.oif, self.onlink)
                            == (found.gateway, found.oif, found.onlink)
                }
            }
    }
}

/// One of our nexthop objects (protocol [`ROUTE_PROTOCOL`]): `id <id> via
/// <gateway> dev <oif> [onlink]`. Routes point at it by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nexthop {
    /// Its id (unique in the network namespace, never 0).
    pub id: u32,
    /// Gateway.
    pub gateway: IpAddr,
    /// Output interface index.
    pub oif: u32,
    /// `onlink` (RTNH_F_ONLINK).
    pub onlink: bool,
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "neighbour {} lladdr {}", self.ip, self.mac)
    }
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fdb {} dst {}", self.mac, self.dst)
    }
}

impl fmt::Display for RouteEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {}", self.dst)?;
        if let Some(id) = self.nexthop {
            write!(f, " nhid {id}")?;
        }
        write!(f, " via {} dev #{}", self.gateway, self.oif)?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

impl fmt::Display for Nexthop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nexthop id {} via {} dev #{}",
            self.id, self.gateway, self.oif
        )?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

/// Entries of one kind of kernel object, either wanted or found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelEntries {
    /// Neighbours on our device, by IP.
    pub neighbours: BTreeMap<IpAddr, MacAddr>,
    /// FDB entries on our device.
    pub fdb: BTreeSet<FdbEntry>,
    /// Our routes, by destination.
    pub routes: BTreeMap<IpNetwork, RouteEntry>,
    /// Our nexthop objects (protocol 77, one gateway and device) of the
    /// families the data path covers, by id.
    pub nexthops: BTreeMap<u32, Nexthop>,
    /// Found state only: the ids of every other nexthop object in the
    /// namespace (other owners, other families, groups). Never reused,
    /// never touched.
    pub other_nexthop_ids: BTreeSet<u32>,
    /// Found state only: ids of our nexthops that a route which is not
    /// ours points at. Never garbage-collected.
    pub nexthops_used_elsewhere: BTreeSet<u32>,
}

/// One change to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Add or replace a neighbour.
    SetNeighbour(Neighbour),
    /// Delete a neighbour.
    DelNeighbour(Neighbour),
    /// Add or replace an FDB entry.
    SetFdb(FdbEntry),
    /// Delete an FDB entry.
    DelFdb(FdbEntry),
    /// Add or replace a route.
    SetRoute(RouteEntry),
    /// Delete a route.
    DelRoute(RouteEntry),
    /// Create a nexthop object under a fresh id (fails if the id is taken,
    /// so someone else's object is never overwritten).
    AddNexthop(Nexthop),
    /// Replace one of our nexthop objects (its gateway or device changed).
    ReplaceNexthop(Nexthop),
    /// Delete one of our nexthop objects.
    DelNexthop(Nexthop),
}

impl Op {
    /// Nexthop operations go through the nexthop socket.
    pub fn is_nexthop(&self) -> bool {
        matches!(
            self,
            Op::AddNexthop(_) | Op::ReplaceNexthop(_) | Op::DelNexthop(_)
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::SetNeighbour(n) => write!(f, "set {n}"),
            Op::DelNeighbour(n) => write!(f, "delete {n}"),
            Op::SetFdb(e) => write!(f, "set {e}"),
            Op::DelFdb(e) => write!(f, "delete {e}"),
            Op::SetRoute(r) => write!(f, "set {r}"),
            Op::DelRoute(r) => write!(f, "delete {r}"),
            Op::AddNexthop(n) => write!(f, "add {n}"),
            Op::ReplaceNexthop(n) => write!(f, "replace {n}"),
            Op::DelNexthop(n) => write!(f, "delete {n}"),
        }
    }
}

/// An operation the kernel refused, with its errno when the kernel gave
/// one (none: the request never got an answer), so the retry policy can
/// tell a wrong model from a refusal that will last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpFailure {
    /// The operation.
    pub op: Op,
    /// The kernel's errno (positive), if it answered.
    pub errno: Option<i32>,
    /// Not sent: it depends on this operation, which failed.
    pub held_back_by: Option<Op>,
    /// What went wrong, as text.
    pub message: String,
}

impl OpFailure {
    /// Whether the failure says the model of the kernel is wrong (an entry
    /// that was not there, or was where we thought it was not, a vanished
    /// device, no answer at all): then the next pass dumps. Any other
    /// refusal (EPERM, EINVAL, EOPNOTSUPP...) left the kernel as it was, so
    /// the model stays and only the failed operation is retried.
    pub fn model_is_stale(&self) -> bool {
        if self.held_back_by.is_some() {
            return false;
        }
        match self.errno {
            Some(errno) => [
                libc::EEXIST,
                libc::ENOENT,
                libc::ESRCH,
                libc::ENODEV,
                libc::ENXIO,
            ]
            .contains(&errno),
            None => true,
        }
    }
}

impl fmt::Display for OpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.message)
    }
}

/// How many peers a pass's failures leave without their entries: peers,
/// not operations, counted by the next hop that stands for the peer (the
/// gateway of its route, neighbour and nexthop object; an FDB entry is
/// traced to the neighbour with its MAC, in this pass or in `actual`).
/// Deletions do not count: they are not for wanted peers.
pub fn peers_failing(
    failures: &[OpFailure],
    phases: &[Vec<Op>; PHASES],
    actual: &KernelEntries,
) -> usize {
    let neighbour_of = |mac: MacAddr| {
        phases
            .iter()
            .flatten()
            .find_map(|op| match op {
                Op::SetNeighbour(n) if n.mac == mac => Some(n.ip),
                _ => None,
            })
            .or_else(|| {
                actual
                    .neighbours
                    .iter()
                    .find_map(|(ip, m)| (*m == mac).then_some(*ip))
            })
    };
    let mut peers: BTreeSet<String> = BTreeSet::new();
    for failure in failures {
        let peer = match failure.op {
            Op::SetRoute(r) => Some(r.gateway.to_string()),
            Op::SetNeighbour(n) => Some(n.ip.to_string()),
            Op::AddNexthop(n) | Op::ReplaceNexthop(n) => Some(n.gateway.to_string()),
            Op::SetFdb(e) => {
                Some(neighbour_of(e.mac).map_or_else(|| e.mac.to_string(), |ip| ip.to_string()))
            }
            Op::DelNeighbour(_) | Op::DelFdb(_) | Op::DelRoute(_) | Op::DelNexthop(_) => None,
        };
        peers.extend(peer);
    }
    peers.len()
}

/// A kernel notification reduced to the model's terms (see
/// [`KernelEntries::observe`]); `netlink` makes these from raw messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A neighbour (ARP/NDP) entry was added, changed or deleted.
    Neighbour {
        /// Its device.
        ifindex: u32,
        /// Its address.
        ip: IpAddr,
        /// Its link-layer address, if it has one.
        mac: Option<MacAddr>,
        /// NUD_PERMANENT (ours always are).
        permanent: bool,
        /// RTM_DELNEIGH.
        deleted: bool,
    },
    /// A bridge FDB entry with a remote (`dst`) was added or deleted.
    Fdb {
        /// Its device.
        ifindex: u32,
        /// The entry.
        entry: FdbEntry,
        /// RTM_DELNEIGH.
        deleted: bool,
    },
    /// A route of ours (protocol [`ROUTE_PROTOCOL`]) was added, replaced or
    /// deleted.
    Route {
        /// The route as the kernel reports it.
        route: RouteEntry,
        /// RTM_DELROUTE.
        deleted: bool,
    },
    /// A route that is not ours was added or replaced in the main table:
    /// it may have replaced one of ours (`ip route replace` sends no
    /// deletion for the route it displaces).
    ForeignRoute {
        /// Its destination.
        dst: IpNetwork,
        /// The nexthop object it points at, if any.
        nexthop: Option<u32>,
    },
    /// A nexthop object was added, replaced or deleted.
    Nexthop {
        /// Its id.
        id: u32,
        /// Our kind of object (protocol 77, a gateway and a device), or
        /// `None` (someone else's, a group).
        ours: Option<Nexthop>,
        /// RTM_DELNEXTHOP.
        deleted: bool,
    },
    /// A route of ours (protocol [`ROUTE_PROTOCOL`]) without a gateway,
    /// straight onto a device: the wireguard backend's route for the
    /// cluster network.
    LinkRoute {
        /// Its destination.
        dst: IpNetwork,
        /// Its output interface.
        oif: u32,
        /// RTM_DELROUTE.
        deleted: bool,
    },
    /// A link changed or went away.
    Link {
        /// Its index.
        index: u32,
        /// Its name, when the message carries one.
        name: Option<String>,
    },
    /// An address was added to or removed from a link.
    Address {
        /// The link's index.
        index: u32,
        /// The address (`None` when the message carries none).
        address: Option<IpAddr>,
    },
    /// Notifications were lost: anything may have changed.
    Overrun,
    /// The kernel monitor stopped: no notification will come any more.
    MonitorEnded,
    /// Nothing the data paths own or depend on.
    Unrelated,
}

/// Which entries of an [`Observation`] a model covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// The device whose neighbours and FDB entries are ours (the vxlan
    /// device), or `None` (host-gw owns none).
    pub device: Option<u32>,
    /// IPv4 entries.
    pub ipv4: bool,
    /// IPv6 entries.
    pub ipv6: bool,
}

impl Scope {
    fn covers(&self, ip: IpAddr) -> bool {
        if ip.is_ipv6() {
            self.ipv6
        } else {
            self.ipv4
        }
    }
}

impl KernelEntries {
    /// Records an operation the kernel accepted, so the model keeps
    /// matching the kernel without dumping it again.
    pub fn record(&mut self, op: &Op) {
        match op {
            Op::SetNeighbour(n) => {
                self.neighbours.insert(n.ip, n.mac);
            }
            Op::DelNeighbour(n) => {
                self.neighbours.remove(&n.ip);
            }
            Op::SetFdb(e) => {
                self.fdb.insert(*e);
            }
            Op::DelFdb(e) => {
                self.fdb.remove(e);
            }
            Op::SetRoute(r) => {
                self.routes.insert(r.dst, *r);
            }
            Op::DelRoute(r) => {
                self.routes.remove(&r.dst);
            }
            Op::AddNexthop(n) => {
                self.other_nexthop_ids.remove(&n.id);
                self.nexthops.insert(n.id, *n);
            }
            Op::ReplaceNexthop(n) => {
                self.nexthops.insert(n.id, *n);
                // The routes on it now lead where it does (as a dump would
                // show them).
                for route in self.routes.values_mut() {
                    if route.nexthop == Some(n.id) {
                        (route.gateway, route.oif, route.onlink) = (n.gateway, n.oif, n.onlink);
                    }
                }
            }
            Op::DelNexthop(n) => {
                self.nexthops.remove(&n.id);
                self.nexthops_used_elsewhere.remove(&n.id);
            }
        }
    }

    /// Folds one kernel notification into the model. Returns `true` when
    /// the kernel changed behind our back (an entry of ours deleted or
    /// altered, a stray entry where only ours belong): the model is then
    /// no longer trusted and the caller dumps again. The echo of our own
    /// writes, and anything outside `scope`, returns `false`.
    pub fn observe(&mut self, scope: &Scope, observation: &Observation) -> bool {
        match observation {
            Observation::Neighbour {
                ifindex,
                ip,
                mac,
                permanent,
                deleted,
            } => {
                if Some(*ifindex) != scope.device || !scope.covers(*ip) {
                    return false;
                }
                let ours = self.neighbours.get(ip);
                match (deleted, permanent) {
                    (true, _) => ours.is_some(),
                    // A permanent entry is either ours as recorded or one
                    // to correct.
                    (false, true) => mac.as_ref() != ours,
                    // The kernel's own (incomplete, stale) entries are none
                    // of our business unless they replaced one of ours.
                    (false, false) => ours.is_some(),
                }
            }
            Observation::Fdb {
                ifindex,
                entry,
                deleted,
            } => {
                if Some(*ifindex) != scope.device || !scope.covers(entry.dst) {
                    return false;
                }
                // Deleted while still ours, or added without us.
                *deleted == self.fdb.contains(entry)
            }
            Observation::Route { route, deleted } => {
                if !scope.covers(route.dst.ip()) {
                    return false;
                }
                let ours = self.routes.get(&route.dst);
                if *deleted {
                    ours.is_some()
                } else {
                    !ours.is_some_and(|r| r.is_satisfied_by(route))
                }
            }
            Observation::ForeignRoute { dst, nexthop } => {
                if let Some(id) = nexthop.filter(|id| self.nexthops.contains_key(id)) {
                    self.nexthops_used_elsewhere.insert(id);
                }
                // Same destination as one of ours: ours was replaced.
                scope.covers(dst.ip()) && self.routes.contains_key(dst)
            }
            Observation::Nexthop { id, ours, deleted } => {
                match (ours.filter(|n| scope.covers(n.gateway)), deleted) {
                    (_, true) => {
                        self.other_nexthop_ids.remove(id);
                        // Deleting one of ours takes its routes with it,
                        // silently.
                        self.nexthops.contains_key(id)
                    }
                    (Some(found), false) => self.nexthops.get(id) != Some(&found),
                    (None, false) => {
                        self.other_nexthop_ids.insert(*id);
                        // Someone else's object under one of our ids.
                        self.nexthops.contains_key(id)
                    }
                }
            }
            // Ours, yet not a shape these backends make: dump and see.
            Observation::LinkRoute { dst, .. } => scope.covers(dst.ip()),
            Observation::Link { .. }
            | Observation::Address { .. }
            | Observation::Overrun
            | Observation::MonitorEnded
            | Observation::Unrelated => false,
        }
    }
}

/// Splits a later phase into the operations that may go ahead and those
/// that depend on an operation of an earlier phase that failed, with that
/// operation: a route whose nexthop object or gateway neighbour could not
/// be set (it would lead to someone else's object, or to a next hop the
/// kernel has to ARP for), a nexthop object or neighbour whose route could
/// not be deleted (the route would be left dangling).
pub fn split_dependents(phase: &[Op], failed: &[Op]) -> (Vec<Op>, Vec<(Op, Op)>) {
    let blocker = |op: &Op| -> Option<Op> {
        failed.iter().copied().find(|f| match (op, f) {
            (Op::SetRoute(r), Op::AddNexthop(n) | Op::ReplaceNexthop(n)) => r.nexthop == Some(n.id),
            (Op::SetRoute(r), Op::SetNeighbour(n)) => r.gateway == n.ip,
            (Op::DelNexthop(n), Op::DelRoute(r)) => r.nexthop == Some(n.id),
            (Op::DelNeighbour(n), Op::DelRoute(r)) => r.gateway == n.ip,
            _ => false,
        })
    };
    let mut go = Vec::with_capacity(phase.len());
    let mut held = Vec::new();
    for op in phase {
        match blocker(op) {
            Some(failed) => held.push((*op, failed)),
            None => go.push(*op),
        }
    }
    (go, held)
}

/// How many phases [`diff`] returns.
pub const PHASES: usize = 4;

/// The operations that turn `actual` into `desired`, in phases the caller
/// applies in order (each phase may be pipelined internally):
///
/// 0. neighbours, FDB entries and nexthop objects: everything a route
///    leads to (a route must never lead to a next hop the kernel would have
///    to ARP for, nor to a nexthop id that does not exist yet);
/// 1. routes;
/// 2. deletion of routes no longer wanted;
/// 3. deletion of the neighbours, FDB entries and nexthop objects no
///    longer wanted, once no route of ours uses them.
///
/// A nexthop whose gateway or device changed is replaced in place: the
/// routes pointing at it stay untouched. `allow_deletes` is false until the
/// peer list is complete, so a partial view at start-up never removes a
/// working peer.
pub fn diff(
    desired: &KernelEntries,
    actual: &KernelEntries,
    allow_deletes: bool,
) -> [Vec<Op>; PHASES] {
    let mut entries = Vec::new();
    let mut routes = Vec::new();
    let mut route_deletes = Vec::new();
    let mut deletes = Vec::new();

    for (ip, mac) in &desired.neighbours {
        if actual.neighbours.get(ip) != Some(mac) {
            entries.push(Op::SetNeighbour(Neighbour { ip: *ip, mac: *mac }));
        }
    }
    for entry in desired.fdb.difference(&actual.fdb) {
        entries.push(Op::SetFdb(*entry));
    }
    for (id, nexthop) in &desired.nexthops {
        match actual.nexthops.get(id) {
            None => entries.push(Op::AddNexthop(*nexthop)),
            Some(found) if found != nexthop => entries.push(Op::ReplaceNexthop(*nexthop)),
            Some(_) => {}
        }
    }
    for (dst, route) in &desired.routes {
        if !actual
            .routes
            .get(dst)
            .is_some_and(|found| route.is_satisfied_by(found))
        {
            routes.push(Op::SetRoute(*route));
        }
    }
    if allow_deletes {
        for (dst, route) in &actual.routes {
            if !desired.routes.contains_key(dst) {
                route_deletes.push(Op::DelRoute(*route));
            }
        }
        for entry in actual.fdb.difference(&desired.fdb) {
            deletes.push(Op::DelFdb(*entry));
        }
        for (ip, mac) in &actual.neighbours {
            if !desired.neighbours.contains_key(ip) {
                deletes.push(Op::DelNeighbour(Neighbour { ip: *ip, mac: *mac }));
            }
        }
        for (id, nexthop) in &actual.nexthops {
            if !desired.nexthops.contains_key(id) && !actual.nexthops_used_elsewhere.contains(id) {
                deletes.push(Op::DelNexthop(*nexthop));
            }
        }
    }
    [entries, routes, route_deletes, deletes]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x0a, 0, 0, 0, 0, last])
    }
    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }
    fn route(dst: &str, gw: &str) -> RouteEntry {
        RouteEntry {
            dst: dst.parse().unwrap(),
            gateway: ip(gw),
            oif: 5,
            onlink: true,
            nexthop: None,
        }
    }
    fn state(peers: &[(&str, &str, u8, &str)]) -> KernelEntries {
        let mut s = KernelEntries::default();
        for (lease, gw, m, public) in peers {
            s.neighbours.insert(ip(gw), mac(*m));
            s.fdb.insert(FdbEntry {
                mac: mac(*m),
                dst: ip(public),
            });
            let r = route(lease, gw);
            s.routes.insert(r.dst, r);
        }
        s
    }
    /// The same peers with their routes through nexthop `ids[i]`.
    fn via_nexthops(mut s: KernelEntries, ids: &[u32]) -> KernelEntries {
        for (route, id) in s.routes.values_mut().zip(ids) {
            route.nexthop = Some(*id);
            s.nexthops.insert(
                *id,
                Nexthop {
                    id: *id,
                    gateway: route.gateway,
                    oif: route.oif,
                    onlink: route.onlink,
                },
            );
        }
        s
    }

    #[test]
    fn diff_table() {
        let b = ("10.42.1.0/24", "10.42.1.0", 1, "192.168.1.13");
        let c = ("10.42.2.0/24", "10.42.2.0", 2, "192.168.1.14");
        let b_moved = ("10.42.1.0/24", "10.42.1.0", 1, "192.168.1.99");
        let b_new_mac = ("10.42.1.0/24", "10.42.1.0", 9, "192.168.1.13");
        let n = |p: &(&str, &str, u8, &str)| Neighbour {
            ip: ip(p.1),
            mac: mac(p.2),
        };
        let f = |p: &(&str, &str, u8, &str)| FdbEntry {
            mac: mac(p.2),
            dst: ip(p.3),
        };
        let r = |p: &(&str, &str, u8, &str)| route(p.0, p.1);

        type Case<'a> = (&'a str, KernelEntries, KernelEntries, bool, [Vec<Op>; 4]);
        let cases: Vec<Case> = vec![
            (
                "in sync",
                state(&[b, c]),
                state(&[b, c]),
                true,
                [vec![], vec![], vec![], vec![]],
            ),
            (
                "cold start",
                state(&[b]),
                state(&[]),
                true,
                [
                    vec![Op::SetNeighbour(n(&b)), Op::SetFdb(f(&b))],
                    vec![Op::SetRoute(r(&b))],
                    vec![],
                    vec![],
                ],
            ),
            (
                "peer gone",
                state(&[b]),
                state(&[b, c]),
                true,
                [
                    vec![],
                    vec![],
                    vec![Op::DelRoute(r(&c))],
                    vec![Op::DelFdb(f(&c)), Op::DelNeighbour(n(&c))],
                ],
            ),
            (
                "peer gone before the list is complete",
                state(&[b]),
                state(&[b, c]),
                false,
                [vec![], vec![], vec![], vec![]],
            ),
            (
                "public ip changed",
                state(&[b_moved]),
                state(&[b]),
                true,
                [
                    vec![Op::SetFdb(f(&b_moved))],
                    vec![],
                    vec![],
                    vec![Op::DelFdb(f(&b))],
                ],
            ),
            (
                "vtep mac changed",
                state(&[b_new_mac]),
                state(&[b]),
                true,
                [
                    vec![Op::SetNeighbour(n(&b_new_mac)), Op::SetFdb(f(&b_new_mac))],
                    vec![],
                    vec![],
                    vec![Op::DelFdb(f(&b))],
                ],
            ),
            (
                "route deleted by hand",
                state(&[b]),
                KernelEntries {
                    routes: BTreeMap::new(),
                    ..state(&[b])
                },
                true,
                [vec![], vec![Op::SetRoute(r(&b))], vec![], vec![]],
            ),
        ];
        for (name, desired, actual, allow, wanted) in cases {
            assert_eq!(diff(&desired, &actual, allow), wanted, "{name}");
        }
    }

    #[test]
    fn nexthop_diff_orders_nexthops_around_their_routes() {
        let b = ("10.42.1.0/24", "10.42.1.0", 1, "192.168.1.13");
        let c = ("10.42.2.0/24", "10.42.2.0", 2, "192.168.1.14");
        let nh = |s: &KernelEntries, id: u32| s.nexthops[&id];
        let rt = |s: &KernelEntries, dst: &str| s.routes[&dst.parse().unwrap()];

        // Cold start: the nexthop in the first phase, the route that uses
        // it in the second.
        let want = via_nexthops(state(&[b]), &[7]);
        let [entries, routes, route_deletes, deletes] = diff(&want, &state(&[]), true);
        assert!(
            entries.contains(&Op::AddNexthop(nh(&want, 7))),
            "{entries:?}"
        );
        assert_eq!(routes, vec![Op::SetRoute(rt(&want, "10.42.1.0/24"))]);
        assert!(route_deletes.is_empty() && deletes.is_empty());

        // In sync, also when the found route carries the nexthop's gateway
        // (nexthop_compat_mode) or not.
        let mut found = via_nexthops(state(&[b, c]), &[7, 8]);
        assert_eq!(diff(&found, &found, true), [vec![], vec![], vec![], vec![]]);
        for route in found.routes.values_mut() {
            route.gateway = ip("0.0.0.0");
            route.oif = 0;
            route.onlink = false;
        }
        let want = via_nexthops(state(&[b, c]), &[7, 8]);
        assert_eq!(diff(&want, &found, true), [vec![], vec![], vec![], vec![]]);

        // A changed gateway replaces the nexthop; the route is not touched.
        let found = via_nexthops(state(&[b]), &[7]);
        let mut want = found.clone();
        want.nexthops.get_mut(&7).unwrap().gateway = ip("10.42.1.9");
        assert_eq!(
            diff(&want, &found, true),
            [
                vec![Op::ReplaceNexthop(nh(&want, 7))],
                vec![],
                vec![],
                vec![]
            ]
        );

        // A peer gone: its route goes in the third phase, its nexthop
        // (with its neighbour and FDB entry) only in the fourth.
        let found = via_nexthops(state(&[b, c]), &[7, 8]);
        let want = via_nexthops(state(&[b]), &[7]);
        let [entries, routes, route_deletes, deletes] = diff(&want, &found, true);
        assert!(entries.is_empty() && routes.is_empty());
        assert_eq!(
            route_deletes,
            vec![Op::DelRoute(rt(&found, "10.42.2.0/24"))]
        );
        assert_eq!(deletes.last(), Some(&Op::DelNexthop(nh(&found, 8))));
        // ...but not before the peer list is complete.
        assert_eq!(diff(&want, &found, false), [vec![], vec![], vec![], vec![]]);

        // A nexthop deleted by hand took its route with it: both come back,
        // nexthop first.
        let want = via_nexthops(state(&[b]), &[7]);
        let found = KernelEntries {
            routes: BTreeMap::new(),
            nexthops: BTreeMap::new(),
            ..want.clone()
        };
        assert_eq!(
            diff(&want, &found, true),
            [
                vec![Op::AddNexthop(nh(&want, 7))],
                vec![Op::SetRoute(rt(&want, "10.42.1.0/24"))],
                vec![],
                vec![]
            ]
        );

        // Garbage: our nexthop that no route needs goes, unless a route
        // that is not ours points at it.
        let want = via_nexthops(state(&[b]), &[7]);
        let mut found = want.clone();
        let stale = Nexthop {
            id: 99,
            gateway: ip("10.42.9.0"),
            oif: 5,
            onlink: true,
        };
        found.nexthops.insert(99, stale);
        assert_eq!(
            diff(&want, &found, true),
            [vec![], vec![], vec![], vec![Op::DelNexthop(stale)]]
        );
        found.nexthops_used_elsewhere.insert(99);
        assert_eq!(diff(&want, &found, true), [vec![], vec![], vec![], vec![]]);

        // Plain routes wanted (fallback) over nexthop routes found: the
        // routes are replaced first, the nexthops removed after.
        let want = state(&[b]);
        let found = via_nexthops(state(&[b]), &[7]);
        assert_eq!(
            diff(&want, &found, true),
            [
                vec![],
                vec![Op::SetRoute(rt(&want, "10.42.1.0/24"))],
                vec![],
                vec![Op::DelNexthop(nh(&found, 7))]
            ]
        );
    }

    #[test]
    fn ops_read_like_ip_commands() {
        let op = Op::SetRoute(route("10.42.1.0/24", "10.42.1.0"));
        assert_eq!(
            op.to_string(),
            "set route 10.42.1.0/24 via 10.42.1.0 dev #5 onlink"
        );
        let mut with_nexthop = route("10.42.1.0/24", "10.42.1.0");
        with_nexthop.nexthop = Some(170_524_928);
        assert_eq!(
            Op::SetRoute(with_nexthop).to_string(),
            "set route 10.42.1.0/24 nhid 170524928 via 10.42.1.0 dev #5 onlink"
        );
        let nexthop = Nexthop {
            id: 170_524_928,
            gateway: ip("10.42.1.0"),
            oif: 5,
            onlink: true,
        };
        assert_eq!(
            Op::AddNexthop(nexthop).to_string(),
            "add nexthop id 170524928 via 10.42.1.0 dev #5 onlink"
        );
        assert_eq!(
            Op::DelNexthop(nexthop).to_string(),
            "delete nexthop id 170524928 via 10.42.1.0 dev #5 onlink"
        );
    }

    const DEV: u32 = 5;
    const V4: Scope = Scope {
        device: Some(DEV),
        ipv4: true,
        ipv6: false,
    };

    fn nexthop(id: u32, gw: &str) -> Nexthop {
        Nexthop {
            id,
            gateway: ip(gw),
            oif: DEV,
            onlink: true,
        }
    }

    /// A model after the ops of one pass were recorded: the echo of each
    /// op, as the kernel sends it, changes nothing and asks for no dump.
    #[test]
    fn the_echo_of_our_own_writes_is_not_a_change() {
        let desired = via_nexthops(
            state(&[("10.42.1.0/24", "10.42.1.0", 1, "192.168.1.11")]),
            &[7],
        );
        let mut model = KernelEntries::default();
        for op in diff(&desired, &model, true).iter().flatten() {
            model.record(op);
        }
        assert_eq!(
            diff(&desired, &model, true),
            [vec![], vec![], vec![], vec![]]
        );
        let route = desired.routes.values().next().copied().unwrap();
        let echoes = [
            Observation::Neighbour {
                ifindex: DEV,
                ip: ip("10.42.1.0"),
                mac: Some(mac(1)),
                permanent: true,
                deleted: false,
            },
            Observation::Fdb {
                ifindex: DEV,
                entry: FdbEntry {
                    mac: mac(1),
                    dst: ip("192.168.1.11"),
                },
                deleted: false,
            },
            Observation::Nexthop {
                id: 7,
                ours: Some(nexthop(7, "10.42.1.0")),
                deleted: false,
            },
            Observation::Route {
                route,
                deleted: false,
            },
        ];
        for echo in &echoes {
            assert!(!model.observe(&V4, echo), "{echo:?}");
        }
        // Deleting the peer: recorded first, so the DEL echoes are quiet too.
        let empty = KernelEntries::default();
        for op in diff(&empty, &model, true).iter().flatten() {
            model.record(op);
        }
        assert_eq!(model, KernelEntries::default());
        let deleted_echoes = [
            Observation::Route {
                route,
                deleted: true,
            },
            Observation::Nexthop {
                id: 7,
                ours: Some(nexthop(7, "10.42.1.0")),
                deleted: true,
            },
            Observation::Neighbour {
                ifindex: DEV,
                ip: ip("10.42.1.0"),
                mac: Some(mac(1)),
                permanent: true,
                deleted: true,
            },
        ];
        for echo in &deleted_echoes {
            assert!(!model.observe(&V4, echo), "{echo:?}");
        }
    }

    /// What someone else did to our entries is a change (dump again);
    /// what happens outside our device and family is not.
    #[test]
    fn changes_behind_our_back_invalidate_the_model() {
        let model = via_nexthops(
            state(&[("10.42.1.0/24", "10.42.1.0", 1, "192.168.1.11")]),
            &[7],
        );
        let route = model.routes.values().next().copied().unwrap();
        let neighbour =
            |ifindex, address: &str, m: u8, permanent, deleted| Observation::Neighbour {
                ifindex,
                ip: ip(address),
                mac: Some(mac(m)),
                permanent,
                deleted,
            };
        let fdb = |m: u8, dst: &str, deleted| Observation::Fdb {
            ifindex: DEV,
            entry: FdbEntry {
                mac: mac(m),
                dst: ip(dst),
            },
            deleted,
        };
        let table: Vec<(&str, Observation, bool)> = vec![
            (
                "our neighbour deleted",
                neighbour(DEV, "10.42.1.0", 1, true, true),
                true,
            ),
            (
                "our neighbour given another MAC",
                neighbour(DEV, "10.42.1.0", 2, true, false),
                true,
            ),
            (
                "our neighbour made dynamic",
                neighbour(DEV, "10.42.1.0", 1, false, false),
                true,
            ),
            (
                "a stray permanent neighbour",
                neighbour(DEV, "10.42.9.0", 9, true, false),
                true,
            ),
            (
                "the kernel's own neighbour",
                neighbour(DEV, "10.42.9.0", 9, false, false),
                false,
            ),
            (
                "a stale entry expiring",
                neighbour(DEV, "10.42.9.0", 9, false, true),
                false,
            ),
            (
                "another device",
                neighbour(DEV + 1, "10.42.1.0", 1, true, true),
                false,
            ),
            (
                "another family",
                neighbour(DEV, "fd00::1", 1, true, false),
                false,
            ),
            ("our FDB entry deleted", fdb(1, "192.168.1.11", true), true),
            ("a stray FDB entry", fdb(1, "192.168.1.99", false), true),
            (
                "a stray FDB entry going",
                fdb(1, "192.168.1.99", true),
                false,
            ),
            (
                "our route deleted",
                Observation::Route {
                    route,
                    deleted: true,
                },
                true,
            ),
            (
                "our route pointed elsewhere",
                Observation::Route {
                    route: RouteEntry {
                        nexthop: Some(8),
                        ..route
                    },
                    deleted: false,
                },
                true,
            ),
            (
                "our nexthop deleted (its routes went silently)",
                Observation::Nexthop {
                    id: 7,
                    ours: Some(nexthop(7, "10.42.1.0")),
                    deleted: true,
                },
                true,
            ),
            (
                "our nexthop given another gateway",
                Observation::Nexthop {
                    id: 7,
                    ours: Some(nexthop(7, "10.42.9.0")),
                    deleted: false,
                },
                true,
            ),
            (
                "someone else's object under our id",
                Observation::Nexthop {
                    id: 7,
                    ours: None,
                    deleted: false,
                },
                true,
            ),
            (
                "someone else's object",
                Observation::Nexthop {
                    id: 99,
                    ours: None,
                    deleted: false,
                },
                false,
            ),
            (
                "an IPv6 object of ours, another path's business",
                Observation::Nexthop {
                    id: 7,
                    ours: Some(Nexthop {
                        gateway: ip("fd00::1"),
                        ..nexthop(7, "10.42.1.0")
                    }),
                    deleted: false,
                },
                true,
            ),
            (
                "a foreign route on our nexthop",
                Observation::ForeignRoute {
                    dst: "10.99.0.0/16".parse().unwrap(),
                    nexthop: Some(7),
                },
                false,
            ),
            (
                "our route replaced by someone else's (no deletion is sent)",
                Observation::ForeignRoute {
                    dst: "10.42.1.0/24".parse().unwrap(),
                    nexthop: None,
                },
                true,
            ),
            (
                "someone else's route elsewhere",
                Observation::ForeignRoute {
                    dst: "10.42.7.0/24".parse().unwrap(),
                    nexthop: None,
                },
                false,
            ),
            ("unrelated", Observation::Unrelated, false),
        ];
        for (what, observation, stale) in table {
            let mut copy = model.clone();
            assert_eq!(copy.observe(&V4, &observation), stale, "{what}");
        }
    }

    /// Notifications keep the found-only facts current: someone else's
    /// nexthop ids (never reused), and our objects a foreign route points
    /// at (never deleted).
    #[test]
    fn notifications_keep_foreign_nexthop_facts() {
        let mut model = via_nexthops(
            state(&[("10.42.1.0/24", "10.42.1.0", 1, "192.168.1.11")]),
            &[7],
        );
        let other = Observation::Nexthop {
            id: 99,
            ours: None,
            deleted: false,
        };
        assert!(!model.observe(&V4, &other));
        assert!(model.other_nexthop_ids.contains(&99));
        let foreign = Observation::ForeignRoute {
            dst: "10.99.0.0/16".parse().unwrap(),
            nexthop: Some(7),
        };
        assert!(!model.observe(&V4, &foreign));
        let ops = diff(&KernelEntries::default(), &model, true);
        assert!(
            !ops.iter()
                .flatten()
                .any(|op| matches!(op, Op::DelNexthop(_))),
            "{ops:?}"
        );
        let gone = Observation::Nexthop {
            id: 99,
            ours: None,
            deleted: true,
        };
        assert!(!model.observe(&V4, &gone));
        assert!(model.other_nexthop_ids.is_empty());
    }

    /// A failed nexthop or neighbour holds back the route that needs it,
    /// a failed route deletion holds back the deletion of what it uses;
    /// everything else goes ahead.
    #[test]
    fn failed_operations_hold_back_their_dependents() {
        let desired = via_nexthops(
            state(&[
                ("10.42.1.0/24", "10.42.1.0", 1, "192.168.1.11"),
                ("10.42.2.0/24", "10.42.2.0", 2, "192.168.1.12"),
            ]),
            &[7, 8],
        );
        let [entries, routes, _, _] = diff(&desired, &KernelEntries::default(), true);
        let failed: Vec<Op> = entries
            .iter()
            .copied()
            .filter(|op| matches!(op, Op::AddNexthop(n) if n.id == 7))
            .collect();
        let (go, held) = split_dependents(&routes, &failed);
        assert_eq!(go.len(), 1);
        assert!(matches!(go[0], Op::SetRoute(r) if r.nexthop == Some(8)));
        assert!(
            matches!(held[..], [(Op::SetRoute(r), Op::AddNexthop(n))] if r.nexthop == Some(7) && n.id == 7)
        );

        // Plain routes: the gateway's neighbour.
        let plain = state(&[("10.42.1.0/24", "10.42.1.0", 1, "192.168.1.11")]);
        let [entries, routes, _, _] = diff(&plain, &KernelEntries::default(), true);
        let failed: Vec<Op> = entries
            .iter()
            .copied()
            .filter(|op| matches!(op, Op::SetNeighbour(_)))
            .collect();
        let (go, held) = split_dependents(&routes, &failed);
        assert!(go.is_empty());
        assert_eq!(held.len(), 1);

        // Deleting: a route that could not go keeps its nexthop and
        // neighbour; the FDB entry goes anyway.
        let [_, _, route_deletes, deletes] = diff(&KernelEntries::default(), &desired, true);
        let failed: Vec<Op> = route_deletes
            .iter()
            .copied()
            .filter(|op| matches!(op, Op::DelRoute(r) if r.nexthop == Some(7)))
            .collect();
        let (go, held) = split_dependents(&deletes, &failed);
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(held
            .iter()
            .all(|(op, _)| matches!(op, Op::DelNexthop(n) if n.id == 7)
                || matches!(op, Op::DelNeighbour(n) if n.ip == ip("10.42.1.0"))));
        assert_eq!(go.len(), deletes.len() - 2);
    }
}
