//! One retry loop for every component: exponential backoff with jitter
//! (computed by `backon`), cut short by shutdown, and bounded for errors
//! that retrying will not cure.

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// How to retry one operation.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The first delay; each later one doubles, up to `max_delay`.
    pub min_delay: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
    /// Attempts allowed for an error that is not transient (the caller's
    /// `transient` says which are); transient errors are retried until they
    /// clear or shutdown.
    pub max_attempts: usize,
}

impl RetryPolicy {
    /// 100 ms doubling up to 5 s; errors that are not transient get 5
    /// attempts (about 3 s in all).
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
        max_attempts: 5,
    };

    /// The delays, endless, with jitter: every delay is drawn between the
    /// exponential step and twice it (backon's jitter), so replicas that
    /// failed together do not retry together. For loops that cannot be one
    /// [`retry`] call (they change what they retry between attempts).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a retried operation ended.
#[derive(Debug)]
pub enum Retried<T, E> {
    /// It succeeded (perhaps after retries).
    Done(T),
    /// It failed with an error that is not transient `max_attempts` times;
    /// the last error.
    GaveUp(E),
    /// Shutdown came first; the operation did not succeed.
    Cancelled,
}

/// Runs `op` until it succeeds, retrying with `policy`'s backoff: errors
/// for which `transient` is true are retried until they clear (logged as
/// warnings with `what`), other errors up to `policy.max_attempts` times in
/// all. Returns [`Retried::Cancelled`] as soon as `shutdown` is cancelled.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    policy: &RetryPolicy,
    shutdown: &CancellationToken,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Retried<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = policy.delays();
    let mut failures = 0;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Retried::Cancelled,
            r = op() => r,
        };
        let e = match result {
            Ok(v) => return Retried::Done(v),
            Err(e) => e,
        };
        let is_transient = transient(&e);
        if !is_transient {
            failures += 1;
            if failures >= policy.max_attempts {
                return Retried::GaveUp(e);
            }
        }
        let delay = delays.next().unwrap_or(policy.max_delay);
        tracing::warn!(error = %e, retry_in = ?delay, transient = is_transient, "{what} failed; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return Retried::Cancelled,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const FAST: RetryPolicy = RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        max_attempts: 3,
    };

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_they_clear() {
        let calls = AtomicUsize::new(0);
        let r = retry(
            "op",
            &FAST,
            &CancellationToken::new(),
            |_: &String| true,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=9 => Err("down".to_string()),
                    n => Ok(n),
                }
            },
        )
        .await;
        assert!(matches!(r, Retried::Done(10)), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_give_up_after_the_bound() {
        let calls = AtomicUsize::new(0);
        let r: Retried<(), String> = retry(
            "op",
            &FAST,
            &CancellationToken::new(),
            |_| false,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("refused".to_string())
            },
        )
        .await;
        assert!(
            matches!(r, Retried::GaveUp(ref e) if e == "refused"),
            "{r:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), FAST.max_attempts);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_retries() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let r: Retried<(), String> = retry(
            "op",
            &FAST,
            &shutdown,
            |_| true,
            || async { Err("down".to_string()) },
        )
        .await;
        assert!(matches!(r, Retried::Cancelled));
    }

    #[test]
    fn delays_grow_with_jitter_and_stay_bounded() {
        let d: Vec<Duration> = RetryPolicy::DEFAULT.delays().take(12).collect();
        assert!(
            d[0] >= Duration::from_millis(100) && d[0] <= Duration::from_millis(200),
            "{d:?}"
        );
        assert!(d.iter().all(|x| *x <= Duration::from_secs(10)), "{d:?}");
        assert!(d[11] >= Duration::from_secs(5), "{d:?}");
    }
}
