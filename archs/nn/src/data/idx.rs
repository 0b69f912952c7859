//! IDX files (MNIST, Fashion-MNIST): big-endian header `0x0000 08 D` then D u32 sizes, then
//! u8 data. File names as distributed (`train-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`),
//! plain or gzip-compressed (`.gz`).

use super::{ImageSet, Pixels, Split};
use crate::error::{NnError, Result};
use std::io::Read;
use std::path::Path;

/// Parses one IDX file of unsigned bytes into `(dims, data)`.
pub fn parse(bytes: &[u8], what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |why: String| NnError::Data(format!("{what}: {why}"));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file (bad magic number)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not unsigned bytes (0x08)",
            bytes[2]
        )));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let count: usize = dims.iter().product();
    if bytes.len() - header != count {
        return Err(bad(format!(
            "{} data bytes for dimensions {dims:?} ({count} expected)",
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn read_maybe_gz(dir: &Path, name: &str) -> Result<(Vec<u8>, String)> {
    let plain = dir.join(name);
    if plain.is_file() {
        let bytes = std::fs::read(&plain)
            .map_err(|e| NnError::Data(format!("{}: {e}", plain.display())))?;
        return Ok((bytes, plain.display().to_string()));
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        let file = std::fs::File::open(&gz)
            .map_err(|e| NnError::Data(format!("{}: {e}", gz.display())))?;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut out)
            .map_err(|e| NnError::Data(format!("{}: {e}", gz.display())))?;
        return Ok((out, gz.display().to_string()));
    }
    Err(NnError::Data(format!(
        "{}: neither {name} nor {name}.gz exists",
        dir.display()
    )))
}

/// Loads the train or test split of an MNIST-style folder.
pub fn load_split(dir: &Path, split: Split, classes: usize) -> Result<ImageSet> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let (img_bytes, img_name) = read_maybe_gz(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let (lbl_bytes, lbl_name) = read_maybe_gz(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (dims, pixels) = parse(&img_bytes, &img_name)?;
    let (ldims, labels) = parse(&lbl_bytes, &lbl_name)?;
    if dims.len() != 3 || ldims.len() != 1 {
        return Err(NnError::Data(format!(
            "{img_name}: expected 3-D images and 1-D labels, got {dims:?} and {ldims:?}"
        )));
    }
    if dims[0] != ldims[0] {
        return Err(NnError::Data(format!(
            "{img_name} has {} images but {lbl_name} {} labels",
            dims[0], ldims[0]
        )));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(NnError::Data(format!(
            "{lbl_name}: label {bad} is not below {classes}"
        )));
    }
    Ok(ImageSet {
        pixels: Pixels::U8(pixels),
        labels: labels.into_iter().map(i64::from).collect(),
        shape: (1, dims[1], dims[2]),
        classes,
        mean: vec![0.5],
        std: vec![0.5],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_files_are_refused() {
        assert!(
            parse(b"\x00\x00\x08\x01\x00\x00\x00\x02\x05", "x")
                .unwrap_err()
                .to_string()
                .contains("data bytes")
        );
        assert!(
            parse(b"\x01\x02", "x")
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        assert!(
            parse(b"\x00\x00\x0d\x01", "x")
                .unwrap_err()
                .to_string()
                .contains("element type")
        );
        let (d, v) = parse(b"\x00\x00\x08\x01\x00\x00\x00\x02\x05\x06", "x").unwrap();
        assert_eq!((d, v), (vec![2], vec![5, 6]));
    }
}
