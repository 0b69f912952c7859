//! The same graph in `f64` arithmetic: the real-valued meaning of a secure model, used to
//! bound the fixed-point error of [`crate::evaluate`] (and of secure backends) in tests.
//!
//! Weights are the model's fixed-point weights decoded (so only the activations' rounding and
//! truncations differ). Block ReLU keeps a patch iff the mean of its in-bounds pixels is
//! `> 0` (the reference's plaintext module, digest §1.1); average pooling divides exactly;
//! global average pooling divides by `H·W`. Direct loops: meant for small test graphs.

use crate::error::{PlainError, Result};
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{ModelWeights, Op, ResizeMode, SecureModel, decode_fixed};

/// A real-valued `[C, H, W]` activation.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatTensor {
    /// `[C, H, W]`.
    pub dims: [usize; 3],
    /// The values, row-major.
    pub data: Vec<f64>,
}

impl FloatTensor {
    fn at(&self, c: usize, y: isize, x: isize) -> Option<f64> {
        let [_, h, w] = self.dims;
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            return None;
        }
        Some(self.data[(c * h + y as usize) * w + x as usize])
    }
}

fn decoded(weights: &ModelWeights, name: &str, f: u32) -> Result<Vec<f64>> {
    Ok(weights
        .get(name)?
        .data
        .iter()
        .map(|&v| decode_fixed(v, f))
        .collect())
}

/// Evaluates every node of `model` in `f64` and returns the output node's values.
pub fn evaluate_f64(
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
) -> Result<FloatTensor> {
    model.validate()?;
    weights.check_against(model)?;
    let f = model.frac_bits;
    let [c0, h0, w0] = model.input_shape().map(|v| v as usize);
    if input.len() != c0 * h0 * w0 {
        return Err(PlainError::Input(format!(
            "{} values given, the model expects {}",
            input.len(),
            c0 * h0 * w0
        )));
    }
    let mut vals: Vec<FloatTensor> = Vec::with_capacity(model.nodes.len());
    vals.push(FloatTensor {
        dims: [c0, h0, w0],
        data: input.iter().map(|&v| f64::from(v)).collect(),
    });
    for node in &model.nodes[1..] {
        let x = &vals[node.inputs[0]];
        let [c, h, w] = x.dims;
        let [oc, oh, ow] = node.shape.map(|v| v as usize);
        let mut out = vec![0.0f64; oc * oh * ow];
        match &node.op {
            Op::Input => return Err(PlainError::Input("only node 0 may be the input".into())),
            Op::Conv2d { weight, bias, .. } => {
                let geo = node.op.conv_geometry().expect("a convolution");
                let (kernel, stride, padding, dilation) =
                    (geo.kernel, geo.stride, geo.padding, geo.dilation);
                let wt = decoded(weights, weight, f)?;
                let b = bias.as_ref().map(|b| decoded(weights, b, f)).transpose()?;
                let g = geo.groups.max(1) as usize;
                let (cg, og) = (c / g, oc / g);
                let [kh, kw] = kernel.map(|v| v as usize);
                for o in 0..oc {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut s = b.as_ref().map_or(0.0, |b| b[o]);
                            for ci in 0..cg {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iy = (oy * stride[0] as usize
                                            + ky * dilation[0] as usize)
                                            as isize
                                            - padding[0] as isize;
                                        let ix = (ox * stride[1] as usize
                                            + kx * dilation[1] as usize)
                                            as isize
                                            - padding[1] as isize;
                                        if let Some(v) = x.at((o / og) * cg + ci, iy, ix) {
                                            s += v * wt[((o * cg + ci) * kh + ky) * kw + kx];
                                        }
                                    }
                                }
                            }
                            out[(o * oh + oy) * ow + ox] = s;
                        }
                    }
                }
            }
            Op::Linear { weight, bias } => {
                let wt = decoded(weights, weight, f)?;
                let b = bias.as_ref().map(|b| decoded(weights, b, f)).transpose()?;
                let n = x.data.len();
                for (o, v) in out.iter_mut().enumerate() {
                    *v = wt[o * n..(o + 1) * n]
                        .iter()
                        .zip(&x.data)
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                        + b.as_ref().map_or(0.0, |b| b[o]);
                }
            }
            Op::BlockRelu { blocks, .. } => {
                for (ch, b) in blocks.iter().enumerate() {
                    let plane = &x.data[ch * h * w..(ch + 1) * h * w];
                    let dst = &mut out[ch * h * w..(ch + 1) * h * w];
                    match *b {
                        BlockSize::Identity => dst.copy_from_slice(plane),
                        BlockSize::Zero => {}
                        BlockSize::Patch { h: bh, w: bw } => {
                            let (bh, bw) = (bh as usize, bw as usize);
                            for py in (0..h).step_by(bh) {
                                for px in (0..w).step_by(bw) {
                                    let (ys, xs) = (py..(py + bh).min(h), px..(px + bw).min(w));
                                    let n = (ys.len() * xs.len()) as f64;
                                    let mean: f64 = ys
                                        .clone()
                                        .flat_map(|y| xs.clone().map(move |xx| plane[y * w + xx]))
                                        .sum::<f64>()
                                        / n;
                                    if mean > 0.0 {
                                        for y in ys.clone() {
                                            for xx in xs.clone() {
                                                dst[y * w + xx] = plane[y * w + xx];
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Op::Relu6 { .. } => out
                .iter_mut()
                .zip(&x.data)
                .for_each(|(o, &v)| *o = v.clamp(0.0, 6.0)),
            Op::AvgPool { .. } | Op::MaxPool { .. } => {
                // average: the window's sum over its size clipped to the padded map (or its
                // in-bounds count); max: the largest in-bounds value
                let geo = node.op.pool_geometry().expect("a pooling op");
                let average = match &node.op {
                    Op::AvgPool {
                        count_include_pad, ..
                    } => Some(*count_include_pad),
                    _ => None,
                };
                let [kh, kw] = geo.kernel.map(|v| v as isize);
                let [t, l, b, r] = geo.pads.map(|v| v as isize);
                for ch in 0..c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let y0 = (oy * geo.stride[0] as usize) as isize - t;
                            let x0 = (ox * geo.stride[1] as usize) as isize - l;
                            let values = (y0..y0 + kh)
                                .flat_map(|y| (x0..x0 + kw).map(move |xx| (y, xx)))
                                .filter_map(|(y, xx)| x.at(ch, y, xx));
                            out[(ch * oh + oy) * ow + ox] = match average {
                                Some(count_include_pad) => {
                                    let (s, n) =
                                        values.fold((0.0, 0.0), |(s, n), v| (s + v, n + 1.0));
                                    let padded = ((y0 + kh).min(h as isize + b) - y0)
                                        * ((x0 + kw).min(w as isize + r) - x0);
                                    s / if count_include_pad { padded as f64 } else { n }
                                }
                                None => values.fold(f64::NEG_INFINITY, f64::max),
                            };
                        }
                    }
                }
            }
            Op::GlobalAvgPool => {
                for (ch, o) in out.iter_mut().enumerate() {
                    *o = x.data[ch * h * w..(ch + 1) * h * w].iter().sum::<f64>()
                        / (h * w).max(1) as f64;
                }
            }
            Op::Add => {
                for &j in &node.inputs {
                    out.iter_mut().zip(&vals[j].data).for_each(|(o, v)| *o += v);
                }
            }
            Op::Concat => {
                out.clear();
                for &j in &node.inputs {
                    out.extend_from_slice(&vals[j].data);
                }
            }
            Op::Broadcast { height, width } => {
                let plane = (*height * *width) as usize;
                for (ch, &v) in x.data.iter().enumerate() {
                    out[ch * plane..(ch + 1) * plane].fill(v);
                }
            }
            Op::Pad { pads } => {
                let [t, l] = [pads[0] as usize, pads[1] as usize];
                for ch in 0..c {
                    for y in 0..h {
                        let src = &x.data[(ch * h + y) * w..(ch * h + y + 1) * w];
                        let at = (ch * oh + t + y) * ow + l;
                        out[at..at + w].copy_from_slice(src);
                    }
                }
            }
            Op::Resize { mode, .. } => {
                // Source coordinate and the two neighbours with their weights, per axis.
                let axis = |n: usize, on: usize| -> Vec<(usize, usize, f64)> {
                    (0..on)
                        .map(|o| match mode {
                            ResizeMode::Nearest => {
                                ((o * n / on).min(n - 1), (o * n / on).min(n - 1), 0.0)
                            }
                            ResizeMode::Bilinear { align_corners } => {
                                let src = if *align_corners {
                                    if on == 1 {
                                        0.0
                                    } else {
                                        o as f64 * (n - 1) as f64 / (on - 1) as f64
                                    }
                                } else {
                                    ((o as f64 + 0.5) * n as f64 / on as f64 - 0.5).max(0.0)
                                };
                                let i0 = (src.floor() as usize).min(n - 1);
                                let i1 = (i0 + 1).min(n - 1);
                                (i0, i1, src - i0 as f64)
                            }
                        })
                        .collect()
                };
                let (ys, xs) = (axis(h, oh), axis(w, ow));
                for ch in 0..c {
                    let p = |y: usize, xx: usize| x.data[(ch * h + y) * w + xx];
                    for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
                        for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
                            out[(ch * oh + oy) * ow + ox] = (1.0 - ly)
                                * ((1.0 - lx) * p(y0, x0) + lx * p(y0, x1))
                                + ly * ((1.0 - lx) * p(y1, x0) + lx * p(y1, x1));
                        }
                    }
                }
            }
        }
        if out.len() != oc * oh * ow {
            return Err(PlainError::Node {
                index: vals.len(),
                name: node.name.clone(),
                message: format!(
                    "produces {} values, the graph's shape holds {}",
                    out.len(),
                    oc * oh * ow
                ),
            });
        }
        vals.push(FloatTensor {
            dims: [oc, oh, ow],
            data: out,
        });
    }
    Ok(vals.pop().expect("a validated model has nodes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::evaluate;
    use knapsec_core::graph::{FixedTensor, Node, OutputKind, encode_fixed};
    use proptest::prelude::*;

    const F: u32 = 16;

    fn conv(weight: &str, k: u32, s: u32, p: u32, d: u32, g: u32) -> Op {
        Op::Conv2d {
            weight: weight.into(),
            bias: Some(format!("{weight}.b")),
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            dilation: [d, d],
            groups: g,
        }
    }

    /// A small network touching every op but the block ReLU: conv → ReLU → grouped strided
    /// dilated conv → Relu6 → (avg pool ‖ max pool) → add → concat with itself → GAP → linear.
    fn net(c: u32, h: u32) -> SecureModel {
        let h2 = (h + 2 - 2 - 1) / 2 + 1; // k3 d1 p1 s2 → ceil(h/2)
        let h3 = h2; // pools k3 s1 p1 keep the size
        let n = |name: &str, op, inputs, shape| Node {
            name: String::from(name),
            op,
            inputs,
            shape,
        };
        let nodes = vec![
            n("input", Op::Input, vec![], [c, h, h]),
            n("c1", conv("c1", 3, 1, 1, 1, 1), vec![0], [4, h, h]),
            n(
                "r1",
                Op::BlockRelu {
                    layer: "r1".into(),
                    blocks: vec![BlockSize::RELU; 4],
                },
                vec![1],
                [4, h, h],
            ),
            n("c2", conv("c2", 3, 2, 2, 2, 2), vec![2], [4, h2, h2]),
            n("r6", Op::Relu6 { layer: "r6".into() }, vec![3], [4, h2, h2]),
            n(
                "ap",
                Op::AvgPool {
                    kernel: [3, 3],
                    stride: [1, 1],
                    padding: [1, 1],
                    pad_end: None,
                    ceil_mode: false,
                    count_include_pad: false,
                },
                vec![4],
                [4, h3, h3],
            ),
            n(
                "mp",
                Op::MaxPool {
                    kernel: [3, 3],
                    stride: [1, 1],
                    padding: [1, 1],
                    pad_end: None,
                    ceil_mode: false,
                },
                vec![4],
                [4, h3, h3],
            ),
            n("add", Op::Add, vec![5, 6], [4, h3, h3]),
            n("cat", Op::Concat, vec![7, 5], [8, h3, h3]),
            n("gap", Op::GlobalAvgPool, vec![8], [8, 1, 1]),
            n(
                "fc",
                Op::Linear {
                    weight: "fc".into(),
                    bias: Some("fc.b".into()),
                },
                vec![9],
                [5, 1, 1],
            ),
        ];
        SecureModel::new("t", F, OutputKind::Classification, nodes)
    }

    fn weights(c: u32, vals: &[f64]) -> ModelWeights {
        let mut it = vals.iter().cycle();
        let mut w = ModelWeights::default();
        let mut put = |name: &str, n: usize| {
            let data = (0..n)
                .map(|_| encode_fixed(*it.next().unwrap(), F))
                .collect();
            w.tensors.insert(
                name.into(),
                FixedTensor {
                    shape: vec![n],
                    data,
                },
            );
        };
        put("c1", 4 * c as usize * 9);
        put("c1.b", 4);
        put("c2", 4 * 2 * 9);
        put("c2.b", 4);
        put("fc", 5 * 8);
        put("fc.b", 5);
        w
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The fixed-point result stays within the bound that the truncations allow: each
        /// truncation or floor division loses < 2^-f, amplified by at most Σ|w| ≤ 36·0.5 per
        /// linear layer; 1e-3 is far above that for these sizes and far below any real change.
        #[test]
        fn fixed_point_tracks_the_real_valued_graph(
            c in 1u32..3, h in 3u32..8,
            vals in proptest::collection::vec(-0.5f64..0.5, 32),
            input in proptest::collection::vec(-2.0f32..2.0, 2 * 64),
        ) {
            let model = net(c, h);
            let w = weights(c, &vals);
            let x = &input[..(c * h * h) as usize];
            let fixed = evaluate(&model, &w, x).unwrap().logits();
            let real = evaluate_f64(&model, &w, x).unwrap();
            for (a, b) in fixed.iter().zip(&real.data) {
                prop_assert!((f64::from(*a) - b).abs() < 1e-3, "fixed {a} real {b}");
            }
        }
    }

    #[test]
    fn block_relu_uses_the_mean_of_in_bounds_pixels() {
        let nodes = vec![
            Node {
                name: "input".into(),
                op: Op::Input,
                inputs: vec![],
                shape: [1, 1, 3],
            },
            Node {
                name: "b".into(),
                op: Op::BlockRelu {
                    layer: "b".into(),
                    blocks: vec![BlockSize::Patch { h: 1, w: 2 }],
                },
                inputs: vec![0],
                shape: [1, 1, 3],
            },
        ];
        let m = SecureModel::new("t", F, OutputKind::Segmentation, nodes);
        let w = ModelWeights::default();
        let x = [1.0f32, -0.5, -0.25];
        let real = evaluate_f64(&m, &w, &x).unwrap();
        assert_eq!(real.data, vec![1.0, -0.5, 0.0]);
        assert_eq!(evaluate(&m, &w, &x).unwrap().logits(), vec![1.0, -0.5, 0.0]);
    }

    /// A `model.ron` whose convolution has more groups than output channels: the loops
    /// divided by `out / groups = 0`. Every executor must refuse it with an error instead.
    #[test]
    fn more_groups_than_output_channels_is_an_error() {
        let nodes = vec![
            Node {
                name: "input".into(),
                op: Op::Input,
                inputs: vec![],
                shape: [4, 3, 3],
            },
            Node {
                name: "conv".into(),
                op: Op::Conv2d {
                    weight: "w".into(),
                    bias: None,
                    kernel: [1, 1],
                    stride: [1, 1],
                    padding: [0, 0],
                    dilation: [1, 1],
                    groups: 4,
                },
                inputs: vec![0],
                shape: [2, 3, 3],
            },
        ];
        let m = SecureModel::new("t", F, OutputKind::Segmentation, nodes);
        let w = ModelWeights::default().with("w", vec![2, 1, 1, 1], vec![1 << F, 1 << F]);
        let x = [0.5f32; 36];
        for e in [
            evaluate_f64(&m, &w, &x).unwrap_err().to_string(),
            evaluate(&m, &w, &x).unwrap_err().to_string(),
        ] {
            assert!(e.contains("groups"), "{e}");
        }
    }

    /// The fixed-point padding, pooling windows and resizes of the oracle's cases against
    /// their real values (an independent loop over each window and source coordinate): within
    /// a few ulps, so the two agree on which positions are padding, which windows exist and
    /// where bilinear samples.
    #[test]
    fn padding_pools_and_resizes_match_the_real_values() {
        let mut cases = vec![
            crate::cases::padded_max_pool(),
            crate::cases::padded_avg_pools(),
        ];
        cases.extend(crate::cases::resize_cases());
        for case in cases {
            let f = case.model.frac_bits;
            let real = evaluate_f64(&case.model, &case.weights, &case.input).unwrap();
            let fixed = evaluate(&case.model, &case.weights, &case.input)
                .unwrap()
                .logits();
            // The input's rounding (½ ulp) carried through, each floor (1 ulp per pool) and
            // the rounding of the bilinear weights (≤ 1 ulp on inputs below 2).
            let worst = real
                .data
                .iter()
                .zip(&fixed)
                .map(|(r, x)| (r - f64::from(*x)).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= 4.0 / f64::from(1u32 << f),
                "{}: {worst} from the real values",
                case.name
            );
        }
    }
}
