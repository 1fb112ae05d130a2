//! One sequence's state on the ONNX Runtime backends: its KV buffers (with spare capacity,
//! grown by doubling; the static graphs' fixed buffer is one capacity) and linear-state
//! buffers, and the compact snapshots of them that the prefix cache keeps and the disk store
//! saves.

use ort::memory::Allocator;
use ort::value::Tensor;

use super::{all_states, is_kv, run_err};
use crate::backend::{BackendError, Sequence, Snapshot};
use crate::model::{ModelSpec, StateTensor};

/// Positions of KV capacity allocated at least, so short prompts do not regrow at once.
pub(super) const MIN_KV_CAPACITY: usize = 256;

/// One sequence's state: KV buffers with `capacity` positions and one buffer per linear state
/// tensor. `broken` is set when a step failed after the runtime may have written into them.
pub(super) struct OrtState {
    /// Changes whenever the set of buffers changes, so the backend knows when to rebind.
    pub(super) id: u64,
    pub(super) kv: Vec<Tensor<f32>>,
    pub(super) capacity: usize,
    pub(super) linear: Vec<Tensor<f32>>,
    pub(super) broken: bool,
}

/// A snapshot's content: each KV tensor trimmed to `[heads, len, head_dim]`, each linear state
/// tensor as is, in the order of the backend's `kv` and `linear` lists.
struct OrtSnapshot {
    kv: Vec<Vec<f32>>,
    linear: Vec<Vec<f32>>,
}

impl OrtState {
    /// `Ok` unless an earlier failed step may have left the buffers half-updated.
    pub(super) fn usable(&self) -> Result<(), BackendError> {
        if self.broken {
            return Err(BackendError::Run("this sequence's state was lost in an earlier failed step".into()));
        }
        Ok(())
    }
}

pub(super) fn next_state_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A zero-filled tensor of `[1, dims...]`.
pub(super) fn zeros(allocator: &Allocator, dims: &[usize]) -> Result<Tensor<f32>, BackendError> {
    let shape: Vec<usize> = std::iter::once(1).chain(dims.iter().copied()).collect();
    let mut t = Tensor::<f32>::new(allocator, shape).map_err(run_err)?;
    t.extract_tensor_mut().1.fill(0.0);
    Ok(t)
}

/// Copies the first `len` positions of each of `heads` heads from `src`, laid out
/// `[heads, src_cap, dim]`, into `dst`, laid out `[heads, dst_cap, dim]`.
fn copy_positions(src: &[f32], src_cap: usize, dst: &mut [f32], dst_cap: usize, (heads, len, dim): (usize, usize, usize)) {
    for h in 0..heads {
        dst[h * dst_cap * dim..][..len * dim].copy_from_slice(&src[h * src_cap * dim..][..len * dim]);
    }
}

/// A KV buffer `[1, heads, capacity, head_dim]` holding the first `len` positions of `old`.
pub(super) fn grow_kv(
    allocator: &Allocator,
    t: &StateTensor,
    old: Option<(&Tensor<f32>, usize)>,
    capacity: usize,
    len: usize,
) -> Result<Tensor<f32>, BackendError> {
    let (heads, dim) = (t.shape[0], t.shape[2]);
    let mut new = zeros(allocator, &[heads, capacity, dim])?;
    if let Some((old, old_cap)) = old {
        copy_positions(old.extract_tensor().1, old_cap, new.extract_tensor_mut().1, capacity, (heads, len, dim));
    }
    Ok(new)
}

/// The state tensors of a model and what their buffers are allocated with.
pub(super) struct Layout {
    /// The KV tensors of the full-attention layers.
    pub(super) kv: Vec<StateTensor>,
    /// The conv and recurrent tensors of the linear-attention layers.
    pub(super) linear: Vec<StateTensor>,
    pub(super) allocator: Allocator,
    /// The most positions a KV buffer holds.
    pub(super) context_length: usize,
}

impl Layout {
    /// `spec`'s state tensors, KV buffers of at most `context_length` positions.
    pub(super) fn of(spec: &ModelSpec, context_length: usize) -> Self {
        let (kv, linear) = all_states(spec).cloned().partition(|t| is_kv(spec, t));
        Self { kv, linear, allocator: Allocator::default(), context_length }
    }

    /// A fresh sequence: linear state zeroed, KV buffers allocated on the first step.
    pub(super) fn new_sequence(&self) -> Result<Sequence, BackendError> {
        let linear = self.linear.iter().map(|t| zeros(&self.allocator, &t.shape)).collect::<Result<Vec<_>, BackendError>>()?;
        Ok(Sequence { len: 0, state: Box::new(OrtState { id: next_state_id(), kv: Vec::new(), capacity: 0, linear, broken: false }) })
    }

    /// Makes room for `need` positions in every KV buffer (allocating them on the first step).
    pub(super) fn reserve(&self, state: &mut OrtState, len: usize, need: usize) -> Result<(), BackendError> {
        if state.kv.is_empty() && !self.kv.is_empty() {
            state.kv = self.kv.iter().map(|t| grow_kv(&self.allocator, t, None, 0, 0)).collect::<Result<_, _>>()?;
            state.id = next_state_id();
        }
        if need <= state.capacity {
            return Ok(());
        }
        let capacity = need.max(state.capacity * 2).max(MIN_KV_CAPACITY).min(self.context_length);
        for (t, buf) in self.kv.iter().zip(state.kv.iter_mut()) {
            *buf = grow_kv(&self.allocator, t, Some((buf, state.capacity)), capacity, len)?;
        }
        state.capacity = capacity;
        state.id = next_state_id();
        Ok(())
    }

    pub(super) fn fork(&self, seq: &Sequence) -> Result<Sequence, BackendError> {
        let state = seq.state.downcast_ref::<OrtState>().ok_or(BackendError::ForeignState)?;
        let copy = |src: &Tensor<f32>| -> Result<Tensor<f32>, BackendError> {
            let dims: Vec<usize> = src.shape().iter().map(|&d| d as usize).collect();
            let mut dst = Tensor::<f32>::new(&self.allocator, dims).map_err(run_err)?;
            dst.extract_tensor_mut().1.copy_from_slice(src.extract_tensor().1);
            Ok(dst)
        };
        let kv = state.kv.iter().map(copy).collect::<Result<Vec<_>, _>>()?;
        let linear = state.linear.iter().map(copy).collect::<Result<Vec<_>, _>>()?;
        let state = OrtState { id: next_state_id(), kv, capacity: state.capacity, linear, broken: state.broken };
        Ok(Sequence { len: seq.len, state: Box::new(state) })
    }

    pub(super) fn snapshot(&self, seq: &Sequence) -> Result<Snapshot, BackendError> {
        let state = seq.state.downcast_ref::<OrtState>().ok_or(BackendError::ForeignState)?;
        state.usable()?;
        let len = seq.len;
        let kv = self
            .kv
            .iter()
            .zip(&state.kv)
            .map(|(t, buf)| {
                let (heads, dim) = (t.shape[0], t.shape[2]);
                let mut out = vec![0.0; heads * len * dim];
                copy_positions(buf.extract_tensor().1, state.capacity, &mut out, len, (heads, len, dim));
                out
            })
            .collect::<Vec<_>>();
        let linear = state.linear.iter().map(|t| t.extract_tensor().1.to_vec()).collect::<Vec<_>>();
        let floats: usize = kv.iter().chain(&linear).map(Vec::len).sum();
        Ok(Snapshot { len, bytes: floats * std::mem::size_of::<f32>(), state: Box::new(OrtSnapshot { kv, linear }) })
    }

    pub(super) fn restore(&self, snap: &Snapshot, room: usize) -> Result<Sequence, BackendError> {
        let saved = snap.state.downcast_ref::<OrtSnapshot>().ok_or(BackendError::ForeignState)?;
        let len = snap.len;
        if !self.fits(len, saved) {
            return Err(BackendError::ForeignState);
        }
        let linear = self
            .linear
            .iter()
            .zip(&saved.linear)
            .map(|(t, v)| {
                let mut buf = zeros(&self.allocator, &t.shape)?;
                buf.extract_tensor_mut().1.copy_from_slice(v);
                Ok(buf)
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        let (kv, capacity) = if saved.kv.is_empty() {
            (Vec::new(), 0)
        } else {
            let capacity = (len + room).max(MIN_KV_CAPACITY).min(self.context_length).max(len);
            let kv = self
                .kv
                .iter()
                .zip(&saved.kv)
                .map(|(t, v)| {
                    let (heads, dim) = (t.shape[0], t.shape[2]);
                    let mut buf = zeros(&self.allocator, &[heads, capacity, dim])?;
                    copy_positions(v, len, buf.extract_tensor_mut().1, capacity, (heads, len, dim));
                    Ok(buf)
                })
                .collect::<Result<Vec<_>, BackendError>>()?;
            (kv, capacity)
        };
        let state = OrtState { id: next_state_id(), kv, capacity, linear, broken: false };
        Ok(Sequence { len, state: Box::new(state) })
    }

    pub(super) fn parts(&self, snap: &Snapshot, each: &mut dyn FnMut(&[f32])) -> Result<(), BackendError> {
        let saved = snap.state.downcast_ref::<OrtSnapshot>().ok_or(BackendError::ForeignState)?;
        saved.kv.iter().chain(&saved.linear).for_each(|p| each(p));
        Ok(())
    }

    pub(super) fn snapshot_of_parts(&self, len: usize, mut parts: Vec<Vec<f32>>) -> Result<Snapshot, BackendError> {
        if parts.len() != self.kv.len() + self.linear.len() {
            return Err(BackendError::ForeignState);
        }
        let linear = parts.split_off(self.kv.len());
        let saved = OrtSnapshot { kv: parts, linear };
        if !self.fits(len, &saved) {
            return Err(BackendError::ForeignState);
        }
        let floats: usize = saved.kv.iter().chain(&saved.linear).map(Vec::len).sum();
        Ok(Snapshot { len, bytes: floats * std::mem::size_of::<f32>(), state: Box::new(saved) })
    }

    /// Whether `saved` holds `len` positions of this model's state.
    fn fits(&self, len: usize, saved: &OrtSnapshot) -> bool {
        let kv_fits = saved.kv.len() == self.kv.len() || (len == 0 && saved.kv.is_empty());
        let kv_shapes = self.kv.iter().zip(&saved.kv).all(|(t, v)| v.len() == t.shape[0] * len * t.shape[2]);
        let linear_shapes = saved.linear.len() == self.linear.len()
            && self.linear.iter().zip(&saved.linear).all(|(t, v)| v.len() == t.shape.iter().product::<usize>());
        kv_fits && kv_shapes && linear_shapes
    }
}
