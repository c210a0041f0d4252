//! Event cost: the agent's CPU time per Node event as the cluster grows.
//! With N peers programmed (a `flannel-agent` process in a namespace of its
//! own), one stream of `events` Node creates, then the deletes of the same
//! Nodes; the agent's CPU time (every thread's, from
//! `/proc/<pid>/task/*/schedstat`, in nanoseconds; utime + stime from
//! `/proc/<pid>/stat` as a cross-check at 10 ms resolution) from the first
//! write until the kernel notification of the last route (added or
//! deleted), divided by the events. CPU time, not wall time, so a busy
//! machine blurs it less; the idle rate measured just before (bookmarks,
//! timers) is reported and subtracted.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::api::{lease_net, spawn_monitor, Agent, Seen};
use super::report::{self, BenchResult, Csv};
use crate::fixtures::NodeShape;

/// The agent's CPU time so far: every thread's run time (ns resolution)
/// and utime + stime (tick resolution), in seconds.
#[derive(Debug, Clone, Copy, Default)]
struct CpuTime {
    schedstat: f64,
    ticks: f64,
}

fn cpu_time(pid: u32) -> CpuTime {
    let mut nanos = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            nanos += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    CpuTime {
        schedstat: nanos as f64 / 1e9,
        ticks: super::usage(pid).cpu_seconds,
    }
}

/// One batch of creates or deletes.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// Agent CPU per event (schedstat, idle rate subtracted), ms.
    pub cpu_ms_per_event: f64,
    /// The same without subtracting the idle rate, ms.
    pub raw_cpu_ms_per_event: f64,
    /// utime + stime per event (10 ms ticks; idle not subtracted), ms.
    pub ticks_ms_per_event: f64,
    /// First write -> last route notification, seconds.
    pub wall_seconds: f64,
}

/// One run at one size: creates, then deletes of the same Nodes.
#[derive(Debug, Clone, Copy)]
pub struct CostRun {
    /// The creates.
    pub create: Batch,
    /// The deletes.
    pub delete: Batch,
    /// Agent idle CPU before the run, percent of one core.
    pub idle_cpu_percent: f64,
    /// Agent RSS after the run, MiB.
    pub rss_mib: f64,
}

/// Every run at one peer count.
pub type CostSize = report::SizeRuns<CostRun>;

/// The event-cost result.
#[derive(Debug, Clone)]
pub struct EventCost {
    /// Creates (and deletes) per run.
    pub events: u32,
    /// How the Nodes look.
    pub shape: NodeShape,
    /// Per peer count.
    pub sizes: Vec<CostSize>,
    /// nproc and kernel.
    pub machine: String,
}

/// Measures at each of `peers`: `runs` runs of `events` creates then
/// deletes against one agent.
pub async fn event_cost(
    peers: &[u32],
    events: u32,
    runs: usize,
    shape: NodeShape,
) -> Result<EventCost, String> {
    let mut result = EventCost {
        events,
        shape,
        sizes: Vec::new(),
        machine: report::machine(),
    };
    for &size in peers {
        let mut at = CostSize::new(size, runs.max(1));
        let measured = measure_size(size, events, runs.max(1), shape, &mut at.runs).await;
        at.finish(Ok(measured));
        result.sizes.push(at);
    }
    Ok(result)
}

async fn measure_size(
    peers: u32,
    events: u32,
    runs: usize,
    shape: NodeShape,
    out: &mut Vec<CostRun>,
) -> Result<(), String> {
    let agent = Agent::start(peers, shape).await?;
    // The first reconcile's tail and the kernel's link-local setup.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = Arc::new(Mutex::new(Vec::<(Instant, Seen)>::new()));
    let overruns = Arc::new(Mutex::new(0u64));
    let monitor = spawn_monitor(&agent, seen.clone(), overruns.clone()).await?;
    for run in 0..runs {
        let idle_from = cpu_time(agent.pid);
        let idle_started = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_rate = (cpu_time(agent.pid).schedstat - idle_from.schedstat)
            / idle_started.elapsed().as_secs_f64();
        let indices: Vec<u32> = (peers + 1..=peers + events).collect();
        let create = batch(&agent, &seen, &indices, idle_rate, |i| {
            agent
                .server
                .create_node(shape.vxlan_peer(i))
                .map(|_| ())
                .map_err(|e| format!("creating Node peer-{i}: {e}"))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let delete = batch(&agent, &seen, &indices, idle_rate, |i| {
            agent
                .server
                .delete_node(&format!("peer-{i}"))
                .map(|_| ())
                .map_err(|e| format!("deleting Node peer-{i}: {e}"))
        })
        .await?;
        let rss_mib = super::usage(agent.pid).rss_mib;
        eprintln!(
            "event cost: {} peers, run {}/{runs}: create {:.3} ms, delete {:.3} ms CPU per event (idle {:.2} %)",
            report::thousands(peers.into()),
            run + 1,
            create.cpu_ms_per_event,
            delete.cpu_ms_per_event,
            idle_rate * 100.0
        );
        out.push(CostRun {
            create,
            delete,
            idle_cpu_percent: idle_rate * 100.0,
            rss_mib,
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    monitor.abort();
    Ok(())
}

/// Writes one event per index (`write`), then waits for the kernel
/// notification completing each: a route added for a create, the route or
/// its nexthop gone for a delete.
async fn batch(
    agent: &Agent,
    seen: &Arc<Mutex<Vec<(Instant, Seen)>>>,
    indices: &[u32],
    idle_rate: f64,
    mut write: impl FnMut(u32) -> Result<(), String>,
) -> Result<Batch, String> {
    let deleting = agent
        .server
        .get_node(&format!("peer-{}", indices.first().copied().unwrap_or(0)))
        .is_some();
    let before = cpu_time(agent.pid);
    let started = Instant::now();
    for &i in indices {
        write(i)?;
    }
    let mut waiting: BTreeSet<Ipv4Addr> = indices.iter().map(|&i| lease_net(i)).collect();
    let mut read = 0;
    let deadline = started + Duration::from_secs(120);
    let mut last_at = started;
    while !waiting.is_empty() {
        {
            let seen = seen
                .lock()
                .map_err(|e| format!("the kernel monitor's record: {e}"))?;
            for (at, what) in seen.iter().skip(read) {
                let done = waiting.iter().copied().find(|net| {
                    let want = if deleting {
                        Seen::RouteDeleted(*net)
                    } else {
                        Seen::RouteAdded(*net)
                    };
                    *at >= started && want.completed_by(what)
                });
                if let Some(net) = done {
                    waiting.remove(&net);
                    last_at = *at;
                }
            }
            read = seen.len();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {} {} not seen in the kernel within 120 s",
                waiting.len(),
                indices.len(),
                if deleting { "deletes" } else { "creates" }
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = cpu_time(agent.pid);
    let wall = last_at.duration_since(started).as_secs_f64();
    let events = indices.len().max(1) as f64;
    let raw = after.schedstat - before.schedstat;
    // The poll above overshoots the last notification by up to 20 ms; the
    // idle rate is subtracted over the time actually measured.
    let measured_for = started.elapsed().as_secs_f64();
    Ok(Batch {
        cpu_ms_per_event: (raw - idle_rate * measured_for).max(0.0) / events * 1000.0,
        raw_cpu_ms_per_event: raw / events * 1000.0,
        ticks_ms_per_event: (after.ticks - before.ticks) / events * 1000.0,
        wall_seconds: wall,
    })
}

impl EventCost {
    fn median(size: &CostSize, f: impl Fn(&CostRun) -> f64) -> Option<f64> {
        size.median_of(f)
    }
}

/// One figure of a run (for the CSV's columns).
type Figure = dyn Fn(&CostRun) -> f64;

impl BenchResult for EventCost {
    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "event cost: agent CPU time per Node event (schedstat of every thread, idle rate subtracted), {} {} Nodes created in one stream then deleted, {}, median; {}",
            self.events,
            self.shape,
            report::runs_label(&self.sizes),
            self.machine
        );
        let _ = writeln!(
            out,
            "{:>7} {:>12} {:>12} {:>12} {:>10} {:>10} {:>9}",
            "peers", "create ms", "delete ms", "ticks ms", "create s", "idle %", "RSS MiB"
        );
        for size in &self.sizes {
            if let (Some(create), Some(delete), Some(ticks), Some(wall), Some(idle), Some(rss)) = (
                Self::median(size, |r| r.create.cpu_ms_per_event),
                Self::median(size, |r| r.delete.cpu_ms_per_event),
                Self::median(size, |r| r.create.ticks_ms_per_event),
                Self::median(size, |r| r.create.wall_seconds),
                Self::median(size, |r| r.idle_cpu_percent),
                Self::median(size, |r| r.rss_mib),
            ) {
                let _ = writeln!(
                    out,
                    "{:>7} {:>12.4} {:>12.4} {:>12.3} {:>10.3} {:>10.2} {:>9.1}",
                    size.peers, create, delete, ticks, wall, idle, rss
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
            "events",
            "node_shape",
            "create_cpu_ms_per_event",
            "create_raw_cpu_ms_per_event",
            "create_ticks_ms_per_event",
            "create_wall_s",
            "delete_cpu_ms_per_event",
            "delete_raw_cpu_ms_per_event",
            "delete_ticks_ms_per_event",
            "delete_wall_s",
            "idle_cpu_percent",
            "agent_rss_mib",
            "error",
        ]);
        for size in &self.sizes {
            let row = |run: String, r: &dyn Fn(&Figure) -> String| {
                vec![
                    size.peers.to_string(),
                    run,
                    self.events.to_string(),
                    self.shape.to_string(),
                    r(&|c| c.create.cpu_ms_per_event),
                    r(&|c| c.create.raw_cpu_ms_per_event),
                    r(&|c| c.create.ticks_ms_per_event),
                    r(&|c| c.create.wall_seconds),
                    r(&|c| c.delete.cpu_ms_per_event),
                    r(&|c| c.delete.raw_cpu_ms_per_event),
                    r(&|c| c.delete.ticks_ms_per_event),
                    r(&|c| c.delete.wall_seconds),
                    r(&|c| c.idle_cpu_percent),
                    r(&|c| c.rss_mib),
                ]
            };
            for (i, run) in size.runs.iter().enumerate() {
                let mut cells = row((i + 1).to_string(), &|f| report::num(f(run), 4));
                cells.push(String::new());
                csv.row(cells);
            }
            let mut cells = row("median".into(), &|f| {
                report::opt(size.median_of(|r| f(r)), 4)
            });
            cells.push(size.error.clone().unwrap_or_default());
            csv.row(cells);
        }
        vec![("event-cost.csv".into(), csv.into_text())]
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
