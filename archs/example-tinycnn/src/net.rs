//! The tch network of `example-tinycnn` (cargo feature `torch`), registered in `knapsec-nn`:
//! the interpreter ([`DescNet`]) running [`TinyCnnPlan::describe`] (blocks `block1` and
//! `block2`), returning `[N, classes]` logits.

use crate::{NAME, TinyCnnPlan};
use knapsec_nn::DescNet;
use std::collections::HashMap;

knapsec_nn::register_net!(NAME, "knapsec-arch-example", |options, root| {
    DescNet::new(
        TinyCnnPlan::new(options)?.describe()?,
        options,
        root,
        HashMap::new(),
    )
});
