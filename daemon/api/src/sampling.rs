//! Sampling settings as a request carries them, with the ranges every transport enforces.

use serde::{Deserialize, Serialize};

use super::request::FieldError;

/// Sampling settings of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = off).
    pub top_p: f32,
    /// Drop tokens below `min_p × p(max)` (0 = off).
    pub min_p: f32,
    /// Divide positive / multiply negative logits of seen tokens (1 = off).
    pub repetition_penalty: f32,
    /// Subtract from logits of tokens generated at least once (0 = off).
    pub presence_penalty: f32,
    /// Subtract `count × f` from logits of generated tokens (0 = off).
    pub frequency_penalty: f32,
    /// RNG seed; `None` draws one from the OS.
    pub seed: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl Sampling {
    /// Checks every field's range; the message names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        let check = |ok: bool, field: &str, expected: &str, got: f32| {
            if ok {
                Ok(())
            } else {
                Err(FieldError::whole(field, format!("{field} must be {expected} (got {got})")))
            }
        };
        let t = self.temperature;
        check(t.is_finite() && (0.0..=100.0).contains(&t), "temperature", "between 0 and 100", t)?;
        check(self.top_p > 0.0 && self.top_p <= 1.0, "top_p", "in (0, 1]", self.top_p)?;
        check((0.0..=1.0).contains(&self.min_p), "min_p", "in [0, 1]", self.min_p)?;
        let r = self.repetition_penalty;
        check(r.is_finite() && r > 0.0 && r <= 10.0, "repetition_penalty", "in (0, 10]", r)?;
        let p = self.presence_penalty;
        check((-2.0..=2.0).contains(&p), "presence_penalty", "in [-2, 2]", p)?;
        let f = self.frequency_penalty;
        check((-2.0..=2.0).contains(&f), "frequency_penalty", "in [-2, 2]", f)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_name_the_field() {
        assert!(Sampling::default().validate().is_ok());
        let cases = [
            (Sampling { temperature: f32::NAN, ..Default::default() }, "temperature"),
            (Sampling { top_p: 0.0, ..Default::default() }, "top_p"),
            (Sampling { min_p: 1.5, ..Default::default() }, "min_p"),
            (Sampling { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
            (Sampling { presence_penalty: 3.0, ..Default::default() }, "presence_penalty"),
            (Sampling { frequency_penalty: -3.0, ..Default::default() }, "frequency_penalty"),
        ];
        for (s, field) in cases {
            let e = s.validate().unwrap_err();
            assert!(e.field == field && e.message.starts_with(field), "{field}: {e}");
        }
    }
}
