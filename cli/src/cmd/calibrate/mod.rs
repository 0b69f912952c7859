//! `knapsec calibrate` (DESIGN §5, digest §6.12): chooses the approximate-DReLU window of every
//! DReLU site of a secure model from data, and writes it into the model's public part.
//!
//! The fixed-point network runs in the clear (`knapsec-plain`) on sample images; every
//! compared value of every site (patch sums of block ReLUs, `x` and `x − 6` of ReLU6, the
//! pairwise differences of max pooling) is recorded ([`knapsec_core::drelu::SiteStats`]), and
//! [`knapsec_core::drelu::choose_window`] picks per site the fewest compared bits `k` that
//! cover the largest magnitude times a safety margin, with the most ignored low bits `t` that
//! leave at most the target fraction of values in the band whose sign they decide. The
//! model's format becomes 2; its public hash, compared in the parties' handshake, covers the
//! windows.
//!
//! The sample loader [`load_images`] is shared with `knapsec eval --model` and the pipeline.
//! `eval` holds `knapsec eval --model` (exact, uniform and calibrated windows side by side).

// `knapsec eval --model` and the pipeline, the users of the evaluation half of this module, exist
// only in builds with the `torch` feature.
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use crate::context::Context;
use anyhow::{Context as _, bail};
use knapsec_core::drelu::{
    Calibration, CalibrationTarget, DreluWindow, SiteCalibration, SiteStats, choose_window,
};
use knapsec_core::graph::{MODEL_FORMAT, ModelWeights, SecureModel};
use knapsec_plain::{DreluEmulation, evaluate_with};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

mod eval;

// Their users (`knapsec eval --model`, the pipeline) exist only with the `torch` feature.
#[cfg_attr(not(feature = "torch"), allow(unused_imports))]
pub use eval::{eval_model, print_model_eval};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The secure-model folder (`model.ron` + `weights.safetensors`); `model.ron` is rewritten
    /// with the windows unless `--output` is given.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Sample images: a data set as for `knapsec train` (its training split), or
    /// `npy:PATH` (a `.npy` image of the model's input shape, or a folder of them).
    #[arg(long)]
    pub data: String,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Write the calibrated model to this folder instead (weights copied).
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// How the approximate-DReLU windows are chosen (`knapsec calibrate`, and `knapsec export
/// --calibrate`).
#[derive(Debug, Clone, clap::Args)]
pub struct WindowArgs {
    /// Number of sample images.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub samples: usize,
    /// Largest fraction of a site's compared values allowed in the band just below zero whose
    /// sign the ignored low bits decide.
    #[arg(long, value_name = "E", default_value_t = 1e-2)]
    pub target_error: f64,
    /// Safety margin: the window covers the largest observed magnitude times 2^B.
    #[arg(long, value_name = "B", default_value_t = 2)]
    pub margin_bits: u32,
    /// Cap on the window bits k of any site (a cap that makes a window too narrow is warned
    /// about; an error with --strict).
    #[arg(long, value_name = "K", default_value_t = 64)]
    pub max_bits: u32,
    /// Refuse (non-zero exit, nothing written) when a window is too narrow for the data.
    #[arg(long)]
    pub strict: bool,
}

impl WindowArgs {
    /// Calibrates the model in `dir` on `data` with these settings ([`calibrate`]).
    pub fn calibrate(
        &self,
        dir: &Path,
        output: Option<&Path>,
        data: &str,
    ) -> anyhow::Result<CalibrationSummary> {
        let target = CalibrationTarget {
            margin_bits: self.margin_bits,
            target_error: self.target_error,
            max_bits: self.max_bits,
        };
        calibrate(dir, output, data, self.samples, target, self.strict)
    }
}

/// One row of the per-site table.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SiteRow {
    pub node: u32,
    pub name: String,
    pub kind: String,
    pub drelus: u64,
    pub values: u64,
    /// Largest compared magnitude at the patch-mean scale, in real units.
    pub max_abs: f64,
    /// Compared values in the band the ignored bits decide.
    pub at_risk: u64,
    pub bits: u32,
    pub lsb_ignored: u32,
    /// Bytes of this site's comparisons (`(3(k−1) + 8)` per DReLU) and with the exact DReLU.
    pub compare_bytes: u64,
    pub compare_bytes_exact: u64,
}

/// What `calibrate` reports (also the pipeline's calibration record).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CalibrationSummary {
    pub model: String,
    pub data: String,
    pub samples: usize,
    pub margin_bits: u32,
    pub target_error: f64,
    pub sites: Vec<SiteRow>,
    /// Mean window bits k over the sites.
    pub mean_bits: f64,
    /// Mean window bits weighted by DReLUs.
    pub mean_bits_per_drelu: f64,
    /// Comparison bytes of one inference: exact and calibrated.
    pub compare_bytes_exact: u64,
    pub compare_bytes: u64,
    /// Closed-form bytes of one whole inference (offline + online), exact and calibrated.
    pub inference_bytes_exact: u64,
    pub inference_bytes: u64,
    pub warnings: Vec<String>,
    pub public_hash: String,
}

/// Bytes of one comparison with window `w` (digest §6.12; `select` module of securenn).
pub fn compare_bytes(w: DreluWindow) -> u64 {
    3 * u64::from(w.compared_bits()) + 8
}

/// One sample image: its values (`C·H·W`, as the network sees them) and label, if known.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub values: Vec<f32>,
    pub label: Option<i64>,
}

/// Which split of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

/// The first `limit` images of `data` shaped for a model whose input is `shape` and whose
/// output has `classes` channels: `npy:PATH` (files sorted by name; no labels), or any data
/// set of `knapsec train` (images smaller than the input are padded, as for training; labels
/// kept when the data set has `classes` classes).
pub fn load_images(
    data: &str,
    part: Part,
    shape: [u32; 3],
    classes: usize,
    limit: usize,
) -> anyhow::Result<Vec<Sample>> {
    let numel = shape.iter().map(|&v| v as usize).product::<usize>();
    if let Some(path) = data.strip_prefix("npy:") {
        let path = Path::new(path);
        let mut files: Vec<PathBuf> = if path.is_dir() {
            std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "npy"))
                .collect()
        } else {
            vec![path.to_path_buf()]
        };
        files.sort();
        if files.is_empty() {
            bail!("{}: no .npy files", path.display());
        }
        files.truncate(limit);
        return files
            .into_iter()
            .map(|f| {
                let values = crate::cmd::party::read_npy(&f)?;
                if values.len() != numel {
                    bail!(
                        "{}: {} values, the model expects {}x{}x{} = {numel}",
                        f.display(),
                        values.len(),
                        shape[0],
                        shape[1],
                        shape[2]
                    );
                }
                Ok(Sample {
                    name: f
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    values,
                    label: None,
                })
            })
            .collect();
    }
    // A data set of `knapsec train`: this build needs the `torch` feature for them.
    #[cfg(not(feature = "torch"))]
    {
        let _ = (part, shape, classes, limit);
        bail!(
            "data set {data:?}: this build has no image data sets (feature `torch`); use npy:PATH"
        )
    }
    #[cfg(feature = "torch")]
    {
        use knapsec_nn::data::{DataSpec, Split};
        let spec: DataSpec = data.parse()?;
        let split = match part {
            Part::Train => Split::Train,
            Part::Test => Split::Test,
        };
        let mut set = spec
            .load(split)
            .with_context(|| format!("cannot load data set {data:?}"))?
            .take(limit);
        let (c, h, w) = set.shape;
        let [mc, mh, mw] = shape.map(|v| v as usize);
        if c != mc {
            bail!("data set {data:?} has {c}-channel images, the model wants {mc}");
        }
        if (h, w) != (mh, mw) {
            if h <= mh && w <= mw {
                set = set.pad_to(mh, mw)?;
            } else {
                bail!("data set {data:?} has {h}x{w} images, the model wants {mh}x{mw}");
            }
        }
        let (images, _) = set.to_tensors(knapsec_nn::tch::Device::Cpu)?;
        // Labels only mean something in the model's label space: a folder of photographs of one
        // made-up class does not give ImageNet labels.
        let labelled = set.classes == classes;
        (0..set.len())
            .map(|i| {
                Ok(Sample {
                    name: format!("{i}"),
                    values: Vec::<f32>::try_from(images.get(i as i64).reshape([-1]))?,
                    label: labelled.then(|| set.labels[i]),
                })
            })
            .collect()
    }
}

/// Records the compared values of every site of `model` on `samples` (exact DReLUs).
pub fn observe(
    model: &SecureModel,
    weights: &ModelWeights,
    samples: &[Sample],
) -> anyhow::Result<Vec<SiteStats>> {
    let mut stats = vec![SiteStats::default(); model.nodes.len()];
    for s in samples {
        evaluate_with(
            model,
            weights,
            &s.values,
            &DreluEmulation::default(),
            Some(&mut stats),
        )
        .with_context(|| format!("sample image {}", s.name))?;
    }
    Ok(stats)
}

/// Chooses the windows from `stats`, and returns the calibration with the guard rail's
/// warnings (sites whose window the cap made too narrow).
pub fn choose(
    model: &SecureModel,
    stats: &[SiteStats],
    data: &str,
    samples: usize,
    target: CalibrationTarget,
) -> (Calibration, Vec<String>) {
    let sites = model
        .drelu_sites()
        .into_iter()
        .map(|(i, kind)| SiteCalibration {
            node: i as u32,
            name: model.nodes[i].name.clone(),
            kind,
            window: choose_window(&stats[i], &target),
            stats: stats[i].clone().trimmed(),
        })
        .collect();
    let cal = Calibration {
        data: data.to_string(),
        samples: samples as u32,
        target,
        sites,
    };
    let warnings = cal
        .check(|s| s.window, f64::INFINITY)
        .iter()
        .map(|w| w.describe(model.frac_bits))
        .collect();
    (cal, warnings)
}

/// The per-site table and byte figures of a calibrated model.
pub fn summarize(model: &SecureModel, path: &Path, warnings: Vec<String>) -> CalibrationSummary {
    let cal = model
        .calibration
        .as_ref()
        .expect("summarize is called on a calibrated model");
    let scale = (1u64 << model.frac_bits) as f64;
    let sites: Vec<SiteRow> = cal
        .sites
        .iter()
        .map(|s| {
            let drelus = model.site_drelus(s.node as usize);
            SiteRow {
                node: s.node,
                name: s.name.clone(),
                kind: s.kind.to_string(),
                drelus,
                values: s.stats.count,
                max_abs: s.stats.max_abs as f64 / scale,
                at_risk: if s.window.is_exact() {
                    0
                } else {
                    s.stats.at_risk(s.window.lsb_ignored)
                },
                bits: s.window.bits,
                lsb_ignored: s.window.lsb_ignored,
                compare_bytes: drelus * compare_bytes(s.window),
                compare_bytes_exact: drelus * compare_bytes(DreluWindow::EXACT),
            }
        })
        .collect();
    let total_drelus: u64 = sites.iter().map(|r| r.drelus).sum();
    let per_drelu = sites
        .iter()
        .map(|r| r.drelus as f64 * f64::from(r.bits))
        .sum::<f64>()
        / total_drelus.max(1) as f64;
    let bytes = |mode: knapsec_securenn::DreluMode| {
        knapsec_securenn::Plan::new(
            model,
            knapsec_securenn::Options {
                drelu: mode,
                reveal: knapsec_securenn::Reveal::Logits,
            },
        )
        .map(|p| p.closed_form_bytes(model).0)
        .unwrap_or(0)
    };
    CalibrationSummary {
        model: path.display().to_string(),
        data: cal.data.clone(),
        samples: cal.samples as usize,
        margin_bits: cal.target.margin_bits,
        target_error: cal.target.target_error,
        mean_bits: cal.mean_bits(),
        mean_bits_per_drelu: per_drelu,
        compare_bytes_exact: sites.iter().map(|r| r.compare_bytes_exact).sum(),
        compare_bytes: sites.iter().map(|r| r.compare_bytes).sum(),
        inference_bytes_exact: bytes(knapsec_securenn::DreluMode::Exact),
        inference_bytes: bytes(knapsec_securenn::DreluMode::Calibrated),
        sites,
        warnings,
        public_hash: model.public_hash(),
    }
}

/// Calibrates the model in `dir` (written to `output`, or in place) and returns the summary.
pub fn calibrate(
    dir: &Path,
    output: Option<&Path>,
    data: &str,
    samples: usize,
    target: CalibrationTarget,
    strict: bool,
) -> anyhow::Result<CalibrationSummary> {
    if samples == 0 {
        bail!("--samples must be at least 1");
    }
    if !(0.0..1.0).contains(&target.target_error) {
        bail!("--target-error {} must be in [0, 1)", target.target_error);
    }
    if target.margin_bits > 16 {
        bail!("--margin-bits {} is more than 16", target.margin_bits);
    }
    if !(2..=64).contains(&target.max_bits) {
        bail!("--max-bits {} must be in 2..=64", target.max_bits);
    }
    let mut model = SecureModel::load(dir)?;
    let weights = ModelWeights::load(dir)?;
    weights.check_against(&model)?;
    if model.drelu_sites().is_empty() {
        bail!(
            "{}: the model has no DReLU site (ReLU, ReLU6, max pooling) to calibrate",
            dir.display()
        );
    }
    let images = load_images(
        data,
        Part::Train,
        model.input_shape(),
        model.output_shape()[0] as usize,
        samples,
    )?;
    let stats = observe(&model, &weights, &images)?;
    let (cal, warnings) = choose(&model, &stats, data, images.len(), target);
    if strict && !warnings.is_empty() {
        bail!(
            "{} window(s) too narrow for the calibration data (--strict): {}",
            warnings.len(),
            warnings.join("; ")
        );
    }
    model.calibration = Some(cal);
    model.format = MODEL_FORMAT;
    model.validate()?;
    let out = output.unwrap_or(dir);
    if out != dir {
        weights.save(out)?;
    }
    model.save(out)?;
    Ok(summarize(&model, out, warnings))
}

pub fn run(a: Args, ctx: &Context) -> anyhow::Result<()> {
    let s = a.window.calibrate(&a.model, a.output.as_deref(), &a.data)?;
    for w in &s.warnings {
        tracing::warn!("{w}");
        eprintln!("warning: {w}");
    }
    if a.json {
        return ctx.print_json(&s);
    }
    let mut out = ctx.stdout();
    print_table(&mut out, &s)?;
    out.flush()?;
    Ok(())
}

/// The human table of a calibration.
pub fn print_table(out: &mut impl Write, s: &CalibrationSummary) -> anyhow::Result<()> {
    writeln!(
        out,
        "calibrated {} on {} image(s) of {} (margin 2^{}, target error {})",
        s.model, s.samples, s.data, s.margin_bits, s.target_error
    )?;
    writeln!(
        out,
        "{:>5}  {:<28} {:<8} {:>9} {:>11} {:>10} {:>8} {:>3} {:>3} {:>12}",
        "node", "site", "kind", "DReLUs", "values", "max |v|", "at risk", "k", "t", "bytes"
    )?;
    for r in &s.sites {
        writeln!(
            out,
            "{:>5}  {:<28} {:<8} {:>9} {:>11} {:>10.3} {:>8} {:>3} {:>3} {:>12}",
            r.node,
            r.name,
            r.kind,
            r.drelus,
            r.values,
            r.max_abs,
            r.at_risk,
            r.bits,
            r.lsb_ignored,
            r.compare_bytes
        )?;
    }
    writeln!(
        out,
        "mean k: {:.2} over {} sites ({:.2} per DReLU)",
        s.mean_bits,
        s.sites.len(),
        s.mean_bits_per_drelu
    )?;
    writeln!(
        out,
        "comparison bytes per inference: {} calibrated vs {} exact ({:.2}x fewer)",
        s.compare_bytes,
        s.compare_bytes_exact,
        s.compare_bytes_exact as f64 / s.compare_bytes.max(1) as f64
    )?;
    writeln!(
        out,
        "expected bytes per inference (securenn, offline + online): {} calibrated vs {} exact",
        s.inference_bytes, s.inference_bytes_exact
    )?;
    writeln!(out, "public hash {}", &s.public_hash[..16])?;
    Ok(())
}

/// The guard rail of `simulate`, `party` and `eval`: warns (stderr) about every site of a
/// calibrated `model` whose window under `choice` is too narrow for the values calibration
/// saw, naming the site and the observed range, and summarises the sites where the ignored
/// bits would decide more values than the calibration's target; with `strict`, a window too
/// narrow is an error.
pub fn guard(
    model: &SecureModel,
    choice: knapsec_core::drelu::DreluChoice,
    strict: bool,
) -> anyhow::Result<()> {
    let warnings = choice.check(model);
    let (narrow, coarse): (Vec<_>, Vec<_>) = warnings.iter().partition(|w| w.too_narrow);
    let f = model.frac_bits;
    for w in &narrow {
        eprintln!("warning: DReLU mode {choice}: {}", w.describe(f));
    }
    if let (Some(first), Some(cal)) = (coarse.first(), &model.calibration) {
        eprintln!(
            "warning: DReLU mode {choice}: at {} site(s) more than {} of the calibration values sit in the band the ignored low bits decide (e.g. {})",
            coarse.len(),
            cal.target.target_error,
            first.describe(f)
        );
    }
    if strict && !narrow.is_empty() {
        bail!(
            "DReLU mode {choice}: {} site(s) have a window too narrow for the calibration data (--strict); first: {}",
            narrow.len(),
            narrow[0].describe(f)
        );
    }
    Ok(())
}
