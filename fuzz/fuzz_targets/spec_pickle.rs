//! Fuzzes the reference block-spec pickle reader (`knapsec_core::spec_pickle`): arbitrary bytes
//! give a spec or an error, never a panic, a stack overflow or an allocation past the reader's
//! limit; a spec that parses writes back to a pickle that reads as the same spec.
#![no_main]

use knapsec_core::spec_pickle::{from_reference_pickle, to_reference_pickle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = from_reference_pickle(data, "fuzz") {
        let again = from_reference_pickle(&to_reference_pickle(&spec), "fuzz")
            .expect("a pickle we wrote reads back");
        assert_eq!(again, spec);
    }
});
