//! The 4-bit weight ops of the int4 export, computed as ONNX Runtime's CPU kernels compute
//! them, so greedy tokens agree with ONNX Runtime's:
//!
//! - `MatMulNBits`: `y = a · dequant(B)ᵀ (+ bias)`, with `B [N, K/bs, bs/2]` nibbles (low
//!   first), `scales [N, K/bs]` and optional packed 4-bit zero points (default 8). With
//!   `accuracy_level` 4 ONNX Runtime quantizes each block of `a` to int8 and accumulates
//!   integer block dot products scaled by both scales; that is reproduced in [`int8`] (with an
//!   AVX2 kernel on x86-64 and a NEON one on aarch64). Other levels use float32 arithmetic.
//! - `GatherBlockQuantized`: rows of a `[rows, cols/2]` nibble table picked by `indices` and
//!   dequantized as `(q - zero) * scale` with float32 scales (tract's own version stores them
//!   as float16). Data of higher rank is read as rows of its first axis, so the lookup can take
//!   the LM head's stored `[rows, blocks, block/2]` weights without a Reshape (see
//!   `onnx::edit::lookup_reads_stored_rows`).

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

#[cfg(target_arch = "x86_64")]
mod avx2;
mod int8;
#[cfg(target_arch = "aarch64")]
mod neon;

use super::linear::{eval_op, kernel_op, typed_op};
use super::{built, f32s, tensor, Built, Kernel};
use int8::{Int8Rows, Weights};

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatMulNBits {
    /// Reduction length.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// Quantization block length along `k`.
    pub block: usize,
    /// Quantize activations to int8 per block (ONNX Runtime's `accuracy_level` 4).
    pub int8: bool,
    /// Whether the zero-point input is wired.
    pub zero_points: bool,
    /// Whether the bias input is wired.
    pub bias: bool,
    /// The threads that share the output columns (set by the backend after loading; the
    /// calling thread alone when absent).
    pub workers: Option<super::Workers>,
}

pub(super) fn mat_mul_nbits(_: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    let name = &node.name;
    if node.get_attr_opt::<i64>("bits")?.unwrap_or(4) != 4 {
        bail!("MatMulNBits node '{name}': only 4-bit weights are supported");
    }
    let (k, n, block): (usize, usize, usize) = (node.get_attr("K")?, node.get_attr("N")?, node.get_attr("block_size")?);
    if block < 16 || !block.is_power_of_two() {
        bail!("MatMulNBits node '{name}': block_size {block} is not a power of two of at least 16");
    }
    let wired = |ix: usize| node.input.get(ix).is_some_and(|s| !s.is_empty());
    if wired(4) {
        bail!("MatMulNBits node '{name}': g_idx is not supported");
    }
    if !(wired(0) && wired(1) && wired(2)) {
        bail!("MatMulNBits node '{name}': A, B and scales are required");
    }
    let int8 = node.get_attr_opt::<i64>("accuracy_level")?.unwrap_or(0) == 4;
    built(MatMulNBits { k, n, block, int8, zero_points: wired(3), bias: wired(5), workers: None })
}

/// The `i`-th 4-bit value of a packed byte slice, low nibble first.
fn nibble(bytes: &[u8], i: usize) -> u8 {
    (bytes[i / 2] >> (4 * (i % 2))) & 0x0f
}

/// Below this many multiply-adds a call runs on the calling thread (handing work to the other
/// threads costs more).
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// Float activations (`accuracy_level` below 4): columns `first..` that fit in `out`
/// (column-major, `rows` values per column), each block dequantized once for every row.
fn float_columns(w: &Weights, a: &[f32], k: usize, rows: usize, first: usize, out: &mut [f32]) {
    let (bs, blocks, blob) = (w.block, w.blocks, w.block / 2);
    let mut wf = vec![0f32; bs];
    for (c, ys) in out.chunks_mut(rows.max(1)).enumerate() {
        let col = first + c;
        for blk in 0..blocks {
            let packed = &w.b[(col * blocks + blk) * blob..][..blob];
            let zero = w.zero_point(col, blk) as i8;
            let scale = w.scales[col * blocks + blk];
            let len = bs.min(k - blk * bs);
            for (pair, &byte) in wf.chunks_exact_mut(2).zip(packed) {
                pair[0] = f32::from((byte & 0x0f) as i8 - zero) * scale;
                pair[1] = f32::from((byte >> 4) as i8 - zero) * scale;
            }
            for (r, y) in ys.iter_mut().enumerate() {
                *y += a[r * k + blk * bs..][..len].iter().zip(&wf[..len]).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
}

impl MatMulNBits {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        const OP: &str = "MatMulNBits";
        let (k, n, bs) = (self.k, self.n, self.block);
        let blocks = k.div_ceil(bs);
        let a = f32s(OP, inputs, 0)?;
        let b_view = inputs[1].try_as_plain_ram()?;
        let b = b_view.as_slice::<u8>().with_context(|| format!("{OP}: B is not uint8"))?;
        let scales = f32s(OP, inputs, 2)?;
        let mut next = 3;
        let zp_view = if self.zero_points {
            next += 1;
            Some(inputs[3].try_as_plain_ram()?)
        } else {
            None
        };
        let zp = zp_view
            .as_ref()
            .map(|v| v.as_slice::<u8>())
            .transpose()
            .with_context(|| format!("{OP}: only packed uint8 zero points are supported"))?;
        let bias = if self.bias { Some(f32s(OP, inputs, next)?) } else { None };
        let blob = bs / 2;
        let zp_row = blocks.div_ceil(2);
        if b.len() != n * blocks * blob
            || scales.len() != n * blocks
            || zp.is_some_and(|z| z.len() != n * zp_row)
            || bias.is_some_and(|v| v.len() != n)
        {
            bail!("{OP}: B {:?} / scales {:?} do not fit N={n}, K={k}, block_size={bs}", inputs[1].shape(), inputs[2].shape());
        }
        let shape = inputs[0].shape();
        if shape.last() != Some(&k) {
            bail!("{OP}: A is {shape:?}, its last axis is not K={k}");
        }
        let rows = a.len() / k.max(1);
        let w = Weights { b, scales, zp, block: bs, blocks };
        // Activations quantized once per call; every column reuses them.
        let quantized = self.int8.then(|| Int8Rows::quantize(a, k, bs));
        let columns = |first: usize, out: &mut [f32]| match &quantized {
            Some(x) => int8::columns(&w, x, first, out),
            None => float_columns(&w, a, k, rows, first, out),
        };
        // Column-major results, gathered into the row-major output below.
        let mut y_cols = vec![0f32; n * rows];
        // Whole tiles of four columns per thread.
        let workers = self.workers.as_ref().filter(|_| rows * n * k >= PARALLEL_MIN_MACS);
        super::for_chunks(workers, &mut y_cols, 4 * rows, |at, chunk| columns(at / rows, chunk));
        let y = if rows == 1 {
            if let Some(bias) = bias {
                y_cols.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
            y_cols
        } else {
            // Transposed 32 columns at a time, so that the reads stay within a few cache lines
            // per row and the writes are runs.
            let mut y = vec![0f32; rows * n];
            for c0 in (0..n).step_by(32) {
                let cols = c0..(c0 + 32).min(n);
                for (r, out) in y.chunks_exact_mut(n).enumerate() {
                    for c in cols.clone() {
                        out[c] = y_cols[c * rows + r] + bias.map_or(0.0, |v| v[c]);
                    }
                }
            }
            y
        };
        let mut out_shape = shape.to_vec();
        *out_shape.last_mut().expect("rank checked") = n;
        Ok(tvec![tensor(&out_shape, y)?])
    }
}

kernel_op!(MatMulNBits, "MatMulNBits");
eval_op!(MatMulNBits);
typed_op!(MatMulNBits, |op, inputs| {
    let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
    let last = shape.last_mut().context("MatMulNBits: A is a scalar")?;
    *last = op.n.to_dim();
    Ok(tvec![f32::fact(shape)])
});

impl Kernel for MatMulNBits {
    const OUTPUTS: usize = 1;
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].rank, &inputs[0].rank)?;
        let n = self.n.to_dim();
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            for ax in 0..rank.saturating_sub(1) {
                s.equals(&outputs[0].shape[ax], &inputs[0].shape[ax])?;
            }
            s.equals(&outputs[0].shape[rank - 1], n.clone())
        })
    }
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatherBlockQuantized {
    /// Quantization block length along a row.
    pub block: usize,
    /// Whether the zero-point input is wired.
    pub zero_points: bool,
}

pub(super) fn gather_block_quantized(_: &tract_onnx::model::ParsingContext, node: &NodeProto) -> Built {
    let name = &node.name;
    if node.get_attr_opt::<i64>("bits")?.unwrap_or(4) != 4 {
        bail!("GatherBlockQuantized node '{name}': only 4-bit tables are supported");
    }
    if node.get_attr_opt::<i64>("gather_axis")?.unwrap_or(0) != 0 {
        bail!("GatherBlockQuantized node '{name}': only gather_axis 0 is supported");
    }
    if !matches!(node.get_attr_opt::<i64>("quantize_axis")?.unwrap_or(1), 1 | -1) {
        bail!("GatherBlockQuantized node '{name}': only the last axis can be quantized");
    }
    let block: usize = node.get_attr_opt("block_size")?.unwrap_or(128);
    if block < 16 || !block.is_power_of_two() {
        bail!("GatherBlockQuantized node '{name}': block_size {block} is not a power of two of at least 16");
    }
    let zero_points = node.input.get(3).is_some_and(|s| !s.is_empty());
    built(GatherBlockQuantized { block, zero_points })
}

impl GatherBlockQuantized {
    fn run(&self, inputs: &[TValue]) -> TractResult<TVec<TValue>> {
        const OP: &str = "GatherBlockQuantized";
        let data_view = inputs[0].try_as_plain_ram()?;
        let data = data_view.as_slice::<u8>().with_context(|| format!("{OP}: data is not uint8"))?;
        let idx_t = inputs[1].cast_to::<i64>()?;
        let idx = idx_t.try_as_plain_ram()?.as_slice::<i64>()?.to_vec();
        let scales = f32s(OP, inputs, 2)?;
        let zp_view = if self.zero_points { Some(inputs[3].try_as_plain_ram()?) } else { None };
        let zp = zp_view.as_ref().map(|v| v.as_slice::<u8>()).transpose().with_context(|| format!("{OP}: zero points are not uint8"))?;
        let (rows, packed) = match inputs[0].shape() {
            [rows, rest @ ..] if !rest.is_empty() => (*rows, rest.iter().product::<usize>()),
            other => bail!("{OP}: data is not [rows, cols/2]: {other:?}"),
        };
        let cols = packed * 2;
        let blocks = cols.div_ceil(self.block);
        if scales.len() != rows * blocks || zp.is_some_and(|z| z.len() != rows * blocks.div_ceil(2)) {
            bail!("{OP}: scales {:?} do not fit {rows} rows of {cols} values in blocks of {}", inputs[2].shape(), self.block);
        }
        let mut y = vec![0f32; idx.len() * cols];
        for (&i, out) in idx.iter().zip(y.chunks_mut(cols)) {
            let r = usize::try_from(i)
                .ok()
                .filter(|&r| r < rows)
                .with_context(|| format!("{OP}: index {i} is outside the {rows}-row table"))?;
            let src = &data[r * packed..][..packed];
            for (c, o) in out.iter_mut().enumerate() {
                let blk = c / self.block;
                let zero = zp.map_or(8, |z| nibble(&z[r * blocks.div_ceil(2)..], blk)) as i32;
                *o = (i32::from(nibble(src, c)) - zero) as f32 * scales[r * blocks + blk];
            }
        }
        let mut shape = inputs[1].shape().to_vec();
        shape.push(cols);
        Ok(tvec![tensor(&shape, y)?])
    }
}

kernel_op!(GatherBlockQuantized, "GatherBlockQuantized");
eval_op!(GatherBlockQuantized);
/// Values per row of a lookup table `[rows, …]` of packed nibbles.
fn row_values(data: &[TDim]) -> TDim {
    data.iter().skip(1).fold(2.to_dim(), |acc, d| acc * d.clone())
}

typed_op!(GatherBlockQuantized, |_op, inputs| {
    let mut shape: TVec<TDim> = inputs[1].shape.iter().cloned().collect();
    shape.push(row_values(&inputs[0].shape));
    Ok(tvec![f32::fact(shape)])
});

impl Kernel for GatherBlockQuantized {
    const OUTPUTS: usize = 1;
    fn relate<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, data, idx| {
            let mut shape: TVec<TDim> = idx.iter().cloned().collect();
            shape.push(row_values(&data));
            s.equals(&outputs[0].shape, shape)
        })
    }
}
