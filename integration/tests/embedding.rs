//! flannel-embed linked the way a distribution links it: the host crates
//! under `integration/embedders` (their own workspace, their own
//! Kubernetes API version v1_34 where these tests use v1_33) are built
//! with cargo here, then run as an operator would run them.

use std::fs;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use flannel_embed::config::{render_k3s_netconf, ClusterCidrs};
use flannel_embed::Backend;
use integration::builds::{build_embedder, embedder_tree};
use integration::cni_runner::{Attachment, CniNode, SYSTEM_CNI_DIR};
use integration::fixtures::{means, ready_with_peer, route_to, within, NodePair};
use integration::netns::TestNetns;
use integration::{wait_for_file, Running};

/// One cargo at a time in the embedders' target directory (they would
/// only wait for each other's lock).
static CARGO: Mutex<()> = Mutex::new(());

fn build(package: &str) -> std::path::PathBuf {
    let _one = CARGO.lock().unwrap_or_else(|p| p.into_inner());
    build_embedder(package).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_distro_runs_the_pod_network_and_stops_on_sigterm() {
    let binary = tokio::task::spawn_blocking(|| build("example-distro"))
        .await
        .unwrap();
    let pair = NodePair::new("ed", Backend::Vxlan);
    // node-1 is an in-process task; node-0 is the host binary.
    let peer = pair.spawn(1);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = pair.server.write_kubeconfig(dir.path()).unwrap();
    let subnet_file = dir.path().join("run/flannel/subnet.env");
    let data_dir = dir.path().join("data");
    let mut command = Command::new(&binary);
    command
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", "node-0", "--flannel-backend", "vxlan"])
        .arg("--netns")
        .arg(pair.nodes[0].path())
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--subnet-file")
        .arg(&subnet_file)
        .env("RUST_LOG", "info");
    let host = Running::start(command);

    assert!(
        wait_for_file(&subnet_file, Duration::from_secs(30)),
        "the host wrote no subnet.env"
    );
    assert_eq!(
        fs::read_to_string(&subnet_file).unwrap(),
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
    assert_eq!(
        fs::read_to_string(data_dir.join("agent/etc/flannel/net-conf.json")).unwrap(),
        render_k3s_netconf(
            &"10.42.0.0/16".parse::<ClusterCidrs>().unwrap(),
            Backend::Vxlan
        )
        .unwrap()
    );
    // The peer's route in the host's node, and ours in the peer: the
    // host published its annotations with its own client.
    let [n0, n1] = &pair.nodes;
    within(Duration::from_secs(10), "node-0 routes to node-1", || {
        route_to(n0, "10.42.1.0/24").is_some_and(|r| means(&r, "10.42.1.0", "flannel.1", true))
    })
    .await;
    ready_with_peer(&peer).await;
    let back = route_to(n1, "10.42.0.0/24").expect("node-1 routes to node-0");
    assert!(means(&back, "10.42.0.0", "flannel.1", true), "{back}");

    host.signal(libc::SIGTERM);
    let finished = tokio::task::spawn_blocking(move || host.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(finished.status.success(), "{finished:?}");
    assert!(
        finished.stderr.contains("pod network ready")
            && finished.stderr.contains("SIGTERM: stopping")
            && finished.stderr.contains("stopped"),
        "{}",
        finished.stderr
    );
    // Stopped, not torn down.
    let kept = route_to(n0, "10.42.1.0/24").expect("the route stays after the host stopped");
    assert!(means(&kept, "10.42.1.0", "flannel.1", true), "{kept}");
    peer.shutdown().await.unwrap();
}

#[test]
fn the_example_distro_is_the_flannel_cni_plugin_when_run_as_flannel() {
    let binary = build("example-distro");
    let tmp = tempfile::tempdir().unwrap();
    // k3s-style: CNI_PATH/flannel is a link to the distribution binary.
    let cni_bin = tmp.path().join("cni-bin");
    fs::create_dir(&cni_bin).unwrap();
    std::os::unix::fs::symlink(&binary, cni_bin.join("flannel")).unwrap();

    let node = CniNode::new("edcni", tmp.path()).unwrap();
    node.write_subnet_env(
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let runner = node
        .runner()
        .clone()
        .with_cni_path(vec![cni_bin.clone(), SYSTEM_CNI_DIR.into()]);
    let version = runner.invoke("flannel", "VERSION", b"{}", None).unwrap();
    assert!(
        version.status.success() && version.stdout.contains("\"1.1.0\""),
        "{version:?}"
    );

    let pod = TestNetns::new("edpod");
    let attachment = Attachment::new("example-distro-pod", &pod.path());
    let result = runner.add(&attachment).unwrap();
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    assert!(address.starts_with("10.42.3."), "{result}");
    let saved = node
        .sandbox()
        .flannel_data_dir()
        .join(&attachment.container_id);
    assert!(saved.is_file(), "the delegate config is saved");
    let inside = pod.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(inside.contains(address), "{inside}");

    runner.del(&attachment).unwrap();
    assert!(!saved.exists(), "DEL removes the saved config");
    assert!(
        !pod.exec("ip", &["link", "show", "eth0"]).status.success(),
        "DEL removes the pod's interface"
    );
}

/// `cargo tree` lines that name `krate` as a package (`name vX.Y.Z`).
fn names(tree: &str, krate: &str) -> bool {
    tree.lines()
        .any(|l| l.contains(&format!(" {krate} v")) || l.starts_with(&format!("{krate} v")))
}

#[test]
fn without_default_features_the_library_brings_no_clap_and_no_tracing_subscriber() {
    let _one = CARGO.lock().unwrap_or_else(|p| p.into_inner());
    let minimal = embedder_tree("minimal-host", &["-e", "normal"]).unwrap();
    assert!(names(&minimal, "flannel-embed"), "{minimal}");
    assert!(names(&minimal, "kube"), "{minimal}");
    for absent in ["clap", "tracing-subscriber"] {
        assert!(!names(&minimal, absent), "{absent} in:\n{minimal}");
    }
    // The same check sees them where they are: the example host asks for
    // `cli` and `cni-plugin`.
    let full = embedder_tree("example-distro", &["-e", "normal"]).unwrap();
    assert!(names(&full, "clap") && names(&full, "tracing-subscriber"));

    // Who turns on which tokio features: never flannel-embed for a
    // runtime flavour or signals (kube-client asks for `signal` itself).
    let tokio = embedder_tree(
        "minimal-host",
        &["-e", "features", "-i", "tokio", "--prefix", "none"],
    )
    .unwrap();
    assert!(!tokio.contains("feature \"rt-multi-thread\""), "{tokio}");
    let requests = embedder_tree(
        "minimal-host",
        &[
            "-e",
            "features",
            "-i",
            "tokio",
            "--prefix",
            "depth",
            "--no-dedupe",
        ],
    )
    .unwrap();
    let asked_by = |package: &str| tokio_features_asked_by(&requests, package);
    let ours = asked_by("flannel-embed");
    assert!(ours.iter().any(|f| f == "rt"), "{requests}");
    assert!(
        ours.iter()
            .all(|f| ["rt", "macros", "sync", "time"].contains(&f.as_str())),
        "flannel-embed asks tokio for {ours:?}"
    );
    assert!(
        asked_by("kube-client").iter().any(|f| f == "signal"),
        "{requests}"
    );
    drop(_one);
    // And it builds.
    build("minimal-host");
}

/// The tokio features that `package` requests in its own dependency
/// declaration, from `cargo tree -e features -i tokio --prefix depth
/// --no-dedupe`: a package line right below a `tokio feature "X"` line
/// (one level deeper) asks for X.
fn tokio_features_asked_by(tree: &str, package: &str) -> Vec<String> {
    let mut asked = Vec::new();
    let mut feature_at: Vec<Option<String>> = Vec::new();
    for line in tree.lines() {
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        let Ok(depth) = line[..digits].parse::<usize>() else {
            continue;
        };
        let node = &line[digits..];
        feature_at.truncate(depth);
        feature_at.resize(depth, None);
        let feature = node
            .strip_prefix("tokio feature \"")
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string);
        if node.starts_with(&format!("{package} v")) {
            if let Some(Some(parent)) = depth.checked_sub(1).and_then(|d| feature_at.get(d)) {
                if !asked.contains(parent) {
                    asked.push(parent.clone());
                }
            }
        }
        feature_at.push(feature);
    }
    asked
}

#[test]
fn the_readme_shows_the_example_distro_as_it_is() {
    let repo = integration::builds::repo_dir();
    let readme = fs::read_to_string(repo.join("README.md")).unwrap();
    let host = repo.join("integration/embedders/example-distro");
    let main_rs = fs::read_to_string(host.join("src/main.rs")).unwrap();
    let shown = readme
        .split_once("<!-- example-distro main.rs -->\n```rust,ignore\n")
        .and_then(|(_, rest)| rest.split_once("\n```\n"))
        .map(|(block, _)| format!("{block}\n"))
        .expect("the README's example-distro block");
    assert_eq!(
        shown, main_rs,
        "README.md's copy of example-distro/src/main.rs"
    );
    let cargo = fs::read_to_string(host.join("Cargo.toml")).unwrap();
    let deps = &cargo[cargo.find("[dependencies]").unwrap()..];
    assert!(
        readme.contains(&format!("```toml\n{deps}```")),
        "README.md's copy of example-distro's [dependencies]"
    );
}
