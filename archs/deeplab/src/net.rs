//! The tch networks of `deeplabv3-mobilenetv2` and `deeplabv3-resnet50` (cargo feature
//! `torch`), registered in `knapsec-nn`, with OpenMMLab `state_dict` names (see [`crate::plan`]).
//!
//! `deeplabv3-resnet50` is the interpreter ([`DescNet`]) running the plan's description
//! ([`DeepLabPlan::describe`]: the one ResNet, dilated, and the ASPP head). The MobileNetV2
//! network below is still written by hand. Blocks are the plan's: the backbone's blocks, then `decode`, which runs the ASPP head and
//! returns the segmentation logits `[N, classes, H/8, W/8]`. The image-pooling branch is
//! repeated to H×W with `expand` (equal to mmseg's bilinear resize of a 1×1 map, and to the
//! secure graph's `Op::Broadcast`).

use crate::plan::{
    ASPP_CHANNELS, ASPP_DILATIONS, Backbone, DEEPLABV3_MOBILENETV2, DEEPLABV3_RESNET50, DeepLabPlan,
};
use knapsec_arch_mobilenet::geometry::Naming;
use knapsec_arch_mobilenet::net::MobileNetV2Backbone;
use knapsec_core::ArchOptions;
use knapsec_nn::conv_bn::{ConvBn, sub_path};
use knapsec_nn::net::{BlockNet, BlockNetParts, input_shape, plan_graph};
use knapsec_nn::slots::{SlotId, SlotKind, Slots};
use knapsec_nn::{DescNet, Result};
use std::collections::HashMap;
#[cfg(test)]
use tch::Kind;
use tch::{Tensor, nn};

#[derive(Debug)]
struct AsppHead {
    image_pool: ConvBn,
    branches: Vec<ConvBn>,
    bottleneck: ConvBn,
    conv_seg: nn::Conv2D,
    /// `decode_0` … `decode_5`.
    slots: Vec<SlotId>,
}

impl AsppHead {
    fn new(root: &nn::Path, plan: &DeepLabPlan, slots: &mut Slots, block: usize) -> Result<Self> {
        let c = ASPP_CHANNELS;
        let mut ids = Vec::with_capacity(6);
        for layer in plan.decode_layers() {
            ids.push(slots.add(layer, block, SlotKind::Relu)?);
        }
        let image_pool = ConvBn::new(
            root,
            "decode_head.image_pool.1.conv",
            "decode_head.image_pool.1.bn",
            plan.head_in,
            c,
            1,
            1,
            0,
            1,
            1,
        );
        let branches = ASPP_DILATIONS
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let m = format!("decode_head.aspp_modules.{i}");
                let (conv, bn) = (format!("{m}.conv"), format!("{m}.bn"));
                if d == 1 {
                    ConvBn::new(root, &conv, &bn, plan.head_in, c, 1, 1, 0, 1, 1)
                } else {
                    ConvBn::new(root, &conv, &bn, plan.head_in, c, 3, 1, d, d, 1)
                }
            })
            .collect();
        let n = ASPP_DILATIONS.len() as u32 + 1;
        let bottleneck = ConvBn::new(
            root,
            "decode_head.bottleneck.conv",
            "decode_head.bottleneck.bn",
            n * c,
            c,
            3,
            1,
            1,
            1,
            1,
        );
        let conv_seg = nn::conv2d(
            sub_path(root, "decode_head.conv_seg"),
            c.into(),
            plan.classes.into(),
            1,
            Default::default(),
        );
        Ok(AsppHead {
            image_pool,
            branches,
            bottleneck,
            conv_seg,
            slots: ids,
        })
    }

    fn forward(&self, parts: &BlockNetParts, x: &Tensor, train: bool) -> Tensor {
        let slots = &parts.slots;
        let (n, _, h, w) = x.size4().expect("the head's input is 4-D");
        let pooled = x.mean_dim([2i64, 3].as_slice(), true, x.kind());
        let ip = slots.run(self.slots[0], &self.image_pool.forward(&pooled, train));
        let mut outs = vec![ip.expand([n, i64::from(ASPP_CHANNELS), h, w], false)];
        for (i, b) in self.branches.iter().enumerate() {
            outs.push(slots.run(self.slots[i + 1], &b.forward(x, train)));
        }
        let cat = Tensor::cat(&outs, 1);
        let y = slots.run(self.slots[5], &self.bottleneck.forward(&cat, train));
        parts.dropout(&y, 0.1, train).apply(&self.conv_seg)
    }
}

/// A DeepLabV3 (either backbone) as a block-structured network.
#[derive(Debug)]
pub struct DeepLabV3 {
    plan: DeepLabPlan,
    backbone: MobileNetV2Backbone,
    head: AsppHead,
    /// Name, options, input shape, blocks, slots and graph source.
    parts: BlockNetParts,
}

impl DeepLabV3 {
    /// Builds architecture `arch` at `options` under `root`.
    pub fn new(arch: &str, options: &ArchOptions, root: &nn::Path) -> Result<Self> {
        let plan = DeepLabPlan::new(arch, options)?;
        let layers = plan.backbone_layers()?;
        let mut slots = Slots::new(plan.arch);
        let Backbone::MobileNetV2 { geometry, relu6 } = &plan.backbone else {
            return Err(knapsec_core::CoreError::Invalid(format!(
                "{arch}: the ResNet-50 network is its description (`build_resnet50`)"
            ))
            .into());
        };
        let kind = if *relu6 {
            SlotKind::Relu6
        } else {
            SlotKind::Relu
        };
        let backbone = MobileNetV2Backbone::new(
            root,
            geometry,
            Naming::OpenMmlab,
            &layers,
            kind,
            &mut slots,
            0,
        )?;
        let blocks = plan.block_names();
        let head = AsppHead::new(root, &plan, &mut slots, blocks.len() - 1)?;
        let parts = BlockNetParts::new(
            plan.arch,
            options.clone(),
            input_shape(plan.input),
            blocks,
            slots,
            plan_graph(plan.clone(), DeepLabPlan::secure_graph),
        );
        Ok(DeepLabV3 {
            plan,
            backbone,
            head,
            parts,
        })
    }

    /// The plan the network was built from.
    pub fn plan(&self) -> &DeepLabPlan {
        &self.plan
    }
}

impl BlockNet for DeepLabV3 {
    knapsec_nn::block_net_parts!(parts);

    fn run_block(&self, index: usize, x: &Tensor, train: bool) -> Tensor {
        if index + 1 == self.parts.blocks.len() {
            return self.head.forward(&self.parts, x, train);
        }
        if index == 0 {
            self.backbone.run_stem(&self.parts.slots, x, train)
        } else {
            self.backbone
                .run_block(&self.parts.slots, index - 1, x, train)
        }
    }
}

fn build_mobilenetv2(options: &ArchOptions, root: &nn::Path) -> Result<Box<dyn BlockNet>> {
    Ok(Box::new(DeepLabV3::new(
        DEEPLABV3_MOBILENETV2,
        options,
        root,
    )?))
}

/// `deeplabv3-resnet50`: the interpreter ([`DescNet`]) running [`DeepLabPlan::describe`].
fn build_resnet50(options: &ArchOptions, root: &nn::Path) -> Result<Box<dyn BlockNet>> {
    let desc = DeepLabPlan::new(DEEPLABV3_RESNET50, options)?.describe()?;
    Ok(Box::new(DescNet::new(desc, options, root, HashMap::new())?))
}

knapsec_nn::register_net!(
    DEEPLABV3_MOBILENETV2,
    "knapsec-arch-deeplab",
    build_mobilenetv2
);
knapsec_nn::register_net!(DEEPLABV3_RESNET50, "knapsec-arch-deeplab", build_resnet50);

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::graph::Op;
    use knapsec_core::{ArchAdapter, BlockSize, BlockSpec};
    use knapsec_nn::export::eval_graph;
    use knapsec_nn::net::{NetBuilder, Network};
    use tch::Device;

    fn at65() -> ArchOptions {
        ArchOptions {
            input_height: Some(65),
            input_width: Some(65),
            ..Default::default()
        }
    }

    fn cases() -> [(&'static str, NetBuilder, &'static dyn ArchAdapter); 2] {
        [
            (
                DEEPLABV3_MOBILENETV2,
                build_mobilenetv2,
                &crate::DeepLabV3MobileNetV2,
            ),
            (
                DEEPLABV3_RESNET50,
                build_resnet50,
                &crate::DeepLabV3ResNet50,
            ),
        ]
    }

    #[test]
    fn miou_evaluation_upsamples_and_accumulates_over_batches() {
        use knapsec_nn::data::segmentation::SegmentationSet;
        use knapsec_nn::train::{evaluate_segmentation, mean_iou};
        let options = ArchOptions {
            input_height: Some(33),
            input_width: Some(33),
            ..Default::default()
        };
        let network = Network::build_with(build_mobilenetv2, &options, Device::Cpu).unwrap();
        knapsec_nn::weights::reinit_seeded(&network.vs, 4);
        let (n, h, w) = (3usize, 33usize, 33usize);
        let set = SegmentationSet {
            pixels: (0..n * 3 * h * w).map(|i| (i * 37 % 251) as u8).collect(),
            labels: (0..n * h * w)
                .map(|i| {
                    if i % 17 == 0 {
                        255
                    } else {
                        (i / 40 % 150) as u8
                    }
                })
                .collect(),
            height: h,
            width: w,
            files: vec![Default::default(); n],
        };
        let one = evaluate_segmentation(&network, &set, 1).unwrap();
        let all = evaluate_segmentation(&network, &set, 3).unwrap();
        assert_eq!(one.counts, all.counts);
        assert_eq!(one.count, 3);
        // The same figure from the network's output by hand.
        let (x, y) = set.tensors(0..n);
        let logits = tch::no_grad(|| network.net.forward_t(&x, false).unwrap());
        assert_eq!(logits.size(), [3, 150, 5, 5]);
        let pred = logits
            .upsample_bilinear2d([33, 33], false, None::<f64>, None::<f64>)
            .argmax(1, false);
        let want = mean_iou(&pred, &y, 150, 255);
        assert!((all.miou - want).abs() < 1e-12, "{} vs {want}", all.miou);
        assert!((0.0..=1.0).contains(&all.pixel_accuracy));
        let valid = set.labels.iter().filter(|&&l| l != 255).count() as u64;
        assert_eq!(all.counts.valid, valid);
    }

    #[test]
    fn slots_match_the_layer_table_and_names_are_mmseg() {
        for (arch, build, adapter) in cases() {
            let network = Network::build_with(build, &at65(), Device::Cpu).unwrap();
            assert_eq!(
                network.net.slots().layer_table().unwrap(),
                adapter.layer_table(&at65()).unwrap(),
                "{arch}"
            );
            let vars = network.vs.variables();
            for key in [
                "decode_head.image_pool.1.conv.weight",
                "decode_head.aspp_modules.3.bn.running_var",
                "decode_head.bottleneck.conv.weight",
                "decode_head.conv_seg.bias",
            ] {
                assert!(vars.contains_key(key), "{arch}: {key}");
            }
            let backbone_key = if arch == DEEPLABV3_RESNET50 {
                "backbone.layer4.2.conv2.weight"
            } else {
                "backbone.layer7.0.conv.2.bn.weight"
            };
            assert!(vars.contains_key(backbone_key), "{arch}: {backbone_key}");
            assert_eq!(vars["decode_head.aspp_modules.2.conv.weight"].size()[2], 3);
            assert_eq!(
                network.net.layer_block("decode_0").unwrap(),
                network.net.block_names().len() - 1
            );
        }
    }

    #[test]
    fn forward_from_blocks_and_export_at_65() {
        let mut rng = knapsec_nn::random::seeded(3);
        for (arch, build, _) in cases() {
            let mut network = Network::build_with(build, &at65(), Device::Cpu).unwrap();
            // random BN statistics too, so that folding is exercised
            knapsec_nn::weights::reinit_seeded(&network.vs, 3);
            let classes = if arch == DEEPLABV3_RESNET50 { 21 } else { 150 };
            let x =
                knapsec_nn::random::randn(&mut rng, &[1, 3, 65, 65], (Kind::Float, Device::Cpu));
            let outs = network.net.block_outputs(&x, false).unwrap();
            let y = outs.last().unwrap();
            assert_eq!(y.size(), [1, classes, 9, 9], "{arch}");
            let last = network.net.block_names().len() - 1;
            for k in [1, 4, last] {
                let z = network.net.forward_from(k, &outs[k - 1], false).unwrap();
                assert!(z.allclose(y, 1e-5, 1e-5, false), "{arch}: from block {k}");
            }
            let mut spec = BlockSpec::new(arch);
            spec.layers
                .insert("decode_0".into(), vec![BlockSize::Identity; 512]);
            spec.layers.insert(
                "decode_2".into(),
                (0..512)
                    .map(|c| {
                        if c % 2 == 0 {
                            BlockSize::Patch { h: 3, w: 2 }
                        } else {
                            BlockSize::RELU
                        }
                    })
                    .collect(),
            );
            let backbone_layer = if arch == DEEPLABV3_RESNET50 {
                "layer3_1_2"
            } else {
                "layer4_1_1"
            };
            let c = network
                .net
                .slots()
                .get(backbone_layer)
                .unwrap()
                .layer
                .channels as usize;
            spec.layers.insert(
                backbone_layer.into(),
                vec![BlockSize::Patch { h: 2, w: 2 }; c],
            );
            network.net.apply_spec(&spec).unwrap();
            let y = network.net.forward_t(&x, false).unwrap();
            let (model, weights) = network.export(24).unwrap();
            assert!(model.nodes.iter().any(|n| matches!(
                n.op,
                Op::Broadcast {
                    height: 9,
                    width: 9
                }
            )));
            let z = eval_graph(&model, &weights, &x)
                .unwrap()
                .to_kind(Kind::Float);
            assert_eq!(z.size(), y.size());
            let diff = f64::try_from((&z - &y).abs().max()).unwrap();
            let scale = f64::try_from(y.abs().max()).unwrap();
            assert!(
                diff < 1e-3 * scale.max(1.0),
                "{arch}: export differs by {diff} (output scale {scale})"
            );
        }
    }

    #[test]
    fn image_pooling_is_a_broadcast() {
        // The head's image-pooling branch equals bilinear resizing of the 1×1 map.
        let t = knapsec_nn::random::randn(
            &mut knapsec_nn::random::seeded(4),
            &[2, 5, 1, 1],
            (Kind::Float, Device::Cpu),
        );
        let e = t.expand([2, 5, 7, 9], false);
        let r = t.upsample_bilinear2d([7, 9], false, None, None);
        assert!(e.allclose(&r, 1e-6, 1e-6, false));
    }
}
