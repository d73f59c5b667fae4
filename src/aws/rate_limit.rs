//! A token bucket that spaces out calls (AssumeRole per source account, IAM per target account), so
//! that a burst of refreshes after an outage, or many resyncs at once, does not hit the quota AWS
//! throttles with.
//!
//! A caller reserves its slot under a short lock and sleeps after releasing it, so waiting
//! callers never hold up one another's reservations (and slots still go out in the order they
//! were asked for).

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    /// Tokens (negative: slots promised to waiting callers) as of the instant.
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// Allows `per_second` calls on average, with bursts of up to `burst`.
    pub(crate) fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Refills and returns the tokens now (under the lock).
    fn refill(&self, state: &mut (f64, Instant), now: Instant) {
        let (tokens, last) = state;
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
    }

    /// Waits until a call may be made; returns how long it waited.
    pub(crate) async fn acquire(&self) -> Duration {
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            self.refill(&mut state, Instant::now());
            state.0 -= 1.0;
            // A negative balance is the queue ahead of us, this call included.
            Duration::from_secs_f64((-state.0).max(0.0) / self.per_second)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// Takes a slot if one is free now; otherwise says how long until one is.
    #[cfg(test)]
    pub(crate) fn try_acquire(&self) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut state, Instant::now());
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - state.0) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_burst_are_spaced_out() {
        let limiter = RateLimiter::new(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "the burst passes at once"
        );
        for _ in 0..10 {
            limiter.acquire().await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(990) && elapsed <= Duration::from_millis(1100),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_callers_do_not_block_each_other() {
        // Twenty callers at once beyond a burst of two, at ten a second: all are done within two
        // seconds, each waiting only for its own slot (a lock held while sleeping would still
        // give this order, but try_acquire below would block).
        let limiter = Arc::new(RateLimiter::new(10.0, 2));
        let start = Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.acquire().await })
            })
            .collect();
        tokio::task::yield_now().await;
        // While they wait, the lock is free: a non-blocking caller is told how long to wait.
        let wait = limiter.try_acquire().expect_err("no slot is free");
        assert!(wait > Duration::from_secs(1), "{wait:?}");
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1700) && elapsed <= Duration::from_millis(1900),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_takes_free_slots_only() {
        let limiter = RateLimiter::new(1.0, 2);
        assert!(limiter.try_acquire().is_ok());
        assert!(limiter.try_acquire().is_ok());
        let wait = limiter.try_acquire().unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        tokio::time::advance(wait).await;
        assert!(limiter.try_acquire().is_ok());
    }
}
