//! The secure end of the pipeline: the calibration stage (export, `knapsec calibrate`, fixed-point
//! top-1 with exact and calibrated DReLUs) and the secure stage (export, inputs, one simulated
//! inference per input with the secure backend and with `plain`, whose labels must agree).

use super::config::{self, PipelineConfig};
use super::report::{CalibrationReport, SecureReport};
use super::{StageTimer, child, child_json, path_str, read_json, skipped, stage, write_text};
use crate::context::Context;
use anyhow::{Context as _, bail};
use std::path::Path;
use std::time::Instant;

/// Export, test inputs, and one simulated inference per input with the secure backend and with
/// `plain`; the labels must agree.
pub(super) fn secure_stage(
    ctx: &Context,
    config: &PipelineConfig,
    options_file: &Path,
    run_dir: &Path,
    dir: &Path,
    budget: &str,
) -> anyhow::Result<SecureReport> {
    let results = dir.join("results.json");
    if let Ok(v) = read_json(&results)
        && let Ok(r) = serde_json::from_value::<SecureReport>(v)
        && r.images == config.secure.images
        && r.backend == config.secure.backend
        && r.drelu == config.secure.drelu
    {
        skipped(ctx, "secure inference", &results);
        return Ok(r);
    }
    // `calibrated` runs the model the calibration stage exported and calibrated.
    let calibrated = config.secure.drelu.trim() == "calibrated";
    let model = if calibrated {
        run_dir.join("calibration/model")
    } else {
        dir.join("model")
    };
    stage(
        ctx,
        &format!(
            "export and secure inference of {} test images",
            config.secure.images
        ),
    );
    if !calibrated {
        export_run(
            ctx,
            config,
            options_file,
            run_dir,
            config.secure.frac_bits,
            &model,
        )?;
    }
    let inputs = crate::cmd::train::write_test_inputs(
        ctx,
        config,
        &dir.join("inputs"),
        config.secure.images,
    )?;
    let mut r = SecureReport {
        budget: budget.to_string(),
        strategy: config.strategy.clone(),
        backend: config.secure.backend.clone(),
        drelu: config.secure.drelu.clone(),
        images: inputs.len(),
        ..Default::default()
    };
    // `knapsec simulate --json` of one input with `backend` (and its extra flags).
    let simulate = |path: &Path, backend: &str, extra: &[&str]| -> anyhow::Result<_> {
        let mut args = vec!["simulate", "--model", path_str(&model)?, "--input"];
        args.extend([path_str(path)?, "--backend", backend]);
        args.extend(extra);
        args.push("--json");
        child_json(ctx, &args)
    };
    for (path, label) in &inputs {
        let secure = simulate(
            path,
            &config.secure.backend,
            &["--drelu", &config.secure.drelu],
        )?;
        r.true_labels.push(*label);
        r.secure_labels.push(
            label_of(&secure).with_context(|| format!("simulate output for {}", path.display()))?,
        );
        if calibrated {
            // The plain oracle's emulation of the same windows.
            let (m, w) = (
                knapsec_core::graph::SecureModel::load(&model)?,
                knapsec_core::graph::ModelWeights::load(&model)?,
            );
            let x = crate::cmd::party::read_npy(path)?;
            let emu = knapsec_plain::DreluEmulation {
                choice: knapsec_core::drelu::DreluChoice::Calibrated,
                seed: 0,
            };
            let out = knapsec_plain::evaluate_with(&m, &w, &x, &emu, None)
                .with_context(|| format!("plain evaluation of {}", path.display()))?;
            r.plain_labels
                .push(i64::from(out.labels().first().copied().unwrap_or(0)));
        } else {
            let plain = simulate(path, "plain", &[])?;
            r.plain_labels.push(
                label_of(&plain)
                    .with_context(|| format!("plain simulate output for {}", path.display()))?,
            );
        }
        let n = inputs.len() as f64;
        // `knapsec simulate --json` of the securenn backend: per phase `seconds` and `comm`.
        let phase = |p: &str, f: &str| secure[p]["comm"][f].as_f64().unwrap_or(0.0);
        r.bytes_per_image += (phase("offline", "bytes") + phase("online", "bytes")) / n;
        r.rounds_per_image += (phase("offline", "rounds") + phase("online", "rounds")) / n;
        r.online_seconds_per_image += secure["online"]["seconds"].as_f64().unwrap_or(0.0) / n;
        r.offline_seconds_per_image += secure["offline"]["seconds"].as_f64().unwrap_or(0.0) / n;
    }
    r.labels_agree = r.secure_labels == r.plain_labels;
    write_text(&results, &serde_json::to_string_pretty(&r)?)?;
    if !r.labels_agree {
        if calibrated {
            // The oracle emulates the windows bit for bit, but the sign of a value within the
            // ignored low bits of 0 depends on the parties' random shares, which the emulation
            // draws independently: with t > 0 a label can differ without anything being wrong.
            tracing::warn!(
                "secure labels {:?} differ from the plain oracle's emulation {:?} of the calibrated windows \
                 (values within a window's ignored low bits of 0 take a random sign; a smaller \
                 calibration.target_error makes this rarer; see {})",
                r.secure_labels,
                r.plain_labels,
                results.display()
            );
        } else {
            bail!(
                "secure labels {:?} differ from plaintext labels {:?} (see {})",
                r.secure_labels,
                r.plain_labels,
                results.display()
            );
        }
    }
    Ok(r)
}

/// What the calibration stage keeps of one run: the settings it ran with (a change reruns it)
/// and its report.
#[derive(serde::Serialize, serde::Deserialize)]
struct CalibrationResults {
    settings: config::CalibrationSettings,
    eval_subset: Option<usize>,
    report: CalibrationReport,
}

/// Export of the fine-tuned model of `run_dir`, its windows calibrated on training images, and
/// fixed-point top-1 on test images with exact and calibrated DReLUs.
pub(super) fn calibration_stage(
    ctx: &Context,
    timer: &mut StageTimer,
    config: &PipelineConfig,
    options_file: &Path,
    run_dir: &Path,
    budget: &str,
) -> anyhow::Result<CalibrationReport> {
    use crate::cmd::calibrate::{Part, calibrate, eval_model};
    use knapsec_core::drelu::{CalibrationTarget, DreluChoice};
    let c = &config.calibration;
    let eval_subset = c.eval_subset.or(config.eval_subset);
    let dir = run_dir.join("calibration");
    let results = dir.join("results.json");
    if let Ok(v) = read_json(&results)
        && let Ok(r) = serde_json::from_value::<CalibrationResults>(v)
        && r.settings == *c
        && r.eval_subset == eval_subset
    {
        skipped(ctx, &format!("calibration at {budget}"), &results);
        return Ok(r.report);
    }
    let t = Instant::now();
    let model = dir.join("model");
    stage(
        ctx,
        &format!(
            "calibration at {budget}: export, windows from {} training images",
            c.samples
        ),
    );
    export_run(ctx, config, options_file, run_dir, c.frac_bits, &model)?;
    let target = CalibrationTarget {
        margin_bits: c.margin_bits,
        target_error: c.target_error,
        max_bits: c.max_bits,
    };
    let summary = calibrate(&model, None, &config.data, c.samples, target, c.strict)?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    stage(
        ctx,
        &format!(
            "calibration at {budget}: fixed-point top-1 with exact and calibrated DReLUs (mean k {:.2})",
            summary.mean_bits
        ),
    );
    let eval = eval_model(
        &model,
        &config.data,
        Part::Test,
        eval_subset.unwrap_or(usize::MAX),
        &[DreluChoice::Exact, DreluChoice::Calibrated],
        0,
        None,
        0,
        c.strict,
    )?;
    let [exact, calibrated] = &eval.modes[..] else {
        bail!("the evaluation returned {} modes, not 2", eval.modes.len());
    };
    let (Some(exact_top1), Some(calibrated_top1)) = (exact.top1, calibrated.top1) else {
        bail!(
            "data set {:?}: its test images have no labels in the model's classes",
            config.data
        );
    };
    let r = CalibrationReport {
        budget: budget.to_string(),
        strategy: config.strategy.clone(),
        samples: summary.samples,
        eval_images: eval.count,
        exact_top1,
        calibrated_top1,
        agree_exact: calibrated.agree_exact,
        mean_bits: summary.mean_bits,
        mean_bits_per_drelu: summary.mean_bits_per_drelu,
        compare_bytes_per_drelu_exact: exact.compare_bytes_per_drelu,
        compare_bytes_per_drelu: calibrated.compare_bytes_per_drelu,
        inference_bytes_exact: summary.inference_bytes_exact,
        inference_bytes: summary.inference_bytes,
        warnings: summary.warnings,
    };
    write_text(
        &results,
        &serde_json::to_string_pretty(&CalibrationResults {
            settings: c.clone(),
            eval_subset,
            report: r.clone(),
        })?,
    )?;
    timer.add("calibration", t);
    Ok(r)
}

/// The predicted label in a `knapsec simulate --json` output: `output` is `{"Labels": [l]}`
/// or `{"Logits": [...]}` (then the argmax).
fn label_of(v: &serde_json::Value) -> anyhow::Result<i64> {
    let out = &v["output"];
    if let Some(l) = out["Labels"].get(0).and_then(|l| l.as_i64()) {
        return Ok(l);
    }
    let logits = out["Logits"]
        .as_array()
        .context("neither `Labels` nor `Logits` in the output")?;
    let vals: Vec<f64> = logits
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NEG_INFINITY))
        .collect();
    vals.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as i64)
        .context("empty logits")
}

/// `knapsec export` of the fine-tuned weights of `run_dir` at its block spec, with
/// `frac_bits` fractional bits, to the model folder `model`.
fn export_run(
    ctx: &Context,
    config: &PipelineConfig,
    options_file: &Path,
    run_dir: &Path,
    frac_bits: u32,
    model: &Path,
) -> anyhow::Result<()> {
    child(
        ctx,
        &[
            "export",
            "--arch",
            &config.arch,
            "--arch-options",
            path_str(options_file)?,
            "--weights",
            path_str(&run_dir.join("weights.safetensors"))?,
            "--spec",
            path_str(&run_dir.join("spec.ron"))?,
            "--frac-bits",
            &frac_bits.to_string(),
            "-o",
            path_str(model)?,
        ],
    )
}
