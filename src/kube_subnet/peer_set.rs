//! The published set of peers, as a persistent map: every Node event makes
//! a new set that shares all but the changed path with the one before, so
//! publishing a snapshot costs O(log n), not a copy of every peer, and
//! finding what changed between two snapshots of one watch costs
//! O(changed · log n), not a walk over both.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rpds::RedBlackTreeMapSync;

use super::peers::Peer;

/// Every programmable peer, by node name. Compared as a whole: an update
/// that changes nothing here (a kubelet heartbeat) changes no snapshot.
/// Cloning is O(1) (the map is persistent and shared).
#[derive(Clone)]
pub struct PeerSet {
    peers: RedBlackTreeMapSync<Arc<str>, Arc<Peer>>,
    /// The change log: version → the name changed then, one entry per
    /// name (its latest change; removed names stay as tombstones until
    /// pruned).
    changes: RedBlackTreeMapSync<u64, Arc<str>>,
    /// Name → the version of its latest change (the key into `changes`).
    changed_at: RedBlackTreeMapSync<Arc<str>, u64>,
    /// The version of the latest change.
    version: u64,
    /// Changes at or below this version are no longer in the log.
    floor: u64,
    /// Shared by the sets of one line of history (a set and its clones,
    /// one watch's snapshots), holding the latest version written in it:
    /// versions compare only within a lineage. A clone that is changed
    /// after its original was starts a lineage of its own.
    lineage: Arc<AtomicU64>,
}

impl Default for PeerSet {
    fn default() -> Self {
        PeerSet {
            peers: RedBlackTreeMapSync::new_sync(),
            changes: RedBlackTreeMapSync::new_sync(),
            changed_at: RedBlackTreeMapSync::new_sync(),
            version: 0,
            floor: 0,
            lineage: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl fmt::Debug for PeerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.peers.iter()).finish()
    }
}

/// Equal when they hold the same peers, whatever their history.
impl PartialEq for PeerSet {
    fn eq(&self, other: &PeerSet) -> bool {
        self.len() == other.len() && self.differing(other).is_empty()
    }
}

impl Eq for PeerSet {}

impl PeerSet {
    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.size()
    }
    /// No peers at all.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
    /// A peer by node name.
    pub fn get(&self, name: &str) -> Option<&Peer> {
        self.peers.get(name).map(|p| &**p)
    }
    /// A peer by node name, as shared.
    pub(crate) fn get_shared(&self, name: &str) -> Option<&Arc<Peer>> {
        self.peers.get(name)
    }
    /// Peers in node-name order.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values().map(|p| &**p)
    }

    /// Names of the peers that differ between `self` and `other` (added,
    /// removed or changed), in name order. For two snapshots of one watch
    /// this reads only the change log between them, O(changed · log n);
    /// for unrelated sets it walks both (peers shared between them compare
    /// by pointer).
    pub fn differing<'a>(&'a self, other: &'a PeerSet) -> Vec<&'a str> {
        let (older, newer) = if self.version <= other.version {
            (self, other)
        } else {
            (other, self)
        };
        if !Arc::ptr_eq(&self.lineage, &other.lineage) || older.version < newer.floor {
            return self.walk_differing(other);
        }
        let mut names: Vec<&'a str> = newer
            .changes
            .range(older.version + 1..)
            .map(|(_, name)| &**name)
            .filter(|name| !same_peer(older.peers.get(*name), newer.peers.get(*name)))
            .collect();
        names.sort_unstable();
        names
    }

    fn walk_differing<'a>(&'a self, other: &'a PeerSet) -> Vec<&'a str> {
        let mut names = Vec::new();
        let mut mine = self.peers.iter().peekable();
        let mut theirs = other.peers.iter().peekable();
        loop {
            match (mine.peek(), theirs.peek()) {
                (None, None) => break,
                (Some((name, _)), None) => {
                    names.push(&***name);
                    mine.next();
                }
                (None, Some((name, _))) => {
                    names.push(&***name);
                    theirs.next();
                }
                (Some((a, pa)), Some((b, pb))) => match a.cmp(b) {
                    std::cmp::Ordering::Less => {
                        names.push(&***a);
                        mine.next();
                    }
                    std::cmp::Ordering::Greater => {
                        names.push(&***b);
                        theirs.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !same_peer(Some(*pa), Some(*pb)) {
                            names.push(&***a);
                        }
                        mine.next();
                        theirs.next();
                    }
                },
            }
        }
        names
    }

    /// Sets a peer (by its name); a peer equal to the one there changes
    /// nothing, not even the version.
    pub(crate) fn insert(&mut self, peer: &Arc<Peer>) {
        if same_peer(self.peers.get(peer.name.as_str()), Some(peer)) {
            return;
        }
        let name: Arc<str> = Arc::from(peer.name.as_str());
        self.peers.insert_mut(name.clone(), peer.clone());
        self.record(name);
    }

    /// Removes a peer, if there.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Arc<Peer>> {
        let (key, peer) = self
            .peers
            .get_key_value(name)
            .map(|(k, p)| (k.clone(), p.clone()))?;
        self.peers.remove_mut(name);
        self.record(key);
        self.prune_tombstones();
        Some(peer)
    }

    fn record(&mut self, name: Arc<str>) {
        if self.lineage.load(Ordering::Acquire) != self.version {
            // Another set of this lineage moved on: fork, so our versions
            // are never compared with its.
            self.lineage = Arc::new(AtomicU64::new(self.version));
            self.floor = self.version;
        }
        self.version += 1;
        self.lineage.store(self.version, Ordering::Release);
        if let Some(before) = self.changed_at.get(&name).copied() {
            self.changes.remove_mut(&before);
        }
        self.changes.insert_mut(self.version, name.clone());
        self.changed_at.insert_mut(name, self.version);
    }

    /// Removed names stay in the log so a later snapshot can say they
    /// went; once they outnumber the peers (plus a margin), they are
    /// dropped in one O(n) pass and older snapshots compare by walking.
    fn prune_tombstones(&mut self) {
        if self.changed_at.size() <= 2 * self.peers.size() + TOMBSTONE_MARGIN {
            return;
        }
        let gone: Vec<(Arc<str>, u64)> = self
            .changed_at
            .iter()
            .filter(|(name, _)| !self.peers.contains_key(&***name))
            .map(|(name, version)| (name.clone(), *version))
            .collect();
        for (name, version) in gone {
            self.changed_at.remove_mut(&name);
            self.changes.remove_mut(&version);
        }
        self.floor = self.version;
    }
}

/// Tombstones allowed beyond the number of peers (small under test, so
/// the tests see pruning).
const TOMBSTONE_MARGIN: usize = if cfg!(test) { 8 } else { 1024 };

/// Two entries for one name hold the same peer (by pointer first).
fn same_peer(a: Option<&Arc<Peer>>, b: Option<&Arc<Peer>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    }
}

/// A peer set from validated peers (by their names; a later peer of the
/// same name wins). The watch builds its sets from Nodes; this is for
/// embedders and tests that have peers at hand.
impl FromIterator<Peer> for PeerSet {
    fn from_iter<I: IntoIterator<Item = Peer>>(peers: I) -> Self {
        let mut set = PeerSet::default();
        for peer in peers {
            set.insert(&Arc::new(peer));
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_subnet::Lease;

    fn peer(n: u32, ip_last: u8) -> Peer {
        Peer {
            name: format!("node-{n}"),
            lease: Lease {
                ipv4: Some(
                    format!("10.{}.{}.0/24", 42 + n / 256, n % 256)
                        .parse()
                        .unwrap(),
                ),
                ipv6: None,
            },
            public_ip: Some(std::net::Ipv4Addr::new(192, 168, 1, ip_last)),
            public_ipv6: None,
            backend_v4: None,
            backend_v6: None,
        }
    }

    /// Snapshots taken along a pseudo-random run of inserts (new, changed
    /// and unchanged peers) and removes: between any two of them the
    /// change log gives exactly what walking both sets gives, also after
    /// tombstones were pruned; unrelated sets are walked.
    #[test]
    fn the_change_log_names_exactly_what_a_full_walk_does() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |bound: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % u64::from(bound)) as u32
        };
        let mut set = PeerSet::default();
        let mut snapshots = vec![set.clone()];
        for step in 0..4000 {
            let n = next(40);
            match next(4) {
                0 => {
                    set.remove(&format!("node-{n}"));
                }
                _ => set.insert(&Arc::new(peer(n, next(3) as u8 + 1))),
            }
            // Short-lived Nodes in the second half, so tombstones pile up
            // and get pruned.
            if step >= 2000 {
                let short = 100 + step / 2;
                match step % 2 {
                    0 => set.insert(&Arc::new(peer(short, 1))),
                    _ => {
                        set.remove(&format!("node-{short}"));
                    }
                }
            }
            if step % 7 == 0 {
                snapshots.push(set.clone());
            }
        }
        assert!(set.floor > 0, "the run never pruned tombstones");
        for (i, a) in snapshots.iter().enumerate().step_by(5) {
            for b in snapshots.iter().skip(i).step_by(9) {
                let logged = a.differing(b);
                let walked = a.walk_differing(b);
                assert_eq!(logged, walked, "{} -> {}", a.version, b.version);
                assert_eq!(b.differing(a), walked);
                assert_eq!(a == b, walked.is_empty());
            }
        }
        let unrelated: PeerSet = set.iter().cloned().collect();
        assert!(unrelated.differing(&set).is_empty());
        assert_eq!(unrelated, set);
        // Two clones changed apart fork: each still compares right.
        let mut left = set.clone();
        let mut right = set.clone();
        left.insert(&Arc::new(peer(5000, 7)));
        right.insert(&Arc::new(peer(5001, 7)));
        assert_eq!(left.differing(&right), left.walk_differing(&right));
        assert_eq!(left.differing(&right), vec!["node-5000", "node-5001"]);
        assert_eq!(set.differing(&right), vec!["node-5001"]);
    }

    #[test]
    fn an_equal_peer_changes_nothing_and_a_clone_is_shared() {
        let mut set: PeerSet = [peer(1, 1), peer(2, 1)].into_iter().collect();
        let before = set.clone();
        set.insert(&Arc::new(peer(1, 1)));
        assert_eq!(set.version, before.version);
        assert!(set.remove("node-9").is_none());
        set.insert(&Arc::new(peer(1, 2)));
        assert_eq!(before.differing(&set), vec!["node-1"]);
        assert_eq!(
            before.get("node-1").unwrap().public_ip,
            peer(1, 1).public_ip
        );
        set.remove("node-2");
        assert_eq!(set.differing(&before), vec!["node-1", "node-2"]);
        assert_eq!(set.len(), 1);
    }
}
