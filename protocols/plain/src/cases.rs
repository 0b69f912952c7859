//! The small graphs every secure backend is compared with this oracle on, with the bounds of
//! the fixed-point contract (the table in the crate documentation): ops without truncation
//! agree bit for bit, each truncation or division of a share is off by `−1..0` ulp. The
//! backends' own tests (byte counts against their closed forms) and the backend conformance
//! kit (every private backend against this oracle) run the same cases, so what they compare
//! is written once.
//!
//! Also the comparison rules that need the oracle: a label map equal to the oracle's except
//! where its two best logits are within the noise, and bit-for-bit agreement of an
//! approximate DReLU window with [`crate::evaluate_with`].

use crate::{DreluEmulation, evaluate, evaluate_with};
use knapsec_core::backend::PartyOutput;
use knapsec_core::block::BlockSize;
use knapsec_core::drelu::{
    Calibration, CalibrationTarget, DreluChoice, DreluWindow, SiteCalibration, SiteStats,
};
use knapsec_core::graph::{ModelWeights, OutputKind, PoolGeometry, ResizeMode, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, NodeId, random_weights};

/// Fractional bits of every case.
pub const FRAC_BITS: u32 = 12;

/// One case: a graph with random weights, an input, and the bounds (in ulps, inclusive) of
/// `secure − plain` per output value.
#[derive(Debug)]
pub struct Case {
    /// What the graph covers.
    pub name: &'static str,
    /// Its public part.
    pub model: SecureModel,
    /// Random weights.
    pub weights: ModelWeights,
    /// The client's input.
    pub input: Vec<f32>,
    /// Lowest and highest `secure − plain`, in ulps.
    pub ulps: (i64, i64),
}

impl Case {
    fn new(name: &'static str, g: GraphBuilder, ulps: (i64, i64)) -> Self {
        let (model, _) = g
            .finish(OutputKind::Segmentation)
            .expect("valid case graph");
        let weights = random_weights(&model, 3);
        let input = input(&model, 1);
        Case {
            name,
            model,
            weights,
            input,
            ulps,
        }
    }

    /// Checks what a backend's client learned against the oracle: logits within the case's
    /// bounds. The message names the case and the first value out of bounds.
    pub fn check(&self, output: &PartyOutput) -> Result<(), String> {
        let what = format!("{} ({})", self.name, self.model.arch);
        let plain = evaluate(&self.model, &self.weights, &self.input)
            .map_err(|e| format!("{what}: the oracle refused it: {e}"))?;
        let PartyOutput::Logits(got) = output else {
            return Err(format!("{what}: expected logits, got {output:?}"));
        };
        let want = plain.fixed.to_i64();
        if got.len() != want.len() {
            return Err(format!(
                "{what}: {} values, expected {}",
                got.len(),
                want.len()
            ));
        }
        let scale = f64::from(1u32 << self.model.frac_bits);
        let (lo, hi) = self.ulps;
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let g = (f64::from(*g) * scale).round() as i64;
            if !(lo..=hi).contains(&(g - w)) {
                return Err(format!(
                    "{what}: element {k}: secure {g}, plain {w} (allowed {lo}..={hi} ulps)"
                ));
            }
        }
        Ok(())
    }
}

/// An input of `model` drawn from a seeded stream: values uniform in `[−2, 2)`.
pub fn input(model: &SecureModel, seed: u64) -> Vec<f32> {
    let [c, h, w] = model.input_shape();
    let mut prg = knapsec_ring::Prg::with_stream(&[7; 32], "test-input", seed);
    (0..c * h * w)
        .map(|_| (prg.next_u64() >> 11) as f32 / (1u64 << 53) as f32 * 4.0 - 2.0)
        .collect()
}

/// The block sizes of [`mixed_block_relu`]: ReLU, patches (one as large as the plane),
/// identity and zero channels.
pub fn mixed_blocks() -> Vec<BlockSize> {
    vec![
        BlockSize::RELU,
        BlockSize::Patch { h: 2, w: 3 },
        BlockSize::Identity,
        BlockSize::Zero,
        BlockSize::Patch { h: 3, w: 3 },
        BlockSize::Patch { h: 7, w: 5 },
    ]
}

/// A block ReLU with [`mixed_blocks`] on a `[6, 7, 5]` input: exact.
pub fn mixed_block_relu() -> Case {
    let mut g = GraphBuilder::new("brelu", FRAC_BITS, [6, 7, 5]);
    g.block_relu("l", g.input(), mixed_blocks()).expect("relu");
    Case::new("mixed block relu", g, (0, 0))
}

/// ReLU6, two max pools (overlapping with padding, disjoint), add, concat and a ReLU on a
/// `[3, 8, 8]` input: exact.
pub fn misc_ops() -> Case {
    let mut g = GraphBuilder::new("misc", FRAC_BITS, [3, 8, 8]);
    let c = misc_trunk(&mut g);
    g.block_relu("relu", c, vec![BlockSize::RELU; 6])
        .expect("relu");
    Case::new("relu6, max pool, add, concat", g, (0, 0))
}

/// A 4-channel 3×3 convolution `conv` (BatchNorm `bn`) of the input, then a block ReLU
/// `relu` with `blocks`: the start of the small graphs of several tests.
pub fn conv_block_relu(g: &mut GraphBuilder, blocks: Vec<BlockSize>) -> NodeId {
    let c = g
        .conv("conv", g.input(), ConvSpec::square(4, 3, 1, 1), Some("bn"))
        .expect("conv");
    g.block_relu("relu", c, blocks).expect("relu")
}

/// The trunk of [`misc_ops`] on a `[3, 8, 8]` input: ReLU6, a 3×3 max pool (stride 2,
/// padding 1) of it and a 2×2 one of the input, their sum, concatenated with the latter
/// (6 channels of 4×4).
pub fn misc_trunk(g: &mut GraphBuilder) -> NodeId {
    let a = g.relu6("r6", g.input()).expect("relu6");
    let p = g.max_pool("mp", a, [3, 3], [2, 2], [1, 1]).expect("pool");
    let q = g
        .max_pool("mp2", g.input(), [2, 2], [2, 2], [0, 0])
        .expect("pool");
    let s = g.add("add", &[p, q]).expect("add");
    g.concat("cat", &[s, q]).expect("concat")
}

/// A `[4, 1, 1]` value broadcast to `3 × 2`, then a 2×2 block ReLU: exact.
pub fn broadcast() -> Case {
    let mut g = GraphBuilder::new("broadcast", FRAC_BITS, [4, 1, 1]);
    let b = g.broadcast("bc", g.input(), 3, 2).expect("broadcast");
    g.block_relu("relu", b, vec![BlockSize::Patch { h: 2, w: 2 }; 4])
        .expect("relu");
    Case::new("broadcast", g, (0, 0))
}

/// One convolution each on a `[4, 9, 9]` input (3×3 with BatchNorm, strided and dilated,
/// grouped, depthwise, 1×1 with a bias): within one truncation, `−1..0` ulp.
pub fn conv_cases() -> Vec<Case> {
    let specs: [(&'static str, ConvSpec); 5] = [
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
    specs
        .into_iter()
        .map(|(name, spec)| {
            let mut g = GraphBuilder::new(name, FRAC_BITS, [4, 9, 9]);
            let bn = if spec.bias { None } else { Some("bn") };
            g.conv("conv", g.input(), spec, bn).expect("conv");
            Case::new(name, g, (-1, 0))
        })
        .collect()
}

/// Average pooling with and without padding counted, their sum, global average pooling and
/// a linear layer on a `[8, 5, 5]` input.
///
/// Each pooling floors each share: −1..0 ulp per division, so the pooled features are off by
/// δ ∈ [−3, 0] ulp (two pools summed, −2, then the global average, −1 more). The linear layer
/// carries δ through its weights: output k is off by Σ_i w_ki·δ_i / 2^F, plus its own
/// truncation (−1..0) and rounding: the bounds follow from the weights' largest positive and
/// negative row sums.
pub fn pooled_linear() -> Case {
    let mut g = GraphBuilder::new("fc", FRAC_BITS, [8, 5, 5]);
    let a = g
        .avg_pool("ap", g.input(), [3, 3], [2, 2], [1, 1], true)
        .expect("pool");
    let b = g
        .avg_pool("ap2", g.input(), [3, 3], [2, 2], [1, 1], false)
        .expect("pool");
    let s = g.add("add", &[a, b]).expect("add");
    let gap = g.global_avg_pool("gap", s).expect("gap");
    g.linear("fc", gap, 7, true).expect("fc");
    let mut case = Case::new("pooled linear", g, (0, 0));
    let fc = case
        .weights
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
    let spread = |sum: i64| (3 * sum + (1 << FRAC_BITS) - 1) >> FRAC_BITS;
    case.ulps = (-spread(pos) - 2, spread(neg) + 1);
    case
}

/// Zero padding and max pooling with asymmetric pads and in ceil mode (the last windows run
/// past the map, whose edge must win over the padding) on a `[3, 7, 6]` input: exact.
pub fn padded_max_pool() -> Case {
    let mut g = GraphBuilder::new("pad-maxpool", FRAC_BITS, [3, 7, 6]);
    let p = g.pad("pad", g.input(), [1, 0, 0, 2]).expect("pad");
    let geo = PoolGeometry {
        kernel: [3, 3],
        stride: [2, 2],
        pads: [0, 1, 0, 0],
        ceil_mode: true,
    };
    let m = g.pool("maxpool", p, geo, None).expect("pool");
    let geo = PoolGeometry {
        kernel: [2, 2],
        stride: [2, 2],
        pads: [1, 0, 0, 1],
        ceil_mode: true,
    };
    g.pool("maxpool2", m, geo, None).expect("pool");
    Case::new("padding, asymmetric and ceil-mode max pooling", g, (0, 0))
}

/// Average pooling in ceil mode with asymmetric pads, counting the padding and not, summed,
/// on a `[2, 7, 6]` input: each pooling floors each share, `−2..0` ulp in all.
pub fn padded_avg_pools() -> Case {
    let mut g = GraphBuilder::new("pad-avgpool", FRAC_BITS, [2, 7, 6]);
    let geo = PoolGeometry {
        kernel: [3, 3],
        stride: [2, 2],
        pads: [1, 0, 0, 1],
        ceil_mode: true,
    };
    let a = g.pool("avgpool", g.input(), geo, Some(true)).expect("pool");
    let b = g
        .pool("avgpool2", g.input(), geo, Some(false))
        .expect("pool");
    g.add("add", &[a, b]).expect("add");
    Case::new("asymmetric and ceil-mode average pooling", g, (-2, 0))
}

/// Resizing a `[3, 4, 5]` input: nearest ×2 (exact), bilinear ×2 half-pixel, bilinear to
/// 9×7 with aligned corners and bilinear ×8 (each one truncation, `−1..0` ulp).
pub fn resize_cases() -> Vec<Case> {
    let bilinear = |align_corners| ResizeMode::Bilinear { align_corners };
    // name, output size, mode, bounds
    type Resize = (&'static str, [u32; 2], ResizeMode, (i64, i64));
    let cases: [Resize; 4] = [
        ("nearest x2", [8, 10], ResizeMode::Nearest, (0, 0)),
        ("bilinear x2", [8, 10], bilinear(false), (-1, 0)),
        ("bilinear aligned 9x7", [9, 7], bilinear(true), (-1, 0)),
        ("bilinear x8", [32, 40], bilinear(false), (-1, 0)),
    ];
    cases
        .into_iter()
        .map(|(name, [h, w], mode, ulps)| {
            let mut g = GraphBuilder::new(name, FRAC_BITS, [3, 4, 5]);
            g.resize("resize", g.input(), h, w, mode).expect("resize");
            Case::new(name, g, ulps)
        })
        .collect()
}

/// Every case above.
pub fn all() -> Vec<Case> {
    let mut v = vec![mixed_block_relu(), misc_ops(), broadcast()];
    v.extend(conv_cases());
    v.push(pooled_linear());
    v.push(padded_max_pool());
    v.push(padded_avg_pools());
    v.extend(resize_cases());
    v
}

/// Checks a label map against the oracle's: pixels may differ only where the oracle's two best
/// logits are at most `margin` ulps apart, and at most `max_differ` of them.
pub fn check_label_map(
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    got: &[u32],
    margin: i64,
    max_differ: usize,
) -> Result<(), String> {
    let plain = evaluate(model, weights, input).map_err(|e| e.to_string())?;
    let want = plain.labels();
    let logits = plain.fixed.to_i64();
    let [c, h, w] = model.output_shape().map(|v| v as usize);
    if got.len() != h * w {
        return Err(format!("{} labels, expected {}", got.len(), h * w));
    }
    let mut differ = 0;
    for p in 0..h * w {
        if got[p] != want[p] {
            let mut col: Vec<i64> = (0..c).map(|k| logits[k * h * w + p]).collect();
            col.sort();
            let gap = col[c - 1] - col[c - 2];
            if gap > margin {
                return Err(format!(
                    "pixel {p}: label {} vs {} with margin {gap}",
                    got[p], want[p]
                ));
            }
            differ += 1;
        }
    }
    if differ > max_differ {
        return Err(format!("{differ} pixels differ"));
    }
    Ok(())
}

/// Uniform windows `(bits, lsb_ignored)` of the bit-for-bit cases (at most 10 low bits
/// ignored, see [`approx_block_relu`]).
pub fn uniform_choices() -> Vec<DreluChoice> {
    [(16, 0), (12, 4), (6, 3), (20, 1), (9, 6)]
        .into_iter()
        .map(|(bits, lsb_ignored)| DreluChoice::Uniform(DreluWindow { bits, lsb_ignored }))
        .collect()
}

/// Input values `k · 2^10` ulps (multiples of 0.25), `k` uniform in `−64..=64`, plus one ulp
/// where `plus_one` says.
///
/// The compared values of the bit-for-bit cases have their low 10 bits zero (windows there
/// ignore at most 10: `t + ⌈log₂ area⌉ ≤ 6 + 4`), so a secure decision never depends on the
/// helper's mask and must equal the emulation's exactly, wrap-around included (values reach
/// ±16, beyond most windows).
pub fn coarse_input(n: usize, seed: u64, plus_one: impl Fn(usize) -> bool) -> Vec<f32> {
    let mut prg = knapsec_ring::Prg::with_stream(&[3; 32], "bit-for-bit", seed);
    (0..n)
        .map(|i| {
            let k = (prg.next_u64() % 129) as i64 - 64;
            (k * 1024 + i64::from(plus_one(i))) as f32 / (1u32 << FRAC_BITS) as f32
        })
        .collect()
}

/// A graph for bit-for-bit agreement under approximate windows, its weights, an input and
/// the windows to run it under.
#[derive(Debug)]
pub struct WindowCase {
    /// Its public part.
    pub model: SecureModel,
    /// Random weights.
    pub weights: ModelWeights,
    /// The client's input.
    pub input: Vec<f32>,
    /// The windows to compare under.
    pub choices: Vec<DreluChoice>,
}

impl WindowCase {
    /// Runs the case under each window securely (`secure(choice)` returns the logits the
    /// client learns) and in the oracle's emulation, and checks they agree bit for bit and
    /// that at least two windows changed the exact result (so the case tests something).
    pub fn check(&self, mut secure: impl FnMut(DreluChoice) -> Vec<f32>) -> Result<(), String> {
        let (model, weights, x) = (&self.model, &self.weights, &self.input[..]);
        let exact = evaluate(model, weights, x)
            .map_err(|e| e.to_string())?
            .logits();
        let mut changed = 0;
        for &choice in &self.choices {
            let emu = |seed| {
                evaluate_with(model, weights, x, &DreluEmulation { choice, seed }, None)
                    .map(|o| o.logits())
                    .map_err(|e| e.to_string())
            };
            let plain = emu(1)?;
            // Differently seeded stand-in masks agree: no decision depends on the mask.
            if plain != emu(2)? {
                return Err(format!("{choice}: a decision depends on the mask"));
            }
            if secure(choice) != plain {
                return Err(format!("{}: {choice}: secure differs", model.arch));
            }
            changed += usize::from(plain != exact);
        }
        if changed < 2 {
            return Err(format!("only {changed} windows changed the result"));
        }
        Ok(())
    }
}

/// Block ReLUs (ReLU, 2×3 and 3×3 patches, identity) on a coarse input whose patch sums are
/// `1 (mod 2^10)`: block ReLUs compare `sum − 1`, one pixel per patch gets +1 ulp, so
/// `sum − 1 ≡ 0`. Under the uniform windows.
pub fn approx_block_relu() -> WindowCase {
    let mut g = GraphBuilder::new("brelu-approx", FRAC_BITS, [4, 7, 5]);
    let blocks = vec![
        BlockSize::RELU,
        BlockSize::Patch { h: 2, w: 3 },
        BlockSize::Identity,
        BlockSize::Patch { h: 3, w: 3 },
    ];
    g.block_relu("relu", g.input(), blocks.clone())
        .expect("relu");
    let (model, _) = g.finish(OutputKind::Segmentation).expect("valid graph");
    let weights = random_weights(&model, 3);
    let (h, w) = (7usize, 5usize);
    let input = coarse_input(4 * h * w, 1, |i| {
        let (c, y, xx) = (i / (h * w), (i % (h * w)) / w, i % w);
        match blocks[c] {
            BlockSize::Patch { h: bh, w: bw } => y % bh as usize == 0 && xx % bw as usize == 0,
            _ => false,
        }
    });
    WindowCase {
        model,
        weights,
        input,
        choices: uniform_choices(),
    }
}

/// ReLU6 and two max pools with calibrated windows (each site its own), under the uniform
/// windows and the calibrated ones.
pub fn approx_relu6_pool() -> WindowCase {
    let mut g = GraphBuilder::new("relu6-pool-approx", FRAC_BITS, [3, 8, 8]);
    let r = g.relu6("r6", g.input()).expect("relu6");
    let p = g.max_pool("pool", r, [3, 3], [2, 2], [1, 1]).expect("pool");
    g.max_pool("pool2", p, [2, 2], [1, 1], [0, 0])
        .expect("pool");
    let (mut model, _) = g.finish(OutputKind::Segmentation).expect("valid graph");
    let weights = random_weights(&model, 3);
    let input = coarse_input(3 * 64, 2, |_| false);
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
    model.validate().expect("a valid calibration");
    let mut choices = uniform_choices();
    choices.push(DreluChoice::Calibrated);
    WindowCase {
        model,
        weights,
        input,
        choices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle_passes_its_own_cases_and_a_shifted_output_fails() {
        for case in all() {
            let plain = evaluate(&case.model, &case.weights, &case.input).unwrap();
            case.check(&PartyOutput::Logits(plain.logits())).unwrap();
            let shifted: Vec<f32> = plain.logits().iter().map(|v| v + 0.01).collect();
            assert!(
                case.check(&PartyOutput::Logits(shifted)).is_err(),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn the_emulation_agrees_with_itself_and_a_wrong_backend_fails() {
        for case in [approx_block_relu(), approx_relu6_pool()] {
            let emu = |choice| {
                evaluate_with(
                    &case.model,
                    &case.weights,
                    &case.input,
                    &DreluEmulation { choice, seed: 9 },
                    None,
                )
                .unwrap()
                .logits()
            };
            case.check(emu).unwrap();
            let exact = evaluate(&case.model, &case.weights, &case.input)
                .unwrap()
                .logits();
            assert!(case.check(|_| exact.clone()).is_err());
        }
    }
}
