//! Next-token selection: penalties, temperature, top-k, top-p, min-p and a seeded RNG so the
//! same request with the same seed gives the same tokens. Temperature 0 is greedy.
//!
//! Order (as transformers applies its processors): repetition penalty, presence/frequency
//! penalty, temperature, top-k, top-p, min-p, then a draw from the renormalised distribution.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sampling settings of one sequence (the wire form, with its range checks, is
/// `api::Sampling`).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
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

impl Default for SamplingParams {
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

/// The sampler of one sequence: its parameters, RNG and counts of generated tokens.
#[derive(Debug)]
pub(crate) struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Tokens of the prompt and output, for the repetition penalty.
    seen: Vec<u32>,
    /// (token, count) of generated tokens, for presence/frequency penalties.
    generated: std::collections::HashMap<u32, u32>,
    scratch: Vec<(u32, f32)>,
}

/// What was chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Choice {
    /// Token id.
    pub token: u32,
    /// Probability under the final (truncated, renormalised) distribution when sampling;
    /// `None` for greedy picks, where computing it would cost a pass over the vocabulary.
    pub prob: Option<f32>,
}

impl Sampler {
    /// A sampler for a sequence whose prompt is `prompt`.
    pub(crate) fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        let mut seen = prompt.to_vec();
        seen.sort_unstable();
        seen.dedup();
        Self { params, rng, seen, generated: Default::default(), scratch: Vec::new() }
    }

    /// Records a token that was emitted (chosen here or forced by a caller).
    pub(crate) fn accept(&mut self, token: u32) {
        if let Err(i) = self.seen.binary_search(&token) {
            self.seen.insert(i, token);
        }
        *self.generated.entry(token).or_default() += 1;
    }

    /// Picks the next token from `logits` (modified in place by the penalties).
    pub(crate) fn sample(&mut self, logits: &mut [f32]) -> Choice {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.generated {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        if p.temperature == 0.0 {
            let (token, _) = argmax(logits);
            return Choice { token, prob: None };
        }
        self.draw(logits)
    }

    fn draw(&mut self, logits: &[f32]) -> Choice {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let cand = &mut self.scratch;
        cand.clear();
        cand.extend(logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l * inv_t)));
        if cand.is_empty() {
            return Choice { token: argmax(logits).0, prob: None };
        }
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            cand.truncate(p.top_k);
        }
        // Only top-p needs the candidates in order; without it the draw walks them by id (a
        // full sort of a 248k vocabulary costs more than a decode step of a small model).
        if p.top_p < 1.0 {
            cand.sort_unstable_by(by_logit_desc);
        } else if let Some(best) = (0..cand.len()).max_by(|&a, &b| by_logit_desc(&cand[b], &cand[a])) {
            cand.swap(0, best);
        }
        let max = cand[0].1;
        let mut sum = 0.0f32;
        for c in cand.iter_mut() {
            c.1 = (c.1 - max).exp();
            sum += c.1;
        }
        for c in cand.iter_mut() {
            c.1 /= sum;
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = cand.iter().position(|c| {
                acc += c.1;
                acc >= p.top_p
            });
            cand.truncate(keep.map_or(cand.len(), |i| i + 1));
        }
        if p.min_p > 0.0 {
            let floor = cand[0].1 * p.min_p;
            if p.top_p < 1.0 {
                let keep = cand.iter().take_while(|c| c.1 >= floor).count().max(1);
                cand.truncate(keep);
            } else {
                cand.retain(|c| c.1 >= floor);
            }
        }
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for c in cand.iter() {
            r -= c.1;
            if r <= 0.0 {
                return Choice { token: c.0, prob: Some(c.1 / total) };
            }
        }
        let last = cand[cand.len() - 1];
        Choice { token: last.0, prob: Some(last.1 / total) }
    }
}

/// Index and value of the largest logit (lowest index on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> (u32, f32) {
    // Two passes that vectorise: the maximum over lanes, then the first index holding it.
    let max =
        logits.chunks(16).map(|c| c.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })).fold(f32::NEG_INFINITY, f32::max);
    let index = logits.iter().position(|&x| x == max).unwrap_or(0);
    (index as u32, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams { seed: Some(7), ..Default::default() };
        f(&mut p);
        p
    }

    #[test]
    fn greedy_picks_the_maximum_and_first_on_ties() {
        let mut s = Sampler::new(params(|_| {}), &[]);
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0]).token, 1);
    }

    #[test]
    fn argmax_skips_nan_and_takes_the_first_maximum() {
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 3.0, f32::NAN]), (2, 3.0));
        let long: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32).collect();
        assert_eq!(argmax(&long).0 as usize, long.iter().position(|&x| x == 100.0).unwrap());
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(params(|p| p.repetition_penalty = 2.0), &[0]);
        assert_eq!(s.sample(&mut [3.0, 2.0]).token, 1, "3/2 < 2");
        let mut s = Sampler::new(params(|p| p.repetition_penalty = 2.0), &[0]);
        assert_eq!(s.sample(&mut [-1.0, -1.5]).token, 1, "-1*2 < -1.5");
    }

    #[test]
    fn presence_penalty_applies_to_generated_tokens_only() {
        let mut s = Sampler::new(params(|p| p.presence_penalty = 1.5), &[0]);
        assert_eq!(s.sample(&mut [2.0, 1.0]).token, 0);
        s.accept(0);
        assert_eq!(s.sample(&mut [2.0, 1.0]).token, 1);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(
                params(|p| {
                    p.temperature = 1.0;
                    p.seed = Some(seed);
                }),
                &[],
            );
            (0..20).map(|_| s.sample(&mut logits.clone()).token).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 1.0;
                p.top_k = 1;
            }),
            &[],
        );
        assert_eq!(s.sample(&mut logits.clone()).token, argmax(&logits).0);
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits = [5.0, 4.9, -5.0, -6.0];
        for f in [|p: &mut SamplingParams| p.top_p = 0.5, |p: &mut SamplingParams| p.min_p = 0.5] {
            let mut s = Sampler::new(
                params(|p| {
                    p.temperature = 1.0;
                    f(p);
                }),
                &[],
            );
            for _ in 0..200 {
                assert!(s.sample(&mut logits.clone()).token <= 1);
            }
        }
    }
}
