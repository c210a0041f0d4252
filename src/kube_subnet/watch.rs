//! The Node watch: kube-runtime's watcher over every Node, a cache of
//! per-Node verdicts, and PeerSet snapshots handed on through a coalescing
//! channel (a tokio `watch`: the latest snapshot wins, nothing queues, so no
//! number of Nodes can fill it up).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use super::api_error::{explain_watch, Permission};
use super::initial_list::{node_events, InitialList};
use super::lease::{lease_state, LeaseState};
use super::peers::{Candidate, PeerContext, PeerResolver, PeerSet};
use super::SlimNode;

/// One published view of the peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// The valid peers.
    pub peers: Arc<PeerSet>,
    /// Whether the initial list of all Nodes is complete. Until it is, a
    /// consumer must not garbage-collect peers it does not see.
    pub synced: bool,
    /// Nodes skipped with a warning.
    pub skipped: usize,
}

/// A receiver of PeerSet snapshots; `changed()` wakes on every new one.
pub type PeerReceiver = watch::Receiver<PeerSnapshot>;

/// The verdicts for every Node the watch knows, and what has been said
/// about them.
struct NodeCache {
    ctx: PeerContext,
    /// Every Node's candidate and the peer set they make, kept one Node
    /// at a time.
    resolver: PeerResolver,
    /// Nodes listed since the last `Init`: on `InitDone` they replace the
    /// cache, so a Node deleted while the watch was down disappears.
    relisting: Option<HashMap<String, Candidate>>,
    synced: bool,
    /// Node name → the skip reason already logged.
    warned: BTreeMap<String, String>,
    own_lease_warned: bool,
}

impl NodeCache {
    fn new(ctx: PeerContext) -> Self {
        NodeCache {
            resolver: PeerResolver::new(ctx.own_lease),
            ctx,
            relisting: None,
            synced: false,
            warned: BTreeMap::new(),
            own_lease_warned: false,
        }
    }

    /// Applies one watcher event; returns whether the peer view may have
    /// changed.
    fn apply(&mut self, event: Event<SlimNode>) -> bool {
        match event {
            Event::Init => {
                self.relisting = Some(HashMap::new());
                false
            }
            Event::InitApply(node) => {
                self.check_own(&node);
                let candidate = Candidate::from_node(&node, &self.ctx);
                self.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(node.name().to_string(), candidate);
                false
            }
            Event::InitDone => {
                self.resolver
                    .replace_all(self.relisting.take().unwrap_or_default());
                self.synced = true;
                true
            }
            Event::Apply(node) => {
                self.check_own(&node);
                let candidate = Candidate::from_node(&node, &self.ctx);
                self.resolver.set(node.name(), Some(candidate))
            }
            Event::Delete(node) => self.resolver.set(node.name(), None),
        }
    }

    /// Upstream never notices its own podCIDR changing; we say so loudly.
    fn check_own(&mut self, node: &SlimNode) {
        if node.name() != self.ctx.own_name {
            return;
        }
        if let Ok(LeaseState::Ready(lease)) = lease_state(node, &self.ctx.netconf) {
            if lease != self.ctx.own_lease && !self.own_lease_warned {
                self.own_lease_warned = true;
                warn!(
                    "this node's podCIDR changed from {} to {lease}; the network keeps using {} until flannel restarts",
                    self.ctx.own_lease, self.ctx.own_lease
                );
            }
        }
    }

    /// The current peer set (an O(1) copy of the persistent map), the
    /// skip reasons not said before (node, reason), so each is logged
    /// exactly once, and the names whose entry changed since the last
    /// snapshot (sorted): only those are looked at, so a snapshot costs
    /// O(changed · log n) whatever the cluster's size.
    fn snapshot(&mut self) -> (PeerSnapshot, Vec<(String, String)>, Vec<String>) {
        let mut touched = self.resolver.take_changed();
        touched.sort_unstable();
        touched.dedup();
        let build = self.resolver.build();
        let mut new_warnings = Vec::new();
        for name in &touched {
            match build.skipped.get(name) {
                Some(reason) => {
                    let text = reason.to_string();
                    if self.warned.get(name) != Some(&text) {
                        self.warned.insert(name.clone(), text.clone());
                        new_warnings.push((name.clone(), text));
                    }
                }
                None => {
                    self.warned.remove(name);
                }
            }
        }
        let snapshot = PeerSnapshot {
            peers: Arc::new(build.peers.clone()),
            synced: self.synced,
            skipped: build.skipped.len(),
        };
        (snapshot, new_warnings, touched)
    }
}

/// Watches every Node until the task stops, publishing a new snapshot
/// whenever the set of valid peers changes. The initial list is a
/// streaming one where the server supports it, else paged from the watch
/// cache ([`InitialList::choose`]). Watch errors are retried with
/// kube-runtime's default backoff while the last good snapshot stays
/// published; a relist replaces the cache ("anything not re-listed is
/// gone").
///
/// `report` hears each failure of the watch (Some, with `credential`
/// named in 401/403 messages) and its recovery (None), for a status.
pub async fn watch_peers(
    client: Client,
    ctx: PeerContext,
    publish: watch::Sender<PeerSnapshot>,
    credential: String,
    report: impl FnMut(Option<String>),
) {
    let strategy = InitialList::choose(&client).await;
    watch_peers_with(client, ctx, publish, strategy, credential, report).await
}

/// [`watch_peers`] starting with the given initial-list strategy (a
/// refused streaming list still falls back to list + watch).
pub async fn watch_peers_with(
    client: Client,
    ctx: PeerContext,
    publish: watch::Sender<PeerSnapshot>,
    strategy: InitialList,
    credential: String,
    mut report: impl FnMut(Option<String>),
) {
    let api: Api<SlimNode> = Api::all(client);
    let mut events = std::pin::pin!(node_events(
        api,
        watcher::Config::default(),
        strategy,
        "all Nodes"
    ));
    let mut cache = NodeCache::new(ctx);
    let mut last_error: Option<String> = None;
    loop {
        let Some(first) = events.next().await else {
            // The watcher never ends on its own; if it did, keep the last
            // snapshot rather than tearing the network down.
            warn!("the Node watch ended; peers stay as they are");
            return std::future::pending().await;
        };
        let mut changed = false;
        let mut pending = Some(first);
        // Coalesce: take every event already waiting before rebuilding.
        while let Some(event) = pending.take() {
            match event {
                Ok(event) => {
                    if last_error.take().is_some() {
                        info!("the Node watch recovered");
                        report(None);
                    }
                    changed |= cache.apply(event);
                }
                Err(error) => {
                    let text = explain_watch(&error, &credential, Permission::ListWatchNodes);
                    if last_error.as_deref() != Some(&text) {
                        warn!("watching Nodes failed, keeping the last known peers and retrying: {text}");
                        report(Some(format!("watching Nodes failed, keeping the last known peers and retrying: {text}")));
                        last_error = Some(text);
                    }
                }
            }
            pending = events.next().now_or_never().flatten();
        }
        if changed && cache.synced {
            let (snapshot, new_warnings, touched) = cache.snapshot();
            for (name, reason) in new_warnings {
                warn!(peer = %name, "skipping node {name} as a peer: {reason}");
            }
            publish.send_if_modified(|current| {
                let first_sync = !current.synced;
                if first_sync {
                    info!(
                        peers = snapshot.peers.len(),
                        skipped = snapshot.skipped,
                        "Node list complete"
                    );
                } else {
                    log_peer_changes(&current.peers, &snapshot.peers, &touched);
                }
                // Snapshots of one watch compare by their change log.
                let modified = current.synced != snapshot.synced
                    || current.skipped != snapshot.skipped
                    || !current.peers.differing(&snapshot.peers).is_empty();
                *current = snapshot;
                modified
            });
        }
    }
}

/// One line per peer added, changed or removed among the `touched` names.
fn log_peer_changes(old: &PeerSet, new: &PeerSet, touched: &[String]) {
    for name in touched {
        match (old.get(name), new.get(name)) {
            (None, Some(peer)) => info!(peer = %name, lease = %peer.lease, "peer added"),
            (Some(before), Some(peer)) if before != peer => {
                info!(peer = %name, lease = %peer.lease, "peer changed")
            }
            (Some(_), None) => info!(peer = %name, "peer removed"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetConf;
    use crate::kube_subnet::{AnnotationKeys, Lease};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ctx() -> PeerContext {
        PeerContext {
            own_name: "node-a".into(),
            own_lease: Lease {
                ipv4: Some("10.42.0.0/24".parse().unwrap()),
                ipv6: None,
            },
            keys: AnnotationKeys::new("flannel.alpha.coreos.com/"),
            netconf: NetConf::parse(r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "vxlan"}}"#)
                .unwrap(),
        }
    }

    fn peer(name: &str, cidr: &str, rv: &str) -> SlimNode {
        let p = "flannel.alpha.coreos.com/";
        let annotations = [
            ("kube-subnet-manager", "true"),
            ("backend-type", "vxlan"),
            ("backend-data", r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:0b"}"#),
            ("public-ip", "192.168.1.13"),
        ]
        .iter()
        .map(|(k, v)| (format!("{p}{k}"), v.to_string()))
        .collect();
        SlimNode {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: crate::kube_subnet::node::SlimNodeSpec {
                pod_cidr: Some(cidr.into()),
                pod_cidrs: None,
            },
        }
    }

    #[test]
    fn a_relist_forgets_nodes_not_listed_again() {
        let mut cache = NodeCache::new(ctx());
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(peer("node-b", "10.42.1.0/24", "1")));
        cache.apply(Event::InitApply(peer("node-c", "10.42.2.0/24", "2")));
        assert!(cache.apply(Event::InitDone));
        assert_eq!(cache.snapshot().0.peers.len(), 2);
        // The watch broke; node-c was deleted meanwhile; the relist lacks it.
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(peer("node-b", "10.42.1.0/24", "1")));
        assert!(cache.apply(Event::InitDone));
        let (snapshot, _, _) = cache.snapshot();
        assert_eq!(snapshot.peers.len(), 1);
        assert!(snapshot.peers.get("node-b").is_some());
    }

    /// Events in a pseudo-random order (creates, podCIDR and public-ip
    /// changes, heartbeats, deletes, a relist in the middle): every
    /// snapshot holds what the full build over the Nodes gives, and the
    /// change log between consecutive snapshots names exactly the peers a
    /// full comparison finds, which are among the touched names.
    #[test]
    fn incremental_snapshots_equal_a_full_rebuild() {
        let ctx = ctx();
        let mut cache = NodeCache::new(ctx.clone());
        let mut nodes: BTreeMap<String, SlimNode> = BTreeMap::new();
        cache.apply(Event::Init);
        cache.apply(Event::InitDone);
        let (mut previous, _, _) = cache.snapshot();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for step in 0..1500u64 {
            let name = format!("node-{}", next(30) + 1);
            let cidr = format!("10.42.{}.0/24", next(40) + 1);
            let event = match next(6) {
                0 => {
                    let gone = nodes.remove(&name);
                    gone.map(Event::Delete)
                }
                1 if step % 300 == 0 => {
                    // A relist: everything known, listed again.
                    cache.apply(Event::Init);
                    for node in nodes.values() {
                        cache.apply(Event::InitApply(node.clone()));
                    }
                    Some(Event::InitDone)
                }
                _ => {
                    let node = peer(&name, &cidr, &step.to_string());
                    nodes.insert(name.clone(), node.clone());
                    Some(Event::Apply(node))
                }
            };
            let Some(event) = event else { continue };
            cache.apply(event);
            let (snapshot, _, touched) = cache.snapshot();
            let full = crate::kube_subnet::build_peer_set(nodes.values(), &ctx);
            assert_eq!(*snapshot.peers, full.peers, "step {step}");
            assert_eq!(snapshot.skipped, full.skipped.len(), "step {step}");
            let logged = previous.peers.differing(&snapshot.peers);
            let walked: PeerSet = previous.peers.iter().cloned().collect();
            assert_eq!(logged, walked.differing(&snapshot.peers), "step {step}");
            for name in &logged {
                assert!(touched.iter().any(|t| t == name), "step {step}: {name}");
            }
            previous = snapshot;
        }
    }

    #[test]
    fn irrelevant_updates_change_nothing() {
        let mut cache = NodeCache::new(ctx());
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(peer("node-b", "10.42.1.0/24", "1")));
        cache.apply(Event::InitDone);
        // A heartbeat: new resourceVersion, same flannel-relevant content.
        assert!(!cache.apply(Event::Apply(peer("node-b", "10.42.1.0/24", "7"))));
        // A podCIDR change is noticed (upstream misses it).
        assert!(cache.apply(Event::Apply(peer("node-b", "10.42.9.0/24", "8"))));
        assert_eq!(
            cache.snapshot().0.peers.get("node-b").unwrap().lease.ipv4,
            Some("10.42.9.0/24".parse().unwrap())
        );
        assert!(cache.apply(Event::Delete(peer("node-b", "10.42.9.0/24", "9"))));
        assert!(cache.snapshot().0.peers.is_empty());
    }

    #[test]
    fn each_skip_reason_is_warned_once() {
        let mut cache = NodeCache::new(ctx());
        let mut bad = peer("node-x", "10.42.7.0/24", "1");
        bad.metadata.annotations.as_mut().unwrap().insert(
            "flannel.alpha.coreos.com/public-ip".into(),
            "not-an-ip".into(),
        );
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(bad.clone()));
        cache.apply(Event::InitApply(peer("node-b", "10.42.1.0/24", "2")));
        cache.apply(Event::InitDone);
        let (snapshot, warnings, _) = cache.snapshot();
        assert_eq!((snapshot.peers.len(), snapshot.skipped), (1, 1));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].1.contains("'not-an-ip'"), "{warnings:?}");
        // Other changes, and the same bad node again: nothing new to say.
        cache.apply(Event::Apply(peer("node-c", "10.42.2.0/24", "3")));
        cache.apply(Event::Apply(bad.clone()));
        assert!(cache.snapshot().1.is_empty());
        // A different problem with the same node is said once more.
        bad.spec.pod_cidr = Some("10.99.0.0/24".into());
        cache.apply(Event::Apply(bad));
        let (_, warnings, _) = cache.snapshot();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].1.contains("not inside the flannel Network"),
            "{warnings:?}"
        );
    }
}
