//! The shape of a MobileNetV2 backbone (Sandler et al. 2018; torchvision's `mobilenet_v2`
//! and OpenMMLab's `MobileNetV2`, digest §4.4), without tch: the inverted-residual blocks with
//! their channels, strides and dilations, and the map size after each convolution.
//!
//! Both the layer tables, the secure-model graphs (tch-free) and the tch networks are built
//! from the same [`MobileNetV2Geometry`] and [`Naming`], so they cannot disagree.
//! `knapsec-arch-deeplab` reuses them for the DeepLabV3 backbone (OpenMMLab names, strides
//! `(1,2,2,1,1,1,1)`, dilations `(1,1,1,2,2,4,4)`).

use knapsec_arch_kit::desc::{act, conv_bn};
use knapsec_core::netdesc::{ActKind, DescOp, NetDesc};
use knapsec_core::{CoreError, Result};

/// Output side of a convolution or pooling window (PyTorch's floor formula), with checked
/// arithmetic; the same function as the graph validator's.
pub use knapsec_core::graph::window_out;

/// The seven stages of MobileNetV2: (expansion ratio t, output channels c, blocks n, stride s)
/// of the paper's Table 2, as in torchvision's `inverted_residual_setting` and OpenMMLab's
/// `arch_settings` (which has no stride: it comes from the `strides` argument).
pub const STAGES: [(u32, u32, u32, u32); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Channels of the stem convolution (`features.0` / `backbone.conv1`).
pub const STEM_CHANNELS: u32 = 32;

/// One inverted-residual block: optional 1×1 expansion, 3×3 depthwise (stride, dilation),
/// 1×1 linear projection, and a residual connection when the shape is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvertedResidual {
    /// Stage number, 1-based (`layer1` … `layer7`).
    pub stage: u32,
    /// Block index inside the stage, 0-based.
    pub index: u32,
    /// Index of this block in torchvision's `features` (the stem is `features.0`).
    pub feature: u32,
    /// Input channels.
    pub in_channels: u32,
    /// Channels of the expanded (hidden) representation: `round(in · t)`.
    pub mid_channels: u32,
    /// Output channels.
    pub out_channels: u32,
    /// Whether a 1×1 expansion comes first (t ≠ 1).
    pub expand: bool,
    /// Stride of the depthwise convolution.
    pub stride: u32,
    /// Dilation (= padding) of the depthwise convolution.
    pub dilation: u32,
}

impl InvertedResidual {
    /// The block adds its input to its output (stride 1 and same channels).
    pub fn residual(&self) -> bool {
        self.stride == 1 && self.in_channels == self.out_channels
    }

    /// Layer name of the depthwise convolution's activation (`K = 1` after an expansion,
    /// `K = 0` otherwise, as in the reference's grammar `layerR_B_K`).
    pub fn depthwise_layer(&self) -> String {
        format!(
            "layer{}_{}_{}",
            self.stage,
            self.index,
            u32::from(self.expand)
        )
    }

    /// Layer name of the expansion's activation, if the block has one.
    pub fn expand_layer(&self) -> Option<String> {
        self.expand
            .then(|| format!("layer{}_{}_0", self.stage, self.index))
    }
}

/// The whole backbone: stem, blocks, and optionally the final 1×1 convolution of the
/// classifier (`features.18`, 320 → 1280).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MobileNetV2Geometry {
    /// Channels of the input image.
    pub in_channels: u32,
    /// Stride of the stem convolution.
    pub stem_stride: u32,
    /// The inverted residual blocks, in order.
    pub blocks: Vec<InvertedResidual>,
    /// Output channels of the last 1×1 convolution (1280 in the classifier), if any.
    pub last_channels: Option<u32>,
}

impl MobileNetV2Geometry {
    /// torchvision's ImageNet classifier (width 1.0): strides from [`STAGES`], no dilation,
    /// final 1×1 convolution to 1280 channels.
    pub fn imagenet(in_channels: u32) -> Self {
        let strides: Vec<u32> = STAGES.iter().map(|s| s.3).collect();
        Self::with(in_channels, &strides, &[1; 7], Some(1280))
    }

    /// OpenMMLab's segmentation backbone of DeepLabV3 (output stride 8): strides
    /// `(1,2,2,1,1,1,1)`, dilations `(1,1,1,2,2,4,4)`, no final 1×1 convolution.
    pub fn segmentation_d8(in_channels: u32) -> Self {
        Self::with(
            in_channels,
            &[1, 2, 2, 1, 1, 1, 1],
            &[1, 1, 1, 2, 2, 4, 4],
            None,
        )
    }

    fn with(
        in_channels: u32,
        strides: &[u32],
        dilations: &[u32],
        last_channels: Option<u32>,
    ) -> Self {
        let mut blocks = Vec::new();
        let mut cin = STEM_CHANNELS;
        let mut feature = 1;
        for (i, &(t, c, n, _)) in STAGES.iter().enumerate() {
            for b in 0..n {
                let mid = (f64::from(cin) * f64::from(t)).round() as u32;
                blocks.push(InvertedResidual {
                    stage: i as u32 + 1,
                    index: b,
                    feature,
                    in_channels: cin,
                    mid_channels: mid,
                    out_channels: c,
                    expand: t != 1,
                    stride: if b == 0 { strides[i] } else { 1 },
                    dilation: dilations[i],
                });
                cin = c;
                feature += 1;
            }
        }
        MobileNetV2Geometry {
            in_channels,
            stem_stride: 2,
            blocks,
            last_channels,
        }
    }

    /// Channels of the backbone's output.
    pub fn out_channels(&self) -> u32 {
        self.last_channels
            .unwrap_or_else(|| self.blocks.last().map_or(STEM_CHANNELS, |b| b.out_channels))
    }

    /// Index in torchvision's `features` of the final 1×1 convolution.
    pub fn last_feature(&self) -> u32 {
        self.blocks.last().map_or(1, |b| b.feature + 1)
    }

    /// The ReLU layers `(name, channels, height, width)` in network order for an
    /// `height × width` input: `conv1`, then per block `layerR_B_0` (expansion, if any) and the
    /// depthwise activation, then `conv2` if the geometry has a final 1×1 convolution.
    pub fn relu_layers(
        &self,
        arch: &str,
        height: u32,
        width: u32,
    ) -> Result<Vec<(String, u32, u32, u32)>> {
        let too_small = || {
            CoreError::Invalid(format!(
                "architecture {arch:?}: a {height}x{width} input is too small for MobileNetV2"
            ))
        };
        let mut h = window_out(height, 3, self.stem_stride, 1, 1).ok_or_else(too_small)?;
        let mut w = window_out(width, 3, self.stem_stride, 1, 1).ok_or_else(too_small)?;
        let mut out = vec![("conv1".to_string(), STEM_CHANNELS, h, w)];
        for b in &self.blocks {
            if let Some(name) = b.expand_layer() {
                out.push((name, b.mid_channels, h, w));
            }
            h = window_out(h, 3, b.stride, b.dilation, b.dilation).ok_or_else(too_small)?;
            w = window_out(w, 3, b.stride, b.dilation, b.dilation).ok_or_else(too_small)?;
            out.push((b.depthwise_layer(), b.mid_channels, h, w));
        }
        if let Some(c) = self.last_channels {
            out.push(("conv2".to_string(), c, h, w));
        }
        Ok(out)
    }

    /// Map size `(height, width)` of the backbone's output for an `height × width` input.
    pub fn output_size(&self, arch: &str, height: u32, width: u32) -> Result<(u32, u32)> {
        let layers = self.relu_layers(arch, height, width)?;
        let last = layers.last().expect("the stem layer is always present");
        Ok((last.2, last.3))
    }
}

/// `state_dict` names of one convolution and its BatchNorm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvNames {
    /// `state_dict` prefix of the convolution.
    pub conv: String,
    /// `state_dict` prefix of the BatchNorm.
    pub bn: String,
}

/// Which checkpoint's `state_dict` names a backbone uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// torchvision's `mobilenet_v2`: `features.0.0` (conv) / `features.0.1` (BN); blocks
    /// `features.i.conv.0.0` (expansion), `conv.1.0` (depthwise), `conv.2` + `conv.3`
    /// (projection conv + BN), without expansion `conv.0.0`, `conv.1` + `conv.2`; last
    /// convolution `features.18.0` / `.1`.
    Torchvision,
    /// OpenMMLab's `MobileNetV2` under `backbone.`: `backbone.conv1.conv` / `.bn`; blocks
    /// `backbone.layerR.B.conv.K.conv` / `.bn` with `K` = expansion, depthwise, projection
    /// (no expansion: depthwise, projection).
    OpenMmlab,
}

fn names(conv: String, bn: String) -> ConvNames {
    ConvNames { conv, bn }
}

impl Naming {
    /// The stem convolution.
    pub fn stem(self) -> ConvNames {
        match self {
            Naming::Torchvision => names("features.0.0".into(), "features.0.1".into()),
            Naming::OpenMmlab => names("backbone.conv1.conv".into(), "backbone.conv1.bn".into()),
        }
    }

    fn mm(b: &InvertedResidual, k: u32) -> ConvNames {
        let p = format!("backbone.layer{}.{}.conv.{k}", b.stage, b.index);
        names(format!("{p}.conv"), format!("{p}.bn"))
    }

    /// The module path of block `b` (`features.i` / `backbone.layerR.B`).
    pub fn block(self, b: &InvertedResidual) -> String {
        match self {
            Naming::Torchvision => format!("features.{}", b.feature),
            Naming::OpenMmlab => format!("backbone.layer{}.{}", b.stage, b.index),
        }
    }

    /// The 1×1 expansion of block `b`, if it has one.
    pub fn expand(self, b: &InvertedResidual) -> Option<ConvNames> {
        if !b.expand {
            return None;
        }
        Some(match self {
            Naming::Torchvision => {
                let p = format!("features.{}.conv.0", b.feature);
                names(format!("{p}.0"), format!("{p}.1"))
            }
            Naming::OpenMmlab => Self::mm(b, 0),
        })
    }

    /// The 3×3 depthwise convolution of block `b`.
    pub fn depthwise(self, b: &InvertedResidual) -> ConvNames {
        let k = u32::from(b.expand);
        match self {
            Naming::Torchvision => {
                let p = format!("features.{}.conv.{k}", b.feature);
                names(format!("{p}.0"), format!("{p}.1"))
            }
            Naming::OpenMmlab => Self::mm(b, k),
        }
    }

    /// The 1×1 linear projection of block `b` (no activation).
    pub fn project(self, b: &InvertedResidual) -> ConvNames {
        let k = 1 + u32::from(b.expand);
        match self {
            Naming::Torchvision => names(
                format!("features.{}.conv.{k}", b.feature),
                format!("features.{}.conv.{}", b.feature, k + 1),
            ),
            Naming::OpenMmlab => Self::mm(b, k),
        }
    }

    /// The last 1×1 convolution (`features.18`; OpenMMLab's classifier calls it `conv2`).
    pub fn last(self, g: &MobileNetV2Geometry) -> ConvNames {
        match self {
            Naming::Torchvision => {
                let i = g.last_feature();
                names(format!("features.{i}.0"), format!("features.{i}.1"))
            }
            Naming::OpenMmlab => names("backbone.conv2.conv".into(), "backbone.conv2.bn".into()),
        }
    }
}

impl MobileNetV2Geometry {
    /// Adds the backbone to description `d` on node `x` (an `height × width` input of
    /// architecture `arch`), modules named by `naming`, activations ReLU6 when `relu6`; returns
    /// the last node. Blocks: `conv1` (the stem), `layer{S}_{I}` per inverted residual, and
    /// `conv2` after the final 1×1 convolution if any.
    #[allow(clippy::too_many_arguments)]
    pub fn describe_backbone(
        &self,
        d: &mut NetDesc,
        x: usize,
        naming: Naming,
        relu6: bool,
        arch: &str,
        (height, width): (u32, u32),
    ) -> Result<usize> {
        let kind = if relu6 { ActKind::Relu6 } else { ActKind::Relu };
        let layers = self.relu_layers(arch, height, width)?;
        let mut it = layers.into_iter().map(|l| l.0);
        let mut next_layer = || {
            it.next().ok_or_else(|| {
                CoreError::Graph("MobileNetV2: fewer layers than activations".into())
            })
        };
        let n = naming.stem();
        let geometry = [3, self.stem_stride, 1, 1, 1];
        let mut x = conv_bn(d, &n.conv, &n.bn, x, STEM_CHANNELS, geometry)?;
        x = act(d, &next_layer()?, x, kind)?;
        d.end_block("conv1");
        for b in &self.blocks {
            let input = x;
            let mut y = x;
            if let Some(n) = naming.expand(b) {
                y = conv_bn(d, &n.conv, &n.bn, y, b.mid_channels, [1, 1, 0, 1, 1])?;
                y = act(d, &next_layer()?, y, kind)?;
            }
            let n = naming.depthwise(b);
            let dw = [3, b.stride, b.dilation, b.dilation, b.mid_channels];
            y = conv_bn(d, &n.conv, &n.bn, y, b.mid_channels, dw)?;
            y = act(d, &next_layer()?, y, kind)?;
            let n = naming.project(b);
            y = conv_bn(d, &n.conv, &n.bn, y, b.out_channels, [1, 1, 0, 1, 1])?;
            x = if b.residual() {
                d.push(format!("{}.add", naming.block(b)), DescOp::Add, &[input, y])?
            } else {
                y
            };
            d.end_block(format!("layer{}_{}", b.stage, b.index));
        }
        if let Some(c) = self.last_channels {
            let n = naming.last(self);
            x = conv_bn(d, &n.conv, &n.bn, x, c, [1, 1, 0, 1, 1])?;
            x = act(d, &next_layer()?, x, kind)?;
            d.end_block("conv2");
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_blocks_match_torchvision() {
        let g = MobileNetV2Geometry::imagenet(3);
        assert_eq!(g.blocks.len(), 17);
        assert_eq!(g.last_feature(), 18);
        let b = g.blocks[1];
        assert_eq!(
            (
                b.feature,
                b.in_channels,
                b.mid_channels,
                b.out_channels,
                b.stride
            ),
            (2, 16, 96, 24, 2)
        );
        assert!(!b.residual() && g.blocks[2].residual());
        assert_eq!(g.blocks[0].depthwise_layer(), "layer1_0_0");
        assert_eq!(g.blocks[0].expand_layer(), None);
        assert_eq!(g.blocks[16].mid_channels, 960);
        assert_eq!(g.out_channels(), 1280);
    }

    #[test]
    fn segmentation_geometry_has_output_stride_8() {
        let g = MobileNetV2Geometry::segmentation_d8(3);
        assert_eq!(g.output_size("x", 512, 512).unwrap(), (64, 64));
        assert_eq!(g.output_size("x", 65, 65).unwrap(), (9, 9));
        assert_eq!(g.out_channels(), 320);
        assert_eq!(g.blocks.iter().filter(|b| b.dilation == 4).count(), 4);
        assert_eq!(
            MobileNetV2Geometry::imagenet(3)
                .output_size("x", 224, 224)
                .unwrap(),
            (7, 7)
        );
    }

    #[test]
    fn names_follow_both_checkpoints() {
        let g = MobileNetV2Geometry::imagenet(3);
        let (b0, b1) = (&g.blocks[0], &g.blocks[1]);
        let tv = Naming::Torchvision;
        assert_eq!(tv.expand(b0), None);
        assert_eq!(tv.depthwise(b0).conv, "features.1.conv.0.0");
        assert_eq!(
            tv.project(b0),
            names("features.1.conv.1".into(), "features.1.conv.2".into())
        );
        assert_eq!(tv.expand(b1).unwrap().bn, "features.2.conv.0.1");
        assert_eq!(tv.depthwise(b1).conv, "features.2.conv.1.0");
        assert_eq!(
            tv.project(b1),
            names("features.2.conv.2".into(), "features.2.conv.3".into())
        );
        assert_eq!(tv.last(&g).conv, "features.18.0");
        let mm = Naming::OpenMmlab;
        assert_eq!(mm.depthwise(b0).conv, "backbone.layer1.0.conv.0.conv");
        assert_eq!(mm.project(b1).bn, "backbone.layer2.0.conv.2.bn");
    }
}
