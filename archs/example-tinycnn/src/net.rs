//! The tch network of `example-tinycnn` (cargo feature `torch`), registered in `knapsec-nn`.
//!
//! Two blocks: `block1` (`conv1`, slot `relu1`) and `block2` (`conv2`, slot `relu2`, global
//! average pooling, `fc`), returning `[N, classes]` logits.

use crate::{NAME, TinyCnnPlan};
use knapsec_core::ArchOptions;
use knapsec_nn::Result;
use knapsec_nn::net::{BlockNet, BlockNetParts, input_shape, plan_graph};
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
            input_shape(plan.input),
            vec!["block1".into(), "block2".into()],
            slots,
            plan_graph(plan.clone(), TinyCnnPlan::secure_graph),
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

impl BlockNet for TinyCnnNet {
    knapsec_nn::block_net_parts!(parts);

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

knapsec_nn::register_net!(NAME, "knapsec-arch-example", |options, root| {
    TinyCnnNet::new(options, root)
});
