//! Many pods starting and stopping at once on one node, as a kubelet does
//! after a node reboot: every ADD succeeds with its own address, and the
//! DELs leave no state behind.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use integration::cni_runner::{Attachment, CniNode};
use integration::netns::TestNetns;

const PODS: usize = 20;

fn entries(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(list) => list
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn summary(label: &str, mut times: Vec<Duration>, wall: Duration) {
    times.sort();
    eprintln!(
        "{label}: {} concurrent, wall {wall:?}, per call min {:?} median {:?} max {:?}",
        times.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[test]
fn twenty_concurrent_adds_get_distinct_addresses_and_dels_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CniNode::new("cniconc", tmp.path()).unwrap();
    node.write_subnet_env(
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let pods: Vec<TestNetns> = (0..PODS)
        .map(|i| TestNetns::new(&format!("cpod{i}")))
        .collect();
    let attachments: Vec<Attachment> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| Attachment::new(&format!("concurrent-{i:02}"), &pod.path()))
        .collect();
    let runner = node.runner();

    let wall = Instant::now();
    let added: Vec<(Result<serde_json::Value, String>, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = attachments
            .iter()
            .map(|a| {
                scope.spawn(move || {
                    let started = Instant::now();
                    let result = runner.add(a).map_err(|e| e.to_string());
                    (result, started.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    summary(
        "conflist ADD",
        added.iter().map(|(_, t)| *t).collect(),
        wall.elapsed(),
    );

    let mut addresses = HashSet::new();
    for (i, (result, _)) in added.iter().enumerate() {
        let result = result.as_ref().unwrap_or_else(|e| panic!("ADD {i}: {e}"));
        let address = result["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(
            address.starts_with("10.42.3.") && address.ends_with("/24"),
            "{address}"
        );
        assert!(
            addresses.insert(address.clone()),
            "{address} handed out twice"
        );
        let shown = pods[i].ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(shown.contains(&address), "pod {i}: {shown}");
    }
    assert_eq!(addresses.len(), PODS);
    let ports = node.netns.ip(&["-o", "link", "show", "master", "cni0"]);
    assert_eq!(ports.lines().count(), PODS, "{ports}");
    assert_eq!(entries(&node.sandbox().flannel_data_dir()).len(), PODS);

    let wall = Instant::now();
    let deleted: Vec<(Result<(), String>, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = attachments
            .iter()
            .map(|a| {
                scope.spawn(move || {
                    let started = Instant::now();
                    let result = runner.del(a).map_err(|e| e.to_string());
                    (result, started.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    summary(
        "conflist DEL",
        deleted.iter().map(|(_, t)| *t).collect(),
        wall.elapsed(),
    );
    for (i, (result, _)) in deleted.iter().enumerate() {
        result.as_ref().unwrap_or_else(|e| panic!("DEL {i}: {e}"));
    }

    // Nothing left: no veth on cni0, no eth0 in a pod, no reservation, no
    // saved delegate, no cached result.
    let ports = node.netns.ip(&["-o", "link", "show", "master", "cni0"]);
    assert!(ports.trim().is_empty(), "{ports}");
    for (i, pod) in pods.iter().enumerate() {
        assert!(
            !pod.exec("ip", &["link", "show", "eth0"]).status.success(),
            "pod {i}"
        );
    }
    let reservations: Vec<String> = entries(&node.sandbox().host_local_dir("cbr0"))
        .into_iter()
        .filter(|name| name != "lock" && !name.starts_with("last_reserved_ip"))
        .collect();
    assert!(reservations.is_empty(), "{reservations:?}");
    assert!(entries(&node.sandbox().flannel_data_dir()).is_empty());
    assert!(entries(&node.sandbox().var_lib().join("cni/results")).is_empty());
}
