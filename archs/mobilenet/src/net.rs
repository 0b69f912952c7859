//! The tch network of `mobilenetv2-imagenet` (cargo feature `torch`), registered in
//! `knapsec-nn`: the interpreter ([`DescNet`]) running [`ImageNetConfig::describe`].
//!
//! Variables carry the checkpoint's `state_dict` names ([`crate::Naming`]), so torchvision's
//! ImageNet weights load as they are (their `num_batches_tracked` entries are ignored).
//! Every activation is its own slot (layer names in the crate documentation); a slot built
//! as ReLU6 that gets a block ReLU loses the clamp at 6, as in the reference, where `BlockRelu`
//! replaces the whole activation module.
//!
//! Blocks: `conv1` (stem), `layerR_B` (one per inverted residual), `conv2` (last 1×1
//! convolution, global average pooling, dropout 0.2 in training, `classifier.1`), returning
//! `[N, classes]` logits.

use crate::ImageNetConfig;
use knapsec_core::ArchOptions;
use knapsec_nn::net::BlockNet;
use knapsec_nn::{DescNet, Result};
use std::collections::HashMap;
use tch::nn;

/// The convolution + BatchNorm unit and the dotted-path helper, shared with every built-in.
pub use knapsec_nn::conv_bn::{ConvBn, sub_path};

fn build(options: &ArchOptions, root: &nn::Path) -> Result<Box<dyn BlockNet>> {
    let desc = ImageNetConfig::from_options(options)?.describe()?;
    Ok(Box::new(DescNet::new(desc, options, root, HashMap::new())?))
}

knapsec_nn::register_net!(crate::NAME, "knapsec-arch-mobilenet", build);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NAME;
    use knapsec_core::{BlockSize, BlockSpec};
    use knapsec_nn::NnError;
    use knapsec_nn::export::eval_graph;
    use knapsec_nn::net::Network;
    use tch::Device;
    use tch::{Kind, Tensor};

    fn small(variant: &str) -> ArchOptions {
        ArchOptions {
            input_height: Some(40),
            input_width: Some(36),
            classes: Some(7),
            variant: Some(variant.into()),
            ..Default::default()
        }
    }

    #[test]
    fn variables_have_torchvision_names_and_slots_match_the_table() {
        let network = Network::build_with(build, &ArchOptions::default(), Device::Cpu).unwrap();
        let vars = network.vs.variables();
        for key in [
            "features.0.0.weight",
            "features.1.conv.0.1.running_var",
            "features.1.conv.1.weight",
            "features.2.conv.3.bias",
            "features.18.1.weight",
            "classifier.1.weight",
            "classifier.1.bias",
        ] {
            assert!(vars.contains_key(key), "{key}");
        }
        // 52 convolutions with a BN (4 variables) + classifier (2); torchvision's state_dict
        // has 314 entries, 52 of them num_batches_tracked.
        assert_eq!(vars.len(), 52 * 5 + 2);
        assert_eq!(vars.len(), 314 - 52);
        let table = crate::MobileNetV2ImageNet
            .layer_table(&ArchOptions::default())
            .unwrap();
        use knapsec_core::ArchAdapter;
        assert_eq!(network.net.slots().layer_table().unwrap(), table);
        assert_eq!(network.net.layer_block("conv2").unwrap(), 18);
        assert_eq!(network.net.layer_block("layer2_1_0").unwrap(), 3);
    }

    #[test]
    fn forward_from_any_block_and_export_agree() {
        let mut rng = knapsec_nn::random::seeded(1);
        for variant in ["relu6", "relu"] {
            let mut network = Network::build_with(build, &small(variant), Device::Cpu).unwrap();
            // random BN statistics too, so that folding is exercised
            knapsec_nn::weights::reinit_seeded(&network.vs, 1);
            let x =
                knapsec_nn::random::randn(&mut rng, &[2, 3, 40, 36], (Kind::Float, Device::Cpu))
                    * 3.0;
            let outs = network.net.block_outputs(&x, false).unwrap();
            let y = outs.last().unwrap();
            assert_eq!(y.size(), [2, 7]);
            for k in [1usize, 5, 18] {
                let z = network.net.forward_from(k, &outs[k - 1], false).unwrap();
                assert!(
                    z.allclose(y, 1e-5, 1e-5, false),
                    "{variant}: from block {k}"
                );
            }
            // A spec on two layers; the rest keep their activation (ReLU6 → Op::Relu6).
            let mut spec = BlockSpec::new(NAME);
            let mixed: Vec<BlockSize> = (0..144)
                .map(|c| match c % 3 {
                    0 => BlockSize::Patch { h: 2, w: 3 },
                    1 => BlockSize::Identity,
                    _ => BlockSize::RELU,
                })
                .collect();
            spec.layers.insert("layer3_0_0".into(), mixed);
            spec.layers
                .insert("conv2".into(), vec![BlockSize::Patch { h: 2, w: 2 }; 1280]);
            network.net.apply_spec(&spec).unwrap();
            let y = network.net.forward_t(&x, false).unwrap();
            let (model, weights) = network.export(24).unwrap();
            let relu6 = model
                .nodes
                .iter()
                .filter(|n| matches!(n.op, knapsec_core::graph::Op::Relu6 { .. }))
                .count();
            assert_eq!(relu6, if variant == "relu6" { 33 } else { 0 });
            let z = eval_graph(&model, &weights, &x)
                .unwrap()
                .view([2, 7])
                .to_kind(Kind::Float);
            // f32 network against the f64 graph: compare relative to the logits' scale.
            let diff = f64::try_from((&z - &y).abs().max()).unwrap();
            let scale = f64::try_from(y.abs().max()).unwrap().max(1.0);
            assert!(
                diff < 1e-4 * scale,
                "{variant}: export differs from the network by {diff} (scale {scale})"
            );
        }
    }

    #[test]
    fn bad_options_and_inputs_are_errors() {
        let bad = ArchOptions {
            variant: Some("gelu".into()),
            ..Default::default()
        };
        assert!(Network::build_with(build, &bad, Device::Cpu).is_err());
        let network = Network::build_with(build, &small("relu6"), Device::Cpu).unwrap();
        let x = Tensor::zeros([1, 3, 41, 36], (Kind::Float, Device::Cpu));
        assert!(matches!(
            network.net.forward_t(&x, false),
            Err(NnError::BadInput { .. })
        ));
    }
}
