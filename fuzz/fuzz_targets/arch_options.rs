//! Fuzzes architecture options (`--arch-options FILE`, RON, and the `--input-size`,
//! `--input-channels`, `--classes`, `--base-width` and `--variant` flags that fill the same
//! struct) through every built-in architecture's planner: arbitrary text gives options or an
//! error; options give each architecture's layer table and secure-model graph, or an error
//! naming what does not fit, never a panic or an overflow in the shape arithmetic.
#![no_main]

use knapsec_core::{ArchAdapter, ArchOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(o) = ron::from_str::<ArchOptions>(text) else {
        return;
    };
    let adapters: [&dyn ArchAdapter; 6] = [
        &knapsec_arch_resnet::ResNet18Cifar,
        &knapsec_arch_resnet::ResNet50ImageNet,
        &knapsec_arch_mobilenet::MobileNetV2ImageNet,
        &knapsec_arch_deeplab::DeepLabV3MobileNetV2,
        &knapsec_arch_deeplab::DeepLabV3ResNet50,
        &knapsec_arch_example::TinyCnn,
    ];
    for a in adapters {
        if let Ok(table) = a.layer_table(&o) {
            for layer in &table.layers {
                let _ = a.candidates(layer);
            }
        }
    }
    // The secure graphs: shapes only, no weights (those would be as large as the input asks).
    for arch in [
        knapsec_arch_resnet::RESNET18_CIFAR,
        knapsec_arch_resnet::RESNET50_IMAGENET,
    ] {
        if let Ok(plan) = knapsec_arch_resnet::ResNetPlan::new(arch, &o) {
            let _ = plan.secure_graph(None, 12);
        }
    }
    for arch in [
        knapsec_arch_deeplab::DEEPLABV3_MOBILENETV2,
        knapsec_arch_deeplab::DEEPLABV3_RESNET50,
    ] {
        if let Ok(plan) = knapsec_arch_deeplab::DeepLabPlan::new(arch, &o) {
            let _ = plan.secure_graph(None, 12);
        }
    }
    if let Ok(c) = knapsec_arch_mobilenet::ImageNetConfig::from_options(&o) {
        let _ = c.secure_graph(None, 12);
    }
    if let Ok(plan) = knapsec_arch_example::TinyCnnPlan::new(&o) {
        let _ = plan.secure_graph(None, 12);
    }
});
