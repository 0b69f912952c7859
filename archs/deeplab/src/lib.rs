//! knapsec-arch-deeplab: the reference's two segmentation networks, `deeplabv3-mobilenetv2`
//! (ADE20K) and `deeplabv3-resnet50` (Pascal VOC) (digest §4.4, §4.5, §5).
//!
//! * [`plan`] (tch-free): options, backbone geometry, layer table, block names, secure-model
//!   graph (the ASPP image-pooling branch as `Op::Broadcast`, as the reference's
//!   `SecureASPPHead` does).
//! * [`DeepLabV3MobileNetV2`], [`DeepLabV3ResNet50`]: the architecture adapters, registered
//!   with `inventory`.
//! * `net` (cargo feature `torch`): the tch networks with OpenMMLab `state_dict` names
//!   (`backbone.…`, `decode_head.…`), registered in `knapsec-nn`.
//!
//! Candidates are the reference's presets for each map side (`256x256`, `128x128`,
//! `64x64`, and `1x1` for the image-pooling layer `decode_0`) where the map is square and such
//! a preset exists, otherwise generated patches up to 16 per side
//! (`knapsec_arch_kit::reference_candidates`).

#[cfg(feature = "torch")]
pub mod net;
pub mod plan;

use knapsec_arch_kit::reference_candidates;

pub use plan::{DEEPLABV3_MOBILENETV2, DEEPLABV3_RESNET50, DeepLabPlan};

knapsec_arch_kit::plan_adapter! {
    /// The adapter of `deeplabv3-mobilenetv2`.
    pub struct DeepLabV3MobileNetV2 {
        name: DEEPLABV3_MOBILENETV2,
        provider: "knapsec-arch-deeplab",
        description: "DeepLabV3, MobileNetV2 backbone (mmseg, output stride 8, ASPP head), 3x512x512 input, 150 classes (ADE20K)",
        plan: DeepLabPlan = |options| DeepLabPlan::new(DEEPLABV3_MOBILENETV2, options),
        candidates: reference_candidates,
    }
}

knapsec_arch_kit::plan_adapter! {
    /// The adapter of `deeplabv3-resnet50`.
    pub struct DeepLabV3ResNet50 {
        name: DEEPLABV3_RESNET50,
        provider: "knapsec-arch-deeplab",
        description: "DeepLabV3, ResNet-50 V1c backbone with AvgPool stem (mmseg, output stride 8, ASPP head), 3x512x512 input, 21 classes (VOC)",
        plan: DeepLabPlan = |options| DeepLabPlan::new(DEEPLABV3_RESNET50, options),
        candidates: reference_candidates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::candidates::preset;
    use knapsec_core::{ArchAdapter, ArchOptions, BlockSize};

    #[test]
    fn candidates_are_the_reference_presets() {
        for adapter in [
            &DeepLabV3MobileNetV2 as &dyn ArchAdapter,
            &DeepLabV3ResNet50,
        ] {
            let table = adapter.layer_table(&ArchOptions::default()).unwrap();
            for l in &table.layers {
                let name = format!("{0}x{0}", l.height);
                assert!(
                    ["256x256", "128x128", "64x64", "1x1"].contains(&name.as_str()),
                    "{}",
                    l.name
                );
                assert_eq!(
                    adapter.candidates(l),
                    preset(&name).unwrap(),
                    "{} {}",
                    adapter.name(),
                    l.name
                );
            }
            let decode_0 = table.get("decode_0").unwrap();
            assert_eq!(
                adapter.candidates(decode_0),
                vec![BlockSize::RELU, BlockSize::Identity]
            );
        }
    }
}
