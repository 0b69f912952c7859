//! `knapsec distortion …`: stage 1, distortion extraction (digest §2), and `knapsec bench
//! distortion` (engine against the reference's one-variant schedule).
//!
//! ```text
//! knapsec distortion --arch NAME [--weights W.safetensors] --data SPEC --samples N [--batch B]
//!                    [--shard i/n] [--resume] [--checkpoint-every S] [--device cpu|cuda:N]
//!                    -o TABLE.safetensors
//! knapsec distortion merge PART... -o TABLE.safetensors
//! ```
//!
//! While running, the partial table is checkpointed (atomically) to `TABLE.safetensors.partial`;
//! `--resume` continues from it. A shard's output is a partial table (NaN outside the shard);
//! `merge` joins the shards of one run.

use crate::args::ArchOptionArgs;
use crate::context::Context;
use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use knapsec_core::distortion::{DistortionTable, Provenance};
use knapsec_core::{ArchAdapter, ArchOptions, LayerTable, ReluLayer};
use knapsec_nn::Network;
use knapsec_nn::data::{DataSpec, Split};
use knapsec_nn::distortion::{
    self as engine, ExtractConfig, OutputMse, Progress, RunInfo, Schedule, Shard, WorkUnit, sample,
    store,
};
use knapsec_nn::tch::{self, Device, Tensor};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Join the shard tables of one run (`--shard i/n` outputs) into the whole table.
    Merge {
        /// The shard tables, one per shard, in any order.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        /// The merged table.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Options of an extraction run.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Architecture name (`knapsec arch list`).
    #[arg(long, required = true)]
    arch: Option<String>,
    #[command(flatten)]
    options: ArchOptionArgs,
    /// Weights (safetensors, PyTorch `state_dict` names). Without it: random weights from
    /// `--seed`, for tests only (a warning says so).
    #[arg(long, value_name = "W.safetensors")]
    weights: Option<PathBuf>,
    /// The images: `random` (seeded Gaussian images of the network's input shape), or a data set
    /// (`fashion-mnist[:DIR]`, `mnist:DIR`, `cifar10:DIR`, `cifar100:DIR`, `folder:DIR`), whose
    /// training split is sampled.
    #[arg(long, default_value = "random", value_name = "SPEC")]
    data: String,
    /// Number of sample images (drawn with `--seed`).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    samples: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Seed of the sample (and of random weights).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run only shard i of n (0-based); join the outputs with `knapsec distortion merge`.
    #[arg(long, value_name = "i/n")]
    shard: Option<Shard>,
    /// Continue the run checkpointed in `OUTPUT.partial`.
    #[arg(long)]
    resume: bool,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Worker threads, each with its own copy of the network and its share of the cores
    /// (default: one per core on the CPU, one on a GPU).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    workers: Option<u64>,
    /// Channels per work unit (the checkpoint and shard granularity).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    chunk: u64,
    /// Least time between two checkpoints, in seconds (0: after every work unit). The
    /// checkpoint is always written when the run stops.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    checkpoint_every: f64,
    /// `batched` (the engine) or `single` (the reference's one variant per pass).
    #[arg(long, default_value = "batched", value_parser = ["batched", "single"])]
    schedule: String,
    /// The distortion table (safetensors).
    #[arg(short, long, required = true, value_name = "TABLE.safetensors")]
    output: Option<PathBuf>,
}

pub fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        Some(Sub::Merge { parts, output }) => merge(ctx, &parts, &output),
        None => extract(ctx, args.run),
    }
}

/// The checkpoint of an output file.
fn checkpoint_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    output.with_file_name(name)
}

/// A network of `arch` with its weights and sample-independent provenance.
struct Prepared {
    adapter: Arc<dyn ArchAdapter>,
    table: LayerTable,
    network: Network,
    weights_hash: String,
}

fn prepare(
    ctx: &Context,
    arch: &str,
    options: &ArchOptions,
    weights: Option<&Path>,
    seed: u64,
    device: Device,
) -> anyhow::Result<Prepared> {
    let adapter = ctx.registry()?.arch(arch)?;
    let table = adapter.layer_table(options)?;
    if weights.is_none() {
        tch::manual_seed(seed as i64);
    }
    let mut network = Network::build(arch, options, device)?;
    match weights {
        Some(w) => network.load_weights(w)?,
        None => tracing::warn!(
            "no --weights: using random weights (seed {seed}); the distortions are for tests only"
        ),
    }
    let net_table = network.net.slots().layer_table()?;
    if net_table.layers != table.layers {
        bail!(
            "architecture {arch:?}: the network's ReLU layers differ from its adapter's layer table"
        );
    }
    let weights_hash = engine::sample::weights_hash(&network.vs);
    Ok(Prepared {
        adapter,
        table,
        network,
        weights_hash,
    })
}

/// The sample images, on `device`.
fn images(
    data: &str,
    shape: [i64; 3],
    samples: usize,
    seed: u64,
    device: Device,
) -> anyhow::Result<Tensor> {
    if data == "random" {
        return Ok(sample::random_images(shape, samples, seed).to_device(device));
    }
    let spec: DataSpec = data.parse()?;
    let set = spec
        .load(Split::Train)
        .with_context(|| format!("cannot load data set {data:?}"))?;
    let indices = sample::select_indices(set.len(), samples, seed)?;
    let (x, _) = set.select(&indices).to_tensors(device)?;
    Ok(x)
}

fn workers_for(device: Device, requested: Option<u64>) -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match (requested, device) {
        (Some(w), _) => w as usize,
        (None, Device::Cpu) => cores,
        (None, _) => 1,
    };
    (workers, (cores / workers).max(1))
}

fn progress_bar(ctx: &Context) -> ProgressBar {
    if ctx.global.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:12} [{bar:30}] {human_pos}/{human_len} variants, {per_sec}, ETA {eta} (elapsed {elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// How to go on from a checkpoint that cannot be resumed.
const RESUME_HINT: &str =
    "run again with the settings it was made with, or delete it to start over";

fn extract(ctx: &Context, a: RunArgs) -> anyhow::Result<()> {
    let (Some(arch), Some(output)) = (a.arch.as_deref(), a.output.as_deref()) else {
        bail!("--arch and --output are required");
    };
    let device = engine::parse_device(&a.device)?;
    let checkpoint_every =
        std::time::Duration::try_from_secs_f64(a.checkpoint_every).map_err(|_| {
            anyhow::anyhow!(
                "--checkpoint-every {}: expected a number of seconds, 0 or more",
                a.checkpoint_every
            )
        })?;
    let options = a.options.to_options()?;
    let samples = a.samples as usize;
    let p = prepare(ctx, arch, &options, a.weights.as_deref(), a.seed, device)?;
    let provenance = Provenance {
        weights_hash: p.weights_hash.clone(),
        sample_seed: a.seed,
        sample_count: samples as u64,
        metric: "output-mse".into(),
    };
    let skeleton = DistortionTable::unmeasured(&p.table, |l| p.adapter.candidates(l), provenance);
    let run = RunInfo {
        data: a.data.clone(),
        chunk: a.chunk as usize,
        shard: a.shard,
    };
    let ckpt = checkpoint_path(output);

    let start = if ckpt.exists() {
        if !a.resume {
            bail!(
                "{} exists (an interrupted run): pass --resume to continue it, or delete it",
                ckpt.display()
            );
        }
        let (t, r) = store::load(&ckpt)?;
        if let Some(why) = store::incompatibility(&skeleton, &t) {
            bail!("{}: cannot resume: {why} ({RESUME_HINT})", ckpt.display());
        }
        if r.as_ref() != Some(&run) {
            bail!(
                "{}: cannot resume: it was made with {r:?}, this run is {run:?} ({RESUME_HINT})",
                ckpt.display()
            );
        }
        t
    } else {
        if a.resume && output.exists() {
            let (t, r) = store::load(output)?;
            if store::incompatibility(&skeleton, &t).is_none()
                && r.as_ref().map(|r| (&r.data, r.chunk, r.shard))
                    == Some((&run.data, run.chunk, run.shard))
            {
                eprintln!("{} is already complete", output.display());
                return Ok(());
            }
        }
        skeleton
    };

    let x = images(
        &a.data,
        p.network.net.input_shape(),
        samples,
        a.seed,
        device,
    )?;
    let (workers, threads) = workers_for(device, a.workers);
    let nets = engine::into_nets(engine::replicas(&p.network, workers)?);
    let units: Vec<WorkUnit> = store::units(&start, run.chunk)
        .into_iter()
        .filter(|u| run.shard.unwrap_or(Shard::WHOLE).owns(u.id))
        .collect();
    // Said on stderr (not only in the log) so that a batch system's job log shows what a
    // requeued or restarted task took over from its checkpoint.
    let already = units.iter().filter(|u| store::unit_done(&start, u)).count();
    if ckpt.exists() {
        eprintln!(
            "resuming from {}: {already} of {} work units of this {} already done, {} to run",
            ckpt.display(),
            units.len(),
            run.shard
                .map_or("run".to_string(), |s| format!("shard ({s})")),
            units.len() - already
        );
    }
    let schedule = if a.schedule == "single" {
        Schedule::Single
    } else {
        Schedule::DEFAULT
    };
    let config = ExtractConfig {
        schedule,
        batch: a.batch as usize,
        threads_per_worker: threads,
        checkpoint: Some((ckpt.clone(), run.clone())),
        checkpoint_every,
        ..ExtractConfig::default()
    };
    let bar = progress_bar(ctx);
    bar.set_message("distortion");
    let t0 = Instant::now();
    let (table, stats) = engine::extract(
        nets,
        &x,
        start,
        &units,
        Arc::new(OutputMse),
        &config,
        &mut |ev| match ev {
            Progress::Start { total, done } => {
                bar.set_length(total);
                bar.set_position(done);
                bar.reset_eta();
            }
            Progress::Unit { layer, cells } => {
                bar.set_message(layer);
                bar.inc(cells);
            }
        },
    )?;
    bar.finish_and_clear();
    if run.shard.is_none() {
        table.validate(&p.table)?;
    }
    store::save(output, &table, &run)?;
    if ckpt.exists() {
        std::fs::remove_file(&ckpt).with_context(|| format!("cannot remove {}", ckpt.display()))?;
    }
    eprintln!(
        "wrote {}: {} variants ({} run on some image, {} copied exactly), {} of {} (variant, image) rows run, {} passes, {} work units run ({already} taken from the checkpoint), {:.1} s",
        output.display(),
        stats.cells,
        stats.evaluated,
        stats.cells - stats.evaluated,
        stats.image_rows_run,
        stats.image_rows,
        stats.passes,
        stats.units,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn merge(_ctx: &Context, parts: &[PathBuf], output: &Path) -> anyhow::Result<()> {
    let mut loaded = Vec::with_capacity(parts.len());
    for p in parts {
        let (t, r) = store::load(p)?;
        loaded.push((p.clone(), t, r));
    }
    let (table, run) = store::merge(&loaded)?;
    // Every cell measured, finite and non-negative; candidates distinct.
    let layers: Vec<ReluLayer> = table
        .layers
        .iter()
        .map(|(n, d)| ReluLayer::new(n.clone(), d.channels as u32, 1, 1))
        .collect();
    table.validate(&LayerTable::new(table.arch.clone(), layers)?)?;
    store::save(output, &table, &run)?;
    eprintln!("merged {} shards into {}", parts.len(), output.display());
    Ok(())
}

// === bench ===

/// `knapsec bench distortion`: the engine against the reference's schedule, from one run.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Architecture name.
    #[arg(long, default_value = "resnet18-cifar")]
    arch: String,
    #[command(flatten)]
    options: ArchOptionArgs,
    /// Images per pass (the sample is one batch).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Channels per worker and layer timed with the engine (one work unit of this many channels
    /// per worker, so that all workers run as in a full extraction).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    channels: u64,
    /// Variants per layer timed with the one-variant schedule.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..))]
    single: u64,
    /// Engine workers (default: one per core), each with cores/workers torch threads.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    workers: Option<u64>,
    /// Seed of the random weights and images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON (the only format; accepted for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct LayerBench {
    layer: String,
    variants: u64,
    batched_sampled: u64,
    batched_evaluated: u64,
    /// (variant, image) rows of the sampled variants, and how many of them ran.
    batched_image_rows: u64,
    batched_image_rows_run: u64,
    batched_seconds: f64,
    single_sampled: u64,
    single_seconds: f64,
}

#[derive(Serialize)]
struct DistortionBench {
    bench: &'static str,
    arch: String,
    batch: u64,
    workers: usize,
    threads_per_worker: usize,
    cores: usize,
    /// Variants of the full extraction (Σ C·K over the layers, with this build's candidates).
    full_variants: u64,
    /// Variants resolved per second by the engine (run or copied exactly), weighted like the
    /// full extraction.
    batched_passes_per_s: f64,
    /// Fraction of the sampled variants the engine copied instead of running on any image.
    batched_skipped_fraction: f64,
    /// Fraction of the sampled (variant, image) rows the engine copied instead of running.
    batched_skipped_row_fraction: f64,
    /// One-variant-per-pass schedule (the reference's), same weighting.
    single_passes_per_s: f64,
    ratio: f64,
    clean_pass_seconds: f64,
    estimated_full_seconds: f64,
    estimated_full_seconds_single: f64,
    max_relative_difference: f64,
    layers: Vec<LayerBench>,
}

pub fn bench(args: BenchArgs, ctx: &Context) -> anyhow::Result<()> {
    let _ = args.json;
    let options = args.options.to_options()?;
    let device = Device::Cpu;
    let p = prepare(ctx, &args.arch, &options, None, args.seed, device)?;
    let provenance = Provenance {
        weights_hash: p.weights_hash.clone(),
        sample_seed: args.seed,
        sample_count: args.batch,
        metric: "output-mse".into(),
    };
    let skeleton = DistortionTable::unmeasured(&p.table, |l| p.adapter.candidates(l), provenance);
    let x = sample::random_images(p.network.net.input_shape(), args.batch as usize, args.seed);
    let (workers, threads) = workers_for(device, args.workers);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let t = Instant::now();
    let _ = knapsec_nn::BlockNet::forward_t(p.network.net.as_ref(), &x, false)?;
    let clean_pass_seconds = t.elapsed().as_secs_f64();

    let mut layers = Vec::new();
    let (mut est_batched, mut est_single, mut full, mut sampled, mut skipped) =
        (0.0, 0.0, 0u64, 0u64, 0u64);
    let (mut rows, mut rows_run) = (0u64, 0u64);
    let mut max_rel = 0.0f64;
    let bar = progress_bar(ctx);
    bar.set_length(skeleton.layers.len() as u64);
    for (li, (name, d)) in skeleton.layers.iter().enumerate() {
        bar.set_message(name.clone());
        let k = d.k() as u64;
        let variants = d.channels as u64 * k;
        // Engine: one unit of `channels` contiguous channels per worker, in the middle of the
        // layer, so that every worker is busy as in a full run (a single unit would time one
        // worker and leave the other cores idle).
        let per_unit = (args.channels as usize).min(d.channels.div_ceil(workers));
        let nunits = workers.min(d.channels.div_ceil(per_unit));
        let cc = (per_unit * nunits).min(d.channels);
        let c0 = (d.channels - cc) / 2;
        let units: Vec<WorkUnit> = (0..nunits)
            .map(|u| WorkUnit {
                id: u,
                layer: li,
                channels: c0 + u * per_unit..(c0 + (u + 1) * per_unit).min(c0 + cc),
            })
            .collect();
        let config = ExtractConfig {
            batch: args.batch as usize,
            threads_per_worker: threads,
            ..ExtractConfig::default()
        };
        let nets = engine::into_nets(engine::replicas(&p.network, workers)?);
        let (bt, bs) = engine::extract(
            nets,
            &x,
            skeleton.clone(),
            &units,
            Arc::new(OutputMse),
            &config,
            &mut |_| {},
        )?;
        // Reference schedule: `single` variants of the same unit, spread over its cells.
        let cells: Vec<(usize, usize)> = (0..cc * d.k())
            .map(|i| (c0 + i / d.k(), i % d.k()))
            .collect();
        let step = (cells.len() / args.single as usize).max(1);
        let picks: Vec<(usize, usize)> = cells
            .iter()
            .copied()
            .step_by(step)
            .take(args.single as usize)
            .collect();
        let mut st = 0.0;
        for &(c, q) in &picks {
            let mut one = skeleton.clone();
            one.layers[li].candidates = vec![d.candidates[q]];
            one.layers[li].values = vec![f64::NAN; d.channels];
            let u = WorkUnit {
                id: 0,
                layer: li,
                channels: c..c + 1,
            };
            let config = ExtractConfig {
                schedule: Schedule::Single,
                batch: args.batch as usize,
                threads_per_worker: cores,
                ..ExtractConfig::default()
            };
            let nets = engine::into_nets(engine::replicas(&p.network, 1)?);
            let (ot, os) = engine::extract(
                nets,
                &x,
                one,
                &[u],
                Arc::new(OutputMse),
                &config,
                &mut |_| {},
            )?;
            st += os.seconds;
            let (a, b) = (ot.layers[li].row(c)[0], bt.layers[li].row(c)[q]);
            if a.max(b) > 0.0 {
                max_rel = max_rel.max((a - b).abs() / a.abs().max(b.abs()));
            }
        }
        let n_b = bs.cells.max(1) as f64;
        let n_s = picks.len().max(1) as f64;
        est_batched += bs.seconds / n_b * variants as f64;
        est_single += st / n_s * variants as f64;
        full += variants;
        sampled += bs.cells;
        skipped += bs.cells - bs.evaluated;
        rows += bs.image_rows;
        rows_run += bs.image_rows_run;
        layers.push(LayerBench {
            layer: name.clone(),
            variants,
            batched_sampled: bs.cells,
            batched_evaluated: bs.evaluated,
            batched_image_rows: bs.image_rows,
            batched_image_rows_run: bs.image_rows_run,
            batched_seconds: bs.seconds,
            single_sampled: picks.len() as u64,
            single_seconds: st,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let batched_passes_per_s = full as f64 / est_batched;
    let single_passes_per_s = full as f64 / est_single;
    ctx.print_json(&DistortionBench {
        bench: "distortion",
        arch: args.arch.clone(),
        batch: args.batch,
        workers,
        threads_per_worker: threads,
        cores,
        full_variants: full,
        batched_passes_per_s,
        batched_skipped_fraction: skipped as f64 / sampled.max(1) as f64,
        batched_skipped_row_fraction: (rows - rows_run) as f64 / rows.max(1) as f64,
        single_passes_per_s,
        ratio: batched_passes_per_s / single_passes_per_s,
        clean_pass_seconds,
        estimated_full_seconds: est_batched + clean_pass_seconds,
        estimated_full_seconds_single: est_single + clean_pass_seconds,
        max_relative_difference: max_rel,
        layers,
    })
}
