//! API-driven benchmarks against a running `flannel-agent` process (in a
//! namespace of its own, with N peers already programmed): how fast Node
//! changes reach the kernel, and how quiet the agent stays while Nodes only
//! heartbeat. Figures are returned as a printable report, never asserted.

use std::collections::{BTreeMap, BTreeSet};
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

use crate::apiserver::{ready_node, Options, TestApiServer};
use crate::fixtures::{annotated, vxlan_peer};
use crate::netns::TestNetns;

const OWN_NODE: &str = "bench-node";
const NETCONF: &str = r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#;

/// Event latency: with `peers` peers programmed, `events` Node writes
/// (creates, public-ip changes and deletes in turn) at `rate` per second;
/// per event, the time from the API write to the kernel notification that
/// completes it (route added; FDB entry with the new dst; route or its
/// nexthop deleted), seen by a netlink monitor in the agent's namespace.
/// Then the kernel is dumped and compared with the API.
pub async fn event_latency(peers: u32, events: u32, rate: u32) -> Result<String, String> {
    let per_kind = events.div_ceil(3);
    if peers < 2 * per_kind + 1 {
        return Err(format!(
            "{events} events need at least {} peers (changes and deletes touch distinct peers)",
            2 * per_kind + 1
        ));
    }
    let agent = Agent::start(peers).await?;
    let seen = Arc::new(Mutex::new(Vec::<(Instant, Seen)>::new()));
    let overruns = Arc::new(Mutex::new(0u64));
    let watcher = spawn_monitor(&agent, seen.clone(), overruns.clone()).await?;

    let mut expected: Vec<(Instant, Seen)> = Vec::with_capacity(events as usize);
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
                    .create_node(vxlan_peer(index))
                    .map_err(|e| e.to_string())?;
                expected.push((started, Seen::RouteAdded(lease_net(index))));
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
                    .map_err(|e| e.to_string())?;
                expected.push((started, Seen::Fdb(mac(index), public)));
            }
            _ => {
                let index = peers - deleted;
                deleted += 1;
                let started = Instant::now();
                agent
                    .server
                    .delete_node(&format!("peer-{index}"))
                    .map_err(|e| e.to_string())?;
                expected.push((started, Seen::RouteDeleted(lease_net(index))));
            }
        }
    }
    // Give the last events time to land, then stop watching.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watcher.abort();
    let cpu_percent = (super::usage(agent.pid).cpu_seconds - cpu_before)
        / writes_started.elapsed().as_secs_f64()
        * 100.0;

    let seen = seen.lock().map_err(|e| e.to_string())?.clone();
    // Latencies (ms) by kind: create, change, delete.
    let mut latencies: [Vec<f64>; 3] = Default::default();
    let mut unobserved = [0usize; 3];
    for (n, (started, want)) in expected.iter().enumerate() {
        let found = seen
            .iter()
            .find(|(at, what)| *at >= *started && want.completed_by(what))
            .map(|(at, _)| at.duration_since(*started));
        match found {
            Some(latency) => latencies[n % 3].push(latency.as_secs_f64() * 1000.0),
            None => unobserved[n % 3] += 1,
        }
    }

    // Final state: the kernel against the API.
    let (missing, stale) = compare_with_api(&agent)?;
    let overruns = *overruns.lock().map_err(|e| e.to_string())?;
    let mut report = String::new();
    report += &format!(
        "event latency: {peers} peers, {events} Node writes at {rate}/s (create / change public-ip / delete in turn); API write -> kernel notification (route added / FDB dst / route or nexthop deleted)\n"
    );
    report += &format!(
        "{:>8} {:>7} {:>9} {:>9} {:>9} {:>11}\n",
        "kind", "events", "p50 ms", "p99 ms", "max ms", "unobserved"
    );
    let all: Vec<f64> = latencies.iter().flatten().copied().collect();
    let kinds = [
        ("create", &latencies[0], unobserved[0]),
        ("change", &latencies[1], unobserved[1]),
        ("delete", &latencies[2], unobserved[2]),
        ("all", &all, unobserved.iter().sum()),
    ];
    for (kind, values, unobserved) in kinds {
        let mut sorted = values.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        report += &format!(
            "{:>8} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>11}\n",
            kind,
            sorted.len() + unobserved,
            percentile(&sorted, 50.0),
            percentile(&sorted, 99.0),
            sorted.last().copied().unwrap_or(0.0),
            unobserved
        );
    }
    report += &format!(
        "final kernel vs API (routes + FDB dst): {missing} missing, {stale} stale; agent CPU during writes (+2 s): {cpu_percent:.1}%; monitor overruns: {overruns}\n"
    );
    report += "goal (not asserted): p99 <= 50 ms, 0 missing\n";
    Ok(report)
}

/// Idle churn: with `peers` peers programmed, status-only Node updates
/// (Ready condition's lastHeartbeatTime, as kubelet posts) at `rate` per
/// second for `seconds`; counts kernel notifications in the agent's
/// namespace meanwhile (target 0) and the agent's CPU and RSS.
pub async fn idle_churn(peers: u32, rate: u32, seconds: u32) -> Result<String, String> {
    let agent = Agent::start(peers).await?;
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
            .map_err(|e| e.to_string())?;
    }
    // A last second for anything the final updates trigger.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let wall = started.elapsed().as_secs_f64();
    let after = super::usage(agent.pid);
    let (cpu_after, rss_after) = (after.cpu_seconds, after.rss_mib);
    watcher.abort();

    let seen = seen.lock().map_err(|e| e.to_string())?.clone();
    let count = |f: fn(&Seen) -> bool| seen.iter().filter(|(_, s)| f(s)).count();
    let routes = count(|s| matches!(s, Seen::RouteAdded(_) | Seen::RouteDeleted(_)));
    let fdb = count(|s| matches!(s, Seen::Fdb(..)));
    let nexthops = count(|s| matches!(s, Seen::Nexthop { .. }));
    let other = seen.len() - routes - fdb - nexthops;
    let mut other_kinds = BTreeMap::<&str, usize>::new();
    for (_, what) in &seen {
        if let Seen::Other(label) = what {
            *other_kinds.entry(label.as_str()).or_default() += 1;
        }
    }
    let overruns = *overruns.lock().map_err(|e| e.to_string())?;
    let mut report = String::new();
    report += &format!(
        "idle churn: {peers} peers, {updates} status-only Node updates (Ready lastHeartbeatTime) at {rate}/s over {seconds} s\n"
    );
    report += &format!(
        "{:>8} {:>14} {:>7} {:>5} {:>9} {:>6} {:>8} {:>10} {:>10}\n",
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
    report += &format!(
        "{:>8} {:>14} {:>7} {:>5} {:>9} {:>6} {:>8.2} {:>10.1} {:>+10.2}\n",
        updates,
        routes + fdb + nexthops,
        routes,
        fdb,
        nexthops,
        other,
        (cpu_after - cpu_before) / wall * 100.0,
        rss_after,
        rss_after - rss_before
    );
    if !other_kinds.is_empty() {
        let kinds: Vec<String> = other_kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        report += &format!(
            "other kernel events (not flannel's kinds): {}\n",
            kinds.join(", ")
        );
    }
    if overruns > 0 {
        report += &format!("monitor overruns: {overruns} (counts are a lower bound)\n");
    }
    report += "flannel writes: proto 77 routes, FDB entries, nexthops; goal (not asserted): 0\n";
    Ok(report)
}

/// A kernel notification, as far as these benchmarks care.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
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
    fn completed_by(&self, seen: &Seen) -> bool {
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
async fn spawn_monitor(
    agent: &Agent,
    seen: Arc<Mutex<Vec<(Instant, Seen)>>>,
    overruns: Arc<Mutex<u64>>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut events = monitor(Some(&agent.ns.path()))
        .await
        .map_err(|e| e.to_string())?;
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
struct Agent {
    child: Child,
    pid: u32,
    ns: TestNetns,
    server: TestApiServer,
    _dir: tempfile::TempDir,
}

impl Agent {
    async fn start(peers: u32) -> Result<Agent, String> {
        let binary = agent_binary()?;
        let server = TestApiServer::start(Options::default()).map_err(|e| e.to_string())?;
        server
            .create_node(ready_node(OWN_NODE, Some("10.42.0.0/24")))
            .map_err(|e| e.to_string())?;
        server
            .create_nodes((1..=peers).map(vxlan_peer))
            .map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let kubeconfig = server
            .write_kubeconfig(dir.path())
            .map_err(|e| e.to_string())?;
        let netconf = dir.path().join("net-conf.json");
        std::fs::write(&netconf, NETCONF).map_err(|e| e.to_string())?;
        let subnet_file = dir.path().join("subnet.env");
        let ns = TestNetns::new("bapi").with_uplink("192.168.255.1/16", "192.168.0.254");
        let child = Command::new(&binary)
            .arg(format!("--node-name={OWN_NODE}"))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--flannel-conf={}", netconf.display()))
            .arg(format!("--netns={}", ns.path().display()))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--subnet-file={}", subnet_file.display()))
            .env("RUST_LOG", "warn")
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
            let exited = agent.child.try_wait().map_err(|e| e.to_string())?;
            if exited.is_some() || Instant::now() > deadline {
                return Err(format!("the agent did not get ready with {peers} peers"));
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

/// `flannel-agent` next to the running program in `target/<profile>/`
/// (also from `deps/` or `examples/`).
fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
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
fn lease_net(index: u32) -> Ipv4Addr {
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
