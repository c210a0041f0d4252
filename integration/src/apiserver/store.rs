//! The in-memory "etcd" of the test API server: Nodes by name, one global
//! resourceVersion counter, and a bounded history of change events.
//!
//! Every change bumps the counter by exactly one and appends exactly one
//! event, so the history is contiguous: the event for resourceVersion `r` is
//! at index `r - compacted - 1`. The history serves three things the real API
//! server gets from etcd and its watch cache:
//! - watches that resume from a resourceVersion (older than the history:
//!   410 "too old resource version"),
//! - consistent paginated lists (a continue token pins the snapshot's
//!   resourceVersion; the snapshot is rebuilt by undoing the newer events),
//! - `resourceVersionMatch=Exact` lists.
//!
//! Objects are stored typed (for selectors, tables and strategies) and
//! pre-serialized (a list of 10,000 Nodes is a concatenation, not 10,000
//! serializations).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;

use super::status::ApiError;

/// One stored version of a Node.
#[derive(Debug)]
pub struct Stored {
    /// The typed object, `metadata.resourceVersion` included.
    pub node: Node,
    /// Its JSON, as served.
    pub json: Bytes,
    /// Its resourceVersion.
    pub rv: u64,
}

impl Stored {
    fn new(mut node: Node, rv: u64) -> Result<Arc<Stored>, ApiError> {
        node.metadata.resource_version = Some(rv.to_string());
        let json = serde_json::to_vec(&node).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Arc::new(Stored {
            node,
            json: Bytes::from(json),
            rv,
        }))
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }
}

/// Watch event types (BOOKMARK and ERROR are made by the watch code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Deleted.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// The new state; for a deletion the last state, carrying the deletion's
    /// resourceVersion (as the real API server sends it).
    pub object: Arc<Stored>,
    /// The state before (None for a creation): needed to undo the event for a
    /// snapshot, and for selector transitions in watches.
    pub previous: Option<Arc<Stored>>,
}

/// One page of a list.
pub struct Page {
    /// The snapshot's resourceVersion.
    pub rv: u64,
    /// The objects, by name.
    pub items: Vec<Arc<Stored>>,
    /// Set when more matching objects follow: the last name returned.
    pub more_after: Option<String>,
    /// How many objects follow (only meaningful without selectors).
    pub remaining: u64,
}

struct State {
    nodes: BTreeMap<String, Arc<Stored>>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Every event with `rv <= compacted` is gone from the history.
    compacted: u64,
    history_limit: usize,
}

/// The store shared by the HTTP handlers and the in-process API.
pub struct Store {
    state: Mutex<State>,
    /// The latest resourceVersion, for watchers to wait on.
    changed: watch::Sender<u64>,
    uid_counter: AtomicU64,
    random: RandomState,
}

impl Store {
    pub fn new(history_limit: usize) -> Store {
        Store {
            state: Mutex::new(State {
                nodes: BTreeMap::new(),
                rv: 0,
                history: VecDeque::new(),
                compacted: 0,
                history_limit: history_limit.max(1),
            }),
            changed: watch::channel(0).0,
            uid_counter: AtomicU64::new(0),
            random: RandomState::new(),
        }
    }

    /// Locks the state; a panic elsewhere while holding the lock must not
    /// take the server down with it, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that sees every new resourceVersion.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.lock().rv
    }

    /// The number of Nodes.
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// One Node.
    pub fn get(&self, name: &str) -> Option<Arc<Stored>> {
        self.lock().nodes.get(name).cloned()
    }

    /// The current resourceVersion and every Node, by name.
    pub fn snapshot(&self) -> (u64, Vec<Arc<Stored>>) {
        let state = self.lock();
        (state.rv, state.nodes.values().cloned().collect())
    }

    /// A random v4-style UID.
    pub fn new_uid(&self) -> String {
        let mut hasher = self.random.build_hasher();
        hasher.write_u64(self.uid_counter.fetch_add(1, Ordering::Relaxed));
        let a = hasher.finish();
        hasher.write_u64(a);
        let b = hasher.finish();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    /// Five characters for `metadata.generateName`, from the same alphabet as
    /// the real name generator.
    fn random_suffix(&self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut hasher = self.random.build_hasher();
        hasher.write_u64(self.uid_counter.fetch_add(1, Ordering::Relaxed));
        let mut n = hasher.finish();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize];
                n /= ALPHABET.len() as u64;
                c as char
            })
            .collect()
    }

    /// Stores a new Node (already decoded, normalized and validated except
    /// for its name). Sets uid, creationTimestamp and resourceVersion.
    pub fn create(&self, mut node: Node, dry_run: bool) -> Result<Arc<Stored>, ApiError> {
        node.metadata.uid = Some(self.new_uid());
        // The API stores seconds; keeping sub-seconds here would make the
        // stored object differ from its own JSON.
        node.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH),
        ));
        let mut state = self.lock();
        if node.metadata.name.as_deref().unwrap_or("").is_empty() {
            if let Some(prefix) = node
                .metadata
                .generate_name
                .clone()
                .filter(|p| !p.is_empty())
            {
                let name = loop {
                    let name = format!("{prefix}{}", self.random_suffix());
                    if !state.nodes.contains_key(&name) {
                        break name;
                    }
                };
                node.metadata.name = Some(name);
            }
        }
        super::node::validate(&node)?;
        let name = node.metadata.name.clone().unwrap_or_default();
        if state.nodes.contains_key(&name) {
            return Err(ApiError::already_exists(&name));
        }
        if dry_run {
            return Stored::new(node, 0).map(|s| strip_rv(&s));
        }
        let rv = state.rv + 1;
        let stored = Stored::new(node, rv)?;
        state.nodes.insert(name, stored.clone());
        self.commit(state, EventType::Added, stored.clone(), None);
        Ok(stored)
    }

    /// Read-modify-write of one Node under the lock: `change` gets the
    /// current version and returns the new object (or an error, e.g. a
    /// conflict). An update that changes nothing is not written: no new
    /// resourceVersion, no event (as etcd3's GuaranteedUpdate).
    pub fn update<F>(&self, name: &str, dry_run: bool, change: F) -> Result<Arc<Stored>, ApiError>
    where
        F: FnOnce(&Arc<Stored>) -> Result<Node, ApiError>,
    {
        let mut state = self.lock();
        let current = state
            .nodes
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(name))?;
        let new = change(&current)?;
        let unchanged = Stored::new(new.clone(), current.rv)?;
        if unchanged.json == current.json {
            return Ok(current);
        }
        if dry_run {
            return Ok(unchanged);
        }
        let rv = state.rv + 1;
        let stored = Stored::new(new, rv)?;
        state.nodes.insert(name.to_string(), stored.clone());
        self.commit(state, EventType::Modified, stored.clone(), Some(current));
        Ok(stored)
    }

    /// Deletes one Node; `check` sees it first (preconditions).
    pub fn delete<F>(&self, name: &str, dry_run: bool, check: F) -> Result<Arc<Stored>, ApiError>
    where
        F: FnOnce(&Arc<Stored>) -> Result<(), ApiError>,
    {
        let mut state = self.lock();
        let current = state
            .nodes
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(name))?;
        check(&current)?;
        if dry_run {
            return Ok(current);
        }
        let rv = state.rv + 1;
        let gone = Stored::new(current.node.clone(), rv)?;
        state.nodes.remove(name);
        self.commit(state, EventType::Deleted, gone.clone(), Some(current));
        Ok(gone)
    }

    /// Records an event for the next resourceVersion and wakes watchers.
    fn commit(
        &self,
        mut state: MutexGuard<'_, State>,
        kind: EventType,
        object: Arc<Stored>,
        previous: Option<Arc<Stored>>,
    ) {
        state.rv += 1;
        let rv = state.rv;
        state.history.push_back(Arc::new(Event {
            rv,
            kind,
            object,
            previous,
        }));
        while state.history.len() > state.history_limit {
            if let Some(old) = state.history.pop_front() {
                state.compacted = old.rv;
            }
        }
        drop(state);
        self.changed.send_replace(rv);
    }

    /// Forgets the whole history (like an etcd compaction): any older
    /// resourceVersion now gets 410 Gone / "too old resource version".
    pub fn compact(&self) {
        let mut state = self.lock();
        state.history.clear();
        state.compacted = state.rv;
    }

    /// The oldest resourceVersion a watch or a snapshot can start from.
    pub fn compacted(&self) -> u64 {
        self.lock().compacted
    }

    /// Events after `rv`, oldest first; `Err(compacted)` when some of them
    /// are no longer kept.
    pub fn events_after(&self, rv: u64) -> Result<Vec<Arc<Event>>, u64> {
        let state = self.lock();
        if rv < state.compacted {
            return Err(state.compacted);
        }
        let skip = usize::try_from(rv - state.compacted).unwrap_or(usize::MAX);
        Ok(state.history.iter().skip(skip).cloned().collect())
    }

    /// One page of the Nodes as they were at resourceVersion `at` (None: now),
    /// starting after the name `after`, with at most `limit` objects that pass
    /// `filter`.
    pub fn list(
        &self,
        at: Option<u64>,
        after: Option<&str>,
        limit: Option<usize>,
        filter: &dyn Fn(&Node) -> bool,
    ) -> Result<Page, ApiError> {
        let state = self.lock();
        let at = at.unwrap_or(state.rv);
        if at > state.rv {
            return Err(ApiError {
                code: 504,
                reason: "Timeout",
                message: format!("Too large resource version: {at}, current: {}", state.rv),
                name: None,
                causes: Vec::new(),
                retry_after: Some(1),
                details: None,
            });
        }
        if at < state.compacted {
            return Err(ApiError::expired(format!(
                "The resourceVersion for the provided list is too old. (requested {at}, oldest kept {})",
                state.compacted
            )));
        }
        // Undo the events after `at`: newest first, so the value left for a
        // name is its state just before its first change after `at`.
        let mut overlay: BTreeMap<&str, Option<&Arc<Stored>>> = BTreeMap::new();
        let newer = usize::try_from(state.rv - at).unwrap_or(usize::MAX);
        for event in state.history.iter().rev().take(newer) {
            let before = match event.kind {
                EventType::Added => None,
                EventType::Modified | EventType::Deleted => event.previous.as_ref(),
            };
            overlay.insert(event.object.name(), before);
        }
        let lower = match after {
            Some(name) => Bound::Excluded(name),
            None => Bound::Unbounded,
        };
        let current = state
            .nodes
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(k, v)| (k.as_str(), v));
        let undone = overlay
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(k, v)| (*k, *v));
        let mut merged = Merged {
            current: current.peekable(),
            overlay: undone.peekable(),
        };
        let limit = limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut more_after = None;
        let mut remaining = 0u64;
        for stored in merged.by_ref() {
            if !filter(&stored.node) {
                continue;
            }
            if items.len() < limit {
                items.push(stored.clone());
            } else {
                more_after = items.last().map(|s: &Arc<Stored>| s.name().to_string());
                remaining = 1;
                break;
            }
        }
        if more_after.is_some() {
            remaining += merged.count() as u64;
        }
        Ok(Page {
            rv: at,
            items,
            more_after,
            remaining,
        })
    }
}

/// A dry-run creation has no resourceVersion.
fn strip_rv(stored: &Arc<Stored>) -> Arc<Stored> {
    let mut node = stored.node.clone();
    node.metadata.resource_version = None;
    let json = serde_json::to_vec(&node).unwrap_or_default();
    Arc::new(Stored {
        node,
        json: Bytes::from(json),
        rv: 0,
    })
}

/// The current objects merged with the undone ones, in name order.
struct Merged<'a, C, O>
where
    C: Iterator<Item = (&'a str, &'a Arc<Stored>)>,
    O: Iterator<Item = (&'a str, Option<&'a Arc<Stored>>)>,
{
    current: std::iter::Peekable<C>,
    overlay: std::iter::Peekable<O>,
}

impl<'a, C, O> Iterator for Merged<'a, C, O>
where
    C: Iterator<Item = (&'a str, &'a Arc<Stored>)>,
    O: Iterator<Item = (&'a str, Option<&'a Arc<Stored>>)>,
{
    type Item = &'a Arc<Stored>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_overlay = match (self.current.peek(), self.overlay.peek()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((c, _)), Some((o, _))) => o <= c,
            };
            if take_overlay {
                let (name, value) = self.overlay.next()?;
                // The overlay replaces the current object of the same name.
                if self.current.peek().is_some_and(|(c, _)| *c == name) {
                    self.current.next();
                }
                match value {
                    Some(stored) => return Some(stored),
                    None => continue,
                }
            }
            return self.current.next().map(|(_, v)| v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(page: &Page) -> Vec<String> {
        page.items.iter().map(|s| s.name().to_string()).collect()
    }

    #[test]
    fn snapshots_undo_later_changes() {
        let store = Store::new(100);
        for name in ["a", "b", "c"] {
            store.create(node(name), false).unwrap();
        }
        let at = store.rv();
        store.delete("b", false, |_| Ok(())).unwrap();
        store.create(node("bb"), false).unwrap();
        store
            .update("c", false, |s| {
                let mut n = s.node.clone();
                n.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
                Ok(n)
            })
            .unwrap();
        let old = store.list(Some(at), None, None, &|_| true).unwrap();
        assert_eq!(names(&old), ["a", "b", "c"]);
        assert!(old.items[2].node.metadata.labels.is_none());
        let page = store.list(Some(at), Some("a"), Some(1), &|_| true).unwrap();
        assert_eq!(names(&page), ["b"]);
        assert_eq!(page.more_after.as_deref(), Some("b"));
        assert_eq!(page.remaining, 1);
        let now = store.list(None, None, None, &|_| true).unwrap();
        assert_eq!(names(&now), ["a", "bb", "c"]);
    }

    #[test]
    fn history_is_bounded() {
        let store = Store::new(2);
        for name in ["a", "b", "c"] {
            store.create(node(name), false).unwrap();
        }
        assert_eq!(store.compacted(), 1);
        assert_eq!(store.events_after(0).unwrap_err(), 1);
        assert_eq!(store.events_after(1).unwrap().len(), 2);
        assert!(store.list(Some(0), None, None, &|_| true).is_err());
    }

    #[test]
    fn no_op_updates_are_not_written() {
        let store = Store::new(10);
        let created = store.create(node("a"), false).unwrap();
        let same = store.update("a", false, |s| Ok(s.node.clone())).unwrap();
        assert_eq!(created.rv, same.rv);
        assert_eq!(store.rv(), 1);
    }
}
