//! Distortion tables: the artefact between distortion extraction and the knapsack (DESIGN §3,
//! digest §2.3–2.4).
//!
//! For every ReLU layer ℓ the table holds a `[C, K]` matrix: `values[c·K + k]` is the distortion
//! (by default the output MSE, digest §2.3; **not** negated as in the reference's collected
//! files) of replacing channel `c`'s ReLU by candidate `k` of the layer's candidate list.
//!
//! # File format (safetensors, format version 1)
//!
//! * one tensor per layer, named by the layer, dtype `F64`, shape `[C, K]`, row-major;
//! * metadata (all values are strings, as safetensors requires):
//!   - `"format"`: `"knapsec-distortion"`, `"format_version"`: `"1"`;
//!   - `"arch"`: the architecture name;
//!   - `"layers"`: JSON list of layer names in network order (safetensors itself sorts tensors);
//!   - `"candidates"`: JSON object `{layer: [[h, w], ..., "Identity"]}` (the [`BlockSize`] JSON
//!     form), one list per layer, `K` entries, in column order;
//!   - `"provenance"`: JSON object [`Provenance`] (weights hash, sample seed and count, metric).
//!
//! From Python: `from safetensors.numpy import load_file; from safetensors import safe_open;
//! t = load_file("d.safetensors"); meta = safe_open("d.safetensors", "np").metadata();
//! json.loads(meta["candidates"])["stem"]`.
//!
//! # Use from the extraction stage
//!
//! ```
//! use knapsec_core::distortion::{DistortionTable, Provenance};
//! use knapsec_core::{BlockSize, LayerTable, ReluLayer};
//! let table = LayerTable::new("toy", vec![ReluLayer::new("a", 2, 4, 4)]).unwrap();
//! let prov = Provenance { weights_hash: "blake3:…".into(), sample_seed: 1, sample_count: 8, metric: "output-mse".into() };
//! // Every value starts as NaN ("not measured yet"); validation refuses NaN, naming the cell.
//! let mut d = DistortionTable::unmeasured(&table, |_| vec![BlockSize::RELU, BlockSize::Identity], prov);
//! assert!(d.validate(&table).is_err());
//! d.layer_mut("a").unwrap().row_mut(0).copy_from_slice(&[0.0, 0.5]);
//! d.layer_mut("a").unwrap().row_mut(1).copy_from_slice(&[0.0, 0.2]);
//! d.validate(&table).unwrap();
//! let bytes = d.to_bytes().unwrap();            // or d.save(path) (atomic)
//! assert_eq!(DistortionTable::from_bytes(&bytes).unwrap(), d);
//! ```
//!
//! Validation ([`DistortionTable::validate`]) checks the table against an architecture's
//! [`LayerTable`]: same architecture, the same layers, `C` rows per layer, distinct candidates,
//! and every value finite and non-negative; errors name the layer and channel.

use crate::block::BlockSize;
use crate::error::{CoreError, Result};
use crate::fsutil;
use crate::layer::LayerTable;
use indexmap::IndexMap;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The distortion-table format version this build reads and writes.
pub const DISTORTION_FORMAT: u32 = 1;

/// The value of the `"format"` metadata key.
pub const DISTORTION_FORMAT_NAME: &str = "knapsec-distortion";

/// Where the numbers come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Hash of the weights the distortion was measured on (e.g. `"blake3:<hex>"`).
    pub weights_hash: String,
    /// Seed of the sample of images.
    pub sample_seed: u64,
    /// Number of images in the sample.
    pub sample_count: u64,
    /// Distortion metric, e.g. `"output-mse"`.
    pub metric: String,
}

/// One layer's `[C, K]` matrix and its candidate list.
#[derive(Clone, Debug, PartialEq)]
pub struct DistortionLayer {
    /// Candidate block sizes, one per column.
    pub candidates: Vec<BlockSize>,
    /// Number of channels (rows).
    pub channels: usize,
    /// Row-major `[channels, candidates.len()]` values.
    pub values: Vec<f64>,
}

impl DistortionLayer {
    /// Number of candidates (columns).
    pub fn k(&self) -> usize {
        self.candidates.len()
    }

    /// Values of channel `c`, one per candidate.
    pub fn row(&self, c: usize) -> &[f64] {
        &self.values[c * self.k()..(c + 1) * self.k()]
    }

    /// Mutable values of channel `c`.
    pub fn row_mut(&mut self, c: usize) -> &mut [f64] {
        let k = self.k();
        &mut self.values[c * k..(c + 1) * k]
    }
}

/// A distortion table: provenance plus one [`DistortionLayer`] per ReLU layer, in network order.
#[derive(Clone, Debug, PartialEq)]
pub struct DistortionTable {
    /// Architecture name (as in the registry).
    pub arch: String,
    /// Where the table came from (weights, samples, metric).
    pub provenance: Provenance,
    /// Layers in network order.
    pub layers: IndexMap<String, DistortionLayer>,
}

impl DistortionTable {
    /// A table for every layer of `table`, with the candidates `candidates(layer)` and every value
    /// NaN ("not measured"): fill it, then [`DistortionTable::validate`].
    pub fn unmeasured(
        table: &LayerTable,
        mut candidates: impl FnMut(&crate::layer::ReluLayer) -> Vec<BlockSize>,
        provenance: Provenance,
    ) -> Self {
        let mut layers = IndexMap::new();
        for l in &table.layers {
            let cands = candidates(l);
            let channels = l.channels as usize;
            let values = vec![f64::NAN; channels * cands.len()];
            layers.insert(
                l.name.clone(),
                DistortionLayer {
                    candidates: cands,
                    channels,
                    values,
                },
            );
        }
        DistortionTable {
            arch: table.arch.clone(),
            provenance,
            layers,
        }
    }

    /// The layer named `name`.
    pub fn layer(&self, name: &str) -> Option<&DistortionLayer> {
        self.layers.get(name)
    }

    /// The layer named `name`, mutable.
    pub fn layer_mut(&mut self, name: &str) -> Option<&mut DistortionLayer> {
        self.layers.get_mut(name)
    }

    /// Checks the table against an architecture's layer table (see the module doc).
    pub fn validate(&self, table: &LayerTable) -> Result<()> {
        if self.arch != table.arch {
            return Err(CoreError::Invalid(format!(
                "distortion table is for architecture {:?}, expected {:?}",
                self.arch, table.arch
            )));
        }
        for l in &table.layers {
            let Some(d) = self.layers.get(&l.name) else {
                return Err(CoreError::MissingLayer {
                    arch: table.arch.clone(),
                    layer: l.name.clone(),
                });
            };
            if d.channels != l.channels as usize {
                return Err(CoreError::WrongChannelCount {
                    layer: l.name.clone(),
                    expected: l.channels as usize,
                    found: d.channels,
                });
            }
            self.check_layer(&l.name, d)?;
        }
        if let Some(unknown) = self.layers.keys().find(|k| table.get(k).is_none()) {
            return Err(CoreError::UnknownLayer {
                arch: table.arch.clone(),
                layer: unknown.clone(),
            });
        }
        Ok(())
    }

    fn check_layer(&self, name: &str, d: &DistortionLayer) -> Result<()> {
        if d.candidates.is_empty() {
            return Err(CoreError::Invalid(format!(
                "distortion table, layer {name:?}: no candidates"
            )));
        }
        for (k, b) in d.candidates.iter().enumerate() {
            if d.candidates[..k].contains(b) {
                return Err(CoreError::Invalid(format!(
                    "distortion table, layer {name:?}: candidate {b} appears twice"
                )));
            }
        }
        self.check_shape(name, d)?;
        for c in 0..d.channels {
            for (k, &v) in d.row(c).iter().enumerate() {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(CoreError::BadChannel {
                        layer: name.to_string(),
                        channel: c,
                        reason: format!(
                            "distortion of candidate {} is {v} (must be finite and >= 0{})",
                            d.candidates[k],
                            if v.is_nan() { "; not measured?" } else { "" }
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Serialises to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut candidates = serde_json::Map::new();
        let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(self.layers.len());
        for (name, d) in &self.layers {
            self.check_shape(name, d)?;
            candidates.insert(
                name.clone(),
                serde_json::to_value(&d.candidates).map_err(invalid)?,
            );
            let bytes: Vec<u8> = d.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            data.push((name.clone(), bytes, vec![d.channels, d.k()]));
        }
        let mut views = Vec::with_capacity(data.len());
        for (name, bytes, shape) in &data {
            views.push((
                name.as_str(),
                TensorView::new(Dtype::F64, shape.clone(), bytes).map_err(invalid)?,
            ));
        }
        let layer_names: Vec<&String> = self.layers.keys().collect();
        let metadata: HashMap<String, String> = [
            ("format", DISTORTION_FORMAT_NAME.to_string()),
            ("format_version", DISTORTION_FORMAT.to_string()),
            ("arch", self.arch.clone()),
            (
                "layers",
                serde_json::to_string(&layer_names).map_err(invalid)?,
            ),
            (
                "candidates",
                serde_json::Value::Object(candidates).to_string(),
            ),
            (
                "provenance",
                serde_json::to_string(&self.provenance).map_err(invalid)?,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        safetensors::serialize(views, Some(metadata)).map_err(invalid)
    }

    fn check_shape(&self, name: &str, d: &DistortionLayer) -> Result<()> {
        if d.values.len() != d.channels * d.k() {
            return Err(CoreError::Invalid(format!(
                "distortion table, layer {name:?}: {} values for {} channels x {} candidates",
                d.values.len(),
                d.channels,
                d.k()
            )));
        }
        Ok(())
    }

    /// Parses safetensors bytes (structure only; see [`DistortionTable::validate`] for values).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(invalid)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(invalid)?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |key: &str| {
            meta.get(key).ok_or_else(|| {
                CoreError::Invalid(format!(
                    "not a knapsec distortion table: metadata key {key:?} is missing"
                ))
            })
        };
        if get("format")? != DISTORTION_FORMAT_NAME {
            return Err(CoreError::Invalid(format!(
                "not a knapsec distortion table: format is {:?}, expected {DISTORTION_FORMAT_NAME:?}",
                get("format")?
            )));
        }
        let version: u32 = get("format_version")?.parse().map_err(|_| {
            CoreError::Invalid(format!("bad format_version {:?}", meta["format_version"]))
        })?;
        if version != DISTORTION_FORMAT {
            return Err(CoreError::Invalid(format!(
                "distortion table format version {version} is not supported (this build reads version {DISTORTION_FORMAT})"
            )));
        }
        let arch = get("arch")?.clone();
        let names: Vec<String> =
            serde_json::from_str(get("layers")?).map_err(|e| bad_meta("layers", e))?;
        let mut candidates: HashMap<String, Vec<BlockSize>> =
            serde_json::from_str(get("candidates")?).map_err(|e| bad_meta("candidates", e))?;
        let provenance: Provenance =
            serde_json::from_str(get("provenance")?).map_err(|e| bad_meta("provenance", e))?;
        if names.len() != st.len() {
            return Err(CoreError::Invalid(format!(
                "distortion table lists {} layers but holds {} tensors",
                names.len(),
                st.len()
            )));
        }
        let mut layers = IndexMap::new();
        for name in names {
            let view = st.tensor(&name).map_err(|e| {
                CoreError::Invalid(format!("distortion table, layer {name:?}: {e}"))
            })?;
            if view.dtype() != Dtype::F64 || view.shape().len() != 2 {
                return Err(CoreError::Invalid(format!(
                    "distortion table, layer {name:?}: tensor is {:?} {:?}, expected F64 [C, K]",
                    view.dtype(),
                    view.shape()
                )));
            }
            let (channels, k) = (view.shape()[0], view.shape()[1]);
            let cands = candidates.remove(&name).ok_or_else(|| {
                CoreError::Invalid(format!(
                    "distortion table, layer {name:?}: no candidate list in the metadata"
                ))
            })?;
            if cands.len() != k {
                return Err(CoreError::Invalid(format!(
                    "distortion table, layer {name:?}: {} candidates but {k} columns",
                    cands.len()
                )));
            }
            let values: Vec<f64> = view
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            if layers
                .insert(
                    name.clone(),
                    DistortionLayer {
                        candidates: cands,
                        channels,
                        values,
                    },
                )
                .is_some()
            {
                return Err(CoreError::Invalid(format!(
                    "distortion table lists layer {name:?} twice"
                )));
            }
        }
        Ok(DistortionTable {
            arch,
            provenance,
            layers,
        })
    }

    /// Reads a table from a safetensors file (errors name the file).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fsutil::read(path)?;
        Self::from_bytes(&bytes).map_err(|e| CoreError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Writes the table atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        fsutil::write_atomic(path, &bytes)
    }
}

fn invalid(e: impl std::fmt::Display) -> CoreError {
    CoreError::Invalid(format!("distortion table: {e}"))
}

fn bad_meta(key: &str, e: impl std::fmt::Display) -> CoreError {
    CoreError::Invalid(format!(
        "distortion table: metadata {key:?} does not parse: {e}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::ReluLayer;

    fn table() -> LayerTable {
        LayerTable::new(
            "toy",
            vec![ReluLayer::new("b", 2, 4, 4), ReluLayer::new("a", 3, 2, 2)],
        )
        .unwrap()
    }

    fn filled() -> DistortionTable {
        let prov = Provenance {
            weights_hash: "blake3:00".into(),
            sample_seed: 7,
            sample_count: 16,
            metric: "output-mse".into(),
        };
        let mut d = DistortionTable::unmeasured(
            &table(),
            |l| {
                if l.name == "b" {
                    vec![
                        BlockSize::RELU,
                        BlockSize::Patch { h: 2, w: 2 },
                        BlockSize::Identity,
                    ]
                } else {
                    vec![BlockSize::RELU, BlockSize::Identity]
                }
            },
            prov,
        );
        for (i, v) in d
            .layers
            .values_mut()
            .flat_map(|l| l.values.iter_mut())
            .enumerate()
        {
            *v = i as f64 * 0.25;
        }
        d
    }

    #[test]
    fn round_trip_keeps_order_candidates_and_values() {
        let d = filled();
        d.validate(&table()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.safetensors");
        d.save(&path).unwrap();
        let back = DistortionTable::load(&path).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.layers.keys().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(back.layer("a").unwrap().row(2), &[1.5 + 1.0, 1.5 + 1.25]);
    }

    #[test]
    fn validation_names_layer_and_channel() {
        let t = table();
        let mut d = filled();
        d.layer_mut("a").unwrap().row_mut(1)[0] = f64::NAN;
        let e = d.validate(&t).unwrap_err().to_string();
        assert!(
            e.contains("\"a\"") && e.contains("channel 1") && e.contains("not measured"),
            "{e}"
        );

        let mut d = filled();
        d.layer_mut("b").unwrap().row_mut(0)[2] = -1.0;
        assert!(matches!(
            d.validate(&t),
            Err(CoreError::BadChannel { channel: 0, .. })
        ));

        let mut d = filled();
        d.layers.shift_remove("a");
        assert!(matches!(
            d.validate(&t),
            Err(CoreError::MissingLayer { .. })
        ));

        let other = LayerTable::new(
            "toy",
            vec![ReluLayer::new("b", 3, 4, 4), ReluLayer::new("a", 3, 2, 2)],
        )
        .unwrap();
        assert!(matches!(
            filled().validate(&other),
            Err(CoreError::WrongChannelCount { .. })
        ));
        let other = LayerTable::new("other", t.layers.clone()).unwrap();
        assert!(
            filled()
                .validate(&other)
                .unwrap_err()
                .to_string()
                .contains("architecture")
        );

        let mut d = filled();
        d.layer_mut("a").unwrap().candidates[1] = BlockSize::RELU;
        assert!(d.validate(&t).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(DistortionTable::from_bytes(b"not safetensors").is_err());
        // A safetensors file without our metadata.
        let bytes = vec![0u8; 8];
        let view = TensorView::new(Dtype::F64, vec![1, 1], &bytes).unwrap();
        let plain = safetensors::serialize([("x", view)], None).unwrap();
        let e = DistortionTable::from_bytes(&plain).unwrap_err().to_string();
        assert!(e.contains("metadata key"), "{e}");
        // Wrong version.
        let mut bytes = filled().to_bytes().unwrap();
        let key = b"\"format_version\":\"1\"";
        let at = bytes
            .windows(key.len())
            .position(|w| w == key)
            .expect("version key in the header");
        bytes[at + key.len() - 2] = b'9';
        let e = DistortionTable::from_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
