//! Synthetic secure graphs for tests and benches that need no trained network and no
//! architecture crate: a ResNet18-CIFAR-shaped network (BasicBlocks, 3×3 stem, 17 ReLU
//! layers, 32×32 input) and a DeepLab-like head (ASPP with image pooling: global average
//! pooling, 1×1 conv, broadcast, concat), plus random block specs at a DReLU budget.
//! Layer names follow the reference (`stem`, `layer1_0_1`, ...). The architecture crates
//! build the real graphs; these exist so that this crate can test and bench on its own. The
//! ResNet's layers and units come from the one ResNet plan (`knapsec_arch_kit::resnet`,
//! tch-free); its graph keeps its own short node names (`stem.conv`, `layer1.0.conv1`, …),
//! which the pinned transcripts of this crate's tests depend on.

use knapsec_arch_kit::resnet::{RESNET18_CIFAR, ResNetPlan};
use knapsec_core::ArchOptions;
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{OutputKind, SecureModel, Shape};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, NodeId};
use knapsec_ring::Prg;

/// Candidate patches of [`random_spec`], cheapest last.
const CANDIDATES: [BlockSize; 12] = [
    BlockSize::Patch { h: 1, w: 1 },
    BlockSize::Patch { h: 1, w: 2 },
    BlockSize::Patch { h: 2, w: 1 },
    BlockSize::Patch { h: 2, w: 2 },
    BlockSize::Patch { h: 2, w: 4 },
    BlockSize::Patch { h: 4, w: 2 },
    BlockSize::Patch { h: 3, w: 3 },
    BlockSize::Patch { h: 4, w: 4 },
    BlockSize::Patch { h: 4, w: 8 },
    BlockSize::Patch { h: 8, w: 8 },
    BlockSize::Patch { h: 16, w: 16 },
    BlockSize::Identity,
];

/// A random block spec for ReLU layers of the given shapes whose DReLU count is at most
/// `ratio` of the all-ReLU count (and close to it): random choices, then random channels are
/// moved to cheaper or dearer candidates until the total is within 1 % below the budget.
pub fn random_spec(layers: &[Shape], ratio: f64, seed: u64) -> Vec<Vec<BlockSize>> {
    let mut prg = Prg::with_stream(&[0x5e; 32], "securenn/nets/random-spec", seed);
    let cost = |b: BlockSize, s: Shape| b.drelu_cost(s[1], s[2]);
    let full: u64 = layers.iter().map(|s| u64::from(s[0] * s[1] * s[2])).sum();
    let target = (full as f64 * ratio).floor() as u64;
    let mut choice: Vec<Vec<usize>> = layers
        .iter()
        .map(|s| {
            (0..s[0])
                .map(|_| prg.below(CANDIDATES.len() as u64).unwrap() as usize)
                .collect()
        })
        .collect();
    let total = |choice: &Vec<Vec<usize>>| -> u64 {
        layers
            .iter()
            .zip(choice)
            .map(|(s, c)| c.iter().map(|&k| cost(CANDIDATES[k], *s)).sum::<u64>())
            .sum()
    };
    let mut t = total(&choice);
    let channels: u64 = layers.iter().map(|s| u64::from(s[0])).sum();
    for _ in 0..channels * 64 {
        if t <= target && t as f64 >= target as f64 * 0.99 {
            break;
        }
        let mut pick = prg.below(channels).unwrap();
        let mut l = 0;
        while pick >= u64::from(layers[l][0]) {
            pick -= u64::from(layers[l][0]);
            l += 1;
        }
        let k = &mut choice[l][pick as usize];
        let s = layers[l];
        let old = cost(CANDIDATES[*k], s);
        if t > target && *k + 1 < CANDIDATES.len() {
            *k += 1;
        } else if t < target && *k > 0 && t - old + cost(CANDIDATES[*k - 1], s) <= target {
            *k -= 1;
        } else {
            continue;
        }
        t = t - old + cost(CANDIDATES[*k], s);
    }
    choice
        .into_iter()
        .map(|c| c.into_iter().map(|k| CANDIDATES[k]).collect())
        .collect()
}

/// The ResNet18-CIFAR plan with base width `width` on a 3×32×32 input.
fn resnet18_cifar_plan(width: u32, classes: u32) -> knapsec_core::Result<ResNetPlan> {
    let options = ArchOptions {
        base_width: Some(width),
        classes: Some(classes),
        ..Default::default()
    };
    ResNetPlan::new(RESNET18_CIFAR, &options)
}

/// The ReLU layers of [`resnet18_cifar`] with width `w` (64 for the real network): names and
/// shapes, in order (none for width 0, which the plan refuses).
pub fn resnet18_cifar_layers(width: u32) -> Vec<(String, Shape)> {
    resnet18_cifar_plan(width, 1)
        .and_then(|p| p.layers())
        .unwrap_or_default()
        .into_iter()
        .map(|l| (l.name, [l.channels, l.height, l.width]))
        .collect()
}

fn bn_conv(
    g: &mut GraphBuilder,
    name: &str,
    x: NodeId,
    c: ConvSpec,
) -> knapsec_core::Result<NodeId> {
    g.conv(name, x, c, Some(&format!("{name}.bn")))
}

/// A ResNet18 for 32×32 CIFAR images with base width `width` (64 = the real network),
/// `classes` outputs, and block spec `spec` (one entry per [`resnet18_cifar_layers`] layer;
/// `None`: all ReLUs).
pub fn resnet18_cifar(
    width: u32,
    classes: u32,
    spec: Option<&[Vec<BlockSize>]>,
) -> knapsec_core::Result<SecureModel> {
    let plan = resnet18_cifar_plan(width, classes)?;
    let layers = plan.layers()?;
    let blocks = |i: usize| -> Vec<BlockSize> {
        spec.map(|s| s[i].clone())
            .unwrap_or_else(|| vec![BlockSize::RELU; layers[i].channels as usize])
    };
    let mut g = GraphBuilder::new(RESNET18_CIFAR, 12, [3, 32, 32]);
    let inp = g.input();
    let stem = bn_conv(&mut g, "stem.conv", inp, ConvSpec::square(width, 3, 1, 1))?;
    let mut x = g.block_relu("stem", stem, blocks(0))?;
    let mut li = 1;
    for u in &plan.units {
        let p = u.module.strip_prefix("backbone.").unwrap_or(&u.module);
        let c1 = bn_conv(
            &mut g,
            &format!("{p}.conv1"),
            x,
            ConvSpec::square(u.planes, 3, u.stride, 1),
        )?;
        let r1 = g.block_relu(&layers[li].name, c1, blocks(li))?;
        let c2 = bn_conv(
            &mut g,
            &format!("{p}.conv2"),
            r1,
            ConvSpec::square(u.out_channels, 3, 1, 1),
        )?;
        let short = if u.downsample {
            bn_conv(
                &mut g,
                &format!("{p}.downsample"),
                x,
                ConvSpec::square(u.out_channels, 1, u.stride, 0),
            )?
        } else {
            x
        };
        let sum = g.add(&format!("{p}.add"), &[c2, short])?;
        x = g.block_relu(&layers[li + 1].name, sum, blocks(li + 1))?;
        li += 2;
    }
    let gap = g.global_avg_pool("neck.gap", x)?;
    g.linear("head.fc", gap, classes, true)?;
    Ok(g.finish(OutputKind::Classification)?.0)
}

/// A small DeepLab-like segmentation network on a `[3, size, size]` input: a strided stem
/// with max pooling, a block-ReLU layer, an ASPP head (1×1 branch, dilated 3×3 branch, image
/// pooling = global average pooling → 1×1 conv → ReLU → broadcast), concat, 1×1 classifier.
pub fn deeplab_like(
    size: u32,
    width: u32,
    classes: u32,
    blocks: Vec<BlockSize>,
) -> knapsec_core::Result<SecureModel> {
    let mut g = GraphBuilder::new("deeplab-like", 12, [3, size, size]);
    let inp = g.input();
    let c = bn_conv(&mut g, "stem.conv", inp, ConvSpec::square(width, 3, 2, 1))?;
    let r = g.block_relu("stem", c, blocks)?;
    let p = g.max_pool("stem.pool", r, [3, 3], [2, 2], [1, 1])?;
    let [_, h, w] = g.shape(p);
    let b1 = bn_conv(&mut g, "aspp.b1", p, ConvSpec::square(width, 1, 1, 0))?;
    let b1 = g.block_relu("aspp_b1", b1, vec![BlockSize::RELU; width as usize])?;
    let mut dil = ConvSpec::square(width, 3, 1, 2);
    dil.dilation = [2, 2];
    let b2 = bn_conv(&mut g, "aspp.b2", p, dil)?;
    let b2 = g.block_relu(
        "aspp_b2",
        b2,
        vec![BlockSize::Patch { h: 2, w: 2 }; width as usize],
    )?;
    let gp = g.global_avg_pool("aspp.image_pool.gap", p)?;
    let gc = bn_conv(
        &mut g,
        "aspp.image_pool.conv",
        gp,
        ConvSpec::square(width, 1, 1, 0),
    )?;
    let gr = g.block_relu("aspp_pool", gc, vec![BlockSize::RELU; width as usize])?;
    let gb = g.broadcast("aspp.image_pool.broadcast", gr, h, w)?;
    let cat = g.concat("aspp.concat", &[b1, b2, gb])?;
    let mut cls = ConvSpec::square(classes, 1, 1, 0);
    cls.bias = true;
    g.conv("head.cls", cat, cls, None)?;
    Ok(g.finish(OutputKind::Segmentation)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_cifar_has_17_relu_layers_and_the_full_drelu_count() {
        let layers = resnet18_cifar_layers(64);
        assert_eq!(layers.len(), 17);
        let m = resnet18_cifar(64, 100, None).unwrap();
        let full: u64 = layers
            .iter()
            .map(|(_, s)| u64::from(s[0] * s[1] * s[2]))
            .sum();
        assert_eq!(m.drelus(), full);
        assert_eq!(full, 557_056);
        assert_eq!(m.output_shape(), [100, 1, 1]);
    }

    #[test]
    fn random_spec_meets_the_budget() {
        let shapes: Vec<Shape> = resnet18_cifar_layers(64)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let spec = random_spec(&shapes, 0.06, 1);
        let m = resnet18_cifar(64, 100, Some(&spec)).unwrap();
        let budget = (557_056.0 * 0.06) as u64;
        assert!(
            m.drelus() <= budget && m.drelus() as f64 >= budget as f64 * 0.98,
            "{} vs {budget}",
            m.drelus()
        );
    }
}
