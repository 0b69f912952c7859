//! `knapsec plugins list`: every plugin of this run's plugin set, sorted by name, then kind.
//!
//! JSON (`--json`): an array of `{"kind", "name", "description", "source"}`, where `kind` is
//! `architecture`, `knapsack-strategy` or `secure-backend` and `source` is
//! `{"type": "builtin", "from": CRATE}` or `{"type": "dynamic", "from": LIBRARY_PATH}`.

use crate::context::Context;
use clap::Subcommand;
use knapsec_core::registry::{PluginInfo, PluginSource};
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: PluginsCommand,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List plugins: kind, name, source, description.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        PluginsCommand::List { json } => list(ctx, json),
    }
}

fn source_text(s: &PluginSource) -> String {
    match s {
        PluginSource::Builtin(c) => format!("builtin:{c}"),
        PluginSource::Dynamic(p) => format!("dynamic:{p}"),
    }
}

fn list(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let plugins: Vec<PluginInfo> = ctx.registry()?.list();
    if json {
        return ctx.print_json(&plugins);
    }
    let mut out = ctx.stdout();
    if plugins.is_empty() {
        writeln!(out, "no plugins")?;
        return Ok(out.flush()?);
    }
    let kw = plugins
        .iter()
        .map(|p| p.kind.as_str().len())
        .max()
        .unwrap_or(4)
        .max(4);
    let nw = plugins
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let sources: Vec<String> = plugins.iter().map(|p| source_text(&p.source)).collect();
    let sw = sources.iter().map(String::len).max().unwrap_or(6).max(6);
    writeln!(
        out,
        "{:kw$}  {:nw$}  {:sw$}  DESCRIPTION",
        "KIND", "NAME", "SOURCE"
    )?;
    for (p, s) in plugins.iter().zip(&sources) {
        writeln!(
            out,
            "{:kw$}  {:nw$}  {:sw$}  {}",
            p.kind.as_str(),
            p.name,
            s,
            p.description
        )?;
    }
    Ok(out.flush()?)
}
