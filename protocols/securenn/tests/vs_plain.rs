//! Every op of the secure backend against `knapsec-plain` (the oracle) on its shared cases
//! ([`knapsec_plain::cases`], with the tolerance of its fixed-point semantics), and the bytes
//! of each phase against their closed forms. The approximate windows' bit-for-bit agreement
//! with the oracle's emulation runs in the backend conformance kit
//! (`tests/src/kits/backend/`), for every private backend.

use knapsec_core::backend::PartyOutput;
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::graph_build::random_weights;
use knapsec_plain::cases::{self, Case, input};
use knapsec_securenn::{DreluMode, Options, Reveal, SimReport, nets, simulate};
use std::time::Duration;

fn run(model: &SecureModel, weights: &ModelWeights, x: &[f32], options: Options) -> SimReport {
    simulate(model, weights, x, options, Some(Duration::from_secs(60))).unwrap()
}

fn logits(r: &SimReport) -> Vec<f32> {
    match &r.output {
        PartyOutput::Logits(v) => v.clone(),
        other => panic!("expected logits, got {other:?}"),
    }
}

/// Runs a case with the default options and checks it against the oracle and its bytes
/// against the closed forms.
fn check(case: &Case) -> SimReport {
    let (model, weights) = (&case.model, &case.weights);
    let r = run(model, weights, &case.input, Options::default());
    case.check(&r.output).unwrap();
    // bytes: measured = closed form; setup = closed form
    let total = r.offline.comm.bytes + r.online.comm.bytes;
    assert_eq!(
        total, r.closed_form_bytes,
        "{}: per-inference bytes",
        model.arch
    );
    assert_eq!(
        r.setup.comm.bytes, r.closed_form_setup_bytes,
        "{}: setup bytes",
        model.arch
    );
    r
}

#[test]
fn block_relu_is_exact_with_mixed_blocks_and_its_bytes_match() {
    let r = check(&cases::mixed_block_relu());
    // M = 4 active channels · 35 pixels; N = 35 + 4·2 + 3·2 + 1 patches; n = 63
    let (mm, n) = (4 * 35u64, 35 + 8 + 6 + 1u64);
    assert_eq!(r.drelus, n);
    assert_eq!(r.online.comm.op("select-open").bytes, 16 * mm);
    assert_eq!(r.online.comm.op("select-mult").bytes, 8 * mm);
    assert_eq!(r.online.comm.op("drelu").bytes, (2 * 63 + 8) * n);
    assert_eq!(r.offline.comm.op("drelu").bytes, 63 * n);
    assert_eq!(r.online.comm.op("reveal").bytes, 8 * 6 * 35);
    // 3 rounds for the layer (open, compare, helper's shares), 1 for the reveal
    assert_eq!(r.online.comm.rounds, 4);
}

#[test]
fn relu6_maxpool_add_concat_broadcast_are_exact() {
    let r = check(&cases::misc_ops());
    // relu6: 2·192 single-pixel selections; max pools: 9 taps → 8 decisions per output, 4 taps → 3
    assert_eq!(r.drelus, 2 * 192 + 8 * 3 * 16 + 3 * 3 * 16 + 6 * 16);
    // max pool 3×3: a tree of 4 levels of 3 rounds; 2×2: 2 levels; relu6 and relu 3 each; reveal 1
    assert_eq!(r.online.comm.rounds, 3 + 4 * 3 + 2 * 3 + 3 + 1);
    check(&cases::broadcast());
}

#[test]
fn linear_layers_are_within_one_truncation() {
    // conv 3×3 with BN bias, strided dilated conv, grouped conv, depthwise conv, 1×1
    for case in cases::conv_cases() {
        let (name, m, w) = (case.name, &case.model, &case.weights);
        let r = check(&case);
        // closed forms: setup 8|W|, offline 8|Y| + contributions 6·16, online 8|X| + reveal 8|Y|
        let wn = w
            .tensors
            .values()
            .filter(|t| t.shape.len() == 4)
            .map(|t| t.data.len() as u64)
            .sum::<u64>();
        let y: u64 = m.output_shape().iter().map(|&v| u64::from(v)).product();
        assert_eq!(r.setup.comm.bytes, 8 * wn, "{name}");
        assert_eq!(r.offline.comm.bytes, 8 * y + 96, "{name}");
        assert_eq!(r.online.comm.bytes, 8 * 4 * 81 + 8 * y, "{name}");
        assert_eq!(r.online.comm.rounds, 2, "{name}: E, then the reveal");
    }
    // linear after global average pooling; average pooling with and without padding counts
    // (the bounds: see the case)
    check(&cases::pooled_linear());
}

#[test]
fn padding_ceil_pooling_and_resizing_match_the_oracle_and_their_bytes() {
    // exact: zero padding, max pooling with asymmetric pads and in ceil mode, nearest
    // resizing; within the case's bounds: average pooling, bilinear resizing
    let r = check(&cases::padded_max_pool());
    // 9 taps → 8 decisions for each of 3·4·4 outputs, 4 taps → 3 for each of 3·3·2
    assert_eq!(r.drelus, 8 * 48 + 3 * 18);
    check(&cases::padded_avg_pools());
    for case in cases::resize_cases() {
        let r = check(&case);
        assert_eq!(r.drelus, 0, "{}", case.name);
    }
}
/// A ResNet18-CIFAR-shaped network of `width` with a random block spec keeping `ratio` of the
/// DReLUs, random weights, and an input.
fn resnet18(width: u32, ratio: f64, seeds: [u64; 3]) -> (SecureModel, ModelWeights, Vec<f32>) {
    let shapes: Vec<_> = nets::resnet18_cifar_layers(width)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let spec = nets::random_spec(&shapes, ratio, seeds[0]);
    let model = nets::resnet18_cifar(width, 10, Some(&spec)).unwrap();
    let weights = random_weights(&model, seeds[1]);
    let x = input(&model, seeds[2]);
    (model, weights, x)
}

// The labels of whole networks (and the logits under a window) against plain: the backend kit,
// `check_networks`, for every private backend.

#[test]
fn resnet18_shaped_network_is_close_to_plain_and_its_bytes_match() {
    for seed in 0..2 {
        let (model, weights, x) = resnet18(8, 0.1, [2, 11, seed]);
        let label = Options {
            drelu: DreluMode::Exact,
            reveal: Reveal::Label,
        };
        let r = run(&model, &weights, &x, label);
        assert!(matches!(r.output, PartyOutput::Labels(_)));
        assert_eq!(
            r.offline.comm.bytes + r.online.comm.bytes,
            r.closed_form_bytes
        );
        let got = logits(&run(&model, &weights, &x, Options::default()));
        let want = knapsec_plain::evaluate(&model, &weights, &x)
            .unwrap()
            .logits();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        // Local truncation is off by an ulp per share, which can flip the decision of a patch
        // whose sum is within that error of zero (and then zero or keep the whole patch):
        // the logits agree to ~10 % of their scale here (measured 8 %), the labels exactly.
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        assert!(
            worst < 0.15 * scale,
            "logits differ by {worst} (scale {scale})"
        );
    }
}

#[test]
fn approximate_drelu_saves_its_compared_bits() {
    let (model, weights, x) = resnet18(4, 0.2, [3, 12, 9]);
    let [exact, approx] = [
        DreluMode::Exact,
        DreluMode::Approx {
            bits: 20,
            lsb_ignored: 0,
        },
    ]
    .map(|drelu| {
        let options = Options {
            drelu,
            reveal: Reveal::Logits,
        };
        run(&model, &weights, &x, options)
    });
    // fewer bytes: 3·(19 − 63) per DReLU
    let saved = (exact.offline.comm.bytes + exact.online.comm.bytes)
        - (approx.offline.comm.bytes + approx.online.comm.bytes);
    assert_eq!(saved, 3 * 44 * exact.drelus);
}
