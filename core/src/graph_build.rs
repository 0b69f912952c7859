//! A tch-free builder of secure-model graphs (DESIGN §3, digest §6.14), shared by every
//! architecture.
//!
//! An architecture describes its inference graph once, in terms of PyTorch module paths
//! (`backbone.layer1.0.conv1`), and gets from [`GraphBuilder::finish`] both the public
//! [`SecureModel`] (ops with every output shape) and a list of [`ParamSource`]s that say which
//! `state_dict` tensors fill each weight of the graph, and which BatchNorm folds into which
//! convolution (digest §6.6). `knapsec-nn` turns those sources into fixed-point weights; the
//! parties, benches and tests that need no trained network use [`random_weights`] instead, so
//! that none of them needs libtorch.

use crate::block::BlockSize;
use crate::error::{CoreError, Result};
use crate::graph::{
    FixedTensor, MODEL_FORMAT, ModelWeights, Node, Op, OutputKind, PoolGeometry, ResizeMode,
    SecureModel, Shape, encode_fixed, infer_shape,
};

/// Index of a node in the graph being built.
pub type NodeId = usize;

/// Where the weight (and bias) of one `Conv2d` / `Linear` node come from in a `state_dict`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSource {
    /// Graph tensor name of the weight: `"{module}.weight"`.
    pub weight: String,
    /// Graph tensor name of the bias (`"{module}.bias"`), present when the module has a bias
    /// or a BatchNorm is folded in.
    pub bias: Option<String>,
    /// `state_dict` prefix of the convolution or linear module.
    pub module: String,
    /// Whether the module itself has a bias tensor (`"{module}.bias"` in the `state_dict`).
    pub module_bias: bool,
    /// `state_dict` prefix of the BatchNorm folded into this convolution, if any.
    pub bn: Option<String>,
    /// BatchNorm epsilon (PyTorch's default 1e-5).
    pub bn_eps: f64,
}

/// Hyper-parameters of a convolution, as in PyTorch's `nn.Conv2d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Output channels.
    pub out_channels: u32,
    /// Kernel height and width.
    pub kernel: [u32; 2],
    /// Stride, vertical and horizontal.
    pub stride: [u32; 2],
    /// Zero padding on each side, vertical and horizontal.
    pub padding: [u32; 2],
    /// Spacing between kernel taps, vertical and horizontal.
    pub dilation: [u32; 2],
    /// Groups.
    pub groups: u32,
    /// The module has its own bias.
    pub bias: bool,
}

impl ConvSpec {
    /// A square `k × k` convolution with the given stride and padding, no bias, no dilation.
    pub fn square(out_channels: u32, k: u32, stride: u32, padding: u32) -> Self {
        ConvSpec {
            out_channels,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [padding, padding],
            dilation: [1, 1],
            groups: 1,
            bias: false,
        }
    }
}

pub use crate::graph::window_out;

/// Builds a [`SecureModel`] node by node, computing shapes.
#[derive(Clone, Debug)]
pub struct GraphBuilder {
    arch: String,
    frac_bits: u32,
    nodes: Vec<Node>,
    params: Vec<ParamSource>,
}

impl GraphBuilder {
    /// A graph for `arch` whose input (node 0) has shape `input` (C, H, W).
    pub fn new(arch: impl Into<String>, frac_bits: u32, input: Shape) -> Self {
        let nodes = vec![Node {
            name: "input".into(),
            op: Op::Input,
            inputs: vec![],
            shape: input,
        }];
        GraphBuilder {
            arch: arch.into(),
            frac_bits,
            nodes,
            params: Vec::new(),
        }
    }

    /// The input node.
    pub fn input(&self) -> NodeId {
        0
    }

    /// Shape of a node built so far.
    pub fn shape(&self, id: NodeId) -> Shape {
        self.nodes[id].shape
    }

    fn err(&self, name: &str, why: impl std::fmt::Display) -> CoreError {
        CoreError::Graph(format!("{}: building node {name:?}: {why}", self.arch))
    }

    fn check_id(&self, name: &str, id: NodeId) -> Result<Shape> {
        self.nodes
            .get(id)
            .map(|n| n.shape)
            .ok_or_else(|| self.err(name, format!("input node {id} does not exist")))
    }

    fn push(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<NodeId>,
        shape: Shape,
    ) -> NodeId {
        self.nodes.push(Node {
            name: name.into(),
            op,
            inputs,
            shape,
        });
        self.nodes.len() - 1
    }

    /// A convolution `module` (state-dict prefix), with the BatchNorm `bn` folded in if given.
    pub fn conv(
        &mut self,
        module: &str,
        input: NodeId,
        c: ConvSpec,
        bn: Option<&str>,
    ) -> Result<NodeId> {
        let [ci, h, w] = self.check_id(module, input)?;
        if c.groups == 0 || ci % c.groups != 0 || !c.out_channels.is_multiple_of(c.groups) {
            return Err(self.err(
                module,
                format!(
                    "{ci} -> {} channels cannot form {} groups",
                    c.out_channels, c.groups
                ),
            ));
        }
        let oh = window_out(h, c.kernel[0], c.stride[0], c.padding[0], c.dilation[0]);
        let ow = window_out(w, c.kernel[1], c.stride[1], c.padding[1], c.dilation[1]);
        let (Some(oh), Some(ow)) = (oh, ow) else {
            return Err(self.err(
                module,
                format!("kernel {:?} does not fit a {h}x{w} input", c.kernel),
            ));
        };
        let has_bias = c.bias || bn.is_some();
        let op = Op::Conv2d {
            weight: format!("{module}.weight"),
            bias: has_bias.then(|| format!("{module}.bias")),
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            dilation: c.dilation,
            groups: c.groups,
        };
        self.params.push(ParamSource {
            weight: format!("{module}.weight"),
            bias: has_bias.then(|| format!("{module}.bias")),
            module: module.into(),
            module_bias: c.bias,
            bn: bn.map(str::to_string),
            bn_eps: 1e-5,
        });
        Ok(self.push(module, op, vec![input], [c.out_channels, oh, ow]))
    }

    /// Sets the BatchNorm epsilon of the parameters added last (a convolution with a folded
    /// BatchNorm whose epsilon is not PyTorch's default 1e-5).
    pub fn set_last_bn_eps(&mut self, eps: f64) {
        if let Some(p) = self.params.last_mut() {
            p.bn_eps = eps;
        }
    }

    /// A fully connected layer `module` on a `[C, 1, 1]` input.
    pub fn linear(&mut self, module: &str, input: NodeId, out: u32, bias: bool) -> Result<NodeId> {
        let [_, h, w] = self.check_id(module, input)?;
        if (h, w) != (1, 1) {
            return Err(self.err(
                module,
                format!("a linear layer needs a [C, 1, 1] input, got {h}x{w}"),
            ));
        }
        let op = Op::Linear {
            weight: format!("{module}.weight"),
            bias: bias.then(|| format!("{module}.bias")),
        };
        self.params.push(ParamSource {
            weight: format!("{module}.weight"),
            bias: bias.then(|| format!("{module}.bias")),
            module: module.into(),
            module_bias: bias,
            bn: None,
            bn_eps: 1e-5,
        });
        Ok(self.push(module, op, vec![input], [out, 1, 1]))
    }

    /// The activation slot `layer` with one block size per channel.
    pub fn block_relu(
        &mut self,
        layer: &str,
        input: NodeId,
        blocks: Vec<BlockSize>,
    ) -> Result<NodeId> {
        let shape = self.check_id(layer, input)?;
        if blocks.len() != shape[0] as usize {
            return Err(self.err(
                layer,
                format!("{} block sizes for {} channels", blocks.len(), shape[0]),
            ));
        }
        Ok(self.push(
            layer,
            Op::BlockRelu {
                layer: layer.into(),
                blocks,
            },
            vec![input],
            shape,
        ))
    }

    /// A ReLU6 slot `layer`.
    pub fn relu6(&mut self, layer: &str, input: NodeId) -> Result<NodeId> {
        let shape = self.check_id(layer, input)?;
        Ok(self.push(
            layer,
            Op::Relu6 {
                layer: layer.into(),
            },
            vec![input],
            shape,
        ))
    }

    /// Average pooling (`count_include_pad` as in PyTorch).
    pub fn avg_pool(
        &mut self,
        name: &str,
        input: NodeId,
        kernel: [u32; 2],
        stride: [u32; 2],
        padding: [u32; 2],
        count_include_pad: bool,
    ) -> Result<NodeId> {
        let geo = PoolGeometry::symmetric(kernel, stride, padding);
        self.pool(name, input, geo, Some(count_include_pad))
    }

    /// Max pooling.
    pub fn max_pool(
        &mut self,
        name: &str,
        input: NodeId,
        kernel: [u32; 2],
        stride: [u32; 2],
        padding: [u32; 2],
    ) -> Result<NodeId> {
        let geo = PoolGeometry::symmetric(kernel, stride, padding);
        self.pool(name, input, geo, None)
    }

    /// Pooling with any window ([`PoolGeometry`]: asymmetric pads, ceil mode): average with
    /// `count_include_pad` (`Some`), or max (`None`). A `ceil_mode` that does not change the
    /// output size is dropped, so the node is the floor-mode one (the same windows and
    /// divisors) and needs no newer format.
    pub fn pool(
        &mut self,
        name: &str,
        input: NodeId,
        mut geo: PoolGeometry,
        average: Option<bool>,
    ) -> Result<NodeId> {
        let [c, h, w] = self.check_id(name, input)?;
        let (oh, ow) = geo.output_hw(h, w).map_err(|e| self.err(name, e))?;
        if geo.ceil_mode {
            let floor = PoolGeometry {
                ceil_mode: false,
                ..geo
            };
            if floor.output_hw(h, w).ok() == Some((oh, ow)) {
                geo = floor;
            }
        }
        let (padding, pad_end) = geo.padding_fields();
        let (kernel, stride, ceil_mode) = (geo.kernel, geo.stride, geo.ceil_mode);
        let op = match average {
            Some(count_include_pad) => Op::AvgPool {
                kernel,
                stride,
                padding,
                pad_end,
                ceil_mode,
                count_include_pad,
            },
            None => Op::MaxPool {
                kernel,
                stride,
                padding,
                pad_end,
                ceil_mode,
            },
        };
        Ok(self.push(name, op, vec![input], [c, oh, ow]))
    }

    /// Zero padding `[top, left, bottom, right]`; all zero pads give the input back, with no
    /// node.
    pub fn pad(&mut self, name: &str, input: NodeId, pads: [u32; 4]) -> Result<NodeId> {
        let shape = self.check_id(name, input)?;
        if pads == [0; 4] {
            return Ok(input);
        }
        let op = Op::Pad { pads };
        let out = infer_shape(&op, &[shape], shape).map_err(|e| self.err(name, e))?;
        Ok(self.push(name, op, vec![input], out))
    }

    /// Resizes every channel to `height × width`: a `1 × 1` map becomes a [`Op::Broadcast`]
    /// (what both modes compute from one pixel), a map already of that size is given back
    /// with no node (both modes are then the identity), anything else an [`Op::Resize`].
    pub fn resize(
        &mut self,
        name: &str,
        input: NodeId,
        height: u32,
        width: u32,
        mode: ResizeMode,
    ) -> Result<NodeId> {
        let shape = self.check_id(name, input)?;
        match (shape[1], shape[2]) {
            (1, 1) => self.broadcast(name, input, height, width),
            (h, w) if (h, w) == (height, width) => Ok(input),
            _ => {
                let op = Op::Resize {
                    height,
                    width,
                    mode,
                };
                let out = infer_shape(&op, &[shape], shape).map_err(|e| self.err(name, e))?;
                Ok(self.push(name, op, vec![input], out))
            }
        }
    }

    /// Mean over H·W per channel.
    pub fn global_avg_pool(&mut self, name: &str, input: NodeId) -> Result<NodeId> {
        let [c, _, _] = self.check_id(name, input)?;
        Ok(self.push(name, Op::GlobalAvgPool, vec![input], [c, 1, 1]))
    }

    /// Element-wise sum; all inputs must have the same shape.
    pub fn add(&mut self, name: &str, inputs: &[NodeId]) -> Result<NodeId> {
        if inputs.len() < 2 {
            return Err(self.err(name, "an addition needs at least two inputs"));
        }
        let shape = self.check_id(name, inputs[0])?;
        for &i in &inputs[1..] {
            let s = self.check_id(name, i)?;
            if s != shape {
                return Err(self.err(name, format!("cannot add shapes {shape:?} and {s:?}")));
            }
        }
        Ok(self.push(name, Op::Add, inputs.to_vec(), shape))
    }

    /// Concatenation along channels; all inputs must have the same H and W.
    pub fn concat(&mut self, name: &str, inputs: &[NodeId]) -> Result<NodeId> {
        if inputs.len() < 2 {
            return Err(self.err(name, "a concatenation needs at least two inputs"));
        }
        let [mut c, h, w] = self.check_id(name, inputs[0])?;
        for &i in &inputs[1..] {
            let s = self.check_id(name, i)?;
            if (s[1], s[2]) != (h, w) {
                return Err(self.err(
                    name,
                    format!("cannot concatenate {h}x{w} and {}x{} maps", s[1], s[2]),
                ));
            }
            c = c
                .checked_add(s[0])
                .ok_or_else(|| self.err(name, "too many channels to concatenate"))?;
        }
        Ok(self.push(name, Op::Concat, inputs.to_vec(), [c, h, w]))
    }

    /// Repeats a `[C, 1, 1]` input to `[C, height, width]`.
    pub fn broadcast(
        &mut self,
        name: &str,
        input: NodeId,
        height: u32,
        width: u32,
    ) -> Result<NodeId> {
        let [c, h, w] = self.check_id(name, input)?;
        if (h, w) != (1, 1) {
            return Err(self.err(
                name,
                format!("broadcast needs a [C, 1, 1] input, got {h}x{w}"),
            ));
        }
        Ok(self.push(
            name,
            Op::Broadcast { height, width },
            vec![input],
            [c, height, width],
        ))
    }

    /// The finished, validated graph (the last node is the output) and its parameter sources.
    pub fn finish(self, output_kind: OutputKind) -> Result<(SecureModel, Vec<ParamSource>)> {
        let model = SecureModel {
            format: MODEL_FORMAT,
            arch: self.arch,
            frac_bits: self.frac_bits,
            output_kind,
            nodes: self.nodes,
            calibration: None,
        };
        model.validate()?;
        Ok((model, self.params))
    }
}

/// Shape of the weight tensor of a `Conv2d` or `Linear` node, and its output channels.
pub fn weight_shape(model: &SecureModel, node: &Node) -> Option<Vec<usize>> {
    let input = node.inputs.first().map(|&j| model.nodes[j].shape)?;
    match &node.op {
        Op::Conv2d { kernel, groups, .. } => Some(vec![
            node.shape[0] as usize,
            (input[0] / (*groups).max(1)) as usize,
            kernel[0] as usize,
            kernel[1] as usize,
        ]),
        Op::Linear { .. } => Some(vec![node.shape[0] as usize, input[0] as usize]),
        _ => None,
    }
}

/// Deterministic random fixed-point weights for every `Conv2d` / `Linear` node of `model`
/// (uniform with variance `1/fan_in`, biases in ±0.1), for tests and benches that need no
/// trained network. Not for anything secret: the generator is a plain SplitMix64.
pub fn random_weights(model: &SecureModel, seed: u64) -> ModelWeights {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0 // uniform in [-1, 1)
    };
    let mut out = ModelWeights::default();
    for node in &model.nodes {
        let (weight, bias) = match &node.op {
            Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => (weight, bias),
            _ => continue,
        };
        let shape = weight_shape(model, node).expect("conv and linear nodes have a weight shape");
        let fan_in: usize = shape[1..].iter().product();
        let scale = (3.0 / fan_in.max(1) as f64).sqrt();
        let data = (0..shape.iter().product::<usize>())
            .map(|_| encode_fixed(next() * scale, model.frac_bits))
            .collect();
        out.tensors.insert(
            weight.clone(),
            FixedTensor {
                shape: shape.clone(),
                data,
            },
        );
        if let Some(b) = bias {
            let data = (0..shape[0])
                .map(|_| encode_fixed(next() * 0.1, model.frac_bits))
                .collect();
            out.tensors.insert(
                b.clone(),
                FixedTensor {
                    shape: vec![shape[0]],
                    data,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_params_and_random_weights() {
        let mut g = GraphBuilder::new("toy", 12, [3, 9, 9]);
        let c = g
            .conv(
                "backbone.conv1",
                g.input(),
                ConvSpec::square(8, 3, 2, 1),
                Some("backbone.bn1"),
            )
            .unwrap();
        assert_eq!(g.shape(c), [8, 5, 5]);
        let r = g.block_relu("stem", c, vec![BlockSize::RELU; 8]).unwrap();
        let p = g.max_pool("pool", r, [3, 3], [2, 2], [1, 1]).unwrap();
        assert_eq!(g.shape(p), [8, 3, 3]);
        let a = g.add("add", &[p, p]).unwrap();
        let gap = g.global_avg_pool("gap", a).unwrap();
        let fc = g.linear("head.fc", gap, 10, true).unwrap();
        assert_eq!(g.shape(fc), [10, 1, 1]);
        assert!(g.block_relu("bad", c, vec![BlockSize::RELU; 3]).is_err());
        assert!(g.add("bad", &[c, fc]).is_err());
        assert!(g.linear("bad", c, 3, false).is_err());
        let (model, params) = g.finish(OutputKind::Classification).unwrap();
        assert_eq!(params.len(), 2);
        assert_eq!(params[0].bn.as_deref(), Some("backbone.bn1"));
        assert_eq!(params[0].bias.as_deref(), Some("backbone.conv1.bias"));
        let w = random_weights(&model, 7);
        w.check_against(&model).unwrap();
        assert_eq!(
            w.get("backbone.conv1.weight").unwrap().shape,
            vec![8, 3, 3, 3]
        );
        assert_eq!(random_weights(&model, 7), w);
        assert_ne!(random_weights(&model, 8), w);
    }

    #[test]
    fn window_formula() {
        assert_eq!(window_out(32, 3, 1, 1, 1), Some(32));
        assert_eq!(window_out(7, 3, 2, 1, 1), Some(4));
        assert_eq!(window_out(224, 7, 2, 3, 1), Some(112));
        assert_eq!(window_out(2, 5, 1, 0, 1), None);
        assert_eq!(window_out(64, 3, 1, 12, 12), Some(64));
    }

    #[test]
    fn window_formula_never_overflows() {
        assert_eq!(window_out(u32::MAX, 3, 1, 1, 1), Some(u32::MAX));
        assert_eq!(window_out(u32::MAX, 1, 1, u32::MAX, 1), None);
        assert_eq!(window_out(10, u32::MAX, 1, 0, u32::MAX), None);
        assert_eq!(window_out(10, 3, 1, 0, 0), None, "dilation 0");
        let mut g = GraphBuilder::new("toy", 12, [3, u32::MAX, u32::MAX]);
        let e = g
            .conv("c", g.input(), ConvSpec::square(8, 3, 1, 1), None)
            .and_then(|c| g.concat("cat", &[c, c]))
            .map(|_| ())
            .and_then(|_| g.clone().finish(OutputKind::Segmentation).map(|_| ()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large"), "{e}");
        let mut g = GraphBuilder::new("toy", 12, [u32::MAX, 1, 1]);
        let e = g.concat("cat", &[0, 0]).unwrap_err().to_string();
        assert!(e.contains("channels"), "{e}");
    }
}
