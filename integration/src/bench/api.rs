//! API-driven benchmarks against a running `flannel-agent` process (in a
//! namespace of its own, with N peers already programmed): how fast Node
//! changes reach the kernel, and how quiet the agent stays while Nodes only
//! heartbeat. Figures are returned as results that print their table and
//! write their CSV, never asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flannel_embed::netlink::{monitor, KernelEvent};
use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::report::{self, BenchResult, Csv};
use crate::apiserver::TestApiServer;
use crate::fixtures::{annotated, NodeShape};
use crate::netns::TestNetns;

const OWN_NODE: &str = "bench-node";
const NETCONF: &str = r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#;

/// Event latency: with `peers` peers programmed, `events` Node writes
/// (creates, public-ip changes and deletes in turn) at `rate` per second;
/// per event, the time from the API write to the kernel notification that
/// completes it (route added; FDB entry with the new dst; route or its
/// nexthop deleted), seen by a netlink monitor in the agent's namespace.
/// Then the kernel is dumped and compared with the API.
pub async fn event_latency(
    peers: u32,
    events: u32,
    rate: u32,
    shape: NodeShape,
) -> Result<EventLatency, String> {
    let per_kind = events.div_ceil(3);
    if peers < 2 * per_kind + 1 {
        return Err(format!(
            "{events} events need at least {} peers (changes and deletes touch distinct peers)",
            2 * per_kind + 1
        ));
    }
    let agent = Agent::start(peers, shape).await?;
    let seen = Arc::new(Mutex::new(Vec::<(Instant, Seen)>::new()));
    let overruns = Arc::new(Mutex::new(0u64));
    let watcher = spawn_monitor(&agent, seen.clone(), overruns.clone()).await?;

    let mut expected: Vec<(Instant, Seen, u32)> = Vec::with_capacity(events as usize);
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut created, mut changed, mut deleted) = (0u32, 0u32, 0u32);
    let cpu_before = super::usage(agent.pid).cpu_seconds;
    let writes_started = Instant::now();
    for n in 0..events {
        interval.tick().await;
        match n % 3 {
            0 => {
                created += 1;
                let index = peers + created;
                let started = Instant::now();
                agent
                    .server
                    .create_node(shape.vxlan_peer(index))
                    .map_err(|e| format!("creating Node peer-{index}: {e}"))?;
                expected.push((started, Seen::RouteAdded(lease_net(index)), index));
            }
            1 => {
                changed += 1;
                let index = changed;
                let public = changed_public_ip(index);
                let started = Instant::now();
                agent
                    .server
                    .update_node(&format!("peer-{index}"), |node| {
                        *node = annotated(node.clone(), &[("public-ip", &public.to_string())]);
                    })
                    .map_err(|e| format!("changing Node peer-{index}'s public-ip: {e}"))?;
                expected.push((started, Seen::Fdb(mac(index), public), index));
            }
            _ => {
                let index = peers - deleted;
                deleted += 1;
                let started = Instant::now();
                agent
                    .server
                    .delete_node(&format!("peer-{index}"))
                    .map_err(|e| format!("deleting Node peer-{index}: {e}"))?;
                expected.push((started, Seen::RouteDeleted(lease_net(index)), index));
            }
        }
    }
    // Give the last events time to land, then stop watching.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watcher.abort();
    let cpu_percent = (super::usage(agent.pid).cpu_seconds - cpu_before)
        / writes_started.elapsed().as_secs_f64()
        * 100.0;

    let seen = seen
        .lock()
        .map_err(|e| format!("the kernel monitor's record: {e}"))?
        .clone();
    let mut samples = Vec::with_capacity(expected.len());
    for (n, (started, want, peer)) in expected.iter().enumerate() {
        let latency_ms = seen
            .iter()
            .find(|(at, what)| *at >= *started && want.completed_by(what))
            .map(|(at, _)| at.duration_since(*started).as_secs_f64() * 1000.0);
        samples.push(EventSample {
            kind: EVENT_KINDS[n % 3],
            peer: *peer,
            sent_seconds: started.duration_since(writes_started).as_secs_f64(),
            latency_ms,
        });
    }

    // Final state: the kernel against the API.
    let (missing, stale) = compare_with_api(&agent)?;
    let overruns = *overruns
        .lock()
        .map_err(|e| format!("the kernel monitor's overrun count: {e}"))?;
    Ok(EventLatency {
        peers,
        events,
        rate,
        samples,
        missing,
        stale,
        cpu_percent,
        overruns,
    })
}

/// The kinds of Node write, in the order they take turns.
const EVENT_KINDS: [&str; 3] = ["create", "change", "delete"];

/// One Node write of the event-latency scenario.
#[derive(Debug, Clone)]
pub struct EventSample {
    /// `create`, `change` (public-ip) or `delete`.
    pub kind: &'static str,
    /// The peer index (`peer-<i>`).
    pub peer: u32,
    /// When the write started, seconds after the first write.
    pub sent_seconds: f64,
    /// API write -> kernel notification, ms; `None` when never observed.
    pub latency_ms: Option<f64>,
}

/// The event-latency result.
#[derive(Debug, Clone)]
pub struct EventLatency {
    /// Peers programmed before the writes.
    pub peers: u32,
    /// Node writes asked for.
    pub events: u32,
    /// Writes per second.
    pub rate: u32,
    /// One per write, in order.
    pub samples: Vec<EventSample>,
    /// Kernel entries missing or wrong at the end (routes + FDB dst).
    pub missing: usize,
    /// Kernel entries the API no longer asks for at the end.
    pub stale: usize,
    /// Agent CPU during the writes (+2 s), percent of one core.
    pub cpu_percent: f64,
    /// Kernel monitor overruns (notifications lost).
    pub overruns: u64,
}

/// Percentiles of one kind of event.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyStats {
    /// Events of this kind.
    pub events: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
    /// Events whose notification never came.
    pub unobserved: usize,
}

impl EventLatency {
    /// Percentiles of `kind` (`None`: every kind).
    pub fn stats(&self, kind: Option<&str>) -> LatencyStats {
        let chosen: Vec<&EventSample> = self
            .samples
            .iter()
            .filter(|s| kind.is_none_or(|k| s.kind == k))
            .collect();
        let mut sorted: Vec<f64> = chosen.iter().filter_map(|s| s.latency_ms).collect();
        sorted.sort_by(|a, b| a.total_cmp(b));
        LatencyStats {
            events: chosen.len(),
            p50_ms: report::percentile(&sorted, 50.0),
            p99_ms: report::percentile(&sorted, 99.0),
            max_ms: sorted.last().copied().unwrap_or(0.0),
            unobserved: chosen.len() - sorted.len(),
        }
    }
}

impl BenchResult for EventLatency {
    fn table(&self) -> String {
        let mut report = String::new();
        let (peers, events, rate) = (self.peers, self.events, self.rate);
        let _ = writeln!(
            report,
            "event latency: {peers} peers, {events} Node writes at {rate}/s (create / change public-ip / delete in turn); API write -> kernel notification (route added / FDB dst / route or nexthop deleted)"
        );
        let _ = writeln!(
            report,
            "{:>8} {:>7} {:>9} {:>9} {:>9} {:>11}",
            "kind", "events", "p50 ms", "p99 ms", "max ms", "unobserved"
        );
        for (label, kind) in [
            ("create", Some("create")),
            ("change", Some("change")),
            ("delete", Some("delete")),
            ("all", None),
        ] {
            let stats = self.stats(kind);
            let _ = writeln!(
                report,
                "{:>8} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>11}",
                label, stats.events, stats.p50_ms, stats.p99_ms, stats.max_ms, stats.unobserved
            );
        }
        let _ = writeln!(
            report,
            "final kernel vs API (routes + FDB dst): {} missing, {} stale; agent CPU during writes (+2 s): {:.1}%; monitor overruns: {}",
            self.missing, self.stale, self.cpu_percent, self.overruns
        );
        report += "goal (not asserted): p99 <= 50 ms, 0 missing\n";
        report
    }

    fn files(&self) -> Vec<(String, String)> {
        let mut events = Csv::new(&["n", "kind", "peer", "sent_s", "latency_ms"]);
        for (n, sample) in self.samples.iter().enumerate() {
            events.row([
                (n + 1).to_string(),
                sample.kind.to_string(),
                format!("peer-{}", sample.peer),
                report::num(sample.sent_seconds, 4),
                report::opt(sample.latency_ms, 3),
            ]);
        }
        let mut summary = Csv::new(&[
            "kind",
            "events",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "unobserved",
            "peers",
            "rate_per_s",
            "final_missing",
            "final_stale",
            "agent_cpu_percent",
            "monitor_overruns",
        ]);
        for kind in ["create", "change", "delete", "all"] {
            let stats = self.stats((kind != "all").then_some(kind));
            summary.row([
                kind.to_string(),
                stats.events.to_string(),
                report::num(stats.p50_ms, 3),
                report::num(stats.p99_ms, 3),
                report::num(stats.max_ms, 3),
                stats.unobserved.to_string(),
                self.peers.to_string(),
                self.rate.to_string(),
                self.missing.to_string(),
                self.stale.to_string(),
                report::num(self.cpu_percent, 2),
                self.overruns.to_string(),
            ]);
        }
        vec![
            ("events.csv".into(), events.into_text()),
            ("events-summary.csv".into(), summary.into_text()),
        ]
    }
}

/// Idle churn: with `peers` peers programmed, status-only Node updates
/// (Ready condition's lastHeartbeatTime, as kubelet posts) at `rate` per
/// second for `seconds`; counts kernel notifications in the agent's
/// namespace meanwhile (target 0) and the agent's CPU and RSS.
pub async fn idle_churn(
    peers: u32,
    rate: u32,
    seconds: u32,
    shape: NodeShape,
) -> Result<IdleChurn, String> {
    let agent = Agent::start(peers, shape).await?;
    // Let the first reconcile's tail and the kernel's own IPv6 link-local
    // setup (DAD on the new links) settle before watching.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = Arc::new(Mutex::new(Vec::<(Instant, Seen)>::new()));
    let overruns = Arc::new(Mutex::new(0u64));
    let watcher = spawn_monitor(&agent, seen.clone(), overruns.clone()).await?;

    let before = super::usage(agent.pid);
    let (cpu_before, rss_before) = (before.cpu_seconds, before.rss_mib);
    let started = Instant::now();
    let updates = u64::from(rate) * u64::from(seconds);
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..updates {
        interval.tick().await;
        let index = (n % u64::from(peers.max(1))) as u32 + 1;
        agent
            .server
            .update_node(&format!("peer-{index}"), |node| {
                let now = Time(Timestamp::now());
                if let Some(conditions) = node.status.as_mut().and_then(|s| s.conditions.as_mut()) {
                    for condition in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
                        condition.last_heartbeat_time = Some(now.clone());
                    }
                }
            })
            .map_err(|e| format!("heartbeat of Node peer-{index}: {e}"))?;
    }
    // A last second for anything the final updates trigger.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let wall = started.elapsed().as_secs_f64();
    let after = super::usage(agent.pid);
    let (cpu_after, rss_after) = (after.cpu_seconds, after.rss_mib);
    watcher.abort();

    let seen = seen
        .lock()
        .map_err(|e| format!("the kernel monitor's record: {e}"))?
        .clone();
    let count = |f: fn(&Seen) -> bool| seen.iter().filter(|(_, s)| f(s)).count();
    let routes = count(|s| matches!(s, Seen::RouteAdded(_) | Seen::RouteDeleted(_)));
    let fdb = count(|s| matches!(s, Seen::Fdb(..)));
    let nexthops = count(|s| matches!(s, Seen::Nexthop { .. }));
    let other = seen.len() - routes - fdb - nexthops;
    let mut other_kinds = BTreeMap::<String, usize>::new();
    for (_, what) in &seen {
        if let Seen::Other(label) = what {
            *other_kinds.entry(label.clone()).or_default() += 1;
        }
    }
    let overruns = *overruns
        .lock()
        .map_err(|e| format!("the kernel monitor's overrun count: {e}"))?;
    Ok(IdleChurn {
        peers,
        rate,
        seconds,
        updates,
        routes,
        fdb,
        nexthops,
        other,
        other_kinds,
        overruns,
        cpu_percent: (cpu_after - cpu_before) / wall * 100.0,
        rss_mib: rss_after,
        rss_grow_mib: rss_after - rss_before,
        peak_rss_mib: after.peak_rss_mib,
        wall_seconds: wall,
        shape,
    })
}

/// The idle-churn result.
#[derive(Debug, Clone)]
pub struct IdleChurn {
    /// Peers programmed.
    pub peers: u32,
    /// Updates per second.
    pub rate: u32,
    /// Seconds of updates.
    pub seconds: u32,
    /// Status-only Node updates sent.
    pub updates: u64,
    /// Route notifications (proto 77) meanwhile.
    pub routes: usize,
    /// FDB notifications meanwhile.
    pub fdb: usize,
    /// Nexthop notifications meanwhile.
    pub nexthops: usize,
    /// Other kernel notifications (not flannel's kinds).
    pub other: usize,
    /// The other notifications by kind.
    pub other_kinds: BTreeMap<String, usize>,
    /// Kernel monitor overruns.
    pub overruns: u64,
    /// Agent CPU over the updates (+1 s), percent of one core.
    pub cpu_percent: f64,
    /// Agent RSS at the end, MiB.
    pub rss_mib: f64,
    /// RSS growth over the updates, MiB.
    pub rss_grow_mib: f64,
    /// Agent peak RSS (VmHWM) over its life (first sync + the updates), MiB.
    pub peak_rss_mib: f64,
    /// Wall time of the measurement, seconds.
    pub wall_seconds: f64,
    /// How the peer Nodes look.
    pub shape: NodeShape,
}

impl IdleChurn {
    /// Route, FDB and nexthop notifications: what flannel writes.
    pub fn flannel_writes(&self) -> usize {
        self.routes + self.fdb + self.nexthops
    }
}

impl BenchResult for IdleChurn {
    fn table(&self) -> String {
        let mut report = String::new();
        let _ = writeln!(
            report,
            "idle churn: {} {} peers, {} status-only Node updates (Ready lastHeartbeatTime) at {}/s over {} s",
            self.peers, self.shape, self.updates, self.rate, self.seconds
        );
        let _ = writeln!(
            report,
            "{:>8} {:>14} {:>7} {:>5} {:>9} {:>6} {:>8} {:>10} {:>10}",
            "updates",
            "flannel writes",
            "routes",
            "fdb",
            "nexthops",
            "other",
            "cpu %",
            "RSS MiB",
            "RSS grow"
        );
        let _ = writeln!(
            report,
            "{:>8} {:>14} {:>7} {:>5} {:>9} {:>6} {:>8.2} {:>10.1} {:>+10.2}",
            self.updates,
            self.flannel_writes(),
            self.routes,
            self.fdb,
            self.nexthops,
            self.other,
            self.cpu_percent,
            self.rss_mib,
            self.rss_grow_mib
        );
        if !self.other_kinds.is_empty() {
            let kinds: Vec<String> = self
                .other_kinds
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            let _ = writeln!(
                report,
                "other kernel events (not flannel's kinds): {}",
                kinds.join(", ")
            );
        }
        if self.overruns > 0 {
            let _ = writeln!(
                report,
                "monitor overruns: {} (counts are a lower bound)",
                self.overruns
            );
        }
        report +=
            "flannel writes: proto 77 routes, FDB entries, nexthops; goal (not asserted): 0\n";
        report
    }

    fn files(&self) -> Vec<(String, String)> {
        let mut csv = Csv::new(&[
            "peers",
            "rate_per_s",
            "seconds",
            "updates",
            "flannel_writes",
            "routes",
            "fdb",
            "nexthops",
            "other",
            "other_kinds",
            "monitor_overruns",
            "agent_cpu_percent",
            "agent_rss_mib",
            "agent_rss_grow_mib",
            "agent_peak_rss_mib",
            "wall_s",
            "node_shape",
        ]);
        let kinds: Vec<String> = self
            .other_kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        csv.row([
            self.peers.to_string(),
            self.rate.to_string(),
            self.seconds.to_string(),
            self.updates.to_string(),
            self.flannel_writes().to_string(),
            self.routes.to_string(),
            self.fdb.to_string(),
            self.nexthops.to_string(),
            self.other.to_string(),
            kinds.join("; "),
            self.overruns.to_string(),
            report::num(self.cpu_percent, 3),
            report::num(self.rss_mib, 2),
            report::num(self.rss_grow_mib, 2),
            report::num(self.peak_rss_mib, 2),
            report::num(self.wall_seconds, 2),
            self.shape.to_string(),
        ]);
        vec![("churn.csv".into(), csv.into_text())]
    }
}

/// A kernel notification, as far as these benchmarks care.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seen {
    /// RTM_NEWROUTE, proto 77, this destination.
    RouteAdded(Ipv4Addr),
    /// RTM_DELROUTE, proto 77, this destination.
    RouteDeleted(Ipv4Addr),
    /// A new or replaced FDB entry: MAC and dst.
    Fdb([u8; 6], IpAddr),
    /// A nexthop object changed.
    Nexthop {
        deleted: bool,
        gateway: Option<IpAddr>,
    },
    /// Anything else (links, addresses, neighbours, other routes): the
    /// message kind and interface index.
    Other(String),
}

impl Seen {
    /// Whether `seen` is the notification that completes this expectation.
    pub(crate) fn completed_by(&self, seen: &Seen) -> bool {
        match (self, seen) {
            // Deleting a nexthop removes the routes through it silently.
            (
                Seen::RouteDeleted(net),
                Seen::Nexthop {
                    deleted: true,
                    gateway: Some(IpAddr::V4(gateway)),
                },
            ) => gateway == net,
            _ => self == seen,
        }
    }
}

fn classify(event: &KernelEvent) -> Option<Seen> {
    let message = match event {
        KernelEvent::Rtnl(message) => message,
        KernelEvent::Nexthop(event) => {
            return Some(Seen::Nexthop {
                deleted: event.deleted,
                gateway: event.nexthop.gateway,
            })
        }
        KernelEvent::Overrun => return None,
    };
    let NetlinkPayload::InnerMessage(inner) = &message.payload else {
        return Some(Seen::Other("non-rtnl".into()));
    };
    Some(match inner {
        RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route)
            if u8::from(route.header.protocol) == 77 =>
        {
            let dst = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(*v4),
                _ => None,
            });
            match (dst, matches!(inner, RouteNetlinkMessage::NewRoute(_))) {
                (Some(dst), true) => Seen::RouteAdded(dst),
                (Some(dst), false) => Seen::RouteDeleted(dst),
                (None, _) => other(inner),
            }
        }
        RouteNetlinkMessage::NewNeighbour(neighbour)
            if neighbour.header.family == AddressFamily::Bridge =>
        {
            let mut mac = None;
            let mut dst = None;
            for attribute in &neighbour.attributes {
                match attribute {
                    NeighbourAttribute::LinkLayerAddress(bytes) => {
                        mac = <[u8; 6]>::try_from(bytes.as_slice()).ok()
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        dst = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                        dst = <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from)
                    }
                    _ => {}
                }
            }
            match (mac, dst) {
                (Some(mac), Some(dst)) => Seen::Fdb(mac, dst),
                _ => other(inner),
            }
        }
        _ => other(inner),
    })
}

/// A short label for a notification no benchmark waits for.
fn other(message: &RouteNetlinkMessage) -> Seen {
    let label = match message {
        RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m) => {
            format!("link if{}", m.header.index)
        }
        RouteNetlinkMessage::NewAddress(m) | RouteNetlinkMessage::DelAddress(m) => {
            format!("addr if{}", m.header.index)
        }
        RouteNetlinkMessage::NewNeighbour(m) | RouteNetlinkMessage::DelNeighbour(m) => {
            format!(
                "neigh {:?} if{} {:?}",
                m.header.family, m.header.ifindex, m.header.state
            )
        }
        RouteNetlinkMessage::NewRoute(m) | RouteNetlinkMessage::DelRoute(m) => {
            format!("route proto {:?}", m.header.protocol)
        }
        _ => "other".into(),
    };
    Seen::Other(label)
}

/// Records every kernel notification in the agent's namespace, with the
/// instant it was read.
pub(crate) async fn spawn_monitor(
    agent: &Agent,
    seen: Arc<Mutex<Vec<(Instant, Seen)>>>,
    overruns: Arc<Mutex<u64>>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut events = monitor(Some(&agent.ns.path()))
        .await
        .map_err(|e| format!("kernel monitor in {}: {e}", agent.ns.name()))?;
    Ok(tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let at = Instant::now();
            match classify(&event) {
                Some(what) => {
                    if let Ok(mut seen) = seen.lock() {
                        seen.push((at, what));
                    }
                }
                None => {
                    if let Ok(mut count) = overruns.lock() {
                        *count += 1;
                    }
                }
            }
        }
    }))
}

/// Dumps the kernel (routes with proto 77, FDB on flannel.1) and compares
/// with what the API's Nodes ask for: (missing or wrong, stale).
fn compare_with_api(agent: &Agent) -> Result<(usize, usize), String> {
    let mut want_routes = BTreeSet::new();
    let mut want_fdb = BTreeMap::new();
    for node in agent.server.list_nodes() {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        let Some(index) = name
            .strip_prefix("peer-")
            .and_then(|i| i.parse::<u32>().ok())
        else {
            continue;
        };
        let public = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&format!("{}public-ip", crate::fixtures::PREFIX)))
            .cloned()
            .unwrap_or_default();
        want_routes.insert(format!("{}/24", lease_net(index)));
        want_fdb.insert(mac_text(index), public);
    }
    let routes = agent.ns.ip(&["route", "show", "proto", "77"]);
    let have_routes: BTreeSet<String> = routes
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let fdb = Command::new("bridge")
        .args(["-n", agent.ns.name(), "fdb", "show", "dev", "flannel.1"])
        .output()
        .map_err(|e| format!("bridge fdb show: {e}"))?;
    let mut have_fdb = BTreeMap::new();
    for line in String::from_utf8_lossy(&fdb.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(at) = words.iter().position(|w| *w == "dst") {
            if let (Some(mac), Some(dst)) = (words.first(), words.get(at + 1)) {
                have_fdb.insert(mac.to_string(), dst.to_string());
            }
        }
    }
    let missing = want_routes.difference(&have_routes).count()
        + want_fdb
            .iter()
            .filter(|(mac, dst)| have_fdb.get(*mac) != Some(*dst))
            .count();
    let stale = have_routes.difference(&want_routes).count()
        + have_fdb
            .keys()
            .filter(|m| !want_fdb.contains_key(*m))
            .count();
    Ok((missing, stale))
}

/// A `flannel-agent` process in a namespace of its own, ready (subnet.env
/// written) with `peers` peers; killed, and its namespace deleted, on drop.
pub(crate) struct Agent {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) ns: TestNetns,
    pub(crate) server: TestApiServer,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub(crate) async fn start(peers: u32, shape: NodeShape) -> Result<Agent, String> {
        let binary = agent_binary()?;
        let server = super::filled_server(OWN_NODE, 1..=peers, shape)?;
        let dir =
            tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
        let kubeconfig = server
            .write_kubeconfig(dir.path())
            .map_err(|e| format!("writing the kubeconfig: {e}"))?;
        let netconf = dir.path().join("net-conf.json");
        std::fs::write(&netconf, NETCONF)
            .map_err(|e| format!("writing {}: {e}", netconf.display()))?;
        let subnet_file = dir.path().join("subnet.env");
        let ns = TestNetns::new("bapi").with_uplink("192.168.255.1/16", "192.168.0.254");
        let child = Command::new(&binary)
            .arg(format!("--node-name={OWN_NODE}"))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--flannel-conf={}", netconf.display()))
            .arg(format!("--netns={}", ns.path().display()))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--subnet-file={}", subnet_file.display()))
            .env("RUST_LOG", agent_log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let pid = child.id();
        let mut agent = Agent {
            child,
            pid,
            ns,
            server,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        while !subnet_file.exists() {
            let exited = agent
                .child
                .try_wait()
                .map_err(|e| format!("waiting for the agent (pid {pid}): {e}"))?;
            if let Some(status) = exited {
                return Err(format!(
                    "the agent exited ({status}) before it got ready with {peers} peers"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the agent did not get ready with {peers} peers within 300 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(agent)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RUST_LOG for the benchmarks' agents: `warn`, or
/// `FLANNEL_BENCH_AGENT_LOG` (`info` shows what the agent did when).
pub(crate) fn agent_log_filter() -> String {
    std::env::var("FLANNEL_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into())
}

/// `flannel-agent` next to the running program in `target/<profile>/`
/// (also from `deps/` or `examples/`).
pub(crate) fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the running program's path: {e}"))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let path = dir.join("flannel-agent");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build the workspace binaries first",
            path.display()
        ))
    }
}

/// The network address of `vxlan_peer(index)`'s lease.
pub(crate) fn lease_net(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, (42 + index / 256) as u8, (index % 256) as u8, 0)
}

/// `vxlan_peer(index)`'s VTEP MAC.
fn mac(index: u32) -> [u8; 6] {
    let b = index.to_be_bytes();
    [0x0a, b[0], b[1], b[2], b[3], 0x01]
}

fn mac_text(index: u32) -> String {
    mac(index)
        .iter()
        .map(|o| format!("{o:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A public IP no fixture peer has, for the index-th change.
fn changed_public_ip(index: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        172,
        16,
        (index / 250) as u8,
        (index % 250 + 1) as u8,
    ))
}
