//! A test Kubernetes API server for Nodes: plain HTTP on loopback by default
//! (HTTPS, authentication and RBAC on request, see below), speaking
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
//! Streaming lists (KEP 3157, `sendInitialEvents=true` with
//! `resourceVersionMatch=NotOlderThan` and bookmarks) are served unless
//! [`Options::watch_list`] turns them off (then 422 Invalid, as Kubernetes
//! 1.33 with its WatchList gate off). Writes (POST, PUT, PATCH) record
//! `managedFields` Update entries: the manager is `fieldManager`, else the
//! User-Agent up to its first `/`; `subresource: status` for `/status`.
//!
//! # Secured like a cluster (all optional)
//!
//! ```no_run
//! use integration::apiserver::{Credential, KeyAlgorithm, Options, TestApiServer, UserInfo};
//! # let dir = tempfile::tempdir().unwrap();
//! let server = TestApiServer::start(
//!     Options::default()
//!         .tls(KeyAlgorithm::EcdsaP256)
//!         .rbac_yaml("...ClusterRoles and ClusterRoleBindings..."),
//! )
//! .unwrap();
//! server.write_kubeconfig(dir.path()).unwrap(); // system:admin, system:masters
//! let cert = server.issue_client_cert("system:node:node-a", &["system:nodes"], None).unwrap();
//! server.write_kubeconfig_for(&dir.path().join("node-a"), &Credential::ClientCert(cert)).unwrap();
//! server.add_token("t0k3n", UserInfo::new("operator", &["ops"])).unwrap();
//! server.write_service_account_dir(&dir.path().join("sa"), "kube-flannel", "flannel").unwrap();
//! ```
//!
//! - HTTPS ([`Options::tls`]): a CA generated at start (ECDSA P-256 or RSA
//!   2048), kept across [`restart`](TestApiServer::restart); the serving
//!   certificate names `localhost`, `kubernetes`, `kubernetes.default`,
//!   `kubernetes.default.svc`, `kubernetes.default.svc.cluster.local`,
//!   127.0.0.1, ::1 and the listen IP; ALPN offers `http/1.1` only.
//! - Authentication (on with TLS, a token file, RBAC, or
//!   [`Options::authentication`]): a client certificate the CA signed
//!   (user = subject CN, groups = subject O values), else a bearer token
//!   from the in-memory table or the `--token-auth-file` CSV (re-read when
//!   its modification time or length changes); every authenticated user is
//!   in `system:authenticated`. Anonymous authentication is off: requests
//!   without valid credentials get kube-apiserver's 401 Status, except
//!   `GET /healthz`, `/livez` and `/readyz`, which stay open (as
//!   `system:public-info-viewer` grants them to `system:unauthenticated`).
//! - Authorization: without RBAC rules every authenticated request is
//!   allowed; with them ([`Options::rbac_file`], re-read when it changes,
//!   [`Options::rbac_yaml`], [`TestApiServer::set_rbac_yaml`]), ClusterRoles
//!   and ClusterRoleBindings (User, Group, ServiceAccount subjects; verbs,
//!   apiGroups, resources with `*` and `resource/subresource` forms,
//!   resourceNames, nonResourceURLs) decide, `system:masters` is allowed
//!   everything, and the bootstrap `system:discovery` and
//!   `system:public-info-viewer` roles are always bound (discovery for
//!   `system:authenticated`). Refusals are 403 with kube-apiserver's
//!   wording; every decision is logged ([`TestApiServer::authz_log`],
//!   [`Options::authz_log_file`]).
//!
//! # Where it departs from a real API server
//!
//! - HTTP/1.1 only; JSON only (no protobuf, CBOR or YAML bodies); no
//!   controllers (nothing marks a Node NotReady or taints it by itself).
//! - No namespaced Roles or RoleBindings, no aggregated ClusterRoles, no
//!   Node authorizer, no webhook/OIDC authentication, no impersonation; a
//!   client certificate holds at most two groups.
//! - managedFields record the fields a request document names (the patch
//!   or the object sent), not a structured-merge diff; server-side apply
//!   (`application/apply-patch+yaml`) is answered 415 UnsupportedMediaType.
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

mod auth;
mod discovery;
mod handlers;
mod managed;
mod node;
mod patch;
mod rbac;
mod selector;
mod server;
mod status;
mod store;
mod table;
mod tls;
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

pub use auth::{parse_token_csv, TokenFileError, UserInfo};
pub use node::Subresource;
pub use rbac::{AuthzDecision, Policy, RbacError};
pub use status::ApiError;
pub use tls::{IssuedCert, KeyAlgorithm, TlsError};

use server::{Security, Shared};

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
    /// Certificates or the TLS configuration could not be made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The token file cannot be used.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    /// The RBAC rules cannot be used.
    #[error(transparent)]
    Rbac(#[from] RbacError),
    /// Client certificates need HTTPS (`Options::tls`).
    #[error("the server serves plain HTTP: no CA, no client certificates")]
    NoTls,
    /// Tokens need authentication on (`Options::authentication`).
    #[error("the server has authentication off: tokens would not be checked")]
    NoAuthentication,
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
    /// The authenticated user (None with authentication off, or when the
    /// request was refused 401).
    pub user: Option<String>,
    /// The `fieldManager` query parameter.
    pub field_manager: Option<String>,
}

/// A credential for a kubeconfig (see
/// [`TestApiServer::write_kubeconfig_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credential (plain HTTP without authentication).
    None,
    /// A client certificate and key (`client-certificate-data`,
    /// `client-key-data`).
    ClientCert(IssuedCert),
    /// A bearer token embedded as `token:`.
    Token(String),
    /// A bearer token read from this file (`tokenFile:`; kube-rs and
    /// client-go re-read it every minute).
    TokenFile(PathBuf),
}

/// How to start a [`TestApiServer`].
#[derive(Debug, Clone)]
pub struct Options {
    listen: SocketAddr,
    history_limit: usize,
    bookmark_interval: Duration,
    tls: Option<KeyAlgorithm>,
    authentication: bool,
    token_auth_file: Option<PathBuf>,
    rbac_file: Option<PathBuf>,
    rbac_yaml: Option<String>,
    authz_log_file: Option<PathBuf>,
    watch_list: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history_limit: 20_000,
            bookmark_interval: Duration::from_secs(1),
            tls: None,
            authentication: false,
            token_auth_file: None,
            rbac_file: None,
            rbac_yaml: None,
            authz_log_file: None,
            watch_list: true,
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

    /// Serve HTTPS with a CA generated at start, whose keys (and those of
    /// the certificates it issues, unless asked otherwise) use `algorithm`.
    /// Turns authentication on.
    pub fn tls(mut self, algorithm: KeyAlgorithm) -> Self {
        self.tls = Some(algorithm);
        self
    }

    /// Authenticate requests (client certificates, bearer tokens), also over
    /// plain HTTP; anonymous requests get 401 except `GET /healthz`,
    /// `/livez` and `/readyz`. On with [`tls`](Self::tls),
    /// [`token_auth_file`](Self::token_auth_file) or RBAC.
    pub fn authentication(mut self, on: bool) -> Self {
        self.authentication = on;
        self
    }

    /// Bearer tokens from a kube-apiserver `--token-auth-file` CSV
    /// (`token,user,uid,"group1,group2"`), re-read when it changes. Turns
    /// authentication on.
    pub fn token_auth_file(mut self, path: &Path) -> Self {
        self.token_auth_file = Some(path.to_path_buf());
        self
    }

    /// RBAC from a YAML file of ClusterRoles and ClusterRoleBindings,
    /// re-read when it changes (see [`Policy::from_yaml`]). Turns
    /// authentication on.
    pub fn rbac_file(mut self, path: &Path) -> Self {
        self.rbac_file = Some(path.to_path_buf());
        self
    }

    /// RBAC from YAML text (a [`rbac_file`](Self::rbac_file) wins over it).
    /// Turns authentication on.
    pub fn rbac_yaml(mut self, yaml: &str) -> Self {
        self.rbac_yaml = Some(yaml.to_string());
        self
    }

    /// Append every authorization decision to this file as a JSON line (an
    /// [`AuthzDecision`]).
    pub fn authz_log_file(mut self, path: &Path) -> Self {
        self.authz_log_file = Some(path.to_path_buf());
        self
    }

    /// Serve streaming lists (`sendInitialEvents`, default on, as
    /// Kubernetes 1.32 and 1.34); off answers them 422 Invalid, as 1.33 does
    /// with its WatchList gate off by default.
    pub fn watch_list(mut self, on: bool) -> Self {
        self.watch_list = on;
        self
    }

    fn security(&self, addr: SocketAddr) -> Result<Security, Error> {
        let rbac = self.rbac_file.is_some() || self.rbac_yaml.is_some();
        let authenticated =
            self.authentication || self.tls.is_some() || self.token_auth_file.is_some() || rbac;
        let (tls, admin) = match self.tls {
            None => (None, None),
            Some(algorithm) => {
                let ca = tls::CertAuthority::generate(algorithm)?;
                let serving = ca.issue_server(addr.ip())?;
                let config = ca.server_config(&serving)?;
                let admin = ca.issue_client("system:admin", &[rbac::MASTERS], None)?;
                (Some((ca, config)), Some(admin))
            }
        };
        let authenticator = if authenticated {
            Some(auth::Authenticator::new(self.token_auth_file.as_deref())?)
        } else {
            None
        };
        let authorizer = rbac::Authorizer::new(
            self.rbac_file.as_deref(),
            self.rbac_yaml.as_deref(),
            self.authz_log_file.as_deref(),
        )?;
        Ok(Security {
            tls,
            admin,
            authenticator,
            authorizer,
        })
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
        let security = options.security(addr)?;
        let shared = Arc::new(Shared::new(
            addr,
            options.history_limit,
            options.bookmark_interval,
            security,
            options.watch_list,
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

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.shared.security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.shared.addr)
    }

    /// The CA certificate (PEM) with TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca().ok().map(|ca| ca.cert_pem().to_string())
    }

    fn ca(&self) -> Result<&tls::CertAuthority, Error> {
        self.shared
            .security
            .tls
            .as_ref()
            .map(|(ca, _)| ca)
            .ok_or(Error::NoTls)
    }

    /// A client certificate the CA signs: user `user` (subject CN), groups
    /// `groups` (subject O, at most two), key `algorithm` or the CA's.
    pub fn issue_client_cert(
        &self,
        user: &str,
        groups: &[&str],
        algorithm: Option<KeyAlgorithm>,
    ) -> Result<IssuedCert, Error> {
        Ok(self.ca()?.issue_client(user, groups, algorithm)?)
    }

    /// The credential of `write_kubeconfig`: none over plain HTTP, else a
    /// client certificate for `system:admin` in `system:masters` (made at
    /// start; the same for every call).
    pub fn admin_credential(&self) -> Credential {
        match &self.shared.security.admin {
            Some(cert) => Credential::ClientCert(cert.clone()),
            None => Credential::None,
        }
    }

    /// Writes `dir/kubeconfig` (cluster, context and user all named `test`;
    /// with TLS the CA and an admin client certificate, see
    /// [`admin_credential`](Self::admin_credential)) and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf, Error> {
        let path = dir.join("kubeconfig");
        self.write_kubeconfig_for(&path, &self.admin_credential())?;
        Ok(path)
    }

    /// Writes a kubeconfig for this server (its URL and, with TLS,
    /// `certificate-authority-data`) with `credential` to `path`.
    pub fn write_kubeconfig_for(&self, path: &Path, credential: &Credential) -> Result<(), Error> {
        write_kubeconfig_with(path, &self.url(), self.ca_pem().as_deref(), credential)
    }

    /// Lets `token` authenticate as `user` (until
    /// [`remove_token`](Self::remove_token)); the in-memory table is
    /// consulted before the token file.
    pub fn add_token(&self, token: &str, user: UserInfo) -> Result<(), Error> {
        self.authenticator()?.add_token(token, user);
        Ok(())
    }

    /// Revokes an in-memory token; false if it was not there.
    pub fn remove_token(&self, token: &str) -> bool {
        self.authenticator()
            .map(|a| a.remove_token(token))
            .unwrap_or(false)
    }

    fn authenticator(&self) -> Result<&auth::Authenticator, Error> {
        self.shared
            .security
            .authenticator
            .as_ref()
            .ok_or(Error::NoAuthentication)
    }

    /// Writes what a pod's service account volume holds to `dir` (`token`,
    /// `ca.crt` with TLS, `namespace`), registering a new random token for
    /// `system:serviceaccount:NAMESPACE:NAME` (groups
    /// `system:serviceaccounts`, `system:serviceaccounts:NAMESPACE`);
    /// returns the token.
    pub fn write_service_account_dir(
        &self,
        dir: &Path,
        namespace: &str,
        name: &str,
    ) -> Result<String, Error> {
        let token = random_token();
        self.add_token(&token, UserInfo::service_account(namespace, name))?;
        let write = |file: &str, text: &str| {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(|source| Error::File { path, source })
        };
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.to_path_buf(),
            source,
        })?;
        write("token", &token)?;
        write("namespace", namespace)?;
        if let Some(ca) = self.ca_pem() {
            write("ca.crt", &ca)?;
        }
        Ok(token)
    }

    /// Replaces the RBAC rules with those in `yaml` (see
    /// [`Policy::from_yaml`]); RBAC is on from now on. Requests are only
    /// authorized with authentication on.
    pub fn set_rbac_yaml(&self, yaml: &str) -> Result<(), Error> {
        let policy = Policy::from_yaml(yaml)?;
        self.shared.security.authorizer.set_policy(policy);
        Ok(())
    }

    /// Every authorization decision so far (the last 100,000), oldest
    /// first.
    pub fn authz_log(&self) -> Vec<AuthzDecision> {
        self.shared.security.authorizer.log()
    }

    /// A kube-rs configuration for this server (with TLS: its CA and the
    /// admin client certificate).
    pub fn kube_config(&self) -> kube::Config {
        let uri = self
            .url()
            .parse()
            .unwrap_or_else(|_| unreachable!("a socket address makes a valid URL"));
        let mut config = kube::Config::new(uri);
        if let Some((ca, _)) = &self.shared.security.tls {
            config.root_cert = Some(vec![ca.cert_der().to_vec()]);
            if let Credential::ClientCert(cert) = self.admin_credential() {
                let data = serde_json::json!({
                    "client-certificate-data": base64_text(&cert.cert_pem),
                    "client-key-data": base64_text(&cert.key_pem),
                });
                // Two strings always make an AuthInfo.
                if let Ok(auth_info) = serde_json::from_value(data) {
                    config.auth_info = auth_info;
                }
            }
        }
        config
    }

    /// A kube-rs client for this server (as [`kube_config`](Self::kube_config)).
    /// Call it inside a tokio runtime (the client spawns a task there).
    pub fn client(&self) -> Result<kube::Client, Error> {
        kube::Client::try_from(self.kube_config()).map_err(|e| Error::Client(e.to_string()))
    }

    // ------------------------------------------------------------ the store

    /// Creates a Node as `POST /api/v1/nodes` would (defaulting, validation,
    /// uid, creationTimestamp, resourceVersion, an ADDED event); returns it
    /// as stored.
    pub fn create_node(&self, node: Node) -> Result<Node, ApiError> {
        let stored = handlers::create_typed(&self.shared, node, false, None)?;
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
            &handlers::WriteOptions {
                dry_run: false,
                query: &BTreeMap::new(),
                manager: None,
            },
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
            handlers::create_node(&self.shared, item, false, &BTreeMap::new(), None)?;
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
    write_kubeconfig_with(path, server, None, &Credential::None)
}

fn base64_text(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A random bearer token (32 hex digits from the OS's generator).
pub fn random_token() -> String {
    use rsa::rand_core::RngCore as _;
    let mut bytes = [0u8; 16];
    rsa::rand_core::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a kubeconfig (cluster, context and user all named `test`) for
/// the server at `server`, trusting `ca_pem` when given, with `credential`.
pub fn write_kubeconfig_with(
    path: &Path,
    server: &str,
    ca_pem: Option<&str>,
    credential: &Credential,
) -> Result<(), Error> {
    let quote = |text: &str| serde_json::Value::String(text.to_string()).to_string();
    let mut cluster = format!("    server: {}\n", quote(server));
    if let Some(ca) = ca_pem {
        cluster.push_str(&format!(
            "    certificate-authority-data: {}\n",
            base64_text(ca)
        ));
    }
    let user = match credential {
        Credential::None => "  user: {}\n".to_string(),
        Credential::ClientCert(cert) => format!(
            "  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            base64_text(&cert.cert_pem),
            base64_text(&cert.key_pem)
        ),
        Credential::Token(token) => format!("  user:\n    token: {}\n", quote(token)),
        Credential::TokenFile(file) => format!(
            "  user:\n    tokenFile: {}\n",
            quote(&file.to_string_lossy())
        ),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n{cluster}contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n{user}"
    );
    std::fs::write(path, text).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

/// A kube-rs client from a kubeconfig file (TLS, client certificates,
/// tokens and token files as kube-rs supports them).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, Error> {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Client(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| Error::Client(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| Error::Client(e.to_string()))
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
