//! The portable micro-kernel: plain Rust that LLVM vectorises for the build target (the
//! kernel on every CPU without AVX2, and the one `KNAPSEC_RING_KERNEL=portable` forces).

use super::driver::{Plan, task_body};
use super::tile::{CTile, Tile};
use super::{MR, NR};

/// The register-tile micro-kernel, portable version: `out += A[rows, kb..] · Bpanel`.
#[inline(always)]
pub(super) fn micro(t: &Tile<'_>, out: &mut CTile<'_>) {
    let a = t.a;
    let mut acc = [[0u64; NR]; MR];
    for (p, bv) in t.b.chunks_exact(NR).enumerate() {
        let bv: &[u64; NR] = bv.try_into().unwrap();
        for i in 0..MR {
            let av = a[i][p];
            for j in 0..NR {
                acc[i][j] = acc[i][j].wrapping_add(av.wrapping_mul(bv[j]));
            }
        }
    }
    out.add(&acc);
}

pub(super) fn task_generic(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    task_body(plan, i0, i1, j0, j1, micro)
}
