//! CNI versions through the real binary: VERSION, an unsupported version,
//! ADD/CHECK/DEL at every supported version with the result converted to
//! it, and 1.1.0's STATUS and GC.

use std::fs;

use integration::cni_runner::{Attachment, CniNode, ConfList, Runner};
use integration::netns::TestNetns;
use serde_json::{json, Value};

const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// The agent's conflist with only the flannel entry, at `version` (what a
/// host's `--flannel-cni-conf` with another version gives; portmap and
/// bandwidth v1.1.1 stop at 1.0.0, so they are left out).
fn flannel_only(node: &CniNode, version: &str) -> Runner {
    let mut list: ConfList = node.runner().list().clone();
    list.retain_plugins(&["flannel"]).set_cni_version(version);
    node.runner().clone().with_list(list)
}

fn reservations(node: &CniNode) -> Vec<String> {
    fs::read_dir(node.sandbox().host_local_dir("cbr0"))
        .map(|list| {
            list.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name != "lock" && !name.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn version_lists_the_supported_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cniver", tmp.path()).unwrap();
    for asked in ["1.0.0", "0.3.1", "9.9.9"] {
        let stdin = json!({ "cniVersion": asked }).to_string();
        let done = node
            .runner()
            .invoke("flannel", "VERSION", stdin.as_bytes(), None)
            .unwrap();
        assert!(done.status.success(), "{done:?}");
        let info: Value = serde_json::from_str(&done.stdout).unwrap();
        assert_eq!(
            info,
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}

#[test]
fn an_unsupported_version_gets_error_code_1_and_nothing_happens() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cniverbad", tmp.path()).unwrap();
    node.write_subnet_env(SUBNET_ENV).unwrap();
    let pod = TestNetns::new("cniverbadpod");
    let attachment = Attachment::new("old-runtime", &pod.path());
    for version in ["0.2.0", "0.1.0", "1.2.0"] {
        let error = flannel_only(&node, version).add(&attachment).unwrap_err();
        assert_eq!(error.cni_code(), Some(1), "{version}: {error}");
        assert_eq!(error.cni_msg(), Some("incompatible CNI versions"));
        let text = error.to_string();
        assert!(
            text.contains(&format!("config is \\\"{version}\\\"")) && text.contains("1.1.0"),
            "{text}"
        );
    }
    assert!(!node.sandbox().flannel_data_dir().exists());
    assert!(!pod.exec("ip", &["link", "show", "eth0"]).status.success());
}

#[test]
fn every_supported_version_adds_checks_and_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cnivers", tmp.path()).unwrap();
    node.write_subnet_env(SUBNET_ENV).unwrap();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let runner = flannel_only(&node, version);
        let pod = TestNetns::new("cniverspod");
        let id = format!("v{}", version.replace('.', ""));
        let attachment = Attachment::new(&id, &pod.path());

        // The runner insists the result has the list's cniVersion.
        let result = runner.add(&attachment).unwrap();
        assert_eq!(result["cniVersion"], version);
        let ip = &result["ips"][0];
        if version.starts_with("0.") {
            assert_eq!(ip["version"], "4", "{version}: {result}");
        } else {
            assert_eq!(ip.get("version"), None, "{version}: {result}");
        }
        let address = ip["address"].as_str().unwrap();
        assert!(address.starts_with("10.42.5."), "{result}");

        // The delegate is asked for the same version; bridge v1.1.1 does
        // not speak 1.1.0, so that one is negotiated down to 1.0.0.
        let saved: Value =
            serde_json::from_slice(&fs::read(node.sandbox().flannel_data_dir().join(&id)).unwrap())
                .unwrap();
        let delegate_version = if version == "1.1.0" { "1.0.0" } else { version };
        assert_eq!(saved["cniVersion"], delegate_version);

        if version != "0.3.0" && version != "0.3.1" {
            runner.check(&attachment).unwrap();
        }
        runner.del(&attachment).unwrap();
        assert!(!node.sandbox().flannel_data_dir().join(&id).exists());
        assert!(reservations(&node).is_empty(), "{version}");
    }
}

#[test]
fn status_reports_whether_add_can_work() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cnistatus", tmp.path()).unwrap();
    let runner = flannel_only(&node, "1.1.0");
    let error = runner.status().unwrap_err();
    assert_eq!(error.cni_code(), Some(50), "{error}");
    assert!(
        error
            .cni_msg()
            .unwrap_or_default()
            .contains("check the flannel agent on this node"),
        "{error}"
    );
    node.write_subnet_env(SUBNET_ENV).unwrap();
    runner.status().unwrap();
    // An older version does not know STATUS.
    let error = flannel_only(&node, "1.0.0").status().unwrap_err();
    assert_eq!(error.cni_code(), Some(1), "{error}");
}

#[test]
fn gc_tears_down_attachments_the_runtime_no_longer_knows() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cnigc", tmp.path()).unwrap();
    node.write_subnet_env(SUBNET_ENV).unwrap();
    let runner = flannel_only(&node, "1.1.0");
    let keep_pod = TestNetns::new("cnigckeep");
    let gone_pod = TestNetns::new("cnigcgone");
    let keep = Attachment::new("keep", &keep_pod.path());
    let gone = Attachment::new("gone", &gone_pod.path());
    runner.add(&keep).unwrap();
    let gone_ip = runner.add(&gone).unwrap()["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // A saved config of another network sharing the dataDir is not ours.
    let other = node.sandbox().flannel_data_dir().join("other-network");
    fs::write(&other, br#"{"name":"other","type":"bridge"}"#).unwrap();
    // The pod went away without a DEL (node crash): its netns is gone.
    drop(gone_pod);
    assert_eq!(reservations(&node).len(), 2);

    runner.gc(std::slice::from_ref(&keep)).unwrap();

    let data_dir = node.sandbox().flannel_data_dir();
    assert!(data_dir.join("keep").exists());
    assert!(!data_dir.join("gone").exists());
    assert!(other.exists());
    let left = reservations(&node);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left.contains(&gone_ip), "{left:?}");
    runner.del(&keep).unwrap();
    assert!(reservations(&node).is_empty());
}
