//! The aarch64 kernels of the int8 × 4-bit products, with the arithmetic of [`super::int8`]:
//! one with the dot-product extension (`SDOT`: Cortex-A76/A78 and newer, so Raspberry Pi 5,
//! Jetson Orin, RK3588), one with plain NEON widening multiplies for older cores (Cortex-A72 of
//! the Raspberry Pi 4, Cortex-A53/A55). A lane of a unit is four bytes of its low nibbles and
//! four of its high ones: lanes 0–3 come from the unit's first 16 weight bytes, lanes 4–7 from
//! the other 16. Each unpacked unit serves four columns' worth of activations when decoding and
//! four rows when prefilling, and the next tile's weights are prefetched.

use std::arch::aarch64::*;
use std::arch::asm;

use super::int8::{Int8Rows, Weights, LANES, UNIT};

/// Whether this CPU runs [`columns`] for `w` (no zero-point input: those go to the portable
/// kernel).
pub(super) fn usable(w: &Weights) -> bool {
    w.zp.is_none() && w.block.is_multiple_of(16)
}

/// Columns `first..` that fit in `out` (column-major, `x.rows` values per column).
pub(super) fn columns(w: &Weights, x: &Int8Rows, first: usize, out: &mut [f32]) {
    assert!(usable(w), "no zero points, blocks of a multiple of 16");
    // SAFETY: SDOT runs only where the CPU has the dot-product extension; NEON is part of
    // every aarch64 CPU.
    unsafe {
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            columns_sdot(w, x, first, out)
        } else {
            columns_widening(w, x, first, out)
        }
    }
}

/// [`drive`] compiled with the dot-product extension (everything below is inlined into it).
#[target_feature(enable = "neon,dotprod")]
unsafe fn columns_sdot(w: &Weights, x: &Int8Rows, first: usize, out: &mut [f32]) {
    // SAFETY: this function's features are what `Sdot` needs.
    unsafe { drive::<Sdot>(w, x, first, out) }
}

/// [`drive`] with plain NEON.
#[target_feature(enable = "neon")]
unsafe fn columns_widening(w: &Weights, x: &Int8Rows, first: usize, out: &mut [f32]) {
    // SAFETY: `Widening` needs only NEON.
    unsafe { drive::<Widening>(w, x, first, out) }
}

/// `acc + Σ w·q` over each lane's four bytes, for two pairs of operands.
trait Dot {
    /// # Safety
    /// The CPU must support the instructions the implementation uses.
    unsafe fn dot2(acc: int32x4_t, w1: int8x16_t, q1: int8x16_t, w2: int8x16_t, q2: int8x16_t) -> int32x4_t;
}

/// With `SDOT` (inlined only into [`columns_sdot`], which enables the extension).
struct Sdot;

impl Dot for Sdot {
    #[inline(always)]
    unsafe fn dot2(mut acc: int32x4_t, w1: int8x16_t, q1: int8x16_t, w2: int8x16_t, q2: int8x16_t) -> int32x4_t {
        // SAFETY: SDOT reads and writes only these registers; the caller has the extension.
        unsafe {
            asm!(
                // The directive lets the assembler take SDOT wherever this is inlined.
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {w1:v}.16b, {q1:v}.16b",
                "sdot {acc:v}.4s, {w2:v}.16b, {q2:v}.16b",
                acc = inout(vreg) acc, w1 = in(vreg) w1, q1 = in(vreg) q1, w2 = in(vreg) w2, q2 = in(vreg) q2,
                options(pure, nomem, nostack),
            )
        };
        acc
    }
}

/// With widening multiplies: 16-bit products (a nibble times an int8 is at most 15·127, two
/// of them fit), then pairwise widening adds into the lanes.
struct Widening;

impl Dot for Widening {
    #[inline(always)]
    unsafe fn dot2(acc: int32x4_t, w1: int8x16_t, q1: int8x16_t, w2: int8x16_t, q2: int8x16_t) -> int32x4_t {
        let low = vmlal_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(q1)), vget_low_s8(w2), vget_low_s8(q2));
        let high = vmlal_high_s8(vmull_high_s8(w1, q1), w2, q2);
        vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(low), vpaddlq_s16(high)))
    }
}

/// The tiles of [`super::int8::tiles`] over `out`.
///
/// # Safety
/// The CPU must run `D`'s instructions, and the caller must enable them (this and everything
/// it calls is inlined into the caller).
#[inline(always)]
unsafe fn drive<D: Dot>(w: &Weights, x: &Int8Rows, first: usize, out: &mut [f32]) {
    let rows = x.rows.max(1);
    super::int8::tiles(rows, out.len() / rows, |cs, g, c, r| {
        let dst = &mut out[c * rows + r..];
        // SAFETY: as for this function.
        unsafe {
            match (cs, g) {
                (4, _) => tile::<D, 4, 1>(w, x, first + c, r, dst, rows),
                (_, 4) => tile::<D, 1, 4>(w, x, first + c, r, dst, rows),
                (_, 3) => tile::<D, 1, 3>(w, x, first + c, r, dst, rows),
                (_, 2) => tile::<D, 1, 2>(w, x, first + c, r, dst, rows),
                _ => tile::<D, 1, 1>(w, x, first + c, r, dst, rows),
            }
        }
    });
}

/// The weight scales of lanes 0–3 and 4–7 of full unit `u`.
#[inline(always)]
fn unit_scales(scales: &[f32], block: usize, u: usize) -> (float32x4_t, float32x4_t) {
    // SAFETY: NEON is part of every aarch64 CPU; `s` holds four floats.
    unsafe {
        match block {
            16 => {
                let s = &scales[4 * u..4 * u + 4];
                let v = vld1q_f32(s.as_ptr());
                (vzip1q_f32(v, v), vzip2q_f32(v, v))
            }
            32 => (vdupq_n_f32(scales[2 * u]), vdupq_n_f32(scales[2 * u + 1])),
            _ => {
                let s = vdupq_n_f32(scales[u * UNIT / block]);
                (s, s)
            }
        }
    }
}

/// Asks for the cache line at `p` (prefetching never faults, so any address will do).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    // SAFETY: PRFM has no architectural effect.
    unsafe { asm!("prfm pldl1keep, [{0}]", in(reg) p, options(readonly, nostack, preserves_flags)) };
}

/// Columns `col..col + C` × rows `r0..r0 + G` into `dst` (column-major, `stride` values per
/// column).
///
/// # Safety
/// As for [`drive`].
#[inline(always)]
unsafe fn tile<D: Dot, const C: usize, const G: usize>(w: &Weights, x: &Int8Rows, col: usize, r0: usize, dst: &mut [f32], stride: usize) {
    let n = w.column_bytes();
    let full = n / 32;
    assert!(w.b.len() >= (col + C) * n && w.scales.len() >= (col + C) * w.blocks, "columns out of range");
    assert!(x.q.len() >= (r0 + G) * x.units * UNIT && x.scale.len() >= (r0 + G) * x.units * LANES, "rows out of range");
    assert!(x.sum.len() == x.scale.len() && dst.len() >= (C - 1) * stride + G, "output out of range");
    let mask = vdupq_n_u8(0x0f);
    let zero = vdupq_n_f32(0.0);
    let mut acc = [[(zero, zero); G]; C];
    for u in 0..x.units {
        let next = w.b.as_ptr().wrapping_add((col + C) * n + 32 * C * u);
        prefetch(next);
        prefetch(next.wrapping_add(64));
        prefetch(w.scales.as_ptr().wrapping_add((col + C) * w.blocks + 8 * u));
        let mut acts = [([vdupq_n_s8(0); 4], (zero, zero), (vdupq_n_s32(0), vdupq_n_s32(0))); G];
        for (g, a) in acts.iter_mut().enumerate() {
            let i = (r0 + g) * x.units + u;
            // SAFETY: row r0 + g < r0 + G and unit u < units are in range (asserted above).
            *a = unsafe {
                let (q, sa, sum) = (x.q.as_ptr().add(i * UNIT), x.scale.as_ptr().add(i * LANES), x.sum.as_ptr().add(i * LANES));
                (
                    [vld1q_s8(q), vld1q_s8(q.add(16)), vld1q_s8(q.add(32)), vld1q_s8(q.add(48))],
                    (vld1q_f32(sa), vld1q_f32(sa.add(4))),
                    // Starting from −8·Σq subtracts the zero point 8 from every weight.
                    (vnegq_s32(vshlq_n_s32::<3>(vld1q_s32(sum))), vnegq_s32(vshlq_n_s32::<3>(vld1q_s32(sum.add(4))))),
                )
            };
        }
        for (c, acc) in acc.iter_mut().enumerate() {
            let ((p0, p1), (ws0, ws1)) = if u < full {
                // SAFETY: unit u of column col + c is whole and in range (asserted above).
                let p = unsafe {
                    let p = w.b.as_ptr().add((col + c) * n + 32 * u);
                    (vld1q_u8(p), vld1q_u8(p.add(16)))
                };
                (p, unit_scales(&w.scales[(col + c) * w.blocks..], w.block, u))
            } else {
                let tail = w.unit_bytes(col + c, u);
                let (s, _) = w.lane_params(col + c, u);
                // SAFETY: both are local arrays of 32 bytes.
                unsafe {
                    ((vld1q_u8(tail.as_ptr()), vld1q_u8(tail.as_ptr().add(16))), (vld1q_f32(s.as_ptr()), vld1q_f32(s.as_ptr().add(4))))
                }
            };
            let (lo0, hi0) = (vreinterpretq_s8_u8(vandq_u8(p0, mask)), vreinterpretq_s8_u8(vshrq_n_u8::<4>(p0)));
            let (lo1, hi1) = (vreinterpretq_s8_u8(vandq_u8(p1, mask)), vreinterpretq_s8_u8(vshrq_n_u8::<4>(p1)));
            for ((acc0, acc1), ([e0, e1, o0, o1], (sa0, sa1), (c0, c1))) in acc.iter_mut().zip(&acts) {
                // SAFETY: `columns` picked `D` for this CPU.
                let (d0, d1) = unsafe { (D::dot2(*c0, lo0, *e0, hi0, *o0), D::dot2(*c1, lo1, *e1, hi1, *o1)) };
                *acc0 = vfmaq_f32(*acc0, vcvtq_f32_s32(d0), vmulq_f32(*sa0, ws0));
                *acc1 = vfmaq_f32(*acc1, vcvtq_f32_s32(d1), vmulq_f32(*sa1, ws1));
            }
        }
    }
    for (c, acc) in acc.iter().enumerate() {
        for (g, (acc0, acc1)) in acc.iter().enumerate() {
            let mut lanes = [0f32; LANES];
            // SAFETY: `lanes` holds eight floats.
            unsafe {
                vst1q_f32(lanes.as_mut_ptr(), *acc0);
                vst1q_f32(lanes.as_mut_ptr().add(4), *acc1);
            }
            dst[c * stride + g] = super::int8::finish(lanes);
        }
    }
}
