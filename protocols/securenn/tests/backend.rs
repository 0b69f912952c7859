//! The registered backend over the in-memory transport: per-inference contributions (a
//! replaying client is refused, and cannot make masks repeat), the helper's
//! per-session cache of masked weights, and failures that end in errors, not hangs.

use knapsec_core::backend::{PartyJob, PartyOutput, SecureBackend, SessionKeys};
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{ModelWeights, OutputKind, SecureModel};
use knapsec_core::graph_build::{GraphBuilder, random_weights};
use knapsec_core::transport::{Role, Transport, TransportError};
use knapsec_net::{Metered, memory_network};
use knapsec_securenn::{SecureNn, sim::run_backend};
use std::time::Duration;

fn model() -> (SecureModel, ModelWeights) {
    let mut g = GraphBuilder::new("tiny", 12, [2, 6, 6]);
    let blocks = vec![
        BlockSize::RELU,
        BlockSize::Patch { h: 2, w: 2 },
        BlockSize::Identity,
        BlockSize::RELU,
    ];
    let r = knapsec_plain::cases::conv_block_relu(&mut g, blocks);
    let p = g.global_avg_pool("gap", r).unwrap();
    g.linear("fc", p, 3, true).unwrap();
    let (m, _) = g.finish(OutputKind::Classification).unwrap();
    let w = random_weights(&m, 1);
    (m, w)
}

/// One party's job of inference `inference` of `model` with the default options: the server
/// gets the weights, the client the input.
fn job<'a>(
    role: Role,
    (model, weights, input): (&'a SecureModel, &'a ModelWeights, &'a [f32]),
    keys: &'a SessionKeys,
    inference: u64,
    transport: &'a mut dyn Transport,
) -> PartyJob<'a> {
    PartyJob {
        role,
        model,
        weights: (role == Role::Server).then_some(weights),
        input: (role == Role::Client).then_some(input),
        options: "",
        keys,
        inference,
        transport,
    }
}

/// Fixed pair keys (a zero private seed), so that two runs are the same session.
fn fixed_keys() -> SessionKeys {
    SessionKeys {
        client_server: Some([1; 32]),
        client_helper: Some([2; 32]),
        server_helper: Some([3; 32]),
        ..SessionKeys::default()
    }
}

#[test]
fn backend_runs_and_the_helper_keeps_the_masked_weights() {
    let (m, w) = model();
    let x: Vec<f32> = (0..72).map(|i| (i as f32 * 0.37).sin()).collect();
    let plain = knapsec_plain::evaluate(&m, &w, &x).unwrap();
    let backend = SecureNn::default();
    assert_eq!(
        backend.canonical_options("").unwrap(),
        "(drelu:Exact,reveal:Logits)"
    );
    assert!(
        backend
            .canonical_options("(drelu: Approx(bits: 0, lsb_ignored: 0))")
            .is_err()
    );
    let (out, comm, _) = run_backend(
        &backend,
        &m,
        &w,
        &x,
        "(reveal: Label)",
        Some(Duration::from_secs(30)),
    )
    .unwrap();
    assert_eq!(out, PartyOutput::Labels(plain.labels()));
    let setup = comm.op("setup").bytes;
    assert_eq!(
        setup,
        8 * (4 * 2 * 9 + 3 * 4) + 1,
        "masked weights once, plus the helper's flag"
    );

    // A second inference with the same keys reuses the helper's cached masked weights.
    let keys = fixed_keys();
    let mut setups = Vec::new();
    for _ in 0..2 {
        let ends = memory_network().map(Metered::new);
        let reports: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = ends
                .into_iter()
                .zip(Role::ALL)
                .map(|(mut t, role)| {
                    let (m, w, x, keys, backend) = (&m, &w, &x, &keys, &backend);
                    s.spawn(move || {
                        let job = job(role, (m, w, x), keys, 0, &mut t);
                        let out = backend.run(job).unwrap();
                        (out, t.report())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let PartyOutput::Logits(l) = &reports[0].0 else {
            panic!("logits expected")
        };
        let want = plain.logits();
        assert!(
            l.iter().zip(&want).all(|(a, b)| (a - b).abs() < 0.01),
            "{l:?} vs {want:?}"
        );
        setups.push(reports[1].1.op("setup").bytes);
    }
    assert_eq!(setups, vec![8 * (4 * 2 * 9 + 3 * 4), 0]);
}

#[test]
fn a_missing_helper_is_an_error_naming_it() {
    let (m, w) = model();
    let x = vec![0.5f32; 72];
    let [c, s, h] = memory_network();
    drop(h);
    let backend = SecureNn::default();
    let keys = fixed_keys();
    let errs: Vec<String> = std::thread::scope(|sc| {
        let run = |role: Role, mut t: knapsec_net::MemoryTransport| {
            let (m, w, x, keys, backend) = (&m, &w, &x, &keys, &backend);
            sc.spawn(move || {
                t.set_timeout(Some(Duration::from_secs(10)));
                let job = job(role, (m, w, x), keys, 0, &mut t);
                backend.run(job).unwrap_err().to_string()
            })
        };
        let a = run(Role::Client, c);
        let b = run(Role::Server, s);
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    for e in &errs {
        assert!(
            e.contains("helper disconnected")
                || e.contains("client disconnected")
                || e.contains("server disconnected"),
            "{e}"
        );
    }
    assert!(
        errs.iter().any(|e| e.contains("helper disconnected")),
        "{errs:?}"
    );
    let _ = TransportError::SelfMessage { peer: Role::Client };
}

#[test]
fn wrong_input_size_is_a_clear_error() {
    let (m, w) = model();
    let err = run_backend(
        &SecureNn::default(),
        &m,
        &w,
        &[0.0; 5],
        "",
        Some(Duration::from_secs(10)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("input has 5 values"), "{err}");
}

/// A client that replays the randomness it sent in the first inference (a hand-driven
/// transport rewrites its first message to each peer: the nonce, or the client's
/// contribution) and records what it receives from the helper.
struct Replay<'a> {
    inner: &'a mut dyn Transport,
    /// Client: the first message of inference 1 to each peer, to replay in inference 2.
    first: &'a mut [Option<Vec<u8>>; 3],
    replay: bool,
    sent: [bool; 3],
    /// Client: every message received from the helper.
    received: Vec<Vec<u8>>,
}

impl Transport for Replay<'_> {
    fn role(&self) -> Role {
        self.inner.role()
    }
    fn send(&mut self, to: Role, mut msg: Vec<u8>) -> Result<(), TransportError> {
        if self.inner.role() == Role::Client && !self.sent[to.index()] {
            self.sent[to.index()] = true;
            match &self.first[to.index()] {
                Some(old) if self.replay => msg = old.clone(),
                _ => self.first[to.index()] = Some(msg.clone()),
            }
        }
        self.inner.send(to, msg)
    }
    fn recv(&mut self, from: Role) -> Result<Vec<u8>, TransportError> {
        let m = self.inner.recv(from)?;
        if self.inner.role() == Role::Client && from == Role::Helper {
            self.received.push(m.clone());
        }
        Ok(m)
    }
    fn set_scope(&mut self, layer: &str, op: &str) {
        self.inner.set_scope(layer, op)
    }
}

/// Runs inference `index` of a session with `keys`; the client replays `first` if `replay`.
/// Returns each party's result and what the client received from the helper.
fn replayed_inference(
    keys: &SessionKeys,
    first: &mut [Option<Vec<u8>>; 3],
    replay: bool,
    index: u64,
) -> (Vec<Result<PartyOutput, String>>, Vec<Vec<u8>>) {
    let (m, w) = model();
    let x: Vec<f32> = (0..72).map(|i| (i as f32 * 0.21).cos()).collect();
    let backend = SecureNn::default();
    let mut first_copy = first.clone();
    let outcome = std::thread::scope(|sc| {
        let hs: Vec<_> = memory_network()
            .into_iter()
            .zip(Role::ALL)
            .map(|(mut t, role)| {
                let (m, w, x, backend) = (&m, &w, &x, &backend);
                let mut firsts = if role == Role::Client {
                    std::mem::take(&mut first_copy)
                } else {
                    [None, None, None]
                };
                sc.spawn(move || {
                    t.set_timeout(Some(Duration::from_secs(10)));
                    let mut r = Replay {
                        inner: &mut t,
                        first: &mut firsts,
                        replay,
                        sent: [false; 3],
                        received: Vec::new(),
                    };
                    let job = job(role, (m, w, x), keys, index, &mut r);
                    let out = backend.run(job).map_err(|e| e.to_string());
                    let received = std::mem::take(&mut r.received);
                    (out, received, firsts)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let mut outs = Vec::new();
    let mut client_received = Vec::new();
    for (i, (out, received, firsts)) in outcome.into_iter().enumerate() {
        if i == Role::Client.index() {
            *first = firsts;
            client_received = received;
        }
        outs.push(out);
    }
    (outs, client_received)
}

#[test]
fn a_client_replaying_its_randomness_in_a_session_is_refused() {
    let keys = fixed_keys();
    let mut first = [None, None, None];
    let (outs, _) = replayed_inference(&keys, &mut first, false, 0);
    assert!(outs.iter().all(Result::is_ok), "{outs:?}");
    let (outs, _) = replayed_inference(&keys, &mut first, true, 1);
    // Server and helper both check the client's contribution: whichever sees it first
    // refuses; the other refuses too or first learns that its peer stopped.
    let server = outs[Role::Server.index()].as_ref().unwrap_err();
    let helper = outs[Role::Helper.index()].as_ref().unwrap_err();
    assert!(
        server.contains("client repeated") || helper.contains("client repeated"),
        "server: {server}; helper: {helper}"
    );
    assert!(
        server.contains("client repeated") || server.contains("helper disconnected"),
        "server: {server}"
    );
    assert!(
        helper.contains("client repeated") || helper.contains("server disconnected"),
        "helper: {helper}"
    );
    assert!(outs[Role::Client.index()].is_err());
}

#[test]
fn a_replayed_client_contribution_still_gets_fresh_masks() {
    // As if the helper had forgotten the session's contributions (e.g. a new session with
    // the same pair keys): the helper's and the server's own fresh contributions change every
    // mask, so the masked values the helper opens to the client differ between two runs of
    // the same inference (with the client's nonce alone they were equal: `conv(A, F) + R`
    // with the same `A` and `R`).
    let keys = fixed_keys();
    let mut first = [None, None, None];
    let (outs, a) = replayed_inference(&keys, &mut first, false, 0);
    assert!(outs.iter().all(Result::is_ok), "{outs:?}");
    let fresh_log = SessionKeys {
        contributions: Default::default(),
        ..keys.clone()
    };
    let (outs, b) = replayed_inference(&fresh_log, &mut first, true, 0);
    assert!(outs[Role::Helper.index()].is_ok(), "{outs:?}");
    assert!(!a.is_empty() && a.len() == b.len());
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_ne!(x, y, "message {k} from the helper to the client repeats");
    }
}
