//! The secure-model graph of a network description (digest §6.14; BatchNorm folded into the
//! convolution it follows, digest §6.6): each description node becomes the graph op that
//! computes it, built with the tch-free [`GraphBuilder`]; a node the graph has no form for
//! is refused naming it.

use super::{ActKind, DescNode, DescOp, NetDesc};
use crate::block::BlockSize;
use crate::error::{CoreError, Result};
use crate::graph::SecureModel;
use crate::graph_build::{ConvSpec, GraphBuilder, ParamSource};
use crate::spec::BlockSpec;

impl NetDesc {
    /// The secure-model graph with the block sizes of `spec` (slots it does not name keep
    /// their activation), and the `state_dict` sources of its weights. A BatchNorm folds into
    /// the convolution it reads when it is that convolution's only reader; ops the secure
    /// graph has no form for (asymmetric padding, ceil-mode pooling that changes the size, a
    /// lone BatchNorm, a resize other than a 1×1 map broadcast) are refused naming the node.
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
        let symmetric = |n: &DescNode, p: [u32; 4]| {
            if p[0] == p[2] && p[1] == p[3] {
                Ok([p[0], p[1]])
            } else {
                Err(no_secure(n, &format!("asymmetric padding {p:?}")))
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
                    let padding = symmetric(n, *pads)?;
                    let id = g.max_pool(&n.name, ins[0], *kernel, *stride, padding)?;
                    if *ceil_mode && g.shape(id) != n.shape {
                        return Err(no_secure(n, "ceil-mode pooling that changes the size"));
                    }
                    Some(id)
                }
                DescOp::AvgPool {
                    kernel,
                    stride,
                    pads,
                    ceil_mode,
                    count_include_pad,
                } => {
                    let padding = symmetric(n, *pads)?;
                    let id = g.avg_pool(
                        &n.name,
                        ins[0],
                        *kernel,
                        *stride,
                        padding,
                        *count_include_pad,
                    )?;
                    if *ceil_mode && g.shape(id) != n.shape {
                        return Err(no_secure(n, "ceil-mode pooling that changes the size"));
                    }
                    Some(id)
                }
                DescOp::GlobalAvgPool => Some(g.global_avg_pool(&n.name, ins[0])?),
                DescOp::Add => Some(g.add(&n.name, &ins)?),
                DescOp::Concat => Some(g.concat(&n.name, &ins)?),
                DescOp::Flatten => {
                    let [_, h, w] = self.nodes[n.inputs[0]].shape;
                    if (h, w) != (1, 1) {
                        return Err(no_secure(n, "flattening a map larger than 1x1"));
                    }
                    Some(ins[0])
                }
                DescOp::Linear { module, bias, out } => {
                    Some(g.linear(module, ins[0], *out, *bias)?)
                }
                DescOp::Resize {
                    height,
                    width,
                    mode,
                } => {
                    let [_, h, w] = self.nodes[n.inputs[0]].shape;
                    if (h, w) != (1, 1) {
                        return Err(no_secure(
                            n,
                            &format!("resize of a {h}x{w} map ({mode:?}); only 1x1 maps broadcast"),
                        ));
                    }
                    Some(g.broadcast(&n.name, ins[0], *height, *width)?)
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
        if pads[0] != pads[2] || pads[1] != pads[3] {
            return Err(CoreError::Graph(format!(
                "{}: node {:?} (conv) has no secure-graph form: asymmetric padding {pads:?}",
                self.arch, n.name
            )));
        }
        let spec = ConvSpec {
            out_channels: *out_channels,
            kernel: *kernel,
            stride: *stride,
            padding: [pads[0], pads[1]],
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
