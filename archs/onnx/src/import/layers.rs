//! The ONNX ops that become description ops (see the parent module): `Conv` (with a folded
//! constant-0 `Pad` and asymmetric pads), the ReLU-family slots (`Relu`, `Clip`), pooling,
//! `Add` (and a `MatMul`'s bias), `Gemm`, `Pad` (folded into a convolution, else a
//! zero-padding node) and `Resize`/`Upsample`.

use super::*;

impl Ctx<'_> {
    pub(super) fn conv(&mut self) -> Result<()> {
        let (x, pre_pads) = match self.input(0)? {
            Val::Padded(i, p, _) => (*i, *p),
            _ => (self.net_input(0)?, [0; 4]),
        };
        let dims = self.weight_dims(1)?;
        let [o, _, kh, kw] = dims[..] else {
            return Err(self.err(format!(
                "only 2-D convolutions are supported (weight dims {dims:?})"
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
    pub(super) fn pads(
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

    pub(super) fn act(&mut self, kind: ActKind) -> Result<()> {
        let x = self.net_input(0)?;
        let slot = self.unique_name();
        let id = self.push(slot.clone(), DescOp::Act { slot, kind }, &[x])?;
        self.set_output(Val::Net(id))
    }

    pub(super) fn clip(&mut self) -> Result<()> {
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

    pub(super) fn pool(&mut self) -> Result<()> {
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

    pub(super) fn add(&mut self) -> Result<()> {
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

    pub(super) fn gemm(&mut self) -> Result<()> {
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

    pub(super) fn pad(&mut self) -> Result<()> {
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
        let base = self.base_name();
        self.set_output(Val::Padded(x, [p[0], p[1], p[2], p[3]], base))
    }

    pub(super) fn resize(&mut self) -> Result<()> {
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
