//! The int8 × 4-bit products of `MatMulNBits` at `accuracy_level` 4.
//!
//! The activations are quantized to int8 per weight block as ONNX Runtime does (scale
//! `max|a|/127`, values times `127/max|a|`, rounded to nearest even) and laid out for the
//! kernels: each 64-value unit holds its 32 even-position values, then its 32 odd ones, which
//! line up with the low and high nibbles of the unit's 32 packed weight bytes. A unit is eight
//! lanes of eight values (lane `l`: values `8l..8l+8`); blocks are at least 16 values long, so a
//! lane lies inside one block.
//!
//! Every kernel does the same arithmetic, so x86-64 and aarch64 give the same bits: per lane the
//! exact integer `Σ q·w − zero·Σ q`, converted to float and fused-multiply-added with
//! `scale_a · scale_w` into that lane's accumulator, unit after unit; at the end the eight
//! accumulators are added as `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))` ([`finish`]).

/// Values per unit.
pub(super) const UNIT: usize = 64;
/// Lanes per unit.
pub(super) const LANES: usize = 8;

/// The packed 4-bit weights of one `MatMulNBits` node: `B [N, blocks, block/2]`, scales
/// `[N, blocks]`, optional packed zero points `[N, ceil(blocks/2)]` (8 when absent).
pub(super) struct Weights<'a> {
    pub(super) b: &'a [u8],
    pub(super) scales: &'a [f32],
    pub(super) zp: Option<&'a [u8]>,
    pub(super) block: usize,
    pub(super) blocks: usize,
}

impl Weights<'_> {
    /// Packed bytes per column.
    pub(super) fn column_bytes(&self) -> usize {
        self.blocks * self.block / 2
    }

    /// The zero point of column `col`, block `blk`.
    #[inline]
    pub(super) fn zero_point(&self, col: usize, blk: usize) -> i32 {
        self.zp.map_or(8, |z| i32::from(super::nibble(&z[col * self.blocks.div_ceil(2)..], blk)))
    }

    /// Weight scale and zero point of each lane of unit `u` of column `col` (zero past the last
    /// block).
    pub(super) fn lane_params(&self, col: usize, u: usize) -> ([f32; LANES], [i32; LANES]) {
        let (mut scale, mut zero) = ([0f32; LANES], [0i32; LANES]);
        for l in 0..LANES {
            let blk = (u * UNIT + 8 * l) / self.block;
            if blk < self.blocks {
                scale[l] = self.scales[col * self.blocks + blk];
                zero[l] = self.zero_point(col, blk);
            }
        }
        (scale, zero)
    }

    /// The 32 packed bytes of unit `u` of column `col`, zero-padded past the column's end.
    #[inline]
    pub(super) fn unit_bytes(&self, col: usize, u: usize) -> [u8; 32] {
        let n = self.column_bytes();
        let start = (u * 32).min(n);
        let src = &self.b[col * n + start..col * n + (start + 32).min(n)];
        let mut out = [0u8; 32];
        out[..src.len()].copy_from_slice(src);
        out
    }
}

/// One call's activation rows, quantized and laid out for the kernels (see the module docs).
pub(super) struct Int8Rows {
    pub(super) rows: usize,
    /// Units per row.
    pub(super) units: usize,
    /// `rows × units × 64` int8 values, evens then odds per unit.
    pub(super) q: Vec<i8>,
    /// `rows × units × 8`: each lane's activation scale (its block's).
    pub(super) scale: Vec<f32>,
    /// `rows × units × 8`: each lane's sum of int8 values.
    pub(super) sum: Vec<i32>,
}

impl Int8Rows {
    /// Quantizes the rows of `a` (`k` values each) in blocks of `block`.
    pub(super) fn quantize(a: &[f32], k: usize, block: usize) -> Self {
        let rows = a.len() / k.max(1);
        let units = (k.div_ceil(block) * block).div_ceil(UNIT);
        let mut x = Int8Rows {
            rows,
            units,
            q: vec![0; rows * units * UNIT],
            scale: vec![0.0; rows * units * LANES],
            sum: vec![0; rows * units * LANES],
        };
        let mut inv = vec![0f32; k.div_ceil(block)];
        for (r, row) in a.chunks_exact(k).enumerate() {
            let q = &mut x.q[r * units * UNIT..][..units * UNIT];
            let (scale, sum) = (&mut x.scale[r * units * LANES..][..units * LANES], &mut x.sum[r * units * LANES..][..units * LANES]);
            for ((b, src), inv) in row.chunks(block).enumerate().zip(&mut inv) {
                let amax = abs_max(src);
                // `127 / max` rather than `1 / scale`: the two differ in the last bit, and rows
                // made of few distinct magnitudes (dequantized embeddings) land exactly on .5
                // with ONNX Runtime's.
                *inv = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                scale[b * block / 8..(b + 1) * block / 8].fill(amax / 127.0);
            }
            let shift = block.trailing_zeros();
            for (u, src) in row.chunks(UNIT).enumerate() {
                let (even, odd) = q[u * UNIT..][..UNIT].split_at_mut(32);
                for l in 0..LANES {
                    let s = inv.get((u * UNIT + 8 * l) >> shift).copied().unwrap_or(0.0);
                    let mut total = 0;
                    for j in 4 * l..4 * l + 4 {
                        let (e, o) = (src.get(2 * j).map_or(0, |&v| to_int8(v * s)), src.get(2 * j + 1).map_or(0, |&v| to_int8(v * s)));
                        (even[j], odd[j]) = (e, o);
                        total += i32::from(e) + i32::from(o);
                    }
                    sum[u * LANES + l] = total;
                }
            }
        }
        x
    }

    /// Row `r`'s unit `u`: its 64 values, lane scales and lane sums.
    #[inline]
    pub(super) fn unit(&self, r: usize, u: usize) -> (&[i8], &[f32], &[i32]) {
        let i = r * self.units + u;
        (&self.q[i * UNIT..][..UNIT], &self.scale[i * LANES..][..LANES], &self.sum[i * LANES..][..LANES])
    }
}

/// The largest magnitude in `v` (NaNs ignored), with eight independent maxima so that it
/// vectorizes.
fn abs_max(v: &[f32]) -> f32 {
    let mut m = [0f32; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (m, x) in m.iter_mut().zip(c) {
            *m = m.max(x.abs());
        }
    }
    chunks.remainder().iter().fold(m.iter().fold(0f32, |a, &b| a.max(b)), |a, x| a.max(x.abs()))
}

/// `v` (at most 127 in magnitude, or NaN) rounded to the nearest integer, ties to even, as
/// int8. Adding and subtracting 1.5·2²³ rounds in the FPU's default mode, which is ties to even;
/// unlike `round_ties_even` it needs no library call on x86-64 without SSE4.1.
#[inline]
fn to_int8(v: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    ((v + MAGIC) - MAGIC).clamp(-127.0, 127.0) as i8
}

/// The eight lane accumulators added in the fixed order every kernel uses.
#[inline]
pub(super) fn finish(a: [f32; LANES]) -> f32 {
    let s = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// Each lane's `Σ q·w` over one unit (`q`: evens then odds, `w`: 32 packed bytes).
#[inline]
pub(super) fn unit_dots(w: &[u8; 32], q: &[i8]) -> [i32; LANES] {
    let (even, odd) = q.split_at(32);
    std::array::from_fn(|l| {
        (4 * l..4 * l + 4).map(|j| i32::from(even[j]) * i32::from(w[j] & 0x0f) + i32::from(odd[j]) * i32::from(w[j] >> 4)).sum()
    })
}

/// Walks a column-major output of `rows` values per column and `cols` columns in the tiles the
/// SIMD kernels compute: four columns × one row when there is one row (decoding: the columns
/// share the activations), else one column × up to four rows (prefill: each unpacked unit of
/// weights serves four rows). Calls `tile(columns, rows, first column, first row)`.
pub(super) fn tiles(rows: usize, cols: usize, mut tile: impl FnMut(usize, usize, usize, usize)) {
    if rows == 1 {
        let whole = cols / 4 * 4;
        (0..whole).step_by(4).for_each(|c| tile(4, 1, c, 0));
        (whole..cols).for_each(|c| tile(1, 1, c, 0));
        return;
    }
    for c in 0..cols {
        for r in (0..rows).step_by(4) {
            tile(1, (rows - r).min(4), c, r);
        }
    }
}

/// Portable kernel: columns `first..` that fit in `out` (column-major, `x.rows` per column).
pub(super) fn portable(w: &Weights, x: &Int8Rows, first: usize, out: &mut [f32]) {
    let shift = w.block.trailing_zeros();
    let full = w.column_bytes() / 32;
    for (c, ys) in out.chunks_mut(x.rows.max(1)).enumerate() {
        let col = first + c;
        let bytes = &w.b[col * w.column_bytes()..][..w.column_bytes()];
        let scales = &w.scales[col * w.blocks..][..w.blocks];
        for (r, y) in ys.iter_mut().enumerate() {
            let mut acc = [0f32; LANES];
            for u in 0..x.units {
                let (q, sa, sum) = x.unit(r, u);
                let (d, ws, zs) = if u < full && w.zp.is_none() {
                    let unit: &[u8; 32] = bytes[32 * u..32 * u + 32].try_into().expect("32 bytes");
                    (unit_dots(unit, q), std::array::from_fn(|l| scales[(u * UNIT + 8 * l) >> shift]), [8; LANES])
                } else {
                    let (ws, zs) = w.lane_params(col, u);
                    (unit_dots(&w.unit_bytes(col, u), q), ws, zs)
                };
                for l in 0..LANES {
                    acc[l] = ((d[l] - zs[l] * sum[l]) as f32).mul_add(sa[l] * ws[l], acc[l]);
                }
            }
            *y = finish(acc);
        }
    }
}

/// The fastest kernel this CPU runs for `w`: columns `first..` that fit in `out`.
pub(super) fn columns(w: &Weights, x: &Int8Rows, first: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2::usable(w) {
        return super::avx2::columns(w, x, first, out);
    }
    #[cfg(target_arch = "aarch64")]
    if super::neon::usable(w) {
        return super::neon::columns(w, x, first, out);
    }
    portable(w, x, first, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift generator (the tests need no distribution, only variety).
    fn xorshift(seed: u32) -> impl FnMut() -> u32 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        }
    }

    /// `Σ_k a[r,k] · (w[c,k] − zero)` per block, scaled, by the definition (no layout).
    fn reference(a: &[i8], sa: &[f32], w: &Weights, k: usize, rows: usize, n: usize) -> Vec<Vec<f64>> {
        (0..n)
            .map(|c| {
                (0..rows)
                    .map(|r| {
                        (0..k)
                            .map(|i| {
                                let blk = i / w.block;
                                let byte = w.b[c * w.column_bytes() + i / 2];
                                let nib = i32::from(if i % 2 == 0 { byte & 0x0f } else { byte >> 4 });
                                let q = i32::from(a[r * k + i]);
                                f64::from(q * (nib - w.zero_point(c, blk)))
                                    * f64::from(sa[r * w.blocks + blk])
                                    * f64::from(w.scales[c * w.blocks + blk])
                            })
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn int8_rounding_is_ties_to_even() {
        for v in [-127.0f32, -126.5, -2.5, -1.5, -0.5, -0.49, 0.0, 0.5, 1.5, 2.5, 63.5, 64.5, 126.5, 127.0, 127.2] {
            assert_eq!(to_int8(v), v.round_ties_even().clamp(-127.0, 127.0) as i8, "{v}");
        }
        assert_eq!(to_int8(f32::NAN), 0);
    }

    /// The layout and the portable kernel against the definition, for several block sizes,
    /// lengths that leave a partial unit, with and without zero points; the kernel this CPU
    /// dispatches to gives the portable kernel's bits (every row-group size).
    #[test]
    fn portable_kernel_computes_the_definition() {
        let mut next = xorshift(0x9e37_79b9);
        for (k, block) in [(64usize, 32usize), (96, 32), (128, 16), (192, 64), (256, 128), (80, 16)] {
            for (with_zp, rows) in [(false, 1), (false, 7), (true, 3)] {
                let (n, blocks): (usize, usize) = (5, k / block);
                let a: Vec<f32> = (0..rows * k).map(|_| (next() % 2001) as f32 / 100.0 - 10.0).collect();
                let b: Vec<u8> = (0..n * k / 2).map(|_| next() as u8).collect();
                let scales: Vec<f32> = (0..n * blocks).map(|_| (next() % 100 + 1) as f32 / 1000.0).collect();
                let zp: Vec<u8> = (0..n * blocks.div_ceil(2)).map(|_| next() as u8).collect();
                let w = Weights { b: &b, scales: &scales, zp: with_zp.then_some(&zp[..]), block, blocks };
                let x = Int8Rows::quantize(&a, k, block);
                let mut flat = vec![0i8; rows * k];
                let mut sa = vec![0f32; rows * blocks];
                for r in 0..rows {
                    for i in 0..k {
                        let o = i % UNIT;
                        flat[r * k + i] = x.q[r * x.units * UNIT + i - o + (o % 2) * 32 + o / 2];
                    }
                    for blk in 0..blocks {
                        sa[r * blocks + blk] = x.scale[r * x.units * LANES + blk * block / 8];
                    }
                }
                for (i, (&v, &q)) in a.iter().zip(&flat).enumerate() {
                    let s = sa[(i / k) * blocks + (i % k) / block];
                    assert!((v - f32::from(q) * s).abs() <= s / 2.0 + 1e-6, "k {k}, block {block}: value {i} quantized badly");
                }
                let want = reference(&flat, &sa, &w, k, rows, n);
                let mut got = vec![0f32; n * rows];
                portable(&w, &x, 0, &mut got);
                for c in 0..n {
                    for r in 0..rows {
                        let (g, e) = (f64::from(got[c * rows + r]), want[c][r]);
                        assert!(
                            (g - e).abs() <= 1e-4 * e.abs().max(1.0),
                            "k {k}, block {block}, zp {with_zp}: col {c} row {r}: {g} vs {e}"
                        );
                    }
                }
                let mut fast = vec![0f32; n * rows];
                columns(&w, &x, 0, &mut fast);
                assert_eq!(fast, got, "k {k}, block {block}, zp {with_zp}: the dispatched kernel gives other bits");
            }
        }
    }
}
