//! Shape inference of the secure-model graph (DESIGN §3): the output side of a window, the
//! weight length of a node and the output shape of every op, with checked arithmetic (sizes
//! come from files and command lines).

use super::{MAX_ACTIVATION_ELEMENTS, MAX_WEIGHT_ELEMENTS, Op, Shape};
use crate::block::BlockSize;

/// Output side of a convolution or pooling window (PyTorch's floor formula), `None` when the
/// window does not fit, a parameter is zero, or the result exceeds `u32`. Checked arithmetic:
/// sizes come from files and command lines.
pub fn window_out(size: u32, kernel: u32, stride: u32, padding: u32, dilation: u32) -> Option<u32> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let span = u64::from(dilation) * (u64::from(kernel) - 1) + 1;
    let padded = u64::from(size) + 2 * u64::from(padding);
    if padded < span {
        return None;
    }
    u32::try_from((padded - span) / u64::from(stride) + 1).ok()
}

/// Elements of the weight tensor of a `Conv2d` (`out · in/groups · kh · kw`) or `Linear`
/// (`out · in`) node with input shape `input` and output channels `out`, if it has one and
/// the product fits in `u64`.
pub fn weight_len(op: &Op, input: Shape, out: u32) -> Option<u64> {
    match op {
        Op::Conv2d { kernel, groups, .. } => u64::from(out)
            .checked_mul(u64::from(input[0] / (*groups).max(1)))?
            .checked_mul(u64::from(kernel[0]))?
            .checked_mul(u64::from(kernel[1])),
        Op::Linear { .. } => u64::from(out).checked_mul(u64::from(input[0])),
        _ => None,
    }
}

/// The output shape of `op` on inputs of shapes `inputs` (arity already checked), or why it
/// has none. `recorded` is the node's own shape, read only where the op does not determine it
/// (the input's shape, and the output channels of `Conv2d` and `Linear`). A new op adds its
/// arm here, and is then checked wherever a model is loaded or run.
pub fn infer_shape(
    op: &Op,
    inputs: &[Shape],
    recorded: Shape,
) -> std::result::Result<Shape, String> {
    let positive = |what: &str, v: [u32; 2]| {
        if v.contains(&0) {
            Err(format!("{what} {v:?} has a zero side"))
        } else {
            Ok(())
        }
    };
    let first = inputs.first().copied().unwrap_or(recorded);
    let [c, h, w] = first;
    let shape = match op {
        Op::Input => recorded,
        Op::Conv2d { .. } => {
            let geo = op.conv_geometry().expect("a convolution");
            let (kernel, stride, padding, dilation, groups) = (
                geo.kernel,
                geo.stride,
                geo.padding,
                geo.dilation,
                geo.groups,
            );
            positive("kernel", kernel)?;
            positive("stride", stride)?;
            positive("dilation", dilation)?;
            let out = recorded[0];
            if groups == 0 || !c.is_multiple_of(groups) || !out.is_multiple_of(groups) {
                return Err(format!(
                    "{c} -> {out} channels cannot form {groups} groups (groups must divide both)"
                ));
            }
            let oh = window_out(h, kernel[0], stride[0], padding[0], dilation[0]);
            let ow = window_out(w, kernel[1], stride[1], padding[1], dilation[1]);
            let (Some(oh), Some(ow)) = (oh, ow) else {
                return Err(format!(
                    "kernel {kernel:?} (padding {padding:?}, dilation {dilation:?}) does not fit a {h}x{w} input"
                ));
            };
            [out, oh, ow]
        }
        Op::Linear { .. } => {
            if (h, w) != (1, 1) {
                return Err(format!(
                    "a linear layer needs a [C, 1, 1] input, got {first:?}"
                ));
            }
            [recorded[0], 1, 1]
        }
        Op::BlockRelu { blocks, .. } => {
            if blocks.len() != c as usize {
                return Err(format!("{} block sizes for {c} channels", blocks.len()));
            }
            if let Some(ch) = blocks.iter().position(|b| {
                matches!(
                    b,
                    BlockSize::Patch { h: 0, .. } | BlockSize::Patch { w: 0, .. }
                )
            }) {
                return Err(format!("channel {ch}: zero-sized patch {}", blocks[ch]));
            }
            first
        }
        Op::Relu6 { .. } => first,
        Op::AvgPool { .. } | Op::MaxPool { .. } => {
            let geo = op.pool_geometry().expect("a pooling op");
            let (oh, ow) = geo.output_hw(h, w)?;
            [c, oh, ow]
        }
        Op::GlobalAvgPool => [c, 1, 1],
        Op::Add => {
            if let Some(s) = inputs.iter().find(|&&s| s != first) {
                return Err(format!("cannot add shapes {first:?} and {s:?}"));
            }
            first
        }
        Op::Concat => {
            let mut channels = 0u32;
            for s in inputs {
                if (s[1], s[2]) != (h, w) {
                    return Err(format!(
                        "cannot concatenate {h}x{w} and {}x{} maps",
                        s[1], s[2]
                    ));
                }
                channels = channels
                    .checked_add(s[0])
                    .ok_or_else(|| "too many channels to concatenate".to_string())?;
            }
            [channels, h, w]
        }
        Op::Broadcast { height, width } => {
            if (h, w) != (1, 1) {
                return Err(format!("broadcast needs a [C, 1, 1] input, got {first:?}"));
            }
            [c, *height, *width]
        }
        Op::Pad { pads } => {
            let grow = |size: u32, a: u32, b: u32| {
                size.checked_add(a)
                    .and_then(|v| v.checked_add(b))
                    .ok_or_else(|| format!("padding {pads:?} overflows a {h}x{w} map"))
            };
            [c, grow(h, pads[0], pads[2])?, grow(w, pads[1], pads[3])?]
        }
        Op::Resize { height, width, .. } => [c, *height, *width],
    };
    if shape.contains(&0) {
        return Err(format!("shape {shape:?} has a zero side"));
    }
    // Three u32 factors fit in u128.
    let elements = shape.iter().map(|&d| u128::from(d)).product::<u128>();
    if elements > u128::from(MAX_ACTIVATION_ELEMENTS) {
        return Err(format!(
            "shape {shape:?} is too large ({elements} elements, at most {MAX_ACTIVATION_ELEMENTS})"
        ));
    }
    if let Some(n) = weight_len(op, first, shape[0])
        && n > MAX_WEIGHT_ELEMENTS
    {
        return Err(format!(
            "weight of {n} elements is too large (at most {MAX_WEIGHT_ELEMENTS})"
        ));
    }
    Ok(shape)
}
