//! Fuzzes the ONNX importer (`knapsec_arch_onnx::import`, what `--arch onnx:PATH` runs on the
//! file's bytes: protobuf decoding with `prost`, the unsupported-op check, constant folding,
//! shape inference). Arbitrary bytes give a network description or an error, never a panic,
//! an overflow or an allocation past the stated limits. A description that imports must be
//! safe for what every stage does first: its layer table, listing, parameter shapes and
//! secure graph (or a clear refusal) computed without panicking.
#![no_main]

use knapsec_core::graph::MAX_ACTIVATION_ELEMENTS;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(imported) = knapsec_arch_onnx::import(data, "onnx:fuzz") else {
        return;
    };
    let desc = &imported.desc;
    for node in &desc.nodes {
        let n: u64 = node.shape.iter().map(|&d| u64::from(d)).product();
        assert!(n >= 1 && n <= MAX_ACTIVATION_ELEMENTS, "{:?}", node.shape);
    }
    let _ = desc.summary();
    let _ = desc.param_shapes();
    if let Ok(table) = desc.layer_table() {
        let _ = table.drelus();
    }
    if let Ok((model, params)) = desc.secure_graph(None, 12) {
        model.validate().expect("a built secure graph validates");
        assert!(params.len() <= model.nodes.len());
    }
    for (key, w) in &imported.weights {
        let n: usize = w.shape.iter().product();
        if imported.missing.contains(key) {
            // External data: the shape alone, the values left to `--weights`.
            assert!(w.data.is_empty(), "{key}");
        } else {
            assert_eq!(n, w.data.len(), "{key}");
        }
    }
});
