//! `knapsec bench …`: measurements printed as JSON (DESIGN §6, "Benchmarks"). Each area adds
//! one variant to [`BenchCommand`] and one arm to [`run`]: `bench knapsack`, `bench secure`,
//! `bench distortion`, `bench net`, `bench nn`.

use crate::args::ArchOptionArgs;
use crate::context::Context;
use clap::Subcommand;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Time to set up the plugins of this run and to build each architecture's layer table.
    Plugins {
        /// Repetitions of each layer-table build.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        #[command(flatten)]
        options: ArchOptionArgs,
    },
    /// Knapsack strategies on synthetic instances shaped like the reference networks, at
    /// several budgets: seconds, peak memory, objective, bound, gap per case.
    Knapsack(crate::cmd::knapsack::BenchArgs),
    /// Bytes, rounds and seconds of one three-party inference of a ResNet at a DReLU budget
    /// (random block spec and weights unless a spec is given), all parties in this process.
    Secure(crate::cmd::simulate::BenchArgs),
    /// Time per image of three `knapsec party` processes over authenticated TCP at several
    /// one-way delays, and the protocol's sequential rounds.
    Net(crate::cmd::netbench::BenchArgs),
    /// Distortion extraction: the engine against the reference's one-variant-per-pass schedule,
    /// and the estimated time of the full extraction.
    #[cfg(feature = "torch")]
    Distortion(crate::cmd::distortion::BenchArgs),
    /// Forward+backward time of a ResNet in training mode with plain ReLUs and with a mixed
    /// block spec (every layer mixes many patch sizes), and their ratio.
    #[cfg(feature = "torch")]
    Nn {
        /// `resnet18-cifar` or `resnet50-imagenet`.
        #[arg(long, default_value = knapsec_arch_resnet::RESNET18_CIFAR)]
        arch: String,
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(i64).range(1..))]
        batch: i64,
        /// libtorch threads.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..))]
        threads: i32,
        /// Timed passes of each network (after one warm-up pass).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        iterations: u32,
        #[command(flatten)]
        options: ArchOptionArgs,
    },
    /// One case of `bench knapsack` (run in a fresh process by it).
    #[command(hide = true)]
    KnapsackCase {
        network: String,
        percent: f64,
        strategy: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = knapsec_knapsack::instances::DEFAULT_NOISE)]
        noise: f64,
    },
}

impl Args {
    /// Whether this bench runs secure inference (`secure`, `net`).
    pub fn runs_secure_inference(&self) -> bool {
        matches!(self.command, BenchCommand::Secure(_) | BenchCommand::Net(_))
    }
}

pub fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Plugins { repeat, options } => plugins(ctx, repeat, &options),
        BenchCommand::Knapsack(a) => crate::cmd::knapsack::bench(ctx, a),
        BenchCommand::Secure(a) => crate::cmd::simulate::bench(ctx, a),
        BenchCommand::Net(a) => crate::cmd::netbench::bench(ctx, a),
        #[cfg(feature = "torch")]
        BenchCommand::Distortion(a) => crate::cmd::distortion::bench(a, ctx),
        #[cfg(feature = "torch")]
        BenchCommand::Nn {
            arch,
            batch,
            threads,
            iterations,
            options,
        } => {
            let figures = knapsec_arch_resnet::bench::forward_backward(
                &arch,
                &options.to_options()?,
                batch,
                threads,
                iterations,
            )?;
            println!("{}", figures.to_json());
            Ok(())
        }
        BenchCommand::KnapsackCase {
            network,
            percent,
            strategy,
            seed,
            noise,
        } => crate::cmd::knapsack::bench_case(ctx, &network, percent, &strategy, seed, noise),
    }
}

#[derive(Serialize)]
struct PluginsReport {
    bench: &'static str,
    plugins: usize,
    registry_ms: f64,
    repeat: u32,
    layer_tables: Vec<TableTime>,
}

#[derive(Serialize)]
struct TableTime {
    arch: String,
    layers: usize,
    drelus: u64,
    /// Mean time of one `layer_table` call.
    mean_us: f64,
}

fn plugins(ctx: &Context, repeat: u32, options: &ArchOptionArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let registry = ctx.registry()?;
    let registry_ms = start.elapsed().as_secs_f64() * 1e3;
    let opts = options.to_options()?;
    let mut layer_tables = Vec::new();
    for name in registry.arch_names() {
        let arch = registry.arch(&name)?;
        let start = Instant::now();
        let mut table = None;
        for _ in 0..repeat {
            table = Some(arch.layer_table(&opts)?);
        }
        let mean_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(repeat);
        let table = table.expect("repeat is at least 1");
        layer_tables.push(TableTime {
            arch: name,
            layers: table.layers.len(),
            drelus: table.drelus(),
            mean_us,
        });
    }
    ctx.print_json(&PluginsReport {
        bench: "plugins",
        plugins: registry.list().len(),
        registry_ms,
        repeat,
        layer_tables,
    })
}
