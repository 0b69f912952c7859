//! The tch networks of the ResNets (feature `torch`), registered in `knapsec-nn`.
//!
//! Both classifiers of this crate are the `knapsec-nn` interpreter ([`DescNet`]) running the
//! plan's description ([`ResNetPlan::describe`]); its distortion fast path starts every variant
//! at the convolution that reads the slot. Every ReLU is its own slot (`layer{R}_{B}_{K}`), as
//! in the reference's `MyResNet` / `ResNet_CIFAR_V2` backbones.
//!
//! [`ResNetBackbone`] is the tch ResNet backbone that `knapsec-arch-deeplab` runs (dilated)
//! under its ASPP head: the stem (one convolution, or the V1c deep stem of three, each with
//! its slot), the optional pooling, and the residual units, from a [`ResNetPlan`].

use crate::plan::{RESNET18_CIFAR, RESNET50_IMAGENET, ResNetPlan, StemPool, import_key};
use knapsec_core::ArchOptions;
use knapsec_nn::slots::{SlotId, SlotKind, Slots};
use knapsec_nn::{ConvBn, DescNet, Result};
use std::collections::HashMap;
use tch::Tensor;
use tch::nn;

#[derive(Debug)]
struct ResUnit {
    convs: Vec<ConvBn>,
    /// One slot per ReLU: after each inner conv but the last, and after the addition.
    slots: Vec<SlotId>,
    downsample: Option<ConvBn>,
}

/// The ResNet backbone of a plan as tch modules, its activations in the [`Slots`] of the network
/// that holds it: the stem's slots live in network block `0`, unit `i`'s in block `i + 1`.
#[derive(Debug)]
pub struct ResNetBackbone {
    pool: StemPool,
    stem: Vec<(ConvBn, SlotId)>,
    units: Vec<ResUnit>,
}

impl ResNetBackbone {
    /// Builds the backbone of `plan` under `root` (variables get the plan's `state_dict` names)
    /// and adds one slot per ReLU to `slots`.
    pub fn new(root: &nn::Path, plan: &ResNetPlan, slots: &mut Slots) -> Result<Self> {
        let mut stem = Vec::new();
        for s in plan.stem_convs() {
            let (cout, k, st, p) = (s.layer.channels, s.kernel, s.stride, s.padding);
            let conv = ConvBn::new(root, &s.conv, &s.bn, s.in_channels, cout, k, st, p, 1, 1);
            stem.push((conv, slots.add(s.layer, 0, SlotKind::Relu)?));
        }
        let mut units = Vec::with_capacity(plan.units.len());
        for (i, u) in plan.units.iter().enumerate() {
            let m = &u.module;
            let mut cin = u.in_channels;
            let mut convs = Vec::new();
            for (k, (cout, size, stride, d)) in u.convs(plan.kind).into_iter().enumerate() {
                let (conv, bn) = (format!("{m}.conv{}", k + 1), format!("{m}.bn{}", k + 1));
                let pad = if size == 1 { 0 } else { d };
                convs.push(ConvBn::new(
                    root, &conv, &bn, cin, cout, size, stride, pad, d, 1,
                ));
                cin = cout;
            }
            let downsample = u.downsample.then(|| {
                let (conv, bn) = (format!("{m}.downsample.0"), format!("{m}.downsample.1"));
                let (cin, cout) = (u.in_channels, u.out_channels);
                ConvBn::new(root, &conv, &bn, cin, cout, 1, u.stride, 0, 1, 1)
            });
            let unit_slots = plan
                .unit_layers(u)
                .into_iter()
                .map(|layer| slots.add(layer, i + 1, SlotKind::Relu))
                .collect::<Result<Vec<_>>>()?;
            units.push(ResUnit {
                convs,
                slots: unit_slots,
                downsample,
            });
        }
        Ok(ResNetBackbone {
            pool: plan.pool,
            stem,
            units,
        })
    }

    /// Number of residual units.
    pub fn num_units(&self) -> usize {
        self.units.len()
    }

    fn after_stem(&self, y: Tensor) -> Tensor {
        match self.pool {
            StemPool::None => y,
            StemPool::Max => y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false),
            StemPool::Avg => y.avg_pool2d([3, 3], [2, 2], [1, 1], false, true, None::<i64>),
        }
    }

    /// The stem block: its convolutions with their slots, then the pooling.
    pub fn run_stem(&self, slots: &Slots, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for (conv, slot) in &self.stem {
            y = slots.run(*slot, &conv.forward(&y, train));
        }
        self.after_stem(y)
    }

    /// Residual unit `ui` (0-based) on its input `x`.
    pub fn run_unit(&self, slots: &Slots, ui: usize, x: &Tensor, train: bool) -> Tensor {
        let unit = &self.units[ui];
        let y = self.branch_from(slots, ui, 0, unit.convs[0].forward(x, train), train);
        let shortcut = match &unit.downsample {
            Some(d) => d.forward(x, train),
            None => x.shallow_clone(),
        };
        slots.run(unit.slots[unit.convs.len() - 1], &(y + shortcut))
    }

    /// The residual branch of unit `ui` from `y`, the output of its convolution `k0` (after BN),
    /// to the end of the branch (before the addition).
    fn branch_from(&self, slots: &Slots, ui: usize, k0: usize, y: Tensor, train: bool) -> Tensor {
        let unit = &self.units[ui];
        let n = unit.convs.len();
        let mut y = y;
        for k in k0..n {
            if k > k0 {
                y = unit.convs[k].forward(&y, train);
            }
            if k + 1 < n {
                y = slots.run(unit.slots[k], &y);
            }
        }
        y
    }
}

/// The network of ResNet classifier `arch` at `options` under `root`: the interpreter
/// ([`DescNet`]) running [`ResNetPlan::describe`], with OpenMMLab `state_dict` names
/// (torchvision checkpoints load through [`import_key`]).
pub fn build(arch: &str, options: &ArchOptions, root: &nn::Path) -> Result<DescNet> {
    let desc = ResNetPlan::new(arch, options)?.describe()?;
    Ok(DescNet::new(desc, options, root, HashMap::new())?.with_import_fn(import_key))
}

knapsec_nn::register_net!(RESNET18_CIFAR, "knapsec-arch-resnet", |options, root| {
    build(RESNET18_CIFAR, options, root)
});
knapsec_nn::register_net!(RESNET50_IMAGENET, "knapsec-arch-resnet", |options, root| {
    build(RESNET50_IMAGENET, options, root)
});
