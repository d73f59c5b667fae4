//! Per-object exponential backoff with jitter (kube-runtime's error policy has none of its own),
//! and the jittered resync interval.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use rand::Rng;

const BASE: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(300);

/// Failure counts per object key (`namespace/name`), reset on success.
#[derive(Default)]
pub(crate) struct PerObjectBackoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl PerObjectBackoff {
    /// The delay before retrying `key` after one more failure.
    pub(crate) fn next(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("lock");
        let count = failures.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        jitter(backoff_delay(*count), 0.5)
    }

    /// Forgets the failures of `key`.
    pub(crate) fn reset(&self, key: &str) {
        self.failures.lock().expect("lock").remove(key);
    }
}

/// `BASE * 2^(failures-1)`, capped at `MAX`.
pub(crate) fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    (BASE * 2u32.pow(exponent)).min(MAX)
}

/// `duration` scaled by a random factor in `[1 - spread/2, 1 + spread/2]`, so that objects that
/// failed together do not retry together.
pub(crate) fn jitter(duration: Duration, spread: f64) -> Duration {
    let factor = 1.0 + spread * (rand::rng().random::<f64>() - 0.5);
    duration.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_the_cap() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(30), MAX);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(100), 0.2);
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_is_per_object_and_resets() {
        let backoff = PerObjectBackoff::default();
        for _ in 0..4 {
            backoff.next("a/x");
        }
        let first_of_b = backoff.next("b/y");
        assert!(first_of_b <= Duration::from_millis(1250), "{first_of_b:?}");
        assert!(backoff.next("a/x") >= Duration::from_secs(12));
        backoff.reset("a/x");
        assert!(backoff.next("a/x") <= Duration::from_millis(1250));
    }
}
