//! The task driver of a product (module doc of [`super`]): the tasks of equal size a
//! product is cut into, what each task runs (packing its own columns of `B`, or reading `B`
//! packed whole), the edge tiles of `C`, and the dispatch to the kernel family of the
//! detected [`KernelLevel`].

// `unsafe` is allowed here only: tasks write disjoint tiles of `C` through one shared raw pointer,
// and dispatch to the
// `#[target_feature]` kernels. Every block says why it is sound.
#![allow(unsafe_code)]

use super::level::KernelLevel;
use super::pack::{
    Operands, PanelsOut, block_offset, pack_b, pack_panels_as, packed_column_sums, panel_stride,
    subtract_offset,
};
use super::tile::{ARows, CTile, Tile};
use super::{KC, MR, NC, NR, PanelSource, portable};
use rayon::prelude::*;

/// Bytes of `A` as the kernel reads it (with its cross operands, or only its offset copy)
/// beyond which a task streams only half of it. Measured on the ResNet layers: twice a core's
/// L2 cache; below it, splitting the rows (each run of columns then packed twice) costs more
/// than it saves.
pub(super) const A_STREAMED_BYTES: usize = 4 << 20;

/// A raw pointer to `C` shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
pub(super) struct CPtr(pub(super) *mut u64);
// SAFETY: tasks write disjoint tiles of C (see `gemm`), so sharing the pointer is sound.
unsafe impl Send for CPtr {}
// SAFETY: as for `Send`: no two tasks touch the same element of C.
unsafe impl Sync for CPtr {}

/// Geometry shared by the tasks of one product.
pub(super) struct Plan<'a> {
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    /// `A`, row-major `[m, k]` (not packed: the kernel streams `MR` rows at once).
    pub(super) a: &'a [u64],
    /// `A`'s second operands ([`pack_a_second`](super::pack::pack_a_second); empty for [`Operands::Plain`]).
    pub(super) a_second: &'a [u64],
    /// `B` packed whole ([`pack_b`]) and its second operands, or `None` when every task packs
    /// its own columns.
    pub(super) pb: Option<(&'a [u64], &'a [u64])>,
    /// What the kernel takes beside `A` and `B`.
    pub(super) mode: Operands,
    pub(super) src: &'a dyn PanelSource,
    pub(super) c: CPtr,
}

/// Rows `r0 .. r0 + MR` (clamped to `rows`) of a row-major matrix with row length `stride`,
/// elements `col .. col + len` of each (empty slices when `a` is empty: the cross operands of
/// a kernel that needs none).
pub(super) fn a_rows(
    a: &[u64],
    r0: usize,
    rows: usize,
    stride: usize,
    col: usize,
    len: usize,
) -> ARows<'_> {
    std::array::from_fn(|i| {
        let r = (r0 + i).min(rows - 1);
        a.get(r * stride + col..r * stride + col + len)
            .unwrap_or_default()
    })
}

/// Scratch space of a task that packs its own columns of `B`: the panels, their second
/// operands, one row of the source, and the column sums (small-operand kernel).
#[derive(Default)]
pub(super) struct TaskScratch {
    pub(super) b: Vec<u64>,
    pub(super) second: Vec<u64>,
    pub(super) row: Vec<u64>,
    pub(super) sums: Vec<u64>,
}

thread_local! {
    /// The last task's scratch space on this thread, kept for the next task: its buffers
    /// (hundreds of KB) would otherwise be mapped afresh, a page fault per 4 KiB, every task.
    static TASK_SCRATCH: std::cell::RefCell<TaskScratch> = std::cell::RefCell::default();
}

/// Computes the `C` block of rows `i0..i1`, columns `j0..j1` (panel-aligned starts).
#[inline(always)]
pub(super) fn task_body(
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
pub(super) fn task_packed(
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
pub(super) fn task_packing(
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
pub(super) fn run_tile(
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

/// Runs the block of rows `i0..i1`, columns `j0..j1` of `plan` with the kernel of `level`,
/// which must be one this CPU supports: [`kernel_level`](super::kernel_level) returns only
/// those, and the tests pick theirs with [`KernelLevel::is_supported`].
pub(super) fn run_task(
    level: KernelLevel,
    plan: &Plan<'_>,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
) {
    debug_assert!(level.is_supported(), "{level:?} kernel on a CPU without it");
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F/DQ/VL/IFMA (`level` is supported, see above).
        KernelLevel::Avx512Ifma => unsafe { super::ifma::task_ifma(plan, i0, i1, j0, j1) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F/DQ/VL (`level` is supported, see above).
        KernelLevel::Avx512 => unsafe { super::avx512::task_avx512(plan, i0, i1, j0, j1) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (`level` is supported, see above).
        KernelLevel::Avx2 => unsafe { super::avx2::task_avx2(plan, i0, i1, j0, j1) },
        _ => portable::task_generic(plan, i0, i1, j0, j1),
    }
}

/// The left operand of one product as the kernels take it: `A`, its second operands, and
/// the kernel.
pub(super) struct Lhs<'a> {
    pub(super) m: usize,
    pub(super) a: &'a [u64],
    pub(super) second: &'a [u64],
    pub(super) level: KernelLevel,
    pub(super) mode: Operands,
}

/// The parallel part of [`gemm_source`](super::gemm_source) and [`gemm_prepared`](super::gemm_prepared), given `A` with its second
/// operands: tasks of equal size, a multiple of the thread count (rayon deals them out as
/// threads come free). `pb`, `pb_second` hold `B` when it is packed whole.
pub(super) fn run_product(
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
