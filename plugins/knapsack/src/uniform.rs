//! `uniform`: one patch size for the whole network (an ablation baseline, digest §1.4 and
//! anchors §1.4's "uniform 3×4 patches").
//!
//! Unlike the other strategies it needs to know which block size each option stands for, so it
//! asks for [`Reduction::None`] (options as given, with their `blocks`). Among the block sizes
//! that every class offers, it picks the one whose total DReLU cost is the largest that fits the
//! budget, i.e. the finest uniform patch the budget allows; ties go to the lower total
//! distortion, then to the block met first. A patch larger than a layer's map counts as that
//! map's whole-map patch (when the problem records the maps), so `5x5` is offered on a 4×4
//! map as `4x4`. Identity (cost 0) always
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

/// The label of option `k` of class `i`: its block size (a patch larger than the class's map
/// clamped to the map, so that `8x8` and `16x16` on a 4×4 map are both the whole-map patch),
/// or its position without blocks.
fn label(p: &McKpProblem, i: usize, k: usize) -> Label {
    match p.class_blocks(i) {
        Some(b) => Label::Block(clamp(p, i, b[k])),
        None => Label::Position(k),
    }
}

/// `b` clamped to the map of class `i` (unchanged when the problem has no maps).
fn clamp(p: &McKpProblem, i: usize, b: BlockSize) -> BlockSize {
    match (b, p.maps.as_ref().and_then(|m| m.get(i))) {
        (BlockSize::Patch { h, w }, Some(&(mh, mw))) => BlockSize::Patch {
            h: h.min(mh.max(1)),
            w: w.min(mw.max(1)),
        },
        _ => b,
    }
}

/// The uniform labels to try: every distinct block of every class (or class 0's positions).
fn uniform_labels(p: &McKpProblem) -> Vec<Label> {
    let mut labels: Vec<Label> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    match &p.blocks {
        Some(blocks) => {
            for &b in blocks {
                if seen.insert(b) {
                    labels.push(Label::Block(b));
                }
            }
        }
        None => labels.extend((0..p.class(0).0.len()).map(Label::Position)),
    }
    labels
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Block(BlockSize),
    Position(usize),
}

fn solve_uniform(p: &McKpProblem) -> Result<McKpSolution, KnapsackError> {
    let n = p.classes();
    let mut best: Option<(u64, f64, Vec<usize>)> = None;
    'label: for l in uniform_labels(p) {
        let mut choice = Vec::with_capacity(n);
        for i in 0..n {
            let want = match l {
                Label::Block(b) => Label::Block(clamp(p, i, b)),
                Label::Position(_) => l,
            };
            let Some(k) = (0..p.class(i).0.len()).find(|&k| label(p, i, k) == want) else {
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
        // A patch larger than a class's map is that map's whole-map patch.
        let b4 = BlockSize::Patch { h: 4, w: 4 };
        let b8 = BlockSize::Patch { h: 8, w: 8 };
        let mut q = McKpProblem::from_classes(
            &[
                vec![(64, 0.0), (4, 1.0), (1, 2.0), (0, 5.0)],
                vec![(16, 0.0), (1, 1.0), (0, 5.0)],
            ],
            5,
        );
        q.blocks = Some(vec![r, b4, b8, id, r, b4, id]);
        q.maps = Some(vec![(8, 8), (4, 4)]);
        let s = Uniform.solve(&q, &SolveLimits::default()).unwrap();
        assert_eq!((s.choice, s.cost), (vec![1, 1], 5));
        q.budget = 2;
        let s = Uniform.solve(&q, &SolveLimits::default()).unwrap();
        assert_eq!(
            (s.choice, s.cost),
            (vec![2, 1], 2),
            "8x8 is 4x4 on the 4x4 map"
        );
        q.maps = None;
        assert_eq!(
            Uniform.solve(&q, &SolveLimits::default()).unwrap().choice,
            vec![3, 2],
            "without maps 8x8 is not offered everywhere"
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
