//! IDX files (the MNIST / Fashion-MNIST distribution format): a big-endian header
//! `0x00 0x00 TYPE D`, then `D` u32 sizes, then the elements. Only unsigned bytes (type
//! `0x08`) are read, which is what those data sets use.
//!
//! The parser lives here, without tch, so that it can be fuzzed; `knapsec-nn` reads data sets
//! through it. It never panics: the element count is a checked product, and a file is refused
//! before anything is allocated if its sizes disagree with its length. Files larger than
//! [`MAX_IDX_BYTES`] (after decompression) are refused by the readers.

use crate::error::{CoreError, Result};

/// Largest IDX file accepted, after decompression: 2 GiB (Fashion-MNIST's largest file is
/// 47 MB). The readers stop decompressing here, so a small `.gz` cannot expand without bound.
pub const MAX_IDX_BYTES: u64 = 2 << 30;

/// A parsed IDX file of unsigned bytes: its dimensions and its elements (borrowed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx<'a> {
    /// The sizes of each dimension, outermost first (`[count, rows, cols]` for images).
    pub dims: Vec<usize>,
    /// The elements in row-major order; exactly the product of `dims` bytes.
    pub data: &'a [u8],
}

/// Parses one IDX file of unsigned bytes. `what` names the file in errors.
pub fn parse<'a>(bytes: &'a [u8], what: &str) -> Result<Idx<'a>> {
    let bad = |why: String| CoreError::Invalid(format!("{what}: {why}"));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file (bad magic number)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not unsigned bytes (0x08)",
            bytes[2]
        )));
    }
    let ndims = usize::from(bytes[3]);
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated header: {ndims} dimensions need {header} bytes, the file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let data = &bytes[header..];
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if count != Some(data.len()) {
        return Err(bad(format!(
            "{} data bytes for dimensions {dims:?} ({} expected)",
            data.len(),
            match count {
                Some(n) => n.to_string(),
                None => "more than memory holds".into(),
            }
        )));
    }
    Ok(Idx { dims, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_and_malformed_files() {
        let ok = parse(
            b"\x00\x00\x08\x02\x00\x00\x00\x01\x00\x00\x00\x02\x05\x06",
            "x",
        )
        .unwrap();
        assert_eq!(ok.dims, vec![1, 2]);
        assert_eq!(ok.data, &[5, 6]);
        let e = parse(b"\x00\x00\x08\x02\x00\x00\x00\x01", "f").unwrap_err();
        assert!(e.to_string().starts_with("f: truncated header"), "{e}");
        // Four sizes of 2^32 - 1: their product overflows 64 bits.
        let mut huge = vec![0, 0, 8, 4];
        huge.extend([0xff; 16]);
        huge.extend([1, 2, 3]);
        let e = parse(&huge, "f").unwrap_err().to_string();
        assert!(e.contains("3 data bytes"), "{e}");
        // Zero dimensions: one element.
        assert_eq!(parse(b"\x00\x00\x08\x00\x07", "x").unwrap().data, &[7]);
    }
}
