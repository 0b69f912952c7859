//! The one ResNet plan (digest §4.2, §4.3, §4.5, §5), without tch: options, the sequence of
//! blocks with their shapes, the layer table, and the secure-model graph. Every ResNet of the
//! built-ins comes from it:
//!
//! * `resnet18-cifar`: mmcls `ResNet_CIFAR` depth 18 (3×3 stride-1 stem, no pooling,
//!   BasicBlocks);
//! * `resnet50-imagenet`: mmcls ResNet-50 (style "pytorch", 7×7 stride-2 stem, MaxPool or the
//!   reference's AvgPool);
//! * the backbone of `deeplabv3-resnet50` ([`ResNetPlan::deeplab_v1c50`]): mmseg's
//!   `ResNetV1c`-50, a deep stem of three 3×3 conv-BN-ReLU (32, 32, 64 channels, the first with
//!   stride 2), strides `(1,2,1,1)` and dilations `(1,1,2,4)` with `contract_dilation` (the first
//!   block of a dilated stage uses half the dilation), for output stride 8.
//!
//! Names follow the reference: blocks `stem`, `layer{R}_{B}`; ReLU layers `stem` (or `stem_2`,
//! `stem_5`, `stem_8` after the deep stem's three convolutions), `layer{R}_{B}_{K}` (`K` = 1, 2
//! for BasicBlocks, 1, 2, 3 for Bottlenecks, `relu_K` in the reference's backbones). Weights use
//! OpenMMLab `state_dict` names: `backbone.conv1`, `backbone.bn1` (deep stem:
//! `backbone.stem.{0,1,3,4,6,7}`), `backbone.layer{R}.{B}.conv{K}` / `.bn{K}` /
//! `.downsample.0` (conv) / `.downsample.1` (BN), `head.fc`. torchvision checkpoints use the
//! same names without `backbone.` and with `fc` for `head.fc` ([`import_key`] maps them).
//!
//! Where the reference is wrong we differ on purpose: every block runs its own module (the
//! reference's ResNet50 adapter ran `layer4[1]` for block `layer4_2`, digest §10.1); in the
//! MaxPool variant the stem ReLU stays before the pool, in its own slot (the reference's
//! securifier swapped the modules so that a spec entry for `stem` replaced the pool, §10.6);
//! and in the dilated bottlenecks `relu_1` runs once, after conv1/bn1, and `relu_2` after
//! conv2/bn2 (the reference's `MyBottleneck`, §10.2), so every `layerR_B_2` entry is live.

use crate::desc::{conv_bn, relu};
use crate::options::{invalid, out_hw, positive};
use crate::spec::check_spec_layers;
use knapsec_core::graph::SecureModel;
use knapsec_core::graph_build::ParamSource;
use knapsec_core::netdesc::{DescOp, NetDesc};
use knapsec_core::{ArchOptions, BlockSpec, CoreError, LayerTable, ReluLayer, Result};

/// Registry name of the CIFAR ResNet-18.
pub const RESNET18_CIFAR: &str = "resnet18-cifar";
/// Registry name of the ImageNet ResNet-50.
pub const RESNET50_IMAGENET: &str = "resnet50-imagenet";

/// Residual unit type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    /// Two 3×3 convolutions (ResNet-18/34); ReLUs `_1`, `_2`.
    Basic,
    /// 1×1, 3×3 (strided, "pytorch" style), 1×1 ×4 expansion (ResNet-50); ReLUs `_1`, `_2`, `_3`.
    Bottleneck,
}

/// The stem's pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StemPool {
    /// No pooling (CIFAR stem).
    None,
    /// `MaxPool2d(3, 2, 1)` (standard ResNet).
    Max,
    /// `AvgPool2d(3, 2, 1)`, padding counted (the reference's `AvgPoolResNet` and
    /// `AvgPoolResNetSeg`, digest §5).
    Avg,
}

/// One convolution of the stem and the ReLU layer after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StemConv {
    /// `state_dict` name of the convolution.
    pub conv: String,
    /// `state_dict` name of its BatchNorm.
    pub bn: String,
    /// Input channels.
    pub in_channels: u32,
    /// Kernel size, stride and padding.
    pub kernel: u32,
    /// Stride.
    pub stride: u32,
    /// Padding.
    pub padding: u32,
    /// The ReLU layer after it (output channels, map size).
    pub layer: ReluLayer,
}

/// One residual unit (one block of the block sequence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Block name, `layer{R}_{B}`.
    pub name: String,
    /// `state_dict` prefix, `backbone.layer{R}.{B}`.
    pub module: String,
    /// Input channels.
    pub in_channels: u32,
    /// Width of the inner convolutions.
    pub planes: u32,
    /// Output channels.
    pub out_channels: u32,
    /// Stride of the unit (of its strided 3×3 convolution and of the shortcut).
    pub stride: u32,
    /// Dilation (= padding) of the unit's 3×3 convolutions (1 in the classifiers).
    pub dilation: u32,
    /// Input map size.
    pub in_hw: (u32, u32),
    /// Output map size.
    pub out_hw: (u32, u32),
    /// A 1×1 projection shortcut (stride or channel change).
    pub downsample: bool,
}

impl Unit {
    /// The unit's convolutions in order: output channels, kernel, stride and dilation (the
    /// padding keeps the map size but for the stride: `dilation` for 3×3, 0 for 1×1).
    pub fn convs(&self, kind: UnitKind) -> Vec<(u32, u32, u32, u32)> {
        let d = self.dilation;
        match kind {
            UnitKind::Basic => vec![
                (self.planes, 3, self.stride, d),
                (self.out_channels, 3, 1, d),
            ],
            UnitKind::Bottleneck => vec![
                (self.planes, 1, 1, 1),
                (self.planes, 3, self.stride, d),
                (self.out_channels, 1, 1, 1),
            ],
        }
    }
}

/// Everything needed to build one ResNet at one set of options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetPlan {
    /// Registry name of the architecture.
    pub arch: &'static str,
    /// Basic blocks or bottlenecks.
    pub kind: UnitKind,
    /// Input `(C, H, W)`.
    pub input: (u32, u32, u32),
    /// Output channels of the stem (of its last convolution).
    pub stem_channels: u32,
    /// Kernel size of the (first) stem convolution.
    pub stem_kernel: u32,
    /// Its stride.
    pub stem_stride: u32,
    /// Its padding.
    pub stem_padding: u32,
    /// Map size after the stem convolutions (where the stem's ReLUs are).
    pub stem_hw: (u32, u32),
    /// The deep (V1c) stem of three 3×3 convolutions instead of one.
    pub deep_stem: bool,
    /// The pooling after the stem, if any.
    pub pool: StemPool,
    /// The residual units, in order.
    pub units: Vec<Unit>,
    /// Classes of the classifier's output (unused by a backbone).
    pub classes: u32,
}

/// The shape of a ResNet before the map sizes are worked out.
struct Shape {
    kind: UnitKind,
    input: (u32, u32, u32),
    width: u32,
    depths: [u32; 4],
    strides: [u32; 4],
    dilations: [u32; 4],
    deep_stem: bool,
    pool: StemPool,
    classes: u32,
}

impl ResNetPlan {
    /// The plan of architecture `arch` (`resnet18-cifar` or `resnet50-imagenet`) at `options`.
    ///
    /// * `resnet18-cifar`: defaults 3×32×32, 100 classes, base width 64; honours every option;
    ///   `variant` must be absent or `"standard"`.
    /// * `resnet50-imagenet`: defaults 3×224×224, 1000 classes, base width 64, MaxPool stem;
    ///   `variant: "avgpool-stem"` selects the reference's AvgPool stem (`"maxpool-stem"` is
    ///   the default).
    pub fn new(arch: &str, options: &ArchOptions) -> Result<Self> {
        let (arch, kind, default_hw, default_classes, depths, pool): (&'static str, _, _, _, _, _) =
            match arch {
                RESNET18_CIFAR => {
                    let pool = match options.variant.as_deref() {
                        None | Some("standard") => StemPool::None,
                        Some(v) => {
                            return Err(invalid(
                                arch,
                                "variant",
                                format!("{v:?} is unknown (resnet18-cifar has only \"standard\")"),
                            ));
                        }
                    };
                    (RESNET18_CIFAR, UnitKind::Basic, 32, 100, [2, 2, 2, 2], pool)
                }
                RESNET50_IMAGENET => {
                    let pool = match options.variant.as_deref() {
                        None | Some("maxpool-stem") => StemPool::Max,
                        Some("avgpool-stem") => StemPool::Avg,
                        Some(v) => {
                            return Err(invalid(
                                arch,
                                "variant",
                                format!(
                                    "{v:?} is unknown (expected \"maxpool-stem\" or \"avgpool-stem\")"
                                ),
                            ));
                        }
                    };
                    (
                        RESNET50_IMAGENET,
                        UnitKind::Bottleneck,
                        224,
                        1000,
                        [3, 4, 6, 3],
                        pool,
                    )
                }
                other => {
                    return Err(CoreError::Invalid(format!(
                        "{other:?} is not a ResNet of this crate"
                    )));
                }
            };
        let c = positive(arch, "input_channels", options.input_channels, 3)?;
        let h = positive(arch, "input_height", options.input_height, default_hw)?;
        let w = positive(arch, "input_width", options.input_width, default_hw)?;
        let classes = positive(arch, "classes", options.classes, default_classes)?;
        let width = positive(arch, "base_width", options.base_width, 64)?;
        Self::build(
            arch,
            Shape {
                kind,
                input: (c, h, w),
                width,
                depths,
                strides: [1, 2, 2, 2],
                dilations: [1; 4],
                deep_stem: false,
                pool,
                classes,
            },
        )
    }

    /// The dilated ResNet-50 V1c backbone of DeepLabV3 (output stride 8) for architecture
    /// `arch` on a `(C, H, W)` input, with the given stem pooling (see the module doc).
    pub fn deeplab_v1c50(
        arch: &'static str,
        input: (u32, u32, u32),
        pool: StemPool,
    ) -> Result<Self> {
        Self::build(
            arch,
            Shape {
                kind: UnitKind::Bottleneck,
                input,
                width: 64,
                depths: [3, 4, 6, 3],
                strides: [1, 2, 1, 1],
                dilations: [1, 1, 2, 4],
                deep_stem: true,
                pool,
                classes: 0,
            },
        )
    }

    fn build(arch: &'static str, s: Shape) -> Result<Self> {
        let (_, h, w) = s.input;
        let (stem_kernel, stem_stride, stem_padding) = match (s.deep_stem, s.kind) {
            (true, _) => (3, 2, 1),
            (false, UnitKind::Basic) => (3, 1, 1),
            (false, UnitKind::Bottleneck) => (7, 2, 3),
        };
        let stem_hw = out_hw(arch, (h, w), stem_kernel, stem_stride, stem_padding, 1)?;
        let mut hw = if s.pool == StemPool::None {
            stem_hw
        } else {
            out_hw(arch, stem_hw, 3, 2, 1, 1)?
        };
        let expansion = if s.kind == UnitKind::Basic { 1 } else { 4 };
        let mut in_channels = s.width;
        let mut units = Vec::new();
        for (r, &depth) in s.depths.iter().enumerate() {
            let planes = s.width << r;
            for b in 0..depth {
                let stride = if b == 0 { s.strides[r] } else { 1 };
                // contract_dilation: the first block of a dilated stage uses half the dilation.
                let dilation = if b == 0 && s.dilations[r] > 1 {
                    s.dilations[r] / 2
                } else {
                    s.dilations[r]
                };
                let next = out_hw(arch, hw, 3, stride, dilation, dilation)?;
                let out_channels = planes * expansion;
                units.push(Unit {
                    name: format!("layer{}_{b}", r + 1),
                    module: format!("backbone.layer{}.{b}", r + 1),
                    in_channels,
                    planes,
                    out_channels,
                    stride,
                    dilation,
                    in_hw: hw,
                    out_hw: next,
                    downsample: stride != 1 || in_channels != out_channels,
                });
                in_channels = out_channels;
                hw = next;
            }
        }
        Ok(ResNetPlan {
            arch,
            kind: s.kind,
            input: s.input,
            stem_channels: s.width,
            stem_kernel,
            stem_stride,
            stem_padding,
            stem_hw,
            deep_stem: s.deep_stem,
            pool: s.pool,
            units,
            classes: s.classes,
        })
    }

    /// Block names in execution order: `stem`, then one per unit.
    pub fn block_names(&self) -> Vec<String> {
        std::iter::once("stem".to_string())
            .chain(self.units.iter().map(|u| u.name.clone()))
            .collect()
    }

    /// The stem's convolutions with the ReLU layer after each: `backbone.conv1` and `stem`, or
    /// the deep stem's `backbone.stem.{0,3,6}` and `stem_2`, `stem_5`, `stem_8`.
    pub fn stem_convs(&self) -> Vec<StemConv> {
        let (h, w) = self.stem_hw;
        if !self.deep_stem {
            return vec![StemConv {
                conv: "backbone.conv1".into(),
                bn: "backbone.bn1".into(),
                in_channels: self.input.0,
                kernel: self.stem_kernel,
                stride: self.stem_stride,
                padding: self.stem_padding,
                layer: ReluLayer::new("stem", self.stem_channels, h, w),
            }];
        }
        let half = self.stem_channels / 2;
        let mut cin = self.input.0;
        [(half, self.stem_stride), (half, 1), (self.stem_channels, 1)]
            .into_iter()
            .enumerate()
            .map(|(i, (out, stride))| {
                let conv = StemConv {
                    conv: format!("backbone.stem.{}", 3 * i),
                    bn: format!("backbone.stem.{}", 3 * i + 1),
                    in_channels: cin,
                    kernel: 3,
                    stride,
                    padding: 1,
                    layer: ReluLayer::new(format!("stem_{}", 3 * i + 2), out, h, w),
                };
                cin = out;
                conv
            })
            .collect()
    }

    /// All ReLU layers of the backbone in network order (from its description).
    pub fn layers(&self) -> Result<Vec<ReluLayer>> {
        let (c, h, w) = self.input;
        let mut d = NetDesc::new(self.arch, [c, h, w])?;
        self.describe_backbone(&mut d, 0)?;
        Ok(d.layer_table()?.layers)
    }

    /// The layer table (from [`Self::describe`]).
    pub fn layer_table(&self) -> Result<LayerTable> {
        self.describe()?.layer_table()
    }

    /// Channels and map size of the backbone's output (after the last unit).
    pub fn out_shape(&self) -> (u32, (u32, u32)) {
        match self.units.last() {
            Some(u) => (u.out_channels, u.out_hw),
            None => (self.stem_channels, self.stem_hw),
        }
    }

    /// Adds the backbone (stem, pooling, residual units) to description `d` on node `x` and
    /// returns the last unit's output node. Node names are the `state_dict` modules
    /// (`backbone.layer1.0.conv1`, …), `backbone.maxpool` for the stem's pooling,
    /// `{unit}.add` for the residual additions, and the slot names for the activations; a
    /// unit's projection shortcut comes before its branch (the secure graph's order). Blocks:
    /// `stem` (with its pooling) and one per unit ([`Self::block_names`]).
    pub fn describe_backbone(&self, d: &mut NetDesc, x: usize) -> Result<usize> {
        let mut x = x;
        for s in self.stem_convs() {
            let (k, st, p) = (s.kernel, s.stride, s.padding);
            x = conv_bn(d, &s.conv, &s.bn, x, s.layer.channels, [k, st, p, 1, 1])?;
            x = relu(d, &s.layer.name, x)?;
        }
        let (kernel, stride, pads) = ([3, 3], [2, 2], [1; 4]);
        let pool = match self.pool {
            StemPool::None => None,
            StemPool::Max => Some(DescOp::MaxPool {
                kernel,
                stride,
                pads,
                ceil_mode: false,
            }),
            StemPool::Avg => Some(DescOp::AvgPool {
                kernel,
                stride,
                pads,
                ceil_mode: false,
                count_include_pad: true,
            }),
        };
        if let Some(op) = pool {
            x = d.push("backbone.maxpool", op, &[x])?;
        }
        d.end_block("stem");
        for u in &self.units {
            let m = &u.module;
            let shortcut = if u.downsample {
                let (conv, bn) = (format!("{m}.downsample.0"), format!("{m}.downsample.1"));
                conv_bn(d, &conv, &bn, x, u.out_channels, [1, u.stride, 0, 1, 1])?
            } else {
                x
            };
            let convs = u.convs(self.kind);
            let n = convs.len();
            let mut y = x;
            for (k, (out, size, stride, dil)) in convs.into_iter().enumerate() {
                let (conv, bn) = (format!("{m}.conv{}", k + 1), format!("{m}.bn{}", k + 1));
                let pad = if size == 1 { 0 } else { dil };
                y = conv_bn(d, &conv, &bn, y, out, [size, stride, pad, dil, 1])?;
                if k + 1 < n {
                    y = relu(d, &format!("{}_{}", u.name, k + 1), y)?;
                }
            }
            y = d.push(format!("{m}.add"), DescOp::Add, &[y, shortcut])?;
            x = relu(d, &format!("{}_{n}", u.name), y)?;
            d.end_block(&u.name);
        }
        Ok(x)
    }

    /// The classifier's description: the backbone, global average pooling (`neck`) and
    /// `head.fc` (logits).
    pub fn describe(&self) -> Result<NetDesc> {
        let (c, h, w) = self.input;
        let mut d = NetDesc::new(self.arch, [c, h, w])?;
        let x = self.describe_backbone(&mut d, 0)?;
        let pooled = d.push("neck", DescOp::GlobalAvgPool, &[x])?;
        let head = DescOp::Linear {
            module: "head.fc".into(),
            bias: true,
            out: self.classes,
        };
        d.push("head.fc", head, &[pooled])?;
        Ok(d)
    }

    /// The classifier's secure-model graph (from [`Self::describe`]: backbone, global average
    /// pooling `neck`, `head.fc`) with the block sizes of `spec` (plain ReLU for layers it
    /// lacks, or everywhere when `spec` is `None`). The spec is validated against the layer
    /// table.
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

/// Maps a torchvision ResNet `state_dict` key to the OpenMMLab name used here
/// (`conv1.weight` → `backbone.conv1.weight`, `fc.bias` → `head.fc.bias`); OpenMMLab keys pass
/// unchanged.
pub fn import_key(key: &str) -> String {
    if key.starts_with("backbone.") || key.starts_with("head.") {
        key.to_string()
    } else if let Some(rest) = key.strip_prefix("fc.") {
        format!("head.fc.{rest}")
    } else {
        format!("backbone.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeplab_backbone_is_dilated_for_output_stride_8() {
        let p =
            ResNetPlan::deeplab_v1c50("deeplabv3-resnet50", (3, 512, 512), StemPool::Avg).unwrap();
        let layers = p.layers().unwrap();
        let names: Vec<&str> = layers[..3].iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["stem_2", "stem_5", "stem_8"]);
        assert_eq!(p.stem_hw, (256, 256));
        assert_eq!(p.out_shape(), (2048, (64, 64)));
        let dil: Vec<u32> = p.units.iter().map(|u| u.dilation).collect();
        assert_eq!(dil, [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 4, 4]);
        assert_eq!(p.layers().unwrap().len(), 3 + 16 * 3);
    }

    #[test]
    fn dilated_convolutions_keep_the_map() {
        let u = Unit {
            name: "x".into(),
            module: "m".into(),
            in_channels: 8,
            planes: 4,
            out_channels: 16,
            stride: 1,
            dilation: 4,
            in_hw: (9, 9),
            out_hw: (9, 9),
            downsample: true,
        };
        let c = u.convs(UnitKind::Bottleneck);
        assert_eq!(c, [(4, 1, 1, 1), (4, 3, 1, 4), (16, 1, 1, 1)]);
        assert_eq!(import_key("fc.weight"), "head.fc.weight");
        assert_eq!(
            import_key("layer1.0.conv1.weight"),
            "backbone.layer1.0.conv1.weight"
        );
    }
}
