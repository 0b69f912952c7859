//! Block specs: one [`BlockSize`] per channel of every ReLU layer (DESIGN §3).
//!
//! On disk a spec is RON or JSON, chosen by extension, with a format version and the
//! architecture name: `(format: 1, arch: "resnet18-cifar", layers: {"stem": [(2,2), (1,1), Identity]})`.
//! Layers keep the order in which they were written (the architecture's order when we write).
//! [`BlockSpec::validate`] checks a spec against a [`LayerTable`] and names the first layer and
//! channel that do not fit. Reference pickles are read by [`crate::spec`]'s importer
//! (`BlockSpec::load` on `.pickle`/`.pkl`).

use crate::block::BlockSize;
use crate::error::{CoreError, Result};
use crate::fsutil;
use crate::layer::LayerTable;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The block-spec format version this build reads and writes.
pub const SPEC_FORMAT: u32 = 1;

/// One patch size per channel, per ReLU layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSpec {
    /// Format version ([`SPEC_FORMAT`]).
    pub format: u32,
    /// Architecture name (as in the registry).
    pub arch: String,
    /// Block size of every channel, per layer name.
    pub layers: IndexMap<String, Vec<BlockSize>>,
}

/// File formats a spec can be read from or written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecFormat {
    /// RON text.
    Ron,
    /// JSON text.
    Json,
    /// The reference's pickled `{layer: int32[C, 2]}` (read; written for round-trip tests).
    Pickle,
}

impl SpecFormat {
    /// The format a file's extension names (`.ron`, `.json`, `.pickle` or `.pkl`).
    pub fn from_path(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("ron") => Ok(SpecFormat::Ron),
            Some("json") => Ok(SpecFormat::Json),
            Some("pickle" | "pkl") => Ok(SpecFormat::Pickle),
            _ => Err(CoreError::UnknownExtension {
                path: path.into(),
                expected: ".ron, .json, .pickle, .pkl",
            }),
        }
    }
}

impl BlockSpec {
    /// An empty spec for `arch`.
    pub fn new(arch: impl Into<String>) -> Self {
        BlockSpec {
            format: SPEC_FORMAT,
            arch: arch.into(),
            layers: IndexMap::new(),
        }
    }

    /// The same block size for every channel of every layer of `table`.
    pub fn uniform(table: &LayerTable, block: BlockSize) -> Self {
        let mut spec = BlockSpec::new(&table.arch);
        for l in &table.layers {
            spec.layers
                .insert(l.name.clone(), vec![block; l.channels as usize]);
        }
        spec
    }

    /// Checks the spec against an architecture's table: same architecture, every layer
    /// present and known, the right number of channels. Errors name the first mismatch in
    /// the table's layer order.
    pub fn validate(&self, table: &LayerTable) -> Result<()> {
        if self.format != SPEC_FORMAT {
            return Err(CoreError::UnsupportedFormat {
                found: self.format,
                supported: SPEC_FORMAT,
            });
        }
        if self.arch != table.arch {
            return Err(CoreError::WrongArchitecture {
                expected: table.arch.clone(),
                found: self.arch.clone(),
            });
        }
        self.validate_layers(table)
    }

    /// Like [`BlockSpec::validate`] but ignores the architecture name (for reference pickles,
    /// which carry none, and for checking a spec against another network's layers).
    pub fn validate_layers(&self, table: &LayerTable) -> Result<()> {
        for layer in &table.layers {
            let Some(blocks) = self.layers.get(&layer.name) else {
                // A name of the spec that the table lacks is the more telling error if one exists.
                if let Some(unknown) = self.layers.keys().find(|k| table.get(k).is_none()) {
                    return Err(CoreError::UnknownLayer {
                        arch: table.arch.clone(),
                        layer: unknown.clone(),
                    });
                }
                return Err(CoreError::MissingLayer {
                    arch: table.arch.clone(),
                    layer: layer.name.clone(),
                });
            };
            if blocks.len() != layer.channels as usize {
                return Err(CoreError::WrongChannelCount {
                    layer: layer.name.clone(),
                    expected: layer.channels as usize,
                    found: blocks.len(),
                });
            }
            for (channel, b) in blocks.iter().enumerate() {
                if let BlockSize::Patch { h: 0, .. } | BlockSize::Patch { w: 0, .. } = b {
                    return Err(CoreError::BadChannel {
                        layer: layer.name.clone(),
                        channel,
                        reason: format!("zero-sized patch {b}"),
                    });
                }
            }
        }
        if let Some(unknown) = self.layers.keys().find(|k| table.get(k).is_none()) {
            return Err(CoreError::UnknownLayer {
                arch: table.arch.clone(),
                layer: unknown.clone(),
            });
        }
        Ok(())
    }

    /// DReLUs this spec costs on `table` (layers the spec lacks count as plain ReLU).
    pub fn drelus(&self, table: &LayerTable) -> u64 {
        table
            .layers
            .iter()
            .map(|l| match self.layers.get(&l.name) {
                Some(blocks) => blocks.iter().map(|b| b.drelu_cost(l.height, l.width)).sum(),
                None => l.drelus(),
            })
            .sum()
    }

    /// Serialises as pretty RON.
    pub fn to_ron(&self) -> String {
        let config = ron::ser::PrettyConfig::new()
            .depth_limit(2)
            .indentor("  ".to_string());
        ron::ser::to_string_pretty(self, config).expect("a block spec always serialises")
    }

    /// Serialises as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a block spec always serialises")
    }

    /// Reads a spec; the format follows the extension (`.ron`, `.json`, `.pickle`/`.pkl`).
    /// A reference pickle has no architecture name: `arch_for_pickle` is used for it.
    pub fn load(path: &Path, arch_for_pickle: Option<&str>) -> Result<Self> {
        let format = SpecFormat::from_path(path)?;
        let spec: BlockSpec = match format {
            SpecFormat::Ron => {
                let text = fsutil::read_to_string(path)?;
                ron::from_str(&text).map_err(|e| CoreError::parse(path, e))?
            }
            SpecFormat::Json => {
                let text = fsutil::read_to_string(path)?;
                serde_json::from_str(&text).map_err(|e| CoreError::parse(path, e))?
            }
            SpecFormat::Pickle => {
                let bytes = fsutil::read(path)?;
                crate::spec_pickle::from_reference_pickle(&bytes, arch_for_pickle.unwrap_or(""))
                    .map_err(|e| CoreError::parse(path, e))?
            }
        };
        if spec.format != SPEC_FORMAT {
            return Err(CoreError::parse(
                path,
                CoreError::UnsupportedFormat {
                    found: spec.format,
                    supported: SPEC_FORMAT,
                },
            ));
        }
        Ok(spec)
    }

    /// Writes the spec atomically; the format follows the extension.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = match SpecFormat::from_path(path)? {
            SpecFormat::Ron => self.to_ron().into_bytes(),
            SpecFormat::Json => self.to_json().into_bytes(),
            SpecFormat::Pickle => crate::spec_pickle::to_reference_pickle(self),
        };
        fsutil::write_atomic(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::ReluLayer;

    fn table() -> LayerTable {
        LayerTable::new(
            "toy",
            vec![ReluLayer::new("a", 2, 4, 4), ReluLayer::new("b", 3, 2, 2)],
        )
        .unwrap()
    }

    fn spec() -> BlockSpec {
        let mut s = BlockSpec::new("toy");
        s.layers.insert(
            "a".into(),
            vec![BlockSize::Patch { h: 2, w: 2 }, BlockSize::Identity],
        );
        s.layers.insert(
            "b".into(),
            vec![
                BlockSize::RELU,
                BlockSize::Zero,
                BlockSize::Patch { h: 1, w: 2 },
            ],
        );
        s
    }

    #[test]
    fn round_trips_exactly_in_ron_and_json() {
        let s = spec();
        assert_eq!(ron::from_str::<BlockSpec>(&s.to_ron()).unwrap(), s);
        assert_eq!(serde_json::from_str::<BlockSpec>(&s.to_json()).unwrap(), s);
        let dir = tempfile::tempdir().unwrap();
        for name in ["s.ron", "s.json"] {
            let p = dir.path().join(name);
            s.save(&p).unwrap();
            assert_eq!(BlockSpec::load(&p, None).unwrap(), s);
        }
    }

    #[test]
    fn validation_names_layer_and_channel() {
        let t = table();
        spec().validate(&t).unwrap();
        assert_eq!(spec().drelus(&t), 4 + 4 + 2);

        let mut s = spec();
        s.arch = "other".into();
        assert!(matches!(
            s.validate(&t),
            Err(CoreError::WrongArchitecture { .. })
        ));

        let mut s = spec();
        s.layers.get_mut("b").unwrap().pop();
        let e = s.validate(&t).unwrap_err();
        assert!(
            e.to_string().contains("\"b\"") && e.to_string().contains("3"),
            "{e}"
        );

        let mut s = spec();
        s.layers.shift_remove("b");
        assert!(
            matches!(s.validate(&t), Err(CoreError::MissingLayer { layer, .. }) if layer == "b")
        );

        let mut s = spec();
        s.layers.insert("c".into(), vec![]);
        assert!(
            matches!(s.validate(&t), Err(CoreError::UnknownLayer { layer, .. }) if layer == "c")
        );

        let parsed: std::result::Result<BlockSpec, _> =
            ron::from_str(r#"(format: 1, arch: "toy", layers: {"a": [(0, 2), (1, 1)]})"#);
        assert!(parsed.is_err(), "a zero-sized patch must not parse");
    }

    #[test]
    fn unknown_extension_is_refused() {
        assert!(matches!(
            BlockSpec::load(Path::new("x.yaml"), None),
            Err(CoreError::UnknownExtension { .. })
        ));
    }
}
