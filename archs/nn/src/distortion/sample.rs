//! Deterministic sample selection and weight fingerprints for distortion extraction
//! (digest §2.2: the reference shuffles the data set once with a fixed seed).
//!
//! Everything here is seeded with a Rust PRNG (ChaCha8), not torch's generator, so a sample
//! is the same on every machine, device and libtorch version.

use crate::error::{NnError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor, nn};

/// `count` images of shape `shape = [C, H, W]` with standard Gaussian pixels (Box–Muller over
/// ChaCha8 seeded with `seed`), as an `f32` tensor `[count, C, H, W]` on the CPU.
pub fn random_images(shape: [i64; 3], count: usize, seed: u64) -> Tensor {
    let per_image = (shape[0] * shape[1] * shape[2]).max(0) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(per_image * count);
    while data.len() < per_image * count {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        data.push((r * t.cos()) as f32);
        data.push((r * t.sin()) as f32);
    }
    data.truncate(per_image * count);
    Tensor::from_slice(&data).view([count as i64, shape[0], shape[1], shape[2]])
}

/// `count` distinct indices out of `0..total`, the first `count` of a Fisher–Yates shuffle
/// seeded with `seed` (so a larger sample extends a smaller one with the same seed).
pub fn select_indices(total: usize, count: usize, seed: u64) -> Result<Vec<usize>> {
    if count == 0 || count > total {
        return Err(NnError::Distortion(format!(
            "cannot draw {count} sample images from a data set of {total}"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..total).collect();
    for i in 0..count {
        let j = rng.random_range(i..total);
        idx.swap(i, j);
    }
    idx.truncate(count);
    Ok(idx)
}

/// A fingerprint of a network's weights: `blake3:<hex>` over every variable (name, shape and
/// `f32` values, sorted by name), BatchNorm statistics included.
pub fn weights_hash(vs: &nn::VarStore) -> String {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = blake3::Hasher::new();
    for (name, t) in vars {
        h.update(name.as_bytes());
        for d in t.size() {
            h.update(&d.to_le_bytes());
        }
        let flat = t
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .flatten(0, -1);
        let values = Vec::<f32>::try_from(&flat).unwrap_or_default();
        for v in values {
            h.update(&v.to_le_bytes());
        }
    }
    format!("blake3:{}", h.finalize().to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_images_are_seeded_and_gaussian() {
        let a = random_images([3, 4, 5], 50, 7);
        assert_eq!(a.size(), vec![50, 3, 4, 5]);
        assert!(a.equal(&random_images([3, 4, 5], 50, 7)));
        assert!(!a.equal(&random_images([3, 4, 5], 50, 8)));
        let mean = f64::try_from(a.mean(Kind::Double)).unwrap();
        let std = f64::try_from(a.std(true)).unwrap();
        assert!(
            mean.abs() < 0.1 && (std - 1.0).abs() < 0.1,
            "mean {mean} std {std}"
        );
    }

    #[test]
    fn indices_are_distinct_seeded_prefixes() {
        let a = select_indices(100, 10, 3).unwrap();
        let mut s = a.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 10);
        assert!(a.iter().all(|&i| i < 100));
        assert_eq!(select_indices(100, 20, 3).unwrap()[..10], a[..]);
        assert_ne!(select_indices(100, 10, 4).unwrap(), a);
        assert!(select_indices(5, 6, 0).is_err());
    }
}
