//! Tests of the packed product against the triple loop, for every kernel this CPU has.

use super::driver::{CPtr, Plan, run_task};
use super::pack::{
    BUFFER_KEPT, Buffers, Operands, SMALL_OFFSET, cross_operand, pack_a_second, pack_b,
};
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
    // Every kernel this CPU can run, whichever `KNAPSEC_RING_KERNEL` forces for the rest.
    let levels = KernelLevel::ALL.into_iter().filter(|l| l.is_supported());
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
