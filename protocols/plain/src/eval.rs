//! The fixed-point evaluation of a secure model in the clear (semantics in the crate docs).

use crate::approx::{self, Site};
use crate::error::{PlainError, Result};
use knapsec_core::block::BlockSize;
use knapsec_core::drelu::{DreluChoice, DreluWindow, SiteStats};
use knapsec_core::graph::{ModelWeights, Node, Op, OutputKind, ResizeMode, SecureModel};
use knapsec_ring::{
    BlockLayout, Conv2dParams, RingTensor, TapPadding, conv2d, global_sum, linear, pad, resize,
    window_counts, window_sums, window_taps,
};

/// The result of one evaluation: the output node's fixed-point values.
#[derive(Clone, Debug, PartialEq)]
pub struct PlainOutput {
    /// The last node's value, `[C, H, W]`, fixed point with `frac_bits` fractional bits.
    pub fixed: RingTensor,
    /// Fractional bits of `fixed`.
    pub frac_bits: u32,
    /// What the output is (logits or a label map).
    pub kind: OutputKind,
}

impl PlainOutput {
    /// Logits decoded to `f32` (`C·H·W`, channel-major).
    pub fn logits(&self) -> Vec<f32> {
        self.fixed.decode_f32(self.frac_bits)
    }

    /// The label (classification, one value) or label map (segmentation, `H·W`): per pixel the
    /// channel with the largest fixed-point value, the lowest channel on ties.
    pub fn labels(&self) -> Vec<u32> {
        argmax_channels(&self.fixed)
    }
}

/// Per-pixel argmax over channels of a `[C, H, W]` tensor read as signed values; ties go to
/// the lowest channel (what a tournament of `a ≥ b` selections computes).
pub fn argmax_channels(t: &RingTensor) -> Vec<u32> {
    let (c, h, w) = t.chw().unwrap_or((t.len(), 1, 1));
    let plane = h * w;
    let d = t.data();
    (0..plane)
        .map(|p| {
            let mut best = 0usize;
            for ch in 1..c {
                if (d[ch * plane + p] as i64) > (d[best * plane + p] as i64) {
                    best = ch;
                }
            }
            best as u32
        })
        .collect()
}

/// How [`evaluate_with`] computes the DReLU sites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DreluEmulation {
    /// The windows: exact, one for all sites, or the model's calibrated ones.
    pub choice: DreluChoice,
    /// Seed of the stand-in masks that decide the comparisons whose result depends on the
    /// mask (see [`crate::approx`]).
    pub seed: u64,
}

/// Runs `model` on `input` (`C·H·W` reals) with `weights` and returns the output node.
pub fn evaluate(model: &SecureModel, weights: &ModelWeights, input: &[f32]) -> Result<PlainOutput> {
    let fixed = run(model, weights, input, false, None)?
        .pop()
        .expect("a validated model has nodes");
    Ok(PlainOutput {
        fixed,
        frac_bits: model.frac_bits,
        kind: model.output_kind,
    })
}

/// Like [`evaluate`], with every DReLU site computed as a SecureNN-style backend computes it
/// under `emulation` (its window, wrap-around included; [`crate::approx`]), and, when
/// `stats` is given (one entry per node), every compared value recorded at its site's entry.
pub fn evaluate_with(
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    emulation: &DreluEmulation,
    stats: Option<&mut [SiteStats]>,
) -> Result<PlainOutput> {
    let windows = emulation.choice.resolve(model)?;
    if let Some(s) = &stats
        && s.len() != model.nodes.len()
    {
        return Err(PlainError::Input(format!(
            "{} site statistics for {} nodes",
            s.len(),
            model.nodes.len()
        )));
    }
    let emu = Emu {
        windows,
        seed: emulation.seed,
        stats,
    };
    let fixed = run(model, weights, input, false, Some(emu))?
        .pop()
        .expect("a validated model has nodes");
    Ok(PlainOutput {
        fixed,
        frac_bits: model.frac_bits,
        kind: model.output_kind,
    })
}

/// The per-node windows and statistics of an emulating run.
struct Emu<'a> {
    windows: Vec<Option<DreluWindow>>,
    seed: u64,
    stats: Option<&'a mut [SiteStats]>,
}

/// Like [`evaluate`] but returns every node's value (index = node index), for per-layer
/// comparisons with a secure backend.
pub fn evaluate_trace(
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
) -> Result<Vec<RingTensor>> {
    run(model, weights, input, true, None)
}

/// Encodes the client's input as the secure backends do: round to nearest at `frac_bits`.
pub fn encode_input(model: &SecureModel, input: &[f32]) -> Result<RingTensor> {
    let shape = model.input_shape().map(|v| v as usize);
    let numel: usize = shape.iter().product();
    if input.len() != numel {
        return Err(PlainError::Input(format!(
            "{} values given, the model expects {numel} ({}×{}×{})",
            input.len(),
            shape[0],
            shape[1],
            shape[2]
        )));
    }
    if let Some(i) = input.iter().position(|v| !v.is_finite()) {
        return Err(PlainError::Input(format!(
            "value {i} ({}) is not finite",
            input[i]
        )));
    }
    RingTensor::encode_f32(&shape, input, model.frac_bits)
        .map_err(|e| PlainError::Input(e.to_string()))
}

fn run(
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    keep_all: bool,
    mut emu: Option<Emu<'_>>,
) -> Result<Vec<RingTensor>> {
    model.validate()?;
    weights.check_against(model)?;
    let n = model.nodes.len();
    let mut last_use = vec![0usize; n];
    for (i, node) in model.nodes.iter().enumerate() {
        for &j in &node.inputs {
            last_use[j] = i;
        }
    }
    let mut vals: Vec<Option<RingTensor>> = vec![None; n];
    for (i, node) in model.nodes.iter().enumerate() {
        let out = if i == 0 {
            encode_input(model, input)?
        } else {
            let ins: Vec<&RingTensor> = node
                .inputs
                .iter()
                .map(|&j| vals[j].as_ref().expect("inputs are computed before use"))
                .collect();
            match emu.as_mut().and_then(|e| e.windows[i].map(|w| (w, e))) {
                Some((window, e)) => {
                    let mut site = Site {
                        window,
                        seed: e.seed,
                        node: i,
                        stats: e.stats.as_deref_mut().map(|s| &mut s[i]),
                    };
                    eval_site(model, i, node, ins[0], &mut site)?
                }
                None => eval_node(model, weights, i, node, &ins)?,
            }
        };
        let want: Vec<usize> = node.shape.iter().map(|&v| v as usize).collect();
        if out.dims() != want {
            return Err(node_err(
                i,
                node,
                format!("computes shape {:?}, the graph says {want:?}", out.dims()),
            ));
        }
        vals[i] = Some(out);
        if !keep_all {
            for &j in &node.inputs {
                if last_use[j] == i {
                    vals[j] = None;
                }
            }
        }
    }
    Ok(vals.into_iter().flatten().collect())
}

fn node_err(index: usize, node: &Node, message: impl Into<String>) -> PlainError {
    PlainError::Node {
        index,
        name: node.name.clone(),
        message: message.into(),
    }
}

/// A weight tensor as a ring tensor of shape `dims`.
fn weight(weights: &ModelWeights, name: &str, dims: &[usize]) -> Result<RingTensor> {
    let t = weights.get(name)?;
    RingTensor::from_i64(dims, &t.data).map_err(|e| {
        PlainError::Model(knapsec_core::CoreError::Graph(format!(
            "weight {name:?}: {e}"
        )))
    })
}

/// `floor(v / n)` on signed values, `n ≥ 1`.
fn floor_div(v: u64, n: u64) -> u64 {
    (v as i64).div_euclid(n as i64) as u64
}

/// Evaluates one non-input node on its inputs (the semantics of the crate docs).
pub fn eval_node(
    model: &SecureModel,
    weights: &ModelWeights,
    index: usize,
    node: &Node,
    ins: &[&RingTensor],
) -> Result<RingTensor> {
    let f = model.frac_bits;
    let err = |e: knapsec_ring::RingError| node_err(index, node, e.to_string());
    let x = ins[0];
    let out_c = node.shape[0] as usize;
    Ok(match &node.op {
        Op::Input => return Err(node_err(index, node, "only node 0 may be the input")),
        Op::Conv2d {
            weight: wname,
            bias,
            ..
        } => {
            let geo = node.op.conv_geometry().expect("a convolution");
            let kernel = geo.kernel;
            let p = Conv2dParams::from_graph(
                geo.kernel,
                geo.stride,
                geo.padding,
                geo.dilation,
                geo.groups,
            );
            let (c, _, _) = x.chw().map_err(err)?;
            let g = geo.groups.max(1) as usize;
            let w = weight(
                weights,
                wname,
                &[out_c, c / g, kernel[0] as usize, kernel[1] as usize],
            )?;
            let mut y = conv2d(x, &w, &p).map_err(err)?;
            y.shr_arith_in_place(f);
            if let Some(b) = bias {
                let b = weight(weights, b, &[out_c])?;
                y.add_channel_bias(b.data()).map_err(err)?;
            }
            y
        }
        Op::Linear {
            weight: wname,
            bias,
        } => {
            let w = weight(weights, wname, &[out_c, x.len()])?;
            let mut y = linear(x, &w).map_err(err)?;
            y.shr_arith_in_place(f);
            if let Some(b) = bias {
                let b = weight(weights, b, &[out_c])?;
                y.add_channel_bias(b.data()).map_err(err)?;
            }
            y
        }
        Op::BlockRelu { blocks, .. } => block_relu(x, blocks).map_err(err)?,
        Op::Relu6 { .. } => {
            let six = 6i64 << f;
            let mut y = x.clone();
            y.data_mut()
                .iter_mut()
                .for_each(|v| *v = (*v as i64).clamp(0, six) as u64);
            y
        }
        Op::AvgPool {
            count_include_pad, ..
        } => {
            let geo = node.op.pool_geometry().expect("a pooling op");
            let (_, h, w) = x.chw().map_err(err)?;
            let mut s = window_sums(x, &geo).map_err(err)?;
            let counts = window_counts(h, w, &geo, *count_include_pad).map_err(err)?;
            let plane = counts.len();
            for (i, v) in s.data_mut().iter_mut().enumerate() {
                *v = floor_div(*v, counts[i % plane].max(1));
            }
            s
        }
        Op::MaxPool { .. } => {
            let geo = node.op.pool_geometry().expect("a pooling op");
            let taps = window_taps(x, &geo, TapPadding::Edge).map_err(err)?;
            let mut m = taps[0].clone();
            for t in &taps[1..] {
                m.data_mut().iter_mut().zip(t.data()).for_each(|(a, &b)| {
                    if (b as i64) > (*a as i64) {
                        *a = b;
                    }
                });
            }
            m
        }
        Op::GlobalAvgPool => {
            let (_, h, w) = x.chw().map_err(err)?;
            let mut s = global_sum(x).map_err(err)?;
            let n = (h * w).max(1) as u64;
            s.data_mut().iter_mut().for_each(|v| *v = floor_div(*v, n));
            s
        }
        Op::Add => {
            let mut y = x.clone();
            for t in &ins[1..] {
                y.add_assign(t).map_err(err)?;
            }
            y
        }
        Op::Concat => RingTensor::concat_channels(ins).map_err(err)?,
        Op::Broadcast { height, width } => x
            .broadcast_hw(*height as usize, *width as usize)
            .map_err(err)?,
        Op::Pad { pads } => pad(x, pads.map(|v| v as usize)).map_err(err)?,
        Op::Resize {
            height,
            width,
            mode,
        } => {
            let mut y = resize(x, *height as usize, *width as usize, *mode, f).map_err(err)?;
            if matches!(mode, ResizeMode::Bilinear { .. }) {
                y.shr_arith_in_place(f);
            }
            y
        }
    })
}

/// A DReLU site (block ReLU with patches, ReLU6, max pool) under its window.
fn eval_site(
    model: &SecureModel,
    index: usize,
    node: &Node,
    x: &RingTensor,
    site: &mut Site<'_>,
) -> Result<RingTensor> {
    let err = |e: knapsec_ring::RingError| node_err(index, node, e.to_string());
    Ok(match &node.op {
        Op::BlockRelu { blocks, .. } => approx::block_relu(x, blocks, site).map_err(err)?,
        Op::Relu6 { .. } => approx::relu6(x, model.frac_bits, site),
        Op::MaxPool { .. } => {
            let geo = node.op.pool_geometry().expect("a pooling op");
            approx::max_pool(x, &geo, site).map_err(err)?
        }
        _ => return Err(node_err(index, node, "not a DReLU site")),
    })
}

/// Block ReLU: one decision per patch, `keep = (sum of the patch's in-bounds pixels) > 0`;
/// identity channels pass, zero channels give 0.
pub fn block_relu(x: &RingTensor, blocks: &[BlockSize]) -> knapsec_ring::Result<RingTensor> {
    let (c, h, w) = x.chw()?;
    let layout = BlockLayout::new(c, h, w, blocks)?;
    let keep: Vec<u64> = layout
        .patch_sums(x)?
        .into_iter()
        .map(|s| u64::from((s as i64) > 0))
        .collect();
    let mask = layout.expand(&keep, 1, 0)?;
    x.mul(&mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u32 = 8;

    fn node(name: &str, op: Op, inputs: Vec<usize>, shape: [u32; 3]) -> Node {
        Node {
            name: name.into(),
            op,
            inputs,
            shape,
        }
    }

    fn model(nodes: Vec<Node>, kind: OutputKind) -> SecureModel {
        SecureModel::new("test", F, kind, nodes)
    }

    fn fixed(v: f64) -> i64 {
        knapsec_core::graph::encode_fixed(v, F)
    }

    fn one_op(op: Op, in_shape: [u32; 3], out_shape: [u32; 3]) -> SecureModel {
        model(
            vec![
                node("input", Op::Input, vec![], in_shape),
                node("op", op, vec![0], out_shape),
            ],
            OutputKind::Segmentation,
        )
    }

    fn run1(op: Op, in_shape: [u32; 3], out_shape: [u32; 3], input: &[f32]) -> Vec<i64> {
        evaluate(
            &one_op(op, in_shape, out_shape),
            &ModelWeights::default(),
            input,
        )
        .unwrap()
        .fixed
        .to_i64()
    }

    #[test]
    fn conv_truncates_the_product_then_adds_the_bias() {
        // 1×2×2 input, one 2×2 filter: y = floor(Σ x·w · 2^f / 2^2f) + b.
        let m = one_op(
            Op::Conv2d {
                weight: "w".into(),
                bias: Some("b".into()),
                kernel: [2, 2],
                stride: [1, 1],
                padding: [0, 0],
                dilation: [1, 1],
                groups: 1,
            },
            [1, 2, 2],
            [1, 1, 1],
        );
        let w = ModelWeights::default()
            .with("w", vec![1, 1, 2, 2], vec![fixed(0.5), fixed(-0.25), 3, 0])
            .with("b", vec![1], vec![fixed(1.0)]);
        let x = [1.0f32, 2.0, -1.0 / 256.0, 7.0];
        let out = evaluate(&m, &w, &x).unwrap();
        // products at 2^16: 256·128 + 512·(−64) + (−1)·3 + 0 = −3 → floor(−3 / 256) = −1, + 256.
        assert_eq!(out.fixed.to_i64(), vec![255]);
        assert_eq!(out.logits(), vec![255.0 / 256.0]);
    }

    #[test]
    fn linear_flattens_and_truncates() {
        let m = one_op(
            Op::Linear {
                weight: "w".into(),
                bias: None,
            },
            [3, 1, 1],
            [2, 1, 1],
        );
        let w = ModelWeights::default().with(
            "w",
            vec![2, 3],
            vec![fixed(1.0), fixed(2.0), 0, fixed(-1.0), 0, fixed(0.5)],
        );
        let out = evaluate(&m, &w, &[1.5, -0.5, 3.0]).unwrap();
        assert_eq!(out.fixed.to_i64(), vec![fixed(0.5), fixed(0.0)]);
        assert_eq!(out.labels(), vec![0]);
    }

    #[test]
    fn block_relu_decides_on_the_patch_sum_strictly_positive() {
        // One channel 2×3 with patch 2×2: patches {c0,c1} and the ragged {c2}.
        let blocks = vec![
            BlockSize::Patch { h: 2, w: 2 },
            BlockSize::Identity,
            BlockSize::Zero,
            BlockSize::RELU,
        ];
        let op = Op::BlockRelu {
            layer: "l".into(),
            blocks,
        };
        let x: Vec<f32> = vec![
            1.0, -1.0,
            -3.0, // channel 0 row 0: left patch sum = 1 − 1 + 2 − 2 = 0 → dropped
            2.0, -2.0, 4.0, //  right (ragged) patch −3 + 4 = 1 > 0 → kept
            -1.0, 2.0, 3.0, // channel 1: identity
            -4.0, 5.0, 6.0, //
            7.0, 8.0, 9.0, // channel 2: zero
            1.0, 1.0, 1.0, //
            -1.0, 0.0, 2.0, // channel 3: ReLU
            3.0, -5.0, 0.5, //
        ];
        let y = run1(op, [4, 2, 3], [4, 2, 3], &x);
        let want: Vec<f32> = vec![
            0.0, 0.0, -3.0, 0.0, 0.0, 4.0, //
            -1.0, 2.0, 3.0, -4.0, 5.0, 6.0, //
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, //
            0.0, 0.0, 2.0, 3.0, 0.0, 0.5,
        ];
        assert_eq!(y, want.iter().map(|&v| fixed(v as f64)).collect::<Vec<_>>());
    }

    #[test]
    fn relu6_clamps() {
        let y = run1(
            Op::Relu6 { layer: "r".into() },
            [1, 1, 4],
            [1, 1, 4],
            &[-1.0, 0.5, 6.0, 7.5],
        );
        assert_eq!(y, vec![0, fixed(0.5), fixed(6.0), fixed(6.0)]);
    }

    #[test]
    fn avg_pool_floors_and_counts_padding_as_asked() {
        // 1×2×2 input, kernel 2, stride 1, padding 1 → 3×3 windows.
        let x = [1.0f32, 2.0, 3.0, -4.5];
        let mk = |cip| Op::AvgPool {
            kernel: [2, 2],
            stride: [1, 1],
            padding: [1, 1],
            pad_end: None,
            ceil_mode: false,
            count_include_pad: cip,
        };
        let with = run1(mk(true), [1, 2, 2], [1, 3, 3], &x);
        let without = run1(mk(false), [1, 2, 2], [1, 3, 3], &x);
        let s = |v: f64| fixed(v);
        // Centre window holds all four: sum = 1.5 → /4 exact.
        assert_eq!(with[4], s(1.5) / 4);
        assert_eq!(without[4], s(1.5) / 4);
        // Corner (0,0) holds x[0,0] only: /4 with padding, /1 without.
        assert_eq!(with[0], s(1.0) / 4);
        assert_eq!(without[0], s(1.0));
        // Bottom-right holds −4.5: floor(−1152 / 4) = −288; edge (1,2) holds 2 and −4.5: floor(−640/2).
        assert_eq!(with[8], (-1152i64).div_euclid(4));
        assert_eq!(without[5], (-640i64).div_euclid(2));
        // A non-exact negative division floors: −385 / 4 → −97.
        let y = run1(
            mk(true),
            [1, 2, 2],
            [1, 3, 3],
            &[0.0, 0.0, 0.0, -385.0 / 256.0],
        );
        assert_eq!(y[8], -97);
    }

    #[test]
    fn global_avg_pool_divides_by_h_times_w() {
        let y = run1(
            Op::GlobalAvgPool,
            [2, 2, 3],
            [2, 1, 1],
            &[
                1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, -1.0, -1.0, -1.0, -1.0, -2.0,
            ],
        );
        assert_eq!(y, vec![fixed(3.5), (fixed(-7.0)).div_euclid(6)]);
    }

    #[test]
    fn max_pool_pads_with_minus_infinity() {
        let x = [-5.0f32, -6.0, -7.0, -8.0];
        let y = run1(
            Op::MaxPool {
                kernel: [2, 2],
                stride: [1, 1],
                padding: [1, 1],
                pad_end: None,
                ceil_mode: false,
            },
            [1, 2, 2],
            [1, 3, 3],
            &x,
        );
        // Every window holds only in-bounds negatives (zero padding would give 0).
        let want = [-5.0, -5.0, -6.0, -5.0, -5.0, -6.0, -7.0, -7.0, -8.0];
        assert_eq!(y, want.iter().map(|&v| fixed(v)).collect::<Vec<_>>());
    }

    #[test]
    fn add_concat_broadcast_and_argmax() {
        let nodes = vec![
            node("input", Op::Input, vec![], [2, 1, 1]),
            node("add", Op::Add, vec![0, 0], [2, 1, 1]),
            node(
                "bc",
                Op::Broadcast {
                    height: 1,
                    width: 2,
                },
                vec![1],
                [2, 1, 2],
            ),
            node("cat", Op::Concat, vec![2, 2], [4, 1, 2]),
        ];
        let m = model(nodes, OutputKind::Segmentation);
        let out = evaluate(&m, &ModelWeights::default(), &[1.25, 3.0]).unwrap();
        assert_eq!(
            out.fixed.to_i64(),
            [2.5, 2.5, 6.0, 6.0, 2.5, 2.5, 6.0, 6.0].map(fixed).to_vec()
        );
        // Ties between channels 1 and 3 go to channel 1.
        assert_eq!(out.labels(), vec![1, 1]);
        let trace = evaluate_trace(&m, &ModelWeights::default(), &[1.25, 3.0]).unwrap();
        assert_eq!(trace.len(), 4);
        assert_eq!(trace[1].to_i64(), vec![fixed(2.5), fixed(6.0)]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let m = one_op(Op::GlobalAvgPool, [1, 2, 2], [1, 1, 1]);
        let w = ModelWeights::default();
        assert!(matches!(
            evaluate(&m, &w, &[1.0; 3]),
            Err(PlainError::Input(_))
        ));
        assert!(matches!(
            evaluate(&m, &w, &[1.0, f32::NAN, 0.0, 0.0]),
            Err(PlainError::Input(_))
        ));
        // A graph whose stated shape disagrees with the op's result.
        let m = one_op(Op::GlobalAvgPool, [1, 2, 2], [1, 2, 2]);
        let e = evaluate(&m, &w, &[1.0; 4]).unwrap_err().to_string();
        assert!(e.contains("node 1 (op)"), "{e}");
        // A missing weight tensor.
        let m = one_op(
            Op::Linear {
                weight: "nope".into(),
                bias: None,
            },
            [4, 1, 1],
            [1, 1, 1],
        );
        assert!(
            evaluate(&m, &w, &[1.0; 4])
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
    }
}
