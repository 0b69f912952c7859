//! The walk over the ONNX nodes (see the parent module): each op type's dispatch, the
//! pass-through ops, and constant folding of shape arithmetic (`Shape`, `Gather`, `Concat` of
//! constants, …) so that a `Reshape` to `[N, -1]` becomes a flatten.

use super::*;

impl Ctx<'_> {
    pub(super) fn node_step(&mut self) -> Result<()> {
        let op = self.node.op_type.clone();
        // A convolution takes a `Pad` into its padding, and pass-through ops hand it on.
        if !matches!(op.as_str(), "Conv" | "Identity" | "Dropout") {
            self.materialize_pads()?;
        }
        match op.as_str() {
            "Identity" | "Dropout" => {
                let v = self.input(0)?.clone();
                // PyTorch's exporter passes kept BatchNorm statistics through an Identity: the
                // output stands for the initializer, whose name keys the weight.
                let init = self.initializer_of(&self.node.input[0]);
                if let (Some(init), Some(out)) = (init, self.node.output.first()) {
                    self.aliases.insert(out.clone(), init);
                }
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

    pub(super) fn gather(&mut self) -> Result<()> {
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

    pub(super) fn concat(&mut self) -> Result<()> {
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
}
