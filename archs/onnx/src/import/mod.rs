//! ONNX → network description (DESIGN §4 "One network description"; issue: bring your own
//! CNN).
//!
//! [`import`] decodes a `ModelProto` (`prost`), checks the opset (11–21 of the default
//! domain) and refuses, before any other work, every node whose op type has no form here,
//! with one error that lists each unsupported op type with its node names and the supported
//! set. It then walks the nodes in order, folding constants (`Constant`, `Shape`, `Gather`,
//! `Unsqueeze`, `Squeeze`, `Cast`, `Concat` of constants) and building a [`NetDesc`]:
//! convolutions (a preceding constant-0 `Pad` folds into their padding; before any other op
//! it is a zero-padding node), BatchNorm,
//! ReLU-family slots (`Relu`, `Clip` with lower bound 0 and upper bound 6 or none), pooling,
//! `Add`, `Concat`, `Flatten`/`Reshape [N, -1]`, `Gemm` and `MatMul` (+ `Add` of a bias) as
//! linear layers, `Resize`/`Upsample`. `Identity` and `Dropout` pass their input through.
//!
//! Names: a node's module and slot name is its ONNX name with every character other than
//! ASCII letters, digits and `_` replaced by `_` (`{op}_{index}` when it has none), made
//! unique with a `_2`, `_3`, … suffix in graph order, so they are stable for one file. The
//! initializers become the weights under the description's `state_dict` names; [`Imported::keys`]
//! maps each initializer name to its key, so a safetensors file keyed by initializer names
//! loads as well.//!
//! Parts: this module holds [`import`], the supported set, the up-front refusal and the
//! decoding of tensors and names; `ctx` the per-node state (attributes, inputs, outputs,
//! weights); `fold` the walk over the nodes with constant folding and the graph ops; `layers`
//! the layers that become description ops.

mod ctx;
mod fold;
mod layers;

use crate::error::{OnnxError, Result};
use crate::proto::{self, AttributeProto, ModelProto, NodeProto, TensorProto, data_type};
use knapsec_core::netdesc::{ActKind, DescOp, NetDesc, ResizeMode};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

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
    /// Description keys of the weights whose values the file does not hold (initializers
    /// with external data: a graph-only file); their [`Weight::data`] is empty, and a
    /// `--weights` file must supply them.
    pub missing: BTreeSet<String>,
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
    /// A constant-0 `Pad` of a description node, waiting for the convolution that reads it
    /// (which takes it into its padding); anything else that reads it gets a zero-padding node
    /// named after the `Pad` (its base name, the third field).
    Padded(usize, [u32; 4], String),
    /// A constant.
    Const(Const),
    /// An initializer whose values live in an external data file (a graph-only model): its
    /// dims, usable as a weight whose values come from `--weights`.
    External(Vec<usize>),
    /// A `MatMul` linear layer's output whose bias an `Add` may still supply.
    MatMul(usize),
}

struct Ctx<'a> {
    desc: NetDesc,
    vals: HashMap<String, Val>,
    initializer_names: HashSet<String>,
    weights: BTreeMap<String, Weight>,
    keys: BTreeMap<String, String>,
    missing: BTreeSet<String>,
    /// Outputs of `Identity` nodes that stand for an initializer, and its name.
    aliases: HashMap<String, String>,
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
        let v = if t.data_location == EXTERNAL {
            Val::External(tensor_dims(t, &t.name)?)
        } else {
            Val::Const(tensor_const(t, &t.name)?)
        };
        vals.insert(t.name.clone(), v);
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
        missing: BTreeSet::new(),
        aliases: HashMap::new(),
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
        missing: ctx.missing,
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

/// `TensorProto.DataLocation.EXTERNAL`: the values are in another file.
const EXTERNAL: i32 = 1;

/// A tensor's dims, checked: none negative, their product within [`MAX_ELEMENTS`].
fn tensor_dims(t: &TensorProto, what: &str) -> Result<Vec<usize>> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| OnnxError::Graph(format!("tensor {what} has a negative dimension")))?;
    checked_len(&dims, what)?;
    Ok(dims)
}

fn tensor_const(t: &TensorProto, what: &str) -> Result<Const> {
    if t.data_location != 0 {
        return Err(OnnxError::Graph(format!(
            "tensor {what} keeps its data in an external file; save the model with the data inside"
        )));
    }
    let dims = tensor_dims(t, what)?;
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
