//! The x86-64 kernel of the int8 × 4-bit products (AVX2 + FMA), with the arithmetic of
//! [`super::int8`]: 32 weight bytes become 32 low and 32 high nibbles, multiplied with the
//! unit's even and odd activations into 16-bit pair sums (at most 4·15·127, no saturation),
//! widened into the eight lanes, corrected by the zero point 8, converted and accumulated.
//! Each unpacked unit of weights serves up to four rows.

use std::arch::x86_64::*;

use super::int8::{Int8Rows, Weights, LANES, UNIT};

/// Whether this CPU runs [`columns`] for `w` (no zero-point input: those go to the portable
/// kernel).
pub(super) fn usable(w: &Weights) -> bool {
    w.zp.is_none()
        && w.block.is_multiple_of(16)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// Columns `first..` that fit in `out` (column-major, `x.rows` values per column).
pub(super) fn columns(w: &Weights, x: &Int8Rows, first: usize, out: &mut [f32]) {
    assert!(usable(w), "AVX2, FMA, no zero points");
    // SAFETY: the CPU has AVX2 and FMA (checked just above).
    unsafe { columns_avx2(w, x, first, out) }
}

#[target_feature(enable = "avx2,fma")]
fn columns_avx2(w: &Weights, x: &Int8Rows, first: usize, out: &mut [f32]) {
    let rows = x.rows.max(1);
    super::int8::tiles(rows, out.len() / rows, |cs, g, c, r| {
        let dst = &mut out[c * rows + r..];
        match (cs, g) {
            (4, _) => tile::<4, 1>(w, x, first + c, r, dst, rows),
            (_, 4) => tile::<1, 4>(w, x, first + c, r, dst, rows),
            (_, 3) => tile::<1, 3>(w, x, first + c, r, dst, rows),
            (_, 2) => tile::<1, 2>(w, x, first + c, r, dst, rows),
            _ => tile::<1, 1>(w, x, first + c, r, dst, rows),
        }
    });
}

/// The weight scale of each lane of full unit `u` (its block's).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn unit_scales(scales: &[f32], block: usize, u: usize) -> __m256 {
    match block {
        16 => {
            let s = &scales[4 * u..4 * u + 4];
            // SAFETY: `s` holds four floats.
            let v = unsafe { _mm_loadu_ps(s.as_ptr()) };
            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3))
        }
        32 => _mm256_setr_m128(_mm_set1_ps(scales[2 * u]), _mm_set1_ps(scales[2 * u + 1])),
        _ => _mm256_set1_ps(scales[u * UNIT / block]),
    }
}

/// Columns `col..col + C` × rows `r0..r0 + G` into `dst` (column-major, `stride` values per
/// column).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn tile<const C: usize, const G: usize>(w: &Weights, x: &Int8Rows, col: usize, r0: usize, dst: &mut [f32], stride: usize) {
    let n = w.column_bytes();
    let full = n / 32;
    assert!(w.b.len() >= (col + C) * n && w.scales.len() >= (col + C) * w.blocks, "columns out of range");
    assert!(x.q.len() >= (r0 + G) * x.units * UNIT && x.scale.len() >= (r0 + G) * x.units * LANES, "rows out of range");
    assert!(x.sum.len() == x.scale.len() && dst.len() >= (C - 1) * stride + G, "output out of range");
    let mask = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); G]; C];
    for u in 0..x.units {
        let mut acts = [(_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_ps(), _mm256_setzero_si256()); G];
        for (g, a) in acts.iter_mut().enumerate() {
            let i = (r0 + g) * x.units + u;
            // SAFETY: row r0 + g < r0 + G and unit u < units are in range (asserted above).
            *a = unsafe {
                (
                    _mm256_loadu_si256(x.q.as_ptr().add(i * UNIT).cast()),
                    _mm256_loadu_si256(x.q.as_ptr().add(i * UNIT + 32).cast()),
                    _mm256_loadu_ps(x.scale.as_ptr().add(i * LANES)),
                    _mm256_slli_epi32::<3>(_mm256_loadu_si256(x.sum.as_ptr().add(i * LANES).cast())),
                )
            };
        }
        // The next tile's weights and scales, spread over this tile's units (the hardware
        // prefetcher alone leaves the LM head's stream at about half the memory bandwidth).
        // Prefetching never faults, so addresses past the end are harmless.
        let next = w.b.as_ptr().wrapping_add((col + C) * n + 32 * C * u);
        _mm_prefetch::<_MM_HINT_T0>(next.cast());
        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64).cast());
        _mm_prefetch::<_MM_HINT_T0>(w.scales.as_ptr().wrapping_add((col + C) * w.blocks + 8 * u).cast());
        for (c, acc) in acc.iter_mut().enumerate() {
            let (packed, ws) = if u < full {
                // SAFETY: unit u of column col + c is whole and in range (asserted above).
                (
                    unsafe { _mm256_loadu_si256(w.b.as_ptr().add((col + c) * n + 32 * u).cast()) },
                    unit_scales(&w.scales[(col + c) * w.blocks..], w.block, u),
                )
            } else {
                let tail = w.unit_bytes(col + c, u);
                let (s, _) = w.lane_params(col + c, u);
                // SAFETY: both are 32-byte local arrays.
                unsafe { (_mm256_loadu_si256(tail.as_ptr().cast()), _mm256_loadu_ps(s.as_ptr())) }
            };
            let lo = _mm256_and_si256(packed, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask);
            for (acc, &(even, odd, sa, corr)) in acc.iter_mut().zip(&acts) {
                let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, even), _mm256_maddubs_epi16(hi, odd));
                let dots = _mm256_sub_epi32(_mm256_madd_epi16(pairs, ones), corr);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(sa, ws), *acc);
            }
        }
    }
    for (c, acc) in acc.iter().enumerate() {
        for (g, acc) in acc.iter().enumerate() {
            let mut lanes = [0f32; LANES];
            // SAFETY: `lanes` holds eight floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *acc) };
            dst[c * stride + g] = super::int8::finish(lanes);
        }
    }
}
