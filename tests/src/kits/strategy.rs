//! The knapsack-strategy kit ([`knapsec_core::KnapsackStrategy`], digest §3).
//!
//! Rules checked by [`check`] on small problems whose optimum is found by enumeration:
//! 1. a usable name and a non-empty description;
//! 2. an answer picks one valid option per class, reports its true cost and objective, stays
//!    within the budget and never picks a `+inf` option;
//! 3. the reported bound is a lower bound of the optimum, the objective is not below it, and
//!    an answer marked `optimal` is optimal; with [`Expect::Exact`] every answer is optimal;
//! 4. an infeasible problem is refused with `Infeasible { min_cost, budget }` carrying the
//!    right numbers; a class without a finite option is refused (with `EmptyClass` naming it,
//!    if that is the error given), never answered;
//! 5. ([`check_budget_monotone`], exact strategies) the objective never gets worse as the
//!    budget grows;
//! 6. ([`check_agree`]) two exact strategies agree on larger problems ([`random_problem`]).

use super::{KitResult, check_name, ensure};
use knapsec_core::knapsack::{
    KnapsackError, KnapsackStrategy, McKpProblem, McKpSolution, SolveLimits,
};

/// What a strategy promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Every answer is optimal.
    Exact,
    /// Answers are feasible, bounds are valid; optimality only where claimed.
    Heuristic,
}

const TOL: f64 = 1e-9;

/// Small pseudo-random problems (a fixed xorshift stream, so failures reproduce), with a
/// few hand-made corner cases first.
pub fn problems() -> Vec<McKpProblem> {
    let mut out = vec![
        // Budget exactly the cheapest choice.
        McKpProblem::from_classes(&[vec![(4, 1.0), (2, 5.0)], vec![(3, 0.0), (1, 2.0)]], 3),
        // Room for everything: the best option of every class.
        McKpProblem::from_classes(
            &[vec![(4, 1.0), (2, 5.0), (0, 9.0)], vec![(3, 0.0), (1, 2.0)]],
            100,
        ),
        // A forbidden option (+inf) that would otherwise be the best.
        McKpProblem::from_classes(
            &[vec![(1, f64::INFINITY), (2, 3.0), (0, 4.0)], vec![(0, 1.0)]],
            5,
        ),
        // Non-convex class: the middle option is dominated by a mix of the others.
        McKpProblem::from_classes(
            &[
                vec![(0, 10.0), (5, 9.0), (10, 0.0)],
                vec![(0, 3.0), (2, 1.0)],
            ],
            10,
        ),
        // Ties in cost and negative values.
        McKpProblem::from_classes(
            &[
                vec![(2, -1.0), (2, -3.0), (0, 0.0)],
                vec![(1, -0.5), (0, 0.0)],
            ],
            2,
        ),
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for _ in 0..60 {
        let classes: Vec<Vec<(u64, f64)>> = (0..1 + next(5))
            .map(|_| {
                (0..1 + next(4))
                    .map(|_| (next(12), next(1000) as f64 / 100.0))
                    .collect()
            })
            .collect();
        let budget = next(35);
        out.push(McKpProblem::from_classes(&classes, budget));
    }
    out
}

/// The least cost of a choice with a finite value in every class (counted from the classes,
/// not asked of the problem, so that the kit checks a strategy's claim independently).
pub fn min_finite_cost(p: &McKpProblem) -> u64 {
    (0..p.classes())
        .map(|i| {
            let (c, v) = p.class(i);
            (0..c.len())
                .filter(|&k| v[k].is_finite())
                .map(|k| c[k])
                .min()
                .unwrap_or(0)
        })
        .sum()
}

/// Rules 2 and 3 for one answer.
pub fn check_answer(
    name: &str,
    p: &McKpProblem,
    s: &McKpSolution,
    opt: f64,
    expect: Expect,
) -> KitResult {
    let at = || {
        format!(
            "strategy {name:?} on budget {} with {} classes",
            p.budget,
            p.classes()
        )
    };
    ensure(s.choice.len() == p.classes(), || {
        format!(
            "{}: {} choices for {} classes",
            at(),
            s.choice.len(),
            p.classes()
        )
    })?;
    for (i, &k) in s.choice.iter().enumerate() {
        let (costs, values) = p.class(i);
        ensure(k < costs.len(), || {
            format!("{}: class {i}: option {k} of {}", at(), costs.len())
        })?;
        ensure(values[k].is_finite(), || {
            format!("{}: class {i}: chose the forbidden option {k}", at())
        })?;
    }
    let (cost, value) = p.evaluate(&s.choice);
    ensure(cost == s.cost, || {
        format!(
            "{}: reported cost {} but the choice costs {cost}",
            at(),
            s.cost
        )
    })?;
    ensure(cost <= p.budget, || {
        format!("{}: the choice costs {cost}, over the budget", at())
    })?;
    ensure(
        (value - s.objective).abs() <= TOL * value.abs().max(1.0),
        || {
            format!(
                "{}: reported objective {} but the choice is worth {value}",
                at(),
                s.objective
            )
        },
    )?;
    ensure(s.bound <= opt + TOL * opt.abs().max(1.0), || {
        format!("{}: bound {} above the optimum {opt}", at(), s.bound)
    })?;
    let is_optimal = (s.objective - opt).abs() <= TOL * opt.abs().max(1.0);
    ensure(!s.optimal || is_optimal, || {
        format!(
            "{}: claims optimal at {} but the optimum is {opt}",
            at(),
            s.objective
        )
    })?;
    ensure(expect == Expect::Heuristic || is_optimal, || {
        format!(
            "{}: objective {} but the optimum is {opt} (an exact strategy)",
            at(),
            s.objective
        )
    })
}

/// Runs every rule of this kit.
pub fn check(strategy: &dyn KnapsackStrategy, expect: Expect) -> KitResult {
    let name = strategy.name();
    check_name("knapsack-strategy", name)?;
    ensure(!strategy.description().trim().is_empty(), || {
        format!("strategy {name:?}: empty description")
    })?;
    let limits = SolveLimits::default();
    for p in problems() {
        match (strategy.solve(&p, &limits), p.exhaustive_optimum()) {
            (Ok(s), Some(opt)) => check_answer(name, &p, &s, opt, expect)?,
            (Ok(_), None) => {
                return Err(format!("strategy {name:?}: answered an infeasible problem"));
            }
            (Err(KnapsackError::Infeasible { min_cost, budget }), None) => {
                let true_min = min_finite_cost(&p);
                ensure(min_cost == true_min && budget == p.budget, || {
                    format!(
                        "strategy {name:?}: Infeasible {{ min_cost: {min_cost}, budget: {budget} }}, expected {true_min} and {}",
                        p.budget
                    )
                })?;
            }
            (Err(e), Some(opt)) => {
                return Err(format!(
                    "strategy {name:?}: refused a feasible problem (optimum {opt}): {e}"
                ));
            }
            (Err(_), None) => {}
        }
    }
    // A class without any finite option.
    let p = McKpProblem::from_classes(
        &[vec![(0, 1.0)], vec![(0, f64::INFINITY), (1, f64::INFINITY)]],
        10,
    );
    match strategy.solve(&p, &limits) {
        Ok(_) => Err(format!(
            "strategy {name:?}: answered a problem whose class 1 has no finite option"
        )),
        Err(KnapsackError::EmptyClass { class }) if class != 1 => Err(format!(
            "strategy {name:?}: EmptyClass names class {class}, expected 1"
        )),
        Err(_) => Ok(()),
    }
}

/// A seeded random problem for the property rules below: `classes` classes of `1..=max_k`
/// options, costs `0..=max_cost`, values in `[0, 10)` with about one `+inf` in 20, and a budget
/// between the cheapest choice and the dearest. Deterministic in `seed`.
pub fn random_problem(seed: u64, classes: usize, max_k: usize, max_cost: u64) -> McKpProblem {
    let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n.max(1)
    };
    let mut cls: Vec<Vec<(u64, f64)>> = Vec::with_capacity(classes);
    for _ in 0..classes {
        let k = 1 + next(max_k as u64) as usize;
        let mut opts: Vec<(u64, f64)> = (0..k)
            .map(|_| {
                let v = if next(20) == 0 {
                    f64::INFINITY
                } else {
                    next(1_000_000) as f64 / 1e5
                };
                (next(max_cost + 1), v)
            })
            .collect();
        // At least one finite option.
        opts[0].1 = opts[0].1.min(9.99);
        cls.push(opts);
    }
    let p = McKpProblem::from_classes(&cls, 0);
    let lo = p.min_cost();
    let hi: u64 = (0..p.classes())
        .map(|i| *p.class(i).0.iter().max().unwrap_or(&0))
        .sum();
    let budget = lo + next(hi.saturating_sub(lo) + 1);
    McKpProblem { budget, ..p }
}

/// Rule 5 (exact strategies): on `problem`, the objective never increases as the budget grows
/// from the cheapest choice to the dearest, and every answer respects its budget.
pub fn check_budget_monotone(strategy: &dyn KnapsackStrategy, problem: &McKpProblem) -> KitResult {
    let name = strategy.name();
    let lo = problem.min_cost();
    let hi: u64 = (0..problem.classes())
        .map(|i| *problem.class(i).0.iter().max().unwrap_or(&0))
        .sum();
    let steps = 12u64;
    let mut last: Option<(u64, f64)> = None;
    for s in 0..=steps {
        let budget = lo + (hi - lo) * s / steps;
        let p = McKpProblem {
            budget,
            ..problem.clone()
        };
        let sol = strategy
            .solve(&p, &SolveLimits::default())
            .map_err(|e| format!("strategy {name:?}, budget {budget}: {e}"))?;
        let (cost, value) = p.evaluate(&sol.choice);
        ensure(cost <= budget, || {
            format!("strategy {name:?}: costs {cost} over the budget {budget}")
        })?;
        if let Some((b0, v0)) = last {
            ensure(value <= v0 + TOL * v0.abs().max(1.0), || {
                format!(
                    "strategy {name:?}: objective {value} at budget {budget} is worse than {v0} at budget {b0}"
                )
            })?;
        }
        last = Some((budget, value));
    }
    Ok(())
}

/// Rule 6 (two exact strategies): on `problem` both answer, and their objectives agree to
/// `rel` relative.
pub fn check_agree(
    a: &dyn KnapsackStrategy,
    b: &dyn KnapsackStrategy,
    problem: &McKpProblem,
    rel: f64,
) -> KitResult {
    let limits = SolveLimits::default();
    let sa = a
        .solve(problem, &limits)
        .map_err(|e| format!("strategy {:?}: {e}", a.name()))?;
    let sb = b
        .solve(problem, &limits)
        .map_err(|e| format!("strategy {:?}: {e}", b.name()))?;
    let (va, vb) = (
        problem.evaluate(&sa.choice).1,
        problem.evaluate(&sb.choice).1,
    );
    ensure(
        (va - vb).abs() <= rel * va.abs().max(vb.abs()).max(f64::MIN_POSITIVE),
        || {
            format!(
                "strategies {:?} ({va}) and {:?} ({vb}) disagree on a problem with {} classes, budget {}",
                a.name(),
                b.name(),
                problem.classes(),
                problem.budget
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact by enumeration (fine on the kit's tiny problems), with ways to break it.
    #[derive(Default)]
    struct Enumerate {
        overspend: bool,
        lie_about_optimality: bool,
    }

    impl KnapsackStrategy for Enumerate {
        fn name(&self) -> &str {
            "enumerate"
        }
        fn description(&self) -> &str {
            "tries every choice"
        }
        fn solve(&self, p: &McKpProblem, _: &SolveLimits) -> Result<McKpSolution, KnapsackError> {
            let n = p.classes();
            for i in 0..n {
                if !p.class(i).1.iter().any(|v| v.is_finite()) {
                    return Err(KnapsackError::EmptyClass { class: i });
                }
            }
            let mut best: Option<(f64, Vec<usize>)> = None;
            let mut choice = vec![0usize; n];
            'all: loop {
                let (cost, value) = p.evaluate(&choice);
                if (cost <= p.budget || self.overspend)
                    && value.is_finite()
                    && best.as_ref().is_none_or(|b| value < b.0)
                {
                    best = Some((value, choice.clone()));
                }
                let mut i = 0;
                loop {
                    if i == n {
                        break 'all;
                    }
                    choice[i] += 1;
                    if choice[i] < p.class(i).0.len() {
                        break;
                    }
                    choice[i] = 0;
                    i += 1;
                }
            }
            let Some((value, choice)) = best else {
                let min_cost = min_finite_cost(p);
                return Err(KnapsackError::Infeasible {
                    min_cost,
                    budget: p.budget,
                });
            };
            let cost = p.evaluate(&choice).0;
            if self.lie_about_optimality {
                // Report the worst feasible first option as optimal.
                let first = vec![0; n];
                let (c, v) = p.evaluate(&first);
                if c <= p.budget && v.is_finite() && v > value {
                    return Ok(McKpSolution {
                        choice: first,
                        objective: v,
                        cost: c,
                        bound: v,
                        optimal: true,
                    });
                }
            }
            Ok(McKpSolution {
                choice,
                objective: value,
                cost,
                bound: value,
                optimal: true,
            })
        }
    }

    #[test]
    fn an_exact_strategy_passes() {
        check(&Enumerate::default(), Expect::Exact).unwrap();
    }

    #[test]
    fn broken_strategies_fail() {
        let broken = [
            (
                Enumerate {
                    overspend: true,
                    ..Default::default()
                },
                ["over the budget", "infeasible"],
            ),
            (
                Enumerate {
                    lie_about_optimality: true,
                    ..Default::default()
                },
                ["above the optimum", "claims optimal"],
            ),
        ];
        for (strategy, messages) in &broken {
            let e = check(strategy, Expect::Heuristic).unwrap_err();
            assert!(messages.iter().any(|m| e.contains(m)), "{e}");
        }
    }
}
