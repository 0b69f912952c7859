//! Fuzzes block specs in RON (what `BlockSpec::load` reads from `.ron`): arbitrary text gives
//! a spec or an error, never a panic; a spec that parses serialises to RON that parses to the
//! same spec, and checking it against a small layer table never panics.
#![no_main]

mod spec_checks;

use knapsec_core::BlockSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = ron::from_str::<BlockSpec>(text) {
        spec_checks::check(&spec, ron::from_str(&spec.to_ron()).expect("our RON parses"));
    }
});
