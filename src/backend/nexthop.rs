//! Nexthop objects for our routes (kernel 5.3+): every route of ours points
//! at a nexthop object of its own (`<lease> nhid <id>`), and the object
//! holds the gateway (`id <id> via <gateway> dev <device> onlink`). Routes
//! whose gateways all differ on one device no longer hash into one
//! `fib_info` bucket, so programming N peers is linear instead of
//! quadratic.
//!
//! Ids are chosen here, purely: the id a route already points at is kept,
//! an object of ours with the same gateway is reused, and a new one gets an
//! id derived from its destination ([`preferred_id`]), probing upwards past
//! ids that are taken. The kernel's dump is the memory: after a restart the
//! routes found point at their ids, and whatever of ours no route needs is
//! garbage ([`super::diff`] removes it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{KernelEntries, Nexthop};

/// The id a route to `dst` gets when it needs a new nexthop object:
/// the IPv4 network address read as a 32-bit number (10.42.1.0/24 →
/// 0x0a2a0100 = 170524928), or for IPv6 a 32-bit FNV-1a hash of prefix
/// length and address. The same lease therefore gets the same id on every
/// node and across restarts, unless that id is taken.
pub fn preferred_id(dst: IpNetwork) -> u32 {
    match dst {
        IpNetwork::V4(net) => u32::from(net.network()),
        IpNetwork::V6(net) => {
            let mut hash: u32 = 0x811c_9dc5;
            for byte in std::iter::once(net.prefix()).chain(net.network().octets()) {
                hash ^= u32::from(byte);
                hash = hash.wrapping_mul(0x0100_0193);
            }
            hash
        }
    }
}

/// Points every desired route at a nexthop object and fills
/// `desired.nexthops`, choosing ids against what the kernel holds
/// (`found`):
///
/// 1. the id the found route for the same destination already points at,
///    if that object is ours and not taken by an earlier route;
/// 2. otherwise an unclaimed object of ours with the same gateway, device
///    and onlink flag (a route deleted by hand gets its old id back);
/// 3. otherwise [`preferred_id`], or the next id up that no object in the
///    namespace (ours or anyone's) has and no other route got.
///
/// Ids are never 0 and unique among the desired routes; an object of
/// someone else is never reused. A kept object whose gateway changed is
/// replaced by [`super::diff`] without touching its route.
pub fn use_nexthops(desired: &mut KernelEntries, found: &KernelEntries) {
    let mut claimed: BTreeSet<u32> = BTreeSet::new();
    let mut ids: BTreeMap<IpNetwork, u32> = BTreeMap::new();

    // 1. Keep what the routes point at.
    for (dst, route) in &desired.routes {
        let Some(id) = found.routes.get(dst).and_then(|r| r.nexthop) else {
            continue;
        };
        let ours_same_family = found
            .nexthops
            .get(&id)
            .is_some_and(|n| n.gateway.is_ipv6() == route.gateway.is_ipv6());
        if ours_same_family && claimed.insert(id) {
            ids.insert(*dst, id);
        }
    }

    // 2. Reuse unclaimed objects of ours by what they mean.
    let mut by_target: BTreeMap<(IpAddr, u32, bool), Vec<u32>> = BTreeMap::new();
    for nexthop in found.nexthops.values().rev() {
        if !claimed.contains(&nexthop.id) {
            by_target
                .entry((nexthop.gateway, nexthop.oif, nexthop.onlink))
                .or_default()
                .push(nexthop.id);
        }
    }
    for (dst, route) in &desired.routes {
        if ids.contains_key(dst) {
            continue;
        }
        // Lowest id first (pushed in descending order).
        if let Some(id) = by_target
            .get_mut(&(route.gateway, route.oif, route.onlink))
            .and_then(Vec::pop)
        {
            claimed.insert(id);
            ids.insert(*dst, id);
        }
    }

    // 3. New ids.
    for dst in desired.routes.keys() {
        if ids.contains_key(dst) {
            continue;
        }
        let mut id = preferred_id(*dst);
        while id == 0
            || claimed.contains(&id)
            || found.nexthops.contains_key(&id)
            || found.other_nexthop_ids.contains(&id)
        {
            id = id.wrapping_add(1);
        }
        claimed.insert(id);
        ids.insert(*dst, id);
    }

    desired.nexthops.clear();
    for (dst, route) in desired.routes.iter_mut() {
        let Some(&id) = ids.get(dst) else {
            continue;
        };
        route.nexthop = Some(id);
        desired.nexthops.insert(
            id,
            Nexthop {
                id,
                gateway: route.gateway,
                oif: route.oif,
                onlink: route.onlink,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{diff, Op, RouteEntry};

    fn route(dst: &str, gw: &str, nexthop: Option<u32>) -> RouteEntry {
        RouteEntry {
            dst: dst.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            oif: 5,
            onlink: true,
            nexthop,
        }
    }
    fn routes(list: &[RouteEntry]) -> KernelEntries {
        KernelEntries {
            routes: list.iter().map(|r| (r.dst, *r)).collect(),
            ..KernelEntries::default()
        }
    }
    fn nexthop(id: u32, gw: &str) -> Nexthop {
        Nexthop {
            id,
            gateway: gw.parse().unwrap(),
            oif: 5,
            onlink: true,
        }
    }
    fn ids(entries: &KernelEntries) -> Vec<(String, u32)> {
        entries
            .routes
            .values()
            .map(|r| (r.dst.to_string(), r.nexthop.unwrap_or(0)))
            .collect()
    }

    #[test]
    fn preferred_ids_come_from_the_destination() {
        let id = |dst: &str| preferred_id(dst.parse().unwrap());
        assert_eq!(id("10.42.1.0/24"), 0x0a2a_0100);
        assert_eq!(id("10.42.1.0/24"), 170_524_928);
        assert_ne!(id("10.42.2.0/24"), id("10.42.1.0/24"));
        // IPv6: stable, and distinct for neighbouring leases.
        assert_eq!(id("fd00:42:0:1::/64"), id("fd00:42:0:1::/64"));
        assert_ne!(id("fd00:42:0:1::/64"), id("fd00:42:0:2::/64"));
        assert_ne!(id("fd00:42:0:1::/64"), id("fd00:42:0:1::/80"));
    }

    #[test]
    fn id_table() {
        let b = "10.42.1.0/24";
        let c = "10.42.2.0/24";
        let (pb, pc) = (0x0a2a_0100, 0x0a2a_0200);
        type Case<'a> = (&'a str, KernelEntries, Vec<(&'a str, u32)>);
        let cases: Vec<Case> = vec![
            (
                "cold start: ids from the destinations",
                KernelEntries::default(),
                vec![(b, pb), (c, pc)],
            ),
            (
                "kept: the ids the routes point at (a previous run's)",
                KernelEntries {
                    nexthops: [(5, nexthop(5, "10.42.1.0")), (6, nexthop(6, "10.42.2.0"))].into(),
                    ..routes(&[
                        route(b, "10.42.1.0", Some(5)),
                        route(c, "10.42.2.0", Some(6)),
                    ])
                },
                vec![(b, 5), (c, 6)],
            ),
            (
                "kept even when the gateway changed (the object is replaced)",
                KernelEntries {
                    nexthops: [(5, nexthop(5, "10.42.1.99"))].into(),
                    ..routes(&[route(b, "10.42.1.99", Some(5))])
                },
                vec![(b, 5), (c, pc)],
            ),
            (
                "a route pointing at someone else's object gets one of ours",
                KernelEntries {
                    other_nexthop_ids: [5, pb].into(),
                    ..routes(&[route(b, "10.42.1.0", Some(5))])
                },
                vec![(b, pb + 1), (c, pc)],
            ),
            (
                "taken preferred ids are probed past",
                KernelEntries {
                    other_nexthop_ids: [pb, pb + 1].into(),
                    nexthops: [(pb + 2, nexthop(pb + 2, "10.42.77.0"))].into(),
                    ..KernelEntries::default()
                },
                vec![(b, pb + 3), (c, pc)],
            ),
            (
                "a route deleted by hand gets its object back",
                KernelEntries {
                    nexthops: [(42, nexthop(42, "10.42.2.0"))].into(),
                    ..routes(&[route(b, "10.42.1.0", None)])
                },
                vec![(b, pb), (c, 42)],
            ),
            (
                "two routes pointing at one object: the second gets its own",
                KernelEntries {
                    nexthops: [(5, nexthop(5, "10.42.1.0"))].into(),
                    ..routes(&[
                        route(b, "10.42.1.0", Some(5)),
                        route(c, "10.42.2.0", Some(5)),
                    ])
                },
                vec![(b, 5), (c, pc)],
            ),
        ];
        for (name, found, wanted) in cases {
            let mut desired = routes(&[route(b, "10.42.1.0", None), route(c, "10.42.2.0", None)]);
            use_nexthops(&mut desired, &found);
            let wanted: Vec<(String, u32)> =
                wanted.iter().map(|(d, id)| (d.to_string(), *id)).collect();
            assert_eq!(ids(&desired), wanted, "{name}");
            // Every route's object is in the desired set, with its gateway.
            for route in desired.routes.values() {
                let object = desired.nexthops[&route.nexthop.unwrap()];
                assert_eq!(
                    (object.gateway, object.oif, object.onlink),
                    (route.gateway, 5, true),
                    "{name}"
                );
            }
            assert_eq!(desired.nexthops.len(), 2, "{name}: ids are unique");
        }
    }

    #[test]
    fn id_zero_is_never_used() {
        let mut desired = routes(&[route("0.0.0.0/0", "10.42.1.0", None)]);
        use_nexthops(&mut desired, &KernelEntries::default());
        assert_eq!(ids(&desired), vec![("0.0.0.0/0".to_string(), 1)]);
    }

    #[test]
    fn restart_keeps_ids_and_collects_the_garbage() {
        // A previous run left objects for b and for a peer gone since (d),
        // and a stray object of ours that no route uses.
        let b = "10.42.1.0/24";
        let d = "10.42.4.0/24";
        let found = KernelEntries {
            nexthops: [
                (11, nexthop(11, "10.42.1.0")),
                (14, nexthop(14, "10.42.4.0")),
                (99, nexthop(99, "10.42.99.0")),
            ]
            .into(),
            other_nexthop_ids: [1, 2].into(),
            ..routes(&[
                route(b, "10.42.1.0", Some(11)),
                route(d, "10.42.4.0", Some(14)),
            ])
        };
        let mut desired = routes(&[route(b, "10.42.1.0", None)]);
        use_nexthops(&mut desired, &found);
        assert_eq!(ids(&desired), vec![(b.to_string(), 11)]);
        let [entries, set_routes, route_deletes, deletes] = diff(&desired, &found, true);
        assert!(
            entries.is_empty() && set_routes.is_empty(),
            "nothing to add"
        );
        assert_eq!(
            route_deletes,
            vec![Op::DelRoute(found.routes[&d.parse().unwrap()])]
        );
        assert_eq!(
            deletes,
            vec![
                Op::DelNexthop(nexthop(14, "10.42.4.0")),
                Op::DelNexthop(nexthop(99, "10.42.99.0"))
            ],
            "objects of others (1, 2) are never touched"
        );
    }

    #[test]
    fn a_changed_gateway_replaces_the_object_not_the_route() {
        let b = "10.42.1.0/24";
        let found = KernelEntries {
            nexthops: [(11, nexthop(11, "192.168.1.13"))].into(),
            ..routes(&[route(b, "192.168.1.13", Some(11))])
        };
        let mut desired = routes(&[route(b, "192.168.1.99", None)]);
        use_nexthops(&mut desired, &found);
        assert_eq!(
            diff(&desired, &found, true),
            [
                vec![Op::ReplaceNexthop(nexthop(11, "192.168.1.99"))],
                vec![],
                vec![],
                vec![]
            ]
        );
    }
}
