//! The private part of a secure model (DESIGN §3): fixed-point weight tensors (BatchNorm
//! folded, digest §6.6), their safetensors encoding, and the fixed-point conversions.

use super::{Op, SecureModel, WEIGHTS_FILE, weight_len};
use crate::error::{CoreError, Result};
use crate::fsutil;
use std::collections::BTreeMap;
use std::path::Path;

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
    /// These weights with the tensor `name` of `shape` holding `data` (row-major).
    pub fn with(mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<i64>) -> Self {
        self.tensors
            .insert(name.into(), FixedTensor { shape, data });
        self
    }

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
