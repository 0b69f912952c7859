//! Matrix product over Z_2^64 (wrapping `u64` multiply-add), the kernel under every secure
//! linear layer (digest §6.5, §6.16).
//!
//! [`gemm`] computes `C += A · B` for row-major `A: [m, k]`, `B: [k, n]`, `C: [m, n]`.
//! It follows the BLIS structure: `B` is packed into `NR`-column, `KC`-deep micro-panels
//! (one cache line apart, so that packing a row into each of them in turn does not hit one L1
//! set), and a register-tile micro-kernel of `MR × NR` accumulators runs over `MR` rows of `A`
//! and one panel. One packing pass also makes the kernel's second operands of `B` (and, for the
//! small-operand kernel, its column sums); `A`'s second operands are made once per product.
//! Work goes to the rayon pool as tasks of equal size, a multiple of the thread count: with
//! enough columns, each task owns a run of columns (and, when the `A` the kernel reads is large,
//! half of the rows) and packs its own columns of `B`; with few columns `B` is packed once and
//! tasks own runs of rows. The micro-kernel is plain Rust that LLVM
//! vectorises; on x86-64 a copy compiled for AVX-512 IFMA, AVX-512 (`vpmullq`) or AVX2 is
//! chosen at run time with `is_x86_feature_detected!`, so the crate needs no `RUSTFLAGS`
//! ([`kernel_level`]; `KNAPSEC_RING_KERNEL` forces one).
//!
//! The parts, by what they do:
//! * this file: the API ([`gemm`], [`gemm_source`], [`gemm_prepared`] with [`PreparedLhs`],
//!   [`PanelSource`]) and the products too small for the packed path;
//! * `level`: which kernel runs ([`KernelLevel`], [`kernel_level`]);
//! * `pack`: packing `B` into panels and `A`'s second operands, and the buffers they go to;
//! * `tile`: what a micro-kernel reads and writes (`Tile`, `CTile`);
//! * `portable`, `avx2`, `avx512`, `ifma`: one file per kernel family (`ifma` explains the
//!   52-bit multiply-add arithmetic and the small-operand kernel);
//! * `driver`: the tasks a product is cut into and the rayon loop that runs them.
//!
//! [`gemm_reference`] is the triple loop the fast path is tested against.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod driver;
#[cfg(target_arch = "x86_64")]
mod ifma;
mod level;
mod pack;
mod portable;
mod tile;

#[cfg(test)]
mod tests;

pub use level::{KERNEL_ENV, KernelLevel, detected_kernel_level, kernel_level, requested_kernel};

use driver::{Lhs, run_product};
use pack::{Operands, pack_a_second, with_buffers};
use rayon::prelude::*;

/// Rows of the register tile (the IFMA kernel's 3·MR·2 accumulators must fit in 32 registers).
pub const MR: usize = 4;
/// Columns of the register tile (two 512-bit vectors of `u64`).
pub const NR: usize = 16;
/// Depth of a packed block (at most 256: the IFMA kernel's carry bound, see the `ifma` module doc).
const KC: usize = 128;
const _: () = assert!(KC <= 256);
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
    /// The entries, row-major (at least `rows · cols`).
    pub data: &'a [u64],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
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

/// Fewest columns of `C` for which the IFMA kernels repay the pass that makes `A`'s second
/// operands; below, `vpmullq` is faster.
const IFMA_MIN_COLS: usize = 4 * NR;

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
    if small_product(m, a, b, c) {
        return;
    }
    let level = kernel_level();
    // The IFMA kernels try the two-product kernel for small entries of A (plaintext weights)
    // first, and fall back when an entry is not small. With too few columns to repay the
    // pass that makes A's second operands: `vpmullq`.
    let (level, mode) = match level {
        KernelLevel::Avx512Ifma if n >= IFMA_MIN_COLS => (level, Operands::Split),
        KernelLevel::Avx512Ifma => (KernelLevel::Avx512, Operands::Plain),
        _ => (level, Operands::Plain),
    };
    with_buffers(|buf| {
        let mut mode = mode;
        if !pack_a_second(mode, m, k, a, &mut buf.a_second) {
            // A is not small (the check stops at the first row that is not): the
            // three-product IFMA kernel.
            mode = Operands::Cross;
            pack_a_second(mode, m, k, a, &mut buf.a_second);
        }
        let lhs = Lhs {
            m,
            a,
            second: &buf.a_second,
            level,
            mode,
        };
        run_product(&lhs, b, c, (&mut buf.b, &mut buf.b_second));
    })
}

/// The left operand `A [m, k]` of many products (a layer's weights), prepared once: the
/// kernel's second operands of `A` and the kernel they suit, which [`gemm_source`] makes anew
/// on every call (a pass over `A`; for a `B` of few columns, longer than the product).
#[derive(Clone, Debug)]
pub struct PreparedLhs {
    m: usize,
    k: usize,
    a: Vec<u64>,
    second: Vec<u64>,
    level: KernelLevel,
    mode: Operands,
}

impl PreparedLhs {
    /// Prepares the first `m · k` entries of `a` (row-major `[m, k]`).
    ///
    /// # Panics
    /// If `a` is shorter than `m · k`.
    pub fn new(m: usize, k: usize, a: &[u64]) -> Self {
        assert!(a.len() >= m * k, "PreparedLhs: operand too short");
        let a = a[..m * k].to_vec();
        let level = kernel_level();
        let mut second = Vec::new();
        let mode = if level != KernelLevel::Avx512Ifma {
            Operands::Plain
        } else if pack_a_second(Operands::Split, m, k, &a, &mut second) {
            Operands::Split
        } else {
            pack_a_second(Operands::Cross, m, k, &a, &mut second);
            Operands::Cross
        };
        Self {
            m,
            k,
            a,
            second,
            level,
            mode,
        }
    }

    /// Rows `m`.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Depth `k`.
    pub fn depth(&self) -> usize {
        self.k
    }

    /// The entries of `A` (row-major `[m, k]`).
    pub fn entries(&self) -> &[u64] {
        &self.a
    }

    /// Whether every entry is small (`|a| < 2³⁹`) and the two-product IFMA kernel runs.
    pub fn small(&self) -> bool {
        self.mode == Operands::Split
    }
}

/// `C += A · B` with a prepared `A` ([`PreparedLhs`]); the same product as [`gemm_source`].
///
/// # Panics
/// If `B` has another depth than `A`, or `c` is shorter than `m · n`.
pub fn gemm_prepared(a: &PreparedLhs, b: &dyn PanelSource, c: &mut [u64]) {
    let (m, n) = (a.m, b.cols());
    assert!(
        b.rows() == a.k && c.len() >= m * n,
        "gemm_prepared: B has depth {} for A of depth {}, or C is short",
        b.rows(),
        a.k
    );
    if small_product(m, &a.a, b, c) {
        return;
    }
    let lhs = if a.mode == Operands::Cross && n < IFMA_MIN_COLS {
        // The three-product kernel reads A twice (with its cross operands); with few columns
        // the product streams A from memory, and `vpmullq`, reading it once, is faster.
        Lhs {
            m,
            a: &a.a,
            second: &[],
            level: KernelLevel::Avx512,
            mode: Operands::Plain,
        }
    } else {
        Lhs {
            m,
            a: &a.a,
            second: &a.second,
            level: a.level,
            mode: a.mode,
        }
    };
    with_buffers(|buf| run_product(&lhs, b, c, (&mut buf.b, &mut buf.b_second)));
}

/// Products too small for the packed path (or of one column): computed directly. Returns
/// whether it computed this one.
fn small_product(m: usize, a: &[u64], b: &dyn PanelSource, c: &mut [u64]) -> bool {
    let (k, n) = (b.rows(), b.cols());
    if m == 0 || n == 0 || k == 0 {
        return true;
    }
    if m * n * k >= 4096 && n > 1 {
        return false;
    }
    let mut dense = vec![0u64; k * n];
    for (r, row) in dense.chunks_mut(n).enumerate() {
        b.segment(r, 0, row);
    }
    if n == 1 {
        gemv(m, k, a, &dense, &mut c[..m])
    } else {
        gemm_reference(m, k, n, a, &dense, c)
    }
    true
}
