//! The CIFAR-10 and CIFAR-100 binary versions: fixed-size records of label byte(s) followed by
//! 3·32·32 pixel bytes (red plane, green plane, blue plane).
//! CIFAR-10: `data_batch_{1..5}.bin` / `test_batch.bin`, one label byte.
//! CIFAR-100: `train.bin` / `test.bin`, a coarse then a fine label byte (we use the fine one).

use super::{ImageSet, Pixels, Split};
use crate::error::{NnError, Result};
use std::path::Path;

/// Which CIFAR data set a folder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// CIFAR-10 (10 classes).
    Cifar10,
    /// CIFAR-100 (100 fine classes).
    Cifar100,
}

const PIXELS: usize = 3 * 32 * 32;

/// Parses the records of one file, appending to `pixels` and `labels`.
pub fn parse_records(
    bytes: &[u8],
    variant: Variant,
    what: &str,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<i64>,
) -> Result<()> {
    let (label_bytes, classes) = match variant {
        Variant::Cifar10 => (1, 10),
        Variant::Cifar100 => (2, 100),
    };
    let record = label_bytes + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(NnError::Data(format!(
            "{what}: {} bytes is not a whole number of {record}-byte records",
            bytes.len()
        )));
    }
    for (i, r) in bytes.chunks_exact(record).enumerate() {
        let label = r[label_bytes - 1];
        if label as usize >= classes {
            return Err(NnError::Data(format!(
                "{what}: record {i} has label {label}, not below {classes}"
            )));
        }
        labels.push(i64::from(label));
        pixels.extend_from_slice(&r[label_bytes..]);
    }
    Ok(())
}

/// Loads one split from a folder holding the binary files.
pub fn load_split(dir: &Path, split: Split, variant: Variant) -> Result<ImageSet> {
    let files: Vec<String> = match (variant, split) {
        (Variant::Cifar10, Split::Train) => {
            (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
        }
        (Variant::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
        (Variant::Cifar100, Split::Train) => vec!["train.bin".into()],
        (Variant::Cifar100, Split::Test) => vec!["test.bin".into()],
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        let path = dir.join(f);
        let bytes =
            std::fs::read(&path).map_err(|e| NnError::Data(format!("{}: {e}", path.display())))?;
        parse_records(
            &bytes,
            variant,
            &path.display().to_string(),
            &mut pixels,
            &mut labels,
        )?;
    }
    let (classes, mean, std) = match variant {
        Variant::Cifar10 => (
            10,
            vec![0.4914, 0.4822, 0.4465],
            vec![0.2470, 0.2435, 0.2616],
        ),
        Variant::Cifar100 => (
            100,
            vec![0.5071, 0.4865, 0.4409],
            vec![0.2673, 0.2564, 0.2762],
        ),
    };
    Ok(ImageSet {
        pixels: Pixels::U8(pixels),
        labels,
        shape: (3, 32, 32),
        classes,
        mean,
        std,
    })
}
