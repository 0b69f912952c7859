//! Every op of the `fss` backend against `knapsec-plain` (the oracle) on its shared cases
//! ([`knapsec_plain::cases`], with the tolerance of the fixed-point semantics, `securenn`'s),
//! its bytes against their closed forms, and its online rounds. The approximate windows'
//! bit-for-bit agreement with the oracle's emulation runs in the backend conformance kit
//! (`tests/src/kits/backend/`), for every private backend.

use knapsec_core::backend::PartyOutput;
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::graph_build::random_weights;
use knapsec_fss as _;
use knapsec_fss::{Plan, SimReport, simulate};
use knapsec_plain::cases::{self, Case, input};
use knapsec_securenn::{DreluMode, Options, Reveal, nets};
use std::time::Duration;

fn run(model: &SecureModel, weights: &ModelWeights, x: &[f32], options: Options) -> SimReport {
    let r = simulate(model, weights, x, options, Some(Duration::from_secs(60))).unwrap();
    let cf = r.closed_form;
    assert_eq!(r.setup.comm.bytes, cf.setup, "{}: setup bytes", model.arch);
    assert_eq!(
        r.offline.comm.bytes, cf.offline,
        "{}: offline bytes",
        model.arch
    );
    assert_eq!(
        r.online.comm.bytes, cf.online,
        "{}: online bytes",
        model.arch
    );
    // client and server each hold their keys' corrections
    assert_eq!(r.key_bytes, cf.key_bytes, "{}: key bytes", model.arch);
    assert!(r.held_bytes[0] >= r.key_bytes && r.held_bytes[1] >= r.key_bytes);
    assert_eq!(
        r.held_bytes[0] + r.held_bytes[1],
        cf.held_bytes,
        "{}: held",
        model.arch
    );
    assert_eq!(r.held_bytes[2], 0, "the helper keeps nothing");
    r
}

/// The registered backend through the runtime's phased harness: the same output as this
/// crate's simulation, and the costs it states equal the metered ones phase by phase.
fn run_registered(
    model: &SecureModel,
    weights: &ModelWeights,
    x: &[f32],
    options: Options,
) -> PartyOutput {
    let backend = knapsec_core::Registry::builtin()
        .unwrap()
        .backend("fss")
        .expect("fss is registered");
    let cf = Plan::new(model, options).unwrap().closed_form(model);
    let options = backend.canonical_options(&options.canonical()).unwrap();
    let r = knapsec_runtime::simulate(
        backend.as_ref(),
        model,
        weights,
        x,
        &options,
        Some(Duration::from_secs(60)),
    )
    .unwrap();
    let stated = r.expected.expect("fss states its costs");
    assert_eq!(stated.setup_bytes, r.setup.comm.bytes);
    assert_eq!(stated.offline_bytes, Some(r.offline.comm.bytes));
    assert_eq!(stated.online_bytes, Some(r.online.comm.bytes));
    assert_eq!(stated.online_rounds, Some(r.online.comm.rounds));
    assert_eq!(stated.key_bytes, cf.held_bytes);
    // no message above the stated bound (the largest message is at least the input)
    let bound = backend.max_message(model, &options).unwrap().unwrap();
    let [c, h, w] = model.input_shape().map(u64::from);
    assert!(bound >= 8 * c * h * w);
    for phase in [&r.setup, &r.offline, &r.online] {
        for counts in phase.comm.ops.values() {
            assert!(counts.messages == 0 || counts.bytes / counts.messages <= bound);
        }
    }
    r.output
}

/// Runs a case with the default options and checks it against the oracle.
fn check(case: &Case) -> SimReport {
    let r = run(&case.model, &case.weights, &case.input, Options::default());
    case.check(&r.output).unwrap();
    r
}

#[test]
fn block_relu_is_exact_with_mixed_blocks_and_its_bytes_match() {
    let r = check(&cases::mixed_block_relu());
    // M = 4 active channels · 35 pixels; N = 35 + 4·2 + 3·2 + 1 patches; n = 63
    let (mm, n) = (4 * 35u64, 35 + 8 + 6 + 1u64);
    assert_eq!(r.drelus, n);
    assert_eq!(r.online.comm.op("open").bytes, 8 * mm + n.div_ceil(8));
    assert_eq!(r.online.comm.op("select").bytes, 8 * mm + n.div_ceil(8));
    assert_eq!(r.online.comm.op("input").bytes, 8 * 6 * 35);
    assert_eq!(r.online.comm.op("reveal").bytes, 8 * 6 * 35);
    // input (client → server), open (server → client), select (client → server), reveal
    assert_eq!(r.online.comm.rounds, 4);
}

#[test]
fn relu6_maxpool_add_concat_broadcast_are_exact() {
    let r = check(&cases::misc_ops());
    assert_eq!(r.drelus, 2 * 192 + 8 * 3 * 16 + 3 * 3 * 16 + 6 * 16);
    // input 1; relu6 2; the pools' 4 + 2 levels 2 each (one after the other); relu 2;
    // reveal 1
    assert_eq!(r.online.comm.rounds, 1 + 2 + 4 * 2 + 2 * 2 + 2 + 1);
    check(&cases::broadcast());
}

#[test]
fn linear_layers_are_within_one_truncation_and_free_online() {
    for case in cases::conv_cases() {
        let (name, m) = (case.name, &case.model);
        let r = check(&case);
        let y: u64 = m.output_shape().iter().map(|&v| u64::from(v)).product();
        assert_eq!(r.offline.comm.bytes, 16 * y + 96, "{name}");
        assert_eq!(r.online.comm.bytes, 8 * 4 * 81 + 8 * y, "{name}");
        assert_eq!(
            r.online.comm.rounds, 2,
            "{name}: the input, then the reveal"
        );
    }
    // the same bounds as securenn's: each floor division of a share is off by −1..0 ulp
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

// The labels of whole networks (and the logits under a window) against plain: the backend kit,
// `check_networks`, for every private backend.

/// A ResNet18-CIFAR-shaped network of `width` whose random block spec keeps `ratio` of the
/// DReLUs (`seeds`: spec, weights, input), with the spec's blocks.
fn resnet(
    width: u32,
    ratio: f64,
    [spec_seed, weight_seed, input_seed]: [u64; 3],
) -> (SecureModel, ModelWeights, Vec<f32>, Vec<BlockSize>) {
    let shapes: Vec<_> = nets::resnet18_cifar_layers(width)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let spec = nets::random_spec(&shapes, ratio, spec_seed);
    let model = nets::resnet18_cifar(width, 10, Some(&spec)).unwrap();
    let weights = random_weights(&model, weight_seed);
    let x = input(&model, input_seed);
    (model, weights, x, spec.into_iter().flatten().collect())
}

#[test]
fn resnet18_cifar_with_a_mixed_block_spec_has_its_rounds() {
    let (model, weights, x, blocks) = resnet(8, 0.06, [2, 11, 0]);
    // the spec mixes ReLUs, patches and identity channels
    assert!(
        blocks
            .iter()
            .any(|b| matches!(b, BlockSize::Patch { h, w } if h * w > 1))
    );
    assert!(blocks.contains(&BlockSize::Identity), "{blocks:?}");
    let label = Options {
        drelu: DreluMode::Exact,
        reveal: Reveal::Label,
    };
    let r = run(&model, &weights, &x, label);
    assert_eq!(run_registered(&model, &weights, &x, label), r.output);
    // input 1, 17 ReLU layers of 2 flights, the argmax's 4 levels of 2, reveal 1
    assert_eq!(r.online.comm.rounds, 1 + 17 * 2 + 4 * 2 + 1);
}

#[test]
fn approximate_keys_are_sized_to_the_compared_bits() {
    let (model, weights, x, _) = resnet(4, 0.2, [3, 12, 9]);
    let [exact, approx] = [
        DreluMode::Exact,
        DreluMode::Approx {
            bits: 20,
            lsb_ignored: 0,
        },
    ]
    .map(|drelu| Options {
        drelu,
        reveal: Reveal::Logits,
    });
    let (e, a) = (
        run(&model, &weights, &x, exact),
        run(&model, &weights, &x, approx),
    );
    // keys: 16 bytes per compared bit (63 against 19), sent to both parties
    let key_bytes = |o| Plan::new(&model, o).unwrap().closed_form(&model).key_bytes;
    assert_eq!(key_bytes(exact) - key_bytes(approx), 16 * 44 * e.drelus);
    assert_eq!(
        e.offline.comm.bytes - a.offline.comm.bytes,
        2 * 16 * 44 * e.drelus
    );
    // online bytes do not depend on the window
    assert_eq!(e.online.comm.bytes, a.online.comm.bytes);
}
