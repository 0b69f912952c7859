//! knapsec-arch-mobilenet: torchvision's ImageNet MobileNetV2 as a knapsec architecture
//! (`mobilenetv2-imagenet`).
//!
//! * [`geometry`]: the backbone's blocks and map sizes (tch-free; shared with
//!   `knapsec-arch-deeplab`).
//! * [`MobileNetV2ImageNet`]: the architecture adapter (layer table, candidates), registered
//!   with `inventory` under the name [`NAME`].
//! * `net` (cargo feature `torch`): the tch network with torchvision's `state_dict` names,
//!   so that torchvision's ImageNet weights (`mobilenet_v2-b0353104.pth`, converted to
//!   safetensors by `tests/fixtures/convert_torch_checkpoint.py`) load as they are.
//!
//! ## Layer names
//!
//! The reference has no ImageNet MobileNetV2; its names for the segmentation MobileNetV2
//! (digest §4.4) follow OpenMMLab's modules, and we use the same grammar here, plus `conv2`
//! for the classifier's last 1×1 convolution (OpenMMLab's name for it):
//!
//! | layer | torchvision module of the activation | meaning |
//! |---|---|---|
//! | `conv1` | `features.0.2` | stem 3×3 convolution, stride 2 |
//! | `layerR_B_0` | `features.i.conv.0.2` | block B of stage R (1…7): the 1×1 expansion, or the depthwise 3×3 when the block has no expansion (stage 1) |
//! | `layerR_B_1` | `features.i.conv.1.2` | the depthwise 3×3 after an expansion |
//! | `conv2` | `features.18.2` | last 1×1 convolution, 320 → 1280 |
//!
//! where `i = 1 + ` the number of blocks before block B of stage R.
//!
//! ## Options
//!
//! Input `3×224×224` and 1000 classes by default; `input_channels`, `input_height`,
//! `input_width`, `classes` may be changed (torchvision's weights need 3 channels and 1000
//! classes). `variant`: `"relu6"` (default, torchvision's activation) or `"relu"`.
//! `base_width` is refused (the width multiplier is fixed at 1.0).
//!
//! ## Candidates
//!
//! The reference's preset for the map side (`preset_for_side`) where the map is square and a
//! preset exists (all layers at 224×224: sides 112, 56, 28, 14, 7), otherwise generated
//! patches up to 16 per side ([`reference_candidates`]).

pub mod geometry;
#[cfg(feature = "torch")]
pub mod net;

use knapsec_arch_kit::desc::linear;
use knapsec_core::graph::SecureModel;
use knapsec_core::graph_build::ParamSource;
use knapsec_core::netdesc::{DescOp, NetDesc};
use knapsec_core::{ArchOptions, BlockSpec, CoreError, LayerTable, ReluLayer, Result};

pub use geometry::{MobileNetV2Geometry, Naming};

/// Registry name of torchvision's ImageNet MobileNetV2.
pub const NAME: &str = "mobilenetv2-imagenet";

/// The activation of MobileNetV2's slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `min(max(x, 0), 6)`, as in torchvision's and OpenMMLab's checkpoints.
    Relu6,
    /// `max(x, 0)`, as in the reference's fine-tuned `_relu` configurations.
    Relu,
}

impl Activation {
    /// Reads an `ArchOptions::variant`: `None` or `"relu6"` → ReLU6, `"relu"` → ReLU.
    pub fn from_variant(arch: &str, variant: Option<&str>) -> Result<Self> {
        match variant {
            None | Some("relu6") => Ok(Activation::Relu6),
            Some("relu") => Ok(Activation::Relu),
            Some(other) => Err(CoreError::Invalid(format!(
                "architecture {arch:?} has no variant {other:?} (available: relu6, relu)"
            ))),
        }
    }
}

pub use knapsec_arch_kit::reference_candidates;

/// Validated options of `mobilenetv2-imagenet`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageNetConfig {
    /// Channels of the input image.
    pub input_channels: u32,
    /// Input height.
    pub height: u32,
    /// Input width.
    pub width: u32,
    /// Classes of the classifier's output.
    pub classes: u32,
    /// The activation (ReLU6 or ReLU).
    pub activation: Activation,
}

impl ImageNetConfig {
    /// Reads and checks the options (see the crate documentation).
    pub fn from_options(options: &ArchOptions) -> Result<Self> {
        if options.base_width.is_some() {
            return Err(CoreError::Invalid(format!(
                "architecture {NAME:?} does not take a base_width (its width multiplier is fixed at 1.0)"
            )));
        }
        let (c, h, w) = options.input_or(3, 224, 224);
        let classes = options.classes.unwrap_or(1000);
        if c == 0 || classes == 0 {
            return Err(CoreError::Invalid(format!(
                "architecture {NAME:?}: input channels and classes must be positive"
            )));
        }
        Ok(ImageNetConfig {
            input_channels: c,
            height: h,
            width: w,
            classes,
            activation: Activation::from_variant(NAME, options.variant.as_deref())?,
        })
    }

    /// The backbone geometry.
    pub fn geometry(&self) -> MobileNetV2Geometry {
        MobileNetV2Geometry::imagenet(self.input_channels)
    }

    /// The ReLU layers in network order.
    pub fn layers(&self) -> Result<Vec<ReluLayer>> {
        Ok(self.describe()?.layer_table()?.layers)
    }

    /// The layer table (from [`Self::describe`]).
    pub fn layer_table(&self) -> Result<LayerTable> {
        self.describe()?.layer_table()
    }

    /// The network's description with torchvision's module names: the backbone
    /// ([`MobileNetV2Geometry::describe_backbone`]), global average pooling `avgpool`, dropout
    /// 0.2 (`classifier.0`, training only) and `classifier.1`.
    pub fn describe(&self) -> Result<NetDesc> {
        let mut d = NetDesc::new(NAME, [self.input_channels, self.height, self.width])?;
        let relu6 = self.activation == Activation::Relu6;
        let x = self.geometry().describe_backbone(
            &mut d,
            0,
            Naming::Torchvision,
            relu6,
            NAME,
            (self.height, self.width),
        )?;
        let x = d.push("avgpool", DescOp::GlobalAvgPool, &[x])?;
        let x = d.push("classifier.0", DescOp::Dropout { p: 0.2 }, &[x])?;
        linear(&mut d, "classifier.1", x, self.classes)?;
        Ok(d)
    }

    /// The secure-model graph ([`Self::describe`]): layers named by `spec` get its block
    /// sizes, the others the network's activation (ReLU6 or ReLU); dropout is the identity.
    pub fn secure_graph(
        &self,
        spec: Option<&BlockSpec>,
        frac_bits: u32,
    ) -> Result<(SecureModel, Vec<ParamSource>)> {
        let desc = self.describe()?;
        knapsec_arch_kit::check_spec_layers(NAME, &desc.layer_table()?.layers, spec)?;
        desc.secure_graph(spec, frac_bits)
    }
}

knapsec_arch_kit::plan_adapter! {
    /// The architecture adapter of torchvision's ImageNet MobileNetV2.
    pub struct MobileNetV2ImageNet {
        name: NAME,
        provider: "knapsec-arch-mobilenet",
        description: "MobileNetV2 (torchvision ImageNet classifier, ReLU6 or ReLU), 3x224x224 input, 1000 classes",
        plan: ImageNetConfig = |options| ImageNetConfig::from_options(options),
        candidates: reference_candidates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::{ArchAdapter, BlockSize, candidates};

    #[test]
    fn imagenet_layer_table() {
        let t = MobileNetV2ImageNet
            .layer_table(&ArchOptions::default())
            .unwrap();
        assert_eq!(t.layers.len(), 35);
        assert_eq!(t.layers[0], ReluLayer::new("conv1", 32, 112, 112));
        assert_eq!(t.layers[1], ReluLayer::new("layer1_0_0", 32, 112, 112));
        assert_eq!(t.layers[2], ReluLayer::new("layer2_0_0", 96, 112, 112));
        assert_eq!(t.layers[3], ReluLayer::new("layer2_0_1", 96, 56, 56));
        assert_eq!(
            *t.layers.last().unwrap(),
            ReluLayer::new("conv2", 1280, 7, 7)
        );
        assert_eq!(
            t.get("layer6_0_1").unwrap(),
            &ReluLayer::new("layer6_0_1", 576, 7, 7)
        );
        // conv1 + layer1_0_0 + two activations of the hidden width in each of the 16 expanded
        // blocks + conv2.
        let hidden: u64 =
            96 + 144 + 144 + 2 * 192 + 192 + 3 * 384 + 384 + 2 * 576 + 576 + 2 * 960 + 960;
        assert_eq!(t.channels(), 32 + 32 + 2 * hidden + 1280);
        assert_eq!(t.channels(), 15_552);
        assert_eq!(t.drelus(), 6_105_792);
        for l in &t.layers {
            let c = MobileNetV2ImageNet.candidates(l);
            assert_eq!(
                c,
                candidates::preset_for_side(l.height).unwrap(),
                "{}",
                l.name
            );
        }
    }

    #[test]
    fn secure_graph_matches_the_layer_table() {
        use knapsec_core::graph::Op;
        let cfg = ImageNetConfig::from_options(&ArchOptions::default()).unwrap();
        let table = cfg.layer_table().unwrap();
        let mut spec = BlockSpec::new(NAME);
        spec.layers.insert(
            "layer3_1_1".into(),
            vec![BlockSize::Patch { h: 2, w: 2 }; 192],
        );
        let (model, params) = cfg.secure_graph(Some(&spec), 12).unwrap();
        use knapsec_arch_kit::spec::{graph_activations, layer_shapes};
        assert_eq!(graph_activations(&model), layer_shapes(&table.layers));
        assert_eq!(
            model.drelus(),
            192 * 14 * 14,
            "only the spec's layer is a block ReLU; the others are ReLU6"
        );
        assert_eq!(model.output_shape(), [1000, 1, 1]);
        // 52 convolutions (stem, 17 blocks with 2 or 3, last) + the classifier.
        assert_eq!(params.len(), 1 + 2 + 16 * 3 + 1 + 1);
        assert_eq!(model.nodes.iter().filter(|n| n.op == Op::Add).count(), 10);
        assert!(
            params.iter().any(|p| p.module == "features.17.conv.2"
                && p.bn.as_deref() == Some("features.17.conv.3"))
        );
        let relu = ImageNetConfig::from_options(&ArchOptions {
            variant: Some("relu".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            relu.secure_graph(None, 12).unwrap().0.drelus(),
            table.drelus()
        );
        spec.layers
            .insert("layer3_1_1".into(), vec![BlockSize::RELU; 3]);
        assert!(cfg.secure_graph(Some(&spec), 12).is_err());
        spec.layers.clear();
        spec.layers.insert("nope".into(), vec![]);
        assert!(
            cfg.secure_graph(Some(&spec), 12)
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
    }

    #[test]
    fn options_are_checked() {
        let relu = ArchOptions {
            variant: Some("relu".into()),
            ..Default::default()
        };
        assert_eq!(
            ImageNetConfig::from_options(&relu).unwrap().activation,
            Activation::Relu
        );
        let bad = ArchOptions {
            variant: Some("swish".into()),
            ..Default::default()
        };
        assert!(
            MobileNetV2ImageNet
                .layer_table(&bad)
                .unwrap_err()
                .to_string()
                .contains("swish")
        );
        let width = ArchOptions {
            base_width: Some(16),
            ..Default::default()
        };
        assert!(MobileNetV2ImageNet.layer_table(&width).is_err());
        let tiny = ArchOptions {
            input_height: Some(1),
            input_width: Some(1),
            ..Default::default()
        };
        // 1×1 input: every stride-2 convolution still yields a 1×1 map (padding 1).
        assert_eq!(
            MobileNetV2ImageNet.layer_table(&tiny).unwrap().layers[34].height,
            1
        );
        let odd = ArchOptions {
            input_height: Some(100),
            input_width: Some(60),
            ..Default::default()
        };
        let t = MobileNetV2ImageNet.layer_table(&odd).unwrap();
        assert_eq!((t.layers[34].height, t.layers[34].width), (4, 2));
        // Non-square maps fall back to generated candidates.
        assert_eq!(
            MobileNetV2ImageNet.candidates(&t.layers[34]).len(),
            4 * 2 + 1
        );
    }
}
