//! All three parties of the `securenn` backend in one process, through the runtime's
//! harness ([`knapsec_runtime::sim`]): the report with securenn's own figures (DReLUs, closed
//! forms, CPU seconds by op kind), for `knapsec simulate`, `knapsec bench secure` and the
//! tests.

use crate::backend::SecureNn;
use crate::exec::Plan;
use crate::options::Options;
use crate::profile::CpuByKind;
use knapsec_core::backend::{BackendError, PartyOutput};
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_net::CommReport;
use serde::Serialize;
use std::time::Duration;

pub use knapsec_runtime::sim::{process_cpu_seconds, run_backend};

/// Traffic and time of one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseReport {
    /// Wall-clock seconds (the slowest party).
    pub seconds: f64,
    /// CPU seconds of the whole process (all three parties and their worker threads) during
    /// the phase ([`process_cpu_seconds`]). On a loaded machine this is the figure that does
    /// not depend on the other processes.
    pub cpu_seconds: f64,
    /// CPU seconds of the three party threads by op kind ([`crate::profile`]), summed over
    /// the parties.
    pub cpu_by_kind: CpuByKind,
    /// CPU seconds of the other threads of the process during the phase (`cpu_seconds`
    /// less the party threads'): the rayon pool, which runs the products of the linear
    /// layers and the parallel ring operations.
    pub cpu_workers: f64,
    /// Bytes and rounds of the phase.
    pub comm: CommReport,
}

impl From<knapsec_runtime::PhaseReport> for PhaseReport {
    fn from(p: knapsec_runtime::PhaseReport) -> Self {
        PhaseReport {
            seconds: p.seconds,
            cpu_seconds: p.cpu_seconds,
            cpu_by_kind: CpuByKind::from_names(p.cpu_by_kind.iter().map(|(k, v)| (k.as_str(), *v))),
            cpu_workers: p.cpu_workers,
            comm: p.comm,
        }
    }
}

/// The result of a simulated inference.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// What the client learned.
    pub output: PartyOutput,
    /// The per-session set-up.
    pub setup: PhaseReport,
    /// The offline phase of the inference.
    pub offline: PhaseReport,
    /// The online phase of the inference.
    pub online: PhaseReport,
    /// DReLUs evaluated (network and argmax).
    pub drelus: u64,
    /// Closed-form bytes per inference (offline and online).
    pub closed_form_bytes: u64,
    /// Closed-form bytes per session set-up.
    pub closed_form_setup_bytes: u64,
}

/// Runs one inference with all three parties as threads of this process, with fresh random
/// session keys, through the runtime's harness ([`knapsec_runtime::simulate`]). `timeout`
/// bounds every receive (a stuck protocol becomes an error).
///
/// # Errors
/// Options or a model the backend refuses, and the first party's error.
pub fn simulate(
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    options: Options,
    timeout: Option<Duration>,
) -> Result<SimReport, BackendError> {
    let plan = Plan::new(model, options)?;
    let (closed_form_bytes, closed_form_setup_bytes) = plan.closed_form_bytes(model);
    let backend = SecureNn::default();
    let r = knapsec_runtime::simulate(
        &backend,
        model,
        weights,
        input,
        &options.canonical(),
        timeout,
    )?;
    Ok(SimReport {
        output: r.output,
        setup: r.setup.into(),
        offline: r.offline.into(),
        online: r.online.into(),
        drelus: plan.drelus(),
        closed_form_bytes,
        closed_form_setup_bytes,
    })
}
