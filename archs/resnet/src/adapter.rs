//! The architecture adapters (tch-free, digest §4.2, §4.3), registered in core's registry.
//!
//! Candidates default to the reference's preset for the layer's map side (digest §1.4: the
//! `32x32` list for 32×32 maps, …) so that reference block specs and knapsack instances match;
//! maps without a preset (non-square, or sides the reference never used) get the generated set
//! (every patch up to 16 per side, plus identity).

use crate::plan::{RESNET18_CIFAR, RESNET50_IMAGENET, ResNetPlan};
use knapsec_core::{BlockSize, ReluLayer};

/// Reference preset for square maps that have one, else the generated set (cap 16).
pub fn default_candidates(layer: &ReluLayer) -> Vec<BlockSize> {
    knapsec_arch_kit::reference_candidates(layer)
}

knapsec_arch_kit::plan_adapter! {
    /// `resnet18-cifar`: mmcls `ResNet_CIFAR` depth 18 (3×3 stride-1 stem, no pooling,
    /// BasicBlocks), input 3×32×32, 100 classes.
    pub struct ResNet18Cifar {
        name: RESNET18_CIFAR,
        provider: "knapsec-arch-resnet",
        description: "ResNet-18 for CIFAR (3x3 stem, no pooling, BasicBlocks; 3x32x32, 100 classes; options: input size and channels, classes, base_width)",
        plan: ResNetPlan = |options| ResNetPlan::new(RESNET18_CIFAR, options),
        candidates: default_candidates,
    }
}

knapsec_arch_kit::plan_adapter! {
    /// `resnet50-imagenet`: mmcls ResNet-50 (style "pytorch"), input 3×224×224, 1000 classes;
    /// variants `maxpool-stem` (default) and `avgpool-stem`.
    pub struct ResNet50ImageNet {
        name: RESNET50_IMAGENET,
        provider: "knapsec-arch-resnet",
        description: "ResNet-50 for ImageNet (Bottlenecks, style pytorch; 3x224x224, 1000 classes; variants maxpool-stem, avgpool-stem)",
        plan: ResNetPlan = |options| ResNetPlan::new(RESNET50_IMAGENET, options),
        candidates: default_candidates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::{ArchAdapter, ArchOptions};

    fn totals(a: &dyn ArchAdapter, o: &ArchOptions) -> (usize, u64, u64) {
        let t = a.layer_table(o).unwrap();
        (t.layers.len(), t.channels(), t.drelus())
    }

    #[test]
    fn reference_totals() {
        assert_eq!(
            totals(&ResNet18Cifar, &ArchOptions::default()),
            (17, 3_904, 557_056)
        );
        assert_eq!(
            totals(&ResNet50ImageNet, &ArchOptions::default()),
            (49, 22_720, 9_608_704)
        );
        let avg = ArchOptions {
            variant: Some("avgpool-stem".into()),
            ..Default::default()
        };
        assert_eq!(totals(&ResNet50ImageNet, &avg), (49, 22_720, 9_608_704));
    }

    #[test]
    fn reference_layer_shapes_and_presets() {
        let t = ResNet50ImageNet
            .layer_table(&ArchOptions::default())
            .unwrap();
        let shape = |n: &str| {
            let l = t.get(n).unwrap();
            (l.channels, l.height, l.width)
        };
        assert_eq!(shape("stem"), (64, 112, 112));
        assert_eq!(shape("layer1_2_3"), (256, 56, 56));
        assert_eq!(shape("layer2_0_1"), (128, 56, 56));
        assert_eq!(shape("layer2_0_2"), (128, 28, 28));
        assert_eq!(shape("layer3_0_1"), (256, 28, 28));
        assert_eq!(shape("layer4_0_1"), (512, 14, 14));
        assert_eq!(shape("layer4_2_3"), (2048, 7, 7));
        assert_eq!(t.layers[1].name, "layer1_0_1");
        assert_eq!(t.layers.last().unwrap().name, "layer4_2_3");
        // candidate-list lengths of the reference (digest §1.4, minus the trailing 1x0 and,
        // for 112x112, its four repeated entries)
        assert_eq!(
            ResNet50ImageNet.candidates(t.get("stem").unwrap()).len(),
            96
        );
        assert_eq!(
            ResNet50ImageNet
                .candidates(t.get("layer4_2_3").unwrap())
                .len(),
            24
        );
        let c = ResNet18Cifar.layer_table(&ArchOptions::default()).unwrap();
        let names: Vec<&str> = c.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            &names[..4],
            ["stem", "layer1_0_1", "layer1_0_2", "layer1_1_1"]
        );
        let sum: usize = c
            .layers
            .iter()
            .map(|l| l.channels as usize * ResNet18Cifar.candidates(l).len())
            .sum();
        // Σ C·|candidates| including the 1x0 entry is 109,568 in the reference (digest §2.5).
        assert_eq!(sum + c.channels() as usize, 109_568);
    }

    #[test]
    fn fashion_mnist_options() {
        let o = ArchOptions::fashion_mnist();
        let t = ResNet18Cifar.layer_table(&o).unwrap();
        let hw: Vec<u32> = t.layers.iter().map(|l| l.height).collect();
        assert_eq!(
            hw,
            vec![28, 28, 28, 28, 28, 14, 14, 14, 14, 7, 7, 7, 7, 4, 4, 4, 4]
        );
        assert_eq!(t.layers.last().unwrap().channels, 128);
        // 28, 14, 7 and 4 all have reference presets (28x28's repeated 7x7 counted once)
        assert_eq!(ResNet18Cifar.candidates(&t.layers[0]).len(), 78);
        let odd = ReluLayer::new("x", 1, 5, 3);
        assert_eq!(ResNet18Cifar.candidates(&odd).len(), 16);
    }

    #[test]
    fn bad_options_are_refused() {
        let bad = [
            ArchOptions {
                variant: Some("avgpool-stem".into()),
                ..Default::default()
            },
            ArchOptions {
                classes: Some(0),
                ..Default::default()
            },
            ArchOptions {
                input_height: Some(0),
                ..Default::default()
            },
        ];
        for o in &bad {
            let e = ResNet18Cifar.layer_table(o).unwrap_err().to_string();
            assert!(e.contains("resnet18-cifar"), "{e}");
        }
        let e = ResNet50ImageNet
            .layer_table(&ArchOptions {
                variant: Some("nope".into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("avgpool-stem"), "{e}");
    }
}
