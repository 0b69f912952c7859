//! The architecture-adapter plugin trait (DESIGN §4; the reference's `Params`, digest §4.1).
//!
//! An adapter describes a network to the tch-free stages: its ReLU layers with their true
//! shapes at a given input size, and the candidate patch sizes of each layer (the distortion
//! parameters). The tch side of an architecture (building and running the network) lives in
//! `knapsec-nn`, keyed by the same name.

use crate::block::BlockSize;
use crate::candidates;
use crate::error::Result;
use crate::layer::{LayerTable, ReluLayer};
use serde::{Deserialize, Serialize};

/// Options shared by architectures; each adapter documents which it honours and refuses the
/// others with a clear error. `None` means the adapter's default (the reference's setting).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchOptions {
    /// Input channels (3 for RGB, 1 for greyscale data sets).
    pub input_channels: Option<u32>,
    /// Input height and width in pixels.
    pub input_height: Option<u32>,
    /// See `input_height`.
    pub input_width: Option<u32>,
    /// Number of output classes.
    pub classes: Option<u32>,
    /// Base width (channels of the first stage), for architectures that scale.
    pub base_width: Option<u32>,
    /// Architecture-specific variant, e.g. `"avgpool-stem"` or `"relu6"`.
    pub variant: Option<String>,
}

impl ArchOptions {
    /// The options of the demo and the committed Fashion-MNIST experiment: greyscale
    /// 28×28 inputs, 10 classes, base width 16 (the reference's `resnet18-cifar` setting
    /// for that data set).
    pub fn fashion_mnist() -> Self {
        ArchOptions {
            input_channels: Some(1),
            input_height: Some(28),
            input_width: Some(28),
            classes: Some(10),
            base_width: Some(16),
            variant: None,
        }
    }

    /// Input size `(C, H, W)` with the given defaults.
    pub fn input_or(&self, c: u32, h: u32, w: u32) -> (u32, u32, u32) {
        (
            self.input_channels.unwrap_or(c),
            self.input_height.unwrap_or(h),
            self.input_width.unwrap_or(w),
        )
    }
}

/// Describes one architecture to the tch-free stages.
pub trait ArchAdapter: Send + Sync {
    /// Registry name, e.g. `"resnet18-cifar"`.
    fn name(&self) -> &str;

    /// One line for `knapsec arch list`.
    fn description(&self) -> &str;

    /// The ReLU layers in network order at the input size and options given.
    fn layer_table(&self, options: &ArchOptions) -> Result<LayerTable>;

    /// Candidate patch sizes of a layer. The default generates every patch up to the map
    /// size, capped at 16 per side, plus identity ([`candidates::generate`]).
    fn candidates(&self, layer: &ReluLayer) -> Vec<BlockSize> {
        candidates::generate(layer.height, layer.width, 16)
    }

    /// A listing of the network's ops, shapes and slots for `knapsec arch info`, where the
    /// adapter has one (imported networks); the default has none.
    fn network_summary(&self) -> Option<String> {
        None
    }

    /// Whether the network's source carries its trained weights (an ONNX file with its
    /// initializers inside), so that training, evaluation and export run without `--weights`.
    /// The default (a builder of descriptions) does not.
    fn own_weights(&self) -> bool {
        false
    }

    /// DReLU cost of a choice on one channel of `layer`; the default is `ceil(H/h)·ceil(W/w)`.
    fn cost(&self, block: BlockSize, layer: &ReluLayer) -> u64 {
        block.drelu_cost(layer.height, layer.width)
    }

    /// The secure-model graph at `options` with the block sizes of `spec` (all ReLUs without
    /// one) and `frac_bits` fractional bits, without libtorch: what `knapsec bench secure` and
    /// `bench net` run with random weights. `None` if the adapter cannot build it (the
    /// default).
    fn secure_graph(
        &self,
        options: &ArchOptions,
        spec: Option<&crate::spec::BlockSpec>,
        frac_bits: u32,
    ) -> Result<Option<crate::graph::SecureModel>> {
        let _ = (options, spec, frac_bits);
        Ok(None)
    }
}
