//! The share-local parts of the graph's ops, the same for every executor over additive
//! shares (DESIGN §5, digest §6.11, §6.14): the local ops (average and global average pooling
//! by floor division of each share, add, concat, broadcast, zero padding, nearest resizing,
//! and bilinear resizing with public weights truncated like a linear layer), the gathering and scattering
//! around a block ReLU's selections, ReLU6's two halves, the candidates of max pooling and of
//! the argmax, the client's input and the reveal of the output. `securenn`'s online
//! phase and the `fss` backend's walks both call them, so both compute the same shares.

use super::plan::NodePlan;
use crate::ctx::Ctx;
use crate::error::{Result, SecureNnError};
use crate::profile::{OpKind, span};
use knapsec_core::backend::PartyOutput;
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{PoolGeometry, ResizeMode, SecureModel};
use knapsec_core::transport::Role;
use knapsec_ring::{
    RingError, RingTensor, TapPadding, fixed, global_sum, pad, resize, window_sums, window_taps,
};

/// A graph shape `[C, H, W]` as tensor dimensions.
pub fn dims(s: [u32; 3]) -> Vec<usize> {
    s.iter().map(|&v| v as usize).collect()
}

/// The index of the last node that reads each node's value (the output node: past the end),
/// so a walk frees every share after its last use.
pub fn last_use(model: &SecureModel) -> Vec<usize> {
    let n = model.nodes.len();
    let mut last = vec![0usize; n];
    for (i, node) in model.nodes.iter().enumerate() {
        for &j in &node.inputs {
            last[j] = i;
        }
    }
    if let Some(l) = last.last_mut() {
        *l = n;
    }
    last
}

/// Runs a local op (average and global average pooling, add, concat, broadcast) on this
/// party's shares of its inputs, or gives an empty share where the party holds no values in
/// this phase (`computing` false); `None` for the ops that need the other parties.
pub fn local(
    node: &NodePlan,
    inputs: &[&RingTensor],
    computing: bool,
) -> Option<std::result::Result<RingTensor, RingError>> {
    if !computing {
        return matches!(
            node,
            NodePlan::AvgPool { .. }
                | NodePlan::GlobalAvgPool { .. }
                | NodePlan::Add
                | NodePlan::Concat
                | NodePlan::Broadcast { .. }
                | NodePlan::Pad { .. }
                | NodePlan::Resize { .. }
        )
        .then(|| Ok(RingTensor::zeros(&[0])));
    }
    let r = match node {
        NodePlan::AvgPool { window, counts } => {
            let _pool = span(OpKind::Pooling);
            window_sums(inputs[0], window).map(|mut s| {
                let plane = counts.len();
                for (k, v) in s.data_mut().iter_mut().enumerate() {
                    *v = (*v as i64).div_euclid(counts[k % plane].max(1) as i64) as u64;
                }
                s
            })
        }
        NodePlan::GlobalAvgPool { count } => {
            let _pool = span(OpKind::Pooling);
            global_sum(inputs[0]).map(|mut s| {
                s.data_mut()
                    .iter_mut()
                    .for_each(|v| *v = (*v as i64).div_euclid(*count as i64) as u64);
                s
            })
        }
        NodePlan::Add => {
            let mut s = inputs[0].clone();
            inputs[1..]
                .iter()
                .try_for_each(|t| s.add_assign(t))
                .map(|()| s)
        }
        NodePlan::Concat => RingTensor::concat_channels(inputs),
        NodePlan::Broadcast { h, w } => inputs[0].broadcast_hw(*h, *w),
        NodePlan::Pad { pads } => pad(inputs[0], *pads),
        NodePlan::Resize {
            h,
            w,
            mode,
            frac_bits,
        } => {
            let _pool = span(OpKind::Pooling);
            resize(inputs[0], *h, *w, *mode, *frac_bits).map(|mut y| {
                if matches!(mode, ResizeMode::Bilinear { .. }) {
                    y.shr_arith_in_place(*frac_bits);
                }
                y
            })
        }
        _ => return None,
    };
    Some(r)
}

/// A block ReLU without patch channels: zero channels are cleared, identity ones kept.
pub fn zero_channels(chans: &[BlockSize], hw: usize, mut x: RingTensor) -> RingTensor {
    for (c, b) in chans.iter().enumerate() {
        if *b == BlockSize::Zero {
            x.data_mut()[c * hw..(c + 1) * hw].fill(0);
        }
    }
    x
}

/// The values a block ReLU selects: its patch channels in order (`pixels` of them).
pub fn patch_values(chans: &[BlockSize], hw: usize, x: &[u64], pixels: usize) -> Vec<u64> {
    let mut v = Vec::with_capacity(pixels);
    for (c, b) in chans.iter().enumerate() {
        if matches!(b, BlockSize::Patch { .. }) {
            v.extend_from_slice(&x[c * hw..(c + 1) * hw]);
        }
    }
    v
}

/// A block ReLU's output: the selected values `y` in the patch channels, zero channels
/// cleared, identity channels from the input `x`.
pub fn scatter_patches(
    chans: &[BlockSize],
    hw: usize,
    x: &RingTensor,
    y: Vec<u64>,
) -> std::result::Result<RingTensor, RingError> {
    if chans.iter().all(|b| matches!(b, BlockSize::Patch { .. })) {
        // Every channel selected: the outputs in order, no copy.
        return RingTensor::from_vec(x.dims(), y);
    }
    let mut out = x.clone();
    let mut k = 0;
    for (c, b) in chans.iter().enumerate() {
        let dst = &mut out.data_mut()[c * hw..(c + 1) * hw];
        match b {
            BlockSize::Patch { .. } => {
                dst.copy_from_slice(&y[k * hw..(k + 1) * hw]);
                k += 1;
            }
            BlockSize::Zero => dst.fill(0),
            BlockSize::Identity => {}
        }
    }
    Ok(out)
}

/// ReLU6's selected values `[x, x − 6]` (`six`: this party's share of the constant).
pub fn relu6_values(x: &[u64], six: u64) -> Vec<u64> {
    let mut v = Vec::with_capacity(2 * x.len());
    v.extend_from_slice(x);
    v.extend(x.iter().map(|a| a.wrapping_sub(six)));
    v
}

/// ReLU6 from the selections of both halves: `ReLU(x) − ReLU(x − 6)`.
pub fn relu6_output(y: &[u64]) -> Vec<u64> {
    let m = y.len() / 2;
    (0..m).map(|k| y[k].wrapping_sub(y[m + k])).collect()
}

/// Max pooling's tournament candidates: one per tap of the window (edge padding), one lane;
/// none where the party holds no values in this phase (`computing` false).
pub fn pool_candidates(
    x: &RingTensor,
    window: &PoolGeometry,
    computing: bool,
) -> std::result::Result<Vec<Vec<Vec<u64>>>, RingError> {
    if !computing {
        return Ok(Vec::new());
    }
    let _pool = span(OpKind::Pooling);
    Ok(window_taps(x, window, TapPadding::Edge)?
        .into_iter()
        .map(|t| vec![t.into_vec()])
        .collect())
}

/// The argmax's tournament candidates: per class its values (planes of `size`) and its index
/// (carried by the client's share, `client`; the other share holds zeros).
pub fn argmax_candidates(share: &[u64], size: usize, client: bool) -> Vec<Vec<Vec<u64>>> {
    share
        .chunks(size)
        .enumerate()
        .map(|(c, v)| vec![v.to_vec(), vec![if client { c as u64 } else { 0 }; size]])
        .collect()
}

/// The client's input encoded at `frac_bits`: present, `C·H·W` values for the graph's input
/// `shape`, all finite; the error names what is wrong.
pub fn client_input(
    ctx: &Ctx<'_>,
    input: Option<&[f32]>,
    shape: [u32; 3],
    frac_bits: u32,
) -> Result<RingTensor> {
    let role = ctx.role;
    let bad = |message: String| SecureNnError::Input { role, message };
    let x = input.ok_or_else(|| bad("the client needs an input".into()))?;
    let numel: usize = shape.iter().map(|&v| v as usize).product();
    if x.len() != numel {
        return Err(bad(format!(
            "input has {} values, the model expects {numel} ({shape:?})",
            x.len()
        )));
    }
    if let Some(k) = x.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("input value {k} is not finite")));
    }
    RingTensor::encode_f32(&dims(shape), x, frac_bits).map_err(|e| ctx.ring_err(e))
}

/// Reveals the output to the client: the server sends its share, the client adds both and
/// learns the labels after the argmax (`labels`) or the decoded logits; server and helper
/// learn nothing.
pub fn reveal(
    ctx: &mut Ctx<'_>,
    share: &[u64],
    labels: bool,
    frac_bits: u32,
) -> Result<PartyOutput> {
    ctx.scope("output", "reveal");
    match ctx.role {
        Role::Server => {
            ctx.send_u64(Role::Client, share)?;
            Ok(PartyOutput::Nothing)
        }
        Role::Helper => Ok(PartyOutput::Nothing),
        Role::Client => {
            let other = ctx.recv_u64(Role::Server, share.len())?;
            let full = share.iter().zip(&other).map(|(a, b)| a.wrapping_add(*b));
            Ok(if labels {
                PartyOutput::Labels(full.map(|v| v as u32).collect())
            } else {
                PartyOutput::Logits(full.map(|v| fixed::decode(v, frac_bits) as f32).collect())
            })
        }
    }
}
