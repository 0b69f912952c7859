//! Synthetic but realistic knapsack instances shaped exactly like the reference networks.
//!
//! * [`reference_table`]: the layer tables of the four networks the reference ships (digest
//!   §4.2–4.5), from the architectures' own descriptions (tch-free: `ResNetPlan` of
//!   `knapsec-arch-kit`, `DeepLabPlan` of `knapsec-arch-deeplab` without its `torch` feature),
//!   without registering them. The conformance tests check that all four agree with the
//!   registered adapters.
//! * [`reference_candidates`]: the reference's candidate preset for a layer (its
//!   `BLOCK_SIZES_<H>x<H>` list, digest §1.4, via [`candidates::preset_for_side`]).
//! * [`synthetic_distortion`]: a seeded distortion table on such a network. The model: a
//!   per-layer log-scale `μ_ℓ ~ N(0, 1)`, a per-channel scale `s_c = 1e-4·exp(μ_ℓ + N(0, 1))`
//!   (log-normal), a plain ReLU costs nothing (`1x1` → 0, as measured), a patch `h×w` of area
//!   `A` gives `s_c · (1 − A^(−1/2)) · (max(h,w)/min(h,w))^0.1 · exp(0.25·N(0,1))` (grows with the
//!   area, noisy, so only roughly monotone in cost, like real data), and identity gives
//!   `s_c · exp(N(0.3, 0.5))` (comparable to the largest patches). Duplicate candidates of a
//!   preset (e.g. `7x7` twice in `14x14`) are dropped, keeping the first.

use crate::{Error, Result};
use knapsec_arch_deeplab::{DEEPLABV3_MOBILENETV2, DEEPLABV3_RESNET50, DeepLabPlan};
use knapsec_arch_kit::resnet::{RESNET18_CIFAR, RESNET50_IMAGENET, ResNetPlan};
use knapsec_core::distortion::{DistortionTable, Provenance};
use knapsec_core::{ArchOptions, BlockSize, LayerTable, ReluLayer, candidates};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The reference networks, in the order of the paper's figures.
pub const REFERENCE_ARCHS: [&str; 4] = [
    RESNET18_CIFAR,
    RESNET50_IMAGENET,
    DEEPLABV3_MOBILENETV2,
    DEEPLABV3_RESNET50,
];

/// The reference's layer table of `arch` (one of [`REFERENCE_ARCHS`]): the registered
/// architecture's, from its description at the default options.
pub fn reference_table(arch: &str) -> Result<LayerTable> {
    let table = match arch {
        RESNET18_CIFAR | RESNET50_IMAGENET => {
            ResNetPlan::new(arch, &ArchOptions::default())?.layer_table()?
        }
        DEEPLABV3_MOBILENETV2 | DEEPLABV3_RESNET50 => {
            DeepLabPlan::new(arch, &ArchOptions::default())?.layer_table()?
        }
        other => {
            return Err(Error::Invalid(format!(
                "no reference layer table for {other:?} (known: {})",
                REFERENCE_ARCHS.join(", ")
            )));
        }
    };
    Ok(table)
}

/// The reference's candidate list for a layer: the preset named after its map side, without
/// duplicates (first kept). Layers whose side has no preset get generated candidates (cap 16).
pub fn reference_candidates(layer: &ReluLayer) -> Vec<BlockSize> {
    let mut list = candidates::preset_for_side(layer.height)
        .unwrap_or_else(|_| candidates::generate(layer.height, layer.width, 16));
    let mut seen = std::collections::HashSet::new();
    list.retain(|b| seen.insert(*b));
    list
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A seeded synthetic distortion table on `table` with `candidates(layer)` (see the module doc).
pub fn synthetic_distortion(
    table: &LayerTable,
    candidates: impl Fn(&ReluLayer) -> Vec<BlockSize>,
    seed: u64,
) -> DistortionTable {
    synthetic_distortion_with_noise(table, candidates, seed, DEFAULT_NOISE)
}

/// The log-noise of the patch distortions in [`synthetic_distortion`].
pub const DEFAULT_NOISE: f64 = 0.25;

/// [`synthetic_distortion`] with another log-noise `σ` on the patch distortions (larger: less
/// monotone in cost, harder instances; `σ = 1` is a stress test).
pub fn synthetic_distortion_with_noise(
    table: &LayerTable,
    candidates: impl Fn(&ReluLayer) -> Vec<BlockSize>,
    seed: u64,
    noise: f64,
) -> DistortionTable {
    let prov = Provenance {
        weights_hash: "synthetic".into(),
        sample_seed: seed,
        sample_count: 0,
        metric: "synthetic-output-mse".into(),
    };
    let mut d = DistortionTable::unmeasured(table, &candidates, prov);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for layer in d.layers.values_mut() {
        let mu = normal(&mut rng);
        let cands = layer.candidates.clone();
        for c in 0..layer.channels {
            let scale = 1e-4 * (mu + normal(&mut rng)).exp();
            let row = layer.row_mut(c);
            for (k, b) in cands.iter().enumerate() {
                row[k] = match *b {
                    BlockSize::Patch { h: 1, w: 1 } => 0.0,
                    BlockSize::Patch { h, w } => {
                        let area = f64::from(h) * f64::from(w);
                        let aspect = f64::from(h.max(w)) / f64::from(h.min(w));
                        scale
                            * (1.0 - area.powf(-0.5))
                            * aspect.powf(0.1)
                            * (noise * normal(&mut rng)).exp()
                    }
                    BlockSize::Identity | BlockSize::Zero => {
                        scale * (0.3 + 0.5 * normal(&mut rng)).exp()
                    }
                };
            }
        }
    }
    d
}

/// The synthetic instance of a reference network: its table, the reference candidates and a
/// seeded distortion table.
pub fn reference_instance(arch: &str, seed: u64) -> Result<(LayerTable, DistortionTable)> {
    let table = reference_table(arch)?;
    let d = synthetic_distortion(&table, reference_candidates, seed);
    Ok((table, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_tables_have_the_digest_totals() {
        for (arch, layers, channels, drelus) in [
            ("resnet18-cifar", 17, 3_904, 557_056),
            ("resnet50-imagenet", 49, 22_720, 9_608_704),
            ("deeplabv3-mobilenetv2", 40, 17_344, 85_262_848),
            ("deeplabv3-resnet50", 57, 25_856, 127_402_496),
        ] {
            let t = reference_table(arch).unwrap();
            assert_eq!(
                (t.layers.len(), t.channels(), t.drelus()),
                (layers, channels, drelus),
                "{arch}"
            );
        }
        assert!(reference_table("vgg").is_err());
    }

    #[test]
    fn option_counts_after_merging_match_the_reference() {
        // digest §3.2: K after merging equal costs = 36 (ResNet18-CIFAR), 53 (ResNet50), 54 (both
        // segmentation models) — our candidate lists have no `1x0`, so the merged counts match.
        for (arch, k) in [
            ("resnet18-cifar", 36),
            ("resnet50-imagenet", 53),
            ("deeplabv3-mobilenetv2", 54),
            ("deeplabv3-resnet50", 54),
        ] {
            let t = reference_table(arch).unwrap();
            let kmax = t
                .layers
                .iter()
                .map(|l| {
                    let mut costs: Vec<u64> = reference_candidates(l)
                        .iter()
                        .map(|b| b.drelu_cost(l.height, l.width))
                        .collect();
                    costs.sort();
                    costs.dedup();
                    costs.len()
                })
                .max()
                .unwrap();
            assert_eq!(kmax, k, "{arch}");
        }
    }

    #[test]
    fn synthetic_tables_are_seeded_and_valid() {
        let (t, a) = reference_instance("resnet18-cifar", 1).unwrap();
        a.validate(&t).unwrap();
        let (_, b) = reference_instance("resnet18-cifar", 1).unwrap();
        assert_eq!(a, b);
        let (_, c) = reference_instance("resnet18-cifar", 2).unwrap();
        assert_ne!(a, c);
        let stem = a.layer("stem").unwrap();
        assert_eq!(stem.row(0)[0], 0.0, "1x1 first, zero distortion");
    }
}
