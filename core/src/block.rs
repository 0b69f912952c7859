//! Patch sizes of a block ReLU and their DReLU cost (digest §1.1, §1.3).
//!
//! A [`BlockSize`] is one channel's choice: a patch `(h, w)` with `h, w ≥ 1` (one DReLU per
//! patch; `(1, 1)` is an ordinary ReLU), [`BlockSize::Identity`] (the ReLU is removed, cost 0),
//! or [`BlockSize::Zero`] (the channel is forced to 0, cost 0).
//!
//! The reference writes identity as `[0, 1]` and zero as `[1, 0]` ([`BlockSize::from_reference`]).
//! `Zero` exists only so that such files import losslessly: our knapsack never emits it, and
//! the reference's secure code treats it as identity while its plaintext code zeroes the channel
//! (digest §10.7). We follow the plaintext meaning everywhere.
//!
//! Costs use the true height and width of the map: `ceil(H/h) · ceil(W/w)` (the reference
//! assumed square maps, digest §10.22).

use crate::error::{CoreError, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// One channel's activation choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockSize {
    /// One DReLU per `h × w` patch, tiled from the top-left; ragged edges form partial patches.
    Patch {
        /// Patch height.
        h: u32,
        /// Patch width.
        w: u32,
    },
    /// No ReLU: the channel passes through unchanged.
    Identity,
    /// The channel is set to zero (imported from reference files only).
    Zero,
}

impl BlockSize {
    /// An ordinary ReLU: one DReLU per pixel.
    pub const RELU: BlockSize = BlockSize::Patch { h: 1, w: 1 };

    /// A patch `h × w`; both sides must be at least 1.
    pub fn patch(h: u32, w: u32) -> Result<Self> {
        if h == 0 || w == 0 {
            return Err(CoreError::ZeroSizedPatch { h, w });
        }
        Ok(BlockSize::Patch { h, w })
    }

    /// True for `(1, 1)`.
    pub fn is_relu(&self) -> bool {
        *self == Self::RELU
    }

    /// Number of DReLUs this choice costs on one channel of a `height × width` map.
    pub fn drelu_cost(&self, height: u32, width: u32) -> u64 {
        match *self {
            BlockSize::Patch { h, w } => {
                u64::from(height.div_ceil(h.max(1))) * u64::from(width.div_ceil(w.max(1)))
            }
            BlockSize::Identity | BlockSize::Zero => 0,
        }
    }

    /// Reads a row of the reference's `int32 [C, 2]` arrays: `[0, 1]` identity, `[1, 0]` zero,
    /// `[h, w]` a patch.
    pub fn from_reference(row: [i64; 2]) -> Result<Self> {
        match row {
            [0, 1] => Ok(BlockSize::Identity),
            [1, 0] => Ok(BlockSize::Zero),
            [h, w] if h >= 1 && w >= 1 && h <= u32::MAX as i64 && w <= u32::MAX as i64 => {
                Ok(BlockSize::Patch {
                    h: h as u32,
                    w: w as u32,
                })
            }
            [h, w] => Err(CoreError::Invalid(format!(
                "reference block size [{h}, {w}] is neither a patch, [0, 1] (identity) nor [1, 0] (zero)"
            ))),
        }
    }

    /// The reference's row for this choice (see [`BlockSize::from_reference`]).
    pub fn to_reference(&self) -> [i32; 2] {
        match *self {
            BlockSize::Patch { h, w } => [h as i32, w as i32],
            BlockSize::Identity => [0, 1],
            BlockSize::Zero => [1, 0],
        }
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockSize::Patch { h, w } => write!(f, "{h}x{w}"),
            BlockSize::Identity => f.write_str("identity"),
            BlockSize::Zero => f.write_str("zero"),
        }
    }
}

impl FromStr for BlockSize {
    type Err = CoreError;
    fn from_str(text: &str) -> Result<Self> {
        let t = text.trim().to_ascii_lowercase();
        match t.as_str() {
            "identity" | "id" => return Ok(BlockSize::Identity),
            "zero" => return Ok(BlockSize::Zero),
            _ => {}
        }
        let bad = || CoreError::BadBlockText {
            text: text.to_string(),
        };
        let (h, w) = t.split_once('x').ok_or_else(bad)?;
        let h: u32 = h.trim().parse().map_err(|_| bad())?;
        let w: u32 = w.trim().parse().map_err(|_| bad())?;
        BlockSize::patch(h, w)
    }
}

/// Serialised form: a patch is a pair `(h, w)` (RON) / `[h, w]` (JSON); the others are the
/// names `Identity` and `Zero`.
impl Serialize for BlockSize {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match *self {
            BlockSize::Patch { h, w } => (h, w).serialize(s),
            BlockSize::Identity => s.serialize_unit_variant("BlockSize", 1, "Identity"),
            BlockSize::Zero => s.serialize_unit_variant("BlockSize", 2, "Zero"),
        }
    }
}

/// What a serialised block size can look like. Deserialising through serde's untagged
/// buffering lets RON hand over the name of a bare identifier such as `Identity`.
#[derive(Deserialize)]
#[serde(untagged)]
enum BlockSizeRepr {
    Pair(u32, u32),
    Name(String),
}

impl<'de> Deserialize<'de> for BlockSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        match BlockSizeRepr::deserialize(d).map_err(|_| {
            D::Error::custom("expected a patch (h, w) with h, w >= 1, `Identity` or `Zero`")
        })? {
            BlockSizeRepr::Pair(h, w) => BlockSize::patch(h, w).map_err(D::Error::custom),
            BlockSizeRepr::Name(name) => match name.as_str() {
                "Identity" => Ok(BlockSize::Identity),
                "Zero" => Ok(BlockSize::Zero),
                other => other.parse().map_err(D::Error::custom),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_uses_true_height_and_width() {
        assert_eq!(BlockSize::RELU.drelu_cost(7, 5), 35);
        assert_eq!(BlockSize::patch(2, 3).unwrap().drelu_cost(7, 5), 4 * 2);
        assert_eq!(BlockSize::patch(16, 16).unwrap().drelu_cost(7, 5), 1);
        assert_eq!(BlockSize::Identity.drelu_cost(7, 5), 0);
        assert_eq!(BlockSize::Zero.drelu_cost(7, 5), 0);
    }

    #[test]
    fn reference_rows_round_trip() {
        for row in [[0, 1], [1, 0], [1, 1], [3, 7]] {
            let b = BlockSize::from_reference(row).unwrap();
            assert_eq!(b.to_reference(), [row[0] as i32, row[1] as i32]);
        }
        assert!(BlockSize::from_reference([0, 0]).is_err());
        assert!(BlockSize::from_reference([-1, 2]).is_err());
    }

    #[test]
    fn zero_sized_patch_is_refused() {
        assert!(matches!(
            BlockSize::patch(0, 3),
            Err(CoreError::ZeroSizedPatch { .. })
        ));
        assert!("0x3".parse::<BlockSize>().is_err());
    }

    #[test]
    fn text_round_trip() {
        for b in [
            BlockSize::RELU,
            BlockSize::Identity,
            BlockSize::Zero,
            BlockSize::Patch { h: 4, w: 16 },
        ] {
            assert_eq!(b.to_string().parse::<BlockSize>().unwrap(), b);
        }
    }

    #[test]
    fn ron_and_json_forms() {
        let v = vec![
            BlockSize::Patch { h: 2, w: 3 },
            BlockSize::Identity,
            BlockSize::Zero,
        ];
        let ron_text = ron::to_string(&v).unwrap();
        assert_eq!(ron_text, "[(2,3),Identity,Zero]");
        assert_eq!(ron::from_str::<Vec<BlockSize>>(&ron_text).unwrap(), v);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"[[2,3],"Identity","Zero"]"#);
        assert_eq!(serde_json::from_str::<Vec<BlockSize>>(&json).unwrap(), v);
        assert!(ron::from_str::<BlockSize>("(0,3)").is_err());
        assert!(serde_json::from_str::<BlockSize>("[1,2,3]").is_err());
    }
}
