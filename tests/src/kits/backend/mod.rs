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
//!
//! [`check_conformance`] (for every registered private backend) adds, through the runtime's
//! phased harness ([`knapsec_runtime::simulate`]):
//! 6. on each of the small graphs of [`kit_graphs`] — a ResNet basic block with mixed block
//!    ReLUs and identity channels, a MobileNetV2 inverted residual (ReLU6, depthwise), max
//!    pooling, concatenation, average and global pooling, padding and pooling with
//!    asymmetric pads and in ceil mode, the secure argmax revealing only the label
//!    (classification) or the label map (segmentation), and a segmentation head with ×2 and
//!    ×8 bilinear resizing revealing its label map — the client learns
//!    what `knapsec-plain` computes (logits within the tolerance; labels equal wherever
//!    plain's two best logits are more than twice the tolerance apart), server and helper
//!    nothing;
//! 7. the backend states its closed-form costs ([`SecureBackend::expected_cost`]) and
//!    options revealing labels only ([`SecureBackend::label_only_options`]), and the metered
//!    traffic of each graph equals the closed forms: setup bytes, bytes per inference,
//!    offline and online bytes and online rounds where stated.
//!
//! [`check_fixed_point`] (part of [`check_conformance`]) holds the backend to the fixed-point
//! contract of `knapsec-plain` (its crate documentation), on the oracle's shared cases
//! ([`knapsec_plain::cases`]), which the backends' own tests run for their byte counts too:
//! 8. ops without truncation (block ReLU with patch, identity and zero channels, ReLU6, max
//!    pooling also with asymmetric pads and in ceil mode, add, concat, broadcast, zero
//!    padding, nearest resizing) agree bit for bit; each convolution and bilinear resize
//!    within one truncation (`−1..0` ulp); average pooling and a linear layer within the
//!    bounds the weights give; metered traffic equals the closed forms (rule 7);
//! 9. under approximate DReLU windows (the options' `drelu` field: `Approx(bits,
//!    lsb_ignored)`, uniform or `Calibrated` per site) the logits equal the oracle's emulation
//!    ([`knapsec_plain::evaluate_with`]) bit for bit on inputs where no decision depends on
//!    the helper's masks.
//!
//! [`check_networks`] (part of [`check_conformance`]) adds whole networks:
//! 10. a ResNet18-CIFAR-shaped network with a mixed block spec reveals plain's label, a
//!     DeepLab-like one plain's label map (up to pixels within the noise), and a narrow
//!     ResNet18 under exact DReLU and a 20-bit window gives logits within 0.2 of plain's.

mod graphs;

pub use graphs::{KitGraph, all_ops_model, kit_graphs, resnet18_shaped};

use super::{KitResult, check_name, ensure};
use knapsec_core::backend::{BackendError, PartyJob, PartyOutput, SecureBackend, SessionKeys};
use knapsec_core::block::BlockSize;
use knapsec_core::drelu::{DreluChoice, DreluWindow};
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::graph_build::random_weights;
use knapsec_core::transport::Role;
use knapsec_runtime::SimReport;
use knapsec_securenn::nets;
use std::time::Duration;

/// The worst absolute difference between `got` and `want`, checked against `tolerance`.
fn compare_logits(what: &str, got: &[f32], want: &[f32], tolerance: f32) -> KitResult {
    ensure(got.len() == want.len(), || {
        format!("{what}: {} logits, expected {}", got.len(), want.len())
    })?;
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    ensure(worst <= tolerance, || {
        format!(
            "{what}: logits differ from knapsec-plain by {worst} (> {tolerance}): {got:?} vs {want:?}"
        )
    })
}

/// One inference of `backend` through the runtime's phased harness; rule 7: the metered
/// traffic equals the closed forms the backend states.
fn run_metered(
    backend: &dyn SecureBackend,
    what: &str,
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    options: &str,
) -> Result<SimReport, String> {
    let r = knapsec_runtime::simulate(
        backend,
        model,
        weights,
        input,
        options,
        Some(Duration::from_secs(60)),
    )
    .map_err(|e| format!("{what}: {e}"))?;
    let cost = backend
        .expected_cost(model, options)
        .map_err(|e| format!("{what}: expected_cost failed: {e}"))?
        .ok_or_else(|| format!("{what}: states no closed-form costs"))?;
    let check = |field: &str, stated: u64, metered: u64| {
        ensure(stated == metered, || {
            format!("{what}: closed-form {field} {stated}, metered {metered}")
        })
    };
    check("setup bytes", cost.setup_bytes, r.setup.comm.bytes)?;
    check(
        "bytes per inference",
        cost.inference_bytes,
        r.offline.comm.bytes + r.online.comm.bytes,
    )?;
    let optional = [
        ("offline bytes", cost.offline_bytes, r.offline.comm.bytes),
        ("online bytes", cost.online_bytes, r.online.comm.bytes),
        ("online rounds", cost.online_rounds, r.online.comm.rounds),
    ];
    for (field, stated, metered) in optional {
        if let Some(stated) = stated {
            check(field, stated, metered)?;
        }
    }
    Ok(r)
}

/// Rules 6 to 10 for `backend` on every graph of [`kit_graphs`] (logits within `tolerance`,
/// absolute, in real units, per logit) and every case of [`knapsec_plain::cases`].
pub fn check_conformance(backend: &dyn SecureBackend, tolerance: f32) -> KitResult {
    let name = backend.name();
    let label_options = backend
        .label_only_options("")
        .map_err(|e| format!("backend {name:?}: label-only options refused: {e}"))?
        .ok_or_else(|| format!("backend {name:?}: states no options that reveal labels only"))?;
    for graph in kit_graphs() {
        let what = format!("backend {name:?}, graph {:?}", graph.name);
        let plain = knapsec_plain::evaluate(&graph.model, &graph.weights, &graph.input)
            .map_err(|e| format!("{what}: knapsec-plain refused it: {e}"))?;
        let options = if graph.label_only {
            label_options.as_str()
        } else {
            ""
        };
        let r = run_metered(
            backend,
            &what,
            &graph.model,
            &graph.weights,
            &graph.input,
            options,
        )?;
        let want = plain.logits();
        match (&r.output, graph.label_only) {
            (PartyOutput::Logits(got), false) => compare_logits(&what, got, &want, tolerance)?,
            (PartyOutput::Labels(got), true) => {
                let labels = plain.labels();
                ensure(got.len() == labels.len(), || {
                    format!("{what}: {} labels, expected {}", got.len(), labels.len())
                })?;
                let classes = graph.model.output_shape()[0] as usize;
                let pixels = labels.len();
                for (p, (&g, &l)) in got.iter().zip(&labels).enumerate() {
                    let logit = |c: usize| want[c * pixels + p];
                    let mut sorted: Vec<f32> = (0..classes).map(logit).collect();
                    sorted.sort_by(|a, b| b.total_cmp(a));
                    let clear = sorted.len() < 2 || sorted[0] - sorted[1] > 2.0 * tolerance;
                    ensure(g == l || !clear, || {
                        format!("{what}: pixel {p}: label {g}, knapsec-plain's is {l}")
                    })?;
                    ensure(
                        (g as usize) < classes && logit(g as usize) >= sorted[0] - 2.0 * tolerance,
                        || {
                            format!(
                                "{what}: pixel {p}: label {g} is not a best class of knapsec-plain's logits"
                            )
                        },
                    )?;
                }
            }
            (other, label_only) => {
                return Err(format!(
                    "{what}: the client got {other:?}, expected {}",
                    if label_only { "labels" } else { "logits" }
                ));
            }
        }
    }
    check_fixed_point(backend)?;
    check_networks(backend)
}

/// The options of a backend that computes every DReLU under `choice` and reveals the logits
/// (the `drelu` field of DESIGN §4's backend options).
fn window_options(choice: DreluChoice) -> String {
    let drelu = match choice {
        DreluChoice::Exact => "Exact".to_string(),
        DreluChoice::Uniform(w) => {
            format!("Approx(bits: {}, lsb_ignored: {})", w.bits, w.lsb_ignored)
        }
        DreluChoice::Calibrated => "Calibrated".to_string(),
    };
    format!("(drelu: {drelu}, reveal: Logits)")
}

/// Rules 8 and 9: the fixed-point contract of `knapsec-plain` on its cases, and bit-for-bit
/// agreement with its emulation of approximate DReLU windows.
pub fn check_fixed_point(backend: &dyn SecureBackend) -> KitResult {
    let name = backend.name();
    for case in knapsec_plain::cases::all() {
        let what = format!("backend {name:?}, case {:?}", case.name);
        let r = run_metered(backend, &what, &case.model, &case.weights, &case.input, "")?;
        case.check(&r.output)
            .map_err(|e| format!("backend {name:?}: {e}"))?;
    }
    let windows = [
        knapsec_plain::cases::approx_block_relu(),
        knapsec_plain::cases::approx_relu6_pool(),
    ];
    for case in windows {
        let what = format!("backend {name:?}, windows on {:?}", case.model.arch);
        let mut failure = None;
        let mut secure = |choice| {
            let run = backend
                .canonical_options(&window_options(choice))
                .map_err(|e| format!("{what}: options {choice} refused: {e}"))
                .and_then(|options| {
                    run_metered(
                        backend,
                        &what,
                        &case.model,
                        &case.weights,
                        &case.input,
                        &options,
                    )
                });
            match run {
                Ok(SimReport {
                    output: PartyOutput::Logits(v),
                    ..
                }) => v,
                Ok(r) => {
                    failure.get_or_insert(format!("{what}: expected logits, got {:?}", r.output));
                    Vec::new()
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    Vec::new()
                }
            }
        };
        let agreed = case.check(&mut secure);
        if let Some(e) = failure {
            return Err(e);
        }
        agreed.map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

/// Rule 10 for `backend`: whole networks against `knapsec-plain` — a ResNet18-CIFAR-shaped one
/// with a mixed block spec reveals plain's label; a DeepLab-like one reveals plain's label map
/// (pixels whose two best logits are within 64 ulps may differ, at most one); a narrow
/// ResNet18 under exact DReLU and a 20-bit window (`label_only` options aside, the window
/// options of rule 9) gives logits within 0.2 of plain's (the truncation noise of 20 layers;
/// inside its window the approximation adds nothing).
pub fn check_networks(backend: &dyn SecureBackend) -> KitResult {
    let name = backend.name();
    let label_options = backend
        .label_only_options("")
        .map_err(|e| format!("backend {name:?}: label-only options refused: {e}"))?
        .unwrap_or_default();
    let run = |what: &str, model, weights, x: &[f32], options: &str| {
        run_metered(backend, what, model, weights, x, options).map(|r| r.output)
    };
    let (model, weights) = resnet18_shaped(8, 0.06, 2, 11);
    for seed in 0..2 {
        let what = format!("backend {name:?}, resnet18-shaped, input {seed}");
        let x = knapsec_plain::cases::input(&model, seed);
        let plain = knapsec_plain::evaluate(&model, &weights, &x).map_err(|e| e.to_string())?;
        let got = run(&what, &model, &weights, &x, &label_options)?;
        ensure(got == PartyOutput::Labels(plain.labels()), || {
            format!(
                "{what}: {got:?}, knapsec-plain's label {:?}",
                plain.labels()
            )
        })?;
    }
    let blocks = (0..8)
        .map(|c| {
            if c % 3 == 0 {
                BlockSize::Patch { h: 2, w: 2 }
            } else {
                BlockSize::RELU
            }
        })
        .collect();
    let model = nets::deeplab_like(16, 8, 5, blocks).map_err(|e| e.to_string())?;
    let weights = random_weights(&model, 5);
    let x = knapsec_plain::cases::input(&model, 4);
    let what = format!("backend {name:?}, deeplab-like");
    match run(&what, &model, &weights, &x, &label_options)? {
        PartyOutput::Labels(got) => {
            knapsec_plain::cases::check_label_map(&model, &weights, &x, &got, 64, 1)
                .map_err(|e| format!("{what}: {e}"))?
        }
        other => return Err(format!("{what}: expected a label map, got {other:?}")),
    }
    // small activations (inputs in ±2, weights ~1/sqrt(fan_in)) stay inside a 20-bit window
    let (model, weights) = resnet18_shaped(4, 0.2, 3, 12);
    let x = knapsec_plain::cases::input(&model, 9);
    let plain = knapsec_plain::evaluate(&model, &weights, &x)
        .map_err(|e| e.to_string())?
        .logits();
    let window = DreluWindow {
        bits: 20,
        lsb_ignored: 0,
    };
    for choice in [DreluChoice::Exact, DreluChoice::Uniform(window)] {
        let what = format!("backend {name:?}, narrow resnet18 under {choice}");
        let options = backend
            .canonical_options(&window_options(choice))
            .map_err(|e| format!("{what}: options refused: {e}"))?;
        match run(&what, &model, &weights, &x, &options)? {
            PartyOutput::Logits(got) => compare_logits(&what, &got, &plain, 0.2)?,
            other => return Err(format!("{what}: expected logits, got {other:?}")),
        }
    }
    Ok(())
}

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
    let run = |drop_helper, secs| {
        let timeout = Duration::from_secs(secs);
        run_three(backend, &model, &weights, &input, "", drop_helper, timeout)
    };
    let mut results = run(false, 60).into_iter();
    let client = results.next().expect("three results");
    match client {
        Ok(PartyOutput::Logits(got)) => {
            compare_logits(&format!("backend {name:?}"), &got, &want, tolerance)?;
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
    for r in run(true, 20) {
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
