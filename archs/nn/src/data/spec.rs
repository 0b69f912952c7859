//! Command-line names of data sets (`--data SPEC`) and their loading.

use super::{ImageSet, Pixels, cifar, folder, idx};
use crate::error::{NnError, Result};
use std::path::{Path, PathBuf};

/// Which part of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training part.
    Train,
    /// The test (evaluation) part.
    Test,
}

/// A data set named on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    /// Fashion-MNIST IDX files; without a folder, `$KNAPSEC_DATA/fashion-mnist` (set up by
    /// `setup.sh`).
    FashionMnist(Option<PathBuf>),
    /// MNIST IDX files in the folder.
    Mnist(PathBuf),
    /// CIFAR-10 binary batches in the folder.
    Cifar10(PathBuf),
    /// CIFAR-100 binary batches in the folder.
    Cifar100(PathBuf),
    /// One sub-folder per class; images resized to `size` (shorter side `size·8/7`, centre crop).
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Side of the square images.
        size: u32,
    },
    /// Images with label maps (ADE20K / mmseg layout), for mIoU: `seg:DIR` (labels as they
    /// are) or `ade20k:DIR` (label 0 ignored, the others shifted down by one).
    Segmentation {
        /// The folder.
        dir: PathBuf,
        /// Whether label 0 is ignored and the others shifted down by one.
        reduce_zero_label: bool,
    },
    /// Seeded Gaussian images of the given shape (for tests and benchmarks).
    Random {
        /// Number of images.
        count: usize,
        /// `(C, H, W)` of one image.
        shape: (usize, usize, usize),
        /// Number of classes.
        classes: usize,
        /// Seed of the images and labels.
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
            "seg" => DataSpec::Segmentation {
                dir: need("seg")?,
                reduce_zero_label: false,
            },
            "ade20k" => DataSpec::Segmentation {
                dir: need("ade20k")?,
                reduce_zero_label: true,
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
                     cifar100:DIR, folder:DIR, seg:DIR, ade20k:DIR or random)"
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
            DataSpec::Segmentation { dir, .. } => Err(NnError::Data(format!(
                "{}: a segmentation data set (label maps) serves mIoU evaluation only \
                 (`knapsec eval`), not classification",
                dir.display()
            ))),
            DataSpec::Random {
                count,
                shape,
                classes,
                seed,
            } => Ok(random(*count, *shape, *classes, *seed)),
        }
    }
}

impl DataSpec {
    /// Whether this names a segmentation data set (see [`DataSpec::load_segmentation`]).
    pub fn is_segmentation(&self) -> bool {
        matches!(self, DataSpec::Segmentation { .. })
    }

    /// Loads one split of a segmentation data set at `height × width` (at most `limit` images).
    pub fn load_segmentation(
        &self,
        split: Split,
        height: u32,
        width: u32,
        limit: Option<usize>,
    ) -> Result<super::segmentation::SegmentationSet> {
        match self {
            DataSpec::Segmentation {
                dir,
                reduce_zero_label,
            } => super::segmentation::load_split(
                dir,
                split,
                height,
                width,
                *reduce_zero_label,
                limit,
            ),
            other => Err(NnError::Data(format!(
                "{other:?} has no label maps: mIoU needs seg:DIR or ade20k:DIR"
            ))),
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
