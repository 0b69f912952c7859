//! Fixed-point encoding of real numbers in Z_2^64 (digest §6.2).
//!
//! A real `x` with `f` fractional bits is the ring element `round(x · 2^f)` (round half away
//! from zero, saturating at the i64 range), reinterpreted as `u64`; exactly
//! [`knapsec_core::graph::encode_fixed`]. Decoding reads the element as a signed integer and
//! divides by `2^f`. Products of two encodings carry `2f` fractional bits and are brought back
//! by an arithmetic shift right by `f` ([`crate::RingTensor::shr_arith`]).
//!
//! **Input range.** A client's input is clamped to `|x| ≤ (2^31 − 1)/2^f` ([`input_bound`];
//! about ±524 287.99 at `f = 12`) and a NaN encodes as 0: the encoding of an input element
//! then fits in 32 signed bits, so its product with any weight in the same range fits in the
//! signed 63-bit range, and no input, however large or non-finite, can make the first
//! products wrap or turn the truncation's error probability (≈ `|Y|/2^64` per element) into
//! a certainty. Both the secure backends and the `plain` oracle encode inputs through
//! [`RingTensor::encode_f32`], so they clamp identically.

use crate::error::{Result, RingError};
use crate::tensor::RingTensor;
use knapsec_core::graph::{decode_fixed, encode_fixed};

/// Largest number of fractional bits accepted (products at `2f` must leave sign room); the
/// secure model's validator enforces the same bound when a model is loaded.
pub const MAX_FRAC_BITS: u32 = knapsec_core::graph::MAX_FRAC_BITS;

/// Encodes `x` with `frac_bits` fractional bits.
pub fn encode(x: f64, frac_bits: u32) -> u64 {
    encode_fixed(x, frac_bits) as u64
}

/// Decodes the ring element `v` with `frac_bits` fractional bits.
pub fn decode(v: u64, frac_bits: u32) -> f64 {
    decode_fixed(v as i64, frac_bits)
}

/// Largest magnitude of an input value: `(2^31 − 1)/2^frac_bits` (see the module docs).
pub fn input_bound(frac_bits: u32) -> f64 {
    ((1i64 << 31) - 1) as f64 / (1u64 << frac_bits) as f64
}

/// Encodes an input value: NaN as 0, anything else clamped to `±(2^31 − 1)` after rounding.
fn encode_input(x: f64, frac_bits: u32) -> u64 {
    const MAX: i64 = (1 << 31) - 1;
    if x.is_nan() {
        return 0;
    }
    encode_fixed(x, frac_bits).clamp(-MAX, MAX) as u64
}

/// The ring element that encodes 1.0 (`2^frac_bits`).
pub fn one(frac_bits: u32) -> u64 {
    1u64 << frac_bits
}

fn check_bits(op: &'static str, frac_bits: u32) -> Result<()> {
    if frac_bits > MAX_FRAC_BITS {
        return Err(RingError::invalid(
            op,
            format!("{frac_bits} fractional bits exceed the maximum {MAX_FRAC_BITS}"),
        ));
    }
    Ok(())
}

impl RingTensor {
    /// Encodes input values (row-major, shape `dims`) with `frac_bits` fractional bits,
    /// clamped to `±`[`input_bound`] (NaN as 0).
    pub fn encode_f32(dims: &[usize], values: &[f32], frac_bits: u32) -> Result<Self> {
        check_bits("encode_f32", frac_bits)?;
        Self::from_vec(
            dims,
            values
                .iter()
                .map(|&x| encode_input(f64::from(x), frac_bits))
                .collect(),
        )
    }

    /// Encodes input values (row-major, shape `dims`) with `frac_bits` fractional bits,
    /// clamped to `±`[`input_bound`] (NaN as 0).
    pub fn encode_f64(dims: &[usize], values: &[f64], frac_bits: u32) -> Result<Self> {
        check_bits("encode_f64", frac_bits)?;
        Self::from_vec(
            dims,
            values.iter().map(|&x| encode_input(x, frac_bits)).collect(),
        )
    }

    /// Decodes every element with `frac_bits` fractional bits.
    pub fn decode_f32(&self, frac_bits: u32) -> Vec<f32> {
        self.data()
            .iter()
            .map(|&v| decode(v, frac_bits) as f32)
            .collect()
    }

    /// Decodes every element with `frac_bits` fractional bits.
    pub fn decode_f64(&self, frac_bits: u32) -> Vec<f64> {
        self.data().iter().map(|&v| decode(v, frac_bits)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_core_and_rounds_to_nearest() {
        assert_eq!(encode(1.5, 12), 6144);
        assert_eq!(encode(-1.5, 12) as i64, -6144);
        assert_eq!(encode(0.3 / 4096.0, 12), 0);
        assert_eq!(encode(0.6 / 4096.0, 12), 1);
        assert_eq!(encode(-0.6 / 4096.0, 12) as i64, -1);
        assert_eq!(decode(encode(-2.25, 12), 12), -2.25);
        assert_eq!(one(12), 4096);
        assert!(RingTensor::encode_f32(&[1], &[1.0], 40).is_err());
    }

    #[test]
    fn inputs_are_clamped_to_the_representable_range() {
        let f = 12;
        let max = (1i64 << 31) - 1;
        let t = RingTensor::encode_f32(
            &[6],
            &[
                1.0e9,
                -1.0e9,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                2.5,
            ],
            f,
        )
        .unwrap();
        let got: Vec<i64> = t.data().iter().map(|&v| v as i64).collect();
        assert_eq!(got, vec![max, -max, max, -max, 0, 10240]);
        assert_eq!(input_bound(f), max as f64 / 4096.0);
        // The product of two clamped encodings never leaves the signed 63-bit range.
        assert!((max as i128) * (max as i128) < 1i128 << 62);
        let t = RingTensor::encode_f64(&[2], &[1.0e12, -3.0], f).unwrap();
        assert_eq!(t.data()[0] as i64, max);
        assert_eq!(t.data()[1] as i64, -12288);
    }

    proptest! {
        #[test]
        fn round_trip_within_half_ulp(x in -1.0e6f64..1.0e6, f in 0u32..=24) {
            let back = decode(encode(x, f), f);
            prop_assert!((back - x).abs() <= 0.5 / (1u64 << f) as f64 + 1e-9);
            prop_assert_eq!(encode(x, f) as i64, encode_fixed(x, f));
        }

        #[test]
        fn product_then_shift_is_floor_of_product(a in -1000.0f64..1000.0, b in -1000.0f64..1000.0) {
            let f = 12;
            let (ea, eb) = (encode(a, f), encode(b, f));
            let t = RingTensor::from_vec(&[1], vec![ea.wrapping_mul(eb)]).unwrap().shr_arith(f);
            let exact = (ea as i64 as i128) * (eb as i64 as i128);
            prop_assert_eq!(t.data()[0] as i64 as i128, exact.div_euclid(1 << f));
        }
    }
}
