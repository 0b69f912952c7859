//! Fuzzes the IDX (MNIST) parser, `knapsec_core::idx::parse`: the header parsing that
//! `knapsec-nn` uses for its data sets, kept tch-free so that the fuzzer need not link
//! libtorch. Arbitrary bytes give dimensions whose product is exactly the data length, or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = knapsec_core::idx::parse(data, "fuzz") {
        let n = idx.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(n, Some(idx.data.len()));
    }
});
