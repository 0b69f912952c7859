//! `knapsec party`: runs one party of a three-host deployment described by a `deploy.ron`
//! (see `knapsec_runtime::deploy` and docs/deployment.md).
//!
//! The server and the helper serve sessions until stopped (or `--sessions N`); a session that
//! fails is logged and the next one served (`--exit-on-error` stops instead). A backend that
//! is not private is refused unless `--insecure-cleartext`; only the plugins named on the
//! command line or in the plugin-set file are loaded (never the `KNAPSEC_PLUGIN_PATH`
//! folders). The client
//! runs one session over its inputs (one `.npy` image, or every `.npy` in a folder, in name
//! order; `--batch N` images per inference) and writes the results as JSON to `--output`, atomically, once all are known.

use crate::context::Context;
use anyhow::{Context as _, bail};
use knapsec_core::Role;
use knapsec_core::backend::PartyOutput;
use knapsec_runtime::party::InferenceStats;
use knapsec_runtime::{Deployment, Party, ServeOptions};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The role this process plays: client, server or helper.
    #[arg(long)]
    role: Role,
    /// The deployment config (RON).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Client: an input image (.npy, C×H×W or 1×C×H×W, f32 or f64) or a folder of them.
    #[arg(long, value_name = "FILE|DIR")]
    input: Option<PathBuf>,
    /// Client: where to write the results (JSON).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Client: images per inference. Every round of a batch carries all its images, so a
    /// batch costs the rounds of one image; the deployment's `max_batch` bounds it.
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,
    /// Server and helper: exit after this many sessions (successfully if none failed).
    #[arg(long, value_name = "N")]
    sessions: Option<u64>,
    /// Server and helper: exit with the error of the first session that fails (by default a
    /// failed session is logged and the party serves the next one).
    #[arg(long)]
    exit_on_error: bool,
    /// Accepted for compatibility: serving on after a failed session is the default.
    #[arg(long, hide = true, conflicts_with = "exit_on_error")]
    keep_going: bool,
    /// Refuse to start when the model's calibration data show the DReLU window of the
    /// backend's options to be too narrow for a site (without it: a warning).
    #[arg(long)]
    strict: bool,
    /// Run a backend that is not private (e.g. `plain`, which sends the server's weights to
    /// the client in the clear). For tests only; every party warns.
    #[arg(long)]
    insecure_cleartext: bool,
}

/// One line of the client's output file.
#[derive(Serialize)]
struct ResultRow {
    input: String,
    output: PartyOutput,
    /// Argmax of the logits (classification) when the output is logits.
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<usize>,
    stats: InferenceStats,
}

#[derive(Serialize)]
struct ClientReport {
    backend: String,
    model_hash: String,
    results: Vec<ResultRow>,
}

pub fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let dep = Deployment::load(&args.config, args.role)?;
    let role = args.role;
    match role {
        Role::Client => {
            if args.sessions.is_some() || args.keep_going || args.exit_on_error {
                bail!("--sessions and --exit-on-error are for the server and the helper");
            }
        }
        _ => {
            if args.input.is_some() || args.output.is_some() || args.batch != 1 {
                bail!(
                    "--input, --output and --batch are for the client; the {role} takes no input"
                );
            }
        }
    }
    // Only the plugins named on the command line or in the plugin-set file: a plugin's
    // initialiser runs inside the process that holds the weights or the keys.
    let backend = ctx.explicit_registry()?.backend(&dep.backend)?;
    if !backend.is_private() {
        if !args.insecure_cleartext {
            bail!(
                "backend {:?} is not private (it reveals the server's weights or the client's input to another party); \
                 refusing to run it in a deployment (pass --insecure-cleartext to run it anyway, for tests only)",
                dep.backend
            );
        }
        tracing::warn!(
            backend = %dep.backend,
            "INSECURE: backend {:?} is not private; this {role} runs it only because of --insecure-cleartext",
            dep.backend
        );
        eprintln!(
            "warning: INSECURE: backend {:?} is not private; this {role} runs it only because of --insecure-cleartext",
            dep.backend
        );
    }
    let backend_name = dep.backend.clone();
    let drelu = (dep.backend == "securenn")
        .then(|| knapsec_securenn::Options::parse(&dep.options))
        .transpose()?
        .map(|o| o.drelu.choice());
    let party = Party::new(dep, backend).with_context(|| format!("cannot start the {role}"))?;
    if let Some(choice) = drelu {
        crate::cmd::calibrate::guard(party.model(), choice, args.strict)?;
    }
    if role != Role::Client {
        let n = party.serve(ServeOptions {
            sessions: args.sessions,
            keep_going: !args.exit_on_error,
        })?;
        tracing::info!("served {n} sessions");
        return Ok(());
    }
    let (Some(input), Some(output)) = (args.input, args.output) else {
        bail!("the client needs --input FILE|DIR and --output FILE");
    };
    let files = input_files(&input)?;
    let shape = party.model().input_shape();
    let want: usize = shape.iter().map(|&d| d as usize).product();
    let mut images = Vec::with_capacity(files.len());
    for f in &files {
        let x = read_npy(f)?;
        if x.len() != want {
            bail!(
                "{}: {} values, but the model's input is {}×{}×{} = {want}",
                f.display(),
                x.len(),
                shape[0],
                shape[1],
                shape[2]
            );
        }
        images.push(x);
    }
    let mut results = Vec::new();
    party.run_client(&images, args.batch, |i, out, stats| {
        let label = match &out {
            PartyOutput::Logits(v) => argmax(v),
            _ => None,
        };
        if !ctx.global.quiet {
            eprintln!(
                "{}: {:.3} s, {} bytes sent{}",
                files[i].display(),
                stats.seconds,
                stats.comm.bytes,
                label.map(|l| format!(", label {l}")).unwrap_or_default()
            );
        }
        results.push(ResultRow {
            input: files[i].display().to_string(),
            output: out,
            label,
            stats: stats.clone(),
        });
        Ok(())
    })?;
    let report = ClientReport {
        backend: backend_name,
        model_hash: party.model().public_hash(),
        results,
    };
    let text = serde_json::to_string_pretty(&report)?;
    knapsec_core::fsutil::write_atomic(&output, text.as_bytes())?;
    Ok(())
}

fn argmax(v: &[f32]) -> Option<usize> {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]))
}

/// The input file, or the `.npy` files of the input folder sorted by name.
pub(crate) fn input_files(input: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !input.is_dir() {
        if !input.is_file() {
            bail!("{}: no such file or folder", input.display());
        }
        return Ok(vec![input.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .with_context(|| format!("cannot list {}", input.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "npy") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .npy files in this folder", input.display());
    }
    Ok(files)
}

/// Reads a `.npy` array of f32 or f64 as f32 values (C order).
pub fn read_npy(path: &Path) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{}: not a .npy file", path.display()))?;
    if npy.order() != npyz::Order::C {
        bail!(
            "{}: Fortran-order arrays are not supported; save it in C order",
            path.display()
        );
    }
    let dtype = npy.dtype();
    match &dtype {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 4 => {
            Ok(npy
                .into_vec::<f32>()
                .with_context(|| format!("{}: cannot read the f32 data", path.display()))?)
        }
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 8 => {
            Ok(npy
                .into_vec::<f64>()
                .with_context(|| format!("{}: cannot read the f64 data", path.display()))?
                .into_iter()
                .map(|v| v as f32)
                .collect())
        }
        other => bail!(
            "{}: dtype {} is not supported (use float32 or float64)",
            path.display(),
            other.descr()
        ),
    }
}
