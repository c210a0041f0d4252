//! The HTTP side: accepting connections (hyper 1, HTTP/1.1), fault
//! injection, request accounting, content negotiation, routing, and the
//! response helpers the handlers share.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::auth::{Authenticator, UserInfo};
use super::node::Subresource;
use super::rbac::{Authorizer, Target, UNAUTHENTICATED};
use super::status::ApiError;
use super::store::{Store, Stored};
use super::table::{self, IncludeObject};
use super::tls::CertAuthority;
use super::{discovery, handlers, RequestRecord, Verb};

/// The response body: a whole JSON document or a watch stream.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// How many requests the log keeps.
const LOG_LIMIT: usize = 10_000;

/// Fault knobs, shared by all connections.
pub struct Faults {
    /// Answer every request with this code until the instant.
    pub fail: Mutex<Option<(u16, Instant)>>,
    /// True while requests must wait.
    pub paused: watch::Sender<bool>,
    /// Bumped to cut every open watch connection.
    pub drop_watches: watch::Sender<u64>,
    /// Bumped to end every open watch cleanly.
    pub end_watches: watch::Sender<u64>,
    /// Bumped to make every watch that allows bookmarks send one now.
    pub bookmarks: watch::Sender<u64>,
}

/// Request accounting.
#[derive(Default)]
pub struct Stats {
    counts: Mutex<BTreeMap<Verb, u64>>,
    log: Mutex<VecDeque<RequestRecord>>,
    /// Watch streams currently open.
    pub open_watches: AtomicUsize,
}

impl Stats {
    fn count(&self, verb: Verb) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(verb).or_default() += 1;
    }

    fn record(&self, record: RequestRecord) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() >= LOG_LIMIT {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// Requests per verb.
    pub fn counts(&self) -> BTreeMap<Verb, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The recent requests, oldest first.
    pub fn log(&self) -> Vec<RequestRecord> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }

    /// Forgets counts and log.
    pub fn reset(&self) {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// HTTPS, authentication and authorization, when on.
pub struct Security {
    /// The CA and the serving configuration (None: plain HTTP).
    pub tls: Option<(CertAuthority, Arc<rustls::ServerConfig>)>,
    /// With TLS: the `system:admin` (`system:masters`) client certificate
    /// of the kubeconfigs and clients the server hands out, made once.
    pub admin: Option<super::tls::IssuedCert>,
    /// None: no authentication (every request is anonymous and allowed).
    pub authenticator: Option<Authenticator>,
    /// RBAC (or allow-all) and the decision log; consulted only with
    /// authentication on.
    pub authorizer: Authorizer,
}

/// Everything the handlers share.
pub struct Shared {
    pub store: Store,
    pub faults: Faults,
    pub stats: Stats,
    pub bookmark_interval: Duration,
    pub addr: SocketAddr,
    pub security: Security,
    /// Whether `sendInitialEvents` (streaming lists) is served; false
    /// answers it 422 as a server with the WatchList gate off does.
    pub watch_list: bool,
}

impl Shared {
    pub fn new(
        addr: SocketAddr,
        history_limit: usize,
        bookmark_interval: Duration,
        security: Security,
        watch_list: bool,
    ) -> Shared {
        Shared {
            security,
            watch_list,
            store: Store::new(history_limit),
            faults: Faults {
                fail: Mutex::new(None),
                paused: watch::channel(false).0,
                drop_watches: watch::channel(0).0,
                end_watches: watch::channel(0).0,
                bookmarks: watch::channel(0).0,
            },
            stats: Stats::default(),
            bookmark_interval,
            addr,
        }
    }

    fn failing(&self) -> Option<u16> {
        let mut fail = self.faults.fail.lock().unwrap_or_else(|p| p.into_inner());
        match *fail {
            Some((code, until)) if Instant::now() < until => Some(code),
            Some(_) => {
                *fail = None;
                None
            }
            None => None,
        }
    }
}

/// Accepts connections until `stop` fires, then closes the listener and
/// every connection it accepted (watches included), and reports on `done`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
    done: std::sync::mpsc::Sender<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // As Go's net package does for kube-apiserver: without
                    // it, a watch event written in pieces can wait for the
                    // client's delayed ACK (Nagle), up to 40 ms.
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    connections.spawn(async move {
                        match &shared.security.tls {
                            None => serve_connection(stream, shared.clone(), None).await,
                            Some((ca, config)) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                                // A failed handshake is the client's problem.
                                let Ok(tls) = acceptor.accept(stream).await else { return };
                                let certificate_user = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|chain| ca.authenticate(chain));
                                serve_connection(tls, shared.clone(), certificate_user).await
                            }
                        }
                    });
                }
                // Out of file descriptors and the like: back off a little.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
    let _ = done.send(());
}

/// Serves one connection; `certificate_user` is its verified client
/// certificate's user.
async fn serve_connection<I>(io: I, shared: Arc<Shared>, certificate_user: Option<UserInfo>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let certificate_user = Arc::new(certificate_user);
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        let certificate_user = certificate_user.clone();
        async move {
            Ok::<_, Infallible>(handle(shared, certificate_user.as_ref().as_ref(), request).await)
        }
    });
    // Errors here are clients going away or our own deliberate cuts
    // (drop_watches); nothing to do.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// The request's user, and whether it may do what it asks: None when
/// authentication is off. Health checks stay open to anonymous requests
/// (anonymous authentication is off otherwise: 401).
fn admit(
    shared: &Shared,
    certificate_user: Option<&UserInfo>,
    request: &Request<Incoming>,
    path: &str,
    query: &BTreeMap<String, String>,
) -> Result<Option<UserInfo>, ApiError> {
    let Some(authenticator) = &shared.security.authenticator else {
        return Ok(None);
    };
    let target = Target::of(request.method(), path, query);
    let authorization = header(request, http::header::AUTHORIZATION);
    let user = match authenticator.authenticate(certificate_user, authorization) {
        Some(user) => user,
        None if request.method() == Method::GET
            && matches!(path, "/healthz" | "/livez" | "/readyz") =>
        {
            let anonymous = UserInfo::new("system:anonymous", &[UNAUTHENTICATED]);
            shared.security.authorizer.authorize(&anonymous, &target)?;
            return Ok(Some(anonymous));
        }
        None => return Err(ApiError::unauthorized()),
    };
    shared.security.authorizer.authorize(&user, &target)?;
    Ok(Some(user))
}

/// What a request is, for accounting (Kubernetes verbs, as in audit logs).
fn classify(method: &Method, path: &str, query: &BTreeMap<String, String>) -> Verb {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    match (method, segments.as_slice()) {
        (_, ["api", "v1", "watch", "nodes", ..]) => Verb::Watch,
        (&Method::GET, ["api", "v1", "nodes"]) if watch => Verb::Watch,
        (&Method::GET, ["api", "v1", "nodes"]) => Verb::List,
        (&Method::POST, ["api", "v1", "nodes"]) => Verb::Create,
        (&Method::DELETE, ["api", "v1", "nodes"]) => Verb::DeleteCollection,
        (&Method::GET, ["api", "v1", "nodes", _] | ["api", "v1", "nodes", _, "status"]) => {
            Verb::Get
        }
        (&Method::PUT, ["api", "v1", "nodes", _] | ["api", "v1", "nodes", _, "status"]) => {
            Verb::Update
        }
        (&Method::PATCH, ["api", "v1", "nodes", _] | ["api", "v1", "nodes", _, "status"]) => {
            Verb::Patch
        }
        (&Method::DELETE, ["api", "v1", "nodes", _]) => Verb::Delete,
        (
            &Method::GET,
            ["version" | "api" | "apis" | "openapi" | "healthz" | "livez" | "readyz", ..],
        ) => Verb::Discovery,
        _ => Verb::Other,
    }
}

pub fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn handle(
    shared: Arc<Shared>,
    certificate_user: Option<&UserInfo>,
    request: Request<Incoming>,
) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = parse_query(request.uri().query());
    let verb = classify(&method, &path, &query);
    shared.stats.count(verb);
    let field_manager = query.get("fieldManager").cloned();

    // A paused server accepts connections but answers nothing until resumed.
    let mut paused = shared.faults.paused.subscribe();
    let _ = paused.wait_for(|p| !*p).await;

    let mut user = None;
    let response = match shared.failing() {
        Some(code) => error_response(&ApiError::injected(code)),
        None => match admit(&shared, certificate_user, &request, &path, &query) {
            Err(error) => error_response(&error),
            Ok(admitted) => {
                user = admitted;
                let manager = writer_manager(&request, field_manager.as_deref());
                match route(&shared, request, &path, &query, manager.as_deref()).await {
                    Ok(response) => response,
                    Err(error) => error_response(&error),
                }
            }
        },
    };
    let full_path = match serde_urlencoded_query(&query) {
        q if q.is_empty() => path,
        q => format!("{path}?{q}"),
    };
    shared.stats.record(RequestRecord {
        method: method.to_string(),
        path: full_path,
        verb,
        status: response.status().as_u16(),
        user: user.map(|u| u.name),
        field_manager,
    });
    response
}

/// The manager a write's managedFields entry names: `fieldManager`, else
/// the User-Agent up to its first '/' (as kube-apiserver does).
fn writer_manager(request: &Request<Incoming>, field_manager: Option<&str>) -> Option<String> {
    if let Some(manager) = field_manager.filter(|m| !m.is_empty()) {
        return Some(manager.to_string());
    }
    let agent = header(request, http::header::USER_AGENT)?;
    let prefix = agent.split('/').next().unwrap_or("").trim();
    (!prefix.is_empty()).then(|| prefix.chars().take(128).collect())
}

fn serde_urlencoded_query(query: &BTreeMap<String, String>) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query.iter())
        .finish()
}

/// The representation a client asked for in `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain JSON objects.
    Json,
    /// `meta.k8s.io/v1` Table.
    Table,
    /// `meta.k8s.io/v1` PartialObjectMetadata(List).
    Metadata,
}

/// Picks the first media range in `Accept` the server can produce
/// (clients list them in order of preference).
pub fn negotiate(accept: Option<&str>) -> Result<Format, ApiError> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(Format::Json);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: BTreeMap<String, String> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect();
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        match params.get("as").map(String::as_str) {
            None => return Ok(Format::Json),
            Some(kind) => {
                let meta_group = params.get("g").map(String::as_str) == Some("meta.k8s.io")
                    && matches!(params.get("v").map(String::as_str), Some("v1" | "v1beta1"));
                match kind {
                    "Table" if meta_group => return Ok(Format::Table),
                    "PartialObjectMetadata" | "PartialObjectMetadataList" if meta_group => {
                        return Ok(Format::Metadata)
                    }
                    _ => continue,
                }
            }
        }
    }
    Err(ApiError::not_acceptable(accept))
}

pub fn header(request: &Request<Incoming>, name: http::header::HeaderName) -> Option<&str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn route(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    path: &str,
    query: &BTreeMap<String, String>,
    manager: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    let get = method == Method::GET;
    match segments.as_slice() {
        ["version"] if get => Ok(json_response(StatusCode::OK, &discovery::version())),
        ["api"] if get => Ok(json_response(
            StatusCode::OK,
            &discovery::api_versions(&shared.addr.to_string()),
        )),
        ["api", "v1"] if get => Ok(json_response(
            StatusCode::OK,
            &discovery::core_v1_resources(),
        )),
        ["apis"] if get => Ok(json_response(StatusCode::OK, &discovery::api_groups())),
        ["openapi", "v3"] if get => Ok(json_response(
            StatusCode::OK,
            &discovery::openapi_v3_index(),
        )),
        ["openapi", "v3", "api", "v1"] if get => Ok(json_response(
            StatusCode::OK,
            &discovery::openapi_v3_core_v1(),
        )),
        ["healthz" | "livez" | "readyz"] if get => Ok(text_response(StatusCode::OK, "ok")),
        ["version" | "api" | "apis" | "healthz" | "livez" | "readyz"]
        | ["api", "v1"]
        | ["openapi", "v3"]
        | ["openapi", "v3", "api", "v1"] => Err(ApiError::method_not_allowed()),
        ["api", "v1", "nodes"] => match method {
            Method::GET if is_watch(query) => handlers::watch(shared, &request, query, None),
            Method::GET => handlers::list(shared, &request, query),
            Method::POST => handlers::create(shared, request, query, manager).await,
            Method::DELETE => handlers::delete_collection(shared, query),
            _ => Err(ApiError::method_not_allowed()),
        },
        ["api", "v1", "watch", "nodes"] if get => handlers::watch(shared, &request, query, None),
        ["api", "v1", "watch", "nodes", name] if get => {
            handlers::watch(shared, &request, query, Some(name))
        }
        ["api", "v1", "nodes", name] => match method {
            Method::GET => handlers::get_one(shared, &request, name),
            Method::PUT => {
                handlers::update(shared, request, query, name, Subresource::Main, manager).await
            }
            Method::PATCH => {
                handlers::patch_one(shared, request, query, name, Subresource::Main, manager).await
            }
            Method::DELETE => handlers::delete(shared, request, query, name).await,
            _ => Err(ApiError::method_not_allowed()),
        },
        ["api", "v1", "nodes", name, "status"] => match method {
            Method::GET => handlers::get_one(shared, &request, name),
            Method::PUT => {
                handlers::update(shared, request, query, name, Subresource::Status, manager).await
            }
            Method::PATCH => {
                handlers::patch_one(shared, request, query, name, Subresource::Status, manager)
                    .await
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        _ => Err(ApiError::no_route()),
    }
}

fn is_watch(query: &BTreeMap<String, String>) -> bool {
    matches!(query.get("watch").map(String::as_str), Some("true" | "1"))
}

// ---------------------------------------------------------------- responses

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn with_content_type(mut response: Response<Body>, content_type: &'static str) -> Response<Body> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(
        "cache-control",
        HeaderValue::from_static("no-cache, private"),
    );
    response
}

pub fn bytes_response(code: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(bytes));
    *response.status_mut() = code;
    with_content_type(response, "application/json")
}

/// A JSON document.
pub fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    bytes_response(code, serde_json::to_vec(value).unwrap_or_default())
}

fn text_response(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = code;
    with_content_type(response, "text/plain; charset=utf-8")
}

/// A `Status` document for `error`.
pub fn error_response(error: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(code, &error.to_status());
    if let Some(seconds) = error.retry_after {
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}

/// Adds `Warning: 299 - "..."` headers, as the API server does for
/// unknown fields under `fieldValidation=Warn`.
pub fn add_warnings(response: &mut Response<Body>, warnings: &[String]) {
    for warning in warnings {
        let text = format!(
            "299 - \"{}\"",
            warning.replace('\\', "\\\\").replace('"', "\\\"")
        );
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append("warning", value);
        }
    }
}

/// One object in the representation the client asked for.
pub fn object_response(
    code: StatusCode,
    stored: &Stored,
    format: Format,
    include: IncludeObject,
) -> Response<Body> {
    match format {
        Format::Json => bytes_response(code, stored.json.clone()),
        Format::Metadata => json_response(code, &table::partial_metadata(&stored.node)),
        Format::Table => json_response(
            code,
            &table::table(
                &[stored],
                json!({"resourceVersion": stored.rv.to_string()}),
                include,
                true,
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(kubectl_get)).unwrap(), Format::Table);
        assert_eq!(negotiate(None).unwrap(), Format::Json);
        assert_eq!(negotiate(Some("*/*")).unwrap(), Format::Json);
        let discovery =
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(Some(discovery)).unwrap(), Format::Json);
        assert_eq!(
            negotiate(Some(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
            ))
            .unwrap(),
            Format::Metadata
        );
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf"))
                .unwrap_err()
                .code,
            406
        );
    }
}
