//! knapsec-arch-resnet: `resnet18-cifar` and `resnet50-imagenet` (digest §4.2, §4.3, §5).
//!
//! * [`plan`] (tch-free): options, blocks, layer table, secure-model graph for a block spec.
//! * [`adapter`] (tch-free): the `ArchAdapter`s, registered in core's registry.
//! * `net` (feature `torch`, on by default): the tch networks, registered in `knapsec-nn`;
//!   `bench`: the forward+backward timing with and without block ReLUs.
//!
//! Weights use OpenMMLab (mmcls) `state_dict` names (`backbone.layer1.0.conv1.weight`,
//! `head.fc.weight`), so the reference's checkpoints load; torchvision checkpoints load too
//! ([`plan::import_key`]).

pub mod adapter;
#[cfg(feature = "torch")]
pub mod bench;
#[cfg(feature = "torch")]
pub mod net;
pub mod plan;

pub use adapter::{ResNet18Cifar, ResNet50ImageNet};
pub use plan::{RESNET18_CIFAR, RESNET50_IMAGENET, ResNetPlan};
