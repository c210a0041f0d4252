//! The one owner of everything a network task runs in the background: the
//! netlink connection, the kernel monitor, the masquerade keeper and the
//! blocking jobs (file writes, iptables). [`Scope::close`] cancels them and
//! waits until every one has ended, so when `Handle::shutdown` returns
//! nothing of the task is left: no task, no socket.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};

/// Spawns, cancels and awaits the task's background work, and reports the
/// first panic in it (which ends the task, as a panic in its main loop
/// does, instead of silently stopping one part).
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    tracker: TaskTracker,
    cancel: CancellationToken,
    panic: Arc<watch::Sender<Option<String>>>,
}

impl Scope {
    pub(crate) fn new() -> Scope {
        Scope {
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            panic: Arc::new(watch::channel(None).0),
        }
    }

    /// Runs `work` until it ends or the scope closes (then it is dropped
    /// at its next await point). The caller's span goes with it.
    pub(crate) fn spawn(
        &self,
        what: &'static str,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        let cancel = self.cancel.clone();
        let panic = self.panic.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    ended = AssertUnwindSafe(work).catch_unwind() => match ended {
                        Ok(()) => debug!("{what} ended"),
                        Err(payload) => report_panic(&panic, what, payload.as_ref()),
                    },
                }
            }
            .in_current_span(),
        );
    }

    /// As [`Scope::spawn`], for work whose end its owner must notice and
    /// act on (a netlink socket's reader: the owner reopens it): the
    /// returned [`Watched`] resolves when the work ends, and can cut it.
    pub(crate) fn spawn_watched(
        &self,
        what: &'static str,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> Watched {
        let cut = self.cancel.child_token();
        let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
        let cutting = cut.clone();
        self.spawn(what, async move {
            tokio::select! {
                () = work => {}
                () = cutting.cancelled() => {}
            }
            drop(ended_tx);
        });
        Watched {
            ended: Some(ended),
            cut,
        }
    }

    /// Runs `work`, which stops by itself once `stopping` (handed to it)
    /// completes: for loops that must not be cut in the middle of a step
    /// (a rule check running iptables). The scope still waits for it.
    pub(crate) fn spawn_graceful<F, Fut>(&self, what: &'static str, work: F)
    where
        F: FnOnce(tokio_util::sync::WaitForCancellationFutureOwned) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stopping = self.cancel.clone().cancelled_owned();
        let panic = self.panic.clone();
        let work = work(stopping);
        self.tracker.spawn(
            async move {
                if let Err(payload) = AssertUnwindSafe(work).catch_unwind().await {
                    report_panic(&panic, what, payload.as_ref());
                }
            }
            .in_current_span(),
        );
    }

    /// Resolves with the first panic in the scope's work: what panicked
    /// and the message.
    pub(crate) async fn panicked(&self) -> String {
        let mut panics = self.panic.subscribe();
        let first = panics
            .wait_for(Option::is_some)
            .await
            .map(|message| message.clone().unwrap_or_default());
        match first {
            Ok(message) => message,
            // The sender lives as long as `self`.
            Err(_) => std::future::pending().await,
        }
    }

    /// Tells everything to stop, without waiting.
    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Runs blocking `job` on tokio's blocking pool, in the caller's span.
    /// The scope waits for it even if the caller stops waiting (a blocking
    /// job cannot be cut short, so shutdown lets it finish).
    pub(crate) async fn blocking<T, F>(&self, job: F) -> Result<T, tokio::task::JoinError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let span = tracing::Span::current();
        self.tracker
            .spawn_blocking(move || span.in_scope(job))
            .await
    }

    /// Cancels everything and waits until all of it has ended.
    pub(crate) async fn close(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

fn report_panic(panic: &watch::Sender<Option<String>>, what: &str, payload: &(dyn Any + Send)) {
    let message = payload
        .downcast_ref::<&str>()
        .map(|m| m.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    // The first panic is the one reported.
    panic.send_if_modified(|first| {
        if first.is_none() {
            *first = Some(format!("{what} panicked: {message}"));
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Dropped when the future that owns it is dropped.
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn close_cancels_waits_for_graceful_work_and_blocking_jobs() {
        let scope = Scope::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        scope.spawn("forever", async move {
            let _flag = flag;
            std::future::pending::<()>().await
        });
        let graceful_done = Arc::new(AtomicBool::new(false));
        let done = graceful_done.clone();
        scope.spawn_graceful("graceful", |stopping| async move {
            stopping.await;
            // A last step after the stop request still runs.
            tokio::task::yield_now().await;
            done.store(true, Ordering::SeqCst);
        });
        let blocking_done = Arc::new(AtomicBool::new(false));
        let done = blocking_done.clone();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let scope = scope.clone();
            tokio::spawn(async move {
                scope
                    .blocking(move || {
                        let _ = started_tx.send(());
                        std::thread::sleep(Duration::from_millis(100));
                        done.store(true, Ordering::SeqCst);
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        // The caller gives up on the blocking job: the scope still waits.
        waiter.abort();
        scope.close().await;
        assert!(dropped.load(Ordering::SeqCst), "spawned work dropped");
        assert!(
            graceful_done.load(Ordering::SeqCst),
            "graceful work finished"
        );
        assert!(
            blocking_done.load(Ordering::SeqCst),
            "blocking job finished"
        );
        assert!(scope.tracker.is_empty());
    }

    #[tokio::test]
    async fn a_panic_in_background_work_is_reported_once() {
        let scope = Scope::new();
        scope.spawn("the rule keeper", async { panic!("boom") });
        scope.spawn_graceful("second", |_| async { panic!("later") });
        let message = tokio::time::timeout(Duration::from_secs(5), scope.panicked())
            .await
            .expect("reported");
        assert!(
            message == "the rule keeper panicked: boom" || message == "second panicked: later",
            "{message}"
        );
        scope.close().await;
        assert_eq!(scope.panicked().await, message, "the first one stays");
    }
}

/// Work started with [`Scope::spawn_watched`].
#[derive(Debug)]
pub(crate) struct Watched {
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
    cut: CancellationToken,
}

impl Watched {
    /// Resolves once the work has ended (at once if it already had).
    pub(crate) async fn ended(&mut self) {
        if let Some(ended) = self.ended.as_mut() {
            let _ = ended.await;
            self.ended = None;
        }
    }

    /// Stops the work (as if its socket had failed): a fault hook for
    /// tests, and what replacing it does.
    pub(crate) fn cut(&self) {
        self.cut.cancel();
    }
}

impl Drop for Watched {
    /// Work nobody watches any more is stopped.
    fn drop(&mut self) {
        self.cut.cancel();
    }
}
