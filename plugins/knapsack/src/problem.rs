//! Problem construction (digest §3.1–3.2): from a distortion table, the architecture's layer
//! table and a budget to an [`McKpProblem`], and from a solution back to a [`BlockSpec`].
//!
//! Classes are the channels in network order (layers in table order, channels ascending).
//! Options are the layer's candidates, in the distortion table's column order, with
//! cost = DReLUs of that candidate on one channel with the layer's true H and W
//! ([`BlockSize::drelu_cost`], or an architecture's own cost rule) and value = the measured
//! distortion. Every option carries its block size, so a solution maps back to a spec. Merging of
//! equal-cost options and dominance pruning happen in [`McKpProblem::reduce`], at the level each
//! strategy asks for; [`knapsec_core::knapsack::solve_with`] maps the answer back to the
//! original candidates.

use crate::{Error, Result};
use knapsec_core::distortion::DistortionTable;
use knapsec_core::knapsack::{McKpProblem, McKpSolution};
use knapsec_core::{BlockSize, BlockSpec, LayerTable, ReluLayer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A DReLU budget: a share of the original network's DReLUs, or an absolute count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Budget {
    /// A share in (0, 1] of the DReLUs of the unmodified network; `6%` parses to `Ratio(0.06)`.
    Ratio(f64),
    /// An absolute number of DReLUs.
    Absolute(u64),
}

impl Budget {
    /// The budget in DReLUs for a network with `total` DReLUs: `floor(ratio · total)` as the
    /// reference (`int(ratio × Σ H²)`, digest §3.1), or the absolute count.
    pub fn drelus(&self, total: u64) -> u64 {
        match *self {
            Budget::Ratio(r) => (r * total as f64).floor() as u64,
            Budget::Absolute(n) => n,
        }
    }
}

impl FromStr for Budget {
    type Err = Error;
    /// `6%` or `6.5%` (a percentage), `0.06` (a ratio, must be ≤ 1), or `33423` (DReLUs).
    fn from_str(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Budget {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let t = text.trim();
        if let Some(pct) = t.strip_suffix('%') {
            let v: f64 = pct
                .trim()
                .parse()
                .map_err(|_| bad("expected a percentage such as 6%"))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(bad("a percentage must be in (0, 100]"));
            }
            return Ok(Budget::Ratio(v / 100.0));
        }
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Budget::Absolute(n));
        }
        let v: f64 = t
            .parse()
            .map_err(|_| bad("expected 6%, a ratio such as 0.06, or a DReLU count"))?;
        if !(v > 0.0 && v <= 1.0) {
            return Err(bad("a ratio must be in (0, 1]; write a percentage with %"));
        }
        Ok(Budget::Ratio(v))
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Ratio(r) => write!(f, "{}%", r * 100.0),
            Budget::Absolute(n) => write!(f, "{n}"),
        }
    }
}

/// An MCKP instance built from an architecture, with the way back to a block spec.
#[derive(Clone, Debug)]
pub struct Instance {
    /// The architecture's layer table.
    pub table: LayerTable,
    /// One class per channel, options = candidates (with `blocks`).
    pub problem: McKpProblem,
    /// DReLUs of the unmodified network.
    pub total_drelus: u64,
}

impl Instance {
    /// Builds the instance with the standard cost rule `ceil(H/h)·ceil(W/w)`.
    pub fn new(table: &LayerTable, distortion: &DistortionTable, budget: Budget) -> Result<Self> {
        Self::with_cost(table, distortion, budget, |b, l| {
            b.drelu_cost(l.height, l.width)
        })
    }

    /// Builds the instance with an architecture's own cost rule (e.g. `ArchAdapter::cost`).
    /// The distortion table is validated against `table` first.
    pub fn with_cost(
        table: &LayerTable,
        distortion: &DistortionTable,
        budget: Budget,
        cost: impl Fn(BlockSize, &ReluLayer) -> u64,
    ) -> Result<Self> {
        distortion.validate(table)?;
        let total = table.drelus();
        let budget_drelus = budget.drelus(total);
        let n = table.channels() as usize;
        let mut costs = Vec::new();
        let mut values = Vec::new();
        let mut blocks = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        let mut maps = Vec::with_capacity(n);
        offsets.push(0);
        for l in &table.layers {
            let d = distortion.layer(&l.name).expect("validated");
            let layer_costs: Vec<u64> = d.candidates.iter().map(|&b| cost(b, l)).collect();
            for c in 0..d.channels {
                costs.extend_from_slice(&layer_costs);
                values.extend_from_slice(d.row(c));
                blocks.extend_from_slice(&d.candidates);
                offsets.push(costs.len());
                maps.push((l.height, l.width));
            }
        }
        let problem = McKpProblem {
            costs,
            values,
            offsets,
            budget: budget_drelus,
            blocks: Some(blocks),
            maps: Some(maps),
        };
        Ok(Instance {
            table: table.clone(),
            problem,
            total_drelus: total,
        })
    }

    /// The block spec of a solution (choice indices into the original candidates).
    pub fn spec(&self, solution: &McKpSolution) -> Result<BlockSpec> {
        if solution.choice.len() != self.problem.classes() {
            return Err(Error::Invalid(format!(
                "solution has {} choices for {} channels",
                solution.choice.len(),
                self.problem.classes()
            )));
        }
        let mut spec = BlockSpec::new(&self.table.arch);
        let mut i = 0;
        for l in &self.table.layers {
            let mut row = Vec::with_capacity(l.channels as usize);
            for _ in 0..l.channels {
                let blocks = self
                    .problem
                    .class_blocks(i)
                    .expect("instances carry blocks");
                row.push(blocks[solution.choice[i]]);
                i += 1;
            }
            spec.layers.insert(l.name.clone(), row);
        }
        Ok(spec)
    }

    /// Per-layer summary of a solution: DReLUs kept and a histogram of the chosen block sizes
    /// (most frequent first, ties by block).
    pub fn layer_report(&self, solution: &McKpSolution) -> Vec<LayerReport> {
        let mut out = Vec::with_capacity(self.table.layers.len());
        let mut i = 0;
        for l in &self.table.layers {
            let mut hist: indexmap::IndexMap<BlockSize, u32> = indexmap::IndexMap::new();
            let (mut drelus, mut distortion) = (0u64, 0.0f64);
            for _ in 0..l.channels {
                let (c, v) = self.problem.class(i);
                let k = solution.choice[i];
                drelus += c[k];
                distortion += v[k];
                *hist
                    .entry(self.problem.class_blocks(i).expect("blocks")[k])
                    .or_default() += 1;
                i += 1;
            }
            let mut histogram: Vec<(String, u32)> =
                hist.into_iter().map(|(b, n)| (b.to_string(), n)).collect();
            histogram.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            out.push(LayerReport {
                layer: l.name.clone(),
                channels: l.channels,
                drelus_original: l.drelus(),
                drelus,
                distortion,
                histogram,
            });
        }
        out
    }
}

/// One row of the per-layer report.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Layer name.
    pub layer: String,
    /// Channels of the layer.
    pub channels: u32,
    /// DReLUs of the layer with ordinary ReLUs.
    pub drelus_original: u64,
    /// DReLUs the chosen blocks keep.
    pub drelus: u64,
    /// Summed distortion of the layer's choices.
    pub distortion: f64,
    /// `(block, channels)`, most frequent first.
    pub histogram: Vec<(String, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::distortion::Provenance;
    use knapsec_core::knapsack::{SolveLimits, solve_with};

    #[test]
    fn budget_parsing() {
        assert_eq!("6%".parse::<Budget>().unwrap(), Budget::Ratio(0.06));
        assert_eq!("0.06".parse::<Budget>().unwrap(), Budget::Ratio(0.06));
        assert_eq!("33423".parse::<Budget>().unwrap(), Budget::Absolute(33423));
        assert_eq!(Budget::Ratio(0.06).drelus(557_056), 33_423);
        for bad in ["", "abc", "0%", "101%", "1.5", "-3"] {
            assert!(bad.parse::<Budget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn builds_classes_with_true_shapes_and_maps_back() {
        let table = LayerTable::new(
            "toy",
            vec![ReluLayer::new("a", 2, 4, 6), ReluLayer::new("b", 1, 3, 3)],
        )
        .unwrap();
        let prov = Provenance {
            weights_hash: "x".into(),
            sample_seed: 0,
            sample_count: 1,
            metric: "mse".into(),
        };
        let cands = vec![
            BlockSize::RELU,
            BlockSize::Patch { h: 2, w: 3 },
            BlockSize::Patch { h: 3, w: 2 },
            BlockSize::Identity,
        ];
        let mut d = DistortionTable::unmeasured(&table, |_| cands.clone(), prov);
        d.layer_mut("a")
            .unwrap()
            .values
            .copy_from_slice(&[0.0, 0.3, 0.2, 1.0, 0.0, 0.1, 0.4, 1.0]);
        d.layer_mut("b")
            .unwrap()
            .values
            .copy_from_slice(&[0.0, 0.5, 0.5, 2.0]);
        let inst = Instance::new(&table, &d, Budget::Absolute(20)).unwrap();
        assert_eq!(inst.problem.classes(), 3);
        // 4x6 map: 1x1 = 24, 2x3 = 2·2 = 4, 3x2 = 2·3 = 6, identity 0; 3x3 map: 9, 2, 2, 0.
        assert_eq!(inst.problem.class(0).0, &[24, 4, 6, 0]);
        assert_eq!(inst.problem.class(2).0, &[9, 2, 2, 0]);
        let s = solve_with(
            &*crate::strategy("mckp-exact").unwrap(),
            &inst.problem,
            &SolveLimits::default(),
        )
        .unwrap();
        let spec = inst.spec(&s).unwrap();
        spec.validate(&table).unwrap();
        assert_eq!(spec.drelus(&table), s.cost);
        assert!(s.cost <= 20);
        // Channel 0 of "b": 2x3 and 3x2 cost 2 with equal distortion; the first (2x3) is kept.
        let rep = inst.layer_report(&s);
        assert_eq!(rep.len(), 2);
        assert_eq!(rep.iter().map(|r| r.drelus).sum::<u64>(), s.cost);
        let bad = LayerTable::new("toy", vec![ReluLayer::new("a", 3, 4, 6)]).unwrap();
        assert!(Instance::new(&bad, &d, Budget::Absolute(1)).is_err());
    }
}
