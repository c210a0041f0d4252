//! Running scenarios: one at a time (print its table, write its files,
//! print their paths; a panic becomes an error), or all of them in turn
//! with the goal summary (`flannel-bench all`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::api::{self, EventLatency, IdleChurn};
use super::cold::{self, ColdSync};
use super::cost;
use super::peerset::{self, PeerSet};
use super::plane::{self, CniOverhead, DataPlane};
use super::report::{self, BenchResult, Goal, ScenarioRun, Status};
use super::wireguard::{self, WgColdSync, WgThroughput};
use crate::fixtures::NodeShape;

/// The default output directory: `target/bench` of the workspace the
/// running binary was built in (`<dir>/target/<profile>/flannel-bench`),
/// else `target/bench` under the current directory.
pub fn default_out_dir() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let target = exe
        .as_deref()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .filter(|dir| dir.file_name().is_some_and(|n| n == "target"));
    match target {
        Some(target) => target.join("bench"),
        None => PathBuf::from("target").join("bench"),
    }
}

/// Runs one scenario: a panic inside it becomes its error; prints its
/// table (stdout) or its error (stderr), writes its files into `out` and
/// prints their paths. Returns the result (if any) and how the run went.
pub async fn run<R, F>(name: &str, out: &Path, scenario: F) -> (Option<R>, ScenarioRun)
where
    R: BenchResult,
    F: Future<Output = Result<R, String>>,
{
    let started = Instant::now();
    let outcome = match AssertUnwindSafe(scenario).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => Err(super::panic_message(panic.as_ref())),
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut error = None;
    let result = match outcome {
        Ok(result) => {
            print!("{}", result.table());
            if let Some(partly) = result.error() {
                eprintln!("flannel-bench: {name}: {partly}");
                error = Some(partly);
            }
            match report::write_files(out, &result) {
                Ok(paths) => {
                    for path in paths {
                        println!("wrote {}", path.display());
                    }
                }
                Err(e) => {
                    eprintln!("flannel-bench: {name}: {e}");
                    error = Some(match error {
                        Some(before) => format!("{before}; {e}"),
                        None => e,
                    });
                }
            }
            Some(result)
        }
        Err(e) => {
            eprintln!("flannel-bench: {name}: {e}");
            error = Some(e);
            None
        }
    };
    (
        result,
        ScenarioRun {
            name: name.to_string(),
            seconds,
            error,
        },
    )
}

/// CNI overhead from async code (it blocks: a thread of its own): the
/// bare `bridge`, the workspace's `flannel` and the static one, which
/// `integration/build-static-cni.sh` builds first (quick when up to date).
pub async fn cni_overhead(pods: u32) -> Result<CniScenario, String> {
    tokio::task::spawn_blocking(move || {
        let static_plugin = crate::builds::static_cni_plugin()?;
        let bridge =
            plane::cni_overhead(pods, plane::cni_paths("bridge", Some(&static_plugin)), true)?;
        let loopback = plane::cni_overhead(
            pods * 2,
            plane::cni_paths("loopback", Some(&static_plugin)),
            false,
        )?;
        Ok(CniScenario { bridge, loopback })
    })
    .await
    .map_err(|e| match e.try_into_panic() {
        Ok(panic) => format!("the CNI benchmark {}", super::panic_message(panic.as_ref())),
        Err(e) => format!("the CNI benchmark did not finish: {e}"),
    })?
}

/// The `cni` scenario: against the bare `bridge` (the goal's floor) and,
/// with less noise, against the bare `loopback` delegate.
#[derive(Debug, Clone)]
pub struct CniScenario {
    /// Delegating to `bridge`.
    pub bridge: CniOverhead,
    /// Delegating to `loopback` (twice the pods: each is cheap).
    pub loopback: CniOverhead,
}

impl BenchResult for CniScenario {
    fn table(&self) -> String {
        let mut out = format!(
            "{}\nThe same with the loopback delegate (our plugin's work unchanged, the floor's jitter smaller):\n{}",
            self.bridge.table(),
            self.loopback.table()
        );
        // The precise overhead minus the two processes of ours it holds.
        let at = self.loopback.judged();
        let exec = self
            .bridge
            .parts
            .as_ref()
            .and_then(|p| p.exec_ms.get(at).copied().flatten());
        if let Some(exec) = exec {
            out.push_str(&format!(
                "  our work and the rest, {}: {:.3} ms per ADD+DEL (loopback overhead {:.3} - 2 x exec {:.3}): reading and writing the files, JSON, spawning and waiting for the delegate\n",
                self.loopback.paths[at].label,
                self.loopback.overhead_ms(at) - 2.0 * exec,
                self.loopback.overhead_ms(at),
                exec
            ));
        }
        out
    }

    fn files(&self) -> Vec<(String, String)> {
        let mut files = self.bridge.files();
        files.extend(self.loopback.files());
        files
    }
}

/// Cold-sync sizes and runs of `all`.
pub const ALL_COLD_SYNC: [(u32, usize); 4] = [(1000, 3), (5000, 3), (10000, 3), (20000, 3)];
/// Event latency of `all`: peers, events, rate.
pub const ALL_EVENTS: (u32, u32, u32) = (5000, 500, 100);
/// Idle churn of `all`: peers, rate, seconds.
pub const ALL_CHURN: (u32, u32, u32) = (5000, 20, 60);
/// CNI pods of `all`.
pub const ALL_CNI_PODS: u32 = 200;
/// Data plane of `all`: iperf3 seconds, runs.
pub const ALL_DATA_PLANE: (u32, usize) = (5, 3);
/// wireguard cold-sync sizes and runs of `all` (userspace wireguard-go:
/// modest sizes, so both wireguard scenarios stay under two minutes).
pub const ALL_WG_COLD_SYNC: [(u32, usize); 3] = [(100, 3), (1000, 3), (5000, 3)];
/// wireguard throughput of `all`: iperf3 seconds, runs.
pub const ALL_WG_THROUGHPUT: (u32, usize) = (5, 3);
/// First-PeerSet sizes and runs of `all`.
pub const ALL_PEERS: ([u32; 3], usize) = ([1000, 5000, 10000], 3);
/// Event cost of `all`: peer counts, creates (and deletes) per run, runs.
pub const ALL_EVENT_COST: ([u32; 3], u32, usize) = ([1000, 5000, 10000], 500, 3);
/// The time budget of `all`.
pub const ALL_BUDGET: Duration = Duration::from_secs(600);

/// Every scenario in turn with its default sizes, each table as its own
/// subcommand prints it, then the goal summary and the total wall time.
/// A failing scenario does not stop the others. Returns whether every
/// scenario ran (goals not met are figures, not failures).
pub async fn all(out: &Path) -> bool {
    let started = Instant::now();
    let mut runs = Vec::new();
    println!(
        "flannel-bench all: {}; output in {}",
        report::machine(),
        out.display()
    );

    heading("cold-sync");
    let (cold, run_) = run(
        "cold-sync",
        out,
        cold::cold_sync(&ALL_COLD_SYNC, NodeShape::default()),
    )
    .await;
    runs.push(run_);
    pause().await;

    heading("events");
    let (peers, events, rate) = ALL_EVENTS;
    let (events, run_) = run(
        "events",
        out,
        api::event_latency(peers, events, rate, NodeShape::default()),
    )
    .await;
    runs.push(run_);
    pause().await;

    heading("churn");
    let (peers, rate, seconds) = ALL_CHURN;
    let (churn, run_) = run(
        "churn",
        out,
        api::idle_churn(peers, rate, seconds, NodeShape::default()),
    )
    .await;
    runs.push(run_);
    pause().await;

    heading("cni");
    let (cni, run_) = run("cni", out, cni_overhead(ALL_CNI_PODS)).await;
    runs.push(run_);

    heading("data-plane");
    let (seconds, plane_runs) = ALL_DATA_PLANE;
    let (data, run_) = run("data-plane", out, plane::data_plane(seconds, plane_runs)).await;
    runs.push(run_);
    pause().await;

    heading("wg-cold-sync");
    let (wg_cold, run_) = run(
        "wg-cold-sync",
        out,
        wireguard::wg_cold_sync(&ALL_WG_COLD_SYNC),
    )
    .await;
    runs.push(run_);
    pause().await;

    heading("wg-throughput");
    let (seconds, wg_runs) = ALL_WG_THROUGHPUT;
    let (wg_throughput, run_) = run(
        "wg-throughput",
        out,
        wireguard::wg_throughput(seconds, wg_runs),
    )
    .await;
    runs.push(run_);

    heading("peers");
    let (sizes, peer_runs) = ALL_PEERS;
    let (peer_set, run_) = run(
        "peers",
        out,
        peerset::first_peerset(&sizes, peer_runs, NodeShape::default()),
    )
    .await;
    runs.push(run_);

    // Figures only (CPU per Node event against cluster size); its goal
    // (<= 0.1 ms at 5,000 peers) is read off the table.
    heading("event-cost");
    let (sizes, cost_events, cost_runs) = ALL_EVENT_COST;
    let (_cost, run_) = run(
        "event-cost",
        out,
        cost::event_cost(&sizes, cost_events, cost_runs, NodeShape::default()),
    )
    .await;
    runs.push(run_);

    let total = started.elapsed().as_secs_f64();
    let error_of = |name: &str| -> String {
        runs.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.error.clone())
            .unwrap_or_else(|| "no result".into())
    };
    let mut goals = Vec::new();
    goals.extend(cold_goals(cold.as_ref(), &error_of("cold-sync")));
    goals.push(event_goal(events.as_ref(), &error_of("events")));
    goals.push(churn_goal(churn.as_ref(), &error_of("churn")));
    goals.push(rss_goal(churn.as_ref(), cold.as_ref(), &error_of("churn")));
    goals.push(cni_goal(cni.as_ref(), &error_of("cni")));
    goals.extend(data_plane_goals(data.as_ref(), &error_of("data-plane")));
    goals.extend(wg_cold_rows(wg_cold.as_ref(), &error_of("wg-cold-sync")));
    goals.push(wg_throughput_row(
        wg_throughput.as_ref(),
        &error_of("wg-throughput"),
    ));
    goals.push(peers_row(peer_set.as_ref(), &error_of("peers")));
    goals.push(Goal {
        scenario: "all".into(),
        name: "whole `flannel-bench all` run".into(),
        target: format!("< {} min", ALL_BUDGET.as_secs() / 60),
        figure: format!("{total:.1} s wall"),
        status: Status::check(total < ALL_BUDGET.as_secs_f64()),
    });

    heading("summary");
    print!("{}", report::summary_table(&goals, &runs, total));
    let mut ok = runs.iter().all(|r| r.error.is_none());
    match report::write_file(out, "summary.csv", &report::summary_csv(&goals, &runs)) {
        Ok(path) => println!("wrote {}", path.display()),
        Err(e) => {
            eprintln!("flannel-bench: summary: {e}");
            ok = false;
        }
    }
    println!("total wall time: {total:.1} s ({:.1} min)", total / 60.0);
    ok
}

fn heading(name: &str) {
    println!("\n== {name}");
}

/// Between kernel-heavy scenarios: let namespace teardown finish.
async fn pause() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

fn cold_goals(cold: Option<&ColdSync>, error: &str) -> Vec<Goal> {
    let ratio_name = "cold sync, 5,000 peers: agent / plain-route floor";
    let ratio_target = "<= 1.0x ip -batch";
    let time_name = "cold sync, 20,000 peers";
    let time_target = "<= 2 s";
    let size_error = |peers: u32| -> String {
        cold.and_then(|c| c.size(peers))
            .and_then(|s| s.error.clone())
            .unwrap_or_else(|| error.to_string())
    };
    let at_5000 = cold.and_then(|c| c.size(5000));
    let ratio = match at_5000.and_then(|s| Some((s.ratio()?, s.agent()?, s.floor()?))) {
        Some((ratio, agent, floor)) => Goal {
            scenario: "cold-sync".into(),
            name: ratio_name.into(),
            target: ratio_target.into(),
            figure: format!(
                "{ratio:.2}x (agent {agent:.3} s, floor {floor:.3} s, median of {})",
                at_5000.map_or(0, |s| s.runs.len())
            ),
            status: Status::check(ratio <= 1.0),
        },
        None => Goal::failed("cold-sync", ratio_name, ratio_target, &size_error(5000)),
    };
    let at_20000 = cold.and_then(|c| c.size(20000));
    let time = match at_20000.and_then(|s| Some((s.agent()?, s.floor()?))) {
        Some((agent, floor)) => Goal {
            scenario: "cold-sync".into(),
            name: time_name.into(),
            target: time_target.into(),
            figure: format!("{agent:.3} s (plain-route floor {floor:.3} s)"),
            status: Status::check(agent <= 2.0),
        },
        None => Goal::failed("cold-sync", time_name, time_target, &size_error(20000)),
    };
    vec![ratio, time]
}

fn event_goal(events: Option<&EventLatency>, error: &str) -> Goal {
    let name = "event latency p99, 5,000 peers, 500 at 100/s";
    let target = "<= 50 ms, 0 missing";
    match events {
        Some(events) => {
            let all = events.stats(None);
            Goal {
                scenario: "events".into(),
                name: name.into(),
                target: target.into(),
                figure: format!(
                    "p99 {:.2} ms (p50 {:.2}), {} missing, {} unobserved",
                    all.p99_ms, all.p50_ms, events.missing, all.unobserved
                ),
                status: Status::check(
                    all.p99_ms <= 50.0 && events.missing == 0 && all.unobserved == 0,
                ),
            }
        }
        None => Goal::failed("events", name, target, error),
    }
}

fn churn_goal(churn: Option<&IdleChurn>, error: &str) -> Goal {
    let name = "idle churn, 5,000 peers, 20 heartbeats/s, 60 s";
    let target = "0 writes, < 1% of a core";
    match churn {
        Some(churn) => Goal {
            scenario: "churn".into(),
            name: name.into(),
            target: target.into(),
            figure: format!(
                "{} kernel writes, {:.2}% CPU",
                churn.flannel_writes(),
                churn.cpu_percent
            ),
            status: Status::check(churn.flannel_writes() == 0 && churn.cpu_percent < 1.0),
        },
        None => Goal::failed("churn", name, target, error),
    }
}

/// Agent RSS at 5,000 peers: the peak (VmHWM) over the churn run (first
/// sync, then 60 s of heartbeats); the cold-sync peak when churn failed.
fn rss_goal(churn: Option<&IdleChurn>, cold: Option<&ColdSync>, error: &str) -> Goal {
    let name = "agent RSS, 5,000 peers";
    let target = "<= 25 MiB";
    let at_sync = cold.and_then(|c| c.size(5000)).and_then(|s| s.rss());
    let (judged, figure) = match (churn, at_sync) {
        (Some(churn), sync) => (
            churn.peak_rss_mib,
            format!(
                "peak {:.1} MiB over sync + 60 s idle (now {:.1}){}",
                churn.peak_rss_mib,
                churn.rss_mib,
                sync.map(|s| format!("; {s:.1} at cold sync"))
                    .unwrap_or_default()
            ),
        ),
        (None, Some(sync)) => (
            sync,
            format!("peak {sync:.1} MiB at cold sync (churn failed)"),
        ),
        (None, None) => return Goal::failed("churn", name, target, error),
    };
    Goal {
        scenario: if churn.is_some() {
            "churn"
        } else {
            "cold-sync"
        }
        .into(),
        name: name.into(),
        target: target.into(),
        figure,
        status: Status::check(judged <= 25.0),
    }
}

fn cni_goal(cni: Option<&CniScenario>, error: &str) -> Goal {
    let name = "CNI ADD+DEL overhead over bare bridge, median";
    let target = "<= 2 ms";
    match cni {
        Some(cni) => {
            let bridge = &cni.bridge;
            let at = bridge.judged();
            let (lo, hi) = bridge.overhead_interval_ms(at);
            let light = &cni.loopback;
            let (llo, lhi) = light.overhead_interval_ms(light.judged());
            Goal {
                scenario: "cni".into(),
                name: name.into(),
                target: target.into(),
                figure: format!(
                    "{:+.2} ms [{lo:+.2}, {hi:+.2}], {} ({} pods; dynamic build {:+.2} ms); over bare loopback {:+.2} ms [{llo:+.2}, {lhi:+.2}]",
                    bridge.overhead_ms(at),
                    bridge.paths[at].label,
                    bridge.pods,
                    bridge.overhead_ms(1),
                    light.overhead_ms(light.judged()),
                ),
                status: Status::check(bridge.overhead_ms(at) <= 2.0),
            }
        }
        None => Goal::failed("cni", name, target, error),
    }
}

fn data_plane_goals(data: Option<&DataPlane>, error: &str) -> Vec<Goal> {
    let tcp_name = "overlay TCP / underlay TCP (iperf3)";
    let tcp_target = ">= 85%";
    let mtu_name = "path MTU exact (DF ping)";
    let mtu_target = "1422 B crosses, 1423 not";
    let Some(data) = data else {
        return vec![
            Goal::failed("data-plane", tcp_name, tcp_target, error),
            Goal::failed("data-plane", mtu_name, mtu_target, error),
        ];
    };
    let runs = data.runs.len();
    let fits = data.runs.iter().filter(|r| r.fits_1422).count();
    let too_big = data.runs.iter().filter(|r| r.crosses_1423).count();
    let median = |f: fn(&plane::DataPlaneRun) -> f64| {
        report::median(&data.runs.iter().map(f).collect::<Vec<_>>())
    };
    vec![
        Goal {
            scenario: "data-plane".into(),
            name: tcp_name.into(),
            target: tcp_target.into(),
            figure: format!(
                "{:.1}% ({:.2} / {:.2} Gbit/s, median of {runs})",
                data.ratio_percent(),
                median(|r| r.overlay_bps) / 1e9,
                median(|r| r.underlay_bps) / 1e9
            ),
            status: Status::check(data.ratio_percent() >= 85.0),
        },
        Goal {
            scenario: "data-plane".into(),
            name: mtu_name.into(),
            target: mtu_target.into(),
            figure: format!("1422 crossed {fits}/{runs}, 1423 crossed {too_big}/{runs}"),
            status: Status::check(data.mtu_exact()),
        },
    ]
}

/// One figure-only row per wireguard cold-sync size: the agent against one
/// `wg setconf` into a running wireguard-go (whose start-up only the agent
/// pays).
fn wg_cold_rows(cold: Option<&WgColdSync>, error: &str) -> Vec<Goal> {
    let name = |peers: u32| {
        format!(
            "wireguard cold sync, {} peers: agent / wg setconf (no goal)",
            report::thousands(peers.into())
        )
    };
    let Some(cold) = cold else {
        return ALL_WG_COLD_SYNC
            .iter()
            .map(|&(peers, _)| Goal::failed("wg-cold-sync", &name(peers), "-", error))
            .collect();
    };
    cold.sizes
        .iter()
        .map(|size| {
            match (size.ratio(), size.agent(), size.floor(), size.uapi()) {
                (Some(ratio), Some(agent), Some(floor), Some(uapi)) => Goal {
                    scenario: "wg-cold-sync".into(),
                    name: name(size.peers),
                    target: "-".into(),
                    figure: format!(
                        "{ratio:.2}x (agent {agent:.3} s incl. wireguard-go start, setconf {floor:.3} s, raw UAPI {uapi:.3} s, median of {})",
                        size.runs.len()
                    ),
                    status: Status::Measured,
                },
                _ => Goal::failed(
                    "wg-cold-sync",
                    &name(size.peers),
                    "-",
                    size.error.as_deref().unwrap_or(error),
                ),
            }
        })
        .collect()
}

fn wg_throughput_row(data: Option<&WgThroughput>, error: &str) -> Goal {
    let name = "wireguard-go tunnel TCP / underlay TCP (iperf3, no goal)";
    match data {
        Some(data) => Goal {
            scenario: "wg-throughput".into(),
            name: name.into(),
            target: "-".into(),
            figure: format!(
                "{:.1}% ({:.0} / {:.0} Mbit/s, wireguard-go {:.0}% of a core, median of {})",
                data.ratio_percent(),
                data.overlay_bps() / 1e6,
                data.underlay_bps() / 1e6,
                data.wg_go_cpu_percent(),
                data.runs.len()
            ),
            status: Status::Measured,
        },
        None => Goal::failed("wg-throughput", name, "-", error),
    }
}

fn peers_row(peers: Option<&PeerSet>, error: &str) -> Goal {
    let name = "first complete PeerSet (no goal)";
    match peers {
        Some(peers) => {
            let each: Vec<String> = peers
                .sizes
                .iter()
                .map(|s| format!("{}: {:.3} s", report::thousands(s.nodes.into()), s.median()))
                .collect();
            Goal {
                scenario: "peers".into(),
                name: name.into(),
                target: "-".into(),
                figure: each.join(", "),
                status: Status::Measured,
            }
        }
        None => Goal::failed("peers", name, "-", error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl BenchResult for Fixed {
        fn table(&self) -> String {
            "fixed\n".into()
        }
        fn files(&self) -> Vec<(String, String)> {
            vec![("fixed.csv".into(), "a\n1\n".into())]
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(future),
            Err(e) => panic!("tokio: {e}"),
        }
    }

    #[test]
    fn a_result_writes_its_files_into_a_new_directory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let out = dir.path().join("a").join("b");
        let (result, run) = block_on(run("fixed", &out, async { Ok(Fixed) }));
        assert!(result.is_some() && run.error.is_none());
        assert_eq!(
            std::fs::read_to_string(out.join("fixed.csv"))
                .ok()
                .as_deref(),
            Some("a\n1\n")
        );
    }

    #[test]
    fn wireguard_rows_are_figures_or_failures() {
        let failed = wg_cold_rows(None, "no result");
        assert_eq!(failed.len(), ALL_WG_COLD_SYNC.len());
        assert!(failed
            .iter()
            .all(|g| g.status == Status::Failed("no result".into())));
        let run = wireguard::WgColdRun {
            agent_seconds: 2.0,
            setconf_seconds: 1.0,
            uapi_seconds: 0.9,
            wg_start_seconds: 0.02,
            agent_peak_rss_mib: 20.0,
            agent_cpu_seconds: 0.1,
            wg_go_rss_mib: 100.0,
        };
        let cold = WgColdSync {
            sizes: vec![
                wireguard::WgColdSize {
                    peers: 5000,
                    runs_wanted: 1,
                    runs: vec![run],
                    error: None,
                },
                wireguard::WgColdSize {
                    peers: 100,
                    runs_wanted: 1,
                    runs: Vec::new(),
                    error: Some("it broke".into()),
                },
            ],
            wireguard_go: "v0".into(),
            machine: "m".into(),
        };
        let rows = wg_cold_rows(Some(&cold), "unused");
        assert_eq!(rows[0].status, Status::Measured);
        assert!(rows[0].name.contains("5,000 peers"), "{:?}", rows[0]);
        assert!(rows[0].figure.starts_with("2.00x"), "{:?}", rows[0]);
        assert_eq!(rows[1].status, Status::Failed("it broke".into()));
        let row = wg_throughput_row(None, "lab up: no");
        assert_eq!(row.status, Status::Failed("lab up: no".into()));
    }

    #[test]
    fn errors_and_panics_become_the_scenario_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (result, run_) = block_on(run("failing", dir.path(), async {
            Err::<Fixed, _>("it broke".to_string())
        }));
        assert!(result.is_none());
        assert_eq!(run_.error.as_deref(), Some("it broke"));
        let (result, run_) = block_on(run("panicking", dir.path(), async {
            if dir.path().exists() {
                panic!("boom");
            }
            Ok(Fixed)
        }));
        assert!(result.is_none());
        assert_eq!(run_.error.as_deref(), Some("panicked: boom"));
    }
}
