//! knapsec-nn: the torch side shared by every architecture (DESIGN §2, §4).
//!
//! * [`block_relu`]: the plaintext block ReLU module (digest §1.1).
//! * [`conv_bn`]: the convolution + BatchNorm unit of every built-in network.
//! * [`slots`]: named activation slots that can be swapped (ReLU ↔ block ReLU ↔ identity).
//! * [`net`]: the [`BlockNet`] trait (a network as named blocks; run from any block), the
//!   registry of network builders ([`NetRegistration`]) and [`Network`] (net + weights).
//! * [`data`]: data-set loaders (IDX, CIFAR binary, image folders, random).
//! * [`interp`]: [`DescNet`], the interpreter that runs any network description
//!   (`knapsec_core::netdesc`), with the distortion fast path for every slot-reading convolution.
//! * [`train`]: training, fine-tuning (block ReLUs in place) and evaluation.
//! * [`weights`]: safetensors weight files with PyTorch `state_dict` names.
//! * [`random`]: seeded random tensors, permutations and dropout (never tch's global
//!   generator, which parallel tests share).
//! * [`export`]: BatchNorm folding and fixed-point export to the secure-model graph; a float
//!   evaluator of secure models.
//!
//! Architectures live in their own crates (`knapsec-arch-*`) and register a tch-free
//! `ArchAdapter` in core plus a [`NetRegistration`] here under the same name.

mod block_mask;
pub mod block_relu;
pub mod conv_bn;
pub mod data;
pub mod distortion;
pub mod error;
pub mod export;
pub mod interp;
pub mod net;
pub mod random;
pub mod slots;
pub mod train;
pub mod weights;

pub use block_relu::BlockRelu;
pub use conv_bn::ConvBn;
pub use error::{NnError, Result};
pub use export::{DEFAULT_FRAC_BITS, eval_graph, export};
pub use interp::DescNet;
pub use net::{
    BlockNet, BlockNetParts, GraphSource, NetBuilder, NetRegistration, Network, net_builder,
    net_names,
};
pub use slots::{Activation, Slot, SlotId, SlotKind, Slots};

/// Re-exported so that architecture crates use the same tch and inventory as this crate.
pub use inventory;
pub use tch;
