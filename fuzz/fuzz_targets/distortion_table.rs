//! Fuzzes distortion tables (`DistortionTable::from_bytes`, the safetensors reader behind
//! `DistortionTable::load`): arbitrary bytes give a table or an error, never a panic; a table
//! that parses is validated against a small layer table without panicking, and one that
//! serialises reads back as the same table.
#![no_main]

use knapsec_core::distortion::DistortionTable;
use knapsec_core::{LayerTable, ReluLayer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = DistortionTable::from_bytes(data) else {
        return;
    };
    let layers = LayerTable::new(
        "fuzz",
        vec![ReluLayer::new("a", 2, 4, 4), ReluLayer::new("b", 3, 2, 2)],
    )
    .expect("a valid table");
    let _ = table.validate(&layers);
    if let Ok(bytes) = table.to_bytes() {
        let again = DistortionTable::from_bytes(&bytes).expect("a table we wrote reads back");
        assert_eq!(again.arch, table.arch);
        assert_eq!(again.layers.len(), table.layers.len());
    }
});
