//! Planning: the public per-node work of a model under some options, the same on all three
//! parties (DESIGN §5): the linear layers' shapes, the selection batches of every ReLU, block
//! ReLU (digest §6.11), ReLU6 and max pooling (§6.14), the argmax, and the closed-form bytes
//! of a session and of one inference.
//!
//! The plan is backend-independent in what it decides (window per DReLU site, linear shapes,
//! block groups, tournament levels): the `fss` backend runs the same [`Plan`] and states its
//! own closed forms over [`Plan::nodes`] and [`Plan::specs`].

use super::ops::dims;
use super::tournament::Tournament;
use crate::error::{Result, SecureNnError};
use crate::linear::LinearSpec;
use crate::options::{DreluMode, Options, Reveal};
use crate::select::{Groups, SelectSpec};
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{Op, PoolGeometry, ResizeMode, SecureModel};
use knapsec_core::transport::Role;
use knapsec_ring::{Conv2dParams, window_counts};

/// What one node does, with everything public precomputed.
#[derive(Clone, Debug)]
pub enum NodePlan {
    /// The client's input.
    Input,
    /// A convolution or fully connected layer.
    Linear(LinearSpec),
    /// A (block) ReLU: one selection batch over its patch channels, none if every channel is
    /// identity or zero.
    BlockRelu {
        /// The block size of every channel.
        chans: Vec<BlockSize>,
        /// Pixels per channel.
        hw: usize,
        /// The selections over the patch channels (pixels channel-major among them).
        spec: Option<SelectSpec>,
    },
    /// ReLU6 as `ReLU(x) − ReLU(x − 6)`: one batch over `[x, x − 6]`, twinned (the second
    /// half shares the first half's masks and opening).
    Relu6 {
        /// The selections over both halves.
        spec: SelectSpec,
    },
    /// Average pooling (floor division of the window sums).
    AvgPool {
        /// The window (zero padding).
        window: PoolGeometry,
        /// The divisor of every output pixel of one plane.
        counts: Vec<u64>,
    },
    /// Max pooling as a knock-out over the window's taps (edge padding).
    MaxPool {
        /// The window (padding edge-replicated).
        window: PoolGeometry,
        /// The knock-out over the window's taps.
        tree: Tournament,
    },
    /// Global average pooling.
    GlobalAvgPool {
        /// The divisor (`H·W`, at least 1).
        count: u64,
    },
    /// Element-wise sum of the inputs.
    Add,
    /// Channel concatenation.
    Concat,
    /// A `[C, 1, 1]` value broadcast to `H × W`.
    Broadcast {
        /// Output height.
        h: usize,
        /// Output width.
        w: usize,
    },
    /// Zero padding `[top, left, bottom, right]`.
    Pad {
        /// Rows and columns added on each side.
        pads: [usize; 4],
    },
    /// Nearest or bilinear resizing (bilinear: public weights at `frac_bits`, then each
    /// party truncates its share by `frac_bits`, as after a linear layer).
    Resize {
        /// Output height.
        h: usize,
        /// Output width.
        w: usize,
        /// Interpolation.
        mode: ResizeMode,
        /// Fractional bits of the weights (and of the truncation): the model's.
        frac_bits: u32,
    },
}

/// The public plan of a model under some options.
#[derive(Clone, Debug)]
pub struct Plan {
    nodes: Vec<NodePlan>,
    /// The secure argmax over the output classes, when only the label is revealed.
    argmax: Option<Tournament>,
    options: Options,
}

/// Patches of a block-ReLU layer over its active (patch) channels, pixels numbered
/// channel-major among active channels.
fn block_groups(chans: &[BlockSize], h: usize, w: usize) -> Groups {
    let active: Vec<(u32, u32)> = chans
        .iter()
        .filter_map(|b| {
            if let BlockSize::Patch { h, w } = *b {
                Some((h, w))
            } else {
                None
            }
        })
        .collect();
    if active.iter().all(|&p| p == (1, 1)) {
        return Groups::Singles(active.len() * h * w);
    }
    let mut ptr = vec![0usize];
    let mut idx = Vec::with_capacity(active.len() * h * w);
    for (k, &(bh, bw)) in active.iter().enumerate() {
        let (bh, bw) = (bh as usize, bw as usize);
        let base = k * h * w;
        for py in 0..h.div_ceil(bh) {
            for px in 0..w.div_ceil(bw) {
                for y in py * bh..((py + 1) * bh).min(h) {
                    for x in px * bw..((px + 1) * bw).min(w) {
                        idx.push((base + y * w + x) as u32);
                    }
                }
                ptr.push(idx.len());
            }
        }
    }
    Groups::Csr { ptr, idx }
}

impl Plan {
    /// Plans `model` under `options`; refuses what this backend cannot run.
    pub fn new(model: &SecureModel, options: Options) -> Result<Self> {
        model.validate().map_err(|e| SecureNnError::Input {
            role: Role::Client,
            message: e.to_string(),
        })?;
        // One window per DReLU site: the option's, or the model's calibrated ones.
        let windows = options
            .drelu
            .choice()
            .resolve(model)
            .map_err(|e| SecureNnError::Options(e.to_string()))?;
        let mut nodes = Vec::with_capacity(model.nodes.len());
        for (i, node) in model.nodes.iter().enumerate() {
            let mode = windows[i].map_or(DreluMode::Exact, DreluMode::from);
            let unsupported = |m: String| SecureNnError::Unsupported {
                layer: node.name.clone(),
                message: m,
            };
            let input = node
                .inputs
                .first()
                .map(|&j| model.nodes[j].shape)
                .unwrap_or(node.shape);
            let [c, h, w] = node.shape.map(|v| v as usize);
            let plan = match &node.op {
                Op::Input => NodePlan::Input,
                Op::Conv2d { weight, bias, .. } => {
                    let geo = node.op.conv_geometry().expect("a convolution");
                    let kernel = geo.kernel;
                    let p = Conv2dParams::from_graph(
                        geo.kernel,
                        geo.stride,
                        geo.padding,
                        geo.dilation,
                        geo.groups,
                    );
                    let g = geo.groups.max(1) as usize;
                    if !(input[0] as usize).is_multiple_of(g) || !c.is_multiple_of(g) {
                        return Err(unsupported(format!(
                            "groups {g} do not divide channels {} -> {c}",
                            input[0]
                        )));
                    }
                    let (ho, wo) = p
                        .output_hw(input[1] as usize, input[2] as usize)
                        .map_err(|e| unsupported(e.to_string()))?;
                    if (ho, wo) != (h, w) {
                        return Err(unsupported(format!(
                            "output {ho}x{wo} differs from the graph's {h}x{w}"
                        )));
                    }
                    NodePlan::Linear(LinearSpec {
                        node: i,
                        conv: Some(p),
                        in_dims: dims(input),
                        w_dims: vec![
                            c,
                            input[0] as usize / g,
                            kernel[0] as usize,
                            kernel[1] as usize,
                        ],
                        out_dims: dims(node.shape),
                        weight: weight.clone(),
                        bias: bias.clone(),
                    })
                }
                Op::Linear { weight, bias } => NodePlan::Linear(LinearSpec {
                    node: i,
                    conv: None,
                    in_dims: dims(input),
                    w_dims: vec![c, (input[0] * input[1] * input[2]) as usize],
                    out_dims: dims(node.shape),
                    weight: weight.clone(),
                    bias: bias.clone(),
                }),
                Op::BlockRelu { blocks, .. } => {
                    let active = blocks
                        .iter()
                        .filter(|b| matches!(b, BlockSize::Patch { .. }))
                        .count();
                    let spec = if active == 0 {
                        None
                    } else {
                        Some(SelectSpec::new(
                            active * h * w,
                            block_groups(blocks, h, w),
                            None,
                            1,
                            mode,
                        )?)
                    };
                    NodePlan::BlockRelu {
                        chans: blocks.clone(),
                        hw: h * w,
                        spec,
                    }
                }
                Op::Relu6 { .. } => {
                    let m = c * h * w;
                    NodePlan::Relu6 {
                        spec: SelectSpec::new(2 * m, Groups::Singles(2 * m), None, 0, mode)?
                            .twinned(6u64 << model.frac_bits)?,
                    }
                }
                Op::AvgPool {
                    count_include_pad, ..
                } => {
                    let window = node.op.pool_geometry().expect("a pooling op");
                    let counts = window_counts(
                        input[1] as usize,
                        input[2] as usize,
                        &window,
                        *count_include_pad,
                    )
                    .map_err(|e| unsupported(e.to_string()))?;
                    NodePlan::AvgPool { window, counts }
                }
                Op::MaxPool { kernel, .. } => NodePlan::MaxPool {
                    window: node.op.pool_geometry().expect("a pooling op"),
                    tree: Tournament::new((kernel[0] * kernel[1]) as usize, c * h * w, 1, mode)?,
                },
                Op::GlobalAvgPool => NodePlan::GlobalAvgPool {
                    count: u64::from(input[1] * input[2]).max(1),
                },
                Op::Add => NodePlan::Add,
                Op::Concat => NodePlan::Concat,
                Op::Broadcast { height, width } => NodePlan::Broadcast {
                    h: *height as usize,
                    w: *width as usize,
                },
                Op::Pad { pads } => NodePlan::Pad {
                    pads: pads.map(|v| v as usize),
                },
                Op::Resize {
                    height,
                    width,
                    mode,
                } => NodePlan::Resize {
                    h: *height as usize,
                    w: *width as usize,
                    mode: *mode,
                    frac_bits: model.frac_bits,
                },
            };
            nodes.push(plan);
        }
        let [oc, oh, ow] = model.output_shape().map(|v| v as usize);
        // Candidates are (value, class index) per pixel; a single class has nothing to compare
        // and its logits are revealed as they are.
        let argmax = match options.reveal {
            Reveal::Label if oc > 1 => Some(Tournament::new(oc, oh * ow, 2, DreluMode::Exact)?),
            _ => None,
        };
        Ok(Plan {
            nodes,
            argmax,
            options,
        })
    }

    /// The options this plan was made for.
    pub fn options(&self) -> Options {
        self.options
    }

    /// The work of every node, in graph order.
    pub fn nodes(&self) -> &[NodePlan] {
        &self.nodes
    }

    /// The secure argmax over the output classes, when only the label is revealed.
    pub fn argmax(&self) -> Option<&Tournament> {
        self.argmax.as_ref()
    }

    /// Total DReLUs of one inference (network and argmax).
    pub fn drelus(&self) -> u64 {
        self.specs().map(|s| s.patches() as u64).sum()
    }

    /// Every selection batch of one inference in the order they run: the nodes' (one per
    /// ReLU-family layer, one per max-pool level), then the argmax's levels.
    pub fn specs(&self) -> impl Iterator<Item = &SelectSpec> {
        self.nodes
            .iter()
            .flat_map(|n| match n {
                NodePlan::BlockRelu { spec: Some(s), .. } | NodePlan::Relu6 { spec: s } => {
                    std::slice::from_ref(s)
                }
                NodePlan::MaxPool { tree, .. } => tree.levels(),
                _ => &[],
            })
            .chain(self.argmax.iter().flat_map(|t| t.levels()))
    }

    /// An upper bound on the payload of any one message of a session (setup and inferences):
    /// every message belongs to one op of one layer (or to the output reveal, or to the
    /// per-inference contributions), so none is larger than the closed-form bytes of its op.
    /// A deployment caps its frames at it.
    pub fn max_message_bytes(&self, model: &SecureModel) -> u64 {
        let mut max = self.specs().map(|s| s.bytes()).max().unwrap_or(0);
        for n in &self.nodes {
            if let NodePlan::Linear(l) = n {
                max = max
                    .max(l.setup_bytes())
                    .max(l.offline_bytes())
                    .max(l.online_bytes());
            }
        }
        let [oc, oh, ow] = model.output_shape().map(u64::from);
        max.max(8 * oc * oh * ow)
            .max(crate::backend::CONTRIBUTION_LEN as u64)
    }

    /// Closed-form bytes per inference (offline + online, output reveal included) and once per
    /// session (setup), for the byte-count tests and the bench.
    pub fn closed_form_bytes(&self, model: &SecureModel) -> (u64, u64) {
        let mut per_inference: u64 = self.specs().map(|s| s.bytes()).sum();
        let mut setup = 0;
        for n in &self.nodes {
            if let NodePlan::Linear(l) = n {
                setup += l.setup_bytes();
                per_inference += l.offline_bytes() + l.online_bytes();
            }
        }
        let [oc, oh, ow] = model.output_shape().map(u64::from);
        per_inference += 8 * if self.argmax.is_none() {
            oc * oh * ow
        } else {
            oh * ow
        };
        // each party's contribution to both others (the backend's 1-byte "setup needed" flag
        // excluded)
        per_inference += 6 * crate::backend::CONTRIBUTION_LEN as u64;
        (per_inference, setup)
    }
}
