//! Two benchmark scenarios about what the pod network costs pods:
//!
//! - [`cni_overhead`]: CNI ADD+DEL latency per pod through the workspace's
//!   `flannel` plugin (k3s's conflist's flannel entry alone) against the
//!   `bridge` plugin called directly with the delegate config our plugin
//!   saves (the floor), sequential, interleaved, on one node namespace.
//! - [`data_plane`]: a 2-node vxlan lab; pod-to-pod iperf3 TCP over the
//!   overlay against node-to-node over the underlay, ping RTTs of both and
//!   the overlay's path MTU (`ping -M do -s 1422` crosses, 1423 does not).
//!
//! Both print figures and goals; neither asserts. Everything runs inside
//! namespaces made here and removed again (also on errors).

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cni_runner::{Attachment, CniNode, Runner};
use crate::lab::{workspace_bin_dir, Family, Lab, Options};
use crate::netns::TestNetns;

/// The subnet file the CNI scenario's node gets (as the agent writes it).
const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// p-th percentile (nearest rank) of sorted durations.
fn percentile(sorted: &[Duration], p: u32) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs one plugin command and insists on success.
fn call(
    runner: &Runner,
    plugin: &str,
    command: &str,
    conf: &[u8],
    attachment: &Attachment,
) -> Result<Duration, String> {
    let started = Instant::now();
    let done = runner
        .invoke(plugin, command, conf, Some(attachment))
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();
    if !done.status.success() {
        return Err(format!(
            "{plugin} {command} {}: {}; stdout {}; stderr {}",
            attachment.container_id, done.status, done.stdout, done.stderr
        ));
    }
    Ok(took)
}

/// CNI ADD+DEL latency per pod, `pods` pods sequentially, through our
/// `flannel` plugin and through `bridge` directly with the delegate config
/// our plugin saved (interleaved: flannel pod i, bridge pod i, ...). Both
/// run the same way (inside the node's network namespace with a private
/// `/var/lib`, as `crate::cni_runner` does), so the difference is what our
/// plugin adds: reading subnet.env, building and saving the delegate, one
/// more exec, converting the result. Returns the printed report.
pub fn cni_overhead(pods: u32) -> Result<String, String> {
    let pods = pods.max(1);
    if !workspace_bin_dir().join("flannel").is_file() {
        return Err(format!(
            "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`)",
            workspace_bin_dir().join("flannel").display()
        ));
    }
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let node = CniNode::new("bplane", tmp.path()).map_err(|e| e.to_string())?;
    node.write_subnet_env(SUBNET_ENV)
        .map_err(|e| e.to_string())?;
    let mut list = node.runner().list().clone();
    list.retain_plugins(&["flannel"]);
    let flannel_conf = list
        .plugin_conf("flannel")
        .ok_or("the conflist has no flannel entry")?;
    let flannel_conf = serde_json::to_vec(&flannel_conf).map_err(|e| e.to_string())?;
    let runner = node.runner().clone().with_list(list);
    let pod = TestNetns::new("bplanepod");

    // Warm-up (not measured): creates cni0 and host-local's directory, and
    // gives us the delegate config our plugin saves.
    let warm = Attachment::new("bench-warm-flannel", &pod.path());
    call(&runner, "flannel", "ADD", &flannel_conf, &warm)?;
    let saved = node.sandbox().flannel_data_dir().join(&warm.container_id);
    let delegate = std::fs::read(&saved)
        .map_err(|e| format!("the saved delegate {}: {e}", saved.display()))?;
    let delegate_json: Value = serde_json::from_slice(&delegate)
        .map_err(|e| format!("the saved delegate is not JSON: {e}"))?;
    call(&runner, "flannel", "DEL", &flannel_conf, &warm)?;
    let warm = Attachment::new("bench-warm-bridge", &pod.path());
    call(&runner, "bridge", "ADD", &delegate, &warm)?;
    call(&runner, "bridge", "DEL", &delegate, &warm)?;

    let mut flannel = (Vec::new(), Vec::new(), Vec::new());
    let mut bridge = (Vec::new(), Vec::new(), Vec::new());
    let wall = Instant::now();
    for i in 0..pods {
        for (plugin, conf, out) in [
            ("flannel", &flannel_conf, &mut flannel),
            ("bridge", &delegate, &mut bridge),
        ] {
            let attachment = Attachment::new(&format!("bench-{plugin}-{i:04}"), &pod.path());
            let add = call(&runner, plugin, "ADD", conf, &attachment)?;
            let del = call(&runner, plugin, "DEL", conf, &attachment)?;
            out.0.push(add + del);
            out.1.push(add);
            out.2.push(del);
        }
    }
    let wall = wall.elapsed();
    for v in [
        &mut flannel.0,
        &mut flannel.1,
        &mut flannel.2,
        &mut bridge.0,
        &mut bridge.1,
        &mut bridge.2,
    ] {
        v.sort();
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "CNI ADD+DEL per pod, {pods} pods sequential per path, interleaved, one node netns (wall {:.1} s)",
        wall.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  delegate (saved by our plugin): {}",
        serde_json::to_string(&delegate_json).unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  {:<34} {:>9} {:>9} {:>9} {:>9}",
        "path", "p50 ms", "p99 ms", "ADD p50", "DEL p50"
    );
    for (label, v) in [
        ("flannel (k3s conflist entry)", &flannel),
        ("bridge direct (floor)", &bridge),
    ] {
        let _ = writeln!(
            out,
            "  {:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            label,
            ms(percentile(&v.0, 50)),
            ms(percentile(&v.0, 99)),
            ms(percentile(&v.1, 50)),
            ms(percentile(&v.2, 50)),
        );
    }
    let overhead = ms(percentile(&flannel.0, 50)) - ms(percentile(&bridge.0, 50));
    let _ = writeln!(
        out,
        "  overhead we add (p50 difference, ADD+DEL): {overhead:.2} ms  (goal <= 2 ms: {})",
        if overhead <= 2.0 { "met" } else { "NOT met" }
    );
    drop(pod);
    drop(node);
    Ok(out)
}

/// The data-plane scenario from async code: runs [`data_plane_blocking`]
/// on a blocking thread (the lab runs a small tokio runtime of its own,
/// which must not start or drop inside an async context).
pub async fn data_plane(seconds: u32) -> Result<String, String> {
    tokio::task::spawn_blocking(move || data_plane_blocking(seconds))
        .await
        .map_err(|e| format!("the data-plane benchmark panicked: {e}"))?
}

/// A server process killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `iperf3 -s -1` through `server`, then runs `client` (an `iperf3
/// -c ... -J` command) until it connects; returns the received bits/s.
fn iperf(mut server: Command, client: impl Fn() -> Command) -> Result<f64, String> {
    let child = server
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start iperf3 -s: {e}"))?;
    let _server = Server(child);
    let mut last = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let output = client()
            .output()
            .map_err(|e| format!("cannot run iperf3 -c: {e}"))?;
        let json: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps);
        }
        last = json["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Err(format!("iperf3 client never got a result: {last}"))
}

/// Average RTT in ms from `ping -q` output.
fn ping_avg(mut command: Command) -> Result<f64, String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run ping: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|avg| avg.parse().ok())
        .ok_or_else(|| format!("no RTT in ping output: {text}"))
}

/// The data-plane scenario, blocking: a 2-node vxlan lab with one pod per
/// node; iperf3 TCP for `seconds` pod0 -> pod1 (overlay) and node0 ->
/// node1 (underlay: eth0 over the underlay bridge), 20 pings each way
/// (average RTT), and the overlay's path MTU with don't-fragment pings.
pub fn data_plane_blocking(seconds: u32) -> Result<String, String> {
    let seconds = seconds.max(1);
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let mut options = Options::for_tests("bplane", &tmp.path().join("lab"));
    options.nodes = 2;
    options.backend = "vxlan".into();
    options.pods_per_node = 1;
    options.rust_log = "warn".into();
    options.wait = Duration::from_secs(20);
    let built = Instant::now();
    let lab = Lab::up(&options, &mut |_| {}).map_err(|e| e.to_string())?;
    let result = measure(&lab, seconds, built.elapsed());
    let problems = lab.down().map_err(|e| e.to_string())?;
    let mut report = result?;
    if !problems.is_empty() {
        let _ = writeln!(report, "  teardown problems: {}", problems.join("; "));
    }
    Ok(report)
}

fn measure(lab: &Lab, seconds: u32, setup: Duration) -> Result<String, String> {
    let pod0 = lab.pods_on(0).first().map(|p| p.name.clone());
    let pod1 = lab.pods_on(1).first().map(|p| p.name.clone());
    let (Some(pod0), Some(pod1)) = (pod0, pod1) else {
        return Err("the lab has no pod on each node".into());
    };
    let pod1_ip = lab
        .pod_ip(&pod1, Family::V4)
        .ok_or("pod 1 has no IPv4 address")?;
    let node1_ip = lab.node(1).uplink_ip.clone();
    let node0_ns = lab.node(0).netns.clone();
    let node1_ns = lab.node(1).netns.clone();
    let peers_ready = Instant::now();
    let table = lab.wait_peers_programmed(Duration::from_secs(20));
    let peers_wait = peers_ready.elapsed();
    // A first packet resolves neighbours (not measured).
    let _ = lab
        .pod_command(
            &pod0,
            "ping",
            &["-c", "2", "-i", "0.2", "-W", "2", &pod1_ip],
        )
        .output();
    let in_ns = |ns: &str, program: &str, args: &[&str]| {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, program]).args(args);
        command
    };
    let _ = in_ns(
        &node0_ns,
        "ping",
        &["-c", "2", "-i", "0.2", "-W", "2", &node1_ip],
    )
    .output();

    let secs = seconds.to_string();
    let overlay = iperf(lab.pod_command(&pod1, "iperf3", &["-s", "-1"]), || {
        lab.pod_command(&pod0, "iperf3", &["-c", &pod1_ip, "-t", &secs, "-J"])
    })?;
    let underlay = iperf(in_ns(&node1_ns, "iperf3", &["-s", "-1"]), || {
        in_ns(&node0_ns, "iperf3", &["-c", &node1_ip, "-t", &secs, "-J"])
    })?;
    let ping_args = |ip: &str| -> Vec<String> {
        ["-c", "20", "-i", "0.05", "-W", "2", "-q", ip]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let pod_args = ping_args(&pod1_ip);
    let pod_args: Vec<&str> = pod_args.iter().map(String::as_str).collect();
    let node_args = ping_args(&node1_ip);
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let rtt_overlay = ping_avg(lab.pod_command(&pod0, "ping", &pod_args))?;
    let rtt_underlay = ping_avg(in_ns(&node0_ns, "ping", &node_args))?;
    let df = |size: &str| {
        lab.pod_command(
            &pod0,
            "ping",
            &["-M", "do", "-s", size, "-c", "1", "-W", "2", &pod1_ip],
        )
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            )
        })
        .unwrap_or((false, "cannot run ping".into()))
    };
    let (fits, _) = df("1422");
    let (too_big, too_big_err) = df("1423");

    let mut out = String::new();
    let ratio = overlay / underlay * 100.0;
    let _ = writeln!(
        out,
        "Data plane, 2-node vxlan lab (setup {:.1} s, peers programmed after {:.1} s more: {}), iperf3 TCP {seconds} s each",
        setup.as_secs_f64(),
        peers_wait.as_secs_f64(),
        if table
            .rows
            .iter()
            .filter(|r| r.agent.is_some())
            .all(|r| r.peers_expected > 0 && r.peers_programmed == r.peers_expected)
        {
            "all"
        } else {
            "NOT all"
        }
    );
    let _ = writeln!(
        out,
        "  throughput overlay pod->pod {:.2} Gbit/s, underlay node->node {:.2} Gbit/s: {ratio:.1}% (goal >= 85%: {})",
        overlay / 1e9,
        underlay / 1e9,
        if ratio >= 85.0 { "met" } else { "NOT met" }
    );
    let _ = writeln!(
        out,
        "  ping RTT avg of 20: overlay {rtt_overlay:.3} ms, underlay {rtt_underlay:.3} ms, added {:.3} ms",
        rtt_overlay - rtt_underlay
    );
    let _ = writeln!(
        out,
        "  path MTU pod->pod, DF ping: 1422 B payload {}, 1423 B {}{} (goal exact 1450: {})",
        if fits { "crosses" } else { "does NOT cross" },
        if too_big { "crosses" } else { "does not" },
        if too_big || too_big_err.is_empty() {
            String::new()
        } else {
            format!(" ({too_big_err})")
        },
        if fits && !too_big { "met" } else { "NOT met" }
    );
    Ok(out)
}
