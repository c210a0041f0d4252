//! The Node watch: kube-runtime's watcher over every Node, a cache of
//! per-Node verdicts, and PeerSet snapshots handed on through a coalescing
//! channel (a tokio `watch`: the latest snapshot wins, nothing queues, so no
//! number of Nodes can fill it up).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
// tokio's clock: the loop's timer and the limiter read the same one.
use tokio::time::Instant;
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

/// How often one Node may be warned about: a Node whose annotations a
/// controller keeps flipping between valid and invalid (seen at 100 times
/// a second in the hostile-Nodes test) must not turn into 100 warnings a
/// second.
pub const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Skip warnings, at most one per Node per [`WARN_INTERVAL`]; what comes
/// in between is held back (the latest reason, and a count) and said when
/// the interval is over, if the Node is still skipped for that reason.
#[derive(Debug, Default)]
struct WarnLimiter {
    nodes: HashMap<String, NodeWarnings>,
}

#[derive(Debug)]
struct NodeWarnings {
    last: Instant,
    held: Option<String>,
    held_count: u64,
}

impl WarnLimiter {
    /// A new skip reason for `node`: the text to log now, or `None` when
    /// it is held back.
    fn offer(&mut self, node: &str, reason: String, now: Instant) -> Option<String> {
        match self.nodes.get_mut(node) {
            Some(entry) if now.duration_since(entry.last) < WARN_INTERVAL => {
                entry.held = Some(reason);
                entry.held_count += 1;
                None
            }
            entry => {
                let held_count = entry.map_or(0, |e| e.held_count);
                self.nodes.insert(
                    node.to_string(),
                    NodeWarnings {
                        last: now,
                        held: None,
                        held_count: 0,
                    },
                );
                Some(with_count(reason, held_count))
            }
        }
    }

    /// Held warnings whose interval is over: said if `current` (the Node's
    /// skip reason now) is still the held one. Entries with nothing held
    /// are forgotten once their interval is over, so deleted Nodes cost
    /// nothing.
    fn due(
        &mut self,
        now: Instant,
        current: impl Fn(&str) -> Option<String>,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.nodes.retain(|node, entry| {
            if now.duration_since(entry.last) < WARN_INTERVAL {
                return true;
            }
            let Some(held) = entry.held.take() else {
                return false;
            };
            if current(node).as_deref() == Some(held.as_str()) {
                // Counted as the one said now, not as held back.
                out.push((node.clone(), with_count(held, entry.held_count - 1)));
                entry.last = now;
                entry.held_count = 0;
                true
            } else {
                false
            }
        });
        out.sort();
        out
    }

    /// When the next held warning is due.
    fn next_due(&self) -> Option<Instant> {
        self.nodes
            .values()
            .filter(|e| e.held.is_some())
            .map(|e| e.last + WARN_INTERVAL)
            .min()
    }
}

fn with_count(reason: String, held: u64) -> String {
    match held {
        0 => reason,
        1 => format!("{reason} (1 more warning about this node held back)"),
        n => format!("{reason} ({n} more warnings about this node held back)"),
    }
}

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
    /// Node name → the skip reason already logged (or held back).
    warned: BTreeMap<String, String>,
    limiter: WarnLimiter,
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
            limiter: WarnLimiter::default(),
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
    fn snapshot(&mut self, now: Instant) -> (PeerSnapshot, Vec<(String, String)>, Vec<String>) {
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
                        if let Some(text) = self.limiter.offer(name, text, now) {
                            new_warnings.push((name.clone(), text));
                        }
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

    /// Held-back warnings now due, for Nodes still skipped for that reason.
    fn due_warnings(&mut self, now: Instant) -> Vec<(String, String)> {
        let skipped = &self.resolver.build().skipped;
        self.limiter
            .due(now, |node| skipped.get(node).map(ToString::to_string))
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
        // Held-back warnings are said when due, even if no event comes.
        let next = match cache.limiter.next_due() {
            Some(due) => match tokio::time::timeout_at(due, events.next()).await {
                Ok(next) => next,
                Err(_) => {
                    for (name, reason) in cache.due_warnings(Instant::now()) {
                        warn!(peer = %name, "skipping node {name} as a peer: {reason}");
                    }
                    continue;
                }
            },
            None => events.next().await,
        };
        let Some(first) = next else {
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
        let now = Instant::now();
        if changed && cache.synced {
            let (snapshot, new_warnings, touched) = cache.snapshot(now);
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
        // Busy watches flush (and forget) what is due here; idle ones at
        // the timer above.
        for (name, reason) in cache.due_warnings(now) {
            warn!(peer = %name, "skipping node {name} as a peer: {reason}");
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
        assert_eq!(cache.snapshot(Instant::now()).0.peers.len(), 2);
        // The watch broke; node-c was deleted meanwhile; the relist lacks it.
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(peer("node-b", "10.42.1.0/24", "1")));
        assert!(cache.apply(Event::InitDone));
        let (snapshot, _, _) = cache.snapshot(Instant::now());
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
        let (mut previous, _, _) = cache.snapshot(Instant::now());
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
            let (snapshot, _, touched) = cache.snapshot(Instant::now());
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
            cache
                .snapshot(Instant::now())
                .0
                .peers
                .get("node-b")
                .unwrap()
                .lease
                .ipv4,
            Some("10.42.9.0/24".parse().unwrap())
        );
        assert!(cache.apply(Event::Delete(peer("node-b", "10.42.9.0/24", "9"))));
        assert!(cache.snapshot(Instant::now()).0.peers.is_empty());
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
        let (snapshot, warnings, _) = cache.snapshot(Instant::now());
        assert_eq!((snapshot.peers.len(), snapshot.skipped), (1, 1));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].1.contains("'not-an-ip'"), "{warnings:?}");
        // Other changes, and the same bad node again: nothing new to say.
        cache.apply(Event::Apply(peer("node-c", "10.42.2.0/24", "3")));
        cache.apply(Event::Apply(bad.clone()));
        assert!(cache.snapshot(Instant::now()).1.is_empty());
        // A different problem with the same node is said once more (once
        // the node's warning interval is over).
        bad.spec.pod_cidr = Some("10.99.0.0/24".into());
        cache.apply(Event::Apply(bad));
        let (_, warnings, _) = cache.snapshot(Instant::now() + WARN_INTERVAL);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].1.contains("not inside the flannel Network"),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_limiter_says_one_warning_per_node_per_interval() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut limiter = WarnLimiter::default();
        assert_eq!(
            limiter.offer("x", "bad A".into(), at(0)),
            Some("bad A".into())
        );
        // Another node is not held back by x.
        assert_eq!(
            limiter.offer("y", "bad Y".into(), at(1)),
            Some("bad Y".into())
        );
        assert_eq!(limiter.offer("x", "bad B".into(), at(1)), None);
        assert_eq!(limiter.offer("x", "bad A".into(), at(2)), None);
        assert_eq!(limiter.next_due(), Some(at(30)));
        let current =
            |reason: &'static str| move |node: &str| (node == "x").then(|| reason.to_string());
        assert!(limiter.due(at(29), current("bad A")).is_empty());
        // Due: the latest reason, with the one before it counted.
        assert_eq!(
            limiter.due(at(30), current("bad A")),
            [(
                "x".to_string(),
                "bad A (1 more warning about this node held back)".to_string()
            )]
        );
        assert_eq!(limiter.offer("x", "bad C".into(), at(31)), None);
        // y's interval is over with nothing held: forgotten. x became a
        // peer before its held warning was due: nothing to say, forgotten.
        assert!(limiter.due(at(61), |_| None).is_empty());
        assert!(limiter.nodes.is_empty());
        // Held back, then offered after the interval: said with the count.
        limiter.offer("z", "one".into(), at(100));
        limiter.offer("z", "two".into(), at(101));
        limiter.offer("z", "three".into(), at(102));
        assert_eq!(
            limiter.offer("z", "four".into(), at(131)),
            Some("four (2 more warnings about this node held back)".into())
        );
    }

    /// A Node flapping between valid and invalid 100 times a second for
    /// 10 s: one warning, then the held one when the interval is over.
    #[test]
    fn a_flapping_node_is_warned_about_once_per_interval() {
        let mut cache = NodeCache::new(ctx());
        cache.apply(Event::Init);
        cache.apply(Event::InitDone);
        let good = peer("node-f", "10.42.5.0/24", "1");
        let mut bad = good.clone();
        bad.metadata.annotations.as_mut().unwrap().insert(
            "flannel.alpha.coreos.com/public-ip".into(),
            "not-an-ip".into(),
        );
        let t0 = Instant::now();
        let mut said = Vec::new();
        for i in 0..1000u64 {
            let node = if i % 2 == 0 {
                bad.clone()
            } else {
                good.clone()
            };
            cache.apply(Event::Apply(node));
            let now = t0 + Duration::from_millis(10 * i);
            said.extend(cache.snapshot(now).1);
            said.extend(cache.due_warnings(now));
        }
        assert_eq!(said.len(), 1, "{said:?}");
        // It ends invalid: the held warning is said when due.
        cache.apply(Event::Apply(bad));
        cache.snapshot(t0 + Duration::from_secs(11));
        let later = cache.due_warnings(t0 + WARN_INTERVAL);
        assert_eq!(later.len(), 1);
        assert!(
            later[0].1.contains("'not-an-ip'") && later[0].1.contains("held back"),
            "{later:?}"
        );
    }
}
