//! How the Node watches get their initial list (see
//! `vendor-notes/node-watch.md`): a streaming list (`sendInitialEvents`,
//! served from the API server's watch cache one object at a time, so no
//! list body of every Node is ever held) where the server supports it,
//! else list + watch from the watch cache (`resourceVersion=0`), as
//! upstream's informer does.
//! Never a quorum read of every Node from every node at once.

use std::fmt::Debug;

use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::info;

/// Overrides the choice: `streaming` or `list` (anything else: automatic).
/// For benchmarks and labs comparing the two.
pub const INITIAL_LIST_ENV: &str = "FLANNEL_EMBED_INITIAL_LIST";

/// How a watcher gets its initial list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialList {
    /// `watch?sendInitialEvents=true&resourceVersionMatch=NotOlderThan`.
    Streaming,
    /// `list?resourceVersion=0&resourceVersionMatch=NotOlderThan` (one
    /// page: kube-core drops `resourceVersion=0` from a list with a `limit`,
    /// which would make it a quorum read), then watch.
    ListWatch,
}

impl InitialList {
    /// What to try first against a server reporting `version` (`None`: it
    /// did not say). Kubernetes 1.27 and later either serve streaming lists
    /// or refuse them with 422 Invalid (1.33 with the WatchList gate off by
    /// default; earlier ones refuse `resourceVersionMatch` on a watch),
    /// which [`refuses_streaming`] notices. Anything else may ignore the
    /// parameter and never end the initial events, so it gets list + watch.
    pub fn for_server(version: Option<&Info>) -> InitialList {
        let number = |text: &str| -> Option<u32> {
            let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        match version.and_then(|v| Some((number(&v.major)?, number(&v.minor)?))) {
            Some((major, minor)) if major > 1 || (major == 1 && minor >= 27) => {
                InitialList::Streaming
            }
            _ => InitialList::ListWatch,
        }
    }

    /// [`INITIAL_LIST_ENV`]'s value as an override.
    pub fn from_override(value: Option<&str>) -> Option<InitialList> {
        match value.map(str::trim) {
            Some("streaming") => Some(InitialList::Streaming),
            Some("list") => Some(InitialList::ListWatch),
            _ => None,
        }
    }

    /// `base` (selectors) with this strategy.
    pub fn config(self, base: watcher::Config) -> watcher::Config {
        match self {
            InitialList::Streaming => base.streaming_lists(),
            InitialList::ListWatch => {
                let mut config = base.any_semantic();
                config.page_size = None;
                config
            }
        }
    }

    /// The override if set, else what the server's `/version` suggests.
    pub async fn choose(client: &Client) -> InitialList {
        let forced = std::env::var(INITIAL_LIST_ENV).ok();
        match InitialList::from_override(forced.as_deref()) {
            Some(forced) => forced,
            None => InitialList::for_server(client.apiserver_version().await.ok().as_ref()),
        }
    }
}

/// Whether a watcher error says the server refuses streaming lists: 422
/// Invalid (Kubernetes 1.33's default, and older servers) or 400 Bad
/// Request, on starting the watch or as its first event.
pub fn refuses_streaming(error: &watcher::Error) -> bool {
    let refusal = |code: u16| matches!(code, 400 | 422);
    match error {
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => refusal(status.code),
        watcher::Error::WatchError(status) => refusal(status.code),
        _ => false,
    }
}

/// kube-runtime's watcher (default backoff) with `strategy`; when the
/// server refuses streaming lists it says so once at info and starts over
/// with list + watch, for good. `what` names the watch in that line.
pub fn node_events<K>(
    api: Api<K>,
    base: watcher::Config,
    strategy: InitialList,
    what: &'static str,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let start = |api: &Api<K>, base: &watcher::Config, strategy: InitialList| {
        watcher(api.clone(), strategy.config(base.clone()))
            .default_backoff()
            .boxed()
    };
    let events: BoxStream<'static, watcher::Result<Event<K>>> = start(&api, &base, strategy);
    stream::unfold(
        (api, base, strategy, events),
        move |(api, base, mut strategy, mut events)| async move {
            loop {
                let item = events.next().await?;
                if let Err(error) = &item {
                    if strategy == InitialList::Streaming && refuses_streaming(error) {
                        info!(
                            "the API server refuses streaming lists ({error}); watching {what} with list and watch from its watch cache instead"
                        );
                        strategy = InitialList::ListWatch;
                        events = start(&api, &base, strategy);
                        continue;
                    }
                }
                return Some((item, (api, base, strategy, events)));
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            ..Info::default()
        }
    }

    #[test]
    fn streaming_is_tried_only_where_a_refusal_is_certain() {
        let table = [
            (Some(info("1", "34")), InitialList::Streaming),
            (Some(info("1", "33+")), InitialList::Streaming),
            (Some(info("1", "27")), InitialList::Streaming),
            (Some(info("2", "0")), InitialList::Streaming),
            (Some(info("1", "26")), InitialList::ListWatch),
            (Some(info("", "")), InitialList::ListWatch),
            (Some(info("one", "33")), InitialList::ListWatch),
            (None, InitialList::ListWatch),
        ];
        for (version, wanted) in table {
            assert_eq!(
                InitialList::for_server(version.as_ref()),
                wanted,
                "{version:?}"
            );
        }
        assert_eq!(
            InitialList::from_override(Some("list")),
            Some(InitialList::ListWatch)
        );
        assert_eq!(
            InitialList::from_override(Some(" streaming")),
            Some(InitialList::Streaming)
        );
        assert_eq!(InitialList::from_override(Some("auto")), None);
        assert_eq!(InitialList::from_override(None), None);
    }

    #[test]
    fn refusals_are_told_from_other_watch_errors() {
        let status = |code: u16| Box::new(Status::failure("no", "Invalid").with_code(code));
        let table = [
            (
                watcher::Error::WatchStartFailed(kube::Error::Api(status(422))),
                true,
            ),
            (
                watcher::Error::WatchStartFailed(kube::Error::Api(status(400))),
                true,
            ),
            (
                watcher::Error::WatchFailed(kube::Error::Api(status(422))),
                true,
            ),
            (watcher::Error::WatchError(status(422)), true),
            (
                watcher::Error::WatchStartFailed(kube::Error::Api(status(403))),
                false,
            ),
            (
                watcher::Error::WatchStartFailed(kube::Error::Api(status(500))),
                false,
            ),
            (watcher::Error::WatchError(status(410)), false),
            (
                watcher::Error::InitialListFailed(kube::Error::Api(status(422))),
                false,
            ),
            (watcher::Error::NoResourceVersion, false),
        ];
        for (error, wanted) in table {
            assert_eq!(refuses_streaming(&error), wanted, "{error:?}");
        }
    }

    #[test]
    fn each_strategy_sets_its_parameters() {
        let streaming = InitialList::Streaming.config(watcher::Config::default().fields("a=b"));
        assert_eq!(
            streaming.initial_list_strategy,
            watcher::InitialListStrategy::StreamingList
        );
        assert_eq!(streaming.field_selector.as_deref(), Some("a=b"));
        let cached = InitialList::ListWatch.config(watcher::Config::default());
        assert_eq!(
            cached.initial_list_strategy,
            watcher::InitialListStrategy::ListWatch
        );
        assert_eq!(cached.list_semantic, watcher::ListSemantic::Any);
        assert_eq!(cached.page_size, None);
    }
}
