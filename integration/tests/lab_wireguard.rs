//! The lab with `--flannel-backend wireguard-native` on the userspace path
//! (this kernel has no WireGuard module, so every agent starts Debian's
//! wireguard-go): pods ping across, the underlay carries UDP 51820 and no
//! 8472, `wg show` (real wireguard-tools) lists exactly the other nodes,
//! the MTU is exact, and restarts, key changes and Nodes deleted while an
//! agent is down leave no peer missing and none stale.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use integration::fixtures::PREFIX;
use integration::lab::kernel::Family;
use integration::lab::process::Background;
use integration::lab::util::poll;
use integration::lab::wg::{endpoint, WgDump, WG_DEVICE, WG_DEVICE_V6};
use integration::lab::{Lab, Options};
use lab_support::{hand_made_pod, sh};

mod lab_support;

fn wireguard_lab(tag: &str, dir: &std::path::Path, nodes: usize, cidr: &str) -> Lab {
    let mut options = Options::for_tests(tag, dir);
    options.nodes = nodes;
    options.backend = "wireguard-native".into();
    options.cluster_cidr = cidr.into();
    options.pods_per_node = 1;
    options.wait = Duration::from_secs(30);
    Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap()
}

fn dump(lab: &Lab, index: usize, device: &str) -> WgDump {
    lab.wg_show(index, device)
        .unwrap()
        .unwrap_or_else(|| panic!("node-{index} has no {device}"))
}

/// What node `index`'s device should hold: per other node (that runs and
/// exists), its public key → (endpoint, AllowedIPs).
fn expected_peers(
    lab: &Lab,
    index: usize,
    family: Family,
    nodes: &[usize],
) -> BTreeMap<String, (String, Vec<String>)> {
    nodes
        .iter()
        .filter(|&&peer| peer != index)
        .map(|&peer| {
            let view = lab.peer_view_of(peer, family).unwrap().unwrap();
            let port = view.port.expect("backend-data has a Port");
            (
                view.public_key.clone(),
                (endpoint(&view.public_ip, port), vec![view.pod_cidr.clone()]),
            )
        })
        .collect()
}

fn held_peers(dump: &WgDump) -> BTreeMap<String, (String, Vec<String>)> {
    dump.peers
        .iter()
        .map(|p| {
            (
                p.public_key.clone(),
                (
                    p.endpoint.clone().unwrap_or_else(|| "(none)".into()),
                    p.allowed_ips.clone(),
                ),
            )
        })
        .collect()
}

/// Waits until node `index`'s device holds exactly the expected peers.
fn wait_exact_peers(lab: &Lab, index: usize, family: Family, device: &str, nodes: &[usize]) {
    let want = expected_peers(lab, index, family, nodes);
    let held = poll(Duration::from_secs(20), || {
        let held = held_peers(&lab.wg_show(index, device).ok()??);
        (held == want).then_some(held)
    });
    assert!(
        held.is_some(),
        "node-{index} {device}: want {want:?}, holds {:?}\n{}",
        lab.wg_show(index, device).unwrap().map(|d| held_peers(&d)),
        std::fs::read_to_string(lab.agent_log(index)).unwrap_or_default()
    );
}

fn ifindex(lab: &Lab, index: usize, device: &str) -> String {
    lab.ip(index, &["-o", "link", "show", device])
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string()
}

fn kubectl(lab: &Lab, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(lab.kubeconfig())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn all_pings_ok(lab: &Lab, family: Family) {
    let matrix = poll(Duration::from_secs(10), || {
        let m = lab.ping_matrix_of(family);
        m.all_ok().then_some(m)
    });
    assert!(matrix.is_some(), "{}", lab.ping_matrix_of(family).render());
}

#[test]
fn wireguard_three_nodes_userspace() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = wireguard_lab("wg3", &tmp.path().join("lab"), 3, "10.42.0.0/16");
    let all = [0, 1, 2];

    // The status table counts peers from `wg show`: 2/2 everywhere, the
    // device's key is the published one.
    let table = lab.wait_peers_programmed(Duration::from_secs(20));
    let rendered = table.render();
    eprintln!("{rendered}");
    for row in &table.rows {
        assert_eq!(
            (row.peers_programmed, row.peers_expected),
            (2, 2),
            "{rendered}"
        );
    }
    assert!(
        rendered.contains("flannel-wg port 51820, same key"),
        "{rendered}"
    );
    all_pings_ok(&lab, Family::V4);

    for index in all {
        // Annotations exactly as upstream publishes them.
        let node = format!("node-{index}");
        let annotations: serde_json::Value = serde_json::from_str(&kubectl(
            &lab,
            &[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.metadata.annotations}",
            ],
        ))
        .unwrap();
        let device = dump(&lab, index, WG_DEVICE);
        assert_eq!(annotations[format!("{PREFIX}backend-type")], "wireguard");
        assert_eq!(
            annotations[format!("{PREFIX}backend-data")],
            format!(r#"{{"PublicKey":"{}","Port":51820}}"#, device.public_key)
        );
        assert_eq!(device.listen_port, 51820);
        // Exactly the other nodes, with endpoint, AllowedIPs and the k3s
        // keepalive.
        wait_exact_peers(&lab, index, Family::V4, WG_DEVICE, &all);
        assert!(
            device.peers.iter().all(|p| p.keepalive == Some(25)),
            "{device:?}"
        );
        // Device: MTU 1500 - 80, the lease network address /32, one route
        // for the cluster network; subnet.env says the device MTU.
        let link = lab.ip(index, &["-d", "link", "show", WG_DEVICE]).unwrap();
        assert!(link.contains("mtu 1420"), "{link}");
        let addrs = lab
            .ip(index, &["-4", "-o", "addr", "show", "dev", WG_DEVICE])
            .unwrap();
        assert!(
            addrs.contains(&format!("inet 10.42.{index}.0/32")),
            "{addrs}"
        );
        let routes = lab.ip(index, &["route", "show", "proto", "77"]).unwrap();
        assert_eq!(
            routes.trim(),
            "10.42.0.0/16 dev flannel-wg scope link",
            "{routes}"
        );
        let env = lab.subnet_env(index).unwrap();
        assert!(env.contains("FLANNEL_MTU=1420\n"), "{env}");
        assert!(
            env.contains(&format!("FLANNEL_SUBNET=10.42.{index}.1/24\n")),
            "{env}"
        );
        // No vxlan device anywhere.
        let links = lab.ip(index, &["-o", "link", "show"]).unwrap();
        assert!(!links.contains("flannel.1"), "{links}");
    }

    // The underlay carries WireGuard (UDP 51820) and no VXLAN (8472).
    let mut tcpdump =
        lab.node_command(1, "tcpdump", &["-i", "eth0", "-nn", "-l", "-c", "6", "udp"]);
    tcpdump.env_remove("TERM");
    let mut capture = Background::start(tcpdump, tmp.path(), "tcpdump").unwrap();
    poll(Duration::from_secs(10), || {
        capture.stderr().contains("listening on eth0").then_some(())
    })
    .unwrap_or_else(|| panic!("tcpdump did not start: {}", capture.stderr()));
    let client = lab.pods_on(0)[0].clone();
    let server_ip = lab.pods_on(1)[0].ip.clone().unwrap();
    let ping = lab
        .pod_command(
            &client.name,
            "ping",
            &["-c", "3", "-i", "0.2", "-w", "5", &server_ip],
        )
        .output()
        .unwrap();
    assert!(ping.status.success());
    let finished = capture.wait_exit(Duration::from_secs(10));
    let seen = capture.stdout();
    eprintln!("tcpdump on node-1 eth0:\n{seen}");
    assert!(finished, "tcpdump saw fewer than 6 UDP packets");
    assert!(
        seen.contains("192.168.1.10.51820 > 192.168.1.11.51820: UDP"),
        "{seen}"
    );
    assert!(!seen.contains(".8472"), "{seen}");
    for line in seen.lines().filter(|l| l.contains(" IP ")) {
        assert!(
            line.contains(".51820 > ") && line.contains(".51820: UDP"),
            "{line}"
        );
    }

    // MTU exact: from node-0 (source 10.42.0.0, inside node-1's AllowedIPs
    // on node-1's side) a 1392-byte don't-fragment ping to node-1's device
    // address crosses (1392 + 28 = 1420), 1393 does not.
    let df_ping = |size: &str| {
        lab.exec(
            0,
            "ping",
            &["-M", "do", "-s", size, "-c", "1", "-W", "3", "10.42.1.0"],
        )
        .unwrap()
        .status
        .success()
    };
    assert!(df_ping("1392"), "1392 bytes must cross");
    assert!(!df_ping("1393"), "1393 bytes must not fit");

    // Restart node-1's agent: the device (and wireguard-go) is kept, not
    // recreated; no peer lost anywhere, none stale.
    let before = ifindex(&lab, 1, WG_DEVICE);
    let key_before = dump(&lab, 1, WG_DEVICE).public_key;
    lab.stop_agent(1);
    lab.start_agent(1).unwrap();
    assert!(lab.wait_subnet_env(1, Duration::from_secs(20)).unwrap());
    for index in all {
        wait_exact_peers(&lab, index, Family::V4, WG_DEVICE, &all);
    }
    assert_eq!(
        ifindex(&lab, 1, WG_DEVICE),
        before,
        "the device was recreated"
    );
    assert_eq!(dump(&lab, 1, WG_DEVICE).public_key, key_before);
    // The log is appended to across restarts: one start in it.
    let log = std::fs::read_to_string(lab.agent_log(1)).unwrap();
    assert_eq!(
        log.matches("started userspace wireguard").count(),
        1,
        "a second wireguard-go: {log}"
    );
    assert_eq!(log.matches("Starting flannel").count(), 2, "{log}");
    all_pings_ok(&lab, Family::V4);

    // Change node-1's key (delete its key file, restart): every other node
    // replaces the peer, and no old peer stays behind with `(none)`.
    lab.stop_agent(1);
    std::fs::remove_file(lab.sandbox(1).run_dir.join("flannel/wgkey")).unwrap();
    lab.start_agent(1).unwrap();
    let new_key = poll(Duration::from_secs(20), || {
        let key = lab.wg_show(1, WG_DEVICE).ok()??.public_key;
        (key != key_before).then_some(key)
    })
    .expect("node-1 has a new key");
    for index in all {
        wait_exact_peers(&lab, index, Family::V4, WG_DEVICE, &all);
        let held = dump(&lab, index, WG_DEVICE);
        assert!(
            held.peer(&key_before).is_none(),
            "node-{index} kept the old key: {held:?}"
        );
        assert!(
            held.peers.iter().all(|p| !p.allowed_ips.is_empty()),
            "node-{index}: {held:?}"
        );
    }
    assert!(dump(&lab, 0, WG_DEVICE).peer(&new_key).is_some());
    all_pings_ok(&lab, Family::V4);

    // wireguard-go on node-2 dies (the device goes with it): the agent
    // starts it again and puts the key, the port and every peer back.
    let node2 = lab.node(2).netns.clone();
    let victims = integration::lab::processes_in_netns(&[node2]);
    let wg_go: Vec<_> = victims
        .iter()
        .filter(|p| p.what.contains("wireguard-go"))
        .collect();
    assert_eq!(wg_go.len(), 1, "{victims:?}");
    let old_index = ifindex(&lab, 2, WG_DEVICE);
    wg_go[0].signal("KILL");
    let back = poll(Duration::from_secs(20), || {
        let index = lab.ip(2, &["-o", "link", "show", WG_DEVICE]).ok()?;
        let index = index.split(':').next()?.to_string();
        (index != old_index).then_some(())?;
        let held = held_peers(&lab.wg_show(2, WG_DEVICE).ok()??);
        (held == expected_peers(&lab, 2, Family::V4, &all)).then_some(())
    });
    assert!(
        back.is_some(),
        "node-2 did not get its device back: {:?}\n{}",
        lab.wg_show(2, WG_DEVICE).unwrap(),
        std::fs::read_to_string(lab.agent_log(2)).unwrap_or_default()
    );
    let log = std::fs::read_to_string(lab.agent_log(2)).unwrap();
    assert!(
        log.contains("the userspace WireGuard implementation for flannel-wg ended"),
        "{log}"
    );
    all_pings_ok(&lab, Family::V4);

    // A peer Node deleted while node-0's agent is down: gone from node-0's
    // device at its next start (wireguard-go kept it meanwhile).
    lab.stop_agent(0);
    lab.stop_agent(2);
    let key2 = dump(&lab, 2, WG_DEVICE).public_key;
    assert!(dump(&lab, 0, WG_DEVICE).peer(&key2).is_some());
    kubectl(&lab, &["delete", "node", "node-2"]);
    lab.start_agent(0).unwrap();
    let gone = poll(Duration::from_secs(20), || {
        let held = lab.wg_show(0, WG_DEVICE).ok()??;
        (held.peer(&key2).is_none() && held.peers.len() == 1).then_some(held)
    });
    assert!(
        gone.is_some(),
        "node-0 still holds the deleted node: {:?}\n{}",
        lab.wg_show(0, WG_DEVICE).unwrap(),
        std::fs::read_to_string(lab.agent_log(0)).unwrap_or_default()
    );
    let log = std::fs::read_to_string(lab.agent_log(0)).unwrap();
    assert!(
        log.contains(&format!("remove peer {key2} on flannel-wg")),
        "{log}"
    );

    lab.down().unwrap();
    eprintln!("wireguard three-node test took {:?}", started.elapsed());
}

#[test]
fn wireguard_dual_stack_uses_a_v6_device_on_51821() {
    let tmp = tempfile::tempdir().unwrap();
    let lab = wireguard_lab(
        "wgds",
        &tmp.path().join("lab"),
        2,
        "10.42.0.0/16,fd00:42::/56",
    );
    let table = lab.wait_peers_programmed(Duration::from_secs(20));
    eprintln!("{}", table.render());
    for index in 0..2 {
        wait_exact_peers(&lab, index, Family::V4, WG_DEVICE, &[0, 1]);
        wait_exact_peers(&lab, index, Family::V6, WG_DEVICE_V6, &[0, 1]);
        let v4 = dump(&lab, index, WG_DEVICE);
        let v6 = dump(&lab, index, WG_DEVICE_V6);
        assert_eq!((v4.listen_port, v6.listen_port), (51820, 51821));
        // One key for both devices, as upstream.
        assert_eq!(v4.public_key, v6.public_key);
        let peer = &v6.peers[0];
        assert!(
            peer.endpoint.as_deref().unwrap().starts_with('['),
            "{peer:?}"
        );
        assert!(
            peer.endpoint.as_deref().unwrap().ends_with("]:51821"),
            "{peer:?}"
        );
        let view = lab.peer_view_of(index, Family::V6).unwrap().unwrap();
        assert_eq!(view.port, Some(51821));
        let routes = lab
            .ip(index, &["-6", "route", "show", "proto", "77"])
            .unwrap();
        assert_eq!(
            routes.trim(),
            "fd00:42::/56 dev flannel-wg-v6 metric 1024 pref medium",
            "{routes}"
        );
        let addrs = lab
            .ip(
                index,
                &[
                    "-6",
                    "-o",
                    "addr",
                    "show",
                    "dev",
                    WG_DEVICE_V6,
                    "scope",
                    "global",
                ],
            )
            .unwrap();
        let own = lab
            .peer_view_of(index, Family::V6)
            .unwrap()
            .unwrap()
            .pod_cidr;
        let network = own.split('/').next().unwrap();
        assert!(addrs.contains(&format!("inet6 {network}/128")), "{addrs}");
    }
    all_pings_ok(&lab, Family::V4);
    all_pings_ok(&lab, Family::V6);

    // Converged, the agents go quiet: no pass writes anything (the IPv6
    // route once was rewritten by every pass, whose echo started the
    // next). Then a route deleted by hand comes back exactly once.
    let lines = |needle: &str| {
        std::fs::read_to_string(lab.agent_log(0))
            .unwrap()
            .matches(needle)
            .count()
    };
    let (reconciled, restored) = (lines("reconciled"), lines("restored the route"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (lines("reconciled"), lines("restored the route")),
        (reconciled, restored),
        "node-0 is not quiet:\n{}",
        std::fs::read_to_string(lab.agent_log(0)).unwrap()
    );
    lab.ip(
        0,
        &["-6", "route", "del", "fd00:42::/56", "dev", WG_DEVICE_V6],
    )
    .unwrap();
    poll(Duration::from_secs(10), || {
        lab.ip(0, &["-6", "route", "show", "proto", "77"])
            .ok()?
            .contains("fd00:42::/56 dev flannel-wg-v6")
            .then_some(())
    })
    .expect("the IPv6 route comes back");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        lines("restored the route"),
        restored + 1,
        "{}",
        std::fs::read_to_string(lab.agent_log(0)).unwrap()
    );
    lab.down().unwrap();
}

fn in_node(lab: &Lab, index: usize, program: &str, args: &[&str]) -> String {
    let out = lab.exec(index, program, args).unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} in node-{index}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A mixed cluster: node-1 is set up by hand exactly as upstream flannel's
/// wireguard backend does it (wireguard-go, `wg`, `ip` and `kubectl`, no
/// project code); node-0 runs our agent. Their pods reach each other.
#[test]
fn wireguard_hand_made_upstream_peer_and_our_agent_reach_each_others_pods() {
    let tmp = tempfile::tempdir().unwrap();
    let mut options = Options::for_tests("wgmix", &tmp.path().join("lab"));
    options.nodes = 2;
    options.backend = "wireguard-native".into();
    options.pods_per_node = 1;
    options.without_agent = std::collections::BTreeSet::from([1]);
    options.wait = Duration::from_secs(20);
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    let n1 = lab.node(1).netns.clone();
    let ours = lab.node(0).clone();

    // node-1's device: wireguard-go in the node (its own /run/wireguard),
    // a key from `wg genkey`, port 51820, MTU 1500 - 80, the lease network
    // address /32 and one route for the cluster network.
    let private = sh(&["wg", "genkey"]);
    let public = {
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    std::fs::write(lab.sandbox(1).run_dir.join("hand.key"), &private).unwrap();
    let daemon = lab.node_command(1, "wireguard-go", &["-f", "flannel-wg"]);
    let _wireguard_go = Background::start(daemon, tmp.path(), "wireguard-go").unwrap();
    poll(Duration::from_secs(10), || {
        lab.exec(1, "wg", &["show", "flannel-wg"])
            .ok()?
            .status
            .success()
            .then_some(())
    })
    .expect("wireguard-go made flannel-wg");
    in_node(
        &lab,
        1,
        "wg",
        &[
            "set",
            "flannel-wg",
            "private-key",
            "/run/hand.key",
            "listen-port",
            "51820",
        ],
    );
    sh(&[
        "ip",
        "-n",
        &n1,
        "link",
        "set",
        "flannel-wg",
        "mtu",
        "1420",
        "up",
    ]);
    sh(&[
        "ip",
        "-n",
        &n1,
        "addr",
        "add",
        "10.42.1.0/32",
        "dev",
        "flannel-wg",
    ]);
    sh(&[
        "ip",
        "-n",
        &n1,
        "route",
        "replace",
        "10.42.0.0/16",
        "dev",
        "flannel-wg",
        "scope",
        "link",
    ]);
    // ... and its annotations, as upstream publishes them, with kubectl.
    kubectl(
        &lab,
        &[
            "annotate",
            "node",
            "node-1",
            "flannel.alpha.coreos.com/backend-type=wireguard",
            &format!(
                r#"flannel.alpha.coreos.com/backend-data={{"PublicKey":"{public}","Port":51820}}"#
            ),
            "flannel.alpha.coreos.com/kube-subnet-manager=true",
            "flannel.alpha.coreos.com/public-ip=192.168.1.11",
        ],
    );

    // Our agent adds the hand-made peer.
    let added = poll(Duration::from_secs(10), || {
        let held = lab.wg_show(0, WG_DEVICE).ok()??;
        let peer = held.peer(&public)?.clone();
        (peer.endpoint.as_deref() == Some("192.168.1.11:51820")
            && peer.allowed_ips == ["10.42.1.0/24"])
        .then_some(peer)
    });
    assert!(added.is_some(), "{:?}", lab.wg_show(0, WG_DEVICE).unwrap());

    // node-1 adds our node from what kubectl shows, as flanneld would.
    let jsonpath = |path: &str| {
        kubectl(
            &lab,
            &["get", "node", "node-0", "-o", &format!("jsonpath={path}")],
        )
    };
    let data: serde_json::Value = serde_json::from_str(&jsonpath(
        r"{.metadata.annotations.flannel\.alpha\.coreos\.com/backend-data}",
    ))
    .unwrap();
    let public_ip = jsonpath(r"{.metadata.annotations.flannel\.alpha\.coreos\.com/public-ip}");
    let pod_cidr = jsonpath("{.spec.podCIDR}");
    assert_eq!(
        (public_ip.as_str(), pod_cidr.as_str()),
        (ours.uplink_ip.as_str(), ours.pod_cidr.as_str())
    );
    let our_key = data["PublicKey"].as_str().unwrap().to_string();
    let our_port = data["Port"].as_u64().unwrap().to_string();
    in_node(
        &lab,
        1,
        "wg",
        &[
            "set",
            "flannel-wg",
            "peer",
            &our_key,
            "endpoint",
            &format!("{public_ip}:{our_port}"),
            "allowed-ips",
            &pod_cidr,
            "persistent-keepalive",
            "25",
        ],
    );

    // A pod on node-1 as the bridge plugin would attach it (MTU 1420).
    let pod = format!("{}n1hand", integration::lab::netns_prefix(lab.id()));
    hand_made_pod(
        &n1,
        &pod,
        "10.42.1.1/24",
        "10.42.1.5/24",
        "10.42.1.1",
        "1420",
    );

    let our_pod = lab.pods_on(0)[0].clone();
    let our_pod_ip = our_pod.ip.clone().unwrap();
    assert!(
        poll(Duration::from_secs(10), || lab
            .ping(&our_pod.name, "10.42.1.5")
            .then_some(()))
        .is_some(),
        "our pod → hand-made pod"
    );
    assert!(lab.ping(&pod, &our_pod_ip), "hand-made pod → our pod");
    assert!(
        lab.ping(&our_pod.name, "10.42.1.0"),
        "our pod → the hand-made node's device"
    );
    // A handshake really happened on the hand-made side.
    let hand = dump(&lab, 1, WG_DEVICE);
    assert!(
        hand.peer(&our_key).is_some_and(|p| p.latest_handshake > 0),
        "{hand:?}"
    );

    lab.down().unwrap();
    let _ = Command::new("ip").args(["netns", "del", &pod]).output();
}

/// Mode `auto` (one device for both families) with a PSK, from a
/// `--flannel-conf` net-conf.json: `flannel-wg` carries both leases, each
/// peer's AllowedIPs are both of its leases, the PSK is on every peer,
/// there is no `flannel-wg-v6`, and pods reach each other in both
/// families.
#[test]
fn wireguard_single_device_auto_mode_with_psk() {
    const PSK: &str = "EEl0GML7McbBo7lbd0ebJHDWB2lGKrP5EI8a8BrWVUE=";
    let tmp = tempfile::tempdir().unwrap();
    let netconf = tmp.path().join("net-conf.json");
    std::fs::write(
        &netconf,
        format!(
            r#"{{"Network": "10.42.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:42::/56",
"Backend": {{"Type": "wireguard", "Mode": "auto", "PSK": "{PSK}", "PersistentKeepaliveInterval": 25}}}}"#
        ),
    )
    .unwrap();
    let mut options = Options::for_tests("wgauto", &tmp.path().join("lab"));
    options.nodes = 2;
    options.backend = "wireguard-native".into();
    options.cluster_cidr = "10.42.0.0/16,fd00:42::/56".into();
    options.pods_per_node = 1;
    options.wait = Duration::from_secs(20);
    options.agent_args = vec![format!("--flannel-conf={}", netconf.display())];
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    for index in 0..2 {
        let other = 1 - index;
        let v4 = lab.peer_view_of(other, Family::V4).unwrap().unwrap();
        let v6 = lab.peer_view_of(other, Family::V6).unwrap().unwrap();
        // One port in both annotations: the one device's.
        assert_eq!((v4.port, v6.port), (Some(51820), Some(51820)));
        let want = (
            // Private IPv4 and ULA IPv6 on both sides: upstream's auto
            // choice is IPv4.
            endpoint(&v4.public_ip, 51820),
            {
                let mut both = vec![v4.pod_cidr.clone(), v6.pod_cidr.clone()];
                both.sort();
                both
            },
        );
        let held = poll(Duration::from_secs(20), || {
            let dump = lab.wg_show(index, WG_DEVICE).ok()??;
            let peer = dump.peer(&v4.public_key)?.clone();
            let mut allowed = peer.allowed_ips.clone();
            allowed.sort();
            (dump.peers.len() == 1 && (peer.endpoint.clone().unwrap_or_default(), allowed) == want)
                .then_some(peer)
        })
        .unwrap_or_else(|| panic!("node-{index}: {:?}", lab.wg_show(index, WG_DEVICE).unwrap()));
        assert_eq!(held.preshared_key, PSK, "the PSK is on the peer");
        assert!(
            lab.wg_show(index, WG_DEVICE_V6).unwrap().is_none(),
            "no v6 device in auto mode"
        );
        let routes4 = lab.ip(index, &["route", "show", "proto", "77"]).unwrap();
        assert_eq!(routes4.trim(), "10.42.0.0/16 dev flannel-wg scope link");
        let routes6 = lab
            .ip(index, &["-6", "route", "show", "proto", "77"])
            .unwrap();
        assert!(
            routes6.starts_with("fd00:42::/56 dev flannel-wg "),
            "{routes6}"
        );
        let addrs = lab
            .ip(
                index,
                &["-o", "addr", "show", "dev", WG_DEVICE, "scope", "global"],
            )
            .unwrap();
        assert!(
            addrs.contains(&format!("inet 10.42.{index}.0/32")),
            "{addrs}"
        );
        assert!(addrs.contains("/128"), "{addrs}");
    }
    all_pings_ok(&lab, Family::V4);
    all_pings_ok(&lab, Family::V6);
    lab.down().unwrap();
}

/// What an operator sees when WireGuard cannot run: `--wireguard-implementation
/// kernel` on a kernel without the module, and a userspace program that
/// does not exist. Neither agent exits (the problem may be fixed by loading
/// the module or installing the program); `/readyz` answers 503 with a
/// message that names the cause and the fix, the log warns once, and the
/// healthy node is unaffected.
#[test]
fn wireguard_that_cannot_run_is_a_clear_retried_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let (p1, p2) = (
        integration::free_local_port(),
        integration::free_local_port(),
    );
    let mut options = Options::for_tests("wgbad", &tmp.path().join("lab"));
    options.nodes = 3;
    options.backend = "wireguard-native".into();
    options.pods_per_node = 0;
    options.wait = Duration::from_secs(3);
    options.node_agent_args = BTreeMap::from([
        (
            1,
            vec![
                "--wireguard-implementation=kernel".to_string(),
                format!("--healthz-bind=127.0.0.1:{p1}"),
            ],
        ),
        (
            2,
            vec![
                "--wireguard-implementation=userspace".to_string(),
                "--wireguard-userspace-program=/nonexistent/wireguard-go".to_string(),
                format!("--healthz-bind=127.0.0.1:{p2}"),
            ],
        ),
    ]);
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    let readyz = |port: u16, wanted: &str| {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        poll(Duration::from_secs(20), || {
            let (code, body) = integration::http_get(addr, "/readyz").ok()?;
            (code == 503 && body.contains(wanted)).then_some(body)
        })
        .unwrap_or_else(|| {
            panic!(
                "/readyz on {port}: {:?}",
                integration::http_get(addr, "/readyz")
            )
        })
    };
    let body = readyz(p1, "the kernel has no WireGuard support");
    assert!(body.contains("flannel-wg"), "{body}");
    assert!(body.contains("load the wireguard module"), "{body}");
    let body = readyz(p2, "cannot start /nonexistent/wireguard-go");
    assert!(body.contains("install wireguard-go"), "{body}");
    // Retried, still running, warned about once each.
    std::thread::sleep(Duration::from_secs(3));
    for (index, needle) in [
        (1, "the kernel has no WireGuard support"),
        (2, "cannot start /nonexistent"),
    ] {
        assert!(lab.agent_running(index), "node-{index}'s agent exited");
        let log = std::fs::read_to_string(lab.agent_log(index)).unwrap();
        let warnings = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .count();
        assert_eq!(warnings, 1, "node-{index}:\n{log}");
        assert!(
            lab.subnet_env(index).is_none(),
            "node-{index} wrote subnet.env without a tunnel"
        );
    }
    // The healthy node has its device; the broken ones have none.
    assert!(lab.wg_show(0, WG_DEVICE).unwrap().is_some());
    for index in [1, 2] {
        let links = lab.ip(index, &["-o", "link", "show"]).unwrap();
        assert!(!links.contains("flannel-wg"), "{links}");
    }
    lab.down().unwrap();
}
