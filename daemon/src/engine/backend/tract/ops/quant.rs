//! The 4-bit weight ops of the int4 export, computed as ONNX Runtime's CPU kernels compute
//! them, so greedy tokens agree with ONNX Runtime's:
//!
//! - `MatMulNBits`: `y = a · dequant(B)ᵀ (+ bias)`, with `B [N, K/bs, bs/2]` nibbles (low
//!   first), `scales [N, K/bs]` and optional packed 4-bit zero points (default 8). With
//!   `accuracy_level` 4 ONNX Runtime quantizes each block of `a` to int8 (scale `max|a|/127`,
//!   values times `127/max|a|`, rounded to nearest even) and accumulates integer block dot products scaled by both scales;
//!   that is reproduced here. Other levels use float32 arithmetic.
//! - `GatherBlockQuantized`: rows of a `[rows, cols/2]` nibble table picked by `indices` and
//!   dequantized as `(q - zero) * scale` with float32 scales (tract's own version stores them
//!   as float16). Data of higher rank is read as rows of its first axis, so the lookup can take
//!   the LM head's stored `[rows, blocks, block/2]` weights without a Reshape (see
//!   `onnx::edit::lookup_reads_stored_rows`).

use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::linear::{eval_op, kernel_op, typed_op};
use super::{built, f32s, tensor, Built, Kernel};

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
    /// Threads that share the output columns (set by the backend after loading).
    pub threads: usize,
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
    built(MatMulNBits { k, n, block, int8, zero_points: wired(3), bias: wired(5), threads: 1 })
}

/// The `i`-th 4-bit value of a packed byte slice, low nibble first.
fn nibble(bytes: &[u8], i: usize) -> u8 {
    (bytes[i / 2] >> (4 * (i % 2))) & 0x0f
}

/// Quantizes `a` to int8 with one scale per block of `block`, as ONNX Runtime does. `q` holds
/// `block` values per block (zero-padded), the even positions first and then the odd ones, so
/// that they line up with the low and high nibbles of the packed weights; `sums` gets each
/// block's sum (for the zero-point correction).
fn quantize_row(a: &[f32], block: usize, q: &mut [i8], scales: &mut [f32], sums: &mut [i32]) {
    let half = block / 2;
    for (((src, dst), s), sum) in a.chunks(block).zip(q.chunks_mut(block)).zip(scales.iter_mut()).zip(sums.iter_mut()) {
        let amax = src.iter().fold(0f32, |m, x| m.max(x.abs()));
        *s = amax / 127.0;
        // `127 / max` rather than `1 / scale`: the two differ in the last bit, and rows made of
        // few distinct magnitudes (dequantized embeddings) land exactly on .5 with ONNX Runtime's.
        let inv = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        *sum = 0;
        for (i, &x) in src.iter().enumerate() {
            let v = (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
            dst[(i % 2) * half + i / 2] = v;
            *sum += i32::from(v);
        }
    }
}

/// `Σ q[i] * nibble(i)` over one block: `q` is the block's activations as [`quantize_row`]
/// lays them out (even positions, then odd), `packed` its `q.len() / 2` weight bytes.
#[inline]
fn block_dot(q: &[i8], packed: &[u8]) -> i32 {
    let (even, odd) = q.split_at(q.len() / 2);
    even.iter().zip(odd).zip(packed).map(|((&e, &o), &b)| i32::from(e) * i32::from(b & 0x0f) + i32::from(o) * i32::from(b >> 4)).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{int8_columns, Activations, Weights};
    use std::arch::x86_64::*;

    /// Whether this CPU runs [`columns`] for blocks of `block` values.
    pub(super) fn usable(block: usize) -> bool {
        block % 32 == 0 && std::arch::is_x86_feature_detected!("avx2")
    }

    /// [`super::int8_columns`] with the AVX2 block dot product inlined.
    pub(super) fn columns(w: &Weights, x: &Activations, first: usize, out: &mut [f32]) {
        assert!(usable(w.block), "AVX2 and blocks of a multiple of 32 values");
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { columns_avx2(w, x, first, out) }
    }

    #[target_feature(enable = "avx2")]
    fn columns_avx2(w: &Weights, x: &Activations, first: usize, out: &mut [f32]) {
        int8_columns(w, x, first, out, |q, packed| block_dot(q, packed));
    }

    /// [`super::block_dot`] with AVX2: sixteen weight bytes become 32 unsigned nibbles (low
    /// ones in the first half, high ones in the second, matching the activations' layout),
    /// multiplied with the signed activations pairwise into 16-bit sums (at most 2·15·127, no
    /// saturation) and widened to 32 bits.
    #[target_feature(enable = "avx2")]
    pub(super) fn block_dot(q: &[i8], packed: &[u8]) -> i32 {
        let half = q.len() / 2;
        assert!(half % 16 == 0 && packed.len() >= half, "blocks of a multiple of 32 values");
        let mask = _mm_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        for j in (0..half).step_by(16) {
            // SAFETY: each load reads 16 bytes; j + 16 <= half <= packed.len() and
            // half + j + 16 <= q.len() (asserted above).
            let (b, even, odd) = unsafe {
                (
                    _mm_loadu_si128(packed.as_ptr().add(j).cast()),
                    _mm_loadu_si128(q.as_ptr().add(j).cast()),
                    _mm_loadu_si128(q.as_ptr().add(half + j).cast()),
                )
            };
            let lo = _mm_and_si128(b, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), mask);
            let prod = _mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), _mm256_set_m128i(odd, even));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(prod, ones));
        }
        let s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}

/// Below this many multiply-adds a call runs on the calling thread (spawning costs more).
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// The packed 4-bit weights of one `MatMulNBits` node.
struct Weights<'a> {
    b: &'a [u8],
    scales: &'a [f32],
    zp: Option<&'a [u8]>,
    k: usize,
    block: usize,
    blocks: usize,
}

/// The activations: float rows, and their int8 blocks with one scale and sum each when
/// quantized (`qa` laid out by [`quantize_row`], `block` values per block).
struct Activations<'a> {
    a: &'a [f32],
    qa: &'a [i8],
    sa: &'a [f32],
    qsum: &'a [i32],
    rows: usize,
    int8: bool,
}

/// Computes the columns `first..` that fit in `out` (column-major, `rows` values per column).
/// Per row and column the block results are summed in block order, as ONNX Runtime does.
fn columns(w: &Weights, x: &Activations, first: usize, out: &mut [f32]) {
    if x.int8 {
        #[cfg(target_arch = "x86_64")]
        if avx2::usable(w.block) {
            return avx2::columns(w, x, first, out);
        }
        int8_columns(w, x, first, out, block_dot);
    } else {
        float_columns(w, x, first, out);
    }
}

/// The zero point of column `col`, block `blk` (8 when the node has none).
#[inline]
fn zero_point(w: &Weights, col: usize, blk: usize) -> u8 {
    w.zp.map_or(8, |z| nibble(&z[col * w.blocks.div_ceil(2)..], blk))
}

/// [`columns`] with int8 activations: `Σ q·(w − zero) = Σ q·w − zero·Σ q` per block, in exact
/// integers, times both scales.
#[inline]
fn int8_columns(w: &Weights, x: &Activations, first: usize, out: &mut [f32], dot: impl Fn(&[i8], &[u8]) -> i32) {
    let (bs, blocks, blob) = (w.block, w.blocks, w.block / 2);
    for (c, ys) in out.chunks_mut(x.rows.max(1)).enumerate() {
        let col = first + c;
        let packed_col = &w.b[col * blocks * blob..][..blocks * blob];
        let scales = &w.scales[col * blocks..][..blocks];
        for (r, y) in ys.iter_mut().enumerate() {
            let (q, sa, qsum) = (&x.qa[r * blocks * bs..][..blocks * bs], &x.sa[r * blocks..][..blocks], &x.qsum[r * blocks..][..blocks]);
            let mut acc = 0f32;
            for (blk, ((packed, qb), scale)) in packed_col.chunks_exact(blob).zip(q.chunks_exact(bs)).zip(scales).enumerate() {
                let d = dot(qb, packed) - i32::from(zero_point(w, col, blk)) * qsum[blk];
                acc += d as f32 * (sa[blk] * scale);
            }
            *y = acc;
        }
    }
}

/// [`columns`] with float activations: each block dequantized once, used for every row.
fn float_columns(w: &Weights, x: &Activations, first: usize, out: &mut [f32]) {
    let (bs, blocks, blob) = (w.block, w.blocks, w.block / 2);
    let mut wf = vec![0f32; bs];
    for (c, ys) in out.chunks_mut(x.rows.max(1)).enumerate() {
        let col = first + c;
        for blk in 0..blocks {
            let packed = &w.b[(col * blocks + blk) * blob..][..blob];
            let zero = zero_point(w, col, blk) as i8;
            let scale = w.scales[col * blocks + blk];
            let len = bs.min(w.k - blk * bs);
            for (pair, &byte) in wf.chunks_exact_mut(2).zip(packed) {
                pair[0] = f32::from((byte & 0x0f) as i8 - zero) * scale;
                pair[1] = f32::from((byte >> 4) as i8 - zero) * scale;
            }
            for (r, y) in ys.iter_mut().enumerate() {
                *y += x.a[r * w.k + blk * bs..][..len].iter().zip(&wf[..len]).map(|(a, b)| a * b).sum::<f32>();
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
        let zp = zp_view.as_ref().map(|v| v.as_slice::<u8>()).transpose().with_context(|| format!("{OP}: only packed uint8 zero points are supported"))?;
        let bias = if self.bias { Some(f32s(OP, inputs, next)?) } else { None };
        let blob = bs / 2;
        let zp_row = blocks.div_ceil(2);
        if b.len() != n * blocks * blob || scales.len() != n * blocks || zp.is_some_and(|z| z.len() != n * zp_row) || bias.is_some_and(|v| v.len() != n) {
            bail!("{OP}: B {:?} / scales {:?} do not fit N={n}, K={k}, block_size={bs}", inputs[1].shape(), inputs[2].shape());
        }
        let shape = inputs[0].shape();
        if shape.last() != Some(&k) {
            bail!("{OP}: A is {shape:?}, its last axis is not K={k}");
        }
        let rows = a.len() / k.max(1);
        // Activations quantized once per call; every column reuses them.
        let quantized = if self.int8 { rows * blocks } else { 0 };
        let (mut qa, mut sa, mut qsum) = (vec![0i8; quantized * bs], vec![0f32; quantized], vec![0i32; quantized]);
        if self.int8 {
            let per_row = blocks * bs;
            for (((row, q), s), sum) in a.chunks(k).zip(qa.chunks_mut(per_row)).zip(sa.chunks_mut(blocks)).zip(qsum.chunks_mut(blocks)) {
                quantize_row(row, bs, q, s, sum);
            }
        }
        let w = Weights { b, scales, zp, k, block: bs, blocks };
        let acts = Activations { a, qa: &qa, sa: &sa, qsum: &qsum, rows, int8: self.int8 };
        let threads = self.threads.clamp(1, n.max(1));
        // Column-major results per thread, gathered into the row-major output.
        let mut y_cols = vec![0f32; n * rows];
        if threads == 1 || rows * n * k < PARALLEL_MIN_MACS {
            columns(&w, &acts, 0, &mut y_cols);
        } else {
            let per = n.div_ceil(threads);
            std::thread::scope(|scope| {
                let mut chunks = y_cols.chunks_mut(per * rows).enumerate();
                let (_, own) = chunks.next().expect("n > 0");
                for (i, chunk) in chunks {
                    let (w, acts) = (&w, &acts);
                    scope.spawn(move || columns(w, acts, i * per, chunk));
                }
                columns(&w, &acts, 0, own);
            });
        }
        let y = if rows == 1 {
            if let Some(bias) = bias {
                y_cols.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
            y_cols
        } else {
            let mut y = vec![0f32; rows * n];
            for (col, ys) in y_cols.chunks(rows.max(1)).enumerate() {
                let b = bias.map_or(0.0, |v| v[col]);
                for (r, &v) in ys.iter().enumerate() {
                    y[r * n + col] = v + b;
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
            let r = usize::try_from(i).ok().filter(|&r| r < rows).with_context(|| format!("{OP}: index {i} is outside the {rows}-row table"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block-dot kernel gives the plain loop's integers, on blocks of 32 and 64 with
    /// extreme values.
    #[test]
    fn block_dot_kernels_agree() {
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for block in [32, 64, 128] {
            for round in 0..50 {
                let q: Vec<i8> = (0..block).map(|i| if round == 0 { if i % 2 == 0 { 127 } else { -127 } } else { (next() % 255) as i8 }).collect();
                let packed: Vec<u8> = (0..block / 2).map(|_| if round == 0 { 0xff } else { next() as u8 }).collect();
                let want = block_dot(&q, &packed);
                #[cfg(target_arch = "x86_64")]
                if avx2::usable(block) {
                    // SAFETY: usable() checked that the CPU has AVX2.
                    assert_eq!(unsafe { avx2::block_dot(&q, &packed) }, want, "block {block}, round {round}");
                }
                let naive: i32 = (0..block).map(|i| {
                    let v = if i < block / 2 { packed[i] & 0x0f } else { packed[i - block / 2] >> 4 };
                    i32::from(q[i]) * i32::from(v)
                }).sum();
                assert_eq!(want, naive);
            }
        }
    }
}
