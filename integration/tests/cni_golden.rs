//! Golden tests through the real binary: upstream's four subnet.env files
//! (flannel-io/cni-plugin flannel_linux_test.go) run through the conflist
//! the agent writes, on a node namespace, for a real pod. The saved
//! delegate must hold exactly the keys and values upstream's plugin saves
//! for the same input, and the pod must get what that delegate asks for.

use std::fs;

use integration::cni_runner::{Attachment, CniNode};
use integration::netns::TestNetns;
use serde_json::{json, Value};

/// Upstream's expected delegate for its own input (`name` cni-flannel, no
/// cniVersion, no delegate keys) plus what k3s's conflist adds: the list's
/// name and cniVersion, and its three delegate keys. Upstream copies all
/// of those through unchanged, so this is what it saves for k3s's
/// conflist.
fn expected(upstream: Value) -> Value {
    let mut delegate = upstream;
    delegate["name"] = json!("cbr0");
    delegate["cniVersion"] = json!("1.0.0");
    delegate["hairpinMode"] = json!(true);
    delegate["forceAddress"] = json!(true);
    delegate["isDefaultGateway"] = json!(true);
    delegate
}

struct Case {
    tag: &'static str,
    subnet_env: &'static str,
    upstream_delegate: Value,
    pod_addresses: &'static [&'static str],
    pod_routes: &'static [&'static str],
}

fn run(case: Case) {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new(case.tag, tmp.path()).unwrap();
    node.write_subnet_env(case.subnet_env).unwrap();
    let pod = TestNetns::new(&format!("{}pod", case.tag));
    let id = format!("golden-{}", case.tag);
    let attachment = Attachment::new(&id, &pod.path());

    let result = node.runner().add(&attachment).unwrap();

    let saved_path = node.sandbox().flannel_data_dir().join(&id);
    let saved_text = fs::read_to_string(&saved_path).unwrap();
    let saved: Value = serde_json::from_str(&saved_text).unwrap();
    let wanted = expected(case.upstream_delegate);
    assert_eq!(saved, wanted, "{}", case.tag);
    // Byte order too: Go writes map keys sorted.
    let mut sorted_keys: Vec<&String> = wanted.as_object().unwrap().keys().collect();
    sorted_keys.sort();
    let saved_keys: Vec<&String> = saved.as_object().unwrap().keys().collect();
    assert_eq!(saved_keys, sorted_keys);

    let ips: Vec<&str> = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .collect();
    assert_eq!(ips, case.pod_addresses, "{result}");
    let addresses = pod.ip(&["-o", "addr", "show", "dev", "eth0"]);
    for address in case.pod_addresses {
        assert!(addresses.contains(address), "{address} not in {addresses}");
    }
    let routes = format!(
        "{}{}",
        pod.ip(&["-4", "route", "show"]),
        pod.ip(&["-6", "route", "show"])
    );
    for route in case.pod_routes {
        assert!(routes.contains(route), "{route:?} not in\n{routes}");
    }
    let mtu = pod.ip(&["link", "show", "eth0"]);
    assert!(mtu.contains("mtu 1472"), "{mtu}");

    node.runner().del(&attachment).unwrap();
    assert!(!saved_path.exists());
    let left: Vec<String> = fs::read_dir(node.sandbox().host_local_dir("cbr0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "lock" && !name.starts_with("last_reserved_ip"))
        .collect();
    assert!(left.is_empty(), "host-local still holds {left:?}");
}

#[test]
fn golden_ipv4() {
    run(Case {
        tag: "gv4",
        subnet_env: "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        upstream_delegate: json!({
            "ipMasq": false,
            "ipam": {
                "routes": [{"dst": "10.1.0.0/16"}],
                "ranges": [[{"subnet": "10.1.17.0/24"}]],
                "type": "host-local"
            },
            "isGateway": true,
            "mtu": 1472,
            "name": "cni-flannel",
            "type": "bridge"
        }),
        pod_addresses: &["10.1.17.2/24"],
        pod_routes: &[
            "default via 10.1.17.1 dev eth0",
            "10.1.0.0/16 via 10.1.17.1 dev eth0",
        ],
    });
}

#[test]
fn golden_ipv4_two_networks() {
    run(Case {
        tag: "gv4two",
        subnet_env: "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        upstream_delegate: json!({
            "ipMasq": false,
            "ipam": {
                "routes": [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}],
                "ranges": [[{"subnet": "10.1.17.0/24"}]],
                "type": "host-local"
            },
            "isGateway": true,
            "mtu": 1472,
            "name": "cni-flannel",
            "type": "bridge"
        }),
        pod_addresses: &["10.1.17.2/24"],
        pod_routes: &[
            "10.1.0.0/16 via 10.1.17.1 dev eth0",
            "192.168.0.0/16 via 10.1.17.1 dev eth0",
        ],
    });
}

#[test]
fn golden_ipv6_only() {
    run(Case {
        tag: "gv6",
        subnet_env: "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        upstream_delegate: json!({
            "ipMasq": false,
            "ipam": {
                "routes": [{"dst": "fc00::/48"}],
                "ranges": [[{"subnet": "fc00::/64"}]],
                "type": "host-local"
            },
            "isGateway": true,
            "mtu": 1472,
            "name": "cni-flannel",
            "type": "bridge"
        }),
        pod_addresses: &["fc00::2/64"],
        pod_routes: &["fc00::/48 via fc00::1 dev eth0", "default via fc00::1 dev eth0"],
    });
}

#[test]
fn golden_dual_stack() {
    run(Case {
        tag: "gdual",
        subnet_env: "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        upstream_delegate: json!({
            "ipMasq": false,
            "ipam": {
                "routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
                "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]],
                "type": "host-local"
            },
            "isGateway": true,
            "mtu": 1472,
            "name": "cni-flannel",
            "type": "bridge"
        }),
        pod_addresses: &["10.1.17.2/24", "fc00::2/64"],
        pod_routes: &[
            "10.1.0.0/16 via 10.1.17.1 dev eth0",
            "default via 10.1.17.1 dev eth0",
            "fc00::/48 via fc00::1 dev eth0",
            "default via fc00::1 dev eth0",
        ],
    });
}
