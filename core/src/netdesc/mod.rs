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
//!
//! Parts: this module holds the ops, the nodes and the description's own queries (layer
//! table, parameters, listing); `shape` the shape inference every pushed node goes through;
//! `secure` the secure-model graph.

mod secure;
mod shape;
#[cfg(test)]
mod tests;

pub use shape::window_out_padded;

use crate::error::{CoreError, Result};
use crate::graph::{OutputKind, Shape};
use crate::layer::{LayerTable, ReluLayer};
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
    /// Zero padding `[top, left, bottom, right]` (an ONNX constant-0 `Pad` read by anything
    /// but a convolution, whose padding takes it instead).
    Pad {
        /// Rows and columns of zeros added on each side.
        pads: [u32; 4],
    },
    /// Dropout with probability `p` in training (the identity at inference, and in the
    /// secure graph), as PyTorch's `nn.Dropout`.
    Dropout {
        /// Probability of zeroing an element.
        p: f64,
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
            DescOp::Dropout { .. } => "dropout",
            DescOp::Pad { .. } => "pad",
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
    /// Named blocks (name, last node), if the builder chose them ([`Self::end_block`]).
    blocks: Vec<(String, usize)>,
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
            blocks: Vec::new(),
        })
    }

    /// Ends block `name` at the last node pushed: where distortion passes may start (the
    /// tch interpreter runs the network block by block; a block should end where one value
    /// carries the whole state, e.g. after a residual unit). Nodes pushed after the last
    /// block belong to it. Without blocks, the interpreter chooses its own.
    pub fn end_block(&mut self, name: impl Into<String>) {
        self.blocks.push((name.into(), self.nodes.len() - 1));
    }

    /// The blocks named by [`Self::end_block`]: name and last node, in order.
    pub fn blocks(&self) -> &[(String, usize)] {
        &self.blocks
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
                DescOp::Pad { pads } => format!("  pads {pads:?}"),
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
