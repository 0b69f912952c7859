//! Packing the operands of a product (module doc of [`super`]): `B` into `NR`-column,
//! `KC`-deep panels with the kernel's second operands made in the same pass, `A`'s second
//! operands in `KC`-deep blocks, the column sums and offset of the small-operand kernel, and
//! the per-thread buffers they are written to.

// `unsafe` is allowed here only: AVX-512 stores into the packed panels. Every block says why it is
// sound.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use super::avx512::panel_row;
use super::{KC, NR, PanelSource};
use rayon::prelude::*;

/// The IFMA kernel's cross operand of `v`: bits 0..12 at bit 0, bits 52..64 at bit 32
/// (see the `ifma` module doc).
#[inline(always)]
pub(super) fn cross_operand(v: u64) -> u64 {
    (v & 0xfff) | ((v >> 52) << 32)
}

/// The offset that makes a small entry of `A` non-negative (see the `ifma` module doc).
pub(super) const SMALL_OFFSET: u64 = 1 << 39;

/// What the packed operands hold beside `A` and `B` themselves: nothing (the `vpmullq`, AVX2
/// and portable kernels), the cross operands of both ([`micro_ifma`](super::ifma::micro_ifma)), or for the
/// small-operand kernel `a + 2³⁹` and `B` split into `b₀ = b mod 2¹²` and `b₁ = b >> 12`
/// ([`micro_ifma_small`](super::ifma::micro_ifma_small)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Operands {
    Plain,
    Cross,
    Split,
}

/// [`Operands`] as a const generic parameter (one compiled packing loop per mode).
pub(super) const PLAIN: u8 = 0;
pub(super) const CROSS: u8 = 1;
pub(super) const SPLIT: u8 = 2;

/// `A`'s second operands (cross operands, or `a + 2³⁹`) in `KC`-deep blocks: block `kb` holds
/// `m` rows of `kc` values at offset `m · kb` (`out` is reused; empty for [`Operands::Plain`]).
/// For [`Operands::Split`] the same pass checks that every entry is small (`|a| < 2³⁹`);
/// it returns `false` if one is not (`out` then holds no meaning).
pub(super) fn pack_a_second(
    mode: Operands,
    m: usize,
    k: usize,
    a: &[u64],
    out: &mut Vec<u64>,
) -> bool {
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
pub(super) fn packed_column_sums(pb: &[u64], pb_high: &[u64], k: usize, n: usize) -> Vec<u64> {
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
pub(super) fn add_panel_sums(panel: &[u64], sums: &mut [u64; NR]) {
    for row in panel.chunks_exact(NR) {
        for (s, &v) in sums.iter_mut().zip(row) {
            *s = s.wrapping_add(v);
        }
    }
}

/// `row[j] −= 2³⁹ · sums[j]`: the small-operand kernel's offset taken back off a row of `C`.
pub(super) fn subtract_offset(row: &mut [u64], sums: &[u64]) {
    for (cv, s) in row.iter_mut().zip(sums) {
        *cv = cv.wrapping_sub(s.wrapping_mul(SMALL_OFFSET));
    }
}

/// Gap between consecutive packed panels (one cache line). Without it, panels of `kc × NR`
/// values lie a multiple of 4 KiB apart, and packing, which writes one row into each panel in
/// turn, would land every write in the same L1 set.
pub(super) const PANEL_GAP: usize = 8;

/// Distance between the starts of consecutive packed panels of depth `kc`.
pub(super) const fn panel_stride(kc: usize) -> usize {
    kc * NR + PANEL_GAP
}

/// Offset of the block starting at depth `kb` (a multiple of `KC`) in `B` packed whole.
pub(super) const fn block_offset(kb: usize, npanels: usize) -> usize {
    kb / KC * npanels * panel_stride(KC)
}

/// Panels packed together by one call of [`pack_panels`] in [`pack_b`] (`PACK_GROUP · NR`
/// columns): a source is read in row segments this wide, not one `NR`-column panel at a time,
/// which for an `im2col` view means one bounds computation per output row, not per 16 pixels.
pub(super) const PACK_GROUP: usize = 8;

/// Where [`pack_panels`] writes: the panels of `B` (or of `b₀`), and those of the second
/// operands (empty for [`Operands::Plain`]).
pub(super) struct PanelsOut<'a> {
    pub(super) b: &'a mut [u64],
    pub(super) second: &'a mut [u64],
}

/// Reads rows `kb .. kb + kc`, columns `j0 .. j1` of `B` a row at a time into `row` (scratch
/// space, grown as needed) and hands each `NR`-column piece to `write` with its offset in
/// consecutive `kc × NR` panels ([`panel_stride`] apart). The loop under both packing
/// versions, which differ only in how they write a piece.
#[inline(always)]
pub(super) fn for_each_panel_row(
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
pub(super) fn pack_panels<const MODE: u8>(
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
pub(super) fn pack_panels_avx512<const MODE: u8>(
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
pub(super) fn pack_panels_as(
    mode: Operands,
    b: &dyn PanelSource,
    kb: usize,
    kc: usize,
    cols: (usize, usize),
    out: PanelsOut<'_>,
    row: &mut Vec<u64>,
) {
    #[cfg(target_arch = "x86_64")]
    if super::kernel_level().has_avx512() {
        // SAFETY: `kernel_level` returns only levels the CPU supports, so it has AVX-512 F.
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
pub(super) fn chunks_or_empty(v: &mut [u64], size: usize, count: usize) -> Vec<&mut [u64]> {
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
pub(super) fn pack_b(
    b: &dyn PanelSource,
    mode: Operands,
    out: &mut Vec<u64>,
    second: &mut Vec<u64>,
) {
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
pub(super) struct Buffers {
    pub(super) b: Vec<u64>,
    pub(super) b_second: Vec<u64>,
    pub(super) a_second: Vec<u64>,
}

impl Buffers {
    /// Frees every buffer larger than [`BUFFER_KEPT`] entries.
    pub(super) fn release_large(&mut self) {
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

/// Runs `f` on this thread's packing buffers, or on fresh ones when a product further up
/// this thread's stack holds them.
pub(super) fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
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
pub(super) const BUFFER_KEPT: usize = 4 << 20;
