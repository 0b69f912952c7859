//! Lower convex hulls per class and the LP relaxation of the MCKP (digest §3; Sinha & Zoltners'
//! LP for MCKP).
//!
//! Input: a problem reduced at [`Reduction::Dominated`](knapsec_core::Reduction) level, so each
//! class is sorted by increasing cost with strictly decreasing value. The lower convex hull of a
//! class keeps the options whose incremental "gain per DReLU" `(v_a − v_b)/(c_b − c_a)` strictly
//! decreases. The LP relaxation starts every class at its cheapest option and buys hull
//! increments in order of decreasing gain per DReLU until the next one (the *break item*) no
//! longer fits; a fraction of it fills the budget. Its slope `λ` is the optimal Lagrange
//! multiplier and the LP value is a lower bound on the optimum.

use knapsec_core::McKpProblem;

/// One hull step of one class: from hull position `pos` to `pos + 1`.
#[derive(Clone, Copy, Debug)]
pub struct Increment {
    /// Class (channel) of the step.
    pub class: u32,
    /// Hull position this increment starts from.
    pub pos: u32,
    /// Extra cost (> 0).
    pub dc: u64,
    /// Value decrease (> 0).
    pub dv: f64,
    /// `dv / dc`.
    pub slope: f64,
}

/// Per-class hulls (option indices within the class, increasing cost) in CSR form.
#[derive(Clone, Debug)]
pub struct Hulls {
    /// Start of each class's hull in `options` (one more entry than classes).
    pub offsets: Vec<usize>,
    /// Option indices of all hulls, class after class.
    pub options: Vec<u32>,
}

impl Hulls {
    /// Hull option indices of class `i`.
    pub fn class(&self, i: usize) -> &[u32] {
        &self.options[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Computes the lower convex hull of every class of a dominance-reduced problem.
    pub fn new(p: &McKpProblem) -> Self {
        let mut offsets = Vec::with_capacity(p.classes() + 1);
        let mut options: Vec<u32> = Vec::with_capacity(p.options());
        offsets.push(0);
        for i in 0..p.classes() {
            let (c, v) = p.class(i);
            let start = options.len();
            for k in 0..c.len() {
                while options.len() >= start + 2 {
                    let a = options[options.len() - 2] as usize;
                    let b = options[options.len() - 1] as usize;
                    // Remove b if gain(a→b) ≤ gain(b→k): (v_a − v_b)(c_k − c_b) ≤ (v_b − v_k)(c_b − c_a).
                    let lhs = (v[a] - v[b]) * (c[k] - c[b]) as f64;
                    let rhs = (v[b] - v[k]) * (c[b] - c[a]) as f64;
                    if lhs <= rhs {
                        options.pop();
                    } else {
                        break;
                    }
                }
                options.push(k as u32);
            }
            offsets.push(options.len());
        }
        Hulls { offsets, options }
    }

    /// All hull increments, sorted by decreasing slope (ties: class, then position).
    pub fn increments(&self, p: &McKpProblem) -> Vec<Increment> {
        let mut out = Vec::with_capacity(self.options.len() - p.classes());
        for i in 0..p.classes() {
            let (c, v) = p.class(i);
            let h = self.class(i);
            for pos in 0..h.len().saturating_sub(1) {
                let (a, b) = (h[pos] as usize, h[pos + 1] as usize);
                let dc = c[b] - c[a];
                let dv = v[a] - v[b];
                out.push(Increment {
                    class: i as u32,
                    pos: pos as u32,
                    dc,
                    dv,
                    slope: dv / dc as f64,
                });
            }
        }
        out.sort_unstable_by(|x, y| {
            y.slope
                .total_cmp(&x.slope)
                .then(x.class.cmp(&y.class))
                .then(x.pos.cmp(&y.pos))
        });
        out
    }
}

/// The LP relaxation's answer.
#[derive(Clone, Debug)]
pub struct Lp {
    /// Hull position per class of the integral part (break class at its lower end).
    pub hull_pos: Vec<u32>,
    /// Option index per class of the integral part.
    pub base: Vec<usize>,
    /// Cost and value of the integral part.
    pub base_cost: u64,
    /// Value of the integral part.
    pub base_value: f64,
    /// LP optimum (a lower bound on the MCKP optimum).
    pub bound: f64,
    /// Slope of the break item (the optimal multiplier); 0 when every increment fits.
    pub lambda: f64,
    /// Index into the sorted increments of the break item (`increments.len()` if none).
    pub break_index: usize,
}

/// Solves the LP relaxation given the hulls and their sorted increments. The problem must be
/// feasible (cheapest options within the budget).
pub fn solve_lp(p: &McKpProblem, hulls: &Hulls, incs: &[Increment]) -> Lp {
    let n = p.classes();
    let mut hull_pos = vec![0u32; n];
    let mut cost: u64 = (0..n)
        .map(|i| p.class(i).0[hulls.class(i)[0] as usize])
        .sum();
    let mut break_index = incs.len();
    for (t, inc) in incs.iter().enumerate() {
        if cost + inc.dc > p.budget {
            break_index = t;
            break;
        }
        cost += inc.dc;
        hull_pos[inc.class as usize] = inc.pos + 1;
    }
    let base: Vec<usize> = (0..n)
        .map(|i| hulls.class(i)[hull_pos[i] as usize] as usize)
        .collect();
    let (base_cost, base_value) = p.evaluate(&base);
    debug_assert_eq!(base_cost, cost);
    let (bound, lambda) = match incs.get(break_index) {
        Some(b) => {
            let left = (p.budget - base_cost) as f64;
            (base_value - b.slope * left, b.slope)
        }
        None => (base_value, 0.0),
    };
    Lp {
        hull_pos,
        base,
        base_cost,
        base_value,
        bound,
        lambda,
        break_index,
    }
}

/// The hull greedy: the LP's integral part, then every later increment (in slope order) that
/// still fits and continues its class's hull. Returns the choice and its cost.
pub fn greedy_fill(
    p: &McKpProblem,
    hulls: &Hulls,
    incs: &[Increment],
    lp: &Lp,
) -> (Vec<usize>, u64) {
    let mut pos = lp.hull_pos.clone();
    let mut cost = lp.base_cost;
    for inc in incs.iter().skip(lp.break_index) {
        let i = inc.class as usize;
        if pos[i] == inc.pos && cost + inc.dc <= p.budget {
            pos[i] += 1;
            cost += inc.dc;
        }
    }
    let choice = (0..p.classes())
        .map(|i| hulls.class(i)[pos[i] as usize] as usize)
        .collect();
    (choice, cost)
}

/// Improves a feasible choice by single-class moves: repeatedly applies the move (any option of
/// any class) with the best value decrease that fits the leftover budget, until none helps or
/// `rounds` moves were made. Returns the new cost.
pub fn improve_single_moves(
    p: &McKpProblem,
    choice: &mut [usize],
    mut cost: u64,
    rounds: usize,
) -> u64 {
    for _ in 0..rounds {
        let left = p.budget - cost;
        let mut best: Option<(usize, usize, f64)> = None;
        for (i, k0) in choice.iter().enumerate() {
            let (c, v) = p.class(i);
            for k in 0..c.len() {
                if c[k] <= c[*k0] + left && v[k] < v[*k0] {
                    let gain = v[*k0] - v[k];
                    if best.is_none_or(|b| gain > b.2) {
                        best = Some((i, k, gain));
                    }
                }
            }
        }
        let Some((i, k, _)) = best else { break };
        let (c, _) = p.class(i);
        cost = cost - c[choice[i]] + c[k];
        choice[i] = k;
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::Reduction;

    #[test]
    fn hull_drops_points_above_it() {
        // (0,10) (1,6) (2,5) (3,1): (2,5) lies above the segment (1,6)-(3,1).
        let p = McKpProblem::from_classes(&[vec![(0, 10.0), (1, 6.0), (2, 5.0), (3, 1.0)]], 3);
        let h = Hulls::new(&p);
        assert_eq!(h.class(0), &[0, 1, 3]);
        let incs = h.increments(&p);
        assert_eq!(incs.len(), 2);
        assert!(incs[0].slope > incs[1].slope);
    }

    #[test]
    fn lp_bound_is_below_the_integral_solutions() {
        let p = McKpProblem::from_classes(
            &[
                vec![(0, 10.0), (4, 2.0)],
                vec![(0, 5.0), (3, 1.0)],
                vec![(0, 1.0), (1, 0.5)],
            ],
            5,
        )
        .reduce(Reduction::Dominated)
        .problem;
        let h = Hulls::new(&p);
        let incs = h.increments(&p);
        let lp = solve_lp(&p, &h, &incs);
        // Slopes: 2.0 (class 0), 1.333 (class 1), 0.5 (class 2). Class 0 fits (4), class 1 breaks.
        assert_eq!(lp.base, vec![1, 0, 0]);
        assert!((lp.lambda - 4.0 / 3.0).abs() < 1e-12);
        assert!((lp.bound - (2.0 + 5.0 + 1.0 - 4.0 / 3.0)).abs() < 1e-12);
        let (g, cost) = greedy_fill(&p, &h, &incs, &lp);
        assert_eq!(g, vec![1, 0, 1]);
        assert_eq!(cost, 5);
        // Optimum is 2 + 5 + 0.5 = 7.5; the bound is below it.
        assert!(lp.bound <= 7.5);
    }
}
