//! Helpers for builders of network descriptions (DESIGN §4 "One network description"): the
//! pieces every built-in is made of (digest §4.2–§4.5), pushed onto a
//! [`knapsec_core::netdesc::NetDesc`] under PyTorch `state_dict` names.

use knapsec_core::Result;
use knapsec_core::netdesc::{ActKind, DescOp, NetDesc};

/// BatchNorm epsilon of every built-in (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;

/// A square convolution named `module` (the node too) on node `x` with `out` channels,
/// `[kernel, stride, padding, dilation, groups]` and a bias when `bias`.
pub fn conv(
    d: &mut NetDesc,
    module: &str,
    x: usize,
    out: u32,
    [k, stride, pad, dilation, groups]: [u32; 5],
    bias: bool,
) -> Result<usize> {
    let op = DescOp::Conv {
        module: module.into(),
        bias,
        out_channels: out,
        kernel: [k, k],
        stride: [stride, stride],
        pads: [pad; 4],
        dilation: [dilation, dilation],
        groups,
    };
    d.push(module, op, &[x])
}

/// [`conv`] without bias named `conv`, followed by its BatchNorm named `bn` (the nodes are
/// named after their modules). Returns the BatchNorm node.
pub fn conv_bn(
    d: &mut NetDesc,
    conv: &str,
    bn: &str,
    x: usize,
    out: u32,
    geometry: [u32; 5],
) -> Result<usize> {
    let c = self::conv(d, conv, x, out, geometry, false)?;
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

/// A fully connected layer `module` (the node too) with bias on node `x`, `out` outputs.
pub fn linear(d: &mut NetDesc, module: &str, x: usize, out: u32) -> Result<usize> {
    let op = DescOp::Linear {
        module: module.into(),
        bias: true,
        out,
    };
    d.push(module, op, &[x])
}

/// A ReLU in slot `slot` on node `x`.
pub fn relu(d: &mut NetDesc, slot: &str, x: usize) -> Result<usize> {
    act(d, slot, x, ActKind::Relu)
}
