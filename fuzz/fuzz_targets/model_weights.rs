//! Fuzzes `weights.safetensors`, the private part of a secure model
//! (`ModelWeights::from_bytes`, which `ModelWeights::load` runs on the file): arbitrary bytes
//! give weights or an error, never a panic; weights that parse are checked against a small
//! model without panicking, and serialise and parse back to the same weights.
#![no_main]

use knapsec_core::graph::ModelWeights;
use libfuzzer_sys::fuzz_target;

const MODEL: &str = r#"(format: 1, arch: "fuzz", frac_bits: 12, output_kind: Classification,
nodes: [
 (name: "input", op: Input, inputs: [], shape: (1, 4, 4)),
 (name: "conv", op: Conv2d(weight: "conv.weight", bias: Some("conv.bias"), kernel: (3, 3),
  stride: (1, 1), padding: (1, 1), dilation: (1, 1), groups: 1), inputs: [0], shape: (2, 4, 4)),
 (name: "gap", op: GlobalAvgPool, inputs: [1], shape: (2, 1, 1)),
 (name: "fc", op: Linear(weight: "fc.weight", bias: None), inputs: [2], shape: (3, 1, 1)),
])"#;

fuzz_target!(|data: &[u8]| {
    let Ok(weights) = ModelWeights::from_bytes(data) else {
        return;
    };
    let model =
        knapsec_core::graph::SecureModel::from_ron(MODEL).expect("the fixed model is valid");
    let _ = weights.check_against(&model);
    if let Ok(bytes) = weights.to_bytes() {
        let again = ModelWeights::from_bytes(&bytes).expect("weights we wrote read back");
        assert_eq!(again, weights);
    }
});
