//! What the kernel must hold for the current peers (desired state), how it
//! differs from a dump of what it holds (actual state), and the operations
//! that close the gap. Pure functions with table tests; `netlink` applies
//! the operations.

pub mod host_gw;
pub mod vxlan;

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
        write!(
            f,
            "route {} via {} dev #{}",
            self.dst, self.gateway, self.oif
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
        }
    }
}

/// The operations that turn `actual` into `desired`, in three phases the
/// caller applies in order (each phase may be pipelined internally):
/// neighbours and FDB entries first, then routes (a route must never lead
/// to a next hop the kernel would have to ARP for), then deletions of what
/// is no longer wanted (routes before the entries they use).
///
/// `allow_deletes` is false until the peer list is complete, so a partial
/// view at start-up never removes a working peer.
pub fn diff(desired: &KernelEntries, actual: &KernelEntries, allow_deletes: bool) -> [Vec<Op>; 3] {
    let mut entries = Vec::new();
    let mut routes = Vec::new();
    let mut deletes = Vec::new();

    for (ip, mac) in &desired.neighbours {
        if actual.neighbours.get(ip) != Some(mac) {
            entries.push(Op::SetNeighbour(Neighbour { ip: *ip, mac: *mac }));
        }
    }
    for entry in desired.fdb.difference(&actual.fdb) {
        entries.push(Op::SetFdb(*entry));
    }
    for (dst, route) in &desired.routes {
        if actual.routes.get(dst) != Some(route) {
            routes.push(Op::SetRoute(*route));
        }
    }
    if allow_deletes {
        for (dst, route) in &actual.routes {
            if !desired.routes.contains_key(dst) {
                deletes.push(Op::DelRoute(*route));
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
    }
    [entries, routes, deletes]
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

        type Case<'a> = (&'a str, KernelEntries, KernelEntries, bool, [Vec<Op>; 3]);
        let cases: Vec<Case> = vec![
            (
                "in sync",
                state(&[b, c]),
                state(&[b, c]),
                true,
                [vec![], vec![], vec![]],
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
                    vec![
                        Op::DelRoute(r(&c)),
                        Op::DelFdb(f(&c)),
                        Op::DelNeighbour(n(&c)),
                    ],
                ],
            ),
            (
                "peer gone before the list is complete",
                state(&[b]),
                state(&[b, c]),
                false,
                [vec![], vec![], vec![]],
            ),
            (
                "public ip changed",
                state(&[b_moved]),
                state(&[b]),
                true,
                [
                    vec![Op::SetFdb(f(&b_moved))],
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
                [vec![], vec![Op::SetRoute(r(&b))], vec![]],
            ),
        ];
        for (name, desired, actual, allow, wanted) in cases {
            assert_eq!(diff(&desired, &actual, allow), wanted, "{name}");
        }
    }

    #[test]
    fn ops_read_like_ip_commands() {
        let op = Op::SetRoute(route("10.42.1.0/24", "10.42.1.0"));
        assert_eq!(
            op.to_string(),
            "set route 10.42.1.0/24 via 10.42.1.0 dev #5 onlink"
        );
    }
}
