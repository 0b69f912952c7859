//! `knapsec eval --model` (DESIGN §5): the plaintext accuracy of a secure model under several
//! DReLU modes side by side (exact, uniform windows, calibrated), against the floating-point
//! network where its weights are given, with secure runs (securenn, three parties in this
//! process) of the first images, and its human table.

use super::{Part, compare_bytes, guard, load_images};
use anyhow::{Context as _, bail};
use knapsec_core::drelu::DreluWindow;
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_plain::{DreluEmulation, evaluate_with};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// One DReLU mode's results in `knapsec eval --model`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ModeAccuracy {
    /// `exact`, `approx:K,T` or `calibrated`.
    pub mode: String,
    /// Mean window bits k over the DReLU sites.
    pub mean_bits: f64,
    /// Comparison bytes per DReLU (`3(k−1) + 8`, weighted by the sites' DReLUs).
    pub compare_bytes_per_drelu: f64,
    /// Top-1 (classification: against the data set's labels; absent without labels).
    pub top1: Option<f64>,
    /// Fraction of images whose plaintext label equals the exact mode's.
    pub agree_exact: f64,
    /// Fraction of images whose label equals the floating-point network's (with --weights).
    pub agree_reference: Option<f64>,
    /// Secure inference (securenn, three parties in this process) on the first images.
    pub secure: Option<SecureAccuracy>,
}

/// Secure-inference figures of one mode.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SecureAccuracy {
    pub images: usize,
    /// Secure labels equal to the floating-point network's (with --weights), else to plain's.
    pub agree_reference: Option<usize>,
    pub agree_plain: usize,
    /// Largest |secure logit − plain logit| (the mode's own plain emulation).
    pub max_logit_error: f64,
    /// Mean seconds (offline + online) and bytes of one inference.
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub bytes: f64,
    /// Bytes of the comparisons (`drelu` op) per DReLU.
    pub compare_bytes_per_drelu: f64,
}

/// What `knapsec eval --model` reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ModelEvalSummary {
    pub model: String,
    pub data: String,
    pub count: usize,
    /// Every DReLU of the network (ReLU, ReLU6 bounds, max-pool comparisons).
    pub drelus: u64,
    /// Top-1 of the floating-point network (with --weights and labelled data).
    pub reference_top1: Option<f64>,
    pub modes: Vec<ModeAccuracy>,
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// Per-pixel argmax over channels of `C·P` logits (the label, or label map).
fn labels_of(v: &[f32], channels: usize) -> Vec<usize> {
    let p = v.len() / channels.max(1);
    (0..p)
        .map(|q| {
            let col: Vec<f32> = (0..channels).map(|c| v[c * p + q]).collect();
            argmax(&col)
        })
        .collect()
}

/// The securenn mode of a choice.
pub fn securenn_mode(c: knapsec_core::drelu::DreluChoice) -> knapsec_securenn::DreluMode {
    use knapsec_core::drelu::DreluChoice;
    match c {
        DreluChoice::Exact => knapsec_securenn::DreluMode::Exact,
        DreluChoice::Uniform(w) => w.into(),
        DreluChoice::Calibrated => knapsec_securenn::DreluMode::Calibrated,
    }
}

/// Plaintext accuracy of a secure model under several DReLU modes, side by side, with
/// optional floating-point reference labels (`reference[i]` for image i) and secure runs of
/// the first `secure` images. A mode whose window is too narrow for the model's calibration
/// data is warned about (an error with `strict`).
#[allow(clippy::too_many_arguments)]
pub fn eval_model(
    dir: &Path,
    data: &str,
    part: Part,
    limit: usize,
    modes: &[knapsec_core::drelu::DreluChoice],
    seed: u64,
    reference: Option<&[usize]>,
    secure: usize,
    strict: bool,
) -> anyhow::Result<ModelEvalSummary> {
    let model = SecureModel::load(dir)?;
    let weights = ModelWeights::load(dir)?;
    weights.check_against(&model)?;
    let images = load_images(
        data,
        part,
        model.input_shape(),
        model.output_shape()[0] as usize,
        limit,
    )?;
    if let Some(r) = reference
        && r.len() != images.len()
    {
        bail!("{} reference labels for {} images", r.len(), images.len());
    }
    let classes = model.output_shape()[0] as usize;
    let labelled = images.iter().all(|s| s.label.is_some());
    let reference_top1 = reference.filter(|_| labelled).map(|r| {
        r.iter()
            .zip(&images)
            .filter(|(p, s)| Some(**p as i64) == s.label)
            .count() as f64
            / images.len().max(1) as f64
    });
    let sites = model.drelu_sites();
    let total: u64 = sites.iter().map(|&(i, _)| model.site_drelus(i)).sum();
    let mut exact_labels: Option<Vec<Vec<usize>>> = None;
    let mut out = Vec::new();
    for &choice in modes {
        let windows = choice.resolve(&model)?;
        let (mut bits, mut bytes) = (0.0, 0.0);
        for &(i, _) in &sites {
            let w = windows[i].unwrap_or(DreluWindow::EXACT);
            bits += f64::from(w.bits);
            bytes += (model.site_drelus(i) * compare_bytes(w)) as f64;
        }
        guard(&model, choice, strict)?;
        let emu = DreluEmulation { choice, seed };
        let mut labels = Vec::with_capacity(images.len());
        let mut plain_logits = Vec::new();
        for (k, s) in images.iter().enumerate() {
            let o = evaluate_with(&model, &weights, &s.values, &emu, None)
                .with_context(|| format!("image {}", s.name))?;
            let logits = o.logits();
            labels.push(labels_of(&logits, classes));
            if k < secure {
                plain_logits.push(logits);
            }
        }
        let n = images.len().max(1) as f64;
        let top1 = labelled.then(|| {
            labels
                .iter()
                .zip(&images)
                .filter(|(l, s)| l.len() == 1 && Some(l[0] as i64) == s.label)
                .count() as f64
                / n
        });
        let exact = exact_labels.get_or_insert_with(|| labels.clone());
        let agree_exact = labels
            .iter()
            .zip(exact.iter())
            .filter(|(a, b)| a == b)
            .count() as f64
            / n;
        let agree_reference = reference.map(|r| {
            labels
                .iter()
                .zip(r)
                .filter(|(l, r)| l.len() == 1 && l[0] == **r)
                .count() as f64
                / n
        });
        let secure_fig = if secure > 0 {
            let mut fig = SecureAccuracy {
                images: 0,
                agree_reference: reference.map(|_| 0),
                agree_plain: 0,
                max_logit_error: 0.0,
                seconds: 0.0,
                cpu_seconds: 0.0,
                bytes: 0.0,
                compare_bytes_per_drelu: 0.0,
            };
            for (k, s) in images.iter().take(secure).enumerate() {
                let r = knapsec_securenn::simulate(
                    &model,
                    &weights,
                    &s.values,
                    knapsec_securenn::Options {
                        drelu: securenn_mode(choice),
                        reveal: knapsec_securenn::Reveal::Logits,
                    },
                    Some(std::time::Duration::from_secs(1800)),
                )
                .with_context(|| format!("secure inference of image {} ({choice})", s.name))?;
                let knapsec_core::backend::PartyOutput::Logits(v) = &r.output else {
                    bail!("the secure run returned no logits");
                };
                let l = labels_of(v, classes);
                fig.images += 1;
                if l == labels[k] {
                    fig.agree_plain += 1;
                }
                if let (Some(a), Some(r)) = (fig.agree_reference.as_mut(), reference)
                    && l.len() == 1
                    && l[0] == r[k]
                {
                    *a += 1;
                }
                fig.max_logit_error = v
                    .iter()
                    .zip(&plain_logits[k])
                    .map(|(a, b)| f64::from((a - b).abs()))
                    .fold(fig.max_logit_error, f64::max);
                fig.seconds += r.offline.seconds + r.online.seconds;
                fig.cpu_seconds += r.offline.cpu_seconds + r.online.cpu_seconds;
                let mut comm = r.offline.comm.clone();
                comm.merge(&r.online.comm);
                fig.bytes += comm.bytes as f64;
                fig.compare_bytes_per_drelu +=
                    comm.op("drelu").bytes as f64 / r.drelus.max(1) as f64;
            }
            let m = fig.images.max(1) as f64;
            fig.seconds /= m;
            fig.cpu_seconds /= m;
            fig.bytes /= m;
            fig.compare_bytes_per_drelu /= m;
            Some(fig)
        } else {
            None
        };
        out.push(ModeAccuracy {
            mode: choice.to_string(),
            mean_bits: bits / sites.len().max(1) as f64,
            compare_bytes_per_drelu: bytes / total.max(1) as f64,
            top1,
            agree_exact,
            agree_reference,
            secure: secure_fig,
        });
    }
    Ok(ModelEvalSummary {
        model: dir.display().to_string(),
        data: data.to_string(),
        count: images.len(),
        drelus: model.all_drelus(),
        reference_top1,
        modes: out,
    })
}

/// The human table of `knapsec eval --model`.
pub fn print_model_eval(out: &mut impl Write, s: &ModelEvalSummary) -> anyhow::Result<()> {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    writeln!(
        out,
        "{} on {} image(s) of {}{}",
        s.model,
        s.count,
        s.data,
        s.reference_top1
            .map(|t| format!("; floating-point network top-1 {:.2}%", 100.0 * t))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "{:<16} {:>7} {:>11} {:>9} {:>10} {:>11}   secure",
        "mode", "mean k", "B/DReLU", "top-1", "= exact", "= float"
    )?;
    for m in &s.modes {
        let sec = m.secure.as_ref().map_or(String::new(), |f| {
            format!(
                "{}/{} = float, {}/{} = plain, {:.2} s, {:.2} MB, {:.1} B/DReLU, max logit error {:.3}",
                f.agree_reference.map_or("-".into(), |a| a.to_string()),
                f.images,
                f.agree_plain,
                f.images,
                f.seconds,
                f.bytes / 1e6,
                f.compare_bytes_per_drelu,
                f.max_logit_error
            )
        });
        writeln!(
            out,
            "{:<16} {:>7.2} {:>11.1} {:>9} {:>10} {:>11}   {sec}",
            m.mode,
            m.mean_bits,
            m.compare_bytes_per_drelu,
            pct(m.top1),
            pct(Some(m.agree_exact)),
            pct(m.agree_reference),
        )?;
    }
    Ok(())
}
