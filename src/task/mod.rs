//! The network task: [`spawn`] starts it on the caller's tokio runtime and
//! returns a [`Handle`] to wait for readiness, read its status and stop it.
//! The steps themselves are in `run.rs`.

mod dataplane;
mod drive;
mod health;
mod keep_files;
mod own_node;
mod run;
mod scope;
mod wg_path;

pub use health::{Health, Part, Problem};

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use kube::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};

use crate::config::{Config, ConfigError, NetConfError};
use crate::files::FileError;
use crate::kube_subnet::{KubeError, Lease};

/// The step of the network task that failed; its text is the prefix of the
/// error message, worded like k3s's and flanneld's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// Starting the task at all.
    Start,
    /// Checking the `--netns` network namespace.
    OpenNetns,
    /// Writing `10-flannel.conflist`.
    WriteCniConf,
    /// Writing net-conf.json.
    WriteNetConf,
    /// Reading or parsing net-conf.json.
    ReadNetConf,
    /// Waiting for this node's Pod CIDR.
    WaitForPodCidr,
    /// Finding the external interface.
    FindInterface,
    /// Setting up the backend's data path.
    RegisterNetwork,
    /// Writing subnet.env.
    WriteSubnetFile,
    /// Setting up masquerade and forward rules.
    SetupMasq,
    /// The task itself (a panic).
    Run,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Start => "failed to start flannel",
            Step::OpenNetns => "failed to open the network namespace",
            Step::WriteCniConf => "failed to write the flannel CNI configuration",
            Step::WriteNetConf => "failed to write flannel configuration",
            Step::ReadNetConf => "failed to read flannel configuration",
            Step::WaitForPodCidr => "flannel failed to wait for PodCIDR assignment",
            Step::FindInterface => "failed to find the interface",
            Step::RegisterNetwork => "failed to register flannel network",
            Step::WriteSubnetFile => "failed to write flannel subnet file",
            Step::SetupMasq => "failed to setup masq rules",
            Step::Run => "flannel exited",
        })
    }
}

/// What went wrong inside a [`Step`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Unusable net-conf.json.
    #[error("{path}: {source}")]
    NetConf {
        /// The file that was read.
        path: PathBuf,
        /// What is wrong with it.
        source: NetConfError,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The Kubernetes side failed.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// Netlink failed.
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    /// Masquerade or forward rules failed.
    #[error(transparent)]
    Masq(#[from] crate::masq::MasqError),
    /// The `--netns` path is not a network namespace.
    #[error("{path}: {problem}")]
    Netns {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The backend cannot run in this configuration.
    #[error("{backend}: {problem}")]
    Backend {
        /// The backend type.
        backend: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
    /// `--flannel-backend=none`: there is no task to run.
    #[error("the network task is disabled (--flannel-backend=none)")]
    Disabled,
    /// Shut down before the network was ready.
    #[error("the network task was shut down before the network was ready")]
    Stopped,
    /// The task panicked (a bug: please report it).
    #[error("the network task panicked: {0}")]
    Panicked(String),
}

/// Why the network task stopped or could not become ready: the step that
/// failed and what went wrong, displayed as one line such as
/// `failed to register flannel network: ...`. Cheap to clone.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{step}: {failure}")]
pub struct Error {
    step: Step,
    #[source]
    failure: Arc<Failure>,
}

impl Error {
    fn new(step: Step, failure: impl Into<Failure>) -> Self {
        Error {
            step,
            failure: Arc::new(failure.into()),
        }
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// What went wrong.
    pub fn failure(&self) -> &Failure {
        &self.failure
    }
}

/// Where the task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Phase {
    /// Writing configuration files.
    #[default]
    Starting,
    /// Waiting for the Node's Pod CIDR.
    WaitingForPodCidr,
    /// Programming the data path.
    Programming,
    /// Data path programmed, files written; reconciling.
    Running,
    /// Ended with an error.
    Failed,
    /// Shut down on request.
    Stopped,
}

/// A snapshot of the task's state, for a host's status endpoint or logs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Status {
    /// Where the task is.
    pub phase: Phase,
    /// The backend type from net-conf.json, once read.
    pub backend_type: Option<&'static str>,
    /// This node's Pod CIDRs, once known.
    pub lease: Option<Lease>,
    /// The address peers send to (`public-ip`), once decided.
    pub public_ip: Option<std::net::IpAddr>,
    /// Valid peers known from the Node watch.
    pub peers_known: usize,
    /// Nodes skipped as peers (each logged once with the reason).
    pub peers_skipped: usize,
    /// Whether the initial list of all Nodes has completed.
    pub peers_synced: bool,
    /// When the peer set last changed.
    pub last_peer_update: Option<SystemTime>,
    /// Peers whose routes/neighbours/FDB entries are programmed.
    pub peers_programmed: usize,
    /// When the last reconcile finished.
    pub last_reconcile: Option<SystemTime>,
    /// The error the task ended with, as text.
    pub last_error: Option<String>,
    /// Full dumps of the kernel's entries so far: one at start, one per
    /// resync (30 s), and one after anything the model cannot account for
    /// (a change behind our back, lost notifications); a lasting refusal of
    /// one entry costs none.
    pub kernel_dumps: u64,
    /// How often a lost netlink connection or kernel monitor was reopened.
    pub sockets_reopened: u64,
    /// The verdict: starting, healthy, degraded, failed or stopped.
    pub health: Health,
    /// What is failing right now, by part, with the latest error and since
    /// when: while starting, what start-up is retrying; once ready, what
    /// makes the task degraded.
    pub problems: Vec<Problem>,
}

/// A fault a test injects into a running task through
/// [`Handle::inject_fault`]: what a lost socket does, without a way to
/// make the kernel drop one. Not part of the stable API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The netlink command connection ends (its reader stops).
    CutNetlink,
    /// The kernel monitor ends.
    CutKernelMonitor,
}

#[derive(Debug, Clone)]
enum Readiness {
    Pending,
    Ready,
    Ended(Result<(), Error>),
}

/// The running network task. Dropping it leaves the task running (like
/// dropping a tokio `JoinHandle`); use [`Handle::shutdown`] to stop it.
#[derive(Debug)]
pub struct Handle {
    status: watch::Receiver<Status>,
    readiness: watch::Receiver<Readiness>,
    shutdown: watch::Sender<bool>,
    faults: mpsc::UnboundedSender<Fault>,
    task: Option<JoinHandle<Result<(), Error>>>,
    outcome: Option<Result<(), Error>>,
}

impl Handle {
    /// Resolves once the files are written and the data path is programmed,
    /// or with the error that stopped the task first.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut readiness = self.readiness.clone();
        let state = match readiness
            .wait_for(|r| !matches!(r, Readiness::Pending))
            .await
        {
            Ok(state) => state.clone(),
            // The sender lives in the task: gone means it ended abnormally.
            Err(_) => return Err(Error::new(Step::Run, Failure::Panicked("no result".into()))),
        };
        match state {
            Readiness::Ready => Ok(()),
            Readiness::Ended(Err(error)) => Err(error),
            Readiness::Ended(Ok(())) | Readiness::Pending => {
                Err(Error::new(Step::Start, Failure::Stopped))
            }
        }
    }

    /// Test hook: injects `fault` into the running task's data path loop;
    /// returns whether the task took it (it runs and has a data path).
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault) -> bool {
        self.faults.send(fault).is_ok()
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits for the task to end and returns how it ended: `Ok` after a
    /// shutdown, otherwise the error, which a host should treat as fatal
    /// (k3s: "flannel exited: ..."). Cancel-safe; may be called again.
    pub async fn wait(&mut self) -> Result<(), Error> {
        if let Some(outcome) = &self.outcome {
            return outcome.clone();
        }
        let outcome = match self.task.as_mut() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(join_error) => Err(Error::new(
                    Step::Run,
                    Failure::Panicked(join_error.to_string()),
                )),
            },
            None => Err(Error::new(Step::Start, Failure::Disabled)),
        };
        self.task = None;
        self.outcome = Some(outcome.clone());
        outcome
    }

    /// Stops the task and waits for it: when this returns, nothing of the
    /// task is running any more (no background task, no netlink socket;
    /// a blocking job in flight, such as an iptables run, is waited for).
    /// Kernel state (devices, routes, rules) and files are left in place
    /// so pods keep their network across a restart, as upstream does.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }
}

/// Starts the network task for `config` on the current tokio runtime.
///
/// The task writes the CNI conflist and net-conf.json, waits for the Node's
/// Pod CIDR, then programs the backend's data path and keeps it reconciled.
/// With [`Backend::None`](crate::Backend::None) nothing is started and the handle reports
/// [`Failure::Disabled`].
///
/// ```no_run
/// # async fn host() -> Result<(), Box<dyn std::error::Error>> {
/// let client = kube::Client::try_default().await?;
/// let config = flannel_embed::Config::builder("node-a").build()?;
/// let mut handle = flannel_embed::spawn(client, config);
/// handle.ready().await?;
/// // ... run the rest of the host; if the task ever ends, stop the host:
/// if let Err(error) = handle.wait().await {
///     eprintln!("flannel exited: {error}");
/// }
/// # Ok(()) }
/// ```
pub fn spawn(client: Client, config: Config) -> Handle {
    let (status_tx, status_rx) = watch::channel(Status::default());
    let (readiness_tx, readiness_rx) = watch::channel(Readiness::Pending);
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let (faults_tx, faults_rx) = mpsc::unbounded_channel();

    if !config.backend().starts_network() {
        info!(
            node = config.node_name(),
            "flannel backend is none: the network task is disabled and was not started"
        );
        let outcome = Err(Error::new(Step::Start, Failure::Disabled));
        let _ = readiness_tx.send(Readiness::Ended(outcome.clone()));
        status_tx.send_modify(|s| s.phase = Phase::Stopped);
        return Handle {
            status: status_rx,
            readiness: readiness_rx,
            shutdown: shutdown_tx,
            faults: faults_tx,
            task: None,
            outcome: Some(outcome),
        };
    }

    let span = info_span!("flannel", node = %config.node_name());
    let task = tokio::spawn(
        async move {
            let progress = Arc::new(Progress {
                status: status_tx,
                readiness: readiness_tx,
            });
            let requested_stop = async {
                // A dropped Handle must not stop the task.
                if shutdown_rx.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let scope = scope::Scope::new();
            // The steps run as a task of their own, so that a panic in them
            // still lets this one close the scope below.
            let mut steps = tokio::spawn({
                let (progress, scope) = (progress.clone(), scope.clone());
                async move { run::run(client, &config, &progress, &scope, faults_rx).await }
                    .in_current_span()
            });
            // (outcome, whether `steps` has ended); no outcome: shut down.
            let (outcome, steps_ended) = tokio::select! {
                joined = &mut steps => (Some(joined.unwrap_or_else(|e| {
                    Err(Error::new(Step::Run, Failure::Panicked(e.to_string())))
                })), true),
                message = scope.panicked() => {
                    (Some(Err(Error::new(Step::Run, Failure::Panicked(message)))), false)
                }
                () = requested_stop => {
                    info!("flannel shutting down; leaving interfaces, routes and files in place");
                    (None, false)
                }
            };
            // Whatever ended the task, its background work (netlink
            // connection, kernel monitor, rule keeper, blocking jobs) ends
            // before the outcome is reported: once `wait` or `shutdown`
            // returns, nothing of the task runs and its sockets are closed.
            scope.cancel();
            if !steps_ended {
                steps.abort();
                let _ = steps.await;
            }
            scope.close().await;
            let outcome = outcome.unwrap_or(Ok(()));
            progress.finish(&outcome);
            outcome
        }
        .instrument(span),
    );
    Handle {
        status: status_rx,
        readiness: readiness_rx,
        shutdown: shutdown_tx,
        faults: faults_tx,
        task: Some(task),
        outcome: None,
    }
}

/// The task's channels to its Handle.
struct Progress {
    status: watch::Sender<Status>,
    readiness: watch::Sender<Readiness>,
}

impl Progress {
    fn update(&self, change: impl FnOnce(&mut Status)) {
        self.status.send_modify(|status| {
            change(status);
            status.refresh_health();
        });
    }

    /// `part` fails with `message`: in the status at once, in the log when
    /// it is news (a new problem, or a different message).
    fn problem(&self, part: Part, message: impl fmt::Display) {
        let message = message.to_string();
        let mut news = false;
        self.status.send_if_modified(|status| {
            news = status.record_problem(part, message.clone(), SystemTime::now());
            news
        });
        if news {
            health::log_problem(part, &message);
        }
    }

    /// `part` works (again): one info line if it had a problem.
    fn resolved(&self, part: Part) {
        let mut cleared = None;
        self.status.send_if_modified(|status| {
            cleared = status.clear_problem(part);
            cleared.is_some()
        });
        if let Some(problem) = cleared {
            health::log_recovery(&problem);
        }
    }

    /// Files written and data path programmed: `ready()` resolves.
    fn mark_ready(&self) {
        self.update(|s| s.phase = Phase::Running);
        self.readiness.send_modify(|r| {
            if matches!(r, Readiness::Pending) {
                *r = Readiness::Ready;
            }
        });
    }

    fn finish(&self, outcome: &Result<(), Error>) {
        self.update(|s| match outcome {
            Ok(()) => s.phase = Phase::Stopped,
            Err(error) => {
                s.phase = Phase::Failed;
                s.last_error = Some(error.to_string());
            }
        });
        if let Err(error) = outcome {
            warn!("{error}");
        }
        self.readiness.send_modify(|r| {
            if matches!(r, Readiness::Pending) {
                *r = Readiness::Ended(outcome.clone());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;
    use crate::files;
    use std::path::Path;

    /// A client for an address nothing listens on: the tests below end
    /// before the task talks to the API.
    fn offline_client() -> Client {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn a_failed_file_write_ends_the_task_with_the_step() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the data dir's "agent" directory must go.
        std::fs::write(dir.path().join("agent"), b"not a directory").unwrap();
        let config = Config::builder("node-a")
            .data_dir(dir.path())
            .subnet_file(dir.path().join("subnet.env"))
            .build()
            .unwrap();
        let mut handle = spawn(offline_client(), config);
        let error = handle.ready().await.unwrap_err();
        assert_eq!(error.step(), Step::WriteCniConf);
        let message = error.to_string();
        assert!(
            message.starts_with("failed to write the flannel CNI configuration: ")
                && message.contains("10-flannel.conflist"),
            "{message}"
        );
        assert_eq!(handle.wait().await.unwrap_err().step(), Step::WriteCniConf);
        assert_eq!(handle.status().phase, Phase::Failed);
        assert_eq!(
            handle.status().last_error.as_deref(),
            Some(message.as_str())
        );
    }

    #[tokio::test]
    async fn a_bad_custom_netconf_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let custom = dir.path().join("custom-net-conf.json");
        std::fs::write(&custom, br#"{"Network": "10.42.0.0/16"}"#).unwrap();
        let config = Config::builder("node-a")
            .data_dir(dir.path())
            .netconf_override(&custom)
            .build()
            .unwrap();
        let handle = spawn(offline_client(), config.clone());
        let message = handle.ready().await.unwrap_err().to_string();
        assert!(
            message.starts_with("failed to read flannel configuration: ")
                && message.contains("custom-net-conf.json")
                && message.contains("no Backend.Type"),
            "{message}"
        );
        // The conflist was still written; the custom file was not touched.
        assert_eq!(
            std::fs::read_to_string(config.cni_conflist_path()).unwrap(),
            files::K3S_CNI_CONFLIST
        );
        assert_eq!(
            std::fs::read(&custom).unwrap(),
            br#"{"Network": "10.42.0.0/16"}"#
        );
    }

    #[tokio::test]
    async fn files_are_written_then_shutdown_while_waiting_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::builder("node-a")
            .data_dir(dir.path())
            .cluster_cidr("10.42.0.0/16,fd00:42::/56")
            .build()
            .unwrap();
        let handle = spawn(offline_client(), config.clone());
        let mut status = handle.watch_status();
        status
            .wait_for(|s| s.phase == Phase::WaitingForPodCidr)
            .await
            .unwrap();
        let netconf = std::fs::read_to_string(config.netconf_path()).unwrap();
        assert_eq!(
            netconf,
            crate::config::render_k3s_netconf(config.cluster_cidrs(), Backend::Vxlan).unwrap()
        );
        assert_eq!(handle.status().backend_type, Some("vxlan"));
        assert_eq!(handle.shutdown().await.map_err(|e| e.to_string()), Ok(()));
    }

    #[tokio::test]
    async fn backend_none_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::builder("node-a")
            .backend(Backend::None)
            .data_dir(dir.path())
            .build()
            .unwrap();
        let handle = spawn(offline_client(), config);
        let error = handle.ready().await.unwrap_err();
        assert!(matches!(error.failure(), Failure::Disabled), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_netns_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let not_netns = dir.path().join("plain-file");
        std::fs::write(&not_netns, b"").unwrap();
        for (path, wanted) in [
            (not_netns, "is not a network namespace"),
            (dir.path().join("absent"), "cannot open it"),
        ] {
            let config = Config::builder("node-a")
                .data_dir(dir.path())
                .netns(&path)
                .build()
                .unwrap();
            let error = spawn(offline_client(), config).ready().await.unwrap_err();
            assert_eq!(error.step(), Step::OpenNetns);
            assert!(error.to_string().contains(wanted), "{error}");
        }
    }

    #[test]
    fn a_real_netns_handle_is_accepted() {
        // This thread's own namespace through /proc is a real nsfs handle.
        run::check_netns(Path::new("/proc/thread-self/ns/net")).unwrap();
    }
}
