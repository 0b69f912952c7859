//! The tch networks of `deeplabv3-mobilenetv2` and `deeplabv3-resnet50` (cargo feature
//! `torch`), registered in `knapsec-nn`, with OpenMMLab `state_dict` names (see [`crate::plan`]):
//! the interpreter ([`DescNet`]) running the plan's description ([`DeepLabPlan::describe`]:
//! the MobileNetV2 backbone or the one ResNet, dilated, and the ASPP head).
//!
//! Blocks are the plan's: the backbone's blocks, then `decode`, which runs the ASPP head and
//! returns the segmentation logits `[N, classes, H/8, W/8]`. The image-pooling branch is
//! repeated to H×W (nearest resize of a 1×1 map: equal to mmseg's bilinear resize of it, and to
//! the secure graph's `Op::Broadcast`); dropout 0.1 before `conv_seg` in training.

use crate::plan::{DEEPLABV3_MOBILENETV2, DEEPLABV3_RESNET50, DeepLabPlan};
use knapsec_core::ArchOptions;
use knapsec_nn::net::BlockNet;
use knapsec_nn::{DescNet, Result};
use std::collections::HashMap;
use tch::nn;

/// The network of DeepLabV3 `arch` at `options` under `root`.
fn build(arch: &str, options: &ArchOptions, root: &nn::Path) -> Result<Box<dyn BlockNet>> {
    let desc = DeepLabPlan::new(arch, options)?.describe()?;
    Ok(Box::new(DescNet::new(desc, options, root, HashMap::new())?))
}

fn build_mobilenetv2(options: &ArchOptions, root: &nn::Path) -> Result<Box<dyn BlockNet>> {
    build(DEEPLABV3_MOBILENETV2, options, root)
}

fn build_resnet50(options: &ArchOptions, root: &nn::Path) -> Result<Box<dyn BlockNet>> {
    build(DEEPLABV3_RESNET50, options, root)
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
    use tch::{Device, Kind};

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
