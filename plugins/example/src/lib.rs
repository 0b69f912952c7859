//! An example dynamic knapsec plugin, and the template for writing one (DESIGN §4).
//!
//! A dynamic plugin is an ordinary Rust library built as a `cdylib`. It implements the same
//! core traits a built-in does, here [`knapsec_core::KnapsackStrategy`] ([`RatioGreedy`]) and
//! [`knapsec_core::ArchAdapter`] ([`TinyNet`]), and names its plugin values once in
//! [`knapsec_plugin_abi::declare_plugin!`] at the bottom of this file. The macro exports the
//! C entry point `knapsec_plugins`; requests and answers cross the library boundary as RON
//! text, so the plugin and knapsec may be built by different compilers. Panics inside the
//! trait methods are caught and reported to knapsec as errors.
//!
//! Build and use:
//!
//! ```text
//! cargo build --release -p knapsec-example-plugin
//! knapsec --plugin target/release/libknapsec_example_plugin.so plugins list
//! knapsec --plugin target/release/libknapsec_example_plugin.so arch info example-tinynet
//! ```

use knapsec_core::arch::{ArchAdapter, ArchOptions};
use knapsec_core::block::BlockSize;
use knapsec_core::candidates;
use knapsec_core::error::CoreError;
use knapsec_core::knapsack::{
    KnapsackError, KnapsackStrategy, McKpProblem, McKpSolution, SolveLimits,
};
use knapsec_core::layer::{LayerTable, ReluLayer};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

// ---------------------------------------------------------------------------------------
// A knapsack strategy
// ---------------------------------------------------------------------------------------

/// `example-ratio-greedy`: the convex-hull greedy for the multiple-choice knapsack problem.
///
/// Every class starts at its cheapest option. Within a class, only the options on the lower
/// convex hull of (cost, value) are worth buying, and moving up the hull buys distortion
/// reductions at a falling rate per DReLU. The greedy repeatedly takes, over all classes,
/// the upgrade with the largest value reduction per extra DReLU that still fits in the
/// budget. The LP relaxation of the same problem (take upgrades in that order, the first one
/// that does not fit fractionally) gives the lower bound reported with the answer; when
/// nothing had to be taken fractionally the answer is optimal.
#[derive(Clone, Copy, Debug, Default)]
pub struct RatioGreedy;

/// One class's hull: option indices (into the class) by increasing cost, decreasing value.
fn hull(costs: &[u64], values: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..costs.len())
        .filter(|&k| values[k].is_finite())
        .collect();
    // By cost, then value: the first option of each cost is its best.
    idx.sort_by(|&a, &b| {
        costs[a]
            .cmp(&costs[b])
            .then(values[a].total_cmp(&values[b]))
    });
    let mut out: Vec<usize> = Vec::new();
    for k in idx {
        // Dominated: not cheaper and not better than the last hull point.
        if let Some(&last) = out.last()
            && values[k] >= values[last]
        {
            continue;
        }
        // Keep the hull convex: drop the last point while it lies on or above the segment
        // from the one before it to `k`.
        while out.len() >= 2 {
            let (a, b) = (out[out.len() - 2], out[out.len() - 1]);
            let slope_ab = (values[b] - values[a]) / (costs[b] - costs[a]) as f64;
            let slope_ak = (values[k] - values[a]) / (costs[k] - costs[a]) as f64;
            if slope_ak <= slope_ab {
                out.pop();
            } else {
                break;
            }
        }
        out.push(k);
    }
    out
}

/// The next upgrade of one class: move from hull point `step` to `step + 1`.
#[derive(Debug)]
struct Upgrade {
    /// Value reduction per extra DReLU.
    rate: f64,
    class: usize,
    step: usize,
    extra_cost: u64,
    gain: f64,
}

impl PartialEq for Upgrade {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Upgrade {}
impl PartialOrd for Upgrade {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Upgrade {
    /// Highest rate first; ties go to the lower class index, for reproducible answers.
    fn cmp(&self, other: &Self) -> Ordering {
        self.rate
            .total_cmp(&other.rate)
            .then(other.class.cmp(&self.class))
    }
}

fn upgrade(
    problem: &McKpProblem,
    hulls: &[Vec<usize>],
    class: usize,
    step: usize,
) -> Option<Upgrade> {
    let h = &hulls[class];
    let (costs, values) = problem.class(class);
    let (a, b) = (*h.get(step)?, *h.get(step + 1)?);
    let extra_cost = costs[b] - costs[a];
    let gain = values[a] - values[b];
    Some(Upgrade {
        rate: gain / extra_cost as f64,
        class,
        step,
        extra_cost,
        gain,
    })
}

impl KnapsackStrategy for RatioGreedy {
    fn name(&self) -> &str {
        "example-ratio-greedy"
    }

    fn description(&self) -> &str {
        "example plugin: convex-hull greedy by distortion saved per DReLU, with its LP bound"
    }

    fn solve(
        &self,
        problem: &McKpProblem,
        _limits: &SolveLimits,
    ) -> Result<McKpSolution, KnapsackError> {
        let n = problem.classes();
        let mut hulls = Vec::with_capacity(n);
        for class in 0..n {
            let (costs, values) = problem.class(class);
            let h = hull(costs, values);
            if h.is_empty() {
                return Err(KnapsackError::EmptyClass { class });
            }
            hulls.push(h);
        }
        let min_cost: u64 = hulls
            .iter()
            .enumerate()
            .map(|(i, h)| problem.class(i).0[h[0]])
            .sum();
        if min_cost > problem.budget {
            return Err(KnapsackError::Infeasible {
                min_cost,
                budget: problem.budget,
            });
        }

        // Greedy: best rate first; an upgrade that does not fit closes its class.
        let mut step = vec![0usize; n];
        let mut left = problem.budget - min_cost;
        let mut heap: BinaryHeap<Upgrade> = (0..n)
            .filter_map(|c| upgrade(problem, &hulls, c, 0))
            .collect();
        // LP bound: the same order, but the first upgrade that does not fit is taken in part
        // and the relaxation stops there.
        let mut lp_left = left as f64;
        let mut lp_gain = 0.0;
        let mut lp_done = false;
        while let Some(u) = heap.pop() {
            if !lp_done {
                if (u.extra_cost as f64) <= lp_left {
                    lp_left -= u.extra_cost as f64;
                    lp_gain += u.gain;
                } else {
                    lp_gain += u.gain * lp_left / u.extra_cost as f64;
                    lp_done = true;
                }
            }
            if u.extra_cost <= left {
                left -= u.extra_cost;
                step[u.class] = u.step + 1;
                if let Some(next) = upgrade(problem, &hulls, u.class, u.step + 1) {
                    heap.push(next);
                }
            }
            // Until the relaxation stops, it has taken exactly what the greedy took, so an
            // upgrade the greedy cannot afford is the relaxation's fractional one.
            // A class whose upgrade did not fit stays where it is: its later upgrades cost
            // more per unit of gain and are only reachable through this one.
        }

        let choice: Vec<usize> = (0..n).map(|c| hulls[c][step[c]]).collect();
        let (cost, objective) = problem.evaluate(&choice);
        let base: f64 = (0..n).map(|c| problem.class(c).1[hulls[c][0]]).sum();
        // The relaxation can never be worse than the greedy; guard against rounding.
        let bound = (base - lp_gain).min(objective);
        let optimal = objective - bound <= 1e-9 * objective.abs().max(1.0);
        Ok(McKpSolution {
            choice,
            objective,
            cost,
            bound,
            optimal,
        })
    }
}

// ---------------------------------------------------------------------------------------
// An architecture description
// ---------------------------------------------------------------------------------------

/// `example-tinynet`: a three-ReLU network for greyscale images (28×28 by default):
/// `conv1` (w channels at full size), `conv2` (2w channels after a 2×2 pooling), `fc1`
/// (4w units, a 1×1 map), with base width w = 8 unless `base_width` says otherwise.
///
/// Honours the options `input_height`, `input_width`, `input_channels` and `base_width`;
/// refuses `variant` (it has none). Candidates are every patch up to 4×4 plus identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct TinyNet;

impl ArchAdapter for TinyNet {
    fn name(&self) -> &str {
        "example-tinynet"
    }

    fn description(&self) -> &str {
        "example plugin: three ReLU layers (conv 28x28, conv 14x14, fc) for 28x28 greyscale input"
    }

    fn layer_table(&self, options: &ArchOptions) -> knapsec_core::Result<LayerTable> {
        if let Some(v) = &options.variant {
            return Err(CoreError::Invalid(format!(
                "example-tinynet has no variant {v:?} (it has none)"
            )));
        }
        let (_c, h, w) = options.input_or(1, 28, 28);
        if h < 2 || w < 2 {
            return Err(CoreError::Invalid(format!(
                "example-tinynet needs an input of at least 2x2, got {h}x{w}"
            )));
        }
        let base = options.base_width.unwrap_or(8);
        if base == 0 {
            return Err(CoreError::Invalid(
                "example-tinynet: base_width must be at least 1".into(),
            ));
        }
        LayerTable::new(
            self.name(),
            vec![
                ReluLayer::new("conv1", base, h, w),
                ReluLayer::new("conv2", 2 * base, h.div_ceil(2), w.div_ceil(2)),
                ReluLayer::new("fc1", 4 * base, 1, 1),
            ],
        )
    }

    fn candidates(&self, layer: &ReluLayer) -> Vec<BlockSize> {
        candidates::generate(layer.height, layer.width, 4)
    }
}

// ---------------------------------------------------------------------------------------
// The entry point
// ---------------------------------------------------------------------------------------

// Exports `knapsec_plugins`, which hands knapsec one header per value listed here. Values
// are built once, when knapsec loads the library; names must be unique within their kind,
// also among knapsec's built-ins (a clash is refused naming both sources).
knapsec_plugin_abi::declare_plugin! {
    version: env!("CARGO_PKG_VERSION"),
    archs: [TinyNet],
    strategies: [RatioGreedy],
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn problems() -> impl Strategy<Value = McKpProblem> {
        let class = prop::collection::vec((0u64..20, 0.0f64..10.0), 1..5);
        (prop::collection::vec(class, 1..5), 0u64..60)
            .prop_map(|(classes, budget)| McKpProblem::from_classes(&classes, budget))
    }

    proptest! {
        #[test]
        fn answers_are_feasible_and_bounds_hold(p in problems()) {
            let opt = p.exhaustive_optimum();
            match RatioGreedy.solve(&p, &SolveLimits::default()) {
                Ok(s) => {
                    let opt = opt.expect("the greedy found a feasible choice, so one exists");
                    let (cost, value) = p.evaluate(&s.choice);
                    prop_assert!(cost <= p.budget);
                    prop_assert_eq!(cost, s.cost);
                    prop_assert!((value - s.objective).abs() < 1e-9);
                    prop_assert!(s.bound <= opt + 1e-9, "bound {} above optimum {}", s.bound, opt);
                    prop_assert!(s.objective >= opt - 1e-9);
                    if s.optimal {
                        prop_assert!((s.objective - opt).abs() < 1e-9);
                    }
                }
                Err(KnapsackError::Infeasible { .. }) => prop_assert!(opt.is_none()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }

    #[test]
    fn takes_the_best_rate_first_and_reports_the_lp_bound() {
        // Class 0 saves 10 for 10 DReLUs, class 1 saves 9 for 3: with a budget of 4 over the
        // minimum, only class 1's upgrade fits and is taken.
        let p =
            McKpProblem::from_classes(&[vec![(1, 20.0), (11, 10.0)], vec![(1, 12.0), (4, 3.0)]], 6);
        let s = RatioGreedy.solve(&p, &SolveLimits::default()).unwrap();
        assert_eq!(s.choice, [0, 1]);
        assert_eq!(s.cost, 5);
        assert_eq!(s.objective, 23.0);
        // The relaxation spends the last DReLU on a tenth of class 0's upgrade: bound 22.
        assert_eq!(s.bound, 22.0);
        assert!(!s.optimal);
        // With room for both upgrades nothing is fractional, and the answer is optimal.
        let p = McKpProblem { budget: 15, ..p };
        let s = RatioGreedy.solve(&p, &SolveLimits::default()).unwrap();
        assert_eq!(
            (s.choice.as_slice(), s.cost, s.objective, s.bound),
            (&[1, 1][..], 15, 13.0, 13.0)
        );
        assert!(s.optimal);
    }

    #[test]
    fn infeasible_and_empty_classes_are_refused() {
        let p = McKpProblem::from_classes(&[vec![(5, 1.0)], vec![(5, 1.0)]], 9);
        assert!(matches!(
            RatioGreedy.solve(&p, &SolveLimits::default()),
            Err(KnapsackError::Infeasible {
                min_cost: 10,
                budget: 9
            })
        ));
        let p = McKpProblem::from_classes(&[vec![(0, 1.0)], vec![(0, f64::INFINITY)]], 9);
        assert!(matches!(
            RatioGreedy.solve(&p, &SolveLimits::default()),
            Err(KnapsackError::EmptyClass { class: 1 })
        ));
    }

    #[test]
    fn tinynet_honours_its_options() {
        let t = TinyNet.layer_table(&ArchOptions::default()).unwrap();
        let shapes = t.shapes();
        assert_eq!(
            shapes,
            [
                ("conv1", 8, 28, 28),
                ("conv2", 16, 14, 14),
                ("fc1", 32, 1, 1)
            ]
        );
        let o = ArchOptions {
            input_height: Some(9),
            input_width: Some(5),
            base_width: Some(2),
            ..Default::default()
        };
        let t = TinyNet.layer_table(&o).unwrap();
        assert_eq!(
            (t.layers[1].channels, t.layers[1].height, t.layers[1].width),
            (4, 5, 3)
        );
        let bad = ArchOptions {
            variant: Some("big".into()),
            ..Default::default()
        };
        assert!(
            TinyNet
                .layer_table(&bad)
                .unwrap_err()
                .to_string()
                .contains("big")
        );
    }
}
