//! The thermal governor as a pure state machine: temperature readings in, level transitions
//! out. Levels rise as soon as a threshold is reached and fall only once the temperature is a
//! hysteresis margin below it, so a reading wobbling around a threshold does not flap.

use serde::Serialize;

use qwenedge_api::ThermalLevel;

/// Temperatures (°C) at which each level starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Warm from here.
    pub warm_c: f64,
    /// Hot from here.
    pub hot_c: f64,
    /// Critical from here.
    pub critical_c: f64,
    /// A level is left only below its threshold minus this.
    pub hysteresis_c: f64,
}

impl Thresholds {
    fn start_of(&self, level: ThermalLevel) -> f64 {
        match level {
            ThermalLevel::Normal => f64::NEG_INFINITY,
            ThermalLevel::Warm => self.warm_c,
            ThermalLevel::Hot => self.hot_c,
            ThermalLevel::Critical => self.critical_c,
        }
    }

    /// Checks the ordering; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.warm_c < self.hot_c && self.hot_c < self.critical_c && self.hysteresis_c >= 0.0;
        let finite = [self.warm_c, self.hot_c, self.critical_c, self.hysteresis_c].iter().all(|v| v.is_finite());
        if ok && finite {
            Ok(())
        } else {
            Err(format!(
                "thresholds must satisfy warm < hot < critical and hysteresis >= 0 (got {} / {} / {}, hysteresis {})",
                self.warm_c, self.hot_c, self.critical_c, self.hysteresis_c
            ))
        }
    }
}

/// A level change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    /// Level before.
    pub from: ThermalLevel,
    /// Level after.
    pub to: ThermalLevel,
    /// The reading that caused it.
    pub temp_c: f64,
}

/// The governor's state.
#[derive(Debug, Clone)]
pub struct ThermalGovernor {
    thresholds: Thresholds,
    level: ThermalLevel,
}

const LEVELS: [ThermalLevel; 4] = [ThermalLevel::Normal, ThermalLevel::Warm, ThermalLevel::Hot, ThermalLevel::Critical];

impl ThermalGovernor {
    /// A governor at `Normal`.
    pub fn new(thresholds: Thresholds) -> Self {
        Self { thresholds, level: ThermalLevel::Normal }
    }

    /// A governor already at `level` (thresholds changed while running).
    pub fn with_level(thresholds: Thresholds, level: ThermalLevel) -> Self {
        Self { thresholds, level }
    }

    /// The current level.
    pub fn level(&self) -> ThermalLevel {
        self.level
    }

    /// The thresholds in use.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Feeds a reading; `None` (no sensor) keeps the level. Returns the change, if any.
    pub fn update(&mut self, temp_c: Option<f64>) -> Option<Transition> {
        let t = temp_c.filter(|t| t.is_finite())?;
        // Highest level whose threshold is reached.
        let reached = LEVELS.iter().rev().copied().find(|&l| t >= self.thresholds.start_of(l)).unwrap_or(ThermalLevel::Normal);
        let next = if reached >= self.level {
            reached
        } else {
            // Step down only past the hysteresis margin of each level being left.
            let mut level = self.level;
            while level > reached && t < self.thresholds.start_of(level) - self.thresholds.hysteresis_c {
                level = LEVELS[level as usize - 1];
            }
            level
        };
        (next != self.level).then(|| {
            let from = std::mem::replace(&mut self.level, next);
            Transition { from, to: next, temp_c: t }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ThermalLevel::*;

    fn gov() -> ThermalGovernor {
        ThermalGovernor::new(Thresholds { warm_c: 70.0, hot_c: 80.0, critical_c: 90.0, hysteresis_c: 3.0 })
    }

    #[test]
    fn a_ramp_up_and_down_visits_every_level_with_hysteresis() {
        let mut g = gov();
        let mut seen = vec![g.level()];
        let ramp: Vec<f64> = (40..=95).chain((40..=95).rev()).map(f64::from).collect();
        for t in ramp {
            if let Some(tr) = g.update(Some(t)) {
                seen.push(tr.to);
                match (tr.from < tr.to, tr.to) {
                    (true, Warm) => assert_eq!(t, 70.0),
                    (true, Hot) => assert_eq!(t, 80.0),
                    (true, Critical) => assert_eq!(t, 90.0),
                    (false, Hot) => assert_eq!(t, 86.0, "critical is left below 87"),
                    (false, Warm) => assert_eq!(t, 76.0),
                    (false, Normal) => assert_eq!(t, 66.0),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(seen, vec![Normal, Warm, Hot, Critical, Hot, Warm, Normal]);
    }

    #[test]
    fn no_flapping_around_a_threshold() {
        let mut g = gov();
        assert!(g.update(Some(80.2)).is_some());
        let changes = (0..200).filter(|i| g.update(Some(if i % 2 == 0 { 79.5 } else { 80.5 })).is_some()).count();
        assert_eq!(changes, 0);
        assert_eq!(g.level(), Hot);
    }

    #[test]
    fn a_jump_skips_levels_and_missing_readings_keep_the_level() {
        let mut g = gov();
        assert_eq!(g.update(Some(95.0)).unwrap().to, Critical);
        assert!(g.update(None).is_none());
        assert!(g.update(Some(f64::NAN)).is_none());
        assert_eq!(g.update(Some(20.0)).unwrap().to, Normal);
    }

    #[test]
    fn thresholds_must_be_ordered() {
        assert!(Thresholds { warm_c: 80.0, hot_c: 70.0, critical_c: 90.0, hysteresis_c: 1.0 }.validate().is_err());
    }
}
