//! The retry policy every loop of the network task shares: exponential backoff
//! with a cap, reset by a success. One policy, named, so a lasting failure
//! costs a retry every `max` rather than every second, and a transient one
//! is retried quickly.

use std::time::Duration;

/// Exponential backoff: `initial`, doubled after every failure in a row,
/// capped at `max`; a success starts over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Data path passes and netlink sockets: 1 s, 2 s, 4 s ... 30 s (the
    /// periodic resync: a lasting failure costs no more than it does).
    pub const KERNEL: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    /// API writes: 200 ms ... 10 s.
    pub const API: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// One more failure: how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let delay = self
            .initial
            .checked_mul(1u32.checked_shl(self.failures).unwrap_or(u32::MAX))
            .map_or(self.max, |d| d.min(self.max));
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// A success: the next failure waits `initial` again. Returns whether
    /// it had been failing.
    pub fn succeeded(&mut self) -> bool {
        std::mem::take(&mut self.failures) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_a_success_starts_over() {
        let s = Duration::from_secs;
        let table: [(Backoff, &[Duration]); 3] = [
            (
                Backoff::KERNEL,
                &[s(1), s(2), s(4), s(8), s(16), s(30), s(30)],
            ),
            (Backoff::new(s(1), s(5)), &[s(1), s(2), s(4), s(5), s(5)]),
            (
                Backoff::API,
                &[
                    Duration::from_millis(200),
                    Duration::from_millis(400),
                    Duration::from_millis(800),
                    Duration::from_millis(1600),
                    Duration::from_millis(3200),
                    Duration::from_millis(6400),
                    s(10),
                ],
            ),
        ];
        for (mut backoff, wanted) in table {
            let got: Vec<Duration> = wanted.iter().map(|_| backoff.failed()).collect();
            assert_eq!(got, wanted);
            assert!(backoff.succeeded());
            assert!(!backoff.succeeded());
            assert_eq!(backoff.failed(), wanted[0]);
        }
    }

    #[test]
    fn a_long_failure_never_overflows() {
        let mut backoff = Backoff::KERNEL;
        for _ in 0..200 {
            backoff.failed();
        }
        assert_eq!(backoff.failed(), Duration::from_secs(30));
    }
}
