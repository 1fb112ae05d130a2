//! Reconnection pacing. rumqttc reconnects as soon as it is polled again, so a broker that is
//! down would be hammered in a tight loop; this decides how long to wait before each attempt:
//! exponential from `reconnect_min_ms` to `reconnect_max_ms`, with jitter so that a fleet of
//! devices does not reconnect in lockstep after a broker restart. A connection counts as
//! healthy again only once it has stayed up for a while, so a broker that accepts and then
//! drops the connection at once is still backed off.

use std::time::{Duration, Instant};

use rand::Rng;

/// How long a connection must last before the next failure starts again from the minimum.
const STABLE: Duration = Duration::from_secs(10);

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    up_since: Option<Instant>,
}

impl Backoff {
    /// Delays between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), attempt: 0, up_since: None }
    }

    /// The connection is up (CONNACK received).
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection failed or an attempt did not succeed: how long to wait before the next.
    pub fn next_delay(&mut self, now: Instant, rng: &mut impl Rng) -> Duration {
        if self.up_since.take().is_some_and(|t| now.duration_since(t) >= STABLE) {
            self.attempt = 0;
        }
        let base = self.min.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = base / 2;
        let jitter = rng.random_range(0..=half.as_millis() as u64);
        (half + Duration::from_millis(jitter)).max(self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_exponentially_within_bounds_with_jitter() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(3000));
        let now = Instant::now();
        let delays: Vec<u64> = (0..10).map(|_| b.next_delay(now, &mut rng).as_millis() as u64).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = (100u64 << i).min(3000);
            assert!(*d >= (base / 2).max(100) && *d <= base, "attempt {i}: {d} ms not in [{}, {base}]", base / 2);
        }
        assert!(delays[9] >= 1500, "capped near the maximum: {delays:?}");
        let mut other = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let mut b2 = Backoff::new(Duration::from_millis(100), Duration::from_millis(3000));
        let delays2: Vec<u64> = (0..10).map(|_| b2.next_delay(now, &mut other).as_millis() as u64).collect();
        assert_ne!(delays, delays2, "jittered");
    }

    #[test]
    fn a_stable_connection_resets_and_a_flapping_one_does_not() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..5 {
            b.next_delay(t0, &mut rng);
        }
        b.connected(t0);
        let flap = b.next_delay(t0 + Duration::from_secs(1), &mut rng);
        assert!(flap >= Duration::from_millis(1600), "{flap:?}");
        b.connected(t0);
        let fresh = b.next_delay(t0 + Duration::from_secs(30), &mut rng);
        assert!(fresh <= Duration::from_millis(100), "{fresh:?}");
    }
}
