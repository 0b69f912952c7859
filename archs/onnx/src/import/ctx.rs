//! The importer's per-node state (see the parent module): attributes with their defaults,
//! inputs as description nodes or constants, outputs, unique names, and the initializers
//! taken as weights under their description keys.

use super::*;

impl Ctx<'_> {
    pub(super) fn err(&self, why: impl Into<String>) -> OnnxError {
        OnnxError::Node {
            node: node_label(self.node, self.index),
            op: self.node.op_type.clone(),
            why: why.into(),
        }
    }

    pub(super) fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    pub(super) fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map(|a| a.i).unwrap_or(default)
    }

    pub(super) fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map(|a| a.f).unwrap_or(default)
    }

    pub(super) fn attr_s(&self, name: &str, default: &str) -> String {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    pub(super) fn attr_u32s(&self, name: &str, len: usize, default: u32) -> Result<Vec<u32>> {
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

    /// The base of this node's names: its name sanitized, else its op type and index.
    pub(super) fn base_name(&self) -> String {
        let base = sanitize(&self.node.name);
        if base.is_empty() {
            format!("{}_{}", self.node.op_type, self.index)
        } else {
            base
        }
    }

    /// A unique module/slot name for this node.
    pub(super) fn unique_name(&mut self) -> String {
        let base = self.base_name();
        self.unique(base)
    }

    /// `base`, or `base_K` for the first `K ≥ 2` not yet used, now used.
    pub(super) fn unique(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut k = 2;
        while self.used_names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used_names.insert(name.clone());
        name
    }

    pub(super) fn input(&self, k: usize) -> Result<&Val> {
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

    pub(super) fn opt_input(&self, k: usize) -> Result<Option<&Val>> {
        match self.node.input.get(k) {
            Some(n) if !n.is_empty() => self.input(k).map(Some),
            _ => Ok(None),
        }
    }

    pub(super) fn net_input(&self, k: usize) -> Result<usize> {
        match self.input(k)? {
            Val::Net(i) | Val::MatMul(i) => Ok(*i),
            Val::Padded(..) => Err(self.err("internal: a Pad was not made a node")),
            Val::Const(_) | Val::External(_) => Err(self.err(format!(
                "input {k} is a constant where the image's data is expected"
            ))),
        }
    }

    /// Every input of this node that is a constant-0 `Pad` still waiting for a convolution
    /// becomes a zero-padding node (once: the value then stands for that node), for readers
    /// that are not convolutions.
    pub(super) fn materialize_pads(&mut self) -> Result<()> {
        for k in 0..self.node.input.len() {
            let key = &self.node.input[k];
            if let Some(Val::Padded(x, pads, base)) = self.vals.get(key).cloned() {
                let name = self.unique(base);
                let id = self.push(name, DescOp::Pad { pads }, &[x])?;
                self.vals.insert(key.clone(), Val::Net(id));
            }
        }
        Ok(())
    }

    pub(super) fn const_input(&self, k: usize) -> Result<Const> {
        match self.input(k)? {
            Val::Const(c) => Ok(c.clone()),
            Val::External(_) => Err(self.err(format!(
                "input {k} ({:?}) keeps its values in an external file, and they are needed here",
                self.node.input[k]
            ))),
            _ => Err(self.err(format!("input {k} must be a constant (an initializer)"))),
        }
    }

    pub(super) fn set_output(&mut self, v: Val) -> Result<()> {
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
    pub(super) fn take_weight(
        &mut self,
        k: usize,
        key: String,
        transpose: bool,
    ) -> Result<Vec<usize>> {
        if let Val::External(dims) = self.input(k)? {
            let shape = match (transpose, &dims[..]) {
                (false, _) => dims.clone(),
                (true, &[r, cols]) => vec![cols, r],
                (true, _) => {
                    return Err(self.err(format!("weight {k} must be 2-D, has dims {dims:?}")));
                }
            };
            if let Some(init) = self.initializer_of(&self.node.input[k])
                && !transpose
            {
                self.keys.insert(init, key.clone());
            }
            self.missing.insert(key.clone());
            self.weights.insert(
                key,
                Weight {
                    shape: shape.clone(),
                    data: Vec::new(),
                },
            );
            return Ok(shape);
        }
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
        if let Some(init) = self.initializer_of(&self.node.input[k])
            && !transpose
        {
            self.keys.insert(init, key.clone());
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

    /// The initializer that value `name` is (itself, or through `Identity` nodes), if any.
    pub(super) fn initializer_of(&self, name: &str) -> Option<String> {
        if self.initializer_names.contains(name) {
            return Some(name.to_string());
        }
        self.aliases.get(name).cloned()
    }

    /// The dims of weight input `k`, a constant or an initializer with external data.
    pub(super) fn weight_dims(&self, k: usize) -> Result<Vec<usize>> {
        match self.input(k)? {
            Val::External(dims) => Ok(dims.clone()),
            _ => Ok(self.const_input(k)?.dims),
        }
    }

    pub(super) fn push(&mut self, name: String, op: DescOp, inputs: &[usize]) -> Result<usize> {
        self.desc
            .push(name, op, inputs)
            .map_err(|e| self.err(e.to_string()))
    }
}
