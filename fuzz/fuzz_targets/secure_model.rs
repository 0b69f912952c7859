//! Fuzzes `model.ron`, the public part of a secure model (`SecureModel::from_ron`, which
//! `SecureModel::load` runs on the file's text: parse, then the one validator). Arbitrary text
//! gives a model or an error, never a panic. A model that passes validation must be safe for
//! what every executor does first: its shapes within the stated bounds, its DReLU count, its
//! canonical bytes and hash, and the weight sizes of every node computed without overflow.
#![no_main]

use knapsec_core::graph::{
    MAX_ACTIVATION_ELEMENTS, MAX_WEIGHT_ELEMENTS, ModelWeights, SecureModel, weight_len,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(model) = SecureModel::from_ron(text) else {
        return;
    };
    for node in &model.nodes {
        let n: u64 = node.shape.iter().map(|&d| u64::from(d)).product();
        assert!(n >= 1 && n <= MAX_ACTIVATION_ELEMENTS, "{:?}", node.shape);
        if let Some(&j) = node.inputs.first() {
            let input = model.nodes[j].shape;
            if let Some(w) = weight_len(&node.op, input, node.shape[0]) {
                assert!(w <= MAX_WEIGHT_ELEMENTS);
            }
        }
    }
    let _ = model.drelus();
    let again = SecureModel::from_ron(&String::from_utf8(model.canonical_bytes()).unwrap())
        .expect("the canonical text of a valid model is valid");
    assert_eq!(again.public_hash(), model.public_hash());
    // Weights that do not exist are an error, not a panic.
    let _ = ModelWeights::default().check_against(&model);
});
