//! The data path's reconcile loop and what keeps it able to run: the
//! netlink connection and the kernel monitor are watched and reopened with
//! backoff when they end; a failing pass is retried with backoff, reported
//! once in the status and the log, and never ends the task.

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::dataplane::{DataPath, Report};
use super::scope::{Scope, Watched};
use super::{Fault, Part, Progress};
use crate::backend::Observation;
use crate::backoff::Backoff;
use crate::config::InterfaceSelector;
use crate::files::SubnetEnv;
use crate::kube_subnet::OwnAttrs;
use crate::kube_subnet::PeerSnapshot;
use crate::netlink::{self, ExternalInterface, NetlinkError, NetlinkHandle, Observations};

/// How often the data path is reconciled even without any trigger.
const RESYNC: Duration = Duration::from_secs(30);
/// How long to gather further triggers before a reconcile: a burst of
/// kernel notifications (a device deleted with thousands of entries) is
/// folded into one pass, at little cost to a single change's latency.
const COALESCE: Duration = Duration::from_millis(5);

/// What the reconcile loop drives: the kernel through netlink
/// ([`NetlinkPlane`]), or a fake in tests. The loop owns the policy
/// (triggers, backoff, health, readiness); the plane only does one thing
/// at a time when asked.
pub(super) trait DataPlane: Send {
    /// Folds a kernel notification into the plane's models; returns
    /// whether a pass is due.
    fn observe(&mut self, observation: &Observation) -> bool;
    /// Forgets every model: the next pass dumps.
    fn forget_models(&mut self);
    /// One level-triggered pass.
    fn reconcile(&mut self, peers: &PeerSnapshot) -> impl Future<Output = Report> + Send;
    /// Opens the command connection again (the old one ended) and points
    /// the plane at it; the returned work ends when it is lost.
    fn reconnect(
        &mut self,
        scope: &Scope,
    ) -> impl Future<Output = Result<Watched, NetlinkError>> + Send;
    /// Subscribes to kernel notifications.
    fn subscribe(
        &mut self,
        scope: &Scope,
    ) -> impl Future<Output = Result<(Observations, Watched), NetlinkError>> + Send;
    /// Where it works, for messages (the namespace).
    fn place(&self) -> String;
}

/// The netlink command connection: the handle the data paths use and the
/// reader that drives it.
pub(super) struct NetlinkConnection {
    pub handle: NetlinkHandle,
    pub reader: Watched,
}

impl NetlinkConnection {
    pub async fn open(netns: Option<&Path>, scope: &Scope) -> Result<Self, NetlinkError> {
        let (handle, driver) = NetlinkHandle::open(netns).await?;
        let reader = scope.spawn_watched("the netlink connection", driver);
        Ok(NetlinkConnection { handle, reader })
    }
}

/// The uplink as the data path uses it: re-resolved when a notification
/// says its link or an address on it changed (DHCP renumbering, a recreated
/// uplink), so the vxlan devices' local address and the published
/// `public-ip` follow.
pub(super) struct Uplink {
    pub selector: Option<InterfaceSelector>,
    pub ipv4: bool,
    pub ipv6: bool,
    pub current: ExternalInterface,
    /// What our Node publishes; the own-node keeper follows it.
    pub attrs: watch::Sender<OwnAttrs>,
    /// Whether the published address of each family is the interface's
    /// (not pinned with a `node-public-ip` annotation).
    pub follow: (bool, bool),
    /// A notification touched the uplink: resolve before the next pass.
    pub dirty: bool,
}

/// The real plane: the backend's data paths, programmed through netlink in
/// the node's namespace.
pub(super) struct NetlinkPlane<'a> {
    pub path: &'a mut DataPath,
    pub netns: Option<PathBuf>,
    pub label: String,
    pub uplink: Uplink,
    pub progress: &'a Progress,
}

impl NetlinkPlane<'_> {
    /// Resolves the uplink again; a changed address moves the devices and
    /// what we publish. A failure (the address is gone for now) keeps the
    /// old ones and is reported with the pass.
    async fn follow_uplink(&mut self) -> Result<(), NetlinkError> {
        let Some(netlink) = self.path.netlink() else {
            return Ok(());
        };
        let uplink = &mut self.uplink;
        let found = netlink
            .external_interface(uplink.selector.as_ref(), uplink.ipv4, uplink.ipv6)
            .await?;
        uplink.dirty = false;
        let old = std::mem::replace(&mut uplink.current, found.clone());
        let v4 = found.ipv4.filter(|ip| old.ipv4 != Some(*ip));
        let v6 = found.ipv6.filter(|ip| old.ipv6 != Some(*ip));
        if v4.is_none() && v6.is_none() {
            return Ok(());
        }
        let moved = self.path.move_local(v4.map(IpAddr::V4), v6.map(IpAddr::V6));
        info!(
            iface = %found.name,
            from = ?(old.ipv4, old.ipv6),
            to = ?(found.ipv4, found.ipv6),
            devices = ?moved,
            "the uplink's address changed: moving the vxlan devices and the published public IP"
        );
        let follow = uplink.follow;
        uplink.attrs.send_if_modified(|attrs| {
            let mut changed = false;
            if let (Some(ip), true, Some((_, published))) = (v4, follow.0, attrs.ipv4.as_mut()) {
                changed |= std::mem::replace(published, ip) != ip;
            }
            if let (Some(ip), true, Some((_, published))) = (v6, follow.1, attrs.ipv6.as_mut()) {
                changed |= std::mem::replace(published, ip) != ip;
            }
            changed
        });
        let public = uplink
            .attrs
            .borrow()
            .ipv4
            .as_ref()
            .map(|(_, ip)| IpAddr::V4(*ip));
        self.progress.update(|s| s.public_ip = public);
        Ok(())
    }
}

impl DataPlane for NetlinkPlane<'_> {
    fn observe(&mut self, observation: &Observation) -> bool {
        let uplink = match observation {
            Observation::Link { index, .. } | Observation::Address { index, .. } => {
                *index == self.uplink.current.index
            }
            _ => false,
        };
        if uplink {
            self.uplink.dirty = true;
        }
        // Both: the paths fold it into their models too.
        self.path.observe(observation) | uplink
    }

    fn forget_models(&mut self) {
        self.path.forget_models();
    }

    async fn reconcile(&mut self, peers: &PeerSnapshot) -> Report {
        let followed = if self.uplink.dirty {
            self.follow_uplink().await
        } else {
            Ok(())
        };
        let mut report = self.path.reconcile(peers).await;
        if let Err(error) = followed {
            report
                .errors
                .push((self.uplink.current.name.clone(), error));
        }
        report
    }

    async fn reconnect(&mut self, scope: &Scope) -> Result<Watched, NetlinkError> {
        let connection = NetlinkConnection::open(self.netns.as_deref(), scope).await?;
        self.path.use_netlink(&connection.handle);
        Ok(connection.reader)
    }

    async fn subscribe(&mut self, scope: &Scope) -> Result<(Observations, Watched), NetlinkError> {
        let (observations, driver) = netlink::observations(self.netns.as_deref()).await?;
        Ok((
            observations,
            scope.spawn_watched("the kernel monitor", driver),
        ))
    }

    fn place(&self) -> String {
        self.label.clone()
    }
}

/// The kernel monitor: notifications and the reader that produces them.
struct KernelMonitor {
    observations: Observations,
    reader: Watched,
}

/// What the loop needs from the task.
pub(super) struct DriveContext<'a> {
    pub subnet_file: &'a Path,
    pub progress: &'a Progress,
    pub scope: &'a Scope,
    /// Test-only fault hooks.
    pub faults: mpsc::UnboundedReceiver<Fault>,
    /// Once subnet.env is first written, the file keeper keeps it.
    pub keep_subnet_env: &'a watch::Sender<Option<SubnetEnv>>,
}

/// A deadline that is either set or never comes (the loops' retry timers).
pub(super) async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn ended(watched: &mut Option<Watched>) {
    match watched {
        Some(watched) => watched.ended().await,
        None => std::future::pending().await,
    }
}

async fn next_observation(monitor: &mut Option<KernelMonitor>) -> Option<Observation> {
    match monitor {
        Some(monitor) => monitor.observations.recv().await,
        None => std::future::pending().await,
    }
}

/// The reconcile loop: on every peer-set change, on kernel notifications
/// about what we own (a deleted device, route, neighbour or FDB entry), on a
/// slow timer, and after a failed pass (with backoff). subnet.env is
/// written and `ready()` resolves after the first complete pass with the
/// full peer list. Ends only when the peer watch ends.
pub(super) async fn drive_data_path(
    mut ctx: DriveContext<'_>,
    path: &mut impl DataPlane,
    reader: Watched,
    mut peers: watch::Receiver<PeerSnapshot>,
    subnet_env: &SubnetEnv,
) {
    let progress = ctx.progress;
    let mut monitor = None;
    let mut resubscribe_at = Some(Instant::now());
    let mut monitor_backoff = Backoff::KERNEL;
    let mut reader = Some(reader);
    let mut reopen_at: Option<Instant> = None;
    // Whether a monitor was ever open (a later one counts as reopened).
    let mut subscribed = false;
    let mut netlink_backoff = Backoff::KERNEL;
    let mut pass_backoff = Backoff::KERNEL;
    let mut retry: Option<Instant> = None;
    // The first pass is due anyway (the subscription): no tick at 0.
    let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false;
    loop {
        tokio::select! {
            changed = peers.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            observation = next_observation(&mut monitor) => match observation {
                Some(Observation::MonitorEnded) | None => {
                    progress.problem(
                        Part::KernelMonitor,
                        "the kernel monitor ended; resubscribing (until then every pass dumps the kernel)",
                    );
                    monitor = None;
                    resubscribe_at = Some(Instant::now());
                    path.forget_models();
                }
                Some(observation) => {
                    if !path.observe(&observation) {
                        continue;
                    }
                }
            },
            () = ended(&mut reader) => {
                progress.problem(Part::Netlink, format!(
                    "the netlink connection in {} ended; reopening it",
                    path.place()
                ));
                reader = None;
                reopen_at = Some(Instant::now());
                continue;
            }
            () = at(reopen_at) => {
                match path.reconnect(ctx.scope).await {
                    Ok(reopened) => {
                        reopen_at = None;
                        netlink_backoff.succeeded();
                        path.forget_models();
                        reader = Some(reopened);
                        progress.update(|s| s.sockets_reopened += 1);
                        progress.resolved(Part::Netlink);
                    }
                    Err(error) => {
                        progress.problem(Part::Netlink, format!("{error}; retrying"));
                        reopen_at = Some(Instant::now() + netlink_backoff.failed());
                        continue;
                    }
                }
            }
            () = at(resubscribe_at) => {
                match path.subscribe(ctx.scope).await {
                    Ok((observations, reader)) => {
                        resubscribe_at = None;
                        let again = monitor_backoff.succeeded() || subscribed;
                        subscribed = true;
                        monitor = Some(KernelMonitor { observations, reader });
                        if again {
                            progress.update(|s| s.sockets_reopened += 1);
                        }
                        progress.resolved(Part::KernelMonitor);
                        // Whatever happened while nobody listened: dump.
                        path.forget_models();
                    }
                    Err(error) => {
                        progress.problem(Part::KernelMonitor, format!("{error}; retrying"));
                        resubscribe_at = Some(Instant::now() + monitor_backoff.failed());
                    }
                }
            }
            Some(fault) = ctx.faults.recv() => {
                match fault {
                    Fault::CutNetlink => {
                        if let Some(reader) = &reader {
                            reader.cut();
                        }
                    }
                    Fault::CutKernelMonitor => {
                        if let Some(monitor) = &monitor {
                            monitor.reader.cut();
                        }
                    }
                }
                continue;
            }
            _ = resync.tick() => path.forget_models(),
            () = at(retry) => {}
        }
        if reader.is_none() {
            // No connection to program through: wait for the reopen.
            continue;
        }
        tokio::time::sleep(COALESCE).await;
        if let Some(open) = monitor.as_mut() {
            while let Some(observation) = open.observations.try_recv() {
                if observation == Observation::MonitorEnded {
                    // Seen again by the select above, which resubscribes.
                    break;
                }
                path.observe(&observation);
            }
        }
        if monitor.is_none() {
            // Without notifications nothing can vouch for the models.
            path.forget_models();
        }
        let snapshot = peers.borrow_and_update().clone();
        progress.update(|s| {
            s.peers_known = snapshot.peers.len();
            s.peers_skipped = snapshot.skipped;
            s.peers_synced = snapshot.synced;
        });
        let report = path.reconcile(&snapshot).await;
        progress.update(|s| {
            s.peers_programmed = report.peers_programmed;
            s.kernel_dumps += report.dumps;
            s.last_reconcile = Some(SystemTime::now());
        });
        match report.summary() {
            Some(summary) => {
                let delay = pass_backoff.failed();
                progress.problem(Part::DataPath, summary);
                tracing::debug!("retrying the data path in {delay:?}");
                retry = Some(Instant::now() + delay);
            }
            None => {
                retry = None;
                pass_backoff.succeeded();
                progress.resolved(Part::DataPath);
            }
        }
        if snapshot.synced && report.complete() && !ready {
            ready = write_subnet_env(ctx.subnet_file, subnet_env, ctx.scope, progress).await;
            if ready {
                info!(subnet_file = %ctx.subnet_file.display(), peers = report.peers_programmed, "flannel is ready");
                let _ = ctx.keep_subnet_env.send(Some(subnet_env.clone()));
                progress.mark_ready();
            } else {
                retry = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }
}

/// Without a data path: keep the status current with the peer set.
pub(super) async fn follow_peers(mut peers: watch::Receiver<PeerSnapshot>, progress: &Progress) {
    while peers.changed().await.is_ok() {
        let snapshot = peers.borrow_and_update().clone();
        progress.update(|s| {
            s.peers_known = snapshot.peers.len();
            s.peers_skipped = snapshot.skipped;
            s.peers_synced = snapshot.synced;
            s.last_peer_update = Some(SystemTime::now());
        });
    }
}

/// The first write of subnet.env (atomically; unchanged content is not
/// rewritten); a failure is a problem of the files, retried. Returns
/// whether it is in place.
async fn write_subnet_env(
    path: &Path,
    env: &SubnetEnv,
    scope: &Scope,
    progress: &Progress,
) -> bool {
    let target = path.to_path_buf();
    let env = env.clone();
    match scope.blocking(move || env.write(&target)).await {
        Ok(Ok(written)) => {
            if written {
                info!(path = %path.display(), "wrote subnet file");
            }
            true
        }
        Ok(Err(error)) => {
            progress.problem(
                Part::Files,
                format!("failed to write flannel subnet file: {error}"),
            );
            false
        }
        Err(join) => {
            warn!("writing {} did not finish: {join}", path.display());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    //! The loop's policy against a fake plane, on tokio's paused clock:
    //! when passes run, how failures back off, what the status says.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::backend::{Neighbour, Op, OpFailure};
    use crate::mac::MacAddr;
    use crate::task::{Health, Phase, Readiness, Status};

    /// What the fake was asked to do, in tenths of a second since start.
    #[derive(Debug, Default)]
    struct Calls {
        passes: Vec<u128>,
        reconnects: Vec<u128>,
        subscriptions: Vec<u128>,
        forgotten: usize,
    }

    struct FakePlane {
        start: Instant,
        calls: Arc<Mutex<Calls>>,
        /// Outcomes of the next passes (`true`: one refused operation);
        /// complete once empty.
        passes: VecDeque<bool>,
        /// Outcomes of the next reconnects; success once empty.
        reconnects: VecDeque<bool>,
    }

    impl FakePlane {
        fn new(passes: &[bool], reconnects: &[bool]) -> (FakePlane, Arc<Mutex<Calls>>) {
            let calls = Arc::new(Mutex::new(Calls::default()));
            let plane = FakePlane {
                start: Instant::now(),
                calls: calls.clone(),
                passes: passes.iter().copied().collect(),
                reconnects: reconnects.iter().copied().collect(),
            };
            (plane, calls)
        }

        fn now(&self) -> u128 {
            self.start.elapsed().as_millis() / 100
        }
    }

    fn refused() -> OpFailure {
        OpFailure {
            op: Op::SetNeighbour(Neighbour {
                ip: "10.42.5.0".parse().unwrap(),
                mac: MacAddr([2, 0, 0, 0, 0, 5]),
            }),
            errno: Some(libc::EINVAL),
            held_back_by: None,
            message: "Invalid argument (os error 22)".into(),
        }
    }

    /// Work that runs until cut, holding `keep` (a monitor's sender).
    fn watched<T: Send + 'static>(scope: &Scope, keep: T) -> Watched {
        scope.spawn_watched("fake socket", async move {
            let _keep = keep;
            std::future::pending::<()>().await
        })
    }

    impl DataPlane for FakePlane {
        fn observe(&mut self, _: &Observation) -> bool {
            true
        }
        fn forget_models(&mut self) {
            self.calls.lock().unwrap().forgotten += 1;
        }
        async fn reconcile(&mut self, _: &PeerSnapshot) -> Report {
            let now = self.now();
            self.calls.lock().unwrap().passes.push(now);
            let fail = self.passes.pop_front().unwrap_or(false);
            Report {
                peers_programmed: usize::from(!fail),
                failures: if fail { vec![refused()] } else { Vec::new() },
                ..Report::default()
            }
        }
        async fn reconnect(&mut self, scope: &Scope) -> Result<Watched, NetlinkError> {
            let now = self.now();
            self.calls.lock().unwrap().reconnects.push(now);
            if self.reconnects.pop_front().unwrap_or(true) {
                Ok(watched(scope, ()))
            } else {
                Err(NetlinkError::Open {
                    netns: "fake".into(),
                    problem: "EMFILE".into(),
                })
            }
        }
        async fn subscribe(
            &mut self,
            scope: &Scope,
        ) -> Result<(Observations, Watched), NetlinkError> {
            let now = self.now();
            self.calls.lock().unwrap().subscriptions.push(now);
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            Ok((Observations::from_channel(rx), watched(scope, tx)))
        }
        fn place(&self) -> String {
            "fake".into()
        }
    }

    struct Harness {
        progress: Progress,
        status: watch::Receiver<Status>,
        scope: Scope,
        faults: mpsc::UnboundedSender<Fault>,
        faults_rx: Option<mpsc::UnboundedReceiver<Fault>>,
        keep: watch::Sender<Option<SubnetEnv>>,
        dir: tempfile::TempDir,
        peers_tx: watch::Sender<PeerSnapshot>,
        peers: Option<watch::Receiver<PeerSnapshot>>,
    }

    fn harness() -> Harness {
        let (status_tx, status) = watch::channel(Status::default());
        let (readiness, _) = watch::channel(Readiness::Pending);
        let (faults, faults_rx) = mpsc::unbounded_channel();
        let (peers_tx, peers) = watch::channel(PeerSnapshot {
            synced: true,
            ..PeerSnapshot::default()
        });
        Harness {
            progress: Progress {
                status: status_tx,
                readiness,
            },
            status,
            scope: Scope::new(),
            faults,
            faults_rx: Some(faults_rx),
            keep: watch::channel(None).0,
            dir: tempfile::tempdir().unwrap(),
            peers_tx,
            peers: Some(peers),
        }
    }

    fn env() -> SubnetEnv {
        SubnetEnv::for_lease(
            Some((
                "10.42.0.0/16".parse().unwrap(),
                "10.42.0.0/24".parse().unwrap(),
            )),
            None,
            1450,
            true,
        )
    }

    /// Runs the loop with `plane` beside `script` (which sees the status
    /// and the fault sender); ends the loop when the script is done.
    async fn run<F: Future<Output = ()>>(
        h: &mut Harness,
        mut plane: FakePlane,
        script: impl FnOnce(
            watch::Receiver<Status>,
            mpsc::UnboundedSender<Fault>,
            watch::Sender<PeerSnapshot>,
        ) -> F,
    ) {
        let subnet_file = h.dir.path().join("subnet.env");
        let ctx = DriveContext {
            subnet_file: &subnet_file,
            progress: &h.progress,
            scope: &h.scope,
            faults: h.faults_rx.take().unwrap(),
            keep_subnet_env: &h.keep,
        };
        let reader = watched(&h.scope, ());
        let env = env();
        let peers = h.peers.take().unwrap();
        let drive = drive_data_path(ctx, &mut plane, reader, peers, &env);
        let script = script(h.status.clone(), h.faults.clone(), h.peers_tx.clone());
        tokio::select! {
            () = drive => panic!("the loop ended by itself"),
            () = script => {}
        }
        h.scope.close().await;
    }

    async fn until(status: &mut watch::Receiver<Status>, check: impl FnMut(&Status) -> bool) {
        tokio::time::timeout(Duration::from_secs(120), status.wait_for(check))
            .await
            .expect("reached on the paused clock")
            .expect("status sender alive");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_passes_back_off_are_reported_once_then_ready_then_degraded() {
        let mut h = harness();
        let (plane, calls) = FakePlane::new(&[true, true, true, false, true, false], &[]);
        let file = h.dir.path().join("subnet.env");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        run(&mut h, plane, |mut status, _, peers| async move {
            until(&mut status, |s| s.problem(Part::DataPath).is_some()).await;
            let first = status.borrow().problem(Part::DataPath).cloned().unwrap();
            // Not ready while failing; no subnet.env yet.
            assert_eq!(status.borrow().health, Health::Starting);
            assert!(!file.exists());
            until(&mut status, |s| s.phase == Phase::Running).await;
            record.lock().unwrap().push(first);
            assert_eq!(status.borrow().health, Health::Healthy);
            assert!(file.exists(), "subnet.env written before ready");
            // A new peer set: that pass fails; degraded, retried in 1 s
            // (the success reset the backoff).
            peers.send_modify(|_| {});
            until(&mut status, |s| s.health == Health::Degraded).await;
            until(&mut status, |s| s.health == Health::Healthy).await;
        })
        .await;
        let calls = calls.lock().unwrap();
        // 0, +1, +2, +4 s; the peer change at 7 s, then +1 s.
        assert_eq!(calls.passes, [0, 10, 30, 70, 70, 80]);
        assert_eq!(calls.subscriptions, [0]);
        let first = seen.lock().unwrap()[0].clone();
        assert!(first.message.contains("10.42.5.0"), "{first}");
        assert!(first.message.contains("1 operation failed"), "{first}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_is_reopened_with_backoff_and_no_pass_runs_without_it() {
        let mut h = harness();
        let (plane, calls) = FakePlane::new(&[], &[false, false, true]);
        run(&mut h, plane, |mut status, faults, _| async move {
            until(&mut status, |s| s.health == Health::Healthy).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            faults.send(Fault::CutNetlink).unwrap();
            until(&mut status, |s| s.problem(Part::Netlink).is_some()).await;
            assert_eq!(status.borrow().health, Health::Degraded);
            until(&mut status, |s| s.sockets_reopened == 1).await;
            until(&mut status, |s| s.health == Health::Healthy).await;
            // The pass that follows the reconnect (5 ms later).
            tokio::time::sleep(Duration::from_secs(1)).await;
        })
        .await;
        let calls = calls.lock().unwrap();
        // Cut at 1 s: tries at once, then after 1 s and 2 s.
        assert_eq!(calls.reconnects, [10, 20, 40]);
        // The first pass, then the one after the reconnect: none while
        // the connection was gone.
        assert_eq!(calls.passes, [0, 40]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_monitor_is_resubscribed_and_models_are_not_trusted_meanwhile() {
        let mut h = harness();
        let (plane, calls) = FakePlane::new(&[], &[]);
        let forgotten_before = Arc::new(Mutex::new(0));
        let before = forgotten_before.clone();
        let probe = calls.clone();
        run(&mut h, plane, |mut status, faults, _| async move {
            until(&mut status, |s| s.health == Health::Healthy).await;
            *before.lock().unwrap() = probe.lock().unwrap().forgotten;
            faults.send(Fault::CutKernelMonitor).unwrap();
            until(&mut status, |s| s.sockets_reopened == 1).await;
            until(&mut status, |s| s.health == Health::Healthy).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        })
        .await;
        let calls = calls.lock().unwrap();
        assert_eq!(calls.subscriptions, [0, 0]);
        // Forgotten when it ended and again once resubscribed.
        assert!(calls.forgotten >= *forgotten_before.lock().unwrap() + 2);
        assert_eq!(calls.passes.len(), 3, "{:?}", calls.passes);
    }
}
