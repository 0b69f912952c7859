//! `uniform`: one patch size for the whole network (an ablation baseline, digest §1.4 and
//! anchors §1.4's "uniform 3×4 patches").
//!
//! Unlike the other strategies it needs to know which block size each option stands for, so it
//! asks for [`Reduction::None`] (options as given, with their `blocks`). Among the block sizes
//! that every class offers, it picks the one whose total DReLU cost is the largest that fits the
//! budget, i.e. the finest uniform patch the budget allows; ties go to the lower total
//! distortion, then to the block that comes first in class 0's list. Identity (cost 0) always
//! fits when offered. If no common block fits, every class takes its cheapest option. On
//! generic instances without block sizes (`.npz`), an option's position in its class plays the
//! role of its block size. It proves no bound (`bound = -inf`).

use knapsec_core::BlockSize;
use knapsec_core::knapsack::{
    KnapsackError, KnapsackStrategy, McKpProblem, McKpSolution, Reduction, SolveLimits,
};

/// Registry name.
pub const NAME: &str = "uniform";

/// One patch size everywhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct Uniform;

impl KnapsackStrategy for Uniform {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "one patch size for every channel: the finest that fits the budget (ablation baseline)"
    }

    fn reduction(&self) -> Reduction {
        Reduction::None
    }

    fn solve(&self, p: &McKpProblem, _limits: &SolveLimits) -> Result<McKpSolution, KnapsackError> {
        crate::on_reduced(p, Reduction::None, solve_uniform)
    }
}

/// The label of option `k` of class `i`: its block size, or its position without blocks.
fn label(p: &McKpProblem, i: usize, k: usize) -> Label {
    match p.class_blocks(i) {
        Some(b) => Label::Block(b[k]),
        None => Label::Position(k),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Block(BlockSize),
    Position(usize),
}

fn solve_uniform(p: &McKpProblem) -> Result<McKpSolution, KnapsackError> {
    let n = p.classes();
    let mut best: Option<(u64, f64, Vec<usize>)> = None;
    'label: for k0 in 0..p.class(0).0.len() {
        let l = label(p, 0, k0);
        let mut choice = Vec::with_capacity(n);
        for i in 0..n {
            let Some(k) = (0..p.class(i).0.len()).find(|&k| label(p, i, k) == l) else {
                continue 'label;
            };
            choice.push(k);
        }
        let (cost, value) = p.evaluate(&choice);
        if cost > p.budget || !value.is_finite() {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(bc, bv, _)| cost > *bc || (cost == *bc && value < *bv))
        {
            best = Some((cost, value, choice));
        }
    }
    let choice = match best {
        Some((_, _, choice)) => choice,
        None => (0..n)
            .map(|i| {
                let (c, v) = p.class(i);
                (0..c.len())
                    .min_by(|&a, &b| c[a].cmp(&c[b]).then(v[a].total_cmp(&v[b])))
                    .expect("validated: non-empty")
            })
            .collect(),
    };
    let (cost, objective) = p.evaluate(&choice);
    Ok(McKpSolution {
        choice,
        objective,
        cost,
        bound: f64::NEG_INFINITY,
        optimal: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_finest_common_block_that_fits() {
        let r = BlockSize::RELU;
        let b2 = BlockSize::Patch { h: 2, w: 2 };
        let id = BlockSize::Identity;
        let mut p = McKpProblem::from_classes(
            &[
                vec![(16, 0.0), (4, 1.0), (0, 5.0)],
                vec![(4, 0.0), (1, 1.0), (0, 5.0)],
            ],
            6,
        );
        p.blocks = Some(vec![r, b2, id, r, b2, id]);
        let s = Uniform.solve(&p, &SolveLimits::default()).unwrap();
        assert_eq!(s.choice, vec![1, 1]);
        assert_eq!(s.cost, 5);
        p.budget = 4;
        assert_eq!(
            Uniform.solve(&p, &SolveLimits::default()).unwrap().choice,
            vec![2, 2]
        );
        // Nothing common fits: the cheapest option of every class.
        p.budget = 0;
        assert_eq!(
            Uniform.solve(&p, &SolveLimits::default()).unwrap().choice,
            vec![2, 2]
        );
        p.blocks = None;
        p.budget = 6;
        // Without block sizes, the position in the class plays the block's role.
        assert_eq!(
            Uniform.solve(&p, &SolveLimits::default()).unwrap().choice,
            vec![1, 1]
        );
    }
}
