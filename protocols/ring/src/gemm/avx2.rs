//! The AVX2 micro-kernel: 64-bit products from three 32-bit `vpmuludq` per lane.

// `unsafe` is allowed here only: SIMD intrinsics on raw pointers into the packed operands. Every
// block says why it is sound.
#![allow(unsafe_code)]

use super::driver::{Plan, task_body};
use super::tile::{CTile, Tile};
use super::{MR, NR};

/// AVX2 micro-kernel: 64-bit products from three `vpmuludq` (`lo·lo + (hi·lo + lo·hi) << 32`),
/// one quarter of the tile (4 columns) at a time.
#[target_feature(enable = "avx2")]
pub(super) fn micro_avx2(t: &Tile<'_>, out: &mut CTile<'_>) {
    use std::arch::x86_64::*;
    let (a, b) = (t.a, t.b);
    let kc = b.len() / NR;
    assert!(
        a.iter().all(|r| r.len() >= kc),
        "micro_avx2: A row too short"
    );
    let ap = a.map(|r| r.as_ptr());
    let bp = b.as_ptr();
    for q in 0..NR / 4 {
        let mut c = [_mm256_setzero_si256(); MR];
        for p in 0..kc {
            // SAFETY: p < kc and 4q + 4 ≤ NR, so the load stays inside the B panel.
            let bv = unsafe { _mm256_loadu_si256(bp.add(p * NR + 4 * q).cast()) };
            let bh = _mm256_srli_epi64::<32>(bv);
            for (i, ci) in c.iter_mut().enumerate() {
                // SAFETY: p < kc ≤ every A row's length.
                let av = unsafe { *ap[i].add(p) };
                let (lo, hi) = (
                    _mm256_set1_epi64x(av as i64),
                    _mm256_set1_epi64x((av >> 32) as i64),
                );
                let cross = _mm256_add_epi64(_mm256_mul_epu32(hi, bv), _mm256_mul_epu32(lo, bh));
                let prod =
                    _mm256_add_epi64(_mm256_mul_epu32(lo, bv), _mm256_slli_epi64::<32>(cross));
                *ci = _mm256_add_epi64(*ci, prod);
            }
        }
        for (i, ci) in c.iter().enumerate() {
            // SAFETY: columns 4q .. 4q + 4 ≤ NR of row i < MR (`CTile::new`'s contract).
            unsafe {
                let at = out.row(i).add(4 * q).cast();
                _mm256_storeu_si256(at, _mm256_add_epi64(_mm256_loadu_si256(at), *ci));
            }
        }
    }
}

#[target_feature(enable = "avx2")]
pub(super) fn task_avx2(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    // The closure inherits this function's target features (AVX2, detected first).
    task_body(plan, i0, i1, j0, j1, |t, out| micro_avx2(t, out))
}
