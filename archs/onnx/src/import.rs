//! ONNX → network description (DESIGN §4 "One network description"; issue: bring your own
//! CNN).
//!
//! [`import`] decodes a `ModelProto` (`prost`), checks the opset (11–21 of the default
//! domain) and refuses, before any other work, every node whose op type has no form here,
//! with one error that lists each unsupported op type with its node names and the supported
//! set. It then walks the nodes in order, folding constants (`Constant`, `Shape`, `Gather`,
//! `Unsqueeze`, `Squeeze`, `Cast`, `Concat` of constants) and building a [`NetDesc`]:
//! convolutions (a preceding constant-0 `Pad` folds into their padding), BatchNorm,
//! ReLU-family slots (`Relu`, `Clip` with lower bound 0 and upper bound 6 or none), pooling,
//! `Add`, `Concat`, `Flatten`/`Reshape [N, -1]`, `Gemm` and `MatMul` (+ `Add` of a bias) as
//! linear layers, `Resize`/`Upsample`. `Identity` and `Dropout` pass their input through.
//!
//! Names: a node's module and slot name is its ONNX name with every character other than
//! ASCII letters, digits and `_` replaced by `_` (`{op}_{index}` when it has none), made
//! unique with a `_2`, `_3`, … suffix in graph order, so they are stable for one file. The
//! initializers become the weights under the description's `state_dict` names; [`Imported::keys`]
//! maps each initializer name to its key, so a safetensors file keyed by initializer names
//! loads as well.

use crate::error::{OnnxError, Result};
use crate::proto::{self, AttributeProto, ModelProto, NodeProto, TensorProto, data_type};
use knapsec_core::netdesc::{ActKind, DescOp, NetDesc, ResizeMode};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Op types the importer takes.
pub const SUPPORTED: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Dropout",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "MatMul",
    "MaxPool",
    "Pad",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Squeeze",
    "Unsqueeze",
    "Upsample",
];

/// Largest tensor (elements) the importer materialises; larger ones are refused.
const MAX_ELEMENTS: u64 = 1 << 31;

/// One weight tensor under its description key.
#[derive(Clone, Debug, PartialEq)]
pub struct Weight {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// An imported ONNX model: its description and its weights.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The network description.
    pub desc: NetDesc,
    /// Weights keyed by description (`state_dict`) names, in description order.
    pub weights: BTreeMap<String, Weight>,
    /// Initializer name → description key (the initializers used as weights as they are).
    pub keys: BTreeMap<String, String>,
    /// The opset of the default domain.
    pub opset: i64,
}

/// A constant: dims and values (as f64, which holds every shape value exactly).
#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    data: Vec<f64>,
}

#[derive(Clone, Debug)]
enum Val {
    /// Output of a description node.
    Net(usize),
    /// A constant-0 `Pad` of a description node, waiting for the convolution that reads it.
    Padded(usize, [u32; 4]),
    /// A constant.
    Const(Const),
    /// A `MatMul` linear layer's output whose bias an `Add` may still supply.
    MatMul(usize),
}

struct Ctx<'a> {
    desc: NetDesc,
    vals: HashMap<String, Val>,
    initializer_names: HashSet<String>,
    weights: BTreeMap<String, Weight>,
    keys: BTreeMap<String, String>,
    used_names: HashSet<String>,
    opset: i64,
    node: &'a NodeProto,
    index: usize,
}

/// Imports an ONNX model from its bytes; `arch` names the description (`onnx:PATH`).
pub fn import(bytes: &[u8], arch: &str) -> Result<Imported> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| {
            OnnxError::Graph("the model imports no opset of the default domain".into())
        })?;
    if !(11..=21).contains(&opset) {
        return Err(OnnxError::Opset { found: opset });
    }
    let graph = model
        .graph
        .ok_or_else(|| OnnxError::Graph("the model has no graph".into()))?;
    refuse_unsupported(&graph.node)?;

    let initializer_names: HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    let mut vals: HashMap<String, Val> = HashMap::new();
    for t in &graph.initializer {
        vals.insert(t.name.clone(), Val::Const(tensor_const(t, &t.name)?));
    }
    let inputs: Vec<&proto::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializer_names.contains(&i.name))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(OnnxError::Graph(format!(
            "the graph needs exactly one image input, it has {} ({})",
            inputs.len(),
            inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let shape = input_shape(input)?;
    let desc = NetDesc::new(arch, shape)?;
    vals.insert(input.name.clone(), Val::Net(0));

    let mut ctx = Ctx {
        desc,
        vals,
        initializer_names,
        weights: BTreeMap::new(),
        keys: BTreeMap::new(),
        used_names: HashSet::from(["input".to_string()]),
        opset,
        node: &NO_NODE,
        index: 0,
    };
    for (index, node) in graph.node.iter().enumerate() {
        ctx.node = node;
        ctx.index = index;
        ctx.node_step()?;
    }
    let [output] = graph.output.as_slice() else {
        return Err(OnnxError::Graph(format!(
            "the graph needs exactly one output, it has {}",
            graph.output.len()
        )));
    };
    let out = match ctx.vals.get(&output.name) {
        Some(Val::Net(i)) | Some(Val::MatMul(i)) => *i,
        _ => {
            return Err(OnnxError::Graph(format!(
                "output {:?} is not computed from the image",
                output.name
            )));
        }
    };
    if out + 1 != ctx.desc.nodes.len() {
        return Err(OnnxError::Graph(format!(
            "output {:?} is not the last op of the graph (node {:?} comes after it)",
            output.name,
            ctx.desc.nodes.last().map(|n| n.name.as_str()).unwrap_or("")
        )));
    }
    for (key, shape) in ctx.desc.param_shapes() {
        match ctx.weights.get(&key) {
            Some(w) if w.shape == shape => {}
            Some(w) => {
                return Err(OnnxError::Graph(format!(
                    "weight {key} has shape {:?}, the graph needs {shape:?}",
                    w.shape
                )));
            }
            None => return Err(OnnxError::Graph(format!("weight {key} is missing"))),
        }
    }
    Ok(Imported {
        desc: ctx.desc,
        weights: ctx.weights,
        keys: ctx.keys,
        opset,
    })
}

/// The node before the first one (errors before any node name none).
static NO_NODE: NodeProto = NodeProto {
    input: Vec::new(),
    output: Vec::new(),
    name: String::new(),
    op_type: String::new(),
    domain: String::new(),
    attribute: Vec::new(),
};

fn refuse_unsupported(nodes: &[NodeProto]) -> Result<()> {
    let mut bad: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let default_domain = n.domain.is_empty() || n.domain == "ai.onnx";
        if !default_domain || !SUPPORTED.contains(&n.op_type.as_str()) {
            let op = if default_domain {
                n.op_type.clone()
            } else {
                format!("{}::{}", n.domain, n.op_type)
            };
            bad.entry(op).or_default().push(node_label(n, i));
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(OnnxError::Unsupported {
        list: bad
            .iter()
            .map(|(op, names)| {
                let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
                let more = names.len().saturating_sub(shown.len());
                format!(
                    "{op} (nodes {}{})",
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        supported: SUPPORTED.join(", "),
    })
}

fn node_label(n: &NodeProto, index: usize) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else if let Some(o) = n.output.first() {
        o.clone()
    } else {
        format!("#{index}")
    }
}

fn input_shape(input: &proto::ValueInfoProto) -> Result<[u32; 3]> {
    let dims = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| &s.dim)
        .ok_or_else(|| OnnxError::Graph(format!("input {:?} has no shape", input.name)))?;
    if dims.len() != 4 {
        return Err(OnnxError::Graph(format!(
            "input {:?} has {} dimensions; an image input is [N, C, H, W]",
            input.name,
            dims.len()
        )));
    }
    let mut out = [0u32; 3];
    for (k, d) in dims[1..].iter().enumerate() {
        out[k] = d
            .dim_value
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| {
                OnnxError::Graph(format!(
                    "input {:?}: dimension {} must be a fixed positive size",
                    input.name,
                    k + 1
                ))
            })?;
    }
    Ok(out)
}

fn checked_len(dims: &[usize], what: &str) -> Result<usize> {
    let mut n: u64 = 1;
    for &d in dims {
        n = n
            .checked_mul(d as u64)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| OnnxError::Graph(format!("tensor {what} is too large")))?;
    }
    Ok(n as usize)
}

fn tensor_const(t: &TensorProto, what: &str) -> Result<Const> {
    if t.data_location != 0 {
        return Err(OnnxError::Graph(format!(
            "tensor {what} keeps its data in an external file; save the model with the data inside"
        )));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| OnnxError::Graph(format!("tensor {what} has a negative dimension")))?;
    let len = checked_len(&dims, what)?;
    let raw = &t.raw_data;
    let data: Vec<f64> = match t.data_type {
        data_type::FLOAT if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        data_type::FLOAT => t.float_data.iter().map(|&v| f64::from(v)).collect(),
        data_type::DOUBLE if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")))
            .collect(),
        data_type::DOUBLE => t.double_data.clone(),
        data_type::INT64 if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")) as f64)
            .collect(),
        data_type::INT64 => t.int64_data.iter().map(|&v| v as f64).collect(),
        data_type::INT32 if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        data_type::INT32 => t.int32_data.iter().map(|&v| f64::from(v)).collect(),
        other => {
            return Err(OnnxError::Graph(format!(
                "tensor {what} has data type {other}; supported: float, double, int32, int64"
            )));
        }
    };
    if data.len() != len {
        return Err(OnnxError::Graph(format!(
            "tensor {what} has {} values for dims {dims:?}",
            data.len()
        )));
    }
    Ok(Const { dims, data })
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_matches('_').to_string()
}

impl Ctx<'_> {
    fn err(&self, why: impl Into<String>) -> OnnxError {
        OnnxError::Node {
            node: node_label(self.node, self.index),
            op: self.node.op_type.clone(),
            why: why.into(),
        }
    }

    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map(|a| a.i).unwrap_or(default)
    }

    fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map(|a| a.f).unwrap_or(default)
    }

    fn attr_s(&self, name: &str, default: &str) -> String {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    fn attr_u32s(&self, name: &str, len: usize, default: u32) -> Result<Vec<u32>> {
        match self.attr(name) {
            None => Ok(vec![default; len]),
            Some(a) if a.ints.len() == len => a
                .ints
                .iter()
                .map(|&v| {
                    u32::try_from(v).map_err(|_| self.err(format!("{name} {v} is out of range")))
                })
                .collect(),
            Some(a) => Err(self.err(format!(
                "{name} has {} values, expected {len}",
                a.ints.len()
            ))),
        }
    }

    /// A unique module/slot name for this node.
    fn unique_name(&mut self) -> String {
        let mut base = sanitize(&self.node.name);
        if base.is_empty() {
            base = format!("{}_{}", self.node.op_type, self.index);
        }
        let mut name = base.clone();
        let mut k = 2;
        while self.used_names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used_names.insert(name.clone());
        name
    }

    fn input(&self, k: usize) -> Result<&Val> {
        let name = self
            .node
            .input
            .get(k)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| self.err(format!("input {k} is missing")))?;
        self.vals
            .get(name)
            .ok_or_else(|| self.err(format!("input {name:?} is not computed before this node")))
    }

    fn opt_input(&self, k: usize) -> Result<Option<&Val>> {
        match self.node.input.get(k) {
            Some(n) if !n.is_empty() => self.input(k).map(Some),
            _ => Ok(None),
        }
    }

    fn net_input(&self, k: usize) -> Result<usize> {
        match self.input(k)? {
            Val::Net(i) | Val::MatMul(i) => Ok(*i),
            Val::Padded(..) => Err(self.err("reads a Pad; only a convolution may read a Pad")),
            Val::Const(_) => Err(self.err(format!(
                "input {k} is a constant where the image's data is expected"
            ))),
        }
    }

    fn const_input(&self, k: usize) -> Result<Const> {
        match self.input(k)? {
            Val::Const(c) => Ok(c.clone()),
            _ => Err(self.err(format!("input {k} must be a constant (an initializer)"))),
        }
    }

    fn set_output(&mut self, v: Val) -> Result<()> {
        let name = self
            .node
            .output
            .first()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| self.err("has no output"))?
            .clone();
        self.vals.insert(name, v);
        Ok(())
    }

    /// Stores initializer input `k` as weight `key` (with `shape` after `transpose` if asked).
    fn take_weight(&mut self, k: usize, key: String, transpose: bool) -> Result<Vec<usize>> {
        let c = self.const_input(k)?;
        let (shape, data) = if transpose {
            let [r, cols] = c.dims[..] else {
                return Err(self.err(format!("weight {k} must be 2-D, has dims {:?}", c.dims)));
            };
            let mut data = vec![0f32; r * cols];
            for i in 0..r {
                for j in 0..cols {
                    data[j * r + i] = c.data[i * cols + j] as f32;
                }
            }
            (vec![cols, r], data)
        } else {
            (c.dims.clone(), c.data.iter().map(|&v| v as f32).collect())
        };
        let init = &self.node.input[k];
        if self.initializer_names.contains(init) && !transpose {
            self.keys.insert(init.clone(), key.clone());
        }
        self.weights.insert(
            key,
            Weight {
                shape: shape.clone(),
                data,
            },
        );
        Ok(shape)
    }

    fn push(&mut self, name: String, op: DescOp, inputs: &[usize]) -> Result<usize> {
        self.desc
            .push(name, op, inputs)
            .map_err(|e| self.err(e.to_string()))
    }

    fn node_step(&mut self) -> Result<()> {
        let op = self.node.op_type.clone();
        match op.as_str() {
            "Identity" | "Dropout" => {
                let v = self.input(0)?.clone();
                self.set_output(v)
            }
            "Constant" => {
                let a = self
                    .attr("value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| self.err("only a tensor `value` is supported"))?;
                let c = tensor_const(a, &node_label(self.node, self.index))?;
                self.set_output(Val::Const(c))
            }
            "Shape" => {
                let i = self.net_input(0)?;
                let [c, h, w] = self.desc.nodes[i].shape;
                self.set_output(Val::Const(Const {
                    dims: vec![4],
                    data: vec![1.0, c.into(), h.into(), w.into()],
                }))
            }
            "Cast" => {
                let c = self.const_input(0)?;
                self.set_output(Val::Const(c))
            }
            "Gather" => self.gather(),
            "Unsqueeze" | "Squeeze" => {
                let c = self.const_input(0)?;
                let axes: Vec<i64> = if self.opset >= 13 {
                    match self.opt_input(1)? {
                        Some(_) => self
                            .const_input(1)?
                            .data
                            .iter()
                            .map(|&v| v as i64)
                            .collect(),
                        None => vec![],
                    }
                } else {
                    self.attr("axes")
                        .map(|a| a.ints.clone())
                        .unwrap_or_default()
                };
                let mut dims = c.dims.clone();
                if op == "Unsqueeze" {
                    let rank = (dims.len() + axes.len()) as i64;
                    let mut axes: Vec<i64> = axes
                        .iter()
                        .map(|&a| if a < 0 { a + rank } else { a })
                        .collect();
                    axes.sort_unstable();
                    for a in axes {
                        if a < 0 || a as usize > dims.len() {
                            return Err(self.err(format!("axis {a} is out of range")));
                        }
                        dims.insert(a as usize, 1);
                    }
                } else {
                    dims.retain(|&d| d != 1);
                }
                self.set_output(Val::Const(Const { dims, data: c.data }))
            }
            "Concat" => self.concat(),
            "Conv" => self.conv(),
            "BatchNormalization" => {
                if self.attr_i("training_mode", 0) != 0 || self.node.output.len() > 1 {
                    return Err(self.err("only inference-mode BatchNormalization is supported"));
                }
                let x = self.net_input(0)?;
                let module = self.unique_name();
                let channels = self.desc.nodes[x].shape[0] as usize;
                for (k, t) in [
                    (1, "weight"),
                    (2, "bias"),
                    (3, "running_mean"),
                    (4, "running_var"),
                ] {
                    let shape = self.take_weight(k, format!("{module}.{t}"), false)?;
                    if shape != [channels] {
                        return Err(self.err(format!(
                            "{t} has shape {shape:?}, the input has {channels} channels"
                        )));
                    }
                }
                let eps = f64::from(self.attr_f("epsilon", 1e-5));
                let id = self.push(module.clone(), DescOp::BatchNorm { module, eps }, &[x])?;
                self.set_output(Val::Net(id))
            }
            "Relu" => self.act(ActKind::Relu),
            "Clip" => self.clip(),
            "MaxPool" | "AveragePool" => self.pool(),
            "GlobalAveragePool" => {
                let x = self.net_input(0)?;
                let name = self.unique_name();
                let id = self.push(name, DescOp::GlobalAvgPool, &[x])?;
                self.set_output(Val::Net(id))
            }
            "Add" => self.add(),
            "Flatten" => {
                let axis = self.attr_i("axis", 1);
                if axis != 1 {
                    return Err(self.err(format!("only axis 1 is supported, got {axis}")));
                }
                let x = self.net_input(0)?;
                let name = self.unique_name();
                let id = self.push(name, DescOp::Flatten, &[x])?;
                self.set_output(Val::Net(id))
            }
            "Reshape" => {
                let x = self.net_input(0)?;
                let target: Vec<i64> = self
                    .const_input(1)?
                    .data
                    .iter()
                    .map(|&v| v as i64)
                    .collect();
                let [c, h, w] = self.desc.nodes[x].shape;
                let flat = i64::from(c) * i64::from(h) * i64::from(w);
                let ok = target.len() == 2
                    && (target[1] == -1 && matches!(target[0], 0 | 1)
                        || target[1] == flat && (-1..=1).contains(&target[0]));
                if !ok {
                    return Err(self.err(format!(
                        "only a reshape to [N, -1] is supported, got {target:?}"
                    )));
                }
                let name = self.unique_name();
                let id = self.push(name, DescOp::Flatten, &[x])?;
                self.set_output(Val::Net(id))
            }
            "Gemm" => self.gemm(),
            "MatMul" => {
                let x = self.net_input(0)?;
                let module = self.unique_name();
                let shape = self.take_weight(1, format!("{module}.weight"), true)?;
                let id = self.push(
                    module.clone(),
                    DescOp::Linear {
                        module,
                        bias: false,
                        out: shape[0] as u32,
                    },
                    &[x],
                )?;
                self.set_output(Val::MatMul(id))
            }
            "Pad" => self.pad(),
            "Resize" | "Upsample" => self.resize(),
            other => Err(self.err(format!("{other} is not supported"))),
        }
    }

    fn gather(&mut self) -> Result<()> {
        let data = self.const_input(0)?;
        let idx = self.const_input(1)?;
        if self.attr_i("axis", 0) != 0 || data.dims.len() != 1 {
            return Err(self.err("only gathering from a 1-D constant along axis 0 is supported"));
        }
        let n = data.data.len() as i64;
        let mut out = Vec::with_capacity(idx.data.len());
        for &i in &idx.data {
            let i = i as i64;
            let j = if i < 0 { i + n } else { i };
            if j < 0 || j >= n {
                return Err(self.err(format!("index {i} is out of range for {n} values")));
            }
            out.push(data.data[j as usize]);
        }
        self.set_output(Val::Const(Const {
            dims: idx.dims.clone(),
            data: out,
        }))
    }

    fn concat(&mut self) -> Result<()> {
        let vals: Vec<Val> = (0..self.node.input.len())
            .map(|k| self.input(k).cloned())
            .collect::<Result<_>>()?;
        if vals.iter().all(|v| matches!(v, Val::Const(_))) {
            let mut data = Vec::new();
            for v in &vals {
                if let Val::Const(c) = v {
                    if c.dims.len() > 1 {
                        return Err(self.err("only 1-D constants are concatenated"));
                    }
                    data.extend_from_slice(&c.data);
                }
            }
            return self.set_output(Val::Const(Const {
                dims: vec![data.len()],
                data,
            }));
        }
        let axis = self.attr_i("axis", 1);
        if axis != 1 && axis != -3 {
            return Err(self.err(format!(
                "only channel concatenation (axis 1) is supported, got {axis}"
            )));
        }
        let ins: Vec<usize> = (0..vals.len())
            .map(|k| self.net_input(k))
            .collect::<Result<_>>()?;
        let name = self.unique_name();
        let id = self.push(name, DescOp::Concat, &ins)?;
        self.set_output(Val::Net(id))
    }

    fn conv(&mut self) -> Result<()> {
        let (x, pre_pads) = match self.input(0)? {
            Val::Padded(i, p) => (*i, *p),
            _ => (self.net_input(0)?, [0; 4]),
        };
        let w = self.const_input(1)?;
        let [o, _, kh, kw] = w.dims[..] else {
            return Err(self.err(format!(
                "only 2-D convolutions are supported (weight dims {:?})",
                w.dims
            )));
        };
        let kernel = self.attr_u32s("kernel_shape", 2, 0)?;
        if self.attr("kernel_shape").is_some() && kernel != [kh as u32, kw as u32] {
            return Err(self.err("kernel_shape does not match the weight"));
        }
        let stride = self.attr_u32s("strides", 2, 1)?;
        let dilation = self.attr_u32s("dilations", 2, 1)?;
        let pads = self.pads([kh as u32, kw as u32], &stride, &dilation, x)?;
        let mut all = [0u32; 4];
        for k in 0..4 {
            all[k] = pads[k]
                .checked_add(pre_pads[k])
                .ok_or_else(|| self.err("padding overflows"))?;
        }
        let groups = u32::try_from(self.attr_i("group", 1)).map_err(|_| self.err("bad group"))?;
        let module = self.unique_name();
        self.take_weight(1, format!("{module}.weight"), false)?;
        let bias = self.opt_input(2)?.is_some();
        if bias {
            let shape = self.take_weight(2, format!("{module}.bias"), false)?;
            if shape != [o] {
                return Err(self.err(format!("bias has shape {shape:?}, expected [{o}]")));
            }
        }
        let id = self.push(
            module.clone(),
            DescOp::Conv {
                module,
                bias,
                out_channels: u32::try_from(o).map_err(|_| self.err("too many channels"))?,
                kernel: [kh as u32, kw as u32],
                stride: [stride[0], stride[1]],
                pads: all,
                dilation: [dilation[0], dilation[1]],
                groups,
            },
            &[x],
        )?;
        self.set_output(Val::Net(id))
    }

    /// `pads` as `[top, left, bottom, right]`, from `pads` or `auto_pad`.
    fn pads(
        &self,
        kernel: [u32; 2],
        stride: &[u32],
        dilation: &[u32],
        x: usize,
    ) -> Result<[u32; 4]> {
        let auto = self.attr_s("auto_pad", "NOTSET");
        match auto.as_str() {
            "NOTSET" => {
                let p = self.attr_u32s("pads", 4, 0)?;
                Ok([p[0], p[1], p[2], p[3]])
            }
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let [_, h, w] = self.desc.nodes[x].shape;
                let mut out = [0u32; 4];
                for (k, size) in [h, w].into_iter().enumerate() {
                    let s = u64::from(stride[k].max(1));
                    let o = u64::from(size).div_ceil(s);
                    let span =
                        u64::from(dilation[k]) * (u64::from(kernel[k]).saturating_sub(1)) + 1;
                    let total = ((o - 1) * s + span).saturating_sub(u64::from(size));
                    let total = u32::try_from(total).map_err(|_| self.err("padding overflows"))?;
                    let (small, big) = (total / 2, total - total / 2);
                    let (begin, end) = if auto == "SAME_UPPER" {
                        (small, big)
                    } else {
                        (big, small)
                    };
                    out[k] = begin;
                    out[k + 2] = end;
                }
                Ok(out)
            }
            other => Err(self.err(format!("auto_pad {other:?} is not supported"))),
        }
    }

    fn act(&mut self, kind: ActKind) -> Result<()> {
        let x = self.net_input(0)?;
        let slot = self.unique_name();
        let id = self.push(slot.clone(), DescOp::Act { slot, kind }, &[x])?;
        self.set_output(Val::Net(id))
    }

    fn clip(&mut self) -> Result<()> {
        let bound = |ctx: &Self, k: usize, attr: &str| -> Result<Option<f64>> {
            if ctx.opset >= 11 {
                match ctx.opt_input(k)? {
                    Some(_) => {
                        let c = ctx.const_input(k)?;
                        c.data
                            .first()
                            .copied()
                            .map(Some)
                            .ok_or_else(|| ctx.err(format!("bound input {k} is empty")))
                    }
                    None => Ok(None),
                }
            } else {
                Ok(ctx.attr(attr).map(|a| f64::from(a.f)))
            }
        };
        let (lo, hi) = (bound(self, 1, "min")?, bound(self, 2, "max")?);
        let kind = if lo == Some(0.0) && hi.is_none() {
            ActKind::Relu
        } else if lo == Some(0.0) && hi == Some(6.0) {
            ActKind::Relu6
        } else {
            return Err(self.err(format!(
                "only Clip(min 0) (ReLU) and Clip(0, 6) (ReLU6) have a sign-test form, got min {lo:?} max {hi:?}"
            )));
        };
        self.act(kind)
    }

    fn pool(&mut self) -> Result<()> {
        let is_max = self.node.op_type == "MaxPool";
        if self.node.output.len() > 1 && !self.node.output[1].is_empty() {
            return Err(self.err("the indices output is not supported"));
        }
        let x = self.net_input(0)?;
        let k = self.attr_u32s("kernel_shape", 2, 0)?;
        let stride = self.attr_u32s("strides", 2, 1)?;
        let dilation = self.attr_u32s("dilations", 2, 1)?;
        if dilation != [1, 1] {
            return Err(self.err("dilated pooling is not supported"));
        }
        let pads = self.pads([k[0], k[1]], &stride, &dilation, x)?;
        let ceil_mode = self.attr_i("ceil_mode", 0) != 0;
        let name = self.unique_name();
        let (kernel, stride) = ([k[0], k[1]], [stride[0], stride[1]]);
        let op = if is_max {
            DescOp::MaxPool {
                kernel,
                stride,
                pads,
                ceil_mode,
            }
        } else {
            DescOp::AvgPool {
                kernel,
                stride,
                pads,
                ceil_mode,
                count_include_pad: self.attr_i("count_include_pad", 0) != 0,
            }
        };
        let id = self.push(name, op, &[x])?;
        self.set_output(Val::Net(id))
    }

    fn add(&mut self) -> Result<()> {
        let (a, b) = (self.input(0)?.clone(), self.input(1)?.clone());
        match (&a, &b) {
            (Val::Const(x), Val::Const(y)) if x.data.len() == y.data.len() => {
                let data = x.data.iter().zip(&y.data).map(|(p, q)| p + q).collect();
                self.set_output(Val::Const(Const {
                    dims: x.dims.clone(),
                    data,
                }))
            }
            (Val::MatMul(i), Val::Const(_)) | (Val::Const(_), Val::MatMul(i)) => {
                let i = *i;
                let k = if matches!(a, Val::Const(_)) { 0 } else { 1 };
                let DescOp::Linear { module, out, .. } = self.desc.nodes[i].op.clone() else {
                    return Err(self.err("internal: a MatMul value is not a linear layer"));
                };
                let shape = self.take_weight(k, format!("{module}.bias"), false)?;
                if shape.iter().product::<usize>() != out as usize {
                    return Err(self.err(format!("bias has shape {shape:?}, expected [{out}]")));
                }
                if let Some(w) = self.weights.get_mut(&format!("{module}.bias")) {
                    w.shape = vec![out as usize];
                }
                if let DescOp::Linear { bias, .. } = &mut self.desc.nodes[i].op {
                    *bias = true;
                }
                self.set_output(Val::Net(i))
            }
            _ => {
                let ins = [self.net_input(0)?, self.net_input(1)?];
                let name = self.unique_name();
                let id = self.push(name, DescOp::Add, &ins)?;
                self.set_output(Val::Net(id))
            }
        }
    }

    fn gemm(&mut self) -> Result<()> {
        let x = self.net_input(0)?;
        if self.attr_f("alpha", 1.0) != 1.0
            || self.attr_f("beta", 1.0) != 1.0
            || self.attr_i("transA", 0) != 0
        {
            return Err(self.err("only alpha = beta = 1 and transA = 0 are supported"));
        }
        let trans_b = self.attr_i("transB", 0) != 0;
        let module = self.unique_name();
        let shape = self.take_weight(1, format!("{module}.weight"), !trans_b)?;
        let out = shape[0];
        let bias = self.opt_input(2)?.is_some();
        if bias {
            let s = self.take_weight(2, format!("{module}.bias"), false)?;
            if s.iter().product::<usize>() != out {
                return Err(self.err(format!("bias has shape {s:?}, expected [{out}]")));
            }
            if let Some(w) = self.weights.get_mut(&format!("{module}.bias")) {
                w.shape = vec![out];
            }
        }
        let id = self.push(
            module.clone(),
            DescOp::Linear {
                module,
                bias,
                out: u32::try_from(out).map_err(|_| self.err("too many outputs"))?,
            },
            &[x],
        )?;
        self.set_output(Val::Net(id))
    }

    fn pad(&mut self) -> Result<()> {
        let x = self.net_input(0)?;
        let mode = self.attr_s("mode", "constant");
        let pads: Vec<i64> = self
            .const_input(1)?
            .data
            .iter()
            .map(|&v| v as i64)
            .collect();
        let value = match self.opt_input(2)? {
            Some(_) => self.const_input(2)?.data.first().copied().unwrap_or(0.0),
            None => 0.0,
        };
        if mode != "constant" || value != 0.0 || self.opt_input(3)?.is_some() {
            return Err(self.err("only constant padding with 0 over all axes is supported"));
        }
        let [_, _, t, l, _, _, b, r] = pads[..] else {
            return Err(self.err(format!("pads must have 8 values, got {}", pads.len())));
        };
        if pads[0] != 0 || pads[1] != 0 || pads[4] != 0 || pads[5] != 0 {
            return Err(self.err("padding of the batch or channel axis is not supported"));
        }
        let p: Vec<u32> = [t, l, b, r]
            .iter()
            .map(|&v| u32::try_from(v).map_err(|_| self.err(format!("pad {v} is not supported"))))
            .collect::<Result<_>>()?;
        self.set_output(Val::Padded(x, [p[0], p[1], p[2], p[3]]))
    }

    fn resize(&mut self) -> Result<()> {
        let x = self.net_input(0)?;
        let [_, h, w] = self.desc.nodes[x].shape;
        let mode = self.attr_s("mode", "nearest");
        let coord = self.attr_s("coordinate_transformation_mode", "half_pixel");
        let upsample = self.node.op_type == "Upsample";
        // Output size: `sizes` (input 3) or `scales` (input 2; input 1 for Upsample).
        let sizes = if upsample {
            None
        } else {
            self.opt_input(3)?
                .map(|_| self.const_input(3))
                .transpose()?
        };
        let (oh, ow) = if let Some(s) = sizes.filter(|s| !s.data.is_empty()) {
            if s.data.len() != 4 {
                return Err(self.err("sizes must have 4 values"));
            }
            (s.data[2], s.data[3])
        } else {
            let scales = self.const_input(if upsample { 1 } else { 2 })?;
            if scales.data.len() != 4 || scales.data[0] != 1.0 || scales.data[1] != 1.0 {
                return Err(self.err("scales must be [1, 1, sh, sw]"));
            }
            (
                (f64::from(h) * scales.data[2]).floor(),
                (f64::from(w) * scales.data[3]).floor(),
            )
        };
        let to_u32 = |v: f64| {
            (v >= 1.0 && v <= f64::from(u32::MAX))
                .then_some(v as u32)
                .ok_or_else(|| self.err(format!("output size {v} is invalid")))
        };
        let (height, width) = (to_u32(oh)?, to_u32(ow)?);
        let mode = match mode.as_str() {
            "nearest" => {
                let nearest = self.attr_s("nearest_mode", "round_prefer_floor");
                if !upsample && (coord != "asymmetric" || nearest != "floor") {
                    return Err(self.err(format!(
                        "nearest resize needs coordinate_transformation_mode \"asymmetric\" and nearest_mode \"floor\" (PyTorch's), got {coord:?}/{nearest:?}"
                    )));
                }
                ResizeMode::Nearest
            }
            "linear" | "bilinear" => match coord.as_str() {
                "align_corners" => ResizeMode::Bilinear {
                    align_corners: true,
                },
                "half_pixel" | "pytorch_half_pixel" => ResizeMode::Bilinear {
                    align_corners: false,
                },
                other => {
                    return Err(self.err(format!("coordinate mode {other:?} is not supported")));
                }
            },
            other => return Err(self.err(format!("mode {other:?} is not supported"))),
        };
        let name = self.unique_name();
        let id = self.push(
            name,
            DescOp::Resize {
                height,
                width,
                mode,
            },
            &[x],
        )?;
        self.set_output(Val::Net(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(
            sanitize("/layer1/layer1.0/relu/Relu"),
            "layer1_layer1_0_relu_Relu"
        );
        assert_eq!(sanitize("//"), "");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            import(b"\xff\xff\xff", "x"),
            Err(OnnxError::Decode(_))
        ));
        assert!(matches!(import(b"", "x"), Err(OnnxError::Graph(_))));
    }
}
