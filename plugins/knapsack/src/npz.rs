//! Generic MCKP instances as NumPy `.npz` files (for `knapsec knapsack solve-mckp`).
//!
//! Arrays: `costs` int64 `[N, K]` (non-negative), `values` float64 `[N, K]` (minimised; padding
//! entries `+inf`), `counts` int32 `[N]` (options used per class, `1..=K`; entries past the count
//! are ignored). `costs` and `counts` may also be int32 / int64 respectively. Write one from
//! Python with `np.savez("i.npz", costs=c, values=v, counts=n)`.

use crate::{Error, Result};
use knapsec_core::McKpProblem;
use npyz::npz::NpzArchive;
use npyz::{DType, WriterBuilder};
use std::io::Cursor;
use std::path::Path;

fn npz_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Npz {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_ints<R: std::io::Read + std::io::Seek>(
    npz: &mut NpzArchive<R>,
    path: &Path,
    name: &str,
) -> Result<(Vec<u64>, Vec<i64>)> {
    let arr = npz
        .by_name(name)
        .map_err(|e| npz_err(path, format!("array {name:?}: {e}")))?
        .ok_or_else(|| {
            npz_err(
                path,
                format!("no array named {name:?} (expected costs, values, counts)"),
            )
        })?;
    let shape = arr.shape().to_vec();
    let descr = match arr.dtype() {
        DType::Plain(t) => t.to_string(),
        other => {
            return Err(npz_err(
                path,
                format!(
                    "array {name:?} has dtype {}, expected an integer type",
                    other.descr()
                ),
            ));
        }
    };
    let data: Vec<i64> = match descr.as_str() {
        "<i8" => arr.into_vec::<i64>(),
        "<i4" => arr
            .into_vec::<i32>()
            .map(|v| v.into_iter().map(i64::from).collect()),
        other => {
            return Err(npz_err(
                path,
                format!("array {name:?} has dtype {other}, expected int64 or int32"),
            ));
        }
    }
    .map_err(|e| npz_err(path, format!("array {name:?}: {e}")))?;
    Ok((shape, data))
}

/// Reads an instance; the budget is given separately. Errors name the file and what is wrong
/// (missing array, shapes, dtype, a negative cost, a count out of range, a NaN value).
pub fn read_instance(path: &Path, budget: u64) -> Result<McKpProblem> {
    let mut npz = NpzArchive::open(path)
        .map_err(|e| npz_err(path, format!("not a readable .npz file: {e}")))?;
    let (cshape, costs) = read_ints(&mut npz, path, "costs")?;
    let (nshape, counts) = read_ints(&mut npz, path, "counts")?;
    let varr = npz
        .by_name("values")
        .map_err(|e| npz_err(path, format!("array \"values\": {e}")))?
        .ok_or_else(|| {
            npz_err(
                path,
                "no array named \"values\" (expected costs, values, counts)",
            )
        })?;
    let vshape = varr.shape().to_vec();
    let vdescr = varr.dtype().descr();
    if vdescr != "'<f8'" && vdescr != "<f8" {
        return Err(npz_err(
            path,
            format!("array \"values\" has dtype {vdescr}, expected float64"),
        ));
    }
    let values: Vec<f64> = varr
        .into_vec::<f64>()
        .map_err(|e| npz_err(path, format!("array \"values\": {e}")))?;
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
    let (n, k) = (cshape[0] as usize, cshape[1] as usize);
    if nshape != [n as u64] {
        return Err(npz_err(
            path,
            format!("counts has shape {nshape:?}, expected [{n}]"),
        ));
    }
    let mut p = McKpProblem {
        costs: Vec::new(),
        values: Vec::new(),
        offsets: vec![0],
        budget,
        blocks: None,
        maps: None,
    };
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
    let io = |e: std::io::Error| Error::Invalid(format!("writing .npz: {e}"));
    let mut w = npyz::npz::NpzWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut a = w
        .array::<i64>("costs", opts)
        .map_err(io)?
        .default_dtype()
        .shape(&[n as u64, k as u64])
        .begin_nd()
        .map_err(io)?;
    a.extend(costs).map_err(io)?;
    a.finish().map_err(io)?;
    let mut a = w
        .array::<f64>("values", opts)
        .map_err(io)?
        .default_dtype()
        .shape(&[n as u64, k as u64])
        .begin_nd()
        .map_err(io)?;
    a.extend(values).map_err(io)?;
    a.finish().map_err(io)?;
    let mut a = w
        .array::<i32>("counts", opts)
        .map_err(io)?
        .default_dtype()
        .shape(&[n as u64])
        .begin_nd()
        .map_err(io)?;
    a.extend(counts).map_err(io)?;
    a.finish().map_err(io)?;
    let cursor = w
        .zip_writer()
        .finish()
        .map_err(|e| Error::Invalid(format!("writing .npz: {e}")))?;
    Ok(cursor.into_inner())
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
}
