//! `knapsec`: the command-line driver (DESIGN §1). Every stage of the pipeline is a
//! subcommand; each lives in its own module under [`cmd`] with its own `Args` and `run`.
//!
//! Adding a command is three lines: `pub mod NAME;` in `cmd/mod.rs`, one variant in
//! [`Command`], and one arm in [`Command::run`]. Adding a benchmark is one variant in
//! `cmd/bench.rs`.
//!
//! Errors are printed as one line, `error: cause: cause…`, with exit status 1; usage errors
//! (clap) exit with status 2. Output to a closed pipe (`knapsec … | head`) ends quietly.

mod alloc;
mod args;
mod cmd;
mod context;
#[cfg(feature = "torch")]
mod pipeline;
mod ui;

use clap::{Parser, Subcommand};
use context::{Context, GlobalArgs};
use std::process::ExitCode;

/// Private CNN inference under a DReLU budget: distortion, knapsack, fine-tuning, export and
/// three-party secure inference.
#[derive(Debug, Parser)]
#[command(
    name = "knapsec",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the plugins this run sees (built-in and dynamic).
    Plugins(cmd::plugins::Args),
    /// List architectures and show their ReLU layer tables.
    Arch(cmd::arch::Args),
    /// Check and convert block specs (RON, JSON, reference pickles).
    Spec(cmd::spec::Args),
    /// Measurements, printed as JSON.
    Bench(cmd::bench::Args),
    /// Measure the distortion of every (layer, channel, patch size); merge shard tables.
    #[cfg(feature = "torch")]
    Distortion(cmd::distortion::Args),
    /// Choose one patch size per channel under a DReLU budget (multiple-choice knapsack).
    // Boxed: its arguments are by far the largest, and the enum is as large as its largest variant.
    Knapsack(Box<cmd::knapsack::Args>),
    /// Make and inspect the key pairs that authenticate the parties of a deployment.
    Keys(cmd::keys::Args),
    /// Run one party (client, server or helper) of a deployment over TCP.
    Party(cmd::party::Args),
    /// Train a network (SGD, step or cosine schedule, checkpoints, resumable).
    #[cfg(feature = "torch")]
    Train(cmd::train::TrainArgs),
    /// Fine-tune a network with a block spec's block ReLUs in place.
    #[cfg(feature = "torch")]
    Finetune(cmd::train::FinetuneArgs),
    /// Top-1 accuracy of weights (optionally with a block spec) on a test set.
    #[cfg(feature = "torch")]
    Eval(cmd::train::EvalArgs),
    /// Export a network and its block spec as a secure model (folded BatchNorm, fixed point).
    #[cfg(feature = "torch")]
    Export(cmd::train::ExportArgs),
    /// Run the whole pipeline of a configuration file (resumable), with report and plots.
    #[cfg(feature = "torch")]
    Pipeline(cmd::pipeline::PipelineArgs),
    /// The end-to-end demo: Fashion-MNIST, resnet18-cifar, a few DReLU budgets.
    #[cfg(feature = "torch")]
    Demo(cmd::pipeline::DemoArgs),
    /// One secure inference with all three parties in this process: output and traffic.
    Simulate(cmd::simulate::Args),
    /// Choose the approximate-DReLU window of every DReLU site from sample images.
    Calibrate(cmd::calibrate::Args),
}

impl Command {
    /// Whether the command runs secure inference (`simulate`, `party`, `bench secure`,
    /// `bench net`): those keep freed memory for reuse ([`alloc`]); the others (libtorch's
    /// training among them) keep the allocator's defaults.
    fn runs_secure_inference(&self) -> bool {
        match self {
            Command::Simulate(_) | Command::Party(_) => true,
            Command::Bench(b) => b.runs_secure_inference(),
            _ => false,
        }
    }

    fn run(self, ctx: &Context) -> anyhow::Result<()> {
        match self {
            Command::Plugins(args) => cmd::plugins::run(args, ctx),
            Command::Arch(args) => cmd::arch::run(args, ctx),
            Command::Spec(args) => cmd::spec::run(args, ctx),
            Command::Bench(args) => cmd::bench::run(args, ctx),
            #[cfg(feature = "torch")]
            Command::Distortion(args) => cmd::distortion::run(args, ctx),
            Command::Knapsack(args) => cmd::knapsack::run(*args, ctx),
            Command::Keys(args) => cmd::keys::run(args, ctx),
            Command::Party(args) => cmd::party::run(args, ctx),
            #[cfg(feature = "torch")]
            Command::Train(args) => cmd::train::run_train(args, ctx),
            #[cfg(feature = "torch")]
            Command::Finetune(args) => cmd::train::run_finetune(args, ctx),
            #[cfg(feature = "torch")]
            Command::Eval(args) => cmd::train::run_eval(args, ctx),
            #[cfg(feature = "torch")]
            Command::Export(args) => cmd::train::run_export(args, ctx),
            #[cfg(feature = "torch")]
            Command::Pipeline(args) => cmd::pipeline::run_pipeline(args, ctx),
            #[cfg(feature = "torch")]
            Command::Demo(args) => cmd::pipeline::run_demo(args, ctx),
            Command::Simulate(args) => cmd::simulate::run(args, ctx),
            Command::Calibrate(args) => cmd::calibrate::run(args, ctx),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.runs_secure_inference() {
        alloc::keep_freed_memory();
    }
    ui::init_logging(&cli.global);
    let ctx = Context::new(cli.global);
    match cli.command.run(&ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if ui::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", ui::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
