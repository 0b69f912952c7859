//! `knapsec knapsack`: stage 2 (digest §3), choosing one patch size per channel under a DReLU
//! budget with a knapsack strategy (`knapsec-knapsack`).
//!
//! * `knapsec knapsack --arch A --table T.safetensors --budget 6% [--strategy mckp-exact]
//!   -o spec.ron [--report R.json]` writes the block spec and prints DReLUs used, budget, total
//!   distortion, bound, gap, time and a per-layer table (DReLUs kept, patch-size histogram).
//! * `knapsec knapsack solve-mckp I.npz --budget N [--strategy S] [--json]` solves a generic
//!   instance (`costs` int64 [N,K], `values` float64 [N,K], `counts` int32 [N]).
//! * `knapsec knapsack synth --arch A [--seed S] -o T.safetensors` writes a synthetic
//!   distortion table shaped like a reference network (for trying the stage without a model).
//! * `knapsec knapsack export-npz --arch A --table T --budget 6% -o I.npz` writes the instance
//!   in the generic form.
//!
//! Architectures come from the registry; the four reference networks also work without their
//! plugin, from the reference's layer tables in `knapsec_knapsack::instances`.

use crate::args::ArchOptionArgs;
use crate::context::Context;
use anyhow::{Context as _, bail};
use clap::Subcommand;
use knapsec_core::distortion::DistortionTable;
use knapsec_core::knapsack::{SolveLimits, solve_with};
use knapsec_core::{BlockSize, LayerTable, ReluLayer};
use knapsec_knapsack::instances;
use knapsec_knapsack::problem::LayerReport;
use knapsec_knapsack::{Budget, Instance};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<KnapsackCommand>,
    #[command(flatten)]
    solve: SolveArgs,
}

/// Choose patch sizes for an architecture from its distortion table.
#[derive(Debug, clap::Args)]
struct SolveArgs {
    /// Architecture (see `knapsec arch list`).
    #[arg(long, required = true)]
    arch: Option<String>,
    /// Distortion table (.safetensors) made by `knapsec distortion` (or `knapsack synth`).
    #[arg(long, required = true)]
    table: Option<PathBuf>,
    /// DReLU budget: a percentage of the original network's DReLUs (`6%`), a ratio (`0.06`) or
    /// an absolute count (`33423`).
    #[arg(long, required = true)]
    budget: Option<String>,
    /// Knapsack strategy (see `knapsec plugins list`).
    #[arg(long, default_value = "mckp-exact")]
    strategy: String,
    /// Output block spec (.ron or .json); written atomically.
    #[arg(short = 'o', long = "output", required = true)]
    output: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Stop an exact strategy after this many seconds (it then reports its proven gap).
    #[arg(long)]
    time_limit: Option<f64>,
    #[command(flatten)]
    options: ArchOptionArgs,
}

#[derive(Debug, Subcommand)]
enum KnapsackCommand {
    /// Solve a generic multiple-choice knapsack instance from an .npz file.
    SolveMckp {
        /// Instance: `costs` int64 [N,K], `values` float64 [N,K] (+inf = padding), `counts` int32 [N].
        instance: PathBuf,
        /// Budget: total cost allowed (absolute).
        #[arg(long)]
        budget: u64,
        #[arg(long, default_value = "mckp-exact")]
        strategy: String,
        /// Print JSON (`objective`, `cost`, `bound`, `optimal`, `seconds`, `choice`, ...).
        #[arg(long)]
        json: bool,
        /// Stop an exact strategy after this many seconds.
        #[arg(long)]
        time_limit: Option<f64>,
    },
    /// Write a synthetic distortion table shaped like a reference network (seeded).
    Synth {
        #[arg(long)]
        arch: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output distortion table (.safetensors).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        #[command(flatten)]
        options: ArchOptionArgs,
    },
    /// Write the knapsack instance of an architecture and distortion table as .npz.
    ExportNpz {
        #[arg(long)]
        arch: String,
        #[arg(long)]
        table: PathBuf,
        /// Budget as for `knapsec knapsack` (printed in DReLUs, for `solve-mckp --budget`).
        #[arg(long)]
        budget: String,
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        #[command(flatten)]
        options: ArchOptionArgs,
    },
}

pub fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        Some(KnapsackCommand::SolveMckp {
            instance,
            budget,
            strategy,
            json,
            time_limit,
        }) => solve_mckp(ctx, &instance, budget, &strategy, json, time_limit),
        Some(KnapsackCommand::Synth {
            arch,
            seed,
            output,
            options,
        }) => synth(ctx, &arch, seed, &output, &options),
        Some(KnapsackCommand::ExportNpz {
            arch,
            table,
            budget,
            output,
            options,
        }) => export_npz(ctx, &arch, &table, &budget, &output, &options),
        None => solve_arch(ctx, args.solve),
    }
}

fn limits(time_limit: Option<f64>) -> anyhow::Result<SolveLimits> {
    let time = match time_limit {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            bail!("--time-limit must be a positive number of seconds")
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    Ok(SolveLimits {
        time,
        relative_gap: 0.0,
    })
}

/// The architecture's layer table and cost rule: from the registry, or the reference's table
/// for the four reference networks when no plugin provides them.
type CostFn = Box<dyn Fn(BlockSize, &ReluLayer) -> u64>;

fn resolve_arch(
    ctx: &Context,
    name: &str,
    options: &ArchOptionArgs,
) -> anyhow::Result<(LayerTable, CostFn)> {
    let registry = ctx.registry()?;
    match registry.arch(name) {
        Ok(adapter) => {
            let table = adapter.layer_table(&options.to_options()?)?;
            let a: Arc<dyn knapsec_core::ArchAdapter> = adapter.clone();
            Ok((table, Box::new(move |b, l| a.cost(b, l))))
        }
        Err(e) => match instances::reference_table(name) {
            Ok(table) => {
                tracing::info!(
                    "architecture {name:?} is not registered; using the reference's layer table"
                );
                Ok((
                    table,
                    Box::new(|b: BlockSize, l: &ReluLayer| b.drelu_cost(l.height, l.width)),
                ))
            }
            Err(_) => Err(e.into()),
        },
    }
}

fn strategy(ctx: &Context, name: &str) -> anyhow::Result<Arc<dyn knapsec_core::KnapsackStrategy>> {
    Ok(ctx.registry()?.strategy(name)?)
}

/// The report of `knapsec knapsack`.
#[derive(Serialize)]
struct Report {
    arch: String,
    strategy: String,
    budget: String,
    budget_drelus: u64,
    total_drelus: u64,
    drelus_used: u64,
    /// Total distortion of the choice.
    objective: f64,
    /// Proven lower bound on the optimum (`null` when the strategy proves none).
    bound: Option<f64>,
    /// `(objective − bound) / objective` (`null` without a bound).
    relative_gap: Option<f64>,
    optimal: bool,
    seconds: f64,
    spec: String,
    layers: Vec<LayerReport>,
}

fn solve_arch(ctx: &Context, a: SolveArgs) -> anyhow::Result<()> {
    let (Some(arch), Some(table_path), Some(budget_text), Some(output)) =
        (a.arch, a.table, a.budget, a.output)
    else {
        bail!("--arch, --table, --budget and -o are required");
    };
    let budget: Budget = budget_text.parse()?;
    let (table, cost) = resolve_arch(ctx, &arch, &a.options)?;
    let dist = DistortionTable::load(&table_path)?;
    let inst = Instance::with_cost(&table, &dist, budget, cost)
        .with_context(|| format!("distortion table {}", table_path.display()))?;
    drop(dist);
    let strat = strategy(ctx, &a.strategy)?;
    let start = Instant::now();
    let sol = solve_with(&*strat, &inst.problem, &limits(a.time_limit)?)?;
    let seconds = start.elapsed().as_secs_f64();
    let spec = inst.spec(&sol)?;
    spec.save(&output)?;
    let report = Report {
        arch: arch.clone(),
        strategy: a.strategy.clone(),
        budget: budget.to_string(),
        budget_drelus: inst.problem.budget,
        total_drelus: inst.total_drelus,
        drelus_used: sol.cost,
        objective: sol.objective,
        bound: sol.bound.is_finite().then_some(sol.bound),
        relative_gap: sol.bound.is_finite().then(|| sol.relative_gap()),
        optimal: sol.optimal,
        seconds,
        spec: output.display().to_string(),
        layers: inst.layer_report(&sol),
    };
    if let Some(path) = &a.report {
        let bytes = serde_json::to_vec_pretty(&report)?;
        knapsec_core::fsutil::write_atomic(path, &bytes)?;
    }
    if a.json {
        return ctx.print_json(&report);
    }
    print_report(ctx, &report)
}

fn print_report(ctx: &Context, r: &Report) -> anyhow::Result<()> {
    let mut out = ctx.stdout();
    let pct = |x: u64| 100.0 * x as f64 / r.total_drelus.max(1) as f64;
    writeln!(out, "architecture   {}", r.arch)?;
    writeln!(out, "strategy       {}", r.strategy)?;
    writeln!(
        out,
        "budget         {} = {} DReLUs of {}",
        r.budget, r.budget_drelus, r.total_drelus
    )?;
    writeln!(
        out,
        "DReLUs used    {} ({:.3} % of the network)",
        r.drelus_used,
        pct(r.drelus_used)
    )?;
    writeln!(out, "distortion     {:.12e}", r.objective)?;
    match (r.bound, r.relative_gap) {
        (Some(b), Some(g)) => writeln!(
            out,
            "bound          {b:.12e} (relative gap {g:.2e}{})",
            if r.optimal { ", optimal" } else { "" }
        )?,
        _ => writeln!(out, "bound          none (the strategy proves no bound)")?,
    }
    writeln!(out, "time           {:.3} s", r.seconds)?;
    writeln!(out, "spec           {}", r.spec)?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<16} {:>6} {:>12} {:>12} {:>8}  patch sizes (channels)",
        "layer", "C", "DReLUs", "kept", "kept %"
    )?;
    for l in &r.layers {
        let hist: Vec<String> = l
            .histogram
            .iter()
            .take(6)
            .map(|(b, n)| format!("{b}:{n}"))
            .collect();
        let more = if l.histogram.len() > 6 {
            format!(" +{} more", l.histogram.len() - 6)
        } else {
            String::new()
        };
        writeln!(
            out,
            "{:<16} {:>6} {:>12} {:>12} {:>7.2}%  {}{more}",
            l.layer,
            l.channels,
            l.drelus_original,
            l.drelus,
            100.0 * l.drelus as f64 / l.drelus_original.max(1) as f64,
            hist.join(" ")
        )?;
    }
    out.flush()?;
    Ok(())
}

#[derive(Serialize)]
struct McKpReport {
    strategy: String,
    classes: usize,
    budget: u64,
    objective: f64,
    cost: u64,
    bound: Option<f64>,
    relative_gap: Option<f64>,
    optimal: bool,
    seconds: f64,
    choice: Vec<usize>,
}

fn solve_mckp(
    ctx: &Context,
    path: &Path,
    budget: u64,
    strategy_name: &str,
    json: bool,
    time_limit: Option<f64>,
) -> anyhow::Result<()> {
    let problem = knapsec_knapsack::npz::read_instance(path, budget)?;
    let strat = strategy(ctx, strategy_name)?;
    let start = Instant::now();
    let sol = solve_with(&*strat, &problem, &limits(time_limit)?)
        .with_context(|| format!("{}", path.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    let report = McKpReport {
        strategy: strategy_name.to_string(),
        classes: problem.classes(),
        budget,
        objective: sol.objective,
        cost: sol.cost,
        bound: sol.bound.is_finite().then_some(sol.bound),
        relative_gap: sol.bound.is_finite().then(|| sol.relative_gap()),
        optimal: sol.optimal,
        seconds,
        choice: sol.choice,
    };
    if json {
        return ctx.print_json(&report);
    }
    let mut out = ctx.stdout();
    writeln!(
        out,
        "{} classes, budget {budget}, strategy {strategy_name}",
        report.classes
    )?;
    writeln!(
        out,
        "objective {:.12e}  cost {}  time {:.3} s",
        report.objective, report.cost, report.seconds
    )?;
    match report.bound {
        Some(b) => writeln!(
            out,
            "bound     {b:.12e}  relative gap {:.2e}{}",
            report.relative_gap.unwrap_or(0.0),
            if report.optimal { "  (optimal)" } else { "" }
        )?,
        None => writeln!(out, "bound     none")?,
    }
    out.flush()?;
    Ok(())
}

fn synth(
    ctx: &Context,
    arch: &str,
    seed: u64,
    output: &Path,
    options: &ArchOptionArgs,
) -> anyhow::Result<()> {
    let (table, _) = resolve_arch(ctx, arch, options)?;
    let dist = instances::synthetic_distortion(&table, instances::reference_candidates, seed);
    dist.save(output)?;
    let mut out = ctx.stdout();
    writeln!(
        out,
        "wrote {} ({} layers, {} channels, synthetic distortion, seed {seed})",
        output.display(),
        table.layers.len(),
        table.channels()
    )?;
    Ok(())
}

fn export_npz(
    ctx: &Context,
    arch: &str,
    table_path: &Path,
    budget: &str,
    output: &Path,
    options: &ArchOptionArgs,
) -> anyhow::Result<()> {
    let budget: Budget = budget.parse()?;
    let (table, cost) = resolve_arch(ctx, arch, options)?;
    let dist = DistortionTable::load(table_path)?;
    let inst = Instance::with_cost(&table, &dist, budget, cost)?;
    knapsec_knapsack::npz::write_instance(output, &inst.problem)?;
    let mut out = ctx.stdout();
    writeln!(
        out,
        "wrote {} ({} classes); solve it with: knapsec knapsack solve-mckp {} --budget {}",
        output.display(),
        inst.problem.classes(),
        output.display(),
        inst.problem.budget
    )?;
    Ok(())
}

/// Options of `knapsec bench knapsack`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Networks (synthetic instances shaped like the reference networks).
    #[arg(long, value_delimiter = ',', default_values_t = instances::REFERENCE_ARCHS.map(String::from))]
    networks: Vec<String>,
    /// Budgets in percent of the network's DReLUs.
    #[arg(long, value_delimiter = ',', default_values_t = [3.0, 6.0, 9.0, 12.0, 15.0, 18.0])]
    budgets: Vec<f64>,
    /// Strategies to run.
    #[arg(long, value_delimiter = ',', default_values_t = ["mckp-exact".to_string(), "mckp-greedy".to_string(), "mckp-dp".to_string()])]
    strategies: Vec<String>,
    /// Run `mckp-dp` only on these networks (it is O(N·K·budget): hours on the larger ones).
    #[arg(long, value_delimiter = ',', default_values_t = ["resnet18-cifar".to_string()])]
    dp_networks: Vec<String>,
    /// Run `mckp-dp` only at these budgets (percent).
    #[arg(long, value_delimiter = ',', default_values_t = [6.0])]
    dp_budgets: Vec<f64>,
    /// Seed of the synthetic distortions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Log-noise of the synthetic patch distortions (1.0 = a harder, less monotone stress test).
    #[arg(long, default_value_t = instances::DEFAULT_NOISE)]
    noise: f64,
    /// Print JSON (the default prints JSON too; this flag is accepted for symmetry).
    #[arg(long)]
    json: bool,
    /// Run every case in this process instead of a fresh child process (peak memory then
    /// covers all cases so far).
    #[arg(long)]
    in_process: bool,
}

#[derive(Serialize)]
struct BenchReport {
    bench: &'static str,
    /// How peak memory is measured.
    memory: &'static str,
    seed: u64,
    noise: f64,
    rows: Vec<serde_json::Value>,
    skipped: Vec<String>,
}

/// `knapsec bench knapsack`: every (network, budget, strategy) in a fresh child process
/// (`bench knapsack-case`), one JSON row each.
pub fn bench(ctx: &Context, a: BenchArgs) -> anyhow::Result<()> {
    let _ = a.json;
    let exe = std::env::current_exe().context("locating the knapsec binary")?;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for net in &a.networks {
        instances::reference_table(net)?;
        for &pct in &a.budgets {
            for strat in &a.strategies {
                if strat == "mckp-dp"
                    && !(a.dp_networks.contains(net) && a.dp_budgets.contains(&pct))
                {
                    skipped.push(format!(
                        "{net} {pct}% mckp-dp: O(N·K·budget) dense DP, not run here"
                    ));
                    continue;
                }
                let row = if a.in_process {
                    let r = knapsec_knapsack::bench::run_case(
                        net,
                        pct,
                        strat,
                        a.seed,
                        a.noise,
                        &SolveLimits::default(),
                    )?;
                    serde_json::to_value(r)?
                } else {
                    let out = std::process::Command::new(&exe)
                        .args([
                            "bench",
                            "knapsack-case",
                            net,
                            &pct.to_string(),
                            strat,
                            "--seed",
                            &a.seed.to_string(),
                            "--noise",
                            &a.noise.to_string(),
                        ])
                        .output()
                        .context("running a benchmark case")?;
                    if !out.status.success() {
                        bail!(
                            "case {net} {pct}% {strat} failed: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                    serde_json::from_slice(&out.stdout)
                        .context("reading a benchmark case's JSON")?
                };
                eprintln!(
                    "{net:>22} {pct:>5}% {strat:<12} {:>8.3} s  optimal={}",
                    row["seconds"].as_f64().unwrap_or(f64::NAN),
                    row["optimal"]
                );
                rows.push(row);
            }
        }
    }
    ctx.print_json(&BenchReport {
        bench: "knapsack",
        memory: "peak resident set (VmHWM) of a fresh process per case, reset after the instance is generated: the problem in memory plus everything the strategy allocates",
        seed: a.seed,
        noise: a.noise,
        rows,
        skipped,
    })
}

/// One case of the benchmark, as one JSON line (run by `bench` in a child process).
pub fn bench_case(
    ctx: &Context,
    network: &str,
    percent: f64,
    strategy: &str,
    seed: u64,
    noise: f64,
) -> anyhow::Result<()> {
    let row = knapsec_knapsack::bench::run_case(
        network,
        percent,
        strategy,
        seed,
        noise,
        &SolveLimits::default(),
    )?;
    ctx.print_json(&row)
}
