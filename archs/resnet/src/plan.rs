//! The tch-free description of the ResNets (digest §4.2, §4.3, §5): options, the sequence of
//! blocks with their shapes, the layer table, and the secure-model graph.
//!
//! The plan is written once, in `knapsec-arch-kit` (shared with `deeplabv3-resnet50`'s dilated
//! backbone and the knapsack plugin's reference tables); this module names it for this crate.
//! Names and `state_dict` keys are described there.

pub use knapsec_arch_kit::resnet::{
    RESNET18_CIFAR, RESNET50_IMAGENET, ResNetPlan, StemConv, StemPool, Unit, UnitKind, import_key,
};
