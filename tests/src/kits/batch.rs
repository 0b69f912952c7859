//! Batched inference for every backend (issue 20): `N` images in one inference through the
//! runtime's lockstep lanes ([`knapsec_runtime::batch`]) give each image the result it gets
//! alone, in the rounds of one image, with each lane's bytes plus the stated bundle framing.

use super::backend::all_ops_model;
use super::{KitResult, ensure};
use knapsec_core::backend::{PartyOutput, SecureBackend};
use knapsec_runtime::batch::BUNDLE_OVERHEAD_PER_LANE;
use knapsec_runtime::{PhaseReport, simulate_batch};
use std::time::Duration;

/// The images of the batch: the kit's input, scaled and shifted per image so that every
/// image has its own result.
fn images(input: &[f32], n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|j| {
            input
                .iter()
                .enumerate()
                .map(|(i, x)| x * (1.0 - 0.2 * j as f32) + ((i * 7 + j) % 5) as f32 * 0.1)
                .collect()
        })
        .collect()
}

fn logits(name: &str, out: &PartyOutput) -> Result<Vec<f32>, String> {
    match out {
        PartyOutput::Logits(l) => Ok(l.clone()),
        other => Err(format!("backend {name:?}: expected logits, got {other:?}")),
    }
}

/// Checks a phase of a batch of `n` against the same phase of one image: equal rounds and
/// messages, and `n` times each message plus its framing.
fn same_shape(
    name: &str,
    phase: &str,
    one: &PhaseReport,
    batch: &PhaseReport,
    n: usize,
) -> KitResult {
    let (a, b) = (&one.comm, &batch.comm);
    ensure(a.rounds == b.rounds, || {
        format!(
            "backend {name:?}, {phase}: {} rounds for {n} images, {} for one",
            b.rounds, a.rounds
        )
    })?;
    ensure(a.messages == b.messages, || {
        format!(
            "backend {name:?}, {phase}: {} messages for {n} images, {} for one",
            b.messages, a.messages
        )
    })?;
    let want = n as u64 * (a.bytes + a.messages * BUNDLE_OVERHEAD_PER_LANE as u64);
    ensure(b.bytes == want, || {
        format!(
            "backend {name:?}, {phase}: {} bytes for {n} images, expected {want}",
            b.bytes
        )
    })
}

/// Runs the all-ops model of the backend kit with a batch of `n` images (and each image
/// alone) and checks results, rounds and bytes; `tolerance` bounds the difference from
/// `knapsec-plain` per logit, as in [`super::backend::check_end_to_end`].
pub fn check_batch(backend: &dyn SecureBackend, n: usize, tolerance: f32) -> KitResult {
    let name = backend.name();
    let (model, weights, input) = all_ops_model();
    let xs = images(&input, n);
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
    let timeout = Some(Duration::from_secs(120));
    let batch = simulate_batch(backend, &model, &weights, &refs, "", timeout)
        .map_err(|e| format!("backend {name:?}: a batch of {n} failed: {e}"))?;
    ensure(batch.outputs.len() == n, || {
        format!(
            "backend {name:?}: {} outputs for {n} images",
            batch.outputs.len()
        )
    })?;
    let one = simulate_batch(backend, &model, &weights, &refs[..1], "", timeout)
        .map_err(|e| format!("backend {name:?}: one image failed: {e}"))?;
    for (j, (x, out)) in xs.iter().zip(&batch.outputs).enumerate() {
        let want = knapsec_plain::evaluate(&model, &weights, x)
            .map_err(|e| format!("knapsec-plain refused the kit's model: {e}"))?
            .logits();
        let got = logits(name, out)?;
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        ensure(got.len() == want.len() && worst <= tolerance, || {
            format!(
                "backend {name:?}: image {j} of {n} differs from knapsec-plain by {worst}: {got:?} vs {want:?}"
            )
        })?;
    }
    same_shape(name, "setup", &one.setup, &batch.setup, n)?;
    same_shape(name, "offline", &one.offline, &batch.offline, n)?;
    same_shape(name, "online", &one.online, &batch.online, n)
}
