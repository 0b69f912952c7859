//! Distortion extraction, stage 1 of the pipeline (digest §2; DESIGN §1, §3).
//!
//! For every ReLU layer, channel and candidate patch size, replace only that channel's ReLU by
//! a block ReLU of that patch and record the mean squared change of the network's output
//! against the unmodified network, averaged over a sample of images. The result is core's
//! distortion table (`knapsec_core::distortion::DistortionTable`).
//!
//! * [`engine`]: the batched engine (passes start at the layer, (variant, image) rows stacked
//!   along the batch, exact copies skipped image by image, one worker per core) and the
//!   reference's one-variant schedule; `worker` measures one work unit on one thread.
//! * [`metric`]: the [`DistortionMetric`] trait; [`OutputMse`] is the reference's metric.
//! * [`sample`]: seeded sample selection and weight fingerprints (provenance).
//! * [`store`]: work units, shards (`i/n`), checkpoints (partial tables, atomic) and merging.
//!
//! The engine works on any [`BlockNet`]: it needs only the slots (with their tap, to record
//! pre-activations), [`BlockNet::run_block_after_slot`] and
//! [`BlockNet::forward_after_channel_change`]; networks that override neither still work,
//! starting each pass at the layer's block; those that override the latter (the ResNets) start
//! it at the convolution that reads the slot, updated by the one changed channel. Networks run
//! in evaluation mode (BatchNorm statistics fixed).

pub mod engine;
pub mod metric;
pub mod sample;
pub mod store;
mod worker;

pub use engine::{ExtractConfig, ExtractStats, Progress, Schedule, extract, parse_device};
pub use metric::{DistortionMetric, OutputMse};
pub use store::{RunInfo, Shard, WorkUnit};

use crate::error::Result;
use crate::net::{BlockNet, Network, net_builder};

/// `count` independent copies of `network` (same architecture, options, weights and
/// activations), one per worker thread.
pub fn replicas(network: &Network, count: usize) -> Result<Vec<Network>> {
    let arch = network.net.arch();
    if !crate::net::net_names().contains(&arch) && crate::net::net_source(arch).is_some() {
        // A network from a source (`onnx:PATH`) is built by name.
        let (options, device) = (network.net.options(), network.vs.device());
        return replicate(network, count, || Network::build(arch, options, device));
    }
    replicas_with(network, net_builder(arch)?, count)
}

/// Like [`replicas`] for a network built by an explicit builder (tests, unregistered
/// architectures).
pub fn replicas_with(
    network: &Network,
    build: crate::net::NetBuilder,
    count: usize,
) -> Result<Vec<Network>> {
    replicate(network, count, || {
        Network::build_with(build, network.net.options(), network.vs.device())
    })
}

fn replicate(
    network: &Network,
    count: usize,
    build: impl Fn() -> Result<Network>,
) -> Result<Vec<Network>> {
    let spec = network.net.slots().to_spec();
    (0..count)
        .map(|_| {
            let mut copy = build()?;
            if copy.vs.kind() != network.vs.kind() {
                copy.vs.set_kind(network.vs.kind());
            }
            copy.vs.copy(&network.vs)?;
            copy.net.apply_spec(&spec)?;
            Ok(copy)
        })
        .collect()
}

/// The networks of [`replicas`] as the engine takes them.
pub fn into_nets(networks: Vec<Network>) -> Vec<Box<dyn BlockNet>> {
    networks.into_iter().map(|n| n.net).collect()
}

#[cfg(test)]
pub(crate) mod tests;
