//! The layer table of an architecture: its ReLU layers in network order (the reference's
//! `LAYER_NAMES` with `LAYER_NAME_TO_DIMS`, digest §4.1), each with channels C and the true
//! height H and width W of its activation map.

use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};

/// One ReLU layer: `channels × height × width` activations, one ReLU per activation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReluLayer {
    /// Layer name (the reference's, e.g. `layer1_0_1`).
    pub name: String,
    /// Channels.
    pub channels: u32,
    /// Height of the activation.
    pub height: u32,
    /// Width of the activation.
    pub width: u32,
}

impl ReluLayer {
    /// A layer of `channels × height × width` activations.
    pub fn new(name: impl Into<String>, channels: u32, height: u32, width: u32) -> Self {
        ReluLayer {
            name: name.into(),
            channels,
            height,
            width,
        }
    }

    /// DReLUs of the unmodified layer (`C·H·W`).
    pub fn drelus(&self) -> u64 {
        u64::from(self.channels) * u64::from(self.height) * u64::from(self.width)
    }
}

/// The ordered ReLU layers of one architecture at one input size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerTable {
    /// Architecture name (as in the registry).
    pub arch: String,
    /// The layers, in network order.
    pub layers: Vec<ReluLayer>,
}

impl LayerTable {
    /// `(name, channels, height, width)` of every layer, in network order: what
    /// `knapsec arch info` lists.
    pub fn shapes(&self) -> Vec<(&str, u32, u32, u32)> {
        self.layers
            .iter()
            .map(|l| (l.name.as_str(), l.channels, l.height, l.width))
            .collect()
    }

    /// Builds a table, refusing duplicate names and empty layers.
    pub fn new(arch: impl Into<String>, layers: Vec<ReluLayer>) -> Result<Self> {
        let arch = arch.into();
        let mut seen = std::collections::HashSet::new();
        for l in &layers {
            if !seen.insert(l.name.as_str()) {
                return Err(CoreError::Invalid(format!(
                    "architecture {arch:?}: layer {:?} appears twice",
                    l.name
                )));
            }
            if l.channels == 0 || l.height == 0 || l.width == 0 {
                return Err(CoreError::Invalid(format!(
                    "architecture {arch:?}: layer {:?} has an empty shape {}x{}x{}",
                    l.name, l.channels, l.height, l.width
                )));
            }
        }
        Ok(LayerTable { arch, layers })
    }

    /// The layer named `name`.
    pub fn get(&self, name: &str) -> Option<&ReluLayer> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// Position of the layer named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }

    /// Total channels over all layers (the number of knapsack classes).
    pub fn channels(&self) -> u64 {
        self.layers.iter().map(|l| u64::from(l.channels)).sum()
    }

    /// DReLUs of the unmodified network.
    pub fn drelus(&self) -> u64 {
        self.layers.iter().map(ReluLayer::drelus).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_duplicates() {
        let t = LayerTable::new(
            "t",
            vec![ReluLayer::new("a", 2, 3, 4), ReluLayer::new("b", 1, 5, 5)],
        )
        .unwrap();
        assert_eq!(t.channels(), 3);
        assert_eq!(t.drelus(), 24 + 25);
        assert_eq!(t.index_of("b"), Some(1));
        assert!(
            LayerTable::new(
                "t",
                vec![ReluLayer::new("a", 1, 1, 1), ReluLayer::new("a", 1, 1, 1)]
            )
            .is_err()
        );
        assert!(LayerTable::new("t", vec![ReluLayer::new("a", 0, 1, 1)]).is_err());
    }
}
