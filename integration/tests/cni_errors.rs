//! The plugin's protocol hygiene through the real binary: logs never on
//! stdout, a failed delegate DEL keeps the saved config for the retry, and
//! a bad delegate dictionary is a config error.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use integration::cni_runner::{workspace_cni_path, Attachment, CniNode, SYSTEM_CNI_DIR};
use integration::netns::TestNetns;
use serde_json::{json, Value};

const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

#[test]
fn logs_go_to_stderr_and_stdout_holds_only_the_result() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cnilog", tmp.path()).unwrap();
    node.write_subnet_env(SUBNET_ENV).unwrap();
    let pod = TestNetns::new("cnilogpod");
    let attachment = Attachment::new("chatty", &pod.path());
    let runner = node.runner().clone().with_env("RUST_LOG", "trace");
    let conf = runner.list().plugin_conf("flannel").unwrap().to_string();

    let added = runner
        .invoke("flannel", "ADD", conf.as_bytes(), Some(&attachment))
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    // Exactly one JSON document on stdout ...
    let result: Value = serde_json::from_str(&added.stdout).unwrap();
    assert_eq!(result["cniVersion"], "1.0.0");
    // ... while the debug logs (with the delegate config) went to stderr.
    assert!(added.stderr.contains("delegate config"), "{}", added.stderr);

    let deleted = runner
        .invoke("flannel", "DEL", conf.as_bytes(), Some(&attachment))
        .unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    assert_eq!(deleted.stdout, "");

    // An error is one JSON object too.
    let failed = runner
        .invoke("flannel", "ADD", b"{not json", Some(&attachment))
        .unwrap();
    assert!(!failed.status.success());
    let error: Value = serde_json::from_str(&failed.stdout).unwrap();
    assert_eq!(error["code"], 6);
}

#[test]
fn a_failed_delegate_del_keeps_the_saved_config_for_the_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cnidelfail", tmp.path()).unwrap();
    node.write_subnet_env(SUBNET_ENV).unwrap();
    let pod = TestNetns::new("cnidelfailpod");
    let attachment = Attachment::new("retry-me", &pod.path());
    node.runner().add(&attachment).unwrap();
    let saved = node.sandbox().flannel_data_dir().join("retry-me");
    assert!(saved.exists());

    // A bridge whose DEL fails (busy), found first on CNI_PATH.
    let shim_dir = tmp.path().join("shim");
    fs::create_dir_all(&shim_dir).unwrap();
    let shim = shim_dir.join("bridge");
    fs::write(
        &shim,
        format!(
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = DEL ]; then printf '{{\"code\":11,\"msg\":\"bridge busy\"}}'; exit 1; fi\nexec {SYSTEM_CNI_DIR}/bridge\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    let mut cni_path: Vec<PathBuf> = vec![shim_dir];
    cni_path.extend(workspace_cni_path());
    let failing = node.runner().clone().with_cni_path(cni_path);

    let error = failing.del(&attachment).unwrap_err();
    assert_eq!(error.cni_code(), Some(11), "{error}");
    assert!(
        error.cni_msg().unwrap_or_default().contains("bridge busy"),
        "{error}"
    );
    // Upstream removes the file here and the pod's address leaks; we keep
    // it so the runtime's retry can finish the job.
    assert!(saved.exists());
    assert!(pod.exec("ip", &["link", "show", "eth0"]).status.success());

    node.runner().del(&attachment).unwrap();
    assert!(!saved.exists());
    assert!(!pod.exec("ip", &["link", "show", "eth0"]).status.success());
}

#[test]
fn a_delegate_dictionary_with_name_or_ipam_is_a_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cnibaddel", tmp.path()).unwrap();
    node.write_subnet_env(SUBNET_ENV).unwrap();
    let pod = TestNetns::new("cnibaddelpod");
    let attachment = Attachment::new("bad-delegate", &pod.path());
    for (delegate, wanted) in [
        (json!({"name": "mine"}), "must not have 'name' field"),
        (
            json!({"ipam": {"type": "dhcp"}}),
            "must not have 'ipam' field",
        ),
        (json!({"type": 7}), "(string) 'type' field"),
    ] {
        // An operator's --flannel-cni-conf with such a delegate.
        let mut list = node.runner().list().clone();
        list.set_plugin_key("flannel", "delegate", delegate)
            .unwrap();
        let error = node
            .runner()
            .clone()
            .with_list(list)
            .add(&attachment)
            .unwrap_err();
        assert_eq!(error.cni_code(), Some(7), "{error}");
        assert!(
            error.cni_msg().unwrap_or_default().contains(wanted),
            "{error}"
        );
    }
    assert!(!node.sandbox().flannel_data_dir().exists());
}
