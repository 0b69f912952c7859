//! knapsec-knapsack: stage 2 of the pipeline (digest §3): choose one patch size per channel so
//! that the summed distortion is minimal and the total DReLU count fits the budget, a
//! multiple-choice knapsack problem (MCKP).
//!
//! * [`problem`]: builds the [`McKpProblem`] from a distortion table, the architecture's layer
//!   table and a [`Budget`] (`6%` or an absolute count), and turns a solution into a
//!   [`knapsec_core::BlockSpec`].
//! * Strategies, each registered with `inventory::submit!` under its name:
//!   - [`exact`] `mckp-exact`: LP relaxation by hull slopes, reduced-cost fixing, then an
//!     expanding-core dynamic programme over sparse states (Pisinger style) that returns the
//!     optimum with a proof, or the best solution and its proven gap when a limit is hit;
//!   - [`dp`] `mckp-dp`: the reference's dense DP over the cost axis, with memory bounded by
//!     checkpointed rows instead of the `N × M` argmax table (digest §3.3, §10.4, §10.21);
//!   - [`greedy`] `mckp-greedy`: hull greedy with its LP bound and gap;
//!   - [`uniform`] `uniform`: one patch size for the whole network (ablation).
//! * [`hull`]: per-class lower convex hulls and the LP relaxation shared by the above.
//! * [`instances`]: the reference networks' layer tables (digest §4.2–4.5) and a seeded
//!   generator of synthetic distortion tables shaped like them; [`npz`]: generic instances as
//!   `.npz` (`costs` int64 [N, K], `values` float64 [N, K], `counts` int32 [N]).
//! * [`bench`]: the figures of `knapsec bench knapsack`.

pub mod bench;
pub mod dp;
pub mod exact;
pub mod greedy;
pub mod hull;
pub mod instances;
pub mod npz;
pub mod problem;
pub mod uniform;

pub use knapsec_core::knapsack::{
    KnapsackError, KnapsackStrategy, McKpProblem, McKpSolution, Reduction, SolveLimits, solve_with,
};
pub use problem::{Budget, Instance};

use std::path::PathBuf;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A strategy failed or the problem is invalid.
    #[error(transparent)]
    Knapsack(#[from] KnapsackError),
    /// A core artefact (distortion table, layer table, spec) is invalid.
    #[error(transparent)]
    Core(#[from] knapsec_core::CoreError),
    /// A budget string does not parse or does not fit.
    #[error("budget {text:?}: {reason}")]
    Budget {
        /// The budget as given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `.npz` instance is malformed.
    #[error("{path}: {message}")]
    Npz {
        /// The `.npz` file.
        path: PathBuf,
        /// What is wrong in it.
        message: String,
    },
    /// Anything else, with context.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

const PROVIDER: &str = "knapsec-knapsack";

/// Registers each `NAME => strategy` with the registry at link time.
macro_rules! register {
    ($($name:expr => $make:expr),* $(,)?) => {$(
        knapsec_core::inventory::submit! {
            knapsec_core::registry::StrategyRegistration {
                name: $name,
                provider: PROVIDER,
                make: || std::sync::Arc::new($make),
            }
        }
    )*};
}

register! {
    exact::NAME => exact::McKpExact,
    dp::NAME => dp::McKpDp::default(),
    greedy::NAME => greedy::McKpGreedy,
    uniform::NAME => uniform::Uniform,
}

/// Runs `solve` on `p` reduced at `level`: directly when `p` already is in that form (as after
/// [`solve_with`]), otherwise on a reduced copy whose answer is mapped back. Validates `p` first
/// (so every strategy refuses NaN, empty classes and infeasible budgets the same way), which
/// lets the strategies be called on raw problems too (conformance kits, dynamic hosts).
pub(crate) fn on_reduced(
    p: &McKpProblem,
    level: Reduction,
    solve: impl FnOnce(&McKpProblem) -> Result<McKpSolution, KnapsackError>,
) -> Result<McKpSolution, KnapsackError> {
    p.validate()?;
    if is_reduced(p, level) {
        return solve(p);
    }
    let reduced = p.reduce(level);
    let solution = solve(&reduced.problem)?;
    Ok(reduced.expand(solution))
}

/// True when `p` already has the form [`McKpProblem::reduce`] gives at `level`.
fn is_reduced(p: &McKpProblem, level: Reduction) -> bool {
    (0..p.classes()).all(|i| {
        let (c, v) = p.class(i);
        v.iter().all(|v| v.is_finite())
            && match level {
                Reduction::None => true,
                Reduction::MergeEqualCost => c.windows(2).all(|w| w[0] < w[1]),
                Reduction::Dominated => {
                    c.windows(2).all(|w| w[0] < w[1]) && v.windows(2).all(|w| w[0] > w[1])
                }
            }
    })
}

/// The strategies of this crate, by name (for callers that do not go through the registry,
/// e.g. unit tests and benchmarks).
pub fn strategies() -> Vec<std::sync::Arc<dyn KnapsackStrategy>> {
    vec![
        std::sync::Arc::new(dp::McKpDp::default()),
        std::sync::Arc::new(exact::McKpExact),
        std::sync::Arc::new(greedy::McKpGreedy),
        std::sync::Arc::new(uniform::Uniform),
    ]
}

/// The strategy of this crate named `name`.
pub fn strategy(name: &str) -> Option<std::sync::Arc<dyn KnapsackStrategy>> {
    strategies().into_iter().find(|s| s.name() == name)
}
