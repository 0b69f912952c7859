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
//! (`knapsec_arch_mobilenet::reference_candidates`).

#[cfg(feature = "torch")]
pub mod net;
pub mod plan;

use knapsec_arch_mobilenet::reference_candidates;
use knapsec_core::inventory;
use knapsec_core::registry::ArchRegistration;
use knapsec_core::{ArchAdapter, ArchOptions, BlockSize, LayerTable, ReluLayer, Result};
use std::sync::Arc;

pub use plan::{DEEPLABV3_MOBILENETV2, DEEPLABV3_RESNET50, DeepLabPlan};

/// The adapter of `deeplabv3-mobilenetv2`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeepLabV3MobileNetV2;

/// The adapter of `deeplabv3-resnet50`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeepLabV3ResNet50;

impl ArchAdapter for DeepLabV3MobileNetV2 {
    fn name(&self) -> &str {
        DEEPLABV3_MOBILENETV2
    }

    fn description(&self) -> &str {
        "DeepLabV3, MobileNetV2 backbone (mmseg, output stride 8, ASPP head), 3x512x512 input, 150 classes (ADE20K)"
    }

    fn layer_table(&self, options: &ArchOptions) -> Result<LayerTable> {
        DeepLabPlan::new(DEEPLABV3_MOBILENETV2, options)?.layer_table()
    }

    fn secure_graph(
        &self,
        options: &ArchOptions,
        spec: Option<&knapsec_core::BlockSpec>,
        frac_bits: u32,
    ) -> Result<Option<knapsec_core::graph::SecureModel>> {
        Ok(Some(
            DeepLabPlan::new(DEEPLABV3_MOBILENETV2, options)?
                .secure_graph(spec, frac_bits)?
                .0,
        ))
    }

    fn candidates(&self, layer: &ReluLayer) -> Vec<BlockSize> {
        reference_candidates(layer)
    }
}

impl ArchAdapter for DeepLabV3ResNet50 {
    fn name(&self) -> &str {
        DEEPLABV3_RESNET50
    }

    fn description(&self) -> &str {
        "DeepLabV3, ResNet-50 V1c backbone with AvgPool stem (mmseg, output stride 8, ASPP head), 3x512x512 input, 21 classes (VOC)"
    }

    fn layer_table(&self, options: &ArchOptions) -> Result<LayerTable> {
        DeepLabPlan::new(DEEPLABV3_RESNET50, options)?.layer_table()
    }

    fn secure_graph(
        &self,
        options: &ArchOptions,
        spec: Option<&knapsec_core::BlockSpec>,
        frac_bits: u32,
    ) -> Result<Option<knapsec_core::graph::SecureModel>> {
        Ok(Some(
            DeepLabPlan::new(DEEPLABV3_RESNET50, options)?
                .secure_graph(spec, frac_bits)?
                .0,
        ))
    }

    fn candidates(&self, layer: &ReluLayer) -> Vec<BlockSize> {
        reference_candidates(layer)
    }
}

inventory::submit! {
    ArchRegistration { name: DEEPLABV3_MOBILENETV2, provider: "knapsec-arch-deeplab", make: || Arc::new(DeepLabV3MobileNetV2) }
}
inventory::submit! {
    ArchRegistration { name: DEEPLABV3_RESNET50, provider: "knapsec-arch-deeplab", make: || Arc::new(DeepLabV3ResNet50) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::candidates::preset;

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
