//! `knapsec pipeline --config P.ron` and `knapsec demo` (issue 8 §3–4): every stage from the
//! baseline to secure inference, resumable, ending with a JSON report and PNG plots
//! (see [`crate::pipeline`]).

use crate::context::Context;
use crate::pipeline::{self, config::PipelineConfig};
use anyhow::Context as _;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// Pipeline configuration (RON); its fields are in docs/pipeline.md.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Output folder (stages whose outputs exist there are skipped).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Output folder (stages whose outputs exist there are skipped).
    #[arg(short, long, value_name = "DIR", default_value = "runs/demo")]
    pub output: PathBuf,
    /// Print the demo's configuration (RON) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[arg(long)]
    pub json: bool,
}

fn finish(
    ctx: &Context,
    report: &pipeline::report::Report,
    out: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    let mut stdout = ctx.stdout();
    if json {
        serde_json::to_writer_pretty(&mut stdout, report)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", report.human())?;
        writeln!(
            stdout,
            "report: {}\nplots:  {}, {}",
            out.join("report.json").display(),
            out.join("accuracy.png").display(),
            out.join("drelus_per_layer.png").display()
        )?;
    }
    stdout.flush()?;
    Ok(())
}

pub fn run_pipeline(a: PipelineArgs, ctx: &Context) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("cannot read {}", a.config.display()))?;
    let mut config: PipelineConfig = ron::from_str(&text)
        .with_context(|| format!("{}: invalid pipeline configuration", a.config.display()))?;
    config.resolve_paths(a.config.parent().unwrap_or(std::path::Path::new("")));
    let report = pipeline::run(ctx, &config, &a.output)?;
    finish(ctx, &report, &a.output, a.json)
}

pub fn run_demo(a: DemoArgs, ctx: &Context) -> anyhow::Result<()> {
    let config = PipelineConfig::default();
    if a.print_config {
        let mut out = ctx.stdout();
        writeln!(
            out,
            "{}",
            ron::ser::to_string_pretty(&config, Default::default())?
        )?;
        out.flush()?;
        return Ok(());
    }
    let report = pipeline::run(ctx, &config, &a.output)?;
    finish(ctx, &report, &a.output, a.json)
}
