//! All three parties of the `fss` backend in one process (threads) over the metered
//! in-memory transport, with the phases separated by a barrier so that each is timed and
//! metered on its own (rounds counted from zero in each phase): the runner behind the tests'
//! phase figures and the `fss_bench` example. The same shape as `securenn`'s simulation
//! harness; the preprocessing each party holds between the phases (DCF keys and masks) is
//! reported too.

use crate::backend::KEY_LABEL;
use crate::error::{FssError, Result};
use crate::exec::{ClosedForm, Plan, Session};
use knapsec_core::backend::{PartyOutput, SessionKeys};
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::transport::Role;
use knapsec_net::{CommReport, Metered, RoundTracker, memory_network};
use knapsec_ring::Prg;
use knapsec_runtime::process_cpu_seconds;
use knapsec_runtime::sim::{ANOTHER_FAILED, PhaseBarrier, run_parties};
use knapsec_securenn::backend::exchange_keyed;
use knapsec_securenn::ctx::Ctx;
use knapsec_securenn::sim::PhaseReport;
use knapsec_securenn::{Options, SecureNnError, profile};
use std::time::{Duration, Instant};

/// The result of a simulated inference.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// What the client learned.
    pub output: PartyOutput,
    /// The per-session set-up.
    pub setup: PhaseReport,
    /// The offline phase of the inference.
    pub offline: PhaseReport,
    /// The online phase of the inference.
    pub online: PhaseReport,
    /// DReLUs (DCF evaluations per party) of the inference.
    pub drelus: u64,
    /// The closed-form bytes.
    pub closed_form: ClosedForm,
    /// Bytes of DCF keys held by the client and by the server (each).
    pub key_bytes: u64,
    /// Bytes of preprocessing held between the phases: client, server, helper.
    pub held_bytes: [u64; 3],
}

struct PartyResult {
    output: PartyOutput,
    reports: [CommReport; 3],
    seconds: [f64; 3],
    cpu: [f64; 3],
    by_kind: [profile::CpuByKind; 3],
    key_bytes: u64,
    held: u64,
}

#[allow(clippy::too_many_arguments)]
fn party(
    role: Role,
    mut t: Metered<knapsec_net::MemoryTransport>,
    tracker: &RoundTracker,
    barrier: &PhaseBarrier,
    model: &SecureModel,
    weights: Option<&ModelWeights>,
    input: Option<&[f32]>,
    options: Options,
    keys: &SessionKeys,
) -> Result<PartyResult> {
    let mut session = Session::from(knapsec_securenn::Session::new(
        role, model, weights, options,
    )?);
    let wait = || {
        barrier.wait(role).map_err(|_| SecureNnError::Thread {
            role,
            message: ANOTHER_FAILED.into(),
        })
    };
    let mut reports: [CommReport; 3] = Default::default();
    let mut seconds = [0.0; 3];
    let mut cpu = [0.0; 3];
    let mut by_kind: [profile::CpuByKind; 3] = Default::default();
    let mut phase_end =
        |t: &mut Metered<_>, k: usize, start: Instant, cpu_start: &mut f64| -> Result<()> {
            by_kind[k] = profile::take();
            wait()?;
            seconds[k] = start.elapsed().as_secs_f64();
            cpu[k] = process_cpu_seconds() - *cpu_start;
            reports[k] = t.take_report();
            wait()?;
            if role == Role::Client {
                tracker.reset();
            }
            wait()?;
            *cpu_start = process_cpu_seconds();
            profile::take();
            Ok(())
        };
    wait()?;
    let mut cpu_start = process_cpu_seconds();
    profile::take();
    let start = Instant::now();
    {
        let mut ctx = Ctx::new(role, &mut t, keys);
        session.shared_mut().setup(&mut ctx)?;
    }
    phase_end(&mut t, 0, start, &mut cpu_start)?;
    let start = Instant::now();
    let (mut pre, ik) = {
        let mut ctx = Ctx::new(role, &mut t, keys);
        let ik = exchange_keyed(&mut ctx, keys, KEY_LABEL, &model.public_hash(), 0)?;
        let mut private = (role == Role::Helper).then(|| Prg::new(&keys.private, "fss/dealer"));
        (session.offline(&mut ctx, private.as_mut())?, ik)
    };
    phase_end(&mut t, 1, start, &mut cpu_start)?;
    let (key_bytes, held) = (pre.key_bytes(), pre.held_bytes());
    let start = Instant::now();
    let output = {
        let mut ctx = Ctx::new(role, &mut t, keys);
        ctx.set_inference(&ik);
        session.online(&mut ctx, &mut pre, input)?
    };
    phase_end(&mut t, 2, start, &mut cpu_start)?;
    Ok(PartyResult {
        output,
        reports,
        seconds,
        cpu,
        by_kind,
        key_bytes,
        held,
    })
}

/// Runs one inference with all three parties as threads of this process, with fresh random
/// session keys (and a fresh private seed per party). `timeout` bounds every receive.
pub fn simulate(
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    options: Options,
    timeout: Option<Duration>,
) -> Result<SimReport> {
    let plan = Plan::new(model, options)?;
    let keys = SessionKeys {
        client_server: Some(rand::random()),
        client_helper: Some(rand::random()),
        server_helper: Some(rand::random()),
        private: [0; 32],
        ..SessionKeys::default()
    };
    let tracker = RoundTracker::new();
    let barrier = PhaseBarrier::new();
    let ends = memory_network().map(|mut t| {
        t.set_timeout(timeout);
        Metered::with_tracker(t, tracker.clone())
    });
    let panicked = |role, message| FssError::from(SecureNnError::Thread { role, message });
    let results = run_parties(ends, panicked, |role, t| {
        let mut k = keys.clone();
        k.private = rand::random();
        let w = (role == Role::Server).then_some(weights);
        let x = (role == Role::Client).then_some(input);
        let r = party(role, t, &tracker, &barrier, model, w, x, options, &k);
        if r.is_err() {
            barrier.poison();
        }
        r
    });
    if results.iter().any(|r| r.is_err()) {
        let secondary = |e: &FssError| {
            matches!(e, FssError::Party(SecureNnError::Thread { message, .. }) if message == ANOTHER_FAILED)
                || matches!(
                    e,
                    FssError::Party(SecureNnError::Transport {
                        source: knapsec_core::transport::TransportError::Disconnected { .. },
                        ..
                    })
                )
        };
        let mut errs: Vec<FssError> = results.into_iter().filter_map(|r| r.err()).collect();
        let k = errs.iter().position(|e| !secondary(e)).unwrap_or(0);
        return Err(errs.swap_remove(k));
    }
    let mut rs: Vec<PartyResult> = results.into_iter().map(|r| r.expect("checked")).collect();
    let phase = |k: usize, rs: &[PartyResult]| {
        let mut comm = CommReport::default();
        let mut cpu_by_kind = profile::CpuByKind::default();
        for r in rs {
            comm.merge(&r.reports[k]);
            cpu_by_kind.merge(&r.by_kind[k]);
        }
        PhaseReport {
            seconds: rs.iter().map(|r| r.seconds[k]).fold(0.0, f64::max),
            cpu_seconds: rs[0].cpu[k],
            cpu_workers: (rs[0].cpu[k] - cpu_by_kind.total()).max(0.0),
            cpu_by_kind,
            comm,
        }
    };
    let (setup, offline, online) = (phase(0, &rs), phase(1, &rs), phase(2, &rs));
    Ok(SimReport {
        output: std::mem::replace(&mut rs[0].output, PartyOutput::Nothing),
        setup,
        offline,
        online,
        drelus: plan.drelus(),
        closed_form: plan.closed_form(model),
        key_bytes: rs[0].key_bytes,
        held_bytes: [rs[0].held, rs[1].held, rs[2].held],
    })
}
