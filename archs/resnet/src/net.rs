//! The tch networks of the ResNets (feature `torch`), registered in `knapsec-nn`.
//!
//! [`ResNetBackbone`] is the one tch ResNet: the stem (one convolution, or the V1c deep stem of
//! three, each with its slot), the optional pooling, and the residual units, from a
//! [`ResNetPlan`]. [`ResNet`], the classifier of both architectures of this crate, runs it as a
//! stem block followed by one block per residual unit; the last block also runs global average
//! pooling and `head.fc`, returning `[N, classes]` logits. `knapsec-arch-deeplab` runs the same
//! backbone (dilated) under its ASPP head. Every ReLU is its own slot (`layer{R}_{B}_{K}`), as in
//! the reference's `MyResNet` / `ResNet_CIFAR_V2` backbones.

use crate::plan::{RESNET18_CIFAR, RESNET50_IMAGENET, ResNetPlan, StemPool};
use knapsec_core::ArchOptions;
use knapsec_nn::net::{BlockNet, BlockNetParts, ChannelChange, input_shape, plan_graph};
use knapsec_nn::slots::{SlotId, SlotKind, Slots};
use knapsec_nn::{ConvBn, Result};
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

/// A ResNet classifier as a block-structured network.
#[derive(Debug)]
pub struct ResNet {
    plan: ResNetPlan,
    backbone: ResNetBackbone,
    fc: nn::Linear,
    /// Name, options, input shape, blocks, slots and graph source.
    parts: BlockNetParts,
}

impl ResNet {
    /// Builds architecture `arch` at `options` under `root` (variables get mmcls names).
    pub fn new(arch: &str, options: &ArchOptions, root: &nn::Path) -> Result<Self> {
        let plan = ResNetPlan::new(arch, options)?;
        let mut slots = Slots::new(plan.arch);
        let backbone = ResNetBackbone::new(root, &plan, &mut slots)?;
        let (last, _) = plan.out_shape();
        let fc = nn::linear(
            root / "head" / "fc",
            last.into(),
            plan.classes.into(),
            Default::default(),
        );
        let parts = BlockNetParts::new(
            plan.arch,
            options.clone(),
            input_shape(plan.input),
            plan.block_names(),
            slots,
            plan_graph(plan.clone(), ResNetPlan::secure_graph),
        );
        Ok(ResNet {
            plan,
            backbone,
            fc,
            parts,
        })
    }

    /// The network's output from block `index`'s output: the head after the last unit.
    fn head(&self, index: usize, out: Tensor) -> Tensor {
        if index == self.backbone.units.len() {
            out.mean_dim([2i64, 3].as_slice(), false, out.kind())
                .apply(&self.fc)
        } else {
            out
        }
    }

    /// The plan the network was built from.
    pub fn plan(&self) -> &ResNetPlan {
        &self.plan
    }

    /// The single stem slot when the stem is one convolution (the classifiers').
    fn stem_slot(&self) -> Option<SlotId> {
        match self.backbone.stem.as_slice() {
            [(_, slot)] => Some(*slot),
            _ => None,
        }
    }
}

impl BlockNet for ResNet {
    knapsec_nn::block_net_parts!(parts);

    fn run_block(&self, index: usize, x: &Tensor, train: bool) -> Tensor {
        let slots = &self.parts.slots;
        if index == 0 {
            return self.backbone.run_stem(slots, x, train);
        }
        let out = self.backbone.run_unit(slots, index - 1, x, train);
        self.head(index, out)
    }

    /// Continues block `index` right after `slot` (distortion passes start at the layer); the
    /// shortcut is computed once on the `N`-image `input` and broadcast over the `V` variants.
    fn run_block_after_slot(
        &self,
        index: usize,
        slot: SlotId,
        act: &Tensor,
        input: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let units = &self.backbone.units;
        let unit = match index {
            0 if Some(slot) == self.stem_slot() => {
                return Ok(self.backbone.after_stem(act.shallow_clone()));
            }
            i if i >= 1 && i <= units.len() => &units[i - 1],
            _ => return knapsec_nn::net::run_block_injected(self, index, slot, act, input, train),
        };
        let Some(pos) = unit.slots.iter().position(|&s| s == slot) else {
            return knapsec_nn::net::run_block_injected(self, index, slot, act, input, train);
        };
        let slots = &self.parts.slots;
        let n = unit.convs.len();
        let out = if pos + 1 == n {
            act.shallow_clone()
        } else {
            let y = self.backbone.branch_from(
                slots,
                index - 1,
                pos + 1,
                unit.convs[pos + 1].forward(act, train),
                train,
            );
            let shortcut = match &unit.downsample {
                Some(d) => d.forward(input, train),
                None => input.shallow_clone(),
            };
            let v = knapsec_nn::net::stacked_variants(self.plan.arch, &y, &shortcut)?;
            let mut grouped = y.size();
            grouped.insert(0, v);
            grouped[1] = shortcut.size()[0];
            let sum =
                (y.view(grouped.as_slice()) + shortcut.unsqueeze(0)).view(y.size().as_slice());
            slots.run(unit.slots[n - 1], &sum)
        };
        Ok(self.head(index, out))
    }

    /// Starts at the convolution that reads the slot's output (the next in its unit, or the
    /// first of the next unit and its downsampling shortcut), which each row only updates by
    /// its changed channel ([`ChannelChange::conv2d`]); `cache` keeps the clean rows'
    /// convolutions. Elsewhere (after a pooling stem, the last unit's output) the default.
    fn forward_after_channel_change(
        &self,
        index: usize,
        slot: SlotId,
        change: &ChannelChange<'_>,
        input: &Tensor,
        cache: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let default = || knapsec_nn::net::forward_stacked(self, index, slot, change, input);
        let units = &self.backbone.units;
        // (unit, its convolution that reads the slot, whether the slot output is the unit's input)
        let (ui, k, unit_input) = if index == 0 {
            if Some(slot) != self.stem_slot()
                || self.plan.pool != StemPool::None
                || units.is_empty()
            {
                return default();
            }
            (0, 0, true)
        } else if index <= units.len() {
            let unit = &units[index - 1];
            match unit.slots.iter().position(|&s| s == slot) {
                Some(pos) if pos + 1 < unit.convs.len() => (index - 1, pos + 1, false),
                Some(_) if index < units.len() => (index, 0, true),
                _ => return default(),
            }
        } else {
            return default();
        };
        let unit = &units[ui];
        let reads =
            std::iter::once(&unit.convs[k]).chain(unit.downsample.iter().filter(|_| unit_input));
        if !reads.clone().all(ConvBn::updates_by_channel) {
            return default();
        }
        if cache.is_empty() {
            cache.extend(reads.map(|c| c.conv(change.clean)));
        }
        let y = unit.convs[k].forward_changed(change, &cache[0])?;
        let slots = &self.parts.slots;
        let branch = self.backbone.branch_from(slots, ui, k, y, false);
        let shortcut = match (unit_input, &unit.downsample) {
            (true, Some(d)) => d.forward_changed(change, &cache[1])?,
            (true, None) => change.stacked()?,
            (false, Some(d)) => d.forward(input, false),
            (false, None) => input.shallow_clone(),
        };
        let block = ui + 1;
        let out = self.head(
            block,
            slots.run(unit.slots[unit.convs.len() - 1], &(branch + shortcut)),
        );
        if block + 1 < self.parts.blocks.len() {
            self.forward_from(block + 1, &out, false)
        } else {
            Ok(out)
        }
    }

    fn import_key(&self, key: &str) -> String {
        crate::plan::import_key(key)
    }
}

knapsec_nn::register_net!(RESNET18_CIFAR, "knapsec-arch-resnet", |options, root| {
    ResNet::new(RESNET18_CIFAR, options, root)
});
knapsec_nn::register_net!(RESNET50_IMAGENET, "knapsec-arch-resnet", |options, root| {
    ResNet::new(RESNET50_IMAGENET, options, root)
});
