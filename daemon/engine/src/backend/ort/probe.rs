//! Checking a saved optimized session before it serves: a fixed probe (a short prefill and one
//! decode step) must give logits bit-identical to the session that packed the same weights at
//! load, and on every later load identical to those recorded when it was saved.

use std::path::PathBuf;

use super::optimized::{self, OptimizedCache};
use super::session::{self, plain};
use super::{runtime, OrtBackend, OrtOptions};
use crate::backend::{Backend, BackendError, Logits, LogitsWanted};
use crate::model::ModelSpec;

/// The SHA-256 of a list of floats' little-endian bytes.
pub(super) fn hash_logits(v: &[f32]) -> String {
    optimized::sha256_hex(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

/// The largest absolute difference of two equally long lists (NaN counts as infinite).
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| if x.is_nan() || y.is_nan() { f32::INFINITY } else { (x - y).abs() }).fold(0.0, f32::max)
}

impl OrtBackend {
    /// Checks and publishes a saved session: it is used only when it answers the probe exactly
    /// as `packed`, the session that packed the same weights at load; otherwise a plain session
    /// serves and the saved files are deleted.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_saving(
        rt: &runtime::Runtime,
        spec: &ModelSpec,
        opts: &OrtOptions,
        graph: Option<&[u8]>,
        last_only: bool,
        (cache, identity): (&OptimizedCache, &str),
        mut packed: Self,
        (tmp, entry): (PathBuf, PathBuf),
    ) -> Result<Self, BackendError> {
        let started = std::time::Instant::now();
        let want = match packed.probe() {
            Ok(want) => want,
            Err(e) => {
                // Nothing to check the saved files against: serve the session that packed
                // the weights, and save them another time.
                let _ = std::fs::remove_dir_all(&tmp);
                tracing::warn!(error = %e, "the optimized model could not be checked; serving without it");
                return Ok(packed);
            }
        };
        drop(packed);
        // The session that packed the weights at load is gone: its pages leave the allocator's pools.
        crate::release_freed_memory();
        let checked = cache.prepare(&tmp).and_then(|model| {
            let created = session::load_saved(rt, spec, opts, &model).map_err(|e| e.to_string())?;
            let mut backend = Self::from_session(rt, spec, opts, created, last_only).map_err(|e| e.to_string())?;
            let got = backend.probe().map_err(|e| e.to_string())?;
            if got != want {
                return Err(format!("its logits differ from the packed session's by up to {}", max_diff(&got, &want)));
            }
            Ok(backend)
        });
        match checked {
            Ok(backend) => {
                match cache.publish(&tmp, &entry, identity, &hash_logits(&want)) {
                    Ok(()) => {
                        tracing::info!(entry = %entry.display(), ms = started.elapsed().as_millis() as u64, "optimized model saved with its pre-packed weights")
                    }
                    Err(why) => tracing::warn!(reason = %why, "could not keep the saved optimized model"),
                }
                Ok(backend)
            }
            Err(why) => {
                let _ = std::fs::remove_dir_all(&tmp);
                tracing::warn!(reason = %why, "the saved optimized model is not used");
                Self::from_session(rt, spec, opts, plain(rt, spec, opts, graph)?, last_only)
            }
        }
    }

    /// The logits of a fixed short prefill and one decode step after it (both kernel paths:
    /// many rows and one), to compare two sessions of the same model.
    pub(super) fn probe(&mut self) -> Result<Vec<f32>, BackendError> {
        self.probing = true;
        let result = self.probe_runs();
        self.probing = false;
        result
    }

    fn probe_runs(&mut self) -> Result<Vec<f32>, BackendError> {
        let mut seq = self.new_sequence()?;
        let mut out = Logits::default();
        let tokens: Vec<u32> = (0..5u32).map(|i| i * 7919 % self.spec.vocab_size as u32).collect();
        self.forward(&mut seq, &tokens, LogitsWanted::Last, &mut out)?;
        let mut all = std::mem::take(&mut out.data);
        self.forward(&mut seq, &[11], LogitsWanted::Last, &mut out)?;
        all.extend_from_slice(&out.data);
        Ok(all)
    }
}
