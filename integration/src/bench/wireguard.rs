//! Two wireguard-native benchmark scenarios, on the userspace path (this
//! kernel has no WireGuard module, so every device is Debian's
//! `wireguard-go`, configured over its UAPI socket):
//!
//! - [`wg_cold_sync`]: a `flannel-agent --flannel-backend wireguard-native`
//!   process in a fresh namespace programs N peers (API server already up
//!   and filled); time from spawn until subnet.env appears (written after
//!   the first complete reconcile), then the device must really hold N
//!   peers. The floor is the same device state written by hand into a
//!   wireguard-go that is already running in a twin namespace: one
//!   `wg setconf` (private key, port, every peer), and the agent's own
//!   `set=1` request (the library's encoder) written straight to the
//!   socket. Interleaved in the same run, medians.
//! - [`wg_throughput`]: a 2-node wireguard-native lab; pod-to-pod iperf3
//!   TCP through the wireguard-go tunnel against node-to-node over the
//!   bare underlay, interleaved, medians, with the CPU both wireguard-go
//!   processes burn meanwhile.
//!
//! Every wireguard-go here (ours and the agent's) runs in a private mount
//! namespace whose `/run` is a fresh tmpfs holding only `wireguard/` and
//! the one namespace handle it needs, so the machine's `/run/wireguard` is
//! never looked at, created or written. Twin namespaces route the peers'
//! endpoints to a gateway with a permanent neighbour entry, so handshake
//! packets leave `eth0` and die on its peer end inside the same namespace
//! (see `prepare_underlay` for why they must not wait for ARP). All
//! processes are stopped and all namespaces deleted on every exit path.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flannel_embed::wireguard::{uapi, DeviceUpdate, Key, PeerChange, PeerConfig, PrivateKey};
use k8s_openapi::api::core::v1::Node;
use serde_json::Value;

use super::report::{self, BenchResult, Csv};
use crate::apiserver::{ready_node, Options as ApiOptions, TestApiServer};
use crate::fixtures::{wireguard_peer, PREFIX};
use crate::lab::wg::parse_dump;
use crate::lab::{processes_in_netns, Family, Lab};
use crate::netns::TestNetns;

const NETCONF: &str = r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "wireguard", "PersistentKeepaliveInterval": 25}}"#;
/// The device the agent makes (and the floor imitates).
const DEVICE: &str = "flannel-wg";
/// Its MTU: the uplink's 1500 minus WireGuard's 80.
const DEVICE_MTU: &str = "1420";
/// Our own lease's network address, as the agent puts it on the device.
const DEVICE_ADDRESS: &str = "10.42.0.0/32";
/// The route the agent adds for the cluster network.
const CLUSTER_NETWORK: &str = "10.0.0.0/8";
const PORT: u16 = 51820;
const KEEPALIVE: u16 = 25;
/// The twin namespaces' uplink (as cold.rs): `eth0` with this address ...
const UPLINK_ADDR: &str = "192.168.255.1/16";
/// ... and this (absent) gateway.
const GATEWAY: &str = "192.168.0.254";
/// What the gateway's MAC is said to be: no interface has it, so frames
/// sent to it are dropped on arrival at `eth0-peer`.
const GATEWAY_MAC: &str = "02:00:00:00:00:fe";
/// Most peers a size may have (the fixture's podCIDRs stay inside
/// 10.0.0.0/8 and its public IPs distinct).
const MAX_PEERS: u32 = 50_000;
/// How long wireguard-go may take to make its socket.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long one configuration (setconf, UAPI set, the agent) may take.
const SET_LIMIT: Duration = Duration::from_secs(60);
/// Short commands (`wg show`, `wireguard-go --version`).
const SHORT_LIMIT: Duration = Duration::from_secs(20);

/// In a fresh mount namespace (`unshare --mount --propagation private`):
/// a tmpfs on `$1` with `netns/$2` (bound to the real handle) and an empty
/// `wireguard/`, put over `/run`; then `exec` the rest of the arguments.
const PRIVATE_RUN: &str = r#"set -e
run="$1"; ns="$2"; shift 2
mount -t tmpfs -o mode=0755 flannel-bench-run "$run"
mkdir "$run/netns" "$run/wireguard"
: > "$run/netns/$ns"
mount --bind "/run/netns/$ns" "$run/netns/$ns"
mount --rbind "$run" /run
exec "$@""#;

// ------------------------------------------------------------- processes

/// `program arg arg ...` for messages.
fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `command` (stdin closed, output captured), killing it after
/// `limit`; returns its output and how long it ran (spawn to exit,
/// observed within a millisecond).
fn bounded(command: &mut Command, limit: Duration) -> Result<(Output, Duration), String> {
    let what = describe(command);
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        pipe.map(|mut pipe| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = started + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for {what}: {e}"));
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{what} did not finish within {} s",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let took = started.elapsed();
    let collect = |handle: Option<std::thread::JoinHandle<Vec<u8>>>| {
        handle.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok((
        Output {
            status,
            stdout: collect(stdout),
            stderr: collect(stderr),
        },
        took,
    ))
}

/// [`bounded`], insisting on success; returns stdout and the run time.
fn bounded_ok(command: &mut Command, limit: Duration) -> Result<(String, Duration), String> {
    let what = describe(command);
    let (output, took) = bounded(command, limit)?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok((String::from_utf8_lossy(&output.stdout).into_owned(), took))
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// On drop, stops every process left in namespace `.0` (wireguard-go
/// outlives the agent that started it, by design). Made right after the
/// namespace, so it runs before the namespace is deleted.
struct Reaper(String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for proc in processes_in_netns(std::slice::from_ref(&self.0)) {
            proc.stop(Duration::from_secs(2), None);
        }
    }
}

/// `unshare --mount --propagation private -- sh -c PRIVATE_RUN` with the
/// tmpfs at `run` (an empty directory of ours) and `ns`'s handle, then
/// `program args...`.
fn in_private_run(run: &Path, ns: &TestNetns, program: &Path, args: &[String]) -> Command {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(PRIVATE_RUN)
        .arg("sh")
        .arg(run)
        .arg(ns.name())
        .arg(program)
        .args(args);
    command
}

/// The mount namespace of `pid`, to tell a private one from ours.
fn mount_ns(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// Whether `pid` runs the wireguard-go binary by now (the exec chain
/// unshare -> sh -> ip netns exec -> wireguard-go keeps the pid).
fn is_wireguard_go(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "wireguard-go"))
}

/// The device's control socket as process `pid` (in its private mount
/// namespace) sees it, reached from here through `/proc/<pid>/root`.
fn socket_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root/run/wireguard/{DEVICE}.sock"))
}

/// Refuses a wireguard-go that shares our mount namespace (its socket
/// would be the machine's `/run/wireguard`).
fn check_private(pid: u32) -> Result<(), String> {
    match (mount_ns(&pid.to_string()), mount_ns("self")) {
        (Some(theirs), Some(ours)) if theirs != ours => Ok(()),
        (Some(_), Some(_)) => Err(format!(
            "wireguard-go (pid {pid}) runs in our own mount namespace, not a private one"
        )),
        _ => Err(format!("cannot read the mount namespace of pid {pid}")),
    }
}

/// What a wireguard-go that does not answer is doing, for errors: its
/// threads' wait channels (e.g. `sock_alloc_send_pskb`: sends blocked on a
/// full socket buffer), the namespace's neighbour states, its log.
fn diagnose(pid: u32, ns: &TestNetns, log: &Path) -> String {
    let mut waits: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.filter_map(Result::ok) {
            let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            let wchan = if wchan.is_empty() {
                "running".into()
            } else {
                wchan
            };
            *waits.entry(wchan).or_default() += 1;
        }
    }
    let waits: Vec<String> = waits.iter().map(|(w, n)| format!("{n} {w}")).collect();
    let mut neighbours: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok((text, _)) = bounded_ok(
        Command::new("ip").args(["-n", ns.name(), "neigh", "show"]),
        SHORT_LIMIT,
    ) {
        for line in text.lines() {
            let state = line.split_whitespace().last().unwrap_or("?").to_string();
            *neighbours.entry(state).or_default() += 1;
        }
    }
    let neighbours: Vec<String> = neighbours.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!(
        "wireguard-go pid {pid} threads: {}; neighbours in {}: {}; wireguard-go log: {}",
        waits.join(", "),
        ns.name(),
        if neighbours.is_empty() {
            "none".into()
        } else {
            neighbours.join(", ")
        },
        tail(log)
    )
}

/// The last lines of a log file, for errors.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines[lines.len().saturating_sub(3)..].join(" / ");
    if last.is_empty() {
        format!("nothing in {}", path.display())
    } else {
        format!("{last} (from {})", path.display())
    }
}

/// One peer as compared: key (base64), endpoint, AllowedIPs, keepalive.
type PeerRow = (String, String, String, Option<u64>);

/// What `peers` should look like on the device.
fn expected_rows(peers: &[PeerEntry]) -> BTreeSet<PeerRow> {
    peers
        .iter()
        .map(|p| {
            (
                p.key.to_base64(),
                p.endpoint.clone(),
                p.lease.clone(),
                Some(u64::from(KEEPALIVE)),
            )
        })
        .collect()
}

/// Checks with `wg show flannel-wg dump` (inside `pid`'s mount namespace)
/// that the device holds exactly `peers`: keys, endpoints, AllowedIPs and
/// keepalive.
fn check_peers(pid: u32, peers: &[PeerEntry], who: &str) -> Result<(), String> {
    let (text, _) = bounded_ok(
        Command::new("nsenter").args(["-t", &pid.to_string(), "-m", "wg", "show", DEVICE, "dump"]),
        SHORT_LIMIT,
    )?;
    let dump =
        parse_dump(&text).ok_or_else(|| format!("{who}: cannot parse `wg show {DEVICE} dump`"))?;
    let held: BTreeSet<PeerRow> = dump
        .peers
        .iter()
        .map(|p| {
            (
                p.public_key.clone(),
                p.endpoint.clone().unwrap_or_else(|| "(none)".into()),
                p.allowed_ips.join(","),
                p.keepalive,
            )
        })
        .collect();
    let want = expected_rows(peers);
    if held == want {
        return Ok(());
    }
    let missing = want.difference(&held).count();
    let extra: Vec<&PeerRow> = held.difference(&want).take(2).collect();
    Err(format!(
        "{who}: {DEVICE} holds {} peers, {missing} of the {} expected missing or different (e.g. {:?}; unexpected: {extra:?})",
        dump.peers.len(),
        want.len(),
        want.difference(&held).next()
    ))
}

/// `wireguard-go --version`'s version word, for titles.
fn wireguard_go_version() -> String {
    bounded(Command::new("wireguard-go").arg("--version"), SHORT_LIMIT)
        .ok()
        .and_then(|(o, _)| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find(|w| w.starts_with('v'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "(version unknown)".into())
}

// ------------------------------------------------------------- peers

/// What a peer Node asks for: its key, endpoint and lease.
struct PeerEntry {
    key: Key,
    endpoint: String,
    lease: String,
}

/// Reads [`wireguard_peer`]`(index)` back, so the floor writes exactly
/// what the fixture announces.
fn peer_entry(index: u32) -> Result<PeerEntry, String> {
    let node: Node = wireguard_peer(index);
    let annotations = node.metadata.annotations.clone().unwrap_or_default();
    let get = |key: &str| {
        annotations
            .get(&format!("{PREFIX}{key}"))
            .cloned()
            .ok_or_else(|| format!("wireguard_peer({index}) has no {key} annotation"))
    };
    let data: Value = serde_json::from_str(&get("backend-data")?)
        .map_err(|e| format!("wireguard_peer({index}) backend-data: {e}"))?;
    let key = data["PublicKey"]
        .as_str()
        .ok_or_else(|| format!("wireguard_peer({index}) backend-data has no PublicKey"))?;
    let key = Key::from_base64(key).map_err(|e| format!("wireguard_peer({index}): {e}"))?;
    let port = data["Port"]
        .as_u64()
        .ok_or_else(|| format!("wireguard_peer({index}) backend-data has no Port"))?;
    let lease = node
        .spec
        .and_then(|s| s.pod_cidr)
        .ok_or_else(|| format!("wireguard_peer({index}) has no podCIDR"))?;
    Ok(PeerEntry {
        key,
        endpoint: format!("{}:{port}", get("public-ip")?),
        lease,
    })
}

/// `wg setconf` input: the interface (key, port), then every peer.
fn wg_config(private: &PrivateKey, peers: &[PeerEntry]) -> String {
    let mut text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n",
        private.as_key().to_base64()
    );
    for peer in peers {
        let _ = write!(
            text,
            "\n[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = {}\nPersistentKeepalive = {KEEPALIVE}\n",
            peer.key.to_base64(),
            peer.endpoint,
            peer.lease
        );
    }
    text
}

/// The `set=1` request the agent sends for a fresh device (the library's
/// own encoder): key, port, every peer set in full.
fn uapi_request(private: &PrivateKey, peers: &[PeerEntry]) -> Result<String, String> {
    let mut update = DeviceUpdate {
        private_key: Some(private.clone()),
        listen_port: Some(PORT),
        peers: Vec::with_capacity(peers.len()),
    };
    for peer in peers {
        let endpoint = peer
            .endpoint
            .parse()
            .map_err(|e| format!("endpoint {}: {e}", peer.endpoint))?;
        let lease = peer
            .lease
            .parse()
            .map_err(|e| format!("lease {}: {e}", peer.lease))?;
        update.peers.push(PeerChange::Set(PeerConfig {
            public_key: peer.key,
            preshared_key: None,
            endpoint,
            keepalive: KEEPALIVE,
            allowed_ips: BTreeSet::from([lease]),
        }));
    }
    Ok(uapi::encode_set(&update))
}

// ------------------------------------------------------------- cold sync

/// One interleaved run at one size.
#[derive(Debug, Clone)]
pub struct WgColdRun {
    /// Agent: spawn -> subnet.env, seconds (starting wireguard-go
    /// included).
    pub agent_seconds: f64,
    /// One `wg setconf` into a running, up wireguard-go, seconds.
    pub setconf_seconds: f64,
    /// The agent's `set=1` request written straight to the socket of a
    /// running, up wireguard-go, until its answer, seconds.
    pub uapi_seconds: f64,
    /// The floor's wireguard-go: spawn -> socket answers, seconds.
    pub wg_start_seconds: f64,
    /// Agent peak RSS (VmHWM) at subnet.env, MiB.
    pub agent_peak_rss_mib: f64,
    /// Agent CPU (user + system) at subnet.env, seconds.
    pub agent_cpu_seconds: f64,
    /// The agent's wireguard-go RSS at subnet.env, MiB.
    pub wg_go_rss_mib: f64,
}

/// Every run at one peer count.
pub type WgColdSize = report::SizeRuns<WgColdRun>;

impl WgColdSize {
    /// Median agent seconds.
    pub fn agent(&self) -> Option<f64> {
        self.median_of(|r| r.agent_seconds)
    }

    /// Median `wg setconf` seconds.
    pub fn floor(&self) -> Option<f64> {
        self.median_of(|r| r.setconf_seconds)
    }

    /// Median direct UAPI seconds.
    pub fn uapi(&self) -> Option<f64> {
        self.median_of(|r| r.uapi_seconds)
    }

    /// Median wireguard-go start-up seconds.
    pub fn wg_start(&self) -> Option<f64> {
        self.median_of(|r| r.wg_start_seconds)
    }

    /// Median agent / median `wg setconf`.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.agent()? / self.floor()?.max(1e-9))
    }

    /// Median agent peak RSS, MiB.
    pub fn rss(&self) -> Option<f64> {
        self.median_of(|r| r.agent_peak_rss_mib)
    }

    /// Median agent CPU seconds.
    pub fn cpu(&self) -> Option<f64> {
        self.median_of(|r| r.agent_cpu_seconds)
    }

    /// Median wireguard-go RSS, MiB.
    pub fn wg_go_rss(&self) -> Option<f64> {
        self.median_of(|r| r.wg_go_rss_mib)
    }
}

/// The wg-cold-sync result.
#[derive(Debug, Clone)]
pub struct WgColdSync {
    /// Per peer count.
    pub sizes: Vec<WgColdSize>,
    /// `wireguard-go --version`.
    pub wireguard_go: String,
    /// The machine (nproc, kernel).
    pub machine: String,
}

impl WgColdSync {
    /// The result at `peers` peers, if measured.
    pub fn size(&self, peers: u32) -> Option<&WgColdSize> {
        self.sizes.iter().find(|s| s.peers == peers)
    }

    fn runs_label(&self) -> String {
        report::runs_label(&self.sizes)
    }
}

impl BenchResult for WgColdSync {
    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "wireguard cold sync, userspace (wireguard-go {}, {}), {}, median:",
            self.wireguard_go,
            self.machine,
            self.runs_label()
        );
        let _ = writeln!(
            out,
            "  agent = spawn -> subnet.env, wireguard-go's own start-up INCLUDED (wg start s: what it takes here); floor = one `wg setconf` into an already running, up wireguard-go (start-up NOT included); uapi = the agent's set=1 request written straight to that socket"
        );
        let _ = writeln!(
            out,
            "{:>7} {:>9} {:>10} {:>7} {:>8} {:>11} {:>10} {:>10} {:>10}",
            "peers",
            "agent s",
            "setconf s",
            "ratio",
            "uapi s",
            "wg start s",
            "agent MiB",
            "agent cpu",
            "wg-go MiB"
        );
        for size in &self.sizes {
            if let (Some(agent), Some(floor), Some(ratio), Some(uapi), Some(start)) = (
                size.agent(),
                size.floor(),
                size.ratio(),
                size.uapi(),
                size.wg_start(),
            ) {
                let _ = writeln!(
                    out,
                    "{:>7} {:>9.3} {:>10.3} {:>7.2} {:>8.3} {:>11.3} {:>10.1} {:>10.2} {:>10.1}",
                    size.peers,
                    agent,
                    floor,
                    ratio,
                    uapi,
                    start,
                    size.rss().unwrap_or_default(),
                    size.cpu().unwrap_or_default(),
                    size.wg_go_rss().unwrap_or_default()
                );
            }
            if let Some(line) = size.failure_line() {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    fn files(&self) -> Vec<(String, String)> {
        let mut csv = Csv::new(&[
            "peers",
            "run",
            "agent_s",
            "floor_setconf_s",
            "floor_uapi_s",
            "ratio_agent_to_setconf",
            "wg_go_start_s",
            "agent_peak_rss_mib",
            "agent_cpu_s",
            "wg_go_rss_mib",
            "wireguard_go",
            "error",
        ]);
        for size in &self.sizes {
            for (i, run) in size.runs.iter().enumerate() {
                csv.row([
                    size.peers.to_string(),
                    (i + 1).to_string(),
                    report::num(run.agent_seconds, 4),
                    report::num(run.setconf_seconds, 4),
                    report::num(run.uapi_seconds, 4),
                    report::num(run.agent_seconds / run.setconf_seconds.max(1e-9), 3),
                    report::num(run.wg_start_seconds, 4),
                    report::num(run.agent_peak_rss_mib, 1),
                    report::num(run.agent_cpu_seconds, 2),
                    report::num(run.wg_go_rss_mib, 1),
                    self.wireguard_go.clone(),
                    String::new(),
                ]);
            }
            csv.row([
                size.peers.to_string(),
                "median".into(),
                report::opt(size.agent(), 4),
                report::opt(size.floor(), 4),
                report::opt(size.uapi(), 4),
                report::opt(size.ratio(), 3),
                report::opt(size.wg_start(), 4),
                report::opt(size.rss(), 1),
                report::opt(size.cpu(), 2),
                report::opt(size.wg_go_rss(), 1),
                self.wireguard_go.clone(),
                size.error.clone().unwrap_or_default(),
            ]);
        }
        vec![("wg-cold-sync.csv".into(), csv.into_text())]
    }

    fn error(&self) -> Option<String> {
        let failed: Vec<String> = self
            .sizes
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| format!("{} peers: {e}", s.peers)))
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }
}

/// Runs wg-cold-sync at each `(peers, runs)` of `plan` (on a thread of its
/// own: it blocks): per run the `wg setconf` floor, the direct UAPI floor
/// and the agent in turn. A size that fails is recorded and the next one
/// runs.
pub async fn wg_cold_sync(plan: &[(u32, usize)]) -> Result<WgColdSync, String> {
    let plan = plan.to_vec();
    tokio::task::spawn_blocking(move || wg_cold_sync_blocking(&plan))
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(panic) => format!(
                "the wg-cold-sync benchmark {}",
                super::panic_message(panic.as_ref())
            ),
            Err(e) => format!("the wg-cold-sync benchmark did not finish: {e}"),
        })?
}

/// [`wg_cold_sync`], blocking.
pub fn wg_cold_sync_blocking(plan: &[(u32, usize)]) -> Result<WgColdSync, String> {
    let agent = super::api::agent_binary()?;
    let mut result = WgColdSync {
        sizes: Vec::new(),
        wireguard_go: wireguard_go_version(),
        machine: report::machine(),
    };
    for &(peers, runs) in plan {
        let runs = runs.max(1);
        let mut size = WgColdSize::new(peers, runs);
        let measured = std::panic::catch_unwind(AssertUnwindSafe(|| {
            measure_size(&agent, peers, runs, &mut size.runs)
        }));
        size.finish(measured);
        result.sizes.push(size);
    }
    Ok(result)
}

fn measure_size(
    agent: &Path,
    size: u32,
    runs: usize,
    out: &mut Vec<WgColdRun>,
) -> Result<(), String> {
    if size == 0 || size > MAX_PEERS {
        return Err(format!("{size} peers: the scenario takes 1 to {MAX_PEERS}"));
    }
    let server =
        TestApiServer::start(ApiOptions::default().tls(crate::apiserver::KeyAlgorithm::EcdsaP256))
            .map_err(|e| format!("starting the test API server: {e}"))?;
    server
        .create_node(ready_node("bench-node", Some("10.42.0.0/24")))
        .and_then(|_| server.create_nodes((1..=size).map(wireguard_peer)))
        .map_err(|e| format!("filling the API server with {size} wireguard peers: {e}"))?;
    let peers: Vec<PeerEntry> = (1..=size).map(peer_entry).collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let kubeconfig = server
        .write_kubeconfig(dir.path())
        .map_err(|e| format!("writing the kubeconfig: {e}"))?;
    let netconf = dir.path().join("net-conf.json");
    std::fs::write(&netconf, NETCONF).map_err(|e| format!("writing {}: {e}", netconf.display()))?;
    for run in 0..runs {
        let (setconf_seconds, wg_start_seconds) = floor(&peers, dir.path(), run, Floor::Setconf)?;
        settle();
        let (uapi_seconds, _) = floor(&peers, dir.path(), run, Floor::Uapi)?;
        settle();
        let agent_run = agent_run(agent, &peers, dir.path(), &kubeconfig, &netconf, run)?;
        settle();
        eprintln!(
            "wg cold sync: {} peers, run {}/{runs}: wg setconf {setconf_seconds:.3} s, uapi {uapi_seconds:.3} s (wireguard-go start {wg_start_seconds:.3} s), agent {:.3} s",
            report::thousands(size.into()),
            run + 1,
            agent_run.seconds
        );
        out.push(WgColdRun {
            agent_seconds: agent_run.seconds,
            setconf_seconds,
            uapi_seconds,
            wg_start_seconds,
            agent_peak_rss_mib: agent_run.usage.peak_rss_mib,
            agent_cpu_seconds: agent_run.usage.cpu_seconds,
            wg_go_rss_mib: agent_run.wg_go.rss_mib,
        });
    }
    Ok(())
}

/// Between measurements: let the previous wireguard-go and namespace go.
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// A twin namespace's underlay: `eth0` as cold.rs has it, plus a route
/// for every peer endpoint (two /17s, more specific than the connected
/// /16) via the gateway, whose neighbour entry is permanent. Without it
/// each endpoint is on-link and needs ARP, which nothing answers; the
/// handshake initiations wireguard-go sends while it is being configured
/// (persistent keepalive) then wait in thousands of unresolved neighbour
/// queues, holding the UDP socket's send buffer, until its sends block
/// and with them the UAPI `set` (wg setconf of 1,000 peers did not
/// finish in 60 s here). With it, the packets leave `eth0` and are
/// dropped at `eth0-peer` (a MAC nobody has), inside the namespace.
fn prepare_underlay(tag: &str) -> TestNetns {
    let ns = TestNetns::new(tag).with_uplink(UPLINK_ADDR, GATEWAY);
    ns.ip(&[
        "neigh",
        "replace",
        GATEWAY,
        "lladdr",
        GATEWAY_MAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    for half in ["192.168.0.0/17", "192.168.128.0/17"] {
        ns.ip(&[
            "route", "add", half, "via", GATEWAY, "dev", "eth0", "onlink",
        ]);
    }
    ns
}

/// Which floor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Floor {
    /// One `wg setconf` (wireguard-tools).
    Setconf,
    /// The agent's `set=1` request, straight to the socket.
    Uapi,
}

/// A wireguard-go we started in `ns` with a private `/run`; killed on
/// drop.
struct WgGo {
    child: Killed,
    pid: u32,
    socket: PathBuf,
    log: PathBuf,
    start_seconds: f64,
}

impl WgGo {
    fn start(ns: &TestNetns, dir: &Path, label: &str) -> Result<WgGo, String> {
        let run = dir.join(format!("{label}-run"));
        std::fs::create_dir_all(&run).map_err(|e| format!("creating {}: {e}", run.display()))?;
        let log = dir.join(format!("{label}-wireguard-go.log"));
        let output =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let errors = output
            .try_clone()
            .map_err(|e| format!("sharing {}: {e}", log.display()))?;
        let args: Vec<String> = ["netns", "exec", ns.name(), "wireguard-go", "-f", DEVICE]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let started = Instant::now();
        let child = in_private_run(&run, ns, Path::new("ip"), &args)
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(errors))
            .spawn()
            .map_err(|e| format!("starting wireguard-go in {}: {e}", ns.name()))?;
        let mut child = Killed(child);
        let pid = child.0.id();
        let socket = socket_of(pid);
        let deadline = started + START_LIMIT;
        loop {
            let exited = child
                .0
                .try_wait()
                .map_err(|e| format!("waiting for wireguard-go (pid {pid}): {e}"))?;
            if let Some(status) = exited {
                return Err(format!(
                    "wireguard-go in {} exited ({status}) before its socket appeared: {}",
                    ns.name(),
                    tail(&log)
                ));
            }
            // Only once the pid is wireguard-go itself: before the exec
            // chain is through, /proc/<pid>/root may still show the
            // machine's /run.
            if is_wireguard_go(pid) && UnixStream::connect(&socket).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "wireguard-go in {} made no socket within {} s: {}",
                    ns.name(),
                    START_LIMIT.as_secs(),
                    tail(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let start_seconds = started.elapsed().as_secs_f64();
        check_private(pid)?;
        Ok(WgGo {
            child,
            pid,
            socket,
            log,
            start_seconds,
        })
    }
}

/// The device as the agent leaves it before it writes peers: MTU, up,
/// the lease address, the cluster route.
fn shape_device(ns: &TestNetns) {
    ns.ip(&["link", "set", DEVICE, "mtu", DEVICE_MTU, "up"]);
    ns.ip(&["addr", "add", DEVICE_ADDRESS, "dev", DEVICE]);
    ns.ip(&[
        "route",
        "add",
        CLUSTER_NETWORK,
        "dev",
        DEVICE,
        "scope",
        "link",
    ]);
}

/// One floor measurement in a twin namespace: wireguard-go started and
/// shaped like the agent's (not timed), then the configuration written in
/// one go (timed), then checked. Returns (seconds, wireguard-go start-up
/// seconds).
fn floor(peers: &[PeerEntry], dir: &Path, run: usize, how: Floor) -> Result<(f64, f64), String> {
    let ns = prepare_underlay("bwgfloor");
    let _reaper = Reaper(ns.name().to_string());
    let label = format!(
        "floor-{}-{run}",
        if how == Floor::Setconf {
            "setconf"
        } else {
            "uapi"
        }
    );
    let wg = WgGo::start(&ns, dir, &label)?;
    shape_device(&ns);
    let private = PrivateKey::generate().map_err(|e| format!("a private key: {e}"))?;
    let measured = match how {
        Floor::Setconf => {
            let file = dir.join(format!("{label}.conf"));
            std::fs::write(&file, wg_config(&private, peers))
                .map_err(|e| format!("writing {}: {e}", file.display()))?;
            setconf(wg.pid, &file)
        }
        Floor::Uapi => uapi_request(&private, peers).and_then(|r| uapi_set(&wg.socket, &r)),
    };
    let seconds =
        measured.map_err(|e| format!("floor {label}: {e}; {}", diagnose(wg.pid, &ns, &wg.log)))?;
    check_peers(wg.pid, peers, &format!("floor {label}"))?;
    drop(wg.child);
    Ok((seconds, wg.start_seconds))
}

/// One `wg setconf flannel-wg FILE` in wireguard-go `pid`'s mount
/// namespace (where its socket is); returns its seconds, spawn to exit.
fn setconf(pid: u32, file: &Path) -> Result<f64, String> {
    let (_, took) = bounded_ok(
        Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "wg", "setconf", DEVICE])
            .arg(file),
        SET_LIMIT,
    )?;
    Ok(took.as_secs_f64())
}

/// Writes `request` to the UAPI socket and reads the answer; returns the
/// seconds from connect to the end of the answer. An errno other than 0
/// is an error.
fn uapi_set(socket: &Path, request: &str) -> Result<f64, String> {
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    stream
        .set_write_timeout(Some(SET_LIMIT))
        .and_then(|_| stream.set_read_timeout(Some(SET_LIMIT)))
        .map_err(|e| format!("timeouts on {}: {e}", socket.display()))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("writing set=1 to {}: {e}", socket.display()))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("reading the set=1 answer on {}: {e}", socket.display()))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.ends_with(b"\n\n") {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let answer = String::from_utf8_lossy(&answer);
    let errno = uapi::parse_errno(&answer)
        .map_err(|e| format!("the set=1 answer on {}: {e}: {answer:?}", socket.display()))?;
    if errno != 0 {
        return Err(format!(
            "wireguard-go refused set=1 on {} with errno {errno}",
            socket.display()
        ));
    }
    Ok(seconds)
}

/// What one agent run measured.
struct AgentRun {
    seconds: f64,
    usage: super::Usage,
    wg_go: super::Usage,
}

/// One agent run in a twin namespace with a private `/run`: seconds from
/// spawn to subnet.env, then the device must hold every peer.
fn agent_run(
    agent: &Path,
    peers: &[PeerEntry],
    dir: &Path,
    kubeconfig: &Path,
    netconf: &Path,
    run: usize,
) -> Result<AgentRun, String> {
    let size = peers.len();
    let ns = prepare_underlay("bwgagent");
    let _reaper = Reaper(ns.name().to_string());
    let run_dir = dir.join(format!("agent-{run}-run"));
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| format!("creating {}: {e}", run_dir.display()))?;
    let files = dir.join(format!("agent-{run}"));
    let subnet_file = files.join("subnet.env");
    let args = vec![
        "--node-name=bench-node".to_string(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--flannel-conf={}", netconf.display()),
        format!("--netns={}", ns.path().display()),
        format!("--data-dir={}", files.join("data").display()),
        format!("--subnet-file={}", subnet_file.display()),
        "--flannel-backend=wireguard-native".to_string(),
        format!("--wireguard-key-file={}", files.join("wgkey").display()),
        "--wireguard-implementation=userspace".to_string(),
    ];
    let started = Instant::now();
    let child = in_private_run(&run_dir, &ns, agent, &args)
        .env("RUST_LOG", super::api::agent_log_filter())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", agent.display()))?;
    let mut child = Killed(child);
    let pid = child.0.id();
    let wg_log = files.join(format!("{DEVICE}.log"));
    let deadline = started + SET_LIMIT;
    while !subnet_file.exists() {
        let exited = child
            .0
            .try_wait()
            .map_err(|e| format!("waiting for the agent (pid {pid}): {e}"))?;
        if let Some(status) = exited {
            return Err(format!(
                "the agent exited ({status}) before programming {size} peers (wireguard-go: {})",
                tail(&wg_log)
            ));
        }
        if Instant::now() > deadline {
            let stuck: Vec<String> = processes_in_netns(&[ns.name().to_string()])
                .into_iter()
                .filter(|p| is_wireguard_go(p.pid))
                .map(|p| diagnose(p.pid, &ns, &wg_log))
                .collect();
            return Err(format!(
                "the agent did not finish programming {size} peers within {} s; {}",
                SET_LIMIT.as_secs(),
                if stuck.is_empty() {
                    format!("no wireguard-go runs; {}", tail(&wg_log))
                } else {
                    stuck.join("; ")
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let seconds = started.elapsed().as_secs_f64();
    let usage = super::usage(pid);
    let wg_go: Vec<u32> = processes_in_netns(&[ns.name().to_string()])
        .into_iter()
        .filter(|p| is_wireguard_go(p.pid))
        .map(|p| p.pid)
        .collect();
    let wg_pid = match wg_go.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "the agent wrote subnet.env but no wireguard-go runs in {}",
                ns.name()
            ))
        }
        more => {
            return Err(format!(
                "{} wireguard-go processes in {}: {more:?}",
                more.len(),
                ns.name()
            ))
        }
    };
    let wg_usage = super::usage(wg_pid);
    check_private(wg_pid)?;
    drop(child);
    check_peers(wg_pid, peers, &format!("agent in {}", ns.name()))?;
    Ok(AgentRun {
        seconds,
        usage,
        wg_go: wg_usage,
    })
}

// ------------------------------------------------------------- throughput

/// One wg-throughput measurement.
#[derive(Debug, Clone)]
pub struct WgThroughputRun {
    /// Pod -> pod through the wireguard-go tunnel, bit/s.
    pub overlay_bps: f64,
    /// Node -> node over the bare underlay, bit/s.
    pub underlay_bps: f64,
    /// CPU both nodes' wireguard-go used during the overlay iperf3, in %
    /// of one core.
    pub wg_go_cpu_percent: f64,
}

impl WgThroughputRun {
    /// Overlay as a percentage of the underlay.
    pub fn ratio_percent(&self) -> f64 {
        self.overlay_bps / self.underlay_bps.max(1.0) * 100.0
    }
}

/// The wg-throughput result.
#[derive(Debug, Clone)]
pub struct WgThroughput {
    /// iperf3 seconds per run and path.
    pub seconds: u32,
    /// Lab set-up time, seconds.
    pub setup_seconds: f64,
    /// Wait for the peers to be programmed after set-up, seconds.
    pub peers_wait_seconds: f64,
    /// Every agent programmed every peer.
    pub all_programmed: bool,
    /// `wireguard-go --version`.
    pub wireguard_go: String,
    /// One per run.
    pub runs: Vec<WgThroughputRun>,
    /// What the lab's teardown could not remove.
    pub teardown_problems: Vec<String>,
}

impl WgThroughput {
    fn median_of(&self, f: fn(&WgThroughputRun) -> f64) -> f64 {
        report::median_of(&self.runs, f).unwrap_or(0.0)
    }

    /// Median overlay bit/s.
    pub fn overlay_bps(&self) -> f64 {
        self.median_of(|r| r.overlay_bps)
    }

    /// Median underlay bit/s.
    pub fn underlay_bps(&self) -> f64 {
        self.median_of(|r| r.underlay_bps)
    }

    /// Median overlay/underlay percentage.
    pub fn ratio_percent(&self) -> f64 {
        self.median_of(WgThroughputRun::ratio_percent)
    }

    /// Median wireguard-go CPU, % of one core.
    pub fn wg_go_cpu_percent(&self) -> f64 {
        self.median_of(|r| r.wg_go_cpu_percent)
    }
}

impl BenchResult for WgThroughput {
    fn table(&self) -> String {
        let mut out = String::new();
        let runs = self.runs.len();
        let _ = writeln!(
            out,
            "wireguard throughput, 2-node wireguard-native lab on wireguard-go {} (setup {:.1} s, peers programmed after {:.1} s more: {}), iperf3 TCP {} s each, {runs} run(s) interleaved, median (informative, no goal)",
            self.wireguard_go,
            self.setup_seconds,
            self.peers_wait_seconds,
            if self.all_programmed { "all" } else { "NOT all" },
            self.seconds
        );
        let _ = writeln!(
            out,
            "  pod->pod through the tunnel {:.0} Mbit/s, node->node bare underlay {:.0} Mbit/s: {:.1}%; both wireguard-go together {:.0}% of one core meanwhile ({})",
            self.overlay_bps() / 1e6,
            self.underlay_bps() / 1e6,
            self.ratio_percent(),
            self.wg_go_cpu_percent(),
            report::machine()
        );
        let each: Vec<(f64, f64, f64)> = self
            .runs
            .iter()
            .map(|r| (r.overlay_bps, r.underlay_bps, r.ratio_percent()))
            .collect();
        report::runs_and_teardown(
            &mut out,
            "tunnel/underlay",
            &each,
            (1e6, "Mbit/s", 0),
            &self.teardown_problems,
        );
        out
    }

    fn files(&self) -> Vec<(String, String)> {
        let mut csv = Csv::new(&[
            "run",
            "iperf_seconds",
            "tunnel_mbit_s",
            "underlay_mbit_s",
            "ratio_percent",
            "wg_go_cpu_percent_of_core",
            "wireguard_go",
        ]);
        for (i, r) in self.runs.iter().enumerate() {
            csv.row([
                (i + 1).to_string(),
                self.seconds.to_string(),
                report::num(r.overlay_bps / 1e6, 1),
                report::num(r.underlay_bps / 1e6, 1),
                report::num(r.ratio_percent(), 2),
                report::num(r.wg_go_cpu_percent, 1),
                self.wireguard_go.clone(),
            ]);
        }
        csv.row([
            "median".into(),
            self.seconds.to_string(),
            report::num(self.overlay_bps() / 1e6, 1),
            report::num(self.underlay_bps() / 1e6, 1),
            report::num(self.ratio_percent(), 2),
            report::num(self.wg_go_cpu_percent(), 1),
            self.wireguard_go.clone(),
        ]);
        vec![("wg-throughput.csv".into(), csv.into_text())]
    }
}

/// wg-throughput from async code (it blocks: a thread of its own).
pub async fn wg_throughput(seconds: u32, runs: usize) -> Result<WgThroughput, String> {
    tokio::task::spawn_blocking(move || wg_throughput_blocking(seconds, runs))
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(panic) => format!(
                "the wg-throughput benchmark {}",
                super::panic_message(panic.as_ref())
            ),
            Err(e) => format!("the wg-throughput benchmark did not finish: {e}"),
        })?
}

/// The wg-throughput scenario, blocking: a 2-node wireguard-native lab
/// (wireguard-go on each node) with one pod per node; `runs` times iperf3
/// TCP for `seconds` pod0 -> pod1 (through the tunnel) and node0 -> node1
/// (eth0 over the underlay bridge), which one first alternating.
pub fn wg_throughput_blocking(seconds: u32, runs: usize) -> Result<WgThroughput, String> {
    let seconds = seconds.max(1);
    let runs = runs.max(1);
    let (mut result, problems) = super::plane::with_two_node_lab(
        "bwgtp",
        "wireguard-native",
        Duration::from_secs(30),
        |lab, setup| measure_throughput(lab, seconds, runs, setup),
    )?;
    result.teardown_problems = problems;
    Ok(result)
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
/// -c ... -J` command, bounded by `limit`) until it connects; returns the
/// received bits/s.
fn iperf(
    mut server: Command,
    client: impl Fn() -> Command,
    limit: Duration,
) -> Result<f64, String> {
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
        let (output, _) = bounded(&mut client(), limit)?;
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

/// CPU seconds of these processes so far.
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| super::usage(pid).cpu_seconds).sum()
}

fn measure_throughput(
    lab: &Lab,
    seconds: u32,
    runs: usize,
    setup_seconds: f64,
) -> Result<WgThroughput, String> {
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
    let wg_go: Vec<u32> = processes_in_netns(&[node0_ns.clone(), node1_ns.clone()])
        .into_iter()
        .filter(|p| is_wireguard_go(p.pid))
        .map(|p| p.pid)
        .collect();
    if wg_go.len() != 2 {
        return Err(format!(
            "expected one wireguard-go per node, found {} ({wg_go:?})",
            wg_go.len()
        ));
    }
    let in_ns = |ns: &str, program: &str, args: &[&str]| {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, program]).args(args);
        command
    };
    // First packets: the handshake and neighbours (not measured).
    let ping = ["-c", "3", "-i", "0.2", "-W", "2"];
    let _ = bounded(
        &mut lab.pod_command(&pod0, "ping", &[&ping[..], &[pod1_ip.as_str()]].concat()),
        SHORT_LIMIT,
    );
    let _ = bounded(
        &mut in_ns(
            &node0_ns,
            "ping",
            &[&ping[..], &[node1_ip.as_str()]].concat(),
        ),
        SHORT_LIMIT,
    );

    let secs = seconds.to_string();
    let limit = Duration::from_secs(u64::from(seconds) + 20);
    let client_args = |ip: &str| -> Vec<String> {
        ["-c", ip, "-t", &secs, "-J", "--connect-timeout", "3000"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let overlay_args = client_args(&pod1_ip);
    let overlay_args: Vec<&str> = overlay_args.iter().map(String::as_str).collect();
    let underlay_args = client_args(&node1_ip);
    let underlay_args: Vec<&str> = underlay_args.iter().map(String::as_str).collect();
    let overlay_iperf = || -> Result<(f64, f64), String> {
        let before = cpu_of(&wg_go);
        let started = Instant::now();
        let bps = iperf(
            lab.pod_command(&pod1, "iperf3", &["-s", "-1"]),
            || lab.pod_command(&pod0, "iperf3", &overlay_args),
            limit,
        )
        .map_err(|e| format!("tunnel iperf3 {pod0} -> {pod1_ip}: {e}"))?;
        let cpu = (cpu_of(&wg_go) - before) / started.elapsed().as_secs_f64().max(1e-9) * 100.0;
        Ok((bps, cpu))
    };
    let underlay_iperf = || {
        iperf(
            in_ns(&node1_ns, "iperf3", &["-s", "-1"]),
            || in_ns(&node0_ns, "iperf3", &underlay_args),
            limit,
        )
        .map_err(|e| format!("underlay iperf3 {node0_ns} -> {node1_ip}: {e}"))
    };

    let mut result = WgThroughput {
        seconds,
        setup_seconds,
        peers_wait_seconds,
        all_programmed,
        wireguard_go: wireguard_go_version(),
        runs: Vec::with_capacity(runs),
        teardown_problems: Vec::new(),
    };
    for run in 0..runs {
        let ((overlay_bps, wg_go_cpu_percent), underlay_bps) = if run % 2 == 0 {
            let overlay = overlay_iperf()?;
            (overlay, underlay_iperf()?)
        } else {
            let underlay = underlay_iperf()?;
            (overlay_iperf()?, underlay)
        };
        let done = WgThroughputRun {
            overlay_bps,
            underlay_bps,
            wg_go_cpu_percent,
        };
        eprintln!(
            "wg throughput: run {}/{runs}: tunnel {:.0} Mbit/s, underlay {:.0} Mbit/s ({:.1}%), wireguard-go {:.0}% of a core",
            run + 1,
            overlay_bps / 1e6,
            underlay_bps / 1e6,
            done.ratio_percent(),
            wg_go_cpu_percent
        );
        result.runs.push(done);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_inputs_match_the_fixture() {
        let peers: Vec<PeerEntry> = (1..=2)
            .map(|i| peer_entry(i).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(peers[0].endpoint, "192.168.0.2:51820");
        assert_eq!(peers[1].lease, "10.42.2.0/24");
        let private = PrivateKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let config = wg_config(&private, &peers);
        assert_eq!(config.matches("[Peer]").count(), 2);
        assert!(config.contains("ListenPort = 51820\n"), "{config}");
        assert!(config.contains("PersistentKeepalive = 25\n"), "{config}");
        let request = uapi_request(&private, &peers).unwrap_or_else(|e| panic!("{e}"));
        assert!(request.starts_with("set=1\nprivate_key="), "{request}");
        assert!(request.ends_with("\n\n"), "{request}");
        assert_eq!(request.matches("public_key=").count(), 2);
        assert!(
            request.contains(&format!("public_key={}\n", peers[1].key.to_hex())),
            "{request}"
        );
        assert!(request.contains("allowed_ip=10.42.1.0/24\n"), "{request}");
    }

    #[test]
    fn bounded_commands_are_stopped() {
        let error = bounded(Command::new("sleep").arg("5"), Duration::from_millis(100))
            .err()
            .unwrap_or_default();
        assert!(error.contains("did not finish"), "{error}");
        let (out, _) = bounded_ok(Command::new("echo").arg("hi"), SHORT_LIMIT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, "hi\n");
    }

    #[test]
    fn tables_show_failures_and_medians() {
        let run = WgColdRun {
            agent_seconds: 2.0,
            setconf_seconds: 1.0,
            uapi_seconds: 0.9,
            wg_start_seconds: 0.02,
            agent_peak_rss_mib: 12.0,
            agent_cpu_seconds: 0.5,
            wg_go_rss_mib: 100.0,
        };
        let result = WgColdSync {
            sizes: vec![
                WgColdSize {
                    peers: 100,
                    runs_wanted: 1,
                    runs: vec![run],
                    error: None,
                },
                WgColdSize {
                    peers: 1000,
                    runs_wanted: 1,
                    runs: Vec::new(),
                    error: Some("it broke".into()),
                },
            ],
            wireguard_go: "v0".into(),
            machine: "m".into(),
        };
        let table = result.table();
        assert!(
            table.contains("INCLUDED") && table.contains("NOT included"),
            "{table}"
        );
        assert!(table.contains("2.00"), "{table}");
        assert!(
            table.contains("1000 FAILED after 0 of 1 run(s): it broke"),
            "{table}"
        );
        assert_eq!(result.error().as_deref(), Some("1000 peers: it broke"));
        let files = result.files();
        assert_eq!(files[0].0, "wg-cold-sync.csv");
        assert!(
            files[0].1.contains("100,median,2.0000,1.0000,0.9000,2.000"),
            "{}",
            files[0].1
        );
    }
}
