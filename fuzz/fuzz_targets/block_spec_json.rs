//! Fuzzes block specs in JSON (what `BlockSpec::load` reads from `.json`): arbitrary text
//! gives a spec or an error, never a panic; a spec that parses serialises to JSON that parses
//! to the same spec, and checking it against a small layer table never panics.
#![no_main]

use knapsec_core::{BlockSpec, LayerTable, ReluLayer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<BlockSpec>(data) {
        let again: BlockSpec = serde_json::from_str(&spec.to_json()).expect("our JSON parses");
        assert_eq!(again, spec);
        let table = LayerTable::new(
            "fuzz",
            vec![ReluLayer::new("a", 2, 4, 4), ReluLayer::new("b", 3, 2, 2)],
        )
        .expect("a valid table");
        let _ = spec.validate(&table);
        let _ = spec.drelus(&table);
    }
});
