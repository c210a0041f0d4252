//! Masquerade in the lab, as the agents set it up in their nodes: each
//! node's `iptables -S` / `iptables -t nat -S` hold upstream's rules for
//! its own lease; a pod's traffic to a host outside the cluster (the lab's
//! outside host behind the underlay gateway) arrives from the node's uplink
//! address, pod-to-pod traffic across nodes keeps the pod's address; a rule
//! deleted by hand is back within 6 s (the agent checks every 5 s).

mod lab_support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use integration::lab::{Lab, Options, OUTSIDE_IP};
use lab_support::source_seen;

/// flanneld's masquerade rules for Network 10.42.0.0/16 and `lease`, as
/// `iptables -t nat -S` prints them.
fn golden_nat(lease: &str) -> Vec<String> {
    let c = "10.42.0.0/16";
    let tail = r#"-m comment --comment "flanneld masq""#;
    vec![
        format!("-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {tail} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {lease} -d {c} {tail} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {c} -d {lease} {tail} -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s {c} -d {lease} {tail} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {c} ! -d 224.0.0.0/4 {tail} -j MASQUERADE --random-fully"),
        format!("-A FLANNEL-POSTRTG ! -s {c} -d {c} {tail} -j MASQUERADE --random-fully"),
    ]
}
const GOLDEN_JUMP: &str =
    "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG";
const GOLDEN_FWD: [&str; 3] = [
    "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
    "-A FLANNEL-FWD -s 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
    "-A FLANNEL-FWD -d 10.42.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
];

/// `iptables <args>` inside node `index` (its network namespace and its
/// own /run); the lines it printed.
fn iptables(lab: &Lab, index: usize, args: &[&str]) -> Vec<String> {
    let output = lab.exec(index, "iptables", args).unwrap();
    assert!(
        output.status.success(),
        "iptables {args:?} on node-{index}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn chain(lines: &[String], prefix: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .cloned()
        .collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn agents_masquerade_pod_traffic_leaving_the_cluster_only() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut options = Options::for_tests("masq", &tmp.path().join("lab"));
    options.nodes = 2;
    options.pods_per_node = 1;
    options.outside_host = true;
    options.wait = Duration::from_secs(20);
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    let table = lab.wait_peers_programmed(Duration::from_secs(10));
    assert!(
        table.rows.iter().all(|r| r.peers_programmed == 1),
        "{}",
        table.render()
    );

    // Upstream's golden rules for each node's own lease, installed by its
    // agent (the node's namespace starts with no rules at all).
    for index in 0..2 {
        let lease = lab.node(index).pod_cidr.clone();
        let nat = iptables(&lab, index, &["-t", "nat", "-S"]);
        assert_eq!(
            chain(&nat, "-A FLANNEL-POSTRTG "),
            golden_nat(&lease),
            "node-{index}: {nat:#?}"
        );
        assert_eq!(chain(&nat, "-A POSTROUTING "), [GOLDEN_JUMP], "{nat:#?}");
        let filter = iptables(&lab, index, &["-S"]);
        assert!(
            filter.contains(&"-N FLANNEL-FWD".to_string()),
            "{filter:#?}"
        );
        let mut fwd = chain(&filter, "-A FORWARD ");
        fwd.extend(chain(&filter, "-A FLANNEL-FWD "));
        assert_eq!(fwd, GOLDEN_FWD, "node-{index}: {filter:#?}");
    }

    // Traffic, all inside the lab's namespaces.
    let pod0 = lab.pods_on(0)[0].clone();
    let pod1 = lab.pods_on(1)[0].clone();
    let (pod0_ip, pod1_ip) = (pod0.ip.clone().unwrap(), pod1.ip.clone().unwrap());
    let outside = lab.outside().unwrap().to_string();
    let internet: SocketAddr = format!("{OUTSIDE_IP}:7000").parse().unwrap();
    let to_pod1: SocketAddr = format!("{pod1_ip}:7000").parse().unwrap();
    let to_pod0: SocketAddr = format!("{pod0_ip}:7000").parse().unwrap();
    // Pod → outside: the node's uplink address.
    assert_eq!(
        source_seen(&pod0.name, &outside, internet),
        Some(ip("192.168.1.10")),
        "node-0 pod → outside"
    );
    assert_eq!(
        source_seen(&pod1.name, &outside, internet),
        Some(ip("192.168.1.11")),
        "node-1 pod → outside"
    );
    // Pod → pod on the other node: the pod's own address, both ways.
    assert_eq!(
        source_seen(&pod0.name, &pod1.name, to_pod1),
        Some(ip(&pod0_ip)),
        "pod → pod across nodes"
    );
    assert_eq!(
        source_seen(&pod1.name, &pod0.name, to_pod0),
        Some(ip(&pod1_ip)),
        "pod → pod across nodes"
    );

    // The MASQUERADE rule deleted by hand on node 0: pods' traffic leaves
    // unmasqueraded (and gets no answer) until the agent's 5 s check puts
    // it back, within 6 s.
    let golden = golden_nat(&lab.node(0).pod_cidr);
    iptables(&lab, 0, &["-t", "nat", "-D", "FLANNEL-POSTRTG", "5"]);
    let deleted = Instant::now();
    let seen = source_seen(&pod0.name, &outside, internet);
    let postrtg = chain(
        &iptables(&lab, 0, &["-t", "nat", "-S"]),
        "-A FLANNEL-POSTRTG ",
    );
    if seen == Some(ip("192.168.1.10")) {
        // The agent's check ran in the few milliseconds in between.
        assert_eq!(postrtg, golden, "masqueraded without the rule?");
    } else {
        assert_eq!(
            seen,
            Some(ip(&pod0_ip)),
            "without the rule the pod's address leaves the node"
        );
    }
    loop {
        let nat = iptables(&lab, 0, &["-t", "nat", "-S"]);
        if chain(&nat, "-A FLANNEL-POSTRTG ") == golden {
            assert_eq!(chain(&nat, "-A POSTROUTING "), [GOLDEN_JUMP]);
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(6),
            "not restored within 6 s: {nat:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("FLANNEL-POSTRTG restored after {:?}", deleted.elapsed());
    // A new flow is masqueraded again.
    assert_eq!(
        source_seen(&pod0.name, &outside, internet),
        Some(ip("192.168.1.10")),
        "after the restore"
    );

    lab.down().unwrap();
    eprintln!("masquerade lab test took {:?}", started.elapsed());
}
