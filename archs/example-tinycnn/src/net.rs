//! The tch network of `example-tinycnn` (cargo feature `torch`), registered in `knapsec-nn`.
//!
//! Two blocks: `block1` (`conv1`, slot `relu1`) and `block2` (`conv2`, slot `relu2`, global
//! average pooling, `fc`), returning `[N, classes]` logits.

use crate::{NAME, TinyCnnPlan};
use knapsec_core::ArchOptions;
use knapsec_core::graph::SecureModel;
use knapsec_core::graph_build::ParamSource;
use knapsec_nn::Result;
use knapsec_nn::net::{BlockNet, BlockNetParts, GraphSource, NetRegistration};
use knapsec_nn::slots::{SlotId, SlotKind, Slots};
use tch::{Kind, Tensor, nn};

/// `example-tinycnn` as a block-structured network.
#[derive(Debug)]
pub struct TinyCnnNet {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc: nn::Linear,
    relu: [SlotId; 2],
    /// Name, options, input shape, blocks, slots and graph source.
    parts: BlockNetParts,
}

impl TinyCnnNet {
    /// Builds the network at `options` under `root`.
    pub fn new(options: &ArchOptions, root: &nn::Path) -> Result<Self> {
        let plan = TinyCnnPlan::new(options)?;
        let table = plan.layer_table()?;
        let mut slots = Slots::new(NAME);
        let relu = [
            slots.add(table.layers[0].clone(), 0, SlotKind::Relu)?,
            slots.add(table.layers[1].clone(), 1, SlotKind::Relu)?,
        ];
        let w = i64::from(plan.width);
        let conv = |stride| nn::ConvConfig {
            stride,
            padding: 1,
            ..Default::default()
        };
        let parts = BlockNetParts::new(
            NAME,
            options.clone(),
            [
                plan.input.0.into(),
                plan.input.1.into(),
                plan.input.2.into(),
            ],
            vec!["block1".into(), "block2".into()],
            slots,
            Some(Box::new(plan.clone())),
        );
        Ok(TinyCnnNet {
            conv1: nn::conv2d(root / "conv1", plan.input.0.into(), w, 3, conv(1)),
            conv2: nn::conv2d(root / "conv2", w, 2 * w, 3, conv(2)),
            fc: nn::linear(root / "fc", 2 * w, plan.classes.into(), Default::default()),
            relu,
            parts,
        })
    }
}

impl GraphSource for TinyCnnPlan {
    fn secure_graph(
        &self,
        spec: Option<&knapsec_core::BlockSpec>,
        frac_bits: u32,
    ) -> knapsec_core::Result<(SecureModel, Vec<ParamSource>)> {
        TinyCnnPlan::secure_graph(self, spec, frac_bits)
    }
}

impl BlockNet for TinyCnnNet {
    fn parts(&self) -> &BlockNetParts {
        &self.parts
    }

    fn parts_mut(&mut self) -> &mut BlockNetParts {
        &mut self.parts
    }

    fn run_block(&self, index: usize, x: &Tensor, _train: bool) -> Tensor {
        if index == 0 {
            self.parts.slots.run(self.relu[0], &x.apply(&self.conv1))
        } else {
            let y = self.parts.slots.run(self.relu[1], &x.apply(&self.conv2));
            y.mean_dim([2i64, 3].as_slice(), false, Kind::Float)
                .apply(&self.fc)
        }
    }
}

fn build(options: &ArchOptions, root: &nn::Path) -> Result<Box<dyn BlockNet>> {
    Ok(Box::new(TinyCnnNet::new(options, root)?))
}

knapsec_nn::inventory::submit! {
    NetRegistration { name: NAME, provider: "knapsec-arch-example", build }
}
