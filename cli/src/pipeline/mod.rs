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
mod secure;

use crate::args::ArchOptionArgs;
use crate::cmd::train::{EvalSummary, TrainArgs, evaluate_weights, run_finetune_in, run_train_in};
use crate::context::Context;
use anyhow::{Context as _, bail};
use config::{Baseline, PipelineConfig, TrainSettings};
use knapsec_core::BlockSpec;
use report::{BaselineReport, LayerInfo, Report, RunReport};
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
            report.calibration.push(secure::calibration_stage(
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
        report.secure = Some(secure::secure_stage(
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
