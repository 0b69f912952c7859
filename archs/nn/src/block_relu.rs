//! The plaintext block ReLU (digest §1.1), the torch module every stage swaps into a ReLU slot.
//!
//! One entry per channel ([`BlockSize`]):
//! * `Patch { h, w }`: patches tile the map from the top-left corner with stride = patch size;
//!   ragged right/bottom edges form partial patches. Each patch gets one sign, that of the mean
//!   of its valid pixels (strictly `> 0`), broadcast to every pixel of the patch: `y = x` where
//!   the mean is positive, else 0. `(1, 1)` is an ordinary ReLU. Patches larger than the map
//!   are allowed (one patch covers the whole map).
//! * `Identity`: the channel passes through; `Zero`: the channel outputs 0.
//!
//! The output is `mask · x` with the mask computed without gradient, so the gradient with
//! respect to `x` is the mask (the reference's straight-through behaviour).
//!
//! Channels sharing a patch size are processed together: one `index_select`, one
//! `avg_pool2d(ceil_mode)` for the patch means, one expand-and-crop to broadcast the signs; the
//! per-group masks are concatenated and put back into channel order with one `index_select`.
//! Uniform layers (every channel the same) skip the gathers. On the CPU the mask comes from one
//! kernel instead ([`crate::block_mask`]), whatever the mixture.

use crate::block_mask::{self, ChannelOp};
use crate::error::{NnError, Result};
use knapsec_core::BlockSize;
use std::collections::BTreeMap;
use tch::Tensor;

/// How the channels of a layer are grouped.
#[derive(Debug)]
enum Plan {
    /// Every channel passes through.
    Identity,
    /// Every channel is an ordinary ReLU.
    Relu,
    /// Every channel is zero.
    Zero,
    /// Every channel has the same patch `(h, w)` (not `(1, 1)`).
    Patch(i64, i64),
    /// A mixture: the groups' masks are concatenated in group order, then `inverse` restores
    /// channel order.
    Mixed { groups: Vec<Group>, inverse: Tensor },
}

#[derive(Debug)]
struct Group {
    kind: GroupKind,
    channels: Tensor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum GroupKind {
    Patch(i64, i64),
    Relu,
    Zero,
    Identity,
}

/// A block ReLU over a layer of `C` channels with one [`BlockSize`] per channel.
#[derive(Debug)]
pub struct BlockRelu {
    blocks: Vec<BlockSize>,
    ops: Vec<ChannelOp>,
    plan: Plan,
}

fn kind_of(b: BlockSize) -> GroupKind {
    match b {
        BlockSize::Patch { h: 1, w: 1 } => GroupKind::Relu,
        BlockSize::Patch { h, w } => GroupKind::Patch(i64::from(h), i64::from(w)),
        BlockSize::Identity => GroupKind::Identity,
        BlockSize::Zero => GroupKind::Zero,
    }
}

/// Mask of one patch group: sign of each patch mean, broadcast to the patch and cropped to H×W.
fn patch_mask(x: &Tensor, bh: i64, bw: i64) -> Tensor {
    let (n, c, h, w) = x.size4().expect("block ReLU input is 4-D");
    let means = x.avg_pool2d([bh, bw], [bh, bw], [0, 0], true, true, None::<i64>);
    let (_, _, hb, wb) = means.size4().expect("pooled map is 4-D");
    let signs = means.gt(0.0).to_kind(x.kind());
    let full = signs
        .view([n, c, hb, 1, wb, 1])
        .expand([n, c, hb, bh, wb, bw], false)
        .reshape([n, c, hb * bh, wb * bw]);
    if hb * bh == h && wb * bw == w {
        full
    } else {
        full.narrow(2, 0, h).narrow(3, 0, w)
    }
}

impl BlockRelu {
    /// A block ReLU with one entry per channel. Patch sides of 0 are refused.
    pub fn new(blocks: Vec<BlockSize>) -> Result<Self> {
        for (c, b) in blocks.iter().enumerate() {
            if let BlockSize::Patch { h, w } = *b
                && (h == 0 || w == 0)
            {
                return Err(NnError::Core(knapsec_core::CoreError::BadChannel {
                    layer: "(block ReLU)".into(),
                    channel: c,
                    reason: format!("zero-sized patch {h}x{w}"),
                }));
            }
        }
        let mut by_kind: BTreeMap<GroupKind, Vec<i64>> = BTreeMap::new();
        for (c, b) in blocks.iter().enumerate() {
            by_kind.entry(kind_of(*b)).or_default().push(c as i64);
        }
        let plan = if by_kind.len() <= 1 {
            match by_kind
                .keys()
                .next()
                .copied()
                .unwrap_or(GroupKind::Identity)
            {
                GroupKind::Identity => Plan::Identity,
                GroupKind::Relu => Plan::Relu,
                GroupKind::Zero => Plan::Zero,
                GroupKind::Patch(h, w) => Plan::Patch(h, w),
            }
        } else {
            let mut order: Vec<i64> = Vec::with_capacity(blocks.len());
            let mut groups = Vec::with_capacity(by_kind.len());
            for (kind, channels) in by_kind {
                order.extend_from_slice(&channels);
                groups.push(Group {
                    kind,
                    channels: Tensor::from_slice(&channels),
                });
            }
            let mut inverse = vec![0i64; blocks.len()];
            for (pos, &c) in order.iter().enumerate() {
                inverse[c as usize] = pos as i64;
            }
            Plan::Mixed {
                groups,
                inverse: Tensor::from_slice(&inverse),
            }
        };
        let ops = blocks.iter().map(|&b| ChannelOp::of(b)).collect();
        Ok(BlockRelu { blocks, ops, plan })
    }

    /// The block size of every channel.
    pub fn blocks(&self) -> &[BlockSize] {
        &self.blocks
    }

    /// Number of channels this module expects.
    pub fn channels(&self) -> usize {
        self.blocks.len()
    }

    /// The mask `m` (0/1, same shape and kind as `x`, no gradient) such that the output is `m · x`.
    pub fn mask(&self, x: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let x = x.detach();
        match &self.plan {
            Plan::Identity => x.ones_like(),
            Plan::Relu => x.gt(0.0).to_kind(x.kind()),
            Plan::Zero => x.zeros_like(),
            _ if x.device() == tch::Device::Cpu => {
                block_mask::mask(&x, &self.ops).unwrap_or_else(|| self.mask_by_tensor_ops(&x))
            }
            _ => self.mask_by_tensor_ops(&x),
        }
    }

    /// [`Self::mask`] by libtorch operations (any device and kind): one group of operations
    /// per distinct patch size.
    fn mask_by_tensor_ops(&self, x: &Tensor) -> Tensor {
        match &self.plan {
            Plan::Identity => x.ones_like(),
            Plan::Relu => x.gt(0.0).to_kind(x.kind()),
            Plan::Zero => x.zeros_like(),
            Plan::Patch(h, w) => patch_mask(x, *h, *w),
            Plan::Mixed { groups, inverse } => {
                let device = x.device();
                let parts: Vec<Tensor> = groups
                    .iter()
                    .map(|g| {
                        let xs = x.index_select(1, &g.channels.to_device(device));
                        match g.kind {
                            GroupKind::Patch(h, w) => patch_mask(&xs, h, w),
                            GroupKind::Relu => xs.gt(0.0).to_kind(x.kind()),
                            GroupKind::Zero => xs.zeros_like(),
                            GroupKind::Identity => xs.ones_like(),
                        }
                    })
                    .collect();
                Tensor::cat(&parts, 1).index_select(1, &inverse.to_device(device))
            }
        }
    }

    /// Applies the block ReLU to `x` of shape `[N, C, H, W]`.
    ///
    /// # Errors
    /// When `x` is not 4-D or its channel count differs from the module's.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        if size.len() != 4 || size[1] != self.blocks.len() as i64 {
            return Err(NnError::WrongChannelCount {
                layer: format!("(block ReLU on an input of shape {size:?})"),
                expected: self.blocks.len(),
                found: size.get(1).copied().unwrap_or(0) as usize,
            });
        }
        Ok(self.forward_unchecked(x))
    }

    /// [`Self::forward`] without the shape check (panics inside libtorch on a mismatch).
    pub fn forward_unchecked(&self, x: &Tensor) -> Tensor {
        match &self.plan {
            Plan::Identity => x.shallow_clone(),
            Plan::Relu => x.relu(),
            _ => x * self.mask(x),
        }
    }
}

/// Applies an ordinary ReLU6: `min(max(x, 0), 6)`.
pub fn relu6(x: &Tensor) -> Tensor {
    x.clamp(0.0, 6.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn p(h: u32, w: u32) -> BlockSize {
        BlockSize::Patch { h, w }
    }

    /// Straightforward per-pixel reference: loops over patches, as the digest describes.
    fn naive(x: &[f32], c_n: usize, h: usize, w: usize, blocks: &[BlockSize]) -> Vec<f32> {
        let mut y = x.to_vec();
        for (c, b) in blocks.iter().enumerate() {
            let at = |i: usize, j: usize| c * h * w + i * w + j;
            match *b {
                BlockSize::Identity => {}
                BlockSize::Zero => (0..h * w).for_each(|k| y[c * h * w + k] = 0.0),
                BlockSize::Patch { h: bh, w: bw } => {
                    let (bh, bw) = (bh as usize, bw as usize);
                    for i0 in (0..h).step_by(bh) {
                        for j0 in (0..w).step_by(bw) {
                            let (i1, j1) = ((i0 + bh).min(h), (j0 + bw).min(w));
                            let s: f32 = (i0..i1)
                                .flat_map(|i| (j0..j1).map(move |j| (i, j)))
                                .map(|(i, j)| x[at(i, j)])
                                .sum();
                            if s <= 0.0 {
                                (i0..i1).for_each(|i| (j0..j1).for_each(|j| y[at(i, j)] = 0.0));
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(y.len(), c_n * h * w);
        y
    }

    /// Patches larger than the map, 1×N and N×1, ragged edges, identity and zero in one layer.
    fn mixed() -> Vec<BlockSize> {
        vec![
            p(1, 1),
            p(3, 2),
            BlockSize::Identity,
            p(3, 2),
            BlockSize::Zero,
            p(9, 9),
            p(1, 5),
            p(7, 1),
        ]
    }

    #[test]
    fn matches_a_naive_loop() {
        let (h, w) = (7, 5);
        let cases = vec![
            vec![p(2, 2); 3],
            mixed(),
            vec![BlockSize::Identity; 2],
            vec![BlockSize::Zero; 2],
            vec![BlockSize::RELU; 2],
        ];
        let mut rng = crate::random::seeded(1);
        for blocks in cases {
            let c = blocks.len();
            let x = crate::random::randn(
                &mut rng,
                &[1, c as i64, h, w],
                (Kind::Float, tch::Device::Cpu),
            );
            let xs: Vec<f32> = Vec::try_from(x.flatten(0, -1)).unwrap();
            let br = BlockRelu::new(blocks.clone()).unwrap();
            let y: Vec<f32> = Vec::try_from(br.forward(&x).unwrap().flatten(0, -1)).unwrap();
            assert_eq!(
                y,
                naive(&xs, c, h as usize, w as usize, &blocks),
                "{blocks:?}"
            );
        }
    }

    #[test]
    fn cpu_kernel_equals_the_tensor_ops() {
        let mut mixed = mixed();
        mixed.push(p(2, 4));
        let mut rng = crate::random::seeded(2);
        for kind in [Kind::Float, Kind::Double] {
            for (h, w) in [(7, 5), (8, 8), (1, 1), (13, 3)] {
                let br = BlockRelu::new(mixed.clone()).unwrap();
                let x = crate::random::randn(&mut rng, &[3, 9, h, w], (kind, tch::Device::Cpu));
                // a non-contiguous input takes the kernel path too
                let xt = x.transpose(2, 3).contiguous().transpose(2, 3);
                let want = br.mask_by_tensor_ops(&x);
                assert!(br.mask(&x).equal(&want), "{kind:?} {h}x{w}");
                assert!(br.mask(&xt).equal(&want), "{kind:?} {h}x{w} strided");
            }
        }
    }

    #[test]
    fn gradient_is_the_mask() {
        let blocks = vec![
            p(2, 3),
            BlockSize::Identity,
            BlockSize::RELU,
            BlockSize::Zero,
        ];
        let x = crate::random::randn(
            &mut crate::random::seeded(3),
            &[2, 4, 5, 5],
            (Kind::Float, tch::Device::Cpu),
        )
        .set_requires_grad(true);
        let br = BlockRelu::new(blocks).unwrap();
        let y = br.forward(&x).unwrap();
        y.sum(Kind::Float).backward();
        let mask = br.mask(&x);
        assert_eq!(f64::try_from((x.grad() - &mask).abs().max()).unwrap(), 0.0);
        // identity channel: gradient 1 everywhere; zero channel: 0.
        assert_eq!(f64::try_from(x.grad().select(1, 1).min()).unwrap(), 1.0);
        assert_eq!(f64::try_from(x.grad().select(1, 3).max()).unwrap(), 0.0);
    }

    #[test]
    fn wrong_channel_count_is_an_error() {
        let br = BlockRelu::new(vec![BlockSize::RELU; 3]).unwrap();
        let x = Tensor::zeros([1, 4, 2, 2], (Kind::Float, tch::Device::Cpu));
        assert!(matches!(
            br.forward(&x),
            Err(NnError::WrongChannelCount {
                expected: 3,
                found: 4,
                ..
            })
        ));
        assert!(
            br.forward(&Tensor::zeros([4, 2, 2], (Kind::Float, tch::Device::Cpu)))
                .is_err()
        );
    }
}
