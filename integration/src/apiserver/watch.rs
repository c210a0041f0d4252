//! Watch streams: newline-delimited `{"type":...,"object":...}` over a
//! chunked HTTP/1.1 response, as the real API server sends them.
//!
//! - no resourceVersion, "" or "0": synthetic ADDED events for the current
//!   objects, then changes ("get state and start at most recent");
//! - resourceVersion N: every change after N from the history; N older than
//!   the history: a 200 response whose only event is an ERROR with a 410
//!   Expired Status ("too old resource version: N (M)"), which is what
//!   client-go's reflector and kube-runtime's watcher relist on;
//! - `allowWatchBookmarks=true`: a BOOKMARK every bookmark interval (and on
//!   demand), carrying the resourceVersion up to which this watch has seen
//!   every change;
//! - `sendInitialEvents=true` (watch-list, KEP 3157; with
//!   `resourceVersionMatch=NotOlderThan` and `allowWatchBookmarks=true`, else
//!   422 Invalid as kube-apiserver validates it): the synthetic ADDED events
//!   end with a BOOKMARK annotated `k8s.io/initial-events-end: "true"`
//!   carrying the snapshot's resourceVersion; a server with watch-list off
//!   answers any `sendInitialEvents` 422 (Kubernetes 1.33's default);
//! - selectors: a change that makes an object match is an ADDED, one that
//!   makes it stop matching is a DELETED (watch-cache semantics);
//! - `timeoutSeconds` ends the stream cleanly; so does `end_watches()`,
//!   while `drop_watches()` cuts the connection mid-stream.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::handlers::{parse_rv, Selectors};
use super::server::{Body, Format, Shared};
use super::status::{field_forbidden, ApiError};
use super::store::{Event, EventType, Stored};
use super::table::{self, IncludeObject};

/// Flush the pending events once this many bytes are buffered.
const CHUNK: usize = 64 * 1024;

/// The query of a watch request.
pub struct WatchParams {
    /// Where to start: None = now, with synthetic ADDED events.
    start: Option<u64>,
    selectors: Selectors,
    format: Format,
    include: IncludeObject,
    bookmarks: bool,
    send_initial_events: bool,
    timeout: Option<Duration>,
}

impl WatchParams {
    /// Validates the watch query parameters.
    pub fn parse(
        query: &BTreeMap<String, String>,
        selectors: Selectors,
        format: Format,
        include: IncludeObject,
        watch_list: bool,
    ) -> Result<WatchParams, ApiError> {
        let flag = |name: &str| matches!(query.get(name).map(String::as_str), Some("true" | "1"));
        let rv = query
            .get("resourceVersion")
            .map(String::as_str)
            .unwrap_or("");
        let send_initial_events = flag("sendInitialEvents");
        let bookmarks = flag("allowWatchBookmarks");
        // As kube-apiserver's ValidateListOptions for watches.
        let rv_match = query
            .get("resourceVersionMatch")
            .map(String::as_str)
            .unwrap_or("");
        let mut causes = Vec::new();
        if query.contains_key("sendInitialEvents") {
            if rv_match != "NotOlderThan" {
                causes.push(field_forbidden(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if !watch_list {
                causes.push(field_forbidden(
                    "sendInitialEvents",
                    "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                ));
            }
        } else if !rv_match.is_empty() {
            causes.push(field_forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        if !rv_match.is_empty() && rv_match != "NotOlderThan" {
            causes.push((
                "FieldValueNotSupported".to_string(),
                "resourceVersionMatch".to_string(),
                format!("Unsupported value: \"{rv_match}\": supported values: \"NotOlderThan\""),
            ));
        }
        if send_initial_events && !bookmarks {
            causes.push(field_forbidden(
                "allowWatchBookmarks",
                "sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid_list_options(causes));
        }
        let start = match rv {
            _ if send_initial_events => None,
            "" | "0" => None,
            text => Some(parse_rv(text)?),
        };
        let timeout = match query.get("timeoutSeconds").map(String::as_str) {
            None | Some("") => None,
            Some(text) => {
                let seconds: u64 = text.parse().map_err(|_| {
                    ApiError::bad_request(format!("timeoutSeconds: Invalid value: \"{text}\""))
                })?;
                (seconds > 0).then(|| Duration::from_secs(seconds))
            }
        };
        Ok(WatchParams {
            start,
            selectors,
            format,
            include,
            bookmarks,
            send_initial_events,
            timeout,
        })
    }
}

type Chunk = Result<Frame<Bytes>, io::Error>;

/// The response body of a watch: a producer task feeds it through a channel
/// and stops as soon as the client (or the connection) is gone.
pub fn stream(shared: Arc<Shared>, params: WatchParams) -> Body {
    let (tx, mut rx) = mpsc::channel::<Chunk>(16);
    tokio::spawn(produce(shared, params, tx));
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    StreamBody::new(frames).boxed_unsync()
}

/// Counts the open watches while alive.
struct OpenWatch(Arc<Shared>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.stats.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Buffers encoded events and sends them as body chunks.
struct Sink {
    tx: mpsc::Sender<Chunk>,
    buffer: Vec<u8>,
    /// Table watches send the column definitions with the first row only.
    headers_sent: bool,
}

impl Sink {
    fn push(&mut self, kind: &str, object: &[u8]) {
        self.buffer.extend_from_slice(b"{\"type\":\"");
        self.buffer.extend_from_slice(kind.as_bytes());
        self.buffer.extend_from_slice(b"\",\"object\":");
        self.buffer.extend_from_slice(object);
        self.buffer.extend_from_slice(b"}\n");
    }

    /// Sends what is buffered; false when the client is gone.
    async fn flush(&mut self) -> bool {
        if self.buffer.is_empty() {
            return true;
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.tx.send(Ok(Frame::data(chunk))).await.is_ok()
    }

    async fn flush_if_full(&mut self) -> bool {
        if self.buffer.len() >= CHUNK {
            self.flush().await
        } else {
            true
        }
    }
}

struct Watcher {
    shared: Arc<Shared>,
    params: WatchParams,
    sink: Sink,
}

impl Watcher {
    /// An object in the watch's representation.
    fn encode(&mut self, stored: &Stored) -> Vec<u8> {
        match self.params.format {
            Format::Json => stored.json.to_vec(),
            Format::Metadata => table::partial_metadata(&stored.node)
                .to_string()
                .into_bytes(),
            Format::Table => {
                let headers = !self.sink.headers_sent;
                self.sink.headers_sent = true;
                table::table(
                    &[stored],
                    json!({"resourceVersion": stored.rv.to_string()}),
                    self.params.include,
                    headers,
                )
                .to_string()
                .into_bytes()
            }
        }
    }

    fn push(&mut self, kind: EventType, stored: &Stored) {
        let object = self.encode(stored);
        self.sink.push(kind.as_str(), &object);
    }

    fn push_bookmark(&mut self, rv: u64, initial_events_end: bool) {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            if let Some(map) = metadata.as_object_mut() {
                map.insert(
                    "annotations".into(),
                    json!({"k8s.io/initial-events-end": "true"}),
                );
            }
        }
        let object = match self.params.format {
            Format::Metadata => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata})
            }
            _ => json!({"kind": "Node", "apiVersion": "v1", "metadata": metadata}),
        };
        self.sink.push("BOOKMARK", object.to_string().as_bytes());
    }

    fn push_expired(&mut self, requested: u64, compacted: u64) {
        let status = ApiError::expired(format!(
            "too old resource version: {requested} ({compacted})"
        ))
        .to_status();
        self.sink.push("ERROR", status.to_string().as_bytes());
    }

    /// The event this watcher sends for a change, if any (selector
    /// transitions included).
    fn render(&mut self, event: &Event) {
        let now = self.params.selectors.matches(&event.object.node);
        let before = event
            .previous
            .as_ref()
            .is_some_and(|p| self.params.selectors.matches(&p.node));
        match event.kind {
            EventType::Added if now => self.push(EventType::Added, &event.object),
            EventType::Deleted if before => self.push(EventType::Deleted, &event.object),
            EventType::Modified => match (before, now) {
                (true, true) => self.push(EventType::Modified, &event.object),
                (false, true) => self.push(EventType::Added, &event.object),
                (true, false) => {
                    // The old content, with the change's resourceVersion.
                    if let Some(previous) = &event.previous {
                        let mut node = previous.node.clone();
                        node.metadata.resource_version = Some(event.rv.to_string());
                        let json = serde_json::to_vec(&node).unwrap_or_default();
                        let gone = Stored {
                            node,
                            json: Bytes::from(json),
                            rv: event.rv,
                        };
                        self.push(EventType::Deleted, &gone);
                    }
                }
                (false, false) => {}
            },
            _ => {}
        }
    }
}

async fn produce(shared: Arc<Shared>, params: WatchParams, tx: mpsc::Sender<Chunk>) {
    shared.stats.open_watches.fetch_add(1, Ordering::SeqCst);
    let _open = OpenWatch(shared.clone());
    // Subscribe before reading any state so no change can slip between.
    let mut changed = shared.store.subscribe();
    let mut dropped = shared.faults.drop_watches.subscribe();
    let mut ended = shared.faults.end_watches.subscribe();
    let mut bookmark_now = shared.faults.bookmarks.subscribe();
    let bookmarks = params.bookmarks;
    let deadline = params.timeout.map(|t| Instant::now() + t);
    let mut watcher = Watcher {
        shared: shared.clone(),
        params,
        sink: Sink {
            tx,
            buffer: Vec::new(),
            headers_sent: false,
        },
    };

    let mut last = match watcher.params.start {
        Some(rv) => rv,
        None => {
            let (rv, objects) = watcher.shared.store.snapshot();
            for stored in &objects {
                if watcher.params.selectors.matches(&stored.node) {
                    watcher.push(EventType::Added, stored);
                    if !watcher.sink.flush_if_full().await {
                        return;
                    }
                }
            }
            if watcher.params.send_initial_events {
                watcher.push_bookmark(rv, true);
            }
            rv
        }
    };

    let mut ticker = tokio::time::interval_at(
        Instant::now() + watcher.shared.bookmark_interval,
        watcher
            .shared
            .bookmark_interval
            .max(Duration::from_millis(10)),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match watcher.shared.store.events_after(last) {
            Ok(events) => {
                for event in events {
                    watcher.render(&event);
                    last = event.rv;
                    if !watcher.sink.flush_if_full().await {
                        return;
                    }
                }
            }
            Err(compacted) => {
                watcher.push_expired(last, compacted);
                let _ = watcher.sink.flush().await;
                return;
            }
        }
        if !watcher.sink.flush().await {
            return;
        }
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changed.changed() => {}
            _ = ticker.tick(), if bookmarks => watcher.push_bookmark(last, false),
            _ = bookmark_now.changed() => {
                if bookmarks {
                    watcher.push_bookmark(last, false);
                }
            }
            _ = dropped.changed() => {
                // An error in the body makes hyper abort the connection
                // without the final chunk: the client sees a broken stream.
                let _ = watcher.sink.tx.send(Err(io::Error::other("watch dropped by the test"))).await;
                return;
            }
            _ = ended.changed() => {
                let _ = watcher.sink.flush().await;
                return;
            }
            _ = sleep => {
                let _ = watcher.sink.flush().await;
                return;
            }
            _ = watcher.sink.tx.closed() => return,
        }
    }
}
