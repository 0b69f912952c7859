//! `knapsec simulate`: one secure inference with all three parties in this process (threads
//! over the metered in-memory transport, `knapsec-runtime`'s harness), printing the output and
//! a communication report; and `knapsec bench secure`: the bytes, rounds and seconds of one
//! inference of any registered architecture at a DReLU budget with any backend, with a
//! random block spec and random weights (DESIGN §5, digest §6.13).

use crate::context::Context;
use anyhow::{Context as _, bail};
use knapsec_core::BlockSpec;
use knapsec_core::backend::PartyOutput;
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::graph_build::random_weights;
use knapsec_net::CommReport;
use knapsec_securenn::{DreluMode, Options, Reveal, nets, simulate};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Receive timeout of the simulated parties: a stuck protocol becomes an error.
const TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The secure-model folder (`model.ron` + `weights.safetensors`).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The client's image: a `.npy` array of `C·H·W` float32/float64 values, or a folder of
    /// them (the first `--batch` in name order).
    #[arg(long, value_name = "FILE|DIR")]
    input: PathBuf,
    /// Images in the inference: every round carries all of them, so the batch costs the
    /// rounds of one image; needs a folder `--input` with at least this many images.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    batch: u32,
    /// The backend: `securenn`, `plain` (cleartext oracle), or any other registered backend
    /// (`knapsec plugins list`); every backend runs through its phases, each timed and
    /// metered apart.
    #[arg(long, default_value = "securenn")]
    backend: String,
    /// DReLU of the securenn backend (another backend takes it in `--options`): `exact`, `approx:BITS[,LSB_IGNORED]` (every site), or
    /// `calibrated` (each site's window from `knapsec calibrate`).
    #[arg(long, default_value = "exact")]
    drelu: String,
    /// Reveal only the label (map) to the client, by a secure argmax (any backend that
    /// states label-only options).
    #[arg(long)]
    label_only: bool,
    /// Refuse a DReLU window that the model's calibration data show to be too narrow for a
    /// site (without it: a warning).
    #[arg(long)]
    strict: bool,
    /// Options of another backend (RON text).
    #[arg(long, default_value = "")]
    options: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn load(dir: &std::path::Path) -> anyhow::Result<(SecureModel, ModelWeights)> {
    let model = SecureModel::load(dir)?;
    let weights = ModelWeights::load(dir)?;
    weights.check_against(&model)?;
    Ok((model, weights))
}

fn check_input(model: &SecureModel, x: &[f32], path: &std::path::Path) -> anyhow::Result<()> {
    let [c, h, w] = model.input_shape();
    if x.len() != (c * h * w) as usize {
        bail!(
            "{}: {} values, the model expects {c}x{h}x{w} = {}",
            path.display(),
            x.len(),
            c * h * w
        );
    }
    Ok(())
}

/// The first `batch` images of `input` (a file, or a folder read in name order).
fn read_inputs(
    model: &SecureModel,
    input: &std::path::Path,
    batch: usize,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let files = crate::cmd::party::input_files(input)?;
    if files.len() < batch {
        bail!(
            "--batch {batch} needs {batch} images, {} has {}",
            input.display(),
            files.len()
        );
    }
    files[..batch]
        .iter()
        .map(|f| {
            let x = crate::cmd::party::read_npy(f)?;
            check_input(model, &x, f)?;
            Ok(x)
        })
        .collect()
}

pub fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let (model, weights) = load(&args.model)?;
    let inputs = read_inputs(&model, &args.input, args.batch as usize)?;
    let x = &inputs[0];
    match (args.backend.as_str(), args.batch) {
        ("securenn", 1) => {
            let drelu = DreluMode::parse_cli(&args.drelu)?;
            crate::cmd::calibrate::guard(&model, drelu.choice(), args.strict)?;
            let reveal = if args.label_only {
                Reveal::Label
            } else {
                Reveal::Logits
            };
            let report = simulate(
                &model,
                &weights,
                x,
                Options { drelu, reveal },
                Some(TIMEOUT),
            )?;
            if args.json {
                return ctx.print_json(&report);
            }
            let mut out = ctx.stdout();
            print_output(&mut out, &report.output)?;
            writeln!(out, "DReLUs: {}", report.drelus)?;
            for (name, p) in [
                ("setup (once per session)", &report.setup),
                ("offline", &report.offline),
                ("online", &report.online),
            ] {
                print_phase(&mut out, name, p.seconds, p.cpu_seconds, &p.comm)?;
                let k = &p.cpu_by_kind;
                if p.cpu_seconds > 0.0 {
                    writeln!(
                        out,
                        "  CPU s by kind: linear {:.2} (+ {:.2} in worker threads), comparison {:.2}, selection {:.2}, pooling {:.2}, prg {:.2}, other {:.2}",
                        k.linear,
                        p.cpu_workers,
                        k.comparison,
                        k.selection,
                        k.pooling,
                        k.prg,
                        k.other
                    )?;
                }
            }
            print_traffic(&mut out, &report.offline.comm, &report.online.comm)
        }
        (name, _) => {
            let registry = ctx.registry()?;
            let backend = registry.backend(name)?;
            let options = backend_options(
                backend.as_ref(),
                &args.drelu,
                args.label_only,
                &args.options,
            )?;
            if name == "securenn" {
                let drelu = DreluMode::parse_cli(&args.drelu)?;
                crate::cmd::calibrate::guard(&model, drelu.choice(), args.strict)?;
            }
            let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            let r = simulate_with(backend.as_ref(), &model, &weights, &refs, &options)?;
            if args.json {
                return ctx.print_json(&BatchJson {
                    report: &r,
                    outputs: &r.outputs,
                });
            }
            let mut out = ctx.stdout();
            if r.batch > 1 {
                writeln!(out, "batch of {} images in one inference", r.batch)?;
            }
            for (j, o) in r.outputs.iter().enumerate() {
                if r.batch > 1 {
                    write!(out, "image {j}: ")?;
                }
                print_output(&mut out, o)?;
            }
            for (name, p) in [
                ("setup (once per session)", &r.setup),
                ("offline", &r.offline),
                ("online", &r.online),
            ] {
                print_phase(&mut out, name, p.seconds, p.cpu_seconds, &p.comm)?;
            }
            if let Some(e) = &r.expected
                && e.key_bytes > 0
            {
                writeln!(out, "keys held per inference: {} bytes", e.key_bytes)?;
            }
            print_traffic(&mut out, &r.offline.comm, &r.online.comm)
        }
    }
}

/// `simulate --json` of the runtime's harness: the report and every image's output.
#[derive(Serialize)]
struct BatchJson<'a> {
    #[serde(flatten)]
    report: &'a knapsec_runtime::SimReport,
    outputs: &'a [PartyOutput],
}

/// One inference of the images `xs` (a batch when more than one) by `backend`, with its three
/// parties in this process.
fn simulate_with(
    backend: &dyn knapsec_core::backend::SecureBackend,
    model: &SecureModel,
    weights: &ModelWeights,
    xs: &[&[f32]],
    options: &str,
) -> anyhow::Result<knapsec_runtime::SimReport> {
    knapsec_runtime::simulate_batch(backend, model, weights, xs, options, Some(TIMEOUT))
        .with_context(|| format!("backend {}", backend.name()))
}

fn print_output(out: &mut impl Write, output: &PartyOutput) -> anyhow::Result<()> {
    match output {
        PartyOutput::Logits(v) => {
            let best = v
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i);
            let shown: Vec<String> = v.iter().take(10).map(|x| format!("{x:.4}")).collect();
            writeln!(
                out,
                "logits ({}): [{}{}]",
                v.len(),
                shown.join(", "),
                if v.len() > 10 { ", …" } else { "" }
            )?;
            if let Some(b) = best {
                writeln!(out, "argmax: {b}")?;
            }
        }
        PartyOutput::Labels(l) if l.len() == 1 => writeln!(out, "label: {}", l[0])?,
        PartyOutput::Labels(l) => writeln!(out, "label map: {} pixels", l.len())?,
        PartyOutput::Nothing => writeln!(out, "(no output)")?,
    }
    Ok(())
}

/// One phase's figures: wall and CPU time, bytes, messages, rounds.
fn print_phase(
    out: &mut impl Write,
    name: &str,
    seconds: f64,
    cpu_seconds: f64,
    c: &CommReport,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "{name}: {seconds:.3} s ({cpu_seconds:.2} CPU s), {} bytes, {} messages, {} rounds",
        c.bytes, c.messages, c.rounds
    )?;
    Ok(())
}

/// The traffic of one inference (offline + online), then flushes `out`.
fn print_traffic(
    out: &mut impl Write,
    offline: &CommReport,
    online: &CommReport,
) -> anyhow::Result<()> {
    let mut c = offline.clone();
    c.merge(online);
    print_comm(out, "per-inference traffic (offline + online)", &c)?;
    out.flush()?;
    Ok(())
}

fn print_comm(out: &mut impl Write, title: &str, c: &CommReport) -> anyhow::Result<()> {
    writeln!(
        out,
        "{title}: {} bytes ({:.3} MB), {} messages",
        c.bytes,
        c.bytes as f64 / 1e6,
        c.messages
    )?;
    writeln!(out, "  per pair:")?;
    for (k, v) in &c.pairs {
        writeln!(
            out,
            "    {k:<16} {:>14} bytes {:>6} messages",
            v.bytes, v.messages
        )?;
    }
    writeln!(out, "  per op:")?;
    for (k, v) in &c.ops {
        writeln!(
            out,
            "    {k:<16} {:>14} bytes {:>6} messages {:>4} rounds",
            v.bytes, v.messages, v.rounds
        )?;
    }
    writeln!(out, "  per layer:")?;
    for l in &c.layers {
        writeln!(
            out,
            "    {:<28} {:>14} bytes {:>4} rounds",
            l.layer, l.counts.bytes, l.counts.rounds
        )?;
    }
    Ok(())
}

/// Arguments of `knapsec bench secure`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    graph: crate::args::SecureBenchArgs,
    /// A block spec to use instead of a random one at the budget.
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// Seed of the random spec, weights and input.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Images in the inference (random, seeded): every round carries all of them; the
    /// figures are the batch's, `seconds_per_image` divides offline + online by it.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    batch: u32,
    /// Accepted for symmetry with the other benches: the output is always JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct LayerRow {
    layer: String,
    bytes: u64,
    rounds: u64,
}

#[derive(Serialize)]
struct SecureBench {
    bench: &'static str,
    /// Images in the inference; every figure below is the batch's.
    batch: usize,
    /// Offline + online seconds divided by `batch`.
    seconds_per_image: f64,
    backend: String,
    /// The backend's canonical options.
    options: String,
    arch: String,
    variant: Option<String>,
    budget: f64,
    /// securenn's DReLU mode (`None` for another backend: see `options`).
    drelu: Option<DreluMode>,
    /// DReLUs the network evaluates (block ReLUs, ReLU6, max-pooling tournaments).
    drelus: u64,
    /// Offline + online bytes of one inference (the once-per-session setup not included).
    bytes_total: u64,
    /// Bytes of the `drelu` op per DReLU (securenn: `3(k−1) + 8`, plus `16` for the masked
    /// opening of a 1×1 patch, counted under `select-open`).
    bytes_per_drelu: f64,
    bytes_offline: u64,
    bytes_online: u64,
    /// Bytes of correlated-randomness keys the parties hold per inference (the backend's
    /// closed form; 0 for none).
    key_bytes: u64,
    /// The backend's closed form of `bytes_total` (`null` if it states none).
    closed_form_bytes: Option<u64>,
    setup_bytes: u64,
    /// Causal rounds of the online phase.
    rounds_online: u64,
    /// Same as `rounds_online` (kept for older readers).
    rounds: u64,
    rounds_offline: u64,
    offline_seconds: f64,
    online_seconds: f64,
    setup_seconds: f64,
    /// Process CPU seconds of the phases (all three parties together).
    offline_cpu_seconds: f64,
    online_cpu_seconds: f64,
    /// CPU seconds of the phases by op kind, as the backend reports them (securenn: the
    /// three party threads' linear, comparison, selection, pooling, prg, other) and the
    /// worker threads' (`workers`: the rayon pool, i.e. the products of the linear layers
    /// and parallel ring operations).
    offline_cpu: CpuBreakdown,
    online_cpu: CpuBreakdown,
    threads: usize,
    ops: std::collections::BTreeMap<String, knapsec_net::Counts>,
    layers: Vec<LayerRow>,
}

#[derive(Serialize)]
struct CpuBreakdown {
    #[serde(flatten)]
    kinds: std::collections::BTreeMap<String, f64>,
    workers: f64,
}

impl CpuBreakdown {
    fn of(p: &knapsec_runtime::PhaseReport) -> Self {
        CpuBreakdown {
            kinds: p.cpu_by_kind.clone(),
            workers: p.cpu_workers,
        }
    }
}

pub(crate) fn parse_budget(text: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| anyhow::anyhow!("cannot parse budget {text:?}: expected e.g. 6% or 0.06"))?;
    if !(v > 0.0 && v <= 1.0) {
        bail!("budget {text:?} must be in (0, 100%]");
    }
    Ok(v)
}

pub fn bench(ctx: &Context, args: BenchArgs) -> anyhow::Result<()> {
    let budget = parse_budget(&args.graph.budget)?;
    let backend = ctx.registry()?.backend(&args.graph.backend)?;
    let options = backend_options(
        backend.as_ref(),
        &args.graph.drelu,
        false,
        &args.graph.options,
    )?;
    let drelu = (backend.name() == "securenn")
        .then(|| DreluMode::parse_cli(&args.graph.drelu))
        .transpose()?;
    let (model, weights) = bench_model(
        ctx,
        &args.graph.arch,
        args.graph.variant.clone(),
        args.spec.as_deref(),
        budget,
        args.seed,
    )?;
    let [c, h, w] = model.input_shape();
    let xs: Vec<Vec<f32>> = (0..args.batch)
        .map(|j| {
            (0..c * h * w)
                .map(|i| (i as f32 * 0.7311 + args.seed as f32 + j as f32 * 0.37).sin())
                .collect()
        })
        .collect();
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let drelus = knapsec_securenn::Plan::new(&model, Options::default())?.drelus();
    let r = simulate_with(backend.as_ref(), &model, &weights, &refs, &options)?;
    let mut comm = r.offline.comm.clone();
    comm.merge(&r.online.comm);
    let drelu_bytes = comm.op("drelu").bytes;
    let expected = r.expected.clone();
    ctx.print_json(&SecureBench {
        bench: "secure",
        batch: r.batch,
        seconds_per_image: (r.offline.seconds + r.online.seconds) / r.batch as f64,
        backend: r.backend.clone(),
        options,
        arch: args.graph.arch.clone(),
        variant: args.graph.variant.clone(),
        budget,
        drelu,
        drelus,
        bytes_total: comm.bytes,
        bytes_per_drelu: drelu_bytes as f64 / drelus.max(1) as f64,
        bytes_offline: r.offline.comm.bytes,
        bytes_online: r.online.comm.bytes,
        key_bytes: expected.as_ref().map_or(0, |e| e.key_bytes),
        closed_form_bytes: expected.as_ref().map(|e| e.inference_bytes),
        setup_bytes: r.setup.comm.bytes,
        rounds_online: r.online.comm.rounds,
        rounds: r.online.comm.rounds,
        rounds_offline: r.offline.comm.rounds,
        offline_seconds: r.offline.seconds,
        online_seconds: r.online.seconds,
        setup_seconds: r.setup.seconds,
        offline_cpu_seconds: r.offline.cpu_seconds,
        online_cpu_seconds: r.online.cpu_seconds,
        offline_cpu: CpuBreakdown::of(&r.offline),
        online_cpu: CpuBreakdown::of(&r.online),
        threads: rayon_threads(),
        ops: comm.ops.clone(),
        layers: comm
            .layers
            .iter()
            .map(|l| LayerRow {
                layer: l.layer.clone(),
                bytes: l.counts.bytes,
                rounds: l.counts.rounds,
            })
            .collect(),
    })
}

/// The secure graph of the registered architecture `arch` (with `variant`) at `spec`, or at a
/// random spec within `budget` (seeded), from the adapter without libtorch.
pub(crate) fn bench_model(
    ctx: &Context,
    arch: &str,
    variant: Option<String>,
    spec: Option<&std::path::Path>,
    budget: f64,
    seed: u64,
) -> anyhow::Result<(SecureModel, ModelWeights)> {
    let registry = ctx.registry()?;
    let adapter = registry.arch(arch)?;
    let arch_options = knapsec_core::ArchOptions {
        variant,
        ..Default::default()
    };
    let table = adapter.layer_table(&arch_options)?;
    let spec = match spec {
        Some(path) => BlockSpec::load(path, Some(arch))?,
        None => {
            let shapes: Vec<_> = table
                .layers
                .iter()
                .map(|l| [l.channels, l.height, l.width])
                .collect();
            let blocks = nets::random_spec(&shapes, budget, seed);
            BlockSpec {
                format: knapsec_core::spec::SPEC_FORMAT,
                arch: table.arch.clone(),
                layers: table
                    .layers
                    .iter()
                    .map(|l| l.name.clone())
                    .zip(blocks)
                    .collect(),
            }
        }
    };
    let model = adapter
        .secure_graph(&arch_options, Some(&spec), 12)?
        .with_context(|| {
            format!("architecture {arch:?} cannot build its secure graph without libtorch")
        })?;
    let weights = random_weights(&model, seed);
    Ok((model, weights))
}

/// The options text of `backend` for the common flags: securenn's from `--drelu` (and
/// `label_only`); another backend's `--options`, with `--drelu` left at `exact`.
pub(crate) fn backend_options(
    backend: &dyn knapsec_core::SecureBackend,
    drelu: &str,
    label_only: bool,
    options: &str,
) -> anyhow::Result<String> {
    let base = if backend.name() == "securenn" {
        if !options.trim().is_empty() {
            bail!("securenn takes its options from --drelu and --label-only, not --options");
        }
        Options {
            drelu: DreluMode::parse_cli(drelu)?,
            reveal: Reveal::Logits,
        }
        .canonical()
    } else {
        if drelu != "exact" {
            bail!(
                "--drelu is securenn's; give backend {:?} its DReLU through --options",
                backend.name()
            );
        }
        backend.canonical_options(options)?
    };
    if !label_only {
        return Ok(base);
    }
    backend
        .label_only_options(&base)?
        .with_context(|| format!("backend {:?} cannot reveal labels only", backend.name()))
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
