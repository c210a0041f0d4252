//! The seed article, reproduced end to end in the lab: two nodes on
//! 10.42.0.0/16, each running its own `flannel-agent`; what the article
//! shows with `cat`, `route`, `ip`, `kubectl`, `curl` and `tcpdump`.

mod lab_support;

use std::process::Command;
use std::time::Duration;

use integration::fixtures::PREFIX;
use integration::lab::process::Background;
use integration::lab::util::poll;
use integration::lab::{Lab, Options};
use lab_support::without_nhid;

/// The seed's `cat /run/flannel/subnet.env` on its first node.
const SEED_SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// A static file server on the given address and port, serving the
/// current directory.
const HTTP_SERVER: &str = "import http.server, socketserver, sys
socketserver.TCPServer.allow_reuse_address = True
server = socketserver.TCPServer((sys.argv[1], int(sys.argv[2])), http.server.SimpleHTTPRequestHandler)
server.serve_forever()
";

fn seed_lab(tag: &str, dir: &std::path::Path) -> Lab {
    let mut options = Options::for_tests(tag, dir);
    options.nodes = 2;
    options.cluster_cidr = "10.42.0.0/16".into();
    options.pods_per_node = 1;
    options.wait = Duration::from_secs(20);
    Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap()
}

#[test]
fn the_seed_article_two_nodes_vxlan() {
    let tmp = tempfile::tempdir().unwrap();
    let lab = seed_lab("seed", &tmp.path().join("lab"));

    // subnet.env: exactly the seed's four lines on node 0; node 1 differs
    // only in FLANNEL_SUBNET (as the article says).
    assert_eq!(lab.subnet_env(0).as_deref(), Some(SEED_SUBNET_ENV));
    assert_eq!(
        lab.subnet_env(1).as_deref(),
        Some(
            SEED_SUBNET_ENV
                .replace("10.42.0.1/24", "10.42.1.1/24")
                .as_str()
        )
    );

    // The routing tables of the article: the peer's /24 via its network
    // address on flannel.1, onlink (no ARP per pod IP).
    for (index, peer) in [(0, 1), (1, 0)] {
        let routes = lab.ip(index, &["-4", "route", "show"]).unwrap();
        eprintln!("node-{index} routes:\n{routes}");
        let want = format!("10.42.{peer}.0/24 via 10.42.{peer}.0 dev flannel.1");
        // (The route may name its gateway through a nexthop object.)
        let line = routes
            .lines()
            .map(without_nhid)
            .find(|l| l.starts_with(&want))
            .unwrap_or_else(|| panic!("no {want:?} on node-{index}:\n{routes}"));
        assert!(line.contains("onlink"), "{line}");
        assert!(
            line.contains("proto 77"),
            "our routes carry protocol 77: {line}"
        );
        // And the pods' own subnet on cni0, as in the seed's table.
        assert!(
            routes.contains(&format!("10.42.{index}.0/24 dev cni0")),
            "{routes}"
        );
    }

    for index in 0..2 {
        // flannel.1: vxlan id 1, dstport 8472, nolearning, MTU 1450 (1500 - 50),
        // local = the uplink address, lease network address /32 on it.
        let vtep = lab.kernel(index).unwrap().vtep.expect("flannel.1 exists");
        assert_eq!(vtep.vni, 1);
        assert_eq!(vtep.port, 8472);
        assert!(!vtep.learning);
        assert_eq!(vtep.mtu, 1450);
        assert_eq!(
            vtep.local.as_deref(),
            Some(lab.node(index).uplink_ip.as_str())
        );
        assert_eq!(vtep.link.as_deref(), Some("eth0"));
        assert!(vtep.up);
        assert_eq!(vtep.addrs, [format!("10.42.{index}.0/32")]);
        let text = lab.ip(index, &["-d", "link", "show", "flannel.1"]).unwrap();
        eprintln!("node-{index}: {text}");
        for part in ["mtu 1450", "vxlan id 1 ", "dstport 8472", "nolearning"] {
            assert!(text.contains(part), "{part:?} missing in {text}");
        }

        // The Node carries backend-data with the device's real MAC.
        let node = lab.node_object(index).unwrap().unwrap();
        let annotations = node.metadata.annotations.unwrap();
        assert_eq!(
            annotations[&format!("{PREFIX}backend-data")],
            format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, vtep.mac)
        );
        assert_eq!(annotations[&format!("{PREFIX}backend-type")], "vxlan");
        assert_eq!(
            annotations[&format!("{PREFIX}public-ip")],
            lab.node(index).uplink_ip
        );

        // Neighbour and FDB entry for the peer, as upstream programs them.
        let peer = lab.peer_view(1 - index).unwrap().unwrap();
        let entries = lab.kernel(index).unwrap().entries_for(&peer);
        assert!(entries.complete(), "node-{index} for its peer: {entries:?}");
        let fdb = Command::new("bridge")
            .args([
                "-n",
                &lab.node(index).netns,
                "fdb",
                "show",
                "dev",
                "flannel.1",
            ])
            .output()
            .unwrap();
        let fdb = String::from_utf8_lossy(&fdb.stdout);
        assert!(
            fdb.contains(&format!(
                "{} dst {} self permanent",
                peer.vtep_mac, peer.public_ip
            )),
            "{fdb}"
        );
    }

    // A pod on node 0 pings and fetches HTTP from a pod on node 1.
    let client = lab.pods_on(0)[0].clone();
    let server = lab.pods_on(1)[0].clone();
    let server_ip = server.ip.clone().unwrap();
    assert!(server_ip.starts_with("10.42.1."), "{server_ip}");
    assert!(lab.ping(&client.name, &server_ip), "ping across nodes");

    let www = tmp.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello from node-1\n").unwrap();
    // `python3 -m http.server` would first look the address up in DNS
    // (HTTPServer.server_bind calls getfqdn): a plain TCPServer does not.
    let mut http = lab.pod_command(
        &server.name,
        "python3",
        &["-c", HTTP_SERVER, &server_ip, "8080"],
    );
    http.current_dir(&www);
    let _http = Background::start(http, tmp.path(), "http").unwrap();
    let url = format!("http://{server_ip}:8080/hello.txt");
    let body = poll(Duration::from_secs(10), || {
        let out = lab
            .pod_command(&client.name, "curl", &["-sf", "--max-time", "2", &url])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .expect("curl from the node-0 pod gets the page");
    assert_eq!(body, "hello from node-1\n");

    // tcpdump on node 1's uplink: UDP 8472, VNI 1, the two pod IPs inside.
    let mut tcpdump = lab.node_command(
        1,
        "tcpdump",
        &[
            "-i", "eth0", "-nn", "-l", "-T", "vxlan", "-c", "4", "udp", "port", "8472",
        ],
    );
    tcpdump.env_remove("TERM");
    let mut capture = Background::start(tcpdump, tmp.path(), "tcpdump").unwrap();
    poll(Duration::from_secs(10), || {
        capture.stderr().contains("listening on eth0").then_some(())
    })
    .unwrap_or_else(|| panic!("tcpdump did not start: {}", capture.stderr()));
    let client_ip = client.ip.clone().unwrap();
    let ping = lab
        .pod_command(
            &client.name,
            "ping",
            &["-c", "2", "-i", "0.2", "-w", "5", &server_ip],
        )
        .output()
        .unwrap();
    assert!(ping.status.success());
    let finished = capture.wait_exit(Duration::from_secs(10));
    let dump = capture.stdout();
    eprintln!("tcpdump on node-1 eth0:\n{dump}{}", capture.stderr());
    assert!(finished, "tcpdump saw fewer than 4 packets");
    assert!(
        dump.contains("192.168.1.10.") && dump.contains("> 192.168.1.11.8472: VXLAN"),
        "{dump}"
    );
    assert!(dump.contains("vni 1\n"), "{dump}");
    assert!(
        dump.contains(&format!("IP {client_ip} > {server_ip}: ICMP echo request")),
        "{dump}"
    );
    assert!(
        dump.contains(&format!("IP {server_ip} > {client_ip}: ICMP echo reply")),
        "{dump}"
    );

    lab.down().unwrap();
}
