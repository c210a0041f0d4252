//! The `flannel` CNI plugin run the way a container runtime runs it: the
//! conflist the agent writes, executed plugin by plugin (flannel → the real
//! bridge/host-local, then portmap and bandwidth) on a node that is a
//! network namespace, for a pod that is another one.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use integration::cni_runner::{Attachment, CniNode};
use integration::netns::TestNetns;
use serde_json::{json, Value};

/// k3s's subnet.env for the seed's first node.
const K3S_SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// The delegate upstream's plugin saves for k3s's conflist and that
/// subnet.env: the seed article's file plus k3s's `forceAddress` and
/// cniVersion 1.0.0, keys sorted as Go writes them.
const K3S_SAVED_DELEGATE: &str = r#"{"cniVersion":"1.0.0","forceAddress":true,"hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.42.0.0/24"}]],"routes":[{"dst":"10.42.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#;

fn pod_address(result: &Value) -> String {
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    address.split('/').next().unwrap_or_default().to_string()
}

fn iptables_nat(node: &CniNode) -> String {
    let out = node.netns.exec("iptables", &["-t", "nat", "-S"]);
    assert!(
        out.status.success(),
        "iptables: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn k3s_conflist_attaches_a_pod_to_cni0_and_del_removes_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cninode", tmp.path()).unwrap();
    node.write_subnet_env(K3S_SUBNET_ENV).unwrap();
    assert_eq!(
        node.runner().list().plugin_types(),
        ["flannel", "portmap", "bandwidth"]
    );
    let pod = TestNetns::new("cnipod");
    let id = "e4239ab2706ed9191543a5c7f1ef06fc";
    let attachment = Attachment::new(id, &pod.path()).with_capability(
        "portMappings",
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );

    let started = Instant::now();
    let result = node.runner().add(&attachment).unwrap();
    eprintln!(
        "conflist ADD (flannel+bridge+host-local, portmap, bandwidth): {:?}",
        started.elapsed()
    );

    // The result, at the conflist's version (no ips[].version at 1.0.0).
    assert_eq!(result["cniVersion"], "1.0.0");
    let ip = pod_address(&result);
    assert!(ip.starts_with("10.42.0."), "{result}");
    assert_eq!(result["ips"][0]["address"], format!("{ip}/24"));
    assert_eq!(result["ips"][0]["gateway"], "10.42.0.1");
    assert_eq!(result["ips"][0].get("version"), None);
    let interfaces: Vec<&str> = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(interfaces[0], "cni0");
    assert_eq!(interfaces[2], "eth0");

    // Pod side: eth0 with the address and the flannel MTU, routes to the
    // cluster network and default via the bridge.
    let addr = pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("inet {ip}/24")), "{addr}");
    let link = pod.ip(&["link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
    let routes = pod.ip(&["-4", "route", "show"]);
    assert!(
        routes.contains("default via 10.42.0.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.42.0.0/16 via 10.42.0.1 dev eth0"),
        "{routes}"
    );

    // Node side: cni0 with the gateway address, the pod's veth on it with
    // hairpin on.
    let bridge = node.netns.ip(&["-4", "-o", "addr", "show", "dev", "cni0"]);
    assert!(bridge.contains("inet 10.42.0.1/24"), "{bridge}");
    let ports = node.netns.ip(&["-d", "link", "show", "master", "cni0"]);
    assert!(ports.contains("veth"), "{ports}");
    assert!(ports.contains("hairpin on"), "{ports}");

    // The saved delegate: upstream's bytes, 0600 in a 0700 directory.
    let data_dir = node.sandbox().flannel_data_dir();
    let saved_path = data_dir.join(id);
    assert_eq!(fs::read_to_string(&saved_path).unwrap(), K3S_SAVED_DELEGATE);
    assert_eq!(fs::metadata(&saved_path).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(&data_dir).unwrap().mode() & 0o777, 0o700);

    // host-local's reservation, in the node's own /var/lib.
    let reservation = node.sandbox().host_local_dir("cbr0").join(&ip);
    let owner = fs::read_to_string(&reservation).unwrap();
    assert!(owner.starts_with(id), "{owner:?}");

    // portmap got flannel's result as prevResult: its DNAT names the pod.
    let nat = iptables_nat(&node);
    assert!(nat.contains(&format!("{ip}:80")), "{nat}");

    // CHECK through the flannel entry (the delegate's real CHECK with the
    // cached result). portmap v1.1.1's own CHECK looks for an IPv6 DNAT
    // chain on a v4-only pod and fails, so it is left out here.
    let mut flannel_only = node.runner().list().clone();
    flannel_only.retain_plugins(&["flannel"]);
    let checker = node.runner().clone().with_list(flannel_only);
    checker.check(&attachment).unwrap();
    // A real check: with the cluster route gone from the pod it fails.
    pod.ip(&["route", "del", "10.42.0.0/16"]);
    let error = checker.check(&attachment).unwrap_err();
    assert!(
        error.cni_msg().unwrap_or_default().contains("10.42.0.0"),
        "{error}"
    );
    pod.ip(&[
        "route",
        "add",
        "10.42.0.0/16",
        "via",
        "10.42.0.1",
        "dev",
        "eth0",
    ]);
    checker.check(&attachment).unwrap();

    let started = Instant::now();
    node.runner().del(&attachment).unwrap();
    eprintln!("conflist DEL: {:?}", started.elapsed());

    assert!(!pod.exec("ip", &["link", "show", "eth0"]).status.success());
    let ports = node.netns.ip(&["link", "show", "master", "cni0"]);
    assert!(ports.trim().is_empty(), "{ports}");
    assert!(!reservation.exists(), "host-local still holds {ip}");
    assert!(!saved_path.exists());
    assert!(!iptables_nat(&node).contains(&format!("{ip}:80")));
    assert_eq!(node.runner().cached_result(&attachment).unwrap(), None);

    // A second DEL (runtimes retry) succeeds.
    node.runner().del(&attachment).unwrap();
}

#[test]
fn without_subnet_env_add_fails_naming_the_file_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cninoenv", tmp.path()).unwrap();
    let pod = TestNetns::new("cninoenvpod");
    let attachment = Attachment::new("nosubnet", &pod.path());

    let error = node.runner().add(&attachment).unwrap_err();
    let subnet_file = node.subnet_file();
    let failure = error.plugin_failure().unwrap_or_else(|| panic!("{error}"));
    assert_eq!(failure.plugin, "flannel");
    assert_eq!(failure.code, 11, "{error}");
    assert!(
        failure.msg.contains(subnet_file.to_str().unwrap()),
        "{error}"
    );
    assert!(
        failure.msg.contains("check the flannel agent on this node"),
        "{error}"
    );
    // Nothing behind: no saved delegate, no reservation, no bridge, no
    // interface in the pod, no cached result.
    assert!(!node.sandbox().flannel_data_dir().exists());
    assert!(!node.sandbox().host_local_dir("cbr0").exists());
    assert!(!node
        .netns
        .exec("ip", &["link", "show", "cni0"])
        .status
        .success());
    assert!(!pod.exec("ip", &["link", "show", "eth0"]).status.success());
    assert_eq!(node.runner().cached_result(&attachment).unwrap(), None);
    // The runtime's clean-up DEL succeeds.
    node.runner().del(&attachment).unwrap();
}
