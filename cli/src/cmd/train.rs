//! `knapsec train`, `knapsec finetune` and `knapsec eval` (issue 8 §2; digest §7): training a
//! baseline, fine-tuning it with a block spec's block ReLUs in place, and top-1 evaluation.
//! All three print a JSON summary with `--json` (and write it with `--report FILE`).

use crate::args::ArchOptionArgs;
use crate::context::Context;
use anyhow::{Context as _, bail};
use knapsec_core::BlockSpec;
use knapsec_nn::Network;
use knapsec_nn::data::{DataSpec, ImageSet, Split};
use knapsec_nn::train::{EpochStats, EvalStats, Schedule, TrainConfig, evaluate, train};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to train on and for how long.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Architecture (see `knapsec arch list`).
    #[arg(long)]
    pub arch: String,
    #[command(flatten)]
    pub options: ArchOptionArgs,
    /// Data set: fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, cifar100:DIR, folder:DIR.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    /// Use only the first N training images (all if absent).
    #[arg(long, value_name = "N")]
    pub train_subset: Option<usize>,
    /// Evaluate on the first N test images after every epoch (0: never).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub eval_subset: usize,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Learning-rate schedule: `cosine`, `constant`, or `step:EVERY:GAMMA` (epochs, factor).
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// Linear warm-up, in epochs.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Random horizontal flips of training images.
    #[arg(long)]
    pub flip: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint folder: written after every epoch; a run on a folder with a checkpoint
    /// resumes it.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
    /// Output weights (.safetensors, PyTorch state_dict names).
    #[arg(short, long, value_name = "W.safetensors")]
    pub output: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON summary to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct FinetuneArgs {
    /// Block spec (.ron, .json or reference .pickle) whose block ReLUs are put in place.
    #[arg(long)]
    pub spec: PathBuf,
    /// Weights to start from (the baseline; for `onnx:PATH` the file's initializers when
    /// left out).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Architecture (with --weights: the floating-point network).
    #[arg(long, required_unless_present = "model")]
    pub arch: Option<String>,
    #[command(flatten)]
    pub options: ArchOptionArgs,
    /// Weights (required with --arch, except for `onnx:PATH`, whose initializers are the
    /// weights unless this replaces them).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: Option<PathBuf>,
    /// Evaluate this secure model's fixed-point network in the clear instead, under each
    /// DReLU mode of --drelu side by side (the plain oracle emulates approximate windows bit
    /// for bit); with --arch and --weights, also against the floating-point network's labels.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// A DReLU mode compared with --model (repeat the flag for several): `exact`,
    /// `approx:K,T`, `calibrated` (default: exact, and calibrated when the model has windows).
    #[arg(long, value_name = "MODE")]
    pub drelu: Vec<String>,
    /// With --model: also run this many images through secure inference (securenn, the
    /// three parties in this process) in every mode.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub secure: usize,
    /// With --model: seed of the plain oracle's stand-in masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// With --model: refuse a DReLU mode whose window the model's calibration data show to be
    /// too narrow for a site (without it: a warning).
    #[arg(long)]
    pub strict: bool,
    /// Evaluate with this block spec's block ReLUs in place.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Data set: as `train`, or images with label maps for mIoU (segmentation networks):
    /// `seg:DIR` or `ade20k:DIR` (`DIR/images/validation/*.jpg`, `DIR/annotations/validation/*.png`).
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    /// Use only the first N test images.
    #[arg(long, value_name = "N")]
    pub subset: Option<usize>,
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

/// JSON summary of `train` / `finetune`.
#[derive(Debug, Serialize)]
struct TrainSummary<'a> {
    arch: &'a str,
    data: &'a str,
    spec: Option<String>,
    epochs: &'a [EpochStats],
    seconds: f64,
    weights: String,
}

/// JSON summary of `eval`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct EvalSummary {
    pub arch: String,
    pub data: String,
    pub spec: Option<String>,
    pub count: usize,
    /// Top-1 accuracy (classification) or pixel accuracy (segmentation).
    pub accuracy: f64,
    /// Mean cross-entropy (classification only; 0 for segmentation).
    pub loss: f64,
    /// DReLUs of the evaluated network (with the spec, if any).
    pub drelus: u64,
    /// Mean IoU over the classes present (segmentation data sets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miou: Option<f64>,
}

fn parse_schedule(text: &str) -> anyhow::Result<Schedule> {
    match text {
        "cosine" => Ok(Schedule::Cosine),
        "constant" => Ok(Schedule::Constant),
        _ => {
            let parts: Vec<&str> = text.split(':').collect();
            match parts.as_slice() {
                ["step", every, gamma] => Ok(Schedule::Step {
                    every: every
                        .parse()
                        .with_context(|| format!("schedule {text:?}: bad EVERY"))?,
                    gamma: gamma
                        .parse()
                        .with_context(|| format!("schedule {text:?}: bad GAMMA"))?,
                }),
                _ => bail!(
                    "unknown schedule {text:?} (expected cosine, constant or step:EVERY:GAMMA)"
                ),
            }
        }
    }
}

/// Loads a split of `data`, shaped for `network` (28×28 images are padded when the network
/// wants 32×32), keeping the first `limit` images.
pub fn load_for(
    network: &Network,
    data: &str,
    split: Split,
    limit: Option<usize>,
) -> anyhow::Result<ImageSet> {
    let spec: DataSpec = data.parse()?;
    let mut set = spec
        .load(split)
        .with_context(|| format!("cannot load data set {data:?}"))?;
    if let Some(n) = limit {
        set = set.take(n);
    }
    let [c, h, w] = network.net.input_shape();
    let (sc, sh, sw) = set.shape;
    if sc as i64 != c {
        bail!(
            "data set {data:?} has {sc}-channel images, architecture {} wants {c} (set --input-channels)",
            network.net.arch()
        );
    }
    if (sh as i64, sw as i64) != (h, w) {
        if (sh as i64) < h && (sw as i64) < w {
            set = set.pad_to(h as usize, w as usize)?;
        } else {
            bail!(
                "data set {data:?} has {sh}x{sw} images, architecture {} wants {h}x{w} (set --input-size)",
                network.net.arch()
            );
        }
    }
    if set.classes as i64 > network.net.options().classes.map_or(i64::MAX, i64::from) {
        bail!(
            "data set {data:?} has {} classes, the network only {:?} (set --classes)",
            set.classes,
            network.net.options().classes
        );
    }
    Ok(set)
}

/// Builds `arch` with random (seeded) weights on the CPU, after checking it is registered.
pub fn build_network(
    ctx: &Context,
    arch: &str,
    options: &ArchOptionArgs,
    seed: u64,
) -> anyhow::Result<Network> {
    ctx.registry()?.arch(arch)?;
    let options = options.to_options()?;
    knapsec_nn::tch::manual_seed(seed as i64);
    Ok(Network::build(
        arch,
        &options,
        knapsec_nn::tch::Device::Cpu,
    )?)
}

/// Loads `weights` into `network`; without them, keeps the weights an imported network
/// carries (an `onnx:PATH` file's initializers), and refuses any other architecture.
pub(crate) fn load_weights_or_own(
    ctx: &Context,
    network: &mut Network,
    arch: &str,
    weights: Option<&Path>,
    command: &str,
) -> anyhow::Result<()> {
    match weights {
        Some(w) => network.load_weights(w)?,
        None if ctx.registry()?.arch(arch)?.own_weights() => {}
        None => bail!(
            "{command} of {arch} needs --weights (only an imported network whose file holds its \
             weights, such as onnx:PATH with its initializers inside, carries its own)"
        ),
    }
    Ok(())
}

fn load_spec(network: &mut Network, path: &Path) -> anyhow::Result<BlockSpec> {
    let spec = BlockSpec::load(path, Some(network.net.arch()))?;
    let table = network.net.slots().layer_table()?;
    spec.validate_layers(&table)
        .with_context(|| format!("{} does not fit {}", path.display(), network.net.arch()))?;
    network.net.apply_spec(&spec)?;
    Ok(spec)
}

fn run_training(
    ctx: &Context,
    mut network: Network,
    a: &TrainArgs,
    spec: Option<&Path>,
) -> anyhow::Result<()> {
    let config = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        nesterov: true,
        schedule: parse_schedule(&a.schedule)?,
        warmup_epochs: a.warmup,
        seed: a.seed,
        flip: a.flip,
    };
    let train_set = load_for(&network, &a.data, Split::Train, a.train_subset)?;
    let eval_set = if a.eval_subset > 0 {
        Some(load_for(
            &network,
            &a.data,
            Split::Test,
            Some(a.eval_subset),
        )?)
    } else {
        None
    };
    let t0 = Instant::now();
    let history = train(
        &mut network,
        &train_set,
        eval_set.as_ref(),
        &config,
        a.checkpoint.as_deref(),
    )?;
    network.save_weights(&a.output)?;
    let summary = TrainSummary {
        arch: &a.arch,
        data: &a.data,
        spec: spec.map(|p| p.display().to_string()),
        epochs: &history,
        seconds: t0.elapsed().as_secs_f64(),
        weights: a.output.display().to_string(),
    };
    emit(ctx, &summary, a.json, a.report.as_deref(), || {
        let last = history.last();
        format!(
            "wrote {} after {} epochs ({:.0} s): train accuracy {:.2}%{}",
            a.output.display(),
            history.len(),
            summary.seconds,
            100.0 * last.map_or(0.0, |s| s.train_accuracy),
            last.and_then(|s| s.eval_accuracy)
                .map(|e| format!(", test accuracy {:.2}%", 100.0 * e))
                .unwrap_or_default()
        )
    })
}

pub fn run_train(a: TrainArgs, ctx: &Context) -> anyhow::Result<()> {
    run_train_in(ctx, a)
}

/// `knapsec train` with arguments built in code (the pipeline).
pub fn run_train_in(ctx: &Context, a: TrainArgs) -> anyhow::Result<()> {
    let network = build_network(ctx, &a.arch, &a.options, a.seed)?;
    run_training(ctx, network, &a, None)
}

pub fn run_finetune(a: FinetuneArgs, ctx: &Context) -> anyhow::Result<()> {
    run_finetune_in(ctx, a.train, a.weights.as_deref(), &a.spec)
}

/// `knapsec finetune` with arguments built in code (the pipeline).
pub fn run_finetune_in(
    ctx: &Context,
    a: TrainArgs,
    weights: Option<&Path>,
    spec: &Path,
) -> anyhow::Result<()> {
    let mut network = build_network(ctx, &a.arch, &a.options, a.seed)?;
    load_weights_or_own(ctx, &mut network, &a.arch, weights, "fine-tuning")?;
    load_spec(&mut network, spec)?;
    run_training(ctx, network, &a, Some(spec))
}

/// Writes the first `count` test images of the pipeline's data set, preprocessed as the
/// network sees them, as `.npy` files (`f32 [C, H, W]`) in `dir`; returns their paths and
/// true labels.
pub fn write_test_inputs(
    ctx: &Context,
    config: &crate::pipeline::config::PipelineConfig,
    dir: &Path,
    count: usize,
) -> anyhow::Result<Vec<(PathBuf, i64)>> {
    ctx.registry()?.arch(&config.arch)?;
    let network = Network::build(&config.arch, &config.options, knapsec_nn::tch::Device::Cpu)?;
    let set = load_for(&network, &config.data, Split::Test, Some(count))?;
    let (images, _) = set.to_tensors(knapsec_nn::tch::Device::Cpu)?;
    let [c, h, w] = network.net.input_shape();
    let mut out = Vec::with_capacity(set.len());
    for i in 0..set.len() {
        let data = Vec::<f32>::try_from(images.get(i as i64).reshape([-1]))?;
        let path = dir.join(format!("image{i}.npy"));
        knapsec_core::fsutil::write_atomic(
            &path,
            &npy_f32(&data, &[c as usize, h as usize, w as usize]),
        )?;
        out.push((path, set.labels[i]));
    }
    Ok(out)
}

/// A little-endian `f32` array in NumPy's `.npy` format (version 1.0).
pub fn npy_f32(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// Evaluates weights (and optionally a spec) on the test split.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_weights(
    ctx: &Context,
    arch: &str,
    options: &ArchOptionArgs,
    weights: Option<&Path>,
    spec: Option<&Path>,
    data: &str,
    subset: Option<usize>,
    batch: usize,
) -> anyhow::Result<EvalSummary> {
    let mut network = build_network(ctx, arch, options, 0)?;
    load_weights_or_own(ctx, &mut network, arch, weights, "evaluation")?;
    let table = network.net.slots().layer_table()?;
    let drelus = match spec {
        Some(p) => load_spec(&mut network, p)?.drelus(&table),
        None => table.drelus(),
    };
    let spec_data: DataSpec = data.parse()?;
    if spec_data.is_segmentation() {
        let [_, h, w] = network.net.input_shape();
        let set = spec_data
            .load_segmentation(Split::Test, h as u32, w as u32, subset)
            .with_context(|| format!("cannot load data set {data:?}"))?;
        let stats = knapsec_nn::train::evaluate_segmentation(&network, &set, batch)?;
        return Ok(EvalSummary {
            arch: arch.to_string(),
            data: data.to_string(),
            spec: spec.map(|p| p.display().to_string()),
            count: stats.count,
            accuracy: stats.pixel_accuracy,
            loss: 0.0,
            drelus,
            miou: Some(stats.miou),
        });
    }
    let set = load_for(&network, data, Split::Test, subset)?;
    let EvalStats {
        count,
        accuracy,
        loss,
        ..
    } = evaluate(&network, &set, batch)?;
    Ok(EvalSummary {
        arch: arch.to_string(),
        data: data.to_string(),
        spec: spec.map(|p| p.display().to_string()),
        count,
        accuracy,
        loss,
        drelus,
        miou: None,
    })
}

/// Labels of the floating-point network on `samples` (argmax of the logits).
pub fn reference_labels(
    ctx: &Context,
    arch: &str,
    options: &ArchOptionArgs,
    weights: Option<&Path>,
    samples: &[crate::cmd::calibrate::Sample],
) -> anyhow::Result<Vec<usize>> {
    let mut network = build_network(ctx, arch, options, 0)?;
    load_weights_or_own(ctx, &mut network, arch, weights, "evaluation")?;
    let [c, h, w] = network.net.input_shape();
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(32) {
        let flat: Vec<f32> = chunk
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .collect();
        if flat.len() as i64 != chunk.len() as i64 * c * h * w {
            bail!("the images do not have the network's input shape {c}x{h}x{w}");
        }
        let x = knapsec_nn::tch::Tensor::from_slice(&flat).reshape([chunk.len() as i64, c, h, w]);
        let logits = knapsec_nn::tch::no_grad(|| network.net.forward_t(&x, false))?;
        let top = Vec::<i64>::try_from(logits.reshape([chunk.len() as i64, -1]).argmax(1, false))?;
        out.extend(top.into_iter().map(|v| v as usize));
    }
    Ok(out)
}

fn run_eval_model(a: &EvalArgs, dir: &Path, ctx: &Context) -> anyhow::Result<()> {
    use crate::cmd::calibrate::{Part, eval_model, load_images, print_model_eval};
    use knapsec_core::drelu::DreluChoice;
    let model = knapsec_core::graph::SecureModel::load(dir)?;
    let modes: Vec<DreluChoice> = if !a.drelu.is_empty() {
        a.drelu
            .iter()
            .map(|m| DreluChoice::parse(m))
            .collect::<Result<_, _>>()?
    } else if model.calibration.is_some() {
        vec![DreluChoice::Exact, DreluChoice::Calibrated]
    } else {
        vec![DreluChoice::Exact]
    };
    let limit = a.subset.unwrap_or(usize::MAX);
    let reference = match (&a.arch, &a.weights) {
        (Some(arch), w) => {
            let samples = load_images(
                &a.data,
                Part::Test,
                model.input_shape(),
                model.output_shape()[0] as usize,
                limit,
            )?;
            Some(reference_labels(
                ctx,
                arch,
                &a.options,
                w.as_deref(),
                &samples,
            )?)
        }
        (None, None) => None,
        (None, Some(_)) => bail!("--weights needs --arch"),
    };
    let s = eval_model(
        dir,
        &a.data,
        Part::Test,
        limit,
        &modes,
        a.seed,
        reference.as_deref(),
        a.secure,
        a.strict,
    )?;
    emit(ctx, &s, a.json, a.report.as_deref(), || {
        let mut buf = Vec::new();
        let _ = print_model_eval(&mut buf, &s);
        String::from_utf8_lossy(&buf).trim_end().to_string()
    })
}

pub fn run_eval(a: EvalArgs, ctx: &Context) -> anyhow::Result<()> {
    if let Some(dir) = a.model.clone() {
        return run_eval_model(&a, &dir, ctx);
    }
    let Some(arch) = &a.arch else {
        bail!("--arch (with --weights) is needed, or --model");
    };
    let s = evaluate_weights(
        ctx,
        arch,
        &a.options,
        a.weights.as_deref(),
        a.spec.as_deref(),
        &a.data,
        a.subset,
        a.batch,
    )?;
    emit(ctx, &s, a.json, a.report.as_deref(), || match s.miou {
        Some(miou) => format!(
            "mIoU {:.2}% on {} images ({} DReLUs), pixel accuracy {:.2}%",
            100.0 * miou,
            s.count,
            s.drelus,
            100.0 * s.accuracy
        ),
        None => format!(
            "top-1 accuracy {:.2}% on {} images ({} DReLUs), mean loss {:.4}",
            100.0 * s.accuracy,
            s.count,
            s.drelus,
            s.loss
        ),
    })
}

/// Prints `value` as JSON (with `json`) or the human line, and writes the JSON to `report`.
fn emit<T: Serialize>(
    ctx: &Context,
    value: &T,
    json: bool,
    report: Option<&Path>,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    if let Some(path) = report {
        knapsec_core::fsutil::write_atomic(path, text.as_bytes())?;
    }
    let mut out = ctx.stdout();
    writeln!(out, "{}", if json { text } else { human() })?;
    out.flush()?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub arch: String,
    #[command(flatten)]
    pub options: ArchOptionArgs,
    /// Trained weights (required, except for `onnx:PATH`, whose initializers are the weights
    /// unless this replaces them).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: Option<PathBuf>,
    /// Block spec baked into the secure model (plain ReLUs everywhere without it).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Fractional bits of the fixed-point encoding.
    #[arg(long, default_value_t = knapsec_nn::DEFAULT_FRAC_BITS)]
    pub frac_bits: u32,
    /// Output folder: `model.ron` (public part) and `weights.safetensors` (server only).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Calibrate the approximate-DReLU windows on these sample images right away (as
    /// `knapsec calibrate --data`).
    #[arg(long, value_name = "SPEC")]
    pub calibrate: Option<String>,
    /// With --calibrate: how the windows are chosen (as for `knapsec calibrate`).
    #[command(flatten, next_help_heading = "With --calibrate")]
    pub window: crate::cmd::calibrate::WindowArgs,
}

/// `knapsec export`: a trained network (with its block spec) as a secure model (DESIGN §3):
/// BatchNorm folded, fixed-point weights.
pub fn run_export(a: ExportArgs, ctx: &Context) -> anyhow::Result<()> {
    let mut network = build_network(ctx, &a.arch, &a.options, 0)?;
    load_weights_or_own(ctx, &mut network, &a.arch, a.weights.as_deref(), "export")?;
    if let Some(spec) = &a.spec {
        load_spec(&mut network, spec)?;
    }
    let (model, weights) = network.export(a.frac_bits)?;
    model.validate()?;
    weights.check_against(&model)?;
    weights.save(&a.output)?;
    model.save(&a.output)?;
    let mut out = ctx.stdout();
    writeln!(
        out,
        "wrote {}: {} nodes, {} DReLUs ({} in ReLU layers), public hash {}",
        a.output.display(),
        model.nodes.len(),
        model.all_drelus(),
        model.drelus(),
        &model.public_hash()[..16]
    )?;
    if let Some(data) = &a.calibrate {
        let s = a.window.calibrate(&a.output, None, data)?;
        for w in &s.warnings {
            eprintln!("warning: {w}");
        }
        crate::cmd::calibrate::print_table(&mut out, &s)?;
    }
    out.flush()?;
    Ok(())
}
