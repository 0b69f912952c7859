//! `mckp-exact`: an exact MCKP solver that returns the optimum with a proof of optimality, in
//! the style of Pisinger's "minimal algorithm for the multiple-choice knapsack problem" (1995).
//!
//! 1. **LP relaxation** ([`crate::hull`]): lower convex hull per class, incremental slopes
//!    merged in decreasing order, break item. Gives the multiplier `λ`, the LP bound `L`, and the
//!    *base* solution (the LP's integral part, one option `b_i` per class).
//! 2. **Incumbent**: the hull greedy, improved by single-class moves into the leftover budget.
//! 3. **Reduced-cost fixing**: for every feasible `x`,
//!    `v(x) = L + Σ_i δ_i(x_i) + λ·(B − c(x)) ≥ L + Σ_i δ_i(x_i)` with
//!    `δ_i(k) = (v_ik − v_ib) + λ(c_ik − c_ib) ≥ 0`. An option with `L + δ_i(k) ≥ UB` cannot
//!    be part of a better solution and is dropped; a class left with its base option alone is
//!    fixed. The remaining classes form the *core*.
//! 4. **Expanding core**: core classes are added one at a time, closest to the break slope
//!    first, to a list of sparse DP states (full solutions: processed core classes chosen, the
//!    rest at base), kept Pareto-minimal in (cost, value). A state with residual
//!    `r = B − cost` is bounded below by `value − σ↑·r` (r ≥ 0) or `value + σ↓·(−r)` (r < 0),
//!    where `σ↑` (`σ↓`) is the largest gain (smallest loss) per DReLU of any move left in the
//!    classes not yet added. States whose bound reaches the incumbent are dropped; feasible states
//!    improve the incumbent. When no state is left, the incumbent is optimal.
//!
//! **Proof and tolerance.** Every pruned option or state records its lower bound; the reported
//! `bound` is the minimum of those and the objective, so `objective − bound` is the proven gap.
//! Pruning uses `bound ≥ UB − ε` with `ε = 1e-13 · |UB₀|` (UB₀: the first incumbent), so an
//! answer is reported `optimal` when the proven gap is at most [`TOLERANCE`] (1e-12) relative.
//! Sums are plain f64; their rounding (≈ n·2⁻⁵³ relative for n classes) is below that for the
//! instance sizes of the reference networks. With a time limit, a state-count limit, or a
//! `relative_gap` in [`SolveLimits`], the search stops early and returns the incumbent with its
//! proven gap (`optimal = false` unless the gap is within the tolerance).

use crate::hull::{Hulls, greedy_fill, improve_single_moves, solve_lp};
use knapsec_core::knapsack::{
    KnapsackError, KnapsackStrategy, McKpProblem, McKpSolution, Reduction, SolveLimits,
};
use std::time::Instant;

/// Registry name.
pub const NAME: &str = "mckp-exact";

/// Relative gap under which a solution is reported optimal.
pub const TOLERANCE: f64 = 1e-12;

/// Relative pruning tolerance (see the module doc).
const PRUNE_REL: f64 = 1e-13;

/// Most live states before the search stops with a gap (about 200 MB of states).
const MAX_STATES: usize = 4_000_000;
/// Most back-pointer nodes before the search stops with a gap (about 300 MB).
const MAX_NODES: usize = 25_000_000;

const NONE: u32 = u32::MAX;

/// The exact strategy.
#[derive(Clone, Copy, Debug, Default)]
pub struct McKpExact;

/// Statistics of one exact solve (for benchmarks and tests).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExactStats {
    /// Classes left after reduced-cost fixing.
    pub core_classes: usize,
    /// Core classes added before the search ended.
    pub classes_added: usize,
    /// Largest number of live states.
    pub max_states: usize,
    /// Back-pointer nodes created.
    pub nodes: usize,
    /// LP bound.
    pub lp_bound: f64,
    /// First incumbent (improved hull greedy).
    pub first_incumbent: f64,
}

#[derive(Clone, Copy)]
struct State {
    cost: u64,
    value: f64,
    node: u32,
}

#[derive(Clone, Copy)]
struct Node {
    parent: u32,
    class: u32,
    option: u32,
}

/// One core class: its kept options as moves from the base option, by increasing cost change.
struct CoreClass {
    class: u32,
    /// (option, cost change, value change); includes the base option (0, 0.0).
    moves: Vec<(u32, i64, f64)>,
    /// Largest gain per DReLU of a costlier kept option (0 if none).
    up: f64,
    /// Smallest loss per DReLU of a cheaper kept option (+inf if none).
    down: f64,
}

impl KnapsackStrategy for McKpExact {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "exact: LP by hull slopes, reduced-cost fixing, expanding-core DP; proves optimality (gap <= 1e-12)"
    }

    fn solve(&self, p: &McKpProblem, limits: &SolveLimits) -> Result<McKpSolution, KnapsackError> {
        crate::on_reduced(p, Reduction::Dominated, |p| Ok(solve_exact(p, limits).0))
    }
}

/// Solves `p` (reduced at dominance level) exactly; also returns statistics.
pub fn solve_exact(p: &McKpProblem, limits: &SolveLimits) -> (McKpSolution, ExactStats) {
    let start = Instant::now();
    let hulls = Hulls::new(p);
    let incs = hulls.increments(p);
    let lp = solve_lp(p, &hulls, &incs);
    let mut stats = ExactStats {
        lp_bound: lp.bound,
        ..Default::default()
    };
    if lp.break_index == incs.len() {
        // Every hull increment fits: the base takes the best option of every class.
        stats.first_incumbent = lp.base_value;
        let sol = McKpSolution {
            choice: lp.base.clone(),
            objective: lp.base_value,
            cost: lp.base_cost,
            bound: lp.base_value,
            optimal: true,
        };
        return (sol, stats);
    }
    let lambda = lp.lambda;
    let lp_bound = lp.bound;
    let budget = p.budget;

    // Incumbent: hull greedy improved by single moves.
    let (mut greedy, cost) = greedy_fill(p, &hulls, &incs, &lp);
    improve_single_moves(p, &mut greedy, cost, 16);
    let (_, mut ub) = p.evaluate(&greedy);
    stats.first_incumbent = ub;
    let scale = ub.abs().max(lp_bound.abs()).max(f64::MIN_POSITIVE);
    let eps = (PRUNE_REL * scale).max(limits.relative_gap * scale);
    let mut pruned_min = f64::INFINITY;

    // Reduced-cost fixing.
    let base = &lp.base;
    let mut core: Vec<CoreClass> = Vec::new();
    for (i, &b) in base.iter().enumerate() {
        let (c, v) = p.class(i);
        let mut moves = Vec::new();
        let (mut up, mut down) = (0.0f64, f64::INFINITY);
        for k in 0..c.len() {
            let dc = c[k] as i64 - c[b] as i64;
            let dv = v[k] - v[b];
            if k != b {
                let delta = (dv + lambda * dc as f64).max(0.0);
                if lp_bound + delta >= ub - eps {
                    pruned_min = pruned_min.min(lp_bound + delta);
                    continue;
                }
                if dc > 0 {
                    up = up.max(-dv / dc as f64);
                } else {
                    down = down.min(dv / -dc as f64);
                }
            }
            moves.push((k as u32, dc, dv));
        }
        if moves.len() > 1 {
            moves.sort_by_key(|m| m.1);
            core.push(CoreClass {
                class: i as u32,
                moves,
                up,
                down,
            });
        }
    }
    // Closest to the break slope first.
    let closeness = |cc: &CoreClass| (lambda - cc.up).min(cc.down - lambda);
    core.sort_by(|a, b| {
        closeness(a)
            .total_cmp(&closeness(b))
            .then(a.class.cmp(&b.class))
    });
    stats.core_classes = core.len();
    let m = core.len();
    let mut sig_up = vec![0.0f64; m + 1];
    let mut sig_down = vec![f64::INFINITY; m + 1];
    for t in (0..m).rev() {
        sig_up[t] = sig_up[t + 1].max(core[t].up);
        sig_down[t] = sig_down[t + 1].min(core[t].down);
    }
    let bound_of = |cost: u64, value: f64, t: usize| -> f64 {
        if cost <= budget {
            value - sig_up[t] * (budget - cost) as f64
        } else {
            value + sig_down[t] * (cost - budget) as f64
        }
    };

    let mut states = vec![State {
        cost: lp.base_cost,
        value: lp.base_value,
        node: NONE,
    }];
    let mut next: Vec<State> = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    // Incumbent as a path of nodes (Some) or the greedy choice (None).
    let mut incumbent: Option<u32> = None;
    if lp.base_value < ub {
        ub = lp.base_value;
        incumbent = Some(NONE);
    }
    let mut stopped = false;
    let mut t = 0;
    while t < m && !states.is_empty() {
        let over_time = limits.time.is_some_and(|limit| start.elapsed() >= limit);
        if over_time || states.len() > MAX_STATES || nodes.len() > MAX_NODES {
            stopped = true;
            break;
        }
        let cc = &core[t];
        next.clear();
        let mut cursor = vec![0usize; cc.moves.len()];
        let mut best_value = f64::INFINITY;
        loop {
            // The smallest (cost, value) among the shifted lists.
            let mut pick: Option<(usize, u64, f64)> = None;
            for (j, &(_, dc, dv)) in cc.moves.iter().enumerate() {
                let Some(s) = states.get(cursor[j]) else {
                    continue;
                };
                let cost = (s.cost as i64 + dc) as u64;
                let value = s.value + dv;
                if pick.is_none_or(|(_, pc, pv)| cost < pc || (cost == pc && value < pv)) {
                    pick = Some((j, cost, value));
                }
            }
            let Some((j, cost, value)) = pick else { break };
            let s = states[cursor[j]];
            cursor[j] += 1;
            if value >= best_value {
                continue; // dominated
            }
            best_value = value;
            let (option, dc, _) = cc.moves[j];
            // The state's back-pointer, created once, only for a state that is kept.
            let mut node: Option<u32> = None;
            let mut node_of = |nodes: &mut Vec<Node>| {
                *node.get_or_insert_with(|| {
                    if dc == 0 && option as usize == base[cc.class as usize] {
                        s.node
                    } else {
                        nodes.push(Node {
                            parent: s.node,
                            class: cc.class,
                            option,
                        });
                        (nodes.len() - 1) as u32
                    }
                })
            };
            if cost <= budget && value < ub {
                ub = value;
                incumbent = Some(node_of(&mut nodes));
            }
            let bound = bound_of(cost, value, t + 1);
            if bound >= ub - eps {
                pruned_min = pruned_min.min(bound);
                continue;
            }
            let node = node_of(&mut nodes);
            next.push(State { cost, value, node });
        }
        std::mem::swap(&mut states, &mut next);
        stats.max_states = stats.max_states.max(states.len());
        t += 1;
    }
    stats.classes_added = t;
    stats.nodes = nodes.len();
    if stopped {
        for s in &states {
            pruned_min = pruned_min.min(bound_of(s.cost, s.value, t));
        }
    }

    let choice = match incumbent {
        None => greedy,
        Some(mut node) => {
            let mut choice = base.clone();
            while node != NONE {
                let nd = nodes[node as usize];
                choice[nd.class as usize] = nd.option as usize;
                node = nd.parent;
            }
            choice
        }
    };
    let (cost, objective) = p.evaluate(&choice);
    let bound = pruned_min.min(objective);
    let optimal = objective - bound <= TOLERANCE * objective.abs().max(f64::MIN_POSITIVE);
    (
        McKpSolution {
            choice,
            objective,
            cost,
            bound,
            optimal,
        },
        stats,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::Reduction;

    /// The optimum by trying every choice (infinite when nothing fits).
    fn brute(p: &McKpProblem) -> f64 {
        p.exhaustive_optimum().unwrap_or(f64::INFINITY)
    }

    #[test]
    fn small_instance_matches_brute_force() {
        let p = McKpProblem::from_classes(
            &[
                vec![(0, 9.0), (2, 4.0), (3, 3.5), (5, 0.0)],
                vec![(0, 5.0), (1, 4.0), (4, 1.0)],
                vec![(0, 3.0), (3, 1.0), (6, 0.1)],
                vec![(0, 2.0), (2, 1.9), (3, 0.0)],
            ],
            8,
        )
        .reduce(Reduction::Dominated)
        .problem;
        let (sol, _) = solve_exact(&p, &SolveLimits::default());
        assert!(sol.optimal);
        assert!((sol.objective - brute(&p)).abs() < 1e-12);
        assert!(sol.cost <= p.budget);
        assert!(sol.bound <= sol.objective);
    }

    #[test]
    fn a_time_limit_returns_the_incumbent_with_a_valid_gap() {
        let (table, dist) = crate::instances::reference_instance("resnet18-cifar", 5).unwrap();
        let inst = crate::Instance::new(&table, &dist, crate::Budget::Ratio(0.06)).unwrap();
        let p = inst.problem.reduce(Reduction::Dominated).problem;
        let (full, _) = solve_exact(&p, &SolveLimits::default());
        assert!(full.optimal);
        let limits = SolveLimits {
            time: Some(std::time::Duration::ZERO),
            relative_gap: 0.0,
        };
        let (cut, stats) = solve_exact(&p, &limits);
        assert_eq!(stats.classes_added, 0);
        assert!(cut.cost <= p.budget);
        assert!(cut.objective >= full.objective - 1e-15);
        assert!(
            cut.bound <= full.objective + 1e-15,
            "{} > {}",
            cut.bound,
            full.objective
        );
    }

    #[test]
    fn agrees_with_the_dp_on_random_instances() {
        use knapsec_core::KnapsackStrategy;
        let mut state = 88172645463325252u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..40 {
            let classes: Vec<Vec<(u64, f64)>> = (0..1 + next(60))
                .map(|_| {
                    (0..1 + next(8))
                        .map(|_| (next(50), next(1000) as f64 / 7.0))
                        .collect()
                })
                .collect();
            let mut p = McKpProblem::from_classes(&classes, 0);
            p.budget = p.min_cost() + next(400);
            let p = p.reduce(Reduction::Dominated).problem;
            let (e, _) = solve_exact(&p, &SolveLimits::default());
            let d = crate::dp::McKpDp::default()
                .solve(&p, &SolveLimits::default())
                .unwrap();
            assert!(e.optimal);
            assert!((e.objective - d.objective).abs() <= 1e-9 * d.objective.abs().max(1.0));
        }
    }

    #[test]
    fn gap_limit_still_returns_a_valid_bound() {
        let p = McKpProblem::from_classes(
            &(0..12)
                .map(|i| {
                    vec![
                        (0, 10.0 + i as f64),
                        (3 + i % 4, 4.0),
                        (7 + i % 3, 1.0 + 0.1 * i as f64),
                    ]
                })
                .collect::<Vec<_>>(),
            40,
        )
        .reduce(Reduction::Dominated)
        .problem;
        let exact = brute(&p);
        let (sol, _) = solve_exact(
            &p,
            &SolveLimits {
                time: None,
                relative_gap: 0.05,
            },
        );
        assert!(sol.bound <= exact + 1e-12 && sol.objective >= exact - 1e-12);
        assert!(sol.relative_gap() <= 0.05 + 1e-12);
    }
}
