//! Hostile Nodes next to good ones, through the API the way any client
//! with patch rights on Nodes could write them: annotations of 1 MiB,
//! 5,000 annotations on one Node, strings full of what JSON can only
//! escape (NUL, control characters, U+FFFD, bidi overrides,
//! noncharacters), a podCIDR of every family and prefix length, two Nodes
//! claiming the same lease, and a Node flapping
//! between valid and invalid 100 times a second. The promise: the good
//! peers stay programmed and the pods ping, warnings are rate-limited,
//! the agent keeps running, and its memory stays within 2x of the same
//! run without the hostile Nodes.
//!
//! (Escapes of lone UTF-16 surrogates, which no kube-apiserver sends, are
//! covered where they are decoded: `SlimNode`'s unit tests and the
//! node_peer fuzz target.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration::fixtures::{annotated, vxlan_peer, PREFIX};
use integration::lab::{Lab, Options};
use k8s_openapi::api::core::v1::Node;

/// Good fixture peers besides the lab's two nodes (10.42.2.0/24 ...).
const GOOD_PEERS: u32 = 40;
/// How long the flapping Node flaps, at 100 changes a second.
const FLAP_FOR: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Measured {
    /// node-0's agent: peak RSS over the run (VmHWM) and RSS at the end.
    peak_kib: u64,
    rss_kib: u64,
    /// Lines of node-0's agent log that warn about skipping a node.
    skip_warnings: Vec<String>,
    flaps: u32,
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A flannel vxlan node as `vxlan_peer` makes it, renamed, with `cidrs`.
fn flannel_node(name: &str, index: u32, cidrs: &[&str]) -> Node {
    let mut node = vxlan_peer(index);
    node.metadata.name = Some(name.to_string());
    let spec = node.spec.get_or_insert_with(Default::default);
    spec.pod_cidr = cidrs.first().map(|c| c.to_string());
    spec.pod_cidrs = Some(cidrs.iter().map(|c| c.to_string()).collect());
    node
}

fn hostile_nodes() -> Vec<Node> {
    let mut nodes = Vec::new();
    let mib = "x".repeat(1 << 20);
    // 1 MiB in a flannel annotation (kept by the agent, so bounded), on
    // 40 Nodes: 40 MiB if it were kept whole; and in a foreign one
    // (skipped unread).
    for i in 0..40 {
        nodes.push(annotated(
            flannel_node(&format!("hostile-big-{i}"), 1500 + i, &["10.42.201.0/24"]),
            &[("backend-data", &mib)],
        ));
    }
    let mut big_foreign = flannel_node("hostile-big-foreign", 1002, &["10.42.202.0/24"]);
    big_foreign
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("example.com/blob".into(), mib.clone());
    nodes.push(big_foreign);
    // 5,000 annotations, many shaped like flannel's under other prefixes.
    let mut many = flannel_node("hostile-many", 1003, &["10.42.203.0/24"]);
    let annotations = many.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for i in 0..5000 {
        let key = if i % 2 == 0 {
            format!("a{i}.example.com/backend-data")
        } else {
            format!("example.com/note-{i}")
        };
        annotations.insert(key, format!("{{\"VNI\":{i}}}"));
    }
    nodes.push(many);
    // Strings JSON can only carry escaped, and other odd text.
    for (i, odd) in [
        "192.168.1.\u{0}",
        "\u{1}\u{1f}\u{7f}",
        "\u{fffd}\u{fffd}",
        "\u{202e}291.861.291\u{202c}",
        "\u{ffff}\u{fffe}",
        "\u{1f600}",
        "{\"VNI\":1,\"VtepMAC\":\"\u{0}\"}",
    ]
    .iter()
    .enumerate()
    {
        let key = if i % 2 == 0 {
            "public-ip"
        } else {
            "backend-data"
        };
        nodes.push(annotated(
            flannel_node(
                &format!("hostile-odd-{i}"),
                1010 + i as u32,
                &["10.42.210.0/24"],
            ),
            &[(key, odd)],
        ));
    }
    // A podCIDR of every family and prefix length.
    for prefix in 0..=32u32 {
        let base = u32::from(std::net::Ipv4Addr::new(10, 42, 224, 0));
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        let cidr = format!("{}/{prefix}", std::net::Ipv4Addr::from(base & mask));
        nodes.push(flannel_node(
            &format!("hostile-v4-{prefix}"),
            1100 + prefix,
            &[&cidr],
        ));
    }
    for prefix in 0..=128u32 {
        let base = u128::from("fd00:42:0:e0::".parse::<std::net::Ipv6Addr>().unwrap());
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        let cidr = format!("{}/{prefix}", std::net::Ipv6Addr::from(base & mask));
        nodes.push(flannel_node(
            &format!("hostile-v6-{prefix}"),
            1200 + prefix,
            &[&cidr],
        ));
    }
    // Two Nodes claiming the same lease. (Three podCIDRs, or two of one
    // family, the API server refuses, as kube-apiserver does.)
    nodes.push(flannel_node("hostile-twin-a", 1400, &["10.42.230.0/24"]));
    nodes.push(flannel_node("hostile-twin-b", 1401, &["10.42.230.0/24"]));
    // The one that will flap.
    nodes.push(flannel_node("hostile-flap", 1404, &["10.42.240.0/24"]));
    nodes
}

/// One lab run: two agent nodes with a pod each, the good peers, then
/// (with `hostile`) the hostile Nodes and the flapping, else the same time
/// idle.
fn run(hostile: bool) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_tests(if hostile { "hostile" } else { "calm" }, dir.path());
    options.nodes = 2;
    options.pods_per_node = 1;
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    let api = lab.api().unwrap();
    for i in 2..2 + GOOD_PEERS {
        api.create(&vxlan_peer(i)).unwrap();
    }
    let good: Vec<String> = (1..2 + GOOD_PEERS)
        .map(|i| format!("10.42.{i}.0/24"))
        .collect();
    let has_good_peers = |lab: &Lab| -> Result<(), String> {
        let routes = lab.kernel(0).map_err(|e| e.to_string())?.routes;
        let missing: Vec<&String> = good
            .iter()
            .filter(|dst| !routes.iter().any(|r| &r.dst == *dst))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("node-0 has no route to {missing:?}"))
        }
    };
    wait(
        Duration::from_secs(30),
        "every good peer programmed",
        || has_good_peers(&lab).is_ok(),
    );

    let mut flaps = 0;
    if hostile {
        for node in hostile_nodes() {
            let name = node.metadata.name.clone().unwrap();
            api.create(&node)
                .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        }
        // 100 changes a second: valid, invalid, valid, ...
        let key = format!("{PREFIX}public-ip");
        let started = Instant::now();
        while started.elapsed() < FLAP_FOR {
            let value = if flaps % 2 == 0 {
                "not-an-ip"
            } else {
                "192.168.0.99"
            };
            let change = BTreeMap::from([(key.clone(), Some(value.to_string()))]);
            api.annotate("hostile-flap", &change).unwrap();
            flaps += 1;
            let next = started + Duration::from_millis(10 * u64::from(flaps));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        // It ends invalid: the agent must say so (after the held-back
        // interval at the latest), which also shows it read the last event.
        let change = BTreeMap::from([(key, Some("not-an-ip".to_string()))]);
        api.annotate("hostile-flap", &change).unwrap();
    } else {
        std::thread::sleep(FLAP_FOR);
    }

    // The good peers are all still there, the pods ping, the agents run.
    has_good_peers(&lab).unwrap();
    for index in 0..2 {
        assert!(lab.agent_running(index), "node-{index}'s agent exited");
    }
    let matrix = lab.ping_matrix();
    assert!(matrix.all_ok(), "pods do not ping:\n{}", matrix.render());
    let log_path = lab.agent_log(0);
    if hostile {
        wait(
            Duration::from_secs(45),
            "the flapping node's last warning",
            || {
                std::fs::read_to_string(&log_path)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("skipping node hostile-flap"))
                    .count()
                    >= 2
            },
        );
    }
    let pid = lab.state().nodes[0].agent.as_ref().unwrap().pid;
    let measured = Measured {
        peak_kib: status_kib(pid, "VmHWM"),
        rss_kib: status_kib(pid, "VmRSS"),
        skip_warnings: std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("skipping node"))
            .map(str::to_string)
            .collect(),
        flaps,
    };
    lab.down().unwrap();
    measured
}

fn wait(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn hostile_nodes_leave_the_good_peers_alone() {
    let calm = run(false);
    let hostile = run(true);
    println!(
        "node-0 agent: peak RSS {} KiB calm, {} KiB hostile; RSS at the end {} / {} KiB; {} flaps; {} skip warnings",
        calm.peak_kib,
        hostile.peak_kib,
        calm.rss_kib,
        hostile.rss_kib,
        hostile.flaps,
        hostile.skip_warnings.len()
    );
    assert!(calm.peak_kib > 0 && hostile.peak_kib > 0);
    assert!(
        hostile.peak_kib <= 2 * calm.peak_kib,
        "peak RSS {} KiB with hostile Nodes, {} KiB without",
        hostile.peak_kib,
        calm.peak_kib
    );
    assert!(calm.skip_warnings.is_empty(), "{:?}", calm.skip_warnings);
    // Rate-limited: the flapping Node, changed `flaps` times, is warned
    // about once per interval (the first, and the held-back last one).
    let flap_warnings: Vec<&String> = hostile
        .skip_warnings
        .iter()
        .filter(|l| l.contains("skipping node hostile-flap"))
        .collect();
    assert!(hostile.flaps >= 500, "only {} flaps", hostile.flaps);
    assert!(
        flap_warnings.len() <= 3,
        "{} warnings about the flapping node:\n{flap_warnings:#?}",
        flap_warnings.len()
    );
    assert!(
        flap_warnings.last().unwrap().contains("held back"),
        "{flap_warnings:#?}"
    );
    // Every warning is one line of reasonable length (no 1 MiB value).
    for line in &hostile.skip_warnings {
        assert!(
            line.len() < 1000,
            "{} bytes: {}...",
            line.len(),
            &line[..200]
        );
    }
}
