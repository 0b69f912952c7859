//! knapsec-arch-example: `example-tinycnn`, a small real CNN that shows how to add an
//! architecture to knapsec **without touching core** (docs/plugins.md, "Add an architecture";
//! digest §8 lists what the reference needed instead: five places in four files).
//!
//! The network: `conv1` (3×3, stride 1, padding 1, bias) → ReLU `relu1` → `conv2` (3×3,
//! stride 2, padding 1, bias) → ReLU `relu2` → global average pooling → `fc` (linear).
//! Defaults: 1×28×28 input (Fashion-MNIST), 10 classes, `base_width` 8 (conv1 has `w`
//! channels, conv2 `2w`). `variant` is refused. Weights use the `state_dict` names
//! `conv1.weight`, `conv1.bias`, `conv2.*`, `fc.*`.
//!
//! An architecture crate is one builder of a network description:
//!
//! 1. **Description** (this file, no tch): a plan built from `ArchOptions` whose
//!    [`TinyCnnPlan::describe`] pushes the ops (`knapsec_arch_kit::desc`) under `state_dict`
//!    names; the layer table and the secure-model graph come from the description. One
//!    `knapsec_arch_kit::plan_adapter!` declares the `ArchAdapter` ([`TinyCnn`]) and
//!    registers it.
//! 2. **Network** (`net`, behind the cargo feature `torch`): one `knapsec_nn::register_net!`
//!    under the same name, building the interpreter (`knapsec_nn::DescNet`) on the
//!    description.
//!
//! Then one `use knapsec_arch_example as _;` line (behind a feature) in the
//! `knapsec-builtin` facade links it into the CLI and the tests.

#[cfg(feature = "torch")]
pub mod net;

use knapsec_arch_kit::desc::{conv, linear, relu};
use knapsec_arch_kit::spec::check_spec_layers;
use knapsec_core::graph::SecureModel;
use knapsec_core::graph_build::{ParamSource, window_out};
use knapsec_core::netdesc::{DescOp, NetDesc};
use knapsec_core::{ArchOptions, BlockSpec, CoreError, LayerTable, Result};

/// Registry name.
pub const NAME: &str = "example-tinycnn";

/// The network at one set of options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TinyCnnPlan {
    /// Input `(C, H, W)`.
    pub input: (u32, u32, u32),
    /// Channels of `conv1` (`conv2` has twice as many).
    pub width: u32,
    /// Classes of the linear layer's output.
    pub classes: u32,
    /// Map size after `conv2`.
    pub out_hw: (u32, u32),
}

impl TinyCnnPlan {
    /// Reads and checks the options (see the crate documentation).
    pub fn new(options: &ArchOptions) -> Result<Self> {
        if let Some(v) = &options.variant {
            return Err(CoreError::Invalid(format!(
                "architecture {NAME:?} has no variants (got {v:?})"
            )));
        }
        let (c, h, w) = options.input_or(1, 28, 28);
        let width = options.base_width.unwrap_or(8);
        let classes = options.classes.unwrap_or(10);
        if [c, h, w, width, classes].contains(&0) {
            return Err(CoreError::Invalid(format!(
                "architecture {NAME:?}: sizes, width and classes must be positive"
            )));
        }
        let out_hw = (
            window_out(h, 3, 2, 1, 1).unwrap_or(1),
            window_out(w, 3, 2, 1, 1).unwrap_or(1),
        );
        Ok(TinyCnnPlan {
            input: (c, h, w),
            width,
            classes,
            out_hw,
        })
    }

    /// The network's description: `conv1` → `relu1` (block `block1`), `conv2` → `relu2` →
    /// global average pooling `pool` → `fc` (block `block2`).
    pub fn describe(&self) -> Result<NetDesc> {
        let (c, h, w) = self.input;
        let mut d = NetDesc::new(NAME, [c, h, w])?;
        let x = conv(&mut d, "conv1", 0, self.width, [3, 1, 1, 1, 1], true)?;
        let x = relu(&mut d, "relu1", x)?;
        d.end_block("block1");
        let x = conv(&mut d, "conv2", x, 2 * self.width, [3, 2, 1, 1, 1], true)?;
        let x = relu(&mut d, "relu2", x)?;
        let x = d.push("pool", DescOp::GlobalAvgPool, &[x])?;
        linear(&mut d, "fc", x, self.classes)?;
        d.end_block("block2");
        Ok(d)
    }

    /// `relu1` at the input size, `relu2` at half of it (from [`Self::describe`]).
    pub fn layer_table(&self) -> Result<LayerTable> {
        self.describe()?.layer_table()
    }

    /// The secure-model graph ([`Self::describe`]); layers named by `spec` get its block
    /// sizes, the others ReLU.
    pub fn secure_graph(
        &self,
        spec: Option<&BlockSpec>,
        frac_bits: u32,
    ) -> Result<(SecureModel, Vec<ParamSource>)> {
        let desc = self.describe()?;
        check_spec_layers(NAME, &desc.layer_table()?.layers, spec)?;
        desc.secure_graph(spec, frac_bits)
    }
}

knapsec_arch_kit::plan_adapter! {
    /// The architecture adapter of `example-tinycnn` (default candidates: every patch up to
    /// 16×16 plus identity).
    pub struct TinyCnn {
        name: NAME,
        provider: "knapsec-arch-example",
        description: "Example: 2 conv + 2 ReLU + linear, 1x28x28 input, 10 classes (template for new architectures)",
        plan: TinyCnnPlan = |options| TinyCnnPlan::new(options),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::{ArchAdapter, BlockSize};

    #[test]
    fn table_and_graph() {
        let t = TinyCnn.layer_table(&ArchOptions::default()).unwrap();
        assert_eq!(
            t.layers,
            vec![
                knapsec_core::ReluLayer::new("relu1", 8, 28, 28),
                knapsec_core::ReluLayer::new("relu2", 16, 14, 14)
            ]
        );
        assert_eq!(t.drelus(), 8 * 784 + 16 * 196);
        assert_eq!(TinyCnn.candidates(&t.layers[1]).len(), 14 * 14 + 1);
        let plan = TinyCnnPlan::new(&ArchOptions::default()).unwrap();
        let mut spec = BlockSpec::new(NAME);
        spec.layers
            .insert("relu2".into(), vec![BlockSize::Patch { h: 2, w: 2 }; 16]);
        let (model, params) = plan.secure_graph(Some(&spec), 12).unwrap();
        assert_eq!(model.drelus(), 8 * 784 + 16 * 49);
        assert_eq!(model.output_shape(), [10, 1, 1]);
        assert_eq!(params.len(), 3);
        spec.layers.insert("relu9".into(), vec![]);
        assert!(plan.secure_graph(Some(&spec), 12).is_err());
        let bad = ArchOptions {
            variant: Some("x".into()),
            ..Default::default()
        };
        assert!(TinyCnn.layer_table(&bad).is_err());
    }
}
