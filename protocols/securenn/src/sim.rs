//! All three parties in one process (threads) over the metered in-memory transport: the
//! runner behind `knapsec simulate` and `knapsec bench secure`, and the tests.
//!
//! The phases are separated by a barrier, so that each phase is timed and metered on its
//! own: setup (once per session), offline and online (per inference). Rounds are causal
//! rounds ([`knapsec_net::metered`]), counted from zero in each phase. A party that fails
//! poisons the barrier and drops its transport, so the others stop with an error instead of
//! waiting; the reported error is the first one that is not a mere disconnection.

#![allow(unsafe_code)]

use crate::backend::exchange_contributions;
use crate::ctx::Ctx;
use crate::error::{Result, SecureNnError};
use crate::exec::Session;
use crate::options::Options;
use crate::profile::{self, CpuByKind};
use knapsec_core::backend::{PartyOutput, SessionKeys};
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::transport::Role;
use knapsec_net::{CommReport, Metered, RoundTracker, memory_network};
use serde::Serialize;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Traffic and time of one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseReport {
    /// Wall-clock seconds (the slowest party).
    pub seconds: f64,
    /// CPU seconds of the whole process (all three parties and their worker threads) during
    /// the phase, from [`process_cpu_seconds`]. On a loaded machine this is
    /// the figure that does not depend on the other processes.
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

/// CPU seconds (user + system) of this process so far: `getrusage` on Unix (microseconds),
/// else `/proc/self/stat` (clock ticks of 10 ms); 0 where unavailable.
pub fn process_cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: an all-zero rusage is a valid value; getrusage only writes it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is valid and writable.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            return tv(ru.ru_utime) + tv(ru.ru_stime);
        }
    }
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
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
    /// Closed-form bytes per inference and per session setup.
    pub closed_form_bytes: u64,
    /// Closed-form bytes per session set-up.
    pub closed_form_setup_bytes: u64,
}

/// One party thread's role, transport, weights and input.
type Job<'a, T> = (Role, T, Option<&'a ModelWeights>, Option<&'a [f32]>);

/// A barrier that a failing party can poison.
struct PhaseBarrier {
    state: Mutex<(usize, u64, bool)>,
    cv: Condvar,
}

impl PhaseBarrier {
    fn new() -> Self {
        PhaseBarrier {
            state: Mutex::new((0, 0, false)),
            cv: Condvar::new(),
        }
    }

    fn wait(&self, role: Role) -> Result<()> {
        let poisoned = || SecureNnError::Thread {
            role,
            message: "another party failed".into(),
        };
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        if s.2 {
            return Err(poisoned());
        }
        let generation = s.1;
        s.0 += 1;
        if s.0 == 3 {
            s.0 = 0;
            s.1 += 1;
            self.cv.notify_all();
            return Ok(());
        }
        while s.1 == generation && !s.2 {
            s = self.cv.wait(s).map_err(|_| poisoned())?;
        }
        if s.2 { Err(poisoned()) } else { Ok(()) }
    }

    fn poison(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.2 = true;
        }
        self.cv.notify_all();
    }
}

struct PartyResult {
    output: PartyOutput,
    reports: [CommReport; 3],
    seconds: [f64; 3],
    cpu: [f64; 3],
    by_kind: [CpuByKind; 3],
}

#[allow(clippy::too_many_arguments)]
fn party(
    role: Role,
    transport: Metered<knapsec_net::MemoryTransport>,
    tracker: &RoundTracker,
    barrier: &PhaseBarrier,
    model: &SecureModel,
    weights: Option<&ModelWeights>,
    input: Option<&[f32]>,
    options: Options,
    keys: &SessionKeys,
) -> Result<PartyResult> {
    let mut t = transport;
    let mut session = Session::new(role, model, weights, options)?;
    let mut reports: [CommReport; 3] = Default::default();
    let mut seconds = [0.0; 3];
    let mut cpu = [0.0; 3];
    let mut by_kind: [CpuByKind; 3] = Default::default();
    let mut phase_end =
        |t: &mut Metered<_>, k: usize, start: Instant, cpu_start: &mut f64| -> Result<()> {
            by_kind[k] = profile::take();
            barrier.wait(role)?;
            seconds[k] = start.elapsed().as_secs_f64();
            let now = process_cpu_seconds();
            cpu[k] = now - *cpu_start;
            reports[k] = t.take_report();
            barrier.wait(role)?;
            if role == Role::Client {
                tracker.reset();
            }
            barrier.wait(role)?;
            *cpu_start = process_cpu_seconds();
            profile::take();
            Ok(())
        };
    barrier.wait(role)?;
    let mut cpu_start = process_cpu_seconds();
    profile::take();
    // setup
    let start = Instant::now();
    {
        let mut ctx = Ctx::new(role, &mut t, keys);
        session.setup(&mut ctx)?;
    }
    phase_end(&mut t, 0, start, &mut cpu_start)?;
    // offline (the contribution exchange is part of it)
    let start = Instant::now();
    let pre = {
        let mut ctx = Ctx::new(role, &mut t, keys);
        let ik = exchange_contributions(&mut ctx, keys, &model.public_hash(), 0)?;
        (session.offline(&mut ctx)?, ik)
    };
    phase_end(&mut t, 1, start, &mut cpu_start)?;
    let start = Instant::now();
    let output = {
        let mut ctx = Ctx::new(role, &mut t, keys);
        ctx.set_inference(&pre.1);
        session.online(&mut ctx, &pre.0, input)?
    };
    phase_end(&mut t, 2, start, &mut cpu_start)?;
    Ok(PartyResult {
        output,
        reports,
        seconds,
        cpu,
        by_kind,
    })
}

/// Runs one inference with all three parties as threads of this process, with fresh random
/// session keys. `timeout` bounds every receive (a stuck protocol becomes an error).
pub fn simulate(
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    options: Options,
    timeout: Option<Duration>,
) -> Result<SimReport> {
    let plan = crate::exec::Plan::new(model, options)?;
    let (closed_form_bytes, closed_form_setup_bytes) = plan.closed_form_bytes(model);
    let keys = SessionKeys {
        client_server: Some(rand::random()),
        client_helper: Some(rand::random()),
        server_helper: Some(rand::random()),
        private: [0; 32],
        ..SessionKeys::default()
    };
    let tracker = RoundTracker::new();
    let barrier = PhaseBarrier::new();
    let [c, s, h] = memory_network().map(|mut t| {
        t.set_timeout(timeout);
        Metered::with_tracker(t, tracker.clone())
    });
    let results: Vec<Result<PartyResult>> = std::thread::scope(|scope| {
        let jobs: [Job<'_, _>; 3] = [
            (Role::Client, c, None, Some(input)),
            (Role::Server, s, Some(weights), None),
            (Role::Helper, h, None, None),
        ];
        let hs: Vec<_> = jobs
            .into_iter()
            .map(|(role, t, w, x)| {
                let (tracker, barrier, keys) = (&tracker, &barrier, &keys);
                scope.spawn(move || {
                    let mut k = keys.clone();
                    k.private = rand::random();
                    let r = party(role, t, tracker, barrier, model, w, x, options, &k);
                    if r.is_err() {
                        barrier.poison();
                    }
                    r
                })
            })
            .collect();
        hs.into_iter()
            .zip(Role::ALL)
            .map(|(h, role)| {
                h.join().unwrap_or_else(|p| {
                    let message = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into());
                    Err(SecureNnError::Thread { role, message })
                })
            })
            .collect()
    });
    if results.iter().any(|r| r.is_err()) {
        let is_secondary = |e: &SecureNnError| {
            matches!(e, SecureNnError::Thread { message, .. } if message == "another party failed")
                || matches!(
                    e,
                    SecureNnError::Transport {
                        source: knapsec_core::transport::TransportError::Disconnected { .. },
                        ..
                    }
                )
        };
        let mut errs: Vec<SecureNnError> = results.into_iter().filter_map(|r| r.err()).collect();
        let k = errs.iter().position(|e| !is_secondary(e)).unwrap_or(0);
        return Err(errs.swap_remove(k));
    }
    let mut rs: Vec<PartyResult> = results.into_iter().map(|r| r.expect("checked")).collect();
    let phase = |k: usize, rs: &[PartyResult]| {
        let mut comm = CommReport::default();
        for r in rs {
            comm.merge(&r.reports[k]);
        }
        let mut cpu_by_kind = CpuByKind::default();
        for r in rs {
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
        closed_form_bytes,
        closed_form_setup_bytes,
    })
}

/// Runs one inference of any [`SecureBackend`](knapsec_core::SecureBackend) with its three
/// parties as threads over the metered in-memory transport (no phase split): what the client
/// learned, the merged traffic and the wall time.
pub fn run_backend(
    backend: &dyn knapsec_core::SecureBackend,
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    options: &str,
    timeout: Option<Duration>,
) -> std::result::Result<(PartyOutput, CommReport, f64), knapsec_core::backend::BackendError> {
    use knapsec_core::backend::{BackendError, PartyJob};
    let keys = SessionKeys {
        client_server: Some(rand::random()),
        client_helper: Some(rand::random()),
        server_helper: Some(rand::random()),
        private: [0; 32],
        ..SessionKeys::default()
    };
    let tracker = RoundTracker::new();
    let ends = memory_network().map(|mut t| {
        t.set_timeout(timeout);
        Metered::with_tracker(t, tracker.clone())
    });
    let start = Instant::now();
    let results: Vec<std::result::Result<(PartyOutput, CommReport), BackendError>> =
        std::thread::scope(|scope| {
            let hs: Vec<_> = ends
                .into_iter()
                .zip(Role::ALL)
                .map(|(mut t, role)| {
                    let keys = &keys;
                    scope.spawn(move || {
                        let mut k = keys.clone();
                        k.private = rand::random();
                        let job = PartyJob {
                            role,
                            model,
                            weights: (role == Role::Server).then_some(weights),
                            input: (role == Role::Client).then_some(input),
                            options,
                            keys: &k,
                            inference: 0,
                            transport: &mut t,
                        };
                        let out = backend.run(job)?;
                        Ok((out, t.report()))
                    })
                })
                .collect();
            hs.into_iter()
                .zip(Role::ALL)
                .map(|(h, role)| {
                    h.join().unwrap_or_else(|_| {
                        Err(BackendError::Party {
                            role,
                            message: "the party thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
    let seconds = start.elapsed().as_secs_f64();
    let mut comm = CommReport::default();
    let mut output = PartyOutput::Nothing;
    let mut first_err = None;
    for (r, role) in results.into_iter().zip(Role::ALL) {
        match r {
            Ok((o, c)) => {
                comm.merge(&c);
                if role == Role::Client {
                    output = o;
                }
            }
            Err(e) => {
                let secondary = matches!(
                    e,
                    BackendError::Transport {
                        source: knapsec_core::transport::TransportError::Disconnected { .. },
                        ..
                    }
                );
                if first_err.as_ref().is_none_or(|(s, _)| *s && !secondary) {
                    first_err = Some((secondary, e));
                }
            }
        }
    }
    match first_err {
        Some((_, e)) => Err(e),
        None => Ok((output, comm, seconds)),
    }
}
