//! Seeded randomness for tests, benchmarks and training: tensors, permutations and dropout
//! masks drawn on the CPU from a ChaCha generator that the caller owns and seeds.
//!
//! tch's own random ops (`randn`, `rand`, `randperm`, `dropout`, `uniform_`, the initialisers)
//! draw from one global generator per process. Tests run in parallel threads share it, so
//! `tch::manual_seed` followed by a draw is not reproducible there, and tch 0.26 exposes no
//! per-call generator. Everything here takes the generator explicitly instead.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

/// The generator behind every draw here.
pub type SeededRng = rand_chacha::ChaCha8Rng;

/// A generator seeded with `seed`.
pub fn seeded(seed: u64) -> SeededRng {
    SeededRng::seed_from_u64(seed)
}

fn tensor(values: Vec<f64>, shape: &[i64], (kind, device): (Kind, Device)) -> Tensor {
    Tensor::from_slice(&values)
        .view(shape)
        .to_kind(kind)
        .to_device(device)
}

/// A tensor of `shape` with independent standard normal values (Box–Muller), as `kind` on
/// `device`.
pub fn randn<R: Rng + ?Sized>(rng: &mut R, shape: &[i64], options: (Kind, Device)) -> Tensor {
    let numel = shape.iter().product::<i64>().max(0) as usize;
    let mut values = Vec::with_capacity(numel + 1);
    while values.len() < numel {
        // u1 in (0, 1], so that ln(u1) is finite.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        values.push(r * t.cos());
        values.push(r * t.sin());
    }
    values.truncate(numel);
    tensor(values, shape, options)
}

/// A tensor of `shape` with independent values uniform in `[low, high)`, as `kind` on
/// `device`.
pub fn uniform<R: Rng + ?Sized>(
    rng: &mut R,
    shape: &[i64],
    low: f64,
    high: f64,
    options: (Kind, Device),
) -> Tensor {
    let numel = shape.iter().product::<i64>().max(0) as usize;
    let values = (0..numel)
        .map(|_| low + (high - low) * rng.random::<f64>())
        .collect();
    tensor(values, shape, options)
}

/// A uniformly random permutation of `0..n`, as an `int64` tensor on `device`.
pub fn randperm<R: Rng + ?Sized>(rng: &mut R, n: i64, device: Device) -> Tensor {
    let mut order: Vec<i64> = (0..n.max(0)).collect();
    order.shuffle(rng);
    Tensor::from_slice(&order).to_device(device)
}

/// Dropout with probability `p` in training (each value zeroed with probability `p`, the
/// others scaled by `1 / (1 − p)`, as `torch.nn.functional.dropout`), the identity otherwise.
pub fn dropout<R: Rng + ?Sized>(rng: &mut R, x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    let keep = uniform(rng, &x.size(), 0.0, 1.0, (Kind::Float, x.device())).ge(p);
    x * keep.to_kind(x.kind()) / (1.0 - p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_values_and_another_seed_others() {
        let opts = (Kind::Float, Device::Cpu);
        let a = randn(&mut seeded(4), &[3, 5], opts);
        let b = randn(&mut seeded(4), &[3, 5], opts);
        let c = randn(&mut seeded(5), &[3, 5], opts);
        assert_eq!(a.size(), vec![3, 5]);
        assert!(a.equal(&b));
        assert!(!a.equal(&c));
    }

    #[test]
    fn normal_and_uniform_values_have_their_moments() {
        let opts = (Kind::Double, Device::Cpu);
        let x = randn(&mut seeded(1), &[20_001], opts);
        let (mean, std) = (
            x.mean(Kind::Double).double_value(&[]),
            x.std(true).double_value(&[]),
        );
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((std - 1.0).abs() < 0.03, "std {std}");
        let u = uniform(&mut seeded(2), &[10_000], -2.0, 4.0, opts);
        let (lo, hi) = (u.min().double_value(&[]), u.max().double_value(&[]));
        assert!(
            (-2.0..-1.9).contains(&lo) && (3.9..4.0).contains(&hi),
            "{lo} {hi}"
        );
        assert!((u.mean(Kind::Double).double_value(&[]) - 1.0).abs() < 0.06);
    }

    #[test]
    fn randperm_is_a_permutation() {
        let p = Vec::<i64>::try_from(randperm(&mut seeded(3), 50, Device::Cpu)).unwrap();
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(
            p, sorted,
            "50 elements come back in order with probability 1/50!"
        );
    }

    #[test]
    fn dropout_zeroes_about_p_and_scales_the_rest() {
        let x = Tensor::ones([10_000], (Kind::Float, Device::Cpu));
        let y = dropout(&mut seeded(6), &x, 0.25, true);
        let v = Vec::<f32>::try_from(&y).unwrap();
        let zeros = v.iter().filter(|&&a| a == 0.0).count();
        assert!((2_300..2_700).contains(&zeros), "{zeros} zeros");
        assert!(v.iter().all(|&a| a == 0.0 || (a - 4.0 / 3.0).abs() < 1e-6));
        assert!(dropout(&mut seeded(6), &x, 0.25, false).equal(&x));
    }
}
