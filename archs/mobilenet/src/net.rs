//! The tch network of `mobilenetv2-imagenet` (cargo feature `torch`), registered in
//! `knapsec-nn`, and the MobileNetV2 backbone module that `knapsec-arch-deeplab` reuses.
//!
//! Variables carry the checkpoint's `state_dict` names ([`Naming`]), so torchvision's
//! ImageNet weights load as they are (their `num_batches_tracked` entries are ignored).
//! Every activation is its own slot (layer names in the crate documentation); a slot built
//! as ReLU6 that gets a block ReLU loses the clamp at 6, as in the reference, where `BlockRelu`
//! replaces the whole activation module.
//!
//! Blocks: `conv1` (stem), `layerR_B` (one per inverted residual), `conv2` (last 1×1
//! convolution, global average pooling, dropout 0.2 in training, `classifier.1`), returning
//! `[N, classes]` logits.

use crate::geometry::{MobileNetV2Geometry, Naming, STEM_CHANNELS};
use crate::{Activation, ImageNetConfig, NAME};
use knapsec_core::{ArchOptions, ReluLayer};
use knapsec_nn::net::{BlockNet, BlockNetParts, input_shape, plan_graph};
use knapsec_nn::slots::{SlotId, SlotKind, Slots};
use knapsec_nn::{NnError, Result};
use tch::nn;
use tch::{Kind, Tensor};

/// The convolution + BatchNorm unit and the dotted-path helper, shared with every built-in.
pub use knapsec_nn::conv_bn::{ConvBn, sub_path};

#[derive(Debug)]
struct InvertedResidualModule {
    expand: Option<(ConvBn, SlotId)>,
    depthwise: ConvBn,
    depthwise_slot: SlotId,
    project: ConvBn,
    residual: bool,
}

/// A MobileNetV2 backbone (stem, inverted residuals, optional last 1×1 convolution) whose
/// activations live in a [`Slots`] owned by the network that holds the backbone.
#[derive(Debug)]
pub struct MobileNetV2Backbone {
    stem: ConvBn,
    stem_slot: SlotId,
    blocks: Vec<InvertedResidualModule>,
    last: Option<(ConvBn, SlotId)>,
}

impl MobileNetV2Backbone {
    /// Builds the backbone under `root` with `naming`'s variable names and adds one slot per
    /// activation to `slots`. `layers` are the geometry's ReLU layers (in network order) at
    /// the network's input size; the stem's slot lives in network block `first_block`, block
    /// `k`'s in `first_block + 1 + k`, the last convolution's in `first_block + 1 + #blocks`.
    pub fn new(
        root: &nn::Path,
        geometry: &MobileNetV2Geometry,
        naming: Naming,
        layers: &[ReluLayer],
        kind: SlotKind,
        slots: &mut Slots,
        first_block: usize,
    ) -> Result<Self> {
        let mut layer_iter = layers.iter().cloned();
        let mut add_slot = |slots: &mut Slots, block: usize| -> Result<SlotId> {
            let layer = layer_iter.next().ok_or_else(|| NnError::Export {
                arch: "MobileNetV2".into(),
                message: "fewer layers than activations".into(),
            })?;
            slots.add(layer, block, kind)
        };
        let stem_names = naming.stem();
        let stem = ConvBn::new(
            root,
            &stem_names.conv,
            &stem_names.bn,
            geometry.in_channels,
            STEM_CHANNELS,
            3,
            geometry.stem_stride,
            1,
            1,
            1,
        );
        let stem_slot = add_slot(slots, first_block)?;
        let mut blocks = Vec::with_capacity(geometry.blocks.len());
        for (k, b) in geometry.blocks.iter().enumerate() {
            let block = first_block + 1 + k;
            let expand = match naming.expand(b) {
                Some(n) => {
                    let conv = ConvBn::new(
                        root,
                        &n.conv,
                        &n.bn,
                        b.in_channels,
                        b.mid_channels,
                        1,
                        1,
                        0,
                        1,
                        1,
                    );
                    Some((conv, add_slot(slots, block)?))
                }
                None => None,
            };
            let (m, d) = (b.mid_channels, b.dilation);
            let n = naming.depthwise(b);
            let depthwise = ConvBn::new(root, &n.conv, &n.bn, m, m, 3, b.stride, d, d, m);
            let depthwise_slot = add_slot(slots, block)?;
            let n = naming.project(b);
            let project = ConvBn::new(root, &n.conv, &n.bn, m, b.out_channels, 1, 1, 0, 1, 1);
            blocks.push(InvertedResidualModule {
                expand,
                depthwise,
                depthwise_slot,
                project,
                residual: b.residual(),
            });
        }
        let last = match geometry.last_channels {
            Some(c) => {
                let cin = geometry
                    .blocks
                    .last()
                    .map_or(STEM_CHANNELS, |b| b.out_channels);
                let n = naming.last(geometry);
                let conv = ConvBn::new(root, &n.conv, &n.bn, cin, c, 1, 1, 0, 1, 1);
                Some((
                    conv,
                    add_slot(slots, first_block + 1 + geometry.blocks.len())?,
                ))
            }
            None => None,
        };
        Ok(MobileNetV2Backbone {
            stem,
            stem_slot,
            blocks,
            last,
        })
    }

    /// Number of inverted-residual blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The stem: convolution, BN, `conv1` slot.
    pub fn run_stem(&self, slots: &Slots, x: &Tensor, train: bool) -> Tensor {
        slots.run(self.stem_slot, &self.stem.forward(x, train))
    }

    /// Inverted-residual block `k` (0-based).
    pub fn run_block(&self, slots: &Slots, k: usize, x: &Tensor, train: bool) -> Tensor {
        let b = &self.blocks[k];
        let mut y = match &b.expand {
            Some((conv, slot)) => slots.run(*slot, &conv.forward(x, train)),
            None => x.shallow_clone(),
        };
        y = slots.run(b.depthwise_slot, &b.depthwise.forward(&y, train));
        y = b.project.forward(&y, train);
        if b.residual { y + x } else { y }
    }

    /// The last 1×1 convolution and its slot (the identity if the backbone has none).
    pub fn run_last(&self, slots: &Slots, x: &Tensor, train: bool) -> Tensor {
        match &self.last {
            Some((conv, slot)) => slots.run(*slot, &conv.forward(x, train)),
            None => x.shallow_clone(),
        }
    }
}

/// torchvision's ImageNet MobileNetV2 as a block-structured network.
#[derive(Debug)]
pub struct MobileNetV2 {
    backbone: MobileNetV2Backbone,
    classifier: nn::Linear,
    /// Name, options, input shape, blocks, slots and graph source.
    parts: BlockNetParts,
}

impl MobileNetV2 {
    /// Builds the network at `options` under `root` (torchvision variable names).
    pub fn new(options: &ArchOptions, root: &nn::Path) -> Result<Self> {
        let config = ImageNetConfig::from_options(options)?;
        let geometry = config.geometry();
        let layers = config.layers()?;
        let kind = match config.activation {
            Activation::Relu6 => SlotKind::Relu6,
            Activation::Relu => SlotKind::Relu,
        };
        let mut slots = Slots::new(NAME);
        let backbone = MobileNetV2Backbone::new(
            root,
            &geometry,
            Naming::Torchvision,
            &layers,
            kind,
            &mut slots,
            0,
        )?;
        let classifier = nn::linear(
            root / "classifier" / "1",
            geometry.out_channels().into(),
            config.classes.into(),
            Default::default(),
        );
        let mut blocks = vec!["conv1".to_string()];
        blocks.extend(
            geometry
                .blocks
                .iter()
                .map(|b| format!("layer{}_{}", b.stage, b.index)),
        );
        blocks.push("conv2".into());
        let parts = BlockNetParts::new(
            NAME,
            options.clone(),
            input_shape((config.input_channels, config.height, config.width)),
            blocks,
            slots,
            plan_graph(config, ImageNetConfig::secure_graph),
        );
        Ok(MobileNetV2 {
            backbone,
            classifier,
            parts,
        })
    }
}

impl BlockNet for MobileNetV2 {
    knapsec_nn::block_net_parts!(parts);

    fn run_block(&self, index: usize, x: &Tensor, train: bool) -> Tensor {
        let n = self.backbone.num_blocks();
        if index == 0 {
            self.backbone.run_stem(&self.parts.slots, x, train)
        } else if index <= n {
            self.backbone
                .run_block(&self.parts.slots, index - 1, x, train)
        } else {
            let y = self.backbone.run_last(&self.parts.slots, x, train);
            let pooled = y.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
            self.parts
                .dropout(&pooled, 0.2, train)
                .apply(&self.classifier)
        }
    }
}

fn build(options: &ArchOptions, root: &nn::Path) -> Result<Box<dyn BlockNet>> {
    Ok(Box::new(MobileNetV2::new(options, root)?))
}

knapsec_nn::register_net!(NAME, "knapsec-arch-mobilenet", build);

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::{BlockSize, BlockSpec};
    use knapsec_nn::export::eval_graph;
    use knapsec_nn::net::Network;
    use tch::Device;

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
