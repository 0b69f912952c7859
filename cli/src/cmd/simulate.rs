//! `knapsec simulate`: one secure inference with all three parties in this process (threads
//! over the metered in-memory transport), printing the output and a communication report;
//! and `knapsec bench secure`: the bytes, rounds and seconds of one inference of a ResNet at
//! a DReLU budget, with a random block spec and random weights (DESIGN §5, digest §6.13).

use crate::context::Context;
use anyhow::{Context as _, bail};
use knapsec_core::BlockSpec;
use knapsec_core::backend::PartyOutput;
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::graph_build::random_weights;
use knapsec_net::CommReport;
use knapsec_securenn::{DreluMode, Options, Reveal, SimReport, nets, simulate};
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
    /// The client's image: a `.npy` array of `C·H·W` float32/float64 values.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// The backend: `securenn` (phases timed and metered apart), `plain` (cleartext oracle),
    /// or any other registered backend.
    #[arg(long, default_value = "securenn")]
    backend: String,
    /// DReLU of the securenn backend: `exact`, `approx:BITS[,LSB_IGNORED]` (every site), or
    /// `calibrated` (each site's window from `knapsec calibrate`).
    #[arg(long, default_value = "exact")]
    drelu: String,
    /// Reveal only the label (map) to the client, by a secure argmax.
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

#[derive(Serialize)]
struct GenericReport<'a> {
    backend: &'a str,
    output: &'a PartyOutput,
    seconds: f64,
    comm: &'a CommReport,
}

pub fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let (model, weights) = load(&args.model)?;
    let x = crate::cmd::party::read_npy(&args.input)?;
    check_input(&model, &x, &args.input)?;
    match args.backend.as_str() {
        "securenn" => {
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
                &x,
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
                writeln!(
                    out,
                    "{name}: {:.3} s ({:.2} CPU s), {} bytes, {} messages, {} rounds",
                    p.seconds, p.cpu_seconds, p.comm.bytes, p.comm.messages, p.comm.rounds
                )?;
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
            print_comm(&mut out, "per-inference traffic (offline + online)", &{
                let mut c = report.offline.comm.clone();
                c.merge(&report.online.comm);
                c
            })?;
            out.flush()?;
            Ok(())
        }
        name => {
            let registry = ctx.registry()?;
            let backend = registry.backend(name)?;
            let options = if name == "securenn" {
                String::new()
            } else {
                args.options.clone()
            };
            let (output, comm, seconds) = knapsec_securenn::sim::run_backend(
                backend.as_ref(),
                &model,
                &weights,
                &x,
                &options,
                Some(TIMEOUT),
            )
            .with_context(|| format!("backend {name}"))?;
            if args.json {
                return ctx.print_json(&GenericReport {
                    backend: name,
                    output: &output,
                    seconds,
                    comm: &comm,
                });
            }
            let mut out = ctx.stdout();
            print_output(&mut out, &output)?;
            writeln!(
                out,
                "{seconds:.3} s, {} bytes, {} messages, {} rounds",
                comm.bytes, comm.messages, comm.rounds
            )?;
            print_comm(&mut out, "traffic", &comm)?;
            out.flush()?;
            Ok(())
        }
    }
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
    /// `resnet18-cifar` or `resnet50-imagenet`.
    #[arg(long, default_value = "resnet18-cifar")]
    arch: String,
    /// Architecture variant (e.g. `avgpool-stem` for resnet50-imagenet, the reference's secure
    /// flows; its default stem uses max pooling).
    #[arg(long)]
    variant: Option<String>,
    /// DReLU budget: a percentage (`6%`) or a fraction (`0.06`) of the all-ReLU count.
    #[arg(long, default_value = "6%")]
    budget: String,
    /// DReLU: `exact` or `approx:BITS[,LSB_IGNORED]`.
    #[arg(long, default_value = "exact")]
    drelu: String,
    /// A block spec to use instead of a random one at the budget.
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// Seed of the random spec, weights and input.
    #[arg(long, default_value_t = 1)]
    seed: u64,
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
    arch: String,
    variant: Option<String>,
    budget: f64,
    drelu: DreluMode,
    drelus: u64,
    /// Offline + online bytes of one inference (the once-per-session setup not included).
    bytes_total: u64,
    /// Bytes of the DReLU part (`drelu` op) per DReLU: `3(k−1) + 8`, plus `16` for the masked
    /// opening of a 1×1 patch, counted under `select-open`.
    bytes_per_drelu: f64,
    bytes_offline: u64,
    bytes_online: u64,
    closed_form_bytes: u64,
    setup_bytes: u64,
    rounds: u64,
    offline_seconds: f64,
    online_seconds: f64,
    setup_seconds: f64,
    /// Process CPU seconds of the phases (all three parties together).
    offline_cpu_seconds: f64,
    online_cpu_seconds: f64,
    /// CPU seconds of the phases by op kind: the three party threads' (linear, comparison,
    /// selection, pooling, prg, other) and the worker threads' (`workers`: the rayon pool,
    /// i.e. the products of the linear layers and parallel ring operations).
    offline_cpu: CpuBreakdown,
    online_cpu: CpuBreakdown,
    threads: usize,
    ops: std::collections::BTreeMap<String, knapsec_net::Counts>,
    layers: Vec<LayerRow>,
}

#[derive(Serialize)]
struct CpuBreakdown {
    #[serde(flatten)]
    kinds: knapsec_securenn::profile::CpuByKind,
    workers: f64,
}

impl CpuBreakdown {
    fn of(p: &knapsec_securenn::sim::PhaseReport) -> Self {
        CpuBreakdown {
            kinds: p.cpu_by_kind,
            workers: p.cpu_workers,
        }
    }
}

fn parse_budget(text: &str) -> anyhow::Result<f64> {
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
    let budget = parse_budget(&args.budget)?;
    let drelu = DreluMode::parse_cli(&args.drelu)?;
    let arch_options = knapsec_core::ArchOptions {
        variant: args.variant.clone(),
        ..Default::default()
    };
    let plan =
        knapsec_arch_resnet::ResNetPlan::new(&args.arch, &arch_options).with_context(|| {
            format!(
                "architecture {:?} (bench secure knows resnet18-cifar and resnet50-imagenet)",
                args.arch
            )
        })?;
    let table = plan.layer_table()?;
    let spec = match &args.spec {
        Some(path) => BlockSpec::load(path, Some(&args.arch))?,
        None => {
            let shapes: Vec<_> = table
                .layers
                .iter()
                .map(|l| [l.channels, l.height, l.width])
                .collect();
            let blocks = nets::random_spec(&shapes, budget, args.seed);
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
    let (model, _) = plan.secure_graph(Some(&spec), 12)?;
    let weights = random_weights(&model, args.seed);
    let [c, h, w] = model.input_shape();
    let x: Vec<f32> = (0..c * h * w)
        .map(|i| (i as f32 * 0.7311 + args.seed as f32).sin())
        .collect();
    let r: SimReport = simulate(
        &model,
        &weights,
        &x,
        Options {
            drelu,
            reveal: Reveal::Logits,
        },
        Some(TIMEOUT),
    )?;
    let mut comm = r.offline.comm.clone();
    comm.merge(&r.online.comm);
    let drelu_bytes = comm.op("drelu").bytes;
    ctx.print_json(&SecureBench {
        bench: "secure",
        arch: args.arch.clone(),
        variant: args.variant.clone(),
        budget,
        drelu,
        drelus: r.drelus,
        bytes_total: comm.bytes,
        bytes_per_drelu: drelu_bytes as f64 / r.drelus.max(1) as f64,
        bytes_offline: r.offline.comm.bytes,
        bytes_online: r.online.comm.bytes,
        closed_form_bytes: r.closed_form_bytes,
        setup_bytes: r.setup.comm.bytes,
        rounds: r.online.comm.rounds,
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

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
