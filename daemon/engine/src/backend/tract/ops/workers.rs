//! The threads the tract backend's kernels share: one pool per loaded model, sized by
//! `model.threads`, kept for the model's life so that a decode step does not pay for creating
//! threads (about 150 matrix products per token, each a fraction of a millisecond).

use std::sync::Arc;

/// A cheap handle on the pool; ops hold one each. Compares equal to any other handle (ops
/// compare by configuration, and the pool is not part of it).
#[derive(Clone)]
pub struct Workers {
    /// The helpers: one thread fewer than the total, since the calling thread takes a share.
    pool: Option<Arc<rayon::ThreadPool>>,
    threads: usize,
}

impl Workers {
    /// `threads` threads in all: the caller and `threads - 1` helpers named `qwenedge-tract-N`.
    pub fn new(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let threads = threads.max(1);
        let pool = if threads > 1 {
            Some(Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads - 1).thread_name(|i| format!("qwenedge-tract-{i}")).build()?))
        } else {
            None
        };
        Ok(Self { pool, threads })
    }

    /// Threads that share the work, the caller's included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(offset, chunk)` for [`Self::threads`] near-equal chunks of `data` cut at multiples
    /// of `align` values (`offset`: where the chunk starts in `data`); the calling thread takes
    /// the first. Returns when all are done. There are no more runnable threads than
    /// `model.threads`, so on a small board the helpers do not compete with the caller for cores.
    pub fn for_chunks<T: Send>(&self, data: &mut [T], align: usize, f: impl Fn(usize, &mut [T]) + Sync) {
        let align = align.max(1);
        let per = (data.len() / align).div_ceil(self.threads).max(1) * align;
        let Some(pool) = &self.pool else { return f(0, data) };
        let mut chunks = data.chunks_mut(per).enumerate().map(|(i, c)| (i * per, c));
        let Some((_, first)) = chunks.next() else { return };
        let f = &f;
        pool.in_place_scope(|s| {
            for (i, chunk) in chunks {
                s.spawn(move |_| f(i, chunk));
            }
            f(0, first);
        });
    }
}

/// [`Workers::for_chunks`] on `workers`, or `f(0, data)` on the calling thread without them.
pub(crate) fn for_chunks<T: Send>(workers: Option<&Workers>, data: &mut [T], align: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    match workers {
        Some(workers) => workers.for_chunks(data, align, f),
        None => f(0, data),
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Workers({})", self.threads)
    }
}

impl PartialEq for Workers {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Workers {}
