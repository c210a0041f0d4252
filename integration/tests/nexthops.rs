//! Routes through nexthop objects against the real kernel: two nodes
//! (network namespaces on a veth wire) with the network task of each in
//! this process, as in `vxlan_datapath.rs`, checked with `ip nexthop`,
//! `ip route` and `ping`. The fallback to plain onlink routes runs one node
//! as a `flannel-agent` process with `FLANNEL_EMBED_NEXTHOPS=off`.

use std::process::Command;
use std::time::Duration;

use flannel_embed::Backend;
use integration::fixtures::{ready_with_peer, route_to, within, NodePair};
use integration::netns::TestNetns;
use integration::{wait_for_file, workspace_bin, Running};

/// 10.42.1.0 read as a 32-bit number: the id node 1's lease gets.
const NODE1_ID: u32 = 0x0a2a_0100;
/// 10.42.0.0: node 0's.
const NODE0_ID: u32 = 0x0a2a_0000;

/// The word after `key` in an `ip` line.
fn after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == key).map(|w| w[1])
}

/// `<dst> nhid <id> via <via> dev <dev> proto 77 onlink`: the id, if the
/// route has that shape.
fn nexthop_route(ns: &TestNetns, dst: &str, via: &str, dev: &str) -> Option<u32> {
    let line = route_to(ns, dst)?;
    let shape = after(&line, "via") == Some(via)
        && after(&line, "dev") == Some(dev)
        && after(&line, "proto") == Some("77")
        && line.split_whitespace().any(|w| w == "onlink");
    after(&line, "nhid")
        .and_then(|id| id.parse().ok())
        .filter(|_| shape)
}

/// `ip -d nexthop show` lines, by id.
fn nexthops(ns: &TestNetns) -> Vec<(u32, String)> {
    ns.ip(&["-d", "nexthop", "show"])
        .lines()
        .filter_map(|l| Some((after(l, "id")?.parse().ok()?, l.trim().to_string())))
        .collect()
}

fn nexthop(ns: &TestNetns, id: u32) -> Option<String> {
    nexthops(ns)
        .into_iter()
        .find(|(i, _)| *i == id)
        .map(|(_, l)| l)
}

/// Our objects (protocol 77).
fn our_nexthops(ns: &TestNetns) -> Vec<u32> {
    nexthops(ns)
        .into_iter()
        .filter(|(_, l)| after(l, "proto") == Some("77"))
        .map(|(id, _)| id)
        .collect()
}

fn pings(ns: &TestNetns, args: &[&str]) -> bool {
    let mut all = vec!["-c", "1", "-W", "2"];
    all.extend_from_slice(args);
    ns.exec("ping", &all).status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_point_at_nexthop_objects_and_carry_traffic() {
    let lab = NodePair::new("nh", Backend::Vxlan);
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let [n0, n1] = &lab.nodes;

    // `ip nexthop`: one object per peer, ours, onlink on flannel.1, its id
    // derived from the peer's lease.
    let object = nexthop(n0, NODE1_ID).unwrap_or_else(|| {
        panic!(
            "no nexthop {NODE1_ID}:\n{}",
            n0.ip(&["-d", "nexthop", "show"])
        )
    });
    for wanted in [
        "via 10.42.1.0",
        "dev flannel.1",
        "scope link",
        "proto 77",
        "onlink",
    ] {
        assert!(object.contains(wanted), "{wanted:?} not in {object}");
    }
    assert_eq!(our_nexthops(n0), vec![NODE1_ID]);
    // `ip route`: the seed's route in meaning, through the object.
    assert_eq!(
        nexthop_route(n0, "10.42.1.0/24", "10.42.1.0", "flannel.1"),
        Some(NODE1_ID),
        "{}",
        n0.ip(&["route", "show"])
    );
    assert_eq!(
        nexthop_route(n1, "10.42.0.0/24", "10.42.0.0", "flannel.1"),
        Some(NODE0_ID),
        "{}",
        n1.ip(&["route", "show"])
    );

    // Traffic: the peer's VTEP address, and a "pod" address in each lease
    // (on lo), across the tunnel both ways.
    assert!(pings(n0, &["10.42.1.0"]), "node 0 -> node 1's VTEP");
    n0.ip(&["addr", "add", "10.42.0.7/32", "dev", "lo"]);
    n1.ip(&["addr", "add", "10.42.1.7/32", "dev", "lo"]);
    assert!(pings(n0, &["-I", "10.42.0.7", "10.42.1.7"]), "pod to pod");
    assert!(pings(n1, &["-I", "10.42.1.7", "10.42.0.7"]), "and back");

    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_deleted_or_changed_nexthops_and_routes_are_restored() {
    let lab = NodePair::new("nhf", Backend::Vxlan);
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let n0 = &lab.nodes[0];
    let whole = || {
        nexthop_route(n0, "10.42.1.0/24", "10.42.1.0", "flannel.1") == Some(NODE1_ID)
            && nexthop(n0, NODE1_ID).is_some_and(|l| l.contains("via 10.42.1.0 "))
    };
    assert!(whole());

    // The object deleted: the kernel silently takes the route with it;
    // both come back under the same id.
    // Delete and look in one `ip -batch` run: the agent repairs within tens
    // of milliseconds, faster than a second `ip` process may start on a
    // loaded machine.
    let batch = format!("nexthop del id {NODE1_ID}\nroute show 10.42.1.0/24\n");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("printf '{batch}' | ip -n {} -batch -", n0.name()))
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("10.42.1.0/24"),
        "the route went too"
    );
    let took = within(Duration::from_secs(3), "nexthop and route restored", whole).await;
    println!("nexthop + route restored after {took:?}");

    // The route deleted: it comes back pointing at the same object.
    n0.ip(&["route", "del", "10.42.1.0/24"]);
    let took = within(Duration::from_secs(3), "route restored", whole).await;
    println!("route restored after {took:?}");
    assert_eq!(our_nexthops(n0), vec![NODE1_ID], "no second object");

    // The object pointed elsewhere by hand: it is put back in place (a
    // replace; the route stays as it is).
    n0.ip(&[
        "nexthop",
        "replace",
        "id",
        &NODE1_ID.to_string(),
        "via",
        "10.42.1.99",
        "dev",
        "flannel.1",
        "onlink",
        "proto",
        "77",
    ]);
    let took = within(Duration::from_secs(3), "nexthop gateway restored", whole).await;
    println!("nexthop gateway restored after {took:?}");

    // The device deleted (objects and routes go with it): all back.
    n0.ip(&["link", "del", "flannel.1"]);
    within(
        Duration::from_secs(3),
        "device, nexthop and route back",
        whole,
    )
    .await;
    assert!(pings(n0, &["10.42.1.0"]), "traffic after all that");

    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_leaves_no_nexthop_behind() {
    let lab = NodePair::new("nhg", Backend::Vxlan);
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let n0 = &lab.nodes[0];
    assert_eq!(our_nexthops(n0), vec![NODE1_ID]);
    h1.shutdown().await.unwrap();

    lab.server.delete_node("node-1").unwrap();
    within(
        Duration::from_secs(2),
        "peer's route and object removed",
        || route_to(n0, "10.42.1.0/24").is_none() && our_nexthops(n0).is_empty(),
    )
    .await;
    h0.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_ids_and_removes_stale_objects() {
    let lab = NodePair::new("nhs", Backend::Vxlan);
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    h0.shutdown().await.unwrap();
    let n0 = &lab.nodes[0];

    // What a previous run (or someone else) left while node 0 was down:
    // - the peer's object moved to another id (a previous run probed past a
    //   taken id): kept, not renumbered;
    // - a peer gone since: object and route (ours);
    // - a stray object of ours that no route uses;
    // - someone else's object and route;
    // - an object of ours that someone else's route points at.
    let add = |args: &[&str]| {
        n0.ip(args);
    };
    add(&["route", "del", "10.42.1.0/24"]);
    add(&["nexthop", "del", "id", &NODE1_ID.to_string()]);
    for (id, via) in [
        ("777", "10.42.1.0"),
        ("4242", "10.42.9.0"),
        ("4343", "10.42.8.0"),
        ("4545", "10.42.6.0"),
    ] {
        add(&[
            "nexthop",
            "add",
            "id",
            id,
            "via",
            via,
            "dev",
            "flannel.1",
            "onlink",
            "proto",
            "77",
        ]);
    }
    add(&[
        "nexthop",
        "add",
        "id",
        "4444",
        "via",
        "10.42.7.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    add(&["route", "add", "10.42.1.0/24", "nhid", "777", "proto", "77"]);
    add(&[
        "route",
        "add",
        "10.42.9.0/24",
        "nhid",
        "4242",
        "proto",
        "77",
    ]);
    add(&["route", "add", "10.99.0.0/24", "nhid", "4444"]);
    add(&["route", "add", "10.98.0.0/24", "nhid", "4545"]);

    let h0 = lab.spawn(0);
    ready_with_peer(&h0).await;
    // Deletions wait for the complete peer list: give the pass a moment.
    within(Duration::from_secs(3), "stale objects removed", || {
        !our_nexthops(n0).contains(&4242) && !our_nexthops(n0).contains(&4343)
    })
    .await;
    assert_eq!(
        nexthop_route(n0, "10.42.1.0/24", "10.42.1.0", "flannel.1"),
        Some(777),
        "the id the route had is kept"
    );
    assert!(
        route_to(n0, "10.42.9.0/24").is_none(),
        "the gone peer's route"
    );
    let mut left = our_nexthops(n0);
    left.sort_unstable();
    assert_eq!(
        left,
        vec![777, 4545],
        "4545 stays: a route that is not ours uses it"
    );
    assert!(nexthop(n0, 4444).is_some(), "someone else's object");
    for foreign in ["10.99.0.0/24", "10.98.0.0/24"] {
        assert!(
            route_to(n0, foreign).is_some(),
            "{foreign} is not ours to remove"
        );
    }
    assert!(pings(n0, &["10.42.1.0"]));
    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_gw_routes_through_nexthops_on_the_uplink() {
    let lab = NodePair::new("nhhg", Backend::HostGw);
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let [n0, n1] = &lab.nodes;
    let line = route_to(n0, "10.42.1.0/24").unwrap_or_default();
    let id: u32 = after(&line, "nhid")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no nhid in {line:?}"));
    assert_eq!(id, NODE1_ID);
    assert_eq!(after(&line, "via"), Some("192.168.1.13"), "{line}");
    assert_eq!(after(&line, "dev"), Some("eth0"), "{line}");
    assert!(!line.contains("onlink"), "{line}");
    let object = nexthop(n0, id).unwrap_or_default();
    assert!(
        object.contains("via 192.168.1.13 dev eth0") && object.contains("proto 77"),
        "{object}"
    );
    n0.ip(&["addr", "add", "10.42.0.7/32", "dev", "lo"]);
    n1.ip(&["addr", "add", "10.42.1.7/32", "dev", "lo"]);
    assert!(pings(n0, &["-I", "10.42.0.7", "10.42.1.7"]));

    // A hand-deleted object (and with it the route) comes back.
    n0.ip(&["nexthop", "del", "id", &id.to_string()]);
    within(Duration::from_secs(3), "host-gw nexthop restored", || {
        route_to(n0, "10.42.1.0/24").is_some_and(|l| after(&l, "nhid") == Some(&id.to_string()))
    })
    .await;
    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}

/// node 0 as a `flannel-agent` process with the given value of
/// `FLANNEL_EMBED_NEXTHOPS`; returns it once subnet.env is written.
fn agent_process(lab: &NodePair, dir: &std::path::Path, nexthops: &str) -> Running {
    let subnet_file = dir.join(format!("subnet-{nexthops}.env"));
    let kubeconfig = lab
        .server
        .write_kubeconfig(dir)
        .expect("kubeconfig written");
    let mut command = Command::new(workspace_bin("flannel-agent"));
    command
        .arg("--node-name=node-0")
        .arg("--flannel-backend=vxlan")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--netns={}", lab.nodes[0].path().display()))
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--subnet-file={}", subnet_file.display()))
        .env("FLANNEL_EMBED_NEXTHOPS", nexthops)
        .env("RUST_LOG", "warn");
    let running = Running::start(command);
    assert!(
        wait_for_file(&subnet_file, Duration::from_secs(30)),
        "the agent (FLANNEL_EMBED_NEXTHOPS={nexthops}) did not get ready"
    );
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_programs_plain_onlink_routes_and_migrates_both_ways() {
    let lab = NodePair::new("nhoff", Backend::Vxlan);
    let dir = tempfile::tempdir().unwrap();
    let h1 = lab.spawn(1);
    let n0 = &lab.nodes[0];
    let plain = || {
        route_to(n0, "10.42.1.0/24").is_some_and(|l| {
            !l.contains("nhid")
                && after(&l, "via") == Some("10.42.1.0")
                && after(&l, "dev") == Some("flannel.1")
                && after(&l, "proto") == Some("77")
                && l.contains("onlink")
        })
    };

    // First with nexthops (in this process), then stopped.
    let h0 = lab.spawn(0);
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    assert_eq!(our_nexthops(n0), vec![NODE1_ID]);
    h0.shutdown().await.unwrap();

    // The fallback: plain onlink routes, and the previous run's objects
    // removed (routes replaced first, so traffic never stops).
    let agent = agent_process(&lab, dir.path(), "off");
    within(Duration::from_secs(5), "plain route, no objects", || {
        plain() && our_nexthops(n0).is_empty()
    })
    .await;
    assert!(pings(n0, &["10.42.1.0"]), "traffic over the plain route");
    // A hand-deleted plain route is restored too.
    n0.ip(&["route", "del", "10.42.1.0/24"]);
    within(Duration::from_secs(3), "plain route restored", plain).await;
    // The other node still uses nexthops: both kinds interoperate.
    assert_eq!(
        nexthop_route(&lab.nodes[1], "10.42.0.0/24", "10.42.0.0", "flannel.1"),
        Some(NODE0_ID)
    );
    drop(agent);

    // And back: nexthops again.
    let h0 = lab.spawn(0);
    ready_with_peer(&h0).await;
    within(Duration::from_secs(3), "back to a nexthop route", || {
        nexthop_route(n0, "10.42.1.0/24", "10.42.1.0", "flannel.1") == Some(NODE1_ID)
    })
    .await;
    assert!(pings(n0, &["10.42.1.0"]));
    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_gives_each_family_its_own_objects() {
    let lab = NodePair::with_cluster_cidr("nhds", Backend::Vxlan, "10.42.0.0/16,fd00:42::/56");
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let n0 = &lab.nodes[0];
    let v4 = nexthop_route(n0, "10.42.1.0/24", "10.42.1.0", "flannel.1");
    let v6 = nexthop_route(n0, "fd00:42:0:1::/64", "fd00:42:0:1::", "flannel-v6.1");
    assert_eq!(v4, Some(NODE1_ID), "{}", n0.ip(&["-4", "route", "show"]));
    let v6 = v6.unwrap_or_else(|| panic!("{}", n0.ip(&["-6", "route", "show"])));
    assert_ne!(v6, NODE1_ID);
    // Each family's pass leaves the other's objects alone: both stay
    // through several passes (a kernel event triggers one).
    n0.ip(&["route", "del", "10.42.1.0/24"]);
    within(Duration::from_secs(3), "v4 route back", || {
        nexthop_route(n0, "10.42.1.0/24", "10.42.1.0", "flannel.1") == Some(NODE1_ID)
    })
    .await;
    let mut ours = our_nexthops(n0);
    ours.sort_unstable();
    let mut wanted = vec![NODE1_ID, v6];
    wanted.sort_unstable();
    assert_eq!(ours, wanted);
    assert!(nexthop(n0, v6).is_some_and(|l| l.contains("via fd00:42:0:1:: dev flannel-v6.1")));
    assert!(pings(n0, &["fd00:42:0:1::"]) || pings(n0, &["fd00:42:0:1::"]));
    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}
