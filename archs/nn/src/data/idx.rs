//! IDX files (MNIST, Fashion-MNIST): big-endian header `0x0000 08 D` then D u32 sizes, then
//! u8 data. File names as distributed (`train-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`),
//! plain or gzip-compressed (`.gz`). The header is parsed by the tch-free
//! [`knapsec_core::idx`] (fuzzed there); files stop at [`knapsec_core::idx::MAX_IDX_BYTES`].

use super::{ImageSet, Pixels, Split};
use crate::error::{NnError, Result};
use std::io::Read;
use std::path::Path;

/// Parses one IDX file of unsigned bytes into `(dims, data)` ([`knapsec_core::idx::parse`]).
pub fn parse(bytes: &[u8], what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let idx = knapsec_core::idx::parse(bytes, what).map_err(|e| NnError::Data(e.to_string()))?;
    Ok((idx.dims, idx.data.to_vec()))
}

/// Reads `dir/name`, or else `dir/name.gz` decompressed, refusing more than `limit` bytes
/// (checked while decompressing, so a small `.gz` cannot expand without bound).
fn read_limited(dir: &Path, name: &str, limit: u64) -> Result<(Vec<u8>, String)> {
    let read = |path: &Path, reader: &mut dyn Read| -> Result<Vec<u8>> {
        let mut out = Vec::new();
        reader
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| NnError::Data(format!("{}: {e}", path.display())))?;
        if out.len() as u64 > limit {
            return Err(NnError::Data(format!(
                "{}: larger than {limit} bytes (the IDX size limit)",
                path.display()
            )));
        }
        Ok(out)
    };
    let open = |path: &Path| {
        std::fs::File::open(path).map_err(|e| NnError::Data(format!("{}: {e}", path.display())))
    };
    let plain = dir.join(name);
    if plain.is_file() {
        let bytes = read(&plain, &mut open(&plain)?)?;
        return Ok((bytes, plain.display().to_string()));
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        let bytes = read(&gz, &mut flate2::read::GzDecoder::new(open(&gz)?))?;
        return Ok((bytes, gz.display().to_string()));
    }
    Err(NnError::Data(format!(
        "{}: neither {name} nor {name}.gz exists",
        dir.display()
    )))
}

fn read_maybe_gz(dir: &Path, name: &str) -> Result<(Vec<u8>, String)> {
    read_limited(dir, name, knapsec_core::idx::MAX_IDX_BYTES)
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
    if dims[1] == 0 || dims[2] == 0 {
        return Err(NnError::Data(format!(
            "{img_name}: images of {}x{} pixels",
            dims[1], dims[2]
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

    #[test]
    fn sizes_whose_product_overflows_are_refused() {
        let mut huge = vec![0, 0, 8, 4];
        huge.extend([0xff; 16]);
        huge.extend([1, 2, 3]);
        let e = parse(&huge, "x").unwrap_err().to_string();
        assert!(e.contains("data bytes"), "{e}");
    }

    #[test]
    fn gzip_bombs_stop_at_the_size_limit() {
        // 40 MB of zeros compress to ~40 kB; with the limit set to 1 MB the reader stops.
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &vec![0u8; 40 << 20]).unwrap();
        std::fs::write(dir.path().join("a.gz"), gz.finish().unwrap()).unwrap();
        let e = read_limited(dir.path(), "a", 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
    }
}
