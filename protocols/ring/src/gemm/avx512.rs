//! The AVX-512 micro-kernel (`vpmullq` on 512-bit vectors), and the panel-row load that the
//! IFMA kernels and the AVX-512 packing share.

// `unsafe` is allowed here only: SIMD intrinsics on raw pointers into the packed operands. Every
// block says why it is sound.
#![allow(unsafe_code)]

use super::driver::{Plan, task_body};
use super::tile::{CTile, Tile};
use super::{MR, NR};

/// Row `p` of a packed `NR`-column panel as two 512-bit vectors.
///
/// # Safety
/// `panel` points at a panel at least `(p + 1) · NR` values long.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn panel_row(panel: *const u64, p: usize) -> [std::arch::x86_64::__m512i; 2] {
    use std::arch::x86_64::_mm512_loadu_si512;
    // SAFETY: both loads lie within the panel row (the caller's contract).
    unsafe {
        [
            _mm512_loadu_si512(panel.add(p * NR).cast()),
            _mm512_loadu_si512(panel.add(p * NR + 8).cast()),
        ]
    }
}

/// AVX-512 micro-kernel: eight 8-lane accumulators, `vpmullq` + `vpaddq` per lane group.
#[target_feature(enable = "avx512f,avx512dq")]
pub(super) fn micro_avx512(t: &Tile<'_>, out: &mut CTile<'_>) {
    use std::arch::x86_64::*;
    let (a, b) = (t.a, t.b);
    let kc = b.len() / NR;
    assert!(
        a.iter().all(|r| r.len() >= kc),
        "micro_avx512: A row too short"
    );
    let ap = a.map(|r| r.as_ptr());
    let bp = b.as_ptr();
    let mut c = [[_mm512_setzero_si512(); 2]; MR];
    for p in 0..kc {
        // SAFETY: p < kc, so p·NR + NR ≤ b.len() and p < every A row's length.
        let [b0, b1] = unsafe { panel_row(bp, p) };
        for (i, ci) in c.iter_mut().enumerate() {
            // SAFETY: as above.
            let ai = _mm512_set1_epi64(unsafe { *ap[i].add(p) } as i64);
            ci[0] = _mm512_add_epi64(ci[0], _mm512_mullo_epi64(ai, b0));
            ci[1] = _mm512_add_epi64(ci[1], _mm512_mullo_epi64(ai, b1));
        }
    }
    for (i, ci) in c.iter().enumerate() {
        out.add_512(i, 0, ci[0]);
        out.add_512(i, 1, ci[1]);
    }
}

#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
pub(super) fn task_avx512(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    // The closure inherits this function's target features (AVX-512 F/DQ, detected by
    // `kernel_level` before this runs).
    task_body(plan, i0, i1, j0, j1, |t, out| micro_avx512(t, out))
}
