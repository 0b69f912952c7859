//! Every op of the secure backend against `knapsec-plain` (the oracle), with the tolerance of
//! its fixed-point semantics, and the bytes of each phase against their closed forms.

use knapsec_core::backend::PartyOutput;
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{ModelWeights, OutputKind, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, random_weights};
use knapsec_securenn::{DreluMode, Options, Reveal, SimReport, nets, simulate};
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
    simulate(model, weights, x, options, Some(Duration::from_secs(60))).unwrap()
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
    // relu6: 2·192 single-pixel selections; max pools: 9 taps → 8 decisions per output, 4 taps → 3
    assert_eq!(r.drelus, 2 * 192 + 8 * 3 * 16 + 3 * 3 * 16 + 6 * 16);
    // max pool 3×3: a tree of 4 levels of 3 rounds; 2×2: 2 levels; relu6 and relu 3 each; reveal 1
    assert_eq!(r.online.comm.rounds, 3 + 4 * 3 + 2 * 3 + 3 + 1);

    let mut g = GraphBuilder::new("broadcast", F, [4, 1, 1]);
    let b = g.broadcast("bc", g.input(), 3, 2).unwrap();
    g.block_relu("relu", b, vec![BlockSize::Patch { h: 2, w: 2 }; 4])
        .unwrap();
    let (m, w) = finish(g);
    check(&m, &w, 0, 0);
}

#[test]
fn linear_layers_are_within_one_truncation() {
    // conv 3×3 with BN bias, strided dilated conv, grouped conv, depthwise conv, 1×1
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
    // Each pooling floors each share: −1..0 ulp per division, so the pooled features are off by
    // δ ∈ [−3, 0] ulp (two pools summed, −2, then the global average, −1 more). The linear layer
    // carries δ through its weights: output k is off by Σ_i w_ki·δ_i / 2^F, plus its own
    // truncation (−1..0) and rounding: the bound follows from the weights' positive and
    // negative row sums.
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
    // pixels whose top two logits are within the truncation noise may differ
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
