//! The registered backend over the in-memory transport: the client's nonce, the helper's
//! per-session cache of masked weights, and failures that end in errors, not hangs.

use knapsec_core::backend::{PartyJob, PartyOutput, SecureBackend, SessionKeys};
use knapsec_core::block::BlockSize;
use knapsec_core::graph::OutputKind;
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, random_weights};
use knapsec_core::transport::{Role, Transport, TransportError};
use knapsec_net::{Metered, memory_network};
use knapsec_securenn::{SecureNn, sim::run_backend};
use std::time::Duration;

fn model() -> (
    knapsec_core::graph::SecureModel,
    knapsec_core::graph::ModelWeights,
) {
    let mut g = GraphBuilder::new("tiny", 12, [2, 6, 6]);
    let c = g
        .conv("conv", g.input(), ConvSpec::square(4, 3, 1, 1), Some("bn"))
        .unwrap();
    let r = g
        .block_relu(
            "relu",
            c,
            vec![
                BlockSize::RELU,
                BlockSize::Patch { h: 2, w: 2 },
                BlockSize::Identity,
                BlockSize::RELU,
            ],
        )
        .unwrap();
    let p = g.global_avg_pool("gap", r).unwrap();
    g.linear("fc", p, 3, true).unwrap();
    let (m, _) = g.finish(OutputKind::Classification).unwrap();
    let w = random_weights(&m, 1);
    (m, w)
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
    let keys = SessionKeys {
        client_server: Some([1; 32]),
        client_helper: Some([2; 32]),
        server_helper: Some([3; 32]),
        private: [0; 32],
    };
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
                        let job = PartyJob {
                            role,
                            model: m,
                            weights: (role == Role::Server).then_some(w),
                            input: (role == Role::Client).then_some(x.as_slice()),
                            options: "",
                            keys,
                            transport: &mut t,
                        };
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
    let keys = SessionKeys {
        client_server: Some([1; 32]),
        client_helper: Some([2; 32]),
        server_helper: Some([3; 32]),
        private: [0; 32],
    };
    let errs: Vec<String> = std::thread::scope(|sc| {
        let run = |role: Role, mut t: knapsec_net::MemoryTransport| {
            let (m, w, x, keys, backend) = (&m, &w, &x, &keys, &backend);
            sc.spawn(move || {
                t.set_timeout(Some(Duration::from_secs(10)));
                let job = PartyJob {
                    role,
                    model: m,
                    weights: (role == Role::Server).then_some(w),
                    input: (role == Role::Client).then_some(x.as_slice()),
                    options: "",
                    keys,
                    transport: &mut t as &mut dyn Transport,
                };
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
