//! `knapsec arch list` and `knapsec arch info NAME`: the architectures of this run and their
//! ReLU layer tables (DESIGN §3, "layer table").
//!
//! `arch info --json` prints one object with stable fields:
//! `{"arch", "input": {"channels", "height", "width"} | null, "layers" (count), "channels"
//! (total), "drelus" (total), "per_layer": [{"name", "channels", "height", "width",
//! "drelus"}]}`, where `input` echoes the options given (null fields: the architecture's
//! default).

use crate::args::ArchOptionArgs;
use crate::context::Context;
use clap::Subcommand;
use knapsec_core::layer::LayerTable;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ArchCommand,
}

#[derive(Debug, Subcommand)]
enum ArchCommand {
    /// List the architectures: name, source, description.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show an architecture's ReLU layers: name, C, H, W, DReLUs.
    Info {
        /// Architecture name (see `knapsec arch list`).
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        options: ArchOptionArgs,
    },
}

pub fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        ArchCommand::List { json } => list(ctx, json),
        ArchCommand::Info {
            name,
            json,
            options,
        } => info(ctx, &name, json, &options),
    }
}

fn list(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let archs: Vec<_> = ctx
        .registry()?
        .list()
        .into_iter()
        .filter(|p| p.kind == knapsec_core::registry::PluginKind::Architecture)
        .collect();
    if json {
        return ctx.print_json(&archs);
    }
    let mut out = ctx.stdout();
    let nw = archs.iter().map(|p| p.name.len()).max().unwrap_or(4).max(4);
    for p in &archs {
        writeln!(out, "{:nw$}  {}", p.name, p.description)?;
    }
    if archs.is_empty() {
        writeln!(out, "no architectures (load a plugin with --plugin)")?;
    }
    Ok(out.flush()?)
}

/// The JSON form of `arch info`.
#[derive(Serialize)]
struct Info<'a> {
    arch: &'a str,
    input: Option<Input>,
    layers: usize,
    channels: u64,
    drelus: u64,
    per_layer: Vec<LayerInfo<'a>>,
    /// The imported network's ops, shapes and slots (ONNX), one line per node.
    #[serde(skip_serializing_if = "Option::is_none")]
    graph: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Input {
    channels: Option<u32>,
    height: Option<u32>,
    width: Option<u32>,
}

#[derive(Serialize)]
struct LayerInfo<'a> {
    name: &'a str,
    channels: u32,
    height: u32,
    width: u32,
    drelus: u64,
}

fn info_of(table: &LayerTable, input: Option<Input>) -> Info<'_> {
    Info {
        arch: &table.arch,
        input,
        layers: table.layers.len(),
        channels: table.channels(),
        drelus: table.drelus(),
        per_layer: table
            .layers
            .iter()
            .map(|l| LayerInfo {
                name: &l.name,
                channels: l.channels,
                height: l.height,
                width: l.width,
                drelus: l.drelus(),
            })
            .collect(),
        graph: None,
    }
}

fn info(ctx: &Context, name: &str, json: bool, options: &ArchOptionArgs) -> anyhow::Result<()> {
    let arch = ctx.registry()?.arch(name)?;
    let opts = options.to_options()?;
    let table = arch.layer_table(&opts)?;
    let input = (opts.input_channels.is_some()
        || opts.input_height.is_some()
        || opts.input_width.is_some())
    .then_some(Input {
        channels: opts.input_channels,
        height: opts.input_height,
        width: opts.input_width,
    });
    let mut info = info_of(&table, input);
    info.graph = arch
        .network_summary()
        .map(|s| s.lines().map(str::to_string).collect());
    if json {
        return ctx.print_json(&info);
    }
    let mut out = ctx.stdout();
    writeln!(
        out,
        "{}: {} ReLU layers, {} channels, {} DReLUs",
        info.arch, info.layers, info.channels, info.drelus
    )?;
    let nw = info
        .per_layer
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "{:nw$}  {:>6}  {:>5}  {:>5}  {:>10}",
        "LAYER", "C", "H", "W", "DRELUS"
    )?;
    for l in &info.per_layer {
        writeln!(
            out,
            "{:nw$}  {:>6}  {:>5}  {:>5}  {:>10}",
            l.name, l.channels, l.height, l.width, l.drelus
        )?;
    }
    if let Some(graph) = &info.graph {
        writeln!(out, "\nGRAPH (node, op, name, [inputs], C x H x W, slot)")?;
        for line in graph {
            writeln!(out, "{line}")?;
        }
    }
    Ok(out.flush()?)
}
