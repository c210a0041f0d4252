//! The test API server checked with kube-rs (client, watcher, reflector):
//! pagination, watch resumption, 410 relists, injected failures, restarts,
//! the status subresource, and figures for 10,000 Nodes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt, TryStreamExt};
use integration::apiserver::{ready_node, Options, PatchType, Subresource, TestApiServer, Verb};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(20);

fn start() -> (TestApiServer, Api<Node>) {
    let server = TestApiServer::start(Options::default()).unwrap();
    let api = Api::all(server.client().unwrap());
    (server, api)
}

fn names(nodes: impl IntoIterator<Item = Node>) -> BTreeSet<String> {
    nodes.into_iter().filter_map(|n| n.metadata.name).collect()
}

fn numbered(prefix: &str, count: usize) -> impl Iterator<Item = Node> + '_ {
    (0..count).map(move |i| ready_node(&format!("{prefix}-{i:05}"), None))
}

/// Waits until `check` holds, polling every 20 ms.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a reflector over all Nodes in the background; returns its store.
fn reflect(api: Api<Node>) -> (Store<Node>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Errors are retried by the backoff; the stream never ends.
        while stream.next().await.is_some() {}
    });
    (reader, task)
}

fn store_names(store: &Store<Node>) -> BTreeSet<String> {
    store
        .state()
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

#[tokio::test]
async fn paged_list_is_a_consistent_snapshot() {
    let (server, api) = start();
    server.create_nodes(numbered("page", 1_200)).unwrap();

    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(100);
    let mut pages = 0;
    let mut snapshot_rv = None;
    loop {
        let page = api.list(&params).await.unwrap();
        pages += 1;
        let rv = page.metadata.resource_version.clone();
        assert!(
            snapshot_rv.is_none() || snapshot_rv == rv,
            "every page is the same snapshot"
        );
        snapshot_rv = rv;
        if pages == 1 {
            // Changes after the first page do not leak into the next ones.
            assert_eq!(page.metadata.remaining_item_count, Some(1_100));
            server.delete_node("page-01150").unwrap();
            server.create_node(ready_node("page-99999", None)).unwrap();
            server
                .update_node("page-01199", |n| {
                    n.metadata
                        .labels
                        .get_or_insert_default()
                        .insert("late".into(), "yes".into());
                })
                .unwrap();
        }
        seen.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(pages, 12);
    assert_eq!(seen.len(), 1_200);
    let unique = names(seen.clone());
    assert_eq!(unique.len(), 1_200, "every node exactly once");
    assert!(unique.contains("page-01150") && !unique.contains("page-99999"));
    let last = seen
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some("page-01199"))
        .unwrap();
    assert!(last
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| !l.contains_key("late")));

    // A fresh list sees the changes; selectors filter; a forgotten snapshot
    // is 410 Expired, a garbled token 400.
    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 1_200);
    assert!(names(all.items).contains("page-99999"));
    let late = api
        .list(&ListParams::default().labels("late=yes"))
        .await
        .unwrap();
    assert_eq!(
        names(late.items),
        BTreeSet::from(["page-01199".to_string()])
    );
    let one = api
        .list(&ListParams::default().fields("metadata.name=page-00007"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);

    let first = api.list(&ListParams::default().limit(10)).await.unwrap();
    let token = first.metadata.continue_.unwrap();
    server
        .create_node(ready_node("after-compaction", None))
        .unwrap();
    server.compact_history();
    match api
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }
    match api
        .list(&ListParams::default().continue_token("garbage"))
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 400),
        other => panic!("expected 400, got {other:?}"),
    }
}

/// The next watcher event that is not an init marker.
async fn next_change<S>(stream: &mut S) -> watcher::Event<Node>
where
    S: Stream<Item = Result<watcher::Event<Node>, watcher::Error>> + Unpin,
{
    loop {
        let event = tokio::time::timeout(LIMIT, stream.next())
            .await
            .expect("an event in time")
            .expect("the watcher does not end")
            .expect("no watch error");
        match event {
            watcher::Event::Init | watcher::Event::InitDone => continue,
            other => return other,
        }
    }
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    let (server, api) = start();
    server.create_node(ready_node("existing", None)).unwrap();
    let mut stream = Box::pin(watcher(api.clone(), watcher::Config::default()));
    match next_change(&mut stream).await {
        watcher::Event::InitApply(node) => {
            assert_eq!(node.metadata.name.as_deref(), Some("existing"))
        }
        other => panic!("{other:?}"),
    }
    // Changes between the list and the watch are not lost: the watch
    // starts from the list's resourceVersion.
    api.create(&PostParams::default(), &ready_node("new", None))
        .await
        .unwrap();
    match next_change(&mut stream).await {
        watcher::Event::Apply(node) => assert_eq!(node.metadata.name.as_deref(), Some("new")),
        other => panic!("{other:?}"),
    }
    let patch =
        json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "192.0.2.7"}}});
    api.patch_status("new", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    match next_change(&mut stream).await {
        watcher::Event::Apply(node) => {
            let annotations = node.metadata.annotations.unwrap();
            assert_eq!(
                annotations["flannel.alpha.coreos.com/public-ip"],
                "192.0.2.7"
            );
        }
        other => panic!("{other:?}"),
    }
    api.delete("new", &DeleteParams::default()).await.unwrap();
    match next_change(&mut stream).await {
        watcher::Event::Delete(node) => assert_eq!(node.metadata.name.as_deref(), Some("new")),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.requests(Verb::List), 1);
}

#[tokio::test]
async fn watcher_resumes_after_dropped_watches_without_relisting() {
    let (server, api) = start();
    server.create_nodes(numbered("drop", 20)).unwrap();
    let (store, task) = reflect(api.clone());
    eventually("the initial list", || store.state().len() == 20).await;
    eventually("the watch", || server.open_watches() == 1).await;
    let lists = server.requests(Verb::List);
    let watches = server.requests(Verb::Watch);

    for round in 0..3 {
        server.drop_watches();
        // Changes while the watch is down must arrive after it resumes.
        server
            .create_node(ready_node(&format!("late-{round}"), None))
            .unwrap();
        server.delete_node(&format!("drop-{round:05}")).unwrap();
        server
            .update_node("drop-00019", |n| {
                n.metadata
                    .labels
                    .get_or_insert_default()
                    .insert("round".into(), round.to_string());
            })
            .unwrap();
        let expected = names(server.list_nodes());
        eventually("the reflector to catch up", || {
            store_names(&store) == expected
        })
        .await;
        let label = store
            .get(&reflector::ObjectRef::new("drop-00019"))
            .and_then(|n| n.metadata.labels.clone())
            .and_then(|l| l.get("round").cloned());
        assert_eq!(label, Some(round.to_string()));
    }
    assert_eq!(
        server.requests(Verb::List),
        lists,
        "resumed from its resourceVersion, no relist"
    );
    assert!(server.requests(Verb::Watch) >= watches + 3);
    task.abort();
}

#[tokio::test]
async fn too_old_resource_version_makes_the_watcher_relist() {
    let (server, api) = start();
    server.create_nodes(numbered("old", 5)).unwrap();
    let (store, task) = reflect(api.clone());
    eventually("the initial list", || store.state().len() == 5).await;
    eventually("the watch", || server.open_watches() == 1).await;
    let lists = server.requests(Verb::List);

    // Hold the re-watch while the history it needs is compacted away.
    server.pause();
    let watches = server.requests(Verb::Watch);
    server.end_watches();
    eventually("the re-watch to arrive", || {
        server.requests(Verb::Watch) > watches
    })
    .await;
    server
        .create_node(ready_node("during-outage", None))
        .unwrap();
    server.delete_node("old-00000").unwrap();
    server.compact_history();
    server.resume();

    let expected = names(server.list_nodes());
    eventually("the relist", || store_names(&store) == expected).await;
    // Only a 410 makes kube-runtime's watcher list again.
    assert!(
        server.requests(Verb::List) > lists,
        "a 410 must cause a relist"
    );
    task.abort();
}

#[tokio::test]
async fn injected_failures_and_recovery() {
    let (server, api) = start();
    server.create_nodes(numbered("fail", 3)).unwrap();
    server.fail_requests(503, Duration::from_secs(2));
    // Without kube-rs's default retry the 503 Status reaches the caller...
    let mut config = server.kube_config();
    config.default_retry = false;
    let no_retry: Api<Node> = Api::all(kube::Client::try_from(config).unwrap());
    match no_retry.get("fail-00000").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 503);
            assert_eq!(status.reason, "ServiceUnavailable");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // ...with it, the client waits out the window (Retry-After: 1).
    let started = Instant::now();
    api.get("fail-00000").await.unwrap();
    println!(
        "a retrying GET rode out the 503 window in {:?}",
        started.elapsed()
    );
    assert!(
        server.requests(Verb::Get) >= 3,
        "{:?}",
        server.request_counts()
    );
    server.fail_requests(503, Duration::from_secs(2));
    let started = Instant::now();
    let (store, task) = reflect(api.clone());
    eventually("recovery", || store.state().len() == 3).await;
    println!(
        "watcher recovered {:?} after a 2 s 503 window",
        started.elapsed()
    );
    assert!(server
        .request_log()
        .iter()
        .any(|r| r.verb == Verb::List && r.status == 503));
    assert!(api.get("fail-00001").await.is_ok());

    // 500s too, with a Status body kube-rs understands.
    server.fail_requests(500, Duration::from_secs(60));
    match api.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(
            (status.code, status.reason.as_str()),
            (500, "InternalError")
        ),
        other => panic!("expected 500, got {other:?}"),
    }
    server.stop_failing();
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        3
    );
    task.abort();
}

#[tokio::test]
async fn restart_keeps_data_and_watchers_reconnect() {
    let (server, api) = start();
    server.create_nodes(numbered("keep", 10)).unwrap();
    let (store, task) = reflect(api.clone());
    eventually("the initial list", || store.state().len() == 10).await;
    eventually("the watch", || server.open_watches() == 1).await;
    let addr = server.addr();
    let rv = server.resource_version();

    server.restart_after(Duration::from_millis(300)).unwrap();
    assert_eq!(server.addr(), addr);
    assert_eq!(server.resource_version(), rv);
    assert_eq!(server.node_count(), 10);
    server
        .create_node(ready_node("after-restart", None))
        .unwrap();
    assert_eq!(server.resource_version(), rv + 1);
    eventually("the reflector to see the new node", || {
        store.state().len() == 11
    })
    .await;
    assert_eq!(
        api.get("keep-00003")
            .await
            .unwrap()
            .metadata
            .name
            .as_deref(),
        Some("keep-00003")
    );
    task.abort();
}

#[tokio::test]
async fn status_subresource_and_write_semantics() {
    let (server, api) = start();
    let created = api
        .create(
            &PostParams::default(),
            &ready_node("s", Some("10.42.5.0/24")),
        )
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(
        created.spec.as_ref().unwrap().pod_cidrs.as_ref().unwrap(),
        &["10.42.5.0/24"]
    );

    // flannel's annotations go through nodes/status, with conditions.
    let patch = json!({
        "metadata": {"annotations": {"flannel.alpha.coreos.com/backend-type": "vxlan"}},
        "spec": {"unschedulable": true},
        "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"}]},
    });
    let patched = api
        .patch_status("s", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    assert_eq!(
        patched.metadata.annotations.unwrap()["flannel.alpha.coreos.com/backend-type"],
        "vxlan"
    );
    assert_eq!(
        patched.spec.unwrap().unschedulable,
        None,
        "nodes/status ignores spec"
    );
    assert_eq!(patched.status.unwrap().conditions.unwrap().len(), 2);

    // The same semantics in-process, without HTTP.
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}, "spec": {"unschedulable": true}});
    let node = server
        .patch_node("s", Subresource::Status, PatchType::Strategic, &patch)
        .unwrap();
    let conditions = node.status.unwrap().conditions.unwrap();
    assert_eq!(
        (conditions.len(), conditions[0].status.as_str()),
        (2, "Unknown")
    );
    assert_eq!(node.spec.unwrap().unschedulable, None);
    let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"unschedulable": true}});
    let error = server
        .patch_node("s", Subresource::Main, PatchType::Merge, &stale)
        .unwrap_err();
    assert_eq!((error.code, error.reason), (409, "Conflict"));

    // The main resource ignores status.
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    let same = api
        .patch("s", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(same.status.unwrap().conditions.unwrap().len(), 2);

    // Optimistic concurrency on replace.
    let mut stale = api.get("s").await.unwrap();
    server
        .update_node("s", |n| {
            n.metadata
                .labels
                .get_or_insert_default()
                .insert("x".into(), "1".into())
                .map(drop)
                .unwrap_or(())
        })
        .unwrap();
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("y".into(), "2".into());
    match api.replace("s", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Server-side apply is not supported: 415 with a Status.
    let apply = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "s", "labels": {"z": "3"}}});
    match api
        .patch("s", &PatchParams::apply("test"), &Patch::Apply(&apply))
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(
            (status.code, status.reason.as_str()),
            (415, "UnsupportedMediaType")
        ),
        other => panic!("expected 415, got {other:?}"),
    }
    // Dry runs change nothing.
    let rv = server.resource_version();
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&params, &ready_node("dry", None)).await.unwrap();
    assert!(server.get_node("dry").is_none());
    assert_eq!(server.resource_version(), rv);
    // Deleting answers a success Status; deleting again is 404.
    let deleted = api.delete("s", &DeleteParams::default()).await.unwrap();
    assert!(
        deleted.is_right(),
        "nodes are not returned on delete: {deleted:?}"
    );
    match api.delete("s", &DeleteParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"))
        }
        other => panic!("expected 404, got {other:?}"),
    }
    assert_eq!(server.requests(Verb::Delete), 2);
}

#[tokio::test]
async fn ten_thousand_nodes() {
    let (server, api) = start();
    let started = Instant::now();
    server.create_nodes(numbered("big", 10_000)).unwrap();
    println!("created 10,000 nodes in-process in {:?}", started.elapsed());

    let started = Instant::now();
    let mut params = ListParams::default().limit(500);
    let mut count = 0;
    loop {
        let page = api.list(&params).await.unwrap();
        count += page.items.len();
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(count, 10_000);
    println!(
        "paged list of 10,000 nodes (limit 500) via kube-rs in {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let watchers: Vec<_> = (0..4).map(|_| reflect(api.clone())).collect();
    for (store, _) in &watchers {
        eventually("every watcher's initial list", || {
            store.state().len() == 10_000
        })
        .await;
    }
    println!(
        "4 watchers (reflectors) initialised with 10,000 nodes in {:?}",
        started.elapsed()
    );
    eventually("the watches", || server.open_watches() == 4).await;

    let started = Instant::now();
    for i in 0..1_000 {
        server
            .update_node(&format!("big-{i:05}"), |n| {
                n.metadata
                    .labels
                    .get_or_insert_default()
                    .insert("wave".into(), "1".into());
            })
            .unwrap();
    }
    for (store, _) in &watchers {
        eventually("every watcher to see 1,000 changes", || {
            store
                .get(&reflector::ObjectRef::new("big-00999"))
                .is_some_and(|n| {
                    n.metadata
                        .labels
                        .as_ref()
                        .is_some_and(|l| l.contains_key("wave"))
                })
        })
        .await;
    }
    println!(
        "1,000 changes fanned out to 4 watchers in {:?}",
        started.elapsed()
    );
    for (_, task) in watchers {
        task.abort();
    }
    let stream = watcher(api, watcher::Config::default()).applied_objects();
    let first: Vec<Node> = stream.take(3).try_collect().await.unwrap();
    assert_eq!(first.len(), 3);
}

#[tokio::test]
async fn streaming_lists_metadata_bookmarks_and_timeouts() {
    let (server, api) = start();
    server.create_nodes(numbered("stream", 30)).unwrap();

    // Watch-list (sendInitialEvents): the initial events end with a
    // bookmark annotated k8s.io/initial-events-end, and no list is sent.
    let (reader, writer) = reflector::store();
    let stream = watcher(api.clone(), watcher::Config::default().streaming_lists())
        .reflect(writer)
        .applied_objects();
    let streaming = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    eventually("the streamed initial state", || reader.state().len() == 30).await;
    assert_eq!(server.requests(Verb::List), 0);
    streaming.abort();

    // PartialObjectMetadata lists and watches (kube's metadata API).
    let metadata = api
        .list_metadata(&ListParams::default().limit(7))
        .await
        .unwrap();
    assert_eq!(metadata.items.len(), 7);
    assert_eq!(
        metadata.items[0].metadata.name.as_deref(),
        Some("stream-00000")
    );
    let meta_api: Api<kube::core::PartialObjectMeta<Node>> = Api::all(server.client().unwrap());
    let meta_stream = watcher(meta_api, watcher::Config::default()).applied_objects();
    let first: Vec<_> = meta_stream.take(30).try_collect().await.unwrap();
    assert_eq!(first.len(), 30);

    // Raw watch: bookmarks on demand carry the current resourceVersion,
    // and timeoutSeconds ends the stream.
    let params = kube::api::WatchParams::default().timeout(2);
    let rv = server.resource_version().to_string();
    let events = api.watch(&params, &rv).await.unwrap();
    let mut events = Box::pin(events);
    server
        .update_node("stream-00001", |n| {
            n.spec.get_or_insert_default().unschedulable = Some(true)
        })
        .unwrap();
    match events.next().await {
        Some(Ok(kube::api::WatchEvent::Modified(node))) => {
            assert_eq!(node.metadata.name.as_deref(), Some("stream-00001"));
        }
        other => panic!("{other:?}"),
    }
    eventually("the raw watch", || server.open_watches() >= 1).await;
    server.send_bookmarks();
    match events.next().await {
        Some(Ok(kube::api::WatchEvent::Bookmark(bookmark))) => {
            assert_eq!(
                bookmark.metadata.resource_version,
                server.resource_version().to_string()
            );
        }
        other => panic!("{other:?}"),
    }
    let started = Instant::now();
    loop {
        match tokio::time::timeout(LIMIT, events.next()).await.unwrap() {
            None => break,
            Some(Ok(kube::api::WatchEvent::Bookmark(_))) => continue,
            other => panic!("{other:?}"),
        }
    }
    println!(
        "watch with timeoutSeconds=2 ended after {:?}",
        started.elapsed()
    );

    // A too-old resourceVersion is a 200 whose only event is a 410 Status.
    server.compact_history();
    server
        .update_node("stream-00002", |n| {
            n.spec.get_or_insert_default().unschedulable = Some(true)
        })
        .unwrap();
    let mut events = Box::pin(api.watch(&params, &rv).await.unwrap());
    match events.next().await {
        Some(Ok(kube::api::WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn selector_watches_see_objects_enter_and_leave() {
    let (server, api) = start();
    server.create_nodes(numbered("sel", 3)).unwrap();
    let rv = server.resource_version().to_string();
    let params = kube::api::WatchParams::default()
        .labels("zone=a")
        .timeout(10);
    let mut events = Box::pin(api.watch(&params, &rv).await.unwrap());
    let zone = |name: &str, value: Option<&str>| {
        server
            .update_node(name, |n| {
                let labels = n.metadata.labels.get_or_insert_default();
                match value {
                    Some(v) => labels.insert("zone".into(), v.into()),
                    None => labels.remove("zone"),
                };
            })
            .unwrap();
    };
    zone("sel-00001", Some("b"));
    zone("sel-00001", Some("a"));
    zone("sel-00001", Some("a"));
    server
        .update_node("sel-00001", |n| {
            n.spec.get_or_insert_default().unschedulable = Some(true)
        })
        .unwrap();
    zone("sel-00001", None);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(LIMIT, events.next()).await.unwrap() {
            Some(Ok(kube::api::WatchEvent::Added(n))) => seen.push(("ADDED", n)),
            Some(Ok(kube::api::WatchEvent::Modified(n))) => seen.push(("MODIFIED", n)),
            Some(Ok(kube::api::WatchEvent::Deleted(n))) => seen.push(("DELETED", n)),
            other => panic!("{other:?}"),
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| *k).collect();
    // The no-op update is not an event; leaving the selection is a DELETED
    // carrying the last matching state and the change's resourceVersion.
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    let gone = &seen[2].1;
    assert_eq!(gone.metadata.labels.as_ref().unwrap()["zone"], "a");
    assert_eq!(
        gone.metadata.resource_version,
        Some(server.resource_version().to_string())
    );

    // deletecollection with a selector returns the deleted Nodes.
    zone("sel-00000", Some("gone"));
    zone("sel-00002", Some("gone"));
    let deleted = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("zone=gone"),
        )
        .await
        .unwrap();
    let list = deleted.left().expect("the deleted items");
    assert_eq!(
        names(list.items),
        BTreeSet::from(["sel-00000".to_string(), "sel-00002".to_string()])
    );
    assert_eq!(server.node_count(), 1);
    assert_eq!(server.requests(Verb::DeleteCollection), 1);
}
