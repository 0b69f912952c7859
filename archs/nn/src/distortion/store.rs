//! Work units, shards, checkpoints and merging of distortion tables (digest §2.4, §10.20: the
//! reference kept one `.npy` per (layer, channel, batch) and resumed per file).
//!
//! * The work is cut into **units** of `chunk` channels of one layer (every candidate of each);
//!   a unit is the granularity of checkpoints and of sharding.
//! * **Shard** `i/n` takes units `i, i + n, i + 2n, …` of the global unit list (round robin, so
//!   every shard gets a mix of cheap and expensive layers).
//! * Partial tables use the core distortion-table format (`knapsec_core::distortion`) with
//!   `NaN` in the cells not measured yet, plus one extra metadata key, [`RUN_KEY`], holding
//!   [`RunInfo`] (data, sample size, unit size, shard). Core's reader ignores the extra key, so
//!   every file this module writes is a valid distortion-table file; a partial one fails
//!   validation (a NaN cell names its layer and channel) until it is merged.
//! * Checkpoints are partial tables written atomically (`fsutil::write_atomic`); a resumed run
//!   skips every unit whose cells are all finite.

use crate::error::{NnError, Result};
use knapsec_core::distortion::DistortionTable;
use knapsec_core::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Metadata key of [`RunInfo`] in the table files written here.
pub const RUN_KEY: &str = "knapsec_distortion_run";

/// One of `count` independent parts of an extraction (`index` is 0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This part's index.
    pub index: usize,
    /// Number of parts.
    pub count: usize,
}

impl Shard {
    /// The whole job as one shard.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// True when unit number `unit` (in the global unit list) belongs to this shard.
    pub fn owns(&self, unit: usize) -> bool {
        unit % self.count == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = NnError;
    /// Parses `i/n` with `0 ≤ i < n`.
    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            NnError::Distortion(format!(
                "bad shard {text:?}: {why} (expected i/n with 0 <= i < n)"
            ))
        };
        let (i, n) = text.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let index: usize = i.trim().parse().map_err(|_| bad("i is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| bad("n is not a number"))?;
        if count == 0 || index >= count {
            return Err(bad("out of range"));
        }
        Ok(Shard { index, count })
    }
}

/// What identifies a run besides the table's own provenance; stored in every file written here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The data the sample was drawn from, e.g. `"random"` or `"fashion-mnist:train"`.
    pub data: String,
    /// Channels per work unit.
    pub chunk: usize,
    /// The shard this file holds, or `None` for a whole (or merged) table.
    pub shard: Option<Shard>,
}

/// One work unit: channels `channels` of layer number `layer` (in table order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkUnit {
    /// Position of the unit in the global list (what shards split on).
    pub id: usize,
    /// Layer index in the table.
    pub layer: usize,
    /// Channels of the unit.
    pub channels: Range<usize>,
}

/// Every unit of `table` in layer order, `chunk` channels each (the last of a layer may be
/// shorter).
pub fn units(table: &DistortionTable, chunk: usize) -> Vec<WorkUnit> {
    let chunk = chunk.max(1);
    let mut out = Vec::new();
    for (layer, d) in table.layers.values().enumerate() {
        let mut c = 0;
        while c < d.channels {
            let end = (c + chunk).min(d.channels);
            out.push(WorkUnit {
                id: out.len(),
                layer,
                channels: c..end,
            });
            c = end;
        }
    }
    out
}

/// True when every cell of `unit` holds a finite value.
pub fn unit_done(table: &DistortionTable, unit: &WorkUnit) -> bool {
    let d = &table.layers[unit.layer];
    unit.channels
        .clone()
        .all(|c| d.row(c).iter().all(|v| v.is_finite()))
}

/// Serialises a (possibly partial) table with its [`RunInfo`].
pub fn to_bytes(table: &DistortionTable, run: &RunInfo) -> Result<Vec<u8>> {
    let bytes = table.to_bytes()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(file_error("(in memory)"))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(file_error("(in memory)"))?;
    let mut metadata: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
    let info = serde_json::to_string(run).map_err(|e| NnError::Distortion(e.to_string()))?;
    metadata.insert(RUN_KEY.to_string(), info);
    safetensors::serialize(st.tensors(), Some(metadata)).map_err(file_error("(in memory)"))
}

/// Writes a (possibly partial) table atomically.
pub fn save(path: &Path, table: &DistortionTable, run: &RunInfo) -> Result<()> {
    Ok(fsutil::write_atomic(path, &to_bytes(table, run)?)?)
}

/// Reads a table file; the [`RunInfo`] is `None` for tables written by other tools.
pub fn load(path: &Path) -> Result<(DistortionTable, Option<RunInfo>)> {
    let bytes = fsutil::read(path)?;
    let table = DistortionTable::from_bytes(&bytes).map_err(|e| NnError::WeightFile {
        path: path.into(),
        message: e.to_string(),
    })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(file_error(path))?;
    let run = match meta.metadata().as_ref().and_then(|m| m.get(RUN_KEY)) {
        Some(text) => Some(serde_json::from_str(text).map_err(|e| NnError::WeightFile {
            path: path.into(),
            message: format!("metadata {RUN_KEY:?} does not parse: {e}"),
        })?),
        None => None,
    };
    Ok((table, run))
}

fn file_error(path: impl AsRef<Path>) -> impl Fn(safetensors::SafeTensorError) -> NnError {
    let path: PathBuf = path.as_ref().into();
    move |e| NnError::WeightFile {
        path: path.clone(),
        message: e.to_string(),
    }
}

/// Why two tables cannot belong to the same run, or `None` when they can: same architecture,
/// provenance, layers and candidate lists.
pub fn incompatibility(a: &DistortionTable, b: &DistortionTable) -> Option<String> {
    if a.arch != b.arch {
        return Some(format!(
            "architecture {:?} differs from {:?}",
            b.arch, a.arch
        ));
    }
    if a.provenance != b.provenance {
        return Some(format!(
            "provenance {:?} differs from {:?}",
            b.provenance, a.provenance
        ));
    }
    if a.layers.keys().ne(b.layers.keys()) {
        return Some("the layers differ".into());
    }
    for ((name, x), y) in a.layers.iter().zip(b.layers.values()) {
        if x.candidates != y.candidates || x.channels != y.channels {
            return Some(format!(
                "layer {name:?} has different candidates or channel count"
            ));
        }
    }
    None
}

/// Joins the shard tables of one run into the whole table: every shard must come from the same
/// run (table provenance, data, unit size, shard count), each shard at most once, and together
/// they must cover every cell. Errors name the file and, for gaps, the missing shards.
pub fn merge(
    parts: &[(PathBuf, DistortionTable, Option<RunInfo>)],
) -> Result<(DistortionTable, RunInfo)> {
    let Some((first_path, first, first_run)) = parts.first() else {
        return Err(NnError::Distortion(
            "nothing to merge: no shard files given".into(),
        ));
    };
    let bad = |path: &Path, reason: String| NnError::Resume {
        path: path.into(),
        reason,
    };
    let first_run = first_run.clone().ok_or_else(|| {
        bad(
            first_path,
            "not a knapsec distortion shard (no run metadata)".into(),
        )
    })?;
    let count = first_run.shard.map_or(1, |s| s.count);
    let mut seen = vec![false; count];
    let mut merged = first.clone();
    for d in merged.layers.values_mut() {
        d.values.iter_mut().for_each(|v| *v = f64::NAN);
    }
    for (path, table, run) in parts {
        let run = run.as_ref().ok_or_else(|| {
            bad(
                path,
                "not a knapsec distortion shard (no run metadata)".into(),
            )
        })?;
        if let Some(why) = incompatibility(first, table) {
            return Err(bad(
                path,
                format!("not from the same run as {}: {why}", first_path.display()),
            ));
        }
        if run.data != first_run.data
            || run.chunk != first_run.chunk
            || run.shard.map_or(1, |s| s.count) != count
        {
            return Err(bad(
                path,
                format!(
                    "run {run:?} differs from {first_run:?} of {}",
                    first_path.display()
                ),
            ));
        }
        let index = run.shard.map_or(0, |s| s.index);
        if std::mem::replace(&mut seen[index], true) {
            return Err(bad(path, format!("shard {index}/{count} is given twice")));
        }
        for (m, d) in merged.layers.values_mut().zip(table.layers.values()) {
            for (mv, &dv) in m.values.iter_mut().zip(&d.values) {
                if dv.is_finite() {
                    *mv = dv;
                }
            }
        }
    }
    let missing: Vec<String> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| !**s)
        .map(|(i, _)| format!("{i}/{count}"))
        .collect();
    for (name, d) in &merged.layers {
        if let Some(pos) = d.values.iter().position(|v| !v.is_finite()) {
            return Err(NnError::Distortion(format!(
                "merged table is incomplete: layer {name:?}, channel {} is not measured{}",
                pos / d.k(),
                if missing.is_empty() {
                    " (a shard was interrupted: finish it with --resume)".to_string()
                } else {
                    format!(" (missing shards: {})", missing.join(", "))
                }
            )));
        }
    }
    Ok((
        merged,
        RunInfo {
            shard: None,
            ..first_run
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::distortion::Provenance;
    use knapsec_core::{BlockSize, LayerTable, ReluLayer};

    fn skeleton() -> DistortionTable {
        let t = LayerTable::new(
            "toy",
            vec![ReluLayer::new("a", 5, 2, 2), ReluLayer::new("b", 3, 1, 1)],
        )
        .unwrap();
        let prov = Provenance {
            weights_hash: "h".into(),
            sample_seed: 1,
            sample_count: 2,
            metric: "output-mse".into(),
        };
        DistortionTable::unmeasured(&t, |_| vec![BlockSize::RELU, BlockSize::Identity], prov)
    }

    #[test]
    fn shards_parse_and_split_round_robin() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert_eq!(s.to_string(), "1/3");
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let u = units(&skeleton(), 2);
        assert_eq!(
            u.iter()
                .map(|u| (u.layer, u.channels.clone()))
                .collect::<Vec<_>>(),
            vec![(0, 0..2), (0, 2..4), (0, 4..5), (1, 0..2), (1, 2..3)]
        );
        assert_eq!(
            u.iter()
                .filter(|u| s.owns(u.id))
                .map(|u| u.id)
                .collect::<Vec<_>>(),
            vec![1, 4]
        );
    }

    #[test]
    fn partial_files_round_trip_and_merge_checks_coverage() {
        let dir = tempfile::tempdir().unwrap();
        let full = {
            let mut t = skeleton();
            for (i, v) in t
                .layers
                .values_mut()
                .flat_map(|d| d.values.iter_mut())
                .enumerate()
            {
                *v = i as f64;
            }
            t
        };
        let all = units(&full, 2);
        let mut parts = Vec::new();
        for i in 0..2 {
            let shard = Shard { index: i, count: 2 };
            let mut t = skeleton();
            for u in all.iter().filter(|u| shard.owns(u.id)) {
                for c in u.channels.clone() {
                    let row = full.layers[u.layer].row(c).to_vec();
                    t.layers[u.layer].row_mut(c).copy_from_slice(&row);
                }
            }
            let run = RunInfo {
                data: "random".into(),
                chunk: 2,
                shard: Some(shard),
            };
            let path = dir.path().join(format!("s{i}.safetensors"));
            save(&path, &t, &run).unwrap();
            let (back, back_run) = load(&path).unwrap();
            assert_eq!(back_run.as_ref(), Some(&run));
            assert!(
                back.layers[0]
                    .values
                    .iter()
                    .zip(&t.layers[0].values)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
            // Core's reader accepts the file too (the extra key is ignored).
            assert!(DistortionTable::load(&path).is_ok());
            parts.push((path, back, back_run));
        }
        let (merged, run) = merge(&parts).unwrap();
        assert_eq!(merged, full);
        assert_eq!(run.shard, None);
        let e = merge(&parts[..1]).unwrap_err().to_string();
        assert!(e.contains("missing shards: 1/2"), "{e}");
        let e = merge(&[parts[0].clone(), parts[0].clone()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        let mut other = parts[1].clone();
        other.1.provenance.sample_seed = 9;
        assert!(
            merge(&[parts[0].clone(), other])
                .unwrap_err()
                .to_string()
                .contains("provenance")
        );
    }
}
