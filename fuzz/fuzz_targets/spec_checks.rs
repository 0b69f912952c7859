//! What both block-spec targets (`block_spec_json`, `block_spec_ron`) check of a spec that
//! parsed: written out and read back it is the same spec, and checking it against a small
//! layer table never panics.

use knapsec_core::{BlockSpec, LayerTable, ReluLayer};

/// `again` is `spec` written out and parsed back.
pub fn check(spec: &BlockSpec, again: BlockSpec) {
    assert_eq!(&again, spec);
    let table = LayerTable::new(
        "fuzz",
        vec![ReluLayer::new("a", 2, 4, 4), ReluLayer::new("b", 3, 2, 2)],
    )
    .expect("a valid table");
    let _ = spec.validate(&table);
    let _ = spec.drelus(&table);
}
