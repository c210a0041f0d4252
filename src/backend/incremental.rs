//! Small peer changes without a full pass. A full pass builds the desired
//! entries of every peer and diffs them against the whole model: O(peers)
//! work per change, about 5 ms at 5,000 peers. [`LastPass`] keeps what the
//! previous pass wanted, so a change of a few peers rebuilds only their
//! entries and diffs only the keys they touch (their neighbours, FDB
//! entries, routes and the nexthop objects behind those routes), in
//! O(changed · log peers).
//!
//! It gives the same operations a full pass would, provided the model is
//! trusted (the previous pass succeeded and nothing changed behind our
//! back since: entries outside the touched keys already match) and the
//! peer list's completeness did not change (deletions are allowed in both
//! or in neither). Anything else, and changes touching more than a sixteenth
//! of the peers, go through a full pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::nexthop::preferred_id;
use super::vxlan::{peer_entries, DirectRouting, PeerEntries};
use super::{diff, FdbEntry, KernelEntries, Nexthop, Op, PHASES};
use crate::kube_subnet::PeerSet;

/// Where one data path's entries go.
#[derive(Debug, Clone, Copy)]
pub struct EntryTarget<'a> {
    /// The vxlan device's ifindex.
    pub device_index: u32,
    /// DirectRouting, if enabled.
    pub direct: Option<&'a DirectRouting>,
    /// The family of this data path.
    pub ipv6: bool,
    /// Routes point at nexthop objects.
    pub nexthops: bool,
}

/// What the previous pass wanted, for the peers it saw.
#[derive(Debug, Clone)]
pub struct LastPass {
    peers: Arc<PeerSet>,
    synced: bool,
    /// The desired entries, nexthop ids included, as applied.
    desired: KernelEntries,
    /// How many peers want each FDB entry (two Nodes announcing the same
    /// VTEP MAC and public IP share one).
    fdb_users: BTreeMap<FdbEntry, u32>,
}

/// The keys a change touches.
#[derive(Debug, Default)]
struct Touched {
    neighbours: BTreeSet<IpAddr>,
    fdb: BTreeSet<FdbEntry>,
    routes: BTreeSet<IpNetwork>,
    nexthops: BTreeSet<u32>,
}

impl LastPass {
    /// Records a full pass: the peers it saw and what it wanted (with the
    /// nexthop ids it assigned).
    pub fn new(
        peers: Arc<PeerSet>,
        synced: bool,
        desired: KernelEntries,
        target: &EntryTarget,
    ) -> Self {
        let mut fdb_users: BTreeMap<FdbEntry, u32> = BTreeMap::new();
        for peer in peers.iter() {
            if let Some(PeerEntries::Encapsulated { fdb, .. }) =
                peer_entries(peer, target.device_index, target.direct, target.ipv6)
            {
                *fdb_users.entry(fdb).or_default() += 1;
            }
        }
        LastPass {
            peers,
            synced,
            desired,
            fdb_users,
        }
    }

    /// Routes wanted (one per programmable peer).
    pub fn routes_wanted(&self) -> usize {
        self.desired.routes.len()
    }

    /// The operations that take the kernel (as `model` holds it) from the
    /// previous peers to `peers`, touching only the changed peers' keys;
    /// `self` then describes `peers`. `None` when a full pass is due
    /// instead (see the module documentation); `self` is then unchanged.
    pub fn advance(
        &mut self,
        peers: &Arc<PeerSet>,
        synced: bool,
        model: &KernelEntries,
        target: &EntryTarget,
    ) -> Option<[Vec<Op>; PHASES]> {
        if synced != self.synced {
            return None;
        }
        let changed: Vec<String> = self
            .peers
            .differing(peers)
            .into_iter()
            .map(str::to_string)
            .collect();
        if changed.len() > 1 + peers.len().max(self.peers.len()) / 16 {
            return None;
        }
        let mut touched = Touched::default();
        let entries = |set: &PeerSet, name: &str| {
            set.get(name)
                .and_then(|p| peer_entries(p, target.device_index, target.direct, target.ipv6))
        };
        // Every old entry goes before any new one is added: a lease or
        // VTEP address can move from one changed peer to another.
        for name in &changed {
            match entries(&self.peers, name) {
                Some(PeerEntries::Direct(route)) => self.forget_route(route.dst, &mut touched),
                Some(PeerEntries::Encapsulated {
                    neighbour,
                    fdb,
                    route,
                }) => {
                    self.desired.neighbours.remove(&neighbour.ip);
                    touched.neighbours.insert(neighbour.ip);
                    if let Some(users) = self.fdb_users.get_mut(&fdb) {
                        *users -= 1;
                        if *users == 0 {
                            self.fdb_users.remove(&fdb);
                            self.desired.fdb.remove(&fdb);
                        }
                    }
                    touched.fdb.insert(fdb);
                    self.forget_route(route.dst, &mut touched);
                }
                None => {}
            }
        }
        for name in &changed {
            let route = match entries(peers, name) {
                Some(PeerEntries::Direct(route)) => route,
                Some(PeerEntries::Encapsulated {
                    neighbour,
                    fdb,
                    route,
                }) => {
                    self.desired.neighbours.insert(neighbour.ip, neighbour.mac);
                    touched.neighbours.insert(neighbour.ip);
                    *self.fdb_users.entry(fdb).or_default() += 1;
                    self.desired.fdb.insert(fdb);
                    touched.fdb.insert(fdb);
                    route
                }
                None => continue,
            };
            touched.routes.insert(route.dst);
            self.desired.routes.insert(route.dst, route);
        }
        if target.nexthops {
            self.assign_nexthops(model, &mut touched);
        }
        let want = restrict(&self.desired, &touched);
        let have = restrict(model, &touched);
        self.peers = peers.clone();
        Some(diff(&want, &have, synced))
    }

    fn forget_route(&mut self, dst: IpNetwork, touched: &mut Touched) {
        if let Some(id) = self.desired.routes.remove(&dst).and_then(|r| r.nexthop) {
            self.desired.nexthops.remove(&id);
            touched.nexthops.insert(id);
        }
        touched.routes.insert(dst);
    }

    /// Nexthop ids for the touched routes, as
    /// [`super::nexthop::use_nexthops`] picks them: the id the kernel's
    /// route already points at when that object is ours, of this family
    /// and not claimed by another route; otherwise the preferred id or the
    /// next one up that nothing in the namespace has.
    fn assign_nexthops(&mut self, model: &KernelEntries, touched: &mut Touched) {
        for dst in &touched.routes {
            let Some(route) = self.desired.routes.get_mut(dst) else {
                continue;
            };
            let kept = model.routes.get(dst).and_then(|r| r.nexthop).filter(|id| {
                model
                    .nexthops
                    .get(id)
                    .is_some_and(|n| n.gateway.is_ipv6() == route.gateway.is_ipv6())
                    && !self.desired.nexthops.contains_key(id)
            });
            let id = kept.unwrap_or_else(|| {
                let mut id = preferred_id(*dst);
                while id == 0
                    || self.desired.nexthops.contains_key(&id)
                    || model.nexthops.contains_key(&id)
                    || model.other_nexthop_ids.contains(&id)
                {
                    id = id.wrapping_add(1);
                }
                id
            });
            route.nexthop = Some(id);
            self.desired.nexthops.insert(
                id,
                Nexthop {
                    id,
                    gateway: route.gateway,
                    oif: route.oif,
                    onlink: route.onlink,
                },
            );
            touched.nexthops.insert(id);
        }
    }
}

/// Only the touched keys of `entries`.
fn restrict(entries: &KernelEntries, touched: &Touched) -> KernelEntries {
    KernelEntries {
        neighbours: touched
            .neighbours
            .iter()
            .filter_map(|ip| entries.neighbours.get(ip).map(|mac| (*ip, *mac)))
            .collect(),
        fdb: touched
            .fdb
            .iter()
            .filter(|e| entries.fdb.contains(e))
            .copied()
            .collect(),
        routes: touched
            .routes
            .iter()
            .filter_map(|dst| entries.routes.get(dst).map(|r| (*dst, *r)))
            .collect(),
        nexthops: touched
            .nexthops
            .iter()
            .filter_map(|id| entries.nexthops.get(id).map(|n| (*id, *n)))
            .collect(),
        other_nexthop_ids: BTreeSet::new(),
        nexthops_used_elsewhere: touched
            .nexthops
            .iter()
            .filter(|id| entries.nexthops_used_elsewhere.contains(id))
            .copied()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::nexthop::use_nexthops;
    use crate::backend::vxlan::desired_entries;
    use crate::kube_subnet::{Lease, Peer, PeerBackend};
    use crate::mac::MacAddr;

    const DEV: u32 = 5;

    fn peer(n: u32, mac: u8, public: u8) -> Peer {
        Peer {
            name: format!("node-{n}"),
            lease: Lease {
                ipv4: Some(format!("10.42.{n}.0/24").parse().unwrap()),
                ipv6: None,
            },
            public_ip: Some(format!("192.168.1.{public}").parse().unwrap()),
            public_ipv6: None,
            backend_v4: Some(PeerBackend::Vxlan {
                vtep_mac: MacAddr([0x0a, 0, 0, 0, 0, mac]),
            }),
            backend_v6: None,
        }
    }

    /// A full pass: desired from every peer, ids against the model.
    fn full(peers: &PeerSet, model: &KernelEntries, target: &EntryTarget) -> KernelEntries {
        let mut desired = desired_entries(peers, DEV, target.direct, false);
        if target.nexthops {
            use_nexthops(&mut desired, model);
        }
        desired
    }

    fn apply(model: &mut KernelEntries, phases: &[Vec<Op>; PHASES]) {
        phases.iter().flatten().for_each(|op| model.record(op));
    }

    type Meaning = (
        BTreeMap<IpAddr, MacAddr>,
        BTreeSet<FdbEntry>,
        BTreeMap<IpNetwork, (IpAddr, u32, bool)>,
        usize,
    );

    /// What a kernel does with packets: which ids the nexthop objects got
    /// may differ (a full pass can hand a freed id to another route with
    /// the same gateway), nothing else. Every route's object exists and
    /// means what the route means; no object is left without a route.
    fn meaning(e: &KernelEntries) -> Meaning {
        let mut used = BTreeSet::new();
        let routes = e
            .routes
            .values()
            .map(|r| {
                if let Some(id) = r.nexthop {
                    let n = e.nexthops.get(&id).expect("the route's nexthop exists");
                    assert_eq!((n.gateway, n.oif, n.onlink), (r.gateway, r.oif, r.onlink));
                    assert!(used.insert(id), "nexthop {id} shared");
                }
                (r.dst, (r.gateway, r.oif, r.onlink))
            })
            .collect();
        assert_eq!(used.len(), e.nexthops.len(), "leftover nexthops: {e:?}");
        (
            e.neighbours.clone(),
            e.fdb.clone(),
            routes,
            e.nexthops.len(),
        )
    }

    /// Pseudo-random peer changes, some in batches, applied by the
    /// incremental path to one model and by full passes to another: both
    /// kernels end up the same after every step, and the incremental
    /// path's own view matches a full build.
    #[test]
    fn incremental_passes_leave_the_kernel_as_full_passes_do() {
        for nexthops in [false, true] {
            let direct = DirectRouting {
                uplink_index: 2,
                connected: vec!["192.168.1.0/30".parse().unwrap()],
            };
            let target = EntryTarget {
                device_index: DEV,
                direct: Some(&direct),
                ipv6: false,
                nexthops,
            };
            let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
            let mut next = |bound: u32| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % u64::from(bound)) as u32
            };
            let mut current: BTreeMap<u32, Peer> =
                (1..=40).map(|n| (n, peer(n, n as u8, 10))).collect();
            let mut peers = Arc::new(current.values().cloned().collect::<PeerSet>());
            let mut by_full = KernelEntries::default();
            let desired = full(&peers, &by_full, &target);
            let ops = diff(&desired, &by_full, true);
            apply(&mut by_full, &ops);
            let mut by_increment = by_full.clone();
            let mut last = LastPass::new(peers.clone(), true, desired, &target);
            let mut incremental_steps = 0;
            for step in 0..400 {
                for _ in 0..=next(3) {
                    let n = 1 + next(60);
                    match next(4) {
                        0 => {
                            current.remove(&n);
                        }
                        // Shared MACs and public IPs (one FDB entry for
                        // two peers), direct-routed peers (public .1-.3).
                        _ => {
                            current.insert(n, peer(n, next(50) as u8, 1 + next(12) as u8));
                        }
                    }
                }
                peers = Arc::new(current.values().cloned().collect::<PeerSet>());
                let desired = full(&peers, &by_full, &target);
                let full_ops = diff(&desired, &by_full, true);
                apply(&mut by_full, &full_ops);
                match last.advance(&peers, true, &by_increment, &target) {
                    Some(ops) => {
                        incremental_steps += 1;
                        apply(&mut by_increment, &ops);
                    }
                    None => {
                        let desired = full(&peers, &by_increment, &target);
                        let ops = diff(&desired, &by_increment, true);
                        apply(&mut by_increment, &ops);
                        last = LastPass::new(peers.clone(), true, desired, &target);
                    }
                }
                assert_eq!(
                    meaning(&by_increment),
                    meaning(&by_full),
                    "step {step}, nexthops {nexthops}"
                );
                // The kept view is what the kernel now holds.
                assert_eq!(
                    meaning(&last.desired),
                    meaning(&by_increment),
                    "step {step}, nexthops {nexthops}"
                );
                assert_eq!(last.desired.routes, by_increment.routes);
            }
            assert!(incremental_steps > 300, "{incremental_steps}");
        }
    }

    #[test]
    fn big_changes_and_completeness_changes_go_through_a_full_pass() {
        let target = EntryTarget {
            device_index: DEV,
            direct: None,
            ipv6: false,
            nexthops: true,
        };
        let few: Arc<PeerSet> = Arc::new((1..=3).map(|n| peer(n, n as u8, 10)).collect());
        let many: Arc<PeerSet> = Arc::new((1..=40).map(|n| peer(n, n as u8, 10)).collect());
        let model = KernelEntries::default();
        let mut last = LastPass::new(few.clone(), false, KernelEntries::default(), &target);
        assert!(last.advance(&few, true, &model, &target).is_none());
        assert!(last.advance(&many, false, &model, &target).is_none());
        let ops = last.advance(&few, false, &model, &target);
        assert_eq!(ops, Some([vec![], vec![], vec![], vec![]]));
    }
}
