//! Two benchmark scenarios about what the pod network costs pods:
//!
//! - [`cni_overhead`]: CNI ADD+DEL latency per pod through the workspace's
//!   `flannel` plugin and the static one (k3s's conflist's flannel entry
//!   alone) against the delegate (`bridge`, or `loopback` for less noise)
//!   called directly with the config our plugin saves (the floor),
//!   sequential, interleaved, in one loop inside a node namespace.
//! - [`data_plane`]: a 2-node vxlan lab; pod-to-pod iperf3 TCP over the
//!   overlay against node-to-node over the underlay, ping RTTs of both and
//!   the overlay's path MTU (`ping -M do -s 1422` crosses, 1423 does not),
//!   repeated (overlay and underlay interleaved) and summarised by medians.
//!
//! Both return results that print figures and goals and write CSV; neither
//! asserts. Everything runs inside namespaces made here and removed again
//! (also on errors).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::report::{self, BenchResult, Csv};
use crate::cni_runner::{Attachment, CniNode, NodeSandbox, Runner, SYSTEM_CNI_DIR};
use crate::lab::{workspace_bin_dir, Family, Lab, Options};
use crate::netns::TestNetns;

/// The subnet file the CNI scenario's node gets (as the agent writes it).
const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

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

/// One way of running the pod's CNI ADD and DEL.
#[derive(Debug, Clone)]
pub struct CniPath {
    /// For tables and CSV headers.
    pub label: String,
    /// The plugin type the runner executes (`flannel`, `bridge`).
    pub plugin: &'static str,
    /// CNI_PATH: where that plugin (and, for ours, the delegate) is found.
    pub cni_path: Vec<PathBuf>,
}

/// The paths the scenario compares: the bare `delegate` (`bridge`, or the
/// cheaper `loopback`: the floor), the workspace's `flannel` (dynamically
/// linked) and, when given, the static `flannel` from
/// `integration/build-static-cni.sh`, both delegating to it.
pub fn cni_paths(delegate: &'static str, static_plugin: Option<&Path>) -> Vec<CniPath> {
    let system = PathBuf::from(SYSTEM_CNI_DIR);
    let mut paths = vec![
        CniPath {
            label: format!("{delegate} direct (floor)"),
            plugin: delegate,
            cni_path: vec![system.clone()],
        },
        CniPath {
            label: "flannel, dynamic (workspace build)".into(),
            plugin: "flannel",
            cni_path: vec![workspace_bin_dir(), system.clone()],
        },
    ];
    if let Some(plugin) = static_plugin {
        paths.push(CniPath {
            label: "flannel, static (build-static-cni.sh)".into(),
            plugin: "flannel",
            cni_path: vec![
                plugin.parent().map(Path::to_path_buf).unwrap_or_default(),
                system,
            ],
        });
    }
    paths
}

/// CNI ADD+DEL latency per pod, `pods` pods sequentially, through each of
/// `paths` (see [`cni_paths`]; the first is the floor): our `flannel`
/// plugin with k3s's conflist entry, and the delegate called directly with
/// the config our plugin saved. For every pod all paths run back to back,
/// the order rotating from pod to pod, in one loop inside the node's
/// network namespace with a private `/var/lib` ([`cni_loop`]), each plugin
/// executed directly, so the per-pod difference is what our plugin adds:
/// one more process, reading subnet.env, building and saving the delegate
/// config, spawning the delegate, converting the result. Then the parts
/// are measured apart ([`CniParts`]).
///
/// With `loopback` as the delegate the work of our plugin is the same
/// (loopback ignores the IPAM part of the config) and the floor's own
/// jitter is a few times smaller, so the same overhead is measured with
/// less noise.
pub fn cni_overhead(
    pods: u32,
    paths: Vec<CniPath>,
    measure_parts: bool,
) -> Result<CniOverhead, String> {
    let pods = pods.max(1);
    if !workspace_bin_dir().join("flannel").is_file() {
        return Err(format!(
            "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`)",
            workspace_bin_dir().join("flannel").display()
        ));
    }
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let node = CniNode::new("bplane", tmp.path())
        .map_err(|e| format!("setting up the CNI node namespace: {e}"))?;
    node.write_subnet_env(SUBNET_ENV)
        .map_err(|e| format!("writing the node's subnet.env: {e}"))?;
    let mut list = node.runner().list().clone();
    list.retain_plugins(&["flannel"]);
    let mut flannel_conf = list
        .plugin_conf("flannel")
        .ok_or("the conflist has no flannel entry")?;
    let delegate_type = paths.first().map_or("bridge", |p| p.plugin);
    if delegate_type != "bridge" {
        flannel_conf["delegate"]["type"] = Value::String(delegate_type.into());
    }
    let flannel_conf = serde_json::to_vec(&flannel_conf)
        .map_err(|e| format!("serialising the flannel entry: {e}"))?;
    let base = node.runner().clone().with_list(list);
    let runners: Vec<Runner> = paths
        .iter()
        .map(|p| base.clone().with_cni_path(p.cni_path.clone()))
        .collect();
    let pod = TestNetns::new("bplanepod");

    // Warm-up (not measured): creates cni0 and host-local's directory, and
    // gives us the delegate config our plugin saves.
    let ours = paths
        .iter()
        .position(|p| p.plugin == "flannel")
        .ok_or("no flannel path to compare")?;
    let warm = Attachment::new("bench-warm-flannel", &pod.path());
    call(&runners[ours], "flannel", "ADD", &flannel_conf, &warm)?;
    let saved = node.sandbox().flannel_data_dir().join(&warm.container_id);
    let delegate = std::fs::read(&saved)
        .map_err(|e| format!("the saved delegate {}: {e}", saved.display()))?;
    let delegate_json: Value = serde_json::from_slice(&delegate)
        .map_err(|e| format!("the saved delegate is not JSON: {e}"))?;
    call(&runners[ours], "flannel", "DEL", &flannel_conf, &warm)?;
    let conf_of = |path: &CniPath| -> &[u8] {
        if path.plugin == "flannel" {
            &flannel_conf
        } else {
            &delegate
        }
    };
    for (i, (path, runner)) in paths.iter().zip(&runners).enumerate() {
        let warm = Attachment::new(&format!("bench-warm-{i}"), &pod.path());
        call(runner, path.plugin, "ADD", conf_of(path), &warm)?;
        call(runner, path.plugin, "DEL", conf_of(path), &warm)?;
    }

    // The measured loop runs inside the node (one wrapper for all of it),
    // executing the plugins directly as a container runtime does: the
    // per-call wrapper (unshare, mount, ip netns exec) costs several ms
    // with jitter of its own, which would drown what we measure.
    let spec = CniLoopSpec {
        pod_netns: pod.path(),
        pods,
        paths: paths
            .iter()
            .map(|path| {
                Ok(LoopPath {
                    exe: find_plugin(path)?,
                    cni_path: std::env::join_paths(&path.cni_path)
                        .map_err(|e| format!("CNI_PATH: {e}"))?
                        .to_string_lossy()
                        .into_owned(),
                    conf: String::from_utf8_lossy(conf_of(path)).into_owned(),
                })
            })
            .collect::<Result<_, String>>()?,
    };
    let wall = Instant::now();
    let samples = run_cni_loop(node.sandbox(), &spec)?;
    let wall = wall.elapsed();
    let parts = if measure_parts {
        Some(CniParts::measure(&paths, pods, node.sandbox().var_lib())?)
    } else {
        None
    };
    drop(pod);
    drop(node);
    Ok(CniOverhead {
        pods,
        wall_seconds: wall.as_secs_f64(),
        delegate: serde_json::to_string(&delegate_json).unwrap_or_default(),
        paths,
        samples,
        parts,
    })
}

/// The plugin binary a path runs.
fn find_plugin(path: &CniPath) -> Result<PathBuf, String> {
    path.cni_path
        .iter()
        .map(|d| d.join(path.plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{} not on {:?}", path.plugin, path.cni_path))
}

/// What the in-node loop runs (handed over as JSON on stdin).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CniLoopSpec {
    /// The pod's network namespace (CNI_NETNS).
    pub pod_netns: PathBuf,
    /// Pods per path.
    pub pods: u32,
    /// The paths, the floor first.
    pub paths: Vec<LoopPath>,
}

/// One path of [`CniLoopSpec`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoopPath {
    /// The plugin binary.
    pub exe: PathBuf,
    /// CNI_PATH.
    pub cni_path: String,
    /// The network config on stdin.
    pub conf: String,
}

/// Runs `flannel-bench cni-loop` on the node (inside its network
/// namespace and private `/var/lib`) and returns its samples.
fn run_cni_loop(sandbox: &NodeSandbox, spec: &CniLoopSpec) -> Result<Vec<CniPod>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("the bench's own path: {e}"))?;
    let mut child = sandbox
        .command(&exe, &["cni-loop"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the in-node CNI loop: {e}"))?;
    let input = serde_json::to_vec(spec).map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        if let Err(e) = stdin.write_all(&input) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("handing the loop its spec: {e}"));
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for the in-node CNI loop: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the in-node CNI loop failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let rows: Vec<(usize, Vec<(f64, f64)>)> = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("the in-node CNI loop's output: {e}"))?;
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, (first, times))| CniPod {
            index: i as u32,
            first,
            times,
        })
        .collect())
}

/// The in-node loop (`flannel-bench cni-loop`): for every pod, ADD then
/// DEL through each path, the order rotating from pod to pod, each plugin
/// executed directly with the CNI environment, as a runtime does. Prints
/// `[[first, [[add_ms, del_ms], ...]], ...]` as JSON.
pub fn cni_loop(spec: &CniLoopSpec) -> Result<String, String> {
    let mut rows = Vec::with_capacity(spec.pods as usize);
    for i in 0..spec.pods {
        let first = i as usize % spec.paths.len();
        let mut times = vec![(0.0, 0.0); spec.paths.len()];
        for k in 0..spec.paths.len() {
            let at = (first + k) % spec.paths.len();
            let path = &spec.paths[at];
            let id = format!("bench-{at}-{i:04}");
            let add = direct_call(path, "ADD", &id, &spec.pod_netns)?;
            let del = direct_call(path, "DEL", &id, &spec.pod_netns)?;
            times[at] = (ms(add), ms(del));
        }
        rows.push((first, times));
    }
    serde_json::to_string(&rows).map_err(|e| e.to_string())
}

fn direct_call(path: &LoopPath, command: &str, id: &str, netns: &Path) -> Result<Duration, String> {
    use std::io::Write as _;
    let started = Instant::now();
    let mut child = Command::new(&path.exe)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &path.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", path.exe.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(path.conf.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{} {command}: stdin: {e}", path.exe.display()));
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{} {command}: {e}", path.exe.display()))?;
    let took = started.elapsed();
    if !output.status.success() {
        return Err(format!(
            "{} {command} {id}: {}; stdout {}; stderr {}",
            path.exe.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(took)
}

/// One pod of the CNI scenario: ADD and DEL through each path, ms.
#[derive(Debug, Clone)]
pub struct CniPod {
    /// Pod number.
    pub index: u32,
    /// The path that ran first for this pod.
    pub first: usize,
    /// (ADD, DEL) per path, in the order of [`CniOverhead::paths`].
    pub times: Vec<(f64, f64)>,
}

/// What the overhead is made of, measured apart in the same run (medians
/// of as many calls as there are pods), ms.
#[derive(Debug, Clone, Default)]
pub struct CniParts {
    /// Per path (same order), one plugin process that does almost
    /// nothing: exec, loading, start-up and exit (`CNI_COMMAND=VERSION`,
    /// run directly, no wrapper). `None` for the floor.
    pub exec_ms: Vec<Option<f64>>,
    /// Writing a delegate-sized file atomically with both fsyncs (file and
    /// directory), as the plugin saved its state before (see
    /// vendor-notes/cni.md), on the node's `/var/lib` file system.
    pub durable_write_ms: f64,
    /// The same write without the fsyncs, as the plugin saves it now.
    pub plain_write_ms: f64,
}

impl CniParts {
    fn measure(paths: &[CniPath], calls: u32, dir: &Path) -> Result<CniParts, String> {
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            report::percentile(&v, 50.0)
        };
        let mut exec_ms = Vec::new();
        for path in paths {
            if path.plugin != "flannel" {
                exec_ms.push(None);
                continue;
            }
            let exe = find_plugin(path)?;
            let mut times = Vec::new();
            for _ in 0..calls {
                let started = Instant::now();
                let out = Command::new(&exe)
                    .env("CNI_COMMAND", "VERSION")
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("{}: {e}", exe.display()))?;
                times.push(ms(started.elapsed()));
                if !out.status.success() {
                    return Err(format!("{} VERSION: {}", exe.display(), out.status));
                }
            }
            exec_ms.push(Some(median(times)));
        }
        let probe = dir.join("bench-write-probe");
        std::fs::create_dir_all(&probe).map_err(|e| format!("{}: {e}", probe.display()))?;
        let bytes = vec![b'x'; 300];
        let (mut durable, mut plain) = (Vec::new(), Vec::new());
        for i in 0..calls {
            let file = probe.join(format!("c{i}"));
            let started = Instant::now();
            flannel_embed::files::write_atomic(&file, &bytes).map_err(|e| e.to_string())?;
            durable.push(ms(started.elapsed()));
            let file = probe.join(format!("p{i}"));
            let temp = probe.join(format!(".p{i}.tmp"));
            let started = Instant::now();
            std::fs::write(&temp, &bytes)
                .and_then(|()| std::fs::rename(&temp, &file))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            plain.push(ms(started.elapsed()));
        }
        let _ = std::fs::remove_dir_all(&probe);
        Ok(CniParts {
            exec_ms,
            durable_write_ms: median(durable),
            plain_write_ms: median(plain),
        })
    }
}

/// The CNI-overhead result.
#[derive(Debug, Clone)]
pub struct CniOverhead {
    /// Pods per path.
    pub pods: u32,
    /// Wall time of the measured loop, seconds.
    pub wall_seconds: f64,
    /// The delegate config our plugin saved (what `bridge` got directly).
    pub delegate: String,
    /// The compared paths; the first is the floor.
    pub paths: Vec<CniPath>,
    /// One per pod.
    pub samples: Vec<CniPod>,
    /// The parts, measured apart (in one of the runs).
    pub parts: Option<CniParts>,
}

/// p50/p99 of ADD+DEL and p50 of ADD and of DEL, ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct CniStats {
    /// Median ADD+DEL.
    pub p50: f64,
    /// 99th percentile ADD+DEL.
    pub p99: f64,
    /// Median ADD.
    pub add_p50: f64,
    /// Median DEL.
    pub del_p50: f64,
}

impl CniOverhead {
    /// Statistics of path `at`.
    pub fn stats(&self, at: usize) -> CniStats {
        let sorted = |f: &dyn Fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = self.samples.iter().map(|p| f(&p.times[at])).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v
        };
        let total = sorted(&|t| t.0 + t.1);
        CniStats {
            p50: report::percentile(&total, 50.0),
            p99: report::percentile(&total, 99.0),
            add_p50: report::percentile(&sorted(&|t| t.0), 50.0),
            del_p50: report::percentile(&sorted(&|t| t.1), 50.0),
        }
    }

    /// The path the goal is judged on: the static plugin when measured
    /// (what a k3d/kind image ships), else the dynamic one.
    pub fn judged(&self) -> usize {
        self.paths.len() - 1
    }

    /// What path `at` adds over the floor: the median over pods of (its
    /// ADD+DEL - the floor's ADD+DEL) for the same pod slot, ms. The paths
    /// of a pod run back to back, so this cancels the drift of the machine
    /// over the run, which the difference of the medians does not (that
    /// one moved between +1.9 and +5.0 ms in two runs where this one
    /// stayed at 4.5).
    pub fn overhead_ms(&self, at: usize) -> f64 {
        let mut differences: Vec<f64> = self
            .samples
            .iter()
            .map(|p| (p.times[at].0 + p.times[at].1) - (p.times[0].0 + p.times[0].1))
            .collect();
        differences.sort_by(|a, b| a.total_cmp(b));
        report::percentile(&differences, 50.0)
    }

    /// A 95 % interval for [`CniOverhead::overhead_ms`] (bootstrap of the
    /// per-pod differences, 2,000 resamples, fixed seed): how far the
    /// figure can move from run to run by sampling alone.
    pub fn overhead_interval_ms(&self, at: usize) -> (f64, f64) {
        let differences: Vec<f64> = self
            .samples
            .iter()
            .map(|p| (p.times[at].0 + p.times[at].1) - (p.times[0].0 + p.times[0].1))
            .collect();
        bootstrap_median_interval(&differences, 2000)
    }
}

/// 2.5th and 97.5th percentiles of the median of `values` over
/// `resamples` bootstrap resamples (xorshift, fixed seed: the same data
/// gives the same interval).
pub fn bootstrap_median_interval(values: &[f64], resamples: usize) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut medians = Vec::with_capacity(resamples);
    let mut sample = vec![0.0; values.len()];
    for _ in 0..resamples {
        for slot in sample.iter_mut() {
            *slot = values[(next() % values.len() as u64) as usize];
        }
        sample.sort_by(|a, b| a.total_cmp(b));
        medians.push(report::percentile(&sample, 50.0));
    }
    medians.sort_by(|a, b| a.total_cmp(b));
    (
        report::percentile(&medians, 2.5),
        report::percentile(&medians, 97.5),
    )
}

impl BenchResult for CniOverhead {
    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "CNI ADD+DEL per pod, {} pods sequential per path, interleaved, one node netns (wall {:.1} s)",
            self.pods, self.wall_seconds
        );
        let _ = writeln!(out, "  delegate (saved by our plugin): {}", self.delegate);
        let _ = writeln!(
            out,
            "  {:<38} {:>8} {:>8} {:>8} {:>8}  overhead [95 % interval]",
            "path", "p50 ms", "p99 ms", "ADD p50", "DEL p50"
        );
        for (at, path) in self.paths.iter().enumerate() {
            let v = self.stats(at);
            let overhead = if at == 0 {
                "-".to_string()
            } else {
                let (lo, hi) = self.overhead_interval_ms(at);
                format!("{:+.2} [{lo:+.2}, {hi:+.2}]", self.overhead_ms(at))
            };
            let _ = writeln!(
                out,
                "  {:<38} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {}",
                path.label, v.p50, v.p99, v.add_p50, v.del_p50, overhead
            );
        }
        let judged = self.judged();
        let overhead = self.overhead_ms(judged);
        let _ = writeln!(
            out,
            "  overhead = median of per-pod differences to the floor (ADD+DEL); goal <= 2 ms for {}: {overhead:.2} ms, {}",
            self.paths[judged].label,
            if overhead <= 2.0 { "met" } else { "NOT met" }
        );
        let Some(parts) = &self.parts else {
            return out;
        };
        let _ = writeln!(
            out,
            "  parts, measured apart (medians of {} calls):",
            self.pods
        );
        for (path, exec) in self.paths.iter().zip(&parts.exec_ms) {
            if let Some(exec) = exec {
                let _ = writeln!(
                    out,
                    "    {:<44} {exec:.3} ms per call",
                    format!(
                        "exec + start-up + exit, {}",
                        path.label.trim_start_matches("flannel, ")
                    ),
                );
            }
        }
        let execs: Vec<f64> = parts.exec_ms.iter().flatten().copied().collect();
        if let [dynamic, static_] = execs[..] {
            let _ = writeln!(
                out,
                "    {:<44} {:.3} ms per call",
                "dynamic loading (dynamic - static)",
                dynamic - static_
            );
        }
        let _ = writeln!(
            out,
            "    {:<44} {:.3} ms; with file and directory fsync {:.3} ms, which the plugin no longer does",
            "saving the delegate config (write + rename)", parts.plain_write_ms, parts.durable_write_ms
        );
        out
    }

    fn files(&self) -> Vec<(String, String)> {
        let slug = |at: usize| match (at, self.paths[at].plugin) {
            (0, plugin) => plugin.to_string(),
            (_, plugin) if self.paths[at].label.contains("static") => format!("{plugin}_static"),
            (_, plugin) => plugin.to_string(),
        };
        let mut header = vec!["pod".to_string(), "first".to_string()];
        for at in 0..self.paths.len() {
            let name = slug(at);
            header.extend([
                format!("{name}_add_ms"),
                format!("{name}_del_ms"),
                format!("{name}_ms"),
            ]);
            if at > 0 {
                header.push(format!("{name}_overhead_ms"));
            }
        }
        let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut csv = Csv::new(&header_refs);
        for p in &self.samples {
            let mut row = vec![p.index.to_string(), slug(p.first)];
            let floor = p.times[0].0 + p.times[0].1;
            for (at, (add, del)) in p.times.iter().enumerate() {
                row.extend([
                    report::num(*add, 3),
                    report::num(*del, 3),
                    report::num(add + del, 3),
                ]);
                if at > 0 {
                    row.push(report::num(add + del - floor, 3));
                }
            }
            csv.row(row);
        }
        let name = if self.paths[0].plugin == "bridge" {
            "cni.csv".to_string()
        } else {
            format!("cni-{}.csv", self.paths[0].plugin)
        };
        vec![(name, csv.into_text())]
    }
}

/// The data-plane scenario from async code: runs [`data_plane_blocking`]
/// on a blocking thread (the lab runs a small tokio runtime of its own,
/// which must not start or drop inside an async context).
pub async fn data_plane(seconds: u32, runs: usize) -> Result<DataPlane, String> {
    tokio::task::spawn_blocking(move || data_plane_blocking(seconds, runs))
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(panic) => format!(
                "the data-plane benchmark {}",
                super::panic_message(panic.as_ref())
            ),
            Err(e) => format!("the data-plane benchmark did not finish: {e}"),
        })?
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

/// One data-plane measurement.
#[derive(Debug, Clone)]
pub struct DataPlaneRun {
    /// Pod -> pod over the overlay, bit/s.
    pub overlay_bps: f64,
    /// Node -> node over the underlay, bit/s.
    pub underlay_bps: f64,
    /// Average RTT of 20 pings pod -> pod, ms.
    pub rtt_overlay_ms: f64,
    /// Average RTT of 20 pings node -> node, ms.
    pub rtt_underlay_ms: f64,
    /// A 1422-byte DF ping crossed the overlay.
    pub fits_1422: bool,
    /// A 1423-byte DF ping crossed the overlay (it must not).
    pub crosses_1423: bool,
    /// What ping said about the 1423-byte one.
    pub too_big_error: String,
}

impl DataPlaneRun {
    /// Overlay throughput as a percentage of the underlay's.
    pub fn ratio_percent(&self) -> f64 {
        self.overlay_bps / self.underlay_bps.max(1.0) * 100.0
    }

    /// 1422 crosses and 1423 does not.
    pub fn mtu_exact(&self) -> bool {
        self.fits_1422 && !self.crosses_1423
    }
}

/// The data-plane result.
#[derive(Debug, Clone)]
pub struct DataPlane {
    /// iperf3 seconds per direction.
    pub seconds: u32,
    /// Lab set-up time, seconds.
    pub setup_seconds: f64,
    /// Wait for the peers to be programmed after set-up, seconds.
    pub peers_wait_seconds: f64,
    /// Every agent programmed every peer.
    pub all_programmed: bool,
    /// One per run.
    pub runs: Vec<DataPlaneRun>,
    /// What the lab's teardown could not remove.
    pub teardown_problems: Vec<String>,
}

impl DataPlane {
    fn median_of(&self, f: fn(&DataPlaneRun) -> f64) -> f64 {
        report::median_of(&self.runs, f).unwrap_or(0.0)
    }

    /// Median overlay/underlay percentage over the runs.
    pub fn ratio_percent(&self) -> f64 {
        self.median_of(DataPlaneRun::ratio_percent)
    }

    /// Every run: 1422 crosses, 1423 does not.
    pub fn mtu_exact(&self) -> bool {
        !self.runs.is_empty() && self.runs.iter().all(DataPlaneRun::mtu_exact)
    }
}

impl BenchResult for DataPlane {
    fn table(&self) -> String {
        let mut out = String::new();
        let runs = self.runs.len();
        let _ = writeln!(
            out,
            "Data plane, 2-node vxlan lab (setup {:.1} s, peers programmed after {:.1} s more: {}), iperf3 TCP {} s each, {runs} run(s) interleaved, median",
            self.setup_seconds,
            self.peers_wait_seconds,
            if self.all_programmed { "all" } else { "NOT all" },
            self.seconds
        );
        let overlay = self.median_of(|r| r.overlay_bps);
        let underlay = self.median_of(|r| r.underlay_bps);
        let ratio = self.ratio_percent();
        let _ = writeln!(
            out,
            "  throughput overlay pod->pod {:.2} Gbit/s, underlay node->node {:.2} Gbit/s: {ratio:.1}% (goal >= 85%: {})",
            overlay / 1e9,
            underlay / 1e9,
            if ratio >= 85.0 { "met" } else { "NOT met" }
        );
        let rtt_overlay = self.median_of(|r| r.rtt_overlay_ms);
        let rtt_underlay = self.median_of(|r| r.rtt_underlay_ms);
        let _ = writeln!(
            out,
            "  ping RTT avg of 20: overlay {rtt_overlay:.3} ms, underlay {rtt_underlay:.3} ms, added {:.3} ms",
            self.median_of(|r| r.rtt_overlay_ms - r.rtt_underlay_ms)
        );
        let fits = self.runs.iter().filter(|r| r.fits_1422).count();
        let too_big = self.runs.iter().filter(|r| r.crosses_1423).count();
        let error = self
            .runs
            .iter()
            .map(|r| r.too_big_error.as_str())
            .find(|e| !e.is_empty())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  path MTU pod->pod, DF ping: 1422 B payload {}, 1423 B {}{} (goal exact 1450: {})",
            match fits {
                n if n == runs => "crosses".to_string(),
                0 => "does NOT cross".to_string(),
                n => format!("crosses in only {n} of {runs} runs"),
            },
            match too_big {
                0 => "does not".to_string(),
                n if n == runs => "crosses".to_string(),
                n => format!("crosses in {n} of {runs} runs"),
            },
            if too_big == runs || error.is_empty() {
                String::new()
            } else {
                format!(" ({error})")
            },
            if self.mtu_exact() { "met" } else { "NOT met" }
        );
        let each: Vec<(f64, f64, f64)> = self
            .runs
            .iter()
            .map(|r| (r.overlay_bps, r.underlay_bps, r.ratio_percent()))
            .collect();
        report::runs_and_teardown(
            &mut out,
            "overlay/underlay",
            &each,
            (1e9, "Gbit/s", 2),
            &self.teardown_problems,
        );
        out
    }

    fn files(&self) -> Vec<(String, String)> {
        let mut csv = Csv::new(&[
            "run",
            "iperf_seconds",
            "overlay_gbit_s",
            "underlay_gbit_s",
            "ratio_percent",
            "rtt_overlay_ms",
            "rtt_underlay_ms",
            "rtt_added_ms",
            "df_1422_crosses",
            "df_1423_crosses",
            "mtu_exact",
            "df_1423_error",
        ]);
        for (i, r) in self.runs.iter().enumerate() {
            csv.row([
                (i + 1).to_string(),
                self.seconds.to_string(),
                report::num(r.overlay_bps / 1e9, 3),
                report::num(r.underlay_bps / 1e9, 3),
                report::num(r.ratio_percent(), 2),
                report::num(r.rtt_overlay_ms, 3),
                report::num(r.rtt_underlay_ms, 3),
                report::num(r.rtt_overlay_ms - r.rtt_underlay_ms, 3),
                r.fits_1422.to_string(),
                r.crosses_1423.to_string(),
                r.mtu_exact().to_string(),
                r.too_big_error.clone(),
            ]);
        }
        csv.row([
            "median".into(),
            self.seconds.to_string(),
            report::num(self.median_of(|r| r.overlay_bps) / 1e9, 3),
            report::num(self.median_of(|r| r.underlay_bps) / 1e9, 3),
            report::num(self.ratio_percent(), 2),
            report::num(self.median_of(|r| r.rtt_overlay_ms), 3),
            report::num(self.median_of(|r| r.rtt_underlay_ms), 3),
            report::num(self.median_of(|r| r.rtt_overlay_ms - r.rtt_underlay_ms), 3),
            self.runs.iter().all(|r| r.fits_1422).to_string(),
            self.runs.iter().any(|r| r.crosses_1423).to_string(),
            self.mtu_exact().to_string(),
            String::new(),
        ]);
        vec![("data-plane.csv".into(), csv.into_text())]
    }
}

/// The data-plane scenario, blocking: a 2-node vxlan lab with one pod per
/// node; `runs` times: iperf3 TCP for `seconds` pod0 -> pod1 (overlay) and
/// node0 -> node1 (underlay: eth0 over the underlay bridge), which one
/// first alternating, 20 pings each way (average RTT), and the overlay's
/// path MTU with don't-fragment pings.
pub fn data_plane_blocking(seconds: u32, runs: usize) -> Result<DataPlane, String> {
    let seconds = seconds.max(1);
    let runs = runs.max(1);
    let (mut result, problems) =
        with_two_node_lab("bplane", "vxlan", Duration::from_secs(20), |lab, setup| {
            measure(lab, seconds, runs, setup)
        })?;
    result.teardown_problems = problems;
    Ok(result)
}

/// Runs `measure` with a 2-node lab of `backend` (one pod per node, agents
/// logging warnings only) and the seconds its set-up took, then tears the
/// lab down; returns the result and what the teardown could not remove.
pub(super) fn with_two_node_lab<T>(
    tag: &str,
    backend: &str,
    wait: Duration,
    measure: impl FnOnce(&Lab, f64) -> Result<T, String>,
) -> Result<(T, Vec<String>), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let mut options = Options::for_tests(tag, &tmp.path().join("lab"));
    options.nodes = 2;
    options.backend = backend.into();
    options.pods_per_node = 1;
    options.rust_log = "warn".into();
    options.wait = wait;
    let built = Instant::now();
    let lab = Lab::up(&options, &mut |_| {}).map_err(|e| format!("lab up: {e}"))?;
    let result = measure(&lab, built.elapsed().as_secs_f64());
    let problems = match lab.down() {
        Ok(problems) => problems,
        Err(e) => vec![e.to_string()],
    };
    Ok((result?, problems))
}

fn measure(lab: &Lab, seconds: u32, runs: usize, setup_seconds: f64) -> Result<DataPlane, String> {
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
    let peers_wait_seconds = peers_ready.elapsed().as_secs_f64();
    let all_programmed = table
        .rows
        .iter()
        .filter(|r| r.agent.is_some())
        .all(|r| r.peers_expected > 0 && r.peers_programmed == r.peers_expected);
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
    let overlay_iperf = || {
        iperf(lab.pod_command(&pod1, "iperf3", &["-s", "-1"]), || {
            lab.pod_command(&pod0, "iperf3", &["-c", &pod1_ip, "-t", &secs, "-J"])
        })
        .map_err(|e| format!("overlay iperf3 {pod0} -> {pod1_ip}: {e}"))
    };
    let underlay_iperf = || {
        iperf(in_ns(&node1_ns, "iperf3", &["-s", "-1"]), || {
            in_ns(&node0_ns, "iperf3", &["-c", &node1_ip, "-t", &secs, "-J"])
        })
        .map_err(|e| format!("underlay iperf3 {node0_ns} -> {node1_ip}: {e}"))
    };
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

    let mut result = DataPlane {
        seconds,
        setup_seconds,
        peers_wait_seconds,
        all_programmed,
        runs: Vec::with_capacity(runs),
        teardown_problems: Vec::new(),
    };
    for run in 0..runs {
        let (overlay_bps, underlay_bps) = if run % 2 == 0 {
            let overlay = overlay_iperf()?;
            (overlay, underlay_iperf()?)
        } else {
            let underlay = underlay_iperf()?;
            (overlay_iperf()?, underlay)
        };
        let rtt_overlay_ms = ping_avg(lab.pod_command(&pod0, "ping", &pod_args))
            .map_err(|e| format!("overlay ping {pod0} -> {pod1_ip}: {e}"))?;
        let rtt_underlay_ms = ping_avg(in_ns(&node0_ns, "ping", &node_args))
            .map_err(|e| format!("underlay ping {node0_ns} -> {node1_ip}: {e}"))?;
        let (fits_1422, _) = df("1422");
        let (crosses_1423, too_big_error) = df("1423");
        let done = DataPlaneRun {
            overlay_bps,
            underlay_bps,
            rtt_overlay_ms,
            rtt_underlay_ms,
            fits_1422,
            crosses_1423,
            too_big_error,
        };
        eprintln!(
            "data plane: run {}/{runs}: overlay {:.2} Gbit/s, underlay {:.2} Gbit/s ({:.1}%), MTU {}",
            run + 1,
            overlay_bps / 1e9,
            underlay_bps / 1e9,
            done.ratio_percent(),
            if done.mtu_exact() { "exact" } else { "NOT exact" }
        );
        result.runs.push(done);
    }
    Ok(result)
}
