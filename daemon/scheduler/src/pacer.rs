//! Keeping to a duty cycle: how long the engine thread sleeps between steps while the device
//! is warm.

use std::time::Duration;

/// Sleeps between steps so that computing takes `duty` of the wall time. The debt carries
/// across steps (and goes negative after an oversleep), so short steps and imprecise sleeps
/// still average out to the duty cycle.
#[derive(Debug, Default)]
pub struct Pacer {
    /// Seconds of sleep owed.
    debt: f64,
}

impl Pacer {
    /// Records `busy` compute time at `duty` (1.0 = no pacing) and returns how long to sleep
    /// now; report the time actually slept with [`slept`](Self::slept).
    pub fn after(&mut self, busy: Duration, duty: f64) -> Duration {
        if duty >= 1.0 {
            self.debt = 0.0;
            return Duration::ZERO;
        }
        self.debt += busy.as_secs_f64() * (1.0 / duty - 1.0);
        if self.debt < 0.002 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.debt.min(0.2))
    }

    /// Records time actually slept.
    pub fn slept(&mut self, actual: Duration) {
        self.debt -= actual.as_secs_f64();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_averages_to_the_duty_cycle() {
        let mut p = Pacer::default();
        let busy = Duration::from_micros(700);
        let mut slept = Duration::ZERO;
        for i in 0..1000 {
            let want = p.after(busy, 0.25);
            // Sleeps overshoot by up to a millisecond, as a loaded machine does.
            let actual = if want.is_zero() { want } else { want + Duration::from_micros(i % 1000) };
            p.slept(actual);
            slept += actual;
        }
        let duty = (busy * 1000).as_secs_f64() / ((busy * 1000) + slept).as_secs_f64();
        assert!((duty - 0.25).abs() < 0.02, "{duty}");
        assert_eq!(Pacer::default().after(Duration::from_secs(1), 1.0), Duration::ZERO);
    }
}
