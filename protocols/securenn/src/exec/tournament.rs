//! Pairwise knock-out tournaments on shares: the one implementation behind max pooling
//! (digest §6.14: a tree of `b + ReLU(a − b)` over the window's taps) and the secure argmax
//! over the output classes (which carries each candidate's class index along its value).
//!
//! Every candidate is `lanes` vectors of `size` elements (max pooling: the tap's values;
//! argmax: the class's values and its index). At each level candidates `2q` and `2q + 1` meet
//! element-wise: the decision is `DReLU(a₀ − b₀)` on lane 0, every lane `l` becomes
//! `b_l + DReLU(a₀ − b₀)·(a_l − b_l)`, and an odd candidate out passes to the next level
//! unchanged, so candidates keep their order. The decision is 1 iff `a₀ ≥ b₀`: on a tie the
//! earlier candidate wins (the argmax keeps the lower index). One level is one batch of
//! secure selections ([`crate::select`]): `pairs·size` decisions, each selecting its `lanes`
//! differences.

use crate::ctx::{Ctx, stream};
use crate::error::Result;
use crate::options::DreluMode;
use crate::profile::{OpKind, span};
use crate::select::{self, Groups, SelectPre, SelectSpec};

/// The public plan of one tournament (the same on all three parties).
#[derive(Clone, Debug)]
pub(super) struct Tournament {
    /// Candidates entering the first level.
    candidates: usize,
    /// Elements per lane.
    size: usize,
    /// Vectors per candidate; lane 0 decides.
    lanes: usize,
    /// One batch of selections per level.
    levels: Vec<SelectSpec>,
}

impl Tournament {
    /// Plans a tournament over `candidates` candidates of `lanes` vectors of `size` elements,
    /// comparing under `mode`. Per level the selected values are laid out lane-major:
    /// `[lane 0: pairs·size, lane 1: pairs·size, …]`, decision `g` selecting element `g` of
    /// every lane.
    pub(super) fn new(
        candidates: usize,
        size: usize,
        lanes: usize,
        mode: DreluMode,
    ) -> Result<Self> {
        let mut levels = Vec::new();
        let mut left = candidates;
        while left > 1 {
            let pairs = left / 2;
            let n = pairs * size;
            // One lane: each decision selects its own difference (no separate groups).
            let sel = (lanes > 1).then(|| Groups::Csr {
                ptr: (0..=n).map(|g| lanes * g).collect(),
                idx: (0..n)
                    .flat_map(|g| (0..lanes).map(move |l| (g + l * n) as u32))
                    .collect(),
            });
            levels.push(SelectSpec::new(
                lanes * n,
                Groups::Singles(n),
                sel,
                0,
                mode,
            )?);
            left -= pairs;
        }
        Ok(Tournament {
            candidates,
            size,
            lanes,
            levels,
        })
    }

    /// The selection batches, one per level.
    pub(super) fn levels(&self) -> &[SelectSpec] {
        &self.levels
    }

    /// The offline phase of every level, on streams `(node, level)`.
    pub(super) fn offline(&self, ctx: &mut Ctx<'_>, node: usize) -> Result<Vec<SelectPre>> {
        self.levels
            .iter()
            .enumerate()
            .map(|(k, s)| select::offline(ctx, s, stream(node, k)))
            .collect()
    }

    /// Runs the tournament on shares. Client and server pass their shares of the candidates
    /// (`candidates × lanes × size`); the helper passes nothing. Returns this party's shares
    /// of the winner's lanes (nothing for the helper).
    pub(super) fn online(
        &self,
        ctx: &mut Ctx<'_>,
        pre: &[SelectPre],
        mut cands: Vec<Vec<Vec<u64>>>,
        party: bool,
    ) -> Result<Vec<Vec<u64>>> {
        let size = self.size;
        let mut left = self.candidates;
        for (s, p) in self.levels.iter().zip(pre) {
            let pairs = left / 2;
            let n = pairs * size;
            let mut d = Vec::new();
            if party {
                let _pool = span(OpKind::Pooling);
                d.reserve(s.pixels);
                for lane in 0..self.lanes {
                    for pair in cands[..2 * pairs].chunks_exact(2) {
                        d.extend(
                            pair[0][lane]
                                .iter()
                                .zip(&pair[1][lane])
                                .map(|(a, b)| a.wrapping_sub(*b)),
                        );
                    }
                }
            }
            let y = select::online(ctx, s, p, &d)?;
            if party {
                let _pool = span(OpKind::Pooling);
                let mut next = Vec::with_capacity(cands.len() - pairs);
                for q in 0..pairs {
                    let b = &cands[2 * q + 1];
                    next.push(
                        (0..self.lanes)
                            .map(|lane| {
                                let y = &y[lane * n + q * size..lane * n + (q + 1) * size];
                                b[lane]
                                    .iter()
                                    .zip(y)
                                    .map(|(b, y)| b.wrapping_add(*y))
                                    .collect()
                            })
                            .collect(),
                    );
                }
                if cands.len() % 2 == 1 {
                    next.push(cands.pop().expect("odd candidate"));
                }
                cands = next;
            }
            left -= pairs;
        }
        Ok(if party {
            cands.pop().unwrap_or_default()
        } else {
            Vec::new()
        })
    }
}
