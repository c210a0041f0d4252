//! The kube subnet manager against the test API server: lease wait,
//! annotations and condition as a user reads them with kubectl, peers
//! through malformed Nodes and through API faults.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flannel_embed::config::NetConf;
use flannel_embed::kube_subnet::{
    build_peer_set, watch_peers, watch_peers_with, AnnotationKeys, InitialList, Lease, PeerContext,
    PeerSnapshot, SlimNode,
};
use flannel_embed::{spawn, Config, Handle, MacAddr, Phase, Status};
use integration::apiserver::{ready_node, Options, TestApiServer, Verb};
use integration::fixtures::{annotated, vxlan_peer, without, NodeShape, PREFIX};
use integration::netns::TestNetns;
use k8s_openapi::api::core::v1::Node;
use tokio::sync::watch;

/// Polls `check` every 20 ms until it holds or `limit` passes.
async fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status_where(handle: &Handle, limit: Duration, what: impl Fn(&Status) -> bool) -> Status {
    let mut statuses = handle.watch_status();
    let reached = tokio::time::timeout(limit, statuses.wait_for(|s| what(s)))
        .await
        .map(|r| r.map(|status| status.clone()));
    match reached {
        Ok(Ok(status)) => status,
        _ => panic!("status never got there; last: {:?}", handle.status()),
    }
}

fn flannel_annotations(node: &Node) -> BTreeMap<String, String> {
    node.metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect()
}

struct Lab {
    server: TestApiServer,
    netns: TestNetns,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        Lab {
            server: TestApiServer::start(Options::default()).expect("test API server starts"),
            netns: TestNetns::new(tag).with_uplink("10.123.0.2/24", "10.123.0.1"),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn config(&self) -> Config {
        Config::builder("node-a")
            .data_dir(self.dir.path().join("data"))
            .subnet_file(self.dir.path().join("run/flannel/subnet.env"))
            .netns(self.netns.path())
            .build()
            .expect("valid config")
    }

    fn spawn(&self) -> Handle {
        spawn(self.server.client().expect("client"), self.config())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_and_condition_follow_the_pod_cidr_assignment() {
    let lab = Lab::new("ksm");
    lab.server.create_node(ready_node("node-a", None)).unwrap();
    let handle = lab.spawn();

    // No podCIDR for 3 s: the task waits (no crash, no annotations).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(handle.status().phase, Phase::WaitingForPodCidr);
    assert!(flannel_annotations(&lab.server.get_node("node-a").unwrap()).is_empty());
    let lists_and_watches = lab.server.requests(Verb::List) + lab.server.requests(Verb::Watch);
    assert!(
        lists_and_watches <= 4,
        "no polling while waiting: {lists_and_watches} list/watch calls"
    );

    let assigned = Instant::now();
    lab.server
        .update_node("node-a", |node| {
            let spec = node.spec.get_or_insert_with(Default::default);
            spec.pod_cidr = Some("10.42.0.0/24".into());
            spec.pod_cidrs = Some(vec!["10.42.0.0/24".into()]);
        })
        .unwrap();
    let node = eventually(Duration::from_secs(5), || {
        let node = lab.server.get_node("node-a")?;
        let up = node
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "NetworkUnavailable");
        (flannel_annotations(&node).len() == 4 && up).then_some(node)
    })
    .await
    .expect("annotations and condition appear");
    let took = assigned.elapsed();
    println!("annotations + condition {took:?} after the podCIDR assignment");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    let annotations = flannel_annotations(&node);
    let data = &annotations["flannel.alpha.coreos.com/backend-data"];
    let mac: MacAddr = data
        .strip_prefix(r#"{"VNI":1,"VtepMAC":""#)
        .and_then(|rest| rest.strip_suffix(r#""}"#))
        .expect("backend-data is flannel's vxlan JSON")
        .parse()
        .expect("VtepMAC is a MAC");
    assert_eq!(mac.0[0] & 0x03, 0x02, "locally administered unicast");
    assert_eq!(
        annotations,
        BTreeMap::from([
            (
                "flannel.alpha.coreos.com/backend-data".to_string(),
                format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)
            ),
            (
                "flannel.alpha.coreos.com/backend-type".to_string(),
                "vxlan".to_string()
            ),
            (
                "flannel.alpha.coreos.com/kube-subnet-manager".to_string(),
                "true".to_string()
            ),
            (
                "flannel.alpha.coreos.com/public-ip".to_string(),
                "10.123.0.2".to_string()
            ),
        ])
    );
    let conditions = node.status.unwrap().conditions.unwrap();
    let network = conditions
        .iter()
        .find(|c| c.type_ == "NetworkUnavailable")
        .unwrap();
    assert_eq!(
        (
            network.status.as_str(),
            network.reason.as_deref(),
            network.message.as_deref()
        ),
        (
            "False",
            Some("FlannelIsUp"),
            Some("Flannel is running on this node")
        )
    );
    assert!(network.last_transition_time.is_some() && network.last_heartbeat_time.is_some());
    let ready = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("kubelet's Ready survives");
    assert_eq!(ready.status, "True");

    let status = handle.status();
    assert_eq!(
        status.lease.map(|l| l.to_string()).as_deref(),
        Some("10.42.0.0/24")
    );
    assert_eq!(status.public_ip, Some("10.123.0.2".parse().unwrap()));
    assert!(handle.shutdown().await.is_ok());

    // A restart reuses the MAC and writes nothing: everything already holds.
    let patches = lab.server.requests(Verb::Patch);
    let handle = lab.spawn();
    status_where(&handle, Duration::from_secs(10), |s| s.peers_synced).await;
    assert_eq!(
        lab.server.requests(Verb::Patch),
        patches,
        "no patch when nothing differs"
    );
    assert_eq!(
        flannel_annotations(&lab.server.get_node("node-a").unwrap()),
        annotations
    );
    assert!(handle.shutdown().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peers_are_skipped_and_the_task_keeps_running() {
    let lab = Lab::new("ksmbad");
    lab.server
        .create_node(ready_node("node-a", Some("10.42.0.0/24")))
        .unwrap();
    let good = [vxlan_peer(1), vxlan_peer(2)];
    let mut outside = vxlan_peer(5);
    outside.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.99.0.0/24".into()]);
    let mut duplicate = vxlan_peer(6);
    duplicate.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.42.1.0/24".into()]);
    let malformed = [
        annotated(vxlan_peer(3), &[("backend-data", "{not json")]),
        annotated(
            vxlan_peer(4),
            &[("backend-data", r#"{"VNI":1,"VtepMAC":"not-a-mac"}"#)],
        ),
        annotated(vxlan_peer(7), &[("public-ip", "fd00::7")]),
        without(vxlan_peer(8), "public-ip"),
        outside,
        duplicate,
    ];
    lab.server.create_nodes(good.iter().cloned()).unwrap();
    lab.server.create_nodes(malformed.iter().cloned()).unwrap();

    let handle = lab.spawn();
    let status = status_where(&handle, Duration::from_secs(10), |s| s.peers_synced).await;
    assert_eq!(
        (status.peers_known, status.peers_skipped),
        (2, 6),
        "{status:?}"
    );

    // Fixing a Node makes it a peer; the task never stopped.
    lab.server
        .update_node("peer-8", |n| {
            n.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(format!("{PREFIX}public-ip"), "192.168.0.9".into());
        })
        .unwrap();
    let status = status_where(&handle, Duration::from_secs(5), |s| s.peers_known == 3).await;
    assert_eq!(status.peers_skipped, 5);
    assert_ne!(status.phase, Phase::Failed);
    assert!(handle.shutdown().await.is_ok());
}

fn peer_context(own: &str) -> PeerContext {
    PeerContext {
        own_name: own.into(),
        own_lease: Lease {
            ipv4: Some("10.42.0.0/24".parse().unwrap()),
            ipv6: None,
        },
        keys: AnnotationKeys::new(PREFIX),
        netconf: NetConf::parse(r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#)
            .unwrap(),
    }
}

/// What the peer set must be, computed from the server's own data.
fn expected_peers(
    server: &TestApiServer,
    ctx: &PeerContext,
) -> flannel_embed::kube_subnet::PeerSet {
    let nodes: Vec<SlimNode> = server.list_nodes().iter().map(SlimNode::from).collect();
    build_peer_set(&nodes, ctx).peers
}

async fn converges(
    server: &TestApiServer,
    ctx: &PeerContext,
    peers: &mut watch::Receiver<PeerSnapshot>,
    limit: Duration,
) -> Result<(), String> {
    let wanted = expected_peers(server, ctx);
    let reached = tokio::time::timeout(limit, peers.wait_for(|s| s.synced && *s.peers == wanted))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    match reached {
        true => Ok(()),
        false => Err(format!(
            "wanted {} peers, have {} (synced {})",
            wanted.len(),
            peers.borrow().peers.len(),
            peers.borrow().synced
        )),
    }
}

/// Deletes five peers, adds five, and moves five to a new public IP.
fn change_peers(server: &TestApiServer, round: u32) {
    for i in 0..5 {
        server
            .delete_node(&format!("peer-{}", round * 10 + i))
            .unwrap();
    }
    server
        .create_nodes((0..5).map(|i| vxlan_peer(1000 + round * 10 + i)))
        .unwrap();
    for i in 5..10 {
        server
            .update_node(&format!("peer-{}", round * 10 + i), |n| {
                n.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(format!("{PREFIX}public-ip"), format!("172.16.{round}.{i}"));
            })
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_set_converges_through_dropped_watches_errors_and_restarts() {
    // The test server reports 1.33 and serves streaming lists: the
    // automatic choice streams.
    let server = converges_through_faults(None, NodeShape::Minimal).await;
    let log = server.request_log();
    assert!(
        log.iter()
            .any(|r| r.verb == Verb::Watch && r.path.contains("sendInitialEvents=true")),
        "no streaming list in {log:#?}"
    );
    assert!(
        !log.iter().any(|r| r.verb == Verb::List),
        "a streaming watch lists nothing: {log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paged_list_watch_fallback_converges_through_faults_with_kubelet_nodes() {
    let server = converges_through_faults(Some(InitialList::ListWatch), NodeShape::Kubelet).await;
    let lists: Vec<String> = server
        .request_log()
        .into_iter()
        .filter(|r| r.verb == Verb::List)
        .map(|r| r.path)
        .collect();
    // From the watch cache (resourceVersion=0, one page), never a quorum
    // list; again after the compacted history's relist.
    assert!(lists.len() >= 2, "{lists:#?}");
    for path in &lists {
        assert!(path.contains("resourceVersion=0"), "{path}");
        assert!(!path.contains("limit="), "{path}");
    }
}

/// 300 peers in `shape` through dropped watches, 503s, a restart and a
/// compacted history, with the initial list `strategy` (`None`: chosen
/// from the server's version); returns the server for its request log.
async fn converges_through_faults(
    strategy: Option<InitialList>,
    shape: NodeShape,
) -> TestApiServer {
    let server = TestApiServer::start(Options::default()).unwrap();
    server
        .create_node(ready_node("node-a", Some("10.42.0.0/24")))
        .unwrap();
    server
        .create_nodes((1..=300).map(|i| shape.vxlan_peer(i)))
        .unwrap();
    let ctx = peer_context("node-a");
    let (publish, mut peers) = watch::channel(PeerSnapshot::default());
    let client = server.client().unwrap();
    let watcher = match strategy {
        None => tokio::spawn(watch_peers(
            client,
            ctx.clone(),
            publish,
            "test credential".into(),
            |_| {},
        )),
        Some(strategy) => tokio::spawn(watch_peers_with(
            client,
            ctx.clone(),
            publish,
            strategy,
            "test credential".into(),
            |_| {},
        )),
    };
    {
        converges(&server, &ctx, &mut peers, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(peers.borrow().peers.len(), 300);

        // All watches dropped, then 503 for 5 s while the cluster changes.
        server.drop_watches();
        server.fail_requests(503, Duration::from_secs(5));
        change_peers(&server, 1);
        let during = peers.borrow().peers.len();
        assert!(
            during >= 295,
            "the last good peer set stays while the API fails ({during})"
        );
        converges(&server, &ctx, &mut peers, Duration::from_secs(40))
            .await
            .expect("converges after the API recovers");

        // A server restart (same data, same port) while changes happen.
        change_peers(&server, 2);
        server.restart().unwrap();
        converges(&server, &ctx, &mut peers, Duration::from_secs(40))
            .await
            .expect("converges after a restart");

        // History compacted while the watch is down: the resume gets 410
        // and the watcher relists; deletions made meanwhile disappear.
        server.drop_watches();
        server.fail_requests(503, Duration::from_secs(2));
        change_peers(&server, 3);
        server.compact_history();
        converges(&server, &ctx, &mut peers, Duration::from_secs(40))
            .await
            .expect("converges after a relist");
    }
    assert!(
        !watcher.is_finished(),
        "the watch never ends or restarts on its own"
    );
    watcher.abort();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_keeps_its_peers_through_api_faults() {
    let lab = Lab::new("ksmfault");
    lab.server
        .create_node(ready_node("node-a", Some("10.42.0.0/24")))
        .unwrap();
    lab.server.create_nodes((1..=20).map(vxlan_peer)).unwrap();
    let handle = lab.spawn();
    status_where(&handle, Duration::from_secs(10), |s| {
        s.peers_synced && s.peers_known == 20
    })
    .await;

    lab.server.drop_watches();
    lab.server.fail_requests(503, Duration::from_secs(5));
    let _ = lab.server.delete_node("peer-1");
    lab.server.create_node(vxlan_peer(21)).unwrap();
    lab.server.create_node(vxlan_peer(22)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        handle.status().peers_known,
        20,
        "last good peer set kept during the outage"
    );
    status_where(&handle, Duration::from_secs(40), |s| s.peers_known == 21).await;
    assert_ne!(handle.status().phase, Phase::Failed);
    assert!(handle.shutdown().await.is_ok());
}
