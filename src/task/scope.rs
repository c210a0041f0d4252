//! The one owner of everything a network task runs in the background: the
//! netlink connection, the kernel monitor, the masquerade keeper and the
//! blocking jobs (file writes, iptables). [`Scope::close`] cancels them and
//! waits until every one has ended, so when `Handle::shutdown` returns
//! nothing of the task is left: no task, no socket.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};

/// Spawns, cancels and awaits the task's background work.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Scope {
    pub(crate) fn new() -> Scope {
        Scope::default()
    }

    /// Runs `work` until it ends or the scope closes (then it is dropped
    /// at its next await point). The caller's span goes with it.
    pub(crate) fn spawn(
        &self,
        what: &'static str,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    () = work => debug!("{what} ended"),
                }
            }
            .in_current_span(),
        );
    }

    /// Runs `work`, which stops by itself once `stopping` (handed to it)
    /// completes: for loops that must not be cut in the middle of a step
    /// (a rule check running iptables). The scope still waits for it.
    pub(crate) fn spawn_graceful<F, Fut>(&self, work: F)
    where
        F: FnOnce(tokio_util::sync::WaitForCancellationFutureOwned) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stopping = self.cancel.clone().cancelled_owned();
        self.tracker.spawn(work(stopping).in_current_span());
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
        scope.spawn_graceful(|stopping| async move {
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
}
