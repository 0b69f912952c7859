//! Segmentation data in the ADE20K / mmseg layout, for mIoU evaluation of the DeepLabV3
//! architectures (issue 8: `knapsec eval` gives mIoU for segmentation networks).
//!
//! `DIR/images/<split>/NAME.{jpg,jpeg,png}` with `DIR/annotations/<split>/NAME.png` (one label
//! per pixel, 8-bit), where `<split>` is `validation` (test) or `training` (train); without
//! such sub-folders, `DIR/images` and `DIR/annotations` serve both splits. Every image is
//! resized to the network's input (bilinear) and normalised with the ImageNet mean and
//! standard deviation; its label map is resized with nearest neighbours. With
//! `reduce_zero_label` (ADE20K's convention, mmseg's `reduce_zero_label=True`) label 0 becomes
//! the ignore label 255 and every other label `l` becomes `l − 1`.

use super::Split;
use crate::error::{NnError, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The label that marks pixels to ignore.
pub const IGNORE_LABEL: u8 = 255;

/// Images with their label maps, resized to `height × width`.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentationSet {
    /// `N × 3 × H × W` RGB bytes.
    pub pixels: Vec<u8>,
    /// `N × H × W` labels (255 = ignore).
    pub labels: Vec<u8>,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// The image files, in order.
    pub files: Vec<PathBuf>,
}

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

impl SegmentationSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Images `[N, 3, H, W]` (normalised f32) and labels `[N, H, W]` (i64) of `range`.
    pub fn tensors(&self, range: std::ops::Range<usize>) -> (Tensor, Tensor) {
        let (h, w) = (self.height, self.width);
        let n = range.len();
        let px = &self.pixels[range.start * 3 * h * w..range.end * 3 * h * w];
        let images = Tensor::from_slice(px)
            .to_kind(Kind::Float)
            .view([n as i64, 3, h as i64, w as i64])
            / 255.0;
        let mean = Tensor::from_slice(&MEAN).view([1, 3, 1, 1]);
        let std = Tensor::from_slice(&STD).view([1, 3, 1, 1]);
        let labels = Tensor::from_slice(&self.labels[range.start * h * w..range.end * h * w])
            .to_kind(Kind::Int64)
            .view([n as i64, h as i64, w as i64]);
        ((images - mean) / std, labels)
    }
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NnError::Data(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// Loads one split of a segmentation folder at `height × width` (at most `limit` images).
pub fn load_split(
    dir: &Path,
    split: Split,
    height: u32,
    width: u32,
    reduce_zero_label: bool,
    limit: Option<usize>,
) -> Result<SegmentationSet> {
    let sub = match split {
        Split::Train => "training",
        Split::Test => "validation",
    };
    let (images_dir, labels_dir) = if dir.join("images").join(sub).is_dir() {
        (
            dir.join("images").join(sub),
            dir.join("annotations").join(sub),
        )
    } else {
        (dir.join("images"), dir.join("annotations"))
    };
    let mut images = files_in(&images_dir)?;
    if let Some(n) = limit {
        images.truncate(n);
    }
    if images.is_empty() {
        return Err(NnError::Data(format!(
            "{}: no images",
            images_dir.display()
        )));
    }
    let (h, w) = (height as usize, width as usize);
    let mut set = SegmentationSet {
        pixels: Vec::with_capacity(images.len() * 3 * h * w),
        labels: Vec::with_capacity(images.len() * h * w),
        height: h,
        width: w,
        files: Vec::with_capacity(images.len()),
    };
    for file in images {
        let stem = file
            .file_stem()
            .ok_or_else(|| NnError::Data(format!("{}: no file name", file.display())))?;
        let label_file = labels_dir.join(stem).with_extension("png");
        let open =
            |p: &Path| image::open(p).map_err(|e| NnError::Data(format!("{}: {e}", p.display())));
        let img = open(&file)?.to_rgb8();
        let label = open(&label_file)?.to_luma8();
        if img.dimensions() != label.dimensions() {
            return Err(NnError::Data(format!(
                "{}: the image is {:?} but its label map {} is {:?}",
                file.display(),
                img.dimensions(),
                label_file.display(),
                label.dimensions()
            )));
        }
        let img =
            image::imageops::resize(&img, width, height, image::imageops::FilterType::Triangle);
        let label =
            image::imageops::resize(&label, width, height, image::imageops::FilterType::Nearest);
        for c in 0..3 {
            set.pixels.extend(img.pixels().map(|p| p[c]));
        }
        set.labels.extend(label.pixels().map(|p| match p[0] {
            0 if reduce_zero_label => IGNORE_LABEL,
            IGNORE_LABEL => IGNORE_LABEL,
            l if reduce_zero_label => l - 1,
            l => l,
        }));
        set.files.push(file);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, w: u32, h: u32, label: impl Fn(u32, u32) -> u8) {
        std::fs::create_dir_all(dir.join("images")).unwrap();
        std::fs::create_dir_all(dir.join("annotations")).unwrap();
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 128]))
            .save(dir.join("images").join(format!("{name}.png")))
            .unwrap();
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([label(x, y)]))
            .save(dir.join("annotations").join(format!("{name}.png")))
            .unwrap();
    }

    #[test]
    fn loads_resizes_and_reduces_the_zero_label() {
        let tmp = tempfile::tempdir().unwrap();
        write_pair(tmp.path(), "a", 8, 8, |x, _| if x < 4 { 0 } else { 3 });
        write_pair(tmp.path(), "b", 8, 8, |_, y| if y < 4 { 1 } else { 255 });
        let set = load_split(tmp.path(), Split::Test, 4, 4, false, None).unwrap();
        assert_eq!((set.len(), set.pixels.len(), set.labels.len()), (2, 96, 32));
        assert_eq!(&set.labels[..4], &[0, 0, 3, 3]);
        assert_eq!(&set.labels[16..20], &[1, 1, 1, 1]);
        assert_eq!(&set.labels[28..32], &[255; 4]);
        let reduced = load_split(tmp.path(), Split::Test, 4, 4, true, Some(1)).unwrap();
        assert_eq!(reduced.len(), 1);
        assert_eq!(&reduced.labels[..4], &[255, 255, 2, 2]);
        let (x, y) = set.tensors(0..2);
        assert_eq!((x.size(), y.size()), (vec![2, 3, 4, 4], vec![2, 4, 4]));
    }

    #[test]
    fn missing_and_mismatched_label_maps_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write_pair(tmp.path(), "a", 8, 8, |_, _| 1);
        image::GrayImage::new(4, 4)
            .save(tmp.path().join("annotations/a.png"))
            .unwrap();
        let e = load_split(tmp.path(), Split::Test, 4, 4, false, None).unwrap_err();
        assert!(e.to_string().contains("label map"), "{e}");
        std::fs::remove_file(tmp.path().join("annotations/a.png")).unwrap();
        let e = load_split(tmp.path(), Split::Test, 4, 4, false, None).unwrap_err();
        assert!(e.to_string().contains("a.png"), "{e}");
        assert!(load_split(&tmp.path().join("nothing"), Split::Test, 4, 4, false, None).is_err());
    }
}
