//! `knapsec spec validate` and `knapsec spec convert`: block specs (DESIGN §3) in RON, JSON
//! or the reference's pickle format, chosen by file extension (`.ron`, `.json`,
//! `.pickle`/`.pkl`).

use crate::args::ArchOptionArgs;
use crate::context::Context;
use anyhow::{Context as _, bail};
use clap::Subcommand;
use knapsec_core::spec::{BlockSpec, SpecFormat};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: SpecCommand,
}

#[derive(Debug, Subcommand)]
enum SpecCommand {
    /// Check a spec against an architecture's layer table; the error names the first layer
    /// that does not fit.
    Validate {
        /// The architecture to check against (see `knapsec arch list`).
        #[arg(long)]
        arch: String,
        /// The spec (.ron, .json, .pickle/.pkl).
        file: PathBuf,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        options: ArchOptionArgs,
    },
    /// Convert a spec between RON, JSON and the reference's pickle format (by extension).
    Convert {
        /// Input spec.
        input: PathBuf,
        /// Output spec; written atomically.
        output: PathBuf,
        /// Architecture name to record for a reference pickle, which carries none. For a
        /// RON/JSON input it must match the name inside.
        #[arg(long)]
        arch: Option<String>,
    },
}

pub fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        SpecCommand::Validate {
            arch,
            file,
            json,
            options,
        } => validate(ctx, &arch, &file, json, &options),
        SpecCommand::Convert {
            input,
            output,
            arch,
        } => convert(&input, &output, arch.as_deref()),
    }
}

/// Loads a spec; a pickle gets `arch` as its architecture name.
fn load(path: &Path, arch: Option<&str>) -> anyhow::Result<BlockSpec> {
    Ok(BlockSpec::load(path, arch)?)
}

#[derive(Serialize)]
struct Validated<'a> {
    file: String,
    arch: &'a str,
    valid: bool,
    layers: usize,
    channels: u64,
    drelus: u64,
    baseline_drelus: u64,
}

fn validate(
    ctx: &Context,
    arch: &str,
    file: &Path,
    json: bool,
    options: &ArchOptionArgs,
) -> anyhow::Result<()> {
    let adapter = ctx.registry()?.arch(arch)?;
    let table = adapter.layer_table(&options.to_options()?)?;
    let spec = load(file, Some(arch))?;
    let where_ = || format!("{} does not fit architecture {arch:?}", file.display());
    if spec.arch != table.arch {
        // Name the first layer that differs too, which is what a user needs to see.
        spec.validate_layers(&table).with_context(|| {
            format!(
                "{} is a spec for architecture {:?}, not {arch:?}",
                file.display(),
                spec.arch
            )
        })?;
        bail!(
            "{} is a spec for architecture {:?}, not {arch:?} (its layers fit; rename its `arch` if that is intended)",
            file.display(),
            spec.arch
        );
    }
    spec.validate(&table).with_context(where_)?;
    let report = Validated {
        file: file.display().to_string(),
        arch,
        valid: true,
        layers: table.layers.len(),
        channels: table.channels(),
        drelus: spec.drelus(&table),
        baseline_drelus: table.drelus(),
    };
    if json {
        return ctx.print_json(&report);
    }
    let mut out = ctx.stdout();
    writeln!(
        out,
        "ok: {} fits {arch} ({} layers, {} channels, {} of {} DReLUs = {:.2}%)",
        report.file,
        report.layers,
        report.channels,
        report.drelus,
        report.baseline_drelus,
        100.0 * report.drelus as f64 / report.baseline_drelus.max(1) as f64
    )?;
    Ok(out.flush()?)
}

fn convert(input: &Path, output: &Path, arch: Option<&str>) -> anyhow::Result<()> {
    let in_format = SpecFormat::from_path(input)?;
    SpecFormat::from_path(output)?;
    let spec = match (in_format, arch) {
        (SpecFormat::Pickle, None) => bail!(
            "{}: a reference pickle carries no architecture name; pass --arch NAME",
            input.display()
        ),
        (SpecFormat::Pickle, Some(a)) => load(input, Some(a))?,
        (_, a) => {
            let spec = load(input, None)?;
            if let Some(a) = a.filter(|a| *a != spec.arch) {
                bail!(
                    "{} is a spec for architecture {:?}, but --arch says {a:?}",
                    input.display(),
                    spec.arch
                );
            }
            spec
        }
    };
    spec.save(output)?;
    tracing::info!("wrote {}", output.display());
    Ok(())
}
