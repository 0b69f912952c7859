//! The knapsack-strategy plugin trait and the multiple-choice knapsack problem it solves
//! (digest §3): one option per class (channel), total cost within the budget, minimal total
//! value (distortion).
//!
//! [`McKpProblem`] holds the instance in compressed rows (CSR). Options may carry the
//! [`BlockSize`] they stand for (`blocks`), so that strategies that reason about patch sizes
//! (the `uniform` ablation) can see them; generic instances (`solve-mckp`) have none.
//!
//! Before a strategy runs, the problem is reduced ([`McKpProblem::reduce`]) at the level the
//! strategy asks for ([`KnapsackStrategy::reduction`]):
//! * [`Reduction::None`]: the options as given (forbidden `+inf` options removed);
//! * [`Reduction::MergeEqualCost`]: options of equal cost merged, keeping the lowest value
//!   (ties: the first option, as the reference, digest §3.2);
//! * [`Reduction::Dominated`]: additionally, options that cost more than another option of the
//!   same class without a lower value are dropped. This loses no optimal solution.
//!
//! The reduced problem keeps the index of each kept option in the original class, so that a
//! solution maps back ([`Reduced::expand`]).

use crate::block::BlockSize;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A multiple-choice knapsack instance in compressed rows: class `i` owns options
/// `offsets[i]..offsets[i + 1]` of `costs` / `values`. Values are minimised; `+inf` marks an
/// option that must not be chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McKpProblem {
    /// Cost (DReLUs) of every option.
    pub costs: Vec<u64>,
    /// Value (distortion, minimised) of every option; `+inf` = forbidden.
    pub values: Vec<f64>,
    /// Class boundaries: `offsets[0] = 0`, `offsets[classes] = costs.len()`.
    pub offsets: Vec<usize>,
    /// Largest total cost allowed (inclusive).
    pub budget: u64,
    /// Optional: the block size each option stands for (same length as `costs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<BlockSize>>,
    /// Optional: the activation map `(H, W)` of each class's channel (one per class), so that
    /// a patch larger than the map can be recognised as the whole-map patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maps: Option<Vec<(u32, u32)>>,
}

impl McKpProblem {
    /// An instance without classes (add them by pushing options and offsets).
    pub fn empty(budget: u64) -> Self {
        McKpProblem {
            costs: Vec::new(),
            values: Vec::new(),
            offsets: vec![0],
            budget,
            blocks: None,
            maps: None,
        }
    }

    /// Builds an instance from per-class option lists `(cost, value)`.
    pub fn from_classes(classes: &[Vec<(u64, f64)>], budget: u64) -> Self {
        let mut p = McKpProblem::empty(budget);
        for class in classes {
            for &(c, v) in class {
                p.costs.push(c);
                p.values.push(v);
            }
            p.offsets.push(p.costs.len());
        }
        p
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Total number of options.
    pub fn options(&self) -> usize {
        self.costs.len()
    }

    /// Options of class `i` as `(costs, values)` slices.
    pub fn class(&self, i: usize) -> (&[u64], &[f64]) {
        let r = self.offsets[i]..self.offsets[i + 1];
        (&self.costs[r.clone()], &self.values[r])
    }

    /// Block sizes of class `i`'s options, if the problem carries them.
    pub fn class_blocks(&self, i: usize) -> Option<&[BlockSize]> {
        self.blocks
            .as_ref()
            .map(|b| &b[self.offsets[i]..self.offsets[i + 1]])
    }

    /// Total cost and value of a choice (one option index per class, relative to the class).
    /// Values are summed in class order. The cost saturates at `u64::MAX` (over any budget a
    /// validated problem can have met), so a sum past 2^64 never wraps to a small number.
    pub fn evaluate(&self, choice: &[usize]) -> (u64, f64) {
        let mut cost = 0u64;
        let mut value = 0.0;
        for (i, &k) in choice.iter().enumerate() {
            let (c, v) = self.class(i);
            cost = cost.saturating_add(c[k]);
            value += v[k];
        }
        (cost, value)
    }

    /// The least finite value of any choice within the budget, by trying every choice: the
    /// reference optimum of tiny instances in tests (the count of choices is the product of the
    /// class sizes). `None` when no choice fits.
    pub fn exhaustive_optimum(&self) -> Option<f64> {
        let n = self.classes();
        let mut best: Option<f64> = None;
        let mut choice = vec![0usize; n];
        loop {
            let (cost, value) = self.evaluate(&choice);
            if cost <= self.budget && value.is_finite() {
                best = Some(best.map_or(value, |b| b.min(value)));
            }
            // The next choice, as an odometer over the classes.
            let mut i = 0;
            loop {
                if i == n {
                    return best;
                }
                choice[i] += 1;
                if choice[i] < self.class(i).0.len() {
                    break;
                }
                choice[i] = 0;
                i += 1;
            }
        }
    }

    /// Sum over classes of the cheapest finite option: the least any solution costs
    /// (saturating at `u64::MAX`).
    pub fn min_cost(&self) -> u64 {
        (0..self.classes())
            .map(|i| {
                let (c, v) = self.class(i);
                c.iter()
                    .zip(v)
                    .filter(|(_, v)| v.is_finite())
                    .map(|(c, _)| *c)
                    .min()
                    .unwrap_or(0)
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Checks the structure: offsets, lengths, no NaN or `-inf`, every class with a finite
    /// option, costs whose largest possible total (the costliest option of every class) fits
    /// in 64 bits — so that no strategy's sum of costs can wrap — and a budget that the
    /// cheapest options fit.
    pub fn validate(&self) -> Result<(), KnapsackError> {
        let bad = |message: String| Err(KnapsackError::InvalidProblem { message });
        if self.offsets.first() != Some(&0) {
            return bad("offsets must start at 0".into());
        }
        if self.offsets.windows(2).any(|w| w[0] > w[1]) {
            return bad("offsets must not decrease".into());
        }
        if *self.offsets.last().unwrap_or(&0) != self.costs.len()
            || self.costs.len() != self.values.len()
        {
            return bad(format!(
                "offsets end at {}, but there are {} costs and {} values",
                self.offsets.last().unwrap_or(&0),
                self.costs.len(),
                self.values.len()
            ));
        }
        if let Some(b) = &self.blocks
            && b.len() != self.costs.len()
        {
            return bad(format!(
                "{} block sizes for {} options",
                b.len(),
                self.costs.len()
            ));
        }
        for i in 0..self.classes() {
            let (_, v) = self.class(i);
            if let Some(k) = v.iter().position(|v| v.is_nan() || *v == f64::NEG_INFINITY) {
                return bad(format!(
                    "class {i}, option {k}: value is {} (must be a number or +inf)",
                    v[k]
                ));
            }
            if !v.iter().any(|v| v.is_finite()) {
                return Err(KnapsackError::EmptyClass { class: i });
            }
        }
        let mut max_total = 0u64;
        for i in 0..self.classes() {
            let (c, _) = self.class(i);
            let most = c.iter().copied().max().unwrap_or(0);
            max_total =
                max_total
                    .checked_add(most)
                    .ok_or_else(|| KnapsackError::InvalidProblem {
                        message: format!(
                            "the costliest options of classes 0..={i} add up to more than 64 bits \
                         hold (class {i}'s largest cost is {most})"
                        ),
                    })?;
        }
        let min_cost = self.min_cost();
        if min_cost > self.budget {
            return Err(KnapsackError::Infeasible {
                min_cost,
                budget: self.budget,
            });
        }
        Ok(())
    }

    /// Reduces the problem at `level` (see the module doc). The result remembers, for every
    /// kept option, its index in the original class.
    pub fn reduce(&self, level: Reduction) -> Reduced {
        let mut out = McKpProblem {
            costs: Vec::with_capacity(self.costs.len()),
            values: Vec::with_capacity(self.values.len()),
            offsets: Vec::with_capacity(self.offsets.len()),
            budget: self.budget,
            blocks: self.blocks.as_ref().map(|_| Vec::new()),
            maps: self.maps.clone(),
        };
        out.offsets.push(0);
        let mut original = Vec::with_capacity(self.costs.len());
        let mut order: Vec<usize> = Vec::new();
        for i in 0..self.classes() {
            let (c, v) = self.class(i);
            order.clear();
            order.extend((0..c.len()).filter(|&k| v[k].is_finite()));
            if level != Reduction::None {
                // By cost, then value, then original index: the first of a cost group is the
                // best option of that cost, ties going to the earlier option.
                order.sort_by(|&a, &b| c[a].cmp(&c[b]).then(v[a].total_cmp(&v[b])).then(a.cmp(&b)));
                order.dedup_by(|later, first| c[*later] == c[*first]);
                if level == Reduction::Dominated {
                    let mut best = f64::INFINITY;
                    order.retain(|&k| {
                        let keep = v[k] < best;
                        if keep {
                            best = v[k];
                        }
                        keep
                    });
                }
            }
            for &k in &order {
                out.costs.push(c[k]);
                out.values.push(v[k]);
                original.push(k as u32);
                if let (Some(dst), Some(src)) = (out.blocks.as_mut(), self.class_blocks(i)) {
                    dst.push(src[k]);
                }
            }
            out.offsets.push(out.costs.len());
        }
        Reduced {
            problem: out,
            original,
        }
    }
}

/// How much a strategy wants the problem pre-processed (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reduction {
    /// Only forbidden (`+inf`) options are removed.
    None,
    /// Equal-cost options merged (best value kept, first on ties).
    MergeEqualCost,
    /// Merged, and dominated options (costlier and not better) removed; within a class the
    /// options are then sorted by increasing cost and strictly decreasing value.
    Dominated,
}

/// A reduced problem and the way back to the original option indices.
#[derive(Clone, Debug)]
pub struct Reduced {
    /// The reduced problem.
    pub problem: McKpProblem,
    /// For every option of `problem`, its index within its class of the original problem.
    pub original: Vec<u32>,
}

impl Reduced {
    /// Maps a solution of the reduced problem back to the original option indices.
    pub fn expand(&self, mut solution: McKpSolution) -> McKpSolution {
        for (i, k) in solution.choice.iter_mut().enumerate() {
            *k = self.original[self.problem.offsets[i] + *k] as usize;
        }
        solution
    }
}

/// Limits a strategy honours where it can stop early.
#[derive(Clone, Debug)]
pub struct SolveLimits {
    /// Wall-clock limit; an exact strategy then returns its best solution and proven gap.
    pub time: Option<Duration>,
    /// Relative gap at which an exact strategy may stop.
    pub relative_gap: f64,
}

impl Default for SolveLimits {
    fn default() -> Self {
        SolveLimits {
            time: None,
            relative_gap: 0.0,
        }
    }
}

/// A strategy's answer: the choice, its objective and cost, and a proven lower bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McKpSolution {
    /// Chosen option per class (index within the class).
    pub choice: Vec<usize>,
    /// Total value of the choice.
    pub objective: f64,
    /// Total cost of the choice (never over the budget).
    pub cost: u64,
    /// Proven lower bound on the optimum (`-inf` when the strategy proves none).
    pub bound: f64,
    /// True when the strategy proved `objective` optimal (up to its stated tolerance).
    pub optimal: bool,
}

impl McKpSolution {
    /// `(objective − bound) / max(|objective|, tiny)`; `+inf` when no bound is known.
    pub fn relative_gap(&self) -> f64 {
        if !self.bound.is_finite() {
            return f64::INFINITY;
        }
        (self.objective - self.bound).max(0.0) / self.objective.abs().max(f64::MIN_POSITIVE)
    }
}

/// Errors of knapsack strategies.
#[derive(Debug, thiserror::Error)]
pub enum KnapsackError {
    /// No choice fits the budget.
    #[error(
        "infeasible: even the cheapest option of every class costs {min_cost} DReLUs, over the budget of {budget}"
    )]
    Infeasible {
        /// The cheapest choice's cost.
        min_cost: u64,
        /// The budget.
        budget: u64,
    },
    /// A class without any option of finite value.
    #[error("class {class} has no finite option")]
    EmptyClass {
        /// The class.
        class: usize,
    },
    /// A malformed problem (offsets that decrease, lengths that disagree).
    #[error("invalid knapsack problem: {message}")]
    InvalidProblem {
        /// What is wrong.
        message: String,
    },
    /// A strategy failed.
    #[error("{strategy}: {message}")]
    Strategy {
        /// The strategy's name.
        strategy: String,
        /// What went wrong.
        message: String,
    },
}

/// Chooses one option per class within the budget.
pub trait KnapsackStrategy: Send + Sync {
    /// Registry name, e.g. `"mckp-exact"`.
    fn name(&self) -> &str;
    /// One line for `knapsec plugins list`.
    fn description(&self) -> &str;
    /// The pre-processing this strategy wants (default: dominated options removed).
    fn reduction(&self) -> Reduction {
        Reduction::Dominated
    }
    /// Solves a problem already reduced at [`KnapsackStrategy::reduction`]'s level.
    fn solve(
        &self,
        problem: &McKpProblem,
        limits: &SolveLimits,
    ) -> Result<McKpSolution, KnapsackError>;
}

/// Validates `problem`, reduces it at the strategy's level, solves, checks the answer (one
/// option per class, within the budget, objective re-evaluated) and maps it back to the
/// original option indices.
pub fn solve_with(
    strategy: &dyn KnapsackStrategy,
    problem: &McKpProblem,
    limits: &SolveLimits,
) -> Result<McKpSolution, KnapsackError> {
    problem.validate()?;
    let reduced = problem.reduce(strategy.reduction());
    let solution = strategy.solve(&reduced.problem, limits)?;
    let wrong = |message: String| KnapsackError::Strategy {
        strategy: strategy.name().to_string(),
        message,
    };
    if solution.choice.len() != reduced.problem.classes() {
        return Err(wrong(format!(
            "returned {} choices for {} classes",
            solution.choice.len(),
            reduced.problem.classes()
        )));
    }
    for (i, &k) in solution.choice.iter().enumerate() {
        if k >= reduced.problem.class(i).0.len() {
            return Err(wrong(format!("class {i}: option {k} does not exist")));
        }
    }
    let mut solution = reduced.expand(solution);
    let (cost, objective) = problem.evaluate(&solution.choice);
    if cost > problem.budget {
        return Err(wrong(format!(
            "solution costs {cost}, over the budget of {}",
            problem.budget
        )));
    }
    if !objective.is_finite() {
        return Err(wrong("solution picks a forbidden option".into()));
    }
    solution.cost = cost;
    solution.objective = objective;
    Ok(solution)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> McKpProblem {
        McKpProblem::from_classes(
            &[
                vec![
                    (4, 1.0),
                    (2, 3.0),
                    (2, 2.5),
                    (0, 5.0),
                    (3, 2.5),
                    (1, f64::INFINITY),
                ],
                vec![(1, 0.0), (0, 1.0)],
            ],
            5,
        )
    }

    #[test]
    fn reduction_levels() {
        let p = problem();
        p.validate().unwrap();
        let none = p.reduce(Reduction::None);
        assert_eq!(none.problem.class(0).0, &[4, 2, 2, 0, 3]);
        let merged = p.reduce(Reduction::MergeEqualCost);
        assert_eq!(merged.problem.class(0).0, &[0, 2, 3, 4]);
        assert_eq!(merged.problem.class(0).1, &[5.0, 2.5, 2.5, 1.0]);
        assert_eq!(&merged.original[..4], &[3, 2, 4, 0]);
        let dom = p.reduce(Reduction::Dominated);
        assert_eq!(dom.problem.class(0).0, &[0, 2, 4]);
        assert_eq!(dom.problem.class(1).0, &[0, 1]);
        let s = McKpSolution {
            choice: vec![1, 1],
            objective: 0.0,
            cost: 0,
            bound: 0.0,
            optimal: true,
        };
        assert_eq!(dom.expand(s).choice, vec![2, 0]);
    }

    #[test]
    fn validation_errors() {
        let mut p = problem();
        p.values[1] = f64::NAN;
        assert!(matches!(
            p.validate(),
            Err(KnapsackError::InvalidProblem { .. })
        ));
        let mut p = problem();
        p.budget = 0;
        p.costs[3] = 1;
        assert!(matches!(
            p.validate(),
            Err(KnapsackError::Infeasible {
                min_cost: 1,
                budget: 0
            })
        ));
        let p = McKpProblem::from_classes(&[vec![(0, f64::INFINITY)]], 3);
        assert!(matches!(
            p.validate(),
            Err(KnapsackError::EmptyClass { class: 0 })
        ));
        let mut p = problem();
        p.offsets[1] = 100;
        assert!(p.validate().is_err());
    }

    #[test]
    fn gap_of_a_solution() {
        let s = McKpSolution {
            choice: vec![],
            objective: 2.0,
            cost: 0,
            bound: 1.0,
            optimal: false,
        };
        assert_eq!(s.relative_gap(), 0.5);
        let s = McKpSolution {
            bound: f64::NEG_INFINITY,
            ..s
        };
        assert!(s.relative_gap().is_infinite());
    }

    /// Costs whose sum wraps around 2^64: a wrapped total would be small and pass the budget
    /// check in a release build.
    fn wrapping() -> McKpProblem {
        let big = u64::MAX / 2 + 1;
        McKpProblem::from_classes(&[vec![(big, 1.0)], vec![(big, 1.0), (3, 2.0)]], 5)
    }

    #[test]
    fn cost_sums_never_wrap() {
        let p = wrapping();
        assert_eq!(p.evaluate(&[0, 0]).0, u64::MAX, "a sum past 2^64 saturates");
        assert_eq!(p.evaluate(&[0, 1]).0, u64::MAX / 2 + 4);
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("64 bits"), "{e}");
        let mut p = wrapping();
        p.costs[0] = u64::MAX;
        p.costs[1] = u64::MAX;
        assert_eq!(p.min_cost(), u64::MAX);
    }
}
