//! The `flannel-agent` binary as an operator runs it: flags, exit codes,
//! messages, the files it writes and a graceful stop.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flannel_embed::config::{render_k3s_netconf, ClusterCidrs};
use flannel_embed::files::K3S_CNI_CONFLIST;
use flannel_embed::Backend;
use integration::{wait_for_file, workspace_bin, write_kubeconfig, Finished, Running};

const LIMIT: Duration = Duration::from_secs(20);

/// An address on loopback where nothing listens: the agent's API calls fail
/// and are retried, which is all these tests need.
const NO_API_SERVER: &str = "http://127.0.0.1:9";

fn agent(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(workspace_bin("flannel-agent"));
    command
        .arg("--node-name=node-a")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!(
            "--subnet-file={}",
            dir.join("run/flannel/subnet.env").display()
        ))
        .arg(format!(
            "--kubeconfig={}",
            write_kubeconfig(dir, NO_API_SERVER).display()
        ))
        .args(args)
        .env("RUST_LOG", "info");
    command
}

fn run_to_end(args: &[&str]) -> (Finished, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let finished = Running::start(agent(dir.path(), args)).wait(LIMIT);
    (finished, dir)
}

#[test]
fn removed_backends_fail_and_name_wireguard_native() {
    for backend in ["ipsec", "wireguard"] {
        let (finished, dir) = run_to_end(&[&format!("--flannel-backend={backend}")]);
        assert!(!finished.status.success(), "{backend}: {finished:?}");
        assert!(
            finished.stderr.contains("wireguard-native") && finished.stderr.contains(backend),
            "{backend}: {}",
            finished.stderr
        );
        assert!(!dir.path().join("data").exists(), "nothing may be written");
    }
}

#[test]
fn unknown_backend_prints_k3s_message() {
    let (finished, _dir) = run_to_end(&["--flannel-backend=foo"]);
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains("Cannot configure unknown flannel backend 'foo'"),
        "{}",
        finished.stderr
    );
}

#[test]
fn bad_flags_stop_startup_with_what_to_fix() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--cluster-cidr=10.42.0.1/16"],
            "--cluster-cidr: '10.42.0.1/16' has host bits set; did you mean 10.42.0.0/16?",
        ),
        (
            &["--flannel-iface=not/valid"],
            "--flannel-iface: 'not/valid'",
        ),
        (
            &["--node-name=Bad_Name"],
            "--node-name: 'Bad_Name' is not a valid Kubernetes node name",
        ),
    ];
    for (args, wanted) in cases {
        let (finished, _dir) = run_to_end(args);
        assert_eq!(finished.status.code(), Some(1), "{args:?}: {finished:?}");
        assert!(
            finished.stderr.contains(wanted),
            "{args:?}: {}",
            finished.stderr
        );
    }
}

#[test]
fn backend_none_does_not_start_the_task() {
    let (finished, dir) = run_to_end(&["--flannel-backend=none"]);
    assert!(finished.status.success(), "{finished:?}");
    assert!(
        finished.stderr.contains("the network task is disabled"),
        "{}",
        finished.stderr
    );
    assert!(
        !dir.path().join("data").exists(),
        "no files for backend none"
    );
}

#[test]
fn writes_k3s_files_then_stops_gracefully_on_sigterm_and_sigint() {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let dir = tempfile::tempdir().unwrap();
        let running = Running::start(agent(
            dir.path(),
            &[
                "--cluster-cidr=10.42.0.0/16,fd00:42::/56",
                "--flannel-backend=host-gw",
            ],
        ));
        let data = dir.path().join("data/agent/etc");
        let netconf = data.join("flannel/net-conf.json");
        assert!(
            wait_for_file(&netconf, LIMIT),
            "net-conf.json never appeared"
        );
        let cidrs: ClusterCidrs = "10.42.0.0/16,fd00:42::/56".parse().unwrap();
        assert_eq!(
            fs::read_to_string(&netconf).unwrap(),
            render_k3s_netconf(&cidrs, Backend::HostGw).unwrap()
        );
        assert_eq!(
            fs::read_to_string(data.join("cni/net.d/10-flannel.conflist")).unwrap(),
            K3S_CNI_CONFLIST
        );
        running.signal(signal);
        let finished = running.wait(LIMIT);
        assert!(finished.status.success(), "{name}: {finished:?}");
        assert!(
            finished
                .stderr
                .contains(&format!("received {name}, shutting down")),
            "{name}: {}",
            finished.stderr
        );
        // The files stay, like the kernel state, for the next start.
        assert!(netconf.exists());
    }
}

#[test]
fn a_missing_custom_netconf_is_fatal_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere/net-conf.json");
    let finished = Running::start(agent(
        dir.path(),
        &[&format!("--flannel-conf={}", missing.display())],
    ))
    .wait(LIMIT);
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains("flannel exited: failed to read flannel configuration")
            && finished.stderr.contains("nowhere/net-conf.json"),
        "{}",
        finished.stderr
    );
}
