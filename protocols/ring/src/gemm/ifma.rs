//! The AVX-512 IFMA micro-kernels (digest §6.16).
//!
//! The IFMA kernel ([`micro_ifma`]) gets a 64-bit product from three 52-bit multiply-adds,
//! which issue faster than `vpmullq`'s three micro-operations plus an add. Write
//! `a = a₀ + 2⁵²·a₁` (`a₀ < 2⁵²`, `a₁ < 2¹²`), the same for `b`. Then, mod 2⁶⁴,
//! `a·b = lo52(a₀b₀) + 2⁵²·(hi52(a₀b₀) + a₀b₁ + a₁b₀)`, and only the bracket's low 12 bits
//! matter, so `a₀b₁ + a₁b₀` may be taken as `a₀'b₁ + a₁b₀'` with `a₀' = a mod 2¹²`. That pair
//! comes from one more 52-bit product of the *cross operands* `â = a₀' + 2³²·a₁` and
//! `b̂ = b₀' + 2³²·b₁` (both < 2⁴⁴): `â·b̂ = a₀'b₀' + 2³²·(a₀'b₁ + a₁b₀') + 2⁶⁴·a₁b₁`. Summed
//! over a block of at most 256 products (`KC` ≤ 256), `Σ a₀'b₀' < 256·2²⁴ = 2³²` never carries into
//! bit 32, so bits 32..44 of `Σ lo52(â·b̂)` are the wanted sum mod 2¹². The kernel keeps three
//! accumulators `c = Σ lo52(a·b)`, `x = Σ hi52(a·b)`, `y = Σ lo52(â·b̂)` (the instructions read
//! only the low 52 bits of `a` and `b`) and stores `c + 2⁵²·(x + (y >> 32))`. The cross
//! operands of `A` are made once per product (or once for many, [`PreparedLhs`](super::PreparedLhs)); those of
//! `B` in the pass that packs it.
//!
//! **Small left operands** ([`micro_ifma_small`]). When every entry of `A` is a signed value
//! of at most 40 bits (`|a| < 2³⁹` as `i64`: the plaintext fixed-point weights of the secure
//! layers' online products), two 52-bit multiply-adds suffice. With `a' = a + 2³⁹ < 2⁴⁰` and
//! `b = b₀ + 2¹²·b₁` (`b₀ < 2¹²`, `b₁ < 2⁵²`): `a'·b₀ < 2⁵²` is exact in `lo52`, and of
//! `a'·b₁` only the low 52 bits matter (it is shifted by 12), so
//! `a'·b = lo52(a'b₀) + 2¹²·lo52(a'b₁) mod 2⁶⁴` for any depth. Then
//! `Σ a·b = Σ a'·b − 2³⁹·Σ b`. The column sums `Σ b` come from the kernel itself (two vector
//! additions per panel row, on the first row tile of each panel), or, when `B` is packed
//! whole, from the packed panels. `B` is packed as `b₀` with `b₁` beside it (in the place of
//! the cross operands).

// `unsafe` is allowed here only: SIMD intrinsics on raw pointers into the packed operands. Every
// block says why it is sound.
#![allow(unsafe_code)]

use super::avx512::panel_row;
use super::driver::{Plan, task_body};
use super::pack::Operands;
use super::tile::{CTile, Tile};
use super::{MR, NR};

/// AVX-512 IFMA micro-kernel: three 52-bit multiply-adds per 64-bit product (module doc).
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
pub(super) fn micro_ifma(t: &Tile<'_>, out: &mut CTile<'_>) {
    use std::arch::x86_64::*;
    let kc = t.b.len() / NR;
    assert!(
        t.b_cross.len() >= kc * NR && t.a.iter().chain(&t.a_cross).all(|r| r.len() >= kc),
        "micro_ifma: operand too short"
    );
    let (ap, acp) = (t.a.map(|r| r.as_ptr()), t.a_cross.map(|r| r.as_ptr()));
    let (bp, bcp) = (t.b.as_ptr(), t.b_cross.as_ptr());
    let zero = _mm512_setzero_si512();
    let (mut c, mut x, mut y) = ([[zero; 2]; MR], [[zero; 2]; MR], [[zero; 2]; MR]);
    for p in 0..kc {
        // SAFETY: p < kc, so p·NR + NR ≤ the panels' lengths and p < every A row's length.
        let (b, bc) = unsafe { (panel_row(bp, p), panel_row(bcp, p)) };
        for i in 0..MR {
            // SAFETY: as above.
            let (av, acv) = unsafe {
                (
                    _mm512_set1_epi64(*ap[i].add(p) as i64),
                    _mm512_set1_epi64(*acp[i].add(p) as i64),
                )
            };
            for j in 0..2 {
                c[i][j] = _mm512_madd52lo_epu64(c[i][j], av, b[j]);
                x[i][j] = _mm512_madd52hi_epu64(x[i][j], av, b[j]);
                y[i][j] = _mm512_madd52lo_epu64(y[i][j], acv, bc[j]);
            }
        }
    }
    for i in 0..MR {
        for j in 0..2 {
            let high = _mm512_add_epi64(x[i][j], _mm512_srli_epi64::<32>(y[i][j]));
            out.add_512(
                i,
                j,
                _mm512_add_epi64(c[i][j], _mm512_slli_epi64::<52>(high)),
            );
        }
    }
}

/// AVX-512 IFMA micro-kernel for small `A` (module doc): `a_cross` holds `a + 2³⁹`, `b` the
/// low 12 bits of `B` and `b_cross` the rest; two 52-bit multiply-adds per product. With
/// `out.sums` set, it also adds the panel's column sums `Σ b` there (two additions per panel
/// row, asked of one row tile per panel).
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
pub(super) fn micro_ifma_small(t: &Tile<'_>, out: &mut CTile<'_>) {
    if out.sums.is_some() {
        micro_ifma_small_as::<true>(t, out)
    } else {
        micro_ifma_small_as::<false>(t, out)
    }
}

/// [`micro_ifma_small`], with or without the column sums.
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
pub(super) fn micro_ifma_small_as<const SUMS: bool>(t: &Tile<'_>, out: &mut CTile<'_>) {
    use std::arch::x86_64::*;
    let kc = t.b.len() / NR;
    assert!(
        t.b_cross.len() >= kc * NR && t.a_cross.iter().all(|r| r.len() >= kc),
        "micro_ifma_small: operand too short"
    );
    let ap = t.a_cross.map(|r| r.as_ptr());
    let (bp, bhp) = (t.b.as_ptr(), t.b_cross.as_ptr());
    let zero = _mm512_setzero_si512();
    let (mut lo, mut hi) = ([[zero; 2]; MR], [[zero; 2]; MR]);
    let (mut sum_lo, mut sum_hi) = ([zero; 2], [zero; 2]);
    for p in 0..kc {
        // SAFETY: p < kc, so p·NR + NR ≤ the panels' lengths and p < every A row's length.
        let (b, bh) = unsafe { (panel_row(bp, p), panel_row(bhp, p)) };
        for i in 0..MR {
            // SAFETY: as above.
            let av = unsafe { _mm512_set1_epi64(*ap[i].add(p) as i64) };
            for j in 0..2 {
                lo[i][j] = _mm512_madd52lo_epu64(lo[i][j], av, b[j]);
                hi[i][j] = _mm512_madd52lo_epu64(hi[i][j], av, bh[j]);
            }
        }
        if SUMS {
            for j in 0..2 {
                sum_lo[j] = _mm512_add_epi64(sum_lo[j], b[j]);
                sum_hi[j] = _mm512_add_epi64(sum_hi[j], bh[j]);
            }
        }
    }
    for i in 0..MR {
        for j in 0..2 {
            out.add_512(
                i,
                j,
                _mm512_add_epi64(lo[i][j], _mm512_slli_epi64::<12>(hi[i][j])),
            );
        }
    }
    if let Some(sums) = out.sums.as_deref_mut().filter(|_| SUMS) {
        for j in 0..2 {
            let total = _mm512_add_epi64(sum_lo[j], _mm512_slli_epi64::<12>(sum_hi[j]));
            // SAFETY: lanes 8j .. 8j + 8 of the NR sums.
            unsafe {
                let at = sums.as_mut_ptr().add(8 * j).cast();
                _mm512_storeu_si512(at, _mm512_add_epi64(_mm512_loadu_si512(at), total));
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512ifma")]
pub(super) fn task_ifma(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    // The closure inherits this function's target features (detected by `kernel_level`).
    if plan.mode == Operands::Split {
        task_body(plan, i0, i1, j0, j1, |t, out| micro_ifma_small(t, out))
    } else {
        task_body(plan, i0, i1, j0, j1, |t, out| micro_ifma(t, out))
    }
}
