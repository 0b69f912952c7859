//! The tch-free description of the ResNets (digest §4.2, §4.3, §5): options, the sequence of
//! blocks with their shapes, the layer table, and the secure-model graph.
//!
//! Names follow the reference: blocks `stem`, `layer{R}_{B}`; ReLU layers `stem`,
//! `layer{R}_{B}_{K}` (`K` = 1, 2 for BasicBlocks, 1, 2, 3 for Bottlenecks, `relu_K` in the
//! reference's backbones). Weights use OpenMMLab (mmcls) `state_dict` names:
//! `backbone.conv1`, `backbone.bn1`, `backbone.layer{R}.{B}.conv{K}` / `.bn{K}` /
//! `.downsample.0` (conv) / `.downsample.1` (BN), `head.fc`. torchvision checkpoints use the
//! same names without `backbone.` and with `fc` for `head.fc` ([`import_key`] maps them).
//!
//! Where the reference is wrong we differ on purpose: every block runs its own module (the
//! reference's ResNet50 adapter ran `layer4[1]` for block `layer4_2`, digest §10.1), and in the
//! MaxPool variant the stem ReLU stays before the pool, in its own slot (the reference's
//! securifier swapped the modules so that a spec entry for `stem` replaced the pool, §10.6).

use knapsec_core::graph::{OutputKind, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, ParamSource, window_out};
use knapsec_core::{ArchOptions, BlockSize, BlockSpec, CoreError, LayerTable, ReluLayer, Result};

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
    /// `AvgPool2d(3, 2, 1)`, padding counted (the reference's `AvgPoolResNet`, digest §5).
    Avg,
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
    /// Stride of the unit (of its first strided convolution and of the shortcut).
    pub stride: u32,
    /// Input map size.
    pub in_hw: (u32, u32),
    /// Output map size.
    pub out_hw: (u32, u32),
    /// A 1×1 projection shortcut (stride or channel change).
    pub downsample: bool,
}

/// Everything needed to build one of the ResNets at one set of options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetPlan {
    /// Registry name of the architecture.
    pub arch: &'static str,
    /// Basic blocks or bottlenecks.
    pub kind: UnitKind,
    /// Input `(C, H, W)`.
    pub input: (u32, u32, u32),
    /// Stem convolution: output channels, kernel, stride, padding.
    pub stem_channels: u32,
    /// Stem kernel size.
    pub stem_kernel: u32,
    /// Stem stride.
    pub stem_stride: u32,
    /// Stem padding.
    pub stem_padding: u32,
    /// Map size after the stem convolution (where the `stem` ReLU is).
    pub stem_hw: (u32, u32),
    /// The pooling after the stem, if any.
    pub pool: StemPool,
    /// The residual units, in order.
    pub units: Vec<Unit>,
    /// Classes of the classifier's output.
    pub classes: u32,
}

fn bad(arch: &str, option: &str, why: impl std::fmt::Display) -> CoreError {
    CoreError::Invalid(format!("architecture {arch:?}: option {option} {why}"))
}

fn positive(arch: &str, option: &str, v: Option<u32>, default: u32) -> Result<u32> {
    match v {
        Some(0) => Err(bad(arch, option, "must be at least 1")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn out_hw(arch: &str, hw: (u32, u32), k: u32, s: u32, p: u32) -> Result<(u32, u32)> {
    match (window_out(hw.0, k, s, p, 1), window_out(hw.1, k, s, p, 1)) {
        (Some(h), Some(w)) => Ok((h, w)),
        _ => Err(bad(
            arch,
            "input_height/input_width",
            format!("{}x{} is too small for this network", hw.0, hw.1),
        )),
    }
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
        let (arch, kind, default_hw, default_classes, depths, pool): (
            &'static str,
            _,
            _,
            _,
            &[u32],
            _,
        ) = match arch {
            RESNET18_CIFAR => {
                let pool = match options.variant.as_deref() {
                    None | Some("standard") => StemPool::None,
                    Some(v) => {
                        return Err(bad(
                            arch,
                            "variant",
                            format!("{v:?} is unknown (resnet18-cifar has only \"standard\")"),
                        ));
                    }
                };
                (
                    RESNET18_CIFAR,
                    UnitKind::Basic,
                    32,
                    100,
                    &[2, 2, 2, 2],
                    pool,
                )
            }
            RESNET50_IMAGENET => {
                let pool = match options.variant.as_deref() {
                    None | Some("maxpool-stem") => StemPool::Max,
                    Some("avgpool-stem") => StemPool::Avg,
                    Some(v) => {
                        return Err(bad(
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
                    &[3, 4, 6, 3],
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
        let (stem_kernel, stem_stride, stem_padding) = if kind == UnitKind::Basic {
            (3, 1, 1)
        } else {
            (7, 2, 3)
        };
        let stem_hw = out_hw(arch, (h, w), stem_kernel, stem_stride, stem_padding)?;
        let mut hw = if pool == StemPool::None {
            stem_hw
        } else {
            out_hw(arch, stem_hw, 3, 2, 1)?
        };
        let expansion = if kind == UnitKind::Basic { 1 } else { 4 };
        let mut in_channels = width;
        let mut units = Vec::new();
        for (r, &depth) in depths.iter().enumerate() {
            let planes = width << r;
            for b in 0..depth {
                let stride = if r > 0 && b == 0 { 2 } else { 1 };
                let next = out_hw(arch, hw, 3, stride, 1)?;
                let out_channels = planes * expansion;
                units.push(Unit {
                    name: format!("layer{}_{b}", r + 1),
                    module: format!("backbone.layer{}.{b}", r + 1),
                    in_channels,
                    planes,
                    out_channels,
                    stride,
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
            kind,
            input: (c, h, w),
            stem_channels: width,
            stem_kernel,
            stem_stride,
            stem_padding,
            stem_hw,
            pool,
            units,
            classes,
        })
    }

    /// Block names in execution order: `stem`, then one per unit.
    pub fn block_names(&self) -> Vec<String> {
        std::iter::once("stem".to_string())
            .chain(self.units.iter().map(|u| u.name.clone()))
            .collect()
    }

    /// The ReLU layers of unit `u` with their shapes (`_1`, `_2`[, `_3`]).
    pub fn unit_layers(&self, u: &Unit) -> Vec<ReluLayer> {
        let (oh, ow) = u.out_hw;
        match self.kind {
            UnitKind::Basic => vec![
                ReluLayer::new(format!("{}_1", u.name), u.planes, oh, ow),
                ReluLayer::new(format!("{}_2", u.name), u.out_channels, oh, ow),
            ],
            UnitKind::Bottleneck => vec![
                ReluLayer::new(format!("{}_1", u.name), u.planes, u.in_hw.0, u.in_hw.1),
                ReluLayer::new(format!("{}_2", u.name), u.planes, oh, ow),
                ReluLayer::new(format!("{}_3", u.name), u.out_channels, oh, ow),
            ],
        }
    }

    /// The stem's ReLU layer.
    pub fn stem_layer(&self) -> ReluLayer {
        ReluLayer::new("stem", self.stem_channels, self.stem_hw.0, self.stem_hw.1)
    }

    /// All ReLU layers in network order.
    pub fn layer_table(&self) -> Result<LayerTable> {
        let mut layers = vec![self.stem_layer()];
        for u in &self.units {
            layers.extend(self.unit_layers(u));
        }
        LayerTable::new(self.arch, layers)
    }

    /// The secure-model graph with the block sizes of `spec` (plain ReLU for layers it lacks,
    /// or everywhere when `spec` is `None`). The spec is validated against the layer table.
    pub fn secure_graph(
        &self,
        spec: Option<&BlockSpec>,
        frac_bits: u32,
    ) -> Result<(SecureModel, Vec<ParamSource>)> {
        let table = self.layer_table()?;
        if let Some(spec) = spec {
            if !spec.arch.is_empty() && spec.arch != self.arch {
                return Err(CoreError::WrongArchitecture {
                    expected: self.arch.into(),
                    found: spec.arch.clone(),
                });
            }
            for (name, blocks) in &spec.layers {
                let layer = table.get(name).ok_or_else(|| CoreError::UnknownLayer {
                    arch: self.arch.into(),
                    layer: name.clone(),
                })?;
                if blocks.len() != layer.channels as usize {
                    return Err(CoreError::WrongChannelCount {
                        layer: name.clone(),
                        expected: layer.channels as usize,
                        found: blocks.len(),
                    });
                }
            }
        }
        let blocks_of = |layer: &ReluLayer| -> Vec<BlockSize> {
            spec.and_then(|s| s.layers.get(&layer.name).cloned())
                .unwrap_or_else(|| vec![BlockSize::RELU; layer.channels as usize])
        };
        let (c, h, w) = self.input;
        let mut g = GraphBuilder::new(self.arch, frac_bits, [c, h, w]);
        let stem = ConvSpec::square(
            self.stem_channels,
            self.stem_kernel,
            self.stem_stride,
            self.stem_padding,
        );
        let mut x = g.conv("backbone.conv1", g.input(), stem, Some("backbone.bn1"))?;
        x = g.block_relu("stem", x, blocks_of(&self.stem_layer()))?;
        x = match self.pool {
            StemPool::None => x,
            StemPool::Max => g.max_pool("backbone.maxpool", x, [3, 3], [2, 2], [1, 1])?,
            StemPool::Avg => g.avg_pool("backbone.maxpool", x, [3, 3], [2, 2], [1, 1], true)?,
        };
        for u in &self.units {
            let layers = self.unit_layers(u);
            let m = &u.module;
            let shortcut = if u.downsample {
                let spec = ConvSpec::square(u.out_channels, 1, u.stride, 0);
                g.conv(
                    &format!("{m}.downsample.0"),
                    x,
                    spec,
                    Some(&format!("{m}.downsample.1")),
                )?
            } else {
                x
            };
            let mut y = x;
            let convs: Vec<ConvSpec> = match self.kind {
                UnitKind::Basic => vec![
                    ConvSpec::square(u.planes, 3, u.stride, 1),
                    ConvSpec::square(u.out_channels, 3, 1, 1),
                ],
                UnitKind::Bottleneck => vec![
                    ConvSpec::square(u.planes, 1, 1, 0),
                    ConvSpec::square(u.planes, 3, u.stride, 1),
                    ConvSpec::square(u.out_channels, 1, 1, 0),
                ],
            };
            let n = convs.len();
            for (k, spec) in convs.into_iter().enumerate() {
                y = g.conv(
                    &format!("{m}.conv{}", k + 1),
                    y,
                    spec,
                    Some(&format!("{m}.bn{}", k + 1)),
                )?;
                if k + 1 < n {
                    y = g.block_relu(&layers[k].name, y, blocks_of(&layers[k]))?;
                }
            }
            y = g.add(&format!("{m}.add"), &[y, shortcut])?;
            x = g.block_relu(&layers[n - 1].name, y, blocks_of(&layers[n - 1]))?;
        }
        let pooled = g.global_avg_pool("neck", x)?;
        g.linear("head.fc", pooled, self.classes, true)?;
        g.finish(OutputKind::Classification)
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
