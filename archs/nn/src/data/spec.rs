//! Command-line names of data sets (`--data SPEC`) and their loading.

use super::{ImageSet, Pixels, cifar, folder, idx};
use crate::error::{NnError, Result};
use std::path::{Path, PathBuf};

/// Which part of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// A data set named on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    /// Fashion-MNIST IDX files; without a folder, `$KNAPSEC_DATA/fashion-mnist` (set up by
    /// `setup.sh`).
    FashionMnist(Option<PathBuf>),
    Mnist(PathBuf),
    Cifar10(PathBuf),
    Cifar100(PathBuf),
    /// One sub-folder per class; images resized to `size` (shorter side `size·8/7`, centre crop).
    Folder {
        dir: PathBuf,
        size: u32,
    },
    /// Seeded Gaussian images of the given shape (for tests and benchmarks).
    Random {
        count: usize,
        shape: (usize, usize, usize),
        classes: usize,
        seed: u64,
    },
}

impl std::str::FromStr for DataSpec {
    type Err = NnError;
    fn from_str(s: &str) -> Result<Self> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let need = |what: &str| {
            arg.map(PathBuf::from).ok_or_else(|| {
                NnError::Data(format!(
                    "data spec {s:?}: `{what}` needs a folder, e.g. {what}:DIR"
                ))
            })
        };
        Ok(match kind {
            "fashion-mnist" => DataSpec::FashionMnist(arg.map(PathBuf::from)),
            "mnist" => DataSpec::Mnist(need("mnist")?),
            "cifar10" => DataSpec::Cifar10(need("cifar10")?),
            "cifar100" => DataSpec::Cifar100(need("cifar100")?),
            "folder" => DataSpec::Folder {
                dir: need("folder")?,
                size: 224,
            },
            "random" => DataSpec::Random {
                count: 64,
                shape: (3, 32, 32),
                classes: 10,
                seed: 0,
            },
            other => {
                return Err(NnError::Data(format!(
                    "unknown data set {other:?} (expected fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, \
                     cifar100:DIR, folder:DIR or random)"
                )));
            }
        })
    }
}

impl DataSpec {
    /// Loads one split.
    pub fn load(&self, split: Split) -> Result<ImageSet> {
        match self {
            DataSpec::FashionMnist(dir) => {
                let dir = match dir {
                    Some(d) => d.clone(),
                    None => default_dir("fashion-mnist")?,
                };
                let mut set = idx::load_split(&dir, split, 10)?;
                set.mean = vec![0.2860];
                set.std = vec![0.3530];
                Ok(set)
            }
            DataSpec::Mnist(dir) => {
                let mut set = idx::load_split(dir, split, 10)?;
                set.mean = vec![0.1307];
                set.std = vec![0.3081];
                Ok(set)
            }
            DataSpec::Cifar10(dir) => cifar::load_split(dir, split, cifar::Variant::Cifar10),
            DataSpec::Cifar100(dir) => cifar::load_split(dir, split, cifar::Variant::Cifar100),
            DataSpec::Folder { dir, size } => folder::load_split(dir, split, *size),
            DataSpec::Random {
                count,
                shape,
                classes,
                seed,
            } => Ok(random(*count, *shape, *classes, *seed)),
        }
    }
}

fn default_dir(name: &str) -> Result<PathBuf> {
    let root = std::env::var_os("KNAPSEC_DATA").ok_or_else(|| {
        NnError::Data(format!(
            "no folder given for {name} and KNAPSEC_DATA is not set (run through ./setup.sh)"
        ))
    })?;
    Ok(Path::new(&root).join(name))
}

/// Seeded standard-normal images (a small xorshift + Box–Muller; reproducible across runs).
pub(crate) fn random(
    count: usize,
    shape: (usize, usize, usize),
    classes: usize,
    seed: u64,
) -> ImageSet {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let per = shape.0 * shape.1 * shape.2;
    let pixels = (0..count * per)
        .map(|_| {
            let (u, v) = (next().max(1e-12), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect();
    let labels = (0..count)
        .map(|_| (next() * classes as f64) as i64 % classes as i64)
        .collect();
    ImageSet {
        pixels: Pixels::F32(pixels),
        labels,
        shape,
        classes,
        mean: vec![0.0; shape.0],
        std: vec![1.0; shape.0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_refuses_unknown_ones() {
        assert_eq!(
            "fashion-mnist".parse::<DataSpec>().unwrap(),
            DataSpec::FashionMnist(None)
        );
        assert_eq!(
            "cifar10:/d".parse::<DataSpec>().unwrap(),
            DataSpec::Cifar10("/d".into())
        );
        assert!(
            "mnist"
                .parse::<DataSpec>()
                .unwrap_err()
                .to_string()
                .contains("needs a folder")
        );
        assert!(
            "imagenet:/x"
                .parse::<DataSpec>()
                .unwrap_err()
                .to_string()
                .contains("unknown data set")
        );
    }

    #[test]
    fn random_images_are_reproducible() {
        let a = random(3, (1, 4, 4), 10, 7);
        assert_eq!(a, random(3, (1, 4, 4), 10, 7));
        assert_ne!(a, random(3, (1, 4, 4), 10, 8));
        assert!(a.labels.iter().all(|&l| (0..10).contains(&l)));
    }
}
