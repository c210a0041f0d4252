//! The lab with `--flannel-backend host-gw`: no flannel device, one route
//! per peer `<peer lease> via <peer uplink IP> dev eth0`, pods on every
//! node reach each other; also as an operator runs it (`flannel-lab up
//! --backend host-gw`), dual-stack.

mod lab_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use integration::fixtures::PREFIX;
use integration::lab::kernel::Family;
use integration::lab::util::poll;
use integration::lab::{Lab, Options};
use lab_support::without_nhid;

/// The routes our agent made (protocol 77) in `family`, as `ip -n` prints
/// them, trimmed, sorted and without nexthop ids.
fn flannel_routes(lab: &Lab, index: usize, family: Family) -> Vec<String> {
    let text = lab
        .ip(index, &[family.ip_flag(), "route", "show", "proto", "77"])
        .unwrap();
    let mut lines: Vec<String> = text.lines().map(without_nhid).collect();
    lines.sort();
    lines
}

fn links(lab: &Lab, index: usize) -> String {
    lab.ip(index, &["-o", "link", "show"]).unwrap()
}

#[test]
fn host_gw_three_nodes_route_via_the_peers_uplinks() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut options = Options::for_tests("hostgw", &tmp.path().join("lab"));
    options.nodes = 3;
    options.backend = "host-gw".into();
    options.pods_per_node = 1;
    options.wait = Duration::from_secs(20);
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();

    // Every node has both peers, counted from the host-gw routes.
    let table = lab.wait_peers_programmed(Duration::from_secs(10));
    let rendered = table.render();
    eprintln!("{rendered}");
    for row in &table.rows {
        assert_eq!(
            (row.peers_programmed, row.peers_expected),
            (2, 2),
            "{rendered}"
        );
        assert_eq!(row.vtep_mac, None, "host-gw publishes no VtepMAC");
        assert!(row.devices.is_empty(), "{rendered}");
    }
    let header = rendered.lines().next().unwrap();
    assert!(
        header.contains("DEVICE") && !header.contains("VTEPMAC"),
        "{header}"
    );
    for index in 0..3 {
        let line = rendered
            .lines()
            .find(|l| l.starts_with(&format!("node-{index} ")))
            .unwrap();
        assert!(
            line.contains(&format!(
                "10.42.{index}.0/24  192.168.1.1{index}  none    2/2"
            )),
            "{line}"
        );
    }

    // Each node: exactly one route per peer, via the peer's uplink address
    // on eth0; no flannel device; subnet.env with the uplink MTU.
    for index in 0..3 {
        let want: Vec<String> = (0..3)
            .filter(|&peer| peer != index)
            .map(|peer| format!("10.42.{peer}.0/24 via 192.168.1.1{peer} dev eth0"))
            .collect();
        assert_eq!(
            flannel_routes(&lab, index, Family::V4),
            want,
            "node-{index}"
        );
        let links = links(&lab, index);
        assert!(!links.contains("flannel"), "node-{index}: {links}");
        assert_eq!(
            lab.subnet_env(index).unwrap(),
            format!(
                "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.{index}.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"
            )
        );
        let node = lab.node_object(index).unwrap().unwrap();
        let annotations = node.metadata.annotations.unwrap();
        assert_eq!(annotations[&format!("{PREFIX}backend-type")], "host-gw");
        assert_eq!(annotations[&format!("{PREFIX}backend-data")], "null");
    }

    // The pod ping matrix: every pod reaches every other pod.
    let matrix = lab.ping_matrix();
    eprintln!("{}", matrix.render());
    assert_eq!(matrix.pods.len(), 3);
    assert!(matrix.all_ok(), "{}", matrix.render());

    // A route deleted by hand comes back.
    lab.ip(0, &["route", "del", "10.42.2.0/24"]).unwrap();
    let restored = poll(Duration::from_secs(10), || {
        flannel_routes(&lab, 0, Family::V4)
            .contains(&"10.42.2.0/24 via 192.168.1.12 dev eth0".to_string())
            .then_some(())
    });
    assert!(restored.is_some(), "host-gw route not restored");

    lab.down().unwrap();
    eprintln!("host-gw lab test took {:?}", started.elapsed());
}

fn flannel_lab(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(integration::workspace_bin("flannel-lab"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "$ flannel-lab {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A lab started with the command: `flannel-lab down` when dropped, also
/// when the test fails.
struct CliLab {
    dir: PathBuf,
    id: String,
}

impl Drop for CliLab {
    fn drop(&mut self) {
        let _ = flannel_lab(&self.dir, &["down", "--id", &self.id]);
    }
}

#[test]
fn flannel_lab_up_host_gw_dual_stack_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cli-hostgw");
    let id = Options::for_tests("clihgw", &dir).id;
    let guard = CliLab {
        dir: dir.clone(),
        id: id.clone(),
    };
    let up = flannel_lab(
        &dir,
        &[
            "up",
            "--id",
            &id,
            "--backend",
            "host-gw",
            "--cluster-cidr",
            "10.42.0.0/16,fd00:42::/56",
            "--wait",
            "20",
        ],
    );
    let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(up.status.success(), "up failed (exit 2: a ping failed)");
    for expected in [
        "node-0: Node created with podCIDRs 10.42.0.0/24,fd00:42::/64",
        "node-1: netns",
        "eth0 192.168.1.11/24 and fd00:1::11/64 on the underlay",
        "NODE    FAMILY  PODCIDR           PUBLIC IP     DEVICE  PEERS PROGRAMMED",
        "node-0  IPv4    10.42.0.0/24      192.168.1.10  none    1/1",
        "        IPv6    fd00:42::/64      fd00:1::10            1/1",
        "node-1  IPv4    10.42.1.0/24      192.168.1.11  none    1/1",
        "        IPv6    fd00:42:0:1::/64  fd00:1::11            1/1",
        "Pod ping matrix (IPv4):",
        "Pod ping matrix (IPv6):",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing");
    }
    assert!(!stdout.contains("FAIL"));

    // The IPv6 route as `ip` prints it inside the node.
    let exec = flannel_lab(
        &dir,
        &[
            "exec", "node-0", "--", "ip", "-6", "route", "show", "proto", "77",
        ],
    );
    assert!(exec.status.success());
    let routes: Vec<String> = String::from_utf8_lossy(&exec.stdout)
        .lines()
        .map(without_nhid)
        .collect();
    assert_eq!(
        routes,
        ["fd00:42:0:1::/64 via fd00:1::11 dev eth0 metric 1024 pref medium"]
    );

    drop(guard);
    assert!(!dir.exists(), "down removed the lab directory");
}
