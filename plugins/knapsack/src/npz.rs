//! Generic MCKP instances as NumPy `.npz` files (for `knapsec knapsack solve-mckp`).
//!
//! Arrays: `costs` int64 `[N, K]` (non-negative), `values` float64 `[N, K]` (minimised; padding
//! entries `+inf`), `counts` int32 `[N]` (options used per class, `1..=K`; entries past the count
//! are ignored). `costs` and `counts` may also be int32 / int64 respectively. Write one from
//! Python with `np.savez("i.npz", costs=c, values=v, counts=n)`.
//!
//! Reading does not trust the file: the `.npy` headers are parsed here (element type, shape as
//! a checked product within [`MAX_NPZ_ELEMENTS`], data of exactly that size, Fortran-order
//! arrays transposed to rows) before anything is allocated for the data; `npyz` only writes.

use crate::{Error, Result};
use knapsec_core::McKpProblem;
use npyz::WriterBuilder;
use std::io::{Cursor, Read, Seek};
use std::path::Path;

/// Most elements one array of an instance may hold: 2^26 (512 MiB of `int64`), far above any
/// network's instance (ResNet-50: about 10^4 channels × 60 candidates). Checked from the
/// header, before any data is read, and the bytes read from an entry stop there too (a
/// compressed entry cannot expand without bound).
pub const MAX_NPZ_ELEMENTS: u64 = 1 << 26;

/// Longest `.npy` header accepted (numpy writes about 128 bytes).
const MAX_NPY_HEADER: usize = 1 << 16;

fn npz_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Npz {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// One `.npy` array as stored: element type, shape, and raw little-endian elements in C
/// (row-major) order.
struct Npy {
    descr: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// The value of one key of a `.npy` header's dict literal.
#[derive(Debug, PartialEq)]
enum HeaderValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
}

/// Parses the Python dict literal of a `.npy` header (`{'descr': '<i8', 'fortran_order':
/// False, 'shape': (3, 4), }`): string keys; string, boolean or integer-tuple values.
fn parse_header_dict(text: &str) -> std::result::Result<Vec<(String, HeaderValue)>, String> {
    let b = text.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let expect = |i: &mut usize, c: u8| -> std::result::Result<(), String> {
        ws(i);
        if b.get(*i) == Some(&c) {
            *i += 1;
            Ok(())
        } else {
            Err(format!(
                "expected {:?} at byte {i} of the header",
                c as char
            ))
        }
    };
    let string = |i: &mut usize| -> std::result::Result<String, String> {
        ws(i);
        let q = *b.get(*i).ok_or("header ends inside the dict")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("expected a string at byte {i} of the header"));
        }
        let start = *i + 1;
        let len = b[start..]
            .iter()
            .position(|&c| c == q)
            .ok_or("unterminated string in the header")?;
        *i = start + len + 1;
        Ok(text[start..start + len].to_string())
    };
    let mut out = Vec::new();
    expect(&mut i, b'{')?;
    loop {
        ws(&mut i);
        if b.get(i) == Some(&b'}') {
            i += 1;
            break;
        }
        let key = string(&mut i)?;
        expect(&mut i, b':')?;
        ws(&mut i);
        let value = match b.get(i) {
            Some(b'\'' | b'"') => HeaderValue::Str(string(&mut i)?),
            Some(b'T') if text[i..].starts_with("True") => {
                i += 4;
                HeaderValue::Bool(true)
            }
            Some(b'F') if text[i..].starts_with("False") => {
                i += 5;
                HeaderValue::Bool(false)
            }
            Some(b'(') => {
                i += 1;
                let mut dims = Vec::new();
                loop {
                    ws(&mut i);
                    if b.get(i) == Some(&b')') {
                        i += 1;
                        break;
                    }
                    let start = i;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    let d: u64 = text[start..i]
                        .parse()
                        .map_err(|_| format!("bad dimension at byte {start} of the header"))?;
                    if dims.len() == 32 {
                        return Err("more than 32 dimensions".into());
                    }
                    dims.push(d);
                    ws(&mut i);
                    match b.get(i) {
                        Some(b',') => i += 1,
                        Some(b')') => {}
                        _ => return Err(format!("expected ',' or ')' at byte {i} of the header")),
                    }
                }
                HeaderValue::Tuple(dims)
            }
            _ => return Err(format!("unexpected value at byte {i} of the header")),
        };
        out.push((key, value));
        ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            _ => return Err(format!("expected ',' or '}}' at byte {i} of the header")),
        }
    }
    ws(&mut i);
    if i != b.len() {
        return Err(format!(
            "unexpected text after the dict at byte {i} of the header"
        ));
    }
    Ok(out)
}

/// Reads and checks the array `name` of an archive: header, element type, a shape whose size
/// is a checked product within [`MAX_NPZ_ELEMENTS`], data of exactly that size. Fortran-order
/// arrays are returned in C order.
fn read_npy<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, path: &Path, name: &str) -> Result<Npy> {
    let bad = |m: String| npz_err(path, format!("array {name:?}: {m}"));
    let mut file = match zip.by_name(&format!("{name}.npy")) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(npz_err(
                path,
                format!("no array named {name:?} (expected costs, values, counts)"),
            ));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let limit = MAX_NPZ_ELEMENTS * 8 + MAX_NPY_HEADER as u64 + 12;
    let mut bytes = Vec::new();
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(bad(format!(
            "larger than {MAX_NPZ_ELEMENTS} elements allow"
        )));
    }
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy array (bad magic)".into()));
    }
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!(".npy format version {v} is not supported"))),
    };
    if len > MAX_NPY_HEADER || len > bytes.len() - start {
        return Err(bad(format!("header of {len} bytes does not fit the entry")));
    }
    let text = std::str::from_utf8(&bytes[start..start + len])
        .map_err(|_| bad("header is not text".into()))?;
    let dict = parse_header_dict(text).map_err(&bad)?;
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| bad(format!("header lacks {key:?}")))
    };
    let (HeaderValue::Str(descr), HeaderValue::Bool(fortran), HeaderValue::Tuple(shape)) =
        (get("descr")?, get("fortran_order")?, get("shape")?)
    else {
        return Err(bad(
            "header has descr, fortran_order or shape of the wrong type".into(),
        ));
    };
    let width = match descr.as_str() {
        "<i8" | "<f8" => 8,
        "<i4" => 4,
        other => return Err(bad(format!("dtype {other} is not int64, int32 or float64"))),
    };
    let count = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_NPZ_ELEMENTS)
        .ok_or_else(|| {
            bad(format!(
                "shape {shape:?} holds more than {MAX_NPZ_ELEMENTS} elements"
            ))
        })?;
    let data = bytes.split_off(start + len);
    if data.len() as u64 != count * width {
        return Err(bad(format!(
            "{} data bytes for shape {shape:?} of {descr} ({} expected)",
            data.len(),
            count * width
        )));
    }
    let data = if *fortran && shape.len() == 2 {
        // Column-major on disk: element (i, j) at j·rows + i.
        let (rows, cols) = (shape[0] as usize, shape[1] as usize);
        let w = width as usize;
        let mut c_order = vec![0u8; data.len()];
        for i in 0..rows {
            for j in 0..cols {
                let (dst, src) = ((i * cols + j) * w, (j * rows + i) * w);
                c_order[dst..dst + w].copy_from_slice(&data[src..src + w]);
            }
        }
        c_order
    } else if *fortran && shape.len() > 2 {
        return Err(bad("Fortran-order arrays of more than 2 dimensions".into()));
    } else {
        data
    };
    Ok(Npy {
        descr: descr.clone(),
        shape: shape.clone(),
        data,
    })
}

/// An integer array as `i64`s.
fn ints(a: &Npy, path: &Path, name: &str) -> Result<Vec<i64>> {
    match a.descr.as_str() {
        "<i8" => Ok(a
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()),
        "<i4" => Ok(a
            .data
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect()),
        other => Err(npz_err(
            path,
            format!("array {name:?} has dtype {other}, expected int64 or int32"),
        )),
    }
}

/// Reads an instance; the budget is given separately. Errors name the file and what is wrong
/// (missing array, shapes, dtype, a negative cost, a count out of range, a NaN value, sizes
/// over [`MAX_NPZ_ELEMENTS`]).
pub fn read_instance(path: &Path, budget: u64) -> Result<McKpProblem> {
    let file = std::fs::File::open(path).map_err(|e| npz_err(path, e.to_string()))?;
    read_from(std::io::BufReader::new(file), path, budget)
}

/// [`read_instance`] from the bytes of an `.npz` file (errors name `name`).
pub fn instance_from_bytes(bytes: &[u8], name: &Path, budget: u64) -> Result<McKpProblem> {
    read_from(Cursor::new(bytes), name, budget)
}

fn read_from<R: Read + Seek>(reader: R, path: &Path, budget: u64) -> Result<McKpProblem> {
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| npz_err(path, format!("not a readable .npz file: {e}")))?;
    let carr = read_npy(&mut zip, path, "costs")?;
    let costs = ints(&carr, path, "costs")?;
    let narr = read_npy(&mut zip, path, "counts")?;
    let counts = ints(&narr, path, "counts")?;
    let varr = read_npy(&mut zip, path, "values")?;
    if varr.descr != "<f8" {
        return Err(npz_err(
            path,
            format!(
                "array \"values\" has dtype {}, expected float64",
                varr.descr
            ),
        ));
    }
    let values: Vec<f64> = varr
        .data
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let (cshape, vshape, nshape) = (carr.shape, varr.shape, narr.shape);
    if cshape.len() != 2 {
        return Err(npz_err(
            path,
            format!("costs must be 2-D [N, K], found shape {cshape:?}"),
        ));
    }
    if vshape != cshape {
        return Err(npz_err(
            path,
            format!("values has shape {vshape:?}, costs {cshape:?}: they must match"),
        ));
    }
    // Both at most MAX_NPZ_ELEMENTS, so they fit.
    let (n, k) = (cshape[0] as usize, cshape[1] as usize);
    if nshape != [n as u64] {
        return Err(npz_err(
            path,
            format!("counts has shape {nshape:?}, expected [{n}]"),
        ));
    }
    let mut p = McKpProblem::empty(budget);
    for i in 0..n {
        let count = counts[i];
        if count < 1 || count as usize > k {
            return Err(npz_err(
                path,
                format!("class {i}: count {count} is outside 1..={k}"),
            ));
        }
        for j in 0..count as usize {
            let c = costs[i * k + j];
            let v = values[i * k + j];
            if c < 0 {
                return Err(npz_err(
                    path,
                    format!("class {i}, option {j}: negative cost {c}"),
                ));
            }
            if v.is_nan() || v == f64::NEG_INFINITY {
                return Err(npz_err(
                    path,
                    format!("class {i}, option {j}: value is {v}"),
                ));
            }
            p.costs.push(c as u64);
            p.values.push(v);
        }
        p.offsets.push(p.costs.len());
    }
    Ok(p)
}

/// The `.npz` bytes of an instance (padded to the widest class with cost 0, value `+inf`).
pub fn instance_bytes(p: &McKpProblem) -> Result<Vec<u8>> {
    let n = p.classes();
    let k = (0..n).map(|i| p.class(i).0.len()).max().unwrap_or(0);
    let mut costs = vec![0i64; n * k];
    let mut values = vec![f64::INFINITY; n * k];
    let mut counts = vec![0i32; n];
    for i in 0..n {
        let (c, v) = p.class(i);
        counts[i] = c.len() as i32;
        for j in 0..c.len() {
            costs[i * k + j] = c[j] as i64;
            values[i * k + j] = v[j];
        }
    }
    let mut w = npyz::npz::NpzWriter::new(Cursor::new(Vec::new()));
    write_array(&mut w, "costs", &[n, k], costs)?;
    write_array(&mut w, "values", &[n, k], values)?;
    write_array(&mut w, "counts", &[n], counts)?;
    let cursor = w
        .zip_writer()
        .finish()
        .map_err(|e| Error::Invalid(format!("writing .npz: {e}")))?;
    Ok(cursor.into_inner())
}

/// Adds the array `name` of `shape` (C order) to the archive, uncompressed.
fn write_array<T: npyz::AutoSerialize>(
    w: &mut npyz::npz::NpzWriter<Cursor<Vec<u8>>>,
    name: &str,
    shape: &[usize],
    data: Vec<T>,
) -> Result<()> {
    let io = |e: std::io::Error| Error::Invalid(format!("writing .npz: {e}"));
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut a = w
        .array::<T>(name, opts)
        .map_err(io)?
        .default_dtype()
        .shape(&shape)
        .begin_nd()
        .map_err(io)?;
    a.extend(data).map_err(io)?;
    a.finish().map_err(io)
}

/// Writes an instance as `.npz`, atomically.
pub fn write_instance(path: &Path, p: &McKpProblem) -> Result<()> {
    let bytes = instance_bytes(p)?;
    Ok(knapsec_core::fsutil::write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let p = McKpProblem::from_classes(&[vec![(3, 0.5), (0, 2.0)], vec![(1, 0.25)]], 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.npz");
        write_instance(&path, &p).unwrap();
        let back = read_instance(&path, 3).unwrap();
        assert_eq!(back, p);
        let bad = McKpProblem::from_classes(&[vec![(3, f64::NAN)]], 3);
        write_instance(&path, &bad).unwrap();
        let e = read_instance(&path, 3).unwrap_err().to_string();
        assert!(e.contains("class 0, option 0"), "{e}");
        std::fs::write(&path, b"nope").unwrap();
        assert!(read_instance(&path, 3).is_err());
        assert!(read_instance(&dir.path().join("missing.npz"), 3).is_err());
    }

    /// An `.npy` entry: the version 1.0 header for `descr`, `fortran` and `shape` (padded to
    /// 64 bytes as numpy does), then `data`.
    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let fo = if fortran { "True" } else { "False" };
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': {fo}, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    fn npz(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            w.start_file(format!("{name}.npy"), opts).unwrap();
            std::io::Write::write_all(&mut w, bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn le<T: Copy, const N: usize>(v: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| f(x)).collect()
    }

    fn read_bytes(bytes: &[u8]) -> Result<McKpProblem> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.npz");
        std::fs::write(&path, bytes).unwrap();
        read_instance(&path, 10)
    }

    #[test]
    fn shapes_whose_size_overflows_are_refused() {
        let huge = npz(&[
            (
                "costs",
                npy("<i8", false, "(1099511627776, 1099511627776)", &[]),
            ),
            ("counts", npy("<i4", false, "(1,)", &[1, 0, 0, 0])),
            (
                "values",
                npy("<f8", false, "(1, 1)", &le(&[0.5f64], f64::to_le_bytes)),
            ),
        ]);
        let e = read_bytes(&huge).unwrap_err().to_string();
        assert!(e.contains("costs") && e.contains("shape"), "{e}");
    }

    #[test]
    fn shapes_larger_than_their_data_are_refused_before_allocating() {
        // 2^26 x 2^10 int64 = 512 GiB announced, 8 bytes present.
        let lying = npz(&[
            ("costs", npy("<i8", false, "(67108864, 1024)", &[0; 8])),
            ("counts", npy("<i4", false, "(1,)", &[1, 0, 0, 0])),
            (
                "values",
                npy("<f8", false, "(1, 1)", &le(&[0.5f64], f64::to_le_bytes)),
            ),
        ]);
        let e = read_bytes(&lying).unwrap_err().to_string();
        assert!(e.contains("costs"), "{e}");
    }

    #[test]
    fn fortran_order_arrays_are_read_by_row() {
        // costs [[1, 2], [3, 4]] stored column by column, as numpy writes a transposed array.
        let bytes = npz(&[
            (
                "costs",
                npy(
                    "<i8",
                    true,
                    "(2, 2)",
                    &le(&[1i64, 3, 2, 4], i64::to_le_bytes),
                ),
            ),
            (
                "counts",
                npy("<i4", false, "(2,)", &le(&[2i32, 2], i32::to_le_bytes)),
            ),
            (
                "values",
                npy(
                    "<f8",
                    false,
                    "(2, 2)",
                    &le(&[0.5f64, 0.25, 1.0, 2.0], f64::to_le_bytes),
                ),
            ),
        ]);
        let p = read_bytes(&bytes).unwrap();
        assert_eq!(p.costs, vec![1, 2, 3, 4]);
        assert_eq!(p.values, vec![0.5, 0.25, 1.0, 2.0]);
    }

    /// The fuzz target's seeds (`fuzz/seeds/npz_instance`, written by Python's `zipfile`, one
    /// deflated) are instances this reader accepts.
    #[test]
    fn fuzz_seeds_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/npz_instance");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let p = read_instance(&path, 10).unwrap_or_else(|e| panic!("{e}"));
            p.validate().unwrap();
            n += 1;
        }
        assert_eq!(n, 3);
    }
}
