//! The task's health: what is failing right now, part by part, and since
//! when. Every long-running loop reports its own part (the data path, the
//! kernel monitor, the masquerade rules, the files, the Node object);
//! [`Status::health`](super::Status) is derived from the phase and the open
//! problems, so it can never disagree with them.
//!
//! Logging follows the same bookkeeping: a part's failure is warned about
//! when it starts and when its message changes, never again while it
//! repeats, and its recovery is one info line.

use std::fmt;
use std::time::SystemTime;

use tracing::{info, warn};

use super::{Phase, Status};

/// One part of the task that can fail and recover on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Part {
    /// The backend's kernel entries (devices, routes, neighbours, FDB).
    DataPath,
    /// The netlink connection the data path is programmed through.
    Netlink,
    /// Kernel notifications (without them, repairs wait for the resync).
    KernelMonitor,
    /// Masquerade and forward rules (iptables or nftables).
    Masquerade,
    /// subnet.env, net-conf.json and the CNI conflist.
    Files,
    /// This node's Node object: annotations, NetworkUnavailable, podCIDR.
    Node,
    /// The watch of every Node (the peers): while it fails, the last
    /// known peers stay programmed.
    NodeWatch,
    /// The external interface and its addresses.
    Interface,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::DataPath => "data path",
            Part::Netlink => "netlink",
            Part::KernelMonitor => "kernel monitor",
            Part::Masquerade => "masquerade",
            Part::Files => "files",
            Part::Node => "node",
            Part::NodeWatch => "node watch",
            Part::Interface => "interface",
        })
    }
}

/// Something failing right now, retried by its loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which part.
    pub part: Part,
    /// The latest error, as text (the step and its cause).
    pub message: String,
    /// When this part started failing (not reset while it keeps failing).
    pub since: SystemTime,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let for_s = SystemTime::now()
            .duration_since(self.since)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        write!(f, "{}: {} (for {for_s} s)", self.part, self.message)
    }
}

/// The verdict a host (or `/readyz`) acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Health {
    /// Not ready yet; [`Status::problems`] names what start-up is retrying.
    #[default]
    Starting,
    /// Ready, and nothing is failing.
    Healthy,
    /// Ready once, but some part is failing now (see
    /// [`Status::problems`]); the task keeps retrying it.
    Degraded,
    /// The task ended with an error (see [`Status::last_error`]).
    Failed,
    /// The task was shut down.
    Stopped,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Failed => "failed",
            Health::Stopped => "stopped",
        })
    }
}

impl Status {
    /// The task is running (starting, healthy or degraded): what a
    /// liveness probe (`/healthz`) checks.
    pub fn is_live(&self) -> bool {
        !matches!(self.health, Health::Failed | Health::Stopped)
    }

    /// Ready and nothing failing: what a readiness probe (`/readyz`)
    /// checks.
    pub fn is_ready(&self) -> bool {
        self.health == Health::Healthy
    }

    /// The open problem of `part`, if any.
    pub fn problem(&self, part: Part) -> Option<&Problem> {
        self.problems.iter().find(|p| p.part == part)
    }

    /// Recomputes [`Status::health`] from the phase and the problems.
    pub(super) fn refresh_health(&mut self) {
        self.health = verdict(self.phase, !self.problems.is_empty());
    }

    /// Records that `part` fails with `message`; returns whether this is
    /// news (a new problem or a different message), which is when it is
    /// worth a warning.
    pub(super) fn record_problem(&mut self, part: Part, message: String, now: SystemTime) -> bool {
        let news = match self.problems.iter_mut().find(|p| p.part == part) {
            Some(open) if open.message == message => false,
            Some(open) => {
                open.message = message;
                true
            }
            None => {
                self.problems.push(Problem {
                    part,
                    message,
                    since: now,
                });
                self.problems.sort_by_key(|p| p.part);
                true
            }
        };
        self.refresh_health();
        news
    }

    /// Records that `part` works; returns the problem it had, if any.
    pub(super) fn clear_problem(&mut self, part: Part) -> Option<Problem> {
        let index = self.problems.iter().position(|p| p.part == part)?;
        let problem = self.problems.remove(index);
        self.refresh_health();
        Some(problem)
    }
}

/// The verdict for a phase with or without open problems.
pub(super) fn verdict(phase: Phase, failing: bool) -> Health {
    match phase {
        Phase::Starting | Phase::WaitingForPodCidr | Phase::Programming => Health::Starting,
        Phase::Running if failing => Health::Degraded,
        Phase::Running => Health::Healthy,
        Phase::Failed => Health::Failed,
        Phase::Stopped => Health::Stopped,
    }
}

/// Logs a change of a part's state: the warning for news, the info line
/// for a recovery.
pub(super) fn log_problem(part: Part, message: &str) {
    warn!(part = %part, "{message}");
}

pub(super) fn log_recovery(problem: &Problem) {
    let took = SystemTime::now()
        .duration_since(problem.since)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    info!(part = %problem.part, "{} recovered after {took:.1} s (was: {})", problem.part, problem.message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_verdict_follows_phase_and_problems() {
        let table = [
            (Phase::Starting, false, Health::Starting),
            (Phase::WaitingForPodCidr, true, Health::Starting),
            (Phase::Programming, true, Health::Starting),
            (Phase::Running, false, Health::Healthy),
            (Phase::Running, true, Health::Degraded),
            (Phase::Failed, false, Health::Failed),
            (Phase::Stopped, true, Health::Stopped),
        ];
        for (phase, failing, wanted) in table {
            assert_eq!(verdict(phase, failing), wanted, "{phase:?} {failing}");
        }
    }

    #[test]
    fn a_problem_is_news_once_per_message_and_keeps_its_start() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let t1 = t0 + Duration::from_secs(5);
        let mut status = Status {
            phase: Phase::Running,
            ..Status::default()
        };
        status.refresh_health();
        assert_eq!((status.health, status.is_ready()), (Health::Healthy, true));
        assert!(status.record_problem(Part::Masquerade, "lock held".into(), t0));
        assert!(!status.record_problem(Part::Masquerade, "lock held".into(), t1));
        assert!(status.record_problem(Part::Files, "read-only".into(), t1));
        assert!(status.record_problem(Part::Masquerade, "timed out".into(), t1));
        assert_eq!(status.health, Health::Degraded);
        assert!(status.is_live() && !status.is_ready());
        // Sorted by part; the start of the masquerade problem kept.
        let parts: Vec<Part> = status.problems.iter().map(|p| p.part).collect();
        assert_eq!(parts, [Part::Masquerade, Part::Files]);
        assert_eq!(status.problem(Part::Masquerade).map(|p| p.since), Some(t0));
        let cleared = status.clear_problem(Part::Masquerade).unwrap();
        assert_eq!(cleared.message, "timed out");
        assert_eq!(status.clear_problem(Part::Masquerade), None);
        assert_eq!(status.health, Health::Degraded);
        status.clear_problem(Part::Files);
        assert_eq!(status.health, Health::Healthy);
    }
}
