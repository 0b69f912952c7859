//! What a micro-kernel reads and writes (module doc of [`super`]): `MR` rows of `A` and a
//! packed panel of `B` ([`Tile`]), and the `MR × NR` tile of `C` it adds to ([`CTile`]).

// `unsafe` is allowed here only: a tile of `C` is a raw pointer with a row stride. Every block says
// why it is sound.
#![allow(unsafe_code)]

use super::{MR, NR};

/// Rows `i0 .. i0 + MR` of `A`, each from depth `kb` for `kc` elements (rows past the end
/// repeat the last row; their results are discarded).
pub(super) type ARows<'a> = [&'a [u64]; MR];

/// The operands of one micro-kernel call: `MR` rows of `A` and a `kc × NR` panel of `B`, with
/// their cross operands ([`cross_operand`](super::pack::cross_operand)) for the IFMA kernel (empty for the others).
pub(super) struct Tile<'a> {
    pub(super) a: ARows<'a>,
    // The IFMA kernels' operands (x86-64 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) a_cross: ARows<'a>,
    pub(super) b: &'a [u64],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) b_cross: &'a [u64],
}

/// Where a micro-kernel adds its `MR × NR` results: `MR` rows of `NR` values, `ld` apart
/// (a full tile of `C` itself, or a scratch tile for one at the edge of `C`); and, for the
/// small-operand kernel, where it adds the column sums of its panel of `B`, when asked to.
pub(super) struct CTile<'s> {
    ptr: *mut u64,
    ld: usize,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) sums: Option<&'s mut [u64; NR]>,
}

impl<'s> CTile<'s> {
    /// # Safety
    /// `ptr + i·ld .. ptr + i·ld + NR` is valid for reads and writes for every `i < MR`, and
    /// nothing else reads or writes it while the tile lives.
    pub(super) unsafe fn new(ptr: *mut u64, ld: usize) -> Self {
        Self {
            ptr,
            ld,
            sums: None,
        }
    }

    /// The same tile, with the column sums `Σ b` of the panel to be added to `sums`
    /// ([`micro_ifma_small`](super::ifma::micro_ifma_small) only; the other kernels never take this).
    pub(super) fn with_sums(self, sums: Option<&'s mut [u64; NR]>) -> Self {
        Self { sums, ..self }
    }

    /// The start of row `i < MR`.
    pub(super) fn row(&self, i: usize) -> *mut u64 {
        debug_assert!(i < MR);
        self.ptr.wrapping_add(i * self.ld)
    }

    /// Adds `acc` to the tile (the kernels that keep their sums in a local array).
    #[inline(always)]
    pub(super) fn add(&mut self, acc: &[[u64; NR]; MR]) {
        for (i, acc_row) in acc.iter().enumerate() {
            // SAFETY: row i < MR holds NR values, exclusively ours (`new`'s contract).
            let row = unsafe { std::slice::from_raw_parts_mut(self.row(i), NR) };
            for (c, &v) in row.iter_mut().zip(acc_row) {
                *c = c.wrapping_add(v);
            }
        }
    }

    /// Adds an 8-lane vector to lanes `8j .. 8j + 8` of row `i`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn add_512(&mut self, i: usize, j: usize, v: std::arch::x86_64::__m512i) {
        use std::arch::x86_64::*;
        debug_assert!(j < NR / 8);
        // SAFETY: lanes 8j .. 8j + 8 ≤ NR of row i < MR (`new`'s contract).
        unsafe {
            let at = self.row(i).add(8 * j);
            let sum = _mm512_add_epi64(_mm512_loadu_si512(at.cast()), v);
            _mm512_storeu_si512(at.cast(), sum);
        }
    }
}
