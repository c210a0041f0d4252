//! The vxlan data path against the real kernel: two nodes (network
//! namespaces joined by a veth "wire"), one network task each (in this
//! process, each bound to its node's namespace), the test API server between
//! them. What an operator checks with `ip`, `bridge` and `ping`.

use std::time::Duration;

use flannel_embed::{Backend, Phase};
use integration::fixtures::{means, ready_with_peer, route_to, within, NodePair, PREFIX};
use integration::netns::TestNetns;

fn vtep_mac(ns: &TestNetns) -> String {
    let link = ns.ip(&["-o", "link", "show", "flannel.1"]);
    link.split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// `bridge fdb show dev flannel.1` in `ns`.
fn fdb_show(ns: &TestNetns) -> String {
    String::from_utf8_lossy(
        &ns.exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .stdout,
    )
    .into_owned()
}

/// Gives node-1 a new public IP (with `public-ip-overwrite`, as a person or
/// k3s does; node-1's task then publishes it as `public-ip`) and waits
/// until node-0's FDB entry for `mac1` points there (and no longer at
/// 192.168.1.13).
async fn move_public_ip(lab: &NodePair, mac1: &str, ip: &str, deadline: Duration) {
    lab.server
        .update_node("node-1", |n| {
            n.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(format!("{PREFIX}public-ip-overwrite"), ip.into());
        })
        .unwrap();
    let n0 = &lab.nodes[0];
    within(deadline, "fdb follows the new public ip", || {
        let fdb = fdb_show(n0);
        fdb.contains(&format!("{mac1} dst {ip}")) && !fdb.contains("192.168.1.13")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_reproduce_the_seed_data_path() {
    let lab = NodePair::new("vx", Backend::Vxlan);
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let [n0, n1] = &lab.nodes;

    // subnet.env: the seed's four lines.
    assert_eq!(
        std::fs::read_to_string(lab.subnet_file(0)).unwrap(),
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
    // flannel.1: vxlan id 1, local = uplink, dstport 8472, nolearning, MTU 1450, 10.42.0.0/32.
    let link = n0.ip(&["-d", "link", "show", "flannel.1"]);
    for wanted in [
        "mtu 1450",
        "vxlan id 1 local 192.168.1.12 dev eth0",
        "dstport 8472",
        "nolearning",
    ] {
        assert!(link.contains(wanted), "{wanted:?} not in {link}");
    }
    assert!(n0
        .ip(&["-4", "addr", "show", "dev", "flannel.1"])
        .contains("inet 10.42.0.0/32"));
    // Router advertisements over the overlay are ignored, as with flanneld
    // (the namespace's default is 1).
    let accept_ra = n0.exec("cat", &["/proc/sys/net/ipv6/conf/flannel.1/accept_ra"]);
    assert_eq!(String::from_utf8_lossy(&accept_ra.stdout).trim(), "0");
    // The seed's route, tagged as ours (through a nexthop object where the
    // kernel has them: `10.42.1.0/24 nhid N via 10.42.1.0 dev flannel.1
    // proto 77 onlink`).
    let route0 = route_to(n0, "10.42.1.0/24").unwrap_or_default();
    assert!(
        means(&route0, "10.42.1.0", "flannel.1", true),
        "{route0:?} in\n{}",
        n0.ip(&["route", "show"])
    );
    let route1 = route_to(n1, "10.42.0.0/24").unwrap_or_default();
    assert!(
        means(&route1, "10.42.0.0", "flannel.1", true),
        "{route1:?} in\n{}",
        n1.ip(&["route", "show"])
    );
    // Neighbour and FDB entries name node 1's real VTEP MAC and address.
    let mac1 = vtep_mac(n1);
    let neigh = n0.ip(&["neigh", "show", "dev", "flannel.1"]);
    assert!(
        neigh.contains(&format!("10.42.1.0 lladdr {mac1} PERMANENT")),
        "{neigh}"
    );
    let fdb = String::from_utf8(
        n0.exec("bridge", &["fdb", "show", "dev", "flannel.1"])
            .stdout,
    )
    .unwrap();
    assert!(
        fdb.contains(&format!("{mac1} dst 192.168.1.13 self permanent")),
        "{fdb}"
    );
    // Each Node object carries its device's real MAC.
    for (i, ns) in lab.nodes.iter().enumerate() {
        let node = lab.server.get_node(&format!("node-{i}")).unwrap();
        let data = node.metadata.annotations.unwrap()[&format!("{PREFIX}backend-data")].clone();
        assert_eq!(data, format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, vtep_mac(ns)));
    }
    // Traffic crosses: node 0 reaches node 1's VTEP address through the tunnel.
    let ping = n0.exec("ping", &["-c", "2", "-W", "2", "10.42.1.0"]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // The agent's masquerade rules, as `iptables -t nat -S` shows them.
    let nat = String::from_utf8(n0.exec("iptables", &["-t", "nat", "-S"]).stdout).unwrap();
    for wanted in [
        "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG",
        "-A FLANNEL-POSTRTG -s 10.42.0.0/24 -d 10.42.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN",
        "-A FLANNEL-POSTRTG -s 10.42.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
    ] {
        assert!(nat.contains(wanted), "{wanted:?} not in\n{nat}");
    }
    assert_eq!(h0.status().phase, Phase::Running);
    assert_eq!(h0.status().peers_programmed, 1);

    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
    // Shutdown leaves the data path in place.
    assert!(n0
        .ip(&["route", "show", "dev", "flannel.1"])
        .contains("10.42.1.0/24"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_kernel_state_is_restored_and_gone_peers_are_removed() {
    let lab = NodePair::new("vxf", Backend::Vxlan);
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let n0 = &lab.nodes[0];
    let has_route =
        || route_to(n0, "10.42.1.0/24").is_some_and(|l| means(&l, "10.42.1.0", "flannel.1", true));

    // A route, a neighbour, an FDB entry deleted by hand come back.
    n0.ip(&["route", "del", "10.42.1.0/24"]);
    let took = within(Duration::from_secs(2), "route restored", has_route).await;
    println!("route restored after {took:?}");
    n0.ip(&["neigh", "del", "10.42.1.0", "dev", "flannel.1"]);
    within(Duration::from_secs(2), "neighbour restored", || {
        n0.ip(&["neigh", "show", "dev", "flannel.1"])
            .contains("10.42.1.0 lladdr")
    })
    .await;
    let mac1 = vtep_mac(&lab.nodes[1]);
    let out = n0.exec(
        "bridge",
        &[
            "fdb",
            "del",
            &mac1,
            "dev",
            "flannel.1",
            "dst",
            "192.168.1.13",
            "self",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    within(Duration::from_secs(2), "fdb restored", || {
        fdb_show(n0).contains(&mac1)
    })
    .await;

    // The whole device deleted: recreated with the same MAC and every peer.
    let mac0 = vtep_mac(n0);
    n0.ip(&["link", "del", "flannel.1"]);
    let took = within(
        Duration::from_secs(2),
        "device and peers recreated",
        has_route,
    )
    .await;
    println!("flannel.1 recreated with its peer after {took:?}");
    assert_eq!(vtep_mac(n0), mac0, "the MAC peers know is kept");

    // A peer's public IP changes: its FDB entry follows.
    move_public_ip(&lab, &mac1, "192.168.1.99", Duration::from_secs(3)).await;

    // The Node deleted: its three entries go.
    lab.server.delete_node("node-1").unwrap();
    within(Duration::from_secs(1), "deleted peer removed", || {
        let fdb = fdb_show(n0);
        !has_route()
            && !fdb.contains(&mac1)
            && !n0
                .ip(&["neigh", "show", "dev", "flannel.1"])
                .contains("10.42.1.0")
    })
    .await;
    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}

/// The agent keeps a model of what the kernel holds and folds kernel
/// notifications into it: the echo of its own writes changes nothing, but
/// an entry of ours altered by hand, or a stray entry on our device, must
/// still be noticed and put right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_altered_behind_the_agents_back_are_put_right() {
    let lab = NodePair::new("vxa", Backend::Vxlan);
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let n0 = &lab.nodes[0];
    let mac1 = vtep_mac(&lab.nodes[1]);
    let bridge = |args: &[&str]| {
        let out = n0.exec("bridge", args);
        assert!(
            out.status.success(),
            "bridge {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // Our neighbour given another MAC.
    n0.ip(&[
        "neigh",
        "replace",
        "10.42.1.0",
        "lladdr",
        "0a:ee:ee:ee:ee:01",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    let took = within(Duration::from_secs(2), "neighbour MAC restored", || {
        n0.ip(&["neigh", "show", "10.42.1.0", "dev", "flannel.1"])
            .contains(&format!("lladdr {mac1}"))
    })
    .await;
    println!("neighbour MAC restored after {took:?}");

    // A stray permanent neighbour and a stray FDB entry on our device.
    n0.ip(&[
        "neigh",
        "add",
        "10.42.77.0",
        "lladdr",
        "0a:ee:ee:ee:ee:02",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    bridge(&[
        "fdb",
        "append",
        "0a:ee:ee:ee:ee:03",
        "dev",
        "flannel.1",
        "dst",
        "192.168.1.77",
        "self",
        "permanent",
    ]);
    within(Duration::from_secs(2), "stray entries removed", || {
        !n0.ip(&["neigh", "show", "dev", "flannel.1"])
            .contains("10.42.77.0")
            && !fdb_show(n0).contains("0a:ee:ee:ee:ee:03")
    })
    .await;

    // Our route pointed at another gateway.
    n0.ip(&[
        "route",
        "replace",
        "10.42.1.0/24",
        "via",
        "10.42.1.9",
        "dev",
        "flannel.1",
        "onlink",
        "proto",
        "77",
    ]);
    within(Duration::from_secs(2), "route restored", || {
        route_to(n0, "10.42.1.0/24").is_some_and(|l| means(&l, "10.42.1.0", "flannel.1", true))
    })
    .await;
    // Replaced by a route that is not ours at all (`proto boot`): the
    // kernel sends no deletion for the route it displaces.
    n0.ip(&[
        "route",
        "replace",
        "10.42.1.0/24",
        "via",
        "10.42.1.9",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    within(Duration::from_secs(2), "route taken back", || {
        route_to(n0, "10.42.1.0/24")
            .is_some_and(|l| means(&l, "10.42.1.0", "flannel.1", true) && l.contains("proto 77"))
    })
    .await;

    // Our address taken away, a stray one of the cluster network added
    // (the IPv6 link-local address coming and going is ignored).
    n0.ip(&["addr", "del", "10.42.0.0/32", "dev", "flannel.1"]);
    n0.ip(&["addr", "add", "10.42.9.9/32", "dev", "flannel.1"]);
    within(Duration::from_secs(2), "device address put right", || {
        let addresses = n0.ip(&["-4", "addr", "show", "dev", "flannel.1"]);
        addresses.contains("inet 10.42.0.0/32") && !addresses.contains("10.42.9.9")
    })
    .await;

    // After all that, a peer change still lands: the public IP moves.
    move_public_ip(&lab, &mac1, "192.168.1.98", Duration::from_secs(2)).await;
    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_peers_deleted_while_stopped_are_removed_at_start() {
    let lab = NodePair::new("vxs", Backend::Vxlan);
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
    let n0 = &lab.nodes[0];
    assert!(n0
        .ip(&["route", "show", "dev", "flannel.1"])
        .contains("10.42.1.0/24"));
    // A route someone else made on our device is not ours to remove.
    n0.ip(&[
        "route",
        "add",
        "10.99.0.0/24",
        "via",
        "10.42.1.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);

    lab.server.delete_node("node-1").unwrap();
    let h0 = lab.spawn(0);
    tokio::time::timeout(Duration::from_secs(20), h0.ready())
        .await
        .expect("ready within 20 s")
        .expect("ready without error");
    let routes = n0.ip(&["route", "show", "dev", "flannel.1"]);
    assert!(
        !routes.contains("10.42.1.0/24"),
        "stale route left: {routes}"
    );
    assert!(
        routes.contains("10.99.0.0/24"),
        "a route that is not ours was touched: {routes}"
    );
    assert!(!n0
        .ip(&["neigh", "show", "dev", "flannel.1"])
        .contains("10.42.1.0"));
    assert!(!fdb_show(n0).contains("192.168.1.13"));
    h0.shutdown().await.unwrap();
}
