//! The secure-model graph (DESIGN §3): what `export` writes and every secure backend runs.
//!
//! A secure model is a folder with two files:
//! * `model.ron`, the **public part** ([`SecureModel`]): architecture, fixed-point precision,
//!   input shape, the graph of ops with every output shape, and the block spec baked into its
//!   activation nodes, and (format 2) the approximate-DReLU windows chosen per site by
//!   calibration ([`crate::drelu::Calibration`]). Client, server and helper all hold it; its hash
//!   ([`SecureModel::public_hash`]) is compared in the parties' handshake.
//! * `weights.safetensors`, the **private part** ([`ModelWeights`]): the server's weights,
//!   BatchNorm already folded into the preceding convolution (digest §6.6), stored as i64
//!   fixed point with `frac_bits` fractional bits (weights and biases alike).
//!
//! Tensors are single images in `C × H × W` layout; batch size is 1.

use crate::block::BlockSize;
use crate::drelu::{Calibration, SiteKind};
use crate::error::{CoreError, Result};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The secure-model format version this build writes. Version 2 added the optional
/// per-site DReLU windows (`calibration`); version 1 files (without them) still load.
pub const MODEL_FORMAT: u32 = 2;
/// The oldest secure-model format version this build reads.
pub const MODEL_FORMAT_OLDEST: u32 = 1;
/// Most fractional bits a model may use: a product of two encodings carries `2f` of them and
/// must keep sign room and some integer bits in the 64-bit ring (digest §6.2).
pub const MAX_FRAC_BITS: u32 = 30;
/// Most elements (`C·H·W`) one activation may hold: 2^28, 2 GiB of ring elements. Every
/// executor allocates activations of the recorded shapes, so this bounds what a `model.ron`
/// can make a party allocate per node.
pub const MAX_ACTIVATION_ELEMENTS: u64 = 1 << 28;
/// Most elements one weight tensor may hold (2^28).
pub const MAX_WEIGHT_ELEMENTS: u64 = 1 << 28;
/// File name of the public part inside a model folder.
pub const PUBLIC_FILE: &str = "model.ron";
/// File name of the private part inside a model folder.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// Shape of one activation: channels, height, width.
pub type Shape = [u32; 3];

/// What the client gets at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputKind {
    /// `[classes, 1, 1]` logits; the label is their argmax.
    Classification,
    /// `[classes, H, W]` logits; the label map is the per-pixel argmax.
    Segmentation,
}

/// One operation of the graph. Weight tensors are named, and live in [`ModelWeights`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// The client's input image.
    Input,
    /// 2-D convolution with folded BatchNorm; weight `[out, in/groups, kh, kw]`, bias `[out]`.
    Conv2d {
        /// Name of the weight tensor.
        weight: String,
        /// Name of the bias tensor, if any.
        bias: Option<String>,
        /// Kernel height and width.
        kernel: [u32; 2],
        /// Stride, vertical and horizontal.
        stride: [u32; 2],
        /// Zero padding on each side, vertical and horizontal.
        padding: [u32; 2],
        /// Spacing between kernel taps, vertical and horizontal.
        dilation: [u32; 2],
        /// Groups.
        groups: u32,
    },
    /// Fully connected layer on a `[C, 1, 1]` input; weight `[out, in]`, bias `[out]`.
    Linear {
        /// Name of the weight tensor.
        weight: String,
        /// Name of the bias tensor, if any.
        bias: Option<String>,
    },
    /// ReLU layer `layer` with one block size per channel (`(1,1)` = ReLU, identity, zero).
    BlockRelu {
        /// The ReLU layer's name (as in the layer table and the block spec).
        layer: String,
        /// One block size per channel.
        blocks: Vec<BlockSize>,
    },
    /// `min(max(x, 0), 6)` per pixel (MobileNetV2 with ReLU6); `layer` names its slot.
    Relu6 {
        /// The slot's name.
        layer: String,
    },
    /// Average pooling; `count_include_pad` as in PyTorch.
    AvgPool {
        /// Window height and width.
        kernel: [u32; 2],
        /// Stride, vertical and horizontal.
        stride: [u32; 2],
        /// Zero padding on each side, vertical and horizontal.
        padding: [u32; 2],
        /// Whether padded positions count in the divisor.
        count_include_pad: bool,
    },
    /// Max pooling (padding counts as −∞).
    MaxPool {
        /// Window height and width.
        kernel: [u32; 2],
        /// Stride, vertical and horizontal.
        stride: [u32; 2],
        /// Padding on each side, vertical and horizontal.
        padding: [u32; 2],
    },
    /// Mean over H·W per channel, giving `[C, 1, 1]`.
    GlobalAvgPool,
    /// Element-wise sum of the inputs.
    Add,
    /// Concatenation of the inputs along channels.
    Concat,
    /// Repeats a `[C, 1, 1]` input to `[C, H, W]` (the ASPP image-pooling broadcast).
    Broadcast {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
}

/// A node: an op, the nodes it reads, and the shape it produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Human-readable name (e.g. the PyTorch module path).
    pub name: String,
    /// What the node computes.
    pub op: Op,
    /// Indices of earlier nodes.
    pub inputs: Vec<usize>,
    /// The output's `[C, H, W]`.
    pub shape: Shape,
}

/// The public part of a secure model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecureModel {
    /// Format version ([`MODEL_FORMAT`]).
    pub format: u32,
    /// Architecture name (as in the registry).
    pub arch: String,
    /// Fractional bits of the fixed-point encoding.
    pub frac_bits: u32,
    /// What the output means (logits or a segmentation map).
    pub output_kind: OutputKind,
    /// Nodes in topological order; node 0 is the input; the last node is the output.
    pub nodes: Vec<Node>,
    /// Approximate-DReLU windows per DReLU site, chosen by `knapsec calibrate` (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

impl SecureModel {
    /// `[C, H, W]` of the input image.
    pub fn input_shape(&self) -> Shape {
        self.nodes.first().map(|n| n.shape).unwrap_or([0; 3])
    }

    /// `[C, H, W]` of the output.
    pub fn output_shape(&self) -> Shape {
        self.nodes.last().map(|n| n.shape).unwrap_or([0; 3])
    }

    /// The one validator every executor and loader runs: checks the format version, that
    /// `frac_bits` is at most [`MAX_FRAC_BITS`], the graph's structure (one input first,
    /// inputs that refer to earlier nodes, the arity of each op), and infers every node's
    /// shape from its inputs once, with checked arithmetic ([`infer_shape`]): groups that
    /// divide both channel counts, windows that fit, activations within
    /// [`MAX_ACTIVATION_ELEMENTS`], weights within [`MAX_WEIGHT_ELEMENTS`]. Each recorded
    /// shape must equal the inferred one. Errors name the node.
    pub fn validate(&self) -> Result<()> {
        if !(MODEL_FORMAT_OLDEST..=MODEL_FORMAT).contains(&self.format) {
            return Err(CoreError::Graph(format!(
                "format version {} is not supported (this build reads {MODEL_FORMAT_OLDEST} to {MODEL_FORMAT})",
                self.format
            )));
        }
        if self.frac_bits > MAX_FRAC_BITS {
            return Err(CoreError::Graph(format!(
                "{} fractional bits exceed the maximum of {MAX_FRAC_BITS}",
                self.frac_bits
            )));
        }
        let Some(first) = self.nodes.first() else {
            return Err(CoreError::Graph("the graph has no nodes".into()));
        };
        if first.op != Op::Input {
            return Err(CoreError::Graph(format!(
                "node 0 ({}) must be the input",
                first.name
            )));
        }
        let mut inputs = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let bad = |why: String| CoreError::Graph(format!("node {i} ({}): {why}", node.name));
            if let Some(&j) = node.inputs.iter().find(|&&j| j >= i) {
                return Err(bad(format!("input {j} is not an earlier node")));
            }
            let arity_ok = match &node.op {
                Op::Input => i == 0 && node.inputs.is_empty(),
                Op::Add | Op::Concat => node.inputs.len() >= 2,
                _ => node.inputs.len() == 1,
            };
            if !arity_ok {
                return Err(bad(format!(
                    "wrong number of inputs ({})",
                    node.inputs.len()
                )));
            }
            inputs.clear();
            inputs.extend(node.inputs.iter().map(|&j| self.nodes[j].shape));
            let inferred = infer_shape(&node.op, &inputs, node.shape).map_err(bad)?;
            if inferred != node.shape {
                return Err(bad(format!(
                    "shape {:?} recorded, {inferred:?} inferred from the inputs",
                    node.shape
                )));
            }
        }
        self.validate_calibration()
    }

    /// The DReLU sites of the graph in node order: block-ReLU layers with at least one patch
    /// channel, ReLU6 layers and max pools of more than one tap.
    pub fn drelu_sites(&self) -> Vec<(usize, SiteKind)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::BlockRelu { blocks, .. }
                    if blocks.iter().any(|b| matches!(b, BlockSize::Patch { .. })) =>
                {
                    Some((i, SiteKind::BlockRelu))
                }
                Op::Relu6 { .. } => Some((i, SiteKind::Relu6)),
                Op::MaxPool { kernel, .. } if kernel[0] * kernel[1] > 1 => {
                    Some((i, SiteKind::MaxPool))
                }
                _ => None,
            })
            .collect()
    }

    /// DReLUs of node `i` as a secure backend computes it: one per patch of a block ReLU,
    /// two per value of ReLU6 (`x ≥ 0`, `x ≥ 6`), `taps − 1` per output of a max pool; 0 for
    /// any other node.
    pub fn site_drelus(&self, i: usize) -> u64 {
        let Some(n) = self.nodes.get(i) else {
            return 0;
        };
        let [c, h, w] = n.shape.map(u64::from);
        match &n.op {
            Op::BlockRelu { blocks, .. } => blocks
                .iter()
                .map(|b| b.drelu_cost(n.shape[1], n.shape[2]))
                .sum(),
            Op::Relu6 { .. } => 2 * c * h * w,
            Op::MaxPool { kernel, .. } => {
                u64::from(kernel[0] * kernel[1]).saturating_sub(1) * c * h * w
            }
            _ => 0,
        }
    }

    /// Checks the calibration against the graph: only in format 2, one entry per site at
    /// most, each naming a DReLU site by index, name and kind, with a valid window.
    fn validate_calibration(&self) -> Result<()> {
        let Some(cal) = &self.calibration else {
            return Ok(());
        };
        if self.format < 2 {
            return Err(CoreError::Graph(format!(
                "format version {} has no DReLU windows, but `calibration` is present (version 2 and later)",
                self.format
            )));
        }
        let sites = self.drelu_sites();
        let mut seen = std::collections::BTreeSet::new();
        for s in &cal.sites {
            let bad = |why: String| {
                CoreError::Graph(format!(
                    "calibration of node {} ({}): {why}",
                    s.node, s.name
                ))
            };
            let Some(&(_, kind)) = sites.iter().find(|(i, _)| *i == s.node as usize) else {
                return Err(bad("not a DReLU site of the graph".into()));
            };
            if self.nodes[s.node as usize].name != s.name {
                return Err(bad(format!(
                    "the graph names that node {:?}",
                    self.nodes[s.node as usize].name
                )));
            }
            if kind != s.kind {
                return Err(bad(format!("recorded as {}, the graph has {kind}", s.kind)));
            }
            if !seen.insert(s.node) {
                return Err(bad("calibrated twice".into()));
            }
            s.window.validate().map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    }

    /// Canonical bytes of the public part (compact RON), the input of [`Self::public_hash`].
    pub fn canonical_bytes(&self) -> Vec<u8> {
        ron::to_string(self)
            .expect("a secure model always serialises")
            .into_bytes()
    }

    /// BLAKE3 hash of the canonical public part, hex-encoded.
    pub fn public_hash(&self) -> String {
        blake3::hash(&self.canonical_bytes()).to_hex().to_string()
    }

    /// Total DReLUs of the activation nodes.
    pub fn drelus(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| match &n.op {
                Op::BlockRelu { blocks, .. } => blocks
                    .iter()
                    .map(|b| b.drelu_cost(n.shape[1], n.shape[2]))
                    .sum(),
                _ => 0,
            })
            .sum()
    }

    /// Reads `dir/model.ron` and validates it.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(PUBLIC_FILE);
        let text = fsutil::read_to_string(&path)?;
        Self::from_ron(&text).map_err(|e| CoreError::parse(&path, e))
    }

    /// Parses the text of a `model.ron` and validates it ([`Self::validate`]).
    pub fn from_ron(text: &str) -> Result<Self> {
        let model: SecureModel =
            ron::from_str(text).map_err(|e| CoreError::Graph(format!("does not parse: {e}")))?;
        model.validate()?;
        Ok(model)
    }

    /// Writes `dir/model.ron` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let config = ron::ser::PrettyConfig::new().depth_limit(3);
        let text = ron::ser::to_string_pretty(self, config)
            .map_err(|e| CoreError::Graph(e.to_string()))?;
        fsutil::write_atomic(&dir.join(PUBLIC_FILE), text.as_bytes())
    }
}

/// Output side of a convolution or pooling window (PyTorch's floor formula), `None` when the
/// window does not fit, a parameter is zero, or the result exceeds `u32`. Checked arithmetic:
/// sizes come from files and command lines.
pub fn window_out(size: u32, kernel: u32, stride: u32, padding: u32, dilation: u32) -> Option<u32> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let span = u64::from(dilation) * (u64::from(kernel) - 1) + 1;
    let padded = u64::from(size) + 2 * u64::from(padding);
    if padded < span {
        return None;
    }
    u32::try_from((padded - span) / u64::from(stride) + 1).ok()
}

/// Elements of the weight tensor of a `Conv2d` (`out · in/groups · kh · kw`) or `Linear`
/// (`out · in`) node with input shape `input` and output channels `out`, if it has one and
/// the product fits in `u64`.
pub fn weight_len(op: &Op, input: Shape, out: u32) -> Option<u64> {
    match op {
        Op::Conv2d { kernel, groups, .. } => u64::from(out)
            .checked_mul(u64::from(input[0] / (*groups).max(1)))?
            .checked_mul(u64::from(kernel[0]))?
            .checked_mul(u64::from(kernel[1])),
        Op::Linear { .. } => u64::from(out).checked_mul(u64::from(input[0])),
        _ => None,
    }
}

/// The output shape of `op` on inputs of shapes `inputs` (arity already checked), or why it
/// has none. `recorded` is the node's own shape, read only where the op does not determine it
/// (the input's shape, and the output channels of `Conv2d` and `Linear`). A new op adds its
/// arm here, and is then checked wherever a model is loaded or run.
pub fn infer_shape(
    op: &Op,
    inputs: &[Shape],
    recorded: Shape,
) -> std::result::Result<Shape, String> {
    let positive = |what: &str, v: [u32; 2]| {
        if v.contains(&0) {
            Err(format!("{what} {v:?} has a zero side"))
        } else {
            Ok(())
        }
    };
    let first = inputs.first().copied().unwrap_or(recorded);
    let [c, h, w] = first;
    let shape = match op {
        Op::Input => recorded,
        Op::Conv2d {
            kernel,
            stride,
            padding,
            dilation,
            groups,
            ..
        } => {
            positive("kernel", *kernel)?;
            positive("stride", *stride)?;
            positive("dilation", *dilation)?;
            let out = recorded[0];
            if *groups == 0 || !c.is_multiple_of(*groups) || !out.is_multiple_of(*groups) {
                return Err(format!(
                    "{c} -> {out} channels cannot form {groups} groups (groups must divide both)"
                ));
            }
            let oh = window_out(h, kernel[0], stride[0], padding[0], dilation[0]);
            let ow = window_out(w, kernel[1], stride[1], padding[1], dilation[1]);
            let (Some(oh), Some(ow)) = (oh, ow) else {
                return Err(format!(
                    "kernel {kernel:?} (padding {padding:?}, dilation {dilation:?}) does not fit a {h}x{w} input"
                ));
            };
            [out, oh, ow]
        }
        Op::Linear { .. } => {
            if (h, w) != (1, 1) {
                return Err(format!(
                    "a linear layer needs a [C, 1, 1] input, got {first:?}"
                ));
            }
            [recorded[0], 1, 1]
        }
        Op::BlockRelu { blocks, .. } => {
            if blocks.len() != c as usize {
                return Err(format!("{} block sizes for {c} channels", blocks.len()));
            }
            if let Some(ch) = blocks.iter().position(|b| {
                matches!(
                    b,
                    BlockSize::Patch { h: 0, .. } | BlockSize::Patch { w: 0, .. }
                )
            }) {
                return Err(format!("channel {ch}: zero-sized patch {}", blocks[ch]));
            }
            first
        }
        Op::Relu6 { .. } => first,
        Op::AvgPool {
            kernel,
            stride,
            padding,
            ..
        }
        | Op::MaxPool {
            kernel,
            stride,
            padding,
        } => {
            positive("kernel", *kernel)?;
            positive("stride", *stride)?;
            // PyTorch's rule: every window then holds at least one real pixel (no division
            // by zero without `count_include_pad`, no all-padding max).
            if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
                return Err(format!(
                    "padding {padding:?} is more than half the pooling window {kernel:?}"
                ));
            }
            match (
                window_out(h, kernel[0], stride[0], padding[0], 1),
                window_out(w, kernel[1], stride[1], padding[1], 1),
            ) {
                (Some(oh), Some(ow)) => [c, oh, ow],
                _ => {
                    return Err(format!(
                        "pooling window {kernel:?} does not fit a {h}x{w} input"
                    ));
                }
            }
        }
        Op::GlobalAvgPool => [c, 1, 1],
        Op::Add => {
            if let Some(s) = inputs.iter().find(|&&s| s != first) {
                return Err(format!("cannot add shapes {first:?} and {s:?}"));
            }
            first
        }
        Op::Concat => {
            let mut channels = 0u32;
            for s in inputs {
                if (s[1], s[2]) != (h, w) {
                    return Err(format!(
                        "cannot concatenate {h}x{w} and {}x{} maps",
                        s[1], s[2]
                    ));
                }
                channels = channels
                    .checked_add(s[0])
                    .ok_or_else(|| "too many channels to concatenate".to_string())?;
            }
            [channels, h, w]
        }
        Op::Broadcast { height, width } => {
            if (h, w) != (1, 1) {
                return Err(format!("broadcast needs a [C, 1, 1] input, got {first:?}"));
            }
            [c, *height, *width]
        }
    };
    if shape.contains(&0) {
        return Err(format!("shape {shape:?} has a zero side"));
    }
    // Three u32 factors fit in u128.
    let elements = shape.iter().map(|&d| u128::from(d)).product::<u128>();
    if elements > u128::from(MAX_ACTIVATION_ELEMENTS) {
        return Err(format!(
            "shape {shape:?} is too large ({elements} elements, at most {MAX_ACTIVATION_ELEMENTS})"
        ));
    }
    if let Some(n) = weight_len(op, first, shape[0])
        && n > MAX_WEIGHT_ELEMENTS
    {
        return Err(format!(
            "weight of {n} elements is too large (at most {MAX_WEIGHT_ELEMENTS})"
        ));
    }
    Ok(shape)
}

/// One fixed-point weight tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct FixedTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// The values, row-major, with the model's fractional bits.
    pub data: Vec<i64>,
}

/// The private part of a secure model: named fixed-point tensors (server only).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelWeights {
    /// The tensors by name (as the graph's ops name them).
    pub tensors: BTreeMap<String, FixedTensor>,
}

impl ModelWeights {
    /// The tensor `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&FixedTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| CoreError::Graph(format!("weight tensor {name:?} is missing")))
    }

    /// Checks that every tensor the graph names exists with the element count its op needs.
    pub fn check_against(&self, model: &SecureModel) -> Result<()> {
        for (i, node) in model.nodes.iter().enumerate() {
            let input = node
                .inputs
                .first()
                .and_then(|&j| model.nodes.get(j))
                .map_or([0; 3], |n| n.shape);
            let (weight, bias) = match &node.op {
                Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => (weight, bias),
                _ => continue,
            };
            let expect = weight_len(&node.op, input, node.shape[0]).unwrap_or(u64::MAX);
            let w = self.get(weight)?;
            if w.data.len() as u64 != expect {
                return Err(CoreError::Graph(format!(
                    "node {i} ({}): weight {weight:?} has {} elements, expected {expect}",
                    node.name,
                    w.data.len()
                )));
            }
            if let Some(b) = bias
                && self.get(b)?.data.len() != node.shape[0] as usize
            {
                return Err(CoreError::Graph(format!(
                    "node {i} ({}): bias {b:?} has the wrong size",
                    node.name
                )));
            }
        }
        Ok(())
    }

    /// Reads `dir/weights.safetensors` (i64 little-endian tensors).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(WEIGHTS_FILE);
        let bytes = fsutil::read(&path)?;
        Self::from_bytes(&bytes).map_err(|e| CoreError::parse(&path, e))
    }

    /// Parses the bytes of a `weights.safetensors` (i64 little-endian tensors).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| CoreError::Graph(format!("weights do not parse as safetensors: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::I64 {
                return Err(CoreError::Graph(format!(
                    "tensor {name:?} is {:?}, expected I64",
                    view.dtype()
                )));
            }
            let data = view
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            tensors.insert(
                name,
                FixedTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(ModelWeights { tensors })
    }

    /// Writes `dir/weights.safetensors` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fsutil::write_atomic(&dir.join(WEIGHTS_FILE), &self.to_bytes()?)
    }

    /// The bytes of `weights.safetensors`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    t.shape.clone(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::I64, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| CoreError::Graph(format!("weight {n:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize(views, None).map_err(|e| CoreError::Graph(e.to_string()))
    }
}

/// Encodes a real number as fixed point with `frac_bits` fractional bits (round to nearest).
pub fn encode_fixed(x: f64, frac_bits: u32) -> i64 {
    (x * (1u64 << frac_bits) as f64).round() as i64
}

/// Decodes a fixed-point value with `frac_bits` fractional bits.
pub fn decode_fixed(v: i64, frac_bits: u32) -> f64 {
    v as f64 / (1u64 << frac_bits) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (SecureModel, ModelWeights) {
        let nodes = vec![
            Node {
                name: "input".into(),
                op: Op::Input,
                inputs: vec![],
                shape: [1, 4, 4],
            },
            Node {
                name: "conv".into(),
                op: Op::Conv2d {
                    weight: "conv.w".into(),
                    bias: Some("conv.b".into()),
                    kernel: [3, 3],
                    stride: [1, 1],
                    padding: [1, 1],
                    dilation: [1, 1],
                    groups: 1,
                },
                inputs: vec![0],
                shape: [2, 4, 4],
            },
            Node {
                name: "relu".into(),
                op: Op::BlockRelu {
                    layer: "relu".into(),
                    blocks: vec![BlockSize::RELU, BlockSize::Identity],
                },
                inputs: vec![1],
                shape: [2, 4, 4],
            },
        ];
        let model = SecureModel {
            format: MODEL_FORMAT,
            arch: "toy".into(),
            frac_bits: 12,
            output_kind: OutputKind::Segmentation,
            nodes,
            calibration: None,
        };
        let mut w = ModelWeights::default();
        w.tensors.insert(
            "conv.w".into(),
            FixedTensor {
                shape: vec![2, 1, 3, 3],
                data: (0..18).collect(),
            },
        );
        w.tensors.insert(
            "conv.b".into(),
            FixedTensor {
                shape: vec![2],
                data: vec![-5, 7],
            },
        );
        (model, w)
    }

    #[test]
    fn format_1_still_loads_and_calibration_needs_format_2() {
        use crate::drelu::{Calibration, CalibrationTarget, DreluWindow, SiteCalibration};
        let (mut m, _) = tiny();
        m.format = 1;
        let text = ron::to_string(&m).unwrap();
        assert!(!text.contains("calibration"), "{text}");
        let back: SecureModel = ron::from_str(&text).unwrap();
        back.validate().unwrap();
        m.calibration = Some(Calibration {
            data: "x".into(),
            samples: 1,
            target: CalibrationTarget::default(),
            sites: vec![SiteCalibration {
                node: 2,
                name: "relu".into(),
                kind: SiteKind::BlockRelu,
                window: DreluWindow {
                    bits: 12,
                    lsb_ignored: 3,
                },
                stats: Default::default(),
            }],
        });
        assert!(m.validate().unwrap_err().to_string().contains("version 2"));
        m.format = MODEL_FORMAT;
        m.validate().unwrap();
        let hash = m.public_hash();
        m.calibration.as_mut().unwrap().sites[0].window.bits = 13;
        assert_ne!(m.public_hash(), hash, "the hash covers the windows");
        m.calibration.as_mut().unwrap().sites[0].node = 1;
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("not a DReLU site")
        );
    }

    #[test]
    fn round_trip_and_hash() {
        let (m, w) = tiny();
        m.validate().unwrap();
        w.check_against(&m).unwrap();
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        w.save(dir.path()).unwrap();
        let m2 = SecureModel::load(dir.path()).unwrap();
        assert_eq!(m2, m);
        assert_eq!(m2.public_hash(), m.public_hash());
        assert_eq!(ModelWeights::load(dir.path()).unwrap(), w);
        assert_eq!(m.drelus(), 16);
        let mut other = m.clone();
        other.frac_bits = 13;
        assert_ne!(other.public_hash(), m.public_hash());
    }

    #[test]
    fn structural_errors_name_the_node() {
        let (mut m, mut w) = tiny();
        m.nodes[2].inputs = vec![2];
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("node 2 (relu)")
        );
        let (m, _) = tiny();
        w.tensors.get_mut("conv.w").unwrap().data.pop();
        assert!(
            w.check_against(&m)
                .unwrap_err()
                .to_string()
                .contains("conv.w")
        );
    }

    #[test]
    fn fixed_point() {
        assert_eq!(encode_fixed(1.5, 12), 6144);
        assert_eq!(decode_fixed(-6144, 12), -1.5);
    }

    fn conv_op(kernel: u32, stride: u32, padding: u32, groups: u32) -> Op {
        Op::Conv2d {
            weight: "conv.w".into(),
            bias: None,
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
            dilation: [1, 1],
            groups,
        }
    }

    /// `validate`'s error for `tiny()` after `edit`.
    fn invalid(edit: impl FnOnce(&mut SecureModel)) -> String {
        let (mut m, _) = tiny();
        edit(&mut m);
        m.validate().unwrap_err().to_string()
    }

    #[test]
    fn groups_must_divide_both_channel_counts() {
        // 1 input channel, 2 outputs, 4 groups: the executors divided by `out / groups = 0`.
        let e = invalid(|m| m.nodes[1].op = conv_op(3, 1, 1, 4));
        assert!(e.contains("node 1 (conv)") && e.contains("groups"), "{e}");
        let e = invalid(|m| m.nodes[1].op = conv_op(3, 1, 1, 0));
        assert!(e.contains("groups"), "{e}");
    }

    #[test]
    fn frac_bits_have_a_maximum() {
        let e = invalid(|m| m.frac_bits = MAX_FRAC_BITS + 1);
        assert!(e.contains("fractional bits"), "{e}");
        let (mut m, _) = tiny();
        m.frac_bits = MAX_FRAC_BITS;
        m.validate().unwrap();
    }

    #[test]
    fn recorded_shapes_must_match_the_inferred_ones() {
        let e = invalid(|m| m.nodes[1].shape = [2, 5, 4]);
        assert!(
            e.contains("node 1 (conv)") && e.contains("[2, 4, 4]"),
            "{e}"
        );
        // The ReLU's shape follows from the (consistent) conv.
        let e = invalid(|m| {
            m.nodes[1].shape = [2, 2, 2];
            m.nodes[1].op = conv_op(3, 2, 1, 1);
            m.nodes[2].shape = [2, 4, 4];
        });
        assert!(e.contains("node 2 (relu)"), "{e}");
        let e = invalid(|m| m.nodes[1].op = conv_op(0, 1, 1, 1));
        assert!(e.contains("kernel"), "{e}");
        let e = invalid(|m| m.nodes[1].op = conv_op(3, 0, 1, 1));
        assert!(e.contains("stride"), "{e}");
        let e = invalid(|m| m.nodes[1].op = conv_op(9, 1, 1, 1));
        assert!(e.contains("does not fit"), "{e}");
    }

    #[test]
    fn huge_shapes_are_refused_not_overflowed() {
        let e = invalid(|m| {
            m.nodes[0].shape = [1, u32::MAX, u32::MAX];
            m.nodes[1].shape = [2, u32::MAX, u32::MAX];
            m.nodes[2].shape = [2, u32::MAX, u32::MAX];
        });
        assert!(e.contains("too large"), "{e}");
        let e = invalid(|m| {
            m.nodes[1].op = conv_op(u32::MAX, 1, u32::MAX, 1);
        });
        assert!(e.contains("node 1"), "{e}");
        let e = invalid(|m| m.nodes[0].shape = [1, 0, 4]);
        assert!(e.contains("node 0"), "{e}");
    }

    #[test]
    fn every_op_is_shape_checked() {
        // A linear layer on a 2x2 map and a pool padded past half its window.
        let (mut m, _) = tiny();
        m.nodes.push(Node {
            name: "fc".into(),
            op: Op::Linear {
                weight: "fc.w".into(),
                bias: None,
            },
            inputs: vec![2],
            shape: [3, 1, 1],
        });
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("node 3 (fc)") && e.contains("[C, 1, 1]"), "{e}");
        let (mut m, _) = tiny();
        m.nodes.push(Node {
            name: "pool".into(),
            op: Op::MaxPool {
                kernel: [2, 2],
                stride: [1, 1],
                padding: [2, 2],
            },
            inputs: vec![2],
            shape: [2, 7, 7],
        });
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("padding"), "{e}");
        let (mut m, _) = tiny();
        m.nodes.push(Node {
            name: "cat".into(),
            op: Op::Concat,
            inputs: vec![2, 0],
            shape: [3, 4, 4],
        });
        m.validate().unwrap();
        m.nodes[3].shape = [4, 4, 4];
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("[3, 4, 4]"), "{e}");
    }
}
