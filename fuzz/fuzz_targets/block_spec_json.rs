//! Fuzzes block specs in JSON (what `BlockSpec::load` reads from `.json`): arbitrary text
//! gives a spec or an error, never a panic; a spec that parses serialises to JSON that parses
//! to the same spec, and checking it against a small layer table never panics.
#![no_main]

mod spec_checks;

use knapsec_core::BlockSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<BlockSpec>(data) {
        spec_checks::check(
            &spec,
            serde_json::from_str(&spec.to_json()).expect("our JSON parses"),
        );
    }
});
