//! A mixed cluster: one lab node runs our task, the other is set up by
//! hand exactly the way upstream (Go) flannel would set it up, with `ip`,
//! `bridge` and `kubectl` only and no project code on that node. Their pods
//! reach each other: we are wire- and annotation-compatible with upstream.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use integration::lab::util::poll;
use integration::lab::{netns_prefix, Lab, Options};
use lab_support::{hand_made_pod, sh};

mod lab_support;

/// The hand-made node's VTEP MAC (locally administered, as upstream picks).
const HAND_MAC: &str = "0e:42:00:00:01:01";

#[test]
fn a_hand_made_upstream_peer_and_our_agent_reach_each_others_pods() {
    let tmp = tempfile::tempdir().unwrap();
    let mut options = Options::for_tests("mixed", &tmp.path().join("lab"));
    options.nodes = 2;
    options.pods_per_node = 1;
    options.without_agent = BTreeSet::from([1]);
    options.wait = Duration::from_secs(20);
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    let ours = lab.node(0).clone();
    let hand = lab.node(1).clone();
    assert_eq!(lab.pods_on(1).len(), 0, "no pods where no agent runs");
    let kubeconfig = lab.kubeconfig();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let n1 = hand.netns.as_str();

    // node-1, by hand, as flanneld's vxlan backend does it: the device
    // (VNI 1, local = uplink, dstport 8472, nolearning, MTU 1500 - 50), the
    // lease network address /32 on it ...
    sh(&[
        "ip",
        "-n",
        n1,
        "link",
        "add",
        "flannel.1",
        "address",
        HAND_MAC,
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.168.1.11",
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    sh(&[
        "ip",
        "-n",
        n1,
        "link",
        "set",
        "flannel.1",
        "mtu",
        "1450",
        "up",
    ]);
    sh(&[
        "ip",
        "-n",
        n1,
        "addr",
        "add",
        "10.42.1.0/32",
        "dev",
        "flannel.1",
    ]);
    // ... and its annotations, published with kubectl.
    sh(&[
        "kubectl",
        "--kubeconfig",
        kubeconfig,
        "annotate",
        "node",
        "node-1",
        "flannel.alpha.coreos.com/backend-type=vxlan",
        &format!(r#"flannel.alpha.coreos.com/backend-data={{"VNI":1,"VtepMAC":"{HAND_MAC}"}}"#),
        "flannel.alpha.coreos.com/kube-subnet-manager=true",
        "flannel.alpha.coreos.com/public-ip=192.168.1.11",
    ]);

    // Our agent on node-0 programs the hand-made peer.
    let hand_view = lab.peer_view(1).unwrap().unwrap();
    assert_eq!(hand_view.vtep_mac, HAND_MAC);
    let programmed = poll(Duration::from_secs(5), || {
        lab.kernel(0)
            .ok()?
            .entries_for(&hand_view)
            .complete()
            .then_some(())
    });
    assert!(programmed.is_some(), "{:?}", lab.kernel(0).unwrap());

    // node-1 programs our node from what kubectl shows, as flanneld would.
    let jsonpath = |path: &str| {
        sh(&[
            "kubectl",
            "--kubeconfig",
            kubeconfig,
            "get",
            "node",
            "node-0",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    let backend_data =
        jsonpath(r"{.metadata.annotations.flannel\.alpha\.coreos\.com/backend-data}");
    let public_ip = jsonpath(r"{.metadata.annotations.flannel\.alpha\.coreos\.com/public-ip}");
    let pod_cidr = jsonpath("{.spec.podCIDR}");
    assert_eq!(pod_cidr, ours.pod_cidr);
    assert_eq!(public_ip, ours.uplink_ip);
    let data: serde_json::Value = serde_json::from_str(&backend_data).unwrap();
    assert_eq!(data["VNI"], 1, "{backend_data}");
    let our_mac = data["VtepMAC"].as_str().unwrap().to_string();
    sh(&[
        "ip",
        "-n",
        n1,
        "neigh",
        "replace",
        "10.42.0.0",
        "lladdr",
        &our_mac,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    sh(&[
        "bridge",
        "-n",
        n1,
        "fdb",
        "replace",
        &our_mac,
        "dev",
        "flannel.1",
        "dst",
        &public_ip,
        "self",
        "permanent",
    ]);
    sh(&[
        "ip",
        "-n",
        n1,
        "route",
        "replace",
        &pod_cidr,
        "via",
        "10.42.0.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);

    // A pod on node-1 as the bridge plugin would attach it: cni0 with the
    // gateway address, a veth into the pod, MTU 1450.
    let pod = format!("{}n1hand", netns_prefix(lab.id()));
    hand_made_pod(
        n1,
        &pod,
        "10.42.1.1/24",
        "10.42.1.5/24",
        "10.42.1.1",
        "1450",
    );

    // Pods reach each other in both directions, across the two
    // implementations.
    let our_pod = lab.pods_on(0)[0].clone();
    let our_pod_ip = our_pod.ip.clone().unwrap();
    assert!(
        lab.ping(&our_pod.name, "10.42.1.5"),
        "our pod → hand-made pod"
    );
    assert!(lab.ping(&pod, &our_pod_ip), "hand-made pod → our pod");
    // And the hand-made node's own VTEP answers (10.42.1.0 on flannel.1).
    assert!(lab.ping(&our_pod.name, "10.42.1.0"));

    // Our agent did not touch what it does not own on its side either:
    // the FDB entry it made for the peer is the upstream-shaped one.
    let fdb = sh(&[
        "bridge",
        "-n",
        &ours.netns,
        "fdb",
        "show",
        "dev",
        "flannel.1",
    ]);
    assert!(
        fdb.contains(&format!("{HAND_MAC} dst 192.168.1.11 self permanent")),
        "{fdb}"
    );

    lab.down().unwrap();
    assert!(!Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&pod))
        .unwrap());
}
