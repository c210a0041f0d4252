//! Faults that used to leave a task running, "ready" and no longer
//! converging: a lost netlink connection, a lost kernel monitor, one entry
//! the kernel keeps refusing, our Node's annotations and condition changed
//! with kubectl, our files deleted or unwritable. Two nodes in network
//! namespaces with their tasks in this process (NodePair); each case waits
//! for a positive signal and checks what an operator would (`ip route`, the
//! Node through kubectl, the file's bytes, the task's Status and log).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use flannel_embed::{Backend, Fault, Handle, Health, Part, Phase, Status};
use integration::fixtures::{means, ready_with_peer, route_to, vxlan_peer, within, NodePair};
use integration::{Finished, Running};

/// Everything the tasks in this test binary log (one global subscriber),
/// so a case can count its warnings.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("info")
            .with_writer(move || LogWriter(writer.clone()))
            .init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        std::io::stderr().write_all(bytes)?;
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The cases run one at a time: the log is shared, and each case's nodes
/// are called node-0 and node-1. Held for a whole case (its runtime ends,
/// with its tasks, before the next takes it).
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = SERIAL.lock().await;
    log().lock().unwrap().clear();
    guard
}

/// Log lines of node `node`'s task that contain every one of `words`.
fn log_lines(node: &str, words: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&log().lock().unwrap()).into_owned();
    let span = format!("node={node}");
    text.lines()
        .filter(|l| l.contains(&span) && words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

async fn wait_status(
    handle: &Handle,
    limit: Duration,
    what: &str,
    check: impl FnMut(&Status) -> bool,
) {
    let mut status = handle.watch_status();
    let reached = matches!(
        tokio::time::timeout(limit, status.wait_for(check)).await,
        Ok(Ok(_))
    );
    assert!(
        reached,
        "{what}: not within {limit:?}: {:?}",
        handle.status()
    );
}

async fn started(tag: &str) -> (NodePair, Handle, Handle) {
    log();
    let lab = NodePair::new(tag, Backend::Vxlan);
    let (h0, h1) = (lab.spawn(0), lab.spawn(1));
    ready_with_peer(&h0).await;
    ready_with_peer(&h1).await;
    wait_status(&h0, Duration::from_secs(5), "healthy", |s| {
        s.health == Health::Healthy
    })
    .await;
    (lab, h0, h1)
}

/// Both tasks shut down cleanly (nothing degraded ended them).
async fn stop(h0: Handle, h1: Handle) {
    for handle in [h0, h1] {
        assert_eq!(handle.shutdown().await.map_err(|e| e.to_string()), Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_netlink_connection_is_reopened_and_programs_new_peers() {
    let _serial = one_at_a_time().await;
    let (lab, h0, h1) = started("hfnl").await;
    assert!(h0.inject_fault(Fault::CutNetlink));
    wait_status(&h0, Duration::from_secs(5), "netlink reopened", |s| {
        s.sockets_reopened == 1 && s.problem(Part::Netlink).is_none()
    })
    .await;
    // A peer that joins afterwards is programmed through the new socket.
    lab.server.create_node(vxlan_peer(7)).unwrap();
    let took = within(Duration::from_secs(2), "the new peer's route", || {
        route_to(&lab.nodes[0], "10.42.7.0/24")
            .is_some_and(|r| means(&r, "10.42.7.0", "flannel.1", true))
    })
    .await;
    eprintln!("new peer programmed {took:?} after the netlink connection was reopened");
    assert_eq!(
        log_lines("node-0", &["WARN", "netlink connection"]).len(),
        1
    );
    assert_eq!(log_lines("node-0", &["netlink recovered"]).len(), 1);
    stop(h0, h1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_kernel_monitor_is_resubscribed_and_repairs_stay_fast() {
    let _serial = one_at_a_time().await;
    let (lab, h0, h1) = started("hfmon").await;
    assert!(h0.inject_fault(Fault::CutKernelMonitor));
    wait_status(&h0, Duration::from_secs(5), "monitor resubscribed", |s| {
        s.sockets_reopened == 1 && s.problem(Part::KernelMonitor).is_none()
    })
    .await;
    // Only a notification can bring this back before the 30 s resync.
    lab.nodes[0].ip(&["route", "del", "10.42.1.0/24"]);
    let took = within(Duration::from_secs(2), "the deleted route restored", || {
        route_to(&lab.nodes[0], "10.42.1.0/24")
            .is_some_and(|r| means(&r, "10.42.1.0", "flannel.1", true))
    })
    .await;
    eprintln!("route restored {took:?} after the kernel monitor was resubscribed");
    stop(h0, h1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_refusal_of_one_entry_backs_off_and_the_rest_converges() {
    let _serial = one_at_a_time().await;
    let (lab, h0, h1) = started("hfrej").await;
    let n0 = &lab.nodes[0];
    // A local address equal to peer-5's gateway: the kernel refuses its
    // route (or nexthop object) with "invalid gateway" for as long as the
    // address is there.
    n0.ip(&["addr", "add", "10.42.5.0/32", "dev", "lo"]);
    lab.server.create_node(vxlan_peer(5)).unwrap();
    wait_status(&h0, Duration::from_secs(5), "the refusal reported", |s| {
        s.peers_known == 2 && s.problem(Part::DataPath).is_some()
    })
    .await;
    let status = h0.status();
    let problem = status.problem(Part::DataPath).unwrap().clone();
    assert_eq!(status.health, Health::Degraded, "{status:?}");
    assert!(problem.message.contains("10.42.5.0"), "{problem}");
    // Peers, not operations: node-1 is programmed, peer-5 is not.
    assert_eq!(status.peers_programmed, 1, "{status:?}");
    assert!(route_to(n0, "10.42.1.0/24").is_some_and(|r| means(
        &r,
        "10.42.1.0",
        "flannel.1",
        true
    )));

    // Eight seconds of a lasting refusal: retries at +1, +3, +7 s (not
    // one a second), none of them dumps the kernel, one warning.
    let dumps_before = status.kernel_dumps;
    let mut passes = 0;
    let mut watch = h0.watch_status();
    let mut last = watch.borrow_and_update().last_reconcile;
    let window = tokio::time::Instant::now() + Duration::from_secs(8);
    while let Ok(Ok(())) = tokio::time::timeout_at(window, watch.changed()).await {
        let now = watch.borrow_and_update().last_reconcile;
        if now != last {
            passes += 1;
            last = now;
        }
    }
    let status = h0.status();
    eprintln!(
        "8 s of a refused route: {passes} passes, {} dumps",
        status.kernel_dumps - dumps_before
    );
    assert!((2..=4).contains(&passes), "{passes} passes in 8 s");
    assert_eq!(
        status.kernel_dumps, dumps_before,
        "retries dumped the kernel"
    );
    assert_eq!(
        status.problem(Part::DataPath).map(|p| p.since),
        Some(problem.since)
    );
    assert_eq!(log_lines("node-0", &["WARN", "part=data path"]).len(), 1);

    // The cause goes away: the next retry programs peer-5.
    n0.ip(&["addr", "del", "10.42.5.0/32", "dev", "lo"]);
    wait_status(&h0, Duration::from_secs(20), "recovered", |s| {
        s.peers_programmed == 2 && s.health == Health::Healthy
    })
    .await;
    assert!(route_to(n0, "10.42.5.0/24").is_some_and(|r| means(
        &r,
        "10.42.5.0",
        "flannel.1",
        true
    )));
    assert_eq!(log_lines("node-0", &["data path recovered"]).len(), 1);
    stop(h0, h1).await;
}

/// kubectl against the pair's API server.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> Finished {
    let mut command = Command::new("kubectl");
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .env_remove("KUBECONFIG");
    let finished = Running::start(command).wait(Duration::from_secs(30));
    assert!(
        finished.status.success(),
        "kubectl {args:?}: {}",
        finished.stderr
    );
    finished
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_removed_and_the_condition_flipped_with_kubectl_are_restored() {
    let _serial = one_at_a_time().await;
    let (lab, h0, h1) = started("hfnode").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = lab.server.write_kubeconfig(dir.path()).unwrap();
    let before = lab.server.get_node("node-0").unwrap();
    let flannel = |node: &k8s_openapi::api::core::v1::Node| {
        node.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with("flannel.alpha.coreos.com/"))
            .collect::<Vec<_>>()
    };
    let published = flannel(&before);
    assert!(published.len() >= 4, "{published:?}");
    let removals: Vec<String> = published.iter().map(|(k, _)| format!("{k}-")).collect();
    let mut args = vec!["annotate", "node", "node-0"];
    args.extend(removals.iter().map(String::as_str));
    kubectl(&kubeconfig, &args);
    kubectl(
        &kubeconfig,
        &[
            "patch",
            "node",
            "node-0",
            "--subresource=status",
            "--type=strategic",
            "-p",
            r#"{"status":{"conditions":[{"type":"NetworkUnavailable","status":"True","reason":"ByHand","message":"flipped by a test"}]}}"#,
        ],
    );
    let unavailable = |node: &k8s_openapi::api::core::v1::Node| {
        node.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "NetworkUnavailable").cloned())
            .map(|c| (c.status, c.reason.unwrap_or_default()))
    };
    let took = within(
        Duration::from_secs(2),
        "annotations and condition restored",
        || {
            lab.server.get_node("node-0").is_some_and(|n| {
                flannel(&n) == published
                    && unavailable(&n) == Some(("False".into(), "FlannelIsUp".into()))
            })
        },
    )
    .await;
    eprintln!("node-0's annotations and NetworkUnavailable restored in {took:?}");
    // Written at start and again after kubectl changed them (a third time
    // at most, when the two kubectl edits race with our first repair).
    let published_again = log_lines("node-0", &["published flannel annotations on node node-0"]);
    assert!(
        (2..=3).contains(&published_again.len()),
        "{published_again:#?}"
    );
    assert_eq!(
        log_lines("node-0", &["set NetworkUnavailable=False"]).len(),
        2
    );
    // What kubectl shows is the same.
    let shown = kubectl(
        &kubeconfig,
        &[
            "get",
            "node",
            "node-0",
            "-o",
            r"jsonpath={.metadata.annotations.flannel\.alpha\.coreos\.com/backend-data}",
        ],
    );
    let backend_data = published
        .iter()
        .find(|(k, _)| k.ends_with("/backend-data"))
        .map(|(_, v)| v.clone());
    assert_eq!(Some(shown.stdout.trim().to_string()), backend_data);
    assert_eq!(h0.status().health, Health::Healthy);
    stop(h0, h1).await;
}

/// `chattr +i` on a directory while alive: files in it can be neither
/// created nor renamed over, even by root. Undone on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn new(dir: &Path) -> Immutable {
        let status = Command::new("chattr").arg("+i").arg(dir).status().unwrap();
        assert!(status.success(), "chattr +i {}", dir.display());
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_deleted_come_back_and_an_unwritable_dir_degrades_without_exit() {
    let _serial = one_at_a_time().await;
    let (lab, h0, h1) = started("hffile").await;
    let config = lab.config(0);
    let subnet_env = lab.subnet_file(0);
    let conflist = config.cni_conflist_path();
    let netconf = config.netconf_path();
    let bytes = |p: &Path| std::fs::read(p).unwrap_or_default();
    let originals = [
        (subnet_env.clone(), bytes(&subnet_env)),
        (conflist.clone(), bytes(&conflist)),
        (netconf.clone(), bytes(&netconf)),
    ];
    for (path, content) in &originals {
        assert!(!content.is_empty(), "{} is written", path.display());
    }
    std::fs::remove_file(&subnet_env).unwrap();
    std::fs::remove_file(&conflist).unwrap();
    std::fs::write(&netconf, b"{}").unwrap();
    let took = within(Duration::from_secs(2), "the files back, same bytes", || {
        originals
            .iter()
            .all(|(path, content)| bytes(path) == *content)
    })
    .await;
    eprintln!("subnet.env, conflist and net-conf.json restored in {took:?}");

    // subnet.env's directory made unwritable, then the file changed.
    let dir = subnet_env.parent().unwrap().to_path_buf();
    let guard = Immutable::new(&dir);
    std::fs::write(&subnet_env, b"FLANNEL_NETWORK=garbage\n").unwrap();
    wait_status(&h0, Duration::from_secs(3), "files degraded", |s| {
        s.problem(Part::Files).is_some()
    })
    .await;
    let status = h0.status();
    let message = &status.problem(Part::Files).unwrap().message;
    assert!(
        message.contains(&subnet_env.display().to_string()),
        "{message}"
    );
    assert_eq!(
        (status.phase, status.health),
        (Phase::Running, Health::Degraded)
    );
    assert!(!status.is_ready() && status.is_live());
    // Still degraded, not ended, a few checks later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h0.status().phase, Phase::Running);
    assert_eq!(log_lines("node-0", &["WARN", "part=files"]).len(), 1);

    drop(guard);
    wait_status(&h0, Duration::from_secs(3), "files recovered", |s| {
        s.health == Health::Healthy
    })
    .await;
    assert_eq!(bytes(&subnet_env), originals[0].1);
    stop(h0, h1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renumbered_uplink_moves_the_vtep_the_public_ip_and_the_peers_view() {
    let _serial = one_at_a_time().await;
    let (lab, h0, h1) = started("hfaddr").await;
    let [n0, n1] = &lab.nodes;
    let mac0 = {
        let link = n0.ip(&["-o", "link", "show", "flannel.1"]);
        link.split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    // DHCP hands node-0 another address on the same segment: the old one
    // goes (and with the last address, the kernel flushes the routes
    // through eth0), the new one comes, the default route is back.
    n0.ip(&["addr", "del", "192.168.1.12/24", "dev", "eth0"]);
    n0.ip(&["addr", "add", "192.168.1.22/24", "dev", "eth0"]);
    n0.ip(&[
        "route",
        "replace",
        "default",
        "via",
        "192.168.1.1",
        "dev",
        "eth0",
        "onlink",
    ]);
    let public_ip = |lab: &NodePair| {
        lab.server.get_node("node-0").and_then(|n| {
            n.metadata
                .annotations
                .unwrap_or_default()
                .get("flannel.alpha.coreos.com/public-ip")
                .cloned()
        })
    };
    let fdb = |ns: &integration::netns::TestNetns| {
        String::from_utf8_lossy(
            &ns.exec("bridge", &["fdb", "show", "dev", "flannel.1"])
                .stdout,
        )
        .into_owned()
    };
    let took = within(
        Duration::from_secs(5),
        "local, public-ip and the peer's FDB follow",
        || {
            String::from_utf8_lossy(&n0.exec("ip", &["-d", "link", "show", "flannel.1"]).stdout)
                .contains("local 192.168.1.22 ")
                && public_ip(&lab).as_deref() == Some("192.168.1.22")
                && fdb(n1).contains(&format!("{mac0} dst 192.168.1.22 "))
                && !fdb(n1).contains("192.168.1.12")
        },
    )
    .await;
    eprintln!("the renumbered uplink was followed in {took:?}");
    // Same MAC (peers' neighbour entries stay right), traffic crosses.
    assert!(n0.ip(&["-o", "link", "show", "flannel.1"]).contains(&mac0));
    assert_eq!(h0.status().public_ip, Some("192.168.1.22".parse().unwrap()));
    let ping = n0.exec("ping", &["-c", "2", "-W", "2", "10.42.1.0"]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let back = n1.exec("ping", &["-c", "2", "-W", "2", "10.42.0.0"]);
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stdout)
    );
    assert_eq!(h0.status().health, Health::Healthy);
    stop(h0, h1).await;
}
