//! All three parties of any [`SecureBackend`] in one process (threads) over the metered
//! in-memory transport: the harness behind `knapsec simulate`, `knapsec bench secure` and the
//! backend conformance kit (DESIGN §5).
//!
//! [`simulate`] drives the backend's phases ([`SecureBackend::open_session`] once per
//! session, [`PartySession::offline`] and [`PartySession::online`] per inference) and
//! separates them by a barrier, so that each phase is timed and metered on its own. Rounds
//! are causal rounds ([`knapsec_net::metered`]), counted from zero in each phase. A party that
//! fails poisons the barrier and drops its transport, so the others stop with an error
//! instead of waiting; the reported error is the first one that is not a mere consequence
//! (a disconnection, or "another party failed").

#![allow(unsafe_code)]

use crate::batch::{diverged, run_lanes};
use knapsec_core::backend::{
    BackendError, ExpectedCost, PartyJob, PartyOutput, PartySession, SecureBackend, SessionJob,
    SessionKeys,
};
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::transport::{Role, TransportError};
use knapsec_net::{CommReport, Metered, RoundTracker, memory_network};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Traffic and time of one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseReport {
    /// Wall-clock seconds (the slowest party).
    pub seconds: f64,
    /// CPU seconds of the whole process (all three parties and their worker threads) during
    /// the phase, from [`process_cpu_seconds`]. On a loaded machine this is the figure that
    /// does not depend on the other processes.
    pub cpu_seconds: f64,
    /// CPU seconds of the three party threads by op kind, summed over the parties, as the
    /// backend reports them ([`PartySession::take_cpu_profile`]; empty if it does not).
    pub cpu_by_kind: BTreeMap<String, f64>,
    /// CPU seconds of the other threads of the process during the phase (`cpu_seconds` less
    /// the party threads' by kind), where the backend reports by kind; else 0.
    pub cpu_workers: f64,
    /// Bytes and rounds of the phase.
    pub comm: CommReport,
}

/// The result of a simulated session of one inference.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// The backend's registry name.
    pub backend: String,
    /// What the client learned (of the first image, in a batch).
    pub output: PartyOutput,
    /// What the client learned of each image of the batch, in order (`outputs[0]` is
    /// `output`); one entry without a batch.
    #[serde(skip)]
    pub outputs: Vec<PartyOutput>,
    /// Images in the inference: each phase carries all of them in the rounds of one image
    /// ([`crate::batch`]).
    pub batch: usize,
    /// The once-per-session phase.
    pub setup: PhaseReport,
    /// The offline phase of the inference.
    pub offline: PhaseReport,
    /// The online phase of the inference.
    pub online: PhaseReport,
    /// The backend's closed-form costs, if it states them.
    pub expected: Option<ExpectedCost>,
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

/// The message of a party stopped because another failed.
pub const ANOTHER_FAILED: &str = "another party failed";

/// A barrier between the phases of the three party threads of one process, which a failing
/// party poisons so that the others stop instead of waiting for ever. Backends with their
/// own in-process harness (the `fss` backend's, which also reports what each party holds
/// between the phases) use it too.
#[derive(Debug)]
pub struct PhaseBarrier {
    state: Mutex<(usize, u64, bool)>,
    cv: Condvar,
}

impl Default for PhaseBarrier {
    fn default() -> Self {
        Self::new()
    }
}

impl PhaseBarrier {
    /// A barrier for three parties.
    pub fn new() -> Self {
        PhaseBarrier {
            state: Mutex::new((0, 0, false)),
            cv: Condvar::new(),
        }
    }

    /// Waits until all three parties arrive; an error ([`BackendError::Party`] with
    /// [`ANOTHER_FAILED`]) once a party has poisoned the barrier.
    pub fn wait(&self, role: Role) -> Result<(), BackendError> {
        let poisoned = || BackendError::Party {
            role,
            message: ANOTHER_FAILED.into(),
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

    /// Marks the barrier failed and wakes every waiting party.
    pub fn poison(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.2 = true;
        }
        self.cv.notify_all();
    }
}

struct PartyResult {
    outputs: Vec<PartyOutput>,
    reports: [CommReport; 3],
    seconds: [f64; 3],
    cpu: [f64; 3],
    by_kind: [Vec<(&'static str, f64)>; 3],
}

/// What one party thread runs.
struct PartyRun<'a> {
    role: Role,
    backend: &'a dyn SecureBackend,
    model: &'a SecureModel,
    weights: Option<&'a ModelWeights>,
    /// The client's images (one per lane); `None` at server and helper.
    inputs: Option<&'a [&'a [f32]]>,
    /// Images in the batch.
    lanes: usize,
    options: &'a str,
    keys: &'a SessionKeys,
    tracker: &'a RoundTracker,
    barrier: &'a PhaseBarrier,
}

impl PartyRun<'_> {
    fn run(
        self,
        mut t: Metered<knapsec_net::MemoryTransport>,
    ) -> Result<PartyResult, BackendError> {
        let role = self.role;
        let mut reports: [CommReport; 3] = Default::default();
        let mut seconds = [0.0; 3];
        let mut cpu = [0.0; 3];
        let mut by_kind: [Vec<(&'static str, f64)>; 3] = Default::default();
        let barrier = self.barrier;
        let tracker = self.tracker;
        let mut phase_end = |t: &mut Metered<_>,
                             sessions: &mut [Box<dyn PartySession + '_>],
                             k: usize,
                             start: Instant,
                             cpu_start: &mut f64|
         -> Result<(), BackendError> {
            by_kind[k] = merge_profiles(sessions);
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
            merge_profiles(sessions);
            Ok(())
        };
        barrier.wait(role)?;
        let mut cpu_start = process_cpu_seconds();
        let start = Instant::now();
        let job = SessionJob {
            role,
            model: self.model,
            weights: self.weights,
            options: self.options,
            keys: self.keys,
        };
        let backend = self.backend;
        let mut sessions = run_lanes(
            &mut t,
            vec![(); self.lanes],
            |_, (), lane| backend.open_session(job, lane),
            diverged,
        )?;
        phase_end(&mut t, &mut sessions, 0, start, &mut cpu_start)?;
        let start = Instant::now();
        run_lanes(
            &mut t,
            sessions.iter_mut().collect(),
            |j, s, lane| s.offline(j as u64, lane),
            diverged,
        )?;
        phase_end(&mut t, &mut sessions, 1, start, &mut cpu_start)?;
        let start = Instant::now();
        let inputs: Vec<Option<&[f32]>> = match self.inputs {
            Some(xs) => xs.iter().map(|x| Some(*x)).collect(),
            None => vec![None; self.lanes],
        };
        let outputs = run_lanes(
            &mut t,
            sessions.iter_mut().zip(inputs).collect(),
            |j, (s, x), lane| s.online(j as u64, x, lane),
            diverged,
        )?;
        phase_end(&mut t, &mut sessions, 2, start, &mut cpu_start)?;
        Ok(PartyResult {
            outputs,
            reports,
            seconds,
            cpu,
            by_kind,
        })
    }
}

/// The CPU profiles of the lanes' sessions, summed by op kind (resetting them).
fn merge_profiles(sessions: &mut [Box<dyn PartySession + '_>]) -> Vec<(&'static str, f64)> {
    let mut sum: Vec<(&'static str, f64)> = Vec::new();
    for s in sessions {
        for (kind, secs) in s.take_cpu_profile() {
            match sum.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, v)) => *v += secs,
                None => sum.push((kind, secs)),
            }
        }
    }
    sum
}

/// Fresh random session keys for the three parties of one process (each party's `private`
/// seed is drawn apart).
pub fn fresh_session_keys() -> SessionKeys {
    SessionKeys {
        client_server: Some(rand::random()),
        client_helper: Some(rand::random()),
        server_helper: Some(rand::random()),
        ..Default::default()
    }
}

/// True for an error that only follows from another party's failure.
fn is_secondary(e: &BackendError) -> bool {
    matches!(e, BackendError::Party { message, .. } if message == ANOTHER_FAILED)
        || matches!(
            e,
            BackendError::Transport {
                source: TransportError::Disconnected { .. },
                ..
            }
        )
}

/// The first error that is not secondary (else the first).
fn primary(errs: Vec<BackendError>) -> Option<BackendError> {
    let k = errs.iter().position(|e| !is_secondary(e)).unwrap_or(0);
    errs.into_iter().nth(k)
}

/// Runs `party(role, end)` for the three roles on threads of this process (each with its
/// transport end, in [`Role::ALL`] order) and returns their results in that order; a thread
/// that panics gives `panicked(role, message)`.
pub fn run_parties<X: Send, T: Send, E: Send>(
    ends: [X; 3],
    panicked: impl Fn(Role, String) -> E,
    party: impl Fn(Role, X) -> Result<T, E> + Sync,
) -> Vec<Result<T, E>> {
    let party = &party;
    std::thread::scope(|scope| {
        let hs: Vec<_> = ends
            .into_iter()
            .zip(Role::ALL)
            .map(|(t, role)| scope.spawn(move || party(role, t)))
            .collect();
        hs.into_iter()
            .zip(Role::ALL)
            .map(|(h, role)| {
                h.join()
                    .unwrap_or_else(|p| Err(panicked(role, panic_message(p))))
            })
            .collect()
    })
}

/// A party thread that panicked, as the runtime reports it.
fn panicked(role: Role, message: String) -> BackendError {
    BackendError::Party {
        role,
        message: format!("the party thread panicked: {message}"),
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// Runs one session of one inference of `backend` with all three parties as threads of this
/// process, with fresh random session keys, each phase timed and metered apart. `timeout`
/// bounds every receive (a stuck protocol becomes an error).
///
/// # Errors
/// The first party's error that is not a consequence of another's (see the module
/// documentation); a party thread that panics is reported as [`BackendError::Party`].
pub fn simulate(
    backend: &dyn SecureBackend,
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    options: &str,
    timeout: Option<Duration>,
) -> Result<SimReport, BackendError> {
    simulate_batch(backend, model, weights, &[input], options, timeout)
}

/// As [`simulate`], with a batch of images in one inference: each image runs in a lane
/// ([`crate::batch`]), every round carries all of them, so the phases' rounds are those of
/// one image. `inputs` must not be empty.
///
/// # Errors
/// As [`simulate`]; an empty batch is [`BackendError::Options`].
pub fn simulate_batch(
    backend: &dyn SecureBackend,
    model: &SecureModel,
    weights: &ModelWeights,
    inputs: &[&[f32]],
    options: &str,
    timeout: Option<Duration>,
) -> Result<SimReport, BackendError> {
    if inputs.is_empty() {
        return Err(BackendError::Options(
            "a batch needs at least one image".into(),
        ));
    }
    let expected = backend.expected_cost(model, options)?;
    let keys = fresh_session_keys();
    let tracker = RoundTracker::new();
    let barrier = PhaseBarrier::new();
    let ends = memory_network().map(|mut t| {
        t.set_timeout(timeout);
        Metered::with_tracker(t, tracker.clone())
    });
    let results = run_parties(ends, panicked, |role, t| {
        let mut k = keys.clone();
        k.private = rand::random();
        let r = PartyRun {
            role,
            backend,
            model,
            weights: (role == Role::Server).then_some(weights),
            inputs: (role == Role::Client).then_some(inputs),
            lanes: inputs.len(),
            options,
            keys: &k,
            tracker: &tracker,
            barrier: &barrier,
        }
        .run(t);
        if r.is_err() {
            barrier.poison();
        }
        r
    });
    if results.iter().any(Result::is_err) {
        let errs = results.into_iter().filter_map(Result::err).collect();
        return Err(primary(errs).expect("at least one error"));
    }
    let mut rs: Vec<PartyResult> = results.into_iter().map(|r| r.expect("checked")).collect();
    let phase = |k: usize, rs: &[PartyResult]| {
        let mut comm = CommReport::default();
        let mut cpu_by_kind = BTreeMap::<String, f64>::new();
        for r in rs {
            comm.merge(&r.reports[k]);
            for (kind, s) in &r.by_kind[k] {
                *cpu_by_kind.entry((*kind).to_string()).or_default() += s;
            }
        }
        let threads: f64 = cpu_by_kind.values().sum();
        PhaseReport {
            seconds: rs.iter().map(|r| r.seconds[k]).fold(0.0, f64::max),
            cpu_seconds: rs[0].cpu[k],
            cpu_workers: if cpu_by_kind.is_empty() {
                0.0
            } else {
                (rs[0].cpu[k] - threads).max(0.0)
            },
            cpu_by_kind,
            comm,
        }
    };
    let (setup, offline, online) = (phase(0, &rs), phase(1, &rs), phase(2, &rs));
    let outputs = std::mem::take(&mut rs[0].outputs);
    Ok(SimReport {
        backend: backend.name().to_string(),
        output: outputs[0].clone(),
        outputs,
        batch: inputs.len(),
        setup,
        offline,
        online,
        expected,
    })
}

/// Runs one inference of `backend` through [`SecureBackend::run`] (no phase split) with its
/// three parties as threads over the metered in-memory transport: what the client learned,
/// the merged traffic and the wall time.
///
/// # Errors
/// As [`simulate`].
pub fn run_backend(
    backend: &dyn SecureBackend,
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    options: &str,
    timeout: Option<Duration>,
) -> Result<(PartyOutput, CommReport, f64), BackendError> {
    let keys = fresh_session_keys();
    let tracker = RoundTracker::new();
    let ends = memory_network().map(|mut t| {
        t.set_timeout(timeout);
        Metered::with_tracker(t, tracker.clone())
    });
    let start = Instant::now();
    let results = run_parties(ends, panicked, |role, mut t| {
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
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut comm = CommReport::default();
    let mut output = PartyOutput::Nothing;
    let mut errs = Vec::new();
    for (r, role) in results.into_iter().zip(Role::ALL) {
        match r {
            Ok((o, c)) => {
                comm.merge(&c);
                if role == Role::Client {
                    output = o;
                }
            }
            Err(e) => errs.push(e),
        }
    }
    match primary(errs) {
        Some(e) => Err(e),
        None => Ok((output, comm, seconds)),
    }
}
