//! Matrix product over Z_2^64 (wrapping `u64` multiply-add), the kernel under every secure
//! linear layer (digest §6.5, §6.16).
//!
//! [`gemm`] computes `C += A · B` for row-major `A: [m, k]`, `B: [k, n]`, `C: [m, n]`.
//! It follows the BLIS structure: both operands are packed into zero-padded micro-panels
//! (`A` in `MR`-row panels, `B` in `NR`-column panels, `KC`-deep blocks), and a register-tile
//! micro-kernel of `MR × NR` accumulators runs over each pair of panels. Tiles of `C` are
//! spread over the rayon pool (`MC × NC` blocks). The micro-kernel is plain Rust that LLVM
//! vectorises; on x86-64 a copy compiled for AVX-512 (`vpmullq`) or AVX2 is chosen at run time
//! with `is_x86_feature_detected!`, so the crate needs no `RUSTFLAGS`.
//!
//! [`gemm_reference`] is the triple loop the fast path is tested against.

use rayon::prelude::*;

/// Rows of the register tile.
pub const MR: usize = 6;
/// Columns of the register tile (two 512-bit vectors of `u64`).
pub const NR: usize = 16;
/// Depth of a packed block.
const KC: usize = 256;
/// Most rows of `C` per parallel task (a multiple of `MR`).
const MC: usize = 8 * MR;
/// Columns of `C` per parallel task (a multiple of `NR`).
const NC: usize = 16 * NR;

/// `C += A · B` by the triple loop (reference implementation).
pub fn gemm_reference(m: usize, k: usize, n: usize, a: &[u64], b: &[u64], c: &mut [u64]) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm_reference: operand too short"
    );
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p];
            for j in 0..n {
                c[i * n + j] = c[i * n + j].wrapping_add(av.wrapping_mul(b[p * n + j]));
            }
        }
    }
}

/// The right operand `B [rows, cols]` of a product, read in row segments while it is packed
/// (a dense matrix, or an `im2col` view of an image that is never materialised).
pub trait PanelSource: Sync {
    /// Number of rows (the reduction depth `k`).
    fn rows(&self) -> usize;
    /// Number of columns (`n`).
    fn cols(&self) -> usize;
    /// Writes `B[row, col0 .. col0 + dst.len()]` into `dst`.
    fn segment(&self, row: usize, col0: usize, dst: &mut [u64]);
}

/// A dense row-major matrix as a [`PanelSource`].
#[derive(Clone, Copy, Debug)]
pub struct Dense<'a> {
    pub data: &'a [u64],
    pub rows: usize,
    pub cols: usize,
}

impl PanelSource for Dense<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn segment(&self, row: usize, col0: usize, dst: &mut [u64]) {
        let start = row * self.cols + col0;
        dst.copy_from_slice(&self.data[start..start + dst.len()]);
    }
}

/// Packs `B` into `NR`-column panels, `KC`-deep blocks: block `kb` (starting at depth `kb`)
/// holds `npanels` panels of `kc × NR`, at offset `kb · npanels · NR`.
fn pack_b(b: &dyn PanelSource) -> Vec<u64> {
    let (k, n) = (b.rows(), b.cols());
    let npanels = n.div_ceil(NR);
    let mut out = vec![0u64; npanels * NR * k];
    out.par_chunks_mut(npanels * NR * KC)
        .enumerate()
        .for_each(|(bi, block)| {
            let kb = bi * KC;
            let kc = KC.min(k - kb);
            block
                .par_chunks_mut(kc * NR)
                .enumerate()
                .for_each(|(p, panel)| {
                    let j0 = p * NR;
                    let w = NR.min(n - j0);
                    for q in 0..kc {
                        b.segment(kb + q, j0, &mut panel[q * NR..q * NR + w]);
                    }
                });
        });
    out
}

/// Rows `i0 .. i0 + MR` of `A`, each from depth `kb` for `kc` elements (rows past the end
/// repeat the last row; their results are discarded).
type ARows<'a> = [&'a [u64]; MR];

/// The register-tile micro-kernel, portable version: `acc += A[rows, kb..] · Bpanel`.
#[inline(always)]
fn micro(a: ARows<'_>, b: &[u64], acc: &mut [[u64; NR]; MR]) {
    for (p, bv) in b.chunks_exact(NR).enumerate() {
        let bv: &[u64; NR] = bv.try_into().unwrap();
        for i in 0..MR {
            let av = a[i][p];
            for j in 0..NR {
                acc[i][j] = acc[i][j].wrapping_add(av.wrapping_mul(bv[j]));
            }
        }
    }
}

/// AVX-512 micro-kernel: twelve 8-lane accumulators, `vpmullq` + `vpaddq` per lane group.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn micro_avx512(a: ARows<'_>, b: &[u64], acc: &mut [[u64; NR]; MR]) {
    use std::arch::x86_64::*;
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
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_si512(bp.add(p * NR).cast()),
                _mm512_loadu_si512(bp.add(p * NR + 8).cast()),
            )
        };
        for (i, ci) in c.iter_mut().enumerate() {
            // SAFETY: as above.
            let ai = _mm512_set1_epi64(unsafe { *ap[i].add(p) } as i64);
            ci[0] = _mm512_add_epi64(ci[0], _mm512_mullo_epi64(ai, b0));
            ci[1] = _mm512_add_epi64(ci[1], _mm512_mullo_epi64(ai, b1));
        }
    }
    for (row, ci) in acc.iter_mut().zip(&c) {
        // SAFETY: each row holds NR = 16 u64, two 512-bit stores.
        unsafe {
            _mm512_storeu_si512(row.as_mut_ptr().cast(), ci[0]);
            _mm512_storeu_si512(row.as_mut_ptr().add(8).cast(), ci[1]);
        }
    }
}

/// AVX2 micro-kernel: 64-bit products from three `vpmuludq` (`lo·lo + (hi·lo + lo·hi) << 32`),
/// one quarter of the tile (4 columns) at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn micro_avx2(a: ARows<'_>, b: &[u64], acc: &mut [[u64; NR]; MR]) {
    use std::arch::x86_64::*;
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
        for (row, ci) in acc.iter_mut().zip(&c) {
            // SAFETY: columns 4q .. 4q + 4 of a 16-column row.
            unsafe { _mm256_storeu_si256(row.as_mut_ptr().add(4 * q).cast(), *ci) };
        }
    }
}

/// A raw pointer to `C` shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct CPtr(*mut u64);
// SAFETY: tasks write disjoint tiles of C (see `gemm`), so sharing the pointer is sound.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

/// Geometry shared by the tasks of one product.
struct Plan<'a> {
    m: usize,
    k: usize,
    n: usize,
    /// `A`, row-major `[m, k]` (not packed: the kernel streams `MR` rows at once).
    a: &'a [u64],
    /// `B` packed whole ([`pack_b`]), or `None` when every task packs its own columns.
    pb: Option<&'a [u64]>,
    src: &'a dyn PanelSource,
    c: CPtr,
}

/// Computes the `C` block of rows `i0..i1`, columns `j0..j1` (panel-aligned starts).
#[inline(always)]
fn task_body(
    plan: &Plan<'_>,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
    micro: impl Fn(ARows<'_>, &[u64], &mut [[u64; NR]; MR]),
) {
    let (m, k, n) = (plan.m, plan.k, plan.n);
    let npanels = n.div_ceil(NR);
    let mut local = Vec::new();
    let mut kb = 0;
    while kb < k {
        let kc = KC.min(k - kb);
        // This KC block of B: a slice of the whole packed B, or this task's columns packed
        // now (they stay in cache for the rows that follow). Lanes past the last column
        // hold stale values; their results are never stored.
        let (bblock, first): (&[u64], usize) = match plan.pb {
            Some(pb) => (&pb[kb * npanels * NR..], 0),
            None => {
                let np = (j1 - j0).div_ceil(NR);
                local.resize(np * kc * NR, 0);
                for (p, panel) in local.chunks_mut(kc * NR).enumerate() {
                    let jc = j0 + p * NR;
                    let w = NR.min(n - jc);
                    for q in 0..kc {
                        plan.src.segment(kb + q, jc, &mut panel[q * NR..q * NR + w]);
                    }
                }
                (&local[..], j0 / NR)
            }
        };
        for jp in (j0 / NR)..j1.div_ceil(NR) {
            let bpanel = &bblock[(jp - first) * kc * NR..(jp - first + 1) * kc * NR];
            for ip in (i0 / MR)..i1.div_ceil(MR) {
                let arows: ARows<'_> = std::array::from_fn(|i| {
                    let r = (ip * MR + i).min(m - 1);
                    &plan.a[r * k + kb..r * k + kb + kc]
                });
                let mut acc = [[0u64; NR]; MR];
                micro(arows, bpanel, &mut acc);
                let rows = MR.min(m - ip * MR);
                let cols = NR.min(n - jp * NR);
                for (i, acc_row) in acc.iter().enumerate().take(rows) {
                    // SAFETY: row ip·MR + i < m and columns jp·NR .. + cols ≤ n lie inside C,
                    // and this tile belongs to this task only.
                    let crow = unsafe {
                        std::slice::from_raw_parts_mut(
                            plan.c.0.add((ip * MR + i) * n + jp * NR),
                            cols,
                        )
                    };
                    for (cv, &av) in crow.iter_mut().zip(acc_row) {
                        *cv = cv.wrapping_add(av);
                    }
                }
            }
        }
        kb += kc;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn task_avx512(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    // The closure inherits this function's target features (AVX-512 F/DQ, detected by
    // `kernel_level` before this runs).
    task_body(plan, i0, i1, j0, j1, |a, b, acc| micro_avx512(a, b, acc))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn task_avx2(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    // The closure inherits this function's target features (AVX2, detected first).
    task_body(plan, i0, i1, j0, j1, |a, b, acc| micro_avx2(a, b, acc))
}

fn task_generic(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    task_body(plan, i0, i1, j0, j1, micro)
}

/// Which compiled copy of the micro-kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLevel {
    /// AVX-512 F + DQ (+ VL): `vpmullq` on 512-bit vectors.
    Avx512,
    /// AVX2.
    Avx2,
    /// Whatever the build target allows.
    Generic,
}

/// The best kernel for this CPU (detected once).
pub fn kernel_level() -> KernelLevel {
    static LEVEL: std::sync::OnceLock<KernelLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
            {
                return KernelLevel::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") {
                return KernelLevel::Avx2;
            }
        }
        KernelLevel::Generic
    })
}

fn run_task(level: KernelLevel, plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel_level` detected these CPU features.
        KernelLevel::Avx512 => unsafe { task_avx512(plan, i0, i1, j0, j1) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel_level` detected AVX2.
        KernelLevel::Avx2 => unsafe { task_avx2(plan, i0, i1, j0, j1) },
        _ => task_generic(plan, i0, i1, j0, j1),
    }
}

/// `c[i] += Σ_p a[i, p] · b[p]` (the `n = 1` case: a matrix-vector product).
fn gemv(m: usize, k: usize, a: &[u64], b: &[u64], c: &mut [u64]) {
    let row = |i: usize| -> u64 {
        a[i * k..(i + 1) * k]
            .iter()
            .zip(b)
            .fold(0u64, |s, (&x, &y)| s.wrapping_add(x.wrapping_mul(y)))
    };
    if m * k >= 1 << 14 {
        c.par_iter_mut()
            .enumerate()
            .for_each(|(i, cv)| *cv = cv.wrapping_add(row(i)));
    } else {
        c.iter_mut()
            .enumerate()
            .for_each(|(i, cv)| *cv = cv.wrapping_add(row(i)));
    }
}

/// `C += A · B` over Z_2^64 for row-major `A: [m, k]`, `B: [k, n]`, `C: [m, n]`.
///
/// # Panics
/// If a slice is shorter than its shape says (callers check shapes; [`crate::RingTensor::matmul`]
/// is the checked entry point).
pub fn gemm(m: usize, k: usize, n: usize, a: &[u64], b: &[u64], c: &mut [u64]) {
    assert!(b.len() >= k * n, "gemm: operand too short");
    if n == 1 {
        assert!(a.len() >= m * k && c.len() >= m, "gemm: operand too short");
        return gemv(m, k, a, b, &mut c[..m]);
    }
    gemm_source(
        m,
        a,
        &Dense {
            data: b,
            rows: k,
            cols: n,
        },
        c,
    )
}

/// `C += A · B` where `B` is any [`PanelSource`] (`k = b.rows()`, `n = b.cols()`).
///
/// # Panics
/// If `a` is shorter than `m · k` or `c` than `m · n`.
pub fn gemm_source(m: usize, a: &[u64], b: &dyn PanelSource, c: &mut [u64]) {
    let (k, n) = (b.rows(), b.cols());
    assert!(
        a.len() >= m * k && c.len() >= m * n,
        "gemm: operand too short"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    if m * n * k < 4096 || n == 1 {
        let mut dense = vec![0u64; k * n];
        for (r, row) in dense.chunks_mut(n).enumerate() {
            b.segment(r, 0, row);
        }
        return if n == 1 {
            gemv(m, k, a, &dense, &mut c[..m])
        } else {
            gemm_reference(m, k, n, a, &dense, c)
        };
    }
    let level = kernel_level();
    let threads = rayon::current_num_threads();
    let col_tasks = n.div_ceil(NC);
    if col_tasks >= 4 * threads {
        // Enough column blocks: each task takes all rows of its columns and packs those
        // columns of B itself, so B never travels through memory whole.
        let plan = Plan {
            m,
            k,
            n,
            a,
            pb: None,
            src: b,
            c: CPtr(c.as_mut_ptr()),
        };
        (0..col_tasks).into_par_iter().for_each(|tj| {
            let j0 = tj * NC;
            run_task(level, &plan, 0, m, j0, (j0 + NC).min(n));
        });
        return;
    }
    let pb = pack_b(b);
    let plan = Plan {
        m,
        k,
        n,
        a,
        pb: Some(&pb),
        src: b,
        c: CPtr(c.as_mut_ptr()),
    };
    // Row blocks of at most MC rows and equal size (so that no task is a thin remainder),
    // split further while there are fewer than four tasks per thread.
    let mut mc = m.div_ceil(m.div_ceil(MC)).next_multiple_of(MR);
    while m.div_ceil(mc) * col_tasks < 4 * threads && mc > MR {
        mc = (mc / 2).next_multiple_of(MR);
    }
    let row_tasks = m.div_ceil(mc);
    (0..row_tasks * col_tasks).into_par_iter().for_each(|t| {
        let (ti, tj) = (t / col_tasks, t % col_tasks);
        let (i0, j0) = (ti * mc, tj * NC);
        run_task(level, &plan, i0, (i0 + mc).min(m), j0, (j0 + NC).min(n));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lcg(seed: u64, len: usize) -> Vec<u64> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s ^ (s >> 29)
            })
            .collect()
    }

    fn check(m: usize, k: usize, n: usize, seed: u64) {
        let a = lcg(seed, m * k);
        let b = lcg(seed ^ 0xabcdef, k * n);
        let init = lcg(seed ^ 77, m * n);
        let mut fast = init.clone();
        let mut slow = init;
        gemm(m, k, n, &a, &b, &mut fast);
        gemm_reference(m, k, n, &a, &b, &mut slow);
        assert_eq!(fast, slow, "m={m} k={k} n={n}");
    }

    #[test]
    fn fast_matches_reference_on_edges() {
        // Crosses the KC, MC, NC and register-tile boundaries with ragged remainders.
        check(7, 300, 33, 1);
        check(MC + 5, KC + 1, NC + 3, 2);
        check(13, 9, 1, 3);
        check(1, 513, 17, 4);
        check(64, 576, 64, 5);
        // Enough column blocks for tasks that pack their own columns.
        check(13, 300, 8 * NC + 5, 6);
    }

    #[test]
    fn every_available_kernel_computes_the_same_product() {
        assert_eq!(kernel_level(), kernel_level());
        let (m, k, n) = (MR * 2 + 1, KC + 40, NR * 2 + 3);
        let a = lcg(9, m * k);
        let b = lcg(10, k * n);
        let mut want = vec![0; m * n];
        gemm_reference(m, k, n, &a, &b, &mut want);
        let pb = pack_b(&Dense {
            data: &b,
            rows: k,
            cols: n,
        });
        let mut levels = vec![KernelLevel::Generic];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                levels.push(KernelLevel::Avx2);
            }
            if kernel_level() == KernelLevel::Avx512 {
                levels.push(KernelLevel::Avx512);
            }
        }
        for level in levels {
            let src = Dense {
                data: &b,
                rows: k,
                cols: n,
            };
            for pb in [Some(&pb[..]), None] {
                let mut got = vec![0; m * n];
                let plan = Plan {
                    m,
                    k,
                    n,
                    a: &a,
                    pb,
                    src: &src,
                    c: CPtr(got.as_mut_ptr()),
                };
                run_task(level, &plan, 0, m, 0, n);
                assert_eq!(got, want, "{level:?}, packed whole: {}", pb.is_some());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn fast_matches_reference(m in 1usize..70, k in 1usize..300, n in 1usize..70, seed in any::<u64>()) {
            check(m, k, n, seed);
        }
    }
}
