//! Faults in a running lab: entries deleted by hand come back, Nodes that
//! go away take their entries with them (also while the agent was down),
//! and a peer's new public IP moves its FDB entry. The "within N s"
//! deadlines are the issue's.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use integration::fixtures::PREFIX;
use integration::lab::kernel::PeerView;
use integration::lab::util::poll;
use integration::lab::{Lab, Options};

fn lab(tag: &str, dir: &std::path::Path, nodes: usize) -> Lab {
    let mut options = Options::for_tests(tag, dir);
    options.nodes = nodes;
    options.pods_per_node = 0;
    options.wait = Duration::from_secs(20);
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    // Everyone has everyone before the faults start.
    let table = lab.wait_peers_programmed(Duration::from_secs(10));
    assert!(table.everyone_has_everyone(), "{}", table.render());
    lab
}

fn peers_of(lab: &Lab, index: usize) -> Vec<PeerView> {
    (0..lab.nodes().len())
        .filter(|&i| i != index)
        .map(|i| lab.peer_view(i).unwrap().unwrap())
        .collect()
}

/// Polls until node `index` has flannel.1 with `mac`, the lease address and
/// every peer's three entries; returns how long it took.
fn wait_complete(
    lab: &Lab,
    index: usize,
    mac: &str,
    peers: &[PeerView],
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let network = lab.node(index).pod_cidr.replace("/24", "/32");
    let done = poll(limit, || {
        let kernel = lab.kernel(index).ok()?;
        let vtep = kernel.vtep.as_ref()?;
        let ok = vtep.mac == mac
            && vtep.up
            && vtep.addrs.contains(&network)
            && peers.iter().all(|p| kernel.entries_for(p).complete());
        ok.then_some(())
    });
    let took = started.elapsed();
    assert!(
        done.is_some(),
        "node-{index} not complete after {limit:?}: {:?}",
        lab.kernel(index)
    );
    took
}

fn bridge(lab: &Lab, index: usize, args: &[&str]) {
    let out = Command::new("bridge")
        .arg("-n")
        .arg(&lab.node(index).netns)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bridge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn entries_deleted_by_hand_come_back_within_two_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let lab = lab("repair", &tmp.path().join("lab"), 3);
    let peers = peers_of(&lab, 0);
    let own_mac = lab.peer_view(0).unwrap().unwrap().vtep_mac;
    let limit = Duration::from_secs(2);
    let peer = &peers[0];
    let peer_network = peer.pod_cidr.trim_end_matches("/24").to_string();

    // flannel.1 deleted: recreated (same MAC, the one in backend-data) with
    // every peer.
    lab.ip(0, &["link", "del", "flannel.1"]).unwrap();
    let took = wait_complete(&lab, 0, &own_mac, &peers, limit);
    eprintln!("flannel.1 recreated with {} peers in {took:?}", peers.len());
    let vtep = lab.kernel(0).unwrap().vtep.unwrap();
    assert_eq!(
        (vtep.vni, vtep.port, vtep.learning, vtep.mtu),
        (1, 8472, false, 1450)
    );

    // A peer's route.
    lab.ip(0, &["route", "del", &peer.pod_cidr]).unwrap();
    let took = wait_complete(&lab, 0, &own_mac, &peers, limit);
    eprintln!("route restored in {took:?}");

    // A peer's neighbour.
    lab.ip(0, &["neigh", "del", &peer_network, "dev", "flannel.1"])
        .unwrap();
    let took = wait_complete(&lab, 0, &own_mac, &peers, limit);
    eprintln!("neighbour restored in {took:?}");

    // A peer's FDB entry.
    bridge(
        &lab,
        0,
        &[
            "fdb",
            "del",
            &peer.vtep_mac,
            "dev",
            "flannel.1",
            "dst",
            &peer.public_ip,
            "self",
        ],
    );
    let took = wait_complete(&lab, 0, &own_mac, &peers, limit);
    eprintln!("FDB entry restored in {took:?}");

    // All three at once, on another node.
    let peers1 = peers_of(&lab, 1);
    let mac1 = lab.peer_view(1).unwrap().unwrap().vtep_mac;
    let p = &peers1[1];
    let network = p.pod_cidr.trim_end_matches("/24").to_string();
    lab.ip(1, &["route", "del", &p.pod_cidr]).unwrap();
    lab.ip(1, &["neigh", "del", &network, "dev", "flannel.1"])
        .unwrap();
    bridge(
        &lab,
        1,
        &[
            "fdb",
            "del",
            &p.vtep_mac,
            "dev",
            "flannel.1",
            "dst",
            &p.public_ip,
            "self",
        ],
    );
    let took = wait_complete(&lab, 1, &mac1, &peers1, limit);
    eprintln!("route + neighbour + FDB restored in {took:?}");

    lab.down().unwrap();
}

#[test]
fn node_deletions_and_public_ip_changes_reach_every_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = lab("nodes", &tmp.path().join("lab"), 4);
    let views: Vec<PeerView> = (0..4).map(|i| lab.peer_view(i).unwrap().unwrap()).collect();

    // Deleting a Node (node-3 leaves the cluster): its three entries are
    // gone from every other node within 1 s; the others stay.
    lab.stop_agent(3);
    lab.api().unwrap().delete("node-3").unwrap();
    let deleted = Instant::now();
    for index in 0..3 {
        let gone = poll(
            Duration::from_secs(1).saturating_sub(deleted.elapsed()),
            || {
                let kernel = lab.kernel(index).ok()?;
                kernel.mentions(&views[3]).none().then_some(())
            },
        );
        assert!(
            gone.is_some(),
            "node-{index} still has node-3's entries 1 s after the deletion: {:?}",
            lab.kernel(index).unwrap().mentions(&views[3])
        );
    }
    eprintln!(
        "node-3's entries gone everywhere {:?} after the deletion",
        deleted.elapsed()
    );
    for index in 0..3 {
        let kernel = lab.kernel(index).unwrap();
        for other in (0..3).filter(|&o| o != index) {
            assert!(
                kernel.entries_for(&views[other]).complete(),
                "node-{index} lost node-{other}"
            );
        }
    }

    // The agent is down while a Node is deleted: the entries stay (nobody
    // runs), and the restarted agent removes them.
    lab.stop_agent(0);
    lab.stop_agent(2);
    lab.api().unwrap().delete("node-2").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stale = lab.kernel(0).unwrap().entries_for(&views[2]);
    assert!(
        stale.complete(),
        "nothing ran, so node-2's entries are still there: {stale:?}"
    );
    let restarted = Instant::now();
    lab.start_agent(0).unwrap();
    let cleaned = poll(Duration::from_secs(10), || {
        let kernel = lab.kernel(0).ok()?;
        (kernel.mentions(&views[2]).none() && kernel.entries_for(&views[1]).complete())
            .then_some(())
    });
    assert!(
        cleaned.is_some(),
        "the restarted agent left node-2's stale entries: {:?}",
        lab.kernel(0).unwrap()
    );
    eprintln!(
        "stale entries removed {:?} after the restart",
        restarted.elapsed()
    );
    let kernel = lab.kernel(0).unwrap();
    assert_eq!(
        kernel.vtep.as_ref().map(|v| v.mac.as_str()),
        Some(views[0].vtep_mac.as_str())
    );

    // A peer's public IP changes (node-1 comes back on another address):
    // node-0's FDB entry for its MAC points at the new address.
    lab.stop_agent(1);
    let new_ip = "192.168.1.99".to_string();
    lab.api()
        .unwrap()
        .annotate(
            "node-1",
            &BTreeMap::from([(format!("{PREFIX}public-ip"), Some(new_ip.clone()))]),
        )
        .unwrap();
    let changed = Instant::now();
    let moved = PeerView {
        public_ip: new_ip.clone(),
        ..views[1].clone()
    };
    let done = poll(Duration::from_secs(5), || {
        let kernel = lab.kernel(0).ok()?;
        let old = kernel
            .fdb
            .iter()
            .any(|f| f.mac == views[1].vtep_mac && f.dst.as_deref() == Some("192.168.1.11"));
        (kernel.entries_for(&moved).complete() && !old).then_some(())
    });
    assert!(
        done.is_some(),
        "node-0's FDB entry for node-1 does not point at {new_ip}: {:?}",
        lab.kernel(0).unwrap().fdb
    );
    eprintln!("FDB entry moved to {new_ip} in {:?}", changed.elapsed());

    lab.down().unwrap();
}
