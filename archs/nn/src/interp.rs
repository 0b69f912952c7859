//! The interpreter that runs any network description (DESIGN §4 "One network description"):
//! [`DescNet`] is a [`BlockNet`] built from a [`NetDesc`], for distortion, training and
//! evaluation alike.
//!
//! Blocks: the description is cut after every node past which only that node's value is
//! live (the places where one tensor carries the whole state, e.g. between residual units);
//! consecutive cuts are merged until a block holds a slot, so every block but the last has
//! one, and a block is named after its last node. A description that names its own blocks
//! ([`NetDesc::blocks`], e.g. a ResNet's `stem` and one per residual unit) is cut there
//! instead, the nodes after its last block joining that block. Parameters live in the `VarStore` under the description's `state_dict` names
//! (`{module}.weight`, …); BatchNorm runs in training or evaluation mode (`train`).
//!
//! Distortion fast path (digest §2; [`BlockNet::forward_after_channel_change`]): every
//! convolution that reads a slot directly (any stride, padding, dilation or groups,
//! depthwise included) starts from its clean output, cached per batch, plus the convolution
//! of the one changed channel with its group's filters ([`ChannelChange::conv2d_general`]);
//! other readers get the stacked rows, and the pass goes on to the end of the network.

use crate::conv_bn::sub_path;
use crate::error::{NnError, Result};
use crate::net::{BlockNet, BlockNetParts, ChannelChange, GraphSource};
use crate::slots::{SlotId, SlotKind, Slots};
use knapsec_core::graph::{OutputKind, SecureModel};
use knapsec_core::graph_build::ParamSource;
use knapsec_core::netdesc::{ActKind, DescOp, NetDesc, ResizeMode};
use knapsec_core::{ArchOptions, ReluLayer};
use std::collections::HashMap;
use std::ops::Range;
use tch::{Tensor, nn};

/// A network description run by tch.
#[derive(Debug)]
pub struct DescNet {
    desc: NetDesc,
    /// Name, options, input shape, blocks, slots and graph source (the description).
    parts: BlockNetParts,
    /// Node range of each block (node 0, the input, belongs to none).
    ranges: Vec<Range<usize>>,
    params: HashMap<String, Tensor>,
    bns: HashMap<usize, nn::BatchNorm>,
    slot_of_node: HashMap<usize, SlotId>,
    node_of_slot: Vec<usize>,
    /// BatchNorm node of each BatchNorm module name.
    bn_of_module: HashMap<String, usize>,
    import: HashMap<String, String>,
    import_fn: Option<fn(&str) -> String>,
}

/// Node ranges of the blocks of `desc` (see the module documentation): the description's own
/// blocks when it names them, each checked to end where one value carries the state.
pub fn block_ranges(desc: &NetDesc) -> Result<Vec<Range<usize>>> {
    let n = desc.nodes.len();
    let mut last_use: Vec<usize> = (0..n).collect();
    for (j, node) in desc.nodes.iter().enumerate() {
        for &i in &node.inputs {
            last_use[i] = last_use[i].max(j);
        }
    }
    if !desc.blocks().is_empty() {
        let mut ranges = Vec::new();
        let mut start = 1;
        for (i, (name, end)) in desc.blocks().iter().enumerate() {
            let end = if i + 1 == desc.blocks().len() {
                n - 1
            } else {
                *end
            };
            if end < start || (0..end).any(|j| last_use[j] > end) {
                return Err(NnError::BadOption {
                    arch: desc.arch.clone(),
                    option: "network description",
                    reason: format!(
                        "block {name:?} does not end where one value carries the state"
                    ),
                });
            }
            ranges.push(start..end + 1);
            start = end + 1;
        }
        return Ok(ranges);
    }
    let mut ranges = Vec::new();
    // Largest last use of the nodes before `k` (the input included).
    let (mut start, mut live_until, mut has_slot) = (1, last_use[0], false);
    for (k, node) in desc.nodes.iter().enumerate().skip(1) {
        has_slot |= matches!(node.op, DescOp::Act { .. });
        // Every node before `k` is dead after `k`: `k`'s value alone carries the state.
        let cut = live_until <= k;
        if k + 1 == n || (cut && has_slot) {
            ranges.push(start..k + 1);
            start = k + 1;
            has_slot = false;
        }
        live_until = live_until.max(last_use[k]);
    }
    Ok(ranges)
}

impl DescNet {
    /// Builds the network of `desc` under `root` (freshly initialised parameters, as
    /// PyTorch's defaults); `import` maps foreign weight keys (e.g. ONNX initializer names) to
    /// the description's.
    pub fn new(
        desc: NetDesc,
        options: &ArchOptions,
        root: &nn::Path,
        import: HashMap<String, String>,
    ) -> Result<Self> {
        let ranges = block_ranges(&desc)?;
        let mut block_of = vec![0usize; desc.nodes.len()];
        for (b, r) in ranges.iter().enumerate() {
            for i in r.clone() {
                block_of[i] = b;
            }
        }
        let blocks: Vec<String> = if desc.blocks().is_empty() {
            ranges
                .iter()
                .map(|r| desc.nodes[r.end - 1].name.clone())
                .collect()
        } else {
            desc.blocks().iter().map(|(name, _)| name.clone()).collect()
        };
        let mut params = HashMap::new();
        let mut bns = HashMap::new();
        let mut bn_of_module = HashMap::new();
        let mut slots = Slots::new(desc.arch.clone());
        let mut slot_of_node = HashMap::new();
        let mut node_of_slot = Vec::new();
        for (i, node) in desc.nodes.iter().enumerate() {
            let input = node.inputs.first().map(|&j| desc.nodes[j].shape);
            match (&node.op, input) {
                (
                    DescOp::Conv {
                        module,
                        bias,
                        out_channels,
                        kernel,
                        groups,
                        ..
                    },
                    Some(inp),
                ) => {
                    let p = sub_path(root, module);
                    let fan_in = i64::from(inp[0] / groups) * i64::from(kernel[0] * kernel[1]);
                    let dims = [
                        i64::from(*out_channels),
                        i64::from(inp[0] / groups),
                        i64::from(kernel[0]),
                        i64::from(kernel[1]),
                    ];
                    params.insert(
                        format!("{module}.weight"),
                        p.var("weight", &dims, nn::init::DEFAULT_KAIMING_UNIFORM),
                    );
                    if *bias {
                        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                        params.insert(
                            format!("{module}.bias"),
                            p.var(
                                "bias",
                                &[i64::from(*out_channels)],
                                nn::Init::Uniform {
                                    lo: -bound,
                                    up: bound,
                                },
                            ),
                        );
                    }
                }
                (DescOp::BatchNorm { module, eps }, Some(inp)) => {
                    let cfg = nn::BatchNormConfig {
                        eps: *eps,
                        ..Default::default()
                    };
                    bns.insert(
                        i,
                        nn::batch_norm2d(sub_path(root, module), i64::from(inp[0]), cfg),
                    );
                    bn_of_module.insert(module.clone(), i);
                }
                (DescOp::Linear { module, bias, out }, Some(inp)) => {
                    let p = sub_path(root, module);
                    let lin = nn::linear(
                        &p,
                        i64::from(inp[0]),
                        i64::from(*out),
                        nn::LinearConfig {
                            bias: *bias,
                            ..Default::default()
                        },
                    );
                    params.insert(format!("{module}.weight"), lin.ws);
                    if let Some(b) = lin.bs {
                        params.insert(format!("{module}.bias"), b);
                    }
                }
                (DescOp::Act { slot, kind }, _) => {
                    let [c, h, w] = node.shape;
                    let kind = match kind {
                        ActKind::Relu => SlotKind::Relu,
                        ActKind::Relu6 => SlotKind::Relu6,
                    };
                    let id = slots.add(ReluLayer::new(slot.clone(), c, h, w), block_of[i], kind)?;
                    slot_of_node.insert(i, id);
                    node_of_slot.push(i);
                }
                _ => {}
            }
        }
        let parts = BlockNetParts::new(
            desc.arch.clone(),
            options.clone(),
            desc.input_shape().map(i64::from),
            blocks,
            slots,
            Some(Box::new(desc.clone())),
        );
        Ok(DescNet {
            desc,
            parts,
            ranges,
            params,
            bns,
            slot_of_node,
            node_of_slot,
            bn_of_module,
            import,
            import_fn: None,
        })
    }

    /// Maps foreign checkpoint keys with `f` (after the exact `import` map of [`Self::new`]),
    /// e.g. torchvision ResNet names to OpenMMLab ones.
    pub fn with_import_fn(mut self, f: fn(&str) -> String) -> Self {
        self.import_fn = Some(f);
        self
    }

    /// Copies `value` into the parameter `key` (a description name, e.g. `conv1.weight` or a
    /// BatchNorm's `bn1.running_var`); an error names a key the network lacks or a shape
    /// that differs.
    pub fn set_param(&mut self, key: &str, value: &Tensor) -> Result<()> {
        let target = match self.params.get(key) {
            Some(t) => Some(t.shallow_clone()),
            None => key.rsplit_once('.').and_then(|(module, field)| {
                let bn = self.bns.get(self.bn_of_module.get(module)?)?;
                match field {
                    "weight" => bn.ws.as_ref().map(Tensor::shallow_clone),
                    "bias" => bn.bs.as_ref().map(Tensor::shallow_clone),
                    "running_mean" => Some(bn.running_mean.shallow_clone()),
                    "running_var" => Some(bn.running_var.shallow_clone()),
                    _ => None,
                }
            }),
        };
        let Some(mut target) = target else {
            return Err(NnError::BadOption {
                arch: self.desc.arch.clone(),
                option: "weights",
                reason: format!("the network has no parameter {key:?}"),
            });
        };
        if target.size() != value.size() {
            return Err(NnError::BadOption {
                arch: self.desc.arch.clone(),
                option: "weights",
                reason: format!(
                    "parameter {key:?} has shape {:?}, the value {:?}",
                    target.size(),
                    value.size()
                ),
            });
        }
        tch::no_grad(|| target.copy_(&value.to_kind(target.kind()).to_device(target.device())));
        Ok(())
    }

    /// The description the network runs.
    pub fn desc(&self) -> &NetDesc {
        &self.desc
    }

    fn param(&self, key: &str) -> &Tensor {
        &self.params[key]
    }

    /// Applies node `i` to its input values.
    fn apply(&self, i: usize, ins: &[&Tensor], train: bool) -> Tensor {
        let node = &self.desc.nodes[i];
        let x = ins[0];
        match &node.op {
            DescOp::Input => x.shallow_clone(),
            DescOp::Conv {
                module,
                bias,
                stride,
                pads,
                dilation,
                groups,
                ..
            } => {
                let w = self.param(&format!("{module}.weight"));
                let b = bias.then(|| self.param(&format!("{module}.bias")));
                let s = [i64::from(stride[0]), i64::from(stride[1])];
                let d = [i64::from(dilation[0]), i64::from(dilation[1])];
                let g = i64::from(*groups);
                if pads[0] == pads[2] && pads[1] == pads[3] {
                    x.conv2d(w, b, s, [i64::from(pads[0]), i64::from(pads[1])], d, g)
                } else {
                    x.constant_pad_nd(pad_lrtb(pads))
                        .conv2d(w, b, s, [0, 0], d, g)
                }
            }
            DescOp::BatchNorm { .. } => x.apply_t(&self.bns[&i], train),
            DescOp::Act { .. } => self.parts.slots.run(self.slot_of_node[&i], x),
            DescOp::MaxPool {
                kernel,
                stride,
                pads,
                ceil_mode,
            } => {
                let k = [i64::from(kernel[0]), i64::from(kernel[1])];
                let s = [i64::from(stride[0]), i64::from(stride[1])];
                if pads[0] == pads[2] && pads[1] == pads[3] {
                    let p = [i64::from(pads[0]), i64::from(pads[1])];
                    x.max_pool2d(k, s, p, [1, 1], *ceil_mode)
                } else {
                    // Padding counts as −∞ in max pooling.
                    x.pad(pad_lrtb(pads), "constant", f64::NEG_INFINITY)
                        .max_pool2d(k, s, [0, 0], [1, 1], *ceil_mode)
                }
            }
            DescOp::AvgPool {
                kernel,
                stride,
                pads,
                ceil_mode,
                count_include_pad,
            } => {
                let k = [i64::from(kernel[0]), i64::from(kernel[1])];
                let s = [i64::from(stride[0]), i64::from(stride[1])];
                if pads[0] == pads[2] && pads[1] == pads[3] {
                    let p = [i64::from(pads[0]), i64::from(pads[1])];
                    x.avg_pool2d(k, s, p, *ceil_mode, *count_include_pad, None)
                } else {
                    let sum = x.constant_pad_nd(pad_lrtb(pads)).avg_pool2d(
                        k,
                        s,
                        [0, 0],
                        *ceil_mode,
                        true,
                        None,
                    );
                    if *count_include_pad {
                        sum
                    } else {
                        // Divide by the count of real pixels in each window instead.
                        let count = x.ones_like().constant_pad_nd(pad_lrtb(pads)).avg_pool2d(
                            k,
                            s,
                            [0, 0],
                            *ceil_mode,
                            true,
                            None,
                        );
                        sum / count
                    }
                }
            }
            DescOp::GlobalAvgPool => x.mean_dim([2i64, 3].as_slice(), true, x.kind()),
            DescOp::Pad { pads } => x.constant_pad_nd(pad_lrtb(pads)),
            // Not in place: the inputs may be a block's input, which callers keep (cached
            // block outputs, the rows of a distortion pass) and autograd may need.
            DescOp::Add => ins[1..].iter().fold(x.shallow_clone(), |y, t| y + *t),
            DescOp::Concat => Tensor::cat(ins, 1),
            DescOp::Dropout { p } => self.parts.dropout(x, *p, train),
            DescOp::Flatten => {
                let n = x.size()[0];
                x.reshape([n, -1, 1, 1])
            }
            DescOp::Linear { module, bias, .. } => {
                let n = x.size()[0];
                let w = self.param(&format!("{module}.weight"));
                let b = bias.then(|| self.param(&format!("{module}.bias")));
                x.reshape([n, -1]).linear(w, b).reshape([n, -1, 1, 1])
            }
            DescOp::Resize {
                height,
                width,
                mode,
            } => {
                let size = [i64::from(*height), i64::from(*width)];
                match mode {
                    ResizeMode::Nearest => x.upsample_nearest2d(size, None, None),
                    ResizeMode::Bilinear { align_corners } => {
                        x.upsample_bilinear2d(size, *align_corners, None, None)
                    }
                }
            }
        }
    }

    /// Evaluates the nodes of `range` that the range's last node needs, given the values
    /// already in `vals`; `fast` gives the distortion fast path for readers of a slot.
    fn eval(
        &self,
        range: Range<usize>,
        vals: &mut [Option<Tensor>],
        train: bool,
        mut fast: Option<FastPath<'_, '_>>,
    ) -> Result<Tensor> {
        let last = range.end - 1;
        let mut needed = vec![false; self.desc.nodes.len()];
        needed[last] = true;
        for j in range.clone().rev() {
            if needed[j] && vals[j].is_none() {
                for &i in &self.desc.nodes[j].inputs {
                    needed[i] = true;
                }
            }
        }
        for j in range {
            if !needed[j] || vals[j].is_some() {
                continue;
            }
            let node = &self.desc.nodes[j];
            if let Some(f) = fast.as_mut()
                && node.inputs == [f.slot_node]
            {
                vals[j] = Some(self.apply_changed(j, f)?);
                continue;
            }
            let mut ins = Vec::with_capacity(node.inputs.len());
            for &i in &node.inputs {
                match &vals[i] {
                    Some(t) => ins.push(t),
                    None => {
                        return Err(NnError::BadOption {
                            arch: self.desc.arch.clone(),
                            option: "network description",
                            reason: format!(
                                "node {:?} reads {:?}, which has no value",
                                node.name, self.desc.nodes[i].name
                            ),
                        });
                    }
                }
            }
            let y = self.apply(j, &ins, train);
            vals[j] = Some(y);
        }
        vals[last].take().ok_or_else(|| NnError::BadOption {
            arch: self.desc.arch.clone(),
            option: "network description",
            reason: "the block computed no output".into(),
        })
    }

    /// Node `j`, a reader of the fast path's slot, on the changed rows.
    fn apply_changed(&self, j: usize, f: &mut FastPath<'_, '_>) -> Result<Tensor> {
        if let DescOp::Conv {
            module,
            stride,
            pads,
            dilation,
            groups,
            ..
        } = &self.desc.nodes[j].op
        {
            let w = self.param(&format!("{module}.weight"));
            let s = [i64::from(stride[0]), i64::from(stride[1])];
            let d = [i64::from(dilation[0]), i64::from(dilation[1])];
            let g = i64::from(*groups);
            let pos = match f.conv_nodes.iter().position(|&c| c == j) {
                Some(pos) => pos,
                None => {
                    f.cache.push(self.apply(j, &[f.change.clean], false));
                    f.conv_nodes.push(j);
                    f.cache.len() - 1
                }
            };
            let p = pads.map(i64::from);
            // The cached clean output carries the bias; the change has none.
            return f.change.conv2d_general(&f.cache[pos], w, s, p, d, g);
        }
        if f.stacked.is_none() {
            f.stacked = Some(f.change.stacked()?);
        }
        let stacked = f.stacked.as_ref().expect("set above");
        Ok(self.apply(j, &[stacked], false))
    }

    fn finish_output(&self, index: usize, y: Tensor) -> Tensor {
        if index + 1 == self.ranges.len() && self.desc.output_kind() == OutputKind::Classification {
            let n = y.size()[0];
            y.reshape([n, -1])
        } else {
            y
        }
    }

    fn block_input_node(&self, index: usize) -> usize {
        self.ranges[index].start - 1
    }
}

/// The fast path's state for one call of `forward_after_channel_change`.
struct FastPath<'a, 'b> {
    slot_node: usize,
    change: &'a ChannelChange<'b>,
    cache: &'a mut Vec<Tensor>,
    conv_nodes: Vec<usize>,
    stacked: Option<Tensor>,
}

/// `[left, right, top, bottom]` for `constant_pad_nd` from `[top, left, bottom, right]`.
fn pad_lrtb(p: &[u32; 4]) -> [i64; 4] {
    [
        i64::from(p[1]),
        i64::from(p[3]),
        i64::from(p[0]),
        i64::from(p[2]),
    ]
}

impl GraphSource for NetDesc {
    fn secure_graph(
        &self,
        spec: Option<&knapsec_core::BlockSpec>,
        frac_bits: u32,
    ) -> knapsec_core::Result<(SecureModel, Vec<ParamSource>)> {
        NetDesc::secure_graph(self, spec, frac_bits)
    }
}

impl BlockNet for DescNet {
    fn parts(&self) -> &BlockNetParts {
        &self.parts
    }

    fn parts_mut(&mut self) -> &mut BlockNetParts {
        &mut self.parts
    }

    fn run_block(&self, index: usize, x: &Tensor, train: bool) -> Tensor {
        let mut vals: Vec<Option<Tensor>> = (0..self.desc.nodes.len()).map(|_| None).collect();
        vals[self.block_input_node(index)] = Some(x.shallow_clone());
        let y = self
            .eval(self.ranges[index].clone(), &mut vals, train, None)
            .expect("a validated description evaluates every node of a block");
        self.finish_output(index, y)
    }

    fn forward_after_channel_change(
        &self,
        index: usize,
        slot: SlotId,
        change: &ChannelChange<'_>,
        input: &Tensor,
        cache: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let slot_node = self.node_of_slot[slot.0];
        let mut vals: Vec<Option<Tensor>> = (0..self.desc.nodes.len()).map(|_| None).collect();
        vals[self.block_input_node(index)] = Some(input.shallow_clone());
        let mut fast = FastPath {
            slot_node,
            change,
            cache,
            conv_nodes: Vec::new(),
            stacked: None,
        };
        // The slot's readers: in its block, or (when the slot ends its block) the next one.
        let (block, range) = if slot_node + 1 == self.ranges[index].end {
            match self.ranges.get(index + 1) {
                Some(r) => (index + 1, r.clone()),
                None => {
                    let y = change.stacked()?;
                    return Ok(self.finish_output(index, y));
                }
            }
        } else {
            (index, slot_node + 1..self.ranges[index].end)
        };
        if block == index {
            // Nodes of the block before the slot that later nodes read, on the rows' inputs.
            let pre = self.ranges[index].start..slot_node;
            let mut needed = vec![false; self.desc.nodes.len()];
            for j in range.clone() {
                for &i in &self.desc.nodes[j].inputs {
                    if i < slot_node {
                        needed[i] = true;
                    }
                }
            }
            for j in pre.clone().rev() {
                if needed[j] {
                    for &i in &self.desc.nodes[j].inputs {
                        needed[i] = true;
                    }
                }
            }
            for j in pre {
                if needed[j] && vals[j].is_none() {
                    let y = {
                        let ins: Vec<&Tensor> = self.desc.nodes[j]
                            .inputs
                            .iter()
                            .map(|&i| vals[i].as_ref().expect("computed in order"))
                            .collect();
                        self.apply(j, &ins, false)
                    };
                    vals[j] = Some(y);
                }
            }
        }
        // Readers of the slot other than fast-path convolutions see the stacked rows.
        vals[slot_node] = None;
        let needs_stacked = self
            .desc
            .consumers(slot_node)
            .iter()
            .any(|&j| !matches!(&self.desc.nodes[j].op, DescOp::Conv { .. }));
        if needs_stacked {
            let s = change.stacked()?;
            fast.stacked = Some(s.shallow_clone());
            vals[slot_node] = Some(s);
        }
        let y = self.eval(range, &mut vals, false, Some(fast))?;
        let y = self.finish_output(block, y);
        if block + 1 < self.ranges.len() {
            self.forward_from(block + 1, &y, false)
        } else {
            Ok(y)
        }
    }

    fn import_key(&self, key: &str) -> String {
        match (self.import.get(key), self.import_fn) {
            (Some(k), _) => k.clone(),
            (None, Some(f)) => f(key),
            (None, None) => key.to_string(),
        }
    }
}
