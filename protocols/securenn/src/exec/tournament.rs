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
//!
//! The plan and the schedule ([`Tournament::run`]) are shared by every backend: `securenn`
//! runs each level with [`crate::select`], the `fss` backend with its key-based gate.

use crate::ctx::{Ctx, stream};
use crate::error::{Result, SecureNnError};
use crate::options::DreluMode;
use crate::profile::{OpKind, span};
use crate::select::{self, Groups, SelectPre, SelectSpec};

/// The public plan of one tournament (the same on all three parties).
#[derive(Clone, Debug)]
pub struct Tournament {
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
    pub fn new(candidates: usize, size: usize, lanes: usize, mode: DreluMode) -> Result<Self> {
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
    pub fn levels(&self) -> &[SelectSpec] {
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
        cands: Vec<Vec<Vec<u64>>>,
        party: bool,
    ) -> Result<Vec<Vec<u64>>> {
        self.run(cands, party, |k, s, d| {
            let p = pre.get(k).ok_or_else(|| SecureNnError::Input {
                role: ctx.role,
                message: format!("no preprocessing for tournament level {k}"),
            })?;
            select::online(ctx, s, p, d)
        })
    }

    /// The schedule of the knock-out, for any selection protocol: `level(k, spec, d)` runs
    /// level `k`'s batch of selections on this party's differences `d` (lane-major, see
    /// [`Tournament::new`]; empty where the party computes nothing) and returns its shares of
    /// `DReLU(a₀ − b₀)·d`. `computing` says whether this party holds the candidates
    /// (`candidates × lanes × size`); returns its shares of the winner's lanes, or nothing.
    pub fn run<E>(
        &self,
        mut cands: Vec<Vec<Vec<u64>>>,
        computing: bool,
        mut level: impl FnMut(usize, &SelectSpec, &[u64]) -> std::result::Result<Vec<u64>, E>,
    ) -> std::result::Result<Vec<Vec<u64>>, E> {
        let size = self.size;
        let mut left = self.candidates;
        for (k, s) in self.levels.iter().enumerate() {
            let pairs = left / 2;
            let n = pairs * size;
            let mut d = Vec::new();
            if computing {
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
            let y = level(k, s, &d)?;
            drop(d);
            if computing {
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
        Ok(if computing {
            cands.pop().unwrap_or_default()
        } else {
            Vec::new()
        })
    }
}
