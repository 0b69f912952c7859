//! Shape inference of a network description (DESIGN §4 "One network description"): the
//! output side of a convolution or pooling window with asymmetric pads and ceil mode, and the
//! output shape of every op as a node is pushed, with checked arithmetic (sizes come from
//! files).

use super::{DescOp, NetDesc};
use crate::error::Result;
use crate::graph::Shape;

/// Output size of a pooling or convolution window along one axis; `None` when the window
/// does not fit or a size overflows. `ceil` follows PyTorch and ONNX: the size is rounded
/// up, but a last window that would start in the bottom/right padding is dropped.
pub fn window_out_padded(
    size: u32,
    kernel: u32,
    stride: u32,
    pad_begin: u32,
    pad_end: u32,
    dilation: u32,
    ceil: bool,
) -> Option<u32> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let span = u64::from(dilation) * (u64::from(kernel) - 1) + 1;
    let padded = u64::from(size) + u64::from(pad_begin) + u64::from(pad_end);
    if padded < span {
        return None;
    }
    let stride = u64::from(stride);
    let mut out = if ceil {
        (padded - span).div_ceil(stride) + 1
    } else {
        (padded - span) / stride + 1
    };
    if ceil && (out - 1) * stride >= u64::from(size) + u64::from(pad_begin) {
        out -= 1;
    }
    u32::try_from(out).ok()
}

impl NetDesc {
    pub(super) fn infer(&self, name: &str, op: &DescOp, shapes: &[Shape]) -> Result<Shape> {
        let arity = match op {
            DescOp::Input => return Err(self.err(name, "only node 0 is the input")),
            DescOp::Add | DescOp::Concat => None,
            _ => Some(1),
        };
        match arity {
            Some(a) if shapes.len() != a => {
                return Err(self.err(
                    name,
                    format!("{} takes {a} input, got {}", op.kind(), shapes.len()),
                ));
            }
            None if shapes.len() < 2 => {
                return Err(self.err(name, format!("{} needs at least two inputs", op.kind())));
            }
            _ => {}
        }
        let [c, h, w] = shapes[0];
        let window = |k: [u32; 2], s: [u32; 2], p: [u32; 4], d: [u32; 2], ceil: bool| match (
            window_out_padded(h, k[0], s[0], p[0], p[2], d[0], ceil),
            window_out_padded(w, k[1], s[1], p[1], p[3], d[1], ceil),
        ) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(self.err(
                name,
                format!("window {k:?} (stride {s:?}, pads {p:?}) does not fit a {h}x{w} input"),
            )),
        };
        Ok(match op {
            DescOp::Input => unreachable!("refused above"),
            DescOp::Conv {
                out_channels,
                kernel,
                stride,
                pads,
                dilation,
                groups,
                ..
            } => {
                if *groups == 0
                    || *out_channels == 0
                    || c % groups != 0
                    || out_channels % groups != 0
                {
                    return Err(self.err(
                        name,
                        format!("{c} -> {out_channels} channels cannot form {groups} groups"),
                    ));
                }
                let (oh, ow) = window(*kernel, *stride, *pads, *dilation, false)?;
                [*out_channels, oh, ow]
            }
            DescOp::BatchNorm { eps, .. } => {
                if !(eps.is_finite() && *eps >= 0.0) {
                    return Err(self.err(name, format!("BatchNorm epsilon {eps} is invalid")));
                }
                shapes[0]
            }
            DescOp::Act { .. } | DescOp::Add => {
                if let Some(s) = shapes.iter().find(|s| **s != shapes[0]) {
                    return Err(
                        self.err(name, format!("cannot add shapes {:?} and {s:?}", shapes[0]))
                    );
                }
                shapes[0]
            }
            DescOp::MaxPool {
                kernel,
                stride,
                pads,
                ceil_mode,
            }
            | DescOp::AvgPool {
                kernel,
                stride,
                pads,
                ceil_mode,
                ..
            } => {
                if pads[0] >= kernel[0]
                    || pads[2] >= kernel[0]
                    || pads[1] >= kernel[1]
                    || pads[3] >= kernel[1]
                {
                    return Err(self.err(
                        name,
                        format!("pooling pads {pads:?} must be smaller than the window {kernel:?}"),
                    ));
                }
                let (oh, ow) = window(*kernel, *stride, *pads, [1, 1], *ceil_mode)?;
                [c, oh, ow]
            }
            DescOp::Pad { pads } => {
                let grow = |size: u32, a: u32, b: u32| {
                    size.checked_add(a)
                        .and_then(|v| v.checked_add(b))
                        .ok_or_else(|| self.err(name, format!("padding {pads:?} overflows")))
                };
                [c, grow(h, pads[0], pads[2])?, grow(w, pads[1], pads[3])?]
            }
            DescOp::GlobalAvgPool => [c, 1, 1],
            DescOp::Concat => {
                let mut total = 0u32;
                for s in shapes {
                    if (s[1], s[2]) != (h, w) {
                        return Err(self.err(
                            name,
                            format!("cannot concatenate {h}x{w} and {}x{} maps", s[1], s[2]),
                        ));
                    }
                    total = total
                        .checked_add(s[0])
                        .ok_or_else(|| self.err(name, "too many channels to concatenate"))?;
                }
                [total, h, w]
            }
            DescOp::Flatten => {
                let n = c
                    .checked_mul(h)
                    .and_then(|x| x.checked_mul(w))
                    .ok_or_else(|| self.err(name, "flattened size overflows"))?;
                [n, 1, 1]
            }
            DescOp::Linear { out, .. } => {
                if (h, w) != (1, 1) {
                    return Err(self.err(
                        name,
                        format!("a linear layer needs a [C, 1, 1] input, got {h}x{w}"),
                    ));
                }
                if *out == 0 {
                    return Err(self.err(name, "a linear layer needs at least one output"));
                }
                [*out, 1, 1]
            }
            DescOp::Dropout { p } => {
                if !(0.0..1.0).contains(p) {
                    return Err(self.err(name, format!("dropout probability {p} is not in [0, 1)")));
                }
                shapes[0]
            }
            DescOp::Resize { height, width, .. } => {
                if *height == 0 || *width == 0 {
                    return Err(self.err(name, "resize to a zero size"));
                }
                [c, *height, *width]
            }
        })
    }
}
