//! The lab itself: `up` builds namespaces, processes and files only where
//! it should (lab namespaces and the lab directory), the nodes look like
//! real nodes to the agent and the CNI plugins (default paths), and `down`
//! leaves nothing behind; the `flannel-lab` binary as an operator runs it.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Instant, SystemTime};

use integration::fixtures::PREFIX;
use integration::lab::state::LabState;
use integration::lab::{netns_list, netns_prefix, Lab, Options};

/// Link names in the machine's own namespace.
fn root_links() -> BTreeSet<String> {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// The machine's own flannel/CNI/k3s paths: whether they exist and when
/// they changed. A lab must not touch any of them.
fn host_paths() -> Vec<(PathBuf, Option<SystemTime>)> {
    [
        "/run/flannel",
        "/run/flannel/subnet.env",
        "/var/lib/cni",
        "/var/lib/cni/networks",
        "/var/lib/cni/results",
        "/var/lib/rancher",
        "/var/lib/rancher/k3s/agent/etc/flannel/net-conf.json",
        "/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist",
    ]
    .iter()
    .map(|p| {
        let path = PathBuf::from(p);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        (path, modified)
    })
    .collect()
}

/// The machine's own firewall rules (iptables and nftables): the agents'
/// masquerade and forward rules must land in the node namespaces only.
fn root_firewall() -> (String, String) {
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let iptables: String = run("iptables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    (iptables, run("nft", &["list", "ruleset"]))
}

fn lab_namespaces(id: &str) -> Vec<String> {
    let prefix = netns_prefix(id);
    netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn ns_inode(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_nothing_left(id: &str, dir: &Path, links_before: &BTreeSet<String>) {
    assert_eq!(lab_namespaces(id), Vec::<String>::new(), "namespaces left");
    let links = root_links();
    let new: Vec<&String> = links
        .iter()
        .filter(|l| !links_before.contains(*l))
        .collect();
    assert!(
        new.iter().all(|l| !l.contains(id)),
        "links in the root namespace: {new:?}"
    );
    assert!(
        !dir.exists() || std::fs::read_dir(dir).unwrap().next().is_none(),
        "{} still holds files",
        dir.display()
    );
}

#[test]
fn up_builds_isolated_nodes_and_down_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let options = Options::for_tests("infra", &dir);
    let links_before = root_links();
    let host_before = host_paths();
    let firewall_before = root_firewall();

    let started = Instant::now();
    let lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    eprintln!("lab up in {:?}", started.elapsed());
    let id = lab.id().to_string();

    // Namespaces: underlay, two nodes, one pod per node; nothing new in the
    // machine's own namespace.
    let mut namespaces = lab_namespaces(&id);
    namespaces.sort();
    let prefix = netns_prefix(&id);
    assert_eq!(
        namespaces,
        ["n0", "n0p0", "n1", "n1p0", "ul"]
            .iter()
            .map(|s| format!("{prefix}{s}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(root_links(), links_before);
    assert_eq!(root_firewall(), firewall_before);

    // The underlay: node uplinks on a bridge, the gateway reachable.
    let ports = lab.state().underlay.clone().unwrap();
    let bridge = Command::new("ip")
        .args(["-n", &ports, "-o", "link", "show", "master", "br0"])
        .output()
        .unwrap();
    assert!(text(&bridge).contains("n0@") && text(&bridge).contains("n1@"));
    let addr = lab
        .ip(0, &["-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(addr.contains("inet 192.168.1.10/24"), "{addr}");
    let addr = lab
        .ip(1, &["-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(addr.contains("inet 192.168.1.11/24"), "{addr}");
    assert!(lab
        .ip(0, &["route", "show", "default"])
        .unwrap()
        .contains("default via 192.168.1.1 dev eth0"));
    let ping = lab
        .exec(0, "ping", &["-c", "1", "-W", "2", "192.168.1.11"])
        .unwrap();
    assert!(
        ping.status.success(),
        "node-0 reaches node-1 on the underlay"
    );

    // Node objects as kube-controller-manager and kubelet leave them, then
    // annotated by each node's own agent.
    for (index, node) in lab.nodes().iter().enumerate() {
        let object = lab.node_object(index).unwrap().unwrap();
        let spec = object.spec.clone().unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some(node.pod_cidr.as_str()));
        assert_eq!(node.pod_cidr, format!("10.42.{index}.0/24"));
        let annotations = object.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get(&format!("{PREFIX}public-ip")),
            Some(&format!("192.168.1.1{index}")),
            "{annotations:?}"
        );
        assert!(annotations.contains_key(&format!("{PREFIX}backend-data")));
        let conditions = object.status.unwrap().conditions.unwrap();
        let network = conditions
            .iter()
            .find(|c| c.type_ == "NetworkUnavailable")
            .expect("the agent set NetworkUnavailable");
        assert_eq!(network.status, "False");
    }

    // Each agent: in the machine's network namespace (it talks to the API
    // server on 127.0.0.1), in a private mount namespace where the node's
    // directories are /run and /var/lib.
    for index in 0..2 {
        let pid = lab.node(index).agent.as_ref().unwrap().pid;
        assert!(lab.agent_running(index));
        assert_eq!(ns_inode(pid, "net"), ns_inode(std::process::id(), "net"));
        assert_ne!(ns_inode(pid, "mnt"), ns_inode(std::process::id(), "mnt"));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            cmdline.contains(&format!("--netns /run/netns/{}", lab.node(index).netns)),
            "{cmdline}"
        );
        assert!(
            !cmdline.contains("--data-dir") && !cmdline.contains("--subnet-file"),
            "the agent runs with its default paths: {cmdline}"
        );
        let sandbox = lab.sandbox(index);
        let data = sandbox.data_dir().join("agent/etc");
        assert!(data.join("flannel/net-conf.json").is_file());
        assert!(data.join("cni/net.d/10-flannel.conflist").is_file());
        // What the agent sees at its default subnet.env path is the lab's.
        let seen = std::fs::read_to_string(format!("/proc/{pid}/root/run/flannel/subnet.env"))
            .unwrap_or_default();
        assert_eq!(Some(seen), lab.subnet_env(index));
    }

    // Pods were attached with the conflist the agent wrote (flannel plugin
    // → bridge + host-local), state in the node's own /var/lib/cni.
    for (index, pod) in lab.pods().iter().enumerate() {
        let ip = pod.ip.clone().unwrap();
        assert!(ip.starts_with(&format!("10.42.{index}.")), "{ip}");
        let var_lib = lab.sandbox(index).var_lib_dir;
        assert!(var_lib.join("cni/networks/cbr0").join(&ip).is_file());
        assert!(var_lib
            .join("cni/flannel")
            .join(&pod.container_id)
            .is_file());
        assert!(var_lib
            .join(format!("cni/results/cbr0-{}-eth0", pod.container_id))
            .is_file());
    }

    // exec: a command inside the node sees the node's files and network.
    let inside = lab.exec(1, "cat", &["/run/flannel/subnet.env"]).unwrap();
    assert!(inside.status.success());
    assert_eq!(Some(text(&inside)), lab.subnet_env(1));
    let inside = lab
        .exec(1, "ip", &["-4", "-o", "addr", "show", "eth0"])
        .unwrap();
    assert!(text(&inside).contains("192.168.1.11/24"));
    let inside = lab
        .exec(0, "ls", &["/var/lib/rancher/k3s/agent/etc/cni/net.d"])
        .unwrap();
    assert_eq!(text(&inside).trim(), "10-flannel.conflist");

    // kubectl with the lab's kubeconfig.
    let nodes = lab.kubectl(&["get", "nodes", "-o", "name"]).unwrap();
    assert_eq!(text(&nodes), "node/node-0\nnode/node-1\n");

    // The status table.
    let table = lab.status().unwrap();
    let rendered = table.render();
    eprintln!("{rendered}");
    assert_eq!(table.rows.len(), 2);
    assert!(rendered.starts_with("NODE"));
    for (index, row) in table.rows.iter().enumerate() {
        assert_eq!(row.name, format!("node-{index}"));
        assert_eq!(row.pod_cidr, format!("10.42.{index}.0/24"));
        assert_eq!(row.public_ip, Some(format!("192.168.1.1{index}")));
        assert!(row.vtep_mac.is_some());
        assert!(row.agent.is_some());
        assert!(rendered.contains(&format!("10.42.{index}.0/24")));
    }
    let state = lab.state().clone();
    let pids: Vec<_> = state
        .nodes
        .iter()
        .filter_map(|n| n.agent.clone())
        .chain(state.apiserver.clone())
        .collect();
    assert_eq!(pids.len(), 3);

    // down: no process, namespace, link or file left; the machine's own
    // flannel/CNI paths untouched throughout.
    let problems = lab.down().unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    for proc in pids {
        assert!(!proc.alive(), "{} (pid {}) still runs", proc.what, proc.pid);
    }
    assert_nothing_left(&id, &dir, &links_before);
    assert!(!dir.exists());
    assert_eq!(host_paths(), host_before);
    assert_eq!(root_firewall(), firewall_before);
}

fn flannel_lab(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(integration::workspace_bin("flannel-lab"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "$ flannel-lab {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn the_flannel_lab_command_up_status_exec_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cli-lab");
    let id = Options::for_tests("cli", &dir).id;
    let links_before = root_links();
    let host_before = host_paths();

    let up = flannel_lab(&dir, &["up", "--id", &id, "--nodes", "2", "--wait", "20"]);
    let stdout = text(&up);
    assert!(up.status.success(), "up failed");
    for expected in [
        "node-0: Node created with podCIDR 10.42.0.0/24",
        "node-1: flannel-agent pid",
        "NODE    PODCIDR       PUBLIC IP",
        "node-0  10.42.0.0/24  192.168.1.10",
        "node-1  10.42.1.0/24  192.168.1.11",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing");
    }
    // The lab outlives the command: its processes are in their own sessions.
    let state = LabState::load(&dir).unwrap().unwrap();
    let procs: Vec<_> = state
        .nodes
        .iter()
        .filter_map(|n| n.agent.clone())
        .chain(state.apiserver.clone())
        .collect();
    assert_eq!(procs.len(), 3);
    assert!(procs.iter().all(|p| p.alive()));

    let status = flannel_lab(&dir, &["status", "--no-ping"]);
    assert!(status.status.success());
    assert!(text(&status).contains("node-1  10.42.1.0/24  192.168.1.11"));

    let exec = flannel_lab(
        &dir,
        &[
            "exec", "node-1", "--", "ip", "-4", "-o", "addr", "show", "eth0",
        ],
    );
    assert!(exec.status.success());
    assert!(text(&exec).contains("192.168.1.11/24"));
    let exec = flannel_lab(&dir, &["exec", "n0", "--", "sh", "-c", "exit 7"]);
    assert_eq!(exec.status.code(), Some(7), "exec passes the exit code on");
    let exec = flannel_lab(&dir, &["exec", "node-9", "--", "true"]);
    assert!(!exec.status.success());
    assert!(String::from_utf8_lossy(&exec.stderr).contains("no node \"node-9\" in this lab"));

    let kubectl = flannel_lab(
        &dir,
        &[
            "kubectl",
            "get",
            "node",
            "node-0",
            "-o",
            "jsonpath={.spec.podCIDR}",
        ],
    );
    assert_eq!(text(&kubectl), "10.42.0.0/24");

    // An agent stopped and started again from the command line (like a
    // host binary restarted): a new process, the node's data path in place.
    let old_agent = state.nodes[1].agent.clone().unwrap();
    let stop = flannel_lab(&dir, &["stop-agent", "node-1"]);
    assert!(stop.status.success());
    assert!(!old_agent.alive());
    let vtep = Command::new("ip")
        .args(["-n", &state.nodes[1].netns, "link", "show", "flannel.1"])
        .status()
        .unwrap();
    assert!(vtep.success(), "flannel.1 stays while the agent is stopped");
    let start = flannel_lab(&dir, &["start-agent", "node-1"]);
    assert!(start.status.success());
    let state = LabState::load(&dir).unwrap().unwrap();
    let new_agent = state.nodes[1].agent.clone().unwrap();
    assert_ne!(new_agent, old_agent);
    assert!(new_agent.alive());
    let status = flannel_lab(&dir, &["status", "--no-ping"]);
    assert!(text(&status).contains(&format!("pid {}", new_agent.pid)));
    let procs: Vec<_> = state
        .nodes
        .iter()
        .filter_map(|n| n.agent.clone())
        .chain(state.apiserver.clone())
        .collect();

    // A second `up` in the same directory refuses and leaves the lab alone.
    let again = flannel_lab(&dir, &["up", "--id", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is already set up here"));
    assert!(procs.iter().all(|p| p.alive()));

    let down = flannel_lab(&dir, &["down"]);
    assert!(down.status.success());
    assert!(text(&down).contains("nothing left"));
    for proc in &procs {
        assert!(!proc.alive(), "{} still runs", proc.what);
    }
    assert_nothing_left(&id, &dir, &links_before);
    assert!(!dir.exists());
    assert_eq!(host_paths(), host_before);

    // `down` again (nothing there) is fine.
    let down = flannel_lab(&dir, &["down", "--id", &id]);
    assert!(down.status.success());
}

#[test]
fn a_failed_up_removes_what_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    // Binaries: the real ones, except an agent that fails at once.
    let bins = tmp.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    for name in ["flannel", "test-apiserver", "flannel-lab"] {
        std::os::unix::fs::symlink(integration::workspace_bin(name), bins.join(name)).unwrap();
    }
    let agent = bins.join("flannel-agent");
    std::fs::write(
        &agent,
        "#!/bin/sh\necho 'agent: cannot start (test)' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();

    let dir = tmp.path().join("lab");
    let mut options = Options::for_tests("fail", &dir);
    options.bin_dir = bins;
    let error = Lab::up(&options, &mut |line| eprintln!("{line}"))
        .err()
        .expect("up fails");
    eprintln!("{error}");
    assert!(error.step.contains("node-0"), "{error}");
    assert!(error.message.contains("the agent exited"), "{error}");
    assert!(
        error.message.contains("agent: cannot start (test)"),
        "{error}"
    );
    assert!(error.message.contains("removed again"), "{error}");
    assert_eq!(lab_namespaces(&options.id), Vec::<String>::new());
    assert!(!dir.exists());

    // Options checked before anything is made.
    let mut options = Options::for_tests("bad", &tmp.path().join("bad"));
    options.dir = PathBuf::from("/var/lib/flannel-lab-test");
    let error = Lab::up(&options, &mut |_| {}).err().unwrap();
    assert!(error.message.contains("cannot be under it"), "{error}");
    options.dir = tmp.path().join("bad");
    options.cluster_cidr = "10.42.0.0/23".into();
    options.nodes = 3;
    let error = Lab::up(&options, &mut |_| {}).err().unwrap();
    assert!(error.message.contains("fewer than --nodes 3"), "{error}");
    options.cluster_cidr = "10.42.0.0/16,fd00:42::/63".into();
    let error = Lab::up(&options, &mut |_| {}).err().unwrap();
    assert!(
        error
            .message
            .contains("fd00:42::/63 holds 2 node /64s, fewer than --nodes 3"),
        "{error}"
    );
    options.cluster_cidr = "fd00:42::/56".into();
    let error = Lab::up(&options, &mut |_| {}).err().unwrap();
    assert!(
        error.message.contains("needs an IPv4 cluster CIDR"),
        "{error}"
    );
    options.cluster_cidr = "10.42.0.0/16".into();
    options.backend = "udp".into();
    let error = Lab::up(&options, &mut |_| {}).err().unwrap();
    assert!(
        error.message.contains("vxlan, host-gw or wireguard-native"),
        "{error}"
    );
    assert!(!Path::new("/var/lib/flannel-lab-test").exists());
    assert!(!tmp.path().join("bad").exists());
}
