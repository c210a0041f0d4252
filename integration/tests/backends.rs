//! host-gw and dual-stack vxlan on two nodes against the real kernel.

use std::time::{Duration, Instant};

use flannel_embed::Backend;
use integration::fixtures::{means, ready_with_peer, route_to, NodePair};
use integration::netns::TestNetns;

/// Pings until it answers (IPv6 addresses may still be settling).
async fn pings(ns: &TestNetns, target: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if ns
            .exec("ping", &["-c", "1", "-W", "1", target])
            .status
            .success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_gw_routes_via_the_peer_uplink() {
    let pair = NodePair::new("hg", Backend::HostGw);
    let (h0, h1) = (pair.spawn(0), pair.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let [n0, n1] = &pair.nodes;
    let route = route_to(n0, "10.42.1.0/24").unwrap_or_default();
    assert!(
        means(&route, "192.168.1.13", "eth0", false),
        "{route:?} in\n{}",
        n0.ip(&["route", "show"])
    );
    let route = route_to(n1, "10.42.0.0/24").unwrap_or_default();
    assert!(means(&route, "192.168.1.12", "eth0", false), "{route:?}");
    assert!(
        !n0.ip(&["link", "show"]).contains("flannel."),
        "host-gw makes no device"
    );
    assert_eq!(
        std::fs::read_to_string(pair.subnet_file(0)).unwrap(),
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"
    );
    // Traffic: an address in node 1's pod subnet, reached through the route.
    n1.ip(&["addr", "add", "10.42.1.7/32", "dev", "lo"]);
    n0.ip(&["addr", "add", "10.42.0.7/32", "dev", "lo"]);
    let ping = n0.exec(
        "ping",
        &["-c", "1", "-W", "2", "-I", "10.42.0.7", "10.42.1.7"],
    );
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // A deleted route comes back.
    n0.ip(&["route", "del", "10.42.1.0/24"]);
    let start = Instant::now();
    while !route_to(n0, "10.42.1.0/24").is_some_and(|l| means(&l, "192.168.1.13", "eth0", false)) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "host-gw route not restored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_gw_refuses_a_public_ip_that_is_not_the_interfaces() {
    let pair = NodePair::new("hgnat", Backend::HostGw);
    pair.server
        .update_node("node-0", |n| {
            n.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(
                    "flannel.alpha.coreos.com/public-ip-overwrite".into(),
                    "203.0.113.5".into(),
                );
        })
        .unwrap();
    let handle = pair.spawn(0);
    let error = tokio::time::timeout(Duration::from_secs(20), handle.ready())
        .await
        .expect("fails within 20 s")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("failed to register flannel network: host-gw:")
            && error.contains("203.0.113.5")
            && error.contains("NAT"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_vxlan_carries_both_families() {
    let pair = NodePair::with_cluster_cidr("ds", Backend::Vxlan, "10.42.0.0/16,fd00:42::/56");
    let (h0, h1) = (pair.spawn(0), pair.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let [n0, _] = &pair.nodes;
    assert_eq!(
        std::fs::read_to_string(pair.subnet_file(0)).unwrap(),
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET=fd00:42::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
    );
    for (device, mtu, wanted) in [
        ("flannel.1", "mtu 1450", "vxlan id 1 local 192.168.1.12"),
        ("flannel-v6.1", "mtu 1430", "vxlan id 1 local fd00:1::12"),
    ] {
        let link = n0.ip(&["-d", "link", "show", device]);
        assert!(link.contains(mtu) && link.contains(wanted), "{link}");
        let sysctl = format!("/proc/sys/net/ipv6/conf/{device}/accept_ra");
        let accept_ra = n0.exec("cat", &[&sysctl]);
        assert_eq!(
            String::from_utf8_lossy(&accept_ra.stdout).trim(),
            "0",
            "{device}"
        );
    }
    let route6 = route_to(n0, "fd00:42:0:1::/64").unwrap_or_default();
    assert!(
        means(&route6, "fd00:42:0:1::", "flannel-v6.1", true),
        "{route6:?} in\n{}",
        n0.ip(&["-6", "route", "show"])
    );
    assert!(pings(n0, "10.42.1.0").await, "IPv4 across the tunnel");
    assert!(pings(n0, "fd00:42:0:1::").await, "IPv6 across the tunnel");
    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}

/// vxlan with `DirectRouting`: a peer on the uplink's subnet gets a plain
/// route through the uplink, no encapsulation. Taking the uplink down
/// flushes that route (and its nexthop object) without any notification
/// of its own; the agent must notice the uplink's link event and put the
/// route back once the link is up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_routing_survives_an_uplink_flap() {
    let pair = NodePair::new("dr", Backend::Vxlan);
    let dir = tempfile::tempdir().unwrap();
    let netconf = dir.path().join("net-conf.json");
    std::fs::write(
        &netconf,
        r#"{"Network": "10.42.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}"#,
    )
    .unwrap();
    let config = |i: usize| {
        flannel_embed::Config::builder(format!("node-{i}"))
            .backend(Backend::Vxlan)
            .cluster_cidr("10.42.0.0/16")
            .data_dir(dir.path().join(format!("node-{i}/data")))
            .subnet_file(dir.path().join(format!("node-{i}/subnet.env")))
            .netns(pair.nodes[i].path())
            .netconf_override(&netconf)
            .build()
            .unwrap()
    };
    let h0 = flannel_embed::spawn(pair.server.client().unwrap(), config(0));
    let h1 = flannel_embed::spawn(pair.server.client().unwrap(), config(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    let n0 = &pair.nodes[0];
    let direct =
        || route_to(n0, "10.42.1.0/24").is_some_and(|l| means(&l, "192.168.1.13", "eth0", false));
    assert!(direct(), "{:?}", route_to(n0, "10.42.1.0/24"));

    n0.ip(&["link", "set", "eth0", "down"]);
    let flushed = Instant::now();
    while direct() && flushed.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!direct(), "the kernel flushes routes through a downed link");
    n0.ip(&["link", "set", "eth0", "up"]);
    let up = Instant::now();
    while !direct() {
        assert!(
            up.elapsed() < Duration::from_secs(3),
            "direct route not back after the uplink came up: {:?}",
            route_to(n0, "10.42.1.0/24")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "direct route back {:?} after the uplink came up",
        up.elapsed()
    );
    h0.shutdown().await.unwrap();
    h1.shutdown().await.unwrap();
}
