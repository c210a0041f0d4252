//! A test Kubernetes API server for Nodes: plain HTTP on loopback, speaking
//! the core/v1 Node API closely enough that the real `kubectl` and kube-rs
//! (client, watcher, reflector) behave as against a real API server, with
//! knobs to break it on purpose.
//!
//! ```no_run
//! use integration::apiserver::{ready_node, Options, TestApiServer};
//!
//! let server = TestApiServer::start(Options::default()).unwrap();
//! server.create_node(ready_node("node-a", Some("10.42.0.0/24"))).unwrap();
//! let dir = tempfile::tempdir().unwrap();
//! let kubeconfig = server.write_kubeconfig(dir.path()).unwrap();
//! // kubectl --kubeconfig <kubeconfig> get nodes
//! # let _ = kubeconfig;
//! server.fail_requests(503, std::time::Duration::from_secs(2));
//! server.drop_watches();
//! server.restart().unwrap(); // same port, same data
//! ```
//!
//! # Threads
//!
//! The server runs on its own tokio runtime (two worker threads) that
//! [`TestApiServer::start`] creates, so it works the same under a plain
//! `#[test]` (which may block on child processes such as kubectl) and under
//! `#[tokio::test]` (whose single thread it does not compete for). Every
//! method is synchronous and returns quickly; [`TestApiServer::restart`]
//! and [`TestApiServer::restart_after`] block the caller while the port is
//! closed. Dropping the server stops it and closes every connection.
//!
//! # What it serves
//!
//! Discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/openapi/v3`), and
//! for Nodes: list (selectors, pagination with consistent snapshots,
//! resourceVersion semantics, Table and PartialObjectMetadata output),
//! watch (history, bookmarks, 410 for too-old versions), get, create,
//! update, delete, deletecollection, and patch (merge, JSON, strategic) on
//! the object and its `status` subresource, with the real server's
//! strategies: the main endpoint ignores status changes, `/status` ignores
//! spec changes, and both keep metadata (labels, annotations) changes.
//!
//! # Where it departs from a real API server
//!
//! - Plain HTTP/1.1, no authentication or authorization; JSON only (no
//!   protobuf, CBOR or YAML bodies); no controllers (nothing marks a Node
//!   NotReady or taints it by itself).
//! - No `managedFields`; server-side apply (`application/apply-patch+yaml`)
//!   is answered 415 UnsupportedMediaType.
//! - Objects are rendered from the k8s-openapi types, so Go's zero values
//!   (e.g. an empty `nodeInfo`) are not filled in.
//! - `/openapi/v2` is 404 and the `/openapi/v3` Node schema is a stub: kubectl
//!   validates through `fieldValidation` on the server (unknown fields only)
//!   and builds `apply` patches from its compiled-in types.
//! - Watch bookmarks come every second (configurable), not every minute; a
//!   watch without `timeoutSeconds` does not time out; a watch from a future
//!   resourceVersion just waits for it (the real server answers 504 after
//!   3 s). `limit` is honoured also with `resourceVersion=0`.
//! - No `nodes/proxy`, and no other resources (pods, events, leases), so
//!   `kubectl describe node` does not work.

mod discovery;
mod handlers;
mod node;
mod patch;
mod selector;
mod server;
mod status;
mod store;
mod table;
mod watch;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::oneshot;

pub use node::Subresource;
pub use status::ApiError;

use server::Shared;

/// Errors of starting, restarting or talking to the server in-process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The tokio runtime could not be built.
    #[error("cannot start the test API server's runtime: {0}")]
    Runtime(std::io::Error),
    /// The previous listener did not stop in time.
    #[error("the test API server did not stop listening within 10 s")]
    StopTimeout,
    /// A kubeconfig or nodes file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A nodes file is not a Node, a list of Nodes or a JSON array of them.
    #[error("{path}: {message}")]
    NodesFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// kube-rs could not build a client for the server.
    #[error("cannot build a kube client: {0}")]
    Client(String),
    /// The server refused a Node.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Kubernetes verbs the server counts (as in audit logs), plus discovery
/// and everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// GET of one Node (or its status).
    Get,
    /// GET of the collection.
    List,
    /// GET of the collection with `watch=true` (or the legacy /watch path).
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one Node.
    Delete,
    /// DELETE of the collection.
    DeleteCollection,
    /// `/version`, `/api`, `/apis`, `/openapi/...`, health checks.
    Discovery,
    /// Anything else (answered 404 or 405).
    Other,
}

/// The patch formats of [`TestApiServer::patch_node`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// JSON merge patch (RFC 7386), `application/merge-patch+json`.
    Merge,
    /// JSON patch (RFC 6902), `application/json-patch+json`.
    Json,
    /// Strategic merge patch, `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchType {
    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Merge => patch::MERGE,
            PatchType::Json => patch::JSON,
            PatchType::Strategic => patch::STRATEGIC,
        }
    }
}

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path with the (re-encoded, sorted) query.
    pub path: String,
    /// What it was.
    pub verb: Verb,
    /// The HTTP status answered (200 for watches, whatever they stream).
    pub status: u16,
}

/// How to start a [`TestApiServer`].
#[derive(Debug, Clone)]
pub struct Options {
    listen: SocketAddr,
    history_limit: usize,
    bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history_limit: 20_000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

impl Options {
    /// Where to listen (default `127.0.0.1:0`, an ephemeral port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// How many change events to keep for watches and snapshots (default
    /// 20,000); older resourceVersions get 410 Gone.
    pub fn history_limit(mut self, events: usize) -> Self {
        self.history_limit = events.max(1);
        self
    }

    /// How often watches that allow bookmarks get one (default 1 s).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }
}

/// The accept loop of one listening period (between restarts).
struct Listening {
    stop: oneshot::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

/// The running server. See the [module documentation](self).
pub struct TestApiServer {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    listening: Mutex<Option<Listening>>,
}

impl TestApiServer {
    /// Binds `options.listen` and starts serving on a runtime of its own.
    pub fn start(options: Options) -> Result<TestApiServer, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-apiserver")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let listener = bind(options.listen)?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: options.listen,
            source,
        })?;
        let shared = Arc::new(Shared::new(
            addr,
            options.history_limit,
            options.bookmark_interval,
        ));
        let server = TestApiServer {
            shared,
            runtime: Some(runtime),
            listening: Mutex::new(None),
        };
        server.listen(listener)?;
        Ok(server)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        // Only None during drop.
        self.runtime
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime lives as long as the server"))
    }

    fn listen(&self, listener: StdTcpListener) -> Result<(), Error> {
        let addr = self.shared.addr;
        let listener = {
            let _guard = self.runtime().enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(|source| Error::Bind { addr, source })?
        };
        let (stop, stop_rx) = oneshot::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        self.runtime().spawn(server::serve(
            listener,
            self.shared.clone(),
            stop_rx,
            done_tx,
        ));
        *self.listening.lock().unwrap_or_else(|p| p.into_inner()) = Some(Listening { stop, done });
        Ok(())
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Writes `dir/kubeconfig` (cluster, context and a user without
    /// credentials, all named `test`) and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf, Error> {
        let path = dir.join("kubeconfig");
        write_kubeconfig_file(&path, &self.url())?;
        Ok(path)
    }

    /// A kube-rs configuration for this server.
    pub fn kube_config(&self) -> kube::Config {
        let uri = self
            .url()
            .parse()
            .unwrap_or_else(|_| unreachable!("a socket address makes a valid URL"));
        kube::Config::new(uri)
    }

    /// A kube-rs client for this server. Call it inside a tokio runtime (the
    /// client spawns a task there).
    pub fn client(&self) -> Result<kube::Client, Error> {
        kube::Client::try_from(self.kube_config()).map_err(|e| Error::Client(e.to_string()))
    }

    // ------------------------------------------------------------ the store

    /// Creates a Node as `POST /api/v1/nodes` would (defaulting, validation,
    /// uid, creationTimestamp, resourceVersion, an ADDED event); returns it
    /// as stored.
    pub fn create_node(&self, node: Node) -> Result<Node, ApiError> {
        let stored = handlers::create_typed(&self.shared, node, false)?;
        Ok(stored.node.clone())
    }

    /// Creates many Nodes (see [`create_node`](Self::create_node)).
    pub fn create_nodes(&self, nodes: impl IntoIterator<Item = Node>) -> Result<usize, ApiError> {
        let mut count = 0;
        for node in nodes {
            self.create_node(node)?;
            count += 1;
        }
        Ok(count)
    }

    /// One Node, as stored.
    pub fn get_node(&self, name: &str) -> Option<Node> {
        self.shared.store.get(name).map(|s| s.node.clone())
    }

    /// Every Node, by name.
    pub fn list_nodes(&self) -> Vec<Node> {
        let (_, nodes) = self.shared.store.snapshot();
        nodes.iter().map(|s| s.node.clone()).collect()
    }

    /// The number of Nodes.
    pub fn node_count(&self) -> usize {
        self.shared.store.len()
    }

    /// Changes a Node with full access (spec, status and metadata at once,
    /// like a privileged writer; the update validation that forbids changing
    /// `podCIDRs` is skipped so tests can build any state). Server-owned
    /// metadata (uid, creationTimestamp) is kept; the resourceVersion is
    /// bumped and a MODIFIED event sent, unless nothing changed.
    pub fn update_node<F>(&self, name: &str, change: F) -> Result<Node, ApiError>
    where
        F: FnOnce(&mut Node),
    {
        let stored = self.shared.store.update(name, false, |current| {
            let mut node = current.node.clone();
            change(&mut node);
            node.metadata.name = current.node.metadata.name.clone();
            node.metadata.uid = current.node.metadata.uid.clone();
            node.metadata.creation_timestamp = current.node.metadata.creation_timestamp.clone();
            node::normalize(&mut node);
            node::validate(&node)?;
            Ok(node)
        })?;
        Ok(stored.node.clone())
    }

    /// Patches a Node exactly as `PATCH /api/v1/nodes/NAME` (or `.../status`
    /// for [`Subresource::Status`]) would: same patch semantics, strategy
    /// (the main resource ignores status, `/status` ignores spec, both keep
    /// metadata), preconditions, defaulting and validation.
    pub fn patch_node(
        &self,
        name: &str,
        subresource: Subresource,
        patch_type: PatchType,
        patch: &serde_json::Value,
    ) -> Result<Node, ApiError> {
        let body = serde_json::to_vec(patch).map_err(|e| ApiError::internal(e.to_string()))?;
        let (stored, _) = handlers::patch_node(
            &self.shared,
            name,
            subresource,
            patch_type.content_type(),
            &body,
            false,
            &BTreeMap::new(),
        )?;
        Ok(stored.node.clone())
    }

    /// Deletes a Node (a DELETED event); returns its last state.
    pub fn delete_node(&self, name: &str) -> Result<Node, ApiError> {
        let gone = self.shared.store.delete(name, false, |_| Ok(()))?;
        Ok(gone.node.clone())
    }

    /// The current resourceVersion (the global counter).
    pub fn resource_version(&self) -> u64 {
        self.shared.store.rv()
    }

    /// Forgets the change history (like an etcd compaction): watches and
    /// continue tokens from before now get 410 Gone / Expired.
    pub fn compact_history(&self) {
        self.shared.store.compact();
    }

    // ----------------------------------------------------------- the faults

    /// Cuts every open watch connection now, mid-stream (the client sees an
    /// error, then re-watches).
    pub fn drop_watches(&self) {
        self.shared.faults.drop_watches.send_modify(|n| *n += 1);
    }

    /// Ends every open watch cleanly now, as a server-side timeout does.
    pub fn end_watches(&self) {
        self.shared.faults.end_watches.send_modify(|n| *n += 1);
    }

    /// Makes every open watch that allows bookmarks send one now.
    pub fn send_bookmarks(&self) {
        self.shared.faults.bookmarks.send_modify(|n| *n += 1);
    }

    /// Answers every request with `status` (500, 503, 429, ... with a
    /// Kubernetes Status body; 429 and 503 with `Retry-After: 1`) for
    /// `duration`. Open watches are not affected (see
    /// [`drop_watches`](Self::drop_watches)).
    pub fn fail_requests(&self, status: u16, duration: Duration) {
        *self
            .shared
            .faults
            .fail
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((status, Instant::now() + duration));
    }

    /// Ends a [`fail_requests`](Self::fail_requests) window early.
    pub fn stop_failing(&self) {
        *self
            .shared
            .faults
            .fail
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Makes new requests hang (after they are counted) until
    /// [`resume`](Self::resume). Open watches keep streaming.
    pub fn pause(&self) {
        self.shared.faults.paused.send_replace(true);
    }

    /// Lets paused and new requests through.
    pub fn resume(&self) {
        self.shared.faults.paused.send_replace(false);
    }

    /// Stops listening, closes every connection (watches included), and
    /// listens again on the same port with the same data and
    /// resourceVersion counter (history included).
    pub fn restart(&self) -> Result<(), Error> {
        self.restart_after(Duration::ZERO)
    }

    /// [`restart`](Self::restart) with the port closed for `downtime`
    /// (connections are refused meanwhile). Blocks the caller that long.
    pub fn restart_after(&self, downtime: Duration) -> Result<(), Error> {
        let previous = self
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(Listening { stop, done }) = previous {
            let _ = stop.send(());
            done.recv_timeout(Duration::from_secs(10))
                .map_err(|_| Error::StopTimeout)?;
        }
        std::thread::sleep(downtime);
        // The old sockets may linger briefly; SO_REUSEADDR (set by std)
        // covers TIME_WAIT, a short retry covers the rest.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match bind(self.shared.addr) {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(error) => return Err(error),
            }
        };
        self.listen(listener)
    }

    // ------------------------------------------------------------ the stats

    /// How many requests of `verb` arrived (failed and paused ones too).
    pub fn requests(&self, verb: Verb) -> u64 {
        self.shared.stats.counts().get(&verb).copied().unwrap_or(0)
    }

    /// Requests per verb.
    pub fn request_counts(&self) -> BTreeMap<Verb, u64> {
        self.shared.stats.counts()
    }

    /// The last 10,000 answered requests, oldest first.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.stats.log()
    }

    /// Forgets counts and log.
    pub fn reset_request_counts(&self) {
        self.shared.stats.reset();
    }

    /// How many watch streams are open now.
    pub fn open_watches(&self) -> usize {
        self.shared.stats.open_watches.load(Ordering::SeqCst)
    }

    /// Waits up to `limit` until at least `count` watches are open.
    pub fn wait_for_watches(&self, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.open_watches() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.open_watches() >= count
    }

    /// Loads Nodes from a JSON file holding a Node, a `NodeList`/`List`, or
    /// an array of Nodes (e.g. `kubectl get nodes -o json` output, whose
    /// server-owned fields are dropped and set afresh).
    pub fn load_nodes_file(&self, path: &Path) -> Result<usize, Error> {
        let text = std::fs::read(path).map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| Error::NodesFile {
            path: path.to_path_buf(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let items = match value {
            serde_json::Value::Array(items) => items,
            serde_json::Value::Object(mut map) if map.contains_key("items") => {
                match map.remove("items") {
                    Some(serde_json::Value::Array(items)) => items,
                    _ => return Err(bad("\"items\" is not a list".into())),
                }
            }
            single @ serde_json::Value::Object(_) => vec![single],
            _ => return Err(bad("expected a Node, a list of Nodes or an array".into())),
        };
        let mut count = 0;
        for mut item in items {
            if let Some(meta) = item.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                for owned in [
                    "resourceVersion",
                    "uid",
                    "creationTimestamp",
                    "managedFields",
                ] {
                    meta.remove(owned);
                }
            }
            handlers::create_node(&self.shared, item, false, &BTreeMap::new())?;
            count += 1;
        }
        Ok(count)
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Some(Listening { stop, .. }) = self
            .listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = stop.send(());
        }
        // Not blocking: the server may be dropped inside an async test.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn bind(addr: SocketAddr) -> Result<StdTcpListener, Error> {
    let listener = StdTcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| Error::Bind { addr, source })?;
    Ok(listener)
}

/// Writes a kubeconfig for a plain-HTTP server at `server` to `path`.
pub fn write_kubeconfig_file(path: &Path, server: &str) -> Result<(), Error> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n"
    );
    std::fs::write(path, text).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

/// A Node as a kubelet registers it: Ready, with an InternalIP, a Hostname
/// address and a kubelet version, and `podCIDR`/`podCIDRs` when given.
pub fn ready_node(name: &str, pod_cidr: Option<&str>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: pod_cidr.map(str::to_string),
            pod_cidrs: pod_cidr.map(|c| vec![c.to_string()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                message: Some("kubelet is posting ready status".into()),
                ..Default::default()
            }]),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "192.0.2.10".into(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.to_string(),
                },
            ]),
            node_info: Some(NodeSystemInfo {
                kubelet_version: "v1.33.0".into(),
                os_image: "Debian GNU/Linux 13 (trixie)".into(),
                kernel_version: "6.12.0".into(),
                container_runtime_version: "containerd://2.0.0".into(),
                architecture: "amd64".into(),
                operating_system: "linux".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<TestApiServer>();
    }
}
