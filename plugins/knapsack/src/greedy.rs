//! `mckp-greedy`: the hull greedy (digest §3; the LP relaxation's integral part, then every
//! later hull increment that still fits). Not exact; it reports the LP bound and the gap.

use crate::hull::{Hulls, greedy_fill, solve_lp};
use knapsec_core::knapsack::{
    KnapsackError, KnapsackStrategy, McKpProblem, McKpSolution, Reduction, SolveLimits,
};

/// Registry name.
pub const NAME: &str = "mckp-greedy";

/// Hull greedy with its LP bound.
#[derive(Clone, Copy, Debug, Default)]
pub struct McKpGreedy;

impl KnapsackStrategy for McKpGreedy {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "hull greedy (LP relaxation rounded down, then filled); reports the LP bound and gap"
    }

    fn solve(&self, p: &McKpProblem, _limits: &SolveLimits) -> Result<McKpSolution, KnapsackError> {
        crate::on_reduced(p, Reduction::Dominated, solve_greedy)
    }
}

fn solve_greedy(p: &McKpProblem) -> Result<McKpSolution, KnapsackError> {
    let hulls = Hulls::new(p);
    let incs = hulls.increments(p);
    let lp = solve_lp(p, &hulls, &incs);
    let (choice, cost) = greedy_fill(p, &hulls, &incs, &lp);
    let (_, objective) = p.evaluate(&choice);
    let bound = lp.bound.min(objective);
    let optimal = lp.break_index == incs.len()
        || objective - bound <= crate::exact::TOLERANCE * objective.abs();
    Ok(McKpSolution {
        choice,
        objective,
        cost,
        bound,
        optimal,
    })
}
