//! Data sets for training, fine-tuning, evaluation and distortion extraction (issue 8 §1).
//!
//! Parsing is plain Rust (no tch) and yields [`ImageSet`]: `u8` or `f32` pixels in
//! `N × C × H × W` order with labels. [`ImageSet::to_tensors`] normalises and moves them into
//! tch. Formats:
//! * [`idx`]: MNIST / Fashion-MNIST IDX files (plain or `.gz`);
//! * [`cifar`]: the CIFAR-10 / CIFAR-100 binary versions;
//! * [`folder`]: ImageNet-style folders (one sub-folder per class) with the standard
//!   resize / centre-crop / normalise;
//! * [`segmentation`]: images with label maps (ADE20K / mmseg layout) for mIoU.
//!
//! A [`DataSpec`] names a data set on the command line: `fashion-mnist[:DIR]`, `mnist:DIR`,
//! `cifar10:DIR`, `cifar100:DIR`, `folder:DIR`, or `random` (seeded Gaussian images).

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod segmentation;
mod spec;

#[cfg(test)]
pub(crate) use spec::random as random_set;
pub use spec::{DataSpec, Split};

use crate::error::{NnError, Result};
use tch::{Kind, Tensor};

/// Images and labels in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    /// `N × C × H × W` pixels, row-major.
    pub pixels: Pixels,
    /// The label of every image, in order.
    pub labels: Vec<i64>,
    /// `(C, H, W)` of one image.
    pub shape: (usize, usize, usize),
    /// Number of classes of the data set (not just those present).
    pub classes: usize,
    /// Per-channel mean and standard deviation applied by [`ImageSet::to_tensors`] after
    /// scaling `u8` pixels to `[0, 1]`.
    pub mean: Vec<f32>,
    /// See `mean`.
    pub std: Vec<f32>,
}

/// Raw pixel storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    /// 0–255 values, scaled to `[0, 1]` then normalised.
    U8(Vec<u8>),
    /// Already-normalised real values.
    F32(Vec<f32>),
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `n` images (all if fewer).
    pub fn take(&self, n: usize) -> ImageSet {
        self.select(&(0..n.min(self.len())).collect::<Vec<_>>())
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let per = self.shape.0 * self.shape.1 * self.shape.2;
        let pixels = match &self.pixels {
            Pixels::U8(p) => Pixels::U8(
                indices
                    .iter()
                    .flat_map(|&i| p[i * per..(i + 1) * per].iter().copied())
                    .collect(),
            ),
            Pixels::F32(p) => Pixels::F32(
                indices
                    .iter()
                    .flat_map(|&i| p[i * per..(i + 1) * per].iter().copied())
                    .collect(),
            ),
        };
        ImageSet {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            ..self.clone()
        }
    }

    /// Pads every image with `pad` zero pixels (in normalised units: the value that
    /// normalises to 0) on each side — e.g. 28×28 → 32×32 for CIFAR-shaped networks.
    pub fn pad_to(&self, height: usize, width: usize) -> Result<ImageSet> {
        let (c, h, w) = self.shape;
        if height < h || width < w {
            return Err(NnError::Data(format!(
                "cannot pad {h}x{w} images to the smaller {height}x{width}"
            )));
        }
        let (top, left) = ((height - h) / 2, (width - w) / 2);
        let images = self.to_tensors(tch::Device::Cpu)?.0;
        let padded = images.constant_pad_nd([
            left as i64,
            (width - w - left) as i64,
            top as i64,
            (height - h - top) as i64,
        ]);
        let n = self.len();
        let data = Vec::<f32>::try_from(padded.reshape([-1]))
            .map_err(|e| NnError::Data(format!("padding failed: {e}")))?;
        Ok(ImageSet {
            pixels: Pixels::F32(data),
            labels: self.labels.clone(),
            shape: (c, height, width),
            classes: self.classes,
            mean: vec![0.0; c],
            std: vec![1.0; c],
        })
        .inspect(|s| debug_assert_eq!(s.labels.len(), n))
    }

    /// Normalised images `[N, C, H, W]` (f32) and labels `[N]` (i64) on `device`.
    pub fn to_tensors(&self, device: tch::Device) -> Result<(Tensor, Tensor)> {
        let (c, h, w) = self.shape;
        let n = self.len() as i64;
        let dims = [n, c as i64, h as i64, w as i64];
        let images = match &self.pixels {
            Pixels::U8(p) => {
                let t = Tensor::from_slice(p).reshape(dims).to_kind(Kind::Float) / 255.0;
                let mean = Tensor::from_slice(&self.mean).reshape([1, c as i64, 1, 1]);
                let std = Tensor::from_slice(&self.std).reshape([1, c as i64, 1, 1]);
                (t - mean) / std
            }
            Pixels::F32(p) => Tensor::from_slice(p).reshape(dims),
        };
        Ok((
            images.to_device(device),
            Tensor::from_slice(&self.labels).to_device(device),
        ))
    }
}
