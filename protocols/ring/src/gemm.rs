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
//! chosen at run time with `is_x86_feature_detected!`, so the crate needs no `RUSTFLAGS`.
//!
//! The IFMA kernel (`micro_ifma`) gets a 64-bit product from three 52-bit multiply-adds,
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
//! operands of `A` are made once per product (or once for many, [`PreparedLhs`]); those of
//! `B` in the pass that packs it.
//!
//! **Small left operands** (`micro_ifma_small`). When every entry of `A` is a signed value
//! of at most 40 bits (`|a| < 2³⁹` as `i64`: the plaintext fixed-point weights of the secure
//! layers' online products), two 52-bit multiply-adds suffice. With `a' = a + 2³⁹ < 2⁴⁰` and
//! `b = b₀ + 2¹²·b₁` (`b₀ < 2¹²`, `b₁ < 2⁵²`): `a'·b₀ < 2⁵²` is exact in `lo52`, and of
//! `a'·b₁` only the low 52 bits matter (it is shifted by 12), so
//! `a'·b = lo52(a'b₀) + 2¹²·lo52(a'b₁) mod 2⁶⁴` for any depth. Then
//! `Σ a·b = Σ a'·b − 2³⁹·Σ b`. The column sums `Σ b` come from the kernel itself (two vector
//! additions per panel row, on the first row tile of each panel), or, when `B` is packed
//! whole, from the packed panels. `B` is packed as `b₀` with `b₁` beside it (in the place of
//! the cross operands).
//!
//! [`gemm_reference`] is the triple loop the fast path is tested against.

use rayon::prelude::*;

/// Rows of the register tile (the IFMA kernel's 3·MR·2 accumulators must fit in 32 registers).
pub const MR: usize = 4;
/// Columns of the register tile (two 512-bit vectors of `u64`).
pub const NR: usize = 16;
/// Depth of a packed block (at most 256: the IFMA kernel's carry bound, see the module doc).
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

/// The IFMA kernel's cross operand of `v`: bits 0..12 at bit 0, bits 52..64 at bit 32
/// (see the module doc).
#[inline(always)]
fn cross_operand(v: u64) -> u64 {
    (v & 0xfff) | ((v >> 52) << 32)
}

/// The offset that makes a small entry of `A` non-negative (see the module doc).
const SMALL_OFFSET: u64 = 1 << 39;

/// Fewest columns of `C` for which the IFMA kernels repay the pass that makes `A`'s second
/// operands; below, `vpmullq` is faster.
const IFMA_MIN_COLS: usize = 4 * NR;

/// What the packed operands hold beside `A` and `B` themselves: nothing (the `vpmullq`, AVX2
/// and portable kernels), the cross operands of both ([`micro_ifma`]), or for the
/// small-operand kernel `a + 2³⁹` and `B` split into `b₀ = b mod 2¹²` and `b₁ = b >> 12`
/// ([`micro_ifma_small`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operands {
    Plain,
    Cross,
    Split,
}

/// [`Operands`] as a const generic parameter (one compiled packing loop per mode).
const PLAIN: u8 = 0;
const CROSS: u8 = 1;
const SPLIT: u8 = 2;

/// `A`'s second operands (cross operands, or `a + 2³⁹`) in `KC`-deep blocks: block `kb` holds
/// `m` rows of `kc` values at offset `m · kb` (`out` is reused; empty for [`Operands::Plain`]).
/// For [`Operands::Split`] the same pass checks that every entry is small (`|a| < 2³⁹`);
/// it returns `false` if one is not (`out` then holds no meaning).
fn pack_a_second(mode: Operands, m: usize, k: usize, a: &[u64], out: &mut Vec<u64>) -> bool {
    if mode == Operands::Plain {
        out.clear();
        return true;
    }
    // Every value is written below; old contents need no clearing.
    out.resize(m * k, 0);
    out.par_chunks_mut(m * KC).enumerate().all(|(bi, block)| {
        let kb = bi * KC;
        let kc = KC.min(k - kb);
        for (r, dst) in block.chunks_exact_mut(kc).enumerate() {
            let src = &a[r * k + kb..r * k + kb + kc];
            if mode == Operands::Split {
                let mut small = true;
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v.wrapping_add(SMALL_OFFSET);
                    small &= *d < 2 * SMALL_OFFSET;
                }
                if !small {
                    return false;
                }
            } else {
                dst.iter_mut()
                    .zip(src)
                    .for_each(|(d, &v)| *d = cross_operand(v));
            }
        }
        true
    })
}

/// `Σ_k B[k, j]` for every column `j` (wrapping) of `B` packed whole by [`pack_b`] in
/// [`Operands::Split`] form (`b = b₀ + 2¹²·b₁`, `k × n`).
fn packed_column_sums(pb: &[u64], pb_high: &[u64], k: usize, n: usize) -> Vec<u64> {
    let npanels = n.div_ceil(NR);
    let mut sums = vec![0u64; npanels * NR];
    sums.par_chunks_mut(NR).enumerate().for_each(|(p, s)| {
        let (mut low, mut high) = ([0u64; NR], [0u64; NR]);
        let mut kb = 0;
        while kb < k {
            let kc = KC.min(k - kb);
            let at = block_offset(kb, npanels) + p * panel_stride(kc);
            add_panel_sums(&pb[at..at + kc * NR], &mut low);
            add_panel_sums(&pb_high[at..at + kc * NR], &mut high);
            kb += kc;
        }
        for ((s, l), h) in s.iter_mut().zip(low).zip(high) {
            *s = l.wrapping_add(h << 12);
        }
    });
    sums.truncate(n);
    sums
}

/// Adds the column sums of a `kc × NR` panel to `sums` (`NR` lanes).
fn add_panel_sums(panel: &[u64], sums: &mut [u64; NR]) {
    for row in panel.chunks_exact(NR) {
        for (s, &v) in sums.iter_mut().zip(row) {
            *s = s.wrapping_add(v);
        }
    }
}

/// `row[j] −= 2³⁹ · sums[j]`: the small-operand kernel's offset taken back off a row of `C`.
fn subtract_offset(row: &mut [u64], sums: &[u64]) {
    for (cv, s) in row.iter_mut().zip(sums) {
        *cv = cv.wrapping_sub(s.wrapping_mul(SMALL_OFFSET));
    }
}

/// Bytes of `A` as the kernel reads it (with its cross operands, or only its offset copy)
/// beyond which a task streams only half of it. Measured on the ResNet layers: twice a core's
/// L2 cache; below it, splitting the rows (each run of columns then packed twice) costs more
/// than it saves.
const A_STREAMED_BYTES: usize = 4 << 20;

/// Gap between consecutive packed panels (one cache line). Without it, panels of `kc × NR`
/// values lie a multiple of 4 KiB apart, and packing, which writes one row into each panel in
/// turn, would land every write in the same L1 set.
const PANEL_GAP: usize = 8;

/// Distance between the starts of consecutive packed panels of depth `kc`.
const fn panel_stride(kc: usize) -> usize {
    kc * NR + PANEL_GAP
}

/// Offset of the block starting at depth `kb` (a multiple of `KC`) in `B` packed whole.
const fn block_offset(kb: usize, npanels: usize) -> usize {
    kb / KC * npanels * panel_stride(KC)
}

/// Panels packed together by one call of [`pack_panels`] in [`pack_b`] (`PACK_GROUP · NR`
/// columns): a source is read in row segments this wide, not one `NR`-column panel at a time,
/// which for an `im2col` view means one bounds computation per output row, not per 16 pixels.
const PACK_GROUP: usize = 8;

/// Where [`pack_panels`] writes: the panels of `B` (or of `b₀`), and those of the second
/// operands (empty for [`Operands::Plain`]).
struct PanelsOut<'a> {
    b: &'a mut [u64],
    second: &'a mut [u64],
}

/// Reads rows `kb .. kb + kc`, columns `j0 .. j1` of `B` a row at a time into `row` (scratch
/// space, grown as needed) and hands each `NR`-column piece to `write` with its offset in
/// consecutive `kc × NR` panels ([`panel_stride`] apart). The loop under both packing
/// versions, which differ only in how they write a piece.
#[inline(always)]
fn for_each_panel_row(
    b: &dyn PanelSource,
    kb: usize,
    kc: usize,
    (j0, j1): (usize, usize),
    row: &mut Vec<u64>,
    mut write: impl FnMut(usize, &[u64; NR]),
) {
    let width = j1 - j0;
    row.resize(width.next_multiple_of(NR), 0);
    for q in 0..kc {
        b.segment(kb + q, j0, &mut row[..width]);
        for (p, src) in row.chunks_exact(NR).enumerate() {
            write(p * panel_stride(kc) + q * NR, src.try_into().unwrap());
        }
    }
}

/// Packs rows `kb .. kb + kc`, columns `j0 .. j1` of `B` into consecutive `kc × NR` panels
/// (`out.b` holds `(j1 − j0).div_ceil(NR)` of them), making the second operands of mode `MODE`
/// in the same pass. `row` is scratch space, grown as needed. Lanes past `j1` in the last
/// panel hold stale values; their results are never stored.
#[inline(always)]
fn pack_panels<const MODE: u8>(
    b: &dyn PanelSource,
    kb: usize,
    kc: usize,
    cols: (usize, usize),
    out: PanelsOut<'_>,
    row: &mut Vec<u64>,
) {
    for_each_panel_row(b, kb, kc, cols, row, |at, src| {
        let dst: &mut [u64; NR] = (&mut out.b[at..at + NR]).try_into().unwrap();
        match MODE {
            PLAIN => *dst = *src,
            CROSS => {
                *dst = *src;
                let second: &mut [u64; NR] = (&mut out.second[at..at + NR]).try_into().unwrap();
                for l in 0..NR {
                    second[l] = cross_operand(src[l]);
                }
            }
            _ => {
                let second: &mut [u64; NR] = (&mut out.second[at..at + NR]).try_into().unwrap();
                for l in 0..NR {
                    dst[l] = src[l] & 0xfff;
                    second[l] = src[l] >> 12;
                }
            }
        }
    });
}

/// [`pack_panels`] with AVX-512 vectors written out: LLVM's own vectorisation of the
/// second operands ran at half this speed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn pack_panels_avx512<const MODE: u8>(
    b: &dyn PanelSource,
    kb: usize,
    kc: usize,
    (j0, j1): (usize, usize),
    out: PanelsOut<'_>,
    row: &mut Vec<u64>,
) {
    use std::arch::x86_64::*;
    let np = (j1 - j0).div_ceil(NR);
    let end = (np - 1) * panel_stride(kc) + kc * NR;
    assert!(
        out.b.len() >= end && (MODE == PLAIN || out.second.len() >= end),
        "pack_panels: output too short"
    );
    let low = _mm512_set1_epi64(0xfff);
    let (bp, sp) = (out.b.as_mut_ptr(), out.second.as_mut_ptr());
    for_each_panel_row(b, kb, kc, (j0, j1), row, |at, src| {
        // SAFETY: `at` is the offset of a row of one of the np panels, so at + NR ≤ `end`,
        // which both outputs reach (asserted; `second` only written when it does); `src`
        // holds NR values.
        unsafe {
            let [v0, v1] = panel_row(src.as_ptr(), 0);
            let store = |dst: *mut u64, w0, w1| {
                _mm512_storeu_si512(dst.add(at).cast(), w0);
                _mm512_storeu_si512(dst.add(at + 8).cast(), w1);
            };
            match MODE {
                PLAIN => store(bp, v0, v1),
                CROSS => {
                    // cross_operand: bits 0..12, and bits 52..64 moved to bit 32.
                    let cross = |v| {
                        let top = _mm512_slli_epi64::<32>(_mm512_srli_epi64::<52>(v));
                        _mm512_or_si512(_mm512_and_si512(v, low), top)
                    };
                    store(bp, v0, v1);
                    store(sp, cross(v0), cross(v1));
                }
                _ => {
                    store(bp, _mm512_and_si512(v0, low), _mm512_and_si512(v1, low));
                    store(sp, _mm512_srli_epi64::<12>(v0), _mm512_srli_epi64::<12>(v1));
                }
            }
        }
    });
}

/// [`pack_panels`] in mode `mode`, or [`pack_panels_avx512`] where the CPU has AVX-512.
fn pack_panels_as(
    mode: Operands,
    b: &dyn PanelSource,
    kb: usize,
    kc: usize,
    cols: (usize, usize),
    out: PanelsOut<'_>,
    row: &mut Vec<u64>,
) {
    #[cfg(target_arch = "x86_64")]
    if kernel_level().has_avx512() {
        // SAFETY: `kernel_level` detected AVX-512 F.
        return unsafe {
            match mode {
                Operands::Plain => pack_panels_avx512::<PLAIN>(b, kb, kc, cols, out, row),
                Operands::Cross => pack_panels_avx512::<CROSS>(b, kb, kc, cols, out, row),
                Operands::Split => pack_panels_avx512::<SPLIT>(b, kb, kc, cols, out, row),
            }
        };
    }
    match mode {
        Operands::Plain => pack_panels::<PLAIN>(b, kb, kc, cols, out, row),
        Operands::Cross => pack_panels::<CROSS>(b, kb, kc, cols, out, row),
        Operands::Split => pack_panels::<SPLIT>(b, kb, kc, cols, out, row),
    }
}

/// `v` in chunks of `size`, or `count` empty slices when `v` is empty (a mode without second
/// operands).
fn chunks_or_empty(v: &mut [u64], size: usize, count: usize) -> Vec<&mut [u64]> {
    if v.is_empty() {
        (0..count).map(|_| &mut [][..]).collect()
    } else {
        v.chunks_mut(size).collect()
    }
}

/// Packs `B` into `NR`-column panels, `KC`-deep blocks: block `kb` (starting at depth `kb`,
/// at [`block_offset`]) holds `npanels` panels of `kc × NR`, [`panel_stride`] apart; the
/// second operands of
/// `mode` go to `second` in the same layout. The buffers are reused (their old contents only
/// survive in padding lanes, whose results are never stored).
fn pack_b(b: &dyn PanelSource, mode: Operands, out: &mut Vec<u64>, second: &mut Vec<u64>) {
    let (k, n) = (b.rows(), b.cols());
    let npanels = n.div_ceil(NR);
    let nblocks = k.div_ceil(KC);
    let len =
        block_offset((nblocks - 1) * KC, npanels) + npanels * panel_stride(k - (nblocks - 1) * KC);
    out.resize(len, 0);
    if mode == Operands::Plain {
        second.clear();
    } else {
        second.resize(len, 0);
    }
    let block_len = npanels * panel_stride(KC);
    let blocks: Vec<_> = out
        .chunks_mut(block_len)
        .zip(chunks_or_empty(second, block_len, nblocks))
        .collect();
    blocks
        .into_par_iter()
        .enumerate()
        .for_each(|(bi, (block, block_second))| {
            let kb = bi * KC;
            let kc = KC.min(k - kb);
            let group_len = PACK_GROUP * panel_stride(kc);
            let ngroups = npanels.div_ceil(PACK_GROUP);
            let groups: Vec<_> = block
                .chunks_mut(group_len)
                .zip(chunks_or_empty(block_second, group_len, ngroups))
                .collect();
            groups.into_par_iter().enumerate().for_each_init(
                Vec::new,
                |row, (gi, (panels, second))| {
                    let j0 = gi * PACK_GROUP * NR;
                    let j1 = (j0 + PACK_GROUP * NR).min(n);
                    let out = PanelsOut { b: panels, second };
                    pack_panels_as(mode, b, kb, kc, (j0, j1), out, row);
                },
            );
        });
}

/// Packed operands of one product: `B` whole with its second operands (when it is not packed
/// per task), and `A`'s second operands.
#[derive(Default)]
struct Buffers {
    b: Vec<u64>,
    b_second: Vec<u64>,
    a_second: Vec<u64>,
}

impl Buffers {
    /// Frees every buffer larger than [`BUFFER_KEPT`] entries.
    fn release_large(&mut self) {
        for v in [&mut self.b, &mut self.b_second, &mut self.a_second] {
            if v.capacity() > BUFFER_KEPT {
                *v = Vec::new();
            }
        }
    }
}

thread_local! {
    /// The packed operands of the last product run from this thread, kept
    /// for the next one (up to [`BUFFER_KEPT`] entries each): a fresh allocation of several
    /// MB costs a page fault per 4 KiB on every call. A nested product on the same thread (rayon may run one inside another's
    /// parallel loop) finds it borrowed and packs into new buffers instead.
    static PACKED: std::cell::RefCell<Buffers> = const {
        std::cell::RefCell::new(Buffers {
            b: Vec::new(),
            b_second: Vec::new(),
            a_second: Vec::new(),
        })
    };
}

/// Rows `i0 .. i0 + MR` of `A`, each from depth `kb` for `kc` elements (rows past the end
/// repeat the last row; their results are discarded).
type ARows<'a> = [&'a [u64]; MR];

/// The operands of one micro-kernel call: `MR` rows of `A` and a `kc × NR` panel of `B`, with
/// their cross operands ([`cross_operand`]) for the IFMA kernel (empty for the others).
struct Tile<'a> {
    a: ARows<'a>,
    a_cross: ARows<'a>,
    b: &'a [u64],
    b_cross: &'a [u64],
}

/// Where a micro-kernel adds its `MR × NR` results: `MR` rows of `NR` values, `ld` apart
/// (a full tile of `C` itself, or a scratch tile for one at the edge of `C`); and, for the
/// small-operand kernel, where it adds the column sums of its panel of `B`, when asked to.
struct CTile<'s> {
    ptr: *mut u64,
    ld: usize,
    sums: Option<&'s mut [u64; NR]>,
}

impl<'s> CTile<'s> {
    /// # Safety
    /// `ptr + i·ld .. ptr + i·ld + NR` is valid for reads and writes for every `i < MR`, and
    /// nothing else reads or writes it while the tile lives.
    unsafe fn new(ptr: *mut u64, ld: usize) -> Self {
        Self {
            ptr,
            ld,
            sums: None,
        }
    }

    /// The same tile, with the column sums `Σ b` of the panel to be added to `sums`
    /// ([`micro_ifma_small`] only; the other kernels never take this).
    fn with_sums(self, sums: Option<&'s mut [u64; NR]>) -> Self {
        Self { sums, ..self }
    }

    /// The start of row `i < MR`.
    fn row(&self, i: usize) -> *mut u64 {
        debug_assert!(i < MR);
        self.ptr.wrapping_add(i * self.ld)
    }

    /// Adds `acc` to the tile (the kernels that keep their sums in a local array).
    #[inline(always)]
    fn add(&mut self, acc: &[[u64; NR]; MR]) {
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
    fn add_512(&mut self, i: usize, j: usize, v: std::arch::x86_64::__m512i) {
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

/// The register-tile micro-kernel, portable version: `out += A[rows, kb..] · Bpanel`.
#[inline(always)]
fn micro(t: &Tile<'_>, out: &mut CTile<'_>) {
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

/// Row `p` of a packed `NR`-column panel as two 512-bit vectors.
///
/// # Safety
/// `panel` points at a panel at least `(p + 1) · NR` values long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn panel_row(panel: *const u64, p: usize) -> [std::arch::x86_64::__m512i; 2] {
    use std::arch::x86_64::_mm512_loadu_si512;
    // SAFETY: both loads lie within the panel row (the caller's contract).
    unsafe {
        [
            _mm512_loadu_si512(panel.add(p * NR).cast()),
            _mm512_loadu_si512(panel.add(p * NR + 8).cast()),
        ]
    }
}

/// AVX-512 IFMA micro-kernel: three 52-bit multiply-adds per 64-bit product (module doc).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn micro_ifma(t: &Tile<'_>, out: &mut CTile<'_>) {
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn micro_ifma_small(t: &Tile<'_>, out: &mut CTile<'_>) {
    if out.sums.is_some() {
        micro_ifma_small_as::<true>(t, out)
    } else {
        micro_ifma_small_as::<false>(t, out)
    }
}

/// [`micro_ifma_small`], with or without the column sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn micro_ifma_small_as<const SUMS: bool>(t: &Tile<'_>, out: &mut CTile<'_>) {
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

/// AVX-512 micro-kernel: eight 8-lane accumulators, `vpmullq` + `vpaddq` per lane group.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn micro_avx512(t: &Tile<'_>, out: &mut CTile<'_>) {
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

/// AVX2 micro-kernel: 64-bit products from three `vpmuludq` (`lo·lo + (hi·lo + lo·hi) << 32`),
/// one quarter of the tile (4 columns) at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn micro_avx2(t: &Tile<'_>, out: &mut CTile<'_>) {
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
    /// `A`'s second operands ([`pack_a_second`]; empty for [`Operands::Plain`]).
    a_second: &'a [u64],
    /// `B` packed whole ([`pack_b`]) and its second operands, or `None` when every task packs
    /// its own columns.
    pb: Option<(&'a [u64], &'a [u64])>,
    /// What the kernel takes beside `A` and `B`.
    mode: Operands,
    src: &'a dyn PanelSource,
    c: CPtr,
}

/// Rows `r0 .. r0 + MR` (clamped to `rows`) of a row-major matrix with row length `stride`,
/// elements `col .. col + len` of each (empty slices when `a` is empty: the cross operands of
/// a kernel that needs none).
fn a_rows(a: &[u64], r0: usize, rows: usize, stride: usize, col: usize, len: usize) -> ARows<'_> {
    std::array::from_fn(|i| {
        let r = (r0 + i).min(rows - 1);
        a.get(r * stride + col..r * stride + col + len)
            .unwrap_or_default()
    })
}

/// Scratch space of a task that packs its own columns of `B`: the panels, their second
/// operands, one row of the source, and the column sums (small-operand kernel).
#[derive(Default)]
struct TaskScratch {
    b: Vec<u64>,
    second: Vec<u64>,
    row: Vec<u64>,
    sums: Vec<u64>,
}

thread_local! {
    /// The last task's scratch space on this thread, kept for the next task: its buffers
    /// (hundreds of KB) would otherwise be mapped afresh, a page fault per 4 KiB, every task.
    static TASK_SCRATCH: std::cell::RefCell<TaskScratch> = std::cell::RefCell::default();
}

/// Computes the `C` block of rows `i0..i1`, columns `j0..j1` (panel-aligned starts).
#[inline(always)]
fn task_body(
    plan: &Plan<'_>,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
    micro: impl Fn(&Tile<'_>, &mut CTile<'_>),
) {
    if let Some(packed) = plan.pb {
        return task_packed(plan, packed, (i0, i1), (j0, j1), &micro);
    }
    TASK_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => task_packing(plan, (i0, i1), (j0, j1), &micro, &mut scratch),
        Err(_) => task_packing(
            plan,
            (i0, i1),
            (j0, j1),
            &micro,
            &mut TaskScratch::default(),
        ),
    })
}

/// [`task_body`] on a `B` packed whole: one row tile after the other, each through the whole
/// depth, so that `A` is read in long runs (its rows stream from memory once; `B` comes from
/// cache for every tile).
#[inline(always)]
fn task_packed(
    plan: &Plan<'_>,
    (pb, pbs): (&[u64], &[u64]),
    (i0, i1): (usize, usize),
    (j0, j1): (usize, usize),
    micro: &impl Fn(&Tile<'_>, &mut CTile<'_>),
) {
    let npanels = plan.n.div_ceil(NR);
    for ip in (i0 / MR)..i1.div_ceil(MR) {
        let mut kb = 0;
        while kb < plan.k {
            let kc = KC.min(plan.k - kb);
            let at = block_offset(kb, npanels);
            let a_second = plan.a_second.get(plan.m * kb..).unwrap_or_default();
            for jp in (j0 / NR)..j1.div_ceil(NR) {
                let panel = at + jp * panel_stride(kc)..at + jp * panel_stride(kc) + kc * NR;
                let b = (&pb[panel.clone()], pbs.get(panel).unwrap_or_default());
                run_tile(plan, micro, (ip, jp), (kb, kc), b, a_second, None);
            }
            kb += kc;
        }
    }
}

/// [`task_body`] for a task that packs its own columns of `B`, one `KC` block at a time
/// (they stay in cache for all the rows that follow).
#[inline(always)]
fn task_packing(
    plan: &Plan<'_>,
    (i0, i1): (usize, usize),
    (j0, j1): (usize, usize),
    micro: &impl Fn(&Tile<'_>, &mut CTile<'_>),
    scratch: &mut TaskScratch,
) {
    let TaskScratch {
        b: local,
        second: local_second,
        row,
        sums,
    } = scratch;
    let np = (j1 - j0).div_ceil(NR);
    // Column sums of this task's columns of B (small-operand kernel).
    sums.clear();
    if plan.mode == Operands::Split {
        sums.resize(np * NR, 0);
    }
    let mut kb = 0;
    while kb < plan.k {
        let kc = KC.min(plan.k - kb);
        // Lanes past the last column hold stale values; their results are never stored.
        local.resize(np * panel_stride(kc), 0);
        if plan.mode != Operands::Plain {
            local_second.resize(np * panel_stride(kc), 0);
        }
        let out = PanelsOut {
            b: local,
            second: local_second,
        };
        pack_panels_as(plan.mode, plan.src, kb, kc, (j0, j1), out, row);
        let a_second = plan.a_second.get(plan.m * kb..).unwrap_or_default();
        for (p, jp) in ((j0 / NR)..j1.div_ceil(NR)).enumerate() {
            let panel = p * panel_stride(kc)..p * panel_stride(kc) + kc * NR;
            let b = (
                &local[panel.clone()],
                local_second.get(panel).unwrap_or_default(),
            );
            // The small-operand kernel adds this panel's column sums on its first row tile.
            let mut panel_sums = sums
                .chunks_exact_mut(NR)
                .nth(p)
                .map(|s| <&mut [u64; NR]>::try_from(s).unwrap());
            for ip in (i0 / MR)..i1.div_ceil(MR) {
                run_tile(
                    plan,
                    micro,
                    (ip, jp),
                    (kb, kc),
                    b,
                    a_second,
                    panel_sums.take(),
                );
            }
        }
        kb += kc;
    }
    if plan.mode == Operands::Split {
        // The kernel computed Σ (a + 2³⁹)·b; take 2³⁹·Σ b back off this task's tiles.
        for i in i0..i1 {
            // SAFETY: row i < m and columns j0 .. j1 ≤ n lie inside C, and this task's tiles
            // (rows i0..i1, columns j0..j1) belong to it only.
            let crow =
                unsafe { std::slice::from_raw_parts_mut(plan.c.0.add(i * plan.n + j0), j1 - j0) };
            subtract_offset(crow, sums);
        }
    }
}

/// Adds the product of row tile `ip` of `A` and panel `jp` of `B` over depths `kb .. kb + kc`
/// to `C` (the tile belongs to the calling task). `b` is the packed panel and its second
/// operands, `a_second` the block's second operands of `A`; `sums` as in [`CTile::with_sums`].
#[inline(always)]
fn run_tile(
    plan: &Plan<'_>,
    micro: &impl Fn(&Tile<'_>, &mut CTile<'_>),
    (ip, jp): (usize, usize),
    (kb, kc): (usize, usize),
    (b, b_cross): (&[u64], &[u64]),
    a_second: &[u64],
    sums: Option<&mut [u64; NR]>,
) {
    let (m, n) = (plan.m, plan.n);
    let tile = Tile {
        a: a_rows(plan.a, ip * MR, m, plan.k, kb, kc),
        a_cross: a_rows(a_second, ip * MR, m, kc, 0, kc),
        b,
        b_cross,
    };
    let rows = MR.min(m - ip * MR);
    let cols = NR.min(n - jp * NR);
    if rows == MR && cols == NR {
        // SAFETY: rows ip·MR .. + MR ≤ m and columns jp·NR .. + NR ≤ n lie inside C, and this
        // tile belongs to the calling task only.
        let out = unsafe { CTile::new(plan.c.0.add(ip * MR * n + jp * NR), n) };
        return micro(&tile, &mut out.with_sums(sums));
    }
    // A tile at the edge of C: the kernel adds into a scratch tile, whose rows and columns
    // inside C are then added to C.
    let mut acc = [[0u64; NR]; MR];
    // SAFETY: `acc` holds MR rows of NR values and lives through the call.
    let out = unsafe { CTile::new(acc.as_mut_ptr().cast(), NR) };
    micro(&tile, &mut out.with_sums(sums));
    for (i, acc_row) in acc.iter().enumerate().take(rows) {
        // SAFETY: row ip·MR + i < m and columns jp·NR .. + cols ≤ n lie inside C, and this
        // tile belongs to the calling task only.
        let crow = unsafe {
            std::slice::from_raw_parts_mut(plan.c.0.add((ip * MR + i) * n + jp * NR), cols)
        };
        for (cv, &av) in crow.iter_mut().zip(acc_row) {
            *cv = cv.wrapping_add(av);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512ifma")]
fn task_ifma(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    // The closure inherits this function's target features (detected by `kernel_level`).
    if plan.mode == Operands::Split {
        task_body(plan, i0, i1, j0, j1, |t, out| micro_ifma_small(t, out))
    } else {
        task_body(plan, i0, i1, j0, j1, |t, out| micro_ifma(t, out))
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn task_avx512(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    // The closure inherits this function's target features (AVX-512 F/DQ, detected by
    // `kernel_level` before this runs).
    task_body(plan, i0, i1, j0, j1, |t, out| micro_avx512(t, out))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn task_avx2(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    // The closure inherits this function's target features (AVX2, detected first).
    task_body(plan, i0, i1, j0, j1, |t, out| micro_avx2(t, out))
}

fn task_generic(plan: &Plan<'_>, i0: usize, i1: usize, j0: usize, j1: usize) {
    task_body(plan, i0, i1, j0, j1, micro)
}

/// Which compiled copy of the micro-kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLevel {
    /// AVX-512 IFMA (with F, DQ, VL): three 52-bit multiply-adds per product.
    Avx512Ifma,
    /// AVX-512 F + DQ (+ VL): `vpmullq` on 512-bit vectors.
    Avx512,
    /// AVX2.
    Avx2,
    /// Whatever the build target allows.
    Generic,
}

impl KernelLevel {
    /// Whether 512-bit integer vectors (AVX-512 F, DQ, VL) are available.
    pub fn has_avx512(self) -> bool {
        matches!(self, KernelLevel::Avx512Ifma | KernelLevel::Avx512)
    }
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
                if std::is_x86_feature_detected!("avx512ifma") {
                    return KernelLevel::Avx512Ifma;
                }
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
        KernelLevel::Avx512Ifma => unsafe { task_ifma(plan, i0, i1, j0, j1) },
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

/// Runs `f` on this thread's packing buffers, or on fresh ones when a product further up
/// this thread's stack holds them.
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    PACKED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => {
            let r = f(&mut buffers);
            buffers.release_large();
            r
        }
        Err(_) => f(&mut Buffers::default()),
    })
}

/// Entries of a thread's packing buffer kept for the next product (32 MiB); a larger one
/// (a product with unusually large weights) is given back to the allocator once it is done.
const BUFFER_KEPT: usize = 4 << 20;

/// The left operand of one product as the kernels take it: `A`, its second operands, and
/// the kernel.
struct Lhs<'a> {
    m: usize,
    a: &'a [u64],
    second: &'a [u64],
    level: KernelLevel,
    mode: Operands,
}

/// The parallel part of [`gemm_source`] and [`gemm_prepared`], given `A` with its second
/// operands: tasks of equal size, a multiple of the thread count (rayon deals them out as
/// threads come free). `pb`, `pb_second` hold `B` when it is packed whole.
fn run_product(
    lhs: &Lhs<'_>,
    b: &dyn PanelSource,
    c: &mut [u64],
    (pb, pb_second): (&mut Vec<u64>, &mut Vec<u64>),
) {
    let (k, n) = (b.rows(), b.cols());
    let Lhs {
        m,
        a,
        second: a_second,
        level,
        mode,
    } = *lhs;
    let threads = rayon::current_num_threads();
    let npanels = n.div_ceil(NR);
    let c_ptr = CPtr(c.as_mut_ptr());
    if npanels >= 2 * threads {
        // Enough columns: each task takes all rows of a run of columns and packs those
        // columns of B itself, so B never travels through memory whole. About four tasks per
        // thread, at least two panels and at most NC columns wide.
        let tasks = (4 * threads)
            .max(n.div_ceil(NC))
            .min(npanels / 2)
            .next_multiple_of(threads)
            .min(npanels);
        let plan = Plan {
            m,
            k,
            n,
            a,
            a_second,
            pb: None,
            mode,
            src: b,
            c: c_ptr,
        };
        // When the A that the kernel reads is large, the rows are split in two as well:
        // each task then streams half of it, and each run of columns is packed by two tasks.
        let a_bytes = m * k * if mode == Operands::Cross { 16 } else { 8 };
        let row_blocks = if m >= 8 * MR && tasks % 2 == 0 && a_bytes > A_STREAMED_BYTES {
            2
        } else {
            1
        };
        let col_tasks = tasks / row_blocks;
        let rpanels = m.div_ceil(MR);
        (0..tasks).into_par_iter().for_each(|t| {
            let (ti, tj) = (t / col_tasks, t % col_tasks);
            let (p0, p1) = (tj * npanels / col_tasks, (tj + 1) * npanels / col_tasks);
            let (r0, r1) = (ti * rpanels / row_blocks, (ti + 1) * rpanels / row_blocks);
            run_task(
                level,
                &plan,
                r0 * MR,
                (r1 * MR).min(m),
                p0 * NR,
                (p1 * NR).min(n),
            );
        });
        return;
    }
    // Few columns: B is packed once, and tasks take runs of rows (at least four row panels).
    pack_b(b, mode, pb, pb_second);
    if mode == Operands::Split {
        // The kernel computes Σ (a + 2³⁹)·b; take 2³⁹·Σ b back off every row.
        let sums = packed_column_sums(pb, pb_second, k, n);
        c[..m * n]
            .par_chunks_mut(n)
            .for_each(|row| subtract_offset(row, &sums));
    }
    let plan = Plan {
        m,
        k,
        n,
        a,
        a_second,
        pb: Some((pb, pb_second)),
        mode,
        src: b,
        c: c_ptr,
    };
    let rpanels = m.div_ceil(MR);
    let tasks = (4 * threads).min(rpanels.div_ceil(4)).max(1);
    (0..tasks).into_par_iter().for_each(|t| {
        let (p0, p1) = (t * rpanels / tasks, (t + 1) * rpanels / tasks);
        run_task(level, &plan, p0 * MR, (p1 * MR).min(m), 0, n);
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
        check(53, KC + 1, NC + 3, 2);
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
        // Random operands, and all-ones ones: the IFMA kernel's largest carries.
        for (a, b) in [
            (lcg(9, m * k), lcg(10, k * n)),
            (vec![u64::MAX; m * k], vec![u64::MAX; k * n]),
        ] {
            every_kernel_agrees(m, k, n, &a, &b);
        }
    }

    fn every_kernel_agrees(m: usize, k: usize, n: usize, a: &[u64], b: &[u64]) {
        let mut want = vec![0; m * n];
        gemm_reference(m, k, n, a, b, &mut want);
        let src = Dense {
            data: b,
            rows: k,
            cols: n,
        };
        let (mut pb, mut pb_cross, mut a_cross) = (Vec::new(), Vec::new(), Vec::new());
        pack_b(&src, Operands::Cross, &mut pb, &mut pb_cross);
        assert!(
            pb.iter()
                .zip(&pb_cross)
                .all(|(&v, &x)| x == cross_operand(v))
        );
        assert!(pack_a_second(Operands::Cross, m, k, a, &mut a_cross));
        let mut levels = vec![KernelLevel::Generic];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                levels.push(KernelLevel::Avx2);
            }
            if kernel_level().has_avx512() {
                levels.push(KernelLevel::Avx512);
            }
            if kernel_level() == KernelLevel::Avx512Ifma {
                levels.push(KernelLevel::Avx512Ifma);
            }
        }
        for level in levels {
            for whole in [true, false] {
                let mut got = vec![0; m * n];
                let plan = Plan {
                    m,
                    k,
                    n,
                    a,
                    a_second: &a_cross,
                    pb: whole.then_some((&pb[..], &pb_cross[..])),
                    mode: if level == KernelLevel::Avx512Ifma {
                        Operands::Cross
                    } else {
                        Operands::Plain
                    },
                    src: &src,
                    c: CPtr(got.as_mut_ptr()),
                };
                run_task(level, &plan, 0, m, 0, n);
                assert_eq!(got, want, "{level:?}, packed whole: {whole}");
            }
        }
    }

    /// Uniform signed values of 40 bits (`[−2³⁹, 2³⁹)`), as the small-operand kernel takes.
    fn small_values(seed: u64, len: usize) -> Vec<u64> {
        lcg(seed, len)
            .into_iter()
            .map(|v| (v >> 24).wrapping_sub(SMALL_OFFSET))
            .collect()
    }

    #[test]
    fn small_left_operands_take_the_two_product_kernel_exactly() {
        let neg = |v: u64| v.wrapping_neg();
        let small = |a: &[u64]| pack_a_second(Operands::Split, 1, a.len(), a, &mut Vec::new());
        assert!(small(&[SMALL_OFFSET - 1, neg(SMALL_OFFSET), 0, u64::MAX]));
        assert!(!small(&[SMALL_OFFSET]));
        assert!(!small(&[neg(SMALL_OFFSET + 1)]));
        // The check covers every block of a deep row, not only the first.
        let mut deep = vec![0; 3 * KC];
        deep[2 * KC + 5] = SMALL_OFFSET;
        assert!(!small(&deep));
        // The same shapes as the edge test (whole B packed, and tasks packing their own
        // columns), and one exactly as wide as the kernel needs.
        let shapes = [
            (7, 300, 33, 1),
            (53, KC + 1, NC + 3, 2),
            (64, 576, 64, 5),
            (13, 300, 8 * NC + 5, 6),
            (5, 1000, 8 * NR, 7),
        ];
        for (m, k, n, seed) in shapes {
            let mut a = small_values(seed, m * k);
            (a[0], a[1]) = (SMALL_OFFSET - 1, neg(SMALL_OFFSET));
            // Random B, and all-ones B (the largest values in both halves).
            for b in [lcg(seed ^ 3, k * n), vec![u64::MAX; k * n]] {
                let init = lcg(seed ^ 77, m * n);
                let (mut fast, mut slow) = (init.clone(), init);
                gemm(m, k, n, &a, &b, &mut fast);
                gemm_reference(m, k, n, &a, &b, &mut slow);
                assert_eq!(fast, slow, "m={m} k={k} n={n}");
            }
        }
    }

    #[test]
    fn a_thread_keeps_its_packing_buffers_only_up_to_the_limit() {
        let mut buffers = Buffers {
            b: Vec::with_capacity(BUFFER_KEPT + 1),
            b_second: Vec::with_capacity(16),
            a_second: Vec::with_capacity(BUFFER_KEPT),
        };
        buffers.release_large();
        assert_eq!(buffers.b.capacity(), 0);
        assert!(buffers.b_second.capacity() >= 16);
        assert!(buffers.a_second.capacity() >= BUFFER_KEPT);
    }

    #[test]
    fn many_threads_pack_b_whole_for_every_kernel_mode() {
        // With 16 threads, fewer than 32 panels of columns make the product pack B once and
        // split rows among tasks: both IFMA modes (the small-operand one from 128 columns)
        // and the column sums taken off C then run on that path.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(16)
            .build()
            .unwrap();
        for (m, k, n, seed) in [
            (37, 300, 200, 11),
            (9, KC + 3, 8 * NR, 12),
            (70, 50, 40, 13),
        ] {
            let random = lcg(seed, m * k);
            let small = small_values(seed, m * k);
            for (a, b) in [
                (&random, lcg(seed ^ 1, k * n)),
                (&small, lcg(seed ^ 2, k * n)),
                (&small, vec![u64::MAX; k * n]),
            ] {
                let init = lcg(seed ^ 77, m * n);
                let (mut fast, mut slow) = (init.clone(), init);
                pool.install(|| gemm(m, k, n, a, &b, &mut fast));
                gemm_reference(m, k, n, a, &b, &mut slow);
                assert_eq!(fast, slow, "m={m} k={k} n={n}");
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
