//! Every op of the `fss` backend against `knapsec-plain` (the oracle), with the tolerance of
//! its fixed-point semantics (`securenn`'s), its bytes against their closed forms, and its
//! online rounds.

use knapsec_core::backend::PartyOutput;
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{ModelWeights, OutputKind, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, random_weights};
use knapsec_fss as _;
use knapsec_fss::{Plan, SimReport, simulate};
use knapsec_securenn::{DreluMode, Options, Reveal, nets};
use std::time::Duration;

const F: u32 = 12;

fn input(model: &SecureModel, seed: u64) -> Vec<f32> {
    let [c, h, w] = model.input_shape();
    let mut prg = knapsec_ring::Prg::with_stream(&[7; 32], "test-input", seed);
    (0..c * h * w)
        .map(|_| (prg.next_u64() >> 11) as f32 / (1u64 << 53) as f32 * 4.0 - 2.0)
        .collect()
}

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

fn logits(r: &SimReport) -> Vec<f32> {
    match &r.output {
        PartyOutput::Logits(v) => v.clone(),
        other => panic!("expected logits, got {other:?}"),
    }
}

/// Secure vs plain: every output within `[lo, hi]` ulps of plain.
fn check(model: &SecureModel, weights: &ModelWeights, lo: i64, hi: i64) -> SimReport {
    let x = input(model, 1);
    let plain = knapsec_plain::evaluate(model, weights, &x).unwrap();
    let r = run(model, weights, &x, Options::default());
    let got = logits(&r);
    let want = plain.fixed.to_i64();
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let g = (f64::from(*g) * f64::from(1u32 << F)).round() as i64;
        assert!(
            (lo..=hi).contains(&(g - w)),
            "{}: element {k}: secure {g}, plain {w}",
            model.arch
        );
    }
    r
}

fn finish(g: GraphBuilder) -> (SecureModel, ModelWeights) {
    let (m, _) = g.finish(OutputKind::Segmentation).unwrap();
    let w = random_weights(&m, 3);
    (m, w)
}

#[test]
fn block_relu_is_exact_with_mixed_blocks_and_its_bytes_match() {
    let mut g = GraphBuilder::new("brelu", F, [6, 7, 5]);
    let blocks = vec![
        BlockSize::RELU,
        BlockSize::Patch { h: 2, w: 3 },
        BlockSize::Identity,
        BlockSize::Zero,
        BlockSize::Patch { h: 3, w: 3 },
        BlockSize::Patch { h: 7, w: 5 },
    ];
    g.block_relu("l", g.input(), blocks).unwrap();
    let (m, w) = finish(g);
    let r = check(&m, &w, 0, 0);
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
    let mut g = GraphBuilder::new("misc", F, [3, 8, 8]);
    let a = g.relu6("r6", g.input()).unwrap();
    let p = g.max_pool("mp", a, [3, 3], [2, 2], [1, 1]).unwrap();
    let q = g
        .max_pool("mp2", g.input(), [2, 2], [2, 2], [0, 0])
        .unwrap();
    let s = g.add("add", &[p, q]).unwrap();
    let c = g.concat("cat", &[s, q]).unwrap();
    g.block_relu("relu", c, vec![BlockSize::RELU; 6]).unwrap();
    let (m, w) = finish(g);
    let r = check(&m, &w, 0, 0);
    assert_eq!(r.drelus, 2 * 192 + 8 * 3 * 16 + 3 * 3 * 16 + 6 * 16);
    // input 1; relu6 2; the pools' 4 + 2 levels 2 each (one after the other); relu 2;
    // reveal 1
    assert_eq!(r.online.comm.rounds, 1 + 2 + 4 * 2 + 2 * 2 + 2 + 1);

    let mut g = GraphBuilder::new("broadcast", F, [4, 1, 1]);
    let b = g.broadcast("bc", g.input(), 3, 2).unwrap();
    g.block_relu("relu", b, vec![BlockSize::Patch { h: 2, w: 2 }; 4])
        .unwrap();
    let (m, w) = finish(g);
    check(&m, &w, 0, 0);
}

#[test]
fn linear_layers_are_within_one_truncation_and_free_online() {
    let specs: Vec<(&str, ConvSpec)> = vec![
        ("c3", ConvSpec::square(5, 3, 1, 1)),
        (
            "strided-dilated",
            ConvSpec {
                dilation: [2, 2],
                ..ConvSpec::square(4, 3, 2, 2)
            },
        ),
        (
            "grouped",
            ConvSpec {
                groups: 2,
                ..ConvSpec::square(4, 3, 1, 1)
            },
        ),
        (
            "depthwise",
            ConvSpec {
                groups: 4,
                ..ConvSpec::square(4, 3, 1, 1)
            },
        ),
        (
            "pointwise",
            ConvSpec {
                bias: true,
                ..ConvSpec::square(6, 1, 1, 0)
            },
        ),
    ];
    for (name, spec) in specs {
        let mut g = GraphBuilder::new(name, F, [4, 9, 9]);
        let bn = if spec.bias { None } else { Some("bn") };
        g.conv("conv", g.input(), spec, bn).unwrap();
        let (m, w) = finish(g);
        let r = check(&m, &w, -1, 0);
        let y: u64 = m.output_shape().iter().map(|&v| u64::from(v)).product();
        assert_eq!(r.offline.comm.bytes, 16 * y + 96, "{name}");
        assert_eq!(r.online.comm.bytes, 8 * 4 * 81 + 8 * y, "{name}");
        assert_eq!(
            r.online.comm.rounds, 2,
            "{name}: the input, then the reveal"
        );
    }
    let mut g = GraphBuilder::new("fc", F, [8, 5, 5]);
    let a = g
        .avg_pool("ap", g.input(), [3, 3], [2, 2], [1, 1], true)
        .unwrap();
    let b = g
        .avg_pool("ap2", g.input(), [3, 3], [2, 2], [1, 1], false)
        .unwrap();
    let s = g.add("add", &[a, b]).unwrap();
    let gap = g.global_avg_pool("gap", s).unwrap();
    g.linear("fc", gap, 7, true).unwrap();
    let (m, w) = finish(g);
    // the same bound as securenn's: each floor division of a share is off by −1..0 ulp
    let fc = w
        .tensors
        .values()
        .find(|t| t.shape.len() == 2)
        .expect("the fc weight");
    let cols = fc.shape[1];
    let (mut pos, mut neg) = (0i64, 0i64);
    for row in fc.data.chunks(cols) {
        pos = pos.max(row.iter().filter(|&&v| v > 0).sum());
        neg = neg.max(-row.iter().filter(|&&v| v < 0).sum::<i64>());
    }
    let spread = |sum: i64| (3 * sum + (1 << F) - 1) >> F;
    let _ = check(&m, &w, -spread(pos) - 2, spread(neg) + 1);
}

#[test]
fn resnet18_cifar_with_a_mixed_block_spec_gives_the_plain_label() {
    let shapes: Vec<_> = nets::resnet18_cifar_layers(8)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let spec = nets::random_spec(&shapes, 0.06, 2);
    // the spec mixes ReLUs, patches and identity channels
    let all: Vec<&BlockSize> = spec.iter().flatten().collect();
    assert!(
        all.iter()
            .any(|b| matches!(b, BlockSize::Patch { h, w } if h * w > 1))
    );
    assert!(all.contains(&&BlockSize::Identity), "{all:?}");
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
        if seed == 0 {
            let opts = Options {
                drelu: DreluMode::Exact,
                reveal: Reveal::Label,
            };
            assert_eq!(run_registered(&model, &weights, &x, opts), r.output);
        }
        // input 1, 17 ReLU layers of 2 flights, the argmax's 4 levels of 2, reveal 1
        assert_eq!(r.online.comm.rounds, 1 + 17 * 2 + 4 * 2 + 1);
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
    let PartyOutput::Labels(got) = &r.output else {
        panic!("labels expected")
    };
    let want = plain.labels();
    let logits = plain.fixed.to_i64();
    let [c, h, w] = model.output_shape().map(|v| v as usize);
    let mut differ = 0;
    for p in 0..h * w {
        if got[p] != want[p] {
            let mut col: Vec<i64> = (0..c).map(|k| logits[k * h * w + p]).collect();
            col.sort();
            assert!(
                col[c - 1] - col[c - 2] <= 64,
                "pixel {p}: label {} vs {} with margin {}",
                got[p],
                want[p],
                col[c - 1] - col[c - 2]
            );
            differ += 1;
        }
    }
    assert!(differ <= 1, "{differ} pixels differ");
}

#[test]
fn approximate_keys_are_sized_to_the_compared_bits() {
    let shapes: Vec<_> = nets::resnet18_cifar_layers(4)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let spec = nets::random_spec(&shapes, 0.2, 3);
    let model = nets::resnet18_cifar(4, 10, Some(&spec)).unwrap();
    let weights = random_weights(&model, 12);
    let x = input(&model, 9);
    let plain = knapsec_plain::evaluate(&model, &weights, &x).unwrap();
    let exact = Options {
        drelu: DreluMode::Exact,
        reveal: Reveal::Logits,
    };
    let approx = Options {
        drelu: DreluMode::Approx {
            bits: 20,
            lsb_ignored: 0,
        },
        reveal: Reveal::Logits,
    };
    let (e, a) = (
        run(&model, &weights, &x, exact),
        run(&model, &weights, &x, approx),
    );
    let p = plain.logits();
    let diff = |u: &[f32], v: &[f32]| {
        u.iter()
            .zip(v)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(diff(&logits(&e), &p) < 0.2 && diff(&logits(&a), &p) < 0.2);
    // keys: 16 bytes per compared bit (63 against 19), sent to both parties
    let ke = Plan::new(&model, exact)
        .unwrap()
        .closed_form(&model)
        .key_bytes;
    let ka = Plan::new(&model, approx)
        .unwrap()
        .closed_form(&model)
        .key_bytes;
    assert_eq!(ke - ka, 16 * 44 * e.drelus);
    assert_eq!(
        e.offline.comm.bytes - a.offline.comm.bytes,
        2 * 16 * 44 * e.drelus
    );
    // online bytes do not depend on the window
    assert_eq!(e.online.comm.bytes, a.online.comm.bytes);
}

/// Runs `model` on `x` under each `(mode, choice)` securely and in the plain emulation and
/// checks they agree bit for bit; returns how many modes changed the exact result.
fn agree_bit_for_bit(
    model: &SecureModel,
    weights: &ModelWeights,
    x: &[f32],
    modes: &[(DreluMode, knapsec_core::drelu::DreluChoice)],
) -> usize {
    use knapsec_plain::{DreluEmulation, evaluate_with};
    let exact = knapsec_plain::evaluate(model, weights, x).unwrap().logits();
    let mut changed = 0;
    for &(mode, choice) in modes {
        let emu = |seed| {
            evaluate_with(model, weights, x, &DreluEmulation { choice, seed }, None)
                .unwrap()
                .logits()
        };
        let plain = emu(1);
        // Differently seeded stand-in masks agree: no decision depends on the mask.
        assert_eq!(plain, emu(2), "{choice}: a decision depends on the mask");
        let secure = logits(&run(
            model,
            weights,
            x,
            Options {
                drelu: mode,
                reveal: Reveal::Logits,
            },
        ));
        assert_eq!(secure, plain, "{}: {choice}: secure differs", model.arch);
        changed += usize::from(plain != exact);
    }
    changed
}

fn uniform_modes() -> Vec<(DreluMode, knapsec_core::drelu::DreluChoice)> {
    [(16, 0), (12, 4), (6, 3), (20, 1), (9, 6)]
        .into_iter()
        .map(|(bits, lsb_ignored)| {
            let w = knapsec_core::drelu::DreluWindow { bits, lsb_ignored };
            (w.into(), knapsec_core::drelu::DreluChoice::Uniform(w))
        })
        .collect()
}

/// Input values `k · 2^10` ulps (multiples of 0.25), `k` uniform in `−64..=64`, plus `extra`
/// ulps where `plus_one` says.
fn coarse_input(n: usize, seed: u64, plus_one: impl Fn(usize) -> bool) -> Vec<f32> {
    let mut prg = knapsec_ring::Prg::with_stream(&[3; 32], "bit-for-bit", seed);
    (0..n)
        .map(|i| {
            let k = (prg.next_u64() % 129) as i64 - 64;
            (k * 1024 + i64::from(plus_one(i))) as f32 / (1u32 << F) as f32
        })
        .collect()
}

// The compared values below have their low 10 bits zero (windows here ignore at most 10:
// `t + ⌈log₂ area⌉ ≤ 6 + 4`), so the secure decision never depends on the helper's mask and
// must equal the emulation's exactly, wrap-around included (values reach ±16, beyond most
// windows).

#[test]
fn approximate_block_relu_equals_the_plain_emulation_bit_for_bit() {
    let mut g = GraphBuilder::new("brelu-approx", F, [4, 7, 5]);
    let blocks = vec![
        BlockSize::RELU,
        BlockSize::Patch { h: 2, w: 3 },
        BlockSize::Identity,
        BlockSize::Patch { h: 3, w: 3 },
    ];
    g.block_relu("relu", g.input(), blocks.clone()).unwrap();
    let (model, weights) = finish(g);
    // block ReLUs compare `sum − 1`: one pixel per patch gets +1 ulp, so `sum − 1` ≡ 0.
    let (h, w) = (7usize, 5usize);
    let x = coarse_input(4 * h * w, 1, |i| {
        let (c, y, xx) = (i / (h * w), (i % (h * w)) / w, i % w);
        match blocks[c] {
            BlockSize::Patch { h: bh, w: bw } => y % bh as usize == 0 && xx % bw as usize == 0,
            _ => false,
        }
    });
    let changed = agree_bit_for_bit(&model, &weights, &x, &uniform_modes());
    assert!(changed >= 2, "only {changed} modes changed the result");
}

#[test]
fn approximate_relu6_and_max_pool_equal_the_plain_emulation_bit_for_bit() {
    use knapsec_core::drelu::{
        Calibration, CalibrationTarget, DreluChoice, DreluWindow, SiteCalibration, SiteStats,
    };
    let mut g = GraphBuilder::new("relu6-pool-approx", F, [3, 8, 8]);
    let r = g.relu6("r6", g.input()).unwrap();
    let p = g.max_pool("pool", r, [3, 3], [2, 2], [1, 1]).unwrap();
    g.max_pool("pool2", p, [2, 2], [1, 1], [0, 0]).unwrap();
    let (mut model, weights) = finish(g);
    let x = coarse_input(3 * 64, 2, |_| false);
    let mut modes = uniform_modes();
    // per-site windows from a calibration: each site its own
    let sites = model.drelu_sites();
    let windows =
        [(14, 5), (8, 2), (11, 0)].map(|(bits, lsb_ignored)| DreluWindow { bits, lsb_ignored });
    model.calibration = Some(Calibration {
        data: "test".into(),
        samples: 0,
        target: CalibrationTarget::default(),
        sites: sites
            .iter()
            .zip(windows)
            .map(|(&(i, kind), window)| SiteCalibration {
                node: i as u32,
                name: model.nodes[i].name.clone(),
                kind,
                window,
                stats: SiteStats::default(),
            })
            .collect(),
    });
    model.validate().unwrap();
    modes.push((DreluMode::Calibrated, DreluChoice::Calibrated));
    let changed = agree_bit_for_bit(&model, &weights, &x, &modes);
    assert!(changed >= 2, "only {changed} modes changed the result");
}
