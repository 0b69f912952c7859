//! The tch networks of the ResNets (feature `torch`), registered in `knapsec-nn`.
//!
//! Both classifiers of this crate are the `knapsec-nn` interpreter ([`DescNet`]) running the
//! plan's description ([`ResNetPlan::describe`]); its distortion fast path starts every variant
//! at the convolution that reads the slot. Every ReLU is its own slot (`layer{R}_{B}_{K}`), as
//! in the reference's `MyResNet` / `ResNet_CIFAR_V2` backbones.
//! `knapsec-arch-deeplab` runs the same description of the backbone (dilated) under its ASPP
//! head.

use crate::plan::{RESNET18_CIFAR, RESNET50_IMAGENET, ResNetPlan, import_key};
use knapsec_core::ArchOptions;
use knapsec_nn::{DescNet, Result};
use std::collections::HashMap;
use tch::nn;

/// The network of ResNet classifier `arch` at `options` under `root`: the interpreter
/// ([`DescNet`]) running [`ResNetPlan::describe`], with OpenMMLab `state_dict` names
/// (torchvision checkpoints load through [`import_key`]).
pub fn build(arch: &str, options: &ArchOptions, root: &nn::Path) -> Result<DescNet> {
    let desc = ResNetPlan::new(arch, options)?.describe()?;
    Ok(DescNet::new(desc, options, root, HashMap::new())?.with_import_fn(import_key))
}

knapsec_nn::register_net!(RESNET18_CIFAR, "knapsec-arch-resnet", |options, root| {
    build(RESNET18_CIFAR, options, root)
});
knapsec_nn::register_net!(RESNET50_IMAGENET, "knapsec-arch-resnet", |options, root| {
    build(RESNET50_IMAGENET, options, root)
});
