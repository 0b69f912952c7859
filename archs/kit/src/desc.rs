//! Helpers for builders of network descriptions (DESIGN §4 "One network description"): the
//! pieces every built-in is made of (digest §4.2–§4.5), pushed onto a
//! [`knapsec_core::netdesc::NetDesc`] under PyTorch `state_dict` names.

use knapsec_core::Result;
use knapsec_core::netdesc::{ActKind, DescOp, NetDesc};

/// BatchNorm epsilon of every built-in (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;

/// A square convolution without bias named `conv` on node `x` with `out` channels and
/// `[kernel, stride, padding, dilation, groups]`, followed by its BatchNorm named `bn`; the
/// nodes are named after their modules. Returns the BatchNorm node.
pub fn conv_bn(
    d: &mut NetDesc,
    conv: &str,
    bn: &str,
    x: usize,
    out: u32,
    [k, stride, pad, dilation, groups]: [u32; 5],
) -> Result<usize> {
    let op = DescOp::Conv {
        module: conv.into(),
        bias: false,
        out_channels: out,
        kernel: [k, k],
        stride: [stride, stride],
        pads: [pad; 4],
        dilation: [dilation, dilation],
        groups,
    };
    let c = d.push(conv, op, &[x])?;
    let op = DescOp::BatchNorm {
        module: bn.into(),
        eps: BN_EPS,
    };
    d.push(bn, op, &[c])
}

/// The activation `kind` in slot `slot` on node `x` (the node is named after the slot).
pub fn act(d: &mut NetDesc, slot: &str, x: usize, kind: ActKind) -> Result<usize> {
    let op = DescOp::Act {
        slot: slot.into(),
        kind,
    };
    d.push(slot, op, &[x])
}

/// A ReLU in slot `slot` on node `x`.
pub fn relu(d: &mut NetDesc, slot: &str, x: usize) -> Result<usize> {
    act(d, slot, x, ActKind::Relu)
}
