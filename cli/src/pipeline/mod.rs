//! `knapsec pipeline` and `knapsec demo` (issue 8 §3–4): the user's whole job in one command.
//!
//! Stages, each writing its artefacts under the output folder and skipped when they exist, so
//! that an interrupted run resumes where it stopped:
//!
//! | stage | output | how |
//! |---|---|---|
//! | baseline | `baseline/weights.safetensors`, `baseline/eval.json` | train (checkpointed every epoch), load, or an imported network's own weights |
//! | distortion | `distortion/table.safetensors` | `knapsec distortion … --resume` |
//! | knapsack | `runs/<budget>-<strategy>/spec.ron`, `knapsack.json` | `knapsec knapsack` per budget and strategy (and `uniform`) |
//! | fine-tune | `runs/…/weights.safetensors`, `eval_before.json`, `eval.json` | block ReLUs in place, then top-1 |
//! | calibration | `runs/…/calibration/model/`, `runs/…/calibration/results.json` | `knapsec export`, `knapsec calibrate` on training images, then fixed-point top-1 with exact and calibrated DReLUs (`knapsec eval --model`) |
//! | secure | `secure/model/`, `secure/inputs/*.npy`, `secure/results.json` | `knapsec export`, `knapsec simulate` with the secure backend and with `plain` |
//! | report | `report.json`, `accuracy.png`, `drelus_per_layer.png` | always rewritten |
//!
//! The stages of other areas run as child processes of this same binary (the commands a user
//! would type), so each keeps its own resumability and progress display; training and
//! evaluation run in this process.

pub mod config;
pub mod plot;
pub mod report;

use crate::args::ArchOptionArgs;
use crate::cmd::train::{EvalSummary, TrainArgs, evaluate_weights, run_finetune_in, run_train_in};
use crate::context::Context;
use anyhow::{Context as _, bail};
use config::{Baseline, PipelineConfig, TrainSettings};
use knapsec_core::BlockSpec;
use report::{BaselineReport, CalibrationReport, LayerInfo, Report, RunReport, SecureReport};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Runs the whole pipeline of `config` into `out`.
pub fn run(ctx: &Context, config: &PipelineConfig, out: &Path) -> anyhow::Result<Report> {
    config.validate()?;
    let t_all = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let adapter = ctx.registry()?.arch(&config.arch)?;
    let table = adapter.layer_table(&config.options)?;
    let options_file = out.join("arch_options.ron");
    write_text(
        &options_file,
        &ron::ser::to_string_pretty(&config.options, Default::default())?,
    )?;
    write_text(
        &out.join("pipeline.ron"),
        &ron::ser::to_string_pretty(config, Default::default())?,
    )?;
    let arch_args = ArchOptionArgs {
        arch_options: Some(options_file.clone()),
        ..Default::default()
    };
    let mut report = Report {
        arch: config.arch.clone(),
        data: config.data.clone(),
        layers: table
            .layers
            .iter()
            .map(|l| LayerInfo {
                name: l.name.clone(),
                drelus: l.drelus(),
            })
            .collect(),
        ..Default::default()
    };
    let mut timer = StageTimer::default();

    // === baseline ===
    let (baseline_weights, train_seconds) = match &config.baseline {
        Baseline::Load(path) => (PathBuf::from(path), None),
        Baseline::Imported => {
            let w = out.join("baseline/weights.safetensors");
            if !w.exists() {
                stage(ctx, "baseline: the imported network's own weights");
                let mut network =
                    crate::cmd::train::build_network(ctx, &config.arch, &arch_args, 0)?;
                crate::cmd::train::load_weights_or_own(
                    ctx,
                    &mut network,
                    &config.arch,
                    None,
                    "baseline: Imported",
                )?;
                network.save_weights(&w)?;
            } else {
                skipped(ctx, "baseline weights", &w);
            }
            (w, None)
        }
        Baseline::Train(settings) => {
            let w = out.join("baseline/weights.safetensors");
            let summary = out.join("baseline/train.json");
            if !w.exists() {
                stage(ctx, "baseline: training");
                let t = Instant::now();
                run_train_in(
                    ctx,
                    train_args(
                        config,
                        settings,
                        &arch_args,
                        &w,
                        &summary,
                        &out.join("baseline/checkpoint"),
                    ),
                )?;
                timer.add("baseline training", t);
            } else {
                skipped(ctx, "baseline training", &w);
            }
            (
                w,
                read_json(&summary).ok().and_then(|v| v["seconds"].as_f64()),
            )
        }
    };
    let base_eval = cached_eval(
        ctx,
        &mut timer,
        config,
        &arch_args,
        &baseline_weights,
        None,
        &out.join("baseline/eval.json"),
    )?;
    report.eval_images = base_eval.count;
    report.baseline = BaselineReport {
        weights: baseline_weights.display().to_string(),
        accuracy: base_eval.accuracy,
        drelus: table.drelus(),
        train_seconds,
    };
    stage(
        ctx,
        &format!("baseline top-1 accuracy {:.2}%", base_eval.accuracy * 100.0),
    );

    // === distortion ===
    let dist_table = out.join("distortion/table.safetensors");
    if !dist_table.exists() {
        stage(ctx, "distortion extraction");
        let t = Instant::now();
        child(
            ctx,
            &[
                "distortion",
                "--arch",
                &config.arch,
                "--arch-options",
                path_str(&options_file)?,
                "--weights",
                path_str(&baseline_weights)?,
                "--data",
                &config.data,
                "--samples",
                &config.distortion.samples.to_string(),
                "--batch",
                &config.distortion.batch.to_string(),
                "--seed",
                &config.distortion.seed.to_string(),
                "--resume",
                "-o",
                path_str(&dist_table)?,
            ],
        )?;
        report.distortion_seconds = Some(t.elapsed().as_secs_f64());
        timer.add("distortion", t);
    } else {
        skipped(ctx, "distortion", &dist_table);
    }

    // === knapsack, fine-tuning, evaluation per budget and strategy ===
    let mut strategies = vec![config.strategy.clone()];
    if config.compare_uniform && config.strategy != "uniform" {
        strategies.push("uniform".into());
    }
    for budget in &config.budgets {
        for strategy in &strategies {
            let dir = out
                .join("runs")
                .join(format!("{}-{strategy}", sanitize(budget)));
            let spec_path = dir.join("spec.ron");
            let knap_report = dir.join("knapsack.json");
            if !spec_path.exists() {
                stage(ctx, &format!("knapsack {strategy} at {budget}"));
                let t = Instant::now();
                child(
                    ctx,
                    &[
                        "knapsack",
                        "--arch",
                        &config.arch,
                        "--arch-options",
                        path_str(&options_file)?,
                        "--table",
                        path_str(&dist_table)?,
                        "--budget",
                        budget,
                        "--strategy",
                        strategy,
                        "-o",
                        path_str(&spec_path)?,
                        "--report",
                        path_str(&knap_report)?,
                    ],
                )?;
                timer.add("knapsack", t);
            }
            let spec = BlockSpec::load(&spec_path, None)?;
            let before = cached_eval(
                ctx,
                &mut timer,
                config,
                &arch_args,
                &baseline_weights,
                Some(&spec_path),
                &dir.join("eval_before.json"),
            )?;
            let tuned = dir.join("weights.safetensors");
            let tune_summary = dir.join("finetune.json");
            if !tuned.exists() {
                stage(ctx, &format!("fine-tuning {strategy} at {budget}"));
                let t = Instant::now();
                let args = train_args(
                    config,
                    &config.finetune,
                    &arch_args,
                    &tuned,
                    &tune_summary,
                    &dir.join("checkpoint"),
                );
                run_finetune_in(ctx, args, Some(&baseline_weights), &spec_path)?;
                timer.add("fine-tuning", t);
            }
            let after = cached_eval(
                ctx,
                &mut timer,
                config,
                &arch_args,
                &tuned,
                Some(&spec_path),
                &dir.join("eval.json"),
            )?;
            let drelus = spec.drelus(&table);
            report.runs.push(RunReport {
                budget: budget.clone(),
                strategy: strategy.clone(),
                spec: spec_path.display().to_string(),
                drelus,
                drelus_ratio: drelus as f64 / table.drelus() as f64,
                distortion: read_json(&knap_report)
                    .ok()
                    .and_then(|v| v["objective"].as_f64()),
                accuracy_before_finetune: before.accuracy,
                accuracy: after.accuracy,
                relative_accuracy: after.accuracy / base_eval.accuracy.max(f64::MIN_POSITIVE),
                finetune_seconds: read_json(&tune_summary)
                    .ok()
                    .and_then(|v| v["seconds"].as_f64()),
                drelus_per_layer: table
                    .layers
                    .iter()
                    .map(|l| {
                        spec.layers.get(&l.name).map_or(l.drelus(), |b| {
                            b.iter().map(|x| x.drelu_cost(l.height, l.width)).sum()
                        })
                    })
                    .collect(),
            });
        }
    }

    // === calibration of the approximate-DReLU windows ===
    if config.calibration.samples > 0 {
        let budgets = if config.calibration.budgets.is_empty() {
            &config.budgets
        } else {
            &config.calibration.budgets
        };
        for budget in budgets {
            let run_dir =
                out.join("runs")
                    .join(format!("{}-{}", sanitize(budget), config.strategy));
            report.calibration.push(calibration_stage(
                ctx,
                &mut timer,
                config,
                &options_file,
                &run_dir,
                budget,
            )?);
        }
    }

    // === secure inference ===
    if config.secure.images > 0 {
        let budget = config
            .secure
            .budget
            .clone()
            .unwrap_or_else(|| config.budgets[0].clone());
        let dir = out
            .join("runs")
            .join(format!("{}-{}", sanitize(&budget), config.strategy));
        let t = Instant::now();
        report.secure = Some(secure_stage(
            ctx,
            config,
            &options_file,
            &dir,
            &out.join("secure"),
            &budget,
        )?);
        timer.add("secure inference", t);
    }

    report.stage_seconds = timer.0;
    report.total_seconds = t_all.elapsed().as_secs_f64();
    write_text(
        &out.join("report.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    plot::accuracy_vs_budget(&report, &out.join("accuracy.png"))?;
    plot::drelus_per_layer(&report, &out.join("drelus_per_layer.png"))?;
    Ok(report)
}

/// Export, test inputs, and one simulated inference per input with the secure backend and with
/// `plain`; the labels must agree.
fn secure_stage(
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
                &config.secure.frac_bits.to_string(),
                "-o",
                path_str(&model)?,
            ],
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
    for (path, label) in &inputs {
        let secure = child_json(
            ctx,
            &[
                "simulate",
                "--model",
                path_str(&model)?,
                "--input",
                path_str(path)?,
                "--backend",
                &config.secure.backend,
                "--drelu",
                &config.secure.drelu,
                "--json",
            ],
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
            let plain = child_json(
                ctx,
                &[
                    "simulate",
                    "--model",
                    path_str(&model)?,
                    "--input",
                    path_str(path)?,
                    "--backend",
                    "plain",
                    "--json",
                ],
            )?;
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
        bail!(
            "secure labels {:?} differ from plaintext labels {:?} (see {})",
            r.secure_labels,
            r.plain_labels,
            results.display()
        );
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
fn calibration_stage(
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
            &c.frac_bits.to_string(),
            "-o",
            path_str(&model)?,
        ],
    )?;
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

fn train_args(
    config: &PipelineConfig,
    s: &TrainSettings,
    arch: &ArchOptionArgs,
    output: &Path,
    report: &Path,
    checkpoint: &Path,
) -> TrainArgs {
    TrainArgs {
        arch: config.arch.clone(),
        options: arch.clone(),
        data: config.data.clone(),
        train_subset: s.train_subset,
        eval_subset: 0,
        epochs: s.epochs,
        batch: s.batch,
        lr: s.lr,
        momentum: 0.9,
        weight_decay: s.weight_decay,
        schedule: s.schedule.clone(),
        warmup: s.warmup,
        flip: false,
        seed: 0,
        checkpoint: Some(checkpoint.to_path_buf()),
        output: output.to_path_buf(),
        json: false,
        report: Some(report.to_path_buf()),
    }
}

fn cached_eval(
    ctx: &Context,
    timer: &mut StageTimer,
    config: &PipelineConfig,
    arch: &ArchOptionArgs,
    weights: &Path,
    spec: Option<&Path>,
    out: &Path,
) -> anyhow::Result<EvalSummary> {
    if let Ok(v) = read_json(out)
        && let Ok(s) = serde_json::from_value::<EvalSummary>(v)
    {
        return Ok(s);
    }
    let t = Instant::now();
    let s = evaluate_weights(
        ctx,
        &config.arch,
        arch,
        Some(weights),
        spec,
        &config.data,
        config.eval_subset,
        500,
    )?;
    write_text(out, &serde_json::to_string_pretty(&s)?)?;
    timer.add("evaluation", t);
    Ok(s)
}

/// Wall time per stage kind, summed.
#[derive(Default)]
struct StageTimer(Vec<(String, f64)>);

impl StageTimer {
    fn add(&mut self, name: &str, since: Instant) {
        let s = since.elapsed().as_secs_f64();
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, t)) => *t += s,
            None => self.0.push((name.to_string(), s)),
        }
    }
}

fn stage(ctx: &Context, what: &str) {
    if !ctx.global.quiet {
        eprintln!("[pipeline] {what}");
    }
}

fn skipped(ctx: &Context, what: &str, path: &Path) {
    stage(ctx, &format!("{what}: {} exists, skipped", path.display()));
}

fn sanitize(budget: &str) -> String {
    budget.trim().replace('%', "pct").replace(['/', ' '], "_")
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

fn write_text(path: &Path, text: &str) -> anyhow::Result<()> {
    knapsec_core::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)?;
    Ok(serde_json::from_str(&text)?)
}

fn child_command(ctx: &Context, args: &[&str]) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find the knapsec executable")?;
    let mut cmd = Command::new(exe);
    if ctx.global.quiet {
        cmd.arg("--quiet");
    }
    for p in &ctx.global.plugins {
        cmd.arg("--plugin").arg(p);
    }
    if let Some(set) = &ctx.global.plugin_set {
        cmd.arg("--plugins").arg(set);
    }
    cmd.args(args);
    Ok(cmd)
}

/// Runs `knapsec ARGS…` and fails with its exit status if it fails.
fn child(ctx: &Context, args: &[&str]) -> anyhow::Result<()> {
    let status = child_command(ctx, args)?
        .status()
        .context("cannot start a knapsec child process")?;
    if !status.success() {
        bail!("`knapsec {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs `knapsec ARGS…` and parses its standard output as JSON.
fn child_json(ctx: &Context, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let output = child_command(ctx, args)?
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot start a knapsec child process")?;
    if !output.status.success() {
        bail!("`knapsec {}` failed ({})", args.join(" "), output.status);
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("`knapsec {}` did not print JSON", args.join(" ")))
}
