//! A dual-stack vxlan lab (`--cluster-cidr 10.42.0.0/16,fd00:42::/56`),
//! two nodes: pods get an IPv4 and an IPv6 address and reach each other
//! over both; subnet.env carries both families; flannel.1 (MTU 1450) and
//! flannel-v6.1 (MTU 1430) with each peer's entries; IPv6 pod traffic to
//! the outside is not masqueraded (no `--flannel-ipv6-masq`), IPv4 is.

mod lab_support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use integration::fixtures::PREFIX;
use integration::lab::kernel::Family;
use integration::lab::{Lab, Options, OUTSIDE_IP, OUTSIDE_IPV6};
use lab_support::{source_seen, without_nhid};

fn subnet_env(index: usize) -> String {
    let v6 = if index == 0 {
        "fd00:42::".to_string()
    } else {
        format!("fd00:42:0:{index}::")
    };
    format!(
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.{index}.1/24\nFLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET={v6}1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
    )
}

fn text(output: std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn dual_stack_vxlan_pods_reach_each_other_over_both_families() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut options = Options::for_tests("dual", &tmp.path().join("lab"));
    options.nodes = 2;
    options.cluster_cidr = "10.42.0.0/16,fd00:42::/56".into();
    options.pods_per_node = 1;
    options.outside_host = true;
    options.wait = Duration::from_secs(20);
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    assert!(lab.dual_stack());

    let table = lab.wait_peers_programmed(Duration::from_secs(10));
    let rendered = table.render();
    eprintln!("{rendered}");
    for row in &table.rows {
        assert_eq!(row.families.len(), 2, "{rendered}");
        for family in &row.families {
            assert_eq!(
                (family.peers_programmed, family.peers_expected),
                (1, 1),
                "{rendered}"
            );
        }
    }
    assert!(rendered.contains("flannel-v6.1 up, same MAC"), "{rendered}");

    for index in 0..2 {
        let peer = 1 - index;
        let node = lab.node(index).clone();
        // The node: both uplink addresses, IPv6 forwarding on.
        let addrs = lab
            .ip(
                index,
                &["-o", "addr", "show", "dev", "eth0", "scope", "global"],
            )
            .unwrap();
        assert!(
            addrs.contains(&format!("inet 192.168.1.1{index}/24"))
                && addrs.contains(&format!("inet6 fd00:1::1{index}/64")),
            "{addrs}"
        );
        let forwarding = lab
            .exec(index, "sysctl", &["-n", "net.ipv6.conf.all.forwarding"])
            .unwrap();
        assert_eq!(text(forwarding), "1");

        // The Node: both podCIDRs; the agent's IPv6 annotations.
        let object = lab.node_object(index).unwrap().unwrap();
        let spec = object.spec.unwrap();
        let v6_cidr = node.pod_cidr_v6.clone().unwrap();
        assert_eq!(
            spec.pod_cidrs.unwrap(),
            [format!("10.42.{index}.0/24"), v6_cidr.clone()]
        );
        let annotations = object.metadata.annotations.unwrap();
        assert_eq!(
            annotations[&format!("{PREFIX}public-ipv6")],
            format!("fd00:1::1{index}")
        );

        // subnet.env: all six keys, byte for byte.
        assert_eq!(lab.subnet_env(index).unwrap(), subnet_env(index));

        // Both devices with the right MTU, local address and lease address.
        let v4 = lab.kernel_of(index, Family::V4).unwrap();
        let v6 = lab.kernel_of(index, Family::V6).unwrap();
        let (d4, d6) = (v4.vtep.clone().unwrap(), v6.vtep.clone().unwrap());
        assert_eq!((d4.name.as_str(), d4.mtu), ("flannel.1", 1450));
        assert_eq!((d6.name.as_str(), d6.mtu), ("flannel-v6.1", 1430));
        assert_eq!(d4.local, Some(format!("192.168.1.1{index}")));
        assert_eq!(d6.local, Some(format!("fd00:1::1{index}")));
        assert!(d4.up && d6.up && !d6.learning && d6.vni == 1 && d6.port == 8472);
        assert_eq!(d4.addrs, [format!("10.42.{index}.0/32")]);
        assert_eq!(d6.addrs, [v6_cidr.replace("/64", "/128")]);
        assert_eq!(
            annotations[&format!("{PREFIX}backend-v6-data")],
            format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, d6.mac)
        );
        let link = lab
            .ip(index, &["-d", "link", "show", "flannel-v6.1"])
            .unwrap();
        assert!(
            link.contains("mtu 1430")
                && link.contains(&format!("vxlan id 1 local fd00:1::1{index} dev eth0")),
            "{link}"
        );

        // The peer's entries in both families; the IPv6 route as ip shows it.
        for family in [Family::V4, Family::V6] {
            let view = lab.peer_view_of(peer, family).unwrap().unwrap();
            let kernel = lab.kernel_of(index, family).unwrap();
            let entries = kernel.entries_for(&view);
            assert!(entries.complete(), "node-{index} {family}: {entries:?}");
        }
        let peer_v6 = lab.node(peer).pod_cidr_v6.clone().unwrap();
        let routes = lab.ip(index, &["-6", "route", "show"]).unwrap();
        let want = format!(
            "{peer_v6} via {} dev flannel-v6.1 proto 77",
            peer_v6.trim_end_matches("/64")
        );
        let line = routes
            .lines()
            .map(without_nhid)
            .find(|l| l.starts_with(&want))
            .unwrap_or_else(|| panic!("no {want:?} on node-{index}:\n{routes}"));
        assert!(line.contains("onlink"), "{line}");

        // The pod: an address of each family from the node's leases, MTU
        // from subnet.env.
        let pod = lab.pods_on(index)[0].clone();
        assert!(pod
            .ip
            .as_deref()
            .unwrap()
            .starts_with(&format!("10.42.{index}.")));
        let pod_v6 = pod.ipv6.clone().unwrap();
        assert!(
            pod_v6.starts_with(v6_cidr.trim_end_matches(":/64")),
            "{pod_v6} in {v6_cidr}"
        );
        let mtu = lab
            .pod_command(&pod.name, "cat", &["/sys/class/net/eth0/mtu"])
            .output()
            .unwrap();
        assert_eq!(text(mtu), "1430");
    }

    // Pods ping each other over IPv4 and IPv6 (one matrix per family).
    let matrices = lab.ping_matrices();
    assert_eq!(
        matrices.iter().map(|m| m.family).collect::<Vec<_>>(),
        [Family::V4, Family::V6]
    );
    for matrix in &matrices {
        eprintln!("{}:\n{}", matrix.family, matrix.render());
        assert!(matrix.all_ok(), "{}", matrix.render());
        assert_eq!(matrix.results[0][1], Some(true));
        assert_eq!(matrix.results[1][0], Some(true));
    }

    // To the outside: IPv4 leaves as the node's uplink address, IPv6 keeps
    // the pod's own address (k3s's default: no --flannel-ipv6-masq).
    let pod = lab.pods_on(0)[0].clone();
    let outside = lab.outside().unwrap().to_string();
    let v4: SocketAddr = format!("{OUTSIDE_IP}:7001").parse().unwrap();
    let v6: SocketAddr = format!("[{OUTSIDE_IPV6}]:7001").parse().unwrap();
    assert_eq!(
        source_seen(&pod.name, &outside, v4),
        Some("192.168.1.10".parse::<IpAddr>().unwrap())
    );
    assert_eq!(
        source_seen(&pod.name, &outside, v6),
        Some(pod.ipv6.unwrap().parse::<IpAddr>().unwrap())
    );

    lab.down().unwrap();
    eprintln!("dual-stack lab test took {:?}", started.elapsed());
}
