//! The secure-backend kit ([`knapsec_core::SecureBackend`], DESIGN §5).
//!
//! Rules checked by [`check`] (the protocol engineers extend this kit with end-to-end runs
//! against `knapsec-plain`):
//! 1. a usable name and a non-empty description;
//! 2. the default options (empty text) are accepted, and their canonical form is a fixed
//!    point (canonicalising it again gives the same text), so both parties of a handshake
//!    compare equal bytes;
//! 3. options that are not RON are refused with `BackendError::Options`.
//!
//! [`check_end_to_end`] (for backends that really run three parties) adds:
//! 4. one inference of a small graph using every kind of op (conv with folded BN, grouped
//!    conv, mixed block ReLU with identity and zero channels, max and average pooling,
//!    residual add, concat, global average pooling, linear) with its three parties as threads
//!    over the in-memory transport gives the client the logits of `knapsec-plain` within
//!    the stated tolerance, and the server and helper nothing;
//! 5. a party whose peer disappears returns an error (no hang).

use super::{KitResult, check_name, ensure};
use knapsec_core::backend::{BackendError, PartyJob, PartyOutput, SecureBackend, SessionKeys};
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{ModelWeights, OutputKind, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, random_weights};
use knapsec_core::transport::Role;
use std::time::Duration;

/// Runs every rule of this kit.
pub fn check(backend: &dyn SecureBackend) -> KitResult {
    let name = backend.name();
    check_name("secure-backend", name)?;
    ensure(!backend.description().trim().is_empty(), || {
        format!("backend {name:?}: empty description")
    })?;
    let canonical = backend
        .canonical_options("")
        .map_err(|e| format!("backend {name:?}: the default options are refused: {e}"))?;
    let again = backend.canonical_options(&canonical).map_err(|e| {
        format!("backend {name:?}: its own canonical options {canonical:?} are refused: {e}")
    })?;
    ensure(again == canonical, || {
        format!(
            "backend {name:?}: canonical options are not a fixed point: {canonical:?} became {again:?}"
        )
    })?;
    match backend.canonical_options("((( not ron") {
        Err(BackendError::Options(_)) => Ok(()),
        Err(e) => Err(format!(
            "backend {name:?}: malformed options refused with the wrong error: {e}"
        )),
        Ok(c) => Err(format!(
            "backend {name:?}: malformed options accepted as {c:?}"
        )),
    }
}

/// The small all-ops graph of rule 4, its random weights and an input.
pub fn all_ops_model() -> (SecureModel, ModelWeights, Vec<f32>) {
    let mut g = GraphBuilder::new("kit-all-ops", 12, [3, 10, 10]);
    let x = g.input();
    let c = g
        .conv("conv1", x, ConvSpec::square(6, 3, 1, 1), Some("bn1"))
        .expect("conv");
    let blocks = vec![
        BlockSize::RELU,
        BlockSize::Patch { h: 2, w: 2 },
        BlockSize::Patch { h: 3, w: 4 },
        BlockSize::Identity,
        BlockSize::Zero,
        BlockSize::RELU,
    ];
    let r = g.block_relu("relu1", c, blocks).expect("relu");
    let m = g
        .max_pool("maxpool", r, [3, 3], [2, 2], [1, 1])
        .expect("maxpool");
    let grouped = ConvSpec {
        groups: 3,
        ..ConvSpec::square(6, 3, 1, 1)
    };
    let d = g.conv("conv2", m, grouped, Some("bn2")).expect("conv");
    let a = g.add("add", &[d, m]).expect("add");
    let p = g
        .avg_pool("avgpool", a, [2, 2], [1, 1], [0, 0], true)
        .expect("avgpool");
    let q = g
        .avg_pool("avgpool2", m, [2, 2], [1, 1], [0, 0], false)
        .expect("avgpool");
    let cat = g.concat("concat", &[p, q]).expect("concat");
    let gap = g.global_avg_pool("gap", cat).expect("gap");
    g.linear("fc", gap, 5, true).expect("fc");
    let (model, _) = g.finish(OutputKind::Classification).expect("valid graph");
    let weights = random_weights(&model, 7);
    let [c, h, w] = model.input_shape();
    let input = (0..c * h * w)
        .map(|i| ((i as f32) * 0.618).sin() * 2.0)
        .collect();
    (model, weights, input)
}

/// Runs one inference of `backend` with its three parties as threads over the in-memory
/// transport (fixed test keys, receive timeout `timeout`). Returns each party's result.
pub fn run_three(
    backend: &dyn SecureBackend,
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    options: &str,
    drop_helper: bool,
    timeout: Duration,
) -> Vec<Result<PartyOutput, BackendError>> {
    let keys = SessionKeys {
        client_server: Some([11; 32]),
        client_helper: Some([12; 32]),
        server_helper: Some([13; 32]),
        private: [14; 32],
        ..SessionKeys::default()
    };
    let ends = knapsec_net::memory_network();
    std::thread::scope(|s| {
        let handles: Vec<_> = ends
            .into_iter()
            .zip(Role::ALL)
            .filter_map(|(mut t, role)| {
                if drop_helper && role == Role::Helper {
                    return None;
                }
                let keys = &keys;
                Some(s.spawn(move || {
                    t.set_timeout(Some(timeout));
                    backend.run(PartyJob {
                        role,
                        model,
                        weights: (role == Role::Server).then_some(weights),
                        input: (role == Role::Client).then_some(input),
                        options,
                        keys,
                        inference: 0,
                        transport: &mut t,
                    })
                }))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BackendError::Party {
                        role: Role::Client,
                        message: "party thread panicked".into(),
                    })
                })
            })
            .collect()
    })
}

/// Rules 4 and 5: agreement with `knapsec-plain` within `tolerance` (absolute, in real
/// units, per logit) and an error when the helper is missing.
pub fn check_end_to_end(backend: &dyn SecureBackend, tolerance: f32) -> KitResult {
    let name = backend.name();
    let (model, weights, input) = all_ops_model();
    let plain = knapsec_plain::evaluate(&model, &weights, &input)
        .map_err(|e| format!("knapsec-plain refused the kit's model: {e}"))?;
    let want = plain.logits();
    let results = run_three(
        backend,
        &model,
        &weights,
        &input,
        "",
        false,
        Duration::from_secs(60),
    );
    let mut results = results.into_iter();
    let client = results.next().expect("three results");
    match client {
        Ok(PartyOutput::Logits(got)) => {
            ensure(got.len() == want.len(), || {
                format!(
                    "backend {name:?}: {} logits, expected {}",
                    got.len(),
                    want.len()
                )
            })?;
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            ensure(worst <= tolerance, || {
                format!(
                    "backend {name:?}: logits differ from knapsec-plain by {worst} (> {tolerance}): {got:?} vs {want:?}"
                )
            })?;
        }
        Ok(other) => {
            return Err(format!(
                "backend {name:?}: the client got {other:?}, expected logits"
            ));
        }
        Err(e) => return Err(format!("backend {name:?}: the client failed: {e}")),
    }
    for (r, role) in results.zip([Role::Server, Role::Helper]) {
        match r {
            Ok(PartyOutput::Nothing) => {}
            Ok(other) => return Err(format!("backend {name:?}: the {role} learned {other:?}")),
            Err(e) => return Err(format!("backend {name:?}: the {role} failed: {e}")),
        }
    }
    let results = run_three(
        backend,
        &model,
        &weights,
        &input,
        "",
        true,
        Duration::from_secs(20),
    );
    for r in results {
        ensure(r.is_err(), || {
            format!("backend {name:?}: a party succeeded although the helper never came")
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::backend::{PartyJob, PartyOutput};

    /// Options are a RON unit `()` or a number of bits; `sloppy` accepts anything.
    struct Toy {
        sloppy: bool,
    }

    impl SecureBackend for Toy {
        fn name(&self) -> &str {
            "toy"
        }
        fn description(&self) -> &str {
            "a toy"
        }
        fn canonical_options(&self, options: &str) -> Result<String, BackendError> {
            if options.trim().is_empty() {
                return Ok("16".into());
            }
            match options.trim().parse::<u32>() {
                Ok(bits) => Ok(bits.to_string()),
                Err(_) if self.sloppy => Ok(options.into()),
                Err(e) => Err(BackendError::Options(e.to_string())),
            }
        }
        fn run(&self, _: PartyJob<'_>) -> Result<PartyOutput, BackendError> {
            Err(BackendError::Unsupported("toy".into()))
        }
    }

    #[test]
    fn kit_accepts_a_correct_backend_and_refuses_a_sloppy_one() {
        check(&Toy { sloppy: false }).unwrap();
        let e = check(&Toy { sloppy: true }).unwrap_err();
        assert!(e.contains("malformed options accepted"), "{e}");
    }
}
