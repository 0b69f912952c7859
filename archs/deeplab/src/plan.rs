//! The tch-free description of the two DeepLabV3 networks (digest §4.4, §4.5, §5): options,
//! backbone geometry, layer table, block names and the secure-model graph.
//!
//! Both are OpenMMLab (mmseg 0.x) models with the reference's settings, output stride 8:
//!
//! * `deeplabv3-mobilenetv2` (ADE20K, 150 classes): mmseg `MobileNetV2` widen 1.0, strides
//!   `(1,2,2,1,1,1,1)`, dilations `(1,1,1,2,2,4,4)`; ReLU6 (`variant: "relu6"`, default, as in
//!   the mmseg checkpoint) or ReLU (`"relu"`, the reference's fine-tuned configs). The ASPP head
//!   always uses ReLU.
//! * `deeplabv3-resnet50` (Pascal VOC, 21 classes): mmseg `ResNetV1c`-50 — deep stem of three
//!   3×3 conv-BN-ReLU (32, 32, 64 channels, the first with stride 2), then
//!   `AvgPool2d(3, 2, 1)` (the reference's `AvgPoolResNetSeg`; `variant: "avgpool-stem"`,
//!   default) or `MaxPool2d(3, 2, 1)` (`"maxpool-stem"`, mmseg's original); bottlenecks in the
//!   "pytorch" style (stride on the 3×3), strides `(1,2,1,1)`, dilations `(1,1,2,4)` with
//!   `contract_dilation` (the first block of a dilated stage uses half the dilation).
//!   Unlike the reference's `MyBottleneck` (digest §10.2) `relu_1` runs once, after
//!   conv1/bn1, and `relu_2` after conv2/bn2, so every `layerR_B_2` entry of a spec is live.
//!   The backbone is the one ResNet plan of `knapsec-arch-kit`
//!   ([`ResNetPlan::deeplab_v1c50`]), not a second ResNet.
//!
//! The decode head is mmseg's `ASPPHead` (in 320 or 2048 channels, 512 channels, dilations
//! 1/12/24/36): an image-pooling branch (global average pool → 1×1 conv → BN → ReLU →
//! broadcast to H×W; the reference's `SecureASPPHead` repeats the 1×1 map, which equals
//! mmseg's bilinear resize of a 1×1 map), four ASPP branches (1×1, then 3×3 with dilation and
//! padding 12, 24, 36; conv-BN-ReLU), concatenation in that order (2560 channels), the 3×3
//! `bottleneck` conv-BN-ReLU, and `conv_seg` (1×1 with bias, dropout 0.1 before it in
//! training). The output is the segmentation logits at 1/8 of the input resolution.
//!
//! Layer names (the reference's, §4.4/§4.5): `conv1`, `layerR_B_K` (MobileNetV2; see
//! `knapsec_arch_mobilenet`) or `stem_2`, `stem_5`, `stem_8`, `layerR_B_K` (ResNet, `K` = 1,
//! 2, 3 for the activations after conv1, conv2 and the residual addition); `decode_0` (image
//! pooling), `decode_1`…`decode_4` (ASPP branches), `decode_5` (bottleneck).
//!
//! Blocks (where distortion runs from): the backbone's (`conv1`, `layerR_B` for MobileNetV2;
//! `stem`, `layerR_B` for the ResNet) and `decode` (the head).

use knapsec_arch_kit::desc::{conv_bn, relu};
use knapsec_arch_kit::options::{invalid as bad, positive};
use knapsec_arch_kit::spec::check_spec_layers;
use knapsec_arch_mobilenet::geometry::{MobileNetV2Geometry, Naming};
use knapsec_core::graph::SecureModel;
use knapsec_core::graph_build::ParamSource;
use knapsec_core::netdesc::{DescOp, NetDesc, ResizeMode};
use knapsec_core::{ArchOptions, BlockSpec, CoreError, LayerTable, ReluLayer, Result};

pub use knapsec_arch_kit::resnet::{ResNetPlan, StemPool};

/// Registry name of DeepLabV3 with the MobileNetV2 backbone (ADE20K).
pub const DEEPLABV3_MOBILENETV2: &str = "deeplabv3-mobilenetv2";
/// Registry name of DeepLabV3 with the ResNet-50 (V1c) backbone (Pascal VOC).
pub const DEEPLABV3_RESNET50: &str = "deeplabv3-resnet50";

/// Channels of the ASPP head's branches and bottleneck.
pub const ASPP_CHANNELS: u32 = 512;
/// Dilations of the four ASPP branches (the first is a 1×1 convolution).
pub const ASPP_DILATIONS: [u32; 4] = [1, 12, 24, 36];

/// The backbone of a DeepLabV3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backbone {
    /// mmseg's MobileNetV2, dilated for output stride 8.
    MobileNetV2 {
        /// Its stem and inverted residual blocks.
        geometry: MobileNetV2Geometry,
        /// Whether its activations are ReLU6 (else ReLU).
        relu6: bool,
    },
    /// mmseg's dilated `ResNetV1c`-50 (deep stem of three 3×3 convolutions).
    ResNet50(ResNetPlan),
}

/// Everything needed to build one DeepLabV3 at one set of options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeepLabPlan {
    /// Registry name of the architecture.
    pub arch: &'static str,
    /// Input `(C, H, W)`.
    pub input: (u32, u32, u32),
    /// Segmentation classes (channels of the logits).
    pub classes: u32,
    /// The backbone before the ASPP head.
    pub backbone: Backbone,
    /// Channels entering the head (320 or 2048).
    pub head_in: u32,
    /// Map size of the backbone's output and of the logits.
    pub out_hw: (u32, u32),
}

impl DeepLabPlan {
    /// The plan of `arch` (one of the two names above) at `options`. Defaults: 3×512×512
    /// input, 150 (MobileNetV2) or 21 (ResNet-50) classes; `base_width` is refused.
    pub fn new(arch: &str, options: &ArchOptions) -> Result<Self> {
        let arch: &'static str = match arch {
            DEEPLABV3_MOBILENETV2 => DEEPLABV3_MOBILENETV2,
            DEEPLABV3_RESNET50 => DEEPLABV3_RESNET50,
            other => {
                return Err(CoreError::Invalid(format!(
                    "{other:?} is not a DeepLabV3 of this crate"
                )));
            }
        };
        if options.base_width.is_some() {
            return Err(bad(
                arch,
                "base_width",
                "is not supported (the widths are the reference's)",
            ));
        }
        let c = positive(arch, "input_channels", options.input_channels, 3)?;
        let h = positive(arch, "input_height", options.input_height, 512)?;
        let w = positive(arch, "input_width", options.input_width, 512)?;
        let (backbone, head_in, out_hw, default_classes) = if arch == DEEPLABV3_MOBILENETV2 {
            let relu6 = match options.variant.as_deref() {
                None | Some("relu6") => true,
                Some("relu") => false,
                Some(v) => {
                    return Err(bad(
                        arch,
                        "variant",
                        format!("{v:?} is unknown (expected \"relu6\" or \"relu\")"),
                    ));
                }
            };
            let geometry = MobileNetV2Geometry::segmentation_d8(c);
            let out = geometry.output_size(arch, h, w)?;
            (Backbone::MobileNetV2 { geometry, relu6 }, 320, out, 150)
        } else {
            let pool = match options.variant.as_deref() {
                None | Some("avgpool-stem") => StemPool::Avg,
                Some("maxpool-stem") => StemPool::Max,
                Some(v) => {
                    return Err(bad(
                        arch,
                        "variant",
                        format!("{v:?} is unknown (expected \"avgpool-stem\" or \"maxpool-stem\")"),
                    ));
                }
            };
            let resnet = ResNetPlan::deeplab_v1c50(arch, (c, h, w), pool)?;
            let (channels, out) = resnet.out_shape();
            (Backbone::ResNet50(resnet), channels, out, 21)
        };
        let classes = positive(arch, "classes", options.classes, default_classes)?;
        Ok(DeepLabPlan {
            arch,
            input: (c, h, w),
            classes,
            backbone,
            head_in,
            out_hw,
        })
    }

    /// Block names in execution order (the backbone's, then `decode`).
    pub fn block_names(&self) -> Vec<String> {
        let mut names = match &self.backbone {
            Backbone::MobileNetV2 { geometry, .. } => std::iter::once("conv1".to_string())
                .chain(
                    geometry
                        .blocks
                        .iter()
                        .map(|b| format!("layer{}_{}", b.stage, b.index)),
                )
                .collect(),
            Backbone::ResNet50(resnet) => resnet.block_names(),
        };
        names.push("decode".into());
        names
    }

    /// All ReLU layers in network order (from [`Self::describe`]).
    pub fn layers(&self) -> Result<Vec<ReluLayer>> {
        Ok(self.describe()?.layer_table()?.layers)
    }

    /// The layer table (from [`Self::describe`]).
    pub fn layer_table(&self) -> Result<LayerTable> {
        self.describe()?.layer_table()
    }

    /// The network's description: the backbone (the one ResNet of
    /// [`ResNetPlan::describe_backbone`], or [`MobileNetV2Geometry::describe_backbone`] with
    /// OpenMMLab names), then the ASPP head (block `decode`).
    pub fn describe(&self) -> Result<NetDesc> {
        let (c, h, w) = self.input;
        let mut d = NetDesc::new(self.arch, [c, h, w])?;
        let x = match &self.backbone {
            Backbone::ResNet50(resnet) => resnet.describe_backbone(&mut d, 0)?,
            Backbone::MobileNetV2 { geometry, relu6 } => geometry.describe_backbone(
                &mut d,
                0,
                Naming::OpenMmlab,
                *relu6,
                self.arch,
                (h, w),
            )?,
        };
        self.describe_head(&mut d, x)?;
        d.end_block("decode");
        Ok(d)
    }

    /// mmseg's `ASPPHead` on node `x` of `d` (see the module documentation); returns
    /// `decode_head.conv_seg`, the logits.
    fn describe_head(&self, d: &mut NetDesc, x: usize) -> Result<usize> {
        let (h, w) = self.out_hw;
        let c = ASPP_CHANNELS;
        let pooled = d.push("decode_head.image_pool.0", DescOp::GlobalAvgPool, &[x])?;
        let (conv, bn) = (
            "decode_head.image_pool.1.conv",
            "decode_head.image_pool.1.bn",
        );
        let ip = conv_bn(d, conv, bn, pooled, c, [1, 1, 0, 1, 1])?;
        let ip = relu(d, "decode_0", ip)?;
        // mmseg resizes the 1×1 map bilinearly, which repeats it: nearest does so exactly.
        let up = DescOp::Resize {
            height: h,
            width: w,
            mode: ResizeMode::Nearest,
        };
        let mut branches = vec![d.push("decode_head.image_pool.broadcast", up, &[ip])?];
        for (i, &dil) in ASPP_DILATIONS.iter().enumerate() {
            let m = format!("decode_head.aspp_modules.{i}");
            let geometry = if dil == 1 {
                [1, 1, 0, 1, 1]
            } else {
                [3, 1, dil, dil, 1]
            };
            let y = conv_bn(d, &format!("{m}.conv"), &format!("{m}.bn"), x, c, geometry)?;
            branches.push(relu(d, &format!("decode_{}", i + 1), y)?);
        }
        let cat = d.push("decode_head.concat", DescOp::Concat, &branches)?;
        let (conv, bn) = ("decode_head.bottleneck.conv", "decode_head.bottleneck.bn");
        let y = conv_bn(d, conv, bn, cat, c, [3, 1, 1, 1, 1])?;
        let y = relu(d, "decode_5", y)?;
        let y = d.push("decode_head.dropout", DescOp::Dropout { p: 0.1 }, &[y])?;
        let seg = DescOp::Conv {
            module: "decode_head.conv_seg".into(),
            bias: true,
            out_channels: self.classes,
            kernel: [1, 1],
            stride: [1, 1],
            pads: [0; 4],
            dilation: [1, 1],
            groups: 1,
        };
        d.push("decode_head.conv_seg", seg, &[y])
    }

    /// The secure-model graph with OpenMMLab module names ([`Self::describe`]): layers named
    /// by `spec` get its block sizes, the others the network's activation (ReLU6 in a ReLU6
    /// MobileNetV2 backbone, else ReLU). The output node is `decode_head.conv_seg`,
    /// `[classes, H/8, W/8]`.
    pub fn secure_graph(
        &self,
        spec: Option<&BlockSpec>,
        frac_bits: u32,
    ) -> Result<(SecureModel, Vec<ParamSource>)> {
        let desc = self.describe()?;
        check_spec_layers(self.arch, &desc.layer_table()?.layers, spec)?;
        desc.secure_graph(spec, frac_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_arch_kit::spec::{graph_activations, layer_shapes};
    use knapsec_core::BlockSize;
    use knapsec_core::graph::Op;

    #[test]
    fn mobilenetv2_table_at_512() {
        let plan = DeepLabPlan::new(DEEPLABV3_MOBILENETV2, &ArchOptions::default()).unwrap();
        let t = plan.layer_table().unwrap();
        assert_eq!(t.layers.len(), 40);
        assert_eq!(t.channels(), 17_344);
        assert_eq!(t.drelus(), 85_262_848);
        assert_eq!(t.layers[0], ReluLayer::new("conv1", 32, 256, 256));
        assert_eq!(
            t.get("layer2_0_1").unwrap(),
            &ReluLayer::new("layer2_0_1", 96, 128, 128)
        );
        assert_eq!(
            t.get("layer3_0_1").unwrap(),
            &ReluLayer::new("layer3_0_1", 144, 64, 64)
        );
        assert_eq!(
            t.get("layer7_0_1").unwrap(),
            &ReluLayer::new("layer7_0_1", 960, 64, 64)
        );
        assert_eq!(
            t.get("decode_0").unwrap(),
            &ReluLayer::new("decode_0", 512, 1, 1)
        );
        assert_eq!(t.layers[39], ReluLayer::new("decode_5", 512, 64, 64));
        assert_eq!(plan.block_names().len(), 1 + 17 + 1);
    }

    #[test]
    fn resnet50_table_at_512() {
        let plan = DeepLabPlan::new(DEEPLABV3_RESNET50, &ArchOptions::default()).unwrap();
        let t = plan.layer_table().unwrap();
        assert_eq!(t.layers.len(), 57);
        assert_eq!(t.channels(), 25_856);
        assert_eq!(t.drelus(), 127_402_496);
        assert_eq!(t.layers[2], ReluLayer::new("stem_8", 64, 256, 256));
        assert_eq!(
            t.get("layer1_0_1").unwrap(),
            &ReluLayer::new("layer1_0_1", 64, 128, 128)
        );
        assert_eq!(
            t.get("layer2_0_1").unwrap(),
            &ReluLayer::new("layer2_0_1", 128, 128, 128)
        );
        assert_eq!(
            t.get("layer2_0_2").unwrap(),
            &ReluLayer::new("layer2_0_2", 128, 64, 64)
        );
        assert_eq!(
            t.get("layer4_2_3").unwrap(),
            &ReluLayer::new("layer4_2_3", 2048, 64, 64)
        );
        assert_eq!(plan.block_names().len(), 1 + 16 + 1);
        let Backbone::ResNet50(resnet) = &plan.backbone else {
            panic!()
        };
        let dil: Vec<u32> = resnet.units.iter().map(|u| u.dilation).collect();
        // layer1 and layer2 undilated; layer3 (2) and layer4 (4) start at half their dilation.
        assert_eq!(dil, [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 4, 4]);
    }

    #[test]
    fn graphs_match_the_tables_at_65() {
        for (arch, first_conv, relu6_nodes) in [
            (DEEPLABV3_MOBILENETV2, "backbone.conv1.conv", 34),
            (DEEPLABV3_RESNET50, "backbone.stem.0", 0),
        ] {
            let opts = ArchOptions {
                input_height: Some(65),
                input_width: Some(65),
                ..Default::default()
            };
            let plan = DeepLabPlan::new(arch, &opts).unwrap();
            assert_eq!(plan.out_hw, (9, 9), "{arch}");
            let table = plan.layer_table().unwrap();
            let mut spec = BlockSpec::new(arch);
            spec.layers.insert(
                "decode_3".into(),
                vec![BlockSize::Patch { h: 3, w: 3 }; 512],
            );
            let (model, params) = plan.secure_graph(Some(&spec), 12).unwrap();
            assert_eq!(
                graph_activations(&model),
                layer_shapes(&table.layers),
                "{arch}"
            );
            assert_eq!(model.output_shape(), [plan.classes, 9, 9]);
            assert_eq!(
                model.output_kind,
                knapsec_core::graph::OutputKind::Segmentation
            );
            assert_eq!(model.nodes[1].name, first_conv);
            let relu6 = model
                .nodes
                .iter()
                .filter(|n| matches!(n.op, Op::Relu6 { .. }))
                .count();
            assert_eq!(relu6, relu6_nodes, "{arch}");
            let bcast = model
                .nodes
                .iter()
                .position(|n| {
                    matches!(
                        n.op,
                        Op::Broadcast {
                            height: 9,
                            width: 9
                        }
                    )
                })
                .unwrap();
            let concat = model.nodes.iter().find(|n| n.op == Op::Concat).unwrap();
            assert_eq!(
                concat.inputs[0], bcast,
                "the image-pooling branch comes first"
            );
            assert_eq!(concat.shape, [2560, 9, 9]);
            assert!(
                params
                    .iter()
                    .any(|p| p.module == "decode_head.conv_seg" && p.module_bias && p.bn.is_none())
            );
            let last = params
                .iter()
                .filter(|p| p.module.starts_with("decode_head"))
                .count();
            assert_eq!(last, 7);
        }
    }

    #[test]
    fn resnet_relu_2_follows_conv2() {
        let plan = DeepLabPlan::new(DEEPLABV3_RESNET50, &ArchOptions::default()).unwrap();
        let (model, _) = plan.secure_graph(None, 12).unwrap();
        let pos = |name: &str| model.nodes.iter().position(|n| n.name == name).unwrap();
        let relu2 = &model.nodes[pos("layer3_0_2")];
        assert_eq!(model.nodes[relu2.inputs[0]].name, "backbone.layer3.0.conv2");
        let relu1 = &model.nodes[pos("layer3_0_1")];
        assert_eq!(model.nodes[relu1.inputs[0]].name, "backbone.layer3.0.conv1");
        let conv2 = &model.nodes[pos("backbone.layer3.0.conv2")];
        assert_eq!(conv2.inputs[0], pos("layer3_0_1"));
        let Op::Conv2d {
            dilation, padding, ..
        } = &conv2.op
        else {
            panic!()
        };
        assert_eq!(
            (*dilation, *padding),
            ([1, 1], [1, 1]),
            "contract_dilation halves the first block's dilation"
        );
        let Op::Conv2d { dilation, .. } = &model.nodes[pos("backbone.layer4.1.conv2")].op else {
            panic!()
        };
        assert_eq!(*dilation, [4, 4]);
        assert_eq!(model.drelus(), plan.layer_table().unwrap().drelus());
    }

    #[test]
    fn options_are_checked() {
        let o = |v: &str| ArchOptions {
            variant: Some(v.into()),
            ..Default::default()
        };
        assert!(DeepLabPlan::new(DEEPLABV3_MOBILENETV2, &o("relu")).is_ok());
        assert!(DeepLabPlan::new(DEEPLABV3_MOBILENETV2, &o("maxpool-stem")).is_err());
        let max = DeepLabPlan::new(DEEPLABV3_RESNET50, &o("maxpool-stem")).unwrap();
        assert!(
            max.secure_graph(None, 12)
                .unwrap()
                .0
                .nodes
                .iter()
                .any(|n| matches!(n.op, Op::MaxPool { .. }))
        );
        assert!(
            DeepLabPlan::new(DEEPLABV3_RESNET50, &o("relu6"))
                .unwrap_err()
                .to_string()
                .contains("relu6")
        );
        let width = ArchOptions {
            base_width: Some(8),
            ..Default::default()
        };
        assert!(DeepLabPlan::new(DEEPLABV3_RESNET50, &width).is_err());
        let classes = ArchOptions {
            classes: Some(0),
            ..Default::default()
        };
        assert!(DeepLabPlan::new(DEEPLABV3_RESNET50, &classes).is_err());
        assert!(DeepLabPlan::new("deeplabv3-vgg", &ArchOptions::default()).is_err());
    }
}
