//! Tests of the convolutions against the direct definition.

use super::*;
use proptest::prelude::*;

fn rand_tensor(dims: &[usize], seed: u64) -> RingTensor {
    let mut s = seed | 1;
    let n: usize = dims.iter().product();
    let data = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s ^ (s >> 31)
        })
        .collect();
    RingTensor::from_vec(dims, data).unwrap()
}

#[test]
fn hand_computed_3x3() {
    // 1 channel 3×3 input 1..9, a 2×2 kernel of ones, padding 0: window sums.
    let x = RingTensor::from_vec(&[1, 3, 3], (1..=9).collect()).unwrap();
    let w = RingTensor::filled(&[1, 1, 2, 2], 1);
    let y = conv2d(&x, &w, &Conv2dParams::new([2, 2])).unwrap();
    assert_eq!(y.dims(), &[1, 2, 2]);
    assert_eq!(y.data(), &[12, 16, 24, 28]);
    // Negative weights wrap: −1 · sums.
    let y = conv2d(
        &x,
        &w.neg(),
        &Conv2dParams::new([2, 2]).padding([1, 1]).stride([2, 2]),
    )
    .unwrap();
    assert_eq!(y.dims(), &[1, 2, 2]);
    assert_eq!(y.to_i64(), vec![-1, -5, -11, -28]);
}

#[test]
fn bad_geometry_is_an_error() {
    let x = RingTensor::zeros(&[4, 5, 5]);
    let w = RingTensor::zeros(&[8, 2, 3, 3]);
    assert!(conv2d(&x, &w, &Conv2dParams::new([3, 3])).is_err()); // groups 1 needs [8, 4, 3, 3]
    assert!(conv2d(&x, &w, &Conv2dParams::new([3, 3]).groups(2)).is_ok());
    assert!(conv2d(&x, &w, &Conv2dParams::new([3, 3]).groups(3)).is_err());
    assert!(conv2d(&x, &w, &Conv2dParams::new([3, 3]).groups(2).stride([0, 1])).is_err());
    let big = RingTensor::zeros(&[8, 2, 7, 7]);
    assert!(conv2d(&x, &big, &Conv2dParams::new([7, 7]).groups(2)).is_err());
    assert!(conv2d(&RingTensor::zeros(&[4, 5]), &w, &Conv2dParams::new([3, 3])).is_err());
}

#[test]
fn linear_and_matmul() {
    let w = RingTensor::from_i64(&[2, 3], &[1, -2, 3, 0, 1, -1]).unwrap();
    let x = RingTensor::from_i64(&[3, 1, 1], &[4, 5, 6]).unwrap();
    assert_eq!(linear(&x, &w).unwrap().to_i64(), vec![12, -1]);
    let m = w.matmul(&x.clone().reshape(&[3, 1]).unwrap()).unwrap();
    assert_eq!(m.to_i64(), vec![12, -1]);
    assert!(w.matmul(&w).is_err());
    assert!(linear(&RingTensor::zeros(&[2, 1, 1]), &w).is_err());
}

#[test]
fn resnet_like_layer_matches_reference() {
    let x = rand_tensor(&[16, 12, 12], 1);
    let w = rand_tensor(&[32, 16, 3, 3], 2);
    let p = Conv2dParams::new([3, 3]).padding([1, 1]);
    assert_eq!(
        conv2d(&x, &w, &p).unwrap(),
        conv2d_reference(&x, &w, &p).unwrap()
    );
    let p = p.stride([2, 2]);
    assert_eq!(
        conv2d(&x, &w, &p).unwrap(),
        conv2d_reference(&x, &w, &p).unwrap()
    );
}

/// Signed weights of at most `bits` bits (plaintext fixed-point weights are small).
fn small_tensor(dims: &[usize], seed: u64, bits: u32) -> RingTensor {
    let mut t = rand_tensor(dims, seed);
    t.data_mut()
        .iter_mut()
        .for_each(|v| *v = ((*v as i64) >> (64 - bits)) as u64);
    t
}

#[test]
fn prepared_weights_give_the_same_convolutions() {
    // Layer shapes on both paths of the product (tasks packing their own columns; B
    // packed whole for few columns), random and small weights (the two IFMA kernels),
    // grouped, depthwise and 1×1 convolutions.
    let cases = [
        (16, 32, 12, 3, 1, 1),
        (16, 32, 12, 3, 2, 1),
        (64, 64, 4, 3, 1, 1),
        (32, 32, 2, 3, 1, 1),
        (16, 16, 9, 1, 1, 1),
        (16, 32, 9, 3, 1, 4),
        (12, 12, 9, 3, 1, 12),
    ];
    for (seed, (c, o, h, k, s, g)) in cases.into_iter().enumerate() {
        let seed = seed as u64;
        let p = Conv2dParams::new([k, k])
            .stride([s, s])
            .padding([k / 2, k / 2])
            .groups(g);
        let x = rand_tensor(&[c, h, h], seed);
        for w in [
            rand_tensor(&[o, c / g, k, k], seed ^ 9),
            small_tensor(&[o, c / g, k, k], seed ^ 9, 20),
            small_tensor(&[o, c / g, k, k], seed ^ 9, 40),
        ] {
            let prepared = PreparedConv::new(&w, &p).unwrap();
            assert_eq!(prepared.weights(), w);
            assert_eq!(
                conv2d_prepared(&x, &prepared).unwrap(),
                conv2d_reference(&x, &w, &p).unwrap(),
                "{c}→{o} {h}×{h} k{k} s{s} g{g}"
            );
        }
    }
    // Weights for another input, or of another rank, are errors.
    let w = rand_tensor(&[8, 4, 3, 3], 1);
    let prepared = PreparedConv::new(&w, &Conv2dParams::new([3, 3])).unwrap();
    assert!(conv2d_prepared(&rand_tensor(&[5, 6, 6], 2), &prepared).is_err());
    assert!(PreparedConv::new(&rand_tensor(&[8, 4, 3], 1), &Conv2dParams::new([3, 3])).is_err());
    assert!(PreparedConv::new(&w, &Conv2dParams::new([3, 3]).groups(3)).is_err());
}

fn arb_case() -> impl Strategy<Value = (usize, usize, usize, usize, usize, Conv2dParams, u64)> {
    (
        1usize..4,  // groups
        1usize..4,  // input channels per group
        1usize..4,  // output channels per group
        1usize..10, // h
        1usize..10, // w
        (
            1usize..4,
            1usize..4,
            1usize..3,
            1usize..3,
            0usize..3,
            0usize..3,
            1usize..3,
            1usize..3,
        ),
        any::<u64>(),
    )
        .prop_map(
            |(g, cg, og, h, w, (kh, kw, sh, sw, ph, pw, dh, dw), seed)| {
                let p = Conv2dParams::new([kh, kw])
                    .stride([sh, sw])
                    .padding([ph, pw])
                    .dilation([dh, dw])
                    .groups(g);
                (g, cg, og, h, w, p, seed)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]
    #[test]
    fn fast_matches_reference((g, cg, og, h, w, p, seed) in arb_case()) {
        let x = rand_tensor(&[g * cg, h, w], seed);
        let wt = rand_tensor(&[g * og, cg, p.kernel[0], p.kernel[1]], seed ^ 1);
        let want = conv2d_reference(&x, &wt, &p);
        prop_assert_eq!(conv2d(&x, &wt, &p), want.clone());
        if let Ok(want) = want {
            let x2 = rand_tensor(&[g * cg, h, w], seed ^ 2);
            let w2 = rand_tensor(&[g * og, cg, p.kernel[0], p.kernel[1]], seed ^ 3);
            let want2 = conv2d_reference(&x2, &w2, &p).unwrap();
            let sum = conv2d_sum(&[(&x, &wt), (&x2, &w2)], &p).unwrap();
            prop_assert_eq!(sum, want.add(&want2).unwrap());
            let both = conv2d_batch(&[&x, &x2], &wt, &p).unwrap();
            prop_assert_eq!(&both[0], &want);
            prop_assert_eq!(both[1].clone(), conv2d_reference(&x2, &wt, &p).unwrap());
            let prepared = PreparedConv::new(&wt, &p).unwrap();
            prop_assert_eq!(conv2d_prepared(&x, &prepared).unwrap(), want);
        }
    }

    #[test]
    fn depthwise_matches_reference(c in 1usize..6, mult in 1usize..3, h in 1usize..12, w in 1usize..12,
                                   s in 1usize..3, d in 1usize..3, pad in 0usize..3, seed in any::<u64>()) {
        let p = Conv2dParams::new([3, 3]).stride([s, s]).dilation([d, d]).padding([pad, pad]).groups(c);
        let x = rand_tensor(&[c, h, w], seed);
        let wt = rand_tensor(&[c * mult, 1, 3, 3], seed ^ 5);
        prop_assert_eq!(conv2d(&x, &wt, &p), conv2d_reference(&x, &wt, &p));
    }
}
