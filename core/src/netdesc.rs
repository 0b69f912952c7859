//! One network description (DESIGN §4 "One network description"): a DAG of ops with every
//! shape inferred (checked arithmetic), and one named slot per ReLU-family activation.
//!
//! From a [`NetDesc`] come the layer table ([`NetDesc::layer_table`], digest §4.1: the ReLU
//! layers with their true H and W), the secure-model graph ([`NetDesc::secure_graph`],
//! digest §6.14, BatchNorm folded into the convolution before it, digest §6.6) and, in
//! `knapsec-nn`, the tch network that one interpreter runs for distortion, training and
//! evaluation. Sources of descriptions: the ONNX importer (`knapsec-arch-onnx`) and builders.
//!
//! Weights are named like PyTorch `state_dict` entries of a module: a convolution or linear
//! `module` owns `{module}.weight` (and `{module}.bias`), a BatchNorm `{module}.weight`,
//! `.bias`, `.running_mean`, `.running_var` ([`NetDesc::param_shapes`]).

use crate::block::BlockSize;
use crate::error::{CoreError, Result};
use crate::graph::{OutputKind, SecureModel, Shape};
use crate::graph_build::{ConvSpec, GraphBuilder, ParamSource};
use crate::layer::{LayerTable, ReluLayer};
use crate::spec::BlockSpec;
use std::collections::HashMap;
use std::fmt::Write as _;

/// The activation a slot is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

/// How [`DescOp::Resize`] interpolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Nearest neighbour (ONNX `nearest`, `asymmetric` coordinates, `floor`), as PyTorch's
    /// `nn.Upsample(mode="nearest")`.
    Nearest,
    /// Bilinear; `align_corners` as in PyTorch.
    Bilinear {
        /// ONNX `coordinate_transformation_mode = "align_corners"`.
        align_corners: bool,
    },
}

/// One op of a description. Pads are `[top, left, bottom, right]`.
#[derive(Clone, Debug, PartialEq)]
pub enum DescOp {
    /// The image, `[C, H, W]`.
    Input,
    /// 2-D convolution owning `{module}.weight` `[out, in/groups, kh, kw]` (and `{module}.bias`).
    Conv {
        /// Parameter prefix.
        module: String,
        /// Whether `{module}.bias` exists.
        bias: bool,
        /// Output channels.
        out_channels: u32,
        /// Kernel height and width.
        kernel: [u32; 2],
        /// Strides.
        stride: [u32; 2],
        /// Zero padding `[top, left, bottom, right]`.
        pads: [u32; 4],
        /// Dilations.
        dilation: [u32; 2],
        /// Groups (the input channels for a depthwise convolution).
        groups: u32,
    },
    /// BatchNorm over channels (`{module}.weight|bias|running_mean|running_var`).
    BatchNorm {
        /// Parameter prefix.
        module: String,
        /// Epsilon.
        eps: f64,
    },
    /// A ReLU-family activation in slot `slot` (a layer of the layer table).
    Act {
        /// The slot's (layer's) name.
        slot: String,
        /// The activation it is built with.
        kind: ActKind,
    },
    /// Max pooling (padding counts as −∞).
    MaxPool {
        /// Window.
        kernel: [u32; 2],
        /// Strides.
        stride: [u32; 2],
        /// Padding `[top, left, bottom, right]`.
        pads: [u32; 4],
        /// Output size rounded up (a last window may start inside the input or the top/left
        /// padding only).
        ceil_mode: bool,
    },
    /// Average pooling.
    AvgPool {
        /// Window.
        kernel: [u32; 2],
        /// Strides.
        stride: [u32; 2],
        /// Padding `[top, left, bottom, right]`.
        pads: [u32; 4],
        /// Output size rounded up.
        ceil_mode: bool,
        /// Whether padded positions count in the divisor.
        count_include_pad: bool,
    },
    /// Mean over H·W per channel, `[C, 1, 1]`.
    GlobalAvgPool,
    /// Element-wise sum of inputs of one shape.
    Add,
    /// Concatenation along channels.
    Concat,
    /// `[C, H, W]` → `[C·H·W, 1, 1]` (row-major, as `torch.flatten(x, 1)`).
    Flatten,
    /// Fully connected layer on `[C, 1, 1]`, owning `{module}.weight` `[out, in]`.
    Linear {
        /// Parameter prefix.
        module: String,
        /// Whether `{module}.bias` exists.
        bias: bool,
        /// Output features.
        out: u32,
    },
    /// Resizes the map to `height × width`.
    Resize {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
        /// Interpolation.
        mode: ResizeMode,
    },
}

impl DescOp {
    /// Short name of the op kind (`conv`, `relu`, …), for listings.
    pub fn kind(&self) -> &'static str {
        match self {
            DescOp::Input => "input",
            DescOp::Conv { .. } => "conv",
            DescOp::BatchNorm { .. } => "batchnorm",
            DescOp::Act {
                kind: ActKind::Relu,
                ..
            } => "relu",
            DescOp::Act {
                kind: ActKind::Relu6,
                ..
            } => "relu6",
            DescOp::MaxPool { .. } => "maxpool",
            DescOp::AvgPool { .. } => "avgpool",
            DescOp::GlobalAvgPool => "global-avgpool",
            DescOp::Add => "add",
            DescOp::Concat => "concat",
            DescOp::Flatten => "flatten",
            DescOp::Linear { .. } => "linear",
            DescOp::Resize { .. } => "resize",
        }
    }
}

/// A node: name, op, inputs (earlier nodes) and inferred output shape `[C, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DescNode {
    /// Unique name.
    pub name: String,
    /// What it computes.
    pub op: DescOp,
    /// Indices of earlier nodes.
    pub inputs: Vec<usize>,
    /// Output `[C, H, W]`.
    pub shape: Shape,
}

/// A network description: nodes in topological order, node 0 the input, the last the output.
#[derive(Clone, Debug, PartialEq)]
pub struct NetDesc {
    /// Architecture name (registry key, or `onnx:PATH`).
    pub arch: String,
    /// The nodes.
    pub nodes: Vec<DescNode>,
    names: HashMap<String, usize>,
}

/// Output size of a pooling or convolution window along one axis; `None` when the window
/// does not fit or a size overflows. `ceil` follows PyTorch and ONNX: the size is rounded
/// up, but a last window that would start in the bottom/right padding is dropped.
pub fn window_out_padded(
    size: u32,
    kernel: u32,
    stride: u32,
    pad_begin: u32,
    pad_end: u32,
    dilation: u32,
    ceil: bool,
) -> Option<u32> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let span = u64::from(dilation) * (u64::from(kernel) - 1) + 1;
    let padded = u64::from(size) + u64::from(pad_begin) + u64::from(pad_end);
    if padded < span {
        return None;
    }
    let stride = u64::from(stride);
    let mut out = if ceil {
        (padded - span).div_ceil(stride) + 1
    } else {
        (padded - span) / stride + 1
    };
    if ceil && (out - 1) * stride >= u64::from(size) + u64::from(pad_begin) {
        out -= 1;
    }
    u32::try_from(out).ok()
}

impl NetDesc {
    /// A description of `arch` whose input (node 0, named `input`) has shape `input`.
    pub fn new(arch: impl Into<String>, input: Shape) -> Result<Self> {
        let arch = arch.into();
        if input.contains(&0) {
            return Err(CoreError::Graph(format!(
                "{arch}: input shape {input:?} has a zero size"
            )));
        }
        let mut names = HashMap::new();
        names.insert("input".to_string(), 0);
        Ok(NetDesc {
            arch,
            nodes: vec![DescNode {
                name: "input".into(),
                op: DescOp::Input,
                inputs: vec![],
                shape: input,
            }],
            names,
        })
    }

    /// The input node's shape.
    pub fn input_shape(&self) -> Shape {
        self.nodes[0].shape
    }

    /// The output node's shape.
    pub fn output_shape(&self) -> Shape {
        self.nodes.last().map(|n| n.shape).unwrap_or([0; 3])
    }

    /// Index of the node named `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }

    fn err(&self, name: &str, why: impl std::fmt::Display) -> CoreError {
        CoreError::Graph(format!("{}: node {name:?}: {why}", self.arch))
    }

    /// Appends node `name` computing `op` on `inputs`, inferring its shape; an error names the
    /// node and what does not fit (unknown input, shapes, a duplicate name or slot).
    pub fn push(&mut self, name: impl Into<String>, op: DescOp, inputs: &[usize]) -> Result<usize> {
        let name = name.into();
        if self.names.contains_key(&name) {
            return Err(self.err(&name, "a node of this name already exists"));
        }
        if let DescOp::Act { slot, .. } = &op
            && self
                .nodes
                .iter()
                .any(|n| matches!(&n.op, DescOp::Act { slot: s, .. } if s == slot))
        {
            return Err(self.err(&name, format!("slot {slot:?} already exists")));
        }
        let mut shapes = Vec::with_capacity(inputs.len());
        for &i in inputs {
            match self.nodes.get(i) {
                Some(n) => shapes.push(n.shape),
                None => return Err(self.err(&name, format!("input node {i} does not exist"))),
            }
        }
        let shape = self.infer(&name, &op, &shapes)?;
        self.names.insert(name.clone(), self.nodes.len());
        self.nodes.push(DescNode {
            name,
            op,
            inputs: inputs.to_vec(),
            shape,
        });
        Ok(self.nodes.len() - 1)
    }

    fn infer(&self, name: &str, op: &DescOp, shapes: &[Shape]) -> Result<Shape> {
        let arity = match op {
            DescOp::Input => return Err(self.err(name, "only node 0 is the input")),
            DescOp::Add | DescOp::Concat => None,
            _ => Some(1),
        };
        match arity {
            Some(a) if shapes.len() != a => {
                return Err(self.err(
                    name,
                    format!("{} takes {a} input, got {}", op.kind(), shapes.len()),
                ));
            }
            None if shapes.len() < 2 => {
                return Err(self.err(name, format!("{} needs at least two inputs", op.kind())));
            }
            _ => {}
        }
        let [c, h, w] = shapes[0];
        let window = |k: [u32; 2], s: [u32; 2], p: [u32; 4], d: [u32; 2], ceil: bool| match (
            window_out_padded(h, k[0], s[0], p[0], p[2], d[0], ceil),
            window_out_padded(w, k[1], s[1], p[1], p[3], d[1], ceil),
        ) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(self.err(
                name,
                format!("window {k:?} (stride {s:?}, pads {p:?}) does not fit a {h}x{w} input"),
            )),
        };
        Ok(match op {
            DescOp::Input => unreachable!("refused above"),
            DescOp::Conv {
                out_channels,
                kernel,
                stride,
                pads,
                dilation,
                groups,
                ..
            } => {
                if *groups == 0
                    || *out_channels == 0
                    || c % groups != 0
                    || out_channels % groups != 0
                {
                    return Err(self.err(
                        name,
                        format!("{c} -> {out_channels} channels cannot form {groups} groups"),
                    ));
                }
                let (oh, ow) = window(*kernel, *stride, *pads, *dilation, false)?;
                [*out_channels, oh, ow]
            }
            DescOp::BatchNorm { eps, .. } => {
                if !(eps.is_finite() && *eps >= 0.0) {
                    return Err(self.err(name, format!("BatchNorm epsilon {eps} is invalid")));
                }
                shapes[0]
            }
            DescOp::Act { .. } | DescOp::Add => {
                if let Some(s) = shapes.iter().find(|s| **s != shapes[0]) {
                    return Err(
                        self.err(name, format!("cannot add shapes {:?} and {s:?}", shapes[0]))
                    );
                }
                shapes[0]
            }
            DescOp::MaxPool {
                kernel,
                stride,
                pads,
                ceil_mode,
            }
            | DescOp::AvgPool {
                kernel,
                stride,
                pads,
                ceil_mode,
                ..
            } => {
                if pads[0] >= kernel[0]
                    || pads[2] >= kernel[0]
                    || pads[1] >= kernel[1]
                    || pads[3] >= kernel[1]
                {
                    return Err(self.err(
                        name,
                        format!("pooling pads {pads:?} must be smaller than the window {kernel:?}"),
                    ));
                }
                let (oh, ow) = window(*kernel, *stride, *pads, [1, 1], *ceil_mode)?;
                [c, oh, ow]
            }
            DescOp::GlobalAvgPool => [c, 1, 1],
            DescOp::Concat => {
                let mut total = 0u32;
                for s in shapes {
                    if (s[1], s[2]) != (h, w) {
                        return Err(self.err(
                            name,
                            format!("cannot concatenate {h}x{w} and {}x{} maps", s[1], s[2]),
                        ));
                    }
                    total = total
                        .checked_add(s[0])
                        .ok_or_else(|| self.err(name, "too many channels to concatenate"))?;
                }
                [total, h, w]
            }
            DescOp::Flatten => {
                let n = c
                    .checked_mul(h)
                    .and_then(|x| x.checked_mul(w))
                    .ok_or_else(|| self.err(name, "flattened size overflows"))?;
                [n, 1, 1]
            }
            DescOp::Linear { out, .. } => {
                if (h, w) != (1, 1) {
                    return Err(self.err(
                        name,
                        format!("a linear layer needs a [C, 1, 1] input, got {h}x{w}"),
                    ));
                }
                if *out == 0 {
                    return Err(self.err(name, "a linear layer needs at least one output"));
                }
                [*out, 1, 1]
            }
            DescOp::Resize { height, width, .. } => {
                if *height == 0 || *width == 0 {
                    return Err(self.err(name, "resize to a zero size"));
                }
                [c, *height, *width]
            }
        })
    }

    /// The ReLU layers (one per activation slot) in network order.
    pub fn layer_table(&self) -> Result<LayerTable> {
        LayerTable::new(
            self.arch.clone(),
            self.nodes
                .iter()
                .filter_map(|n| match &n.op {
                    DescOp::Act { slot, .. } => Some(ReluLayer::new(
                        slot.clone(),
                        n.shape[0],
                        n.shape[1],
                        n.shape[2],
                    )),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Indices of the nodes that read node `i`.
    pub fn consumers(&self, i: usize) -> Vec<usize> {
        (i + 1..self.nodes.len())
            .filter(|&j| self.nodes[j].inputs.contains(&i))
            .collect()
    }

    /// Every parameter tensor the description owns, with its shape, in node order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let input = n.inputs.first().map(|&i| self.nodes[i].shape);
            match (&n.op, input) {
                (
                    DescOp::Conv {
                        module,
                        bias,
                        out_channels,
                        kernel,
                        groups,
                        ..
                    },
                    Some(i),
                ) => {
                    out.push((
                        format!("{module}.weight"),
                        vec![
                            *out_channels as usize,
                            (i[0] / groups) as usize,
                            kernel[0] as usize,
                            kernel[1] as usize,
                        ],
                    ));
                    if *bias {
                        out.push((format!("{module}.bias"), vec![*out_channels as usize]));
                    }
                }
                (DescOp::BatchNorm { module, .. }, Some(i)) => {
                    for t in ["weight", "bias", "running_mean", "running_var"] {
                        out.push((format!("{module}.{t}"), vec![i[0] as usize]));
                    }
                }
                (
                    DescOp::Linear {
                        module,
                        bias,
                        out: o,
                        ..
                    },
                    Some(i),
                ) => {
                    out.push((format!("{module}.weight"), vec![*o as usize, i[0] as usize]));
                    if *bias {
                        out.push((format!("{module}.bias"), vec![*o as usize]));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// What the output means: logits (`[C, 1, 1]`) or a segmentation map.
    pub fn output_kind(&self) -> OutputKind {
        let [_, h, w] = self.output_shape();
        if (h, w) == (1, 1) {
            OutputKind::Classification
        } else {
            OutputKind::Segmentation
        }
    }

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

    /// A human-readable listing: one line per node with its op, inputs, shape and slot.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let ins: Vec<String> = n.inputs.iter().map(|j| j.to_string()).collect();
            let [c, h, w] = n.shape;
            let extra = match &n.op {
                DescOp::Act { slot, .. } => format!("  slot {slot}"),
                DescOp::Conv {
                    kernel,
                    stride,
                    pads,
                    dilation,
                    groups,
                    ..
                } => format!(
                    "  k{}x{} s{}x{} pads {:?} d{}x{} g{}",
                    kernel[0],
                    kernel[1],
                    stride[0],
                    stride[1],
                    pads,
                    dilation[0],
                    dilation[1],
                    groups
                ),
                DescOp::MaxPool {
                    kernel,
                    stride,
                    ceil_mode,
                    ..
                } => format!(
                    "  k{}x{} s{}x{}{}",
                    kernel[0],
                    kernel[1],
                    stride[0],
                    stride[1],
                    if *ceil_mode { " ceil" } else { "" }
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "{i:>4}  {:<14} {:<32} [{}]  {c}x{h}x{w}{extra}",
                n.op.kind(),
                n.name,
                ins.join(",")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(module: &str, out: u32, k: u32, s: u32, p: u32) -> DescOp {
        DescOp::Conv {
            module: module.into(),
            bias: false,
            out_channels: out,
            kernel: [k, k],
            stride: [s, s],
            pads: [p; 4],
            dilation: [1, 1],
            groups: 1,
        }
    }

    fn relu(slot: &str) -> DescOp {
        DescOp::Act {
            slot: slot.into(),
            kind: ActKind::Relu,
        }
    }

    #[test]
    fn ceil_mode_sizes_follow_pytorch() {
        // 6 with k3 s2: floor 2, ceil 3; 5 with k2 s2 p1 ceil: 4 would start in the padding.
        assert_eq!(window_out_padded(6, 3, 2, 0, 0, 1, false), Some(2));
        assert_eq!(window_out_padded(6, 3, 2, 0, 0, 1, true), Some(3));
        assert_eq!(window_out_padded(5, 2, 2, 1, 1, 1, true), Some(3));
        assert_eq!(window_out_padded(2, 3, 1, 0, 0, 1, false), None);
        assert_eq!(
            window_out_padded(u32::MAX, 1, 1, u32::MAX, 0, 1, false),
            None
        );
    }

    #[test]
    fn residual_net_table_and_graph() {
        let mut d = NetDesc::new("toy", [1, 8, 8]).unwrap();
        let c1 = d.push("c1", conv("c1", 4, 3, 1, 1), &[0]).unwrap();
        let b1 = d
            .push(
                "b1",
                DescOp::BatchNorm {
                    module: "b1".into(),
                    eps: 1e-3,
                },
                &[c1],
            )
            .unwrap();
        let r1 = d.push("r1", relu("r1"), &[b1]).unwrap();
        let c2 = d.push("c2", conv("c2", 4, 3, 1, 1), &[r1]).unwrap();
        let a = d.push("add", DescOp::Add, &[c2, r1]).unwrap();
        let r2 = d.push("r2", relu("r2"), &[a]).unwrap();
        let p = d
            .push(
                "pool",
                DescOp::MaxPool {
                    kernel: [3, 3],
                    stride: [2, 2],
                    pads: [0; 4],
                    ceil_mode: false,
                },
                &[r2],
            )
            .unwrap();
        assert_eq!(d.nodes[p].shape, [4, 3, 3]);
        let g = d.push("gap", DescOp::GlobalAvgPool, &[r2]).unwrap();
        let f = d.push("flat", DescOp::Flatten, &[g]).unwrap();
        d.push(
            "fc",
            DescOp::Linear {
                module: "fc".into(),
                bias: true,
                out: 3,
            },
            &[f],
        )
        .unwrap();
        let t = d.layer_table().unwrap();
        assert_eq!(
            t.layers,
            vec![ReluLayer::new("r1", 4, 8, 8), ReluLayer::new("r2", 4, 8, 8)]
        );
        assert!(d.push("again", relu("r1"), &[r2]).is_err());
        assert!(d.push("bad", DescOp::Add, &[r2, p]).is_err());
        let (model, params) = d.secure_graph(None, 12).unwrap();
        assert_eq!(model.output_shape(), [3, 1, 1]);
        assert_eq!(model.drelus(), 2 * 4 * 64);
        assert_eq!(params[0].bn.as_deref(), Some("b1"));
        assert_eq!(params[0].bn_eps, 1e-3);
        assert_eq!(params.len(), 3);
        assert_eq!(d.param_shapes().len(), 1 + 4 + 1 + 2);
        let mut spec = BlockSpec::new("toy");
        spec.layers
            .insert("r2".into(), vec![BlockSize::Identity; 4]);
        assert_eq!(d.secure_graph(Some(&spec), 12).unwrap().0.drelus(), 4 * 64);
        spec.layers.insert("nope".into(), vec![]);
        assert!(d.secure_graph(Some(&spec), 12).is_err());
        assert!(d.summary().contains("slot r2"));
    }

    #[test]
    fn unsupported_secure_forms_are_named() {
        let mut d = NetDesc::new("toy", [1, 6, 6]).unwrap();
        let mut op = conv("c", 2, 3, 1, 0);
        if let DescOp::Conv { pads, .. } = &mut op {
            *pads = [0, 0, 1, 1];
        }
        let c = d.push("c", op, &[0]).unwrap();
        assert_eq!(d.nodes[c].shape, [2, 5, 5]);
        let err = d.secure_graph(None, 12).unwrap_err().to_string();
        assert!(err.contains("asymmetric"), "{err}");
        assert!(NetDesc::new("x", [0, 1, 1]).is_err());
        let mut d = NetDesc::new("toy", [1, 8, 8]).unwrap();
        let pool = DescOp::MaxPool {
            kernel: [3, 3],
            stride: [2, 2],
            pads: [0; 4],
            ceil_mode: true,
        };
        let p = d.push("pool", pool, &[0]).unwrap();
        assert_eq!(d.nodes[p].shape, [1, 4, 4]);
        let err = d.secure_graph(None, 12).unwrap_err().to_string();
        assert!(err.contains("ceil-mode"), "{err}");
        assert!(d.push("g", conv("g", 3, 1, 1, 0), &[7]).is_err());
    }
}
