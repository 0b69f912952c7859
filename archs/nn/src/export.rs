//! Export of a trained network to the secure-model graph (DESIGN §3 "secure model", digest
//! §6.6, §6.14), and a float evaluator of such graphs.
//!
//! The graph's structure comes from the network's [`BlockNet::secure_graph`] (built with the
//! tch-free [`knapsec_core::graph_build::GraphBuilder`], so the parties never need libtorch);
//! this module fills its weights: every BatchNorm is folded into the preceding convolution,
//! `s = γ / √(var + ε)`, `W' = s·W` per output channel, `b' = β − s·μ + s·b` (conv bias 0 if
//! absent), computed in f64, then encoded as fixed point with `frac_bits` fractional bits
//! (round to nearest; the reference uses 12, [`DEFAULT_FRAC_BITS`]).
//!
//! [`eval_graph`] runs a secure model in floating point (f64) on decoded weights: the
//! round-trip check that an export computes what the tch network computes.

use crate::block_relu::{BlockRelu, relu6};
use crate::error::{NnError, Result};
use crate::net::{BlockNet, Network};
use knapsec_core::graph::{FixedTensor, ModelWeights, Op, ResizeMode, SecureModel};
use knapsec_core::graph_build::ParamSource;
use std::collections::{BTreeMap, HashMap};
use tch::{Device, Kind, Tensor};

/// Fractional bits of the fixed-point encoding unless a caller asks for others (the reference's
/// `TRUNC_BITS`, digest §6.2).
pub const DEFAULT_FRAC_BITS: u32 = 12;

/// Exports a network with its current activations: graph plus fixed-point, BN-folded weights.
pub fn export(network: &Network, frac_bits: u32) -> Result<(SecureModel, ModelWeights)> {
    let net: &dyn BlockNet = network.net.as_ref();
    let (model, params) = net.secure_graph(frac_bits)?;
    let folded = fold_params(net.arch(), &network.vs.variables(), &params)?;
    let weights = quantize(&folded, frac_bits);
    weights.check_against(&model)?;
    Ok((model, weights))
}

/// Folds BatchNorms into their convolutions: graph tensor name → f64 tensor (CPU).
pub fn fold_params(
    arch: &str,
    vars: &HashMap<String, Tensor>,
    params: &[ParamSource],
) -> Result<BTreeMap<String, Tensor>> {
    let get = |key: String| -> Result<Tensor> {
        vars.get(&key)
            .map(|t| t.detach().to_device(Device::Cpu).to_kind(Kind::Double))
            .ok_or_else(|| NnError::Export {
                arch: arch.to_string(),
                message: format!("the network has no variable {key:?}"),
            })
    };
    let _guard = tch::no_grad_guard();
    let mut out = BTreeMap::new();
    for p in params {
        let mut w = get(format!("{}.weight", p.module))?;
        let out_channels = w.size()[0];
        let mut b = if p.module_bias {
            get(format!("{}.bias", p.module))?
        } else {
            Tensor::zeros([out_channels], (Kind::Double, Device::Cpu))
        };
        if let Some(bn) = &p.bn {
            let gamma = get(format!("{bn}.weight"))?;
            let beta = get(format!("{bn}.bias"))?;
            let mean = get(format!("{bn}.running_mean"))?;
            let var = get(format!("{bn}.running_var"))?;
            let s = gamma / (var + p.bn_eps).sqrt();
            let mut view = vec![out_channels];
            view.extend(std::iter::repeat_n(1, w.dim() - 1));
            w = &w * s.view(view.as_slice());
            b = beta - &s * mean + &s * b;
        }
        out.insert(p.weight.clone(), w);
        if let Some(name) = &p.bias {
            out.insert(name.clone(), b);
        }
    }
    Ok(out)
}

/// Encodes f64 tensors as fixed point (round to nearest).
pub fn quantize(tensors: &BTreeMap<String, Tensor>, frac_bits: u32) -> ModelWeights {
    let scale = (1u64 << frac_bits) as f64;
    let mut weights = ModelWeights::default();
    for (name, t) in tensors {
        let shape = t.size().iter().map(|&d| d as usize).collect();
        let data: Vec<i64> = Vec::try_from((t * scale).round().to_kind(Kind::Int64).flatten(0, -1))
            .expect("i64 tensor");
        weights
            .tensors
            .insert(name.clone(), FixedTensor { shape, data });
    }
    weights
}

/// Decodes a fixed-point tensor to an f64 tensor of its shape.
pub fn dequantize(t: &FixedTensor, frac_bits: u32) -> Tensor {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(&t.data)
        .to_kind(Kind::Double)
        .reshape(shape)
        / (1u64 << frac_bits) as f64
}

/// Runs `model` in f64 on `x` (`[N, C, H, W]`), with `weights` decoded from fixed point.
/// Returns the last node's output, `[N, C, H, W]` (`[N, classes, 1, 1]` for classifiers).
pub fn eval_graph(model: &SecureModel, weights: &ModelWeights, x: &Tensor) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let w = |node: usize, name: &str| -> Result<Tensor> {
        let t = weights.get(name).map_err(|e| NnError::Eval {
            node,
            name: model.nodes[node].name.clone(),
            message: e.to_string(),
        })?;
        Ok(dequantize(t, model.frac_bits))
    };
    let mut values: Vec<Tensor> = Vec::with_capacity(model.nodes.len());
    for (i, node) in model.nodes.iter().enumerate() {
        let input = |k: usize| -> &Tensor { &values[node.inputs[k]] };
        let y = match &node.op {
            Op::Input => {
                let s = x.size();
                let want: Vec<i64> = node.shape.iter().map(|&d| i64::from(d)).collect();
                if s.len() != 4 || s[1..] != want[..] {
                    return Err(NnError::Eval {
                        node: i,
                        name: node.name.clone(),
                        message: format!("input has shape {s:?}, the graph expects [N, {want:?}]"),
                    });
                }
                x.to_kind(Kind::Double)
            }
            Op::Conv2d {
                weight,
                bias,
                stride,
                padding,
                dilation,
                groups,
                ..
            } => {
                let b = bias.as_ref().map(|b| w(i, b)).transpose()?;
                let to = |a: &[u32; 2]| [i64::from(a[0]), i64::from(a[1])];
                input(0).conv2d(
                    &w(i, weight)?,
                    b.as_ref(),
                    to(stride),
                    to(padding),
                    to(dilation),
                    i64::from(*groups),
                )
            }
            Op::Linear { weight, bias } => {
                let b = bias.as_ref().map(|b| w(i, b)).transpose()?;
                input(0)
                    .flatten(1, -1)
                    .linear(&w(i, weight)?, b.as_ref())
                    .unsqueeze(-1)
                    .unsqueeze(-1)
            }
            Op::BlockRelu { blocks, .. } => BlockRelu::new(blocks.clone())?.forward(input(0))?,
            Op::Relu6 { .. } => relu6(input(0)),
            Op::AvgPool {
                count_include_pad, ..
            } => {
                // The padding explicit (zeros), then PyTorch's window clipped to the padded
                // map; without `count_include_pad` divided by the count of real pixels.
                let geo = node.op.pool_geometry().expect("a pooling op");
                let (k, s) = (to(&geo.kernel), to(&geo.stride));
                let pads = pad_lrtb(&geo.pads);
                let x = input(0);
                let sum = x.constant_pad_nd(pads).avg_pool2d(
                    k,
                    s,
                    [0, 0],
                    geo.ceil_mode,
                    true,
                    None::<i64>,
                );
                if *count_include_pad {
                    sum
                } else {
                    let count = x.ones_like().constant_pad_nd(pads).avg_pool2d(
                        k,
                        s,
                        [0, 0],
                        geo.ceil_mode,
                        true,
                        None::<i64>,
                    );
                    sum / count
                }
            }
            Op::MaxPool { .. } => {
                let geo = node.op.pool_geometry().expect("a pooling op");
                input(0)
                    .pad(pad_lrtb(&geo.pads), "constant", f64::NEG_INFINITY)
                    .max_pool2d(
                        to(&geo.kernel),
                        to(&geo.stride),
                        [0, 0],
                        [1, 1],
                        geo.ceil_mode,
                    )
            }
            Op::GlobalAvgPool => input(0).mean_dim([2i64, 3].as_slice(), true, Kind::Double),
            Op::Add => {
                let mut acc = input(0).shallow_clone();
                for k in 1..node.inputs.len() {
                    // Not `+=`: that adds in place, into the storage `acc` shares with input 0.
                    #[allow(clippy::assign_op_pattern)]
                    {
                        acc = acc + input(k);
                    }
                }
                acc
            }
            Op::Concat => {
                let parts: Vec<&Tensor> = (0..node.inputs.len()).map(input).collect();
                Tensor::cat(&parts, 1)
            }
            Op::Broadcast { height, width } => {
                let s = input(0).size();
                input(0)
                    .expand([s[0], s[1], i64::from(*height), i64::from(*width)], false)
                    .contiguous()
            }
            Op::Pad { pads } => input(0).constant_pad_nd(pad_lrtb(pads)),
            Op::Resize {
                height,
                width,
                mode,
            } => {
                let size = [i64::from(*height), i64::from(*width)];
                match mode {
                    ResizeMode::Nearest => input(0).upsample_nearest2d(size, None, None),
                    ResizeMode::Bilinear { align_corners } => {
                        input(0).upsample_bilinear2d(size, *align_corners, None, None)
                    }
                }
            }
        };
        values.push(y);
    }
    Ok(values.pop().expect("a validated graph has nodes"))
}

/// `[top, left, bottom, right]` pads in the order of `constant_pad_nd` on the last two
/// dimensions (left, right, top, bottom).
fn pad_lrtb(p: &[u32; 4]) -> [i64; 4] {
    [p[1], p[3], p[0], p[2]].map(i64::from)
}

/// A window parameter pair as tch takes it.
fn to(a: &[u32; 2]) -> [i64; 2] {
    [i64::from(a[0]), i64::from(a[1])]
}
