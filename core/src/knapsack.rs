//! The knapsack-strategy plugin trait and the multiple-choice knapsack problem it solves
//! (digest §3): one option per class (channel), total cost within the budget, minimal total
//! value (distortion).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A multiple-choice knapsack instance in compressed rows: class `i` owns options
/// `offsets[i]..offsets[i + 1]` of `costs` / `values`. Values are minimised; `+inf` marks an
/// option that must not be chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McKpProblem {
    pub costs: Vec<u64>,
    pub values: Vec<f64>,
    pub offsets: Vec<usize>,
    pub budget: u64,
}

impl McKpProblem {
    /// Builds an instance from per-class option lists `(cost, value)`.
    pub fn from_classes(classes: &[Vec<(u64, f64)>], budget: u64) -> Self {
        let mut p = McKpProblem { costs: Vec::new(), values: Vec::new(), offsets: vec![0], budget };
        for class in classes {
            for &(c, v) in class {
                p.costs.push(c);
                p.values.push(v);
            }
            p.offsets.push(p.costs.len());
        }
        p
    }

    pub fn classes(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Options of class `i` as `(costs, values)` slices.
    pub fn class(&self, i: usize) -> (&[u64], &[f64]) {
        let r = self.offsets[i]..self.offsets[i + 1];
        (&self.costs[r.clone()], &self.values[r])
    }

    /// Total cost and value of a choice (one option index per class, relative to the class).
    pub fn evaluate(&self, choice: &[usize]) -> (u64, f64) {
        let mut cost = 0u64;
        let mut value = 0.0;
        for (i, &k) in choice.iter().enumerate() {
            let (c, v) = self.class(i);
            cost += c[k];
            value += v[k];
        }
        (cost, value)
    }
}

/// Limits a strategy honours where it can stop early.
#[derive(Clone, Debug)]
pub struct SolveLimits {
    pub time: Option<Duration>,
    /// Relative gap at which an exact strategy may stop.
    pub relative_gap: f64,
}

impl Default for SolveLimits {
    fn default() -> Self {
        SolveLimits { time: None, relative_gap: 0.0 }
    }
}

/// A strategy's answer: the choice, its objective and cost, and a proven lower bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McKpSolution {
    /// Chosen option per class (index within the class).
    pub choice: Vec<usize>,
    pub objective: f64,
    pub cost: u64,
    /// Proven lower bound on the optimum (equal to `objective` when `optimal`).
    pub bound: f64,
    pub optimal: bool,
}

impl McKpSolution {
    /// `(objective − bound) / max(|objective|, tiny)`.
    pub fn relative_gap(&self) -> f64 {
        (self.objective - self.bound).max(0.0) / self.objective.abs().max(f64::MIN_POSITIVE)
    }
}

/// Errors of knapsack strategies.
#[derive(Debug, thiserror::Error)]
pub enum KnapsackError {
    #[error("infeasible: even the cheapest option of every class costs {min_cost} DReLUs, over the budget of {budget}")]
    Infeasible { min_cost: u64, budget: u64 },
    #[error("class {class} has no finite option")]
    EmptyClass { class: usize },
    #[error("{strategy}: {message}")]
    Strategy { strategy: String, message: String },
}

/// Chooses one option per class within the budget.
pub trait KnapsackStrategy: Send + Sync {
    /// Registry name, e.g. `"mckp-exact"`.
    fn name(&self) -> &str;
    /// One line for `knapsec plugins list`.
    fn description(&self) -> &str;
    fn solve(&self, problem: &McKpProblem, limits: &SolveLimits) -> Result<McKpSolution, KnapsackError>;
}
