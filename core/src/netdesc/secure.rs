//! The secure-model graph of a network description (digest §6.14; BatchNorm folded into the
//! convolution it follows, digest §6.6): each description node becomes the graph op that
//! computes it, built with the tch-free [`GraphBuilder`]: a convolution's asymmetric padding
//! becomes a zero-padding node before it (the symmetric part stays in the convolution),
//! pooling keeps its pads and ceil mode ([`PoolGeometry`]), a resize becomes a broadcast (of a
//! 1×1 map), nothing (to its own size) or a resize node. A node the graph has no form for (a
//! lone BatchNorm, a flatten of a map larger than 1×1) is refused naming it.

use super::{ActKind, DescNode, DescOp, NetDesc, ResizeMode};
use crate::block::BlockSize;
use crate::error::{CoreError, Result};
use crate::graph::{PoolGeometry, ResizeMode as GraphResize, SecureModel};
use crate::graph_build::{ConvSpec, GraphBuilder, ParamSource};
use crate::spec::BlockSpec;

impl NetDesc {
    /// The secure-model graph with the block sizes of `spec` (slots it does not name keep
    /// their activation), and the `state_dict` sources of its weights. A BatchNorm folds into
    /// the convolution it reads when it is that convolution's only reader; ops the secure
    /// graph has no form for (a lone BatchNorm, a flatten of a map larger than 1×1) are
    /// refused naming the node.
    pub fn secure_graph(
        &self,
        spec: Option<&BlockSpec>,
        frac_bits: u32,
    ) -> Result<(SecureModel, Vec<ParamSource>)> {
        let table = self.layer_table()?;
        if let Some(spec) = spec {
            for (name, blocks) in &spec.layers {
                let layer = table.get(name).ok_or_else(|| CoreError::UnknownLayer {
                    arch: self.arch.clone(),
                    layer: name.clone(),
                })?;
                if blocks.len() != layer.channels as usize {
                    return Err(CoreError::WrongChannelCount {
                        layer: name.clone(),
                        expected: layer.channels as usize,
                        found: blocks.len(),
                    });
                }
            }
        }
        let no_secure = |n: &DescNode, why: &str| {
            CoreError::Graph(format!(
                "{}: node {:?} ({}) has no secure-graph form: {why}",
                self.arch,
                n.name,
                n.op.kind()
            ))
        };
        let same_shape = |n: &DescNode, id: usize, g: &GraphBuilder| {
            if g.shape(id) == n.shape {
                Ok(id)
            } else {
                Err(no_secure(
                    n,
                    &format!(
                        "the graph's window gives {:?}, the description {:?}",
                        g.shape(id),
                        n.shape
                    ),
                ))
            }
        };
        let mut g = GraphBuilder::new(self.arch.clone(), frac_bits, self.input_shape());
        // Graph node of each description node (`None` for a convolution whose BatchNorm
        // comes next and is built with it).
        let mut map: Vec<Option<usize>> = vec![Some(g.input())];
        let node_of = |map: &Vec<Option<usize>>, i: usize| -> Result<usize> {
            map[i].ok_or_else(|| {
                CoreError::Graph(format!(
                    "{}: node {:?} is read before its BatchNorm",
                    self.arch, self.nodes[i].name
                ))
            })
        };
        for (idx, n) in self.nodes.iter().enumerate().skip(1) {
            let ins: Vec<usize> = if matches!(n.op, DescOp::BatchNorm { .. }) {
                Vec::new()
            } else {
                n.inputs
                    .iter()
                    .map(|&i| node_of(&map, i))
                    .collect::<Result<_>>()?
            };
            let built = match &n.op {
                DescOp::Input => unreachable!("only node 0 is the input"),
                DescOp::Conv { .. } => {
                    let consumers = self.consumers(idx);
                    let folds = consumers.len() == 1
                        && matches!(self.nodes[consumers[0]].op, DescOp::BatchNorm { .. });
                    if folds {
                        None
                    } else {
                        Some(self.conv_into(&mut g, idx, ins[0], None)?)
                    }
                }
                DescOp::BatchNorm { module, eps } => {
                    let src = n.inputs[0];
                    if !matches!(self.nodes[src].op, DescOp::Conv { .. }) || map[src].is_some() {
                        return Err(no_secure(
                            n,
                            "a BatchNorm folds only into the convolution it alone reads",
                        ));
                    }
                    let conv_in = node_of(&map, self.nodes[src].inputs[0])?;
                    Some(self.conv_into(&mut g, src, conv_in, Some((module, *eps)))?)
                }
                DescOp::Act { slot, kind } => {
                    let blocks = spec.and_then(|s| s.layers.get(slot).cloned());
                    match (kind, blocks) {
                        (ActKind::Relu6, None) => Some(g.relu6(slot, ins[0])?),
                        (_, blocks) => Some(g.block_relu(
                            slot,
                            ins[0],
                            blocks.unwrap_or_else(|| vec![BlockSize::RELU; n.shape[0] as usize]),
                        )?),
                    }
                }
                DescOp::MaxPool {
                    kernel,
                    stride,
                    pads,
                    ceil_mode,
                } => {
                    let geo = PoolGeometry {
                        kernel: *kernel,
                        stride: *stride,
                        pads: *pads,
                        ceil_mode: *ceil_mode,
                    };
                    Some(same_shape(n, g.pool(&n.name, ins[0], geo, None)?, &g)?)
                }
                DescOp::AvgPool {
                    kernel,
                    stride,
                    pads,
                    ceil_mode,
                    count_include_pad,
                } => {
                    let geo = PoolGeometry {
                        kernel: *kernel,
                        stride: *stride,
                        pads: *pads,
                        ceil_mode: *ceil_mode,
                    };
                    let id = g.pool(&n.name, ins[0], geo, Some(*count_include_pad))?;
                    Some(same_shape(n, id, &g)?)
                }
                DescOp::GlobalAvgPool => Some(g.global_avg_pool(&n.name, ins[0])?),
                DescOp::Pad { pads } => Some(g.pad(&n.name, ins[0], *pads)?),
                DescOp::Add => Some(g.add(&n.name, &ins)?),
                DescOp::Concat => Some(g.concat(&n.name, &ins)?),
                DescOp::Flatten => {
                    let [_, h, w] = self.nodes[n.inputs[0]].shape;
                    if (h, w) != (1, 1) {
                        return Err(no_secure(n, "flattening a map larger than 1x1"));
                    }
                    Some(ins[0])
                }
                // Dropout is the identity at inference.
                DescOp::Dropout { .. } => Some(ins[0]),
                DescOp::Linear { module, bias, out } => {
                    Some(g.linear(module, ins[0], *out, *bias)?)
                }
                DescOp::Resize {
                    height,
                    width,
                    mode,
                } => {
                    let mode = match *mode {
                        ResizeMode::Nearest => GraphResize::Nearest,
                        ResizeMode::Bilinear { align_corners } => {
                            GraphResize::Bilinear { align_corners }
                        }
                    };
                    Some(g.resize(&n.name, ins[0], *height, *width, mode)?)
                }
            };
            map.push(built);
        }
        g.finish(self.output_kind())
    }

    fn conv_into(
        &self,
        g: &mut GraphBuilder,
        idx: usize,
        input: usize,
        bn: Option<(&String, f64)>,
    ) -> Result<usize> {
        let n = &self.nodes[idx];
        let DescOp::Conv {
            module,
            bias,
            out_channels,
            kernel,
            stride,
            pads,
            dilation,
            groups,
        } = &n.op
        else {
            unreachable!("called on convolutions only")
        };
        // The symmetric part of the padding stays in the convolution (its kernels pad for
        // free); the rest becomes a zero-padding node before it.
        let sym = [pads[0].min(pads[2]), pads[1].min(pads[3])];
        let extra = [
            pads[0] - sym[0],
            pads[1] - sym[1],
            pads[2] - sym[0],
            pads[3] - sym[1],
        ];
        let input = g.pad(&format!("{}.pad", n.name), input, extra)?;
        let spec = ConvSpec {
            out_channels: *out_channels,
            kernel: *kernel,
            stride: *stride,
            padding: sym,
            dilation: *dilation,
            groups: *groups,
            bias: *bias,
        };
        let id = g.conv(module, input, spec, bn.map(|(m, _)| m.as_str()))?;
        if let Some((_, eps)) = bn {
            g.set_last_bn_eps(eps);
        }
        Ok(id)
    }
}
