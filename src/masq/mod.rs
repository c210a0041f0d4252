//! Masquerade and forward rules, as upstream flanneld installs them, with
//! two drivers behind one trait: [`Iptables`] (rule text identical to
//! upstream's `iptables -S` output, written atomically with
//! `iptables-restore --noflush`) and [`Nftables`] (tables `ip flannel-ipv4`
//! / `ip6 flannel-ipv6`, chosen by `EnableNFTables` in net-conf.json).
//!
//! - [`RuleSet`] is the pure desired state (per family: cluster Network,
//!   own lease, which chains); [`masq_rules`] and [`forward_rules`] give
//!   upstream's rules in order.
//! - [`RuleDriver::ensure`] is the cheap check: it lists what is there,
//!   compares it with the rule set, and writes only when they differ (a
//!   deleted rule, a previous lease's rules, a missing jump); an intact set
//!   causes no write. Every write is logged once at info level.
//! - [`MasqRules::setup`] is start-up: removes the other driver's rules,
//!   logs the previous lease it replaces, ensures; [`keep_rules`] re-checks
//!   every [`RESYNC_PERIOD`].
//!
//! Every command runs in the network namespace given as a path
//! (`nsenter --net=<path>`), or in our own when that is `None`. Nothing is
//! removed when the task stops: pods keep working across a restart.

mod exec;
mod iptables;
mod nftables;
mod rules;

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnetwork::IpNetwork;
use tracing::{error, info, warn};

use crate::config::IptablesMode;
use crate::files::SubnetEnv;

pub use iptables::{detect_iptables_mode, Iptables};
pub use nftables::Nftables;
pub use rules::{
    forward_rules, masq_rules, normalise, AddrMatch, Chain, Family, FamilyRules, Rule, RuleSet,
    Verdict, FORWARD_COMMENT, KUBE_PROXY_MARK, MASQ_COMMENT,
};

/// How often upstream flanneld re-checks its rules (`--iptables-resync`,
/// 5 s).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(5);

/// A rule operation failed; names the command, the namespace and what the
/// command printed.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// The command could not be started.
    #[error("cannot run `{command}` in {netns}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Which network namespace.
        netns: String,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },
    /// The program is not installed.
    #[error("`{program}` is not installed (needed in {netns})")]
    Missing {
        /// The missing program.
        program: String,
        /// Which network namespace.
        netns: String,
    },
    /// The command exited with an error.
    #[error("`{command}` failed in {netns} ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Which network namespace.
        netns: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The command did not finish in time and was killed.
    #[error("`{command}` did not finish within {after:?} in {netns} and was killed")]
    TimedOut {
        /// The command line.
        command: String,
        /// Which network namespace.
        netns: String,
        /// How long it was given.
        after: Duration,
    },
    /// The command's output could not be understood.
    #[error("cannot read the output of `{command}` in {netns}: {problem}")]
    Parse {
        /// The command line.
        command: String,
        /// Which network namespace.
        netns: String,
        /// What is wrong.
        problem: String,
    },
    /// A network and a lease of different families.
    #[error("network {network} and lease {lease} are not of the same IP family")]
    FamilyMismatch {
        /// The cluster network.
        network: IpNetwork,
        /// The lease.
        lease: IpNetwork,
    },
}

/// Which driver installs the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriverKind {
    /// `iptables-restore` (upstream's default, and k3s's only choice).
    Iptables,
    /// `nft` (`"EnableNFTables": true` in net-conf.json).
    Nftables,
}

impl DriverKind {
    /// The driver net-conf.json's `EnableNFTables` chooses.
    pub fn from_enable_nftables(enable_nftables: bool) -> DriverKind {
        if enable_nftables {
            DriverKind::Nftables
        } else {
            DriverKind::Iptables
        }
    }

    /// The other driver (whose rules are removed at start-up).
    pub fn other(self) -> DriverKind {
        match self {
            DriverKind::Iptables => DriverKind::Nftables,
            DriverKind::Nftables => DriverKind::Iptables,
        }
    }

    /// A driver of this kind for the namespace at `netns` (`None`: ours),
    /// iptables from `PATH`.
    pub fn driver(self, netns: Option<&Path>) -> Arc<dyn RuleDriver> {
        self.driver_with(netns, IptablesMode::Path)
    }

    /// A driver of this kind; an iptables one runs the programs `mode`
    /// names (an nftables one ignores it).
    pub fn driver_with(self, netns: Option<&Path>, mode: IptablesMode) -> Arc<dyn RuleDriver> {
        match self {
            DriverKind::Iptables => Arc::new(Iptables::with_mode(netns, mode)),
            DriverKind::Nftables => Arc::new(Nftables::new(netns)),
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::Iptables => "iptables",
            DriverKind::Nftables => "nftables",
        })
    }
}

/// What a call changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Whether anything was written.
    pub written: bool,
    /// One line per chain or table written (also logged at info level).
    pub changes: Vec<String>,
}

/// One way of installing the rules. Calls block (they run the standard
/// binaries); from async code use `spawn_blocking` or [`keep_rules`].
pub trait RuleDriver: Send + Sync + fmt::Debug {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;

    /// Compares what is installed with `desired` and writes only what
    /// differs, atomically per table. Our chains are replaced as a whole,
    /// so rules of a previous lease or Network go in the same step; a
    /// family `desired` does not use is cleaned up when `desired` changes.
    fn ensure(&self, desired: &RuleSet) -> Result<Outcome, MasqError>;

    /// Removes everything this driver installs, for both families.
    fn remove_all(&self) -> Result<Outcome, MasqError>;

    /// How many write commands (`*-restore`, `nft -f`) this driver ran.
    fn writes(&self) -> u64;
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The node's rules: a driver and the rule set it keeps.
#[derive(Debug, Clone)]
pub struct MasqRules {
    driver: Arc<dyn RuleDriver>,
    desired: RuleSet,
}

impl MasqRules {
    /// Start-up: removes the rules of the other driver (switching driver
    /// leaves nothing behind; failures there are logged, not fatal), logs
    /// which previous lease or Network (from the old subnet.env, read
    /// before it is rewritten) is replaced, and installs `desired`.
    /// Blocks; call it from `spawn_blocking` in async code.
    pub fn setup(
        kind: DriverKind,
        netns: Option<&Path>,
        desired: RuleSet,
        previous: Option<&SubnetEnv>,
    ) -> Result<(MasqRules, Outcome), MasqError> {
        MasqRules::setup_with(kind, IptablesMode::Path, netns, desired, previous)
    }

    /// [`MasqRules::setup`] with the iptables programs `mode` names (for
    /// the driver in use and for the other one's cleanup).
    pub fn setup_with(
        kind: DriverKind,
        mode: IptablesMode,
        netns: Option<&Path>,
        desired: RuleSet,
        previous: Option<&SubnetEnv>,
    ) -> Result<(MasqRules, Outcome), MasqError> {
        let other = kind.other().driver_with(netns, mode);
        match other.remove_all() {
            Ok(outcome) if outcome.written => {
                info!(
                    "removed the {} rules: flannel now uses {kind}",
                    kind.other()
                )
            }
            Ok(_) | Err(MasqError::Missing { .. }) => {}
            Err(e) => warn!("cannot remove the {} rules: {e}", kind.other()),
        }
        if let Some(env) = previous {
            let (v4, v6) = RuleSet::previous(env);
            for (old, new) in [(v4, desired.ipv4), (v6, desired.ipv6)] {
                let Some(old) = old else { continue };
                let same =
                    new.is_some_and(|n| n.network() == old.network() && n.lease() == old.lease());
                if !same {
                    info!(
                        "{} network or lease changed from ({}, {}) to {}: replacing the old rules",
                        old.family(),
                        old.network(),
                        old.lease(),
                        new.map_or("none".to_string(), |n| format!(
                            "({}, {})",
                            n.network(),
                            n.lease()
                        ))
                    );
                }
            }
        }
        let driver = kind.driver_with(netns, mode);
        let outcome = driver.ensure(&desired)?;
        Ok((MasqRules { driver, desired }, outcome))
    }

    /// A keeper for an existing driver (no start-up steps).
    pub fn new(driver: Arc<dyn RuleDriver>, desired: RuleSet) -> MasqRules {
        MasqRules { driver, desired }
    }

    /// The periodic check: restores the rules if someone changed them;
    /// writes nothing when they are intact. Blocks.
    pub fn check_and_restore(&self) -> Result<Outcome, MasqError> {
        self.driver.ensure(&self.desired)
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<dyn RuleDriver> {
        &self.driver
    }

    /// The rule set kept.
    pub fn desired(&self) -> &RuleSet {
        &self.desired
    }

    /// Write commands run so far by the driver.
    pub fn writes(&self) -> u64 {
        self.driver.writes()
    }
}

/// Runs [`MasqRules::check_and_restore`] now and then every `every`
/// (upstream: [`RESYNC_PERIOD`]) until `stop` completes. A failure is
/// retried sooner, with backoff (1 s, 2 s, 4 s, then `every`), so rules
/// converge within seconds of the cause going away (a released xtables
/// lock). `report` sees the result of every check (to put it in a status);
/// errors are also logged with the command and its stderr, once while
/// they repeat, and the loop goes on. Needs a tokio runtime with the time
/// driver.
pub async fn keep_rules(
    rules: MasqRules,
    every: Duration,
    stop: impl Future<Output = ()>,
    mut report: impl FnMut(Result<&Outcome, &MasqError>) + Send,
) {
    tokio::pin!(stop);
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), every);
    let mut last_error: Option<String> = None;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let keeper = rules.clone();
        let result = tokio::task::spawn_blocking(move || keeper.check_and_restore()).await;
        next = tokio::time::Instant::now() + every;
        match result {
            Ok(Ok(outcome)) => {
                backoff.succeeded();
                report(Ok(&outcome));
                if last_error.take().is_some() {
                    info!(
                        "flannel's {} rules can be checked again",
                        rules.driver.kind()
                    );
                }
            }
            Ok(Err(e)) => {
                next = tokio::time::Instant::now() + backoff.failed();
                report(Err(&e));
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    error!(
                        "failed to ensure flannel's {} rules: {text}",
                        rules.driver.kind()
                    );
                    last_error = Some(text);
                }
            }
            Err(e) => error!("the rule check did not finish: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A driver that fails its first `failing` checks (a held lock), then
    /// works; it records when each check ran on the (paused) clock.
    #[derive(Debug)]
    struct FlakyDriver {
        failing: u64,
        checks: AtomicU64,
        at: Mutex<Vec<Duration>>,
        start: tokio::time::Instant,
    }

    impl RuleDriver for FlakyDriver {
        fn kind(&self) -> DriverKind {
            DriverKind::Iptables
        }
        fn ensure(&self, _: &RuleSet) -> Result<Outcome, MasqError> {
            lock(&self.at).push(self.start.elapsed());
            if self.checks.fetch_add(1, Ordering::SeqCst) < self.failing {
                return Err(MasqError::Failed {
                    command: "iptables-restore --noflush -w 5".into(),
                    netns: "test".into(),
                    status: "exit status: 4".into(),
                    stderr: "Another app is currently holding the xtables lock".into(),
                });
            }
            Ok(Outcome::default())
        }
        fn remove_all(&self) -> Result<Outcome, MasqError> {
            Ok(Outcome::default())
        }
        fn writes(&self) -> u64 {
            0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_check_is_retried_with_backoff_then_every_period() {
        let driver = Arc::new(FlakyDriver {
            failing: 4,
            checks: AtomicU64::new(0),
            at: Mutex::new(Vec::new()),
            start: tokio::time::Instant::now(),
        });
        let rules = MasqRules::new(driver.clone(), RuleSet::for_lease(None, None, true, true));
        let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
        let keeper = tokio::spawn(keep_rules(
            rules,
            RESYNC_PERIOD,
            async move {
                let _ = stop.await;
            },
            move |result| {
                let _ = results_tx.send(result.is_ok());
            },
        ));
        let mut seen = Vec::new();
        while seen.len() < 6 {
            seen.push(results.recv().await.unwrap());
        }
        let _ = stop_tx.send(());
        keeper.await.unwrap();
        assert_eq!(seen, [false, false, false, false, true, true]);
        // Blocking checks take a little real time; the paused clock moves
        // only by the waits, so compare whole seconds.
        let at: Vec<u64> = lock(&driver.at).iter().map(|d| d.as_secs()).collect();
        // 0, +1, +2, +4, +5 (the cap: the period), then every period.
        assert_eq!(at, [0, 1, 3, 7, 12, 17]);
    }
}
