//! Fuzzes the `.npz` MCKP instance reader of `knapsec knapsack solve-mckp`
//! (`knapsec_knapsack::npz::instance_from_bytes`, what `read_instance` runs on a file):
//! arbitrary bytes give an instance or an error, never a panic nor an allocation past
//! `MAX_NPZ_ELEMENTS`; an instance that reads is validated and reduced without panicking.
#![no_main]

use knapsec_core::knapsack::Reduction;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let budget = data.first().map_or(0, |&b| u64::from(b));
    let Ok(p) = knapsec_knapsack::npz::instance_from_bytes(data, Path::new("fuzz.npz"), budget)
    else {
        return;
    };
    if p.validate().is_ok() {
        let r = p.reduce(Reduction::Dominated);
        assert_eq!(r.problem.classes(), p.classes());
    }
});
