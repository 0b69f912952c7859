//! Every op of the secure backend against `knapsec-plain` (the oracle) on its shared cases
//! ([`knapsec_plain::cases`], with the tolerance of its fixed-point semantics), and the bytes
//! of each phase against their closed forms. The approximate windows' bit-for-bit agreement
//! with the oracle's emulation runs in the backend conformance kit
//! (`tests/src/kits/backend.rs`), for every private backend.

use knapsec_core::backend::PartyOutput;
use knapsec_core::block::BlockSize;
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
fn resnet18_shaped_network_gives_the_plain_label() {
    let shapes: Vec<_> = nets::resnet18_cifar_layers(8)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let spec = nets::random_spec(&shapes, 0.1, 2);
    let model = nets::resnet18_cifar(8, 10, Some(&spec)).unwrap();
    let weights = random_weights(&model, 11);
    for seed in 0..2 {
        let x = input(&model, seed);
        let plain = knapsec_plain::evaluate(&model, &weights, &x).unwrap();
        let r = run(
            &model,
            &weights,
            &x,
            Options {
                drelu: DreluMode::Exact,
                reveal: Reveal::Label,
            },
        );
        assert_eq!(r.output, PartyOutput::Labels(plain.labels()), "seed {seed}");
        assert_eq!(
            r.offline.comm.bytes + r.online.comm.bytes,
            r.closed_form_bytes
        );
        let r = run(&model, &weights, &x, Options::default());
        let got = logits(&r);
        let want = plain.logits();
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
fn deeplab_like_graph_gives_the_plain_label_map() {
    let blocks = (0..8)
        .map(|c| {
            if c % 3 == 0 {
                BlockSize::Patch { h: 2, w: 2 }
            } else {
                BlockSize::RELU
            }
        })
        .collect();
    let model = nets::deeplab_like(16, 8, 5, blocks).unwrap();
    let weights = random_weights(&model, 5);
    let x = input(&model, 4);
    let r = run(
        &model,
        &weights,
        &x,
        Options {
            drelu: DreluMode::Exact,
            reveal: Reveal::Label,
        },
    );
    let PartyOutput::Labels(got) = &r.output else {
        panic!("labels expected")
    };
    // pixels whose top two logits are within the truncation noise may differ
    cases::check_label_map(&model, &weights, &x, got, 64, 1).unwrap();
}

#[test]
fn approximate_drelu_network_matches_plain_within_its_window() {
    // small activations (inputs in ±2, weights ~1/sqrt(fan_in)) stay inside a 20-bit window
    let shapes: Vec<_> = nets::resnet18_cifar_layers(4)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let spec = nets::random_spec(&shapes, 0.2, 3);
    let model = nets::resnet18_cifar(4, 10, Some(&spec)).unwrap();
    let weights = random_weights(&model, 12);
    let x = input(&model, 9);
    let plain = knapsec_plain::evaluate(&model, &weights, &x).unwrap();
    let exact = run(
        &model,
        &weights,
        &x,
        Options {
            drelu: DreluMode::Exact,
            reveal: Reveal::Logits,
        },
    );
    let approx = run(
        &model,
        &weights,
        &x,
        Options {
            drelu: DreluMode::Approx {
                bits: 20,
                lsb_ignored: 0,
            },
            reveal: Reveal::Logits,
        },
    );
    let (e, a, p) = (logits(&exact), logits(&approx), plain.logits());
    let diff = |u: &[f32], v: &[f32]| {
        u.iter()
            .zip(v)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    // both carry the truncation noise of 20 layers; inside its window approx adds nothing
    assert!(
        diff(&e, &p) < 0.2 && diff(&a, &p) < 0.2,
        "exact {} approx {}",
        diff(&e, &p),
        diff(&a, &p)
    );
    // fewer bytes: 3·(19 − 63) per DReLU
    let saved = (exact.offline.comm.bytes + exact.online.comm.bytes)
        - (approx.offline.comm.bytes + approx.online.comm.bytes);
    assert_eq!(saved, 3 * 44 * exact.drelus);
}
