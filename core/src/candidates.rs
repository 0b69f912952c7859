//! Candidate patch sets (digest §1.4).
//!
//! [`generate`] builds a set by code: every `(h, w)` with `h ≤ min(cap, H)` and `w ≤ min(cap, W)`,
//! plus identity, deduplicated and sorted by decreasing cost. [`preset`] returns the reference's
//! hand-written lists (`BLOCK_SIZES_<n>x<n>`) by name, for comparison: they are transcribed
//! as-is, duplicates included, **without** their trailing `1x0` ("zero"), which the reference's
//! knapsack drops anyway, and with `0x1` read as identity.

use crate::block::BlockSize;
use crate::error::{CoreError, Result};

/// Every patch `(h, w)` up to `cap` on each side (never larger than the map), plus
/// `(1, 1)` and identity; sorted by decreasing DReLU cost on the given map, then by shape.
pub fn generate(height: u32, width: u32, cap: u32) -> Vec<BlockSize> {
    let cap = cap.max(1);
    let mut out: Vec<BlockSize> = Vec::new();
    for h in 1..=cap.min(height.max(1)) {
        for w in 1..=cap.min(width.max(1)) {
            out.push(BlockSize::Patch { h, w });
        }
    }
    out.push(BlockSize::Identity);
    out.sort_by_key(|b| (std::cmp::Reverse(b.drelu_cost(height, width)), *b));
    out.dedup();
    out
}

/// Names of the reference presets, e.g. `"32x32"`, `"14x14"`.
pub const PRESET_NAMES: &[&str] = &[
    "1x1", "2x2", "4x4", "7x7", "8x8", "14x14", "16x16", "28x28", "32x32", "56x56", "64x64",
    "112x112", "128x128", "256x256", "320x320", "512x512",
];

const P_1: &str = "1x1 0x1";
const P_2: &str = "1x1 1x2 2x1 2x2 0x1";
const P_4: &str = "1x1 1x2 2x1 2x2 2x4 4x2 4x4 0x1";
const P_7: &str = "1x1 1x2 2x1 1x3 3x1 1x4 2x2 4x1 2x3 3x2 1x7 2x4 4x2 7x1 3x3 3x4 4x3 2x7 4x4 7x2 4x7 7x4 7x7 0x1";
const P_8: &str = "1x1 1x2 2x1 1x3 3x1 1x4 2x2 4x1 2x3 3x2 1x8 2x4 4x2 8x1 3x3 3x4 4x3 2x8 4x4 8x2 4x8 8x4 8x8 0x1";
const P_14: &str = "1x1 1x2 2x1 1x3 3x1 1x4 2x2 4x1 1x5 5x1 1x6 2x3 3x2 6x1 1x7 2x4 4x2 7x1 3x3 2x5 5x2 2x6 3x4 4x3 \
    6x2 3x5 5x3 2x7 4x4 7x2 3x6 6x3 4x5 5x4 3x7 4x6 6x4 7x3 5x5 3x9 9x3 5x6 6x5 4x7 7x4 3x12 6x6 \
    12x4 7x7 5x10 10x5 4x15 5x12 6x10 10x6 12x5 4x14 7x7 14x4 6x12 12x6 5x14 7x10 10x7 14x5 6x14 \
    7x12 12x7 14x6 10x10 7x14 14x7 14x14 0x1";
const P_16: &str = "1x1 1x2 2x1 1x3 3x1 1x4 2x2 4x1 1x5 5x1 1x6 2x3 3x2 6x1 1x8 2x4 4x2 8x1 3x3 2x5 5x2 2x6 3x4 4x3 \
    6x2 3x5 5x3 2x8 4x4 8x2 3x6 6x3 4x5 5x4 3x8 4x6 6x4 8x3 5x5 3x9 9x3 5x6 6x5 4x8 8x4 3x12 6x6 \
    6x8 8x6 12x4 7x7 5x10 10x5 4x15 5x12 6x10 10x6 12x5 4x16 8x8 16x4 6x12 12x6 5x16 8x10 10x8 \
    16x5 6x16 8x12 12x8 16x6 10x10 8x16 16x8 12x12 16x16 0x1";
const P_28: &str = "1x1 1x2 2x1 1x3 3x1 1x4 2x2 4x1 1x5 5x1 1x6 2x3 3x2 6x1 1x7 2x4 4x2 7x1 3x3 2x5 5x2 \
    2x6 3x4 4x3 6x2 3x5 5x3 2x7 4x4 7x2 3x6 6x3 4x5 5x4 3x7 4x6 6x4 7x3 5x5 3x9 9x3 5x6 6x5 4x7 7x4 \
    3x12 6x6 6x7 7x6 12x4 7x7 5x10 10x5 4x15 5x12 6x10 10x6 12x5 4x14 7x7 14x4 6x12 12x6 5x14 7x10 \
    10x7 14x5 6x14 7x12 12x7 14x6 10x10 7x14 14x7 12x12 14x14 21x21 28x28 0x1";
const P_512_BASE: &str = "1x1 1x2 2x1 1x3 3x1 1x4 2x2 4x1 1x5 5x1 1x6 2x3 3x2 6x1 2x4 4x2 3x3 2x5 5x2 2x6 3x4 4x3 6x2 \
    3x5 5x3 2x8 4x4 8x2 3x6 6x3 4x5 5x4 2x12 3x8 4x6 6x4 8x3 12x2 5x5 3x9 9x3 5x6 6x5 2x16 4x8 8x4 \
    16x2 3x12 6x6 12x3 5x8 8x5 4x12 6x8 8x6 12x4 7x7 5x10 10x5 6x9 9x6 5x12 6x10 10x6 12x5 4x16 8x8 \
    16x4 6x12 12x6 5x15 15x5 8x10 10x8 9x9 6x16 8x12 12x8 16x6 10x10 9x12 12x9 8x14 14x8 11x11 8x16 \
    16x8 12x12 10x16 16x10 12x14 14x12 13x13 12x16 16x12 14x14 16x16 32x32";
const P_112_BASE: &str = "1x1 1x2 2x1 1x3 3x1 1x4 2x2 4x1 1x5 5x1 1x7 2x3 3x2 7x1 2x4 4x2 3x3 2x5 5x2 2x7 3x4 4x3 7x2 \
    3x5 5x3 2x8 4x4 8x2 3x7 7x3 4x5 5x4 2x12 3x8 4x7 7x4 8x3 12x2 5x5 3x9 9x3 5x7 7x5 2x14 4x8 8x4 \
    14x2 3x12 6x6 12x3 5x8 8x5 4x12 7x8 8x7 12x4 7x7 5x10 10x5 7x9 9x7 5x12 7x10 10x7 12x5 4x14 8x8 \
    14x4 7x12 12x7 5x15 15x5 8x10 10x8 9x9 7x14 8x12 12x8 14x7 10x10 9x12 12x9 8x14 14x8 11x11 8x14 \
    14x8 12x12 10x14 14x10 12x14 14x12 13x13 12x14 14x12 14x14 28x28 56x56";

/// The reference's hand-written candidate list named `name` (e.g. `"32x32"`), in its order,
/// without repeats: the reference's lists `14x14` and `28x28` name `7x7` twice, `56x56` and
/// `112x112` name `8x14`, `14x8`, `12x14` and `14x12` twice; the later copies are dropped (a
/// candidate measured twice would be one knapsack option twice).
pub fn preset(name: &str) -> Result<Vec<BlockSize>> {
    let text: String = match name {
        "1x1" => P_1.into(),
        "2x2" => P_2.into(),
        "4x4" => P_4.into(),
        "7x7" => P_7.into(),
        "8x8" => P_8.into(),
        "14x14" => P_14.into(),
        "16x16" => P_16.into(),
        "28x28" => P_28.into(),
        "32x32" => P_16.replace("16x16 0x1", "16x16 24x24 32x32 0x1"),
        "64x64" => format!("{P_512_BASE} 64x64 0x1"),
        "128x128" => format!("{P_512_BASE} 64x64 128x128 0x1"),
        "256x256" | "320x320" => format!("{P_512_BASE} 64x64 128x128 256x256 0x1"),
        "512x512" => format!("{P_512_BASE} 64x64 128x128 256x256 512x512 0x1"),
        "56x56" => format!("{P_112_BASE} 0x1"),
        "112x112" => format!("{P_112_BASE} 112x112 0x1"),
        _ => {
            return Err(CoreError::Invalid(format!(
                "no candidate preset named {name:?} (available: {})",
                PRESET_NAMES.join(", ")
            )));
        }
    };
    let mut list: Vec<BlockSize> = Vec::new();
    for token in text.split_whitespace() {
        let b = match token {
            "0x1" => BlockSize::Identity,
            _ => token.parse()?,
        };
        if !list.contains(&b) {
            list.push(b);
        }
    }
    Ok(list)
}

/// The preset the reference uses for a square map of side `side` (its `LAYER_NAME_TO_BLOCK_SIZES`):
/// the list named after the side, e.g. 32 → `"32x32"`.
pub fn preset_for_side(side: u32) -> Result<Vec<BlockSize>> {
    preset(&format!("{side}x{side}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_lengths_match_the_reference_minus_the_zero_entry_and_repeats() {
        // digest §1.4 gives the lengths including the trailing `1x0`; the third number is the
        // count of repeated entries of the reference's list.
        for (name, len, repeats) in [
            ("1x1", 3, 0),
            ("2x2", 6, 0),
            ("4x4", 9, 0),
            ("7x7", 25, 0),
            ("8x8", 25, 0),
            ("14x14", 75, 1),
            ("16x16", 78, 0),
            ("28x28", 80, 1),
            ("32x32", 80, 0),
            ("512x512", 104, 0),
            ("256x256", 103, 0),
            ("320x320", 103, 0),
            ("128x128", 102, 0),
            ("64x64", 101, 0),
            ("112x112", 101, 4),
            ("56x56", 100, 4),
        ] {
            let list = preset(name).unwrap();
            assert_eq!(list.len(), len - 1 - repeats, "{name}");
            let mut distinct = list.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), list.len(), "{name} has repeats");
        }
        assert!(preset("3x3").is_err());
    }

    #[test]
    fn presets_start_with_relu_and_end_with_identity() {
        for name in PRESET_NAMES {
            let p = preset(name).unwrap();
            assert_eq!(p[0], BlockSize::RELU, "{name}");
            assert_eq!(*p.last().unwrap(), BlockSize::Identity, "{name}");
        }
    }

    #[test]
    fn generated_set_is_deduplicated_and_complete() {
        let g = generate(4, 3, 8);
        assert_eq!(g.len(), 4 * 3 + 1);
        assert_eq!(g[0], BlockSize::RELU);
        assert_eq!(*g.last().unwrap(), BlockSize::Identity);
        let mut sorted = g.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), g.len());
        assert_eq!(generate(32, 32, 4).len(), 17);
    }
}
