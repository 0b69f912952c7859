//! Image folders in the ImageNet layout: `DIR/{train,val}/<class>/<image>` (or, when `DIR` has
//! no such split folders, `DIR/<class>/<image>` for both splits). Classes are the sorted
//! sub-folder names. Each image is decoded (PNG, JPEG, …), its shorter side resized to
//! `size · 256/224` (bilinear), centre-cropped to `size × size`, and normalised with the
//! ImageNet mean and standard deviation — torchvision's standard evaluation transform.

use super::{ImageSet, Pixels, Split};
use crate::error::{NnError, Result};
use std::path::{Path, PathBuf};

/// Resize-then-crop of one decoded image to `size × size` RGB bytes (`3 × size × size`, planar).
pub fn preprocess(img: &image::DynamicImage, size: u32) -> Vec<u8> {
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    let short = (size as f64 * 256.0 / 224.0).round() as u32;
    let (nw, nh) = if w <= h {
        (short, ((h as f64) * short as f64 / w as f64).round() as u32)
    } else {
        (((w as f64) * short as f64 / h as f64).round() as u32, short)
    };
    let resized = image::imageops::resize(
        &rgb,
        nw.max(size),
        nh.max(size),
        image::imageops::FilterType::Triangle,
    );
    let (rw, rh) = resized.dimensions();
    let (left, top) = ((rw - size) / 2, (rh - size) / 2);
    let mut out = vec![0u8; 3 * (size * size) as usize];
    for y in 0..size {
        for x in 0..size {
            let p = resized.get_pixel(left + x, top + y);
            for c in 0..3 {
                out[(c as u32 * size * size + y * size + x) as usize] = p[c];
            }
        }
    }
    out
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NnError::Data(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// Loads one split of an image folder.
pub fn load_split(dir: &Path, split: Split, size: u32) -> Result<ImageSet> {
    let sub = match split {
        Split::Train => "train",
        Split::Test => "val",
    };
    let root = if dir.join(sub).is_dir() {
        dir.join(sub)
    } else {
        dir.to_path_buf()
    };
    let classes: Vec<PathBuf> = sorted_entries(&root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if classes.is_empty() {
        return Err(NnError::Data(format!(
            "{}: no class sub-folders",
            root.display()
        )));
    }
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (label, class_dir) in classes.iter().enumerate() {
        for file in sorted_entries(class_dir)?
            .into_iter()
            .filter(|p| p.is_file())
        {
            let img = image::open(&file)
                .map_err(|e| NnError::Data(format!("{}: {e}", file.display())))?;
            pixels.extend(preprocess(&img, size));
            labels.push(label as i64);
        }
    }
    if labels.is_empty() {
        return Err(NnError::Data(format!(
            "{}: no images in the class folders",
            root.display()
        )));
    }
    Ok(ImageSet {
        pixels: Pixels::U8(pixels),
        labels,
        shape: (3, size as usize, size as usize),
        classes: classes.len(),
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    })
}
