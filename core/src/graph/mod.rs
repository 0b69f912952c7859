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
//!
//! Parts: this module holds the public part and its validation; `shape` the shape inference
//! every op goes through; `weights` the private part and the fixed-point conversions.

use crate::block::BlockSize;
use crate::drelu::{Calibration, SiteKind};
use crate::error::{CoreError, Result};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::path::Path;

mod shape;
mod weights;

pub use shape::{infer_shape, weight_len, window_out};
pub use weights::{FixedTensor, ModelWeights, decode_fixed, encode_fixed};

/// The secure-model format version this build writes. Version 2 added the optional
/// per-site DReLU windows (`calibration`); version 3 the ops of imported networks ([`Op::Pad`],
/// [`Op::Resize`], and pooling with `pad_end` or `ceil_mode`). Files of versions 1 and 2
/// (without them) still load.
pub const MODEL_FORMAT: u32 = 3;
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
    /// Average pooling; `count_include_pad` as in PyTorch (the window geometry:
    /// [`PoolGeometry`]).
    AvgPool {
        /// Window height and width.
        kernel: [u32; 2],
        /// Stride, vertical and horizontal.
        stride: [u32; 2],
        /// Zero padding at the top and left, and at the bottom and right unless `pad_end`
        /// says otherwise.
        padding: [u32; 2],
        /// Zero padding at the bottom and right where it differs from `padding` (format 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pad_end: Option<[u32; 2]>,
        /// Output size rounded up, as PyTorch's and ONNX's `ceil_mode` (format 3).
        #[serde(default, skip_serializing_if = "is_false")]
        ceil_mode: bool,
        /// Whether padded positions count in the divisor.
        count_include_pad: bool,
    },
    /// Max pooling (padding counts as −∞; the window geometry: [`PoolGeometry`]).
    MaxPool {
        /// Window height and width.
        kernel: [u32; 2],
        /// Stride, vertical and horizontal.
        stride: [u32; 2],
        /// Padding at the top and left, and at the bottom and right unless `pad_end` says
        /// otherwise.
        padding: [u32; 2],
        /// Padding at the bottom and right where it differs from `padding` (format 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pad_end: Option<[u32; 2]>,
        /// Output size rounded up, as PyTorch's and ONNX's `ceil_mode` (format 3).
        #[serde(default, skip_serializing_if = "is_false")]
        ceil_mode: bool,
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
    /// Zero padding `[top, left, bottom, right]` (format 3): the asymmetric part of a
    /// convolution's padding, or an ONNX `Pad` with constant 0.
    Pad {
        /// Rows and columns of zeros added at the top, left, bottom and right.
        pads: [u32; 4],
    },
    /// Resizes every channel to `height × width` (format 3): nearest neighbour (an index map)
    /// or bilinear (public weights at `frac_bits`, then one truncation like a convolution).
    Resize {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
        /// Interpolation.
        mode: ResizeMode,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How [`Op::Resize`] interpolates; source coordinates as PyTorch's `F.interpolate` with an
/// output size (and ONNX `Resize` in the modes PyTorch exports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResizeMode {
    /// Nearest neighbour: output `o` reads input `⌊o · in / out⌋` (ONNX `nearest` with
    /// `asymmetric` coordinates and `floor`, PyTorch's `mode="nearest"`).
    Nearest,
    /// Bilinear. Output `o` reads source coordinate `o · (in − 1)/(out − 1)` with
    /// `align_corners` (ONNX `align_corners`), else `(o + ½) · in/out − ½` clamped at 0
    /// (ONNX `half_pixel` / `pytorch_half_pixel`, PyTorch's default).
    Bilinear {
        /// PyTorch's `align_corners`.
        align_corners: bool,
    },
}

/// The window of a pooling op ([`Op::pool_geometry`]), as PyTorch and ONNX define it: output
/// `o` covers rows `o·stride − pads[0] .. + kernel` (columns likewise with `pads[1]`);
/// positions outside the map are padding; with `ceil_mode` the output size is rounded up, a
/// window that would start in the bottom/right padding being dropped. Every pad is smaller
/// than the window, so every window holds at least one pixel of the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Window height and width.
    pub kernel: [u32; 2],
    /// Stride, vertical and horizontal.
    pub stride: [u32; 2],
    /// Padding `[top, left, bottom, right]`.
    pub pads: [u32; 4],
    /// Output size rounded up.
    pub ceil_mode: bool,
}

impl PoolGeometry {
    /// A window with the same padding on both sides and the output size rounded down.
    pub fn symmetric(kernel: [u32; 2], stride: [u32; 2], padding: [u32; 2]) -> Self {
        PoolGeometry {
            kernel,
            stride,
            pads: [padding[0], padding[1], padding[0], padding[1]],
            ceil_mode: false,
        }
    }

    /// Output height and width on an `h × w` map, or why there is none: a zero kernel or
    /// stride, a pad not smaller than the window, a window that does not fit.
    pub fn output_hw(&self, h: u32, w: u32) -> std::result::Result<(u32, u32), String> {
        let [kh, kw] = self.kernel;
        let [t, l, b, r] = self.pads;
        if self.kernel.contains(&0) || self.stride.contains(&0) {
            return Err(format!(
                "pooling kernel {:?} and stride {:?} must be at least 1",
                self.kernel, self.stride
            ));
        }
        if t >= kh || b >= kh || l >= kw || r >= kw {
            return Err(format!(
                "pooling pads {:?} must be smaller than the window {:?}",
                self.pads, self.kernel
            ));
        }
        let side = |size, k, s, p0, p1| {
            crate::netdesc::window_out_padded(size, k, s, p0, p1, 1, self.ceil_mode)
        };
        match (
            side(h, kh, self.stride[0], t, b),
            side(w, kw, self.stride[1], l, r),
        ) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(format!(
                "pooling window {:?} (pads {:?}) does not fit a {h}x{w} input",
                self.kernel, self.pads
            )),
        }
    }

    /// The pooling fields of a graph op: `padding`, and `pad_end` where the bottom/right
    /// padding differs.
    pub fn padding_fields(&self) -> ([u32; 2], Option<[u32; 2]>) {
        let [t, l, b, r] = self.pads;
        ([t, l], ((b, r) != (t, l)).then_some([b, r]))
    }
}

/// The window of a convolution ([`Op::conv_geometry`]): what its output shape and its
/// sliding window depend on, apart from the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Kernel height and width.
    pub kernel: [u32; 2],
    /// Stride, vertical and horizontal.
    pub stride: [u32; 2],
    /// Zero padding on each side, vertical and horizontal.
    pub padding: [u32; 2],
    /// Spacing between kernel taps, vertical and horizontal.
    pub dilation: [u32; 2],
    /// Channel groups.
    pub groups: u32,
}

impl Op {
    /// The window of a pooling op; `None` for every other op.
    pub fn pool_geometry(&self) -> Option<PoolGeometry> {
        match *self {
            Op::AvgPool {
                kernel,
                stride,
                padding,
                pad_end,
                ceil_mode,
                ..
            }
            | Op::MaxPool {
                kernel,
                stride,
                padding,
                pad_end,
                ceil_mode,
            } => {
                let [b, r] = pad_end.unwrap_or(padding);
                Some(PoolGeometry {
                    kernel,
                    stride,
                    pads: [padding[0], padding[1], b, r],
                    ceil_mode,
                })
            }
            _ => None,
        }
    }

    /// Whether the op needs format 3 (see [`MODEL_FORMAT`]).
    pub fn needs_format_3(&self) -> bool {
        match self {
            Op::Pad { .. } | Op::Resize { .. } => true,
            Op::AvgPool {
                pad_end, ceil_mode, ..
            }
            | Op::MaxPool {
                pad_end, ceil_mode, ..
            } => pad_end.is_some() || *ceil_mode,
            _ => false,
        }
    }

    /// The window of a convolution; `None` for every other op.
    pub fn conv_geometry(&self) -> Option<ConvGeometry> {
        match *self {
            Op::Conv2d {
                kernel,
                stride,
                padding,
                dilation,
                groups,
                ..
            } => Some(ConvGeometry {
                kernel,
                stride,
                padding,
                dilation,
                groups,
            }),
            _ => None,
        }
    }
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
    /// A model of the current format, without calibration.
    pub fn new(
        arch: impl Into<String>,
        frac_bits: u32,
        output_kind: OutputKind,
        nodes: Vec<Node>,
    ) -> Self {
        SecureModel {
            format: MODEL_FORMAT,
            arch: arch.into(),
            frac_bits,
            output_kind,
            nodes,
            calibration: None,
        }
    }

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
            if self.format < 3 && node.op.needs_format_3() {
                return Err(bad(format!(
                    "format version {} has no padding, resize or ceil-mode pooling ops (version 3 and later)",
                    self.format
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

    /// DReLUs of the (block) ReLU layers only: the count the knapsack's budget is a share
    /// of, equal to the layer table's. ReLU6's bounds and max pooling's comparisons are not
    /// in it (a MobileNetV2 with every ReLU6 kept has 0): [`Self::all_drelus`] counts every
    /// DReLU an inference's network runs.
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

    /// Every DReLU of the network, summed over all DReLU sites ([`Self::site_drelus`]): block
    /// ReLU patches, two per ReLU6 element, `taps − 1` per max-pool output (a secure argmax
    /// over the output adds its own, counted by the backend's plan).
    pub fn all_drelus(&self) -> u64 {
        (0..self.nodes.len()).map(|i| self.site_drelus(i)).sum()
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

#[cfg(test)]
mod tests;
