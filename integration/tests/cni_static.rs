//! The `flannel` CNI plugin built statically by
//! `integration/build-static-cni.sh`, as a k3d node (FROM scratch: no
//! libc, no loader) needs it: no program interpreter, runs in an empty
//! root, and attaches and detaches a pod through the real bridge and
//! host-local plugins.

use std::fs;
use std::path::Path;
use std::process::Command;

use integration::builds::{elf_interpreter, static_cni_plugin};
use integration::cni_runner::{Attachment, CniNode, SYSTEM_CNI_DIR};
use integration::netns::TestNetns;

const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

#[test]
fn the_static_plugin_has_no_interpreter_runs_without_libc_and_attaches_a_pod() {
    let plugin = static_cni_plugin().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        elf_interpreter(&plugin).unwrap(),
        None,
        "{} asks for a program interpreter",
        plugin.display()
    );
    // The workspace's own build is dynamic: the check above can fail.
    assert!(elf_interpreter(&integration::workspace_bin("flannel"))
        .unwrap()
        .is_some());

    // An empty root, as in a FROM-scratch image: only the plugin.
    let root = tempfile::tempdir().unwrap();
    fs::copy(&plugin, root.path().join("flannel")).unwrap();
    // (Resolved before the environment is cleared for the plugin.)
    let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("chroot (coreutils)");
    let version = Command::new(chroot)
        .arg(root.path())
        .arg("/flannel")
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        r#"{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
    );

    // ADD and DEL from the static binary on CNI_PATH.
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("stcni", tmp.path()).unwrap();
    node.write_subnet_env(SUBNET_ENV).unwrap();
    let plugin_dir = plugin.parent().unwrap_or(Path::new("/"));
    let runner = node
        .runner()
        .clone()
        .with_cni_path(vec![plugin_dir.to_path_buf(), SYSTEM_CNI_DIR.into()]);
    let pod = TestNetns::new("stpod");
    let attachment = Attachment::new("static-plugin-pod", &pod.path());
    let result = runner.add(&attachment).unwrap();
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    assert!(address.starts_with("10.42.5."), "{result}");
    let inside = pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(inside.contains(address), "{inside}");
    let saved = node
        .sandbox()
        .flannel_data_dir()
        .join(&attachment.container_id);
    assert!(
        fs::read_to_string(&saved)
            .unwrap()
            .contains(r#""ranges":[[{"subnet":"10.42.5.0/24"}]]"#),
        "saved delegate"
    );
    runner.del(&attachment).unwrap();
    assert!(!saved.exists(), "DEL removes the saved config");
    assert!(
        !pod.exec("ip", &["link", "show", "eth0"]).status.success(),
        "DEL removes the pod's interface"
    );
}
