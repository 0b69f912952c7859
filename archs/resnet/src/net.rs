//! The tch networks of the ResNets (feature `torch`), registered in `knapsec-nn`.
//!
//! One network type serves both architectures: a stem block (conv, BN, `stem` slot, optional
//! pooling) followed by one block per residual unit; the last block also runs global average
//! pooling and `head.fc`, returning `[N, classes]` logits. Every ReLU is its own slot
//! (`layer{R}_{B}_{K}`), as in the reference's `MyResNet` / `ResNet_CIFAR_V2` backbones.

use crate::plan::{RESNET18_CIFAR, RESNET50_IMAGENET, ResNetPlan, StemPool, Unit, UnitKind};
use knapsec_core::ArchOptions;
use knapsec_core::graph::SecureModel;
use knapsec_core::graph_build::ParamSource;
use knapsec_nn::Result;
use knapsec_nn::net::{BlockNet, BlockNetParts, ChannelChange, GraphSource, NetRegistration};
use knapsec_nn::slots::{SlotId, SlotKind, Slots};
use tch::Tensor;
use tch::nn::{self, ModuleT};

#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    stride: i64,
    padding: i64,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: &nn::Path,
        conv: &str,
        bn: &str,
        i: u32,
        o: u32,
        k: u32,
        stride: u32,
        padding: u32,
    ) -> Self {
        let cfg = nn::ConvConfig {
            stride: stride.into(),
            padding: padding.into(),
            bias: false,
            ..Default::default()
        };
        ConvBn {
            conv: nn::conv2d(p / conv, i.into(), o.into(), k.into(), cfg),
            bn: nn::batch_norm2d(p / bn, o.into(), Default::default()),
            stride: stride.into(),
            padding: padding.into(),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&x.apply(&self.conv), train)
    }

    /// [`Self::forward`] (evaluation mode) on the rows of `change`, given the convolution of
    /// its clean rows: each row adds only its changed channel's contribution.
    fn forward_changed(&self, change: &ChannelChange<'_>, clean_conv: &Tensor) -> Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        let z = change.conv2d(clean_conv, &self.conv.ws, [s, s], [p, p])?;
        Ok(self.bn.forward_t(&z, false))
    }
}

#[derive(Debug)]
struct ResUnit {
    convs: Vec<ConvBn>,
    /// One slot per ReLU: after each inner conv but the last, and after the addition.
    slots: Vec<SlotId>,
    downsample: Option<ConvBn>,
}

/// A ResNet as a block-structured network.
#[derive(Debug)]
pub struct ResNet {
    plan: ResNetPlan,
    stem: ConvBn,
    stem_slot: SlotId,
    units: Vec<ResUnit>,
    fc: nn::Linear,
    /// Name, options, input shape, blocks, slots and graph source.
    parts: BlockNetParts,
}

fn unit_path<'a>(root: &nn::Path<'a>, u: &Unit) -> nn::Path<'a> {
    let mut parts = u.module.split('.');
    let first = root / parts.next().unwrap_or("backbone");
    parts.fold(first, |p, part| &p / part)
}

impl ResNet {
    /// Builds architecture `arch` at `options` under `root` (variables get mmcls names).
    pub fn new(arch: &str, options: &ArchOptions, root: &nn::Path) -> Result<Self> {
        let plan = ResNetPlan::new(arch, options)?;
        let table = plan.layer_table()?;
        let mut slots = Slots::new(plan.arch);
        let backbone = root / "backbone";
        let stem = ConvBn::new(
            &backbone,
            "conv1",
            "bn1",
            plan.input.0,
            plan.stem_channels,
            plan.stem_kernel,
            plan.stem_stride,
            plan.stem_padding,
        );
        let stem_slot = slots.add(table.layers[0].clone(), 0, SlotKind::Relu)?;
        let mut units = Vec::with_capacity(plan.units.len());
        for (i, u) in plan.units.iter().enumerate() {
            let p = unit_path(root, u);
            let mut convs = Vec::new();
            match plan.kind {
                UnitKind::Basic => {
                    convs.push(ConvBn::new(
                        &p,
                        "conv1",
                        "bn1",
                        u.in_channels,
                        u.planes,
                        3,
                        u.stride,
                        1,
                    ));
                    convs.push(ConvBn::new(
                        &p,
                        "conv2",
                        "bn2",
                        u.planes,
                        u.out_channels,
                        3,
                        1,
                        1,
                    ));
                }
                UnitKind::Bottleneck => {
                    convs.push(ConvBn::new(
                        &p,
                        "conv1",
                        "bn1",
                        u.in_channels,
                        u.planes,
                        1,
                        1,
                        0,
                    ));
                    convs.push(ConvBn::new(
                        &p, "conv2", "bn2", u.planes, u.planes, 3, u.stride, 1,
                    ));
                    convs.push(ConvBn::new(
                        &p,
                        "conv3",
                        "bn3",
                        u.planes,
                        u.out_channels,
                        1,
                        1,
                        0,
                    ));
                }
            }
            let downsample = u.downsample.then(|| {
                let d = &p / "downsample";
                ConvBn::new(&d, "0", "1", u.in_channels, u.out_channels, 1, u.stride, 0)
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
        let last = plan
            .units
            .last()
            .map(|u| u.out_channels)
            .unwrap_or(plan.stem_channels);
        let fc = nn::linear(
            root / "head" / "fc",
            last.into(),
            plan.classes.into(),
            Default::default(),
        );
        let parts = BlockNetParts::new(
            plan.arch,
            options.clone(),
            [
                plan.input.0.into(),
                plan.input.1.into(),
                plan.input.2.into(),
            ],
            plan.block_names(),
            slots,
            Some(Box::new(plan.clone())),
        );
        Ok(ResNet {
            plan,
            stem,
            stem_slot,
            units,
            fc,
            parts,
        })
    }

    /// The residual branch of unit `ui` from `y`, the output of its convolution `k0` (after BN),
    /// to the end of the branch (before the addition).
    fn branch_from(&self, ui: usize, k0: usize, y: Tensor, train: bool) -> Tensor {
        let unit = &self.units[ui];
        let n = unit.convs.len();
        let mut y = y;
        for k in k0..n {
            if k > k0 {
                y = unit.convs[k].forward(&y, train);
            }
            if k + 1 < n {
                y = self.parts.slots.run(unit.slots[k], &y);
            }
        }
        y
    }

    /// The network's output from block `index`'s output: the head after the last unit.
    fn head(&self, index: usize, out: Tensor) -> Tensor {
        if index == self.units.len() {
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
}

impl GraphSource for ResNetPlan {
    fn secure_graph(
        &self,
        spec: Option<&knapsec_core::BlockSpec>,
        frac_bits: u32,
    ) -> knapsec_core::Result<(SecureModel, Vec<ParamSource>)> {
        ResNetPlan::secure_graph(self, spec, frac_bits)
    }
}

impl BlockNet for ResNet {
    fn parts(&self) -> &BlockNetParts {
        &self.parts
    }

    fn parts_mut(&mut self) -> &mut BlockNetParts {
        &mut self.parts
    }

    fn run_block(&self, index: usize, x: &Tensor, train: bool) -> Tensor {
        if index == 0 {
            let y = self
                .parts
                .slots
                .run(self.stem_slot, &self.stem.forward(x, train));
            return match self.plan.pool {
                StemPool::None => y,
                StemPool::Max => y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false),
                StemPool::Avg => y.avg_pool2d([3, 3], [2, 2], [1, 1], false, true, None::<i64>),
            };
        }
        let unit = &self.units[index - 1];
        let y = self.branch_from(index - 1, 0, unit.convs[0].forward(x, train), train);
        let shortcut = match &unit.downsample {
            Some(d) => d.forward(x, train),
            None => x.shallow_clone(),
        };
        let out = self
            .parts
            .slots
            .run(unit.slots[unit.convs.len() - 1], &(y + shortcut));
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
        let after_stem = |y: Tensor| match self.plan.pool {
            StemPool::None => y,
            StemPool::Max => y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false),
            StemPool::Avg => y.avg_pool2d([3, 3], [2, 2], [1, 1], false, true, None::<i64>),
        };
        let unit = match index {
            0 if slot == self.stem_slot => return Ok(after_stem(act.shallow_clone())),
            i if i >= 1 && i <= self.units.len() => &self.units[i - 1],
            _ => return knapsec_nn::net::run_block_injected(self, index, slot, act, input, train),
        };
        let Some(pos) = unit.slots.iter().position(|&s| s == slot) else {
            return knapsec_nn::net::run_block_injected(self, index, slot, act, input, train);
        };
        let n = unit.convs.len();
        let out = if pos + 1 == n {
            act.shallow_clone()
        } else {
            let y = self.branch_from(
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
            self.parts.slots.run(unit.slots[n - 1], &sum)
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
        // (unit, its convolution that reads the slot, whether the slot output is the unit's input)
        let (ui, k, unit_input) = if index == 0 {
            if slot != self.stem_slot || self.plan.pool != StemPool::None || self.units.is_empty() {
                return default();
            }
            (0, 0, true)
        } else if index <= self.units.len() {
            let unit = &self.units[index - 1];
            match unit.slots.iter().position(|&s| s == slot) {
                Some(pos) if pos + 1 < unit.convs.len() => (index - 1, pos + 1, false),
                Some(_) if index < self.units.len() => (index, 0, true),
                _ => return default(),
            }
        } else {
            return default();
        };
        let unit = &self.units[ui];
        if cache.is_empty() {
            cache.push(change.clean.apply(&unit.convs[k].conv));
            if let (true, Some(d)) = (unit_input, &unit.downsample) {
                cache.push(change.clean.apply(&d.conv));
            }
        }
        let y = unit.convs[k].forward_changed(change, &cache[0])?;
        let branch = self.branch_from(ui, k, y, false);
        let shortcut = match (unit_input, &unit.downsample) {
            (true, Some(d)) => d.forward_changed(change, &cache[1])?,
            (true, None) => change.stacked()?,
            (false, Some(d)) => d.forward(input, false),
            (false, None) => input.shallow_clone(),
        };
        let block = ui + 1;
        let out = self.head(
            block,
            self.parts
                .slots
                .run(unit.slots[unit.convs.len() - 1], &(branch + shortcut)),
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

fn build_resnet18_cifar(options: &ArchOptions, root: &nn::Path) -> Result<Box<dyn BlockNet>> {
    Ok(Box::new(ResNet::new(RESNET18_CIFAR, options, root)?))
}

fn build_resnet50_imagenet(options: &ArchOptions, root: &nn::Path) -> Result<Box<dyn BlockNet>> {
    Ok(Box::new(ResNet::new(RESNET50_IMAGENET, options, root)?))
}

knapsec_nn::inventory::submit! {
    NetRegistration { name: RESNET18_CIFAR, provider: "knapsec-arch-resnet", build: build_resnet18_cifar }
}
knapsec_nn::inventory::submit! {
    NetRegistration { name: RESNET50_IMAGENET, provider: "knapsec-arch-resnet", build: build_resnet50_imagenet }
}
