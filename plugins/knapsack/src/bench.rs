//! The figures of `knapsec bench knapsack`: one strategy on one synthetic reference instance
//! ([`crate::instances`]) at one budget.
//!
//! Peak memory is the process's peak resident set (`VmHWM` in `/proc/self/status`), reset with
//! `/proc/self/clear_refs` (value 5) after the instance is generated and before the strategy
//! runs, so it covers the problem held in memory plus everything the strategy allocates. The
//! CLI runs every case in a fresh process so that cases do not share a peak. Where `/proc` is
//! unavailable the figure is `null`.

use crate::instances::{reference_candidates, reference_table, synthetic_distortion_with_noise};
use crate::problem::{Budget, Instance};
use crate::{Error, Result};
use knapsec_core::knapsack::{SolveLimits, solve_with};
use serde::Serialize;
use std::time::Instant;

/// One line of the benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// Network whose layer table the instance uses.
    pub network: String,
    /// Budget in percent of the network's DReLUs.
    pub budget_percent: f64,
    /// Budget in DReLUs.
    pub budget_drelus: u64,
    /// Strategy that solved it.
    pub strategy: String,
    /// Log-noise of the synthetic patch distortions.
    pub noise: f64,
    /// Classes (channels) of the instance.
    pub classes: usize,
    /// Options (patch sizes) summed over all classes.
    pub options: usize,
    /// Wall-clock seconds of the solve (reduction, strategy, check), one thread.
    pub seconds: f64,
    /// Peak resident set of the process during the solve, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Summed distortion of the solution.
    pub objective: f64,
    /// DReLUs of the solution.
    pub cost: u64,
    /// Lower bound on the optimum (LP relaxation).
    pub bound: f64,
    /// `(objective − bound) / |bound|`.
    pub relative_gap: f64,
    /// Whether the strategy proved the solution optimal.
    pub optimal: bool,
}

fn read_status_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the peak-RSS counter of this process (Linux); false where unsupported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set of this process in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    read_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Generates the synthetic instance of `network` (seeded, patch log-noise `noise`, see
/// [`crate::instances`]) and solves it with `strategy` at
/// `percent` % of the DReLUs.
pub fn run_case(
    network: &str,
    percent: f64,
    strategy: &str,
    seed: u64,
    noise: f64,
    limits: &SolveLimits,
) -> Result<BenchRow> {
    let strat = crate::strategy(strategy)
        .ok_or_else(|| Error::Invalid(format!("no strategy named {strategy:?}")))?;
    let table = reference_table(network)?;
    let dist = synthetic_distortion_with_noise(&table, reference_candidates, seed, noise);
    let inst = Instance::new(&table, &dist, Budget::Ratio(percent / 100.0))?;
    drop(dist);
    let peak_ok = reset_peak_rss();
    let t0 = Instant::now();
    let sol = solve_with(&*strat, &inst.problem, limits)?;
    let seconds = t0.elapsed().as_secs_f64();
    let peak = if peak_ok { peak_rss_bytes() } else { None };
    Ok(BenchRow {
        network: network.to_string(),
        budget_percent: percent,
        budget_drelus: inst.problem.budget,
        strategy: strategy.to_string(),
        noise,
        classes: inst.problem.classes(),
        options: inst.problem.options(),
        seconds,
        peak_rss_bytes: peak,
        objective: sol.objective,
        cost: sol.cost,
        bound: sol.bound,
        relative_gap: sol.relative_gap(),
        optimal: sol.optimal,
    })
}
